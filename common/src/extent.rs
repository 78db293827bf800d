//! Extent maps: the small writes laid over a slot's block.
//!
//! A slot covers `block_size` bytes of a file. Its content is a base block (erasure-coded, may
//! be absent) and, on top of it, a list of *extents*: ranges of the slot whose bytes live in
//! a replicated *piece* (a block stored as full copies, packed from many small writes). The
//! list is kept sorted by offset and disjoint: adding an extent cuts away what it covers of the
//! older ones, so the newest write of every byte is the one listed. A byte of the slot reads
//! from the extent covering it, else from the base block if it is within the base's used
//! bytes, else as zero.
//!
//! Everything here is pure (no I/O), so the rules are tested without a cluster.

use crate::ids::BlockId;
use serde::{Deserialize, Serialize};

/// At most this many extents per slot. A slot that would exceed it is rewritten as one whole
/// block by its writer (and the master refuses a commit past it).
pub const MAX_EXTENTS: usize = 1024;

/// Bytes `[off, off + len)` of a slot are bytes `[piece_off, piece_off + len)` of `piece`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Extent {
    pub off: u32,
    pub len: u32,
    pub piece: BlockId,
    pub piece_off: u32,
}

impl Extent {
    /// One past the last byte (saturating: a map from the network is checked with
    /// [`check`] before use, and nothing here may panic on one that was not).
    pub fn end(&self) -> u32 {
        self.off.saturating_add(self.len)
    }

    /// The part of this extent within `[lo, hi)`, if any.
    fn clip(&self, lo: u32, hi: u32) -> Option<Extent> {
        let s = self.off.max(lo);
        let e = self.end().min(hi);
        (s < e).then(|| Extent {
            off: s,
            len: e - s,
            piece: self.piece,
            piece_off: self.piece_off.saturating_add(s - self.off),
        })
    }
}

/// Lay `new` (sorted, disjoint among themselves, newer than everything in `list`) over `list`.
pub fn overlay(list: &[Extent], new: &[Extent]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(list.len() + new.len());
    for old in list {
        // The parts of `old` no new extent covers.
        let mut pos = old.off;
        for n in new
            .iter()
            .filter(|n| n.off < old.end() && n.end() > old.off)
        {
            out.extend(old.clip(pos, n.off));
            pos = pos.max(n.end());
        }
        out.extend(old.clip(pos, old.end()));
    }
    out.extend(new.iter().copied().filter(|n| n.len > 0));
    out.sort_by_key(|e| e.off);
    merge_adjacent(out)
}

/// Join neighbours that continue each other in the same piece.
fn merge_adjacent(list: Vec<Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(list.len());
    for e in list {
        match out.last_mut() {
            Some(l)
                if l.end() == e.off && l.piece == e.piece && l.piece_off + l.len == e.piece_off =>
            {
                l.len += e.len
            }
            _ => out.push(e),
        }
    }
    out
}

/// Drop what lies at or past `size` bytes of the slot.
pub fn cut(list: &[Extent], size: u32) -> Vec<Extent> {
    list.iter().filter_map(|e| e.clip(0, size)).collect()
}

/// Whether `list` is a map the cluster could have made: sorted, disjoint, non-empty extents
/// inside a slot of `slot_len` bytes, at most [`MAX_EXTENTS`].
pub fn check(list: &[Extent], slot_len: u64) -> Result<(), String> {
    if list.len() > MAX_EXTENTS {
        return Err(format!(
            "{} extents in one slot, at most {MAX_EXTENTS}",
            list.len()
        ));
    }
    let mut pos = 0u64;
    for e in list {
        let end = e.off as u64 + e.len as u64;
        if e.len == 0 || (e.off as u64) < pos || end > slot_len {
            return Err(format!(
                "extent {}+{} is empty, overlaps or leaves the slot",
                e.off, e.len
            ));
        }
        e.piece_off
            .checked_add(e.len)
            .ok_or_else(|| "extent past the end of its piece".to_string())?;
        pos = end;
    }
    Ok(())
}

/// Copy the bytes the extents of `list` take from `piece` (its whole content: `data`) into
/// `out`, the slot's bytes. Refused, before anything is copied, if an extent leaves `out` or
/// `data` (a map or a piece that does not fit the other).
pub fn copy_from(
    list: &[Extent],
    piece: &BlockId,
    data: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    let mine = || list.iter().filter(|e| e.piece == *piece);
    for e in mine() {
        let (o, p, n) = (e.off as usize, e.piece_off as usize, e.len as usize);
        // u32 + u32 cannot overflow a usize of 64 bits.
        if o + n > out.len() || p + n > data.len() {
            return Err(format!(
                "extent {}+{} of piece {piece} does not fit the slot or the piece",
                e.off, e.len
            ));
        }
    }
    for e in mine() {
        let (o, p, n) = (e.off as usize, e.piece_off as usize, e.len as usize);
        out[o..o + n].copy_from_slice(&data[p..p + n]);
    }
    Ok(())
}

