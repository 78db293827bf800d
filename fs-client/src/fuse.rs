//! The FUSE adapter: a thin layer over [`Core`]. Each callback copies its arguments, spawns a
//! task on the client's tokio runtime that calls the core, and replies from that task; the FUSE
//! thread never waits. Lookups and stats the core can answer from what it holds, without
//! waiting for anything, are answered on the FUSE thread itself (no hand-off to a worker). Errors become errnos through [`shardfs_common::Error::errno`], the one
//! mapping there is.

use crate::core::Core;
use crate::master::{Requester, CALLER};
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow,
};
use shardfs_common::proto::{Attr, FileKind, SetAttr, Timespec, ACCESS_READ, ACCESS_WRITE};
use shardfs_common::Error;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::runtime::Handle;

pub struct ShardFs {
    core: Arc<Core>,
    rt: Handle,
    ttl: Duration,
}

impl ShardFs {
    pub fn new(core: Arc<Core>, rt: Handle, ttl: Duration) -> Self {
        ShardFs { core, rt, ttl }
    }

    /// Run an operation on the async core, acting for the user who made the request (the
    /// master checks permissions for that user).
    /// Serve FUSE operation `op` on the runtime, as the caller of `req` (counted, with its
    /// latency, in the mount's metrics).
    fn spawn<F>(
        &self,
        op: &'static str,
        req: &Request<'_>,
        f: impl FnOnce(Arc<Core>, Duration) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let start = Instant::now();
        let who = Requester {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        };
        let served = f(self.core.clone(), self.ttl);
        self.rt.spawn(CALLER.scope(who, async move {
            served.await;
            served_op(op, start);
        }));
    }
}

/// FUSE_INIT flag (not in fuser's list): the filesystem drops set-ID bits and capabilities
/// on write, truncate and chown, not the kernel.
const FUSE_HANDLE_KILLPRIV_V2: u32 = 1 << 28;

