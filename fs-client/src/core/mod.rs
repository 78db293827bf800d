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
use shardfs_common::cap::Cap;
use shardfs_common::ec::{Codec, EcParams};
use shardfs_common::extent::{self, Sparse, MAX_EXTENTS};
use shardfs_common::locks::LockTable;
use shardfs_common::proto::{
    conflicted_name, Attr, BlockMeta, Change, ClusterInfo, FileKind, FsStats, MasterRequest,
    MasterResponse, NewSlot, SetAttr, Slot, Timespec, ACCESS_READ, ACCESS_WRITE,
};
use shardfs_common::{BlockId, Error, Ino, Result};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, warn};

mod cache;
mod commit;
mod dir;
mod file_state;
mod handles;
mod known_dirs;
use known_dirs::Entry;
mod merge;
mod meta_cache;
mod namespace;
mod read;
mod replay;
mod write;
mod xattr;

use meta_cache::Grant;

pub(crate) use file_state::OpenFile;
use file_state::*;

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
    /// Pieces of small writes up to this size go to the master inside the commit (inline
    /// pieces) rather than to m + 1 nodes first (0: never).
    pub inline_max: usize,
    /// Wait this long for the first k shards before asking the parity nodes too.
    pub hedge_delay: Duration,
    pub shard_timeout: Duration,
    /// How long attributes learnt from the master are trusted (as the kernel's attribute TTL).
    pub attr_ttl: Duration,
    /// Serves several users at once (the master's web UI): answers nothing from names or
    /// attributes it holds, since what it holds was checked for whoever asked first.
    pub shared: bool,
}

/// A file's attributes and block map as this mount read them.
pub(crate) type ReadBase = (Attr, Vec<Slot>);

/// Names whose last read this mount keeps (the bases of editors' saves).
const READ_BASES: usize = 16_384;

pub struct Core {
    pub(crate) cfg: CoreConfig,
    pub(crate) master: Arc<MasterClient>,
    blocks: Arc<BlockStore>,
    cluster: ClusterInfo,
    files: Mutex<HashMap<Ino, Arc<OpenFile>>>,
    /// Attributes and names from the master's answers (including the parents a change
    /// touched), held while the change log says nothing changed them (see [`meta_cache`]): the
    /// kernel's lookups and re-validations cost no round trip.
    meta: Mutex<meta_cache::MetaCache>,
    /// When the master's change log last answered (milliseconds since `started`).
    log_heard: AtomicU64,
    started: Instant,
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
    /// The kernel leaves dropping privileges to this mount (see `set_kills_privs`).
    kills_privs: std::sync::atomic::AtomicBool,
    /// The last name each inode was looked up or created under.
    names: Mutex<HashMap<Ino, (Ino, Vec<u8>)>>,
    /// The master did not answer lately: serve from caches without waiting for it.
    pub(crate) offline: std::sync::atomic::AtomicBool,
    /// What this mount last read under each name (inode, attributes at open, block map): the
    /// base of an editor's save that renames a new file over the name.
    read_bases: Mutex<lru::LruCache<(Ino, Vec<u8>), ReadBase>>,
    /// Directories whose every name this mount knows (see [`known_dirs`]).
    known_dirs: Mutex<known_dirs::KnownDirs>,
    /// The master's change log is being followed (the last watch was answered): what
    /// `known_dirs` says holds only while it is.
    pub(crate) watching: std::sync::atomic::AtomicBool,
    /// Listings of child directories fetched ahead of a reader, at most this many at once.
    prefetching: Arc<tokio::sync::Semaphore>,
    /// Closes not yet told to the master: (session, inode, opens), sent together.
    pub(crate) closing: Arc<Mutex<Vec<(u64, Ino, u32)>>>,
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
/// back before the window lists again from the start. Entries fetched for a plain readdir
/// have no attributes (`ReadDirNames`); a readdirplus over them fetches them again whole.
struct Listing {
    ino: Ino,
    /// Index of `entries[0]` in the listing.
    first: usize,
    entries: std::collections::VecDeque<Listed>,
    more: bool,
}

/// One entry of an open directory's window.
struct Listed {
    name: Vec<u8>,
    ino: Ino,
    kind: FileKind,
    attr: Option<Attr>,
}

/// One entry of a plain directory listing: no attributes.
pub struct NameListEntry {
    pub offset: i64,
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// The extended attributes of one inode this mount read, by name, with when.
type XattrCache = HashMap<Vec<u8>, (Option<Vec<u8>>, Instant)>;

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
    /// Take in the master's data keys again (a rotation, a dropped epoch).
    pub(crate) async fn refresh_keys(&self) {
        if self.blocks.keys().encrypted() {
            if let Ok(MasterResponse::DataKeys(Some(ring))) =
                self.master.call(MasterRequest::DataKeys).await
            {
                self.blocks.keys().update(ring);
            }
        }
    }

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
        // Content is encrypted here, before it leaves the mount, with the cluster's keys.
        let keys = match master.call(MasterRequest::DataKeys).await? {
            MasterResponse::DataKeys(ring) => shardfs_common::crypt::DataKeys::new(ring),
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
            keys,
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
            meta: Mutex::new(Default::default()),
            log_heard: AtomicU64::new(0),
            started: Instant::now(),
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
            kills_privs: std::sync::atomic::AtomicBool::new(false),
            names: Mutex::new(HashMap::new()),
            offline: std::sync::atomic::AtomicBool::new(false),
            read_bases: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(READ_BASES).expect("nonzero"),
            )),
            known_dirs: Mutex::new(Default::default()),
            watching: std::sync::atomic::AtomicBool::new(false),
            prefetching: Arc::new(tokio::sync::Semaphore::new(dir::PREFETCH_TASKS)),
            closing: Default::default(),
        }))
    }

    pub fn cluster(&self) -> &ClusterInfo {
        &self.cluster
    }

    pub fn shutdown(&self) {
        self.blocks.close();
        self.master.close();
    }

    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.files.lock().expect("files lock").get(&ino).cloned()
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
