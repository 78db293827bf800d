//! The async core of the client: every filesystem operation as an `async fn` returning
//! `Result<_, Error>`. The FUSE adapter ([`crate::fuse`]) only translates requests and replies.
//!
//! Files open on this mount keep a [`FileState`]: the block map read at open (close-to-open
//! consistency), blocks being written (`dirty`, the whole current content of each touched
//! block), blocks being uploaded (`inflight`), and uploaded blocks not yet committed
//! (`pending`). A block is uploaded as soon as all of it has been written (sequential writes
//! stream out while the application keeps writing) or when too much is dirty; flush/fsync/close
//! uploads the rest, waits, and commits the new block list, size and mtime to the master in one
//! request. Reads see this mount's own writes at once; other mounts see them once closed.

use crate::blocks::{BlockConfig, BlockStore};
use crate::master::{unexpected, MasterClient};
use crate::pieces::{self, cut_slot, PieceJob, PIECE_MAX};
use shardfs_common::ec::{Codec, EcParams};
use shardfs_common::extent::{self, Sparse, MAX_EXTENTS};
use shardfs_common::locks::LockTable;
use shardfs_common::proto::{
    conflicted_name, Attr, BlockMeta, ClusterInfo, DirEntry, FileKind, FsStats, MasterRequest,
    MasterResponse, NewSlot, SetAttr, Slot, Timespec, ACCESS_READ, ACCESS_WRITE,
};
use shardfs_common::{Error, Ino, Result};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, warn};

#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub master: SocketAddr,
    /// What this mount shows the master and the nodes.
    pub credential: Arc<shardfs_common::pki::Credential>,
    /// Text files up to this size are merged when changed on two mounts at once.
    pub merge_max_bytes: u64,
    /// Where changes made while the master is unreachable wait (None: no offline writes),
    /// and how many bytes they may take.
    pub journal_dir: Option<std::path::PathBuf>,
    pub journal_bytes: u64,
    /// Bound on every operation that needs the master.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Decoded blocks kept in memory.
    pub cache_bytes: usize,
    /// Blocks fetched ahead of a sequential reader.
    pub readahead_blocks: usize,
    /// Blocks uploading at once (the write pipeline's depth).
    pub upload_window: usize,
    /// Dirty bytes per file before they are pushed out without waiting for a flush.
    pub dirty_limit: usize,
    /// Wait this long for the first k shards before asking the parity nodes too.
    pub hedge_delay: Duration,
    pub shard_timeout: Duration,
    /// How long attributes learnt from the master are trusted (as the kernel's attribute TTL).
    pub attr_ttl: Duration,
}

/// A file's attributes and block map as this mount read them.
pub(crate) type ReadBase = (Attr, Vec<Slot>);

pub struct Core {
    pub(crate) cfg: CoreConfig,
    pub(crate) master: Arc<MasterClient>,
    blocks: Arc<BlockStore>,
    cluster: ClusterInfo,
    files: Mutex<HashMap<Ino, Arc<OpenFile>>>,
    /// Attributes from the master's answers (including the parents a change touched), so the
    /// kernel's re-validation after a create or unlink does not cost a round trip.
    attrs: Mutex<HashMap<Ino, (Attr, Instant)>>,
    /// Extended attributes read from the master (None: the file has none of that name), for
    /// the attribute TTL and until a change to the inode is heard of. The kernel asks for
    /// `security.capability` before every write; this answers it without a round trip.
    xattrs: Mutex<lru::LruCache<Ino, XattrCache>>,
    /// The code new blocks of a file are stored with, as the master last said (its storage
    /// policy; absent: the cluster's). The master accepts the cluster's code for any file and
    /// rewrites such blocks later, so a forgotten entry costs a rewrite, never a refusal.
    codes: Mutex<lru::LruCache<Ino, EcParams>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    uploads: Arc<Semaphore>,
    /// Orders this mount's commits (see `MasterRequest::Commit::seq`).
    commit_seq: AtomicU64,
    /// This mount's session with the master (0 until opened), see [`crate::session`].
    pub(crate) session: AtomicU64,
    /// Advisory locks this mount holds, to claim them again after a master restart.
    pub(crate) locks: Mutex<LockTable>,
    pub(crate) rt: tokio::runtime::Handle,
    /// Tells the kernel to drop cached pages, attributes and names (set once mounted).
    notifier: std::sync::OnceLock<fuser::Notifier>,
    /// The last name each inode was looked up or created under.
    names: Mutex<HashMap<Ino, (Ino, Vec<u8>)>>,
    /// Names looked up recently (any kind), to answer lookups while the master is away.
    dentries: Mutex<HashMap<(Ino, Vec<u8>), Ino>>,
    /// The master did not answer lately: serve from caches without waiting for it.
    pub(crate) offline: std::sync::atomic::AtomicBool,
    /// What this mount last read under each name (inode, attributes at open, block map): the
    /// base of an editor's save that renames a new file over the name.
    read_bases: Mutex<HashMap<(Ino, Vec<u8>), ReadBase>>,
}

#[derive(Clone)]
enum Handle {
    /// An open file and the number of the last local change made through this handle (see
    /// `FileState::changes`): a close publishes the file only if this handle changed it since
    /// its last publication, or it is the file's last handle.
    File(Arc<OpenFile>, Arc<HandleState>),
    Dir(Arc<Mutex<Listing>>),
}

/// The read-only attribute that shows a file's merge history.
pub const HISTORY_XATTR: &[u8] = b"user.shardfs.history";
/// Storage policies (`user.shardfs.policy`, `.policy.apply`, `.policy.pending`): answered by
/// the master.
pub const POLICY_XATTR: &[u8] = b"user.shardfs.policy";

/// What a file handle did: the number of its last local change (see `FileState::changes`) and
/// the processes that changed the file through it.
#[derive(Default)]
struct HandleState {
    touched: AtomicU64,
    /// Process ids of the writers (0: unknown); a few at most.
    writers: Mutex<Vec<u32>>,
}

impl HandleState {
    /// Thread `pid` changed the file through this handle.
    fn wrote(&self, pid: u32) {
        let mut w = self.writers.lock().expect("writers lock");
        if !w.contains(&pid) {
            match w.len() < 8 {
                true => w.push(pid),
                false => w[0] = 0,
            }
        }
    }
}

/// The thread group (process) of thread `pid`, if it still runs.
fn process_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// An open directory: a window of its entries in name order. Entry `i` (0-based, in the order
/// this handle lists them) has offset `i + 3` (1 and 2 are "." and ".."). Listing continues
/// after the last name fetched, so a huge directory streams through a bounded window; a seek
/// back before the window lists again from the start.
struct Listing {
    ino: Ino,
    /// Index of `entries[0]` in the listing.
    first: usize,
    entries: std::collections::VecDeque<DirEntry>,
    more: bool,
}

/// The extended attributes of one inode this mount read, by name, with when.
type XattrCache = HashMap<Vec<u8>, (Option<Vec<u8>>, Instant)>;

pub(crate) struct OpenFile {
    pub(crate) ino: Ino,
    st: Mutex<FileState>,
    changed: Notify,
    opens: AtomicUsize,
    /// How many times this mount opened the file at the master (`Open` or `Create` on its
    /// session) while this entry stood; its `Close` names the count.
    held: AtomicU32,
}

struct FileState {
    attr: Attr,
    slots: BTreeMap<u64, Slot>,
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Byte ranges of each dirty block written since it became dirty (merged, sorted).
    written: BTreeMap<u64, Vec<(usize, usize)>>,
    dirty_bytes: usize,
    /// Small writes into blocks the cluster holds, kept apart instead of merged into a copy
    /// of the whole block (see [`crate::pieces`]); a slot is in `dirty` or here, never both.
    sparse: BTreeMap<u64, SparseSlot>,
    /// Pieces stored since the last commit; the next commit names them all, so the master
    /// also collects those whose bytes were overwritten before it saw them.
    landed_pieces: Vec<BlockMeta>,
    /// Raised by every truncate: a piece taken before it carries bytes that are gone.
    epoch: u64,
    inflight: BTreeMap<u64, (u64, Arc<Vec<u8>>)>,
    pending: BTreeMap<u64, (u64, Slot)>,
    /// Uploaded blocks replaced by a newer upload of the same index before being committed.
    /// They are committed too (just before their replacement), so the master knows them and
    /// collects them; otherwise their shards would stay on the nodes, unknown to anyone.
    superseded: Vec<(u64, Slot)>,
    running: usize,
    seq: u64,
    error: Option<String>,
    meta_dirty: bool,
    next_read: u64,
    /// The content version this mount's changes start from (see `Attr::version`), and its
    /// size (`slots` holds its blocks until the next commit).
    base: u64,
    base_size: u64,
    base_slots: Vec<Slot>,
    /// The content cannot be merged (not UTF-8, or merging is off for the file).
    no_merge: bool,
    /// What the last commit had to do about changes made elsewhere (for the replay log).
    outcome: Option<String>,
    /// The smallest size a truncate of the open file set since the last commit.
    cut: Option<u64>,
    /// The current content is in the offline journal (nothing written since).
    journaled: bool,
    /// A flush of the file is under way (flushes of one file take turns).
    flushing: bool,
    /// The content is an offline change being replayed (merges say so in the history).
    replay: bool,
    /// Local changes made so far (writes, truncates), and how many of them the master has
    /// (committed or kept as a copy). A handle whose changes are all published does not
    /// commit at close: it would publish another handle's half-done edit (a truncate before
    /// the rewrite), which a merge would take for deleting every line.
    changes: u64,
    published: u64,
}

/// The small writes of one slot not yet stored.
#[derive(Default)]
struct SparseSlot {
    data: Sparse,
    /// Raised by every write into it.
    gen: u64,
    /// Being stored: the generation taken and how many pieces carry it.
    taken: Option<(u64, u32)>,
}

/// This task's turn to flush a file; the next waiting flush goes on when it is dropped.
struct FlushTurn<'a>(&'a OpenFile);

impl Drop for FlushTurn<'_> {
    fn drop(&mut self) {
        self.0.st.lock().expect("file lock").flushing = false;
        self.0.changed.notify_waiters();
    }
}

impl OpenFile {
    /// Wait for the file's flushes before this one (two flushes merging at once would each
    /// replace the content with their own merge).
    async fn flush_turn(&self) -> FlushTurn<'_> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.st.lock().expect("file lock");
                if !st.flushing {
                    st.flushing = true;
                    return FlushTurn(self);
                }
            }
            notified.await;
        }
    }

    /// Wait until no upload of this file is running.
    async fn uploads_settled(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.st.lock().expect("file lock").running == 0 {
                break;
            }
            notified.await;
        }
    }

    /// The base (attributes with the base's size and version), its block map, and the
    /// current size: what a journal entry records.
    pub(crate) fn journal_view(&self) -> (Attr, Vec<Slot>, u64) {
        let st = self.st.lock().expect("file lock");
        let mut base = st.attr.clone();
        base.size = st.base_size;
        base.version = st.base;
        (base, st.base_slots.clone(), st.attr.size)
    }

    /// The content is safe in the journal: no error to report, data kept in memory.
    pub(crate) fn journaled(&self) {
        let mut st = self.st.lock().expect("file lock");
        st.error = None;
        st.journaled = true;
    }
}

