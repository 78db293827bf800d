//! `shardfs-master`: the namespace and the file → block → shard map of a ShardFS cluster.
//!
//! Clients ask the master to resolve names, create and remove entries, and to place and commit
//! blocks; storage nodes register and heartbeat. All state lives in RocksDB ([`meta`]), each POSIX
//! operation one atomic batch. The node registry ([`nodes`]) tracks which nodes are alive and
//! chooses k + m distinct nodes for each new block, weighted by free space. Background tasks
//! delete the shards of blocks nothing references any more, after a grace period, and keep
//! every block at full strength ([`repair`]: rebuild lost shards, scrub, drain, rebalance), and
//! turn small writes that went quiet into erasure-coded blocks ([`seal`]).

pub mod credentials;
pub mod events;
mod handlers;
pub mod merge;
pub mod meta;
pub mod nodes;
pub mod perms;
mod policy;
pub mod repair;
pub mod seal;
pub mod sessions;
pub mod slots;

use bytes::Bytes;
use meta::{Changes, Meta};
use nodes::Registry;
use shardfs_common::cap::{self, Cap};
use shardfs_common::dial::Dialer;
use shardfs_common::ec::EcParams;
use shardfs_common::error::RemoteError;
use shardfs_common::proto::{
    FileKind, FsStats, HistoryEntry, MasterRequest, MasterResponse, NodeRequest, NodeResponse,
    Placement, ALPN_MASTER, ALPN_NODE,
};
use shardfs_common::{net, wire, BlockId, Error, ErrorCode};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// A refusal the client should see as an errno.
    #[error(transparent)]
    Fs(Error),
    #[error("metadata store: {0}")]
    Db(String),
    #[error("metadata corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Config(String),
}

impl MasterError {
    fn to_remote(&self) -> RemoteError {
        match self {
            MasterError::Fs(e) => e.to_remote(),
            MasterError::Db(m) => RemoteError {
                code: ErrorCode::Io,
                message: m.clone(),
            },
            MasterError::Corrupt(m) => RemoteError {
                code: ErrorCode::Corrupt,
                message: m.clone(),
            },
            MasterError::Config(m) => RemoteError {
                code: ErrorCode::Invalid,
                message: m.clone(),
            },
        }
    }
}

impl From<Error> for MasterError {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(m) => MasterError::Config(m),
            e => MasterError::Fs(e),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MasterConfig {
    pub data_dir: PathBuf,
    /// Port 0: reuse the previous run's port (so clients and nodes find the master again after a
    /// restart), or pick a free one on first start.
    pub listen: SocketAddr,
    /// File to write the bound address to, once listening.
    pub addr_file: Option<PathBuf>,
    /// Erasure code of a new cluster (an existing cluster keeps its own).
    pub ec: EcParams,
    pub block_size: u64,
    /// A node silent for this long is down.
    pub node_timeout: Duration,
    /// Unreferenced blocks are deleted from the nodes after this long.
    pub gc_grace: Duration,
    pub gc_interval: Duration,
    pub repair: repair::RepairConfig,
    /// A mount session not renewed for this long is over (its locks and open files released).
    pub session_lease: Duration,
    /// fsync the metadata log on every operation (default: on fsync requests only the WAL is
    /// written, which survives a process kill but not a power cut).
    pub sync: bool,
    /// Largest merge document kept per text file (bytes); past it, it is compacted.
    pub merge_doc_max: usize,
    pub seal: seal::SealConfig,
}

struct Master {
    meta: Meta,
    auth: credentials::Authority,
    /// For verifying block descriptions on the nodes.
    node_dialer: Dialer,
    nodes: Registry,
    /// Blocks whose shards the collector is deleting right now.
    collecting: Mutex<HashSet<BlockId>>,
    repair: repair::Repairer,
    sessions: sessions::Sessions,
    events: events::Events,
    /// Merges take turns (each reads, merges and stores a file's merge document).
    merges: Mutex<()>,
    /// Files with a merge result waiting for its commit (and the merging session): only their
    /// commits look at the merge document.
    merged: Mutex<HashSet<(shardfs_common::Ino, u64)>>,
    /// The latest merges, conflicted copies and replays, cluster-wide (for `shardfs status`).
    recent: Mutex<std::collections::VecDeque<HistoryEntry>>,
    merge_doc_max: usize,
    seal_stats: Mutex<seal::SealStats>,
}

impl wire::Service for Master {
    type Req = MasterRequest;
    type Resp = MasterResponse;
    type Bulk = Vec<u8>;
    const MAX_REQUEST_BULK: usize = 0;

