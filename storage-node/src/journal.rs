//! The node's write-ahead journal for small shards.
//!
//! A small shard (a piece of small writes, a small file's copy) used to cost two journal
//! commits of the node's filesystem before its put was acknowledged: an fsync of the new file
//! and one of its directory after the rename. With the journal, the shard file is written and
//! renamed into place without any fsync, and the shard is appended to `journal` in the node's
//! directory; the put is acknowledged once that append is on disk. Appends of concurrent puts
//! share one `fdatasync` (group commit), so a burst of small puts costs one disk flush.
//!
//! A checkpoint ([`Journal::checkpoint`], run in the background) makes the shard files
//! themselves durable (`syncfs` of the node's filesystem) and then forgets the records: the
//! journal is renamed to `journal.old` first, so a crash at any point leaves every record
//! that is not yet known durable in one of the two files. At start ([`replay`]) every record
//! of both files is checked against the shard file it describes, which is rewritten (with
//! fsyncs) when it is missing or differs; deletions are recorded too, so a deleted shard is not
//! brought back.
//!
//! A record: magic `SFJR`, kind (1 put, 2 delete, 3 "stored durably on its own"), shard
//! index, 2 zero bytes, payload length (u32 BE), block id (32), shard hash (32), payload,
//! then the first 16 bytes of the blake3 of everything before. A torn or damaged record ends
//! the replay of its file: nothing after it was acknowledged.

use shardfs_common::BlockId;
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

const MAGIC: &[u8; 4] = b"SFJR";
const HEAD: usize = 4 + 4 + 4 + 32 + 32;
const TRAILER: usize = 16;
/// Largest payload a record carries (larger shards are written durably on their own).
pub const MAX_PAYLOAD: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Put = 1,
    Delete = 2,
    /// The shard was written and fsynced without the journal: earlier records of it are moot.
    Durable = 3,
}

/// One record read back from a journal file.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub block: BlockId,
    pub index: u8,
    pub hash: [u8; 32],
    pub payload: Vec<u8>,
}

/// The bytes of one record.
pub fn encode(kind: Kind, block: &BlockId, index: u8, hash: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + payload.len() + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[kind as u8, index, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&block.0);
    out.extend_from_slice(hash);
    out.extend_from_slice(payload);
    let sum = blake3::hash(&out);
    out.extend_from_slice(&sum.as_bytes()[..TRAILER]);
    out
}

/// The intact records at the start of `bytes`, in order; parsing stops at the first record
/// that is torn, damaged or not a record.
pub fn decode_all(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some((rec, len)) = decode_one(&bytes[at..]) {
        out.push(rec);
        at += len;
    }
    out
}

