//! The namespace and block map in RocksDB.
//!
//! Key families, each behind a one-byte prefix with big-endian integers so range scans come out
//! in order:
//!
//! | key                               | value                                   |
//! |-----------------------------------|-----------------------------------------|
//! | `C`                               | cluster record (id, code, block size)   |
//! | `c` `next_ino`                    | next inode number (u64)                 |
//! | `c` `encrypted`                   | the cluster has data keys (their file missing is an error) |
//! | `I` ino                           | inode: attributes, parent, link target  |
//! | `D` parent name                   | directory entry: child ino and kind     |
//! | `S` ino index                     | file slot: base block, bytes used, extents of small writes (see `slots`) |
//! | `B` block-id                      | block: code, length, shard hashes+nodes, reference count |
//! | `G` block-id                      | unreferenced block waiting for its shards to be deleted |
//! | `N` node-id                       | storage node: address and last reported capacity |
//! | `R` block-id                      | shards of the block found corrupt or missing, waiting for repair |
//! | `X` node-id                       | the node is being drained (value: unix seconds since) |
//! | `A` ino name                      | extended attribute value                |
//! | `O` ino                           | unlinked file still open on some mount (an orphan) |
//! | `M` session-id                    | a mount session was open (value: its credential; claims its locks after a restart) |
//! | `W` session-id ino                | the session has the file open for writing (so a claim after a restart is checked) |
//! | `T` ino                           | merge document of a text file edited concurrently (see `merge`); sealed with a data key in an encrypted cluster |
//! | `K` credential-id                 | a credential the CA issued: role, host, created, revoked (see `credentials`) |
//! | `J` blake3(token secret)          | an unused join token: role, expiry                   |
//! | `L` time-ns seq                   | an audit log entry (see `audit`)                     |
//! | `Q` `d` ino / `Q` `u` uid          | a directory's or a uid's quota: limits and usage (see `quota`) |
//! | `Y` block-id                      | an inline piece's stored bytes (see `inline`); its `B` record is beside it |
//!
//! Every value starts with a format version byte. Every POSIX operation is one `WriteBatch`,
//! prepared under the writer lock (so its checks and its writes see the same state) and
//! written with the WAL, so a committed operation survives kill -9.

mod blocks;
mod cluster;
mod files;
mod inline;
use inline::{enc_inline, k_inline};
mod namespace;
mod policy;
mod quota;
mod sealing;
mod store;
mod xattrs;

