//! The mount's session with the master, and advisory locks.
//!
//! The session tells the master this mount is alive (renewed every quarter lease), which files
//! it has open (an unlinked file stays readable while open here) and which locks it holds.
//! When the master forgets the session (it restarted, or the mount was cut off past the lease),
//! the next renewal opens it again under the same id with the open files and held locks.
//!
//! Locks are the master's: F_SETLK / LOCK_NB ask once; F_SETLKW / a blocking flock ask in
//! rounds of one second (the master answers as soon as the holder lets go) until granted, or
//! until the waiting process has a signal pending (EINTR), so Ctrl-C and kill work on a
//! process stuck waiting for a lock.

use crate::core::Core;
use crate::master::unexpected;
use shardfs_common::locks::{LockKind, LockOwner, LockRange};
use shardfs_common::proto::{Change, MasterRequest, MasterResponse, CLOSE_MAX};
use shardfs_common::{Error, ErrorCode, Ino, Result};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Closes made within this long of the first are told to the master together.
const CLOSE_GATHER: Duration = Duration::from_millis(2);

pub(crate) use shardfs_common::join::host_name;

fn user_name() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return format!("uid{}", libc::geteuid());
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// The lock kind of a `struct flock` type.
pub fn lock_kind(typ: i32) -> Result<LockKind> {
    match typ {
        libc::F_RDLCK => Ok(LockKind::Read),
        libc::F_WRLCK => Ok(LockKind::Write),
        libc::F_UNLCK => Ok(LockKind::Unlock),
        t => Err(Error::invalid(format!("unknown lock type {t}"))),
    }
}

pub fn lock_type(k: LockKind) -> i32 {
    match k {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
        LockKind::Unlock => libc::F_UNLCK,
    }
}

/// True if thread `pid` has a signal pending that it neither blocks nor ignores.
fn signal_pending(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true; // gone: nobody is waiting any more
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    pending & !field("SigBlk:") & !field("SigIgn:") != 0
}

impl Core {
    /// Open the session and keep it renewed until [`Core::end_session`].
    pub async fn start_session(self: &Arc<Self>, mountpoint: String) -> Result<()> {
        let lease = self.open_session(&mountpoint).await?;
        // A shared core (the master's web UI) trusts nothing it caches, so the change log
        // would tell it nothing: following it cost the master one answer per change made by
        // any mount.
        if !self.cfg.shared {
            self.watch_changes();
        }
        let core = Arc::downgrade(self);
        self.rt.spawn(async move {
            let every = (lease / 4).max(Duration::from_millis(200));
            loop {
                tokio::time::sleep(every).await;
                let Some(core) = core.upgrade() else { return };
                let id = core.session.load(Ordering::Relaxed);
                if id == 0 {
                    return; // ended
                }
                // A rotated or dropped data key reaches this mount within a renewal.
                core.refresh_keys().await;
                match core.master.call(MasterRequest::SessionRenew { id }).await {
                    Ok(_) => {}
                    Err(e) if e.code() == ErrorCode::NotFound => {
                        info!("the master lost this mount's session (restart?); opening it again");
                        if let Err(e) = core.open_session(&mountpoint).await {
                            warn!("cannot open the session again: {e}");
                        }
                    }
                    Err(e) => debug!("session renewal failed: {e}"),
                }
            }
        });
        Ok(())
    }

