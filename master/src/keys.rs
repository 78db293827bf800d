//! The cluster's data keys at rest: the key ring (`data.keys` in the data directory) sealed with
//! a key-encryption key, which is the 64 hex digits of `SHARDFS_MASTER_KEK` if set, else the
//! file `master.kek` beside it (made, 0600, with the cluster). A new cluster gets a ring (one
//! key, epoch 1) unless made with encryption off; a cluster made before encryption has none and
//! stays as it is. See `shardfs_common::crypt` for what the keys do.

use crate::MasterError;
use shardfs_common::crypt::{self, KeyRing};
use std::path::Path;

const RING: &str = "data.keys";
const KEK: &str = "master.kek";
const KEK_ENV: &str = "SHARDFS_MASTER_KEK";

fn kek(dir: &Path, create: bool) -> Result<[u8; 32], MasterError> {
    let bad = |why: String| MasterError::Config(why);
    if let Ok(hex_key) = std::env::var(KEK_ENV) {
        let v = hex::decode(hex_key.trim()).map_err(|_| bad(format!("{KEK_ENV} is not hex")))?;
        return v
            .try_into()
            .map_err(|_| bad(format!("{KEK_ENV} must be 64 hex digits (32 bytes)")));
    }
    let path = dir.join(KEK);
    match std::fs::read(&path) {
        Ok(v) => v
            .try_into()
            .map_err(|_| bad(format!("{} is not a 32-byte key", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let k = shardfs_common::pki::random::<32>();
            shardfs_common::pki::write_private(&path, &k)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            Ok(k)
        }
        Err(e) => Err(bad(format!(
            "the data keys need their key-encryption key: {} ({e}), or {KEK_ENV}",
            path.display()
        ))),
    }
}

/// The ring of the cluster in `dir` (None: no encryption). `created`: the cluster is new, and
/// gets a ring if `encrypt`.
pub fn open(dir: &Path, created: bool, encrypt: bool) -> Result<Option<KeyRing>, MasterError> {
    let path = dir.join(RING);
    match std::fs::read(&path) {
        Ok(sealed) => {
            let plain = crypt::open(&kek(dir, false)?, &sealed).map_err(|_| {
                MasterError::Config(format!(
                    "{} does not open with this key-encryption key",
                    path.display()
                ))
            })?;
            let ring = postcard::from_bytes(&plain)
                .map_err(|e| MasterError::Corrupt(format!("{}: {e}", path.display())))?;
            Ok(Some(ring))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !(created && encrypt) {
                return Ok(None);
            }
            let ring = KeyRing::new();
            save(dir, &ring)?;
            Ok(Some(ring))
        }
        Err(e) => Err(MasterError::Config(format!("{}: {e}", path.display()))),
    }
}

/// Keep `ring` (sealed) as the cluster's, replacing the one before atomically.
pub fn save(dir: &Path, ring: &KeyRing) -> Result<(), MasterError> {
    let plain = postcard::to_stdvec(ring).expect("a key ring encodes");
    let sealed = crypt::seal(&kek(dir, true)?, &plain);
    let tmp = dir.join(format!("{RING}.tmp"));
    shardfs_common::pki::write_private(&tmp, &sealed)
        .and_then(|()| std::fs::rename(&tmp, dir.join(RING)).map_err(Into::into))
        .map_err(|e| MasterError::Config(format!("{}: {e}", dir.join(RING).display())))
}

impl crate::Master {
    /// `shardfs keys`: list, rotate, rekey, drop.
    pub(crate) fn on_keys(
        &self,
        action: shardfs_common::proto::KeyAction,
    ) -> Result<shardfs_common::proto::MasterResponse, MasterError> {
        use shardfs_common::proto::KeyAction;
        let mut marked = 0;
        let mut guard = self.keys.write().expect("keys lock");
        let Some(ring) = guard.as_mut() else {
            return Err(shardfs_common::Error::fs(
                shardfs_common::ErrorCode::NotSupported,
                "this cluster was made without encryption: it has no data keys",
            )
            .into());
        };
        match action {
            KeyAction::List => {}
            KeyAction::Rotate => {
                let mut next = ring.clone();
                let epoch = next.rotate();
                save(&self.data_dir, &next)?;
                *ring = next;
                self.meta.set_ring(Some(ring.clone()));
                tracing::info!(
                    epoch,
                    "data key rotated: new data is written under epoch {epoch}"
                );
            }
            KeyAction::Rekey => {
                marked = self.meta.mark_all_files()?;
                tracing::info!(
                    files = marked,
                    current = ring.current,
                    "rekey: every file marked for rewriting"
                );
            }
            KeyAction::Drop(epoch) => {
                if epoch == ring.current {
                    return Err(shardfs_common::Error::invalid(
                        "the current key cannot be dropped (rotate first)",
                    )
                    .into());
                }
                if !ring.keys.contains_key(&epoch) {
                    return Err(shardfs_common::Error::not_found(format!(
                        "no key of epoch {epoch}"
                    ))
                    .into());
                }
                let left = self.meta.blocks_of_epoch(epoch)?;
                if left > 0 {
                    return Err(shardfs_common::Error::fs(
                        shardfs_common::ErrorCode::Again,
                        format!(
                            "{left} stored blocks still use epoch {epoch} (rekey, and wait for it)"
                        ),
                    )
                    .into());
                }
                let mut next = ring.clone();
                next.keys.remove(&epoch);
                save(&self.data_dir, &next)?;
                *ring = next;
                self.meta.set_ring(Some(ring.clone()));
                tracing::info!(epoch, "data key dropped");
            }
        }
        let mut epochs = Vec::new();
        for e in ring.keys.keys() {
            epochs.push((*e, self.meta.blocks_of_epoch(*e)?));
        }
        Ok(shardfs_common::proto::MasterResponse::Keys {
            current: ring.current,
            epochs,
            marked,
        })
    }
}
