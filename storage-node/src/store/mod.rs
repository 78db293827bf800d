//! Shards on local disk.
//!
//! Shard `i` of block `B` lives at `shards/<first two hex digits of B>/<B>.<i>`. Each file is a
//! 48-byte header (magic, format version, payload length, blake3 of the payload) followed by
//! the payload. A large shard is written to a temp file that is fsynced, renamed into place, and
//! the directory fsynced, so it is either whole on disk or absent. A small one is made durable
//! by the node's journal ([`crate::journal`]) instead: its file is written without fsync and
//! rewritten from the journal after a crash if it did not reach the disk. Every read re-hashes the payload; a
//! shard that no longer matches its hash is moved to `quarantine/` and reported as corrupt.
//! Shards of 128 KiB and more also get chunk sums beside them (`<B>.<i>.sum`, see
//! [`crate::sums`]): a range read reads and checks only the 64 KiB chunks it returns, and falls
//! back to reading (and judging) the whole shard when a chunk does not match.

use crate::journal::{self, Journal};
use crate::{sums, NodeError};
use shardfs_common::wire::BulkBuf;
use shardfs_common::BlockId;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const MAGIC: &[u8; 4] = b"SFSH";
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 48;
const PAGE: usize = 4096;
/// Shards at least this large are written with O_DIRECT (and fsynced on their own; smaller
/// ones are made durable by the journal).
const DIRECT_MIN: usize = 256 << 10;
const _: () = assert!(DIRECT_MIN <= journal::MAX_PAYLOAD);
/// A checkpoint is due when the journal holds this much…
const CHECKPOINT_BYTES: u64 = 32 << 20;
/// …or its oldest record is this old.
const CHECKPOINT_AGE: std::time::Duration = std::time::Duration::from_secs(10);

mod buf;
mod files;

pub use buf::ShardBuf;
use buf::{AlignedBuf, Shard};
use files::Files;

pub struct ShardStore {
    root: PathBuf,
    files: Files,
    journal: Journal,
    /// Shards whose deletion was recorded in the journal since the last checkpoint.
    tombstones: Mutex<HashSet<(BlockId, u8)>>,
    used: AtomicU64,
    shards: AtomicU64,
    capacity_limit: Option<u64>,
    reserve: u64,
}

pub struct Usage {
    pub capacity: u64,
    pub free: u64,
    pub used: u64,
    pub shards: u64,
}

impl ShardStore {
    /// Open (creating if needed) a store under `root`, counting what it already holds.
    pub fn open(root: &Path, capacity_limit: Option<u64>, reserve: u64) -> Result<Self, NodeError> {
        for d in ["shards", "tmp", "quarantine"] {
            fs::create_dir_all(root.join(d)).map_err(|e| NodeError::io(root.join(d), e))?;
        }
        // Leftover temp files are writes that never completed.
        if let Ok(rd) = fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let files = Files {
            root: root.to_path_buf(),
            tmp_seq: AtomicU64::new(0),
        };
        // Shards an earlier run acknowledged through its journal, before counting them.
        let fixed = files.replay()?;
        if fixed > 0 {
            tracing::info!(fixed, "shard files restored or removed from the journal");
        }
        let journal = Journal::create(root)?;
        let (mut used, mut shards) = (0u64, 0u64);
        for dir in fs::read_dir(root.join("shards")).map_err(|e| NodeError::io(root, e))? {
            let dir = dir.map_err(|e| NodeError::io(root, e))?;
            if let Ok(rd) = fs::read_dir(dir.path()) {
                for f in rd.flatten() {
                    let shard = parse_shard_name(&f.file_name().to_string_lossy()).is_some();
                    if let (true, Ok(md)) = (shard, f.metadata()) {
                        used += md.len();
                        shards += 1;
                    }
                }
            }
        }
        Ok(ShardStore {
            root: root.to_path_buf(),
            files,
            journal,
            tombstones: Mutex::new(HashSet::new()),
            used: AtomicU64::new(used),
            shards: AtomicU64::new(shards),
            capacity_limit,
            reserve,
        })
    }

