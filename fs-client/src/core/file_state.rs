//! The open-file state machine: what a file open on this mount holds (its block map, dirty
//! and sparse writes, uploads in flight, pieces stored, what is committed), with no I/O.

use super::*;

pub(crate) struct OpenFile {
    pub(crate) ino: Ino,
    pub(super) st: Mutex<FileState>,
    pub(super) changed: Notify,
    pub(super) opens: AtomicUsize,
    /// How many times this mount opened the file at the master (`Open` or `Create` on its
    /// session) while this entry stood; its `Close` names the count.
    pub(super) held: AtomicU32,
}

pub(super) struct FileState {
    pub(super) attr: Attr,
    pub(super) slots: BTreeMap<u64, Slot>,
    pub(super) dirty: BTreeMap<u64, Vec<u8>>,
    /// Byte ranges of each dirty block written since it became dirty (merged, sorted).
    pub(super) written: BTreeMap<u64, Vec<(usize, usize)>>,
    pub(super) dirty_bytes: usize,
    /// Small writes into blocks the cluster holds, kept apart instead of merged into a copy
    /// of the whole block (see [`crate::pieces`]); a slot is in `dirty` or here, never both.
    pub(super) sparse: BTreeMap<u64, SparseSlot>,
    /// Pieces stored since the last commit; the next commit names them all, so the master
    /// also collects those whose bytes were overwritten before it saw them.
    pub(super) landed_pieces: Vec<BlockMeta>,
    /// Raised by every truncate: a piece taken before it carries bytes that are gone.
    pub(super) epoch: u64,
    pub(super) inflight: BTreeMap<u64, (u64, Arc<Vec<u8>>)>,
    pub(super) pending: BTreeMap<u64, (u64, Slot)>,
    /// Uploaded blocks replaced by a newer upload of the same index before being committed.
    /// They are committed too (just before their replacement), so the master knows them and
    /// collects them; otherwise their shards would stay on the nodes, unknown to anyone.
    pub(super) superseded: Vec<(u64, Slot)>,
    pub(super) running: usize,
    pub(super) seq: u64,
    pub(super) error: Option<String>,
    pub(super) meta_dirty: bool,
    pub(super) next_read: u64,
    /// How many reads in a row began near where the one before ended (see `Core::read`).
    pub(super) near_reads: u32,
    /// The content version this mount's changes start from (see `Attr::version`), and its
    /// size (`slots` holds its blocks until the next commit).
    pub(super) base: u64,
    pub(super) base_size: u64,
    pub(super) base_slots: Vec<Slot>,
    /// The content cannot be merged (not UTF-8, or merging is off for the file).
    pub(super) no_merge: bool,
    /// What the last commit had to do about changes made elsewhere (for the replay log).
    pub(super) outcome: Option<String>,
    /// The smallest size a truncate of the open file set since the last commit.
    pub(super) cut: Option<u64>,
    /// The current content is in the offline journal (nothing written since).
    pub(super) journaled: bool,
    /// A flush of the file is under way (flushes of one file take turns).
    pub(super) flushing: bool,
    /// The content is an offline change being replayed (merges say so in the history).
    pub(super) replay: bool,
    /// Local changes made so far (writes, truncates), and how many of them the master has
    /// (committed or kept as a copy). A handle whose changes are all published does not
    /// commit at close: it would publish another handle's half-done edit (a truncate before
    /// the rewrite), which a merge would take for deleting every line.
    pub(super) changes: u64,
    pub(super) published: u64,
}

/// The small writes of one slot not yet stored.
#[derive(Default)]
pub(super) struct SparseSlot {
    pub(super) data: Sparse,
    /// Raised by every write into it.
    pub(super) gen: u64,
    /// Being stored: the generation taken and how many pieces carry it.
    pub(super) taken: Option<(u64, u32)>,
}

/// This task's turn to flush a file; the next waiting flush goes on when it is dropped.
pub(super) struct FlushTurn<'a>(&'a OpenFile);

