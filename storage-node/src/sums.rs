//! Chunk sums of a stored shard: the blake3 of every 64 KiB of its content, kept beside the
//! shard file (`<block>.<index>.sum`), so that a range read reads and verifies only the
//! chunks it returns instead of the whole shard.
//!
//! Layout: magic `SFSC`, format 1, three zero bytes, content length (u64 BE), the content's
//! blake3 (the one in the shard's header), chunk count (u32 BE), one blake3 per chunk, and the
//! blake3 of everything before it. A sums file that is missing, torn, of another content or
//! that disagrees with the bytes only costs a whole-shard read: the shard's own hash decides.

pub const CHUNK: usize = 64 << 10;
/// Shards smaller than this are verified whole (a few chunks at most).
pub const MIN_CONTENT: usize = 2 * CHUNK;
const MAGIC: &[u8; 4] = b"SFSC";
const VERSION: u8 = 1;
const FIXED: usize = 4 + 4 + 8 + 32 + 4;

/// The sums file for `content`, whose blake3 is `hash`.
pub fn encode(content: &[u8], hash: &[u8; 32]) -> Vec<u8> {
    let n = content.len().div_ceil(CHUNK);
    let mut out = Vec::with_capacity(FIXED + 32 * n + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, 0, 0, 0]);
    out.extend_from_slice(&(content.len() as u64).to_be_bytes());
    out.extend_from_slice(hash);
    out.extend_from_slice(&(n as u32).to_be_bytes());
    for c in content.chunks(CHUNK) {
        out.extend_from_slice(blake3::hash(c).as_bytes());
    }
    let own = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&own);
    out
}

/// Parsed chunk sums of one shard's content.
#[derive(Debug)]
pub struct Sums {
    pub len: usize,
    pub hash: [u8; 32],
    chunks: Vec<[u8; 32]>,
}

/// Parse a sums file; None if it is not a whole, self-consistent one.
pub fn parse(raw: &[u8]) -> Option<Sums> {
    if raw.len() < FIXED + 32 || &raw[..4] != MAGIC || raw[4] != VERSION {
        return None;
    }
    let (body, own) = raw.split_at(raw.len() - 32);
    if blake3::hash(body).as_bytes() != own {
        return None;
    }
    let len = usize::try_from(u64::from_be_bytes(raw[8..16].try_into().ok()?)).ok()?;
    let hash: [u8; 32] = raw[16..48].try_into().ok()?;
    let n = u32::from_be_bytes(raw[48..52].try_into().ok()?) as usize;
    if n != len.div_ceil(CHUNK) || body.len() != FIXED + 32 * n {
        return None;
    }
    let chunks = body[FIXED..]
        .chunks(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    Some(Sums { len, hash, chunks })
}

impl Sums {
    /// The whole chunks covering `[off, off + len)` of the content, as a byte range.
    pub fn span(&self, off: usize, len: usize) -> (usize, usize) {
        let a = off / CHUNK * CHUNK;
        let b = ((off + len).div_ceil(CHUNK) * CHUNK).min(self.len);
        (a, b)
    }

    /// Whether `bytes`, read at `start` (a chunk boundary, as [`Sums::span`] gives), match.
    pub fn verify(&self, start: usize, bytes: &[u8]) -> bool {
        if !start.is_multiple_of(CHUNK) {
            return false;
        }
        bytes
            .chunks(CHUNK)
            .enumerate()
            .all(|(i, c)| self.chunks.get(start / CHUNK + i) == Some(blake3::hash(c).as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_is_found_in_its_chunk_only() {
        let content: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let hash = *blake3::hash(&content).as_bytes();
        let s = parse(&encode(&content, &hash)).unwrap();
        assert_eq!((s.len, s.hash), (content.len(), hash));
        let (a, b) = s.span(70_000, 4096);
        assert_eq!((a, b), (CHUNK, 2 * CHUNK));
        assert!(s.verify(a, &content[a..b]));
        let (a, b) = s.span(290_000, 10_000);
        assert_eq!(b, content.len(), "the last chunk is short");
        assert!(s.verify(a, &content[a..b]));
        let mut bad = content.clone();
        bad[100_000] ^= 1;
        assert!(!s.verify(CHUNK, &bad[CHUNK..2 * CHUNK]));
        assert!(s.verify(0, &bad[..CHUNK]), "other chunks still check");
        assert!(
            !s.verify(1, &content[1..CHUNK + 1]),
            "not on a chunk boundary"
        );
    }

    #[test]
    fn torn_or_foreign_sums_are_refused() {
        let content = vec![7u8; 200_000];
        let raw = encode(&content, blake3::hash(&content).as_bytes());
        assert!(parse(&raw[..raw.len() - 1]).is_none());
        let mut flipped = raw.clone();
        flipped[60] ^= 1;
        assert!(parse(&flipped).is_none());
        assert!(parse(b"SFSC").is_none());
    }
}
