//! The namespace and block map in RocksDB.
//!
//! Key families, each behind a one-byte prefix with big-endian integers so range scans come out
//! in order:
//!
//! | key                               | value                                   |
//! |-----------------------------------|-----------------------------------------|
//! | `C`                               | cluster record (id, code, block size)   |
//! | `c` `next_ino`                    | next inode number (u64)                 |
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
//! | `T` ino                           | merge document of a text file edited concurrently (see `merge`) |
//! | `K` credential-id                 | a credential the CA issued: role, host, created, revoked (see `credentials`) |
//! | `J` blake3(token secret)          | an unused join token: role, expiry                   |
//!
//! Every value starts with a format version byte. Every POSIX operation is one `WriteBatch`,
//! prepared under the writer lock (so its checks and its writes see the same state) and
//! written with the WAL, so a committed operation survives kill -9.

mod policy;
mod sealing;

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
    check_name, conflicted_name, Attr, BlockMeta, ClusterInfo, DirEntry, FileKind, NewSlot,
    SetAttr, Slot, Timespec, RENAME_EXCHANGE, RENAME_NOREPLACE,
};
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

#[derive(Clone, Debug, Serialize, Deserialize)]
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
    blocks: HashMap<BlockId, Option<BlockRecord>>,
}

impl<'a> Txn<'a> {
    fn new(meta: &'a Meta) -> Self {
        Txn {
            meta,
            batch: WriteBatch::default(),
            inodes: HashMap::new(),
            blocks: HashMap::new(),
        }
    }

