//! Capabilities: what lets a client read or store the shards of one block.
//!
//! Storage nodes take shard reads and writes from clients only for blocks the master mapped or
//! placed for them. The master holds a secret *capability key* (`cap.key` in its data dir) and
//! hands it to each node when the node registers, over mutual TLS. With every block id it
//! gives a client — a file's block map when it opens the file, a placement for a new block —
//! it adds a [`Cap`]: a keyed BLAKE3 MAC over the rights, the holder's credential id and the
//! block id. A node recomputes it for the credential on the connection; a capability is of no
//! use to another credential, for another block, or for a right it does not carry. It lasts as
//! long as the key (see docs/SECURITY.md: rotation is not built).

use crate::BlockId;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The right to fetch the block's shards.
pub const READ: u8 = 1;
/// The right to store the block's shards.
pub const WRITE: u8 = 2;

/// A capability over one block for one credential (see the module docs). The zero value is
/// no capability at all: what nodes, the master and admins send, whom nodes trust by role.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cap {
    pub rights: u8,
    pub mac: [u8; 16],
}

impl std::fmt::Debug for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cap(rights {})", self.rights)
    }
}

/// The master's capability key, shared with the storage nodes.
#[derive(Clone)]
pub struct CapKey([u8; 32]);

impl CapKey {
    pub fn from_bytes(bytes: [u8; 32]) -> CapKey {
        CapKey(bytes)
    }

    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The key kept at `path`, made (0600) if there is none yet.
    pub fn open_or_create(path: &Path) -> crate::Result<CapKey> {
        match std::fs::read(path) {
            Ok(b) => <[u8; 32]>::try_from(&b[..]).map(CapKey).map_err(|_| {
                crate::Error::invalid(format!(
                    "{}: a capability key is 32 bytes, this file has {}",
                    path.display(),
                    b.len()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = CapKey(crate::pki::random());
                crate::pki::write_private(path, &key.0)?;
                Ok(key)
            }
            Err(e) => Err(crate::Error::Io(e)),
        }
    }

    fn mac(&self, rights: u8, holder: &str, block: &BlockId) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"shardfs capability v1\0");
        h.update(&[rights]);
        h.update(&(holder.len() as u64).to_le_bytes());
        h.update(holder.as_bytes());
        h.update(&block.0);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    /// A capability for credential `holder` over `block` with `rights`.
    pub fn grant(&self, rights: u8, holder: &str, block: &BlockId) -> Cap {
        Cap {
            rights,
            mac: self.mac(rights, holder, block),
        }
    }

    /// Whether `cap` lets credential `holder` use `right` on `block`.
    pub fn allows(&self, cap: &Cap, right: u8, holder: &str, block: &BlockId) -> bool {
        if cap.rights & right != right {
            return false;
        }
        let want = self.mac(cap.rights, holder, block);
        // Constant time: the comparison must not tell how many leading bytes were right.
        want.iter()
            .zip(cap.mac.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capability_is_good_only_for_its_holder_block_and_rights() {
        let key = CapKey::from_bytes([7; 32]);
        let (a, b) = (BlockId::of(b"a"), BlockId::of(b"b"));
        let read = key.grant(READ, "client-1", &a);
        assert!(key.allows(&read, READ, "client-1", &a));
        assert!(!key.allows(&read, WRITE, "client-1", &a));
        assert!(!key.allows(&read, READ, "client-2", &a));
        assert!(!key.allows(&read, READ, "client-1", &b));
        let both = key.grant(READ | WRITE, "client-1", &a);
        assert!(key.allows(&both, WRITE, "client-1", &a));
        assert!(key.allows(&both, READ, "client-1", &a));
        // Claiming more rights than granted breaks the MAC.
        let forged = Cap {
            rights: READ | WRITE,
            ..read
        };
        assert!(!key.allows(&forged, WRITE, "client-1", &a));
        assert!(!key.allows(&Cap::default(), READ, "client-1", &a));
        let other = CapKey::from_bytes([8; 32]);
        assert!(!other.allows(&read, READ, "client-1", &a));
    }

    #[test]
    fn a_key_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cap.key");
        let k1 = CapKey::open_or_create(&path).unwrap();
        let k2 = CapKey::open_or_create(&path).unwrap();
        assert_eq!(k1.bytes(), k2.bytes());
        std::fs::write(&path, b"short").unwrap();
        assert!(CapKey::open_or_create(&path).is_err());
    }
}
