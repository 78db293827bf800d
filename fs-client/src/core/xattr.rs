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
        // The master's own attributes (policies, quotas and their usage) change without a
        // change of the file: never cached.
        let ttl = match name.starts_with(b"user.shardfs.") {
            true => Duration::ZERO,
            false => self.cfg.attr_ttl,
        };
        let known = self
            .xattrs
            .lock()
            .expect("xattrs lock")
            .get(&ino)
            .and_then(|m| m.get(name))
            .filter(|(_, t)| t.elapsed() < ttl)
            .map(|(v, _)| v.clone());
        match known {
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
            HashMap::from([(b"security.capability".to_vec(), (None, Instant::now()))]),
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
}
