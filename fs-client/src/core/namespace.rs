//! Names and attributes: lookups, stats, setattr, creating, linking, removing and renaming entries, and the master calls they share.

use super::*;

impl Core {
    pub(super) async fn call(&self, req: MasterRequest) -> Result<MasterResponse> {
        self.call_granted(req).await.0
    }

    /// Send `req`, dropping what it changes from this mount's caches (when it is sent, and
    /// again when it is answered: an answer to another request that crossed it must not bring
    /// the old state back). The grant says whether what the answer reports may be held.
    pub(super) async fn call_granted(&self, req: MasterRequest) -> (Result<MasterResponse>, Grant) {
        self.call_granted_with(req, bytes::Bytes::new()).await
    }

    /// [`Core::call_granted`] with bulk bytes after the request (a commit's inline pieces).
    pub(super) async fn call_granted_with(
        &self,
        req: MasterRequest,
        bulk: bytes::Bytes,
    ) -> (Result<MasterResponse>, Grant) {
        let touched = req.touched();
        let fresh = self.log_fresh();
        let g = {
            let mut m = self.meta();
            m.drop_changes(&touched);
            m.before(fresh)
        };
        let r = match bulk.is_empty() {
            true => self.master.call(req).await,
            false => self.master.call_bulk(req, bulk, 0).await.map(|(r, _)| r),
        };
        let g = self.meta().after(g, &touched);
        (r, g)
    }

    pub(super) async fn call_attr(&self, req: MasterRequest) -> Result<Attr> {
        match self.call_granted(req).await {
            (Ok(MasterResponse::Attr(a)), g) => {
                self.remember(&a, g);
                Ok(self.patch(a))
            }
            (r, _) => Err(unexpected(r?)),
        }
    }

    /// A namespace change: cache what it reports and return the new inode's attributes
    /// (remembered under the name the change gave it, if any).
    pub(super) async fn call_changed(&self, req: MasterRequest) -> Result<Option<Attr>> {
        let named = new_entry(&req);
        match self.call_granted(req).await {
            (
                Ok(MasterResponse::Changed {
                    attr,
                    changed,
                    gone,
                    code,
                }),
                g,
            ) => {
                let gone: Vec<Change> = gone.into_iter().map(Change::Inode).collect();
                let g = self.meta().after(g, &gone);
                for a in &changed {
                    self.remember(a, g);
                }
                if let Some(a) = &attr {
                    self.note_code(a.ino, code);
                    self.remember(a, g);
                    if let Some((parent, name)) = named {
                        self.meta().put_name(parent, &name, a.ino, g);
                    }
                }
                Ok(attr.map(|a| self.patch(a)))
            }
            (r, _) => Err(unexpected(r?)),
        }
    }

    pub(super) async fn new_inode(&self, req: MasterRequest) -> Result<Attr> {
        self.call_changed(req)
            .await?
            .ok_or_else(|| Error::Protocol("the master did not return the new inode".into()))
    }

    /// Remember attributes from the master: held if `g` says so, else for the TTL (a TTL of
    /// zero caches nothing: every stat asks the master).
    pub(super) fn remember(&self, a: &Attr, g: Grant) {
        if self.cfg.attr_ttl.is_zero() {
            return;
        }
        self.meta().put_attr(a, g);
    }

    pub(super) fn cached_attr(&self, ino: Ino) -> Option<Attr> {
        let fresh = self.log_fresh();
        self.meta().attr(ino, self.cfg.attr_ttl, fresh)
    }

    /// Overlay this mount's unflushed size and mtime on attributes from the master.
    pub(super) fn patch(&self, mut a: Attr) -> Attr {
        if let Some(of) = self.open_file(a.ino) {
            let mut st = of.st.lock().expect("file lock");
            if st.has_local_changes() {
                a.size = st.attr.size;
                a.mtime = st.attr.mtime;
            }
            st.attr = a.clone();
        }
        a
    }

    /// A lookup this mount can answer from what it holds, without waiting for anything (so
    /// the FUSE thread answers it itself): the attributes of a held name, or ENOENT for a name
    /// absent from a directory known whole. None: ask [`Core::lookup`].
    pub fn lookup_now(&self, parent: Ino, name: &[u8]) -> Option<Result<Attr>> {
        if name.len() > shardfs_common::proto::NAME_MAX {
            return None;
        }
        if self.known_absent(parent, name) {
            return Some(Err(Error::fs(
                shardfs_common::ErrorCode::NotFound,
                "no such file or directory",
            )));
        }
        let fresh = self.log_fresh();
        let a = self.meta().lookup(parent, name, fresh)?;
        if a.kind == FileKind::File {
            self.name_of(a.ino, parent, name);
        }
        Some(Ok(self.patch(a)))
    }

    /// Attributes this mount can give without waiting (see [`Core::lookup_now`]).
    pub fn getattr_now(&self, ino: Ino) -> Option<Attr> {
        if let Some(of) = self.open_file(ino) {
            let st = of.st.lock().expect("file lock");
            if st.has_local_changes() {
                return Some(st.attr.clone());
            }
        }
        self.cached_attr(ino).map(|a| self.patch(a))
    }

