//! Encryption at rest: the cluster's data keys, block ids that reveal nothing without them,
//! and the cipher of block content.
//!
//! A cluster made with encryption has a key ring: data keys by epoch (a u32), one of them
//! current. A block's content P is stored as C = P xor ChaCha20(K, nonce 0), where K is derived
//! from the epoch's key and the block's id, and the id is `epoch (4 bytes, big-endian) ||` the
//! first 28 bytes of a BLAKE3 keyed hash of the code and P under a key derived from the same
//! epoch key. So:
//! - equal content under one epoch has one id and one ciphertext: dedup works inside a
//!   cluster, and a node or a disk learns only which stored blocks are equal;
//! - without the key, an id says nothing about the content (no confirming a guess);
//! - every key encrypts exactly one content, so the fixed nonce is never reused;
//! - a byte range decrypts on its own (the stream seeks), so range reads stay range reads;
//! - integrity is not the cipher's: what a node stores is checked against the shard hashes
//!   and per-range sums the master and the node hold, and a whole block against its id.
//!
//! A cluster without a key ring (made before encryption, or with it turned off) has plain
//! ids and stores content as it is.

use crate::ec::EcParams;
use crate::proto::BlockMeta;
use crate::{BlockId, Error, Result};
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20poly1305::aead::{Aead, KeyInit};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// The cluster's data keys by epoch, and the epoch new data is written under.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    pub current: u32,
    pub keys: BTreeMap<u32, [u8; 32]>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("epochs", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// A new ring with one random key, epoch 1.
    pub fn new() -> KeyRing {
        KeyRing {
            current: 1,
            keys: BTreeMap::from([(1, crate::pki::random::<32>())]),
        }
    }

    /// A new current key (the next epoch); the old ones stay for what they wrote.
    pub fn rotate(&mut self) -> u32 {
        let next = self.keys.keys().max().copied().unwrap_or(0) + 1;
        self.keys.insert(next, crate::pki::random::<32>());
        self.current = next;
        next
    }

    fn key(&self, epoch: u32) -> Result<&[u8; 32]> {
        self.keys.get(&epoch).ok_or_else(|| {
            Error::fs(
                crate::ErrorCode::Unavailable,
                format!("no data key of epoch {epoch} (dropped, or not learnt yet)"),
            )
        })
    }
}

impl Default for KeyRing {
    fn default() -> Self {
        Self::new()
    }
}

/// The epoch a block id of an encrypted cluster was made under.
pub fn epoch_of(id: &BlockId) -> u32 {
    u32::from_be_bytes(id.0[..4].try_into().expect("4 bytes"))
}

fn id_key(epoch_key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("shardfs 2026-12-02 block id", epoch_key)
}

fn stream_key(epoch_key: &[u8; 32], id: &BlockId) -> [u8; 32] {
    let mut material = [0u8; 64];
    material[..32].copy_from_slice(epoch_key);
    material[32..].copy_from_slice(&id.0);
    blake3::derive_key("shardfs 2026-12-02 block stream", &material)
}

/// The keys a process holds (none: a cluster without encryption). Cheap to clone; every
/// clone sees updates.
#[derive(Clone, Default)]
pub struct DataKeys(Option<Arc<RwLock<KeyRing>>>);

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(r) => write!(f, "{:?}", *r.read().expect("key ring lock")),
            None => f.write_str("no encryption"),
        }
    }
}

impl DataKeys {
    /// Keys of a cluster that stores content as it is.
    pub fn plain() -> DataKeys {
        DataKeys(None)
    }

    pub fn new(ring: Option<KeyRing>) -> DataKeys {
        DataKeys(ring.map(|r| Arc::new(RwLock::new(r))))
    }

    pub fn encrypted(&self) -> bool {
        self.0.is_some()
    }

    /// Take in the ring as the master now has it (a rotation, a dropped epoch).
    pub fn update(&self, ring: KeyRing) {
        if let Some(r) = &self.0 {
            *r.write().expect("key ring lock") = ring;
        }
    }

