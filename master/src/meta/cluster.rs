//! The cluster around the namespace: storage nodes, draining, mount sessions and their write opens.

use super::*;

impl Meta {
    pub fn put_node(&self, id: NodeId, rec: &NodeRecord) -> Result<(), MasterError> {
        self.db.put(k_node(id), enc(rec)).map_err(db_err)
    }

    pub fn nodes(&self) -> Result<Vec<(NodeId, NodeRecord)>, MasterError> {
        Ok(self
            .scan::<NodeRecord>(b"N", b"N", usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                (
                    NodeId(u64::from_be_bytes(k[1..9].try_into().expect("node key"))),
                    v,
                )
            })
            .collect())
    }

    /// Mark a node as draining, or clear the mark.
    pub fn set_draining(&self, node: NodeId, on: bool) -> Result<(), MasterError> {
        let k = key(b'X', &[&node.0.to_be_bytes()]);
        if on {
            self.db.put(k, enc(&unix_now())).map_err(db_err)
        } else {
            self.db.delete(k).map_err(db_err)
        }
    }

    /// Nodes being drained.
    pub fn draining(&self) -> Result<HashSet<NodeId>, MasterError> {
        Ok(self
            .scan::<u64>(b"X", b"X", usize::MAX)?
            .into_iter()
            .filter_map(|(k, _)| Some(NodeId(u64::from_be_bytes(k[1..9].try_into().ok()?))))
            .collect())
    }

    /// Record that mount session `id` is open (`open`) or over.
    /// Record that session `id` is open for credential `owner` with `writes` open for writing,
    /// or (None) that it ended.
    pub fn record_session(&self, id: u64, open: Option<(&str, &[Ino])>) -> Result<(), MasterError> {
        let mut b = WriteBatch::default();
        for k in self.keys(&key(b'W', &[&id.to_be_bytes()]))? {
            b.delete(k);
        }
        match open {
            Some((owner, writes)) => {
                let mut v = vec![VERSION];
                v.extend_from_slice(owner.as_bytes());
                b.put(k_session(id), v);
                for &ino in writes {
                    b.put(k_write(id, ino), [VERSION]);
                }
            }
            None => b.delete(k_session(id)),
        }
        self.write(b)
    }

    /// Sessions open when the master last stopped, with the credential of each ("" if the
    /// record predates owners).
    pub fn recorded_sessions(&self) -> Result<Vec<(u64, String)>, MasterError> {
        let mut out = Vec::new();
        for item in self.iter_within(b"M", b"M") {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(b"M") {
                break;
            }
            let Some(id) = k.get(1..9).and_then(|b| b.try_into().ok()) else {
                continue;
            };
            let owner = String::from_utf8_lossy(v.get(1..).unwrap_or_default()).into_owned();
            out.push((u64::from_be_bytes(id), owner));
        }
        Ok(out)
    }

    /// Record that session `session` has (or no longer has) `ino` open for writing.
    pub fn record_write(&self, session: u64, ino: Ino, open: bool) -> Result<(), MasterError> {
        let mut b = WriteBatch::default();
        match open {
            true => b.put(k_write(session, ino), [VERSION]),
            false => b.delete(k_write(session, ino)),
        }
        // In the WAL, not synced: an open for writing must stay cheap. It survives the
        // master's crash, not always a power loss (docs/SECURITY.md).
        self.db.write(b).map_err(db_err)
    }

    /// Every (session, file) open for writing when the master last stopped.
    pub fn recorded_writes(&self) -> Result<HashSet<(u64, Ino)>, MasterError> {
        Ok(self
            .keys(b"W")?
            .iter()
            .filter_map(|k| {
                let s = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
                let i = Ino::from_be_bytes(k.get(9..17)?.try_into().ok()?);
                Some((s, i))
            })
            .collect())
    }
}
