//! The wire protocol: one request/response enum per service.
//!
//! Messages are postcard-encoded with serde. Bulk bytes (shard data) are never inside a message:
//! they follow the header in the same frame (see [`crate::wire`]). The protocol version is part of
//! the ALPN string, so a peer of another version fails the handshake with a clear error instead
//! of misreading frames.

use crate::cap::Cap;
use crate::ec::EcParams;
use crate::error::RemoteError;
use crate::extent::Extent;
use crate::ids::{BlockId, Ino, NodeId};
use crate::locks::{LockOwner, LockRange};
pub use crate::pki::Role;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

pub const PROTOCOL_VERSION: u8 = 10;
/// ALPN of the master's service (clients and nodes connect to it).
pub const ALPN_MASTER: &[u8] = b"shardfs-master/10";
/// ALPN of a storage node's service.
pub const ALPN_NODE: &[u8] = b"shardfs-node/10";
/// Files one `Close` request may name.
pub const CLOSE_MAX: usize = 4096;

/// Longest file name, as on ext4.
pub const NAME_MAX: usize = 255;

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timespec {
    pub secs: i64,
    pub nsecs: u32,
}

impl Timespec {
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                secs: d.as_secs() as i64,
                nsecs: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timespec {
                        secs: -(d.as_secs() as i64),
                        nsecs: 0,
                    }
                } else {
                    Timespec {
                        secs: -(d.as_secs() as i64) - 1,
                        nsecs: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }

    /// Largest distance from 1970 a stored time may have (about 35,000 years).
    pub const MAX_SECS: i64 = 1 << 40;

    /// Whether this is a time a client may store: whole nanoseconds below a second, and
    /// within [`Timespec::MAX_SECS`] of 1970.
    pub fn check(self) -> crate::Result<()> {
        if self.nsecs >= 1_000_000_000 || self.secs.unsigned_abs() > Self::MAX_SECS as u64 {
            return Err(crate::Error::invalid(format!(
                "time {}.{:09} s is out of range",
                self.secs, self.nsecs
            )));
        }
        Ok(())
    }

    /// As a system time; times past what the system can represent are clamped, never a
    /// panic (a stored time is whatever some client sent).
    pub fn to_system(self) -> SystemTime {
        use std::time::Duration;
        let nsecs = Duration::from_nanos(self.nsecs.min(999_999_999).into());
        let t = if self.secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_secs(self.secs as u64) + nsecs)
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(self.secs.unsigned_abs()))
                .and_then(|t| t.checked_add(nsecs))
        };
        // About 10,000 years either side of 1970.
        let far = Duration::from_secs(315_569_520_000);
        t.unwrap_or(if self.secs >= 0 {
            UNIX_EPOCH + far
        } else {
            UNIX_EPOCH - far
        })
    }
}

/// Attributes of an inode, as the master keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits (mode & 0o7777).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub rdev: u32,
    /// Content version: raised by every commit of new content and every size change. A mount
    /// commits against the version it read (its base); a different current version means
    /// someone else changed the file meanwhile.
    pub version: u64,
}

impl Attr {
    /// A regular file `ino` of `size` bytes: one link, root's, mode 0644, every time zero and
    /// version 0 (what a test or a record starts from before setting the rest).
    pub fn plain_file(ino: Ino, size: u64) -> Attr {
        Attr {
            ino,
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
            rdev: 0,
            version: 0,
        }
    }
}

/// Which attributes a setattr changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
    /// The time the change is made (becomes ctime).
    pub now: Timespec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
}

/// One name in a directory without its attributes (see `MasterRequest::ReadDirNames`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// Where one shard of a block lives and what its bytes hash to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLoc {
    pub node: NodeId,
    pub hash: [u8; 32],
}

/// Largest inline piece (see [`BlockMeta::is_inline`]).
pub const INLINE_MAX: usize = 64 << 10;
/// Most bytes of inline pieces one commit may carry.
pub const INLINE_COMMIT_MAX: usize = 1 << 20;

/// Everything needed to read a block back: its code, its size and its shards (index = shard
/// number: the first k are data, the rest parity).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    pub id: BlockId,
    pub ec: EcParams,
    pub len: u64,
    pub shard_size: u32,
    pub shards: Vec<ShardLoc>,
}

impl BlockMeta {
    /// The id of `data` stored with code `ec` in a cluster whose own code is `cluster`.
    pub fn content_id(ec: EcParams, cluster: EcParams, data: &[u8]) -> BlockId {
        if ec == cluster {
            BlockId::of(data)
        } else {
            BlockId::of_coded(ec.k, ec.m, data)
        }
    }

    /// Whether `data` is this block's content (in a cluster whose code is `cluster`). Pieces
    /// stored before ids told codes apart carry the plain hash, and still read.
    pub fn holds(&self, data: &[u8], cluster: EcParams) -> bool {
        self.id == Self::content_id(self.ec, cluster, data)
            || (self.ec.k == 1 && self.ec != cluster && self.id == BlockId::of(data))
    }

    /// Whether this is an inline piece: small writes the master keeps in its own records
    /// (one copy, committed with the file's map), read from the master, never from a node.
    pub fn is_inline(&self) -> bool {
        self.ec == EcParams::INLINE
    }

    /// The description of inline piece `id` of `len` bytes.
    pub fn inline(id: BlockId, len: usize) -> BlockMeta {
        BlockMeta {
            id,
            ec: EcParams::INLINE,
            len: len as u64,
            shard_size: len as u32,
            shards: Vec::new(),
        }
    }