    fn error_response(e: RemoteError) -> MasterResponse {
        MasterResponse::Err(e)
    }

    fn admit(&self, peer: &wire::Peer, conn: &quinn::Connection) -> Result<(), String> {
        self.auth.admit(peer, conn)
    }

    async fn handle(
        self: Arc<Self>,
        req: MasterRequest,
        _bulk: Vec<u8>,
        peer: wire::Peer,
    ) -> (MasterResponse, Bytes) {
        let req = match self.as_caller(req, &peer) {
            Ok(r) => r,
            Err(e) => {
                if !matches!(&e, MasterError::Fs(fe) if matches!(fe.code(), ErrorCode::NotFound | ErrorCode::Access))
                {
                    warn!(%peer, "request refused: {e}");
                }
                return (MasterResponse::Err(e.to_remote()), Bytes::new());
            }
        };
        // Metadata operations are short (a RocksDB read or one batched write, no fsync by
        // default), so they run inline rather than paying for a thread hand-off. A scrub waits
        // on every node.
        if let Err(e) = self.check_sessions(&req, &peer) {
            warn!(%peer, "request refused: {e}");
            return (MasterResponse::Err(e.to_remote()), Bytes::new());
        }
        if let MasterRequest::Commit { slots, pieces, .. } = &req {
            let described = slots
                .iter()
                .filter_map(|s| s.meta.as_ref().filter(|m| Some(m.id) == s.id))
                .chain(pieces.iter());
            if let Err(e) = self.settle_descriptions(described).await {
                let e = Error::fs(
                    ErrorCode::Corrupt,
                    format!("a block of this commit is stored under another description, and this one does not hold: {e}"),
                );
                return (MasterResponse::Err(e.to_remote()), Bytes::new());
            }
        }
        let touched = req.touched();
        if let Err(e) = check_times(&req) {
            return (MasterResponse::Err(e.to_remote()), Bytes::new());
        }
        let r = match req {
            MasterRequest::Watch { after } => {
                // Other mounts' session ids are theirs: a watcher only learns which events
                // are its own.
                let me = self.sessions.of_peer(peer.addr);
                let mut r = self.events.watch(after, Duration::from_secs(10), me).await;
                if let MasterResponse::Changes { events, .. } = &mut r {
                    for e in events.iter_mut().filter(|e| e.origin != me) {
                        e.origin = 0;
                    }
                }
                Ok(r)
            }
            MasterRequest::Scrub => repair::scrub(&self).await.map(MasterResponse::Scrubbed),

            // A merge of a big text takes tens of milliseconds of CPU: off the request thread.
            req @ MasterRequest::Merge { .. } => {
                let master = self.clone();
                tokio::task::spawn_blocking(move || master.merge(req))
                    .await
                    .unwrap_or_else(|e| {
                        Err(Error::fs(ErrorCode::Internal, format!("merge failed: {e}")).into())
                    })
            }
            MasterRequest::SetLock { lock, wait_ms } => self
                .sessions
                .set_lock(lock, Duration::from_millis(wait_ms.min(10_000).into()))
                .await
                .map(|()| MasterResponse::Ok),
            req => self.dispatch(req, &peer),
        };
        let peer = peer.addr;
        let resp = match r {
            Ok(r) => {
                if !touched.is_empty() {
                    let mut changes = touched;
                    changes.extend(events::reported(&r));
                    self.events.push(self.sessions.of_peer(peer), changes);
                }
                r
            }
            Err(e) => {
                if !matches!(&e, MasterError::Fs(fe) if matches!(fe.code(), ErrorCode::NotFound | ErrorCode::Exists | ErrorCode::NotEmpty | ErrorCode::NoData | ErrorCode::Again))
                {
                    debug!(%peer, "request refused: {e}");
                }
                MasterResponse::Err(e.to_remote())
            }
        };
        (resp, Bytes::new())
    }
}

impl Master {
    /// A capability over block `id` for the credential `from` speaks with.
    fn cap(&self, from: &wire::Peer, rights: u8, id: &BlockId) -> Cap {
        match &from.who {
            Some(w) => self.auth.cap_key.grant(rights, &w.id, id),
            None => Cap::default(),
        }
    }