/// The distinct pieces `list` refers to, in first-use order.
pub fn pieces(list: &[Extent]) -> Vec<BlockId> {
    // A slot of many small writes has hundreds of pieces: linear in them, not quadratic.
    let mut seen = crate::IdSet::with_capacity_and_hasher(list.len(), Default::default());
    list.iter()
        .map(|e| e.piece)
        .filter(|p| seen.insert(*p))
        .collect()
}

/// The extents covering any of `[lo, hi)`, clipped to it.
pub fn within(list: &[Extent], lo: u32, hi: u32) -> Vec<Extent> {
    list.iter().filter_map(|e| e.clip(lo, hi)).collect()
}

/// Sorted, disjoint ranges of a slot written in memory and not yet stored: the write-back
/// buffer of one slot for writes that do not cover it whole.
#[derive(Clone, Debug, Default)]
pub struct Sparse {
    /// (offset, bytes), sorted, disjoint, never touching (neighbours are joined).
    ranges: Vec<(u32, Vec<u8>)>,
    bytes: usize,
}

impl Sparse {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn ranges(&self) -> &[(u32, Vec<u8>)] {
        &self.ranges
    }

    /// Write `data` at `off` (newer than what is here).
    pub fn write(&mut self, off: u32, data: &[u8]) {
        let end = off + data.len() as u32;
        // Ranges that overlap or touch [off, end) are joined with it into one.
        let first = self
            .ranges
            .partition_point(|(o, d)| o + (d.len() as u32) < off);
        let last = self.ranges.partition_point(|(o, _)| *o <= end);
        if first >= last {
            self.ranges.insert(first, (off, data.to_vec()));
            self.bytes += data.len();
            return;
        }
        let start = off.min(self.ranges[first].0);
        let hi = &self.ranges[last - 1];
        let stop = end.max(hi.0 + hi.1.len() as u32);
        let mut joined = vec![0u8; (stop - start) as usize];
        let mut removed = 0;
        for (o, d) in self.ranges.drain(first..last) {
            let at = (o - start) as usize;
            joined[at..at + d.len()].copy_from_slice(&d);
            removed += d.len();
        }
        let at = (off - start) as usize;
        joined[at..at + data.len()].copy_from_slice(data);
        self.bytes = self.bytes - removed + joined.len();
        self.ranges.insert(first, (start, joined));
    }

    /// Drop what lies at or past `size`.
    pub fn cut(&mut self, size: u32) {
        self.ranges.retain(|(o, _)| *o < size);
        if let Some((o, d)) = self.ranges.last_mut() {
            d.truncate((size - *o) as usize);
        }
        self.bytes = self.ranges.iter().map(|(_, d)| d.len()).sum();
    }

    /// Copy what is written here of `[lo, lo + out.len())` into `out`.
    pub fn apply(&self, lo: u32, out: &mut [u8]) {
        let hi = lo + out.len() as u32;
        for (o, d) in &self.ranges {
            let (s, e) = ((*o).max(lo), (o + d.len() as u32).min(hi));
            if s < e {
                out[(s - lo) as usize..(e - lo) as usize]
                    .copy_from_slice(&d[(s - o) as usize..(e - o) as usize]);
            }
        }
    }

    /// The writes that fall in `[lo, hi)`, clipped to it.
    pub fn within(&self, lo: u32, hi: u32) -> Sparse {
        let mut out = Sparse::default();
        for (o, d) in &self.ranges {
            let (s, e) = ((*o).max(lo), (o + d.len() as u32).min(hi));
            if s < e {
                out.ranges
                    .push((s, d[(s - o) as usize..(e - o) as usize].to_vec()));
                out.bytes += (e - s) as usize;
            }
        }
        out
    }

    /// Whether `[lo, hi)` is written here entirely.
    pub fn covers(&self, lo: u32, hi: u32) -> bool {
        self.ranges
            .iter()
            .any(|(o, d)| *o <= lo && o + d.len() as u32 >= hi)
    }

    /// The end of the last written byte (0 when empty).
    pub fn end(&self) -> u32 {
        self.ranges.last().map_or(0, |(o, d)| o + d.len() as u32)
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8) -> BlockId {
        BlockId([n; 32])
    }

    fn x(off: u32, len: u32, piece: u8, piece_off: u32) -> Extent {
        Extent {
            off,
            len,
            piece: p(piece),
            piece_off,
        }
    }

    /// What each byte of a slot of `n` bytes reads from: (piece, byte of the piece) or None.
    fn resolve(list: &[Extent], n: u32) -> Vec<Option<(u8, u32)>> {
        (0..n)
            .map(|b| {
                list.iter()
                    .find(|e| e.off <= b && b < e.end())
                    .map(|e| (e.piece.0[0], e.piece_off + b - e.off))
            })
            .collect()
    }