impl Drop for FlushTurn<'_> {
    fn drop(&mut self) {
        self.0.st.lock().expect("file lock").flushing = false;
        self.0.changed.notify_waiters();
    }
}

impl OpenFile {
    /// Wait for the file's flushes before this one (two flushes merging at once would each
    /// replace the content with their own merge).
    pub(super) async fn flush_turn(&self) -> FlushTurn<'_> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.st.lock().expect("file lock");
                if !st.flushing {
                    st.flushing = true;
                    return FlushTurn(self);
                }
            }
            notified.await;
        }
    }

    /// Wait until no upload of this file is running.
    pub(super) async fn uploads_settled(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.st.lock().expect("file lock").running == 0 {
                break;
            }
            notified.await;
        }
    }

    /// The base (attributes with the base's size and version), its block map, the current
    /// size, and the number of the last local change: what a journal entry records.
    pub(crate) fn journal_view(&self) -> (Attr, Vec<Slot>, u64, u64) {
        let st = self.st.lock().expect("file lock");
        let mut base = st.attr.clone();
        base.size = st.base_size;
        base.version = st.base;
        (base, st.base_slots.clone(), st.attr.size, st.changes)
    }

    /// The content as of local change `changes` is safe in the journal.
    pub(crate) fn journaled(&self, changes: u64) {
        self.st.lock().expect("file lock").journal_done(changes);
    }
}

impl FileState {
    /// Note a read at `offset`; whether it continues the last one exactly (`.0`) and whether it
    /// is part of a stream (`.1`). Kernel read-ahead sends reads out of order, so a read within
    /// two blocks of where the last one ended belongs to a stream when the read before it did
    /// too; one random read that happens to land near the last one does not (taking it for a
    /// stream would fetch a whole block for a few KiB). The caller sets `next_read` after.
    /// `.2`: whether to read ahead — an exact continuation, or the fourth near read in a row
    /// (the kernel's read-ahead of a sequential reader rarely arrives in order; random reads
    /// seldom land near each other four times running).
    pub(super) fn observe_read(&mut self, offset: u64, bs: u64) -> (bool, bool, bool) {
        let near = offset.abs_diff(self.next_read) <= 2 * bs;
        let sequential = self.next_read == offset;
        let stream = sequential || (near && self.near_reads > 0);
        self.near_reads = if near {
            self.near_reads.saturating_add(1)
        } else {
            0
        };
        (sequential, stream, sequential || self.near_reads >= 4)
    }

    /// Make `data` the whole content, in one step (nobody sees it half replaced): every block
    /// dirty and fully written, the stored ones cut away at the next commit.
    pub(super) fn replace_content(&mut self, data: &[u8], bs: u64) {
        self.truncate(0, bs);
        for (i, chunk) in data.chunks(bs as usize).enumerate() {
            self.dirty.insert(i as u64, chunk.to_vec());
            self.written.insert(i as u64, vec![(0, chunk.len())]);
            self.dirty_bytes += chunk.len();
        }
        self.attr.size = data.len() as u64;
        self.attr.mtime = Timespec::now();
        self.cut = Some(0);
        self.meta_dirty = true;
    }

    /// Give up every change the master has not taken and never will (past a quota): the file
    /// is its base again, and no handle commits the dropped changes later.
    pub(super) fn drop_unpublished(&mut self) {
        let mut base = self.attr.clone();
        base.size = self.base_size;
        base.version = self.base;
        let slots = self.base_slots.clone();
        self.reset(base, slots);
        self.published = self.changes;
    }

    /// Start over from `attr` and `slots`, keeping count of uploads still running (they
    /// finish into this state and must be waited for).
    pub(super) fn reset(&mut self, attr: Attr, slots: Vec<Slot>) {
        let (running, changes, published) = (self.running, self.changes, self.published);
        let (flushing, replay) = (self.flushing, self.replay);
        *self = FileState::new(attr, slots);
        self.running = running;
        (self.flushing, self.replay) = (flushing, replay);
        (self.changes, self.published) = (changes, published);
    }

