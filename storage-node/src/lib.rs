//! `shardfs-node`: a storage node. It keeps shards (pieces of erasure-coded blocks) on local
//! disk and serves them over QUIC.
//!
//! Clients put a shard (its bytes and blake3 hash) and get it back later; the master deletes
//! shards of blocks nothing references any more. The node registers with the master on start and
//! then heartbeats with its capacity, free space and shard count, so the master knows it is alive
//! and how much it can take. Many requests are served at once: each QUIC stream is its own task
//! and disk work runs on the blocking pool. At the master's request a node rebuilds lost shards
//! of a block from its peers ([`rebuild`]), seals slots (a base block and the replicated
//! pieces laid over it become one erasure-coded block, [`seal`]), verifies all its shards
//! (scrub) and deletes leftovers; in the background it re-verifies its shards at a bounded rate
//! and reports corrupt ones.

pub mod journal;
mod peers;
mod rebuild;
mod seal;
pub mod store;
pub mod sums;
mod telemetry;

use bytes::Bytes;
use shardfs_common::cap::{self, CapKey};
use shardfs_common::dial::Dialer;
use shardfs_common::ec::EcParams;
use shardfs_common::error::RemoteError;
use shardfs_common::pki::{Credential, Role};
use shardfs_common::proto::{
    MasterRequest, MasterResponse, NodeRequest, NodeResponse, ALPN_MASTER, ALPN_NODE,
};
use shardfs_common::{net, wire, BlockId, Error, ErrorCode, NodeId};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use store::{ShardBuf, ShardStore};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Full(String),
    #[error(transparent)]
    Common(#[from] Error),
}

impl NodeError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return NodeError::Full(format!("{}: disk full", path.as_ref().display()));
        }
        NodeError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    fn to_remote(&self) -> RemoteError {
        let code = match self {
            NodeError::Io { .. } => ErrorCode::Io,
            NodeError::Corrupt(_) => ErrorCode::Corrupt,
            NodeError::Missing(_) => ErrorCode::NotFound,
            NodeError::Full(_) => ErrorCode::NoSpace,
            NodeError::Common(e) => return e.to_remote(),
        };
        RemoteError {
            code,
            message: self.to_string(),
        }
    }
}

/// Everything a node needs to run.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 reuses the port of the previous run, or picks a free one.
    pub listen: SocketAddr,
    /// Address clients should use (default: the bound address).
    pub advertise: Option<String>,
    pub master: SocketAddr,
    pub heartbeat: Duration,
    /// Limit the space this node offers (default: the disk's free space).
    pub capacity: Option<u64>,
    /// Bytes of the disk never used for shards.
    pub reserve: u64,
    /// A join token, used on first start to get this node's credential.
    pub token: Option<String>,
    /// Background scrub: bytes verified per second (0: no background scrub).
    pub scrub_rate: u64,
    /// Pause between two background scrub passes.
    pub scrub_interval: Duration,
    /// Serve Prometheus metrics over HTTP here (`/metrics`); the bound address goes to
    /// `http.addr` in the data directory.
    pub http: Option<SocketAddr>,
}

struct Node {
    id: NodeId,
    /// Credentials revoked cluster-wide (learnt from heartbeat answers).
    revoked: Arc<RwLock<HashSet<String>>>,
    /// The key that checks clients' capabilities (learnt when registering with the master).
    cap_key: Arc<RwLock<Option<CapKey>>>,
    /// The cluster's code (learnt when registering): how block ids are derived.
    cluster_ec: Arc<RwLock<Option<EcParams>>>,
    /// The cluster's data keys (learnt after registering).
    keys: Arc<RwLock<Option<shardfs_common::crypt::DataKeys>>>,
    store: Arc<ShardStore>,
    /// The address other nodes and the master know this node by.
    advertise: String,
    /// Connections to other nodes, for rebuilding shards.
    peers: Dialer,
    /// Requests served and bytes moved (for metrics and the master's cluster view).
    traffic: Arc<telemetry::Traffic>,
}

