//! Requests about a file's content and names that take more than one store call: opening, committing, replaying, creating, linking and renaming.

use super::misrouted;
use crate::*;
use shardfs_common::proto::{MasterRequest, MasterResponse};

impl Master {
    /// `MasterRequest::Create`.
    pub(crate) fn on_create(
        &self,
        req: MasterRequest,
        _from: &wire::Peer,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        use MasterResponse as A;
        let R::Create {
            parent,
            name,
            kind,
            mode,
            uid,
            gid,
            rdev,
            now,
            session,
        } = req
        else {
            return Err(misrouted());
        };
        Ok({
            if kind == FileKind::Symlink {
                return Err(Error::invalid("use Symlink to create symbolic links").into());
            }
            let created = self
                .meta
                .create(parent, &name, kind, mode, uid, gid, rdev, None, now)?;
            if kind == FileKind::File {
                self.sessions
                    .opened(&self.meta, session, created.0.ino, true);
            }
            let code = self.meta.policy(created.0.ino)?;
            let mut r = changed(created);
            if let A::Changed { code: c, .. } = &mut r {
                *c = code;
            }
            r
        })
    }

    /// `MasterRequest::Symlink`.
    pub(crate) fn on_symlink(
        &self,
        req: MasterRequest,
        _from: &wire::Peer,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        let R::Symlink {
            parent,
            name,
            target,
            uid,
            gid,
            now,
        } = req
        else {
            return Err(misrouted());
        };
        Ok({
            if target.is_empty() || target.len() > 4096 || target.contains(&0) {
                return Err(Error::fs(ErrorCode::NameTooLong, "invalid symlink target").into());
            }
            changed(self.meta.create(
                parent,
                &name,
                FileKind::Symlink,
                0o777,
                uid,
                gid,
                0,
                Some(target),
                now,
            )?)
        })
    }