    /// The journal holds the content as of local change `changes`: no error to report, data
    /// kept in memory. Journaled only if nothing changed since (a write while the entry was
    /// being read and written, say after a late release of another handle began journaling
    /// between a truncate and the write after it, would otherwise count as kept and never
    /// reach the journal: the replay then merged an empty file).
    pub(super) fn journal_done(&mut self, changes: u64) {
        self.error = None;
        if self.changes == changes {
            self.journaled = true;
        }
    }

    /// Count a local change; its number.
    pub(super) fn touch(&mut self) -> u64 {
        // Whatever the journal holds is older than this change (a write into a block already
        // in memory, after a late release journaled the file mid-edit, must be journaled again).
        self.journaled = false;
        self.changes += 1;
        self.changes
    }

    pub(super) fn new(attr: Attr, slots: Vec<Slot>) -> Self {
        FileState {
            base: attr.version,
            base_size: attr.size,
            base_slots: slots.clone(),
            no_merge: false,
            outcome: None,
            cut: None,
            journaled: false,
            flushing: false,
            replay: false,
            changes: 0,
            published: 0,
            attr,
            slots: slots.into_iter().map(|s| (s.index, s)).collect(),
            dirty: BTreeMap::new(),
            written: BTreeMap::new(),
            dirty_bytes: 0,
            sparse: BTreeMap::new(),
            landed_pieces: Vec::new(),
            epoch: 0,
            inflight: BTreeMap::new(),
            pending: BTreeMap::new(),
            superseded: Vec::new(),
            running: 0,
            seq: 0,
            error: None,
            meta_dirty: false,
            next_read: 0,
            near_reads: 0,
        }
    }

    pub(super) fn has_local_changes(&self) -> bool {
        self.meta_dirty
            || !self.dirty.is_empty()
            || !self.sparse.is_empty()
            || !self.inflight.is_empty()
            || !self.pending.is_empty()
            || !self.superseded.is_empty()
            || self.running > 0
    }

    /// Uploaded content for slot `idx` (upload number `seq`): the slot to commit, unless a
    /// newer upload of it landed first.
    pub(super) fn landed(&mut self, idx: u64, seq: u64, slot: Slot) {
        let old = match self.pending.get(&idx) {
            Some((p, _)) if *p > seq => Some((seq, slot)),
            _ => self.pending.insert(idx, (seq, slot)),
        };
        // Committed just before its replacement, so the master knows (and collects) its
        // block; its pieces need not be: every commit names the pieces stored since the last.
        if let Some((seq, mut s)) = old.filter(|(_, s)| s.block.is_some()) {
            s.extents.clear();
            s.pieces.clear();
            self.superseded.push((seq, s));
        }
    }