    /// A commit that describes an already stored block differently: one of the two
    /// descriptions is false (content addressing makes honest ones identical). The new one is
    /// checked by a node; if true, it replaces the stored one (a forged description, committed
    /// earlier to poison dedup, loses its block), if not, the commit is refused.
    async fn settle_descriptions(
        &self,
        described: impl Iterator<Item = &shardfs_common::proto::BlockMeta>,
    ) -> Result<(), MasterError> {
        for m in described {
            let Some(old) = self.meta.block_meta(&m.id)? else {
                continue;
            };
            let same = old.ec == m.ec
                && old.len == m.len
                && old
                    .shards
                    .iter()
                    .map(|l| l.hash)
                    .eq(m.shards.iter().map(|l| l.hash));
            if same {
                continue;
            }
            m.check(self.meta.cluster.ec, self.meta.cluster.block_size)?;
            match self.verify_on_a_node(m).await {
                Ok(()) => {
                    self.meta.replace_description(m)?;
                    warn!(block = %m.id, "a stored block description did not match its content; replaced by a verified one");
                }
                Err(e) => {
                    warn!(block = %m.id, "refused a commit: its block description could not be verified: {e}");
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn verify_on_a_node(
        &self,
        m: &shardfs_common::proto::BlockMeta,
    ) -> Result<(), MasterError> {
        let live = self.nodes.live();
        let sources: Vec<(u8, String)> = m
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, l)| live.get(&l.node).map(|a| (i as u8, a.to_string())))
            .collect();
        let Some(at) = m.shards.iter().find_map(|l| live.get(&l.node)).copied() else {
            return Err(Error::Unavailable("no node of the block is up".into()).into());
        };
        let req = NodeRequest::Verify {
            block: m.clone(),
            sources,
        };
        match self
            .node_dialer
            .call::<_, NodeResponse>(at, &req, Bytes::new(), 0, Duration::from_secs(30))
            .await
        {
            Ok((NodeResponse::Ok, _)) => Ok(()),
            Ok((NodeResponse::Err(e), _)) => Err(Error::from(e).into()),
            Ok((other, _)) => Err(Error::Protocol(format!("unexpected answer {other:?}")).into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Who a request acts as, and the request once checked: its sender's role, then (for a
    /// namespace request) the POSIX permissions of the user it acts for. Root is squashed to
    /// nobody unless the credential allows root; a request not wrapped in `As` acts as the
    /// credential itself.
    fn as_caller(
        &self,
        req: MasterRequest,
        peer: &wire::Peer,
    ) -> Result<MasterRequest, MasterError> {
        let (mut req, caller) = match req {
            MasterRequest::As { caller, req } => (*req, Some(caller)),
            r => (r, None),
        };
        if matches!(req, MasterRequest::As { .. }) {
            return Err(Error::invalid("a request can act for one caller only").into());
        }
        self.auth.authorize(&req, peer)?;
        let root_ok = peer.who.as_ref().is_some_and(|w| self.auth.allows_root(w));
        let acts_for_user = caller.is_some();
        let mut caller = match caller {
            Some(c) if c.groups.len() > shardfs_common::proto::MAX_GROUPS => {
                return Err(Error::invalid("too many supplementary groups").into())
            }
            Some(c) if c.uid == 0 && !root_ok => shardfs_common::proto::Caller::nobody(),
            Some(mut c) => {
                if !root_ok && c.gid == 0 {
                    c.gid = shardfs_common::proto::NOBODY;
                }
                c
            }
            None if root_ok => shardfs_common::proto::Caller::root(),
            None => shardfs_common::proto::Caller::nobody(),
        };
        if let (true, Some(who)) = (acts_for_user, &peer.who) {
            perms::within(&self.auth.users(who), who, &mut caller)?;
        }
        perms::check(&self.meta, &caller, &mut req)?;
        Ok(req)
    }

    /// Every session id a request names must be a session of the sender's credential.
    fn check_sessions(&self, req: &MasterRequest, peer: &wire::Peer) -> Result<(), MasterError> {
        use MasterRequest as R;
        let id = match req {
            R::Create { session, .. }
            | R::Open { session, .. }
            | R::Close { session, .. }
            | R::Commit { session, .. }
            | R::Merge { session, .. }
            | R::Replayed { session, .. } => *session,
            R::SessionOpen { id, .. } | R::SessionRenew { id } | R::SessionClose { id } => *id,
            R::SetLock { lock, .. } => lock.owner.session,
            R::ReleaseLocks { owner, .. } => owner.session,
            _ => return Ok(()),
        };
        let who = peer.who.as_ref().map_or("", |w| w.id.as_str());
        if id == 0 || self.sessions.owned_by(id, who) {
            Ok(())
        } else {
            Err(MasterError::Fs(Error::fs(
                ErrorCode::Permission,
                format!("session {id:016x} belongs to another credential"),
            )))
        }
    }
}

/// Free space a node needs for one shard of a block of `len` bytes (with its header).
fn shard_space(ec: EcParams, len: u64) -> u64 {
    ec.shard_size(len as usize) as u64 + 4096
}

/// Every time a request would store must be one that can be represented and shown.
fn check_times(req: &MasterRequest) -> Result<(), Error> {
    use MasterRequest as R;
    match req {
        R::SetAttr { set, .. } => {
            set.now.check()?;
            set.atime.map(|t| t.check()).transpose()?;
            set.mtime.map(|t| t.check()).transpose()?;
            Ok(())
        }
        R::Create { now, .. }
        | R::Symlink { now, .. }
        | R::Link { now, .. }
        | R::Unlink { now, .. }
        | R::Rmdir { now, .. }
        | R::Rename { now, .. } => now.check(),
        R::Commit { mtime, .. } => mtime.check(),
        _ => Ok(()),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Master {
    /// `user@host` of a mount session, as changes are attributed.
    fn who(&self, session: u64) -> String {
        self.sessions
            .who(session)
            .unwrap_or_else(|| "another mount".into())
    }

    /// Remember an entry among the cluster's recent merges and copies.
    fn note(&self, e: HistoryEntry) {
        let mut r = self.recent.lock().expect("recent lock");
        r.push_back(e);
        if r.len() > 50 {
            r.pop_front();
        }
    }

    /// Record an entry in a file's history (and the recent list).
    fn note_in_file(&self, ino: shardfs_common::Ino, e: HistoryEntry) -> Result<(), MasterError> {
        self.note(e.clone());
        let _turn = self.merges.lock().expect("merges lock");
        let mut rec = self.meta.merge_record(ino)?.unwrap_or_default();
        rec.note(e);
        self.meta.put_merge_record(ino, &rec)
    }

    /// A commit by `session` on version `base` made `version`: if it carries a merge result,
    /// the file's merge document knows the new version.
    fn merge_committed(&self, ino: shardfs_common::Ino, session: u64, base: u64, version: u64) {
        if !self
            .merged
            .lock()
            .expect("merged lock")
            .remove(&(ino, session))
        {
            return;
        }
        let _turn = self.merges.lock().expect("merges lock");
        let r = self.meta.merge_record(ino).and_then(|rec| match rec {
            Some(mut rec) => match rec.committed(session, base, version) {
                true => self.meta.put_merge_record(ino, &rec),
                false => Ok(()),
            },
            None => Ok(()),
        });
        if let Err(e) = r {
            warn!(ino, "could not record a merged version: {e}");
        }
    }

    /// File `to` replaced file `from` under its name: `to` takes over `from`'s merge
    /// document; a merge result of `session` is `to`'s current version.
    fn merge_follows(
        &self,
        from: shardfs_common::Ino,
        to: &shardfs_common::proto::Attr,
        session: u64,
    ) {
        let _turn = self.merges.lock().expect("merges lock");
        let r = self.meta.merge_record(from).and_then(|rec| match rec {
            Some(mut rec) => {
                rec.adopt(session, to.version);
                self.meta.put_merge_record(to.ino, &rec)
            }
            None => Ok(()),
        });
        if let Err(e) = r {
            warn!(
                from,
                to = to.ino,
                "could not carry a merge document over a rename: {e}"
            );
        }
    }

    /// Merge a mount's edit of a text file with the current version (see `merge`).
    fn merge(&self, req: MasterRequest) -> Result<MasterResponse, MasterError> {
        let MasterRequest::Merge {
            ino,
            session,
            base,
            base_text,
            current,
            current_text,
            mine,
            replay,
        } = req
        else {
            return Err(Error::invalid("not a merge").into());
        };
        let text = |b: Vec<u8>, what: &str| {
            String::from_utf8(b)
                .map_err(|_| MasterError::from(Error::invalid(format!("{what} is not UTF-8 text"))))
        };
        let base_text = base_text.map(|b| text(b, "the base")).transpose()?;
        let (current_text, mine) = (
            text(current_text, "the current text")?,
            text(mine, "the edit")?,
        );
        let _turn = self.merges.lock().expect("merges lock");
        let attr = self.meta.getattr(ino)?;
        if attr.version != current {
            return Ok(MasterResponse::Stale { attr });
        }
        let by = self.who(session);
        let current_by = match self.meta.writer_of(ino, current) {
            Some(s) => self.who(s),
            None => "another mount".into(),
        };
        let mut rec = self.meta.merge_record(ino)?.unwrap_or_default();
        let t = std::time::Instant::now();
        let merged = rec
            .merge(&merge::MergeInput {
                ino,
                base,
                base_text: base_text.as_deref(),
                current,
                current_text: &current_text,
                current_by: &current_by,
                mine: &mine,
                by: &by,
                session,
                now: now_secs(),
                max_doc: self.merge_doc_max,
                replay,
            })
            .map_err(|e| MasterError::from(Error::fs(ErrorCode::Invalid, e)))?;
        self.meta.put_merge_record(ino, &rec)?;
        {
            let mut m = self.merged.lock().expect("merged lock");
            if m.len() >= 100_000 {
                m.clear();
            }
            m.insert((ino, session));
        }
        if let Some(e) = rec.log.last() {
            self.note(e.clone());
        }
        info!(ino, %by, base, current, bytes = merged.len(), doc = rec.doc_len(),
            ms = t.elapsed().as_millis() as u64, "merged concurrent edits of a text file");
        Ok(MasterResponse::Merged {
            text: merged.into_bytes(),
        })
    }

    fn dispatch(
        &self,
        req: MasterRequest,
        from: &wire::Peer,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        use MasterResponse as A;
        let peer = from.addr;
        Ok(match req {
            R::Join {
                secret,
                public_key,
                host,
                node,
            } => {
                let (cert, ca) =
                    self.auth
                        .join(&self.meta, &secret, &public_key, &host, node, from)?;
                A::Joined { cert, ca }
            }
            R::CreateToken {
                role,
                ttl_secs,
                allow_root,
                users,
            } => {
                let (token, expires) = self
                    .auth
                    .create_token(&self.meta, role, ttl_secs, allow_root, users)?;
                info!(by = %from, %role, ttl_secs, "join token made");
                A::Token { token, expires }
            }
            R::Credentials => A::Credentials(self.auth.list()),
            R::Revoke { id } => {
                self.auth.revoke(&self.meta, &id, from)?;
                A::Ok
            }
            R::Cluster => A::Cluster(self.meta.cluster.clone()),
            R::Lookup { parent, name } => A::Attr(self.meta.lookup(parent, &name)?),
            R::GetAttr { ino } => A::Attr(self.meta.getattr(ino)?),
            R::SetAttr { ino, set, base } => {
                A::Attr(
                    self.meta
                        .setattr(ino, &set, self.sessions.of_peer(peer), base)?,
                )
            }
            req @ R::Create { .. } => self.on_create(req, from)?,
            req @ R::Symlink { .. } => self.on_symlink(req, from)?,
            R::ReadLink { ino } => A::Link(self.meta.readlink(ino)?),
            R::Link {
                ino,
                parent,
                name,
                now,
            } => changed(self.meta.link(ino, parent, &name, now)?),
            R::Unlink { parent, name, now } => removed(self.meta.unlink(parent, &name, now)?),
            R::Rmdir { parent, name, now } => removed(self.meta.rmdir(parent, &name, now)?),
            req @ R::Rename { .. } => self.on_rename(req, from)?,
            R::ReadDir { ino, after, limit } => {
                let (entries, more) =
                    self.meta
                        .readdir(ino, after.as_deref(), limit.clamp(1, 10_000) as usize)?;
                A::Entries { entries, more }
            }
            req @ R::Open { .. } => self.on_open(req, from)?,
            R::Close { session, files } => {
                if files.len() > shardfs_common::proto::CLOSE_MAX {
                    return Err(Error::invalid(format!(
                        "a close names {} files (at most {})",
                        files.len(),
                        shardfs_common::proto::CLOSE_MAX
                    ))
                    .into());
                }
                // Every close is applied; the first failure is the answer.
                let mut first = Ok(());
                for (ino, opens) in files {
                    let r = self.sessions.closed(&self.meta, session, ino, opens);
                    if first.is_ok() {
                        first = r;
                    }
                }
                first?;
                A::Ok
            }
            R::SessionOpen {
                id,
                host,
                user,
                mountpoint,
                opens,
                locks,
            } => A::Session {
                id: self.sessions.open(
                    &self.meta,
                    id,
                    from.who.as_ref().map_or("", |w| w.id.as_str()),
                    peer,
                    host,
                    user,
                    mountpoint,
                    opens,
                    locks,
                ),
                lease_ms: self.sessions.lease().as_millis() as u64,
            },
            R::SessionRenew { id } => {
                self.sessions.renew(id)?;
                A::Ok
            }
            R::SessionClose { id } => {
                self.sessions.close(&self.meta, id, "unmounted");
                A::Ok
            }
            R::Watch { .. } => {
                return Err(Error::invalid("watch requests are served asynchronously").into())
            }
            R::SetLock { .. } => {
                return Err(Error::invalid("lock requests are served asynchronously").into())
            }
            R::GetLock { lock } => {
                let mut held = self.sessions.get_lock(&lock);
                if let Some(h) = held
                    .as_mut()
                    .filter(|h| h.owner.session != lock.owner.session)
                {
                    h.owner.session = 0;
                }
                A::Lock(held)
            }
            R::ReleaseLocks { ino, owner } => {
                self.sessions.release_locks(ino, owner);
                A::Ok
            }
            req @ R::Place { .. } => self.on_place(req, from)?,
            req @ R::PlaceMore { .. } => self.on_place_more(req, from)?,
            req @ R::Commit { .. } => self.on_commit(req, from)?,
            R::StatFs => {
                let (capacity, free) = self.nodes.capacity();
                let ec = self.meta.cluster.ec;
                let scale = |b: u64| (b as u128 * ec.k as u128 / ec.total() as u128) as u64;
                A::StatFs(FsStats {
                    total_bytes: scale(capacity),
                    free_bytes: scale(free),
                    files: self.meta.count_inodes(),
                })
            }
            R::Nodes => A::Nodes(self.nodes.list()),
            R::SetXattr {
                ino, name, value, ..
            } if name.starts_with(policy::PREFIX) => {
                policy::set(self, ino, &name, &value)?;
                A::Attr(self.meta.getattr(ino)?)
            }
            R::RemoveXattr { ino, name } if name.starts_with(policy::PREFIX) => {
                policy::set(self, ino, &name, b"")?;
                A::Attr(self.meta.getattr(ino)?)
            }
            R::GetXattr { ino, name } if name.starts_with(policy::PREFIX) => {
                A::Xattr(policy::get(self, ino, &name)?)
            }
            R::SetXattr {
                ino,
                name,
                value,
                flags,
            } => A::Attr(self.meta.setxattr(
                ino,
                &name,
                &value,
                flags,
                shardfs_common::proto::Timespec::now(),
            )?),
            R::GetXattr { ino, name } => A::Xattr(self.meta.getxattr(ino, &name)?),
            R::ListXattr { ino } => A::XattrNames(self.meta.listxattr(ino)?),
            R::RemoveXattr { ino, name } => A::Attr(self.meta.removexattr(
                ino,
                &name,
                shardfs_common::proto::Timespec::now(),
            )?),
            R::Health => {
                let mut h = self.repair.health();
                let s = *self.seal_stats.lock().expect("seal stats lock");
                h.unsealed_files = self.meta.unsealed_files()?;
                (h.sealed_slots, h.sealed_bytes, h.seal_failures) = (s.slots, s.bytes, s.failed);
                A::Health(h)
            }
            R::Repair => {
                self.repair.force();
                A::Ok
            }
            R::Drain { node, cancel } => {
                self.nodes.set_draining(&self.meta, node, !cancel)?;
                info!(%node, drain = !cancel, "drain {}", if cancel { "cancelled" } else { "started" });
                self.repair.force();
                A::Ok
            }
            R::ShardsLost { node, shards } => {
                let n = self.meta.add_lost(node, &shards)?;
                warn!(%node, reported = shards.len(), recorded = n, "node reports corrupt shards");
                self.repair.kick();
                A::Ok
            }
            R::Scrub | R::Merge { .. } | R::As { .. } => {
                return Err(Error::invalid("served asynchronously").into())
            }
            R::History { ino } => {
                let log = self.meta.merge_record(ino)?.map(|r| r.log);
                A::History(log.unwrap_or_default())
            }
            R::Recent => A::History(
                self.recent
                    .lock()
                    .expect("recent lock")
                    .iter()
                    .cloned()
                    .collect(),
            ),
            req @ R::Replayed { .. } => self.on_replayed(req, from)?,
            R::Register {
                id,
                addr,
                capacity,
                free,
                used,
                shards,
            } => {
                self.nodes
                    .register(&self.meta, id, addr, capacity, free, used, shards)?;
                A::Registered {
                    cap_key: self.auth.cap_key.bytes(),
                    ec: self.meta.cluster.ec,
                }
            }
            R::Heartbeat {
                id,
                capacity,
                free,
                used,
                shards,
            } => {
                if !self.nodes.heartbeat(id, capacity, free, used, shards) {
                    return Err(Error::not_found(format!("node {id} is not registered")).into());
                }
                A::Revoked(self.auth.revoked())
            }
        })
    }
}

fn changed((attr, c): (shardfs_common::proto::Attr, Changes)) -> MasterResponse {
    MasterResponse::Changed {
        attr: Some(attr),
        changed: c.attrs,
        gone: c.gone,
        code: None,
    }
}

fn removed(c: Changes) -> MasterResponse {
    MasterResponse::Changed {
        attr: None,
        changed: c.attrs,
        gone: c.gone,
        code: None,
    }
}

/// Run the master until `shutdown` turns true.
///
/// # Errors
/// Fails at start if the metadata store cannot be opened or the address cannot be bound.
pub async fn run(cfg: MasterConfig, shutdown: watch::Receiver<bool>) -> Result<(), MasterError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        MasterError::Config(format!("cannot create {}: {e}", cfg.data_dir.display()))
    })?;
    let (meta, created) = Meta::open(&cfg.data_dir.join("meta"), cfg.ec, cfg.block_size, cfg.sync)?;
    if !created && meta.cluster.ec != cfg.ec {
        info!(existing = %meta.cluster.ec, requested = %cfg.ec, "cluster already exists; keeping its erasure code");
    }
    let nodes = Registry::load(&meta, cfg.node_timeout)?;
    let mut listen = cfg.listen;
    let port_file = cfg.data_dir.join("listen.addr");
    if listen.port() == 0 {
        if let Some(prev) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse::<SocketAddr>().ok())
        {
            if prev.ip() == listen.ip() {
                listen = prev;
            }
        }
    }
    let key = net::reset_key(&cfg.data_dir)?;
    let auth = credentials::Authority::open(&cfg.data_dir, &meta)?;
    let endpoint = net::server_endpoint(
        listen,
        ALPN_MASTER,
        &key,
        &auth.own,
        net::ClientAuth::AllowJoin(auth.token_check()),
        net::MASTER_LIMITS,
    )
    .map_err(MasterError::from)?;
    let bound = endpoint
        .local_addr()
        .map_err(|e| MasterError::Config(e.to_string()))?;
    std::fs::write(&port_file, format!("{bound}\n"))
        .map_err(|e| MasterError::Config(format!("{}: {e}", port_file.display())))?;
    if let Some(f) = &cfg.addr_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{bound}\n"))
            .and_then(|()| std::fs::rename(&tmp, f))
            .map_err(|e| MasterError::Config(format!("{}: {e}", f.display())))?;
    }
    info!(%bound, cluster = format!("{:016x}", meta.cluster.cluster_id), ec = %meta.cluster.ec,
        block_size = meta.cluster.block_size, new = created, "master listening");
    let sessions = sessions::Sessions::new(&meta, cfg.session_lease);
    let master = Arc::new(Master {
        meta,
        nodes,
        collecting: Mutex::new(HashSet::new()),
        repair: repair::Repairer::new(cfg.repair.clone(), &auth.own)?,
        node_dialer: Dialer::new(ALPN_NODE, &auth.own, Duration::from_secs(3))?,
        auth,
        sessions,
        events: events::Events::default(),
        merges: Mutex::new(()),
        merged: Mutex::new(HashSet::new()),
        recent: Mutex::new(Default::default()),
        merge_doc_max: cfg.merge_doc_max,
        seal_stats: Mutex::new(Default::default()),
    });
    let session_loop = tokio::spawn(session_loop(master.clone(), cfg.session_lease));
    // Repair, collection and sealing walk the maps and wait on nodes for as long as they
    // need: on a thread of their own, so requests (heartbeats among them) never wait behind
    // them, and requests need no more than one thread.
    let background = background_runtime(shutdown.clone())?;
    let repairs = background.spawn(repair::repair_loop(master.clone(), shutdown.clone()));
    let gc = background.spawn(gc_loop(
        master.clone(),
        cfg.gc_grace,
        cfg.gc_interval,
        shutdown.clone(),
    ));
    // Mounts that had files open before a restart claim them back within two leases; until
    // then no file counts as closed.
    let settle = match master.meta.recorded_sessions() {
        Ok(s) if s.is_empty() => Duration::ZERO,
        _ => cfg.session_lease * 2,
    };
    let seals = background.spawn(seal::seal_loop(
        master.clone(),
        cfg.seal.clone(),
        settle,
        shutdown.clone(),
    ));
    wire::serve(endpoint, master, shutdown).await;
    seals.abort();
    gc.abort();
    repairs.abort();
    session_loop.abort();
    info!("master stopped");
    Ok(())
}

/// A runtime on a thread of its own for the background loops, running until `shutdown`.
fn background_runtime(
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::runtime::Handle, MasterError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MasterError::Config(format!("cannot start the background thread: {e}")))?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("shardfs-background".into())
        .spawn(move || {
            rt.block_on(async move {
                while !*shutdown.borrow() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
            })
        })
        .map_err(|e| MasterError::Config(format!("cannot start the background thread: {e}")))?;
    Ok(handle)
}

/// End sessions whose mounts stopped renewing them; after a restart, delete the orphans that no
/// mount claimed back within two leases.
async fn session_loop(master: Arc<Master>, lease: Duration) {
    let mut orphans = match master.meta.orphans() {
        Ok(o) => o,
        Err(e) => {
            warn!("cannot list orphaned files: {e}");
            Vec::new()
        }
    };
    let start = tokio::time::Instant::now();
    let mut forgot = false;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        master.nodes.log_changes();
        master.sessions.expire(&master.meta);
        if start.elapsed() > lease * 2 && !forgot {
            master.sessions.forget_missing(&master.meta);
            forgot = true;
        }
        if !orphans.is_empty() && start.elapsed() > lease * 2 {
            for ino in orphans.drain(..) {
                if let Err(e) = master.meta.collect_orphan(ino) {
                    warn!(ino, "cannot delete an orphaned file: {e}");
                }
            }
        }
    }
}

/// Delete the shards of unreferenced blocks once their grace period is over.
async fn gc_loop(
    master: Arc<Master>,
    grace: Duration,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let dialer = match Dialer::new(ALPN_NODE, &master.auth.own, Duration::from_secs(3)) {
        Ok(d) => d,
        Err(e) => {
            warn!("garbage collector disabled: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let candidates = match master
            .meta
            .gc_claim(grace.as_secs(), 2000, &master.collecting)
        {
            Ok(c) => c,
            Err(e) => {
                warn!("garbage collection scan failed: {e}");
                continue;
            }
        };
        if candidates.is_empty() {
            continue;
        }
        let ids: Vec<BlockId> = candidates.iter().map(|g| g.meta.id).collect();
        let addrs = master.nodes.addresses();
        let mut per_node: HashMap<SocketAddr, Vec<(BlockId, u8)>> = HashMap::new();
        for g in &candidates {
            for (i, s) in g.meta.shards.iter().enumerate() {
                if let Some(a) = addrs.get(&s.node) {
                    per_node.entry(*a).or_default().push((g.meta.id, i as u8));
                }
            }
        }
        // Shards on nodes that cannot be reached stay behind as orphans (same bytes as any
        // future shard of the same block, so harmless; reclaimed by the node scrubber).
        let mut done = 0usize;
        for (addr, shards) in &per_node {
            let req = NodeRequest::Delete {
                shards: shards.clone(),
            };
            match dialer
                .call::<_, NodeResponse>(*addr, &req, Bytes::new(), 0, Duration::from_secs(30))
                .await
            {
                Ok((NodeResponse::Ok, _)) => done += shards.len(),
                Ok((other, _)) => warn!(%addr, "shard deletion refused: {other:?}"),
                Err(e) => warn!(%addr, "shard deletion failed, leaving orphans: {e}"),
            }
        }
        master
            .collecting
            .lock()
            .expect("collecting lock")
            .retain(|b| !ids.contains(b));
        debug!(
            blocks = ids.len(),
            shards = done,
            "collected unreferenced blocks"
        );
    }
}