use crate::slots::{dec_slot, enc_slot, SlotRecord};
use crate::MasterError;
use policy::k_policy;
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use sealing::k_frag;
pub use sealing::Swap;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use shardfs_common::ec::EcParams;
use shardfs_common::extent;
use shardfs_common::proto::{
    check_name, conflicted_name, Attr, BlockMeta, ClusterInfo, DirEntry, FileKind, NameEntry,
    NewSlot, SetAttr, Slot, Timespec, RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use shardfs_common::IdMap;
use shardfs_common::{BlockId, Error, ErrorCode, Ino, NodeId, ROOT_INO};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const VERSION: u8 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InodeRecord {
    pub attr: Attr,
    /// Parent directory (directories only; used to refuse moving a directory into itself).
    pub parent: Ino,
    pub target: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DentryRecord {
    ino: Ino,
    kind: FileKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub meta: BlockMeta,
    pub refs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcRecord {
    pub meta: BlockMeta,
    /// Unix seconds when the block lost its last reference.
    pub since: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    pub addr: String,
    pub capacity: u64,
    pub free: u64,
    pub used: u64,
    pub shards: u64,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend(postcard::to_stdvec(v).expect("encoding a record cannot fail"));
    out
}

fn dec<T: DeserializeOwned>(key: &[u8], raw: &[u8]) -> Result<T, MasterError> {
    dec_as(key, VERSION, raw)
}

fn dec_as<T: DeserializeOwned>(key: &[u8], version: u8, raw: &[u8]) -> Result<T, MasterError> {
    match raw.split_first() {
        Some((v, rest)) if *v == version => postcard::from_bytes(rest)
            .map_err(|e| MasterError::Corrupt(format!("record {key:02x?}: {e}"))),
        Some((v, _)) => Err(MasterError::Corrupt(format!(
            "record {key:02x?} has format version {v}, this master reads {version}"
        ))),
        None => Err(MasterError::Corrupt(format!("record {key:02x?} is empty"))),
    }
}

/// Inode records carry their own format version: 2 added the content version to the
/// attributes; records of format 1 read as version 0.
const INODE_VERSION: u8 = 2;

fn enc_inode(r: &InodeRecord) -> Vec<u8> {
    let mut out = vec![INODE_VERSION];
    out.extend(postcard::to_stdvec(r).expect("encoding a record cannot fail"));
    out
}

fn dec_inode(key: &[u8], raw: &[u8]) -> Result<InodeRecord, MasterError> {
    #[derive(Deserialize)]
    struct AttrV1 {
        ino: Ino,
        kind: FileKind,
        perm: u16,
        nlink: u32,
        uid: u32,
        gid: u32,
        size: u64,
        atime: Timespec,
        mtime: Timespec,
        ctime: Timespec,
        rdev: u32,
    }
    #[derive(Deserialize)]
    struct InodeRecordV1 {
        attr: AttrV1,
        parent: Ino,
        target: Option<Vec<u8>>,
    }
    match raw.first() {
        Some(&INODE_VERSION) => dec_as(key, INODE_VERSION, raw),
        Some(&1) => {
            let r: InodeRecordV1 = dec(key, raw)?;
            let a = r.attr;
            Ok(InodeRecord {
                attr: Attr {
                    ino: a.ino,
                    kind: a.kind,
                    perm: a.perm,
                    nlink: a.nlink,
                    uid: a.uid,
                    gid: a.gid,
                    size: a.size,
                    atime: a.atime,
                    mtime: a.mtime,
                    ctime: a.ctime,
                    rdev: a.rdev,
                    version: 0,
                },
                parent: r.parent,
                target: r.target,
            })
        }
        _ => dec_as(key, INODE_VERSION, raw),
    }
}

/// A key: the family byte, then the parts.
fn key(family: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![family];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn k_inode(ino: Ino) -> Vec<u8> {
    key(b'I', &[&ino.to_be_bytes()])
}

fn k_dentry_prefix(parent: Ino) -> Vec<u8> {
    key(b'D', &[&parent.to_be_bytes()])
}

fn k_dentry(parent: Ino, name: &[u8]) -> Vec<u8> {
    key(b'D', &[&parent.to_be_bytes(), name])
}

fn k_slot_prefix(ino: Ino) -> Vec<u8> {
    key(b'S', &[&ino.to_be_bytes()])
}

fn k_slot(ino: Ino, index: u64) -> Vec<u8> {
    key(b'S', &[&ino.to_be_bytes(), &index.to_be_bytes()])
}

fn k_block(id: &BlockId) -> Vec<u8> {
    key(b'B', &[&id.0])
}

fn k_gc(id: &BlockId) -> Vec<u8> {
    key(b'G', &[&id.0])
}

fn k_xattr_prefix(ino: Ino) -> Vec<u8> {
    key(b'A', &[&ino.to_be_bytes()])
}

fn k_xattr(ino: Ino, name: &[u8]) -> Vec<u8> {
    key(b'A', &[&ino.to_be_bytes(), name])
}

fn k_orphan(ino: Ino) -> Vec<u8> {
    key(b'O', &[&ino.to_be_bytes()])
}

fn k_merge(ino: Ino) -> Vec<u8> {
    key(b'T', &[&ino.to_be_bytes()])
}

/// The first key after every key that starts with `prefix` (None: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn k_session(id: u64) -> Vec<u8> {
    key(b'M', &[&id.to_be_bytes()])
}

fn k_write(session: u64, ino: Ino) -> Vec<u8> {
    key(b'W', &[&session.to_be_bytes(), &ino.to_be_bytes()])
}

/// Linux's limits: XATTR_NAME_MAX and XATTR_SIZE_MAX.
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;

fn k_lost(id: &BlockId) -> Vec<u8> {
    key(b'R', &[&id.0])
}

/// Shards of one block known to be lost on nodes that are otherwise alive: (index, node).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LostRecord {
    pub shards: Vec<(u8, NodeId)>,
}

fn k_node(id: NodeId) -> Vec<u8> {
    key(b'N', &[&id.0.to_be_bytes()])
}

const K_CLUSTER: &[u8] = b"C";
const K_NEXT_INO: &[u8] = b"cnext_ino";
/// Present once the cluster has data keys.
const K_ENCRYPTED: &[u8] = b"cencrypted";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One operation's pending changes: reads see earlier writes of the same operation.
struct Txn<'a> {
    meta: &'a Meta,
    batch: WriteBatch,
    inodes: HashMap<Ino, Option<InodeRecord>>,
    blocks: IdMap<Option<BlockRecord>>,
    /// Block records as this operation read them: one it leaves as it was is not written
    /// again (a commit of a slot of many pieces refers to each anew).
    blocks_read: IdMap<Option<BlockRecord>>,
    /// Inode records as they were before this operation (kept while quotas exist).
    orig: HashMap<Ino, Option<InodeRecord>>,
    quotas: bool,
}

impl<'a> Txn<'a> {
    fn new(meta: &'a Meta) -> Self {
        Txn {
            meta,
            batch: WriteBatch::default(),
            inodes: HashMap::new(),
            blocks: IdMap::default(),
            blocks_read: IdMap::default(),
            orig: HashMap::new(),
            quotas: meta.quotas_on.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn inode(&mut self, ino: Ino) -> Result<InodeRecord, MasterError> {
        if let Some(v) = self.inodes.get(&ino) {
            return v.clone().ok_or_else(|| not_found_ino(ino));
        }
        let rec = self.meta.inode(ino)?;
        if self.quotas {
            self.orig.insert(ino, Some(rec.clone()));
        }
        self.inodes.insert(ino, Some(rec.clone()));
        Ok(rec)
    }

    fn put_inode(&mut self, rec: InodeRecord) {
        self.inodes.insert(rec.attr.ino, Some(rec));
    }

    fn delete_inode(&mut self, ino: Ino) -> Result<(), MasterError> {
        self.inodes.insert(ino, None);
        self.batch.delete(k_orphan(ino));
        self.batch.delete(k_frag(ino));
        self.batch.delete(k_policy(ino));
        for k in self.meta.keys(&k_xattr_prefix(ino))? {
            self.batch.delete(k);
        }
        // Release the file's blocks.
        let slots = self.meta.slot_records(ino)?;
        for (index, s) in slots {
            self.batch.delete(k_slot(ino, index));
            self.unref_slot(&s)?;
        }
        Ok(())
    }

    fn block(&mut self, id: &BlockId) -> Result<Option<BlockRecord>, MasterError> {
        if let Some(v) = self.blocks.get(id) {
            return Ok(v.clone());
        }
        let rec = self.meta.get::<BlockRecord>(&k_block(id))?;
        self.blocks.insert(*id, rec.clone());
        self.blocks_read.insert(*id, rec.clone());
        Ok(rec)
    }

    /// Drop the references slot `s` holds (its base block and its pieces).
    fn unref_slot(&mut self, s: &SlotRecord) -> Result<(), MasterError> {
        for id in s.refs() {
            self.unref(&id)?;
        }
        Ok(())
    }

    fn unref(&mut self, id: &BlockId) -> Result<(), MasterError> {
        if let Some(mut rec) = self.block(id)? {
            rec.refs = rec.refs.saturating_sub(1);
            self.blocks.insert(*id, Some(rec));
        }
        Ok(())
    }

    fn commit(mut self) -> Result<Changes, MasterError> {
        // Usage moves with the change, in the same batch (see `quota`).
        let mut quotas = self
            .quotas
            .then(|| self.meta.quotas.lock().expect("quotas lock"));
        let accounted = match quotas.as_deref() {
            Some(q) => self.account(q)?,
            None => Vec::new(),
        };
        let mut changes = Changes::default();
        for (ino, rec) in self.inodes.drain() {
            match rec {
                Some(r) => {
                    self.batch.put(k_inode(ino), enc_inode(&r));
                    changes.attrs.push(r.attr);
                }
                None => {
                    self.batch.delete(k_inode(ino));
                    self.batch.delete(k_merge(ino));
                    changes.gone.push(ino);
                }
            }
        }
        for (id, rec) in self.blocks.drain() {
            let read = self.blocks_read.get(&id);
            match rec {
                // As it was: nothing to write.
                Some(r) if matches!(read, Some(Some(o)) if *o == r) => {}
                Some(r) if r.refs > 0 => {
                    self.batch.put(k_block(&id), enc(&r));
                    // A block with a record has no collection record; one without may
                    // (referenced again before it was collected).
                    if !matches!(read, Some(Some(_))) {
                        self.batch.delete(k_gc(&id));
                    }
                }
                Some(r) => {
                    self.batch.delete(k_block(&id));
                    self.batch.put(
                        k_gc(&id),
                        enc(&GcRecord {
                            meta: r.meta,
                            since: unix_now(),
                        }),
                    );
                }
                None => {}
            }
        }
        self.meta.write(self.batch)?;
        if let Some(q) = quotas.as_deref_mut() {
            self.meta.mirror_quotas(q, accounted);
        }
        Ok(changes)
    }
}

/// What a commit did.
pub enum Committed {
    Done(Attr),
    /// The writer's base is stale and it can merge: nothing committed; the current state.
    Stale(Attr),
    /// The content went to a conflicted copy named `name`; the original is unchanged.
    Copy {
        original: Attr,
        name: Vec<u8>,
        copy: Attr,
        changes: Changes,
    },
}

/// The inodes an operation changed (their new attributes) and removed.
#[derive(Debug, Default)]
pub struct Changes {
    pub attrs: Vec<Attr>,
    pub gone: Vec<Ino>,
}

impl Changes {
    pub fn attr(&self, ino: Ino) -> Option<Attr> {
        self.attrs.iter().find(|a| a.ino == ino).cloned()
    }
}

fn not_found_ino(ino: Ino) -> MasterError {
    MasterError::Fs(Error::not_found(format!("inode {ino} does not exist")))
}

fn fs_err(code: ErrorCode, msg: impl Into<String>) -> MasterError {
    MasterError::Fs(Error::fs(code, msg))
}

pub struct Meta {
    db: DB,
    /// Serializes mutations so each operation's checks and writes see one state.
    writer: Mutex<()>,
    /// Files open on some mount: how many sessions hold each.
    held: Mutex<HashMap<Ino, usize>>,
    /// The session that made each file's current content version (recent changes only): a
    /// mount's own commits racing each other are not conflicts.
    writers: Mutex<HashMap<Ino, (u64, u64)>>,
    next_ino: Mutex<u64>,
    pub cluster: ClusterInfo,
    sync: bool,
    /// Every quota (see `quota`), and whether there is any.
    quotas: Mutex<quota::Quotas>,
    quotas_on: std::sync::atomic::AtomicBool,
    /// The data keys (see `keys`), for records kept sealed.
    ring: std::sync::RwLock<Option<shardfs_common::crypt::KeyRing>>,
}

impl Meta {
    /// Open (or create) the metadata store. `ec` and `block_size` only apply to a new cluster.
    pub fn open(
        dir: &Path,
        ec: EcParams,
        block_size: u64,
        sync: bool,
    ) -> Result<(Self, bool), MasterError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        let db = DB::open(&opts, dir).map_err(|e| {
            MasterError::Db(format!("cannot open metadata store {}: {e}", dir.display()))
        })?;
        let mut created = false;
        let cluster: ClusterInfo = match db.get(K_CLUSTER).map_err(db_err)? {
            Some(raw) => dec(K_CLUSTER, &raw)?,
            None => {
                created = true;
                let info = ClusterInfo {
                    cluster_id: rand::random(),
                    ec,
                    block_size,
                };
                let now = Timespec::now();
                let root = InodeRecord {
                    attr: Attr {
                        ino: ROOT_INO,
                        kind: FileKind::Dir,
                        perm: 0o755,
                        nlink: 2,
                        uid: 0,
                        gid: 0,
                        size: 0,
                        atime: now,
                        mtime: now,
                        ctime: now,
                        rdev: 0,
                        version: 0,
                    },
                    parent: ROOT_INO,
                    target: None,
                };
                let mut b = WriteBatch::default();
                b.put(k_inode(ROOT_INO), enc_inode(&root));
                b.put(K_NEXT_INO, (ROOT_INO + 1).to_be_bytes());
                b.put(K_CLUSTER, enc(&info));
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.write_opt(b, &wo).map_err(db_err)?;
                info
            }
        };
        let next = db
            .get(K_NEXT_INO)
            .map_err(db_err)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(ROOT_INO + 1);
        let quotas = quota::Quotas::load(&db)?;
        Ok((
            Meta {
                quotas_on: std::sync::atomic::AtomicBool::new(!quotas.is_empty()),
                quotas: Mutex::new(quotas),
                ring: std::sync::RwLock::new(None),
                db,
                writer: Mutex::new(()),
                held: Mutex::new(HashMap::new()),
                writers: Mutex::new(HashMap::new()),
                next_ino: Mutex::new(next),
                cluster,
                sync,
            },
            created,
        ))
    }
}

fn check_xattr_name(name: &[u8]) -> Result<(), MasterError> {
    if name.is_empty() || name.contains(&0) {
        return Err(fs_err(ErrorCode::Invalid, "invalid attribute name"));
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(fs_err(ErrorCode::Range, "attribute name over 255 bytes"));
    }
    Ok(())
}

fn db_err(e: rocksdb::Error) -> MasterError {
    MasterError::Db(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_before_the_next_prefix() {
        assert_eq!(prefix_end(b"S\x01"), Some(b"S\x02".to_vec()));
        assert_eq!(prefix_end(b"S\xff"), Some(b"T".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
    use shardfs_common::proto::ShardLoc;

    fn meta_for(id: BlockId) -> BlockMeta {
        BlockMeta {
            id,
            ec: EcParams::DEFAULT,
            len: 10,
            shard_size: 3,
            shards: (0..6)
                .map(|i| ShardLoc {
                    node: NodeId(i),
                    hash: [i as u8; 32],
                })
                .collect(),
        }
    }

    fn slot(index: u64, id: BlockId) -> NewSlot {
        NewSlot {
            index,
            id: Some(id),
            used: 10,
            meta: Some(meta_for(id)),
            extents: Vec::new(),
        }
    }

    fn refs(m: &Meta, id: &BlockId) -> Option<u64> {
        m.get::<BlockRecord>(&k_block(id)).unwrap().map(|b| b.refs)
    }

    /// A fresh store with one empty file `name` in the root.
    fn store_with_file(name: &[u8]) -> (tempfile::TempDir, Meta, Attr, Timespec) {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = Meta::open(dir.path(), EcParams::DEFAULT, 4096, false).unwrap();
        let now = Timespec::now();
        let (f, _) = m
            .create(ROOT_INO, name, FileKind::File, 0o644, 0, 0, 0, None, now)
            .unwrap();
        (dir, m, f, now)
    }

    #[test]
    fn attributes_go_with_the_last_link_and_slots_past_the_size_are_dropped() {
        let (_dir, m, f, now) = store_with_file(b"f");
        m.setxattr(f.ino, b"user.x", b"v", 0, now).unwrap();
        m.link(f.ino, ROOT_INO, b"g", now).unwrap();
        m.unlink(ROOT_INO, b"f", now).unwrap();
        assert_eq!(m.getxattr(f.ino, b"user.x").unwrap(), b"v", "one link left");
        m.unlink(ROOT_INO, b"g", now).unwrap();
        assert!(m.keys(&k_xattr_prefix(f.ino)).unwrap().is_empty());
        // A commit whose size leaves one of its own new blocks past the end keeps no slot for it.
        let (h, _) = m
            .create(ROOT_INO, b"h", FileKind::File, 0o644, 0, 0, 0, None, now)
            .unwrap();
        let (a, b) = (BlockId::of(b"a"), BlockId::of(b"b"));
        m.commit(
            h.ino,
            &[slot(0, a), slot(1, b)],
            &[],
            10,
            now,
            None,
            None,
            false,
            0,
            "",
        )
        .unwrap();
        assert_eq!(m.slot_records(h.ino).unwrap().len(), 1);
        assert_eq!(refs(&m, &b), None, "the dropped block is unreferenced");
    }

    #[test]
    fn one_commit_replacing_a_slot_twice_counts_references_once() {
        let (_dir, m, f, now) = store_with_file(b"f");
        let (o, p, n) = (
            BlockId::of(b"old"),
            BlockId::of(b"partial"),
            BlockId::of(b"new"),
        );
        m.commit(f.ino, &[slot(0, o)], &[], 10, now, None, None, false, 0, "")
            .unwrap();
        assert_eq!(refs(&m, &o), Some(1));
        // A superseded upload and its replacement for the same slot, in one commit.
        m.commit(
            f.ino,
            &[slot(0, p), slot(0, n)],
            &[],
            10,
            now,
            None,
            None,
            false,
            0,
            "",
        )
        .unwrap();
        assert_eq!(refs(&m, &n), Some(1));
        assert_eq!(
            refs(&m, &o),
            None,
            "old block must be released exactly once"
        );
        assert_eq!(refs(&m, &p), None);
        let collecting = Mutex::new(HashSet::new());
        let gc: Vec<BlockId> = m
            .gc_claim(0, 100, &collecting)
            .unwrap()
            .iter()
            .map(|g| g.meta.id)
            .collect();
        assert!(
            gc.contains(&o) && gc.contains(&p) && !gc.contains(&n),
            "{gc:?}"
        );
        // A second name for the same content shares the block; unlinking one keeps it.
        let (g, _) = m
            .create(ROOT_INO, b"g", FileKind::File, 0o644, 0, 0, 0, None, now)
            .unwrap();
        m.commit(
            g.ino,
            &[NewSlot {
                index: 0,
                id: Some(n),
                used: 10,
                meta: None,
                extents: Vec::new(),
            }],
            &[],
            10,
            now,
            None,
            None,
            false,
            0,
            "",
        )
        .unwrap();
        assert_eq!(refs(&m, &n), Some(2));
        m.unlink(ROOT_INO, b"f", now).unwrap();
        assert_eq!(refs(&m, &n), Some(1));
        assert!(m.gc_claim(0, 100, &collecting).unwrap().is_empty());
    }

    #[test]
    fn a_stale_commit_becomes_a_conflicted_copy_or_asks_for_a_merge() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = Meta::open(dir.path(), EcParams::DEFAULT, 4096, false).unwrap();
        let now = Timespec {
            secs: 1_795_298_352,
            nsecs: 0,
        };
        let (f, _) = m
            .create(
                ROOT_INO,
                b"report.pdf",
                FileKind::File,
                0o640,
                7,
                8,
                0,
                None,
                now,
            )
            .unwrap();
        assert_eq!(f.version, 0);
        let Committed::Done(a) = m
            .commit(f.ino, &[], &[], 0, now, None, Some(0), false, 1, "a")
            .unwrap()
        else {
            panic!("a commit on the current version goes through")
        };
        assert_eq!(a.version, 1);
        // Session 1 racing itself is not a conflict.
        assert!(matches!(
            m.commit(f.ino, &[], &[], 0, now, None, Some(0), false, 1, "a")
                .unwrap(),
            Committed::Done(_)
        ));
        // Session 2 read version 0: a mergeable writer is told to merge, others get a copy.
        assert!(matches!(
            m.commit(f.ino, &[], &[], 0, now, None, Some(0), true, 2, "b")
                .unwrap(),
            Committed::Stale(_)
        ));
        let Committed::Copy {
            original,
            name,
            copy,
            ..
        } = m
            .commit(f.ino, &[], &[], 0, now, None, Some(0), false, 2, "hostb")
            .unwrap()
        else {
            panic!("expected a conflicted copy")
        };
        assert_eq!(original.version, 2);
        assert_eq!(
            name,
            b"report (conflicted copy from hostb 2026-11-21).pdf".to_vec()
        );
        assert_eq!((copy.uid, copy.gid, copy.perm), (7, 8, 0o640));
        assert_eq!(m.lookup(ROOT_INO, &name).unwrap().ino, copy.ino);
        let Committed::Copy { name, .. } = m
            .commit(f.ino, &[], &[], 0, now, None, Some(0), false, 2, "hostb")
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            name,
            b"report (conflicted copy 2 from hostb 2026-11-21).pdf".to_vec()
        );
    }

    #[test]
    fn a_cut_shortens_stored_blocks_even_if_the_file_grew_again() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = Meta::open(dir.path(), EcParams::DEFAULT, 4096, false).unwrap();
        let now = Timespec::now();
        let (f, _) = m
            .create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0, None, now)
            .unwrap();
        let a = BlockId([7; 32]);
        m.commit(f.ino, &[slot(0, a)], &[], 10, now, None, None, false, 0, "")
            .unwrap();
        // Truncated to 4 then grown to 8 before the next commit: bytes 4.. must be a hole.
        m.commit(f.ino, &[], &[], 8, now, Some(4), None, false, 0, "")
            .unwrap();
        let (_, slots) = m.open_file(f.ino).unwrap();
        assert_eq!(slots[0].used, 4);
    }

    fn piece_for(id: BlockId) -> BlockMeta {
        BlockMeta {
            id,
            ec: EcParams::DEFAULT.replicated(),
            len: 10,
            shard_size: 10,
            shards: (0..3)
                .map(|i| ShardLoc {
                    node: NodeId(i),
                    hash: [9; 32],
                })
                .collect(),
        }
    }

    #[test]
    fn a_slot_grown_piece_by_piece_counts_each_piece_once() {
        use shardfs_common::extent::Extent;
        let (_dir, m, f, now) = store_with_file(b"f");
        let p: Vec<BlockId> = (0..5u8).map(|i| BlockId::of_coded(1, 2, &[i])).collect();
        let x = |off, len, i: usize, piece_off| Extent {
            off,
            len,
            piece: p[i],
            piece_off,
        };
        let commit = |extents: Vec<Extent>, size: u64| {
            let s = NewSlot {
                index: 0,
                id: None,
                used: 0,
                meta: None,
                extents,
            };
            // As a mount sends it: every piece the slot names, old and new.
            let pieces: Vec<BlockMeta> = p.iter().map(|id| piece_for(*id)).collect();
            m.commit(f.ino, &[s], &pieces, size, now, None, None, false, 0, "")
        };
        commit(vec![x(0, 10, 0, 0)], 10).unwrap();
        commit(vec![x(0, 10, 0, 0), x(10, 10, 1, 0)], 20).unwrap();
        assert_eq!((refs(&m, &p[0]), refs(&m, &p[1])), (Some(1), Some(1)));
        // A new piece over half of the first: the first is still named, once.
        commit(vec![x(0, 5, 2, 0), x(5, 5, 0, 5), x(10, 10, 1, 0)], 20).unwrap();
        assert_eq!(
            (refs(&m, &p[0]), refs(&m, &p[1]), refs(&m, &p[2])),
            (Some(1), Some(1), Some(1))
        );
        // A changed extent of a piece named before is checked against its length again.
        match commit(vec![x(0, 5, 2, 0), x(5, 5, 0, 5), x(10, 10, 1, 5)], 20) {
            Err(e) => assert!(e.to_string().contains("past the end"), "{e}"),
            Ok(_) => panic!("an extent past its piece's end was committed"),
        }
        // Overwritten whole, a piece loses its reference; the others keep theirs.
        commit(vec![x(0, 5, 2, 0), x(5, 5, 3, 0), x(10, 10, 1, 0)], 20).unwrap();
        assert_eq!(refs(&m, &p[0]), None, "left to the collector");
        assert_eq!(
            (refs(&m, &p[1]), refs(&m, &p[2]), refs(&m, &p[3])),
            (Some(1), Some(1), Some(1))
        );
        // Pieces described but never named are not kept.
        assert_eq!(refs(&m, &p[4]), None);
        // Truncated to nothing, the file holds no piece.
        commit(Vec::new(), 0).unwrap();
        for id in &p {
            assert_eq!(refs(&m, id), None);
        }
    }

    #[test]
    fn a_seal_swaps_only_an_unchanged_closed_slot_and_frees_its_pieces() {
        let (_dir, m, f, now) = store_with_file(b"f");
        let (o, p, sealed) = (
            BlockId::of(b"old"),
            BlockId::of_coded(1, 2, b"piece"),
            BlockId::of(b"sealed"),
        );
        let mut s = slot(0, o);
        s.extents = vec![shardfs_common::extent::Extent {
            off: 2,
            len: 3,
            piece: p,
            piece_off: 0,
        }];
        m.commit(
            f.ino,
            &[s],
            &[piece_for(p)],
            10,
            now,
            None,
            None,
            false,
            0,
            "",
        )
        .unwrap();
        let cands = m.seal_candidates(0, 10).unwrap();
        assert_eq!(cands.len(), 1, "a file with extents waits for sealing");
        assert!(
            m.seal_candidates(3600, 10).unwrap().is_empty(),
            "not quiet yet"
        );
        let (ino, since) = cands[0];
        let (index, rec) = m.slots_to_seal(ino).unwrap().remove(0);
        let collecting = Mutex::new(HashSet::new());
        let block = meta_for(sealed);

        m.hold(ino);
        assert_eq!(
            m.seal_slot(ino, index, &rec, &block, &collecting).unwrap(),
            Swap::Changed,
            "a file some session holds open keeps its map"
        );
        m.unhold(ino).unwrap();
        let mut other = rec.clone();
        other.extents[0].len = 2;
        assert_eq!(
            m.seal_slot(ino, index, &other, &block, &collecting)
                .unwrap(),
            Swap::Changed,
            "a slot that changed since the seal was made is left alone"
        );
        assert_eq!(
            m.seal_slot(ino, index, &rec, &block, &collecting).unwrap(),
            Swap::Sealed
        );
        let now_slot = m.slot_records(ino).unwrap().remove(0).1;
        assert_eq!(now_slot.block, Some(sealed));
        assert!(now_slot.extents.is_empty());
        assert_eq!(refs(&m, &sealed), Some(1));
        assert_eq!(refs(&m, &o), None, "the old base is left to the collector");
        assert_eq!(refs(&m, &p), None, "the piece is left to the collector");
        m.seal_done(ino, since).unwrap();
        assert!(
            m.seal_candidates(0, 10).unwrap().is_empty(),
            "sealed: off the list"
        );

        // A writer whose view is from before the seal commits over the old base: the block is
        // still uncollected, so it is taken back rather than refused.
        let mut stale = slot(0, o);
        stale.meta = None;
        m.commit(f.ino, &[stale], &[], 10, now, None, None, false, 0, "")
            .unwrap();
        assert_eq!(
            refs(&m, &o),
            Some(1),
            "an uncollected block is referenced again"
        );
        assert_eq!(refs(&m, &sealed), None);
    }
}
