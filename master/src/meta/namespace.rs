//! The namespace: inodes, directory entries, lookups, attributes, creating, linking, removing and renaming.

use super::*;

/// Directory entries as stored: (key, record).
type Dentries = Vec<(Vec<u8>, DentryRecord)>;

impl Meta {
    pub fn inode(&self, ino: Ino) -> Result<InodeRecord, MasterError> {
        let key = k_inode(ino);
        match self.db.get_pinned(&key).map_err(db_err)? {
            Some(raw) => dec_inode(&key, &raw),
            None => Err(not_found_ino(ino)),
        }
    }

    pub(super) fn dentry(
        &self,
        parent: Ino,
        name: &[u8],
    ) -> Result<Option<DentryRecord>, MasterError> {
        self.get(&k_dentry(parent, name))
    }

    pub(super) fn alloc_ino(&self, batch: &mut WriteBatch) -> Ino {
        let mut n = self.next_ino.lock().expect("ino lock");
        let ino = *n;
        *n += 1;
        batch.put(K_NEXT_INO, n.to_be_bytes());
        ino
    }

    pub(super) fn dir(&self, txn: &mut Txn, ino: Ino) -> Result<InodeRecord, MasterError> {
        let rec = txn.inode(ino)?;
        if rec.attr.kind != FileKind::Dir {
            return Err(fs_err(
                ErrorCode::NotDir,
                format!("inode {ino} is not a directory"),
            ));
        }
        Ok(rec)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, MasterError> {
        let d = self.dentry(parent, name)?.ok_or_else(|| {
            MasterError::Fs(Error::not_found(format!(
                "no entry {:?} in directory {parent}",
                String::from_utf8_lossy(name)
            )))
        })?;
        Ok(self.inode(d.ino)?.attr)
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, MasterError> {
        Ok(self.inode(ino)?.attr)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, MasterError> {
        self.inode(ino)?
            .target
            .ok_or_else(|| fs_err(ErrorCode::Invalid, format!("inode {ino} is not a symlink")))
    }

    /// Change attributes. A size change makes a new content version; it counts as made by
    /// `session` on top of its own changes only if the writer's `base` was current.
    pub fn setattr(
        &self,
        ino: Ino,
        set: &SetAttr,
        session: u64,
        base: Option<u64>,
    ) -> Result<Attr, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut rec = txn.inode(ino)?;
        let before = rec.attr.version;
        let on_top = base.is_none_or(|b| b == before || self.made_by(ino, before, session));
        let a = &mut rec.attr;
        // A new owner, group or size takes the file's capabilities away (as on Linux).
        if a.kind == FileKind::File
            && (set.uid.is_some() || set.gid.is_some() || set.size.is_some())
        {
            txn.batch.delete(k_xattr(ino, xattrs::CAPABILITY));
        }
        if let Some(mode) = set.mode {
            a.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            a.uid = uid;
        }
        if let Some(gid) = set.gid {
            a.gid = gid;
        }
        if let Some(size) = set.size {
            if a.kind == FileKind::Dir {
                return Err(fs_err(ErrorCode::IsDir, "cannot truncate a directory"));
            }
            if size < a.size {
                self.cut_slots(&mut txn, ino, size, &HashSet::new())?;
            }
            if size != a.size {
                a.mtime = set.now;
                a.version += 1;
            }
            a.size = size;
            if set.mtime.is_none() {
                a.mtime = set.now;
            }
        }
        if let Some(t) = set.atime {
            a.atime = t;
        }
        if let Some(t) = set.mtime {
            a.mtime = t;
        }
        a.ctime = set.now;
        let attr = a.clone();
        txn.put_inode(rec);
        txn.commit()?;
        if set.size.is_some() && on_top {
            self.wrote(ino, attr.version, session);
        }
        Ok(attr)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: Option<Vec<u8>>,
        now: Timespec,
    ) -> Result<(Attr, Changes), MasterError> {
        check_name(name).map_err(MasterError::Fs)?;
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut p = self.dir(&mut txn, parent)?;
        if self.dentry(parent, name)?.is_some() {
            return Err(fs_err(
                ErrorCode::Exists,
                format!("{:?} already exists", String::from_utf8_lossy(name)),
            ));
        }
        let ino = self.alloc_ino(&mut txn.batch);
        let is_dir = kind == FileKind::Dir;
        // In a set-group-ID directory, new entries take the directory's group, and new
        // directories inherit the bit (as ext4 does).
        let (mut mode, mut gid) = (mode & 0o7777, gid);
        if p.attr.perm as u32 & libc::S_ISGID != 0 {
            gid = p.attr.gid;
            if is_dir {
                mode |= libc::S_ISGID;
            }
        }
        let attr = Attr {
            ino,
            kind,
            perm: mode as u16,
            nlink: if is_dir { 2 } else { 1 },
            uid,
            gid,
            size: target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
            atime: now,
            mtime: now,
            ctime: now,
            rdev,
            version: 0,
        };
        txn.batch
            .put(k_dentry(parent, name), enc(&DentryRecord { ino, kind }));
        if let Some(code) = self.policy(parent)? {
            txn.batch.put(k_policy(ino), enc(&code));
        }
        txn.put_inode(InodeRecord {
            attr: attr.clone(),
            parent,
            target,
        });
        if is_dir {
            p.attr.nlink += 1;
        }
        p.attr.mtime = now;
        p.attr.ctime = now;
        txn.put_inode(p);
        let changes = txn.commit()?;
        Ok((attr, changes))
    }

    pub fn link(
        &self,
        ino: Ino,
        parent: Ino,
        name: &[u8],
        now: Timespec,
    ) -> Result<(Attr, Changes), MasterError> {
        check_name(name).map_err(MasterError::Fs)?;
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut p = self.dir(&mut txn, parent)?;
        let mut rec = txn.inode(ino)?;
        if rec.attr.kind == FileKind::Dir {
            return Err(fs_err(
                ErrorCode::Permission,
                "cannot hard-link a directory",
            ));
        }
        if self.dentry(parent, name)?.is_some() {
            return Err(fs_err(
                ErrorCode::Exists,
                format!("{:?} already exists", String::from_utf8_lossy(name)),
            ));
        }
        rec.attr.nlink += 1;
        rec.attr.ctime = now;
        let attr = rec.attr.clone();
        txn.batch.put(
            k_dentry(parent, name),
            enc(&DentryRecord {
                ino,
                kind: attr.kind,
            }),
        );
        txn.put_inode(rec);
        p.attr.mtime = now;
        p.attr.ctime = now;
        txn.put_inode(p);
        let changes = txn.commit()?;
        Ok((attr, changes))
    }

    /// Drop one link to `ino` (its entry already removed by the caller).
    /// The last link of a file some mount has open leaves an orphan: no name, nlink 0, content
    /// kept until its last holder closes it ([`Meta::unhold`]).
    pub(super) fn drop_link(
        &self,
        txn: &mut Txn,
        ino: Ino,
        now: Timespec,
    ) -> Result<(), MasterError> {
        let mut rec = txn.inode(ino)?;
        if rec.attr.kind != FileKind::Dir && rec.attr.nlink <= 1 && self.is_held(ino) {
            rec.attr.nlink = 0;
            rec.attr.ctime = now;
            txn.put_inode(rec);
            txn.batch.put(k_orphan(ino), [VERSION]);
        } else if rec.attr.kind == FileKind::Dir || rec.attr.nlink <= 1 {
            txn.delete_inode(ino)?;
        } else {
            rec.attr.nlink -= 1;
            rec.attr.ctime = now;
            txn.put_inode(rec);
        }
        Ok(())
    }

    pub(super) fn is_empty_dir(&self, ino: Ino) -> Result<bool, MasterError> {
        let p = k_dentry_prefix(ino);
        let mut it = self.iter_within(&p, &p);
        match it.next() {
            Some(item) => Ok(!item.map_err(db_err)?.0.starts_with(&p)),
            None => Ok(true),
        }
    }

    pub fn unlink(&self, parent: Ino, name: &[u8], now: Timespec) -> Result<Changes, MasterError> {
        self.remove(parent, name, false, now)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8], now: Timespec) -> Result<Changes, MasterError> {
        self.remove(parent, name, true, now)
    }

    pub(super) fn remove(
        &self,
        parent: Ino,
        name: &[u8],
        dir: bool,
        now: Timespec,
    ) -> Result<Changes, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut p = self.dir(&mut txn, parent)?;
        let d = self.dentry(parent, name)?.ok_or_else(|| {
            MasterError::Fs(Error::not_found(format!(
                "no entry {:?}",
                String::from_utf8_lossy(name)
            )))
        })?;
        match (dir, d.kind == FileKind::Dir) {
            (false, true) => return Err(fs_err(ErrorCode::IsDir, "is a directory")),
            (true, false) => return Err(fs_err(ErrorCode::NotDir, "not a directory")),
            (true, true) if !self.is_empty_dir(d.ino)? => {
                return Err(fs_err(ErrorCode::NotEmpty, "directory not empty"))
            }
            _ => {}
        }
        txn.batch.delete(k_dentry(parent, name));
        self.drop_link(&mut txn, d.ino, now)?;
        if dir {
            p.attr.nlink = p.attr.nlink.saturating_sub(1);
        }
        p.attr.mtime = now;
        p.attr.ctime = now;
        txn.put_inode(p);
        txn.commit()
    }

