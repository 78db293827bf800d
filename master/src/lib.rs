//! `shardfs-master`: the namespace and the file → block → shard map of a ShardFS cluster.
//!
//! Clients ask the master to resolve names, create and remove entries, and to place and commit
//! blocks; storage nodes register and heartbeat. All state lives in RocksDB ([`meta`]), each POSIX
//! operation one atomic batch. The node registry ([`nodes`]) tracks which nodes are alive and
//! chooses k + m distinct nodes for each new block, weighted by free space. Background tasks
//! delete the shards of blocks nothing references any more, after a grace period, and keep
//! every block at full strength ([`repair`]: rebuild lost shards, scrub, drain, rebalance), and
//! turn small writes that went quiet into erasure-coded blocks ([`seal`]). Every request is
//! admitted by its sender's role and its caller's permissions, and every change, admin action
//! and refusal goes into the audit log ([`audit`]).

mod admission;
pub mod audit;
pub mod credentials;
pub mod events;
mod handlers;
pub mod keys;
pub mod merge;
pub mod meta;
pub mod nodes;
pub mod perms;
mod policy;
mod quota;
pub mod repair;
pub mod seal;
pub mod sessions;
pub mod slots;
mod telemetry;
mod web;

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
    pub audit: audit::AuditConfig,
    /// Serve Prometheus metrics over HTTP here (`/metrics`); the bound address goes to
    /// `http.addr` in the data directory.
    pub http: Option<SocketAddr>,
    /// A new cluster encrypts its data (an existing one keeps what it was made with).
    pub encrypt: bool,
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
    audit: audit::AuditLog,
    /// Each node's traffic, as it last reported it.
    node_traffic: Mutex<HashMap<shardfs_common::NodeId, telemetry::NodeTraffic>>,
    /// The data keys (None: the cluster stores content as it is).
    keys: std::sync::RwLock<Option<shardfs_common::crypt::KeyRing>>,
    data_dir: PathBuf,
    /// The web UI's sign-ins, sessions and client core.
    web: web::Web,
}

impl wire::Service for Master {
    type Req = MasterRequest;
    type Resp = MasterResponse;
    type Bulk = Vec<u8>;
    /// A commit's inline pieces (see `proto::inline_bulk`); nothing else carries bulk.
    const MAX_REQUEST_BULK: usize = shardfs_common::proto::INLINE_COMMIT_MAX + 64 * 36;

    fn error_response(e: RemoteError) -> MasterResponse {
        MasterResponse::Err(e)
    }

    fn admit(&self, peer: &wire::Peer, conn: &quinn::Connection) -> Result<(), String> {
        let r = self.auth.admit(peer, conn);
        if let Err(why) = &r {
            let e = RemoteError {
                code: ErrorCode::Permission,
                message: why.clone(),
            };
            self.audit(audit::Pending::connection(why), peer, None, Err(&e));
        }
        r
    }

    async fn handle(
        self: Arc<Self>,
        req: MasterRequest,
        bulk: Vec<u8>,
        peer: wire::Peer,
    ) -> (MasterResponse, Bytes) {
        let start = std::time::Instant::now();
        let pending = audit::describe(&req);
        let op = pending.name;
        let answer = match shardfs_common::proto::inline_bulk::decode(&bulk) {
            Ok(inline) => self.serve(req, pending, peer, inline).await,
            Err(e) => self.refused(e.into(), pending, &peer, None),
        };
        telemetry::served(op, start, &answer.0);
        answer
    }
}

