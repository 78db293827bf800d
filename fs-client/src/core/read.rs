//! The read path: this mount's unstored writes laid over stored slots (base blocks and pieces).

use super::*;

impl Core {
    /// Bytes `[lo, hi)` of a stored slot: its base block with its extents over it, zeros
    /// where neither has bytes. `random`: a small read not part of a stream, which fetches
    /// just the ranges it needs.
    pub(super) async fn slot_bytes(
        &self,
        ino: Ino,
        s: &Slot,
        lo: usize,
        hi: usize,
        random: bool,
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; hi - lo];
        let over = extent::within(&s.extents, lo as u32, hi as u32);
        let covered: usize = over.iter().map(|e| e.len as usize).sum();
        let avail = s.base_len() as usize;
        if let (Some(b), true) = (&s.block, covered < hi - lo && lo < avail) {
            let (a, e) = (lo, hi.min(avail));
            let part = match random && e - a <= RANGE_READ_MAX {
                true => self.blocks.get_range(b, s.cap, a, e).await,
                false => None,
            };
            match part {
                Some(p) => out[..e - a].copy_from_slice(&p),
                None => {
                    let d = self.blocks.get(b, s.cap).await?;
                    let e = e.min(d.len());
                    out[..e.saturating_sub(a)].copy_from_slice(&d[a.min(e)..e]);
                }
            }
        }
        // A few ranges are fetched as ranges; many (a stream over a fragmented block) as whole
        // pieces, which the block cache then keeps.
        let ranged = over.len() <= 8;
        let fetches = over.iter().map(|e| async move {
            let (meta, cap) = s.piece(&e.piece).ok_or_else(|| {
                Error::Protocol(format!("slot {}: piece {} not described", s.index, e.piece))
            })?;
            let (a, b) = (e.piece_off as usize, e.piece_off as usize + e.len as usize);
            if b as u64 > meta.len {
                return Err(Error::Protocol(format!(
                    "slot {}: extent past the end of piece {}",
                    s.index, e.piece
                )));
            }
            if meta.is_inline() {
                let d = self.blocks.get_inline(meta, *cap, ino, s.index).await?;
                return Ok((e, d[a..b].to_vec()));
            }
            if ranged {
                if let Some(p) = self.blocks.get_range(meta, *cap, a, b).await {
                    return Ok::<_, Error>((e, p));
                }
            }
            let d = self.blocks.get(meta, *cap).await?;
            Ok((e, d[a..b].to_vec()))
        });
        for r in futures::future::join_all(fetches).await {
            let (e, bytes) = r?;
            let at = e.off as usize - lo;
            out[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(out)
    }

    /// The whole content of a file as `of` describes it (a small file: the merge limit).
    pub(crate) async fn read_all(&self, of: Arc<OpenFile>, size: u64) -> Result<Vec<u8>> {
        let fh = self.add_handle(Handle::File(of, Default::default()));
        let mut out = Vec::with_capacity(size as usize);
        let r = async {
            while (out.len() as u64) < size {
                let want = (size - out.len() as u64).min(1 << 20) as u32;
                let d = self.read(fh, out.len() as u64, want).await?;
                if d.is_empty() {
                    break;
                }
                out.extend_from_slice(&d);
            }
            Ok::<(), Error>(())
        }
        .await;
        self.handles.lock().expect("handles lock").remove(&fh);
        r.map(|()| out)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadData> {
        let of = self.file(fh)?;
        let bs = self.cluster.block_size;
        let (fsize, ahead, nearby) = {
            let mut st = of.st.lock().expect("file lock");
            let (_, stream, ahead) = st.observe_read(offset, bs);
            (st.attr.size, ahead, stream)
        };
        if offset >= fsize || size == 0 {
            return Ok(ReadData::Owned(Vec::new()));
        }
        let end = fsize.min(offset + size as u64);
        let mut out = Vec::new();
        // A read inside one block that is held whole (the usual case) is answered from the
        // block's buffer without a copy.
        let mut whole: Option<ReadData> = None;
        let first = offset / bs;
        let last = (end - 1) / bs;
        for idx in first..=last {
            let start = idx * bs;
            let lo = (offset.max(start) - start) as usize;
            let hi = (end.min(start + bs) - start) as usize;
            let (src, sparse) = {
                let st = of.st.lock().expect("file lock");
                // Small writes not stored yet, laid over whatever the block reads as.
                let sparse = st
                    .sparse
                    .get(&idx)
                    .map(|sp| sp.data.within(lo as u32, hi as u32))
                    .filter(|sp| !sp.is_empty());
                let src = if let Some(d) = st.dirty.get(&idx) {
                    Source::Bytes(d[lo.min(d.len())..hi.min(d.len())].to_vec())
                } else if let Some((_, d)) = st.inflight.get(&idx) {
                    Source::Shared(d.clone())
                } else if let Some((_, s)) = st.pending.get(&idx) {
                    Source::Stored(s.clone())
                } else if let Some(s) = st.slots.get(&idx) {
                    Source::Stored(s.clone())
                } else {
                    Source::Hole
                };
                (src, sparse)
            };
            let before = out.len();
            let src = match (src, &sparse) {
                (_, Some(sp)) if sp.covers(lo as u32, hi as u32) => Source::Hole,
                (Source::Stored(s), _) if !s.extents.is_empty() || s.block.is_none() => {
                    let random = !nearby && hi - lo <= RANGE_READ_MAX;
                    Source::Bytes(self.slot_bytes(of.ino, &s, lo, hi, random).await?)
                }
                (src, _) => src,
            };
            match src {
                Source::Bytes(b) if first == last && b.len() == hi - lo && sparse.is_none() => {
                    whole = Some(ReadData::Owned(b));
                    break;
                }
                Source::Bytes(b) => out.extend_from_slice(&b),
                Source::Shared(d) => out.extend_from_slice(&d[lo.min(d.len())..hi.min(d.len())]),
                Source::Stored(s) => {
                    let block = s
                        .block
                        .as_ref()
                        .expect("slots without a block are read above");
                    let avail = s.base_len() as usize;
                    let (a, b) = (lo.min(avail), hi.min(avail));
                    // A random read of part of a block fetches only that part; sequential
                    // readers get whole blocks (and read-ahead).
                    let partial = if !nearby && b - a <= RANGE_READ_MAX && b - a < avail / 2 {
                        self.blocks.get_range(block, s.cap, a, b).await
                    } else {
                        None
                    };
                    match partial {
                        Some(p) => out.extend_from_slice(&p),
                        None => {
                            let d = self.blocks.get(block, s.cap).await?;
                            let avail = d.len().min(s.used as usize);
                            if first == last && hi <= avail && sparse.is_none() {
                                whole = Some(ReadData::Slice(d, lo..hi));
                                break;
                            }
                            out.extend_from_slice(&d[lo.min(avail)..hi.min(avail)]);
                        }
                    }
                }
                Source::Hole => {}
            }
            out.resize(before + (hi - lo), 0);
            if let Some(sp) = sparse {
                sp.apply(lo as u32, &mut out[before..]);
            }
        }
        // Read-ahead for sequential readers.
        let ahead: Vec<Slot> = {
            let mut st = of.st.lock().expect("file lock");
            st.next_read = end;
            if ahead && self.cfg.readahead_blocks > 0 {
                st.slots
                    .range(last + 1..=last + self.cfg.readahead_blocks as u64)
                    .map(|(_, s)| s.clone())
                    .collect()
            } else {
                Vec::new()
            }
        };
        for s in ahead {
            if let Some(b) = s.block {
                self.blocks.prefetch(b, s.cap);
            }
            for (m, c) in s.pieces {
                self.blocks.prefetch(m, c);
            }
        }
        Ok(whole.unwrap_or(ReadData::Owned(out)))
    }
}