fn decode_one(b: &[u8]) -> Option<(Record, usize)> {
    if b.len() < HEAD + TRAILER || &b[..4] != MAGIC {
        return None;
    }
    let kind = match b[4] {
        1 => Kind::Put,
        2 => Kind::Delete,
        3 => Kind::Durable,
        _ => return None,
    };
    let len = u32::from_be_bytes(b[8..12].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD || b.len() < HEAD + len + TRAILER {
        return None;
    }
    let end = HEAD + len;
    if blake3::hash(&b[..end]).as_bytes()[..TRAILER] != b[end..end + TRAILER] {
        return None;
    }
    let rec = Record {
        kind,
        index: b[5],
        block: BlockId(b[12..44].try_into().ok()?),
        hash: b[44..76].try_into().ok()?,
        payload: b[HEAD..end].to_vec(),
    };
    Some((rec, end + TRAILER))
}

/// What the records say of each shard: the last record of each (block, index) wins.
pub fn final_states(records: Vec<Record>) -> HashMap<(BlockId, u8), Record> {
    let mut out = HashMap::new();
    for r in records {
        out.insert((r.block, r.index), r);
    }
    out
}

struct State {
    file: Arc<File>,
    /// Bytes appended to the current file.
    len: u64,
    /// Bytes ever appended (across checkpoints): a put waits until `synced` passes its end.
    appended: u64,
    synced: u64,
    syncing: bool,
    /// When the current file got its first record since the last checkpoint.
    since: Option<Instant>,
}

/// The journal of one node's shard store.
pub struct Journal {
    dir: PathBuf,
    state: Mutex<State>,
    synced: Condvar,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
}

fn io_err(path: &Path, e: std::io::Error) -> crate::NodeError {
    crate::NodeError::io(path, e)
}

impl Journal {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("journal")
    }

    fn old_path(dir: &Path) -> PathBuf {
        dir.join("journal.old")
    }

    /// A new, empty journal in `dir` (after [`replay`] has dealt with what was there).
    pub fn create(dir: &Path) -> Result<Self, crate::NodeError> {
        let path = Self::path(dir);
        let file = File::create(&path).map_err(|e| io_err(&path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                file: Arc::new(file),
                len: 0,
                appended: 0,
                synced: 0,
                syncing: false,
                since: None,
            }),
            synced: Condvar::new(),
            checkpointing: Mutex::new(()),
        })
    }

    /// Append a record; with `durable`, return only once it is on disk (sharing the flush
    /// with every other append waiting at the same time).
    pub fn append(&self, record: &[u8], durable: bool) -> Result<(), crate::NodeError> {
        let path = Self::path(&self.dir);
        let end = {
            let mut st = self.state.lock().expect("journal lock");
            st.file
                .write_all_at(record, st.len)
                .map_err(|e| io_err(&path, e))?;
            st.len += record.len() as u64;
            st.appended += record.len() as u64;
            st.since.get_or_insert_with(Instant::now);
            st.appended
        };
        if !durable {
            return Ok(());
        }
        let mut st = self.state.lock().expect("journal lock");
        loop {
            if st.synced >= end {
                return Ok(());
            }
            if st.syncing {
                st = self.synced.wait(st).expect("journal lock");
                continue;
            }
            // This append flushes everything appended so far, its own included.
            st.syncing = true;
            let (file, target) = (st.file.clone(), st.appended);
            drop(st);
            let r = file.sync_data();
            st = self.state.lock().expect("journal lock");
            st.syncing = false;
            if r.is_ok() {
                st.synced = st.synced.max(target);
            }
            self.synced.notify_all();
            r.map_err(|e| io_err(&path, e))?;
        }
    }

    /// Bytes in the current file, and how long ago its first record since the last
    /// checkpoint was appended.
    pub fn pending(&self) -> (u64, Option<std::time::Duration>) {
        let st = self.state.lock().expect("journal lock");
        (st.len, st.since.map(|t| t.elapsed()))
    }

    /// Make every shard file written so far durable and forget the records that described
    /// them. Shard files are written before their record is appended, so when the journal is
    /// switched, every record in the old file has its shard file in place.
    pub fn checkpoint(&self) -> Result<(), crate::NodeError> {
        let _one = self.checkpointing.lock().expect("checkpoint lock");
        let (path, old) = (Self::path(&self.dir), Self::old_path(&self.dir));
        let cut = {
            let mut st = self.state.lock().expect("journal lock");
            if old.exists() {
                // An earlier checkpoint failed after the switch: finish it first (its records
                // stay in `journal.old` until their shard files are known durable).
                drop(st);
                return self.finish(0, &old);
            }
            if st.len == 0 {
                return Ok(());
            }
            // Every record of the file switched away from is on disk first: a put waiting
            // for its flush would otherwise flush the new file, not the one holding its record.
            st.file.sync_data().map_err(|e| io_err(&path, e))?;
            st.synced = st.synced.max(st.appended);
            self.synced.notify_all();
            fs::rename(&path, &old).map_err(|e| io_err(&path, e))?;
            let file = match File::create(&path) {
                Ok(f) => f,
                Err(e) => {
                    // Back as it was: appends go on into the old file.
                    let _ = fs::rename(&old, &path);
                    return Err(io_err(&path, e));
                }
            };
            st.file = Arc::new(file);
            st.len = 0;
            st.since = None;
            st.appended
        };
        self.finish(cut, &old)
    }

    /// Sync the filesystem, count everything appended up to `cut` as durable, and remove the
    /// switched-away journal `old`.
    fn finish(&self, cut: u64, old: &Path) -> Result<(), crate::NodeError> {
        let dir = File::open(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        // Every shard file (and the rename of the journal) reaches the disk.
        // SAFETY: syncfs on a valid open descriptor.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(io_err(&self.dir, std::io::Error::last_os_error()));
        }
        {
            let mut st = self.state.lock().expect("journal lock");
            st.synced = st.synced.max(cut);
            self.synced.notify_all();
        }
        fs::remove_file(old).map_err(|e| io_err(old, e))?;
        dir.sync_all().map_err(|e| io_err(&self.dir, e))?;
        Ok(())
    }
}