    fn inode(&mut self, ino: Ino) -> Result<InodeRecord, MasterError> {
        if let Some(v) = self.inodes.get(&ino) {
            return v.clone().ok_or_else(|| not_found_ino(ino));
        }
        let rec = self.meta.inode(ino)?;
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
            match rec {
                Some(r) if r.refs > 0 => {
                    self.batch.put(k_block(&id), enc(&r));
                    self.batch.delete(k_gc(&id));
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
        Ok((
            Meta {
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

    fn write(&self, batch: WriteBatch) -> Result<(), MasterError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.write_opt(batch, &wo).map_err(db_err)
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, MasterError> {
        match self.db.get_pinned(key).map_err(db_err)? {
            Some(raw) => Ok(Some(dec(key, &raw)?)),
            None => Ok(None),
        }
    }

    /// The merge document of `ino`, if it was ever merged.
    pub fn merge_record(&self, ino: Ino) -> Result<Option<crate::merge::MergeRecord>, MasterError> {
        self.get(&k_merge(ino))
    }

    pub fn put_merge_record(
        &self,
        ino: Ino,
        rec: &crate::merge::MergeRecord,
    ) -> Result<(), MasterError> {
        let mut b = WriteBatch::default();
        b.put(k_merge(ino), enc(rec));
        self.write(b)
    }

    /// Who made the current version `version` of `ino`, if this master saw it.
    pub fn writer_of(&self, ino: Ino, version: u64) -> Option<u64> {
        match self.writers.lock().expect("writers lock").get(&ino) {
            Some(&(v, s)) if v == version => Some(s),
            _ => None,
        }
    }

    pub fn inode(&self, ino: Ino) -> Result<InodeRecord, MasterError> {
        let key = k_inode(ino);
        match self.db.get_pinned(&key).map_err(db_err)? {
            Some(raw) => dec_inode(&key, &raw),
            None => Err(not_found_ino(ino)),
        }
    }

    /// Keys from `start` on, up to the end of `prefix`: the upper bound lets RocksDB stop at
    /// the prefix's end instead of walking over deleted keys after it (thousands of them after
    /// a burst of short-lived records, on every scan that finds nothing more).
    fn iter_within(&self, prefix: &[u8], start: &[u8]) -> rocksdb::DBIterator<'_> {
        let mut ro = rocksdb::ReadOptions::default();
        if let Some(end) = prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        self.db
            .iterator_opt(IteratorMode::From(start, Direction::Forward), ro)
    }

    fn scan<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, MasterError> {
        let mut out = Vec::new();
        for item in self.iter_within(prefix, start) {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), dec(&k, &v)?));
        }
        Ok(out)
    }

    /// Every key starting with `prefix`, values not decoded.
    fn keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, MasterError> {
        let mut out = Vec::new();
        for item in self.iter_within(prefix, prefix) {
            let (k, _) = item.map_err(db_err)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }

    fn slot_record(&self, key: &[u8]) -> Result<Option<SlotRecord>, MasterError> {
        match self.db.get_pinned(key).map_err(db_err)? {
            Some(raw) => Ok(Some(dec_slot(key, &raw)?)),
            None => Ok(None),
        }
    }

    fn slot_records(&self, ino: Ino) -> Result<Vec<(u64, SlotRecord)>, MasterError> {
        let p = k_slot_prefix(ino);
        let mut out = Vec::new();
        for item in self.iter_within(&p, &p) {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(&p) || k.len() != 17 {
                break;
            }
            let index = u64::from_be_bytes(k[9..17].try_into().expect("slot key"));
            out.push((index, dec_slot(&k, &v)?));
        }
        Ok(out)
    }

    fn dentry(&self, parent: Ino, name: &[u8]) -> Result<Option<DentryRecord>, MasterError> {
        self.get(&k_dentry(parent, name))
    }

    fn alloc_ino(&self, batch: &mut WriteBatch) -> Ino {
        let mut n = self.next_ino.lock().expect("ino lock");
        let ino = *n;
        *n += 1;
        batch.put(K_NEXT_INO, n.to_be_bytes());
        ino
    }

    fn dir(&self, txn: &mut Txn, ino: Ino) -> Result<InodeRecord, MasterError> {
        let rec = txn.inode(ino)?;
        if rec.attr.kind != FileKind::Dir {
            return Err(fs_err(
                ErrorCode::NotDir,
                format!("inode {ino} is not a directory"),
            ));
        }
        Ok(rec)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, MasterError> {
        let d = self.dentry(parent, name)?.ok_or_else(|| {
            MasterError::Fs(Error::not_found(format!(
                "no entry {:?} in directory {parent}",
                String::from_utf8_lossy(name)
            )))
        })?;
        Ok(self.inode(d.ino)?.attr)
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, MasterError> {
        Ok(self.inode(ino)?.attr)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, MasterError> {
        self.inode(ino)?
            .target
            .ok_or_else(|| fs_err(ErrorCode::Invalid, format!("inode {ino} is not a symlink")))
    }

    /// Record that `session` made version `version` of `ino`.
    fn wrote(&self, ino: Ino, version: u64, session: u64) {
        let mut w = self.writers.lock().expect("writers lock");
        if w.len() >= 100_000 {
            w.clear();
        }
        w.insert(ino, (version, session));
    }

    /// True if `session` made the current version of `ino`.
    fn made_by(&self, ino: Ino, version: u64, session: u64) -> bool {
        session != 0
            && self.writers.lock().expect("writers lock").get(&ino) == Some(&(version, session))
    }

    /// Change attributes. A size change makes a new content version; it counts as made by
    /// `session` on top of its own changes only if the writer's `base` was current.
    pub fn setattr(
        &self,
        ino: Ino,
        set: &SetAttr,
        session: u64,
        base: Option<u64>,
    ) -> Result<Attr, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut rec = txn.inode(ino)?;
        let before = rec.attr.version;
        let on_top = base.is_none_or(|b| b == before || self.made_by(ino, before, session));
        let a = &mut rec.attr;
        if let Some(mode) = set.mode {
            a.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            a.uid = uid;
        }
        if let Some(gid) = set.gid {
            a.gid = gid;
        }
        if let Some(size) = set.size {
            if a.kind == FileKind::Dir {
                return Err(fs_err(ErrorCode::IsDir, "cannot truncate a directory"));
            }
            if size < a.size {
                self.cut_slots(&mut txn, ino, size, &HashSet::new())?;
            }
            if size != a.size {
                a.mtime = set.now;
                a.version += 1;
            }
            a.size = size;
            if set.mtime.is_none() {
                a.mtime = set.now;
            }
        }
        if let Some(t) = set.atime {
            a.atime = t;
        }
        if let Some(t) = set.mtime {
            a.mtime = t;
        }
        a.ctime = set.now;
        let attr = a.clone();
        txn.put_inode(rec);
        txn.commit()?;
        if set.size.is_some() && on_top {
            self.wrote(ino, attr.version, session);
        }
        Ok(attr)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: Option<Vec<u8>>,
        now: Timespec,
    ) -> Result<(Attr, Changes), MasterError> {
        check_name(name).map_err(MasterError::Fs)?;
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut p = self.dir(&mut txn, parent)?;
        if self.dentry(parent, name)?.is_some() {
            return Err(fs_err(
                ErrorCode::Exists,
                format!("{:?} already exists", String::from_utf8_lossy(name)),
            ));
        }
        let ino = self.alloc_ino(&mut txn.batch);
        let is_dir = kind == FileKind::Dir;
        // In a set-group-ID directory, new entries take the directory's group, and new
        // directories inherit the bit (as ext4 does).
        let (mut mode, mut gid) = (mode & 0o7777, gid);
        if p.attr.perm as u32 & libc::S_ISGID != 0 {
            gid = p.attr.gid;
            if is_dir {
                mode |= libc::S_ISGID;
            }
        }
        let attr = Attr {
            ino,
            kind,
            perm: mode as u16,
            nlink: if is_dir { 2 } else { 1 },
            uid,
            gid,
            size: target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
            atime: now,
            mtime: now,
            ctime: now,
            rdev,
            version: 0,
        };
        txn.batch
            .put(k_dentry(parent, name), enc(&DentryRecord { ino, kind }));
        if let Some(code) = self.policy(parent)? {
            txn.batch.put(k_policy(ino), enc(&code));
        }
        txn.put_inode(InodeRecord {
            attr: attr.clone(),
            parent,
            target,
        });
        if is_dir {
            p.attr.nlink += 1;
        }
        p.attr.mtime = now;
        p.attr.ctime = now;
        txn.put_inode(p);
        let changes = txn.commit()?;
        Ok((attr, changes))
    }

    pub fn link(
        &self,
        ino: Ino,
        parent: Ino,
        name: &[u8],
        now: Timespec,
    ) -> Result<(Attr, Changes), MasterError> {
        check_name(name).map_err(MasterError::Fs)?;
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut p = self.dir(&mut txn, parent)?;
        let mut rec = txn.inode(ino)?;
        if rec.attr.kind == FileKind::Dir {
            return Err(fs_err(
                ErrorCode::Permission,
                "cannot hard-link a directory",
            ));
        }
        if self.dentry(parent, name)?.is_some() {
            return Err(fs_err(
                ErrorCode::Exists,
                format!("{:?} already exists", String::from_utf8_lossy(name)),
            ));
        }
        rec.attr.nlink += 1;
        rec.attr.ctime = now;
        let attr = rec.attr.clone();
        txn.batch.put(
            k_dentry(parent, name),
            enc(&DentryRecord {
                ino,
                kind: attr.kind,
            }),
        );
        txn.put_inode(rec);
        p.attr.mtime = now;
        p.attr.ctime = now;
        txn.put_inode(p);
        let changes = txn.commit()?;
        Ok((attr, changes))
    }

    /// Drop one link to `ino` (its entry already removed by the caller).
    /// The last link of a file some mount has open leaves an orphan: no name, nlink 0, content
    /// kept until its last holder closes it ([`Meta::unhold`]).
    fn drop_link(&self, txn: &mut Txn, ino: Ino, now: Timespec) -> Result<(), MasterError> {
        let mut rec = txn.inode(ino)?;
        if rec.attr.kind != FileKind::Dir && rec.attr.nlink <= 1 && self.is_held(ino) {
            rec.attr.nlink = 0;
            rec.attr.ctime = now;
            txn.put_inode(rec);
            txn.batch.put(k_orphan(ino), [VERSION]);
        } else if rec.attr.kind == FileKind::Dir || rec.attr.nlink <= 1 {
            txn.delete_inode(ino)?;
        } else {
            rec.attr.nlink -= 1;
            rec.attr.ctime = now;
            txn.put_inode(rec);
        }
        Ok(())
    }

    fn is_empty_dir(&self, ino: Ino) -> Result<bool, MasterError> {
        let p = k_dentry_prefix(ino);
        let mut it = self.iter_within(&p, &p);
        match it.next() {
            Some(item) => Ok(!item.map_err(db_err)?.0.starts_with(&p)),
            None => Ok(true),
        }
    }

    pub fn unlink(&self, parent: Ino, name: &[u8], now: Timespec) -> Result<Changes, MasterError> {
        self.remove(parent, name, false, now)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8], now: Timespec) -> Result<Changes, MasterError> {
        self.remove(parent, name, true, now)
    }

    fn remove(
        &self,
        parent: Ino,
        name: &[u8],
        dir: bool,
        now: Timespec,
    ) -> Result<Changes, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut p = self.dir(&mut txn, parent)?;
        let d = self.dentry(parent, name)?.ok_or_else(|| {
            MasterError::Fs(Error::not_found(format!(
                "no entry {:?}",
                String::from_utf8_lossy(name)
            )))
        })?;
        match (dir, d.kind == FileKind::Dir) {
            (false, true) => return Err(fs_err(ErrorCode::IsDir, "is a directory")),
            (true, false) => return Err(fs_err(ErrorCode::NotDir, "not a directory")),
            (true, true) if !self.is_empty_dir(d.ino)? => {
                return Err(fs_err(ErrorCode::NotEmpty, "directory not empty"))
            }
            _ => {}
        }
        txn.batch.delete(k_dentry(parent, name));
        self.drop_link(&mut txn, d.ino, now)?;
        if dir {
            p.attr.nlink = p.attr.nlink.saturating_sub(1);
        }
        p.attr.mtime = now;
        p.attr.ctime = now;
        txn.put_inode(p);
        txn.commit()
    }

    /// True if `dir` is `ancestor` or lies below it.
    fn is_within(&self, txn: &mut Txn, mut dir: Ino, ancestor: Ino) -> Result<bool, MasterError> {
        for _ in 0..100_000 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = txn.inode(dir)?.parent;
        }
        Err(MasterError::Corrupt(
            "directory parent chain does not reach the root".into(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
        now: Timespec,
    ) -> Result<Changes, MasterError> {
        check_name(new_name).map_err(MasterError::Fs)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(fs_err(ErrorCode::Invalid, "unsupported rename flags"));
        }
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        self.dir(&mut txn, parent)?;
        self.dir(&mut txn, new_parent)?;
        let src = self.dentry(parent, name)?.ok_or_else(|| {
            MasterError::Fs(Error::not_found(format!(
                "no entry {:?}",
                String::from_utf8_lossy(name)
            )))
        })?;
        let dst = self.dentry(new_parent, new_name)?;
        if parent == new_parent && name == new_name {
            return Ok(Changes::default());
        }
        let src_dir = src.kind == FileKind::Dir;
        if src_dir && self.is_within(&mut txn, new_parent, src.ino)? {
            return Err(fs_err(
                ErrorCode::Invalid,
                "cannot move a directory into itself",
            ));
        }
        if flags & RENAME_EXCHANGE != 0 {
            let dst =
                dst.ok_or_else(|| MasterError::Fs(Error::not_found("exchange target missing")))?;
            if dst.kind == FileKind::Dir && self.is_within(&mut txn, parent, dst.ino)? {
                return Err(fs_err(
                    ErrorCode::Invalid,
                    "cannot move a directory into itself",
                ));
            }
            txn.batch.put(k_dentry(parent, name), enc(&dst));
            txn.batch.put(k_dentry(new_parent, new_name), enc(&src));
            for (ino, to) in [(src.ino, new_parent), (dst.ino, parent)] {
                let mut r = txn.inode(ino)?;
                r.parent = to;
                r.attr.ctime = now;
                txn.put_inode(r);
            }
            if parent != new_parent && src_dir != (dst.kind == FileKind::Dir) {
                let (gain, lose) = if src_dir {
                    (new_parent, parent)
                } else {
                    (parent, new_parent)
                };
                let mut g = txn.inode(gain)?;
                g.attr.nlink += 1;
                txn.put_inode(g);
                let mut l = txn.inode(lose)?;
                l.attr.nlink = l.attr.nlink.saturating_sub(1);
                txn.put_inode(l);
            }
        } else {
            if let Some(dst) = &dst {
                if flags & RENAME_NOREPLACE != 0 {
                    return Err(fs_err(ErrorCode::Exists, "target exists"));
                }
                if dst.ino == src.ino {
                    return Ok(Changes::default());
                }
                let dst_dir = dst.kind == FileKind::Dir;
                if src_dir && !dst_dir {
                    return Err(fs_err(ErrorCode::NotDir, "target is not a directory"));
                }
                if !src_dir && dst_dir {
                    return Err(fs_err(ErrorCode::IsDir, "target is a directory"));
                }
                if dst_dir && !self.is_empty_dir(dst.ino)? {
                    return Err(fs_err(ErrorCode::NotEmpty, "target directory not empty"));
                }
                self.drop_link(&mut txn, dst.ino, now)?;
                if dst_dir {
                    let mut np = txn.inode(new_parent)?;
                    np.attr.nlink = np.attr.nlink.saturating_sub(1);
                    txn.put_inode(np);
                }
            }
            txn.batch.delete(k_dentry(parent, name));
            txn.batch.put(k_dentry(new_parent, new_name), enc(&src));
            let mut r = txn.inode(src.ino)?;
            r.parent = new_parent;
            r.attr.ctime = now;
            txn.put_inode(r);
            if src_dir && parent != new_parent {
                let mut op = txn.inode(parent)?;
                op.attr.nlink = op.attr.nlink.saturating_sub(1);
                txn.put_inode(op);
                let mut np = txn.inode(new_parent)?;
                np.attr.nlink += 1;
                txn.put_inode(np);
            }
        }
        for p in [parent, new_parent] {
            let mut r = txn.inode(p)?;
            r.attr.mtime = now;
            r.attr.ctime = now;
            txn.put_inode(r);
        }
        txn.commit()
    }

    pub fn readdir(
        &self,
        ino: Ino,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<DirEntry>, bool), MasterError> {
        let rec = self.inode(ino)?;
        if rec.attr.kind != FileKind::Dir {
            return Err(fs_err(ErrorCode::NotDir, "not a directory"));
        }
        let prefix = k_dentry_prefix(ino);
        let start = match after {
            Some(a) => {
                let mut s = k_dentry(ino, a);
                s.push(0);
                s
            }
            None => prefix.clone(),
        };
        let rows = self.scan::<DentryRecord>(&prefix, &start, limit + 1)?;
        let more = rows.len() > limit;
        let rows = &rows[..rows.len().min(limit)];
        let keys: Vec<Vec<u8>> = rows.iter().map(|(_, d)| k_inode(d.ino)).collect();
        let mut entries = Vec::with_capacity(rows.len());
        for ((k, _), raw) in rows.iter().zip(self.db.multi_get(&keys)) {
            let Some(raw) = raw.map_err(db_err)? else {
                continue;
            };
            let r = dec_inode(k, &raw)?;
            entries.push(DirEntry {
                name: k[9..].to_vec(),
                attr: r.attr,
            });
        }
        Ok((entries, more))
    }

    pub fn open_file(&self, ino: Ino) -> Result<(Attr, Vec<Slot>), MasterError> {
        let rec = self.inode(ino)?;
        let slots = self.slot_records(ino)?;
        let refs: Vec<Vec<BlockId>> = slots.iter().map(|(_, s)| s.refs()).collect();
        let keys: Vec<Vec<u8>> = refs.iter().flatten().map(k_block).collect();
        let mut metas = self.db.multi_get(&keys).into_iter();
        let mut out = Vec::with_capacity(slots.len());
        for ((index, s), ids) in slots.into_iter().zip(refs) {
            let mut found = HashMap::new();
            for id in ids {
                let raw = metas.next().expect("one answer per key").map_err(db_err)?;
                let raw = raw.ok_or_else(|| {
                    MasterError::Corrupt(format!("inode {ino} slot {index}: block {id} missing"))
                })?;
                let b: BlockRecord = dec(b"B", &raw)?;
                found.insert(id, b.meta);
            }
            let pieces = extent::pieces(&s.extents)
                .iter()
                .map(|p| (found[p].clone(), Default::default()))
                .collect();
            out.push(Slot {
                index,
                used: s.used,
                block: s.block.map(|b| found[&b].clone()),
                cap: Default::default(),
                extents: s.extents,
                pieces,
            });
        }
        Ok((rec.attr, out))
    }

    /// Make `slots` part of file `ino` with its new size and mtime, in one batch.
    /// Make written blocks part of file `ino`. If `base` is given and the file's content
    /// version has moved past it, the blocks go to a new file beside it instead (a conflicted
    /// copy named after `host` and the date), and the original keeps its content.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        ino: Ino,
        slots: &[NewSlot],
        pieces: &[BlockMeta],
        size: u64,
        mtime: Timespec,
        cut: Option<u64>,
        base: Option<u64>,
        mergeable: bool,
        session: u64,
        host: &str,
    ) -> Result<Committed, MasterError> {
        let bs = self.cluster.block_size;
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut rec = txn.inode(ino)?;
        if rec.attr.kind != FileKind::File {
            return Err(fs_err(ErrorCode::Invalid, "not a regular file"));
        }
        let mut copy = None;
        let stale = base.is_some_and(|b| b != rec.attr.version)
            && rec.attr.nlink > 0
            && !self.made_by(ino, rec.attr.version, session);
        if stale && mergeable {
            return Ok(Committed::Stale(rec.attr));
        }
        if stale {
            let original = rec.attr.clone();
            let (name, new_rec) = self.conflict_copy(&mut txn, &rec, host, mtime)?;
            copy = Some((original, name));
            rec = new_rec;
        }
        let ino = rec.attr.ino;
        // A block uploaded again while another client committed the same content keeps the
        // first description; the second copy's shards on other nodes are left for the scrubber.
        if pieces.len() > 4 * extent::MAX_EXTENTS * slots.len().max(1) {
            return Err(fs_err(ErrorCode::Invalid, "too many piece descriptions"));
        }
        let described: HashMap<BlockId, &BlockMeta> = pieces.iter().map(|m| (m.id, m)).collect();
        let code = self.code_of(ino)?;
        // Blocks in the file's code, or another storable one (a writer that learnt the file's
        // policy before it changed); those are rewritten by sealing.
        let check = |m: &BlockMeta| match self.storable(m.ec) {
            true => m.check(m.ec, bs),
            false => Err(Error::invalid(format!(
                "block {}: code {} cannot be stored",
                m.id, m.ec
            ))),
        };
        let mut recode = false;
        let mut written: HashMap<u64, SlotRecord> = HashMap::new();
        for s in slots {
            let bad = |why: String| fs_err(ErrorCode::Invalid, format!("slot {}: {why}", s.index));
            if s.used > bs {
                return Err(bad("larger than the block size".into()));
            }
            extent::check(&s.extents, bs).map_err(bad)?;
            if s.id.is_none() && (s.meta.is_some() || s.used > 0) {
                return Err(bad("a description or used bytes without a block".into()));
            }
            // Bytes past the file's end are not part of the file: if it grows again, that
            // range must read as zeros.
            let new = SlotRecord {
                block: s.id,
                used: s.used,
                extents: s.extents.clone(),
            }
            .cut(size.saturating_sub(s.index * bs));
            for id in new.refs() {
                let own = s.meta.as_ref().filter(|_| Some(id) == s.id);
                let len = match (txn.block(&id)?, own.or(described.get(&id).copied())) {
                    (Some(mut b), _) => {
                        b.refs += 1;
                        let len = b.meta.len;
                        txn.blocks.insert(id, Some(b));
                        len
                    }
                    (None, Some(m)) => {
                        if m.id != id {
                            return Err(bad("inconsistent block description".into()));
                        }
                        check(m)?;
                        recode |= Some(id) == s.id && m.ec != code;
                        txn.blocks.insert(
                            id,
                            Some(BlockRecord {
                                meta: m.clone(),
                                refs: 1,
                            }),
                        );
                        m.len
                    }
                    // Unreferenced but not yet collected (a writer's view from before a
                    // seal or another mount's overwrite): referenced again, it stays.
                    (None, None) => match self.get::<GcRecord>(&k_gc(&id))? {
                        Some(g) => {
                            let len = g.meta.len;
                            txn.blocks.insert(
                                id,
                                Some(BlockRecord {
                                    meta: g.meta,
                                    refs: 1,
                                }),
                            );
                            len
                        }
                        None => {
                            return Err(fs_err(
                                ErrorCode::NotFound,
                                format!("block {id} is no longer stored; upload it again"),
                            ))
                        }
                    },
                };
                let past = new
                    .extents
                    .iter()
                    .any(|e| e.piece == id && e.piece_off as u64 + e.len as u64 > len);
                if (Some(id) == s.id && s.used > len) || past {
                    return Err(bad(format!("refers past the end of block {id}")));
                }
            }
            let key = k_slot(ino, s.index);
            // The slot's previous content: set earlier in this same commit, or as stored.
            let old = match written.remove(&s.index) {
                Some(r) => Some(r),
                None => self.slot_record(&key)?,
            };
            if let Some(old) = old {
                txn.unref_slot(&old)?;
            }
            txn.batch.put(key, enc_slot(&new));
            written.insert(s.index, new);
        }
        // Extents wait for sealing: the quiet period starts again.
        if recode || written.values().any(|r| !r.extents.is_empty()) {
            txn.batch.put(k_frag(ino), enc(&unix_now()));
        }
        // Pieces stored for this file whose bytes were all overwritten before this commit:
        // known now, so they are collected.
        for m in pieces {
            if txn.block(&m.id)?.is_none() {
                check(m)?;
                txn.blocks.insert(
                    m.id,
                    Some(BlockRecord {
                        meta: m.clone(),
                        refs: 0,
                    }),
                );
            }
        }
        // Stored blocks past the new size, or past a truncate of the open file since its last
        // commit (`cut`), are gone; the blocks this commit writes replace theirs.
        let cut = cut.filter(|_| copy.is_none());
        if size < rec.attr.size || cut.is_some_and(|c| c < rec.attr.size) {
            let to = cut.map_or(size, |c| c.min(size));
            let written: HashSet<u64> = written.keys().copied().collect();
            self.cut_slots(&mut txn, ino, to, &written)?;
        }
        // Blocks written in this commit entirely past the new size (a truncate raced the
        // upload) are not kept: they would reappear if the file grew again.
        for (index, r) in &written {
            if index * bs >= size || r.is_empty() {
                txn.batch.delete(k_slot(ino, *index));
                txn.unref_slot(r)?;
            }
        }
        rec.attr.size = size;
        rec.attr.mtime = mtime;
        rec.attr.ctime = mtime;
        rec.attr.version += 1;
        let attr = rec.attr.clone();
        txn.put_inode(rec);
        let changes = txn.commit()?;
        if copy.is_none() {
            self.wrote(ino, attr.version, session);
        }
        Ok(match copy {
            None => Committed::Done(attr),
            Some((original, name)) => Committed::Copy {
                original,
                name,
                copy: attr,
                changes,
            },
        })
    }

    /// Drop the stored blocks of `ino` past `size` and shorten the one across it (the
    /// slots in `skip` are being replaced in the same batch).
    fn cut_slots(
        &self,
        txn: &mut Txn,
        ino: Ino,
        size: u64,
        skip: &HashSet<u64>,
    ) -> Result<(), MasterError> {
        let bs = self.cluster.block_size;
        for (index, s) in self.slot_records(ino)? {
            if skip.contains(&index) {
                continue;
            }
            if index * bs >= size {
                txn.batch.delete(k_slot(ino, index));
                txn.unref_slot(&s)?;
            } else {
                let trimmed = s.cut(size - index * bs);
                if trimmed != s {
                    // Pieces no extent names any more lose this slot's reference.
                    for id in s.refs() {
                        if !trimmed.refs().contains(&id) {
                            txn.unref(&id)?;
                        }
                    }
                    txn.batch.put(k_slot(ino, index), enc_slot(&trimmed));
                }
            }
        }
        Ok(())
    }

    /// A new file beside `rec` (same directory, owner and mode) for a writer whose change
    /// could not be merged: "NAME (conflicted copy from HOST YYYY-MM-DD).EXT".
    fn conflict_copy(
        &self,
        txn: &mut Txn,
        rec: &InodeRecord,
        host: &str,
        now: Timespec,
    ) -> Result<(Vec<u8>, InodeRecord), MasterError> {
        let parent = rec.parent;
        let name = self
            .dentry_name(parent, rec.attr.ino)?
            .unwrap_or_else(|| format!("inode {}", rec.attr.ino).into_bytes());
        let mut copy_name = Vec::new();
        for n in 1.. {
            copy_name = conflicted_name(&name, host, now.secs, n);
            if self.dentry(parent, &copy_name)?.is_none() {
                break;
            }
        }
        let ino = self.alloc_ino(&mut txn.batch);
        let attr = Attr {
            ino,
            nlink: 1,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            version: 0,
            ..rec.attr.clone()
        };
        txn.batch.put(
            k_dentry(parent, &copy_name),
            enc(&DentryRecord {
                ino,
                kind: FileKind::File,
            }),
        );
        let mut p = txn.inode(parent)?;
        p.attr.mtime = now;
        p.attr.ctime = now;
        txn.put_inode(p);
        Ok((
            copy_name,
            InodeRecord {
                attr,
                parent,
                target: None,
            },
        ))
    }

    /// The name under which `ino` is linked in `parent` (a scan of the directory).
    fn dentry_name(&self, parent: Ino, ino: Ino) -> Result<Option<Vec<u8>>, MasterError> {
        let prefix = k_dentry_prefix(parent);
        for (k, d) in self.scan::<DentryRecord>(&prefix, &prefix, usize::MAX)? {
            if d.ino == ino {
                return Ok(Some(k[prefix.len()..].to_vec()));
            }
        }
        Ok(None)
    }

    /// Records of families kept by other modules (`credentials`): a one-byte family, a key.
    pub fn put_record<T: Serialize>(
        &self,
        family: u8,
        key: &[u8],
        v: &T,
    ) -> Result<(), MasterError> {
        let mut k = vec![family];
        k.extend_from_slice(key);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_opt(k, enc(v), &wo).map_err(db_err)
    }

    pub fn delete_record(&self, family: u8, key: &[u8]) -> Result<(), MasterError> {
        let mut k = vec![family];
        k.extend_from_slice(key);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.delete_opt(k, &wo).map_err(db_err)
    }

    /// Every record of a family: (key without the family byte, value).
    pub fn records<T: DeserializeOwned>(
        &self,
        family: u8,
    ) -> Result<Vec<(Vec<u8>, T)>, MasterError> {
        Ok(self
            .scan::<T>(&[family], &[family], usize::MAX)?
            .into_iter()
            .map(|(k, v)| (k[1..].to_vec(), v))
            .collect())
    }

    pub fn put_node(&self, id: NodeId, rec: &NodeRecord) -> Result<(), MasterError> {
        self.db.put(k_node(id), enc(rec)).map_err(db_err)
    }

    pub fn nodes(&self) -> Result<Vec<(NodeId, NodeRecord)>, MasterError> {
        Ok(self
            .scan::<NodeRecord>(b"N", b"N", usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                (
                    NodeId(u64::from_be_bytes(k[1..9].try_into().expect("node key"))),
                    v,
                )
            })
            .collect())
    }

    /// Take unreferenced blocks whose grace period is over out of the store, atomically with
    /// respect to placement and commits: each one is forgotten and added to `collecting`, and
    /// the caller deletes its shards. A block referenced again meanwhile is kept.
    pub fn gc_claim(
        &self,
        grace_secs: u64,
        limit: usize,
        collecting: &Mutex<HashSet<BlockId>>,
    ) -> Result<Vec<GcRecord>, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let now = unix_now();
        let mut batch = WriteBatch::default();
        let mut out = Vec::new();
        for (_, g) in self.scan::<GcRecord>(b"G", b"G", limit)? {
            if g.since + grace_secs > now {
                continue;
            }
            let id = g.meta.id;
            batch.delete(k_gc(&id));
            if self
                .get::<BlockRecord>(&k_block(&id))?
                .is_some_and(|b| b.refs > 0)
            {
                continue;
            }
            batch.delete(k_block(&id));
            collecting.lock().expect("collecting lock").insert(id);
            out.push(g);
        }
        self.db.write(batch).map_err(db_err)?;
        Ok(out)
    }

    /// What a client about to store block `id` needs to know: the block's description if the
    /// cluster holds it (so nothing is uploaded), or None. An unreferenced block still waiting
    /// for collection is revived (its grace period restarts) instead of being stored twice.
    pub fn place_lookup(
        &self,
        id: &BlockId,
        collecting: &Mutex<HashSet<BlockId>>,
    ) -> Result<Option<BlockMeta>, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        if collecting.lock().expect("collecting lock").contains(id) {
            return Err(MasterError::Fs(Error::Unavailable(format!(
                "block {id} is being deleted; retry"
            ))));
        }
        if let Some(b) = self.get::<BlockRecord>(&k_block(id))? {
            return Ok(Some(b.meta));
        }
        if let Some(g) = self.get::<GcRecord>(&k_gc(id))? {
            let mut batch = WriteBatch::default();
            batch.put(
                k_block(id),
                enc(&BlockRecord {
                    meta: g.meta.clone(),
                    refs: 0,
                }),
            );
            batch.put(
                k_gc(id),
                enc(&GcRecord {
                    meta: g.meta.clone(),
                    since: unix_now(),
                }),
            );
            self.write(batch)?;
            return Ok(Some(g.meta));
        }
        Ok(None)
    }

