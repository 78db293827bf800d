//! Shards on local disk.
//!
//! Shard `i` of block `B` lives at `shards/<first two hex digits of B>/<B>.<i>`. Each file is a
//! 48-byte header (magic, format version, payload length, blake3 of the payload) followed by
//! the payload. Writes go to a temp file that is fsynced, renamed into place, and the directory
//! fsynced, so a shard is either whole on disk or absent. Every read re-hashes the payload; a
//! shard that no longer matches its hash is moved to `quarantine/` and reported as corrupt.
//! Shards of 128 KiB and more also get chunk sums beside them (`<B>.<i>.sum`, see
//! [`crate::sums`]): a range read reads and checks only the 64 KiB chunks it returns, and falls
//! back to reading (and judging) the whole shard when a chunk does not match.

use crate::{sums, NodeError};
use shardfs_common::wire::BulkBuf;
use shardfs_common::BlockId;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 4] = b"SFSH";
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 48;
const PAGE: usize = 4096;
/// Shards at least this large are written with O_DIRECT.
const DIRECT_MIN: usize = 256 << 10;

/// A page-aligned buffer for O_DIRECT reads and writes, fully initialised.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    /// A buffer of at least `len` bytes (whole pages), not initialised: the caller must write
    /// every byte before [`AsRef::as_ref`] is used.
    fn uninit(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(PAGE).div_ceil(PAGE) * PAGE, PAGE)
            .expect("layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    /// Fill a new buffer of `len` bytes (a multiple of the page size) from `f`, without
    /// zeroing it first.
    fn read_from(f: &mut File, len: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let buf = Self::uninit(len);
        let layout = buf.layout;
        let mut done = 0usize;
        while done < layout.size() {
            // SAFETY: writes stay within the allocation; the kernel fills the bytes it reports.
            let n = unsafe {
                libc::read(
                    f.as_raw_fd(),
                    buf.ptr.as_ptr().add(done) as *mut libc::c_void,
                    layout.size() - done,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        // Every byte is now initialised.
        Ok(buf)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

/// A shard as received for storing: room for the header, the shard's bytes, then zeros up to
/// a whole number of pages, in one page-aligned buffer written to disk as it is.
pub struct ShardBuf {
    buf: AlignedBuf,
    len: usize,
    filled: bool,
}

impl ShardBuf {
    /// A shard holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = <Self as BulkBuf>::for_len(data.len());
        let dst = b.unfilled();
        // SAFETY: `dst` has exactly data.len() bytes; the buffers are distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), dst.as_mut_ptr() as *mut u8, data.len())
        };
        // SAFETY: every payload byte was written just above.
        unsafe { b.assume_filled() };
        b
    }

    /// How many bytes the shard has.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shard's bytes.
    pub fn data(&self) -> &[u8] {
        &self.all()[HEADER_LEN..HEADER_LEN + self.len]
    }

    fn all(&self) -> &[u8] {
        assert!(self.filled, "shard buffer read before it was filled");
        self.buf.as_ref()
    }

    fn set_header(&mut self, header: &[u8; HEADER_LEN]) {
        // SAFETY: the buffer is at least one page, longer than the header.
        unsafe {
            std::ptr::copy_nonoverlapping(header.as_ptr(), self.buf.ptr.as_ptr(), HEADER_LEN)
        };
    }
}

impl BulkBuf for ShardBuf {
    fn for_len(len: usize) -> Self {
        let buf = AlignedBuf::uninit(HEADER_LEN + len);
        let size = buf.layout.size();
        // SAFETY: zero the header room and the padding after the payload; the payload is
        // written by the receiver before the buffer is read.
        unsafe {
            std::ptr::write_bytes(buf.ptr.as_ptr(), 0, HEADER_LEN);
            std::ptr::write_bytes(
                buf.ptr.as_ptr().add(HEADER_LEN + len),
                0,
                size - HEADER_LEN - len,
            );
        }
        ShardBuf {
            buf,
            len,
            filled: false,
        }
    }

    fn unfilled(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: HEADER_LEN + len bytes lie inside the allocation, owned by self.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.buf.ptr.as_ptr().add(HEADER_LEN) as *mut MaybeUninit<u8>,
                self.len,
            )
        }
    }

    unsafe fn assume_filled(&mut self) {
        self.filled = true;
    }
}

/// A shard file's bytes, as read.
enum Shard {
    Plain(Vec<u8>),
    Aligned(AlignedBuf),
}

impl AsRef<[u8]> for Shard {
    fn as_ref(&self) -> &[u8] {
        match self {
            Shard::Plain(v) => v,
            Shard::Aligned(b) => b.as_ref(),
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

pub struct ShardStore {
    root: PathBuf,
    used: AtomicU64,
    shards: AtomicU64,
    tmp_seq: AtomicU64,
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
            used: AtomicU64::new(used),
            shards: AtomicU64::new(shards),
            tmp_seq: AtomicU64::new(0),
            capacity_limit,
            reserve,
        })
    }

    fn path(&self, block: &BlockId, index: u8) -> PathBuf {
        let hex = block.to_hex();
        self.root
            .join("shards")
            .join(&hex[..2])
            .join(format!("{hex}.{index}"))
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
        let dir = path.parent().expect("shard path has a parent");
        fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{index}.{seq}", block.to_hex()));
        shard.set_header(&shard_header(len, hash));
        // Not fsynced: a lost or torn sums file only makes range reads verify the whole shard.
        if len >= sums::MIN_CONTENT {
            let sums_path = sums_path(&path);
            let tmp_sums = tmp.with_extension(format!("{seq}.sum"));
            let written = fs::write(&tmp_sums, sums::encode(shard.data(), hash))
                .and_then(|()| fs::rename(&tmp_sums, &sums_path));
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp_sums);
                tracing::warn!(shard = %path.display(), "chunk sums not written: {e}");
            }
        }
        let write = || -> std::io::Result<()> {
            // Large shards bypass the page cache (O_DIRECT, padded to whole pages): the copy
            // into the cache is the node's largest CPU cost on the write path, and the bytes
            // are not read back soon. Small shards are written plainly, without padding.
            let direct = if len >= DIRECT_MIN {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&tmp)
                    .ok()
            } else {
                None
            };
            let (mut f, bytes) = match direct {
                Some(f) => (f, shard.all()),
                None => (
                    OpenOptions::new().write(true).create_new(true).open(&tmp)?,
                    &shard.all()[..HEADER_LEN + len],
                ),
            };
            f.write_all(bytes)?;
            f.sync_data()?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(NodeError::io(&tmp, e));
        }
        let existed = path.exists();
        fs::rename(&tmp, &path).map_err(|e| NodeError::io(&path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| NodeError::io(dir, e))?;
        if !existed {
            self.used.fetch_add(need, Ordering::Relaxed);
            self.shards.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
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
        let outside = |size: usize| {
            NodeError::Common(shardfs_common::Error::invalid(format!(
                "range {off}+{len} outside a shard of {size} bytes"
            )))
        };
        let whole = || {
            let (hash, data) = self.get(block, index)?;
            match off.checked_add(len) {
                Some(end) if end <= data.len() => Ok((hash, data.slice(off..end))),
                _ => Err(outside(data.len())),
            }
        };
        let Ok(f) = File::open(&path) else {
            return whole();
        };
        let mut head = [0u8; HEADER_LEN];
        if f.read_exact_at(&mut head, 0).is_err()
            || &head[..4] != MAGIC
            || head[4] != FORMAT_VERSION
        {
            return whole();
        }
        let size = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes")) as usize;
        let hash: [u8; 32] = head[16..48].try_into().expect("32 bytes");
        if off.checked_add(len).is_none_or(|end| end > size) {
            return Err(outside(size));
        }
        let sums = fs::read(sums_path(&path))
            .ok()
            .and_then(|raw| sums::parse(&raw))
            .filter(|s| s.len == size && s.hash == hash);
        let Some(sums) = sums else {
            return whole();
        };
        let (a, b) = sums.span(off, len);
        let mut buf = vec![0u8; b - a];
        if f.read_exact_at(&mut buf, (HEADER_LEN + a) as u64).is_err() || !sums.verify(a, &buf) {
            tracing::warn!(shard = %path.display(), off, len, "chunk does not match its sum; verifying the whole shard");
            return whole();
        }
        Ok((hash, bytes::Bytes::from(buf).slice(off - a..off - a + len)))
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
}
