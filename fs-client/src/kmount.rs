//! The kernel side of a mount, done here rather than by the FUSE library when running as root:
//! the filesystem is mounted with type `fuse.shardfs` (so /proc/mounts, `df -T` and `findmnt`
//! name it, and mount(8) hands `mount -o remount,ro` of it to our `mount.fuse.shardfs` helper),
//! remounted read-only or read-write on request, and unmounted by the mount process itself.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Kernel mount options of a ShardFS mount.
#[derive(Clone, Debug, Default)]
pub struct KernelOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub default_permissions: bool,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Open /dev/fuse and mount it on `mountpoint`; the returned descriptor carries the requests.
pub fn mount(mountpoint: &Path, source: &str, o: &KernelOptions) -> io::Result<OwnedFd> {
    let mode = std::fs::metadata(mountpoint)?.mode();
    // SAFETY: plain open(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let dev = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut data = format!(
        "fd={fd},rootmode={:o},user_id={},group_id={}",
        mode & libc::S_IFMT,
        unsafe { libc::getuid() },
        unsafe { libc::getgid() }
    );
    if o.allow_other {
        data.push_str(",allow_other");
    }
    if o.default_permissions {
        data.push_str(",default_permissions");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if o.read_only {
        flags |= libc::MS_RDONLY;
    }
    let (src, mp, data) = (
        CString::new(source).map_err(|_| io::Error::other("source contains a NUL byte"))?,
        cpath(mountpoint)?,
        CString::new(data).expect("no NUL in mount data"),
    );
    // SAFETY: every pointer is a valid NUL-terminated string for the duration of the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            mp.as_ptr(),
            c"fuse.shardfs".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok(dev)
}

/// Switch a mounted ShardFS between read-only and read-write.
pub fn remount(mountpoint: &Path, read_only: bool) -> io::Result<()> {
    let mp = cpath(mountpoint)?;
    let mut flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY: valid C strings; no data argument.
    check(unsafe {
        libc::mount(
            c"".as_ptr(),
            mp.as_ptr(),
            c"fuse.shardfs".as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
}

/// Unmount; `lazy` detaches it even while files on it are in use.
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let mp = cpath(mountpoint)?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(mp.as_ptr(), if lazy { libc::MNT_DETACH } else { 0 }) })
}
