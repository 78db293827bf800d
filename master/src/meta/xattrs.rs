//! Extended attributes stored with an inode (`A` ino name).

use super::*;

impl Meta {
    /// Set extended attribute `name` of `ino`; the inode's ctime changes.
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: i32,
        now: Timespec,
    ) -> Result<Attr, MasterError> {
        check_xattr_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(fs_err(ErrorCode::ArgTooBig, "attribute value over 64 KiB"));
        }
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut rec = txn.inode(ino)?;
        let exists = self.get::<Vec<u8>>(&k_xattr(ino, name))?.is_some();
        if flags & 1 != 0 && exists {
            return Err(fs_err(ErrorCode::Exists, "attribute exists"));
        }
        if flags & 2 != 0 && !exists {
            return Err(fs_err(ErrorCode::NoData, "no such attribute"));
        }
        txn.batch.put(k_xattr(ino, name), enc(&value.to_vec()));
        rec.attr.ctime = now;
        let attr = rec.attr.clone();
        txn.put_inode(rec);
        txn.commit()?;
        Ok(attr)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MasterError> {
        check_xattr_name(name)?;
        self.inode(ino)?;
        self.get::<Vec<u8>>(&k_xattr(ino, name))?
            .ok_or_else(|| fs_err(ErrorCode::NoData, "no such attribute"))
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>, MasterError> {
        self.inode(ino)?;
        let p = k_xattr_prefix(ino);
        Ok(self
            .keys(&p)?
            .into_iter()
            .map(|k| k[p.len()..].to_vec())
            .collect())
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8], now: Timespec) -> Result<Attr, MasterError> {
        check_xattr_name(name)?;
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut rec = txn.inode(ino)?;
        if self.get::<Vec<u8>>(&k_xattr(ino, name))?.is_none() {
            return Err(fs_err(ErrorCode::NoData, "no such attribute"));
        }
        txn.batch.delete(k_xattr(ino, name));
        rec.attr.ctime = now;
        let attr = rec.attr.clone();
        txn.put_inode(rec);
        txn.commit()?;
        Ok(attr)
    }

    /// A write's loss of privileges (see `MasterRequest::DropPrivs`): mode bits `clear` and
    /// `security.capability` go; the ctime changes if anything did.
    pub fn drop_privs(&self, ino: Ino, clear: u16, now: Timespec) -> Result<Attr, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut rec = txn.inode(ino)?;
        let cap = self.get::<Vec<u8>>(&k_xattr(ino, CAPABILITY))?.is_some();
        if cap {
            txn.batch.delete(k_xattr(ino, CAPABILITY));
        }
        if !cap && rec.attr.perm & clear == 0 {
            return Ok(rec.attr);
        }
        rec.attr.perm &= !clear;
        rec.attr.ctime = now;
        let attr = rec.attr.clone();
        txn.put_inode(rec);
        txn.commit()?;
        Ok(attr)
    }
}

/// The file capabilities a change of the file's content or owner takes away.
pub(super) const CAPABILITY: &[u8] = b"security.capability";
