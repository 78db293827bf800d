//! The registry of storage nodes: who exists, who is alive, how much space each has, and where
//! a new block's shards go.

use crate::meta::{Meta, NodeRecord};
use crate::MasterError;
use shardfs_common::proto::{NodeInfo, NodeState};
use shardfs_common::{Error, NodeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Entry {
    rec: NodeRecord,
    last_seen: Option<Instant>,
    /// Being drained: alive, but given no new shards.
    draining: bool,
    /// The state last logged (a change is logged once).
    logged: NodeState,
    /// When a client last reported that it could not reach this node. Until the node's next
    /// heartbeat (or registration) it is placed on only if there are not enough others.
    reported: Option<Instant>,
}

impl Entry {
    fn new(rec: NodeRecord, last_seen: Option<Instant>, draining: bool) -> Self {
        Entry {
            rec,
            last_seen,
            draining,
            logged: NodeState::Up,
            reported: None,
        }
    }
}

/// A node with less free space than this is reported as full.
const FULL_BELOW: u64 = 8 << 20;

pub struct Registry {
    nodes: Mutex<HashMap<NodeId, Entry>>,
    timeout: Duration,
    /// When this master started: a node not heard from since counts as silent from then.
    started: Instant,
}

impl Registry {
    pub fn load(meta: &Meta, timeout: Duration) -> Result<Self, MasterError> {
        let draining = meta.draining()?;
        let nodes = meta
            .nodes()?
            .into_iter()
            .map(|(id, rec)| (id, Entry::new(rec, None, draining.contains(&id))))
            .collect();
        Ok(Registry {
            nodes: Mutex::new(nodes),
            timeout,
            started: Instant::now(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        meta: &Meta,
        id: NodeId,
        addr: String,
        capacity: u64,
        free: u64,
        used: u64,
        shards: u64,
    ) -> Result<(), MasterError> {
        addr.parse::<SocketAddr>()
            .map_err(|_| Error::invalid(format!("node address {addr:?} is not IP:PORT")))?;
        let rec = NodeRecord {
            addr,
            capacity,
            free,
            used,
            shards,
        };
        meta.put_node(id, &rec)?;
        let mut nodes = self.nodes.lock().expect("registry lock");
        tracing::info!(%id, addr = %rec.addr, "node registered");
        let draining = nodes.get(&id).is_some_and(|e| e.draining);
        nodes.insert(id, Entry::new(rec, Some(Instant::now()), draining));
        Ok(())
    }

    /// Record a heartbeat; false if the node is unknown (it must register).
    pub fn heartbeat(&self, id: NodeId, capacity: u64, free: u64, used: u64, shards: u64) -> bool {
        let mut nodes = self.nodes.lock().expect("registry lock");
        match nodes.get_mut(&id) {
            Some(e) if e.last_seen.is_some() => {
                e.rec.capacity = capacity;
                e.rec.free = free;
                e.rec.used = used;
                e.rec.shards = shards;
                e.last_seen = Some(Instant::now());
                true
            }
            _ => false,
        }
    }

    /// Clients could not reach these nodes just now (`peer` said so): until a node is heard
    /// from again, placements use it only if there are not enough others.
    pub fn reported(&self, ids: &[NodeId], peer: SocketAddr) {
        if ids.is_empty() {
            return;
        }
        let mut nodes = self.nodes.lock().expect("registry lock");
        let now = Instant::now();
        for id in ids {
            if let Some(e) = nodes.get_mut(id) {
                if !Self::reported_silent(e) {
                    tracing::info!(node = %id, %peer, "a client reports the node unreachable");
                }
                e.reported = Some(now);
            }
        }
    }

    /// Reported unreachable by a client and not heard from since.
    fn reported_silent(e: &Entry) -> bool {
        match (e.reported, e.last_seen) {
            (Some(r), Some(seen)) => seen <= r,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Up, but not a first choice for new shards: late heartbeats, or reported unreachable.
    fn shaky(&self, e: &Entry) -> bool {
        Self::reported_silent(e) || self.silent(e) >= self.suspect_after()
    }

    fn is_up(&self, e: &Entry) -> bool {
        e.last_seen.is_some_and(|t| t.elapsed() < self.timeout)
    }

    /// Silence after which a node is suspect (late, not yet down).
    fn suspect_after(&self) -> Duration {
        (self.timeout / 3).max(Duration::from_millis(1500))
    }

    /// How long the node has been silent (since the master started, if never heard from).
    fn silent(&self, e: &Entry) -> Duration {
        e.last_seen.unwrap_or(self.started).elapsed()
    }

    /// State of a node and why, in words.
    fn state(&self, e: &Entry) -> (NodeState, String) {
        let silent = self.silent(e);
        if silent >= self.timeout {
            let why = match e.last_seen {
                Some(_) => format!("no heartbeat for {:.1} s", silent.as_secs_f64()),
                None => format!(
                    "not heard from since the master started {:.0} s ago",
                    silent.as_secs_f64()
                ),
            };
            (NodeState::Down, why)
        } else if silent >= self.suspect_after() {
            (
                NodeState::Suspect,
                format!("heartbeat late by {:.1} s", silent.as_secs_f64()),
            )
        } else if Self::reported_silent(e) {
            (
                NodeState::Suspect,
                "a client could not reach it; no heartbeat since".into(),
            )
        } else if e.rec.free < FULL_BELOW {
            (
                NodeState::Up,
                format!(
                    "full ({} KiB free): takes no shards larger than that",
                    e.rec.free >> 10
                ),
            )
        } else {
            (NodeState::Up, String::new())
        }
    }

    /// Log every node whose state (up, suspect, down) changed since the last call.
    pub fn log_changes(&self) {
        let mut nodes = self.nodes.lock().expect("registry lock");
        for (id, e) in nodes.iter_mut() {
            let (state, why) = self.state(e);
            if state == e.logged {
                continue;
            }
            match state {
                NodeState::Down => {
                    tracing::warn!(node = %id, addr = %e.rec.addr, "node down: {why}")
                }
                NodeState::Suspect => {
                    tracing::info!(node = %id, addr = %e.rec.addr, "node suspect: {why}")
                }
                _ => tracing::info!(node = %id, addr = %e.rec.addr, "node up again"),
            }
            e.logged = state;
        }
    }

    /// Start or stop draining a node (kept in the metadata store across restarts).
    pub fn set_draining(&self, meta: &Meta, id: NodeId, on: bool) -> Result<(), MasterError> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        let Some(e) = nodes.get_mut(&id) else {
            return Err(Error::not_found(format!("no node {id} in this cluster")).into());
        };
        meta.set_draining(id, on)?;
        e.draining = on;
        Ok(())
    }

    /// Whether a live draining node still reports shards.
    pub fn draining_with_shards(&self) -> bool {
        !self.draining_holding().is_empty()
    }

    /// Live draining nodes that still report shards, with their addresses.
    pub fn draining_holding(&self) -> Vec<(NodeId, SocketAddr)> {
        let nodes = self.nodes.lock().expect("registry lock");
        nodes
            .iter()
            .filter(|(_, e)| e.draining && self.is_up(e) && e.rec.shards > 0)
            .filter_map(|(id, e)| e.rec.addr.parse().ok().map(|a| (*id, a)))
            .collect()
    }

    pub fn draining(&self) -> std::collections::HashSet<NodeId> {
        let nodes = self.nodes.lock().expect("registry lock");
        nodes
            .iter()
            .filter(|(_, e)| e.draining)
            .map(|(id, _)| *id)
            .collect()
    }

    /// (node, bytes of shards it holds, capacity) of every live node that is not draining.
    pub fn usage(&self) -> Vec<(NodeId, u64, u64)> {
        let nodes = self.nodes.lock().expect("registry lock");
        nodes
            .iter()
            .filter(|(_, e)| self.is_up(e) && !e.draining)
            .map(|(id, e)| (*id, e.rec.used, e.rec.capacity))
            .collect()
    }

    /// Whether some node is late or down but not yet past the repair grace: membership is in
    /// flux, and moving data around now would only be undone.
    pub fn unsettled(&self, grace: Duration) -> bool {
        let nodes = self.nodes.lock().expect("registry lock");
        nodes.values().any(|e| {
            let s = self.silent(e);
            s >= self.suspect_after() && s < self.timeout + grace
        })
    }

    /// Nodes down for longer than `grace` past the node timeout: their shards need rebuilding.
    pub fn dead(&self, grace: Duration) -> std::collections::HashSet<NodeId> {
        let nodes = self.nodes.lock().expect("registry lock");
        nodes
            .iter()
            .filter(|(_, e)| self.silent(e) >= self.timeout + grace)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Addresses of the nodes that answer heartbeats (up or suspect).
    pub fn live(&self) -> HashMap<NodeId, SocketAddr> {
        let nodes = self.nodes.lock().expect("registry lock");
        nodes
            .iter()
            .filter(|(_, e)| self.is_up(e))
            .filter_map(|(id, e)| e.rec.addr.parse().ok().map(|a| (*id, a)))
            .collect()
    }

    /// Choose `n` distinct live nodes with at least `need` bytes free, weighted by free space,
    /// never one in `exclude`. Nodes in `avoid` (a client could not write to them), nodes
    /// reported unreachable and not heard from since, and nodes whose heartbeats are late are
    /// used only if there are not enough others.
    pub fn place(
        &self,
        n: usize,
        need: u64,
        exclude: &[NodeId],
        avoid: &[NodeId],
    ) -> Result<Vec<NodeId>, MasterError> {
        let nodes = self.nodes.lock().expect("registry lock");
        let usable: Vec<(NodeId, u64, bool)> = nodes
            .iter()
            .filter(|(id, e)| {
                self.is_up(e) && e.rec.free >= need && !e.draining && !exclude.contains(id)
            })
            .map(|(id, e)| (*id, e.rec.free, self.shaky(e)))
            .collect();
        if usable.len() < n {
            let live = nodes.values().filter(|e| self.is_up(e)).count();
            return Err(Error::Unavailable(format!(
                "cannot place a block on {n} distinct nodes: {} usable of {live} live nodes",
                usable.len()
            ))
            .into());
        }
        // Weighted sampling without replacement (Efraimidis–Spirakis): key = u^(1/w).
        let mut keyed: Vec<(bool, f64, NodeId)> = usable
            .into_iter()
            .map(|(id, free, shaky)| {
                let w = (free as f64).max(1.0);
                let u: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
                (shaky || avoid.contains(&id), u.ln() / w, id)
            })
            .collect();
        // Nodes not to avoid first, then by key.
        keyed.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal))
        });
        Ok(keyed.into_iter().take(n).map(|(_, _, id)| id).collect())
    }

    /// Raw capacity and free space of the live nodes.
    pub fn capacity(&self) -> (u64, u64) {
        let nodes = self.nodes.lock().expect("registry lock");
        nodes
            .values()
            .filter(|e| self.is_up(e))
            .fold((0, 0), |(c, f), e| (c + e.rec.capacity, f + e.rec.free))
    }

    pub fn addresses(&self) -> HashMap<NodeId, SocketAddr> {
        let nodes = self.nodes.lock().expect("registry lock");
        nodes
            .iter()
            .filter_map(|(id, e)| e.rec.addr.parse().ok().map(|a| (*id, a)))
            .collect()
    }

    pub fn list(&self) -> Vec<NodeInfo> {
        let nodes = self.nodes.lock().expect("registry lock");
        let mut out: Vec<NodeInfo> = nodes
            .iter()
            .map(|(id, e)| {
                let (mut state, mut reason) = self.state(e);
                if e.draining && state != NodeState::Down {
                    state = NodeState::Draining;
                    reason = format!("{} shards left to move", e.rec.shards);
                }
                NodeInfo {
                    id: *id,
                    addr: e.rec.addr.clone(),
                    state,
                    reason,
                    capacity: e.rec.capacity,
                    free: e.rec.free,
                    used: e.rec.used,
                    shards: e.rec.shards,
                    last_seen_ms: e.last_seen.map(|t| t.elapsed().as_millis() as u64),
                }
            })
            .collect();
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        out
    }
}