impl Master {
    /// Serve one request: admit it, route it, log it.
    async fn serve(
        self: Arc<Self>,
        req: MasterRequest,
        pending: audit::Pending,
        peer: wire::Peer,
        inline: Vec<(BlockId, Vec<u8>)>,
    ) -> (MasterResponse, Bytes) {
        let claimed = match &req {
            MasterRequest::As { caller, .. } => Some((caller.uid, caller.gid)),
            _ => None,
        };
        let (mut req, caller) = match self.as_caller(req, &peer) {
            Ok(r) => r,
            Err(e) => return self.refused(e, pending, &peer, claimed),
        };
        let ids = Some((caller.uid, caller.gid));
        if let Err(e) = perms::check(&self.meta, &caller, &mut req) {
            return self.refused(e, pending, &peer, ids);
        }
        // Metadata operations are short (a RocksDB read or one batched write, no fsync by
        // default), so they run inline rather than paying for a thread hand-off. A scrub waits
        // on every node.
        if let Err(e) = self.check_sessions(&req, &peer) {
            return self.refused(e, pending, &peer, ids);
        }
        let inline = match self.check_inline(&req, inline) {
            Ok(i) => i,
            Err(e) => return self.refused(e, pending, &peer, ids),
        };
        if let MasterRequest::ReadInline {
            ino,
            index,
            id,
            cap,
        } = req
        {
            return match self.read_inline(&peer, &caller, ino, index, id, cap) {
                Ok(b) => (MasterResponse::Inline, Bytes::from(b)),
                Err(e) => self.refused(e, pending, &peer, ids),
            };
        }
        if let MasterRequest::Commit { slots, pieces, .. } = &req {
            // Inline pieces were checked against their bytes above.
            let described = slots
                .iter()
                .filter_map(|s| s.meta.as_ref().filter(|m| Some(m.id) == s.id))
                .chain(pieces.iter())
                .filter(|m| !m.is_inline());
            if let Err(e) = self.settle_descriptions(described).await {
                let e = Error::fs(
                    ErrorCode::Corrupt,
                    format!("a block of this commit is stored under another description, and this one does not hold: {e}"),
                ).to_remote();
                self.audit(pending, &peer, ids, Err(&e));
                return (MasterResponse::Err(e), Bytes::new());
            }
        }
        let touched = req.touched();
        if let Err(e) = admission::check_times(&req) {
            let e = e.to_remote();
            self.audit(pending, &peer, ids, Err(&e));
            return (MasterResponse::Err(e), Bytes::new());
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
            MasterRequest::Share(action) => {
                let (cred, admin) = match &peer.who {
                    Some(w) => (w.id.clone(), w.role == shardfs_common::pki::Role::Admin),
                    None => (String::new(), false),
                };
                web::share::serve(&self, action, caller.clone(), cred, admin)
                    .await
                    .map(MasterResponse::Shares)
            }
            MasterRequest::WebLogin => {
                let cred = peer.who.as_ref().map(|w| w.id.clone()).unwrap_or_default();
                self.web
                    .login_link(caller.clone(), cred)
                    .map(|(url, expires)| MasterResponse::WebLogin { url, expires })
                    .map_err(MasterError::from)
            }

            // A merge of a big text takes tens of milliseconds of CPU: off the request thread.
            req @ MasterRequest::Merge { .. } => {
                let master = self.clone();
                tokio::task::spawn_blocking(move || master.merge(req))
                    .await
                    .unwrap_or_else(|e| {
                        Err(Error::fs(ErrorCode::Internal, format!("merge failed: {e}")).into())
                    })
            }
            req @ MasterRequest::Commit { .. } => self.on_commit(req, &peer, inline),
            MasterRequest::SetLock { lock, wait_ms } => self
                .sessions
                .set_lock(lock, Duration::from_millis(wait_ms.min(10_000).into()))
                .await
                .map(|()| MasterResponse::Ok),
            req => self.dispatch(req, &peer),
        };
        let resp = match r {
            Ok(r) => {
                if !touched.is_empty() {
                    let mut changes = touched;
                    changes.extend(events::reported(&r));
                    self.events.push(self.sessions.of_peer(peer.addr), changes);
                }
                self.audit_served(pending, &peer, ids, &r);
                r
            }
            Err(e) => {
                if !matches!(&e, MasterError::Fs(fe) if matches!(fe.code(), ErrorCode::NotFound | ErrorCode::Exists | ErrorCode::NotEmpty | ErrorCode::NoData | ErrorCode::Again))
                {
                    debug!(%peer, "request refused: {e}");
                }
                let e = e.to_remote();
                self.audit(pending, &peer, ids, Err(&e));
                MasterResponse::Err(e)
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
}

/// Free space a node needs for one shard of a block of `len` bytes (with its header).
fn shard_space(ec: EcParams, len: u64) -> u64 {
    ec.shard_size(len as usize) as u64 + 4096
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
        metrics::counter!("shardfs_merges_total").increment(1);
        info!(ino, %by, base, current, bytes = merged.len(), doc = rec.doc_len(),
            ms = t.elapsed().as_millis() as u64, "merged concurrent edits of a text file");
        Ok(MasterResponse::Merged {
            text: merged.into_bytes(),
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
    let ring = keys::open(&cfg.data_dir, created, cfg.encrypt)?;
    match (&ring, meta.marked_encrypted()?) {
        (Some(_), false) => meta.mark_encrypted()?,
        (None, true) => {
            return Err(MasterError::Config(format!(
                "this cluster encrypts its data, and its keys ({}) are missing",
                cfg.data_dir.join("data.keys").display()
            )))
        }
        _ => {}
    }
    info!(encrypted = ring.is_some(), "data keys");
    meta.set_ring(ring.clone());
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
        audit: audit::AuditLog::new(cfg.audit.clone())?,
        node_traffic: Mutex::new(HashMap::new()),
        keys: std::sync::RwLock::new(ring),
        data_dir: cfg.data_dir.clone(),
        web: web::Web::default(),
    });
    if let Some(addr) = cfg.http {
        let m = master.clone();
        let file = cfg.data_dir.join("http.addr");
        let http = shardfs_common::metrics::serve(
            addr,
            Some(&file),
            Arc::new(move || m.export_state()),
            web::router(master.clone()),
            shutdown.clone(),
        )
        .await
        .map_err(MasterError::from)?;
        let _ = master.web.http.set(http);
        web::start_core(master.clone(), bound);
        info!(%http, "metrics at http://{http}/metrics, the web UI at http://{http}/");
    }
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
    let audit_prune = background.spawn(audit_loop(master.clone(), shutdown.clone()));
    let seals = background.spawn(seal::seal_loop(
        master.clone(),
        cfg.seal.clone(),
        settle,
        shutdown.clone(),
    ));
    wire::serve(endpoint, master, shutdown).await;
    seals.abort();
    audit_prune.abort();
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

/// Delete audit entries past their retention, now and then.
async fn audit_loop(master: Arc<Master>, mut shutdown: watch::Receiver<bool>) {
    let every = master.audit.prune_every();
    loop {
        if let Err(e) = master.audit.prune(&master.meta) {
            warn!("cannot delete old audit entries: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
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
