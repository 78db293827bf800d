//! Identifiers: inode numbers, node ids and content-addressed block ids.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Inode number. `1` is the root directory.
pub type Ino = u64;

/// A storage node's identity, chosen by the node on first start and kept in its data directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        u64::from_str_radix(s.trim(), 16)
            .map(NodeId)
            .map_err(|_| crate::Error::invalid(format!("{s:?} is not a node id (16 hex digits)")))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node:{self}")
    }
}

/// A block's id is the blake3 hash of its content, so equal blocks share one id (the base for
/// dedup and version history) and a cached block can never be stale. A block stored with
/// another code than the cluster's (a piece of small writes as full copies, a directory's
/// storage policy) is hashed in a domain of that code ([`BlockId::of_coded`]), so blocks of the
/// same bytes under two codes never share an id: shard `i` of the two are different bytes, and
/// one id must name one set of shard files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockId(pub [u8; 32]);

/// A set of block ids with a fast keyed hash (a slot of many small writes names hundreds of
/// pieces, and every commit of it looks each up).
pub type IdSet = foldhash::HashSet<BlockId>;

/// A map keyed by block id, hashed as [`IdSet`].
pub type IdMap<V> = foldhash::HashMap<BlockId, V>;

impl BlockId {
    /// The id of a block with this content.
    pub fn of(data: &[u8]) -> Self {
        BlockId(*blake3::hash(data).as_bytes())
    }

    /// The id of a block with this content stored with code `k`+`m`, when that is not the
    /// cluster's own code (whose blocks have the plain hash, [`BlockId::of`]).
    pub fn of_coded(k: u8, m: u8, data: &[u8]) -> Self {
        let context = format!("shardfs 2026-12-01 block coded {k}+{m}");
        let mut h = blake3::Hasher::new_derive_key(&context);
        h.update(data);
        BlockId(*h.finalize().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(BlockId(v.try_into().ok()?))
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block:{}", &self.to_hex()[..16])
    }
}

/// blake3 of a shard's bytes, as recorded by the master and checked on every read.
pub fn shard_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_id_hex_round_trip() {
        let id = BlockId::of(b"hello");
        assert_eq!(BlockId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(BlockId::from_hex("zz"), None);
        assert_ne!(BlockId::of(b"hello"), BlockId::of(b"hellp"));
        assert_ne!(BlockId::of(b"hello"), BlockId::of_coded(1, 2, b"hello"));
        assert_ne!(
            BlockId::of_coded(6, 3, b"hello"),
            BlockId::of_coded(1, 2, b"hello")
        );
    }
}