impl FileState {
    /// Make `data` the whole content, in one step (nobody sees it half replaced): every block
    /// dirty and fully written, the stored ones cut away at the next commit.
    fn replace_content(&mut self, data: &[u8], bs: u64) {
        self.truncate(0, bs);
        for (i, chunk) in data.chunks(bs as usize).enumerate() {
            self.dirty.insert(i as u64, chunk.to_vec());
            self.written.insert(i as u64, vec![(0, chunk.len())]);
            self.dirty_bytes += chunk.len();
        }
        self.attr.size = data.len() as u64;
        self.attr.mtime = Timespec::now();
        self.cut = Some(0);
        self.meta_dirty = true;
    }

    /// Start over from `attr` and `slots`, keeping count of uploads still running (they
    /// finish into this state and must be waited for).
    fn reset(&mut self, attr: Attr, slots: Vec<Slot>) {
        let (running, changes, published) = (self.running, self.changes, self.published);
        let (flushing, replay) = (self.flushing, self.replay);
        *self = FileState::new(attr, slots);
        self.running = running;
        (self.flushing, self.replay) = (flushing, replay);
        (self.changes, self.published) = (changes, published);
    }

    /// Count a local change; its number.
    fn touch(&mut self) -> u64 {
        self.changes += 1;
        self.changes
    }

    fn new(attr: Attr, slots: Vec<Slot>) -> Self {
        FileState {
            base: attr.version,
            base_size: attr.size,
            base_slots: slots.clone(),
            no_merge: false,
            outcome: None,
            cut: None,
            journaled: false,
            flushing: false,
            replay: false,
            changes: 0,
            published: 0,
            attr,
            slots: slots.into_iter().map(|s| (s.index, s)).collect(),
            dirty: BTreeMap::new(),
            written: BTreeMap::new(),
            dirty_bytes: 0,
            sparse: BTreeMap::new(),
            landed_pieces: Vec::new(),
            epoch: 0,
            inflight: BTreeMap::new(),
            pending: BTreeMap::new(),
            superseded: Vec::new(),
            running: 0,
            seq: 0,
            error: None,
            meta_dirty: false,
            next_read: 0,
        }
    }

    fn has_local_changes(&self) -> bool {
        self.meta_dirty
            || !self.dirty.is_empty()
            || !self.sparse.is_empty()
            || !self.inflight.is_empty()
            || !self.pending.is_empty()
            || !self.superseded.is_empty()
            || self.running > 0
    }

    /// Uploaded content for slot `idx` (upload number `seq`): the slot to commit, unless a
    /// newer upload of it landed first.
    fn landed(&mut self, idx: u64, seq: u64, slot: Slot) {
        let old = match self.pending.get(&idx) {
            Some((p, _)) if *p > seq => Some((seq, slot)),
            _ => self.pending.insert(idx, (seq, slot)),
        };
        // Committed just before its replacement, so the master knows (and collects) its
        // block; its pieces need not be: every commit names the pieces stored since the last.
        if let Some((seq, mut s)) = old.filter(|(_, s)| s.block.is_some()) {
            s.extents.clear();
            s.pieces.clear();
            self.superseded.push((seq, s));
        }
    }

    /// Pack the small writes not being stored yet into pieces: (upload number, epoch, job).
    fn take_sparse(&mut self) -> Vec<(u64, u64, PieceJob)> {
        let ready = self
            .sparse
            .iter()
            .filter(|(_, sp)| sp.taken.is_none() && !sp.data.is_empty())
            .map(|(i, sp)| (*i, &sp.data));
        let jobs = pieces::pack(ready, PIECE_MAX);
        // One upload number for all pieces of this take: they carry disjoint bytes and are
        // laid in whatever order they land (a later-numbered sibling must not hide one).
        self.seq += 1;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            for p in &job.parts {
                let sp = self.sparse.get_mut(&p.idx).expect("packed from here");
                sp.taken = Some(match sp.taken {
                    Some((g, n)) => (g, n + 1),
                    None => (sp.gen, 1),
                });
            }
            self.running += 1;
            out.push((self.seq, self.epoch, job));
        }
        out
    }

    /// A piece carrying slot `idx`'s small writes was stored (`stored`) or not: once the
    /// last such piece is back, the buffer goes if nothing was written into it meanwhile.
    fn piece_back(&mut self, idx: u64, stored: bool) {
        let Some(sp) = self.sparse.get_mut(&idx) else {
            return;
        };
        let Some((g, n)) = sp.taken else {
            return;
        };
        if n > 1 {
            sp.taken = Some((g, n - 1));
            return;
        }
        sp.taken = None;
        if stored && g == sp.gen {
            let sp = self.sparse.remove(&idx).expect("present");
            self.dirty_bytes -= sp.data.bytes();
        }
    }

    /// Make slot `idx`'s small writes part of a whole copy of the block: `stored` (its
    /// current content in the cluster) with the writes laid over it.
    fn sparse_to_dirty(&mut self, idx: u64, stored: Option<Arc<Vec<u8>>>, bs: u64) {
        if self.dirty.contains_key(&idx) {
            return;
        }
        let sp = self.sparse.remove(&idx).unwrap_or_default();
        let mut v = Vec::with_capacity(bs as usize);
        if let Some(b) = stored {
            v.extend_from_slice(&b);
        }
        let end = (sp.data.end() as usize).max(v.len());
        v.resize(end, 0);
        sp.data.apply(0, &mut v);
        self.dirty_bytes = self.dirty_bytes - sp.data.bytes() + v.len();
        let written = sp
            .data
            .ranges()
            .iter()
            .map(|(o, d)| (*o as usize, *o as usize + d.len()))
            .collect();
        self.written.insert(idx, written);
        self.dirty.insert(idx, v);
    }

    /// Move block `idx` from dirty to inflight; returns what to upload.
    fn take_for_upload(&mut self, idx: u64) -> Option<(u64, Arc<Vec<u8>>)> {
        let data = Arc::new(self.dirty.remove(&idx)?);
        self.written.remove(&idx);
        self.dirty_bytes -= data.len();
        self.seq += 1;
        self.inflight.insert(idx, (self.seq, data.clone()));
        self.running += 1;

        Some((self.seq, data))
    }

    /// Forget blocks past a new, smaller size.
    fn truncate(&mut self, size: u64, bs: u64) {
        self.slots.retain(|&i, _| i * bs < size);
        for (&i, s) in self.slots.iter_mut() {
            cut_slot(s, size - i * bs);
        }
        // Uploaded blocks not committed yet: what lies past the new end goes too.
        self.pending.retain(|&i, _| i * bs < size);
        for (&i, (_, s)) in self.pending.iter_mut() {
            cut_slot(s, size - i * bs);
        }
        self.superseded.retain(|(_, s)| s.index * bs < size);
        for (_, s) in self.superseded.iter_mut() {
            cut_slot(s, size - s.index * bs);
        }
        self.epoch += 1;
        for (&i, sp) in self.sparse.iter_mut() {
            if i * bs + sp.data.end() as u64 > size {
                let before = sp.data.bytes();
                sp.data.cut(size.saturating_sub(i * bs).min(bs) as u32);
                self.dirty_bytes -= before - sp.data.bytes();
                sp.gen += 1;
            }
        }
        self.sparse
            .retain(|_, sp| !sp.data.is_empty() || sp.taken.is_some());
        self.inflight.retain(|&i, _| i * bs < size);
        for (&i, (_, d)) in self.inflight.iter_mut() {
            let keep = (size - i * bs) as usize;
            if d.len() > keep {
                *d = Arc::new(d[..keep].to_vec());
            }
        }
        let last = size.div_ceil(bs);
        let cut: Vec<u64> = self.dirty.range(last..).map(|(i, _)| *i).collect();
        for i in cut {
            self.written.remove(&i);
            if let Some(d) = self.dirty.remove(&i) {
                self.dirty_bytes -= d.len();
            }
        }
        if !size.is_multiple_of(bs) {
            if let Some(d) = self.dirty.get_mut(&(size / bs)) {
                let keep = (size % bs) as usize;
                if d.len() > keep {
                    self.dirty_bytes -= d.len() - keep;
                    d.truncate(keep);
                }
            }
        }
        self.attr.size = size;
    }
}

/// Add `[start, end)` to a sorted list of disjoint ranges; true when they cover `[0, full)`.
fn mark_written(ranges: &mut Vec<(usize, usize)>, start: usize, end: usize, full: usize) -> bool {
    ranges.push((start, end));
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    *ranges = merged;
    ranges.len() == 1 && ranges[0].0 == 0 && ranges[0].1 >= full
}

/// At most this many extents in one file (about 5 MiB of slot records to commit or open);
/// past it the most fragmented slots are stored whole again.
const COMMIT_EXTENTS_MAX: usize = 128 << 10;

/// How many bytes of its block a stored slot holds (past them it reads as zeros).
fn content_len(s: &Slot) -> usize {
    let ext = s.extents.last().map_or(0, |e| e.end() as usize);
    (s.base_len() as usize).max(ext)
}

/// Random reads up to this size fetch only the bytes asked for, not the whole block.
const RANGE_READ_MAX: usize = 128 << 10;

/// The bytes of a read: owned, or a range of a block held in memory.
pub enum ReadData {
    Owned(Vec<u8>),
    Slice(Arc<Vec<u8>>, std::ops::Range<usize>),
}

impl std::ops::Deref for ReadData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Owned(v) => v,
            ReadData::Slice(d, r) => &d[r.clone()],
        }
    }
}

/// Where the current content of one block comes from.
enum Source {
    Bytes(Vec<u8>),
    Shared(Arc<Vec<u8>>),
    Stored(Slot),
    Hole,
}

/// One entry of a directory listing as the FUSE layer needs it.
pub struct ListEntry {
    pub offset: i64,
    pub name: Vec<u8>,
    pub attr: Attr,
}