    /// True if `dir` is `ancestor` or lies below it.
    pub(super) fn is_within(
        &self,
        txn: &mut Txn,
        mut dir: Ino,
        ancestor: Ino,
    ) -> Result<bool, MasterError> {
        for _ in 0..100_000 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = txn.inode(dir)?.parent;
        }
        Err(MasterError::Corrupt(
            "directory parent chain does not reach the root".into(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
        now: Timespec,
    ) -> Result<Changes, MasterError> {
        check_name(new_name).map_err(MasterError::Fs)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(fs_err(ErrorCode::Invalid, "unsupported rename flags"));
        }
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        self.dir(&mut txn, parent)?;
        self.dir(&mut txn, new_parent)?;
        let src = self.dentry(parent, name)?.ok_or_else(|| {
            MasterError::Fs(Error::not_found(format!(
                "no entry {:?}",
                String::from_utf8_lossy(name)
            )))
        })?;
        let dst = self.dentry(new_parent, new_name)?;
        if parent == new_parent && name == new_name {
            return Ok(Changes::default());
        }
        let src_dir = src.kind == FileKind::Dir;
        let dst_is_dir = dst.as_ref().is_some_and(|d| d.kind == FileKind::Dir);
        if src_dir || (dst_is_dir && flags & RENAME_EXCHANGE != 0) {
            txn.check_move(parent, new_parent)?;
        }
        if src_dir && self.is_within(&mut txn, new_parent, src.ino)? {
            return Err(fs_err(
                ErrorCode::Invalid,
                "cannot move a directory into itself",
            ));
        }
        if flags & RENAME_EXCHANGE != 0 {
            let dst =
                dst.ok_or_else(|| MasterError::Fs(Error::not_found("exchange target missing")))?;
            if dst.kind == FileKind::Dir && self.is_within(&mut txn, parent, dst.ino)? {
                return Err(fs_err(
                    ErrorCode::Invalid,
                    "cannot move a directory into itself",
                ));
            }
            txn.batch.put(k_dentry(parent, name), enc(&dst));
            txn.batch.put(k_dentry(new_parent, new_name), enc(&src));
            for (ino, to) in [(src.ino, new_parent), (dst.ino, parent)] {
                let mut r = txn.inode(ino)?;
                r.parent = to;
                r.attr.ctime = now;
                txn.put_inode(r);
            }
            if parent != new_parent && src_dir != (dst.kind == FileKind::Dir) {
                let (gain, lose) = if src_dir {
                    (new_parent, parent)
                } else {
                    (parent, new_parent)
                };
                let mut g = txn.inode(gain)?;
                g.attr.nlink += 1;
                txn.put_inode(g);
                let mut l = txn.inode(lose)?;
                l.attr.nlink = l.attr.nlink.saturating_sub(1);
                txn.put_inode(l);
            }
        } else {
            if let Some(dst) = &dst {
                if flags & RENAME_NOREPLACE != 0 {
                    return Err(fs_err(ErrorCode::Exists, "target exists"));
                }
                if dst.ino == src.ino {
                    return Ok(Changes::default());
                }
                let dst_dir = dst.kind == FileKind::Dir;
                if src_dir && !dst_dir {
                    return Err(fs_err(ErrorCode::NotDir, "target is not a directory"));
                }
                if !src_dir && dst_dir {
                    return Err(fs_err(ErrorCode::IsDir, "target is a directory"));
                }
                if dst_dir && !self.is_empty_dir(dst.ino)? {
                    return Err(fs_err(ErrorCode::NotEmpty, "target directory not empty"));
                }
                self.drop_link(&mut txn, dst.ino, now)?;
                if dst_dir {
                    let mut np = txn.inode(new_parent)?;
                    np.attr.nlink = np.attr.nlink.saturating_sub(1);
                    txn.put_inode(np);
                }
            }
            txn.batch.delete(k_dentry(parent, name));
            txn.batch.put(k_dentry(new_parent, new_name), enc(&src));
            let mut r = txn.inode(src.ino)?;
            r.parent = new_parent;
            r.attr.ctime = now;
            txn.put_inode(r);
            if src_dir && parent != new_parent {
                let mut op = txn.inode(parent)?;
                op.attr.nlink = op.attr.nlink.saturating_sub(1);
                txn.put_inode(op);
                let mut np = txn.inode(new_parent)?;
                np.attr.nlink += 1;
                txn.put_inode(np);
            }
        }
        for p in [parent, new_parent] {
            let mut r = txn.inode(p)?;
            r.attr.mtime = now;
            r.attr.ctime = now;
            txn.put_inode(r);
        }
        txn.commit()
    }

    /// Up to `limit` dentries of directory `ino` after the name `after`, and whether more
    /// follow.
    fn dentries(
        &self,
        ino: Ino,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Dentries, bool), MasterError> {
        let rec = self.inode(ino)?;
        if rec.attr.kind != FileKind::Dir {
            return Err(fs_err(ErrorCode::NotDir, "not a directory"));
        }
        let prefix = k_dentry_prefix(ino);
        let start = match after {
            Some(a) => {
                let mut s = k_dentry(ino, a);
                s.push(0);
                s
            }
            None => prefix.clone(),
        };
        let mut rows = self.scan::<DentryRecord>(&prefix, &start, limit + 1)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    /// The names in directory `ino` after `after` with their inodes and kinds: dentries only,
    /// no inode record read.
    pub fn readdir_names(
        &self,
        ino: Ino,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<NameEntry>, bool), MasterError> {
        let (rows, more) = self.dentries(ino, after, limit)?;
        let prefix = k_dentry_prefix(ino).len();
        let names = rows
            .into_iter()
            .map(|(k, d)| NameEntry {
                name: k[prefix..].to_vec(),
                ino: d.ino,
                kind: d.kind,
            })
            .collect();
        Ok((names, more))
    }

    pub fn readdir(
        &self,
        ino: Ino,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<DirEntry>, bool), MasterError> {
        let (rows, more) = self.dentries(ino, after, limit)?;
        let keys: Vec<Vec<u8>> = rows.iter().map(|(_, d)| k_inode(d.ino)).collect();
        let mut entries = Vec::with_capacity(rows.len());
        for ((k, _), raw) in rows.iter().zip(self.db.multi_get(&keys)) {
            let Some(raw) = raw.map_err(db_err)? else {
                continue;
            };
            let r = dec_inode(k, &raw)?;
            entries.push(DirEntry {
                name: k[9..].to_vec(),
                attr: r.attr,
            });
        }
        Ok((entries, more))
    }

    /// The name under which `ino` is linked in `parent` (a scan of the directory).
    pub(super) fn dentry_name(
        &self,
        parent: Ino,
        ino: Ino,
    ) -> Result<Option<Vec<u8>>, MasterError> {
        let prefix = k_dentry_prefix(parent);
        for (k, d) in self.scan::<DentryRecord>(&prefix, &prefix, usize::MAX)? {
            if d.ino == ino {
                return Ok(Some(k[prefix.len()..].to_vec()));
            }
        }
        Ok(None)
    }
}