    #[test]
    fn newest_write_of_every_byte_wins() {
        // Reference: apply writes in order to a per-byte array.
        let writes = [
            x(10, 20, 1, 0),
            x(0, 5, 2, 100),
            x(15, 3, 3, 7),
            x(25, 40, 4, 0),
            x(0, 64, 5, 0),
            x(30, 2, 6, 9),
        ];
        let mut list = Vec::new();
        let mut model = vec![None; 80];
        for w in writes {
            list = overlay(&list, &[w]);
            for b in w.off..w.end() {
                model[b as usize] = Some((w.piece.0[0], w.piece_off + b - w.off));
            }
            assert_eq!(resolve(&list, 80), model);
            assert!(check(&list, 80).is_ok(), "{list:?}");
        }
        // The overwrite of 0..64 left itself (split around the newest one) and the end of 4.
        assert_eq!(list.len(), 4);
        assert_eq!(pieces(&list), vec![p(5), p(6), p(4)]);
    }

    #[test]
    fn neighbours_in_one_piece_join() {
        let l = overlay(&[], &[x(0, 4, 1, 0), x(4, 4, 1, 4)]);
        assert_eq!(l, vec![x(0, 8, 1, 0)]);
        let l = overlay(&l, &[x(8, 4, 1, 100)]);
        assert_eq!(l.len(), 2, "not contiguous in the piece");
    }

    #[test]
    fn cut_and_within_clip() {
        let l = vec![x(0, 10, 1, 0), x(20, 10, 2, 5)];
        assert_eq!(cut(&l, 25), vec![x(0, 10, 1, 0), x(20, 5, 2, 5)]);
        assert_eq!(cut(&l, 5), vec![x(0, 5, 1, 0)]);
        assert_eq!(within(&l, 8, 22), vec![x(8, 2, 1, 8), x(20, 2, 2, 5)]);
    }

    #[test]
    fn check_refuses_bad_maps() {
        assert!(check(&[x(0, 0, 1, 0)], 10).is_err());
        assert!(check(&[x(0, 5, 1, 0), x(4, 2, 1, 0)], 10).is_err());
        assert!(check(&[x(8, 5, 1, 0)], 10).is_err());
        assert!(check(&[x(0, 5, 1, u32::MAX - 2)], 10).is_err());
        // An end past 4 GiB must not wrap around into the slot.
        assert!(check(&[x(4_000_000, u32::MAX - 100, 1, 0)], 4 << 20).is_err());
        assert!(within(&[x(u32::MAX - 1, 5, 1, 0)], 0, 10).is_empty());
        let many: Vec<Extent> = (0..=MAX_EXTENTS as u32).map(|i| x(i, 1, 1, 0)).collect();
        assert!(check(&many, 1 << 20).is_err());
    }

    #[test]
    fn sparse_writes_join_and_overwrite() {
        let mut s = Sparse::default();
        let mut model = [None::<u8>; 100];
        let writes: [(u32, u32, u8); 7] = [
            (10, 5, 1),
            (30, 5, 2),
            (15, 5, 3),
            (12, 20, 4),
            (50, 1, 5),
            (0, 3, 6),
            (49, 3, 7),
        ];
        for (off, len, v) in writes {
            s.write(off, &vec![v; len as usize]);
            for b in off..off + len {
                model[b as usize] = Some(v);
            }
            let written = model.iter().filter(|b| b.is_some()).count();
            assert_eq!(s.bytes(), written);
            let mut out = vec![0u8; 100];
            s.apply(0, &mut out);
            for (i, m) in model.iter().enumerate() {
                assert_eq!(out[i], m.unwrap_or(0), "byte {i}");
            }
            for w in s.ranges().windows(2) {
                assert!(w[0].0 + (w[0].1.len() as u32) < w[1].0, "{:?}", s.ranges());
            }
        }
        assert!(s.covers(12, 35));
        assert!(!s.covers(0, 11));
        s.cut(13);
        assert_eq!(s.end(), 13);
        assert_eq!(s.bytes(), 3 + 3);
    }

    #[test]
    fn copy_from_takes_a_pieces_extents_and_refuses_ones_that_do_not_fit() {
        let (a, b) = (BlockId::of(b"a"), BlockId::of(b"b"));
        let list = vec![
            Extent {
                off: 1,
                len: 2,
                piece: a,
                piece_off: 3,
            },
            Extent {
                off: 4,
                len: 1,
                piece: b,
                piece_off: 0,
            },
            Extent {
                off: 6,
                len: 2,
                piece: a,
                piece_off: 0,
            },
        ];
        let mut out = vec![0u8; 8];
        copy_from(&list, &a, b"ABCDE", &mut out).unwrap();
        assert_eq!(&out, b"\0DE\0\0\0AB");
        copy_from(&list, &b, b"z", &mut out).unwrap();
        assert_eq!(&out, b"\0DE\0z\0AB");
        let mut short = vec![0u8; 7];
        assert!(
            copy_from(&list, &a, b"ABCDE", &mut short).is_err(),
            "leaves the slot"
        );
        assert_eq!(
            short,
            vec![0u8; 7],
            "nothing copied from a map that does not fit"
        );
        assert!(
            copy_from(&list, &a, b"ABC", &mut out).is_err(),
            "leaves the piece"
        );
    }
}