impl Core {
    /// Connect to the master and learn the cluster's parameters.
    ///
    /// # Errors
    /// Fails (within the connect timeout) if the master cannot be reached.
    pub async fn connect(cfg: CoreConfig) -> Result<Arc<Core>> {
        let master = Arc::new(MasterClient::new(
            cfg.master,
            &cfg.credential,
            cfg.connect_timeout,
            cfg.connect_timeout,
        )?);
        let cluster = match master.call(MasterRequest::Cluster).await? {
            MasterResponse::Cluster(c) => c,
            other => return Err(unexpected(other)),
        };
        master.close();
        let master = Arc::new(MasterClient::new(
            cfg.master,
            &cfg.credential,
            cfg.connect_timeout,
            cfg.timeout,
        )?);
        let mut cfg = cfg;
        cfg.journal_dir = cfg
            .journal_dir
            .map(|d| d.join(format!("{:016x}", cluster.cluster_id)));
        let codec = Arc::new(Codec::new(cluster.ec)?);
        let blocks = BlockStore::new(
            master.clone(),
            &cfg.credential,
            codec,
            BlockConfig {
                cache_bytes: cfg.cache_bytes,
                shard_timeout: cfg.shard_timeout,
                hedge_delay: cfg.hedge_delay,
                put_timeout: cfg.timeout,
            },
        )?;
        Ok(Arc::new(Core {
            uploads: Arc::new(Semaphore::new(cfg.upload_window.max(1))),
            cfg,
            master,
            blocks,
            cluster,
            files: Mutex::new(HashMap::new()),
            attrs: Mutex::new(HashMap::new()),
            xattrs: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(4096).expect("non-zero"),
            )),
            codes: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(65_536).expect("non-zero"),
            )),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            commit_seq: AtomicU64::new(1),
            session: AtomicU64::new(0),
            locks: Mutex::new(LockTable::default()),
            rt: tokio::runtime::Handle::current(),
            notifier: std::sync::OnceLock::new(),
            names: Mutex::new(HashMap::new()),
            dentries: Mutex::new(HashMap::new()),
            offline: std::sync::atomic::AtomicBool::new(false),
            read_bases: Mutex::new(HashMap::new()),
        }))
    }

    pub fn cluster(&self) -> &ClusterInfo {
        &self.cluster
    }

    pub fn shutdown(&self) {
        self.blocks.close();
        self.master.close();
    }

    async fn call(&self, req: MasterRequest) -> Result<MasterResponse> {
        self.master.call(req).await
    }

    async fn call_attr(&self, req: MasterRequest) -> Result<Attr> {
        match self.call(req).await? {
            MasterResponse::Attr(a) => {
                self.remember(&a);
                Ok(self.patch(a))
            }
            other => Err(unexpected(other)),
        }
    }

    /// A namespace change: cache what it reports and return the new inode's attributes.
    async fn call_changed(&self, req: MasterRequest) -> Result<Option<Attr>> {
        match self.call(req).await? {
            MasterResponse::Changed {
                attr,
                changed,
                gone,
                code,
            } => {
                if let Some(a) = &attr {
                    self.note_code(a.ino, code);
                }
                {
                    let mut attrs = self.attrs.lock().expect("attrs lock");
                    for ino in gone {
                        attrs.remove(&ino);
                    }
                }
                for a in &changed {
                    self.remember(a);
                }
                Ok(attr.map(|a| self.patch(a)))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn new_inode(&self, req: MasterRequest) -> Result<Attr> {
        self.call_changed(req)
            .await?
            .ok_or_else(|| Error::Protocol("the master did not return the new inode".into()))
    }

    fn remember(&self, a: &Attr) {
        if self.cfg.attr_ttl.is_zero() {
            return;
        }
        let mut attrs = self.attrs.lock().expect("attrs lock");
        if attrs.len() >= 16_384 {
            // Bounded: drop what expired, and everything if that is not enough.
            let ttl = self.cfg.attr_ttl;
            attrs.retain(|_, (_, t)| t.elapsed() < ttl);
            if attrs.len() >= 12_288 {
                attrs.clear();
            }
        }
        attrs.insert(a.ino, (a.clone(), Instant::now()));
    }

    fn cached_attr(&self, ino: Ino) -> Option<Attr> {
        let attrs = self.attrs.lock().expect("attrs lock");
        attrs
            .get(&ino)
            .filter(|(_, t)| t.elapsed() < self.cfg.attr_ttl)
            .map(|(a, _)| a.clone())
    }

    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    /// Drop the kernel's cached pages and attributes of `ino` (from a task of its own: the
    /// kernel may need a FUSE request answered before the invalidation completes).
    pub(crate) fn invalidate(&self, ino: Ino) {
        self.attrs.lock().expect("attrs lock").remove(&ino);
        self.xattrs.lock().expect("xattrs lock").pop(&ino);
        if let Some(n) = self.notifier.get().cloned() {
            self.rt.spawn_blocking(move || {
                if let Err(e) = n.inval_inode(ino, 0, 0) {
                    debug!(ino, "kernel cache invalidation: {e}");
                }
            });
        }
    }

    /// Forget every attribute this mount caches (the change log was lost).
    pub(crate) fn forget_cached(&self) {
        self.attrs.lock().expect("attrs lock").clear();
        self.xattrs.lock().expect("xattrs lock").clear();
    }

    /// Drop the kernel's cached entry `parent/name`.
    pub(crate) fn invalidate_entry(&self, parent: Ino, name: Vec<u8>) {
        self.attrs.lock().expect("attrs lock").remove(&parent);
        if let Some(n) = self.notifier.get().cloned() {
            self.rt.spawn_blocking(move || {
                let name = std::ffi::OsStr::from_bytes(&name);
                if let Err(e) = n.inval_entry(parent, name) {
                    debug!(parent, "kernel entry invalidation: {e}");
                }
            });
        }
    }

    /// Inodes this mount has open (claimed again when the session is re-opened).
    /// The files this mount has open, to claim on a new session: each then counts one open
    /// at the master, as the master counts them.
    pub(crate) fn open_inos(&self) -> Vec<Ino> {
        let files = self.files.lock().expect("files lock");
        for of in files.values() {
            of.held.store(1, Ordering::SeqCst);
        }
        files.keys().copied().collect()
    }

    fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.files.lock().expect("files lock").get(&ino).cloned()
    }

    /// Overlay this mount's unflushed size and mtime on attributes from the master.
    fn patch(&self, mut a: Attr) -> Attr {
        if let Some(of) = self.open_file(a.ino) {
            let mut st = of.st.lock().expect("file lock");
            if st.has_local_changes() {
                a.size = st.attr.size;
                a.mtime = st.attr.mtime;
            }
            st.attr = a.clone();
        }
        a
    }

    pub async fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > shardfs_common::proto::NAME_MAX {
            return Err(Error::fs(
                shardfs_common::ErrorCode::NameTooLong,
                "file name longer than 255 bytes",
            ));
        }
        let key = (parent, name.to_vec());
        if self.is_offline() {
            if let Some(ino) = self
                .dentries
                .lock()
                .expect("dentries lock")
                .get(&key)
                .copied()
            {
                if let Some(a) = self.stale_attr(ino) {
                    return Ok(a);
                }
            }
        }
        let a = match self
            .call_attr(MasterRequest::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await
        {
            Ok(a) => a,
            Err(e) => {
                let known = self
                    .dentries
                    .lock()
                    .expect("dentries lock")
                    .get(&key)
                    .copied();
                return match known {
                    Some(ino) => self.offline_attr(ino, e),
                    None => Err(e),
                };
            }
        };
        {
            let mut d = self.dentries.lock().expect("dentries lock");
            if d.len() >= 65_536 {
                d.clear();
            }
            d.insert(key, a.ino);
        }
        if a.kind == FileKind::File {
            self.name_of(a.ino, parent, name);
        }
        Ok(a)
    }

    /// The last attributes seen for `ino`, however old (for working offline).
    pub(crate) fn stale_attr(&self, ino: Ino) -> Option<Attr> {
        if let Some(of) = self.open_file(ino) {
            return Some(of.st.lock().expect("file lock").attr.clone());
        }
        self.attrs
            .lock()
            .expect("attrs lock")
            .get(&ino)
            .map(|(a, _)| a.clone())
    }

    /// What this mount last read of `ino` (attributes and block map), if it still knows.
    pub(crate) fn known_read(&self, ino: Ino) -> Option<ReadBase> {
        let key = self.names.lock().expect("names lock").get(&ino).cloned()?;
        let b = self
            .read_bases
            .lock()
            .expect("bases lock")
            .get(&key)
            .cloned()?;
        (b.0.ino == ino).then_some(b)
    }

    pub(crate) fn name_of_ino(&self, ino: Ino) -> Option<(Ino, Vec<u8>)> {
        self.names.lock().expect("names lock").get(&ino).cloned()
    }

    /// Commit `content` as the new content of `ino`, made from `base` (a replayed offline
    /// change): merged or kept as a conflicted copy if the file changed meanwhile.
    pub(crate) async fn replay_into(
        &self,
        ino: Ino,
        base: Attr,
        base_slots: Vec<Slot>,
        content: &[u8],
    ) -> Result<String> {
        let of = self.snapshot(ino, base, base_slots);
        {
            let mut st = of.st.lock().expect("file lock");
            st.replace_content(content, self.cluster.block_size);
            st.replay = true;
        }
        self.flush_file(&of).await?;
        let outcome = of.st.lock().expect("file lock").outcome.take();
        Ok(outcome.unwrap_or_else(|| "committed".into()))
    }

    /// Tell the master how a replayed offline change ended (for `shardfs status` and the
    /// file's history). Best effort: the mount's log says it too.
    pub(crate) async fn report_replay(&self, ino: Ino, outcome: &str) {
        let req = MasterRequest::Replayed {
            ino,
            session: self.session.load(Ordering::Relaxed),
            outcome: outcome.to_string(),
        };
        if let Err(e) = self.call(req).await {
            debug!(ino, "could not report a replay to the master: {e}");
        }
    }

    /// Have the master merge `mine` (an edit of `base`) with version `current` of `ino`
    /// (see `MasterRequest::Merge`): the merged text, or None if the file moved past
    /// `current` meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn merge_remote(
        &self,
        ino: Ino,
        base: Option<u64>,
        base_text: Option<Vec<u8>>,
        current: u64,
        current_text: Vec<u8>,
        mine: Vec<u8>,
        replay: bool,
    ) -> Result<Option<String>> {
        let req = MasterRequest::Merge {
            ino,
            session: self.session.load(Ordering::Relaxed),
            base,
            base_text,
            current,
            current_text,
            mine,
            replay,
        };
        match self.call(req).await? {
            MasterResponse::Merged { text } => String::from_utf8(text)
                .map(Some)
                .map_err(|_| Error::Protocol("the master's merge is not UTF-8".into())),
            MasterResponse::Stale { .. } => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// After a replay: an open file of this mount shows the committed content.
    pub(crate) async fn offline_replayed(&self, ino: Ino) {
        if let Some(of) = self.open_file(ino) {
            if let Ok((attr, slots)) = self.fetch_map(ino, true, 0).await {
                // Opened offline, so the master did not count it until now.
                of.held.fetch_add(1, Ordering::SeqCst);
                of.st.lock().expect("file lock").reset(attr, slots);
            }
        }
        self.invalidate(ino);
    }

    fn name_of(&self, ino: Ino, parent: Ino, name: &[u8]) {
        let mut names = self.names.lock().expect("names lock");
        if names.len() >= 65_536 {
            names.clear();
        }
        names.insert(ino, (parent, name.to_vec()));
    }

    /// Remember what this mount read under the name of `attr.ino`.
    fn remember_read(&self, attr: &Attr, slots: &[Slot]) {
        let Some(key) = self
            .names
            .lock()
            .expect("names lock")
            .get(&attr.ino)
            .cloned()
        else {
            return;
        };
        let mut b = self.read_bases.lock().expect("bases lock");
        if b.len() >= 16_384 {
            b.clear();
        }
        b.insert(key, (attr.clone(), slots.to_vec()));
    }

    /// An editor's save: `parent/name` (a new file) is about to replace `new_parent/new_name`.
    /// If the replaced file changed elsewhere since this mount read it, merge the saved text
    /// with it first (three-way, from what this mount read), or, for content that cannot be
    /// merged, save under a conflicted-copy name instead. Returns the name to rename to.
    async fn merge_before_replace(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
    ) -> Result<Vec<u8>> {
        let key = (new_parent, new_name.to_vec());
        let Some((base_attr, base_slots)) = self
            .read_bases
            .lock()
            .expect("bases lock")
            .get(&key)
            .cloned()
        else {
            return Ok(new_name.to_vec());
        };
        let (Ok(src), Ok(cur)) = (
            self.call_attr(MasterRequest::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await,
            self.call_attr(MasterRequest::Lookup {
                parent: new_parent,
                name: new_name.to_vec(),
            })
            .await,
        ) else {
            return Ok(new_name.to_vec());
        };
        if src.kind != FileKind::File
            || cur.kind != FileKind::File
            || (cur.ino == base_attr.ino && cur.version == base_attr.version)
            || src.ino == cur.ino
        {
            return Ok(new_name.to_vec());
        }
        let (src_attr, src_slots) = self.fetch_map(src.ino, false, 0).await?;
        let limit = self.cfg.merge_max_bytes;
        let mut merged = None;
        if src_attr.size <= limit && base_attr.size <= limit {
            let ss = src_attr.size;
            let mine = self
                .read_all(self.snapshot(src.ino, src_attr, src_slots), ss)
                .await?;
            // The version read, if it is a version of the file there now (the master may
            // know it); its text, if it can still be read.
            let base_version = (base_attr.ino == cur.ino).then_some(base_attr.version);
            let bs = base_attr.size;
            let base = self
                .read_all(self.snapshot(base_attr.ino, base_attr, base_slots), bs)
                .await
                .ok()
                .filter(|b| std::str::from_utf8(b).is_ok());
            for _ in 0..3 {
                let (cur_attr, cur_slots) = self.fetch_map(cur.ino, false, 0).await?;
                if cur_attr.size > limit || std::str::from_utf8(&mine).is_err() {
                    break;
                }
                let cs = cur_attr.size;
                let theirs = self
                    .read_all(self.snapshot(cur.ino, cur_attr.clone(), cur_slots), cs)
                    .await?;
                if std::str::from_utf8(&theirs).is_err() {
                    break;
                }
                let r = self
                    .merge_remote(
                        cur.ino,
                        base_version,
                        base.clone(),
                        cur_attr.version,
                        theirs,
                        mine.clone(),
                        false,
                    )
                    .await;
                match r {
                    Ok(Some(text)) => {
                        merged = Some(text);
                        break;
                    }
                    Ok(None) => continue,
                    Err(e) if crate::offline::unreachable(&e) => return Err(e),
                    Err(e) => {
                        warn!(name = %String::from_utf8_lossy(new_name), "the master could not merge: {e}");
                        break;
                    }
                }
            }
        }
        let Some(merged) = merged else {
            // Not mergeable: the save keeps its own name beside the other change.
            let copy = conflicted_name(
                new_name,
                &crate::session::host_name(),
                Timespec::now().secs,
                1,
            );
            warn!(name = %String::from_utf8_lossy(new_name), copy = %String::from_utf8_lossy(&copy),
                "the file changed elsewhere since it was read; the save is kept as a conflicted copy");
            return Ok(copy);
        };
        tracing::info!(name = %String::from_utf8_lossy(new_name), merged = merged.len(),
            "merged an editor's save with changes made elsewhere");
        let fh = self.open(src.ino, ACCESS_READ | ACCESS_WRITE).await?;
        let now = Timespec::now();
        let r = async {
            self.setattr(
                src.ino,
                Some(fh),
                SetAttr {
                    size: Some(0),
                    now,
                    ..SetAttr::default()
                },
            )
            .await?;
            self.write(fh, 0, merged.as_bytes(), 0).await?;
            Ok::<(), Error>(())
        }
        .await;
        let released = self.release(fh).await;
        r.and(released)?;
        Ok(new_name.to_vec())
    }

    pub async fn getattr(&self, ino: Ino) -> Result<Attr> {
        if let Some(of) = self.open_file(ino) {
            let st = of.st.lock().expect("file lock");
            if st.has_local_changes() {
                return Ok(st.attr.clone());
            }
        }
        if let Some(a) = self.cached_attr(ino) {
            return Ok(self.patch(a));
        }
        if self.is_offline() {
            if let Some(a) = self.stale_attr(ino) {
                return Ok(a);
            }
        }
        match self.call_attr(MasterRequest::GetAttr { ino }).await {
            Ok(a) => Ok(a),
            Err(e) => self.offline_attr(ino, e),
        }
    }

    /// Change attributes; `fh`: the open handle the change came through, if any.
    pub async fn setattr(&self, ino: Ino, fh: Option<u64>, mut set: SetAttr) -> Result<Attr> {
        self.xattrs.lock().expect("xattrs lock").pop(&ino);
        let of = self.open_file(ino);
        if let (Some(of), Some(size)) = (&of, set.size) {
            // A file open here changes size locally, like a write: the new size is committed
            // with the content (so a truncate-and-rewrite is one change, merged as one).
            // Uploads under way finish first, so none lands past the new end afterwards.
            of.uploads_settled().await;
            let mut st = of.st.lock().expect("file lock");
            if size < st.attr.size {
                st.cut = Some(st.cut.map_or(size, |c| c.min(size)));
            }
            st.truncate(size, self.cluster.block_size);
            // Data past the new size need not be stored first; if that was all that failed
            // to upload, the file is healthy again.
            if st.dirty.is_empty() && st.running == 0 {
                st.error = None;
            }
            st.meta_dirty = true;
            let change = st.touch();
            if let Some(fh) = fh {
                self.touched(fh, change);
            }
            st.attr.mtime = set.mtime.unwrap_or(set.now);
            st.attr.ctime = set.now;
            set.size = None;
            set.mtime = None;
            if set.mode.is_none() && set.uid.is_none() && set.gid.is_none() && set.atime.is_none() {
                return Ok(st.attr.clone());
            }
        }
        let size = set.size;
        let base = of
            .as_ref()
            .filter(|_| size.is_some())
            .map(|of| of.st.lock().expect("file lock").base);
        let a = match self.call(MasterRequest::SetAttr { ino, set, base }).await? {
            MasterResponse::Attr(a) => {
                self.remember(&a);
                a
            }
            other => return Err(unexpected(other)),
        };
        if let Some(of) = of {
            let mut st = of.st.lock().expect("file lock");
            if let Some(size) = size {
                st.truncate(size, self.cluster.block_size);
            }
            let (local_size, local_mtime) = (st.attr.size, st.attr.mtime);
            st.attr = a.clone();
            if base.is_some_and(|b| a.version == b + 1) {
                // Our own size change on top of our base: the new base. (If someone else
                // changed the file before it, the base stays, and the next commit merges.)
                st.base = a.version;
                st.base_size = a.size;
                st.base_slots = st.slots.values().cloned().collect();
            }
            if st.has_local_changes() {
                st.attr.size = local_size;
                st.attr.mtime = local_mtime;
                return Ok(st.attr.clone());
            }
        }
        Ok(a)
    }

    pub async fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        if name.starts_with(POLICY_XATTR) {
            // The file's code may change: ask the master again at the next open.
            self.codes.lock().expect("codes lock").pop(&ino);
        }
        if name == HISTORY_XATTR {
            return Err(Error::fs(
                shardfs_common::ErrorCode::Permission,
                "the merge history is read-only",
            ));
        }
        let req = MasterRequest::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        };
        let r = self.call_attr(req).await.map(drop);
        // After the answer too: a read racing the change may have cached the old value.
        self.xattrs.lock().expect("xattrs lock").pop(&ino);
        r
    }

    pub async fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if name == HISTORY_XATTR {
            return self.history(ino).await;
        }
        let ttl = self.cfg.attr_ttl;
        let known = self
            .xattrs
            .lock()
            .expect("xattrs lock")
            .get(&ino)
            .and_then(|m| m.get(name))
            .filter(|(_, t)| t.elapsed() < ttl)
            .map(|(v, _)| v.clone());
        match known {
            Some(Some(v)) => return Ok(v),
            Some(None) => {
                return Err(Error::fs(
                    shardfs_common::ErrorCode::NoData,
                    "no such attribute",
                ))
            }
            None => {}
        }
        let req = MasterRequest::GetXattr {
            ino,
            name: name.to_vec(),
        };
        let r = match self.call(req).await {
            Ok(MasterResponse::Xattr(v)) => Ok(v),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        };
        let keep = match &r {
            Ok(v) => Some(Some(v.clone())),
            Err(e) if e.code() == shardfs_common::ErrorCode::NoData => Some(None),
            Err(_) => None,
        };
        if let (Some(v), false) = (keep, ttl.is_zero()) {
            let mut c = self.xattrs.lock().expect("xattrs lock");
            if let Some(m) = c.get_mut(&ino) {
                m.insert(name.to_vec(), (v, Instant::now()));
            } else {
                c.put(ino, HashMap::from([(name.to_vec(), (v, Instant::now()))]));
            }
        }
        r
    }

    /// The file's history of concurrent changes (merges, conflicted copies, replays) as JSON
    /// lines, served as the read-only attribute `user.shardfs.history` (`shardfs history`).
    async fn history(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.call(MasterRequest::History { ino }).await? {
            MasterResponse::History(h) => {
                let mut out = Vec::new();
                for e in h {
                    let line = serde_json::json!({
                        "time": e.time, "version": e.version, "who": e.who, "what": e.what,
                    });
                    out.extend_from_slice(line.to_string().as_bytes());
                    out.push(b'\n');
                }
                Ok(out)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Attribute names, each followed by a NUL, as listxattr(2) returns them.
    pub async fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.call(MasterRequest::ListXattr { ino }).await? {
            MasterResponse::XattrNames(names) => {
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(&n);
                    out.push(0);
                }
                Ok(out)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let req = MasterRequest::RemoveXattr {
            ino,
            name: name.to_vec(),
        };
        let r = self.call_attr(req).await.map(drop);
        // After the answer too: a read racing the change may have cached the old value.
        self.xattrs.lock().expect("xattrs lock").pop(&ino);
        r
    }

    pub async fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.call(MasterRequest::ReadLink { ino }).await? {
            MasterResponse::Link(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> Result<Attr> {
        self.create_inode(parent, name, kind, mode, uid, gid, rdev, 0)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_inode(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        session: u64,
    ) -> Result<Attr> {
        let req = MasterRequest::Create {
            parent,
            name: name.to_vec(),
            kind,
            mode,
            uid,
            gid,
            rdev,
            now: Timespec::now(),
            session,
        };
        self.new_inode(req).await
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let req = MasterRequest::Symlink {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
            uid,
            gid,
            now: Timespec::now(),
        };
        self.new_inode(req).await
    }

    pub async fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.new_inode(MasterRequest::Link {
            ino,
            parent,
            name: name.to_vec(),
            now: Timespec::now(),
        })
        .await
    }

    pub async fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.call_changed(MasterRequest::Unlink {
            parent,
            name: name.to_vec(),
            now: Timespec::now(),
        })
        .await
        .map(drop)
    }

    pub async fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.call_changed(MasterRequest::Rmdir {
            parent,
            name: name.to_vec(),
            now: Timespec::now(),
        })
        .await
        .map(drop)
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        let target = if flags == 0 {
            self.merge_before_replace(parent, name, new_parent, new_name)
                .await?
        } else {
            new_name.to_vec()
        };
        let req = MasterRequest::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: target.clone(),
            flags,
            now: Timespec::now(),
        };
        let moved = self.call_changed(req).await?;
        let _ = moved;
        // The saved file is what this mount now has read under the name.
        if let Ok((attr, slots)) = async {
            let a = self
                .call_attr(MasterRequest::Lookup {
                    parent: new_parent,
                    name: target.clone(),
                })
                .await?;
            self.name_of(a.ino, new_parent, &target);
            self.fetch_map(a.ino, false, 0).await
        }
        .await
        {
            self.remember_read(&attr, &slots);
        }
        Ok(())
    }

    pub async fn statfs(&self) -> Result<FsStats> {
        match self.call(MasterRequest::StatFs).await? {
            MasterResponse::StatFs(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("handles lock").insert(fh, h);
        fh
    }

    fn handle(&self, fh: u64) -> Result<Handle> {
        self.handles
            .lock()
            .expect("handles lock")
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("no open handle {fh}")))
    }

    fn file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        match self.handle(fh)? {
            Handle::File(f, _) => Ok(f),
            Handle::Dir(_) => Err(Error::fs(
                shardfs_common::ErrorCode::IsDir,
                "is a directory",
            )),
        }
    }

    /// Add a local open of `ino` (`held`: the master was told of it on this session).
    fn register_open(&self, ino: Ino, attr: Attr, slots: Vec<Slot>, held: bool) -> Arc<OpenFile> {
        let mut files = self.files.lock().expect("files lock");
        let of = files.entry(ino).or_insert_with(|| {
            Arc::new(OpenFile {
                ino,
                st: Mutex::new(FileState::new(attr.clone(), vec![])),
                changed: Notify::new(),
                opens: AtomicUsize::new(0),
                held: AtomicU32::new(0),
            })
        });
        if held {
            of.held.fetch_add(1, Ordering::SeqCst);
        }
        {
            let mut st = of.st.lock().expect("file lock");
            if !st.has_local_changes() {
                st.reset(attr, slots);
            }
        }
        of.opens.fetch_add(1, Ordering::SeqCst);
        of.clone()
    }

    /// Open a file: fetch its attributes and block map (close-to-open consistency).
    /// `access`: ACCESS_READ and/or ACCESS_WRITE, as the open's flags ask.
    pub async fn open(&self, ino: Ino, access: u8) -> Result<u64> {
        let offline = match self.is_offline() {
            true => self.known_read(ino),
            false => None,
        };
        let ((attr, slots), held) = match offline {
            Some(b) => (b, false),
            None => match self.fetch_map(ino, true, access).await {
                Ok(b) => (b, true),
                Err(e) => (self.offline_open(ino, e)?, false),
            },
        };
        if attr.kind == FileKind::Dir {
            return Err(Error::fs(
                shardfs_common::ErrorCode::IsDir,
                "is a directory",
            ));
        }
        self.remember_read(&attr, &slots);
        let of = self.register_open(ino, attr, slots, held);
        Ok(self.add_handle(Handle::File(of, Default::default())))
    }

    pub async fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, u64)> {
        let session = self.session.load(Ordering::Relaxed);
        let attr = self
            .create_inode(parent, name, FileKind::File, mode, uid, gid, 0, session)
            .await?;
        self.name_of(attr.ino, parent, name);
        let of = self.register_open(attr.ino, attr.clone(), vec![], session != 0);
        Ok((attr, self.add_handle(Handle::File(of, Default::default()))))
    }

    /// True if closing handle `fh` has nothing to publish, so it can be answered at once: the
    /// file has no local changes, or none made through this handle since they were last
    /// published while other handles keep the file open (their close publishes them).
    pub fn is_clean(&self, fh: u64) -> bool {
        match self.handle(fh) {
            Ok(Handle::File(of, h)) => !Self::must_publish(&of, &h, false),
            Ok(Handle::Dir(_)) => true,
            Err(_) => true,
        }
    }

    /// Whether closing a handle of `of` that last changed it at `touched` commits the file;
    /// `released`: the handle is already gone from `opens`.
    fn must_publish(of: &OpenFile, h: &HandleState, released: bool) -> bool {
        let st = of.st.lock().expect("file lock");
        let others = of.opens.load(Ordering::SeqCst) > usize::from(!released);
        st.has_local_changes() && (!others || h.touched.load(Ordering::SeqCst) > st.published)
    }

    /// Note that thread `pid` changes the file through handle `fh` (a truncate).
    pub fn note_writer(&self, fh: u64, pid: u32) {
        if let Ok(Handle::File(_, h)) = self.handle(fh) {
            h.wrote(pid);
        }
    }

    /// Whether a close of `fh` by thread `pid` is a close by a process that changed the file
    /// through it. A process that only inherited the descriptor (a child forked while the
    /// file was open, closing it at exec) must not publish the writer's half-done edit.
    fn closed_by_writer(h: &HandleState, pid: u32) -> bool {
        let writers = h.writers.lock().expect("writers lock").clone();
        if writers.is_empty() || writers.contains(&0) || pid == 0 || writers.contains(&pid) {
            return true;
        }
        let Some(closer) = process_of(pid) else {
            return true;
        };
        writers
            .iter()
            .any(|&w| process_of(w).is_none_or(|p| p == closer))
    }

    /// Release a file handle without waiting for anything if the file has no local changes
    /// at all; false otherwise (use [`Core::release`]).
    pub fn release_if_clean(&self, fh: u64) -> bool {
        let clean = match self.handle(fh) {
            Ok(Handle::File(of, _)) => !of.st.lock().expect("file lock").has_local_changes(),
            _ => true,
        };
        if !clean {
            return false;
        }
        let h = self.handles.lock().expect("handles lock").remove(&fh);
        if let Some(Handle::File(of, _)) = h {
            if of.opens.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.forget_if_closed(&of);
            }
        }
        true
    }

    /// Drop a file nobody has open any more from the open files, unless it has local changes.
    fn forget_if_closed(&self, of: &Arc<OpenFile>) {
        let mut files = self.files.lock().expect("files lock");
        let clean = !of.st.lock().expect("file lock").has_local_changes();
        if clean
            && files.get(&of.ino).is_some_and(|f| Arc::ptr_eq(f, of))
            && of.opens.load(Ordering::SeqCst) == 0
        {
            files.remove(&of.ino);
            self.closed(of.ino, of.held.load(Ordering::SeqCst));
        }
    }

    pub async fn release(&self, fh: u64) -> Result<()> {
        let h = self.handles.lock().expect("handles lock").remove(&fh);
        let Some(Handle::File(of, h)) = h else {
            return Ok(());
        };
        let last = of.opens.fetch_sub(1, Ordering::SeqCst) == 1;
        let r = match Self::must_publish(&of, &h, true) {
            true => self.flush_file(&of).await,
            false => Ok(()),
        };
        if last {
            self.forget_if_closed(&of);
        }
        r
    }

    /// A close of handle `fh` by thread `pid`.
    pub async fn flush(&self, fh: u64, pid: u32) -> Result<()> {
        let Handle::File(of, h) = self.handle(fh)? else {
            return Ok(());
        };
        match Self::must_publish(&of, &h, false) && Self::closed_by_writer(&h, pid) {
            true => self.flush_file(&of).await,
            false => Ok(()),
        }
    }

    /// Record that handle `fh` changed its file (`change`: the change's number).
    fn touched(&self, fh: u64, change: u64) {
        if let Ok(Handle::File(_, h)) = self.handle(fh) {
            h.touched.fetch_max(change, Ordering::SeqCst);
        }
    }

    /// The current content of block `idx` as this mount sees it, ignoring its dirty copy.
    async fn stored_block(&self, of: &OpenFile, idx: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let slot = {
            let st = of.st.lock().expect("file lock");
            if let Some((_, d)) = st.inflight.get(&idx) {
                return Ok(Some(d.clone()));
            }
            st.pending
                .get(&idx)
                .map(|(_, s)| s.clone())
                .or_else(|| st.slots.get(&idx).cloned())
        };
        match slot {
            None => Ok(None),
            Some(s) if !s.extents.is_empty() || s.block.is_none() => {
                let len = content_len(&s).min(self.cluster.block_size as usize);
                Ok(Some(Arc::new(self.slot_bytes(&s, 0, len, false).await?)))
            }
            Some(s) => {
                let b = s.block.as_ref().expect("checked");
                let d = self.blocks.get(b, s.cap).await?;
                if (s.used as usize) < d.len() {
                    Ok(Some(Arc::new(d[..s.used as usize].to_vec())))
                } else {
                    Ok(Some(d))
                }
            }
        }
    }

    /// Bytes `[lo, hi)` of a stored slot: its base block with its extents over it, zeros
    /// where neither has bytes. `random`: a small read not part of a stream, which fetches
    /// just the ranges it needs.
    async fn slot_bytes(&self, s: &Slot, lo: usize, hi: usize, random: bool) -> Result<Vec<u8>> {
        let mut out = vec![0u8; hi - lo];
        let over = extent::within(&s.extents, lo as u32, hi as u32);
        let covered: usize = over.iter().map(|e| e.len as usize).sum();
        let avail = s.base_len() as usize;
        if let (Some(b), true) = (&s.block, covered < hi - lo && lo < avail) {
            let (a, e) = (lo, hi.min(avail));
            let part = match random && e - a <= RANGE_READ_MAX {
                true => self.blocks.get_range(b, s.cap, a, e).await,
                false => None,
            };
            match part {
                Some(p) => out[..e - a].copy_from_slice(&p),
                None => {
                    let d = self.blocks.get(b, s.cap).await?;
                    let e = e.min(d.len());
                    out[..e.saturating_sub(a)].copy_from_slice(&d[a.min(e)..e]);
                }
            }
        }
        // A few ranges are fetched as ranges; many (a stream over a fragmented block) as whole
        // pieces, which the block cache then keeps.
        let ranged = over.len() <= 8;
        let fetches = over.iter().map(|e| async move {
            let (meta, cap) = s.piece(&e.piece).ok_or_else(|| {
                Error::Protocol(format!("slot {}: piece {} not described", s.index, e.piece))
            })?;
            let (a, b) = (e.piece_off as usize, e.piece_off as usize + e.len as usize);
            if b as u64 > meta.len {
                return Err(Error::Protocol(format!(
                    "slot {}: extent past the end of piece {}",
                    s.index, e.piece
                )));
            }
            if ranged {
                if let Some(p) = self.blocks.get_range(meta, *cap, a, b).await {
                    return Ok::<_, Error>((e, p));
                }
            }
            let d = self.blocks.get(meta, *cap).await?;
            Ok((e, d[a..b].to_vec()))
        });
        for r in futures::future::join_all(fetches).await {
            let (e, bytes) = r?;
            let at = e.off as usize - lo;
            out[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(out)
    }

    /// Write through handle `fh` on behalf of thread `pid` (0: unknown).
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8], pid: u32) -> Result<u32> {
        let (of, h) = match self.handle(fh)? {
            Handle::File(of, h) => (of, h),
            Handle::Dir(_) => {
                return Err(Error::fs(
                    shardfs_common::ErrorCode::IsDir,
                    "is a directory",
                ))
            }
        };
        let bs = self.cluster.block_size;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > (1u64 << 50))
        {
            return Err(Error::fs(
                shardfs_common::ErrorCode::TooBig,
                "file too large",
            ));
        }
        if let Some(e) = &of.st.lock().expect("file lock").error {
            return Err(Error::Unavailable(e.clone()));
        }
        h.wrote(pid);
        let mut pos = 0usize;
        let now = Timespec::now();
        while pos < data.len() {
            let off = offset + pos as u64;
            let idx = off / bs;
            let within = (off % bs) as usize;
            let n = (bs as usize - within).min(data.len() - pos);
            let whole = within == 0 && n == bs as usize;
            let sparse = {
                let mut st = of.st.lock().expect("file lock");
                if whole {
                    if let Some(sp) = st.sparse.remove(&idx) {
                        st.dirty_bytes -= sp.data.bytes();
                    }
                }
                // A part of a block the cluster holds (and this mount has no copy of in
                // memory) is kept as a small write, not merged into a fetched copy.
                !whole
                    && !st.dirty.contains_key(&idx)
                    && (st.sparse.contains_key(&idx)
                        || (!st.inflight.contains_key(&idx)
                            && (st.pending.contains_key(&idx) || st.slots.contains_key(&idx))))
            };
            let mut to_upload = Vec::new();
            let mut pieces_out = Vec::new();
            if sparse {
                let convert = {
                    let mut st = of.st.lock().expect("file lock");
                    st.journaled = false;
                    let sp = st.sparse.entry(idx).or_default();
                    let before = sp.data.bytes();
                    sp.data.write(within as u32, &data[pos..pos + n]);
                    sp.gen += 1;
                    let grown = sp.data.bytes() - before;
                    let complete = sp.data.covers(0, bs as u32);
                    // Mostly rewritten in pieces (not one stream from the start): cheaper as
                    // a whole block than as many extents.
                    let convert = !complete
                        && sp.data.bytes() > bs as usize / 2
                        && sp.data.ranges().len() > 1;
                    st.dirty_bytes += grown;
                    Self::note_write(&mut st, &h, off + n as u64, now);
                    if complete {
                        st.sparse_to_dirty(idx, None, bs);
                        to_upload.extend(st.take_for_upload(idx).map(|(s, d)| (idx, s, d)));
                    }
                    convert
                };
                if convert {
                    let stored = self.stored_block(&of, idx).await?;
                    of.st
                        .lock()
                        .expect("file lock")
                        .sparse_to_dirty(idx, stored, bs);
                }
            } else {
                let present = of.st.lock().expect("file lock").dirty.contains_key(&idx);
                if !present {
                    let base = if whole {
                        None
                    } else {
                        self.stored_block(&of, idx).await?
                    };
                    let mut st = of.st.lock().expect("file lock");
                    st.journaled = false;
                    // Small writes made meanwhile are newer than the base.
                    st.sparse_to_dirty(idx, base, bs);
                }
                let mut st = of.st.lock().expect("file lock");
                let Some(buf) = st.dirty.get_mut(&idx) else {
                    continue;
                };
                let before = buf.len();
                if within == buf.len() {
                    // Appending (the sequential case): copy once, no zero-fill.
                    buf.extend_from_slice(&data[pos..pos + n]);
                } else {
                    if buf.len() < within + n {
                        buf.resize(within + n, 0);
                    }
                    buf[within..within + n].copy_from_slice(&data[pos..pos + n]);
                }
                let grown = buf.len() - before;
                st.dirty_bytes += grown;
                Self::note_write(&mut st, &h, off + n as u64, now);
                // A block rewritten end to end (in whatever order the writes came) goes out now.
                if mark_written(
                    st.written.entry(idx).or_default(),
                    within,
                    within + n,
                    bs as usize,
                ) {
                    to_upload.extend(st.take_for_upload(idx).map(|(s, d)| (idx, s, d)));
                }
            }
            {
                let mut st = of.st.lock().expect("file lock");
                if st.dirty_bytes > self.cfg.dirty_limit {
                    let all: Vec<u64> = st.dirty.keys().copied().collect();
                    for i in all {
                        to_upload.extend(st.take_for_upload(i).map(|(s, d)| (i, s, d)));
                    }
                    pieces_out = st.take_sparse();
                }
            }
            for (i, seq, d) in to_upload {
                self.start_upload(&of, i, seq, d).await;
            }
            for (seq, epoch, job) in pieces_out {
                self.start_piece(&of, seq, epoch, job).await;
            }
            pos += n;
        }
        Ok(data.len() as u32)
    }

    /// Record a write ending at `end` in the file's attributes and change count.
    fn note_write(st: &mut FileState, h: &HandleState, end: u64, now: Timespec) {
        st.attr.size = st.attr.size.max(end);
        st.attr.mtime = now;
        st.attr.ctime = now;
        st.meta_dirty = true;
        h.touched.fetch_max(st.touch(), Ordering::SeqCst);
    }

    /// A place in the upload window (which bounds the memory of uploads under way).
    async fn upload_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.uploads
            .clone()
            .acquire_owned()
            .await
            .expect("upload semaphore never closes")
    }

    /// Store one piece of small writes (m + 1 copies) and lay it over the slots it carries.
    async fn start_piece(&self, of: &Arc<OpenFile>, seq: u64, epoch: u64, job: PieceJob) {
        let permit = self.upload_permit().await;
        let (blocks, code) = (self.blocks.clone(), self.code_of(of.ino));
        let of = of.clone();
        tokio::spawn(async move {
            debug!(
                ino = of.ino,
                seq,
                len = job.data.len(),
                slots = job.parts.len(),
                "piece"
            );
            let r = blocks.put_piece(Arc::new(job.data), code).await;
            {
                let mut st = of.st.lock().expect("file lock");
                st.running = st.running.saturating_sub(1);
                match r {
                    // Laid over the slots unless a truncate came since: those bytes are gone
                    // (the master collects the piece, named by the next commit).
                    Ok((meta, cap)) => {
                        let current = st.epoch == epoch;
                        for p in &job.parts {
                            if current {
                                let base = match st.pending.get(&p.idx) {
                                    Some((_, s)) => Some(s.clone()),
                                    None => st.slots.get(&p.idx).cloned(),
                                };
                                let slot = pieces::lay(base, p.idx, p, &meta, cap);
                                // Built on the pending slot: it replaces it (no superseded
                                // copy to commit), unless a newer upload landed first.
                                match st.pending.get(&p.idx) {
                                    Some((q, _)) if *q > seq => {}
                                    _ => {
                                        st.pending.insert(p.idx, (seq, slot));
                                    }
                                }
                            }
                            st.piece_back(p.idx, current);
                        }
                        st.landed_pieces.push(meta);
                    }
                    Err(e) => {
                        warn!(ino = of.ino, "could not store a piece of small writes: {e}");
                        for p in &job.parts {
                            st.piece_back(p.idx, false);
                        }
                        st.error = Some(format!(
                            "could not store small writes of inode {}: {e}",
                            of.ino
                        ));
                    }
                }
            }
            drop(permit);
            of.changed.notify_waiters();
        });
    }

    async fn start_upload(&self, of: &Arc<OpenFile>, idx: u64, seq: u64, data: Arc<Vec<u8>>) {
        let permit = self.upload_permit().await;
        let (blocks, code) = (self.blocks.clone(), self.code_of(of.ino));
        let of = of.clone();
        tokio::spawn(async move {
            debug!(ino = of.ino, block = idx, seq, len = data.len(), "upload");
            let r = blocks.put(data.clone(), code).await;
            {
                let mut st = of.st.lock().expect("file lock");
                st.running = st.running.saturating_sub(1);
                let current = st.inflight.get(&idx).is_some_and(|(s, _)| *s == seq);
                if current {
                    st.inflight.remove(&idx);
                }
                match r {
                    Ok((meta, cap)) => {
                        let slot = Slot::whole(idx, data.len() as u64, meta, cap);
                        st.landed(idx, seq, slot);
                    }
                    Err(e) => {
                        warn!(ino = of.ino, block = idx, "could not store block: {e}");
                        // Keep the data: a later flush tries again.
                        // Only the newest version of a block matters: a failed upload of an
                        // older one is moot once a newer one is on its way.
                        if current {
                            if !st.dirty.contains_key(&idx) {
                                st.dirty_bytes += data.len();
                                st.dirty.insert(idx, data.to_vec());
                            }
                            st.error = Some(format!(
                                "could not store block {idx} of inode {}: {e}",
                                of.ino
                            ));
                        }
                    }
                }
            }
            drop(permit);
            of.changed.notify_waiters();
        });
    }

    /// Slots that hold too many extents (one past [`MAX_EXTENTS`], or so many in the file that
    /// its block map would be large to commit and to open): the most fragmented first.
    fn too_fragmented(&self, of: &OpenFile) -> Vec<u64> {
        let st = of.st.lock().expect("file lock");
        if st.pending.is_empty() && st.sparse.is_empty() && st.dirty.is_empty() {
            // Nothing written here: a reader does not rewrite the file.
            return Vec::new();
        }
        // The file's slots as the commit will leave them: pending ones over committed ones.
        let mut counts: Vec<(usize, u64)> = st
            .slots
            .iter()
            .filter(|(i, _)| !st.pending.contains_key(i))
            .map(|(_, s)| s)
            .chain(st.pending.values().map(|(_, s)| s))
            .filter(|s| !st.dirty.contains_key(&s.index) && !st.inflight.contains_key(&s.index))
            .map(|s| (s.extents.len(), s.index))
            .collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let mut total: usize = counts.iter().map(|c| c.0).sum();
        let mut out = Vec::new();
        for (n, idx) in counts {
            if n <= MAX_EXTENTS && total <= COMMIT_EXTENTS_MAX {
                break;
            }
            out.push(idx);
            total -= n;
        }
        out
    }

    /// Upload everything dirty, wait for it, and commit the new block list to the master.
    async fn flush_file(&self, of: &Arc<OpenFile>) -> Result<()> {
        let _turn = of.flush_turn().await;
        if self.is_offline() && self.cfg.journal_dir.is_some() {
            let done = {
                let st = of.st.lock().expect("file lock");
                !st.has_local_changes() || st.journaled
            };
            if done {
                return Ok(());
            }
            return self.journal_file(of).await;
        }
        // Content kept in the journal waits for its replay, which merges it and then resets
        // this file; flushing it now as well would commit it a second time, over the merge.
        if of.st.lock().expect("file lock").journaled {
            return Ok(());
        }
        for _ in 0..8 {
            let r = match self.flush_once(of).await {
                Err(e)
                    if crate::offline::unreachable(&e)
                        && self.cfg.journal_dir.is_some()
                        && !self.master_answers().await =>
                {
                    self.went_offline(&e);
                    return self.journal_file(of).await;
                }
                r => r?,
            };
            match r {
                None => return Ok(()),
                Some(_) => self.merge_with(of).await?,
            }
        }
        Err(Error::Unavailable(format!(
            "inode {}: the file kept changing elsewhere while merging; try again",
            of.ino
        )))
    }

    /// The whole content of a file as `of` describes it (a small file: the merge limit).
    pub(crate) async fn read_all(&self, of: Arc<OpenFile>, size: u64) -> Result<Vec<u8>> {
        let fh = self.add_handle(Handle::File(of, Default::default()));
        let mut out = Vec::with_capacity(size as usize);
        let r = async {
            while (out.len() as u64) < size {
                let want = (size - out.len() as u64).min(1 << 20) as u32;
                let d = self.read(fh, out.len() as u64, want).await?;
                if d.is_empty() {
                    break;
                }
                out.extend_from_slice(&d);
            }
            Ok::<(), Error>(())
        }
        .await;
        self.handles.lock().expect("handles lock").remove(&fh);
        r.map(|()| out)
    }

    fn snapshot(&self, ino: Ino, attr: Attr, slots: Vec<Slot>) -> Arc<OpenFile> {
        Arc::new(OpenFile {
            ino,
            st: Mutex::new(FileState::new(attr, slots)),
            changed: Notify::new(),
            opens: AtomicUsize::new(0),
            held: AtomicU32::new(0),
        })
    }

    /// Another mount committed since this mount's base: merge this mount's text with the
    /// current content (three-way, from the base) and make the result the local content, to be
    /// committed on top of `current`. Content that cannot be merged is marked so, and the next
    /// commit keeps it as a conflicted copy.
    async fn merge_with(&self, of: &Arc<OpenFile>) -> Result<()> {
        let (base_attr, base_slots, size, changes, replay) = {
            let st = of.st.lock().expect("file lock");
            let mut a = st.attr.clone();
            a.size = st.base_size;
            a.version = st.base;
            (
                a,
                st.base_slots.clone(),
                st.attr.size,
                st.changes,
                st.replay,
            )
        };
        let off = matches!(
            self.getxattr(of.ino, b"user.shardfs.merge")
                .await
                .as_deref(),
            Ok(b"off")
        );
        let (theirs_attr, theirs_slots) = self.fetch_map(of.ino, false, 0).await?;
        let limit = self.cfg.merge_max_bytes;
        let mut merged = None;
        if !off && theirs_attr.size <= limit && size <= limit {
            let mine = self.read_all(of.clone(), size).await?;
            let theirs = self
                .read_all(
                    self.snapshot(of.ino, theirs_attr.clone(), theirs_slots.clone()),
                    theirs_attr.size,
                )
                .await?;
            // The base may be gone from the cluster (long offline): the master may know it.
            let (base_version, base_size) = (base_attr.version, base_attr.size);
            let base = match base_size <= limit {
                true => self
                    .read_all(self.snapshot(of.ino, base_attr, base_slots), base_size)
                    .await
                    .ok()
                    .filter(|b| std::str::from_utf8(b).is_ok()),
                false => None,
            };
            if std::str::from_utf8(&mine).is_ok() && std::str::from_utf8(&theirs).is_ok() {
                let r = self
                    .merge_remote(
                        of.ino,
                        Some(base_version),
                        base,
                        theirs_attr.version,
                        theirs,
                        mine,
                        replay,
                    )
                    .await;
                match r {
                    Ok(Some(text)) => merged = Some(text),
                    // Moved on again: the next commit finds out and merges again.
                    Ok(None) => return Ok(()),
                    Err(e) if crate::offline::unreachable(&e) => return Err(e),
                    Err(e) => warn!(ino = of.ino, "the master could not merge: {e}"),
                }
            }
        }
        let Some(merged) = merged else {
            of.st.lock().expect("file lock").no_merge = true;
            return Ok(());
        };
        of.uploads_settled().await;
        {
            let mut st = of.st.lock().expect("file lock");
            if st.changes != changes {
                // Written to while merging: merge again with what is there now.
                return Ok(());
            }
            let bs = self.cluster.block_size;
            st.reset(theirs_attr, theirs_slots);
            st.replace_content(merged.as_bytes(), bs);
            st.outcome = Some("merged with changes made elsewhere".into());
        }
        self.invalidate(of.ino);
        Ok(())
    }

    /// Upload and commit once; `Some(current)` if another mount committed since this mount's
    /// base and the content is to be merged with `current` first.
    async fn flush_once(&self, of: &Arc<OpenFile>) -> Result<Option<Attr>> {
        // Upload every dirty block (again, for one whose upload failed) and wait for all
        // uploads. Nothing is committed while a block of the file is not stored: the size the
        // master would publish must never cover bytes that are not in the cluster. A failure
        // stays recorded (later writes and flushes see it) until a retry succeeds or a
        // truncate drops the data.
        for round in 0..4 {
            // Slots with more extents than a commit may carry are stored whole again.
            for idx in self.too_fragmented(of) {
                let stored = self.stored_block(of, idx).await?;
                let bs = self.cluster.block_size;
                of.st
                    .lock()
                    .expect("file lock")
                    .sparse_to_dirty(idx, stored, bs);
            }
            let (taken, pieces_out) = {
                let mut st = of.st.lock().expect("file lock");
                if !st.dirty.is_empty() || !st.sparse.is_empty() {
                    st.error = None;
                }
                let idxs: Vec<u64> = st.dirty.keys().copied().collect();
                let taken: Vec<(u64, u64, Arc<Vec<u8>>)> = idxs
                    .into_iter()
                    .filter_map(|i| st.take_for_upload(i).map(|(s, d)| (i, s, d)))
                    .collect();
                (taken, st.take_sparse())
            };
            for (i, seq, d) in taken {
                self.start_upload(of, i, seq, d).await;
            }
            for (seq, epoch, job) in pieces_out {
                self.start_piece(of, seq, epoch, job).await;
            }
            of.uploads_settled().await;
            if !self.too_fragmented(of).is_empty() && round < 3 {
                continue;
            }
            let st = of.st.lock().expect("file lock");
            if let Some(e) = &st.error {
                return Err(Error::Unavailable(e.clone()));
            }
            if st.dirty.is_empty() && st.sparse.is_empty() {
                break;
            }
            // Written to meanwhile (another thread of this mount): upload those blocks too,
            // a few rounds at most; what is still being written is committed by its own flush.
            if round >= 2 {
                break;
            }
        }
        let (slots, size, mtime, base, mergeable, cut, seq, included, landed) = {
            let mut st = of.st.lock().expect("file lock");
            if let Some(e) = &st.error {
                return Err(Error::Unavailable(e.clone()));
            }
            if st.pending.is_empty() && st.superseded.is_empty() && !st.meta_dirty {
                return Ok(None);
            }
            st.meta_dirty = false;
            // Superseded uploads first, so the newest upload of each index is what stays.
            let mut slots: Vec<(u64, Slot)> = st.superseded.clone();
            slots.sort_by_key(|(seq, _)| *seq);
            slots.extend(st.pending.values().cloned());
            let mergeable = !st.no_merge && st.attr.size <= self.cfg.merge_max_bytes;
            // Sent until a commit carrying it is acknowledged.
            let cut = st.cut;
            // Taken under the file lock: a later snapshot of the file gets a later number.
            let seq = self.commit_seq.fetch_add(1, Ordering::Relaxed);
            // The local changes this commit publishes: all of them unless some are still
            // being written or uploaded.
            let included =
                match st.dirty.is_empty() && st.sparse.is_empty() && st.inflight.is_empty() {
                    true => st.changes,
                    false => st.published,
                };
            (
                slots,
                st.attr.size,
                st.attr.mtime,
                st.base,
                mergeable,
                cut,
                seq,
                included,
                st.landed_pieces.len(),
            )
        };
        let new: Vec<NewSlot> = slots.iter().map(|(_, s)| s.to_new()).collect();
        // Every piece the slots name, and every piece stored since the last commit (those
        // overwritten meanwhile are collected by the master).
        let mut pieces: Vec<BlockMeta> = Vec::new();
        {
            let st = of.st.lock().expect("file lock");
            let named = slots
                .iter()
                .flat_map(|(_, s)| s.pieces.iter().map(|(m, _)| m));
            for m in named.chain(st.landed_pieces[..landed].iter()) {
                if !pieces.iter().any(|p| p.id == m.id) {
                    pieces.push(m.clone());
                }
            }
        }
        debug!(
            ino = of.ino,
            blocks = new.len(),
            size,
            ?cut,
            seq,
            base,
            "commit"
        );
        let r = self
            .call(MasterRequest::Commit {
                ino: of.ino,
                slots: new,
                pieces,
                size,
                mtime,
                base: Some(base),
                session: self.session.load(Ordering::Relaxed),
                mergeable,
                cut,
                seq,
            })
            .await;
        let reload = {
            let mut st = of.st.lock().expect("file lock");
            match r {
                Ok(MasterResponse::Attr(a)) => {
                    self.remember(&a);
                    st.landed_pieces.drain(..landed);
                    st.published = st.published.max(included);
                    let committed: Vec<u64> = slots.iter().map(|(seq, _)| *seq).collect();
                    st.superseded.retain(|(seq, _)| !committed.contains(seq));
                    for (seq, s) in slots {
                        if st.pending.get(&s.index).is_some_and(|(p, _)| *p == seq) {
                            st.pending.remove(&s.index);
                        }
                        st.slots.insert(s.index, s);
                    }
                    let bs = self.cluster.block_size;
                    st.slots.retain(|&i, _| i * bs < size.max(1));
                    if st.cut == cut {
                        st.cut = None;
                    }
                    st.base = a.version;
                    st.base_size = size;
                    st.base_slots = st.slots.values().cloned().collect();
                    if !st.has_local_changes() {
                        st.attr = a;
                    }
                    return Ok(None);
                }
                Ok(MasterResponse::Stale { attr }) => {
                    st.meta_dirty = true;
                    return Ok(Some(attr));
                }
                Ok(MasterResponse::Conflicted {
                    attr,
                    copy,
                    copy_attr,
                }) => {
                    // Someone else changed the file since this mount read it, and the change
                    // cannot be merged: what was written here is safe in the copy; the file
                    // itself shows the other writer's content again.
                    warn!(
                        ino = of.ino,
                        copy = %String::from_utf8_lossy(&copy),
                        "the file changed elsewhere; this mount's version was saved as a conflicted copy"
                    );
                    self.remember(&copy_attr);
                    st.landed_pieces.drain(..landed);
                    st.published = st.published.max(included);
                    st.outcome = Some(format!(
                        "kept as {:?} (changed elsewhere, not mergeable)",
                        String::from_utf8_lossy(&copy)
                    ));
                    let committed: Vec<u64> = slots.iter().map(|(seq, _)| *seq).collect();
                    st.superseded.retain(|(seq, _)| !committed.contains(seq));
                    for (seq, s) in &slots {
                        if st.pending.get(&s.index).is_some_and(|(p, _)| p == seq) {
                            st.pending.remove(&s.index);
                        }
                    }
                    attr
                }
                Ok(other) => {
                    st.meta_dirty = true;
                    return Err(unexpected(other));
                }
                Err(e) => {
                    st.meta_dirty = true;
                    return Err(e);
                }
            }
        };
        self.reload(of, reload).await;
        Ok(None)
    }

    /// Remember the code of `ino`'s new blocks (None: the cluster's).
    fn note_code(&self, ino: Ino, code: Option<EcParams>) {
        let mut codes = self.codes.lock().expect("codes lock");
        match code {
            Some(c) => {
                codes.put(ino, c);
            }
            None => {
                codes.pop(&ino);
            }
        }
    }

    /// The code `ino`'s new blocks are stored with, if not the cluster's.
    fn code_of(&self, ino: Ino) -> Option<EcParams> {
        self.codes.lock().expect("codes lock").get(&ino).copied()
    }

    /// A file's attributes and block map from the master; `hold`: the file stays open on this
    /// mount's session (see `MasterRequest::Open`).
    async fn fetch_map(&self, ino: Ino, hold: bool, access: u8) -> Result<ReadBase> {
        let session = match hold {
            true => self.session.load(Ordering::Relaxed),
            false => 0,
        };
        match self
            .call(MasterRequest::Open {
                ino,
                session,
                access,
            })
            .await?
        {
            MasterResponse::Opened { attr, slots, code } => {
                self.note_code(attr.ino, code);
                Ok((attr, slots))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Show the master's current content of an open file again (after its content changed
    /// under this mount), unless this mount has written more since.
    async fn reload(&self, of: &OpenFile, attr: Attr) {
        // The file is already held by this mount's session: a look is enough.
        let fresh = self.fetch_map(of.ino, false, 0).await.ok();
        {
            let mut st = of.st.lock().expect("file lock");
            if !st.has_local_changes() {
                match fresh {
                    Some((a, slots)) => st.reset(a, slots),
                    None => st.reset(attr.clone(), Vec::new()),
                }
            } else {
                st.base = attr.version;
            }
        }
        self.remember(&attr);
        self.invalidate(of.ino);
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadData> {
        let of = self.file(fh)?;
        let bs = self.cluster.block_size;
        let (fsize, sequential, nearby) = {
            let st = of.st.lock().expect("file lock");
            // Kernel read-ahead sends reads out of order; anything within two blocks of the
            // last read counts as part of a stream, not a random read.
            let near = offset.abs_diff(st.next_read) <= 2 * bs;
            (st.attr.size, st.next_read == offset, near)
        };
        if offset >= fsize || size == 0 {
            return Ok(ReadData::Owned(Vec::new()));
        }
        let end = fsize.min(offset + size as u64);
        let mut out = Vec::new();
        // A read inside one block that is held whole (the usual case) is answered from the
        // block's buffer without a copy.
        let mut whole: Option<ReadData> = None;
        let first = offset / bs;
        let last = (end - 1) / bs;
        for idx in first..=last {
            let start = idx * bs;
            let lo = (offset.max(start) - start) as usize;
            let hi = (end.min(start + bs) - start) as usize;
            let (src, sparse) = {
                let st = of.st.lock().expect("file lock");
                // Small writes not stored yet, laid over whatever the block reads as.
                let sparse = st
                    .sparse
                    .get(&idx)
                    .map(|sp| sp.data.within(lo as u32, hi as u32))
                    .filter(|sp| !sp.is_empty());
                let src = if let Some(d) = st.dirty.get(&idx) {
                    Source::Bytes(d[lo.min(d.len())..hi.min(d.len())].to_vec())
                } else if let Some((_, d)) = st.inflight.get(&idx) {
                    Source::Shared(d.clone())
                } else if let Some((_, s)) = st.pending.get(&idx) {
                    Source::Stored(s.clone())
                } else if let Some(s) = st.slots.get(&idx) {
                    Source::Stored(s.clone())
                } else {
                    Source::Hole
                };
                (src, sparse)
            };
            let before = out.len();
            let src = match (src, &sparse) {
                (_, Some(sp)) if sp.covers(lo as u32, hi as u32) => Source::Hole,
                (Source::Stored(s), _) if !s.extents.is_empty() || s.block.is_none() => {
                    let random = !nearby && hi - lo <= RANGE_READ_MAX;
                    Source::Bytes(self.slot_bytes(&s, lo, hi, random).await?)
                }
                (src, _) => src,
            };
            match src {
                Source::Bytes(b) if first == last && b.len() == hi - lo && sparse.is_none() => {
                    whole = Some(ReadData::Owned(b));
                    break;
                }
                Source::Bytes(b) => out.extend_from_slice(&b),
                Source::Shared(d) => out.extend_from_slice(&d[lo.min(d.len())..hi.min(d.len())]),
                Source::Stored(s) => {
                    let block = s
                        .block
                        .as_ref()
                        .expect("slots without a block are read above");
                    let avail = s.base_len() as usize;
                    let (a, b) = (lo.min(avail), hi.min(avail));
                    // A random read of part of a block fetches only that part; sequential
                    // readers get whole blocks (and read-ahead).
                    let partial = if !nearby && b - a <= RANGE_READ_MAX && b - a < avail / 2 {
                        self.blocks.get_range(block, s.cap, a, b).await
                    } else {
                        None
                    };
                    match partial {
                        Some(p) => out.extend_from_slice(&p),
                        None => {
                            let d = self.blocks.get(block, s.cap).await?;
                            let avail = d.len().min(s.used as usize);
                            if first == last && hi <= avail && sparse.is_none() {
                                whole = Some(ReadData::Slice(d, lo..hi));
                                break;
                            }
                            out.extend_from_slice(&d[lo.min(avail)..hi.min(avail)]);
                        }
                    }
                }
                Source::Hole => {}
            }
            out.resize(before + (hi - lo), 0);
            if let Some(sp) = sparse {
                sp.apply(lo as u32, &mut out[before..]);
            }
        }
        // Read-ahead for sequential readers.
        let ahead: Vec<Slot> = {
            let mut st = of.st.lock().expect("file lock");
            st.next_read = end;
            if sequential && self.cfg.readahead_blocks > 0 {
                st.slots
                    .range(last + 1..=last + self.cfg.readahead_blocks as u64)
                    .map(|(_, s)| s.clone())
                    .collect()
            } else {
                Vec::new()
            }
        };
        for s in ahead {
            if let Some(b) = s.block {
                self.blocks.prefetch(b, s.cap);
            }
            for (m, c) in s.pieces {
                self.blocks.prefetch(m, c);
            }
        }
        Ok(whole.unwrap_or(ReadData::Owned(out)))
    }

    pub async fn opendir(&self, ino: Ino) -> Result<u64> {
        Ok(self.add_handle(Handle::Dir(Arc::new(Mutex::new(Listing {
            ino,
            first: 0,
            entries: std::collections::VecDeque::new(),
            more: true,
        })))))
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().expect("handles lock").remove(&fh);
    }

    /// Entries of an open directory from `offset` on (0 and 1 are "." and "..").
    pub async fn readdir(
        &self,
        fh: u64,
        ino: Ino,
        offset: i64,
        want: usize,
    ) -> Result<Vec<ListEntry>> {
        let listing = match self.handle(fh)? {
            Handle::Dir(l) => l,
            Handle::File(..) => {
                return Err(Error::fs(
                    shardfs_common::ErrorCode::NotDir,
                    "not a directory",
                ))
            }
        };
        let offset = offset.max(0) as usize;
        let mut out = Vec::new();
        if offset < 2 {
            let attr = self.getattr(ino).await?;
            for (o, name) in [(0usize, &b"."[..]), (1, &b".."[..])]
                .into_iter()
                .skip(offset)
            {
                out.push(ListEntry {
                    offset: o as i64 + 1,
                    name: name.to_vec(),
                    attr: attr.clone(),
                });
            }
        }
        let from = offset.saturating_sub(2);
        // Entries kept behind the reader, so a short seek back needs no new listing.
        const KEEP_BEHIND: usize = 1024;
        loop {
            let (have_end, more, after, dir) = {
                let mut l = listing.lock().expect("listing lock");
                if from < l.first {
                    // Before the window: list again from the start.
                    l.first = 0;
                    l.entries.clear();
                    l.more = true;
                }
                // Drop what lies well behind the reader.
                // (The last entry stays: the listing continues after its name.)
                while l.first + KEEP_BEHIND < from && l.entries.len() > 1 {
                    l.entries.pop_front();
                    l.first += 1;
                }
                (
                    l.first + l.entries.len(),
                    l.more,
                    l.entries.back().map(|e| e.name.clone()),
                    l.ino,
                )
            };
            if have_end >= from + want || !more {
                break;
            }
            let req = MasterRequest::ReadDir {
                ino: dir,
                after: after.clone(),
                limit: 1024,
            };
            match self.call(req).await? {
                MasterResponse::Entries { entries, more } => {
                    for e in &entries {
                        self.remember(&e.attr);
                    }
                    let mut l = listing.lock().expect("listing lock");
                    if l.entries.back().map(|e| &e.name) == after.as_ref() {
                        l.entries.extend(entries);
                        l.more = more;
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        let l = listing.lock().expect("listing lock");
        let skip = from.saturating_sub(l.first);
        for (i, e) in l.entries.iter().enumerate().skip(skip).take(want) {
            out.push(ListEntry {
                offset: (l.first + i + 3) as i64,
                name: e.name.clone(),
                attr: e.attr.clone(),
            });
        }
        drop(l);
        for e in out.iter_mut() {
            if e.attr.kind == FileKind::File {
                e.attr = self.patch(e.attr.clone());
            }
        }
        Ok(out)
    }

    /// fallocate(2): extend the size (mode 0), zero a range (FALLOC_FL_ZERO_RANGE) or punch a
    /// hole (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE). Space is not reserved ahead (blocks
    /// are placed when written); zeroed ranges read back as zeros and cost one shared
    /// all-zero block each, as content-addressed blocks dedupe.
    /// fallocate(2) on handle `fh` by thread `pid`.
    pub async fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        pid: u32,
    ) -> Result<()> {
        use shardfs_common::ErrorCode;
        let (keep, punch, zero) = (
            mode & libc::FALLOC_FL_KEEP_SIZE != 0,
            mode & libc::FALLOC_FL_PUNCH_HOLE != 0,
            mode & libc::FALLOC_FL_ZERO_RANGE != 0,
        );
        if mode
            & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE)
            != 0
        {
            return Err(Error::fs(
                ErrorCode::NotSupported,
                format!("fallocate mode {mode:#x} is not supported"),
            ));
        }
        if (punch && (!keep || zero)) || len == 0 {
            return Err(Error::invalid("invalid fallocate mode or length"));
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| Error::fs(ErrorCode::TooBig, "range past the largest file size"))?;
        let of = self.file(fh)?;
        let size = of.st.lock().expect("file lock").attr.size;
        if punch || zero {
            let zero_end = if keep { end.min(size) } else { end };
            let chunk = (self.cluster.block_size as usize).min(1 << 20);
            let zeros = vec![0u8; chunk];
            let mut pos = offset;
            while pos < zero_end {
                let n = ((zero_end - pos) as usize).min(chunk);
                self.write(fh, pos, &zeros[..n], pid).await?;
                pos += n as u64;
            }
        }
        if !keep && end > of.st.lock().expect("file lock").attr.size {
            let now = Timespec::now();
            let set = SetAttr {
                mode: None,
                uid: None,
                gid: None,
                size: Some(end),
                atime: None,
                mtime: Some(now),
                now,
            };
            self.setattr(of.ino, Some(fh), set).await?;
        }
        Ok(())
    }

    /// Make everything written to the file durable in the cluster (whichever handle wrote it).
    pub async fn fsync(&self, fh: u64) -> Result<()> {
        let of = self.file(fh)?;
        self.flush_file(&of).await
    }
}

#[cfg(test)]
mod tests {
    use super::mark_written;

    #[test]
    fn block_is_complete_only_when_every_byte_was_written() {
        let mut r = Vec::new();
        assert!(!mark_written(&mut r, 3, 4, 4));
        assert!(!mark_written(&mut r, 0, 1, 4));
        assert!(!mark_written(&mut r, 1, 2, 4));
        assert!(
            mark_written(&mut r, 2, 3, 4),
            "out-of-order writes completing the block"
        );
        let mut r = Vec::new();
        assert!(mark_written(&mut r, 0, 4, 4));
        let mut r = Vec::new();
        assert!(!mark_written(&mut r, 0, 2, 4));
        assert!(!mark_written(&mut r, 3, 4, 4));
        assert_eq!(r, vec![(0, 2), (3, 4)]);
    }
}
