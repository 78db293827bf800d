//! Small writes on their way to the cluster: packing them into pieces, and laying a stored
//! piece over the slots it carries.
//!
//! A write that covers only part of a block which the cluster already holds is not merged into
//! a copy of the whole block (that read-modify-write cost a 4 MiB fetch, encode and upload per
//! 4 KiB write). It is kept per slot as a [`Sparse`] buffer. A flush packs the buffers of a
//! file, in slot order, into pieces of at most [`PIECE_MAX`] bytes; each piece is stored as
//! m + 1 full copies (one fsync per node for all the writes it carries), and each slot then
//! gets extents naming its bytes in the piece (`shardfs_common::extent`). Everything here is
//! pure, so it is tested without a cluster.

use shardfs_common::cap::Cap;
use shardfs_common::extent::{self, Extent, Sparse};
use shardfs_common::proto::{BlockMeta, Slot};

/// Largest piece: what a node reads to serve a range of it stays small, like a data shard.
pub const PIECE_MAX: usize = 1 << 20;

/// The bytes of one slot that a piece carries: (offset in the slot, length, offset in the
/// piece).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub idx: u64,
    pub ranges: Vec<(u32, u32, u32)>,
}

/// One piece to store: its bytes and which slot bytes they are.
#[derive(Debug, Default)]
pub struct PieceJob {
    pub data: Vec<u8>,
    pub parts: Vec<Part>,
}

/// Pack the buffers of `slots` (in the order given) into pieces of at most `max` bytes; a
/// buffer that does not fit in the current piece continues in the next one.
pub fn pack<'a>(slots: impl IntoIterator<Item = (u64, &'a Sparse)>, max: usize) -> Vec<PieceJob> {
    let mut out: Vec<PieceJob> = Vec::new();
    let mut cur = PieceJob::default();
    for (idx, sparse) in slots {
        for (off, bytes) in sparse.ranges() {
            let mut done = 0usize;
            while done < bytes.len() {
                if cur.data.len() >= max {
                    out.push(std::mem::take(&mut cur));
                }
                let n = (max - cur.data.len()).min(bytes.len() - done);
                let at = cur.data.len() as u32;
                cur.data.extend_from_slice(&bytes[done..done + n]);
                let range = (off + done as u32, n as u32, at);
                match cur.parts.last_mut() {
                    Some(p) if p.idx == idx => p.ranges.push(range),
                    _ => cur.parts.push(Part {
                        idx,
                        ranges: vec![range],
                    }),
                }
                done += n;
            }
        }
    }
    if !cur.data.is_empty() {
        out.push(cur);
    }
    out
}

/// `base` (the slot as stored or uploaded so far; None: nothing yet) with `part` of the
/// stored piece `meta` laid over it.
pub fn lay(base: Option<Slot>, idx: u64, part: &Part, meta: &BlockMeta, cap: Cap) -> Slot {
    let mut s = base.unwrap_or(Slot {
        index: idx,
        used: 0,
        block: None,
        cap: Cap::default(),
        extents: Vec::new(),
        pieces: Vec::new(),
    });
    let new: Vec<Extent> = part
        .ranges
        .iter()
        .map(|&(off, len, piece_off)| Extent {
            off,
            len,
            piece: meta.id,
            piece_off,
        })
        .collect();
    s.extents = extent::overlay(&s.extents, &new);
    if s.piece(&meta.id).is_none() {
        s.pieces.push((meta.clone(), cap));
    }
    keep_named(&mut s);
    s
}

/// Drop the pieces of `s` that no extent names any more (linear: a slot of many small
/// writes names hundreds).
fn keep_named(s: &mut Slot) {
    let named: shardfs_common::IdSet = extent::pieces(&s.extents).into_iter().collect();
    s.pieces.retain(|(m, _)| named.contains(&m.id));
}

/// `s` cut to its first `keep` bytes (a truncate across it).
pub fn cut_slot(s: &mut Slot, keep: u64) {
    s.used = s.used.min(keep);
    s.extents = extent::cut(&s.extents, keep.min(u32::MAX as u64) as u32);
    keep_named(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardfs_common::ec::EcParams;
    use shardfs_common::BlockId;

    fn piece(data: &[u8]) -> BlockMeta {
        BlockMeta {
            id: BlockId::of_coded(1, 2, data),
            ec: EcParams::DEFAULT.replicated(),
            len: data.len() as u64,
            shard_size: data.len() as u32,
            shards: Vec::new(),
        }
    }

    /// Bytes `0..n` of slot `s`, given the base block's bytes and every piece's bytes.
    fn read(s: &Slot, base: &[u8], pieces: &[(BlockId, Vec<u8>)], n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let avail = (s.used as usize).min(base.len());
        out[..avail.min(n)].copy_from_slice(&base[..avail.min(n)]);
        for e in &s.extents {
            let p = &pieces.iter().find(|(id, _)| *id == e.piece).unwrap().1;
            let (o, l, po) = (e.off as usize, e.len as usize, e.piece_off as usize);
            out[o..o + l].copy_from_slice(&p[po..po + l]);
        }
        out
    }

    #[test]
    fn packed_writes_read_back_over_the_base() {
        let n = 64 * 1024;
        let base: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut model = base.clone();
        let mut slot = Slot::whole(0, n as u64, piece(&base), Cap::default());
        let mut pieces = Vec::new();
        let mut seed = 7u64;
        for round in 0..20 {
            let mut sp = Sparse::default();
            for _ in 0..30 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let off = (seed >> 33) as usize % (n - 600);
                let len = 1 + (seed >> 20) as usize % 500;
                let v = vec![round as u8 ^ (seed as u8); len];
                sp.write(off as u32, &v);
                model[off..off + len].copy_from_slice(&v);
            }
            // Small pieces, so one slot's buffer spans several.
            for job in pack([(0, &sp)], 1000) {
                let meta = piece(&job.data);
                pieces.push((meta.id, job.data.clone()));
                for p in &job.parts {
                    slot = lay(Some(slot), 0, p, &meta, Cap::default());
                }
            }
            assert_eq!(read(&slot, &base, &pieces, n), model, "round {round}");
            assert!(extent::check(&slot.extents, n as u64).is_ok());
            for (m, _) in &slot.pieces {
                assert!(
                    slot.extents.iter().any(|e| e.piece == m.id),
                    "only named pieces"
                );
            }
        }
        cut_slot(&mut slot, 1000);
        model.truncate(1000);
        model.resize(n, 0);
        slot.used = slot.used.min(1000);
        assert_eq!(read(&slot, &base, &pieces, n), model);
    }

    #[test]
    fn pieces_are_bounded_and_carry_every_byte() {
        let mut a = Sparse::default();
        a.write(0, &[1; 700]);
        a.write(1000, &[2; 900]);
        let mut b = Sparse::default();
        b.write(5, &[3; 10]);
        let jobs = pack([(3, &a), (9, &b)], 1024);
        assert!(jobs.iter().all(|j| j.data.len() <= 1024));
        let total: usize = jobs.iter().map(|j| j.data.len()).sum();
        assert_eq!(total, 700 + 900 + 10);
        let parts: Vec<(u64, usize)> = jobs
            .iter()
            .flat_map(|j| j.parts.iter().map(|p| (p.idx, p.ranges.len())))
            .collect();
        assert_eq!(parts, vec![(3, 2), (3, 1), (9, 1)]);
    }
}
