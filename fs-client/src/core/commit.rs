//! Flushing a file: waiting for its uploads, committing its new block map, and taking in the master's answer.

use super::*;

/// Largest new block stored as a piece at a flush rather than as k + m shards.
const SMALL_BLOCK_AS_PIECE: usize = 64 << 10;

impl Core {
    /// Upload everything dirty, wait for it, and commit the new block list to the master.
    pub(super) async fn flush_file(&self, of: &Arc<OpenFile>) -> Result<()> {
        let _turn = of.flush_turn().await;
        if self.is_offline() && self.cfg.journal_dir.is_some() {
            let done = {
                let st = of.st.lock().expect("file lock");
                !st.has_local_changes() || st.journaled
            };
            if done {
                return Ok(());
            }
            return self.journal_file(of).await;
        }
        // Content kept in the journal waits for its replay, which merges it and then resets
        // this file; flushing it now as well would commit it a second time, over the merge.
        if of.st.lock().expect("file lock").journaled {
            return Ok(());
        }
        for _ in 0..8 {
            let r = match self.flush_once(of).await {
                Err(e)
                    if crate::offline::unreachable(&e)
                        && self.cfg.journal_dir.is_some()
                        && !self.master_answers().await =>
                {
                    self.went_offline(&e);
                    return self.journal_file(of).await;
                }
                r => r?,
            };
            match r {
                None => return Ok(()),
                Some(_) => self.merge_with(of).await?,
            }
        }
        Err(Error::Unavailable(format!(
            "inode {}: the file kept changing elsewhere while merging; try again",
            of.ino
        )))
    }

