//! What a node exports at `/metrics` and reports to the master: requests by kind with their
//! latency, bytes received and sent, and (set before each scrape) what its store holds.

use crate::store::ShardStore;
use shardfs_common::proto::MasterRequest;
use shardfs_common::NodeId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Requests served and shard bytes moved since the node started.
#[derive(Default)]
pub(crate) struct Traffic {
    requests: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

impl Traffic {
    /// Count a served request of kind `op` that started at `start`: `written` shard bytes
    /// received, `read` sent back.
    pub(crate) fn served(&self, op: &'static str, start: Instant, written: u64, read: u64) {
        shardfs_common::metrics::timed(
            "shardfs_node_requests_total",
            "shardfs_node_request_duration_seconds",
            op,
            start,
        );
        self.requests.fetch_add(1, Ordering::Relaxed);
        if written > 0 {
            self.written_bytes.fetch_add(written, Ordering::Relaxed);
            metrics::counter!("shardfs_node_written_bytes_total").increment(written);
        }
        if read > 0 {
            self.read_bytes.fetch_add(read, Ordering::Relaxed);
            metrics::counter!("shardfs_node_read_bytes_total").increment(read);
        }
    }

    /// The report of this traffic to the master.
    pub(crate) fn report(&self, id: NodeId) -> MasterRequest {
        MasterRequest::NodeStats {
            id,
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

/// Set the gauges of what the store holds (called before each scrape).
pub(crate) fn export_store(store: &ShardStore) {
    let u = store.usage();
    metrics::gauge!("shardfs_node_capacity_bytes").set(u.capacity as f64);
    metrics::gauge!("shardfs_node_free_bytes").set(u.free as f64);
    metrics::gauge!("shardfs_node_stored_bytes").set(u.used as f64);
    metrics::gauge!("shardfs_node_shards").set(u.shards as f64);
}
