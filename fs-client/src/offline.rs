//! Working without the master.
//!
//! When the master cannot be reached, the mount keeps serving what it knows: names, attributes
//! and block maps it saw recently answer lookups, stats and opens, and file content comes from
//! the block cache or straight from the storage nodes. Writes are kept: when a file is closed
//! (or fsynced) and its blocks cannot be placed, its whole content goes to an on-disk journal
//! (one entry per file: the base it was read at, and the new content), bounded by
//! `--journal-mib`; past that, the close fails with ENOSPC and says why.
//!
//! Once the master answers again (checked every second), every journal entry is replayed
//! through the normal commit: against its base, so a change made elsewhere meanwhile is merged
//! (text) or kept beside it as a conflicted copy (anything else). A mount that stopped with
//! entries left (a crash while offline) replays them when mounted again: the journal lives in
//! a directory per cluster that survives the mount.

use crate::core::{Core, ReadBase};
use serde::{Deserialize, Serialize};
use shardfs_common::proto::{Attr, MasterRequest, MasterResponse, Slot};
use shardfs_common::{Error, ErrorCode, Ino, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// One file's change made while the master was unreachable.
#[derive(Serialize, Deserialize)]
pub struct JournalEntry {
    pub ino: Ino,
    /// Where the file was (to recreate it if it was deleted meanwhile).
    pub parent: Ino,
    pub name: Vec<u8>,
    /// What the change started from: attributes (version, size) and block map.
    pub base: Attr,
    pub base_slots: Vec<Slot>,
    pub content: Vec<u8>,
}

/// What a journal entry starts with since slots have extents; entries without it were written
/// by a mount of protocol 7.
const ENTRY_MAGIC: &[u8; 4] = b"SFJ\x02";

/// A journal entry as it is written to disk.
pub fn encode_entry(e: &JournalEntry) -> Vec<u8> {
    let mut out = ENTRY_MAGIC.to_vec();
    out.extend(postcard::to_stdvec(e).expect("encoding an entry cannot fail"));
    out
}

/// A slot as protocol 7 wrote it: always a block, no extents.
#[derive(Serialize, Deserialize)]
struct SlotV7 {
    index: u64,
    used: u64,
    block: shardfs_common::proto::BlockMeta,
    cap: shardfs_common::cap::Cap,
}

/// A journal entry as protocol 7 wrote it (no format mark).
#[derive(Serialize, Deserialize)]
struct EntryV7 {
    ino: Ino,
    parent: Ino,
    name: Vec<u8>,
    base: Attr,
    base_slots: Vec<SlotV7>,
    content: Vec<u8>,
}

/// Decode a journal entry as replay reads it back from disk (also one written by a mount of
/// protocol 7, before slots had extents).
pub fn decode_entry(raw: &[u8]) -> Result<JournalEntry, postcard::Error> {
    if let Some(rest) = raw.strip_prefix(&ENTRY_MAGIC[..]) {
        return postcard::from_bytes::<JournalEntry>(rest);
    }
    let e = postcard::from_bytes::<EntryV7>(raw)?;
    Ok(JournalEntry {
        ino: e.ino,
        parent: e.parent,
        name: e.name,
        base: e.base,
        base_slots: e
            .base_slots
            .into_iter()
            .map(|s| Slot::whole(s.index, s.used, s.block, s.cap))
            .collect(),
        content: e.content,
    })
}

fn entry_path(dir: &Path, ino: Ino) -> PathBuf {
    dir.join(format!("{ino:016x}.entry"))
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "entry"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn dir_bytes(dir: &Path) -> u64 {
    entries(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// True for errors that mean "the master (or the cluster) cannot be reached".
pub(crate) fn unreachable(e: &Error) -> bool {
    matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Timeout)
}

impl Core {
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Relaxed)
    }

    pub(crate) fn went_offline(&self, why: &Error) {
        if !self.offline.swap(true, Ordering::Relaxed) {
            warn!("the master cannot be reached ({why}); working offline: cached files stay readable, changes go to the journal");
        }
    }

    /// Does the master answer within a second?
    pub(crate) async fn master_answers(&self) -> bool {
        self.master
            .call_within(MasterRequest::Cluster, Duration::from_secs(1))
            .await
            .is_ok()
    }

    /// The master did not answer a lookup, stat or open: serve it from what this mount
    /// knows, or give up with the original error.
    pub(crate) fn offline_attr(&self, ino: Ino, e: Error) -> Result<Attr> {
        if !unreachable(&e) {
            return Err(e);
        }
        match self.stale_attr(ino) {
            Some(a) => {
                self.went_offline(&e);
                Ok(a)
            }
            None => Err(e),
        }
    }

    pub(crate) fn offline_open(&self, ino: Ino, e: Error) -> Result<ReadBase> {
        if !unreachable(&e) {
            return Err(e);
        }
        match self.known_read(ino) {
            Some(b) => {
                self.went_offline(&e);
                Ok(b)
            }
            None => Err(e),
        }
    }

    /// Write the whole content of an open file to the journal (its blocks cannot be stored
    /// now). The content stays in memory too, so this mount keeps reading its own changes.
    pub(crate) async fn journal_file(&self, of: &Arc<crate::core::OpenFile>) -> Result<()> {
        let Some(dir) = self.cfg.journal_dir.clone() else {
            return Err(Error::Unavailable(
                "the master cannot be reached and this mount has no journal".into(),
            ));
        };
        let (base, base_slots, size, changes) = of.journal_view();
        let content = self.read_all(of.clone(), size).await?;
        let (parent, name) = self.name_of_ino(of.ino).unwrap_or((0, Vec::new()));
        let entry = JournalEntry {
            ino: of.ino,
            parent,
            name,
            base,
            base_slots,
            content,
        };
        let bytes = encode_entry(&entry);
        std::fs::create_dir_all(&dir)?;
        let path = entry_path(&dir, of.ino);
        let old = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if dir_bytes(&dir) - old + bytes.len() as u64 > self.cfg.journal_bytes {
            return Err(Error::fs(
                ErrorCode::NoSpace,
                format!(
                    "the master cannot be reached and the offline journal ({}) is full ({} MiB)",
                    dir.display(),
                    self.cfg.journal_bytes >> 20
                ),
            ));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        of.journaled(changes);
        info!(
            ino = of.ino,
            bytes = entry.content.len(),
            "offline: change kept in the journal"
        );
        Ok(())
    }

    /// Replay the journal while the master answers; called every second and at mount.
    pub fn start_replay(self: &Arc<Self>) {
        let Some(dir) = self.cfg.journal_dir.clone() else {
            return;
        };
        let core = Arc::downgrade(self);
        self.rt.spawn(async move {
            loop {
                {
                    let Some(c) = core.upgrade() else { return };
                    let pending = !entries(&dir).is_empty();
                    if (pending || c.is_offline()) && c.master_answers().await {
                        if c.offline.swap(false, Ordering::Relaxed) {
                            info!("the master answers again: back online");
                        }
                        for p in entries(&dir) {
                            if let Err(e) = c.replay(&p).await {
                                warn!(entry = %p.display(), "replaying an offline change failed (kept for the next try): {e}");
                                break;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    async fn replay(&self, path: &Path) -> Result<()> {
        let raw = std::fs::read(path)?;
        let e = match decode_entry(&raw) {
            Ok(e) => e,
            Err(err) => {
                warn!(entry = %path.display(), "unreadable journal entry set aside: {err}");
                let _ = std::fs::rename(path, path.with_extension("bad"));
                return Ok(());
            }
        };
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let exists = matches!(
            self.master
                .call(MasterRequest::GetAttr { ino: e.ino })
                .await,
            Ok(MasterResponse::Attr(_))
        );
        let outcome = if exists {
            self.replay_into(e.ino, e.base.clone(), e.base_slots.clone(), &e.content)
                .await?
        } else {
            // Deleted meanwhile: the change comes back as a file of its own.
            let copy = shardfs_common::proto::conflicted_name(
                &e.name,
                &crate::session::host_name(),
                shardfs_common::proto::Timespec::now().secs,
                1,
            );
            let attr = self
                .mknod(
                    e.parent,
                    &copy,
                    shardfs_common::proto::FileKind::File,
                    e.base.perm as u32,
                    e.base.uid,
                    e.base.gid,
                    0,
                )
                .await?;
            let mut base = attr.clone();
            base.size = 0;
            self.replay_into(attr.ino, base, Vec::new(), &e.content)
                .await?;
            format!(
                "recreated as {:?} (deleted elsewhere)",
                String::from_utf8_lossy(&copy)
            )
        };
        std::fs::remove_file(path)?;
        info!(ino = e.ino, name = %name, bytes = e.content.len(), "offline change replayed: {outcome}");
        self.report_replay(e.ino, &outcome).await;
        self.offline_replayed(e.ino).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardfs_common::proto::{BlockMeta, Timespec};

    #[test]
    fn an_entry_written_before_extents_still_replays() {
        let block = BlockMeta {
            id: shardfs_common::BlockId::of(b"x"),
            ec: shardfs_common::ec::EcParams::DEFAULT,
            len: 1,
            shard_size: 1,
            shards: Vec::new(),
        };
        let base = Attr {
            atime: Timespec::now(),
            mtime: Timespec::now(),
            ctime: Timespec::now(),
            version: 3,
            ..Attr::plain_file(5, 1)
        };
        let old = EntryV7 {
            ino: 5,
            parent: 1,
            name: b"doc.txt".to_vec(),
            base: base.clone(),
            base_slots: vec![SlotV7 {
                index: 0,
                used: 1,
                block: block.clone(),
                cap: Default::default(),
            }],
            content: b"edited offline".to_vec(),
        };
        let e = decode_entry(&postcard::to_stdvec(&old).unwrap()).unwrap();
        assert_eq!(e.content, b"edited offline");
        assert_eq!(e.base.version, 3);
        assert_eq!(
            e.base_slots,
            vec![Slot::whole(0, 1, block, Default::default())]
        );
        // And an entry of today round-trips.
        let now = JournalEntry {
            content: b"new".to_vec(),
            ..e
        };
        let back = decode_entry(&encode_entry(&now)).unwrap();
        assert_eq!(back.content, b"new");
    }
}