    /// Whether the description is self-consistent: a usable code, shards of ceil(len / k)
    /// bytes (no larger than a frame's bulk), one per shard index. A mount checks this before
    /// it allocates anything to read the block.
    pub fn check_shape(&self) -> crate::Result<()> {
        let bad = |why: String| Err(crate::Error::invalid(format!("block {}: {why}", self.id)));
        if self.is_inline() {
            if self.len as usize > INLINE_MAX
                || self.shard_size as u64 != self.len
                || !self.shards.is_empty()
            {
                return bad(format!(
                    "an inline piece of {} bytes (at most {INLINE_MAX}, no shards)",
                    self.len
                ));
            }
            return Ok(());
        }
        self.ec.validate()?;
        if self.shard_size as usize != self.ec.shard_size(self.len as usize)
            || self.shard_size as usize > crate::wire::MAX_BULK
        {
            return bad(format!(
                "shards of {} bytes for {} bytes in {} data shards",
                self.shard_size, self.len, self.ec.k
            ));
        }
        if self.shards.len() != self.ec.total() {
            return bad(format!(
                "{} shards listed, the code has {}",
                self.shards.len(),
                self.ec.total()
            ));
        }
        Ok(())
    }

    /// Whether this is a description the cluster could have made: code `ec` (or its
    /// replicated form, m + 1 copies, for pieces), at most `block_size` bytes, a consistent
    /// shape, one shard per node on distinct nodes. Anything a client sends is checked with
    /// it before it is stored.
    pub fn check(&self, ec: EcParams, block_size: u64) -> crate::Result<()> {
        let bad = |why: String| Err(crate::Error::invalid(format!("block {}: {why}", self.id)));
        if self.is_inline() {
            return self.check_shape();
        }
        if self.ec != ec && self.ec != ec.replicated() {
            return bad(format!(
                "code {} is neither the cluster's {ec} nor {}",
                self.ec,
                ec.replicated()
            ));
        }
        if self.len > block_size {
            return bad(format!(
                "{} bytes, more than a block ({block_size})",
                self.len
            ));
        }
        self.check_shape()?;
        let mut nodes: Vec<NodeId> = self.shards.iter().map(|s| s.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.len() != self.shards.len() {
            return bad("two shards on one node".into());
        }
        Ok(())
    }
}

/// Block `index` of a file (covering bytes `index * block_size ..`): its base block (absent
/// for a slot made only of small writes), how many of the base's bytes belong to the file (less
/// than its length after a truncate; the rest reads as zeros), and the small writes laid over
/// it (see [`crate::extent`]): each byte reads from the extent covering it, else the base.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub index: u64,
    pub used: u64,
    pub block: Option<BlockMeta>,
    /// The holder's capability to read the base block's shards (filled in by the master for
    /// the credential it answers; not stored).
    pub cap: Cap,
    /// Sorted, disjoint, newer than the base.
    pub extents: Vec<Extent>,
    /// The pieces the extents refer to, each with the holder's capability to read it.
    pub pieces: Vec<(BlockMeta, Cap)>,
}

impl Slot {
    /// A slot holding just `block`.
    pub fn whole(index: u64, used: u64, block: BlockMeta, cap: Cap) -> Slot {
        Slot {
            index,
            used,
            block: Some(block),
            cap,
            extents: Vec::new(),
            pieces: Vec::new(),
        }
    }

    /// The description of piece `id` and the capability to read it.
    pub fn piece(&self, id: &BlockId) -> Option<&(BlockMeta, Cap)> {
        self.pieces.iter().find(|(m, _)| m.id == *id)
    }

    /// Bytes of the base block that belong to the file.
    pub fn base_len(&self) -> u64 {
        self.block.as_ref().map_or(0, |b| b.len.min(self.used))
    }

    /// This slot as a commit sends it.
    pub fn to_new(&self) -> NewSlot {
        NewSlot {
            index: self.index,
            id: self.block.as_ref().map(|b| b.id),
            used: self.used,
            meta: self.block.clone(),
            extents: self.extents.clone(),
        }
    }
}

/// A slot a client wants to commit: its base block, either one it just stored (`meta` given)
/// or one the master already knows (`meta` None, found by id), or none; and its extents (the
/// pieces they name: known to the master, or described in the commit's `pieces`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSlot {
    pub index: u64,
    pub id: Option<BlockId>,
    pub used: u64,
    pub meta: Option<BlockMeta>,
    pub extents: Vec<Extent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// The cluster already holds this block; commit it by id without uploading (with a
    /// capability to read it).
    Exists(BlockMeta, Cap),
    /// Store shard i on node i of this list (k + m distinct nodes), with a capability to
    /// store and read the block's shards.
    Place(Vec<NodeId>, Cap),
}

/// A storage node as the master sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeats arrive on time.
    Up,
    /// Heartbeats are late, not yet past the timeout; still used.
    Suspect,
    /// Silent past the node timeout; its shards are rebuilt elsewhere after the repair grace.
    Down,
    /// Alive, taking no new shards, its shards being moved to other nodes.
    Draining,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
        })
    }
}

/// Durability of the cluster's blocks, as of the master's last repair scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Blocks in the block map.
    pub blocks: u64,
    /// Blocks with at least one shard lost or on a node past the repair grace.
    pub degraded: u64,
    /// Blocks with fewer than k readable shards left.
    pub unrecoverable: u64,
    /// Shards waiting for repair.
    pub missing_shards: u64,
    /// Shards still on draining nodes.
    pub draining_shards: u64,
    /// Shards moved to even out node use since the master started.
    pub rebalanced_shards: u64,
    /// Shards rebuilt since the master started.
    pub repaired_shards: u64,
    /// Bytes of rebuilt shards since the master started.
    pub repaired_bytes: u64,
    /// Shards whose repair failed since the master started (they are retried).
    pub repair_failures: u64,
    /// Milliseconds since the last completed scan (None: no scan yet).
    pub scanned_ms_ago: Option<u64>,
    /// Files holding small writes not sealed into erasure-coded blocks yet.
    pub unsealed_files: u64,
    /// Slots sealed since the master started, and the bytes of their new blocks.
    pub sealed_slots: u64,
    pub sealed_bytes: u64,
    /// Seals that failed since the master started (they are retried).
    pub seal_failures: u64,
    /// The scrub running now (`shardfs scrub`): shards verified so far, of about how many
    /// (the live nodes' shard counts when it started). Both 0: none running.
    pub scrub_checked: u64,
    pub scrub_total: u64,
    /// Inline pieces the master holds (small writes waiting for sealing), and their bytes.
    pub inline_pieces: u64,
    pub inline_bytes: u64,
}

