//! POSIX permissions, checked by the master for the user a request acts as.
//!
//! A mount's kernel checks permissions too (default_permissions), but a client that speaks the
//! protocol itself bypasses its kernel; these checks make the master the one that decides. They
//! follow POSIX: search (x) on a directory to look up in it, write and search to change its
//! entries, the sticky bit, read/write to open, owner-only chmod, root-only chown, and chgrp to
//! one's own groups. Root passes every check but exec.

use crate::meta::Meta;
use crate::MasterError;
use shardfs_common::pki::Identity;
use shardfs_common::proto::{
    Attr, Caller, FileKind, MasterRequest, SetAttr, Users, ACCESS_READ, ACCESS_WRITE, NOBODY,
};
use shardfs_common::{Error, ErrorCode, Ino};

pub const R: u32 = 4;
pub const W: u32 = 2;
pub const X: u32 = 1;

/// Whether `c` may access `a` for `want` (R|W|X bits).
pub fn allowed(a: &Attr, c: &Caller, want: u32) -> bool {
    let mode = a.perm as u32;
    if c.uid == 0 {
        // Root may read and write anything, and search directories; execute needs some x bit.
        return want & X == 0 || a.kind == FileKind::Dir || mode & 0o111 != 0;
    }
    let bits = if c.uid == a.uid {
        (mode >> 6) & 7
    } else if c.in_group(a.gid) {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    bits & want == want
}

fn denied(what: impl Into<String>) -> MasterError {
    MasterError::Fs(Error::fs(ErrorCode::Access, what))
}

fn not_permitted(what: impl Into<String>) -> MasterError {
    MasterError::Fs(Error::fs(ErrorCode::Permission, what))
}

fn need(meta: &Meta, ino: Ino, c: &Caller, want: u32, what: &str) -> Result<Attr, MasterError> {
    let a = meta.getattr(ino)?;
    if allowed(&a, c, want) {
        Ok(a)
    } else {
        Err(denied(format!("uid {} may not {what}", c.uid)))
    }
}

/// In a sticky directory only the owner of an entry, of the directory, or root may remove or
/// rename it.
fn sticky_ok(
    meta: &Meta,
    dir: &Attr,
    parent: Ino,
    name: &[u8],
    c: &Caller,
) -> Result<(), MasterError> {
    if dir.perm as u32 & libc::S_ISVTX == 0 || c.uid == 0 || c.uid == dir.uid {
        return Ok(());
    }
    match meta.lookup(parent, name) {
        Ok(e) if e.uid != c.uid => Err(not_permitted(format!(
            "uid {} may not remove another user's entry from a sticky directory",
            c.uid
        ))),
        _ => Ok(()),
    }
}

fn check_setattr(meta: &Meta, ino: Ino, set: &SetAttr, c: &Caller) -> Result<(), MasterError> {
    if c.uid == 0 {
        return Ok(());
    }
    let a = meta.getattr(ino)?;
    let owner = c.uid == a.uid;
    if set.mode.is_some() && !owner {
        return Err(not_permitted(format!(
            "uid {} may not chmod a file it does not own",
            c.uid
        )));
    }
    if set.uid.is_some_and(|u| u != a.uid) {
        return Err(not_permitted(format!(
            "uid {} may not change a file's owner",
            c.uid
        )));
    }
    if let Some(g) = set.gid.filter(|g| *g != a.gid) {
        if !owner || !c.in_group(g) {
            return Err(not_permitted(format!(
                "uid {} may not change the group to {g}",
                c.uid
            )));
        }
    }
    if set.size.is_some() && !allowed(&a, c, W) {
        return Err(denied(format!("uid {} may not truncate this file", c.uid)));
    }
    if (set.atime.is_some() || set.mtime.is_some()) && !owner && !allowed(&a, c, W) {
        return Err(not_permitted(format!(
            "uid {} may not set this file's times",
            c.uid
        )));
    }
    Ok(())
}

/// The set-ID bits a change of regular file `a` by `c` clears, as Linux does: a write or a
/// truncate by anyone but root clears set-user-ID, and set-group-ID if the file is
/// group-executable or `c` is not in its group; a change of owner or group (`chown`) clears
/// them whoever makes it (set-group-ID, for root, only if group-executable).
pub fn privs_to_drop(a: &Attr, c: &Caller, chown: bool) -> u16 {
    if a.kind != FileKind::File || (!chown && c.uid == 0) {
        return 0;
    }
    let perm = a.perm as u32;
    let mut clear = perm & libc::S_ISUID;
    let in_group = c.uid == 0 || c.in_group(a.gid);
    if perm & libc::S_ISGID != 0 && (perm & libc::S_IXGRP != 0 || !in_group) {
        clear |= libc::S_ISGID;
    }
    clear as u16
}

/// A chown or truncate that does not set the mode itself clears the set-ID bits it must
/// (the kernel leaves that to the filesystem: FUSE_HANDLE_KILLPRIV_V2).
fn drop_privs_with(
    meta: &Meta,
    ino: Ino,
    set: &mut SetAttr,
    c: &Caller,
) -> Result<(), MasterError> {
    let chown = set.uid.is_some() || set.gid.is_some();
    if set.mode.is_some() || !(chown || set.size.is_some()) {
        return Ok(());
    }
    let a = meta.getattr(ino)?;
    let clear = privs_to_drop(&a, c, chown);
    if clear != 0 {
        set.mode = Some((a.perm & !clear) as u32);
    }
    Ok(())
}

/// Keep caller `c` within the users credential `who` may act as: a uid or primary gid outside
/// them is refused, supplementary groups outside them count for nothing. Nobody (what root
/// is squashed to) is always allowed.
pub fn within(users: &Users, who: &Identity, c: &mut Caller) -> Result<(), MasterError> {
    if c.uid != NOBODY && !users.uids.contains(c.uid) {
        return Err(not_permitted(format!(
            "{who} may not act as uid {} (it may act as uids {})",
            c.uid, users.uids
        )));
    }
    if c.gid != NOBODY && !users.gids.contains(c.gid) {
        return Err(not_permitted(format!(
            "{who} may not act as gid {} (it may act as gids {})",
            c.gid, users.gids
        )));
    }
    c.groups.retain(|g| users.gids.contains(*g));
    Ok(())
}

/// Check `req` for `c`; may rewrite it (a created entry belongs to its creator).
pub fn check(meta: &Meta, c: &Caller, req: &mut MasterRequest) -> Result<(), MasterError> {
    use MasterRequest as Q;
    match req {
        Q::Lookup { parent, .. } => {
            need(meta, *parent, c, X, "search this directory")?;
        }
        Q::ReadDir { ino, .. } | Q::ReadDirNames { ino, .. } => {
            need(meta, *ino, c, R, "list this directory")?;
        }
        Q::Create {
            parent, uid, gid, ..
        }
        | Q::Symlink {
            parent, uid, gid, ..
        } => {
            need(meta, *parent, c, W | X, "create entries in this directory")?;
            *uid = c.uid;
            if !c.in_group(*gid) && c.uid != 0 {
                *gid = c.gid;
            }
        }
        Q::Link { ino, parent, .. } => {
            need(meta, *parent, c, W | X, "create entries in this directory")?;
            let a = meta.getattr(*ino)?;
            if a.kind == FileKind::Dir {
                return Err(not_permitted("directories cannot be linked"));
            }
        }
        Q::Unlink { parent, name, .. } | Q::Rmdir { parent, name, .. } => {
            let dir = need(
                meta,
                *parent,
                c,
                W | X,
                "remove entries from this directory",
            )?;
            sticky_ok(meta, &dir, *parent, name, c)?;
        }
        Q::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ..
        } => {
            let from = need(
                meta,
                *parent,
                c,
                W | X,
                "move entries out of this directory",
            )?;
            sticky_ok(meta, &from, *parent, name, c)?;
            let to = need(
                meta,
                *new_parent,
                c,
                W | X,
                "move entries into this directory",
            )?;
            sticky_ok(meta, &to, *new_parent, new_name, c)?;
        }
        Q::Open { ino, access, .. } => {
            let mut want = 0;
            if *access & ACCESS_READ != 0 || *access == 0 {
                want |= R;
            }
            if *access & ACCESS_WRITE != 0 {
                want |= W;
            }
            need(meta, *ino, c, want, "open this file so")?;
        }
        Q::SetAttr { ino, set, .. } => {
            check_setattr(meta, *ino, set, c)?;
            drop_privs_with(meta, *ino, set, c)?;
        }
        Q::DropPrivs { ino, clear, .. } => {
            need(meta, *ino, c, W, "write this file")?;
            *clear = privs_to_drop(&meta.getattr(*ino)?, c, false);
        }
        Q::SetXattr { ino, name, .. } | Q::RemoveXattr { ino, name, .. } => {
            xattr(meta, *ino, name, c, W)?;
        }
        Q::GetXattr { ino, name } => xattr(meta, *ino, name, c, R)?,
        Q::ListXattr { ino } => {
            need(meta, *ino, c, R, "list this file's attributes")?;
        }
        _ => {}
    }
    Ok(())
}