    /// Pack the small writes not being stored yet into pieces: (upload number, epoch, job).
    pub(super) fn take_sparse(&mut self) -> Vec<(u64, u64, PieceJob)> {
        let ready = self
            .sparse
            .iter()
            .filter(|(_, sp)| sp.taken.is_none() && !sp.data.is_empty())
            .map(|(i, sp)| (*i, &sp.data));
        let jobs = pieces::pack(ready, PIECE_MAX);
        // One upload number for all pieces of this take: they carry disjoint bytes and are
        // laid in whatever order they land (a later-numbered sibling must not hide one).
        self.seq += 1;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            for p in &job.parts {
                let sp = self.sparse.get_mut(&p.idx).expect("packed from here");
                sp.taken = Some(match sp.taken {
                    Some((g, n)) => (g, n + 1),
                    None => (sp.gen, 1),
                });
            }
            self.running += 1;
            out.push((self.seq, self.epoch, job));
        }
        out
    }

    /// Piece `meta` of upload `seq` (taken in `epoch`) is stored: laid over the slots it
    /// carries, unless a truncate came since (those bytes are gone; the master collects the
    /// piece, named by the next commit).
    pub(super) fn piece_stored(
        &mut self,
        seq: u64,
        epoch: u64,
        job: &PieceJob,
        meta: BlockMeta,
        cap: Cap,
    ) {
        let current = self.epoch == epoch;
        for p in &job.parts {
            if current {
                let base = match self.pending.get(&p.idx) {
                    Some((_, s)) => Some(s.clone()),
                    None => self.slots.get(&p.idx).cloned(),
                };
                let slot = pieces::lay(base, p.idx, p, &meta, cap);
                // Built on the pending slot: it replaces it (no superseded copy to commit),
                // unless a newer upload landed first.
                match self.pending.get(&p.idx) {
                    Some((q, _)) if *q > seq => {}
                    _ => {
                        self.pending.insert(p.idx, (seq, slot));
                    }
                }
            }
            self.piece_back(p.idx, current);
        }
        self.landed_pieces.push(meta);
    }

    /// A piece carrying slot `idx`'s small writes was stored (`stored`) or not: once the
    /// last such piece is back, the buffer goes if nothing was written into it meanwhile.
    pub(super) fn piece_back(&mut self, idx: u64, stored: bool) {
        let Some(sp) = self.sparse.get_mut(&idx) else {
            return;
        };
        let Some((g, n)) = sp.taken else {
            return;
        };
        if n > 1 {
            sp.taken = Some((g, n - 1));
            return;
        }
        sp.taken = None;
        if stored && g == sp.gen {
            let sp = self.sparse.remove(&idx).expect("present");
            self.dirty_bytes -= sp.data.bytes();
        }
    }

    /// Make slot `idx`'s small writes part of a whole copy of the block: `stored` (its
    /// current content in the cluster) with the writes laid over it.
    pub(super) fn sparse_to_dirty(&mut self, idx: u64, stored: Option<Arc<Vec<u8>>>, bs: u64) {
        if self.dirty.contains_key(&idx) {
            return;
        }
        let sp = self.sparse.remove(&idx).unwrap_or_default();
        let mut v = Vec::with_capacity(bs as usize);
        if let Some(b) = stored {
            v.extend_from_slice(&b);
        }
        let end = (sp.data.end() as usize).max(v.len());
        v.resize(end, 0);
        sp.data.apply(0, &mut v);
        self.dirty_bytes = self.dirty_bytes - sp.data.bytes() + v.len();
        let written = sp
            .data
            .ranges()
            .iter()
            .map(|(o, d)| (*o as usize, *o as usize + d.len()))
            .collect();
        self.written.insert(idx, written);
        self.dirty.insert(idx, v);
    }

    /// Dirty blocks of at most `max` bytes of which the cluster holds nothing yet (a small
    /// file, a new file's short tail): nothing stored, committed, uploading or kept sparse.
    pub(super) fn small_new_blocks(&self, max: usize) -> Vec<u64> {
        self.dirty
            .iter()
            .filter(|(i, d)| {
                d.len() <= max
                    && !self.slots.contains_key(i)
                    && !self.pending.contains_key(i)
                    && !self.inflight.contains_key(i)
                    && !self.sparse.contains_key(i)
            })
            .map(|(i, _)| *i)
            .collect()
    }

    /// Keep dirty block `idx` as small writes instead (its bytes from the block's start), so
    /// it is stored as a piece.
    pub(super) fn dirty_to_sparse(&mut self, idx: u64) {
        let Some(v) = self.dirty.remove(&idx) else {
            return;
        };
        self.written.remove(&idx);
        let sp = self.sparse.entry(idx).or_default();
        sp.data.write(0, &v);
        sp.gen += 1;
    }

    /// Move block `idx` from dirty to inflight; returns what to upload.
    pub(super) fn take_for_upload(&mut self, idx: u64) -> Option<(u64, Arc<Vec<u8>>)> {
        let data = Arc::new(self.dirty.remove(&idx)?);
        self.written.remove(&idx);
        self.dirty_bytes -= data.len();
        self.seq += 1;
        self.inflight.insert(idx, (self.seq, data.clone()));
        self.running += 1;

        Some((self.seq, data))
    }

    /// Forget blocks past a new, smaller size.
    pub(super) fn truncate(&mut self, size: u64, bs: u64) {
        self.slots.retain(|&i, _| i * bs < size);
        for (&i, s) in self.slots.iter_mut() {
            cut_slot(s, size - i * bs);
        }
        // Uploaded blocks not committed yet: what lies past the new end goes too.
        self.pending.retain(|&i, _| i * bs < size);
        for (&i, (_, s)) in self.pending.iter_mut() {
            cut_slot(s, size - i * bs);
        }
        self.superseded.retain(|(_, s)| s.index * bs < size);
        for (_, s) in self.superseded.iter_mut() {
            cut_slot(s, size - s.index * bs);
        }
        self.epoch += 1;
        for (&i, sp) in self.sparse.iter_mut() {
            if i * bs + sp.data.end() as u64 > size {
                let before = sp.data.bytes();
                sp.data.cut(size.saturating_sub(i * bs).min(bs) as u32);
                self.dirty_bytes -= before - sp.data.bytes();
                sp.gen += 1;
            }
        }
        self.sparse
            .retain(|_, sp| !sp.data.is_empty() || sp.taken.is_some());
        self.inflight.retain(|&i, _| i * bs < size);
        for (&i, (_, d)) in self.inflight.iter_mut() {
            let keep = (size - i * bs) as usize;
            if d.len() > keep {
                *d = Arc::new(d[..keep].to_vec());
            }
        }
        let last = size.div_ceil(bs);
        let cut: Vec<u64> = self.dirty.range(last..).map(|(i, _)| *i).collect();
        for i in cut {
            self.written.remove(&i);
            if let Some(d) = self.dirty.remove(&i) {
                self.dirty_bytes -= d.len();
            }
        }
        if !size.is_multiple_of(bs) {
            if let Some(d) = self.dirty.get_mut(&(size / bs)) {
                let keep = (size % bs) as usize;
                if d.len() > keep {
                    self.dirty_bytes -= d.len() - keep;
                    d.truncate(keep);
                }
            }
        }
        self.attr.size = size;
    }
}