/// What a scrub found on the nodes it checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    pub nodes: u32,
    pub checked: u64,
    /// Shards that failed their hash check (quarantined by their node).
    pub corrupt: u64,
    /// Shards the block map places on a node that does not have them.
    pub missing: u64,
    /// Shards on nodes that nothing references (deleted once old enough).
    pub orphans: u64,
    /// Nodes that could not be scrubbed, with the reason.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: String,
    pub state: NodeState,
    pub capacity: u64,
    pub free: u64,
    pub used: u64,
    pub shards: u64,
    /// Milliseconds since the last heartbeat (None: none since the master started).
    pub last_seen_ms: Option<u64>,
    /// Why the node is in its state, in words.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    pub ec: EcParams,
    pub block_size: u64,
}

/// Capacity as a user sees it: raw node space scaled by k / (k + m).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStats {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub files: u64,
}

/// Something other mounts may have cached that changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Attributes or content of an inode.
    Inode(Ino),
    /// The entry `name` in directory `parent` (created, removed or replaced).
    Entry { parent: Ino, name: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// The session whose request made the change (0: unknown).
    pub origin: u64,
    pub change: Change,
}

/// Who a namespace request acts for: the calling process's user, group and supplementary
/// groups, as the mount's kernel reported them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Caller {
    /// The superuser.
    pub fn root() -> Caller {
        Caller {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    /// What root becomes on a credential that does not allow root (as NFS's root squash).
    pub fn nobody() -> Caller {
        Caller {
            uid: NOBODY,
            gid: NOBODY,
            groups: Vec::new(),
        }
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The uid and gid of nobody.
pub const NOBODY: u32 = 65534;

/// A set of uids or gids as inclusive ranges; empty: any. What a client credential may act as.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRanges(pub Vec<(u32, u32)>);

impl IdRanges {
    /// Most ranges one set may hold.
    pub const MAX: usize = 64;

    pub fn is_any(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.is_empty() || self.0.iter().any(|&(lo, hi)| lo <= id && id <= hi)
    }

    /// Refuses sets too long or with a range that ends before it starts.
    pub fn check(&self) -> crate::Result<()> {
        if self.0.len() > Self::MAX {
            return Err(crate::Error::invalid(format!(
                "{} id ranges, at most {} allowed",
                self.0.len(),
                Self::MAX
            )));
        }
        match self.0.iter().find(|(lo, hi)| lo > hi) {
            Some((lo, hi)) => Err(crate::Error::invalid(format!(
                "id range {lo}-{hi} is empty"
            ))),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for IdRanges {
    type Err = String;

    /// `1000`, `1000-1999`, or a comma-separated list of them.
    fn from_str(s: &str) -> Result<IdRanges, String> {
        let id = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("{t:?} is not a uid/gid"))
        };
        let mut v = Vec::new();
        for part in s.split(',') {
            let r = match part.split_once('-') {
                Some((lo, hi)) => (id(lo)?, id(hi)?),
                None => (id(part)?, id(part)?),
            };
            v.push(r);
        }
        let r = IdRanges(v);
        r.check().map_err(|e| e.to_string())?;
        Ok(r)
    }
}

impl std::fmt::Display for IdRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("any");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| match lo == hi {
                true => lo.to_string(),
                false => format!("{lo}-{hi}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The users a client credential may act as: uids and gids (empty: any but root, which is
/// squashed unless the credential allows root).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    pub uids: IdRanges,
    pub gids: IdRanges,
}

impl Users {
    pub fn is_any(&self) -> bool {
        self.uids.is_any() && self.gids.is_any()
    }
}
/// Most supplementary groups a caller may name.
pub const MAX_GROUPS: usize = 256;
/// Access a file is opened for (bits of `MasterRequest::Open::access`).
pub const ACCESS_READ: u8 = 4;
pub const ACCESS_WRITE: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterRequest {
    Cluster,
    Lookup {
        parent: Ino,
        name: Vec<u8>,
    },
    GetAttr {
        ino: Ino,
    },
    SetAttr {
        ino: Ino,
        set: SetAttr,
        /// For a size change by a mount that has the file open: the content version its
        /// changes start from (see `Commit::base`).
        base: Option<u64>,
    },
    /// mknod, mkdir and create: a new inode of `kind` linked as `parent/name`.
    Create {
        parent: Ino,
        name: Vec<u8>,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        now: Timespec,
        /// The creating mount's session (0: none): a new regular file is open on it.
        session: u64,
    },
    Symlink {
        parent: Ino,
        name: Vec<u8>,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
        now: Timespec,
    },
    ReadLink {
        ino: Ino,
    },
    Link {
        ino: Ino,
        parent: Ino,
        name: Vec<u8>,
        now: Timespec,
    },
    Unlink {
        parent: Ino,
        name: Vec<u8>,
        now: Timespec,
    },
    Rmdir {
        parent: Ino,
        name: Vec<u8>,
        now: Timespec,
    },
    Rename {
        parent: Ino,
        name: Vec<u8>,
        new_parent: Ino,
        new_name: Vec<u8>,
        flags: u32,
        now: Timespec,
    },
    /// Entries of a directory in name order, starting after `after`.
    ReadDir {
        ino: Ino,
        after: Option<Vec<u8>>,
        limit: u32,
    },
    /// Attributes and block map of a file, which stays open on `session` (0: none) until
    /// `Close`: an open file unlinked everywhere lives on until its last holder closes it.
    Open {
        ino: Ino,
        session: u64,
        /// ACCESS_READ and/or ACCESS_WRITE (0: a look at the content, checked as a read).
        access: u8,
    },
    /// The mount closed its last handle of each `(ino, opens)` of `files` (at most
    /// [`CLOSE_MAX`]), which it had opened `opens` times through `Open` (or `Create`) on
    /// `session`; closes made close together travel in one request. A count, not a flag: a
    /// close and a new open of the same file travel on separate streams, so an `Open` may
    /// arrive before the `Close` of the handles before it; the file stays held while the
    /// master counts more opens than closes.
    Close {
        session: u64,
        files: Vec<(Ino, u32)>,
    },
    /// Start a mount's session (id 0: a new one), or take up an existing id again after a
    /// master restart with the files it has open and the locks it holds. Answered with
    /// `Session`.
    SessionOpen {
        id: u64,
        host: String,
        user: String,
        mountpoint: String,
        opens: Vec<Ino>,
        locks: Vec<LockRange>,
    },
    /// The mount is alive; refused with NotFound if the master does not know the session.
    SessionRenew {
        id: u64,
    },
    /// The mount is going away: close its files and drop its locks now.
    SessionClose {
        id: u64,
    },
    /// Set or unlock an advisory lock. A conflicting lock makes it fail with Again, after
    /// waiting up to `wait_ms` for the holder to let go.
    SetLock {
        lock: LockRange,
        wait_ms: u32,
    },
    /// The first lock that would conflict with `lock` (F_GETLK). Answered with `Lock`.
    GetLock {
        lock: LockRange,
    },
    /// Drop every lock of `owner` on `ino` (a close by that owner).
    ReleaseLocks {
        ino: Ino,
        owner: LockOwner,
    },
    /// Changes made after event `after` (long poll: answered at once if there are some,
    /// otherwise as soon as one happens or after a few seconds). Answered with `Changes`.
    Watch {
        after: u64,
    },
    /// Where to store new blocks (or that they exist already).
    Place {
        blocks: Vec<(BlockId, u64)>,
        /// Pieces of small writes: stored as m + 1 full copies (the code 1+m), not k + m shards.
        replicated: bool,
        /// The code of the file the blocks are for (its storage policy); None: the cluster's.
        code: Option<EcParams>,
        /// Nodes the client just failed to reach: used only if there are not enough others,
        /// and avoided for every client's placements for a few seconds.
        exclude: Vec<NodeId>,
    },
    /// More nodes for a block being uploaded, some of whose shards could not be stored where
    /// they were placed (the node failed or stalled): `count` distinct live nodes, none in
    /// `holding` (the nodes that hold or are storing the block's other shards); nodes in
    /// `failing` (this client could not reach them just now) only if there are no others.
    /// Answered with `Placements` holding one `Place`.
    PlaceMore {
        block: BlockId,
        len: u64,
        count: u8,
        holding: Vec<NodeId>,
        failing: Vec<NodeId>,
        /// The block's code (None: the cluster's).
        code: Option<EcParams>,
    },
    /// Make written blocks part of a file, atomically with its new size and mtime.
    Commit {
        ino: Ino,
        slots: Vec<NewSlot>,
        /// Descriptions of the pieces the slots' extents name (the master keeps the one it
        /// has for a piece it knows).
        pieces: Vec<BlockMeta>,
        size: u64,
        mtime: Timespec,
        /// The content version the writer started from (None: no check). If the file has
        /// moved on since, the master merges (text) or keeps the writer's content as a
        /// conflicted copy beside the file (everything else).
        base: Option<u64>,
        /// The writer's session (names the host in a conflicted copy's name).
        session: u64,
        /// Increasing per mount: a commit that arrives after a later one of the same mount and
        /// file is stale (the later one carries all it had) and is acknowledged, not applied.
        seq: u64,
        /// The file was cut to this size since the last commit (a truncate of the open file):
        /// bytes past it are gone before the new blocks and size apply.
        cut: Option<u64>,
        /// The writer can merge (a text file within its merge limit): if the base is stale,
        /// answer `Stale` and commit nothing, instead of making a conflicted copy.
        mergeable: bool,
    },
    StatFs,
    Nodes,
    Register {
        id: NodeId,
        addr: String,
        capacity: u64,
        free: u64,
        used: u64,
        shards: u64,
    },
    Heartbeat {
        id: NodeId,
        capacity: u64,
        free: u64,
        used: u64,
        shards: u64,
    },
    /// A node found shards of its own corrupt (and quarantined them): rebuild them.
    ShardsLost {
        node: NodeId,
        shards: Vec<(BlockId, u8)>,
    },
    /// Set extended attribute `name` (flags: XATTR_CREATE 1, XATTR_REPLACE 2).
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: i32,
    },
    GetXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    ListXattr {
        ino: Ino,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    /// Durability and repair state.
    Health,
    /// Look for degraded blocks now (instead of at the next repair interval) and rebuild them.
    Repair,
    /// Start (or with `cancel`, stop) moving every shard off a node; it takes no new shards.
    Drain {
        node: NodeId,
        cancel: bool,
    },
    /// Have every live node verify all its shards now; lost shards are queued for repair.
    Scrub,
    /// Merge this mount's text (`mine`, an edit of version `base`) with the file's current
    /// version `current` (whose text the mount read: `current_text`). `base_text`: the
    /// base's text if the mount could still read it (the master may know it already).
    /// Answers `Merged` with the text to commit on top of `current`, or `Stale` if the file
    /// moved past `current` meanwhile.
    Merge {
        ino: Ino,
        session: u64,
        /// None: the edit did not start from a version of this file (an editor's save over a
        /// file that was itself replaced since it was read).
        base: Option<u64>,
        base_text: Option<Vec<u8>>,
        current: u64,
        current_text: Vec<u8>,
        mine: Vec<u8>,
        /// The change was made offline and is being replayed from the journal.
        replay: bool,
    },
    /// Who merged what in a file, oldest first.
    History {
        ino: Ino,
    },
    /// The latest merges, conflicted copies and offline replays in the whole cluster.
    Recent,
    /// A mount replayed an offline change of `ino` with this outcome (for the history).
    Replayed {
        ino: Ino,
        session: u64,
        outcome: String,
    },
    /// Exchange a one-time join token (its secret) for a certificate of `public_key` (a raw
    /// P-256 point, made on the joining host). A node names its id; every joiner its host.
    /// The only request served to a peer without a credential.
    Join {
        secret: [u8; 16],
        public_key: Vec<u8>,
        host: String,
        node: Option<NodeId>,
    },
    /// Make a one-time join token for a credential of `role` (admin only). `allow_root`: a
    /// client credential whose uid 0 is not squashed.
    CreateToken {
        role: Role,
        ttl_secs: u64,
        allow_root: bool,
        /// For a client credential: the uids and gids it may act as.
        users: Users,
    },
    /// Every credential the cluster issued (admin only).
    Credentials,
    /// Revoke a credential (admin only): refused from now on by the master and every node.
    Revoke {
        id: String,
    },
    /// A namespace request made for `caller` (the master checks POSIX permissions for that
    /// user; root is squashed unless the credential allows it). Requests not wrapped act as
    /// the credential itself: root if it allows root, nobody otherwise.
    As {
        caller: Caller,
        req: Box<MasterRequest>,
    },
    /// Entries of the audit log that match `query`, oldest first (admin only).
    Audit(AuditQuery),
    /// A one-time sign-in link to the web UI (`shardfs web`); the web session acts for the
    /// caller this request is wrapped for (`As`), within what the credential allows.
    WebLogin,
    /// Public links to files (wrapped in `As`: they read as the caller).
    Share(ShareAction),
    /// Space and inodes as `df` of a path shows them: the nearest directory quota at or above
    /// `ino`, else the cluster's. Answered with `StatFsAt`.
    StatFsAt {
        ino: Ino,
    },
    /// A node's traffic since it started (sent every few seconds, for the cluster's metrics).
    NodeStats {
        id: NodeId,
        read_bytes: u64,
        written_bytes: u64,
        requests: u64,
    },
    /// The cluster's data keys (clients and nodes; see `crypt`). Answered with `DataKeys`.
    DataKeys,
    /// Manage the data keys (admin only). Answered with `Keys`.
    Keys(KeyAction),
    /// The names in a directory after `after`, at most `limit`, each with its inode and kind
    /// but without attributes: what a plain readdir needs (`ReadDir` reads every entry's
    /// inode record too). Answered with `Names`.
    ReadDirNames {
        ino: Ino,
        after: Option<Vec<u8>>,
        limit: u32,
    },
    /// The stored bytes of inline piece `id` (encrypted as on a node, if the cluster is),
    /// named by slot `index` of file `ino`: allowed with `cap` (READ, from the master), or to
    /// a caller who may read the file while that slot names the piece. Answered with
    /// `Inline`, the bytes in the frame's bulk.
    ReadInline {
        ino: Ino,
        index: u64,
        id: BlockId,
        cap: Cap,
    },
    /// A write to regular file `ino` drops its privileges, as a local filesystem's write
    /// does: `security.capability` goes; the set-user-ID bit and (if group-executable, or
    /// the writer is not in the file's group) the set-group-ID bit go unless the writer is
    /// root. Sent by a mount for the writes the kernel leaves to it. Answered with `Attr`.
    DropPrivs {
        ino: Ino,
        now: Timespec,
        /// The mode bits to clear: set by the master from the caller (whatever the client
        /// sent is overwritten).
        clear: u16,
    },
}

/// What `shardfs keys` asks of the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAction {
    /// The epochs and how many stored blocks each has.
    List,
    /// A new current key: new data is written under it.
    Rotate,
    /// Have every file rewritten under the current key by the sealing loop.
    Rekey,
    /// Forget an epoch's key; refused while any block still uses it.
    Drop(u32),
}

impl MasterRequest {
    /// What this request changes, as far as the request itself says (the response adds the
    /// inodes it reports changed or removed): the master logs these for other mounts, and the
    /// sending mount drops what it caches of them.
    pub fn touched(&self) -> Vec<Change> {
        use MasterRequest as R;
        let entry = |parent: &Ino, name: &Vec<u8>| Change::Entry {
            parent: *parent,
            name: name.clone(),
        };
        match self {
            R::Create { parent, name, .. }
            | R::Symlink { parent, name, .. }
            | R::Unlink { parent, name, .. }
            | R::Rmdir { parent, name, .. } => {
                vec![entry(parent, name), Change::Inode(*parent)]
            }
            R::Link {
                ino, parent, name, ..
            } => vec![
                entry(parent, name),
                Change::Inode(*parent),
                Change::Inode(*ino),
            ],
            R::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => vec![
                entry(parent, name),
                entry(new_parent, new_name),
                Change::Inode(*parent),
                Change::Inode(*new_parent),
            ],
            R::SetAttr { ino, .. }
            | R::Commit { ino, .. }
            | R::SetXattr { ino, .. }
            | R::RemoveXattr { ino, .. }
            | R::DropPrivs { ino, .. } => vec![Change::Inode(*ino)],
            _ => Vec::new(),
        }
    }
}

/// A credential the cluster issued, as `shardfs credentials list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialInfo {
    pub id: String,
    pub role: Role,
    /// The host that joined with it.
    pub host: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of its last connection to the master (0: never).
    pub last_seen: u64,
    pub revoked: bool,
    pub allow_root: bool,
    /// The uids and gids a client credential may act as.
    pub users: Users,
}

/// One entry of a file's history of concurrent changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix seconds.
    pub time: u64,
    pub ino: Ino,
    /// The content version the change was merged with (or applied on).
    pub version: u64,
    /// The mount that made the change: `user@host`.
    pub who: String,
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterResponse {
    Ok,
    /// Share links (a new one carries its `url`).
    Shares(Vec<ShareInfo>),
    /// The sign-in link of a `WebLogin`, valid once, until `expires` (Unix seconds).
    WebLogin {
        url: String,
        expires: u64,
    },
    Cluster(ClusterInfo),
    Attr(Attr),
    /// A namespace change: the new or linked inode (if any), the new attributes of every inode
    /// the change touched (parents included), and the inodes it removed.
    Changed {
        attr: Option<Attr>,
        changed: Vec<Attr>,
        gone: Vec<Ino>,
        /// For a file just created: the code its blocks are stored with (None: the cluster's).
        code: Option<EcParams>,
    },
    Link(Vec<u8>),
    Entries {
        entries: Vec<DirEntry>,
        more: bool,
    },
    Opened {
        attr: Attr,
        slots: Vec<Slot>,
        /// The code new blocks of this file are stored with (None: the cluster's).
        code: Option<EcParams>,
    },
    Placements(Vec<Placement>),
    StatFs(FsStats),
    Nodes(Vec<NodeInfo>),
    Health(Health),
    Scrubbed(ScrubReport),
    Xattr(Vec<u8>),
    XattrNames(Vec<Vec<u8>>),
    Session {
        id: u64,
        lease_ms: u64,
    },
    Lock(Option<LockRange>),
    /// Namespace and content changes: `next` is the `after` of the next Watch; `lost` says
    /// events were dropped before the watcher asked (it should forget everything it caches).
    Changes {
        next: u64,
        lost: bool,
        events: Vec<ChangeEvent>,
    },
    /// A commit whose base was stale, of content that cannot be merged: it went to a new file
    /// `copy` beside the original, which keeps its current content (`attr`).
    Conflicted {
        attr: Attr,
        copy: Vec<u8>,
        copy_attr: Attr,
    },
    /// A mergeable commit whose base was stale: nothing was committed; the file is now at
    /// `attr` (merge with it and commit again).
    Stale {
        attr: Attr,
    },
    Merged {
        text: Vec<u8>,
    },
    History(Vec<HistoryEntry>),
    /// A certificate signed for a joiner, and the cluster CA's certificate (DER).
    Joined {
        cert: Vec<u8>,
        ca: Vec<u8>,
    },
    /// A join token and when it expires (Unix seconds).
    Token {
        token: String,
        expires: u64,
    },
    Credentials(Vec<CredentialInfo>),
    /// The answer to a node's heartbeat: the ids of every revoked credential.
    Revoked(Vec<String>),
    /// The answer to a node's `Register`: the key that checks clients' capabilities.
    Registered {
        cap_key: [u8; 32],
        /// The cluster's code (blocks in it have plain ids; see `BlockMeta::content_id`).
        ec: EcParams,
    },
    Err(RemoteError),
    /// A page of the audit log; `next`: ask again with it as `after` for more.
    Audit {
        entries: Vec<AuditEntry>,
        next: Option<Vec<u8>>,
    },
    StatFsAt {
        stats: FsStats,
        /// Inodes that may still be made (None: no inode limit).
        files_free: Option<u64>,
    },
    /// None: the cluster stores content as it is (made before encryption, or without it).
    DataKeys(Option<crate::crypt::KeyRing>),
    /// The key epochs (epoch, blocks stored under it), the current one, and for a rekey the
    /// files marked for rewriting.
    Keys {
        current: u32,
        epochs: Vec<(u32, u64)>,
        marked: u64,
    },
    /// Names in a directory, in order; `more` if the listing goes on after the last.
    Names {
        entries: Vec<NameEntry>,
        more: bool,
    },
    /// An inline piece's stored bytes follow in the frame's bulk.
    Inline,
}

/// The inline pieces a `Commit` carries, in its frame's bulk: for each, its id (32 bytes),
/// its length (u32, big-endian) and its stored bytes.
pub mod inline_bulk {
    use super::{INLINE_COMMIT_MAX, INLINE_MAX};
    use crate::{BlockId, Error, Result};

    pub fn encode<'a>(pieces: impl IntoIterator<Item = (BlockId, &'a [u8])>) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, bytes) in pieces {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// The pieces of `bulk`, every length checked against the limits before it is taken.
    pub fn decode(bulk: &[u8]) -> Result<Vec<(BlockId, Vec<u8>)>> {
        if bulk.len() > INLINE_COMMIT_MAX + 64 * 36 {
            return Err(Error::invalid(format!(
                "{} bytes of inline pieces in one commit",
                bulk.len()
            )));
        }
        let mut out = Vec::new();
        let mut rest = bulk;
        while !rest.is_empty() {
            if rest.len() < 36 {
                return Err(Error::invalid("a truncated inline piece"));
            }
            let id = BlockId(rest[..32].try_into().expect("32 bytes"));
            let len = u32::from_be_bytes(rest[32..36].try_into().expect("4 bytes")) as usize;
            if len > INLINE_MAX {
                return Err(Error::invalid(format!(
                    "inline piece {id}: {len} bytes (at most {INLINE_MAX})"
                )));
            }
            if rest.len() - 36 < len {
                return Err(Error::invalid(format!(
                    "inline piece {id} truncated: {len} bytes, {} given",
                    rest.len() - 36
                )));
            }
            out.push((id, rest[36..36 + len].to_vec()));
            rest = &rest[36 + len..];
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_and_refuses_what_is_out_of_bounds() {
            let (a, b) = (BlockId([1; 32]), BlockId([2; 32]));
            let bulk = encode([(a, &b"hello"[..]), (b, &[7u8; 100][..])]);
            let got = decode(&bulk).unwrap();
            assert_eq!(got, vec![(a, b"hello".to_vec()), (b, vec![7; 100])]);
            assert!(decode(&bulk[..bulk.len() - 1]).is_err(), "truncated");
            let mut big = a.0.to_vec();
            big.extend_from_slice(&((INLINE_MAX + 1) as u32).to_be_bytes());
            big.resize(big.len() + INLINE_MAX + 1, 0);
            assert!(decode(&big).is_err(), "over the piece limit");
            assert!(decode(&[]).unwrap().is_empty());
        }
    }
}

/// What a quota counts: a directory's subtree or a uid's files everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QuotaTarget {
    Dir(Ino),
    Uid(u32),
}

/// A quota's limits (0: none) and what is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaInfo {
    pub bytes_limit: u64,
    pub inodes_limit: u64,
    pub bytes_used: u64,
    pub inodes_used: u64,
}