impl Node {
    /// Shard reads and writes come from mounts (for blocks the master gave them a capability
    /// for), admins and (rebuilding) other nodes; deletes, scrubs and rebuild orders only from
    /// the master.
    fn authorize(&self, req: &NodeRequest, peer: &wire::Peer) -> Result<(), Error> {
        let Some(who) = &peer.who else {
            return Err(Error::fs(ErrorCode::Permission, "no credential"));
        };
        if self.revoked.read().expect("revoked lock").contains(&who.id) {
            return Err(Error::fs(
                ErrorCode::Permission,
                format!("credential {} was revoked", who.id),
            ));
        }
        let roles: &[Role] = match req {
            NodeRequest::Put { .. } | NodeRequest::Get { .. } => {
                &[Role::Client, Role::Admin, Role::Node]
            }
            NodeRequest::Stat => &[Role::Master, Role::Admin],
            NodeRequest::Delete { .. }
            | NodeRequest::DeleteOrphans { .. }
            | NodeRequest::Scrub { .. }
            | NodeRequest::Rebuild { .. }
            | NodeRequest::Seal(_)
            | NodeRequest::Verify { .. } => &[Role::Master],
        };
        if !roles.contains(&who.role) {
            return Err(Error::fs(
                ErrorCode::Permission,
                format!("{who} may not send this request to a node"),
            ));
        }
        let (block, cap, right) = match req {
            NodeRequest::Put { block, cap, .. } => (block, cap, cap::WRITE),
            NodeRequest::Get { block, cap, .. } => (block, cap, cap::READ),
            _ => return Ok(()),
        };
        if who.role != Role::Client {
            return Ok(());
        }
        let key = self.cap_key.read().expect("cap key lock");
        let Some(key) = key.as_ref() else {
            return Err(Error::fs(
                ErrorCode::Unavailable,
                "this node has not registered with the master yet",
            ));
        };
        if key.allows(cap, right, &who.id, block) {
            Ok(())
        } else {
            Err(Error::fs(
                ErrorCode::Permission,
                format!(
                    "{who} has no capability to {} block {block}",
                    if right == cap::WRITE { "store" } else { "read" }
                ),
            ))
        }
    }
}

impl wire::Service for Node {
    type Req = NodeRequest;
    type Resp = NodeResponse;
    type Bulk = ShardBuf;
    const MAX_REQUEST_BULK: usize = wire::MAX_BULK;

    fn error_response(e: RemoteError) -> NodeResponse {
        NodeResponse::Err(e)
    }

    fn check(&self, req: &NodeRequest, peer: &wire::Peer) -> Result<(), RemoteError> {
        self.authorize(req, peer).map_err(|e| e.to_remote())
    }

    fn admit(&self, peer: &wire::Peer, _conn: &quinn::Connection) -> Result<(), String> {
        match &peer.who {
            Some(w) if self.revoked.read().expect("revoked lock").contains(&w.id) => {
                Err(format!("credential {} was revoked", w.id))
            }
            Some(_) => Ok(()),
            None => Err("no credential".into()),
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: NodeRequest,
        bulk: ShardBuf,
        _peer: wire::Peer,
    ) -> (NodeResponse, Bytes) {
        let start = std::time::Instant::now();
        let op = request_name(&req);
        let written = match &req {
            NodeRequest::Put { .. } => bulk.len() as u64,
            _ => 0,
        };
        let answer = self.clone().serve(req, bulk).await;
        self.traffic
            .served(op, start, written, answer.1.len() as u64);
        answer
    }
}

/// A node request's kind, as metrics count it.
fn request_name(req: &NodeRequest) -> &'static str {
    match req {
        NodeRequest::Put { .. } => "put",
        NodeRequest::Get { range: None, .. } => "get",
        NodeRequest::Get { .. } => "get_range",
        NodeRequest::Delete { .. } => "delete",
        NodeRequest::Stat => "stat",
        NodeRequest::Rebuild { .. } => "rebuild",
        NodeRequest::Scrub { .. } => "scrub",
        NodeRequest::DeleteOrphans { .. } => "delete_orphans",
        NodeRequest::Verify { .. } => "verify",
        NodeRequest::Seal(_) => "seal",
    }
}