/// The records left in `dir`'s journal files by an earlier run, oldest first (the journal
/// switched away from by an unfinished checkpoint, then the current one).
pub fn leftover(dir: &Path) -> Result<Vec<Record>, crate::NodeError> {
    let mut out = Vec::new();
    for p in [Journal::old_path(dir), Journal::path(dir)] {
        match fs::read(&p) {
            Ok(bytes) => out.extend(decode_all(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p, e)),
        }
    }
    Ok(out)
}

/// Remove the journal files once their records are applied durably.
pub fn clear(dir: &Path) -> Result<(), crate::NodeError> {
    for p in [Journal::old_path(dir), Journal::path(dir)] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p, e)),
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlockId {
        BlockId([n; 32])
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_replay() {
        let a = encode(Kind::Put, &id(1), 0, &[7; 32], b"hello");
        let b = encode(Kind::Delete, &id(2), 3, &[0; 32], b"");
        let c = encode(Kind::Put, &id(3), 1, &[9; 32], &[5u8; 4096]);
        let all = [a.clone(), b, c].concat();
        let recs = decode_all(&all);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].payload, b"hello");
        assert_eq!(recs[1].kind, Kind::Delete);
        assert_eq!((recs[2].block, recs[2].index), (id(3), 1));
        // Torn: the last record cut short.
        assert_eq!(decode_all(&all[..all.len() - 1]).len(), 2);
        // Damaged: one byte of the second record's payload-less head changed.
        let mut bad = all.clone();
        bad[a.len() + 6] ^= 1;
        assert_eq!(decode_all(&bad).len(), 1);
        // Garbage and zeros are not records.
        assert!(decode_all(&[0u8; 200]).is_empty());
    }

    #[test]
    fn the_last_record_of_a_shard_wins() {
        let recs = decode_all(
            &[
                encode(Kind::Put, &id(1), 0, &[1; 32], b"a"),
                encode(Kind::Delete, &id(1), 0, &[0; 32], b""),
                encode(Kind::Put, &id(2), 0, &[2; 32], b"b"),
                encode(Kind::Put, &id(1), 1, &[3; 32], b"c"),
                encode(Kind::Durable, &id(2), 0, &[2; 32], b""),
            ]
            .concat(),
        );
        let f = final_states(recs);
        assert_eq!(f[&(id(1), 0)].kind, Kind::Delete);
        assert_eq!(f[&(id(1), 1)].kind, Kind::Put);
        assert_eq!(f[&(id(2), 0)].kind, Kind::Durable);
    }

    #[test]
    fn concurrent_appends_are_all_durable_and_a_checkpoint_empties_the_journal() {
        let dir = std::env::temp_dir().join(format!("shardfs-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let j = Arc::new(Journal::create(&dir).unwrap());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..20u8 {
                        let r = encode(Kind::Put, &id(t), i, &[i; 32], &[t; 100]);
                        j.append(&r, true).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(leftover(&dir).unwrap().len(), 160);
        j.checkpoint().unwrap();
        assert!(leftover(&dir).unwrap().is_empty());
        j.append(&encode(Kind::Delete, &id(1), 0, &[0; 32], b""), true)
            .unwrap();
        assert_eq!(leftover(&dir).unwrap().len(), 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
