//! What sealing needs from the store: the index of files with work for it (`F` ino → Unix
//! seconds of the last commit that left extents in the file, or 0 for a file whose policy
//! changed), and the swap of a sealed slot.
//!
//! A commit that stores a slot with extents sets the file's `F` key in the same batch; the
//! sealing loop lists the files whose key is older than the quiet period, seals their slots
//! one by one, and removes the key once no slot has extents (only if no commit set it again
//! meanwhile). The swap is a compare-and-set on the slot record under the writer lock: the
//! slot is sealed only if it is still exactly the record the seal was made from.

use super::{enc, k_slot, key, unix_now, BlockRecord, GcRecord, Meta, Txn};
use crate::slots::{enc_slot, SlotRecord};
use crate::MasterError;
use rocksdb::WriteBatch;
use shardfs_common::proto::{BlockMeta, FileKind};
use shardfs_common::{BlockId, Ino};
use std::collections::HashSet;
use std::sync::Mutex;

pub(super) fn k_frag(ino: Ino) -> Vec<u8> {
    key(b'F', &[&ino.to_be_bytes()])
}

/// What became of a seal.
#[derive(Debug, PartialEq, Eq)]
pub enum Swap {
    /// The slot now holds the sealed block alone.
    Sealed,
    /// The slot changed since the seal was made, the file is gone, or a session opened it:
    /// nothing swapped.
    Changed,
}

impl Meta {
    /// Files holding extents whose last commit with small writes is at least `quiet_secs`
    /// old, with the time of that commit (in inode order), at most `limit`.
    pub fn seal_candidates(
        &self,
        quiet_secs: u64,
        limit: usize,
    ) -> Result<Vec<(Ino, u64)>, MasterError> {
        let now = unix_now();
        let mut out = Vec::new();
        // Walked key by key, not collected first: most files may not be quiet yet.
        for item in self.iter_within(b"F", b"F") {
            let (k, v) = item.map_err(super::db_err)?;
            if out.len() >= limit || !k.starts_with(b"F") {
                break;
            }
            let since: u64 = super::dec(&k, &v)?;
            if since.saturating_add(quiet_secs) > now || k.len() != 9 {
                continue;
            }
            let ino = Ino::from_be_bytes(k[1..9].try_into().expect("checked length"));
            out.push((ino, since));
        }
        Ok(out)
    }

    /// Mark every file for rewriting by the sealing loop (a rekey), and seal every merge
    /// document again under the current key. Returns how many files were marked.
    pub fn mark_all_files(&self) -> Result<u64, MasterError> {
        let mut files = 0u64;
        let mut start = b"I".to_vec();
        loop {
            let _w = self.writer.lock().expect("writer lock");
            let mut batch = WriteBatch::default();
            let mut last = None;
            for item in self.iter_within(b"I", &start).take(10_000) {
                let (k, v) = item.map_err(super::db_err)?;
                if !k.starts_with(b"I") {
                    break;
                }
                let r = super::dec_inode(&k, &v)?;
                if r.attr.kind == FileKind::File {
                    batch.put(k_frag(r.attr.ino), enc(&0u64));
                    files += 1;
                }
                last = Some(k.to_vec());
            }
            self.write(batch)?;
            match last {
                Some(mut k) => {
                    k.push(0);
                    start = k;
                }
                None => break,
            }
        }
        for k in self.keys(b"T")? {
            if k.len() == 9 {
                let ino = Ino::from_be_bytes(k[1..9].try_into().expect("checked length"));
                if let Some(rec) = self.merge_record(ino)? {
                    self.put_merge_record(ino, &rec)?;
                }
            }
        }
        Ok(files)
    }

