//! Reed–Solomon erasure coding of one block into k data + m parity shards.
//!
//! A block of `len` bytes is split into k data shards of `shard_size = ceil(len / k)` bytes (the
//! last one zero-padded) and m parity shards of the same size. Any k of the k+m shards rebuild
//! the block.

use crate::error::{Error, Result};
use reed_solomon_erasure::galois_8::ReedSolomon;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The erasure code of a block: k data shards and m parity shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EcParams {
    pub k: u8,
    pub m: u8,
}

/// Most shards a storage policy may spread a block over.
pub const POLICY_MAX_SHARDS: usize = 32;

impl EcParams {
    pub const DEFAULT: EcParams = EcParams { k: 4, m: 2 };
    /// The code of an *inline piece*: small writes kept in the master's metadata (one copy,
    /// as durable as the namespace), not on storage nodes. Never a storage code: nothing is
    /// encoded with it (see `BlockMeta::is_inline`).
    pub const INLINE: EcParams = EcParams { k: 1, m: 0 };

    pub fn total(&self) -> usize {
        self.k as usize + self.m as usize
    }

    /// Size of each shard for a block of `len` bytes (at least 1, so empty blocks still encode).
    pub fn shard_size(&self, len: usize) -> usize {
        len.div_ceil(self.k as usize).max(1)
    }

    /// The code of pieces of small writes beside this one: m + 1 full copies (one data shard,
    /// m parity shards, which for k = 1 are copies of it), so they survive the same m failures.
    pub fn replicated(&self) -> EcParams {
        EcParams { k: 1, m: self.m }
    }

    /// The code as a storage policy reads: `ec:K+M`, or `replica:N` for N full copies.
    pub fn policy(&self) -> String {
        match self.k {
            1 => format!("replica:{}", self.m as usize + 1),
            _ => format!("ec:{}+{}", self.k, self.m),
        }
    }

    /// A storage policy: `ec:K+M` (k data and m parity shards on k + m distinct nodes) or
    /// `replica:N` (N full copies on N distinct nodes, N >= 2), at most [`POLICY_MAX_SHARDS`]
    /// shards in all.
    pub fn parse_policy(s: &str) -> Result<EcParams> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "storage policy {s:?} {why}: use ec:K+M (e.g. ec:6+3) or replica:N (e.g. replica:3)"
            ))
        };
        let p = if let Some(code) = s.strip_prefix("ec:") {
            let p: EcParams = code.parse().map_err(|_| bad("is not a code"))?;
            if p.k < 2 {
                return Err(bad("has one data shard; say replica:N for copies"));
            }
            p
        } else if let Some(n) = s.strip_prefix("replica:") {
            let n: u8 = n.trim().parse().map_err(|_| bad("has no copy count"))?;
            if n < 2 {
                return Err(bad("keeps fewer than 2 copies"));
            }
            EcParams { k: 1, m: n - 1 }
        } else {
            return Err(bad("is not understood"));
        };
        if p.total() > POLICY_MAX_SHARDS {
            return Err(bad(&format!("has more than {POLICY_MAX_SHARDS} shards")));
        }
        Ok(p)
    }

    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.m == 0 || self.total() > 255 {
            return Err(Error::Config(format!(
                "erasure code {self} is not usable: need k >= 1, m >= 1 and k + m <= 255"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for EcParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

impl FromStr for EcParams {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "erasure code {s:?} is not of the form K+M, e.g. 4+2"
            ))
        };
        let (k, m) = s.split_once('+').ok_or_else(bad)?;
        let p = EcParams {
            k: k.trim().parse().map_err(|_| bad())?,
            m: m.trim().parse().map_err(|_| bad())?,
        };
        p.validate()?;
        Ok(p)
    }
}

/// An encoder/decoder for one code; cheap to share (`Arc`) across tasks.
pub struct Codec {
    params: EcParams,
    rs: ReedSolomon,
}

impl Codec {
    pub fn new(params: EcParams) -> Result<Self> {
        params.validate()?;
        let rs = ReedSolomon::new(params.k as usize, params.m as usize)
            .map_err(|e| Error::Config(format!("erasure code {params}: {e:?}")))?;
        Ok(Codec { params, rs })
    }

    pub fn params(&self) -> EcParams {
        self.params
    }

    /// Split and encode a block into k + m shards of equal size.
    pub fn encode(&self, block: &[u8]) -> Result<Vec<Vec<u8>>> {
        let k = self.params.k as usize;
        let size = self.params.shard_size(block.len());
        let mut shards: Vec<Vec<u8>> = Vec::with_capacity(self.params.total());
        for i in 0..k {
            let start = (i * size).min(block.len());
            let end = ((i + 1) * size).min(block.len());
            let mut s = Vec::with_capacity(size);
            s.extend_from_slice(&block[start..end]);
            s.resize(size, 0);
            shards.push(s);
        }
        if k == 1 {
            // One data shard: every parity shard is a copy of it (all rows of the code are 1).
            for _ in 0..self.params.m {
                shards.push(shards[0].clone());
            }
            return Ok(shards);
        }
        for _ in 0..self.params.m {
            shards.push(vec![0u8; size]);
        }
        self.rs
            .encode(&mut shards)
            .map_err(|e| Error::Corrupt(format!("erasure encode failed: {e:?}")))?;
        Ok(shards)
    }