/// What to do with share links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareAction {
    /// A new public link to the file at `path` (from the cluster's root), good for
    /// `expires_secs`; with a `password`, a download asks for it.
    Create {
        path: String,
        expires_secs: u64,
        password: Option<String>,
    },
    /// The caller's links (an admin's: everyone's).
    List,
    /// End link `id` (the caller's own; an admin: any).
    Revoke { id: String },
}

/// A share link as `shardfs share list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    pub id: String,
    pub path: String,
    /// Who it reads as, and the credential that made it.
    pub uid: u32,
    pub credential: String,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
    /// Whether a download asks for a password.
    pub password: bool,
    /// The link itself: only in the answer that made it.
    pub url: Option<String>,
}

/// Which audit entries a query wants. `after` is the `next` of the previous page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Unix nanoseconds: entries from then on.
    pub since_ns: u64,
    /// Entries whose path (or rename target) is this path or under it.
    pub path: Option<String>,
    /// Entries of this credential id, uid, or mount user.
    pub user: Option<String>,
    pub after: Option<Vec<u8>>,
    pub limit: u32,
}

impl AuditQuery {
    /// Longest `after` cursor the master accepts (its own are 13 bytes).
    pub const MAX_CURSOR: usize = 64;
    /// Most entries one answer holds.
    pub const MAX_LIMIT: u32 = 1000;
}