    /// Follow the master's change log and drop the kernel's (and this mount's) cached
    /// attributes, pages and names of whatever other mounts change.
    fn watch_changes(self: &Arc<Self>) {
        let core = Arc::downgrade(self);
        self.rt.spawn(async move {
            let mut after = u64::MAX;
            loop {
                let (master, me) = {
                    let Some(c) = core.upgrade() else { return };
                    (c.master.clone(), c.session.load(Ordering::Relaxed))
                };
                if me == 0 {
                    if let Some(c) = core.upgrade() {
                        c.stopped_watching();
                    }
                    return;
                }
                match master.call(MasterRequest::Watch { after }).await {
                    Ok(MasterResponse::Changes { next, lost, events }) => {
                        let Some(c) = core.upgrade() else { return };
                        if lost {
                            c.forget_cached();
                            c.forget_dirs();
                        }
                        for e in events {
                            if e.origin != me || e.origin == 0 {
                                match e.change {
                                    Change::Inode(ino) => {
                                        c.forget_dir(ino);
                                        c.invalidate(ino)
                                    }
                                    Change::Entry { parent, name } => {
                                        c.forget_dir(parent);
                                        c.invalidate_entry(parent, name)
                                    }
                                }
                            }
                        }
                        after = next;
                        c.heard_log();
                    }
                    Ok(other) => {
                        if let Some(c) = core.upgrade() {
                            c.stopped_watching();
                        }
                        warn!("unexpected answer to a watch: {other:?}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        if let Some(c) = core.upgrade() {
                            c.stopped_watching();
                        }
                        debug!("watching changes: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }

    async fn open_session(&self, mountpoint: &str) -> Result<Duration> {
        let id = self.session.load(Ordering::Relaxed);
        let locks: Vec<LockRange> = self
            .locks
            .lock()
            .expect("locks lock")
            .all()
            .cloned()
            .collect();
        let req = MasterRequest::SessionOpen {
            id,
            host: host_name(),
            user: user_name(),
            mountpoint: mountpoint.to_string(),
            opens: self.open_inos(),
            locks,
        };
        match self.master.call(req).await? {
            MasterResponse::Session { id, lease_ms } => {
                self.session.store(id, Ordering::Relaxed);
                Ok(Duration::from_millis(lease_ms))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Tell the master this mount is going: its locks and open files are released at once.
    pub async fn end_session(&self) {
        let id = self.session.swap(0, Ordering::Relaxed);
        if id != 0 {
            let _ = self.master.call(MasterRequest::SessionClose { id }).await;
        }
    }

    /// The mount closed its last handle of `ino`, opened `opens` times at the master. Closes
    /// made within [`CLOSE_GATHER`] of each other go to the master in one request (a program
    /// writing many files closes one every fraction of a millisecond).
    pub(crate) fn closed(&self, ino: Ino, opens: u32) {
        let session = self.session.load(Ordering::Relaxed);
        if session == 0 || opens == 0 {
            return;
        }
        let first = {
            let mut c = self.closing.lock().expect("closing lock");
            c.push((session, ino, opens));
            c.len() == 1
        };
        if !first {
            return;
        }
        let (master, closing) = (self.master.clone(), self.closing.clone());
        self.rt.spawn(async move {
            tokio::time::sleep(CLOSE_GATHER).await;
            let all = std::mem::take(&mut *closing.lock().expect("closing lock"));
            let mut by_session: BTreeMap<u64, Vec<(Ino, u32)>> = BTreeMap::new();
            for (session, ino, opens) in all {
                by_session.entry(session).or_default().push((ino, opens));
            }
            for (session, files) in by_session {
                for chunk in files.chunks(CLOSE_MAX) {
                    let req = MasterRequest::Close {
                        session,
                        files: chunk.to_vec(),
                    };
                    if let Err(e) = master.call(req).await {
                        debug!(
                            files = chunk.len(),
                            "closes not delivered to the master: {e}"
                        );
                    }
                }
            }
        });
    }

    fn lock_range(
        &self,
        ino: Ino,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
        pid: u32,
    ) -> LockRange {
        LockRange {
            ino,
            owner: LockOwner {
                session: self.session.load(Ordering::Relaxed),
                owner,
            },
            start,
            end,
            kind,
            pid,
        }
    }

    /// fcntl F_SETLK/F_SETLKW and flock.
    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        ino: Ino,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        wait: bool,
    ) -> Result<()> {
        let lock = self.lock_range(ino, owner, start, end, lock_kind(typ)?, pid);
        loop {
            let req = MasterRequest::SetLock {
                lock: lock.clone(),
                wait_ms: if wait && lock.kind != LockKind::Unlock {
                    1000
                } else {
                    0
                },
            };
            match self.master.call(req).await {
                Ok(MasterResponse::Ok) => {
                    self.locks.lock().expect("locks lock").apply(lock);
                    return Ok(());
                }
                Ok(other) => return Err(unexpected(other)),
                Err(e) if e.code() == ErrorCode::Again && wait => {
                    if signal_pending(pid) {
                        return Err(Error::fs(
                            ErrorCode::Interrupted,
                            "interrupted while waiting for a lock",
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// fcntl F_GETLK: the lock that would block `typ` on this range, if any.
    pub async fn getlk(
        &self,
        ino: Ino,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
    ) -> Result<Option<LockRange>> {
        let lock = self.lock_range(ino, owner, start, end, lock_kind(typ)?, pid);
        match self.master.call(MasterRequest::GetLock { lock }).await? {
            MasterResponse::Lock(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    /// True if `owner` holds a lock on `ino` through this mount.
    pub fn holds_locks(&self, ino: Ino, owner: u64) -> bool {
        let owner = LockOwner {
            session: self.session.load(Ordering::Relaxed),
            owner,
        };
        self.locks.lock().expect("locks lock").holds(ino, owner)
    }

    /// A close by `owner`: drop its locks on `ino`.
    pub async fn release_locks(&self, ino: Ino, owner: u64) -> Result<()> {
        let owner = LockOwner {
            session: self.session.load(Ordering::Relaxed),
            owner,
        };
        if !self
            .locks
            .lock()
            .expect("locks lock")
            .release_owner(ino, owner)
        {
            return Ok(());
        }
        match self
            .master
            .call(MasterRequest::ReleaseLocks { ino, owner })
            .await?
        {
            MasterResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
