//! Inline pieces: small writes that travel inside the commit to the master instead of being
//! stored on m + 1 nodes first (one round trip and one write instead of two and m + 2), and
//! are read back from the master.
//!
//! A piece made here waits in `pending` (its stored bytes and plaintext) until a commit
//! carrying it is acknowledged; reads of it are answered from there meanwhile. `pending` is
//! bounded: past [`PENDING_MAX`] bytes no piece is made inline, and small writes go to the nodes
//! as before.

use super::*;
use shardfs_common::proto::INLINE_MAX;
use shardfs_common::Ino;

/// Most bytes of inline pieces waiting for their commit in one mount.
pub const PENDING_MAX: usize = 64 << 20;

/// An inline piece waiting for its commit: its stored (encrypted) bytes and its plaintext.
type Waiting = (Arc<Vec<u8>>, Arc<Vec<u8>>);

#[derive(Default)]
pub(super) struct Pending {
    pieces: HashMap<BlockId, Waiting>,
    bytes: usize,
}

impl Pending {
    pub(super) fn pieces_plain(&self, id: &BlockId) -> Option<Arc<Vec<u8>>> {
        self.pieces.get(id).map(|(_, p)| p.clone())
    }
}

impl BlockStore {
    /// Make `data` an inline piece (kept here until its commit), or None if it is too large
    /// or too much is waiting already.
    pub fn make_inline(&self, data: &[u8]) -> Result<Option<(BlockMeta, Cap)>> {
        if data.len() > INLINE_MAX || data.is_empty() {
            return Ok(None);
        }
        let id = self
            .keys
            .content_id(EcParams::INLINE, self.codec.params(), data);
        let data = Arc::new(data.to_vec());
        let mut stored = data.to_vec();
        self.keys.apply(&id, 0, &mut stored)?;
        {
            let mut p = self.inline.lock().expect("inline lock");
            if !p.pieces.contains_key(&id) {
                if p.bytes + data.len() > PENDING_MAX {
                    return Ok(None);
                }
                p.bytes += data.len();
                p.pieces.insert(id, (Arc::new(stored), data.clone()));
            }
        }
        self.cache_insert(id, data.clone());
        Ok(Some((BlockMeta::inline(id, data.len()), Cap::default())))
    }

    /// The stored bytes of inline piece `id` if it waits for its commit here.
    pub fn inline_pending(&self, id: &BlockId) -> Option<Arc<Vec<u8>>> {
        let p = self.inline.lock().expect("inline lock");
        p.pieces.get(id).map(|(s, _)| s.clone())
    }

    /// Inline pieces committed (or no longer needed): the master holds them now.
    pub fn inline_committed(&self, ids: &[BlockId]) {
        let mut p = self.inline.lock().expect("inline lock");
        for id in ids {
            if let Some((_, plain)) = p.pieces.remove(id) {
                p.bytes -= plain.len();
            }
        }
    }

    /// The content of inline piece `meta`, named by slot `index` of file `ino`: from this
    /// mount (waiting for its commit, or cached), else from the master.
    pub async fn get_inline(
        self: &Arc<Self>,
        meta: &BlockMeta,
        cap: Cap,
        ino: Ino,
        index: u64,
    ) -> Result<Arc<Vec<u8>>> {
        meta.check_shape()
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        if let Some(plain) = self
            .inline
            .lock()
            .expect("inline lock")
            .pieces_plain(&meta.id)
        {
            return Ok(plain);
        }
        if let Some(d) = self.cached(&meta.id) {
            metrics::counter!("shardfs_mount_block_cache_hits_total").increment(1);
            return Ok(d);
        }
        metrics::counter!("shardfs_mount_block_cache_misses_total").increment(1);
        let req = MasterRequest::ReadInline {
            ino,
            index,
            id: meta.id,
            cap,
        };
        let (resp, mut data) = self
            .master
            .call_bulk(req, Bytes::new(), meta.len as usize)
            .await?;
        match resp {
            MasterResponse::Inline => {}
            other => return Err(unexpected(other)),
        }
        if data.len() as u64 != meta.len {
            return Err(Error::Corrupt(format!(
                "inline piece {}: {} bytes from the master, {} described",
                meta.id,
                data.len(),
                meta.len
            )));
        }
        if !self
            .keys
            .open_checked(meta, &mut data, self.codec.params())?
        {
            return Err(Error::Corrupt(format!(
                "inline piece {} from the master is not the content its id names",
                meta.id
            )));
        }
        let data = Arc::new(data);
        self.cache_insert(meta.id, data.clone());
        Ok(data)
    }
}