    fn path(&self, block: &BlockId, index: u8) -> PathBuf {
        self.files.path(block, index)
    }

    pub fn usage(&self) -> Usage {
        let used = self.used.load(Ordering::Relaxed);
        let (mut capacity, mut free) = disk_space(&self.root).unwrap_or((0, 0));
        if let Some(limit) = self.capacity_limit {
            capacity = capacity.min(limit);
            free = free.min(limit.saturating_sub(used));
        }
        Usage {
            capacity,
            free,
            used,
            shards: self.shards.load(Ordering::Relaxed),
        }
    }

    /// Store a shard durably. Idempotent: an intact copy of the same bytes (same hash) already
    /// there is kept; anything else at that place is replaced.
    pub fn put(
        &self,
        block: &BlockId,
        index: u8,
        hash: &[u8; 32],
        mut shard: ShardBuf,
    ) -> Result<(), NodeError> {
        let len = shard.len;
        if shardfs_common::ids::shard_hash(shard.data()) != *hash {
            return Err(NodeError::Corrupt(format!(
                "shard {block}.{index} does not match the hash sent with it"
            )));
        }
        let path = self.path(block, index);
        if let Ok(md) = fs::metadata(&path) {
            if md.len() >= (HEADER_LEN + len) as u64
                && self.get(block, index).is_ok_and(|(h, _)| h == *hash)
            {
                return Ok(());
            }
        }
        let need = if len >= DIRECT_MIN {
            (HEADER_LEN + len).div_ceil(PAGE) as u64 * PAGE as u64
        } else {
            (HEADER_LEN + len) as u64
        };
        let usage = self.usage();
        if usage.free < need + self.reserve {
            return Err(NodeError::Full(format!(
                "node is full: {} bytes free, {} needed plus {} reserved",
                usage.free, need, self.reserve
            )));
        }
        // (DIRECT_MIN is below journal::MAX_PAYLOAD: every small shard fits in a record.)
        let small = len < DIRECT_MIN;
        let existed = path.exists();
        // A small shard is durable once its journal record is: its file, written here
        // without fsync, reaches the disk at the next checkpoint.
        self.files
            .write(block, index, hash, &mut shard, &path, !small)?;
        if small {
            let rec = journal::encode(journal::Kind::Put, block, index, hash, shard.data());
            self.journal.append(&rec, true)?;
        } else if self.tombstoned(block, index) {
            // A deletion of this shard is in the journal: it must not undo this write.
            let rec = journal::encode(journal::Kind::Durable, block, index, hash, &[]);
            self.journal.append(&rec, true)?;
        }
        if !existed {
            self.used.fetch_add(need, Ordering::Relaxed);
            self.shards.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether a deletion of the shard may be in the journal.
    fn tombstoned(&self, block: &BlockId, index: u8) -> bool {
        self.tombstones
            .lock()
            .expect("tombstones lock")
            .contains(&(*block, index))
    }

    /// Make the shard files written since the last checkpoint durable and empty the journal
    /// (the node does this in the background: see [`ShardStore::checkpoint_due`]).
    pub fn checkpoint(&self) -> Result<(), NodeError> {
        let before: HashSet<(BlockId, u8)> =
            self.tombstones.lock().expect("tombstones lock").clone();
        self.journal.checkpoint()?;
        // Tombstones recorded before the checkpoint are gone with the journal they were in.
        self.tombstones
            .lock()
            .expect("tombstones lock")
            .retain(|k| !before.contains(k));
        Ok(())
    }

    /// Whether the journal holds enough, or old enough, records to checkpoint now.
    pub fn checkpoint_due(&self) -> bool {
        let (bytes, age) = self.journal.pending();
        bytes >= CHECKPOINT_BYTES || age.is_some_and(|a| a >= CHECKPOINT_AGE)
    }

    /// Read a shard and verify it against its recorded hash.
    pub fn get(&self, block: &BlockId, index: u8) -> Result<([u8; 32], bytes::Bytes), NodeError> {
        let path = self.path(block, index);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NodeError::Missing(format!(
                    "no shard {block}.{index} on this node"
                )))
            }
            Err(e) => return Err(NodeError::io(&path, e)),
        };
        let size = f.metadata().map(|m| m.len() as usize).unwrap_or(0);
        // Large page-padded shards are read with O_DIRECT, like they were written: no copy
        // through the page cache. Others are read plainly.
        let buf: Shard = match Self::read_direct(&path, size) {
            Some(Ok(b)) => Shard::Aligned(b),
            Some(Err(e)) => return Err(NodeError::io(&path, e)),
            None => {
                let mut v = Vec::with_capacity(size);
                f.read_to_end(&mut v).map_err(|e| NodeError::io(&path, e))?;
                Shard::Plain(v)
            }
        };
        let raw = buf.as_ref();
        let bad = |why: &str| {
            let q = self
                .root
                .join("quarantine")
                .join(path.file_name().expect("file name"));
            let _ = fs::rename(&path, &q);
            let _ = fs::remove_file(sums_path(&path));
            self.shards.fetch_sub(1, Ordering::Relaxed);
            self.used.fetch_sub(raw.len() as u64, Ordering::Relaxed);
            tracing::error!(shard = %path.display(), "corrupt shard quarantined: {why}");
            NodeError::Corrupt(format!("shard {block}.{index} is corrupt: {why}"))
        };
        let (hash, len) = parse_shard(raw).map_err(bad)?;
        let bytes = match buf {
            Shard::Plain(v) => bytes::Bytes::from(v),
            Shard::Aligned(b) => bytes::Bytes::from_owner(b),
        };
        Ok((hash, bytes.slice(HEADER_LEN..HEADER_LEN + len)))
    }

    /// Bytes `[off, off + len)` of a shard, verified by the chunk sums of the chunks they lie
    /// in (the whole shard is read and verified if it has no usable sums, or a chunk does not
    /// match them: that read decides, and quarantines a corrupt shard).
    pub fn get_range(
        &self,
        block: &BlockId,
        index: u8,
        off: usize,
        len: usize,
    ) -> Result<([u8; 32], bytes::Bytes), NodeError> {
        use std::os::unix::fs::FileExt;
        let path = self.path(block, index);
        let read = |f: &File, buf: &mut [u8], at: u64| f.read_exact_at(buf, at).ok();
        match chunked_range(&path, off, len, read) {
            Ranged::Got(hash, data) => return Ok((hash, data)),
            Ranged::Outside(size) => return Err(outside(off, len, size)),
            Ranged::Mismatch => {
                tracing::warn!(shard = %path.display(), off, len, "chunk does not match its sum; verifying the whole shard");
            }
            Ranged::Unknown => {}
        }
        let (hash, data) = self.get(block, index)?;
        match off.checked_add(len) {
            Some(end) if end <= data.len() => Ok((hash, data.slice(off..end))),
            _ => Err(outside(off, len, data.len())),
        }
    }

    /// [`ShardStore::get_range`] if everything it reads is in the page cache, without
    /// waiting on the disk (reads with `RWF_NOWAIT`): the caller can then answer on its own
    /// thread instead of handing the read to a blocking one. None when a byte is not cached,
    /// or anything is not as expected (the blocking read then decides, and judges).
    pub fn get_range_cached(
        &self,
        block: &BlockId,
        index: u8,
        off: usize,
        len: usize,
    ) -> Option<([u8; 32], bytes::Bytes)> {
        match chunked_range(&self.path(block, index), off, len, read_cached) {
            Ranged::Got(hash, data) => Some((hash, data)),
            _ => None,
        }
    }

    /// Read a whole page-padded shard file with O_DIRECT; None if it is not one.
    fn read_direct(path: &Path, size: usize) -> Option<std::io::Result<AlignedBuf>> {
        if size < DIRECT_MIN || !size.is_multiple_of(PAGE) {
            return None;
        }
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        Some(AlignedBuf::read_from(&mut f, size))
    }

    /// Shards held, in (block id, index) order, strictly after `after`, at most `limit`.
    pub fn list(
        &self,
        after: Option<(BlockId, u8)>,
        limit: usize,
    ) -> Result<Vec<(BlockId, u8)>, NodeError> {
        let first_dir = after.map(|(b, _)| b.0[0]).unwrap_or(0);
        let mut out = Vec::new();
        for d in first_dir..=255u8 {
            let dir = self.root.join("shards").join(format!("{d:02x}"));
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(NodeError::io(&dir, e)),
            };
            let mut here: Vec<(BlockId, u8)> = rd
                .flatten()
                .filter_map(|e| parse_shard_name(&e.file_name().to_string_lossy()))
                .filter(|s| after.is_none_or(|a| *s > a))
                .collect();
            here.sort();
            for s in here {
                out.push(s);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Delete shard `index` of `block` if its file is at least `min_age` old; true if deleted.
    pub fn delete_if_older(
        &self,
        block: &BlockId,
        index: u8,
        min_age: std::time::Duration,
    ) -> Result<bool, NodeError> {
        let path = self.path(block, index);
        let old = fs::metadata(&path)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if old {
            self.delete(block, index)?;
        }
        Ok(old)
    }

    pub fn delete(&self, block: &BlockId, index: u8) -> Result<(), NodeError> {
        let path = self.path(block, index);
        match fs::metadata(&path) {
            Ok(md) => {
                // Recorded first (not waited for): a replay must not bring the shard back.
                self.tombstones
                    .lock()
                    .expect("tombstones lock")
                    .insert((*block, index));
                let rec = journal::encode(journal::Kind::Delete, block, index, &[0; 32], &[]);
                self.journal.append(&rec, false)?;
                fs::remove_file(&path).map_err(|e| NodeError::io(&path, e))?;
                let _ = fs::remove_file(sums_path(&path));
                self.used.fetch_sub(md.len(), Ordering::Relaxed);
                self.shards.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NodeError::io(&path, e)),
        }
    }
}

/// Whether the shard file at `path` is whole and holds content of hash `hash`.
fn intact(path: &Path, hash: &[u8; 32]) -> bool {
    let Ok(raw) = fs::read(path) else {
        return false;
    };
    parse_shard(&raw).is_ok_and(|(h, _)| h == *hash)
}

/// What reading a range through a shard's chunk sums gave.
enum Ranged {
    Got([u8; 32], bytes::Bytes),
    /// The range lies outside the shard's content of this size.
    Outside(usize),
    /// A chunk does not match its sum.
    Mismatch,
    /// Not answered this way: no shard file, no usable sums, or a read that did not succeed.
    Unknown,
}

fn outside(off: usize, len: usize, size: usize) -> NodeError {
    NodeError::Common(shardfs_common::Error::invalid(format!(
        "range {off}+{len} outside a shard of {size} bytes"
    )))
}

/// Bytes `[off, off + len)` of the shard file at `path` and the chunks of its sums file
/// they lie in, each read with `read` (which fills the buffer whole or gives None), the
/// chunks checked against their sums.
fn chunked_range(
    path: &Path,
    off: usize,
    len: usize,
    read: impl Fn(&File, &mut [u8], u64) -> Option<()>,
) -> Ranged {
    let Ok(f) = File::open(path) else {
        return Ranged::Unknown;
    };
    let mut head = [0u8; HEADER_LEN];
    if read(&f, &mut head, 0).is_none() || &head[..4] != MAGIC || head[4] != FORMAT_VERSION {
        return Ranged::Unknown;
    }
    let size = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes")) as usize;
    let hash: [u8; 32] = head[16..48].try_into().expect("32 bytes");
    if off.checked_add(len).is_none_or(|end| end > size) {
        return Ranged::Outside(size);
    }
    let sums = File::open(sums_path(path)).ok().and_then(|sf| {
        let slen = usize::try_from(sf.metadata().ok()?.len()).ok()?;
        if slen > 1 << 20 {
            return None;
        }
        let mut raw = vec![0u8; slen];
        read(&sf, &mut raw, 0)?;
        sums::parse(&raw).filter(|s| s.len == size && s.hash == hash)
    });
    let Some(sums) = sums else {
        return Ranged::Unknown;
    };
    let (a, b) = sums.span(off, len);
    let mut buf = vec![0u8; b - a];
    if read(&f, &mut buf, (HEADER_LEN + a) as u64).is_none() {
        return Ranged::Unknown;
    }
    if !sums.verify(a, &buf) {
        return Ranged::Mismatch;
    }
    Ranged::Got(hash, bytes::Bytes::from(buf).slice(off - a..off - a + len))
}

/// Fill `buf` from `f` at `at` from the page cache only (`preadv2` with `RWF_NOWAIT`); None
/// if some of it is not cached (or the file is shorter).
fn read_cached(f: &File, buf: &mut [u8], at: u64) -> Option<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0usize;
    while done < buf.len() {
        let iov = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let pos = libc::off_t::try_from(at + done as u64).ok()?;
        // SAFETY: the iovec points into `buf`, which outlives the call, with its length.
        let n = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, pos, libc::RWF_NOWAIT) };
        if n <= 0 {
            return None;
        }
        done += n as usize;
    }
    Some(())
}