    pub fn current_epoch(&self) -> Option<u32> {
        self.0
            .as_ref()
            .map(|r| r.read().expect("key ring lock").current)
    }

    /// Whether blocks of `epoch` can be read here.
    pub fn knows(&self, epoch: u32) -> bool {
        self.0
            .as_ref()
            .is_none_or(|r| r.read().expect("key ring lock").keys.contains_key(&epoch))
    }

    /// The id of plaintext `data` stored with code `ec` (the cluster's code: `cluster`),
    /// under the current epoch.
    pub fn content_id(&self, ec: EcParams, cluster: EcParams, data: &[u8]) -> BlockId {
        let Some(ring) = &self.0 else {
            return BlockMeta::content_id(ec, cluster, data);
        };
        let ring = ring.read().expect("key ring lock");
        let epoch = ring.current;
        let key = ring.key(epoch).expect("the current key is in the ring");
        Self::keyed_id(epoch, key, ec, data)
    }

    fn keyed_id(epoch: u32, key: &[u8; 32], ec: EcParams, data: &[u8]) -> BlockId {
        let mut h = blake3::Hasher::new_keyed(&id_key(key));
        h.update(&[ec.k, ec.m]);
        h.update(data);
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&epoch.to_be_bytes());
        id[4..].copy_from_slice(&h.finalize().as_bytes()[..28]);
        BlockId(id)
    }

    /// Whether plaintext `data` is the content of block `meta`.
    pub fn holds(&self, meta: &BlockMeta, data: &[u8], cluster: EcParams) -> bool {
        let Some(ring) = &self.0 else {
            return meta.holds(data, cluster);
        };
        let ring = ring.read().expect("key ring lock");
        let epoch = epoch_of(&meta.id);
        match ring.key(epoch) {
            Ok(key) => Self::keyed_id(epoch, key, meta.ec, data) == meta.id,
            Err(_) => false,
        }
    }

    /// Decrypt `buf`, the whole stored content of block `meta`, in place; whether the result
    /// is the content the block's id names. Fails if the block's key epoch is unknown here.
    pub fn open_checked(
        &self,
        meta: &BlockMeta,
        buf: &mut [u8],
        cluster: EcParams,
    ) -> Result<bool> {
        self.apply(&meta.id, 0, buf)?;
        Ok(self.holds(meta, buf, cluster))
    }

    /// Encrypt or decrypt (the same operation) `buf`, the bytes of block `id` from `offset`
    /// on. Does nothing in a cluster without encryption.
    pub fn apply(&self, id: &BlockId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some(ring) = &self.0 else {
            return Ok(());
        };
        let key = {
            let ring = ring.read().expect("key ring lock");
            stream_key(ring.key(epoch_of(id))?, id)
        };
        let mut c = chacha20::ChaCha20::new(&key.into(), &[0u8; 12].into());
        c.try_seek(offset)
            .map_err(|_| Error::invalid(format!("offset {offset} is past what a key covers")))?;
        c.try_apply_keystream(buf)
            .map_err(|_| Error::invalid("a block is past what a key covers"))?;
        Ok(())
    }
}

/// Seal `plain` under `key` (ChaCha20-Poly1305, a random nonce first): for keys at rest and
/// records the master keeps.
pub fn seal(key: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    let nonce = crate::pki::random::<12>();
    let c = chacha20poly1305::ChaCha20Poly1305::new(key.into());
    let mut out = nonce.to_vec();
    out.extend(
        c.encrypt(&nonce.into(), plain)
            .expect("ChaCha20-Poly1305 encrypts any length a record has"),
    );
    out
}

/// Open what [`seal`] made; fails if it was made under another key or changed.
pub fn open(key: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < 12 + 16 {
        return Err(Error::Corrupt("a sealed record is too short".into()));
    }
    let (nonce, body) = sealed.split_at(12);
    let c = chacha20poly1305::ChaCha20Poly1305::new(key.into());
    c.decrypt(nonce.into(), body)
        .map_err(|_| Error::Corrupt("a sealed record does not open with this key".into()))
}