    /// Rebuild a block of `len` bytes from any k present shards (index = shard number). Missing
    /// data shards are filled in, in place.
    pub fn decode(&self, shards: &mut [Option<Vec<u8>>], len: usize) -> Result<Vec<u8>> {
        let k = self.params.k as usize;
        self.check_count(shards)?;
        let present = shards.iter().filter(|s| s.is_some()).count();
        if present < k {
            return Err(Error::Unavailable(format!(
                "only {present} of the {k} shards needed are available"
            )));
        }
        let size = self.params.shard_size(len);
        if shards.iter().flatten().any(|s| s.len() != size) {
            return Err(Error::Corrupt("shards of unequal size".into()));
        }
        if shards[..k].iter().any(|s| s.is_none()) {
            self.rs
                .reconstruct_data(shards)
                .map_err(|e| Error::Corrupt(format!("erasure decode failed: {e:?}")))?;
        }
        let mut out = Vec::with_capacity(size * k);
        for s in &shards[..k] {
            out.extend_from_slice(s.as_ref().expect("data shard present after reconstruction"));
        }
        out.truncate(len);
        Ok(out)
    }

    /// Fill in every missing shard (data and parity) from any k present ones, all of `size`
    /// bytes.
    pub fn reconstruct(&self, shards: &mut [Option<Vec<u8>>]) -> Result<()> {
        self.check_count(shards)?;
        self.rs
            .reconstruct(shards)
            .map_err(|e| Error::Corrupt(format!("erasure reconstruct failed: {e:?}")))
    }

    fn check_count(&self, shards: &[Option<Vec<u8>>]) -> Result<()> {
        if shards.len() != self.params.total() {
            return Err(Error::Corrupt(format!(
                "expected {} shards, got {}",
                self.params.total(),
                shards.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_shards_rebuild_the_block() {
        let codec = Codec::new(EcParams { k: 4, m: 2 }).unwrap();
        let block: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 251) as u8).collect();
        let shards = codec.encode(&block).unwrap();
        assert_eq!(shards.len(), 6);
        for a in 0..6 {
            for b in a + 1..6 {
                let mut v: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
                v[a] = None;
                v[b] = None;
                assert_eq!(
                    codec.decode(&mut v, block.len()).unwrap(),
                    block,
                    "lost {a},{b}"
                );
            }
        }
        let mut v: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
        v[0] = None;
        v[1] = None;
        v[2] = None;
        assert!(codec.decode(&mut v, block.len()).is_err());
        // Rebuilding lost shards (a data and a parity one) gives them back exactly.
        let mut v: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
        v[1] = None;
        v[5] = None;
        codec.reconstruct(&mut v).unwrap();
        assert_eq!(v[1].as_ref(), Some(&shards[1]));
        assert_eq!(v[5].as_ref(), Some(&shards[5]));
    }

    #[test]
    fn one_data_shard_is_replication() {
        let p = EcParams::DEFAULT.replicated();
        assert_eq!((p.k, p.m), (1, 2));
        let c = Codec::new(p).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let shards = c.encode(&data).unwrap();
        assert!(shards.iter().all(|s| s == &data), "every shard is a copy");
        // The code's own parity agrees with the copies: the Reed–Solomon rebuild of a lost
        // copy from another is the same bytes.
        for keep in 0..3 {
            let mut v: Vec<Option<Vec<u8>>> = vec![None, None, None];
            v[keep] = Some(data.clone());
            c.reconstruct(&mut v).unwrap();
            assert!(v.iter().all(|s| s.as_deref() == Some(&data[..])));
        }
    }

    #[test]
    fn empty_and_tiny_blocks() {
        let codec = Codec::new(EcParams::DEFAULT).unwrap();
        for len in [0usize, 1, 3, 4, 5] {
            let block = vec![7u8; len];
            let shards = codec.encode(&block).unwrap();
            let mut v: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
            assert_eq!(codec.decode(&mut v, len).unwrap(), block);
        }
    }

    #[test]
    fn parse_params() {
        assert_eq!("4+2".parse::<EcParams>().unwrap(), EcParams { k: 4, m: 2 });
        assert!("4".parse::<EcParams>().is_err());
        assert!("0+2".parse::<EcParams>().is_err());
        assert!("200+100".parse::<EcParams>().is_err());
    }

    #[test]
    fn policies_parse_and_print_back() {
        for (text, k, m) in [("ec:6+3", 6, 3), ("replica:3", 1, 2), ("ec:4+2", 4, 2)] {
            let p = EcParams::parse_policy(text).unwrap();
            assert_eq!((p.k, p.m), (k, m), "{text}");
            assert_eq!(p.policy(), text);
        }
        for bad in [
            "",
            "6+3",
            "ec:",
            "ec:1+2",
            "ec:6+0",
            "replica:1",
            "replica:x",
            "ec:30+5",
            "raid:5",
        ] {
            assert!(EcParams::parse_policy(bad).is_err(), "{bad:?} refused");
        }
    }
}