/// One entry of the audit log: who did what to which path, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix nanoseconds.
    pub time_ns: u64,
    /// The credential id the request came with ("" without one).
    pub credential: String,
    /// That credential's role (admin, client, node, joiner; "" without one).
    pub role: String,
    /// The user the request acted for, after squashing (for a refused request: as claimed).
    pub uid: u32,
    pub gid: u32,
    /// `user@host` of the mount session, else the host the credential was issued to.
    pub host: String,
    /// The sender's network address.
    pub addr: String,
    /// What was asked: create, mkdir, write, rename, unlink, setattr, chown, drain, …
    pub op: String,
    /// The path it acted on, from the root of the cluster ("" for cluster-wide actions).
    pub path: String,
    /// The second path of a rename or link.
    pub to: Option<String>,
    /// Details of the request (new mode, size, xattr name, node id, …).
    pub detail: String,
    /// "ok", or the error it ended with.
    pub outcome: String,
    /// Refused for the caller's identity or permissions (EACCES, EPERM), rather than ok or
    /// failed for another reason.
    pub refused: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// Store shard `index` of `block`; its bytes follow as bulk and must hash to `hash`. A
    /// client needs a capability with the write right for the block.
    Put {
        block: BlockId,
        index: u8,
        hash: [u8; 32],
        cap: Cap,
    },
    /// Fetch a shard, or the `(offset, length)` range of it; the bytes come back as bulk. The
    /// whole shard is verified against its stored hash either way. A client needs a
    /// capability with the read right for the block.
    Get {
        block: BlockId,
        index: u8,
        range: Option<(u32, u32)>,
        cap: Cap,
    },
    Delete {
        shards: Vec<(BlockId, u8)>,
    },
    Stat,
    /// Rebuild shards `rebuild` (index, node address) of a block from `sources` (index, node
    /// address of a holder of that shard): fetch k of them, re-encode, check each rebuilt shard
    /// against its recorded hash, and store it on its node.
    Rebuild {
        block: BlockMeta,
        sources: Vec<(u8, String)>,
        rebuild: Vec<(u8, String)>,
    },
    /// Verify every shard after `after` (in block-id, index order), up to `limit` of them;
    /// corrupt ones are quarantined. Answered with `Scrubbed`.
    Scrub {
        after: Option<(BlockId, u8)>,
        limit: u32,
    },
    /// Delete shards nothing references, if they are older than `min_age_secs` (a shard just
    /// uploaded is referenced only once its block is committed).
    DeleteOrphans {
        shards: Vec<(BlockId, u8)>,
        min_age_secs: u64,
    },
    /// Check a block description (master only): fetch its shards from `sources` (index, node
    /// address), decode, and compare the content's blake3 with the id and every shard hash
    /// with the description. Answered `Ok` or an error saying what does not match.
    Verify {
        block: BlockMeta,
        sources: Vec<(u8, String)>,
    },
    /// Seal a slot (master only): see [`SealJob`]. Answered `Sealed`.
    Seal(SealJob),
}

