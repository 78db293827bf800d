//! What the master exports at `/metrics`: each request's count and latency by kind (as it is
//! served), and the cluster's state as gauges set just before each scrape — nodes by state,
//! durability and repair, sealing, sessions, RocksDB, and the traffic every node reports.

use crate::Master;
use shardfs_common::proto::{MasterResponse, NodeState};
use std::time::Instant;

/// A node's traffic since it started, as it reports it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NodeTraffic {
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub requests: u64,
}

/// Count a served request of kind `op` that started at `start`.
pub(crate) fn served(op: &'static str, start: Instant, answer: &MasterResponse) {
    shardfs_common::metrics::timed(
        "shardfs_master_requests_total",
        "shardfs_master_request_duration_seconds",
        op,
        start,
    );
    if let MasterResponse::Err(e) = answer {
        metrics::counter!("shardfs_master_request_errors_total", "op" => op, "code" => format!("{:?}", e.code))
            .increment(1);
    }
}

impl Master {
    /// Set the gauges of the cluster's state (called before each scrape).
    pub(crate) fn export_state(&self) {
        use metrics::gauge;
        let nodes = self.nodes.list();
        for state in [
            NodeState::Up,
            NodeState::Suspect,
            NodeState::Down,
            NodeState::Draining,
        ] {
            let n = nodes.iter().filter(|n| n.state == state).count();
            gauge!("shardfs_nodes", "state" => state.to_string()).set(n as f64);
        }
        let (capacity, free) = self.nodes.capacity();
        gauge!("shardfs_cluster_capacity_bytes").set(capacity as f64);
        gauge!("shardfs_cluster_free_bytes").set(free as f64);
        let h = self.repair.health();
        gauge!("shardfs_blocks").set(h.blocks as f64);
        gauge!("shardfs_blocks_degraded").set(h.degraded as f64);
        gauge!("shardfs_blocks_unrecoverable").set(h.unrecoverable as f64);
        gauge!("shardfs_repair_missing_shards").set(h.missing_shards as f64);
        gauge!("shardfs_repair_draining_shards").set(h.draining_shards as f64);
        metrics::counter!("shardfs_repair_shards_total").absolute(h.repaired_shards);
        metrics::counter!("shardfs_repair_bytes_total").absolute(h.repaired_bytes);
        metrics::counter!("shardfs_repair_failures_total").absolute(h.repair_failures);
        metrics::counter!("shardfs_rebalance_shards_total").absolute(h.rebalanced_shards);
        let s = *self.seal_stats.lock().expect("seal stats lock");
        metrics::counter!("shardfs_seal_slots_total").absolute(s.slots);
        metrics::counter!("shardfs_seal_bytes_total").absolute(s.bytes);
        metrics::counter!("shardfs_seal_failures_total").absolute(s.failed);
        if let Ok(n) = self.meta.unsealed_files() {
            gauge!("shardfs_seal_pending_files").set(n as f64);
        }
        gauge!("shardfs_sessions").set(self.sessions.list().len() as f64);
        for (name, v) in self.meta.db_stats() {
            gauge!(name).set(v as f64);
        }
        let traffic = self.node_traffic.lock().expect("node traffic lock").clone();
        let sum = traffic
            .values()
            .fold(NodeTraffic::default(), |a, t| NodeTraffic {
                read_bytes: a.read_bytes + t.read_bytes,
                written_bytes: a.written_bytes + t.written_bytes,
                requests: a.requests + t.requests,
            });
        // Sums over the nodes that reported; a node that restarts starts from zero again.
        gauge!("shardfs_cluster_read_bytes").set(sum.read_bytes as f64);
        gauge!("shardfs_cluster_written_bytes").set(sum.written_bytes as f64);
        gauge!("shardfs_cluster_node_requests").set(sum.requests as f64);
    }
}
