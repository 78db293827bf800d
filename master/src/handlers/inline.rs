//! Inline pieces on their way in (a commit's bulk, checked against the ids it names) and out
//! (`ReadInline`).

use crate::*;
use shardfs_common::cap;
use shardfs_common::proto::{Caller, MasterRequest};
use shardfs_common::Ino;

impl Master {
    /// The inline pieces a request carried, keyed by id, once each is one the request names
    /// (an inline piece of its `Commit`, of the length described) and holds the content its
    /// id names. Only a commit carries any.
    pub(crate) fn check_inline(
        &self,
        req: &MasterRequest,
        inline: Vec<(BlockId, Vec<u8>)>,
    ) -> Result<HashMap<BlockId, Vec<u8>>, MasterError> {
        if inline.is_empty() {
            return Ok(HashMap::new());
        }
        let MasterRequest::Commit { pieces, .. } = req else {
            return Err(Error::invalid("only a commit carries inline pieces").into());
        };
        let total: usize = inline.iter().map(|(_, b)| b.len()).sum();
        if total > shardfs_common::proto::INLINE_COMMIT_MAX {
            return Err(
                Error::invalid(format!("{total} bytes of inline pieces in one commit")).into(),
            );
        }
        let keys =
            shardfs_common::crypt::DataKeys::new(self.keys.read().expect("keys lock").clone());
        let cluster = self.meta.cluster.ec;
        let mut out = HashMap::new();
        for (id, bytes) in inline {
            let Some(m) = pieces.iter().find(|m| m.id == id && m.is_inline()) else {
                return Err(Error::invalid(format!(
                    "inline piece {id} is not one of the commit's pieces"
                ))
                .into());
            };
            if m.len != bytes.len() as u64 {
                return Err(Error::invalid(format!(
                    "inline piece {id}: {} bytes, described as {}",
                    bytes.len(),
                    m.len
                ))
                .into());
            }
            // A forged id may name an epoch with no key: no content can match it either.
            if !keys
                .open_checked(m, &mut bytes.clone(), cluster)
                .unwrap_or(false)
            {
                return Err(Error::fs(
                    ErrorCode::Corrupt,
                    format!("inline piece {id}: the bytes are not the content its id names"),
                )
                .into());
            }
            out.insert(id, bytes);
        }
        Ok(out)
    }

    /// The stored bytes of inline piece `id` for `peer` acting as `caller`: with a read
    /// capability for it, or if `caller` may read `ino` and its slot `index` names the piece.
    pub(crate) fn read_inline(
        &self,
        peer: &wire::Peer,
        caller: &Caller,
        ino: Ino,
        index: u64,
        id: BlockId,
        c: Cap,
    ) -> Result<Vec<u8>, MasterError> {
        let by_cap = peer
            .who
            .as_ref()
            .is_some_and(|w| self.auth.cap_key.allows(&c, cap::READ, &w.id, &id));
        if !by_cap {
            let a = self.meta.getattr(ino)?;
            if !perms::allowed(&a, caller, perms::R) || !self.meta.slot_names(ino, index, &id)? {
                return Err(Error::fs(
                    ErrorCode::Access,
                    format!("no right to read piece {id} of inode {ino}"),
                )
                .into());
            }
        }
        self.meta.inline_bytes(&id)?.ok_or_else(|| {
            Error::fs(
                ErrorCode::NotFound,
                format!("inline piece {id} is no longer stored"),
            )
            .into()
        })
    }
}