/// A slot to seal: read its base block (`base`, with (index, address) of holders of its
/// shards) and its pieces (the same), lay `extents` over the first `base_len` bytes of the
/// base, encode the `len` bytes that result with code `ec` and store shard i on `targets[i]`
/// (node, address). Answered `Sealed` with the new block's description once every shard is
/// stored; on a failure after some were stored, `Sealed` too, with `complete: false`, so the
/// master can collect them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealJob {
    pub base: Option<(BlockMeta, Vec<(u8, String)>)>,
    pub base_len: u64,
    pub pieces: Vec<(BlockMeta, Vec<(u8, String)>)>,
    pub extents: Vec<crate::extent::Extent>,
    pub len: u64,
    pub ec: EcParams,
    pub targets: Vec<(NodeId, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeResponse {
    Ok,
    Shard {
        hash: [u8; 32],
    },
    Stat {
        id: NodeId,
        capacity: u64,
        free: u64,
        used: u64,
        shards: u64,
    },
    /// A page of a scrub: the intact shards checked, the corrupt ones, and where the next page
    /// starts (None: this was the last).
    Scrubbed {
        intact: Vec<(BlockId, u8)>,
        corrupt: Vec<(BlockId, u8)>,
        next: Option<(BlockId, u8)>,
    },
    /// A sealed slot's new block; `complete`: every shard is stored (see `NodeRequest::Seal`).
    Sealed {
        block: BlockMeta,
        complete: bool,
        error: Option<String>,
    },
    Err(RemoteError),
}

/// The date (UTC, YYYY-MM-DD) of a Unix time.
pub fn civil_date(secs: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The name of a conflicted copy of `name`: "STEM (conflicted copy from HOST YYYY-MM-DD).EXT",
/// with "copy N" for the N-th one of a day (N > 1), shortened to fit NAME_MAX.
pub fn conflicted_name(name: &[u8], host: &str, secs: i64, n: u32) -> Vec<u8> {
    let (stem, mut ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    // The host name is whatever a mount said: no '/', NUL or control characters, and short.
    let host: String = host
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .take(64)
        .collect();
    let copy = if n > 1 {
        format!("copy {n}")
    } else {
        "copy".into()
    };
    let suffix = format!(" (conflicted {copy} from {host} {})", civil_date(secs));
    if suffix.len() + ext.len() > NAME_MAX {
        ext = b"";
    }
    let keep = NAME_MAX
        .saturating_sub(suffix.len() + ext.len())
        .min(stem.len());
    [&stem[..keep], suffix.as_bytes(), ext].concat()
}

/// Check a name from a request: not empty, no '/', no NUL, not "." or "..", at most NAME_MAX.
pub fn check_name(name: &[u8]) -> crate::Result<()> {
    use crate::{Error, ErrorCode};
    if name.len() > NAME_MAX {
        return Err(Error::fs(
            ErrorCode::NameTooLong,
            "file name longer than 255 bytes",
        ));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::invalid(format!(
            "invalid file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_ranges_parse_print_and_contain() {
        let r: IdRanges = "1000-1999, 3000".parse().unwrap();
        assert_eq!(r.0, vec![(1000, 1999), (3000, 3000)]);
        assert_eq!(r.to_string(), "1000-1999,3000");
        assert!(r.contains(1000) && r.contains(1999) && r.contains(3000));
        assert!(!r.contains(999) && !r.contains(2000) && !r.contains(0));
        assert!(IdRanges::default().contains(0));
        assert!("5-1".parse::<IdRanges>().is_err());
        assert!("x".parse::<IdRanges>().is_err());
        assert!("".parse::<IdRanges>().is_err());
        let long = vec!["1"; IdRanges::MAX + 1].join(",");
        assert!(long.parse::<IdRanges>().is_err());
    }

    #[test]
    fn timespec_round_trip() {
        let t = Timespec {
            secs: 1_700_000_000,
            nsecs: 123_456_789,
        };
        assert_eq!(Timespec::from_system(t.to_system()), t);
        let neg = Timespec {
            secs: -5,
            nsecs: 250_000_000,
        };
        assert_eq!(Timespec::from_system(neg.to_system()), neg);
    }

    #[test]
    fn names() {
        assert!(check_name(b"a").is_ok());
        assert!(check_name(b"").is_err());
        assert!(check_name(b"a/b").is_err());
        assert!(check_name(&[b'x'; 256]).is_err());
        assert!(check_name(&[b'x'; 255]).is_ok());
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(1_795_298_352), "2026-11-21");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
    }

    fn meta(len: u64, shard_size: u32, nodes: &[u64]) -> BlockMeta {
        BlockMeta {
            id: BlockId::of(b"block"),
            ec: EcParams { k: 4, m: 2 },
            len,
            shard_size,
            shards: nodes
                .iter()
                .map(|n| ShardLoc {
                    node: NodeId(*n),
                    hash: [0; 32],
                })
                .collect(),
        }
    }

    #[test]
    fn block_descriptions_are_checked() {
        let ec = EcParams { k: 4, m: 2 };
        let bs = 4 << 20;
        assert!(meta(1000, 250, &[1, 2, 3, 4, 5, 6]).check(ec, bs).is_ok());
        assert!(meta(1001, 251, &[1, 2, 3, 4, 5, 6]).check(ec, bs).is_ok());
        // Zero, short, huge shards; too long; wrong code; shard count; one node twice.
        assert!(meta(1000, 0, &[1, 2, 3, 4, 5, 6]).check(ec, bs).is_err());
        assert!(meta(1000, 249, &[1, 2, 3, 4, 5, 6]).check(ec, bs).is_err());
        assert!(meta(1000, u32::MAX, &[1, 2, 3, 4, 5, 6])
            .check(ec, bs)
            .is_err());
        assert!(meta(bs + 1, 1 << 20, &[1, 2, 3, 4, 5, 6])
            .check(ec, bs)
            .is_err());
        assert!(meta(1000, 250, &[1, 2, 3, 4, 5, 6])
            .check(EcParams { k: 4, m: 3 }, bs)
            .is_err());
        assert!(meta(1000, 250, &[1, 2, 3, 4, 5]).check(ec, bs).is_err());
        assert!(meta(1000, 250, &[1, 2, 3, 4, 5, 5]).check(ec, bs).is_err());
    }

    #[test]
    fn extreme_times_are_refused_and_never_panic() {
        for secs in [i64::MAX, i64::MIN, (1 << 40) + 1] {
            let t = Timespec { secs, nsecs: 0 };
            assert!(t.check().is_err());
            let _ = t.to_system();
        }
        assert!(Timespec {
            secs: 0,
            nsecs: 1_000_000_000
        }
        .check()
        .is_err());
        assert!(Timespec::now().check().is_ok());
        let t = Timespec { secs: -5, nsecs: 7 };
        assert!(t.check().is_ok());
        assert_eq!(Timespec::from_system(t.to_system()), t);
    }

    #[test]
    fn conflicted_names_are_one_valid_name_whatever_the_host() {
        let n = conflicted_name(b"report.pdf", "evil/../../host\0", 0, 1);
        assert!(
            !n.contains(&b'/') && !n.contains(&0),
            "{:?}",
            String::from_utf8_lossy(&n)
        );
        let n = conflicted_name(b"report.pdf", &"h".repeat(10_000), 0, 1);
        assert!(n.len() <= NAME_MAX && n.ends_with(b".pdf"));
        let long_ext = [b"a.".as_slice(), &[b'x'; 250]].concat();
        assert!(conflicted_name(&long_ext, "host", 0, 2).len() <= NAME_MAX);
    }
}