    /// Set extended attribute `name` of `ino`; the inode's ctime changes.
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: i32,
        now: Timespec,
    ) -> Result<Attr, MasterError> {
        check_xattr_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(fs_err(ErrorCode::ArgTooBig, "attribute value over 64 KiB"));
        }
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut rec = txn.inode(ino)?;
        let exists = self.get::<Vec<u8>>(&k_xattr(ino, name))?.is_some();
        if flags & 1 != 0 && exists {
            return Err(fs_err(ErrorCode::Exists, "attribute exists"));
        }
        if flags & 2 != 0 && !exists {
            return Err(fs_err(ErrorCode::NoData, "no such attribute"));
        }
        txn.batch.put(k_xattr(ino, name), enc(&value.to_vec()));
        rec.attr.ctime = now;
        let attr = rec.attr.clone();
        txn.put_inode(rec);
        txn.commit()?;
        Ok(attr)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MasterError> {
        check_xattr_name(name)?;
        self.inode(ino)?;
        self.get::<Vec<u8>>(&k_xattr(ino, name))?
            .ok_or_else(|| fs_err(ErrorCode::NoData, "no such attribute"))
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>, MasterError> {
        self.inode(ino)?;
        let p = k_xattr_prefix(ino);
        Ok(self
            .keys(&p)?
            .into_iter()
            .map(|k| k[p.len()..].to_vec())
            .collect())
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8], now: Timespec) -> Result<Attr, MasterError> {
        check_xattr_name(name)?;
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut rec = txn.inode(ino)?;
        if self.get::<Vec<u8>>(&k_xattr(ino, name))?.is_none() {
            return Err(fs_err(ErrorCode::NoData, "no such attribute"));
        }
        txn.batch.delete(k_xattr(ino, name));
        rec.attr.ctime = now;
        let attr = rec.attr.clone();
        txn.put_inode(rec);
        txn.commit()?;
        Ok(attr)
    }

    /// Record shards found corrupt or missing on `node`, for repair. Shards the block map does
    /// not place on that node (already moved, or unknown blocks) are ignored. Returns how many
    /// were recorded.
    pub fn add_lost(&self, node: NodeId, shards: &[(BlockId, u8)]) -> Result<usize, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let mut per_block: HashMap<BlockId, Vec<u8>> = HashMap::new();
        for (b, i) in shards {
            per_block.entry(*b).or_default().push(*i);
        }
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for (b, idx) in per_block {
            let Some(rec) = self.get::<BlockRecord>(&k_block(&b))? else {
                continue;
            };
            let mut lost = self.get::<LostRecord>(&k_lost(&b))?.unwrap_or_default();
            let before = lost.shards.len();
            for i in idx {
                let here = rec
                    .meta
                    .shards
                    .get(i as usize)
                    .is_some_and(|s| s.node == node);
                if here && !lost.shards.contains(&(i, node)) {
                    lost.shards.push((i, node));
                }
            }
            if lost.shards.len() > before {
                n += lost.shards.len() - before;
                batch.put(k_lost(&b), enc(&lost));
            }
        }
        self.write(batch)?;
        Ok(n)
    }

    /// Every block with shards recorded as lost.
    pub fn lost(&self) -> Result<HashMap<BlockId, LostRecord>, MasterError> {
        Ok(self
            .scan::<LostRecord>(b"R", b"R", usize::MAX)?
            .into_iter()
            .filter_map(|(k, v)| Some((BlockId(k[1..].try_into().ok()?), v)))
            .collect())
    }

    /// Up to `limit` blocks of the block map after `after`, in id order.
    pub fn blocks_page(
        &self,
        after: Option<&BlockId>,
        limit: usize,
    ) -> Result<Vec<BlockRecord>, MasterError> {
        let start = match after {
            Some(id) => {
                let mut k = k_block(id);
                k.push(0);
                k
            }
            None => vec![b'B'],
        };
        Ok(self
            .scan::<BlockRecord>(b"B", &start, limit)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Point shards of a block at the nodes they were rebuilt on: each move (index, old node,
    /// new node) applies only if the shard is still where the repair found it. Clears those
    /// shards from the lost record. Returns how many moves applied.
    pub fn relocate(
        &self,
        id: &BlockId,
        moves: &[(u8, NodeId, NodeId)],
    ) -> Result<usize, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let Some(mut rec) = self.get::<BlockRecord>(&k_block(id))? else {
            return Ok(0);
        };
        let mut lost = self.get::<LostRecord>(&k_lost(id))?.unwrap_or_default();
        let mut applied = 0;
        for (i, old, new) in moves {
            if let Some(s) = rec.meta.shards.get_mut(*i as usize) {
                if s.node == *old {
                    s.node = *new;
                    applied += 1;
                }
            }
            lost.shards.retain(|(li, ln)| !(li == i && ln == old));
        }
        let mut batch = WriteBatch::default();
        batch.put(k_block(id), enc(&rec));
        if lost.shards.is_empty() {
            batch.delete(k_lost(id));
        } else {
            batch.put(k_lost(id), enc(&lost));
        }
        self.write(batch)?;
        Ok(applied)
    }

    /// Forget lost-shard records of blocks no longer in the block map.
    pub fn drop_lost(&self, id: &BlockId) -> Result<(), MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        if self.get::<BlockRecord>(&k_block(id))?.is_none() {
            self.db.delete(k_lost(id)).map_err(db_err)?;
        }
        Ok(())
    }

    /// Mark a node as draining, or clear the mark.
    pub fn set_draining(&self, node: NodeId, on: bool) -> Result<(), MasterError> {
        let k = key(b'X', &[&node.0.to_be_bytes()]);
        if on {
            self.db.put(k, enc(&unix_now())).map_err(db_err)
        } else {
            self.db.delete(k).map_err(db_err)
        }
    }

    /// Nodes being drained.
    pub fn draining(&self) -> Result<HashSet<NodeId>, MasterError> {
        Ok(self
            .scan::<u64>(b"X", b"X", usize::MAX)?
            .into_iter()
            .filter_map(|(k, _)| Some(NodeId(u64::from_be_bytes(k[1..9].try_into().ok()?))))
            .collect())
    }

    /// Whether the block map or the collector knows block `id`.
    /// The recorded description of a stored block.
    pub fn block_meta(&self, id: &BlockId) -> Result<Option<BlockMeta>, MasterError> {
        Ok(self.get::<BlockRecord>(&k_block(id))?.map(|r| r.meta))
    }

    /// Replace a stored block's description (keeping its references) with `m`, which a node
    /// verified. The shards of the old description are left for the scrubber.
    pub fn replace_description(&self, m: &BlockMeta) -> Result<bool, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let key = k_block(&m.id);
        let Some(mut rec) = self.get::<BlockRecord>(&key)? else {
            return Ok(false);
        };
        rec.meta = m.clone();
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_opt(key, enc(&rec), &wo).map_err(db_err)?;
        Ok(true)
    }

    pub fn knows_block(&self, id: &BlockId) -> Result<bool, MasterError> {
        Ok(self.get::<BlockRecord>(&k_block(id))?.is_some()
            || self.get::<GcRecord>(&k_gc(id))?.is_some())
    }

    /// Every (block, index) the block map or the collector places on `node`.
    pub fn shards_on(&self, node: NodeId) -> Result<HashSet<(BlockId, u8)>, MasterError> {
        let mut out = HashSet::new();
        for (_, b) in self.scan::<BlockRecord>(b"B", b"B", usize::MAX)? {
            for (i, s) in b.meta.shards.iter().enumerate() {
                if s.node == node {
                    out.insert((b.meta.id, i as u8));
                }
            }
        }
        for (_, g) in self.scan::<GcRecord>(b"G", b"G", usize::MAX)? {
            for (i, s) in g.meta.shards.iter().enumerate() {
                if s.node == node {
                    out.insert((g.meta.id, i as u8));
                }
            }
        }
        Ok(out)
    }

    /// Whether some session has `ino` open.
    pub fn is_held(&self, ino: Ino) -> bool {
        self.held.lock().expect("held lock").contains_key(&ino)
    }

    /// One more session has `ino` open.
    pub fn hold(&self, ino: Ino) {
        *self.held.lock().expect("held lock").entry(ino).or_insert(0) += 1;
    }

    /// A session closed `ino`: if it was the last holder of an orphan, the orphan goes.
    pub fn unhold(&self, ino: Ino) -> Result<(), MasterError> {
        {
            let mut held = self.held.lock().expect("held lock");
            match held.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return Ok(());
                }
                Some(_) => {
                    held.remove(&ino);
                }
                None => return Ok(()),
            }
        }
        self.collect_orphan(ino)
    }

    /// Delete orphan `ino` unless a session holds it again.
    pub fn collect_orphan(&self, ino: Ino) -> Result<(), MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        if self.is_held(ino) || self.get::<()>(&k_orphan(ino))?.is_none() {
            return Ok(());
        }
        let mut txn = Txn::new(self);
        match txn.inode(ino) {
            Ok(rec) if rec.attr.nlink == 0 => txn.delete_inode(ino)?,
            Ok(_) => txn.batch.delete(k_orphan(ino)),
            Err(_) => txn.batch.delete(k_orphan(ino)),
        }
        txn.commit().map(drop)
    }

    /// Record that mount session `id` is open (`open`) or over.
    /// Record that session `id` is open for credential `owner` with `writes` open for writing,
    /// or (None) that it ended.
    pub fn record_session(&self, id: u64, open: Option<(&str, &[Ino])>) -> Result<(), MasterError> {
        let mut b = WriteBatch::default();
        for k in self.keys(&key(b'W', &[&id.to_be_bytes()]))? {
            b.delete(k);
        }
        match open {
            Some((owner, writes)) => {
                let mut v = vec![VERSION];
                v.extend_from_slice(owner.as_bytes());
                b.put(k_session(id), v);
                for &ino in writes {
                    b.put(k_write(id, ino), [VERSION]);
                }
            }
            None => b.delete(k_session(id)),
        }
        self.write(b)
    }

    /// Sessions open when the master last stopped, with the credential of each ("" if the
    /// record predates owners).
    pub fn recorded_sessions(&self) -> Result<Vec<(u64, String)>, MasterError> {
        let mut out = Vec::new();
        for item in self.iter_within(b"M", b"M") {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(b"M") {
                break;
            }
            let Some(id) = k.get(1..9).and_then(|b| b.try_into().ok()) else {
                continue;
            };
            let owner = String::from_utf8_lossy(v.get(1..).unwrap_or_default()).into_owned();
            out.push((u64::from_be_bytes(id), owner));
        }
        Ok(out)
    }

    /// Record that session `session` has (or no longer has) `ino` open for writing.
    pub fn record_write(&self, session: u64, ino: Ino, open: bool) -> Result<(), MasterError> {
        let mut b = WriteBatch::default();
        match open {
            true => b.put(k_write(session, ino), [VERSION]),
            false => b.delete(k_write(session, ino)),
        }
        // In the WAL, not synced: an open for writing must stay cheap. It survives the
        // master's crash, not always a power loss (docs/SECURITY.md).
        self.db.write(b).map_err(db_err)
    }

    /// Every (session, file) open for writing when the master last stopped.
    pub fn recorded_writes(&self) -> Result<HashSet<(u64, Ino)>, MasterError> {
        Ok(self
            .keys(b"W")?
            .iter()
            .filter_map(|k| {
                let s = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
                let i = Ino::from_be_bytes(k.get(9..17)?.try_into().ok()?);
                Some((s, i))
            })
            .collect())
    }

    /// Every orphan on record (after a restart: kept until their mounts had time to come back).
    pub fn orphans(&self) -> Result<Vec<Ino>, MasterError> {
        Ok(self
            .keys(b"O")?
            .iter()
            .filter_map(|k| Some(Ino::from_be_bytes(k.get(1..9)?.try_into().ok()?)))
            .collect())
    }

    pub fn count_inodes(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
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