/// Add `[start, end)` to a sorted list of disjoint ranges; true when they cover `[0, full)`.
pub(super) fn mark_written(
    ranges: &mut Vec<(usize, usize)>,
    start: usize,
    end: usize,
    full: usize,
) -> bool {
    ranges.push((start, end));
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    *ranges = merged;
    ranges.len() == 1 && ranges[0].0 == 0 && ranges[0].1 >= full
}

/// At most this many extents in one file (about 5 MiB of slot records to commit or open);
/// past it the most fragmented slots are stored whole again.
pub(super) const COMMIT_EXTENTS_MAX: usize = 128 << 10;

/// How many bytes of its block a stored slot holds (past them it reads as zeros).
pub(super) fn content_len(s: &Slot) -> usize {
    let ext = s.extents.last().map_or(0, |e| e.end() as usize);
    (s.base_len() as usize).max(ext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardfs_common::proto::FileKind;

    const BS: u64 = 4 << 20;

    /// Reads `(offset, len)` in turn; whether each was taken as part of a stream, and
    /// whether it read ahead.
    fn observed(reads: &[(u64, u64)]) -> Vec<(bool, bool)> {
        let mut st = state();
        reads
            .iter()
            .map(|&(off, len)| {
                let (_, stream, ahead) = st.observe_read(off, BS);
                st.next_read = off + len;
                (stream, ahead)
            })
            .collect()
    }

    fn streams(reads: &[(u64, u64)]) -> Vec<bool> {
        observed(reads).into_iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn out_of_order_read_ahead_reads_ahead_and_scattered_reads_do_not() {
        let k = 256u64 << 10;
        // The kernel's read-ahead of a sequential reader, answered out of order from the
        // second read on: read-ahead from the fourth near read in a row.
        let ooo = [
            (0, k),
            (2 * k, k),
            (k, k),
            (4 * k, k),
            (3 * k, k),
            (6 * k, k),
        ];
        let ahead: Vec<bool> = observed(&ooo).into_iter().map(|(_, a)| a).collect();
        assert_eq!(ahead, vec![true, false, false, true, true, true]);
        // Random 4 KiB reads, two of them landing near each other: no read-ahead.
        let gib = 1u64 << 30;
        let scattered = [
            (gib / 2, 4096),
            (gib / 2 + (1 << 20), 4096),
            (gib / 8, 4096),
            (gib / 8 + (3 << 20), 4096),
            (gib / 3, 4096),
        ];
        assert!(observed(&scattered).iter().all(|(_, a)| !a));
    }

    #[test]
    fn a_random_read_landing_near_the_last_is_not_a_stream() {
        let gib = 1u64 << 30;
        // Far, then 1 MiB past the last one's end (within two blocks), then far again.
        let got = streams(&[
            (gib / 2, 4096),
            (gib / 2 + (1 << 20), 4096),
            (gib / 8, 4096),
        ]);
        assert_eq!(got, vec![false, false, false]);
    }

    #[test]
    fn read_ahead_out_of_order_stays_a_stream() {
        let k = 128u64 << 10;
        // In order, then the kernel's read-ahead answering 2 before 1, then a gap of a block.
        let got = streams(&[(0, k), (k, k), (3 * k, k), (2 * k, k), (4 * k + BS, k)]);
        assert_eq!(got, vec![true, true, true, true, true]);
        // A reader that seeks somewhere and then reads on is a stream from its second read.
        let got = streams(&[(5 * BS, k), (5 * BS + k, k), (5 * BS + 3 * k, k)]);
        assert_eq!(got, vec![false, true, true]);
    }

    fn state() -> FileState {
        let attr = Attr {
            ino: 2,
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 0,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            rdev: 0,
            version: 0,
        };
        FileState::new(attr, Vec::new())
    }

    fn small_write(st: &mut FileState, idx: u64, off: u32, data: &[u8]) {
        let sp = st.sparse.entry(idx).or_default();
        let before = sp.data.bytes();
        sp.data.write(off, data);
        sp.gen += 1;
        st.dirty_bytes += sp.data.bytes() - before;
    }

    #[test]
    fn dropped_changes_leave_the_base_and_nothing_to_commit() {
        let mut st = state();
        st.base_size = 10;
        st.base = 3;
        st.dirty.insert(0, vec![7; 5000]);
        st.dirty_bytes = 5000;
        st.attr.size = 5000;
        st.meta_dirty = true;
        st.changes = 4;
        assert!(st.has_local_changes());
        st.drop_unpublished();
        assert!(!st.has_local_changes());
        assert!(st.dirty.is_empty());
        assert_eq!((st.attr.size, st.attr.version), (10, 3));
        assert_eq!(
            (st.changes, st.published),
            (4, 4),
            "no handle commits them later"
        );
    }

    #[test]
    fn only_small_blocks_the_cluster_holds_nothing_of_become_pieces() {
        let mut st = state();
        st.dirty.insert(0, vec![7; 5000]);
        st.dirty.insert(1, vec![8; 100 << 10]);
        st.dirty.insert(2, vec![9; 10]);
        st.dirty_bytes = 5000 + (100 << 10) + 10;
        // Block 2 is stored already: its dirty copy is the whole block over what is stored.
        st.slots.insert(
            2,
            Slot {
                index: 2,
                used: 10,
                block: None,
                cap: Default::default(),
                extents: Vec::new(),
                pieces: Vec::new(),
            },
        );
        assert_eq!(st.small_new_blocks(64 << 10), vec![0]);
        st.dirty_to_sparse(0);
        assert!(!st.dirty.contains_key(&0));
        assert_eq!(st.dirty_bytes, 5000 + (100 << 10) + 10, "the same bytes");
        let jobs = st.take_sparse();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].2.data, vec![7; 5000]);
        assert_eq!(jobs[0].2.parts[0].ranges, vec![(0, 5000, 0)]);
        assert!(st.small_new_blocks(64 << 10).is_empty(), "taken: not again");
    }

    #[test]
    fn small_writes_leave_only_once_every_piece_carrying_them_is_stored() {
        let mut st = state();
        small_write(&mut st, 0, 10, &[1; 100]);
        small_write(&mut st, 3, 0, &[2; 50]);
        let jobs = st.take_sparse();
        assert_eq!(jobs.len(), 1, "small writes of one flush share a piece");
        assert!(
            jobs.iter().all(|(seq, _, _)| *seq == jobs[0].0),
            "one upload number"
        );
        assert!(
            st.take_sparse().is_empty(),
            "taken writes are not taken twice"
        );
        st.piece_back(0, true);
        assert!(!st.sparse.contains_key(&0), "stored: the buffer goes");
        // Written into while its piece was being stored: kept for the next flush.
        small_write(&mut st, 3, 60, &[3; 10]);
        st.piece_back(3, true);
        assert!(st.sparse.contains_key(&3), "newer bytes stay until stored");
        assert_eq!(st.dirty_bytes, 60);
        // A piece that failed leaves its writes to be taken again.
        let again = st.take_sparse();
        assert_eq!(again.len(), 1);
        st.piece_back(3, false);
        assert!(st.sparse.contains_key(&3));
        assert_eq!(st.take_sparse().len(), 1, "taken again after a failure");
    }

    #[test]
    fn a_truncate_cuts_buffers_and_marks_pieces_in_flight_stale() {
        let bs = 4096;
        let mut st = state();
        small_write(&mut st, 1, 100, &[7; 1000]);
        let epoch = st.epoch;
        st.truncate(bs + 600, bs);
        assert_ne!(
            st.epoch, epoch,
            "pieces taken before carry bytes that are gone"
        );
        assert_eq!(st.sparse[&1].data.end(), 600, "cut at the new size");
        assert_eq!(st.dirty_bytes, 500);
        st.truncate(bs, bs);
        assert!(
            st.sparse.get(&1).is_none_or(|sp| sp.data.is_empty()),
            "nothing past the end is kept"
        );
    }

    #[test]
    fn a_change_after_journaling_is_journaled_again() {
        let mut st = state();
        st.journaled = true;
        st.touch();
        assert!(
            !st.journaled,
            "the journal no longer holds the current content"
        );
    }

    #[test]
    fn a_change_while_journaling_is_not_counted_as_journaled() {
        let mut st = state();
        let viewed = st.touch();
        // A write lands while the entry of `viewed` is being read and written.
        st.touch();
        st.journal_done(viewed);
        assert!(!st.journaled, "the later write is not in the journal");
        let now = st.changes;
        st.journal_done(now);
        assert!(st.journaled);
    }

    #[test]
    fn sparse_writes_become_a_whole_block_over_the_stored_one() {
        let mut st = state();
        small_write(&mut st, 0, 2, b"xy");
        st.sparse_to_dirty(0, Some(Arc::new(b"abcdef".to_vec())), 4096);
        assert_eq!(st.dirty[&0], b"abxyef");
        assert!(
            st.sparse.is_empty(),
            "a slot is dirty or sparse, never both"
        );
        assert_eq!(st.dirty_bytes, 6);
        let (_, data) = st.take_for_upload(0).unwrap();
        assert_eq!(&data[..], b"abxyef");
        assert!(st.inflight.contains_key(&0) && st.dirty_bytes == 0);
    }
}