/// Where the chunk sums of the shard at `shard` live.
fn sums_path(shard: &Path) -> PathBuf {
    let mut p = shard.as_os_str().to_owned();
    p.push(".sum");
    PathBuf::from(p)
}

/// `<64 hex digits>.<index>` → (block, index).
/// The header a shard file starts with: magic, format, content length, content blake3.
pub fn shard_header(len: usize, hash: &[u8; 32]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(MAGIC);
    header[4] = FORMAT_VERSION;
    header[8..16].copy_from_slice(&(len as u64).to_be_bytes());
    header[16..48].copy_from_slice(hash);
    header
}

/// Check a stored shard file (header, length, blake3 of the content); returns the content's
/// hash and length (the content starts after the header).
pub fn parse_shard(raw: &[u8]) -> Result<([u8; 32], usize), &'static str> {
    if raw.len() < HEADER_LEN || &raw[..4] != MAGIC || raw[4] != FORMAT_VERSION {
        return Err("bad header");
    }
    let len = u64::from_be_bytes(raw[8..16].try_into().expect("8 bytes"));
    // Shards written with O_DIRECT are padded to whole pages.
    let len = usize::try_from(len).map_err(|_| "wrong length")?;
    let end = HEADER_LEN.checked_add(len).ok_or("wrong length")?;
    if raw.len() < end || raw.len() >= end.saturating_add(PAGE) {
        return Err("wrong length");
    }
    let hash: [u8; 32] = raw[16..48].try_into().expect("32 bytes");
    if shardfs_common::ids::shard_hash(&raw[HEADER_LEN..end]) != hash {
        return Err("content does not match its blake3 hash");
    }
    Ok((hash, len))
}