/// user.* attributes follow the file's permissions, but user.shardfs.policy* (storage
/// policies) are read by anyone and set by the owner or root, user.shardfs.quota* read by
/// anyone and set by root; others (trusted.*, security.*) are root's.
fn xattr(meta: &Meta, ino: Ino, name: &[u8], c: &Caller, want: u32) -> Result<(), MasterError> {
    if name.starts_with(crate::quota::PREFIX) {
        if want == R || c.uid == 0 {
            Ok(())
        } else {
            Err(not_permitted("only root may set a quota"))
        }
    } else if name.starts_with(crate::policy::PREFIX) {
        if want == R || c.uid == 0 || meta.getattr(ino)?.uid == c.uid {
            Ok(())
        } else {
            Err(not_permitted(
                "only the owner or root may change a storage policy",
            ))
        }
    } else if name.starts_with(b"user.") {
        need(meta, ino, c, want, "use this file's attributes")?;
        Ok(())
    } else if c.uid == 0 || want == R {
        Ok(())
    } else {
        Err(not_permitted("only root may set attributes outside user.*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardfs_common::proto::Timespec;

    fn attr(kind: FileKind, perm: u16, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: 2,
            kind,
            perm,
            nlink: 1,
            uid,
            gid,
            size: 0,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            rdev: 0,
            version: 0,
        }
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn owner_group_other_and_root() {
        let f = attr(FileKind::File, 0o640, 1000, 100);
        assert!(allowed(&f, &user(1000, 1000, &[]), R | W));
        assert!(allowed(&f, &user(2000, 100, &[]), R));
        assert!(!allowed(&f, &user(2000, 100, &[]), W));
        assert!(allowed(&f, &user(2000, 5, &[100]), R));
        assert!(!allowed(&f, &user(2000, 5, &[]), R));
        assert!(allowed(&f, &Caller::root(), R | W));
        assert!(!allowed(&f, &Caller::root(), X));
        let d = attr(FileKind::Dir, 0o700, 1000, 100);
        assert!(allowed(&d, &Caller::root(), X));
        assert!(!allowed(&d, &user(2000, 100, &[]), X));
        // The owner class decides even if group or other would allow more.
        let odd = attr(FileKind::File, 0o077, 1000, 100);
        assert!(!allowed(&odd, &user(1000, 100, &[]), R));
    }
}