impl Node {
    async fn serve(self: Arc<Self>, req: NodeRequest, bulk: ShardBuf) -> (NodeResponse, Bytes) {
        let store = self.store.clone();
        // A range read whose bytes are all in the page cache is answered here, without a
        // blocking thread's hop (two context switches per read).
        let cached = match &req {
            NodeRequest::Get {
                block,
                index,
                range: Some((off, len)),
                ..
            } => store.get_range_cached(block, *index, *off as usize, *len as usize),
            _ => None,
        };
        if let Some((hash, data)) = cached {
            return (NodeResponse::Shard { hash }, data);
        }
        let result = match req {
            NodeRequest::Put {
                block, index, hash, ..
            } => tokio::task::spawn_blocking(move || store.put(&block, index, &hash, bulk))
                .await
                .map(|r| r.map(|()| (NodeResponse::Ok, Bytes::new()))),
            NodeRequest::Get {
                block,
                index,
                range,
                ..
            } => {
                tokio::task::spawn_blocking(move || {
                    let (hash, data) = match range {
                        None => store.get(&block, index)?,
                        Some((off, len)) => {
                            store.get_range(&block, index, off as usize, len as usize)?
                        }
                    };
                    Ok((NodeResponse::Shard { hash }, data))
                })
                .await
            }
            NodeRequest::Delete { shards } => {
                tokio::task::spawn_blocking(move || {
                    for (b, i) in shards {
                        store.delete(&b, i)?;
                    }
                    Ok((NodeResponse::Ok, Bytes::new()))
                })
                .await
            }
            NodeRequest::Rebuild {
                block,
                sources,
                rebuild,
            } => Ok(self
                .clone()
                .rebuild(block, sources, rebuild)
                .await
                .map(|()| (NodeResponse::Ok, Bytes::new()))),
            NodeRequest::Verify { block, sources } => Ok(self
                .clone()
                .verify(block, sources)
                .await
                .map(|()| (NodeResponse::Ok, Bytes::new()))),
            NodeRequest::Seal(job) => Ok(self.clone().seal(job, bulk.data()).await.map(|s| {
                let r = NodeResponse::Sealed {
                    block: s.block,
                    complete: s.complete,
                    error: s.error,
                };
                (r, Bytes::new())
            })),
            NodeRequest::Scrub { after, limit } => {
                tokio::task::spawn_blocking(move || {
                    let p = scrub_page(&store, after, limit.clamp(1, 10_000))?;
                    Ok((
                        NodeResponse::Scrubbed {
                            intact: p.intact,
                            corrupt: p.corrupt,
                            next: p.next,
                        },
                        Bytes::new(),
                    ))
                })
                .await
            }
            NodeRequest::DeleteOrphans {
                shards,
                min_age_secs,
            } => {
                tokio::task::spawn_blocking(move || {
                    let age = Duration::from_secs(min_age_secs);
                    let mut n = 0usize;
                    for (b, i) in shards {
                        if store.delete_if_older(&b, i, age)? {
                            n += 1;
                        }
                    }
                    if n > 0 {
                        info!(shards = n, "deleted orphan shards");
                    }
                    Ok((NodeResponse::Ok, Bytes::new()))
                })
                .await
            }
            NodeRequest::Stat => {
                let u = self.store.usage();
                Ok(Ok((
                    NodeResponse::Stat {
                        id: self.id,
                        capacity: u.capacity,
                        free: u.free,
                        used: u.used,
                        shards: u.shards,
                    },
                    Bytes::new(),
                )))
            }
        };
        match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if !matches!(e, NodeError::Missing(_)) {
                    warn!("request failed: {e}");
                }
                (NodeResponse::Err(e.to_remote()), Bytes::new())
            }
            Err(e) => (
                NodeResponse::Err(RemoteError {
                    code: ErrorCode::Internal,
                    message: format!("worker failed: {e}"),
                }),
                Bytes::new(),
            ),
        }
    }
}