/// The key a ring's epoch gives for records of `purpose` the master keeps (merge documents).
pub fn record_key(ring: &KeyRing, epoch: u32, purpose: &str) -> Result<[u8; 32]> {
    let context = format!("shardfs 2026-12-02 records {purpose}");
    Ok(blake3::derive_key(&context, ring.key(epoch)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream cipher is RFC 8439's ChaCha20 whatever backend runs it (blocks stored
    /// under one version of the crate decrypt under the next): its test vector, 2.4.2.
    #[test]
    fn the_stream_cipher_is_rfc_8439_chacha20() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let nonce = [0, 0, 0, 0, 0, 0, 0, 0x4a, 0, 0, 0, 0];
        let mut buf = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
tip for the future, sunscreen would be it."
            .to_vec();
        let mut c = chacha20::ChaCha20::new(&key.into(), &nonce.into());
        c.try_seek(64u64).unwrap();
        c.try_apply_keystream(&mut buf).unwrap();
        assert_eq!(
            hex::encode(&buf[..32]),
            "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
        );
        assert_eq!(hex::encode(&buf[buf.len() - 4..]), "5e42874d");
    }

    #[test]
    fn content_ids_hide_content_and_ciphertext_round_trips() {
        let keys = DataKeys::new(Some(KeyRing::new()));
        let ec = EcParams::DEFAULT;
        let data = b"the same content".to_vec();
        let id = keys.content_id(ec, ec, &data);
        assert_eq!(epoch_of(&id), 1);
        assert_ne!(
            id,
            BlockMeta::content_id(ec, ec, &data),
            "not the plain hash"
        );
        assert_eq!(
            id,
            keys.content_id(ec, ec, &data),
            "deterministic: dedup works"
        );
        let other = DataKeys::new(Some(KeyRing::new()));
        assert_ne!(
            id,
            other.content_id(ec, ec, &data),
            "another cluster, another id"
        );
        let mut c = data.clone();
        keys.apply(&id, 0, &mut c).unwrap();
        assert_ne!(c, data);
        // Any range decrypts on its own.
        let mut tail = c[4..].to_vec();
        keys.apply(&id, 4, &mut tail).unwrap();
        assert_eq!(tail, data[4..]);
        keys.apply(&id, 0, &mut c).unwrap();
        assert_eq!(c, data);
    }

    #[test]
    fn rotation_keeps_old_epochs_readable_until_dropped() {
        let mut ring = KeyRing::new();
        let keys = DataKeys::new(Some(ring.clone()));
        let ec = EcParams::DEFAULT;
        let old = keys.content_id(ec, ec, b"x");
        assert_eq!(ring.rotate(), 2);
        keys.update(ring.clone());
        let new = keys.content_id(ec, ec, b"x");
        assert_eq!((epoch_of(&old), epoch_of(&new)), (1, 2));
        assert_ne!(old, new);
        let mut buf = b"x".to_vec();
        assert!(keys.apply(&old, 0, &mut buf).is_ok());
        ring.keys.remove(&1);
        keys.update(ring);
        assert!(!keys.knows(1));
        assert!(keys.apply(&old, 0, &mut buf).is_err());
    }

    #[test]
    fn sealed_records_open_only_with_their_key() {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let s = seal(&k1, b"merge document");
        assert_eq!(open(&k1, &s).unwrap(), b"merge document");
        assert!(open(&k2, &s).is_err());
        let mut bad = s.clone();
        bad[20] ^= 1;
        assert!(open(&k1, &bad).is_err());
        assert!(open(&k1, &s[..10]).is_err());
    }

    #[test]
    fn a_plain_cluster_keeps_plain_ids_and_content() {
        let keys = DataKeys::plain();
        let ec = EcParams::DEFAULT;
        assert_eq!(keys.content_id(ec, ec, b"x"), BlockId::of(b"x"));
        let mut buf = b"x".to_vec();
        keys.apply(&BlockId::of(b"x"), 0, &mut buf).unwrap();
        assert_eq!(buf, b"x");
    }
}
