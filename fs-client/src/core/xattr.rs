//! Extended attributes (cached for the attribute TTL) and the merge history a file serves as one.

use super::*;

impl Core {
    pub async fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if name.starts_with(POLICY_XATTR) {
            // The file's code may change: ask the master again at the next open.
            self.codes.lock().expect("codes lock").pop(&ino);
        }
        if name == HISTORY_XATTR {
            return Err(Error::fs(
                shardfs_common::ErrorCode::Permission,
                "the merge history is read-only",
            ));
        }
        let req = MasterRequest::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        };
        let r = self.call_attr(req).await.map(drop);
        // After the answer too: a read racing the change may have cached the old value.
        self.xattrs.lock().expect("xattrs lock").pop(&ino);
        r
    }

    pub async fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if name == HISTORY_XATTR {
            return self.history(ino).await;
        }
        let ttl = self.xattr_ttl(name);
        match self.cached_xattr(ino, name) {
            Some(Some(v)) => return Ok(v),
            Some(None) => {
                return Err(Error::fs(
                    shardfs_common::ErrorCode::NoData,
                    "no such attribute",
                ))
            }
            None => {}
        }
        let req = MasterRequest::GetXattr {
            ino,
            name: name.to_vec(),
        };
        let r = match self.call(req).await {
            Ok(MasterResponse::Xattr(v)) => Ok(v),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        };
        let keep = match &r {
            Ok(v) => Some(Some(v.clone())),
            Err(e) if e.code() == shardfs_common::ErrorCode::NoData => Some(None),
            Err(_) => None,
        };
        if let (Some(v), false) = (keep, ttl.is_zero()) {
            let mut c = self.xattrs.lock().expect("xattrs lock");
            if let Some(m) = c.get_mut(&ino) {
                m.insert(name.to_vec(), (v, Instant::now()));
            } else {
                c.put(ino, HashMap::from([(name.to_vec(), (v, Instant::now()))]));
            }
        }
        r
    }

    /// How long a value of attribute `name` is kept: the master's own attributes (policies,
    /// quotas and their usage) change without a change of the file, so never.
    fn xattr_ttl(&self, name: &[u8]) -> Duration {
        match name.starts_with(b"user.shardfs.") {
            true => Duration::ZERO,
            false => self.cfg.attr_ttl,
        }
    }

    /// What this mount knows of attribute `name` of `ino` within its TTL: Some(None) if it
    /// is known absent, None if not known.
    fn cached_xattr(&self, ino: Ino, name: &[u8]) -> Option<Option<Vec<u8>>> {
        let ttl = self.xattr_ttl(name);
        self.xattrs
            .lock()
            .expect("xattrs lock")
            .get(&ino)
            .and_then(|m| m.get(name))
            .filter(|(_, t)| t.elapsed() < ttl)
            .map(|(v, _)| v.clone())
    }

    /// `ino` was just made by this mount: it has no extended attributes yet. The kernel asks
    /// for `security.capability` before the first write of every file (to drop it on a
    /// write), which would otherwise cost each new file one more round trip.
    pub(super) fn born_bare(&self, ino: Ino) {
        if self.cfg.attr_ttl.is_zero() {
            return;
        }
        let mut c = self.xattrs.lock().expect("xattrs lock");
        c.put(
            ino,
            HashMap::from([(CAPABILITY.to_vec(), (None, Instant::now()))]),
        );
    }

    /// The file's history of concurrent changes (merges, conflicted copies, replays) as JSON
    /// lines, served as the read-only attribute `user.shardfs.history` (`shardfs history`).
    pub(super) async fn history(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.call(MasterRequest::History { ino }).await? {
            MasterResponse::History(h) => {
                let mut out = Vec::new();
                for e in h {
                    let line = serde_json::json!({
                        "time": e.time, "version": e.version, "who": e.who, "what": e.what,
                    });
                    out.extend_from_slice(line.to_string().as_bytes());
                    out.push(b'\n');
                }
                Ok(out)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Attribute names, each followed by a NUL, as listxattr(2) returns them.
    pub async fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.call(MasterRequest::ListXattr { ino }).await? {
            MasterResponse::XattrNames(names) => {
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(&n);
                    out.push(0);
                }
                Ok(out)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let req = MasterRequest::RemoveXattr {
            ino,
            name: name.to_vec(),
        };
        let r = self.call_attr(req).await.map(drop);
        // After the answer too: a read racing the change may have cached the old value.
        self.xattrs.lock().expect("xattrs lock").pop(&ino);
        r
    }

    /// After a write through handle `fh`: drop the file's privileges as a local filesystem
    /// does (see [`Core::drop_privs`]); `suidgid` is the kernel's FUSE_WRITE_KILL_SUIDGID (a
    /// writer without CAP_FSETID).
    pub async fn drop_privs_after_write(&self, fh: u64, suidgid: bool) {
        if !self.kills_privs.load(Ordering::Relaxed) {
            return;
        }
        let Ok(Handle::File(of, _)) = self.handle(fh) else {
            return;
        };
        let perm = of.st.lock().expect("file lock").attr.perm;
        self.drop_privs(of.ino, perm, suidgid).await;
    }

    /// Drop the privileges of file `ino` (mode bits `perm` as this mount knows them) after
    /// a write or truncate, which the kernel leaves to this mount (FUSE_HANDLE_KILLPRIV_V2,
    /// see [`Core::set_kills_privs`]): on a set-ID file (if `suidgid`: the master decides
    /// which bits go, from the caller), or if the file may have a `security.capability`.
    /// Rare: most writes find neither and cost nothing here. Returns the new attributes if
    /// the master changed any. A refusal (the writer lost write permission since it opened
    /// the file) leaves the file as it is.
    pub async fn drop_privs(&self, ino: Ino, perm: u16, suidgid: bool) -> Option<Attr> {
        if !self.kills_privs.load(Ordering::Relaxed) {
            return None;
        }
        let setid = suidgid && perm as u32 & (libc::S_ISUID | libc::S_ISGID) != 0;
        // Every write asks: known absent (the common case) costs a cache look, no error made.
        let capability = match self.cached_xattr(ino, CAPABILITY) {
            Some(v) => v.is_some(),
            None => self.getxattr(ino, CAPABILITY).await.is_ok(),
        };
        if !setid && !capability {
            return None;
        }
        let req = MasterRequest::DropPrivs {
            ino,
            now: Timespec::now(),
            clear: 0,
        };
        match self.call_attr(req).await {
            Ok(a) => {
                let of = self.files.lock().expect("files lock").get(&ino).cloned();
                if let Some(of) = of {
                    of.st.lock().expect("file lock").attr.perm = a.perm;
                }
                // Its capability is gone (the other attributes are asked again).
                self.born_bare(ino);
                if a.perm != perm {
                    self.invalidate_attr(ino);
                }
                Some(a)
            }
            Err(e) => {
                debug!(ino, "privileges were not dropped: {e}");
                None
            }
        }
    }

    /// Whether the kernel leaves dropping privileges on writes, truncates and chowns to
    /// this mount (it granted FUSE_HANDLE_KILLPRIV_V2): it then no longer asks for
    /// `security.capability` before every write, a round trip per write.
    pub fn set_kills_privs(&self, on: bool) {
        self.kills_privs.store(on, Ordering::Relaxed);
    }
}

/// The attribute that holds a file's capabilities.
const CAPABILITY: &[u8] = b"security.capability";