fn parse_shard_name(name: &str) -> Option<(BlockId, u8)> {
    let (hex, index) = name.split_once('.')?;
    let bytes = hex::decode(hex).ok()?;
    Some((BlockId(bytes.try_into().ok()?), index.parse().ok()?))
}

/// (total, available) bytes of the filesystem holding `path`.
fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: c is a valid NUL-terminated path; st is a plain out-parameter.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some((
            st.f_blocks as u64 * st.f_frsize as u64,
            st.f_bavail as u64 * st.f_frsize as u64,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_and_corruption() {
        let dir = std::env::temp_dir().join(format!("sfs-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = ShardStore::open(&dir, None, 0).unwrap();
        let data = b"some shard bytes".to_vec();
        let id = BlockId::of(b"block");
        let h = shardfs_common::ids::shard_hash(&data);
        assert!(
            store
                .put(&id, 0, &[0; 32], ShardBuf::from_slice(&data))
                .is_err(),
            "hash mismatch must be refused"
        );
        store.put(&id, 0, &h, ShardBuf::from_slice(&data)).unwrap();
        store.put(&id, 0, &h, ShardBuf::from_slice(&data)).unwrap();
        assert_eq!(store.usage().shards, 1);
        assert_eq!(store.get(&id, 0).unwrap().1, data);
        // Other (intact) bytes put at the same place replace what is there: a shard stored
        // first by someone else cannot shadow the one a writer sends.
        let other = b"other shard bytes".to_vec();
        let ho = shardfs_common::ids::shard_hash(&other);
        store
            .put(&id, 0, &ho, ShardBuf::from_slice(&other))
            .unwrap();
        assert_eq!(store.get(&id, 0).unwrap(), (ho, other.into()));
        store.put(&id, 0, &h, ShardBuf::from_slice(&data)).unwrap();
        assert_eq!(store.usage().shards, 1);
        assert_eq!(store.get(&id, 0).unwrap().1, data);
        // Flip a payload byte: the read must fail and the shard be quarantined.
        let p = store.path(&id, 0);
        let mut raw = fs::read(&p).unwrap();
        raw[HEADER_LEN] ^= 0xff;
        fs::write(&p, raw).unwrap();
        assert!(matches!(store.get(&id, 0), Err(NodeError::Corrupt(_))));
        assert!(matches!(store.get(&id, 0), Err(NodeError::Missing(_))));
        // A large shard takes the O_DIRECT path (padded on disk) and reads back exactly.
        let big: Vec<u8> = (0..(300u32 << 10)).map(|i| (i % 251) as u8).collect();
        let hb = shardfs_common::ids::shard_hash(&big);
        store.put(&id, 2, &hb, ShardBuf::from_slice(&big)).unwrap();
        assert_eq!(&store.get(&id, 2).unwrap().1[..], &big[..]);
        let p = store.path(&id, 2);
        let mut raw = fs::read(&p).unwrap();
        raw[HEADER_LEN + 1000] ^= 1;
        fs::write(&p, raw).unwrap();
        assert!(
            matches!(store.get(&id, 2), Err(NodeError::Corrupt(_))),
            "bit flip in a large shard"
        );
        store.put(&id, 1, &h, ShardBuf::from_slice(&data)).unwrap();
        let other = BlockId::of(b"other block");
        store
            .put(&other, 3, &h, ShardBuf::from_slice(&data))
            .unwrap();
        // Listing is in (block, index) order and pages from `after`.
        let mut want = vec![(id, 1u8), (other, 3u8)];
        want.sort();
        assert_eq!(store.list(None, 10).unwrap(), want);
        assert_eq!(store.list(Some(want[0]), 10).unwrap(), want[1..]);
        assert_eq!(store.list(None, 1).unwrap(), want[..1]);
        assert!(!store
            .delete_if_older(&other, 3, std::time::Duration::from_secs(3600))
            .unwrap());
        assert!(store
            .delete_if_older(&other, 3, std::time::Duration::ZERO)
            .unwrap());
        store.delete(&id, 1).unwrap();
        assert!(store.get(&id, 1).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cached_range_read_matches_the_blocking_one_and_refuses_a_bad_chunk() {
        let dir = std::env::temp_dir().join(format!("sfs-store-cached-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = ShardStore::open(&dir, None, 0).unwrap();
        let big: Vec<u8> = (0..(512u32 << 10)).map(|i| (i * 7 % 251) as u8).collect();
        let id = BlockId::of(b"cached");
        let hb = shardfs_common::ids::shard_hash(&big);
        store.put(&id, 0, &hb, ShardBuf::from_slice(&big)).unwrap();
        // The blocking read brings the chunk into the page cache; the cached one then gives
        // the same bytes.
        let (h, slow) = store.get_range(&id, 0, 70_000, 4096).unwrap();
        assert_eq!((h, &slow[..]), (hb, &big[70_000..74_096]));
        let (h, fast) = store
            .get_range_cached(&id, 0, 70_000, 4096)
            .expect("a cached chunk");
        assert_eq!((h, &fast[..]), (hb, &big[70_000..74_096]));
        // Outside the shard, or a chunk that does not match its sum: not answered here.
        assert!(store
            .get_range_cached(&id, 0, big.len() - 10, 4096)
            .is_none());
        let p = store.path(&id, 0);
        let mut raw = fs::read(&p).unwrap();
        raw[HEADER_LEN + 70_001] ^= 1;
        fs::write(&p, raw).unwrap();
        assert!(store.get_range_cached(&id, 0, 70_000, 4096).is_none());
        assert!(store.get_range(&id, 0, 70_000, 4096).is_err());
        assert!(
            store.get_range_cached(&id, 1, 0, 10).is_none(),
            "no such shard"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// Small shards acknowledged through the journal are there after their files are lost or
    /// torn (a power cut before they reached the disk); deleted shards stay
    /// deleted; a checkpoint empties the journal.
    #[test]
    fn the_journal_brings_back_acknowledged_shards_and_not_deleted_ones() {
        let dir = std::env::temp_dir().join(format!("shardfs-store-j-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let shard = |n: u32| -> (BlockId, Vec<u8>, [u8; 32]) {
            let data: Vec<u8> = (0..4096 + n).map(|i| (i * 7 + n) as u8).collect();
            let h = shardfs_common::ids::shard_hash(&data);
            (BlockId::of(&n.to_le_bytes()), data, h)
        };
        {
            let store = ShardStore::open(&dir, None, 0).unwrap();
            for n in 0..10 {
                let (id, data, h) = shard(n);
                store.put(&id, 0, &h, ShardBuf::from_slice(&data)).unwrap();
            }
            // Shard 0 deleted; shard 2 torn and the others' files lost, as after a power
            // cut before they reached the disk.
            store.delete(&shard(0).0, 0).unwrap();
            fs::write(store.path(&shard(2).0, 0), b"torn").unwrap();
            for n in (1..10).filter(|n| *n != 2) {
                fs::remove_file(store.path(&shard(n).0, 0)).unwrap();
            }
        }
        let store = ShardStore::open(&dir, None, 0).unwrap();
        assert!(
            store.get(&shard(0).0, 0).is_err(),
            "a deleted shard came back"
        );
        for n in 1..10 {
            let (id, data, h) = shard(n);
            assert_eq!(store.get(&id, 0).unwrap(), (h, data.into()), "shard {n}");
        }
        assert_eq!(store.usage().shards, 9);
        assert!(!dir.join("journal.old").exists());
        // A put after the restart is journalled; a checkpoint writes its file and empties
        // the journal.
        let (id, data, h) = shard(20);
        store.put(&id, 0, &h, ShardBuf::from_slice(&data)).unwrap();
        assert!(fs::metadata(dir.join("journal")).unwrap().len() > 4096);
        store.checkpoint().unwrap();
        assert_eq!(fs::metadata(dir.join("journal")).unwrap().len(), 0);
        assert!(intact(&store.path(&id, 0), &h));
        let _ = fs::remove_dir_all(&dir);
    }
}