    /// `MasterRequest::Rename`.
    pub(crate) fn on_rename(
        &self,
        req: MasterRequest,
        from: &wire::Peer,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        let peer = from.addr;
        let R::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
            now,
        } = req
        else {
            return Err(misrouted());
        };
        Ok({
            // An editor's save renames a new file over the old one: the old file's merge
            // document and history go with the name.
            let replaced = match flags & shardfs_common::proto::RENAME_EXCHANGE {
                0 => self.meta.lookup(new_parent, &new_name).ok(),
                _ => None,
            };
            let src = self.meta.lookup(parent, &name).ok();
            let r = self
                .meta
                .rename(parent, &name, new_parent, &new_name, flags, now)?;
            if let (Some(old), Some(src)) = (replaced, &src) {
                if old.kind == FileKind::File && src.kind == FileKind::File && old.ino != src.ino {
                    self.merge_follows(old.ino, src, self.sessions.of_peer(peer));
                }
            }
            // The moved inode as it is now under its new name (what the mount would look
            // up next), with its code.
            let mut resp = removed(r);
            // The rename is done: a failure to read these is no reason to say it failed.
            if let Ok(moved) = self.meta.lookup(new_parent, &new_name) {
                let code = self.meta.policy(moved.ino).unwrap_or(None);
                if let MasterResponse::Changed { attr, code: c, .. } = &mut resp {
                    *attr = Some(moved);
                    *c = code;
                }
            }
            resp
        })
    }

    /// `MasterRequest::Open`.
    pub(crate) fn on_open(
        &self,
        req: MasterRequest,
        from: &wire::Peer,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        use MasterResponse as A;
        let R::Open {
            ino,
            session,
            access,
        } = req
        else {
            return Err(misrouted());
        };
        Ok({
            // Held before its map is read: a seal swaps slots only of files no session
            // holds, so a map read here is never one a seal is about to replace.
            let write = access & shardfs_common::proto::ACCESS_WRITE != 0;
            self.sessions.opened(&self.meta, session, ino, write);
            let (attr, mut slots) = match self.meta.open_file(ino) {
                Ok(r) => r,
                Err(e) => {
                    let _ = self.sessions.closed(&self.meta, session, ino, 1);
                    return Err(e);
                }
            };
            for s in &mut slots {
                if let Some(b) = &s.block {
                    s.cap = self.cap(from, cap::READ, &b.id);
                }
                for (m, c) in &mut s.pieces {
                    *c = self.cap(from, cap::READ, &m.id);
                }
            }
            let code = self.meta.policy(ino)?;
            A::Opened { attr, slots, code }
        })
    }

    /// `MasterRequest::Commit`.
    pub(crate) fn on_commit(
        &self,
        req: MasterRequest,
        from: &wire::Peer,
        inline: HashMap<BlockId, Vec<u8>>,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        use MasterResponse as A;
        let R::Commit {
            ino,
            slots,
            pieces,
            size,
            mtime,
            base,
            session,
            mergeable,
            cut,
            seq,
        } = req
        else {
            return Err(misrouted());
        };
        Ok({
            let root_ok = from.who.as_ref().is_some_and(|w| self.auth.allows_root(w));
            if !root_ok && !self.sessions.may_write(session, ino) {
                return Err(Error::fs(
                    ErrorCode::Access,
                    format!("inode {ino} is not open for writing on this session"),
                )
                .into());
            }
            if !self.sessions.in_order(session, ino, seq) {
                return Ok(A::Attr(self.meta.getattr(ino)?));
            }
            let host = self
                .sessions
                .host(session)
                .unwrap_or_else(|| "another mount".into());
            match self.meta.commit_with(
                ino, &slots, &pieces, size, mtime, cut, base, mergeable, session, &host, &inline,
            )? {
                meta::Committed::Done(a) => {
                    self.sessions.applied(session, ino, seq);
                    if let (true, Some(b)) = (mergeable, base) {
                        self.merge_committed(ino, session, b, a.version);
                    }
                    A::Attr(a)
                }
                meta::Committed::Stale(attr) => A::Stale { attr },
                meta::Committed::Copy {
                    original,
                    name,
                    copy,
                    changes: _,
                } => {
                    self.sessions.applied(session, ino, seq);
                    info!(ino, copy = copy.ino, name = %String::from_utf8_lossy(&name), %host,
                            "concurrent change: the late writer's content kept as a conflicted copy");
                    self.note(HistoryEntry {
                        time: mtime.secs.max(0) as u64,
                        ino,
                        version: original.version,
                        who: self.who(session),
                        what: format!(
                            "changed elsewhere meanwhile, not mergeable: kept as {:?}",
                            String::from_utf8_lossy(&name)
                        ),
                    });
                    // A new name no request of a mount made: every mount, the committing
                    // one too, learns of it (mounts answer lookups of names they know are
                    // absent from directories they know whole).
                    if let Ok(rec) = self.meta.inode(copy.ino) {
                        let entry = shardfs_common::proto::Change::Entry {
                            parent: rec.parent,
                            name: name.clone(),
                        };
                        self.events.push(0, vec![entry]);
                    }
                    metrics::counter!("shardfs_conflicted_copies_total").increment(1);
                    A::Conflicted {
                        attr: original,
                        copy: name,
                        copy_attr: copy,
                    }
                }
            }
        })
    }

    /// `MasterRequest::Replayed`.
    pub(crate) fn on_replayed(
        &self,
        req: MasterRequest,
        _from: &wire::Peer,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        use MasterResponse as A;
        let R::Replayed {
            ino,
            session,
            outcome,
        } = req
        else {
            return Err(misrouted());
        };
        Ok({
            let version = self.meta.getattr(ino)?.version;
            let who = self.who(session);
            info!(ino, %who, %outcome, "offline change replayed");
            let e = HistoryEntry {
                time: now_secs(),
                ino,
                version,
                who,
                what: format!("offline change replayed: {outcome}"),
            };
            self.note_in_file(ino, e)?;
            A::Ok
        })
    }
}
