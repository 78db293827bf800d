//! Inline pieces: small writes the master keeps in its own records (`Y` id → the stored bytes,
//! encrypted as they would be on a node), committed in the same batch as the file map that
//! names them. They are as durable as the namespace; sealing later turns them into
//! erasure-coded blocks on the nodes, and the collector deletes them with their block record.

use super::*;

pub(super) fn k_inline(id: &BlockId) -> Vec<u8> {
    key(b'Y', &[&id.0])
}

/// The format byte before an inline piece's bytes.
const INLINE_V1: u8 = 1;

/// The stored value of an inline piece.
pub(super) fn enc_inline(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(INLINE_V1);
    v.extend_from_slice(bytes);
    v
}

impl Meta {
    /// The stored bytes of inline piece `id`, if the master holds them.
    pub fn inline_bytes(&self, id: &BlockId) -> Result<Option<Vec<u8>>, MasterError> {
        match self.db.get(k_inline(id)).map_err(db_err)? {
            Some(mut v) if v.first() == Some(&INLINE_V1) => {
                v.remove(0);
                Ok(Some(v))
            }
            Some(_) => Err(MasterError::Corrupt(format!(
                "inline piece {id}: a record of an unknown format"
            ))),
            None => Ok(None),
        }
    }

    /// Whether slot `index` of `ino` names piece `id` (its base or one of its extents).
    pub fn slot_names(&self, ino: Ino, index: u64, id: &BlockId) -> Result<bool, MasterError> {
        Ok(self
            .slot_record(&k_slot(ino, index))?
            .is_some_and(|r| r.refs().contains(id)))
    }

    /// Inline pieces held, and their bytes (for `shardfs status`).
    pub fn inline_usage(&self) -> Result<(u64, u64), MasterError> {
        let (mut n, mut bytes) = (0u64, 0u64);
        for item in self.iter_within(b"Y", b"Y") {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(b"Y") {
                break;
            }
            n += 1;
            bytes += v.len().saturating_sub(1) as u64;
        }
        Ok((n, bytes))
    }
}
