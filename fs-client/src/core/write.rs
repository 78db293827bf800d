//! The write path: small writes kept sparse or whole blocks in memory, uploads of blocks and pieces, and when a slot is stored whole again.

use super::*;

impl Core {
    /// The current content of block `idx` as this mount sees it, ignoring its dirty copy.
    pub(super) async fn stored_block(
        &self,
        of: &OpenFile,
        idx: u64,
    ) -> Result<Option<Arc<Vec<u8>>>> {
        let slot = {
            let st = of.st.lock().expect("file lock");
            if let Some((_, d)) = st.inflight.get(&idx) {
                return Ok(Some(d.clone()));
            }
            st.pending
                .get(&idx)
                .map(|(_, s)| s.clone())
                .or_else(|| st.slots.get(&idx).cloned())
        };
        match slot {
            None => Ok(None),
            Some(s) if !s.extents.is_empty() || s.block.is_none() => {
                let len = content_len(&s).min(self.cluster.block_size as usize);
                Ok(Some(Arc::new(
                    self.slot_bytes(of.ino, &s, 0, len, false).await?,
                )))
            }
            Some(s) => {
                let b = s.block.as_ref().expect("checked");
                let d = self.blocks.get(b, s.cap).await?;
                if (s.used as usize) < d.len() {
                    Ok(Some(Arc::new(d[..s.used as usize].to_vec())))
                } else {
                    Ok(Some(d))
                }
            }
        }
    }

