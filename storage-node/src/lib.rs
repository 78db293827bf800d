//! `shardfs-node`: a storage node. It keeps shards (pieces of erasure-coded blocks) on local
//! disk and serves them over QUIC.
//!
//! Clients put a shard (its bytes and blake3 hash) and get it back later; the master deletes
//! shards of blocks nothing references any more. The node registers with the master on start and
//! then heartbeats with its capacity, free space and shard count, so the master knows it is alive
//! and how much it can take. Many requests are served at once: each QUIC stream is its own task
//! and disk work runs on the blocking pool.

pub mod store;

use bytes::Bytes;
use shardfs_common::error::RemoteError;
use shardfs_common::proto::{
    MasterRequest, MasterResponse, NodeRequest, NodeResponse, ALPN_MASTER, ALPN_NODE,
};
use shardfs_common::{net, wire, Error, ErrorCode, NodeId};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
}

struct Node {
    id: NodeId,
    store: Arc<ShardStore>,
}

impl wire::Service for Node {
    type Req = NodeRequest;
    type Resp = NodeResponse;
    type Bulk = ShardBuf;
    const MAX_REQUEST_BULK: usize = wire::MAX_BULK;

    fn error_response(e: RemoteError) -> NodeResponse {
        NodeResponse::Err(e)
    }

    async fn handle(
        self: Arc<Self>,
        req: NodeRequest,
        bulk: ShardBuf,
        _peer: SocketAddr,
    ) -> (NodeResponse, Bytes) {
        let store = self.store.clone();
        let result = match req {
            NodeRequest::Put { block, index, hash } => {
                tokio::task::spawn_blocking(move || store.put(&block, index, &hash, bulk))
                    .await
                    .map(|r| r.map(|()| (NodeResponse::Ok, Bytes::new())))
            }
            NodeRequest::Get {
                block,
                index,
                range,
            } => {
                tokio::task::spawn_blocking(move || {
                    let (hash, data) = store.get(&block, index)?;
                    let data = match range {
                        None => data,
                        Some((off, len)) => {
                            let (off, len) = (off as usize, len as usize);
                            if off.checked_add(len).is_none_or(|end| end > data.len()) {
                                return Err(NodeError::Common(shardfs_common::Error::invalid(
                                    format!(
                                        "range {off}+{len} outside a shard of {} bytes",
                                        data.len()
                                    ),
                                )));
                            }
                            data.slice(off..off + len)
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

/// Run a node until `shutdown` turns true.
///
/// # Errors
/// Fails at start if the data directory cannot be used or the address cannot be bound.
pub async fn run(cfg: NodeConfig, shutdown: watch::Receiver<bool>) -> Result<(), NodeError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| NodeError::io(&cfg.data_dir, e))?;
    let id = node_id(&cfg.data_dir)?;
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
    let endpoint = match net::server_endpoint(listen, ALPN_NODE, &key) {
        Ok(e) => e,
        Err(_) if listen != cfg.listen => net::server_endpoint(cfg.listen, ALPN_NODE, &key)?,
        Err(e) => return Err(e.into()),
    };
    let bound = endpoint
        .local_addr()
        .map_err(|e| NodeError::io(&cfg.data_dir, e))?;
    std::fs::write(&addr_file, format!("{bound}\n")).map_err(|e| NodeError::io(&addr_file, e))?;
    let advertise = cfg.advertise.clone().unwrap_or_else(|| bound.to_string());
    info!(%id, %bound, data = %cfg.data_dir.display(), "storage node listening");

    let node = Arc::new(Node {
        id,
        store: store.clone(),
    });
    let hb = tokio::spawn(heartbeat_loop(
        id,
        advertise,
        cfg.master,
        cfg.heartbeat,
        store,
        shutdown.clone(),
    ));
    wire::serve(endpoint, node, shutdown).await;
    hb.abort();
    info!(%id, "storage node stopped");
    Ok(())
}

/// Register with the master, then report capacity every `interval`; reconnect whenever the
/// master goes away.
async fn heartbeat_loop(
    id: NodeId,
    addr: String,
    master: SocketAddr,
    interval: Duration,
    store: Arc<ShardStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let endpoint = match net::client_endpoint(master.is_ipv6()) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("cannot create QUIC client for heartbeats: {e}");
            return;
        }
    };
    let config = match net::client_config(ALPN_MASTER) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let mut registered = false;
    let mut conn: Option<quinn::Connection> = None;
    let mut warned = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if conn.as_ref().is_none_or(|c| c.close_reason().is_some()) {
            registered = false;
            match net::connect(&endpoint, &config, master, Duration::from_secs(3)).await {
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
            let res = tokio::time::timeout(
                Duration::from_secs(5),
                wire::request::<_, MasterResponse>(c, &req, Bytes::new(), 0),
            )
            .await;
            match res {
                Ok(Ok((MasterResponse::Ok, _))) => {
                    if !registered {
                        info!(%id, %master, "registered with master");
                    }
                    registered = true;
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
                    warn!("heartbeat timed out");
                    conn = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