    /// How many stored blocks, and merge documents, use key epoch `epoch`.
    pub fn blocks_of_epoch(&self, epoch: u32) -> Result<u64, MasterError> {
        let mut prefix = b"B".to_vec();
        prefix.extend_from_slice(&epoch.to_be_bytes());
        let mut n = self.keys(&prefix)?.len() as u64;
        for item in self.iter_within(b"T", b"T") {
            let (k, v) = item.map_err(super::db_err)?;
            if !k.starts_with(b"T") {
                break;
            }
            if super::store::sealed_epoch(&v) == Some(epoch) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// How many files hold extents (sealed or not yet quiet).
    pub fn unsealed_files(&self) -> Result<u64, MasterError> {
        Ok(self.keys(b"F")?.len() as u64)
    }

    /// The slots of `ino` sealing has work on: those holding extents, and those whose base
    /// block is not in the file's code (after a policy change).
    pub fn slots_to_seal(&self, ino: Ino) -> Result<Vec<(u64, SlotRecord)>, MasterError> {
        let code = self.code_of(ino)?;
        // In an encrypted cluster, a block under an older key is rewritten too (a rekey).
        let epoch = self
            .ring
            .read()
            .expect("ring lock")
            .as_ref()
            .map(|r| r.current);
        let mut out = Vec::new();
        for (index, s) in self.slot_records(ino)? {
            let recode = match &s.block {
                Some(id) => {
                    epoch.is_some_and(|e| shardfs_common::crypt::epoch_of(id) != e)
                        || self.block_meta(id)?.is_some_and(|m| m.ec != code)
                }
                None => false,
            };
            if recode || !s.extents.is_empty() {
                out.push((index, s));
            }
        }
        Ok(out)
    }

    /// Point slot `index` of `ino` at the sealed `block` (alone, no extents) if the slot is
    /// still `old`; its old base and pieces lose the slot's references. A block the cluster
    /// already holds under this id keeps its description (and gains a reference).
    pub fn seal_slot(
        &self,
        ino: Ino,
        index: u64,
        old: &SlotRecord,
        block: &BlockMeta,
        collecting: &Mutex<HashSet<BlockId>>,
    ) -> Result<Swap, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        // Opens hold the file before they read its map; while this lock is held none can.
        let held = self.held.lock().expect("held lock");
        let key = k_slot(ino, index);
        if held.contains_key(&ino)
            || self.slot_record(&key)?.as_ref() != Some(old)
            || collecting
                .lock()
                .expect("collecting lock")
                .contains(&block.id)
        {
            return Ok(Swap::Changed);
        }
        let mut txn = Txn::new(self);
        let rec = match txn.block(&block.id)? {
            Some(mut b) => {
                b.refs += 1;
                b
            }
            None => BlockRecord {
                meta: block.clone(),
                refs: 1,
            },
        };
        txn.blocks.insert(block.id, Some(rec));
        txn.unref_slot(old)?;
        let new = SlotRecord {
            block: Some(block.id),
            used: block.len,
            extents: Vec::new(),
        };
        txn.batch.put(key, enc_slot(&new));
        txn.commit()?;
        drop(held);
        Ok(Swap::Sealed)
    }

    /// Sealing of `ino` is done if no commit added extents since `since` and no slot holds
    /// any: its `F` key goes.
    pub fn seal_done(&self, ino: Ino, since: u64) -> Result<(), MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let k = k_frag(ino);
        if self.get::<u64>(&k)? == Some(since) && self.slots_to_seal(ino)?.is_empty() {
            let mut batch = WriteBatch::default();
            batch.delete(k);
            self.write(batch)?;
        }
        Ok(())
    }

    /// A sealed block no slot took (the slot changed, or not every shard was stored): left to
    /// the collector, unless the cluster knows a block by this id (whose shards those are).
    pub fn seal_abandoned(
        &self,
        block: &BlockMeta,
        collecting: &Mutex<HashSet<BlockId>>,
    ) -> Result<(), MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let known = self
            .get::<BlockRecord>(&super::k_block(&block.id))?
            .is_some()
            || self.get::<GcRecord>(&super::k_gc(&block.id))?.is_some()
            || collecting
                .lock()
                .expect("collecting lock")
                .contains(&block.id);
        if !known {
            let g = GcRecord {
                meta: block.clone(),
                since: unix_now(),
            };
            let mut batch = WriteBatch::default();
            batch.put(super::k_gc(&block.id), enc(&g));
            self.write(batch)?;
        }
        Ok(())
    }
}