/// Write flag: the writer lacks CAP_FSETID, so a write clears the set-ID bits.
const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// Count FUSE operation `op`, begun at `start`, in the mount's metrics.
fn served_op(op: &'static str, start: Instant) {
    shardfs_common::metrics::timed(
        "shardfs_fuse_ops_total",
        "shardfs_fuse_op_duration_seconds",
        op,
        start,
    );
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// Answer a getxattr/listxattr: a size probe (size 0) gets the length, a buffer too small
/// gets ERANGE, otherwise the bytes.
fn reply_xattr(reply: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if (size as usize) < v.len() {
        reply.error(libc::ERANGE);
    } else {
        reply.data(v);
    }
}

pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime.to_system(),
        mtime: a.mtime.to_system(),
        ctime: a.ctime.to_system(),
        crtime: a.ctime.to_system(),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 1 << 20,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> Timespec {
    match t {
        TimeOrNow::Now => Timespec::now(),
        TimeOrNow::SpecificTime(t) => Timespec::from_system(t),
    }
}

fn name(n: &OsStr) -> Vec<u8> {
    n.as_bytes().to_vec()
}

fn errno(e: &Error) -> i32 {
    e.errno()
}

impl Filesystem for ShardFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(4 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let _ = config.add_capabilities(
            fuser::consts::FUSE_DO_READDIRPLUS | fuser::consts::FUSE_READDIRPLUS_AUTO,
        );
        let _ = config.add_capabilities(fuser::consts::FUSE_PARALLEL_DIROPS);
        // The kernel then stops asking for `security.capability` before every write; the
        // mount and the master drop privileges on writes, truncates and chowns instead.
        self.core
            .set_kills_privs(config.add_capabilities(FUSE_HANDLE_KILLPRIV_V2).is_ok());
        let _ = config
            .add_capabilities(fuser::consts::FUSE_POSIX_LOCKS | fuser::consts::FUSE_FLOCK_LOCKS);
        Ok(())
    }

    fn lookup(&mut self, req: &Request<'_>, parent: u64, n: &OsStr, reply: ReplyEntry) {
        let n = name(n);
        let start = Instant::now();
        match self.core.lookup_now(parent, &n) {
            Some(Ok(a)) => {
                reply.entry(&self.ttl, &file_attr(&a), 0);
                metrics::counter!("shardfs_mount_meta_cache_hits_total").increment(1);
                return served_op("lookup", start);
            }
            Some(Err(e)) => {
                reply.error(errno(&e));
                return served_op("lookup", start);
            }
            None => metrics::counter!("shardfs_mount_meta_cache_misses_total").increment(1),
        }
        self.spawn("lookup", req, |core, ttl| async move {
            match core.lookup(parent, &n).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&mut self, req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let start = Instant::now();
        if let Some(a) = self.core.getattr_now(ino) {
            reply.attr(&self.ttl, &file_attr(&a));
            metrics::counter!("shardfs_mount_meta_cache_hits_total").increment(1);
            return served_op("getattr", start);
        }
        metrics::counter!("shardfs_mount_meta_cache_misses_total").increment(1);
        self.spawn("getattr", req, |core, ttl| async move {
            match core.getattr(ino).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        if let (Some(fh), Some(_)) = (fh, size) {
            self.core.note_writer(fh, req.pid());
        }
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            now: Timespec::now(),
        };
        let truncate = size.is_some() && mode.is_none();
        self.spawn("setattr", req, |core, ttl| async move {
            match core.setattr(ino, fh, set).await {
                Ok(mut a) => {
                    // A truncate drops privileges as a write does.
                    if truncate {
                        if let Some(d) = core.drop_privs(ino, a.perm, true).await {
                            (a.perm, a.ctime) = (d.perm, d.ctime);
                        }
                    }
                    reply.attr(&ttl, &file_attr(&a))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.as_bytes().to_vec(), value.to_vec());
        self.spawn("setxattr", req, |core, _| async move {
            match core.setxattr(ino, &name, &value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let name = name.as_bytes().to_vec();
        self.spawn("getxattr", req, |core, _| async move {
            match core.getxattr(ino, &name).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&mut self, req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        self.spawn("listxattr", req, |core, _| async move {
            match core.listxattr(ino).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&mut self, req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn("removexattr", req, |core, _| async move {
            match core.removexattr(ino, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&mut self, req: &Request<'_>, ino: u64, reply: ReplyData) {
        self.spawn("readlink", req, |core, _| async move {
            match core.readlink(ino).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        n: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let k = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFDIR => FileKind::Dir,
            _ => return reply.error(libc::EINVAL),
        };
        let (n, uid, gid) = (name(n), req.uid(), req.gid());
        let _ = umask;
        self.spawn("mknod", req, |core, ttl| async move {
            match core
                .mknod(parent, &n, k, mode & 0o7777, uid, gid, rdev)
                .await
            {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (n, uid, gid) = (name(n), req.uid(), req.gid());
        self.spawn("mkdir", req, |core, ttl| async move {
            match core
                .mknod(parent, &n, FileKind::Dir, mode & 0o7777, uid, gid, 0)
                .await
            {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&mut self, req: &Request<'_>, parent: u64, n: &OsStr, reply: ReplyEmpty) {
        let n = name(n);
        self.spawn("unlink", req, |core, _| async move {
            match core.unlink(parent, &n).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&mut self, req: &Request<'_>, parent: u64, n: &OsStr, reply: ReplyEmpty) {
        let n = name(n);
        self.spawn("rmdir", req, |core, _| async move {
            match core.rmdir(parent, &n).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        n: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (n, t, uid, gid) = (
            name(n),
            target.as_os_str().as_bytes().to_vec(),
            req.uid(),
            req.gid(),
        );
        self.spawn("symlink", req, |core, ttl| async move {
            match core.symlink(parent, &n, &t, uid, gid).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        n: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (n, nn) = (name(n), name(newname));
        self.spawn("rename", req, |core, _| async move {
            match core.rename(parent, &n, newparent, &nn, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let nn = name(newname);
        self.spawn("link", req, |core, ttl| async move {
            match core.link(ino, newparent, &nn).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let access = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => ACCESS_WRITE,
            libc::O_RDWR => ACCESS_READ | ACCESS_WRITE,
            _ if flags & libc::O_TRUNC != 0 => ACCESS_READ | ACCESS_WRITE,
            _ => ACCESS_READ,
        };
        self.spawn("open", req, |core, _| async move {
            match core.open(ino, access).await {
                Ok(fh) => reply.opened(fh, 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &mut self,
        req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        if offset < 0 {
            return reply.error(libc::EINVAL);
        }
        self.spawn("read", req, |core, _| async move {
            match core.read(fh, offset as u64, size).await {
                Ok(d) => {
                    metrics::counter!("shardfs_mount_read_bytes_total").increment(d.len() as u64);
                    reply.data(&d)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &mut self,
        req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        wflags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        if offset < 0 {
            return reply.error(libc::EINVAL);
        }
        let (data, pid) = (data.to_vec(), req.pid());
        let suidgid = wflags & FUSE_WRITE_KILL_SUIDGID != 0;
        self.spawn("write", req, |core, _| async move {
            match core.write(fh, offset as u64, &data, pid).await {
                Ok(n) => {
                    core.drop_privs_after_write(fh, suidgid).await;
                    metrics::counter!("shardfs_mount_written_bytes_total").increment(n.into());
                    reply.written(n)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(&mut self, req: &Request<'_>, ino: u64, fh: u64, lock_owner: u64, reply: ReplyEmpty) {
        // A close by a process drops its POSIX locks on the file.
        let unlock = self.core.holds_locks(ino, lock_owner);
        if !unlock && self.core.is_clean(fh) {
            return reply.ok();
        }
        let pid = req.pid();
        self.spawn("flush", req, |core, _| async move {
            let unlocked = match unlock {
                true => core.release_locks(ino, lock_owner).await,
                false => Ok(()),
            };
            match core.flush(fh, pid).await.and(unlocked) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getlk(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: fuser::ReplyLock,
    ) {
        self.spawn("getlk", req, |core, _| async move {
            match core.getlk(ino, lock_owner, start, end, typ, pid).await {
                Ok(Some(l)) => {
                    reply.locked(l.start, l.end, crate::session::lock_type(l.kind), l.pid)
                }
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setlk(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn("setlk", req, |core, _| async move {
            match core
                .setlk(ino, lock_owner, start, end, typ, pid, sleep)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last close of an open file drops its flock.
        let unlock = lock_owner.filter(|&o| self.core.holds_locks(ino, o));
        if unlock.is_none() && self.core.release_if_clean(fh) {
            return reply.ok();
        }
        self.spawn("release", req, |core, _| async move {
            let unlocked = match unlock {
                Some(o) => core.release_locks(ino, o).await,
                None => Ok(()),
            };
            match core.release(fh).await.and(unlocked) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(&mut self, req: &Request<'_>, _ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        self.spawn("fsync", req, |core, _| async move {
            match core.fsync(fh).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&mut self, req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        self.spawn("opendir", req, |core, _| async move {
            match core.opendir(ino).await {
                Ok(fh) => reply.opened(fh, 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let start = Instant::now();
        let now = self
            .core
            .readdir_names_now(fh, ino, offset, 512, |ino, off, k, n| {
                reply.add(ino, off, kind(k), OsStr::from_bytes(n))
            });
        if let Some(r) = now {
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
            return served_op("readdir", start);
        }
        self.spawn("readdir", req, |core, _| async move {
            match core.readdir_names(fh, ino, offset, 512).await {
                Ok(entries) => {
                    for e in entries {
                        if reply.add(e.ino, e.offset, kind(e.kind), OsStr::from_bytes(&e.name)) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.spawn("readdirplus", req, |core, ttl| async move {
            match core.readdir(fh, ino, offset, 128).await {
                Ok(entries) => {
                    for e in entries {
                        if reply.add(
                            e.attr.ino,
                            e.offset,
                            OsStr::from_bytes(&e.name),
                            &ttl,
                            &file_attr(&e.attr),
                            0,
                        ) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh);
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&mut self, req: &Request<'_>, ino: u64, reply: ReplyStatfs) {
        self.spawn("statfs", req, move |core, _| async move {
            match core.statfs(ino).await {
                Ok((s, files_free)) => {
                    let bsize = 4096u64;
                    let ffree = files_free.unwrap_or(1 << 30);
                    reply.statfs(
                        s.total_bytes / bsize,
                        s.free_bytes / bsize,
                        s.free_bytes / bsize,
                        s.files + ffree,
                        ffree,
                        bsize as u32,
                        255,
                        bsize as u32,
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (n, uid, gid) = (name(n), req.uid(), req.gid());
        self.spawn("create", req, |core, ttl| async move {
            match core.create(parent, &n, mode & 0o7777, uid, gid).await {
                Ok((a, fh)) => reply.created(&ttl, &file_attr(&a), 0, fh, 0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &mut self,
        req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if offset < 0 || length <= 0 {
            return reply.error(libc::EINVAL);
        }
        let pid = req.pid();
        self.spawn("fallocate", req, |core, _| async move {
            match core
                .fallocate(fh, offset as u64, length as u64, mode, pid)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}