    /// Upload and commit once; `Some(current)` if another mount committed since this mount's
    /// base and the content is to be merged with `current` first.
    pub(super) async fn flush_once(&self, of: &Arc<OpenFile>) -> Result<Option<Attr>> {
        // Upload every dirty block (again, for one whose upload failed) and wait for all
        // uploads. Nothing is committed while a block of the file is not stored: the size the
        // master would publish must never cover bytes that are not in the cluster. A failure
        // stays recorded (later writes and flushes see it) until a retry succeeds or a
        // truncate drops the data.
        for round in 0..4 {
            // Slots with more extents than a commit may carry are stored whole again.
            for idx in self.too_fragmented(of) {
                let stored = self.stored_block(of, idx).await?;
                let bs = self.cluster.block_size;
                of.st
                    .lock()
                    .expect("file lock")
                    .sparse_to_dirty(idx, stored, bs);
            }
            let (taken, pieces_out) = {
                let mut st = of.st.lock().expect("file lock");
                if !st.dirty.is_empty() || !st.sparse.is_empty() {
                    st.error = None;
                }
                // A small block the cluster holds nothing of (a small file, a new file's
                // short tail) goes out as a piece: m + 1 full copies, one fsync on each of
                // m + 1 nodes, instead of k + m shards on k + m nodes. Sealing makes it an
                // erasure-coded block once the file has been quiet.
                for idx in st.small_new_blocks(SMALL_BLOCK_AS_PIECE) {
                    st.dirty_to_sparse(idx);
                }
                let idxs: Vec<u64> = st.dirty.keys().copied().collect();
                let taken: Vec<(u64, u64, Arc<Vec<u8>>)> = idxs
                    .into_iter()
                    .filter_map(|i| st.take_for_upload(i).map(|(s, d)| (i, s, d)))
                    .collect();
                (taken, st.take_sparse())
            };
            for (i, seq, d) in taken {
                self.start_upload(of, i, seq, d).await;
            }
            for (seq, epoch, job) in pieces_out {
                self.start_piece(of, seq, epoch, job).await;
            }
            of.uploads_settled().await;
            if !self.too_fragmented(of).is_empty() && round < 3 {
                continue;
            }
            let st = of.st.lock().expect("file lock");
            if let Some(e) = &st.error {
                return Err(Error::Unavailable(e.clone()));
            }
            if st.dirty.is_empty() && st.sparse.is_empty() {
                break;
            }
            // Written to meanwhile (another thread of this mount): upload those blocks too,
            // a few rounds at most; what is still being written is committed by its own flush.
            if round >= 2 {
                break;
            }
        }
        let (slots, size, mtime, base, mergeable, cut, seq, included, landed) = {
            let mut st = of.st.lock().expect("file lock");
            if let Some(e) = &st.error {
                return Err(Error::Unavailable(e.clone()));
            }
            if st.pending.is_empty() && st.superseded.is_empty() && !st.meta_dirty {
                return Ok(None);
            }
            st.meta_dirty = false;
            // Superseded uploads first, so the newest upload of each index is what stays.
            let mut slots: Vec<(u64, Slot)> = st.superseded.clone();
            slots.sort_by_key(|(seq, _)| *seq);
            slots.extend(st.pending.values().cloned());
            let mergeable = !st.no_merge && st.attr.size <= self.cfg.merge_max_bytes;
            // Sent until a commit carrying it is acknowledged.
            let cut = st.cut;
            // Taken under the file lock: a later snapshot of the file gets a later number.
            let seq = self.commit_seq.fetch_add(1, Ordering::Relaxed);
            // The local changes this commit publishes: all of them unless some are still
            // being written or uploaded.
            let included =
                match st.dirty.is_empty() && st.sparse.is_empty() && st.inflight.is_empty() {
                    true => st.changes,
                    false => st.published,
                };
            (
                slots,
                st.attr.size,
                st.attr.mtime,
                st.base,
                mergeable,
                cut,
                seq,
                included,
                st.landed_pieces.len(),
            )
        };
        let new: Vec<NewSlot> = slots.iter().map(|(_, s)| s.to_new()).collect();
        // Every piece the slots name, and every piece stored since the last commit (those
        // overwritten meanwhile are collected by the master).
        let mut pieces: Vec<BlockMeta> = Vec::new();
        // Landed inline pieces no slot names any more (overwritten before this commit) have
        // nothing to collect: they are left out, and let go of once the commit is applied.
        let mut unnamed: Vec<BlockId> = Vec::new();
        {
            let st = of.st.lock().expect("file lock");
            // A slot grown by small fsync'd appends names hundreds of pieces: linear in them.
            let mut listed = shardfs_common::IdSet::default();
            for (_, s) in &slots {
                for (m, _) in &s.pieces {
                    if listed.insert(m.id) {
                        pieces.push(m.clone());
                    }
                }
            }
            for m in &st.landed_pieces[..landed] {
                if !listed.insert(m.id) {
                    continue;
                }
                match m.is_inline() {
                    true => unnamed.push(m.id),
                    false => pieces.push(m.clone()),
                }
            }
        }
        // The bytes of the inline pieces the master does not hold yet go with the commit.
        let carried: Vec<(BlockId, Arc<Vec<u8>>)> = pieces
            .iter()
            .filter(|m| m.is_inline())
            .filter_map(|m| self.blocks.inline_pending(&m.id).map(|b| (m.id, b)))
            .collect();
        let bulk =
            shardfs_common::proto::inline_bulk::encode(carried.iter().map(|(id, b)| (*id, &b[..])));
        let sent: Vec<BlockId> = carried.iter().map(|(id, _)| *id).collect();
        debug!(
            ino = of.ino,
            blocks = new.len(),
            size,
            ?cut,
            seq,
            base,
            "commit"
        );
        let (r, g) = self
            .call_granted_with(
                MasterRequest::Commit {
                    ino: of.ino,
                    slots: new,
                    pieces,
                    size,
                    mtime,
                    base: Some(base),
                    session: self.session.load(Ordering::Relaxed),
                    mergeable,
                    cut,
                    seq,
                },
                bytes::Bytes::from(bulk),
            )
            .await;
        let applied = matches!(
            r,
            Ok(MasterResponse::Attr(_) | MasterResponse::Conflicted { .. })
        );
        if applied
            || r.as_ref()
                .is_err_and(|e| e.code() == shardfs_common::ErrorCode::Quota)
        {
            self.blocks.inline_committed(&sent);
            self.blocks.inline_committed(&unnamed);
        }
        let mut refused = None;
        let reload = {
            let mut st = of.st.lock().expect("file lock");
            match r {
                Ok(MasterResponse::Attr(a)) => {
                    self.remember(&a, g);
                    st.landed_pieces.drain(..landed);
                    st.published = st.published.max(included);
                    let committed: Vec<u64> = slots.iter().map(|(seq, _)| *seq).collect();
                    st.superseded.retain(|(seq, _)| !committed.contains(seq));
                    for (seq, s) in slots {
                        if st.pending.get(&s.index).is_some_and(|(p, _)| *p == seq) {
                            st.pending.remove(&s.index);
                        }
                        st.slots.insert(s.index, s);
                    }
                    let bs = self.cluster.block_size;
                    st.slots.retain(|&i, _| i * bs < size.max(1));
                    if st.cut == cut {
                        st.cut = None;
                    }
                    st.base = a.version;
                    st.base_size = size;
                    st.base_slots = st.slots.values().cloned().collect();
                    if !st.has_local_changes() {
                        st.attr = a;
                    }
                    return Ok(None);
                }
                Ok(MasterResponse::Stale { attr }) => {
                    st.meta_dirty = true;
                    return Ok(Some(attr));
                }
                Ok(MasterResponse::Conflicted {
                    attr,
                    copy,
                    copy_attr,
                }) => {
                    // Someone else changed the file since this mount read it, and the change
                    // cannot be merged: what was written here is safe in the copy; the file
                    // itself shows the other writer's content again.
                    warn!(
                        ino = of.ino,
                        copy = %String::from_utf8_lossy(&copy),
                        "the file changed elsewhere; this mount's version was saved as a conflicted copy"
                    );
                    self.remember(&copy_attr, Grant::NONE);
                    // The copy is a new name this mount did not make itself.
                    self.forget_dirs();
                    st.landed_pieces.drain(..landed);
                    st.published = st.published.max(included);
                    st.outcome = Some(format!(
                        "kept as {:?} (changed elsewhere, not mergeable)",
                        String::from_utf8_lossy(&copy)
                    ));
                    let committed: Vec<u64> = slots.iter().map(|(seq, _)| *seq).collect();
                    st.superseded.retain(|(seq, _)| !committed.contains(seq));
                    for (seq, s) in &slots {
                        if st.pending.get(&s.index).is_some_and(|(p, _)| p == seq) {
                            st.pending.remove(&s.index);
                        }
                    }
                    attr
                }
                Ok(other) => {
                    st.meta_dirty = true;
                    return Err(unexpected(other));
                }
                // Past a quota: the writer hears EDQUOT (at this close or fsync); what it
                // wrote since the last commit is dropped, and the file is what the cluster
                // holds (its stored but uncommitted pieces are collected as orphans).
                Err(e) if e.code() == shardfs_common::ErrorCode::Quota => {
                    warn!(
                        ino = of.ino,
                        "a quota is reached; the file's unpublished changes are dropped: {e}"
                    );
                    st.drop_unpublished();
                    refused = Some(e);
                    st.attr.clone()
                }
                Err(e) => {
                    st.meta_dirty = true;
                    return Err(e);
                }
            }
        };
        self.reload(of, reload).await;
        refused.map_or(Ok(None), Err)
    }