    /// Write through handle `fh` on behalf of thread `pid` (0: unknown).
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8], pid: u32) -> Result<u32> {
        let (of, h) = match self.handle(fh)? {
            Handle::File(of, h) => (of, h),
            Handle::Dir(_) => {
                return Err(Error::fs(
                    shardfs_common::ErrorCode::IsDir,
                    "is a directory",
                ))
            }
        };
        let bs = self.cluster.block_size;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > (1u64 << 50))
        {
            return Err(Error::fs(
                shardfs_common::ErrorCode::TooBig,
                "file too large",
            ));
        }
        if let Some(e) = &of.st.lock().expect("file lock").error {
            return Err(Error::Unavailable(e.clone()));
        }
        h.wrote(pid);
        let mut pos = 0usize;
        let now = Timespec::now();
        while pos < data.len() {
            let off = offset + pos as u64;
            let idx = off / bs;
            let within = (off % bs) as usize;
            let n = (bs as usize - within).min(data.len() - pos);
            let whole = within == 0 && n == bs as usize;
            let sparse = {
                let mut st = of.st.lock().expect("file lock");
                if whole {
                    if let Some(sp) = st.sparse.remove(&idx) {
                        st.dirty_bytes -= sp.data.bytes();
                    }
                }
                // A part of a block the cluster holds (and this mount has no copy of in
                // memory) is kept as a small write, not merged into a fetched copy.
                !whole
                    && !st.dirty.contains_key(&idx)
                    && (st.sparse.contains_key(&idx)
                        || (!st.inflight.contains_key(&idx)
                            && (st.pending.contains_key(&idx) || st.slots.contains_key(&idx))))
            };
            let mut to_upload = Vec::new();
            let mut pieces_out = Vec::new();
            if sparse {
                let convert = {
                    let mut st = of.st.lock().expect("file lock");
                    st.journaled = false;
                    let sp = st.sparse.entry(idx).or_default();
                    let before = sp.data.bytes();
                    sp.data.write(within as u32, &data[pos..pos + n]);
                    sp.gen += 1;
                    let grown = sp.data.bytes() - before;
                    let complete = sp.data.covers(0, bs as u32);
                    // Mostly rewritten in pieces (not one stream from the start): cheaper as
                    // a whole block than as many extents.
                    let convert = !complete
                        && sp.data.bytes() > bs as usize / 2
                        && sp.data.ranges().len() > 1;
                    st.dirty_bytes += grown;
                    Self::note_write(&mut st, &h, off + n as u64, now);
                    if complete {
                        st.sparse_to_dirty(idx, None, bs);
                        to_upload.extend(st.take_for_upload(idx).map(|(s, d)| (idx, s, d)));
                    }
                    convert
                };
                if convert {
                    let stored = self.stored_block(&of, idx).await?;
                    of.st
                        .lock()
                        .expect("file lock")
                        .sparse_to_dirty(idx, stored, bs);
                }
            } else {
                let present = of.st.lock().expect("file lock").dirty.contains_key(&idx);
                if !present {
                    let base = if whole {
                        None
                    } else {
                        self.stored_block(&of, idx).await?
                    };
                    let mut st = of.st.lock().expect("file lock");
                    st.journaled = false;
                    // Small writes made meanwhile are newer than the base.
                    st.sparse_to_dirty(idx, base, bs);
                }
                let mut st = of.st.lock().expect("file lock");
                let Some(buf) = st.dirty.get_mut(&idx) else {
                    continue;
                };
                let before = buf.len();
                if within == buf.len() {
                    // Appending (the sequential case): copy once, no zero-fill.
                    buf.extend_from_slice(&data[pos..pos + n]);
                } else {
                    if buf.len() < within + n {
                        buf.resize(within + n, 0);
                    }
                    buf[within..within + n].copy_from_slice(&data[pos..pos + n]);
                }
                let grown = buf.len() - before;
                st.dirty_bytes += grown;
                Self::note_write(&mut st, &h, off + n as u64, now);
                // A block rewritten end to end (in whatever order the writes came) goes out now.
                if mark_written(
                    st.written.entry(idx).or_default(),
                    within,
                    within + n,
                    bs as usize,
                ) {
                    to_upload.extend(st.take_for_upload(idx).map(|(s, d)| (idx, s, d)));
                }
            }
            {
                let mut st = of.st.lock().expect("file lock");
                if st.dirty_bytes > self.cfg.dirty_limit {
                    let all: Vec<u64> = st.dirty.keys().copied().collect();
                    for i in all {
                        to_upload.extend(st.take_for_upload(i).map(|(s, d)| (i, s, d)));
                    }
                    pieces_out = st.take_sparse();
                }
            }
            for (i, seq, d) in to_upload {
                self.start_upload(&of, i, seq, d).await;
            }
            for (seq, epoch, job) in pieces_out {
                self.start_piece(&of, seq, epoch, job).await;
            }
            pos += n;
        }
        Ok(data.len() as u32)
    }

    /// Record a write ending at `end` in the file's attributes and change count.
    pub(super) fn note_write(st: &mut FileState, h: &HandleState, end: u64, now: Timespec) {
        st.attr.size = st.attr.size.max(end);
        st.attr.mtime = now;
        st.attr.ctime = now;
        st.meta_dirty = true;
        h.touched.fetch_max(st.touch(), Ordering::SeqCst);
    }

    /// A place in the upload window (which bounds the memory of uploads under way).
    pub(super) async fn upload_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.uploads
            .clone()
            .acquire_owned()
            .await
            .expect("upload semaphore never closes")
    }

    /// Store one piece of small writes (m + 1 copies) and lay it over the slots it carries.
    pub(super) async fn start_piece(
        &self,
        of: &Arc<OpenFile>,
        seq: u64,
        epoch: u64,
        mut job: PieceJob,
    ) {
        if self.store_inline(of, seq, epoch, &job) {
            return;
        }
        let permit = self.upload_permit().await;
        let (blocks, code) = (self.blocks.clone(), self.code_of(of.ino));
        let of = of.clone();
        tokio::spawn(async move {
            debug!(
                ino = of.ino,
                seq,
                len = job.data.len(),
                slots = job.parts.len(),
                "piece"
            );
            let r = blocks
                .put_piece(Arc::new(std::mem::take(&mut job.data)), code)
                .await;
            {
                let mut st = of.st.lock().expect("file lock");
                st.running = st.running.saturating_sub(1);
                match r {
                    Ok((meta, cap)) => st.piece_stored(seq, epoch, &job, meta, cap),
                    Err(e) => {
                        warn!(ino = of.ino, "could not store a piece of small writes: {e}");
                        for p in &job.parts {
                            st.piece_back(p.idx, false);
                        }
                        st.error = Some(format!(
                            "could not store small writes of inode {}: {e}",
                            of.ino
                        ));
                    }
                }
            }
            drop(permit);
            of.changed.notify_waiters();
        });
    }

    /// Keep a small piece as an inline piece, carried by the file's next commit (true), if
    /// it is small enough and the file's uncommitted inline pieces stay within what one
    /// commit may carry.
    fn store_inline(&self, of: &Arc<OpenFile>, seq: u64, epoch: u64, job: &PieceJob) -> bool {
        let len = job.data.len();
        if len > self.cfg.inline_max {
            return false;
        }
        let waiting: usize = {
            let st = of.st.lock().expect("file lock");
            st.landed_pieces
                .iter()
                .filter(|m| m.is_inline())
                .map(|m| m.len as usize)
                .sum()
        };
        if waiting + len > shardfs_common::proto::INLINE_COMMIT_MAX / 2 {
            return false;
        }
        let made = match self.blocks.make_inline(&job.data) {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => return false,
        };
        debug!(
            ino = of.ino,
            seq,
            len,
            slots = job.parts.len(),
            "inline piece"
        );
        {
            let mut st = of.st.lock().expect("file lock");
            st.running = st.running.saturating_sub(1);
            st.piece_stored(seq, epoch, job, made.0, made.1);
        }
        of.changed.notify_waiters();
        true
    }

    pub(super) async fn start_upload(
        &self,
        of: &Arc<OpenFile>,
        idx: u64,
        seq: u64,
        data: Arc<Vec<u8>>,
    ) {
        let permit = self.upload_permit().await;
        let (blocks, code) = (self.blocks.clone(), self.code_of(of.ino));
        let of = of.clone();
        tokio::spawn(async move {
            debug!(ino = of.ino, block = idx, seq, len = data.len(), "upload");
            let r = blocks.put(data.clone(), code).await;
            {
                let mut st = of.st.lock().expect("file lock");
                st.running = st.running.saturating_sub(1);
                let current = st.inflight.get(&idx).is_some_and(|(s, _)| *s == seq);
                if current {
                    st.inflight.remove(&idx);
                }
                match r {
                    Ok((meta, cap)) => {
                        let slot = Slot::whole(idx, data.len() as u64, meta, cap);
                        st.landed(idx, seq, slot);
                    }
                    Err(e) => {
                        warn!(ino = of.ino, block = idx, "could not store block: {e}");
                        // Keep the data: a later flush tries again.
                        // Only the newest version of a block matters: a failed upload of an
                        // older one is moot once a newer one is on its way.
                        if current {
                            if !st.dirty.contains_key(&idx) {
                                st.dirty_bytes += data.len();
                                st.dirty.insert(idx, data.to_vec());
                            }
                            st.error = Some(format!(
                                "could not store block {idx} of inode {}: {e}",
                                of.ino
                            ));
                        }
                    }
                }
            }
            drop(permit);
            of.changed.notify_waiters();
        });
    }

    /// Slots that hold too many extents (one past [`MAX_EXTENTS`], or so many in the file that
    /// its block map would be large to commit and to open): the most fragmented first.
    pub(super) fn too_fragmented(&self, of: &OpenFile) -> Vec<u64> {
        let st = of.st.lock().expect("file lock");
        if st.pending.is_empty() && st.sparse.is_empty() && st.dirty.is_empty() {
            // Nothing written here: a reader does not rewrite the file.
            return Vec::new();
        }
        // The file's slots as the commit will leave them: pending ones over committed ones.
        let mut counts: Vec<(usize, u64)> = st
            .slots
            .iter()
            .filter(|(i, _)| !st.pending.contains_key(i))
            .map(|(_, s)| s)
            .chain(st.pending.values().map(|(_, s)| s))
            .filter(|s| !st.dirty.contains_key(&s.index) && !st.inflight.contains_key(&s.index))
            .map(|s| (s.extents.len(), s.index))
            .collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let mut total: usize = counts.iter().map(|c| c.0).sum();
        let mut out = Vec::new();
        for (n, idx) in counts {
            if n <= MAX_EXTENTS && total <= COMMIT_EXTENTS_MAX {
                break;
            }
            out.push(idx);
            total -= n;
        }
        out
    }

    /// fallocate(2): extend the size (mode 0), zero a range (FALLOC_FL_ZERO_RANGE) or punch a
    /// hole (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE). Space is not reserved ahead (blocks
    /// are placed when written); zeroed ranges read back as zeros and cost one shared
    /// all-zero block each, as content-addressed blocks dedupe.
    /// fallocate(2) on handle `fh` by thread `pid`.
    pub async fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        pid: u32,
    ) -> Result<()> {
        use shardfs_common::ErrorCode;
        let (keep, punch, zero) = (
            mode & libc::FALLOC_FL_KEEP_SIZE != 0,
            mode & libc::FALLOC_FL_PUNCH_HOLE != 0,
            mode & libc::FALLOC_FL_ZERO_RANGE != 0,
        );
        if mode
            & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE)
            != 0
        {
            return Err(Error::fs(
                ErrorCode::NotSupported,
                format!("fallocate mode {mode:#x} is not supported"),
            ));
        }
        if (punch && (!keep || zero)) || len == 0 {
            return Err(Error::invalid("invalid fallocate mode or length"));
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| Error::fs(ErrorCode::TooBig, "range past the largest file size"))?;
        let of = self.file(fh)?;
        let size = of.st.lock().expect("file lock").attr.size;
        if punch || zero {
            let zero_end = if keep { end.min(size) } else { end };
            let chunk = (self.cluster.block_size as usize).min(1 << 20);
            let zeros = vec![0u8; chunk];
            let mut pos = offset;
            while pos < zero_end {
                let n = ((zero_end - pos) as usize).min(chunk);
                self.write(fh, pos, &zeros[..n], pid).await?;
                pos += n as u64;
            }
        }
        if !keep && end > of.st.lock().expect("file lock").attr.size {
            let now = Timespec::now();
            let set = SetAttr {
                mode: None,
                uid: None,
                gid: None,
                size: Some(end),
                atime: None,
                mtime: Some(now),
                now,
            };
            self.setattr(of.ino, Some(fh), set).await?;
        }
        Ok(())
    }
}