    pub async fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > shardfs_common::proto::NAME_MAX {
            return Err(Error::fs(
                shardfs_common::ErrorCode::NameTooLong,
                "file name longer than 255 bytes",
            ));
        }
        if let Some(r) = self.lookup_now(parent, name) {
            return r;
        }
        if self.is_offline() {
            let known = self.meta().stale_name(parent, name);
            if let Some(a) = known.and_then(|ino| self.stale_attr(ino)) {
                return Ok(a);
            }
        }
        let req = MasterRequest::Lookup {
            parent,
            name: name.to_vec(),
        };
        let a = match self.call_granted(req).await {
            (Ok(MasterResponse::Attr(a)), g) => {
                self.remember(&a, g);
                self.meta().put_name(parent, name, a.ino, g);
                self.patch(a)
            }
            (r, _) => {
                let e = match r {
                    Ok(other) => unexpected(other),
                    Err(e) => e,
                };
                let known = self.meta().stale_name(parent, name);
                return match known {
                    Some(ino) => self.offline_attr(ino, e),
                    None => Err(e),
                };
            }
        };
        if a.kind == FileKind::File {
            self.name_of(a.ino, parent, name);
        }
        Ok(a)
    }

    pub(super) fn name_of(&self, ino: Ino, parent: Ino, name: &[u8]) {
        let mut names = self.names.lock().expect("names lock");
        if names.len() >= 65_536 {
            names.clear();
        }
        names.insert(ino, (parent, name.to_vec()));
    }

    pub async fn getattr(&self, ino: Ino) -> Result<Attr> {
        if let Some(a) = self.getattr_now(ino) {
            return Ok(a);
        }
        if self.is_offline() {
            if let Some(a) = self.stale_attr(ino) {
                return Ok(a);
            }
        }
        match self.call_attr(MasterRequest::GetAttr { ino }).await {
            Ok(a) => Ok(a),
            Err(e) => self.offline_attr(ino, e),
        }
    }

    /// Change attributes; `fh`: the open handle the change came through, if any.
    pub async fn setattr(&self, ino: Ino, fh: Option<u64>, mut set: SetAttr) -> Result<Attr> {
        self.xattrs.lock().expect("xattrs lock").pop(&ino);
        let of = self.open_file(ino);
        if let (Some(of), Some(size)) = (&of, set.size) {
            // A file open here changes size locally, like a write: the new size is committed
            // with the content (so a truncate-and-rewrite is one change, merged as one).
            // Uploads under way finish first, so none lands past the new end afterwards.
            of.uploads_settled().await;
            let mut st = of.st.lock().expect("file lock");
            if size < st.attr.size {
                st.cut = Some(st.cut.map_or(size, |c| c.min(size)));
            }
            st.truncate(size, self.cluster.block_size);
            // Data past the new size need not be stored first; if that was all that failed
            // to upload, the file is healthy again.
            if st.dirty.is_empty() && st.running == 0 {
                st.error = None;
            }
            st.meta_dirty = true;
            let change = st.touch();
            if let Some(fh) = fh {
                self.touched(fh, change);
            }
            st.attr.mtime = set.mtime.unwrap_or(set.now);
            st.attr.ctime = set.now;
            set.size = None;
            set.mtime = None;
            if set.mode.is_none() && set.uid.is_none() && set.gid.is_none() && set.atime.is_none() {
                return Ok(st.attr.clone());
            }
        }
        let only_mtime = set.size.is_none()
            && set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.atime.is_none();
        if let (Some(of), Some(mtime), true) = (&of, set.mtime, only_mtime) {
            // The time of a file written here and not yet published (tar, cp -p and rsync set
            // it just before closing) travels with the content's commit: no request of its
            // own.
            let mut st = of.st.lock().expect("file lock");
            if st.has_local_changes() {
                st.attr.mtime = mtime;
                st.attr.ctime = set.now;
                st.meta_dirty = true;
                let change = st.touch();
                if let Some(fh) = fh {
                    self.touched(fh, change);
                }
                return Ok(st.attr.clone());
            }
        }
        let size = set.size;
        let base = of
            .as_ref()
            .filter(|_| size.is_some())
            .map(|of| of.st.lock().expect("file lock").base);
        let a = match self
            .call_granted(MasterRequest::SetAttr { ino, set, base })
            .await
        {
            (Ok(MasterResponse::Attr(a)), g) => {
                self.remember(&a, g);
                a
            }
            (r, _) => return Err(unexpected(r?)),
        };
        if let Some(of) = of {
            let mut st = of.st.lock().expect("file lock");
            if let Some(size) = size {
                st.truncate(size, self.cluster.block_size);
            }
            let (local_size, local_mtime) = (st.attr.size, st.attr.mtime);
            st.attr = a.clone();
            if base.is_some_and(|b| a.version == b + 1) {
                // Our own size change on top of our base: the new base. (If someone else
                // changed the file before it, the base stays, and the next commit merges.)
                st.base = a.version;
                st.base_size = a.size;
                st.base_slots = st.slots.values().cloned().collect();
            }
            if st.has_local_changes() {
                st.attr.size = local_size;
                st.attr.mtime = local_mtime;
                return Ok(st.attr.clone());
            }
        }
        Ok(a)
    }

    pub async fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.call(MasterRequest::ReadLink { ino }).await? {
            MasterResponse::Link(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> Result<Attr> {
        self.create_inode(parent, name, kind, mode, uid, gid, rdev, 0)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_inode(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        session: u64,
    ) -> Result<Attr> {
        let req = MasterRequest::Create {
            parent,
            name: name.to_vec(),
            kind,
            mode,
            uid,
            gid,
            rdev,
            now: Timespec::now(),
            session,
        };
        let r = self.new_inode(req).await;
        self.dir_change(&r, &[parent], |k, a| {
            k.added(parent, name, Entry::of(a));
            if a.kind == FileKind::Dir {
                k.know(a.ino, []);
            }
        });
        if let Ok(a) = &r {
            self.born_bare(a.ino);
        }
        r
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let req = MasterRequest::Symlink {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
            uid,
            gid,
            now: Timespec::now(),
        };
        let r = self.new_inode(req).await;
        self.dir_change(&r, &[parent], |k, a| k.added(parent, name, Entry::of(a)));
        r
    }

    pub async fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        let r = self
            .new_inode(MasterRequest::Link {
                ino,
                parent,
                name: name.to_vec(),
                now: Timespec::now(),
            })
            .await;
        self.dir_change(&r, &[parent], |k, a| k.added(parent, name, Entry::of(a)));
        r
    }

    pub async fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let req = MasterRequest::Unlink {
            parent,
            name: name.to_vec(),
            now: Timespec::now(),
        };
        self.remove_entry(parent, name, req).await
    }

    pub async fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let req = MasterRequest::Rmdir {
            parent,
            name: name.to_vec(),
            now: Timespec::now(),
        };
        self.remove_entry(parent, name, req).await
    }

    /// Remove `parent/name` by `req` (an unlink or rmdir).
    async fn remove_entry(&self, parent: Ino, name: &[u8], req: MasterRequest) -> Result<()> {
        let r = self.call_changed(req).await;
        self.dir_change(&r, &[parent], |k, _| {
            k.removed(parent, name);
        });
        if r.is_ok() {
            self.forget_read(parent, name);
        }
        r.map(drop)
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        let target = if flags == 0 {
            self.merge_before_replace(parent, name, new_parent, new_name)
                .await?
        } else {
            new_name.to_vec()
        };
        let req = MasterRequest::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: target.clone(),
            flags,
            now: Timespec::now(),
        };
        let r = self.call_changed(req).await;
        self.dir_change(&r, &[parent, new_parent], |k, moved| {
            if flags & shardfs_common::proto::RENAME_EXCHANGE != 0 {
                // The two names now lead to each other's inode.
                k.forget(parent);
                k.forget(new_parent);
                return;
            }
            match k.removed(parent, name).or(moved.as_ref().map(Entry::of)) {
                Some(e) => k.added(new_parent, &target, e),
                None => k.forget(new_parent),
            }
        });
        let moved = r?;
        if flags & shardfs_common::proto::RENAME_EXCHANGE == 0 {
            self.forget_read(parent, name);
        }
        // The saved file is what this mount now has read under the name.
        if let Ok((attr, slots)) = async {
            let a = match moved {
                Some(a) => a,
                None => {
                    self.call_attr(MasterRequest::Lookup {
                        parent: new_parent,
                        name: target.clone(),
                    })
                    .await?
                }
            };
            if a.kind != FileKind::File {
                return Err(Error::fs(shardfs_common::ErrorCode::IsDir, "not a file"));
            }
            self.name_of(a.ino, new_parent, &target);
            match a.size {
                // Nothing stored: no map to ask for.
                0 => Ok((a, Vec::new())),
                _ => self.fetch_map(a.ino, false, 0).await,
            }
        }
        .await
        {
            self.remember_read(&attr, &slots);
        }
        Ok(())
    }

    /// Space and inodes as `df` of `ino` shows them: its directory quota's if one is over it,
    /// else the cluster's; and the inodes that may still be made, if limited.
    pub async fn statfs(&self, ino: Ino) -> Result<(FsStats, Option<u64>)> {
        match self.call(MasterRequest::StatFsAt { ino }).await? {
            MasterResponse::StatFsAt { stats, files_free } => Ok((stats, files_free)),
            MasterResponse::StatFs(s) => Ok((s, None)),
            other => Err(unexpected(other)),
        }
    }
}

/// The name a namespace change gives the inode it answers with, if one: a new entry, or the
/// target of a plain rename.
fn new_entry(req: &MasterRequest) -> Option<(Ino, Vec<u8>)> {
    match req {
        MasterRequest::Create { parent, name, .. }
        | MasterRequest::Symlink { parent, name, .. }
        | MasterRequest::Link { parent, name, .. } => Some((*parent, name.clone())),
        MasterRequest::Rename {
            new_parent,
            new_name,
            flags: 0,
            ..
        } => Some((*new_parent, new_name.clone())),
        _ => None,
    }
}