    /// Remember the code of `ino`'s new blocks (None: the cluster's).
    pub(super) fn note_code(&self, ino: Ino, code: Option<EcParams>) {
        let mut codes = self.codes.lock().expect("codes lock");
        match code {
            Some(c) => {
                codes.put(ino, c);
            }
            None => {
                codes.pop(&ino);
            }
        }
    }

    /// The code `ino`'s new blocks are stored with, if not the cluster's.
    pub(super) fn code_of(&self, ino: Ino) -> Option<EcParams> {
        self.codes.lock().expect("codes lock").get(&ino).copied()
    }

    /// A file's attributes and block map from the master; `hold`: the file stays open on this
    /// mount's session (see `MasterRequest::Open`).
    pub(super) async fn fetch_map(&self, ino: Ino, hold: bool, access: u8) -> Result<ReadBase> {
        let session = match hold {
            true => self.session.load(Ordering::Relaxed),
            false => 0,
        };
        match self
            .call(MasterRequest::Open {
                ino,
                session,
                access,
            })
            .await?
        {
            MasterResponse::Opened { attr, slots, code } => {
                self.note_code(attr.ino, code);
                Ok((attr, slots))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Show the master's current content of an open file again (after its content changed
    /// under this mount), unless this mount has written more since.
    pub(super) async fn reload(&self, of: &OpenFile, attr: Attr) {
        // The file is already held by this mount's session: a look is enough.
        let fresh = self.fetch_map(of.ino, false, 0).await.ok();
        {
            let mut st = of.st.lock().expect("file lock");
            if !st.has_local_changes() {
                match fresh {
                    Some((a, slots)) => st.reset(a, slots),
                    None => st.reset(attr.clone(), Vec::new()),
                }
            } else {
                st.base = attr.version;
            }
        }
        self.invalidate(of.ino);
    }

    /// Make everything written to the file durable in the cluster (whichever handle wrote it).
    pub async fn fsync(&self, fh: u64) -> Result<()> {
        let of = self.file(fh)?;
        self.flush_file(&of).await
    }
}