const PEER_TIMEOUT: Duration = Duration::from_secs(60);

fn peer_addr(addr: &str) -> Result<SocketAddr, Error> {
    addr.parse()
        .map_err(|_| Error::invalid(format!("node address {addr:?} is not IP:PORT")))
}

/// One page of a scrub.
struct ScrubPage {
    intact: Vec<(BlockId, u8)>,
    /// Found corrupt, and quarantined.
    corrupt: Vec<(BlockId, u8)>,
    /// Bytes of the intact shards.
    bytes: u64,
    /// Where the next page starts (None: this was the last).
    next: Option<(BlockId, u8)>,
}

/// Verify up to `limit` shards after `after`.
fn scrub_page(
    store: &ShardStore,
    after: Option<(BlockId, u8)>,
    limit: u32,
) -> Result<ScrubPage, NodeError> {
    let list = store.list(after, limit as usize)?;
    let mut page = ScrubPage {
        intact: Vec::new(),
        corrupt: Vec::new(),
        bytes: 0,
        next: if list.len() == limit as usize {
            list.last().copied()
        } else {
            None
        },
    };
    for (b, i) in list {
        match store.get(&b, i) {
            Ok((_, d)) => {
                page.bytes += d.len() as u64;
                page.intact.push((b, i));
            }
            Err(NodeError::Corrupt(_)) => page.corrupt.push((b, i)),
            // Deleted meanwhile.
            Err(NodeError::Missing(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(page)
}

/// Load this node's id from its data directory, creating one on first start.
fn node_id(data_dir: &Path) -> Result<NodeId, NodeError> {
    let p = data_dir.join("node.id");
    match std::fs::read_to_string(&p) {
        Ok(s) => u64::from_str_radix(s.trim(), 16)
            .map(NodeId)
            .map_err(|_| NodeError::Corrupt(format!("{} does not hold a node id", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = NodeId(rand::random::<u64>() | 1);
            std::fs::write(&p, format!("{id}\n")).map_err(|e| NodeError::io(&p, e))?;
            Ok(id)
        }
        Err(e) => Err(NodeError::io(&p, e)),
    }
}

/// What the heartbeat loop needs to know.
struct Heartbeats {
    id: NodeId,
    addr: String,
    master: SocketAddr,
    interval: Duration,
    cred: Arc<Credential>,
    revoked: Arc<RwLock<HashSet<String>>>,
    cap_key: Arc<RwLock<Option<CapKey>>>,
    cluster_ec: Arc<RwLock<Option<EcParams>>>,
    traffic: Arc<telemetry::Traffic>,
    keys: Arc<RwLock<Option<shardfs_common::crypt::DataKeys>>>,
}

/// This node's credential (`node.cred` in its data directory), made on first start by
/// exchanging the join token.
async fn credential(cfg: &NodeConfig, id: NodeId) -> Result<Credential, NodeError> {
    let path = cfg.data_dir.join("node.cred");
    if path.exists() {
        let cred = Credential::load(&path)?;
        if cred.identity.node_id() != Some(id) {
            return Err(NodeError::Common(Error::Config(format!(
                "{} is the credential of {}, not of node {id}",
                path.display(),
                cred.identity
            ))));
        }
        return Ok(cred);
    }
    let Some(token) = &cfg.token else {
        return Err(NodeError::Common(Error::Config(format!(
            "this node has no credential yet ({} is missing): start it once with --token TOKEN \
             (an admin makes one with `shardfs token create MASTER --role node`)",
            path.display()
        ))));
    };
    let cred =
        shardfs_common::join::join(cfg.master, token, Some(id), Duration::from_secs(10)).await?;
    cred.save(&path)?;
    info!(%id, "joined the cluster; credential kept in {}", path.display());
    Ok(cred)
}

/// Run a node until `shutdown` turns true.
///
/// # Errors
/// Fails at start if the data directory cannot be used or the address cannot be bound.
pub async fn run(cfg: NodeConfig, shutdown: watch::Receiver<bool>) -> Result<(), NodeError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| NodeError::io(&cfg.data_dir, e))?;
    let id = node_id(&cfg.data_dir)?;
    let cred = Arc::new(credential(&cfg, id).await?);
    let store = Arc::new(ShardStore::open(&cfg.data_dir, cfg.capacity, cfg.reserve)?);
    let mut listen = cfg.listen;
    let addr_file = cfg.data_dir.join("listen.addr");
    if listen.port() == 0 {
        if let Some(prev) = std::fs::read_to_string(&addr_file)
            .ok()
            .and_then(|s| s.trim().parse::<SocketAddr>().ok())
        {
            if prev.ip() == listen.ip() {
                listen = prev;
            }
        }
    }
    let key = net::reset_key(&cfg.data_dir)?;
    let auth = net::ClientAuth::Required;
    let endpoint = match net::server_endpoint(
        listen,
        ALPN_NODE,
        &key,
        &cred,
        auth.clone(),
        net::NODE_LIMITS,
    ) {
        Ok(e) => e,
        Err(_) if listen != cfg.listen => {
            net::server_endpoint(cfg.listen, ALPN_NODE, &key, &cred, auth, net::NODE_LIMITS)?
        }
        Err(e) => return Err(e.into()),
    };
    let bound = endpoint
        .local_addr()
        .map_err(|e| NodeError::io(&cfg.data_dir, e))?;
    std::fs::write(&addr_file, format!("{bound}\n")).map_err(|e| NodeError::io(&addr_file, e))?;
    let advertise = cfg.advertise.clone().unwrap_or_else(|| bound.to_string());
    info!(%id, %bound, data = %cfg.data_dir.display(), "storage node listening");

    let revoked = Arc::new(RwLock::new(HashSet::new()));
    let traffic = Arc::new(telemetry::Traffic::default());
    let cap_key = Arc::new(RwLock::new(None));
    let cluster_ec = Arc::new(RwLock::new(None));
    let keys = Arc::new(RwLock::new(None));
    let node = Arc::new(Node {
        keys: keys.clone(),
        id,
        revoked: revoked.clone(),
        cap_key: cap_key.clone(),
        cluster_ec: cluster_ec.clone(),
        store: store.clone(),
        advertise: advertise.clone(),
        peers: Dialer::new(ALPN_NODE, &cred, Duration::from_secs(3))?,
        traffic: traffic.clone(),
    });
    if let Some(addr) = cfg.http {
        let (store, file) = (store.clone(), cfg.data_dir.join("http.addr"));
        let refresh = Arc::new(move || telemetry::export_store(&store));
        let bound = shardfs_common::metrics::serve(
            addr,
            Some(&file),
            refresh,
            axum::Router::new(),
            shutdown.clone(),
        )
        .await?;
        info!(%bound, "metrics served at http://{bound}/metrics");
    }
    let hb = tokio::spawn(heartbeat_loop(
        Heartbeats {
            id,
            addr: advertise,
            master: cfg.master,
            interval: cfg.heartbeat,
            cred: cred.clone(),
            revoked,
            cap_key,
            cluster_ec,
            traffic,
            keys,
        },
        store.clone(),
        shutdown.clone(),
    ));
    let checkpoints = tokio::spawn(checkpoint_loop(store.clone()));
    let scrub = tokio::spawn(scrub_loop(
        id,
        cred,
        store,
        cfg.master,
        cfg.scrub_rate,
        cfg.scrub_interval,
        shutdown.clone(),
    ));
    wire::serve(endpoint, node, shutdown).await;
    hb.abort();
    scrub.abort();
    checkpoints.abort();
    info!(%id, "storage node stopped");
    Ok(())
}

/// Checkpoint the store's journal whenever one is due (see [`store::ShardStore::checkpoint`]).
async fn checkpoint_loop(store: Arc<ShardStore>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !store.checkpoint_due() {
            continue;
        }
        let st = store.clone();
        match tokio::task::spawn_blocking(move || st.checkpoint()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("journal checkpoint failed (retried): {e}"),
            Err(e) => warn!("journal checkpoint failed: {e}"),
        }
    }
}

/// Verify every shard in the background at about `rate` bytes per second, pass after pass
/// (`interval` apart); corrupt shards are quarantined and reported to the master for repair.
async fn scrub_loop(
    id: NodeId,
    cred: Arc<Credential>,
    store: Arc<ShardStore>,
    master: SocketAddr,
    rate: u64,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if rate == 0 {
        return;
    }
    let dialer = match Dialer::new(ALPN_MASTER, &cred, Duration::from_secs(3)) {
        Ok(d) => d,
        Err(e) => {
            warn!("background scrub disabled: {e}");
            return;
        }
    };
    let mut unreported: Vec<(BlockId, u8)> = Vec::new();
    loop {
        let started = std::time::Instant::now();
        let (mut after, mut bytes, mut checked, mut corrupt) = (None, 0u64, 0u64, 0u64);
        loop {
            let st = store.clone();
            let page = tokio::task::spawn_blocking(move || scrub_page(&st, after, 16)).await;
            let page = match page {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    warn!("background scrub: {e}");
                    break;
                }
                Err(e) => {
                    warn!("background scrub worker failed: {e}");
                    break;
                }
            };
            checked += (page.intact.len() + page.corrupt.len()) as u64;
            corrupt += page.corrupt.len() as u64;
            bytes += page.bytes;
            unreported.extend(&page.corrupt);
            if !unreported.is_empty() {
                let req = MasterRequest::ShardsLost {
                    node: id,
                    shards: unreported.clone(),
                };
                match dialer
                    .call::<_, MasterResponse>(
                        master,
                        &req,
                        Bytes::new(),
                        0,
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok((MasterResponse::Ok, _)) => unreported.clear(),
                    Ok((other, _)) => warn!("master refused a scrub report: {other:?}"),
                    Err(e) => warn!("cannot report corrupt shards yet: {e}"),
                }
            }
            let Some(next) = page.next else { break };
            after = Some(next);
            let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
            let pause = due.saturating_sub(started.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
        info!(
            checked,
            corrupt,
            secs = started.elapsed().as_secs(),
            "background scrub pass done"
        );
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Register with the master, then report capacity every `interval`; reconnect whenever the
/// master goes away.
/// Ask the master for the data keys and hold them (the first time, or updated).
async fn learn_keys(c: &quinn::Connection, keys: &RwLock<Option<shardfs_common::crypt::DataKeys>>) {
    let req = MasterRequest::DataKeys;
    match wire::request::<_, MasterResponse>(c, &req, Bytes::new(), 0).await {
        Ok((MasterResponse::DataKeys(ring), _)) => {
            let mut held = keys.write().expect("keys lock");
            match (held.as_ref(), ring) {
                (Some(k), Some(r)) if k.encrypted() => k.update(r),
                (Some(_), _) => {}
                (None, ring) => {
                    let k = shardfs_common::crypt::DataKeys::new(ring);
                    info!(encrypted = k.encrypted(), "data keys learnt");
                    *held = Some(k);
                }
            }
        }
        Ok((other, _)) => warn!("unexpected answer to a data keys request: {other:?}"),
        Err(e) => warn!("cannot learn the data keys: {e}"),
    }
}

async fn heartbeat_loop(
    hb: Heartbeats,
    store: Arc<ShardStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Heartbeats {
        id,
        addr,
        master,
        interval,
        cred,
        revoked,
        cap_key,
        cluster_ec,
        traffic,
        keys,
    } = hb;
    let endpoint = match net::client_endpoint(master.is_ipv6()) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("cannot create QUIC client for heartbeats: {e}");
            return;
        }
    };
    let config = match net::client_config(ALPN_MASTER, &cred) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let mut registered = false;
    let mut keys_at = std::time::Instant::now();
    let mut conn: Option<quinn::Connection> = None;
    let mut warned = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if conn.as_ref().is_none_or(|c| c.close_reason().is_some()) {
            registered = false;
            match net::connect(
                &endpoint,
                &config,
                master,
                Duration::from_secs(3),
                Role::Master,
            )
            .await
            {
                Ok(c) => {
                    conn = Some(c);
                    warned = false;
                }
                Err(e) => {
                    if !warned {
                        warn!("master unreachable, retrying: {e}");
                        warned = true;
                    }
                    conn = None;
                }
            }
        }
        if let Some(c) = &conn {
            let u = store.usage();
            let req = if registered {
                MasterRequest::Heartbeat {
                    id,
                    capacity: u.capacity,
                    free: u.free,
                    used: u.used,
                    shards: u.shards,
                }
            } else {
                MasterRequest::Register {
                    id,
                    addr: addr.clone(),
                    capacity: u.capacity,
                    free: u.free,
                    used: u.used,
                    shards: u.shards,
                }
            };
            // A heartbeat that gets no answer soon is given up on and the next one sent on
            // time (each is its own stream); a dead connection closes by its idle timeout.
            let res = tokio::time::timeout(
                (interval * 3).clamp(Duration::from_millis(500), Duration::from_secs(2)),
                wire::request::<_, MasterResponse>(c, &req, Bytes::new(), 0),
            )
            .await;
            match res {
                Ok(Ok((MasterResponse::Registered { cap_key: k, ec }, _))) => {
                    *cap_key.write().expect("cap key lock") = Some(CapKey::from_bytes(k));
                    *cluster_ec.write().expect("cluster code lock") = Some(ec);
                    info!(%id, %master, "registered with master");
                    registered = true;
                    // The data keys, to seal pieces into blocks and verify descriptions.
                    learn_keys(c, &keys).await;
                    keys_at = std::time::Instant::now();
                }
                Ok(Ok((MasterResponse::Revoked(ids), _))) => {
                    {
                        let mut r = revoked.write().expect("revoked lock");
                        if r.len() != ids.len() {
                            info!(revoked = ids.len(), "revoked credentials updated");
                            *r = ids.into_iter().collect();
                        }
                    }
                    // The data keys again now and then (a rotation, a dropped epoch, or a
                    // first fetch that failed).
                    if keys_at.elapsed() > Duration::from_secs(2) {
                        keys_at = std::time::Instant::now();
                        learn_keys(c, &keys).await;
                    }
                    // The traffic since start, for the cluster's metrics; its answer is not
                    // waited for beyond a moment (a master that does not know it says so).
                    let report = traffic.report(id);
                    let _ = tokio::time::timeout(
                        Duration::from_millis(500),
                        wire::request::<_, MasterResponse>(c, &report, Bytes::new(), 0),
                    )
                    .await;
                }
                Ok(Ok((MasterResponse::Err(e), _))) => {
                    warn!("master refused heartbeat: {}", e.message);
                    registered = false;
                }
                Ok(Ok(_)) => warn!("unexpected answer to heartbeat"),
                Ok(Err(e)) => {
                    warn!("heartbeat failed: {e}");
                    conn = None;
                }
                Err(_) => {
                    warn!("heartbeat got no answer in time");
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
