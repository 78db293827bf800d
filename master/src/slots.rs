//! Slot records (`S` ino index): what a file holds in one block-sized range.
//!
//! A slot is a base block (erasure-coded; absent for a range made only of small writes), the
//! number of its bytes that belong to the file, and the extents of small writes laid over it
//! (pieces stored as full copies; see `shardfs_common::extent`). A slot holds one reference
//! to its base block and one to each distinct piece its extents name.
//!
//! Format 1 (before extents) was `{ block, used }`; it reads as a slot with that base block
//! and no extents, and is written back in format 2 the next time the slot changes.

use crate::MasterError;
use serde::{Deserialize, Serialize};
use shardfs_common::extent::{self, Extent};
use shardfs_common::BlockId;

const SLOT_VERSION: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub block: Option<BlockId>,
    /// Bytes of the base block that belong to the file.
    pub used: u64,
    /// Sorted, disjoint, newer than the base.
    pub extents: Vec<Extent>,
}

#[derive(Deserialize)]
struct SlotRecordV1 {
    block: BlockId,
    used: u64,
}

impl SlotRecord {
    /// The blocks this slot holds a reference to: its base, then each piece once.
    pub fn refs(&self) -> Vec<BlockId> {
        let mut out: Vec<BlockId> = self.block.into_iter().collect();
        out.extend(
            extent::pieces(&self.extents)
                .into_iter()
                .filter(|p| Some(*p) != self.block),
        );
        out
    }

    /// The slot cut to its first `keep` bytes (a truncate across it).
    pub fn cut(&self, keep: u64) -> SlotRecord {
        SlotRecord {
            block: self.block,
            used: self.used.min(keep),
            extents: extent::cut(&self.extents, keep.min(u32::MAX as u64) as u32),
        }
    }

    /// Whether the slot still holds anything (a base block or an extent).
    pub fn is_empty(&self) -> bool {
        self.block.is_none() && self.extents.is_empty()
    }
}

pub fn enc_slot(r: &SlotRecord) -> Vec<u8> {
    let mut out = vec![SLOT_VERSION];
    out.extend(postcard::to_stdvec(r).expect("encoding a record cannot fail"));
    out
}

pub fn dec_slot(key: &[u8], raw: &[u8]) -> Result<SlotRecord, MasterError> {
    let bad = |e: postcard::Error| MasterError::Corrupt(format!("slot record {key:02x?}: {e}"));
    match raw.split_first() {
        Some((&SLOT_VERSION, rest)) => postcard::from_bytes(rest).map_err(bad),
        Some((1, rest)) => {
            let v1: SlotRecordV1 = postcard::from_bytes(rest).map_err(bad)?;
            Ok(SlotRecord {
                block: Some(v1.block),
                used: v1.used,
                extents: Vec::new(),
            })
        }
        Some((v, _)) => Err(MasterError::Corrupt(format!(
            "slot record {key:02x?} has format version {v}, this master reads 1 and {SLOT_VERSION}"
        ))),
        None => Err(MasterError::Corrupt(format!(
            "slot record {key:02x?} is empty"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_1_reads_as_a_base_block() {
        #[derive(Serialize)]
        struct V1 {
            block: BlockId,
            used: u64,
        }
        let mut raw = vec![1u8];
        raw.extend(
            postcard::to_stdvec(&V1 {
                block: BlockId([7; 32]),
                used: 99,
            })
            .unwrap(),
        );
        let r = dec_slot(b"S", &raw).unwrap();
        assert_eq!(r.block, Some(BlockId([7; 32])));
        assert_eq!(r.used, 99);
        assert!(r.extents.is_empty());
        assert_eq!(dec_slot(b"S", &enc_slot(&r)).unwrap(), r);
        assert!(dec_slot(b"S", &[3, 0]).is_err());
        assert!(dec_slot(b"S", &[]).is_err());
    }

    #[test]
    fn refs_name_each_block_once() {
        let x = |off, piece: u8| Extent {
            off,
            len: 1,
            piece: BlockId([piece; 32]),
            piece_off: 0,
        };
        let r = SlotRecord {
            block: Some(BlockId([1; 32])),
            used: 10,
            extents: vec![x(0, 2), x(2, 3), x(4, 2), x(6, 1)],
        };
        assert_eq!(
            r.refs(),
            vec![BlockId([1; 32]), BlockId([2; 32]), BlockId([3; 32])]
        );
        let c = r.cut(3);
        assert_eq!(c.used, 3);
        assert_eq!(c.extents.len(), 2);
    }
}
