//! How each storage node is doing, as this mount sees it: how long its shard transfers
//! normally take, and a circuit breaker that opens at its first failure or stall.
//!
//! The transfer times give every upload and range read an adaptive deadline (a few times
//! what that node usually needs, never less than a floor), so a dead or frozen node costs
//! about a second instead of a fixed long timeout. An open breaker makes placements avoid
//! the node (the mount names it to the master) and reads try it last; it closes again after
//! a short back-off that doubles with each failure in a row, and at once on a success.

use shardfs_common::NodeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{info, warn};

/// No transfer deadline is shorter than this.
pub const STALL_FLOOR: Duration = Duration::from_millis(750);
/// A transfer may take this many times what the node usually needs before it is stalled.
const STALL_FACTOR: f64 = 4.0;
/// What a MiB is assumed to take on a node not measured yet.
const DEFAULT_SECS_PER_MIB: f64 = 0.05;
/// Breaker back-off after the first failure; doubled per failure in a row, up to the cap.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(8);
/// Weight of a new sample in the smoothed transfer time.
const EWMA_WEIGHT: f64 = 0.2;

#[derive(Default)]
struct Entry {
    /// Smoothed seconds per MiB of this node's recent transfers.
    secs_per_mib: Option<f64>,
    /// The breaker is open until then.
    failing_until: Option<Instant>,
    /// Failures in a row.
    fails: u32,
}

pub struct Health {
    nodes: Mutex<HashMap<NodeId, Entry>>,
    /// Smoothed seconds per MiB over all nodes (for a node with no measurement yet).
    overall: Mutex<Option<f64>>,
    /// Woken whenever a breaker opens, so transfers waiting on that node can move on.
    tripped: Notify,
    /// No deadline is longer than this.
    ceiling: Duration,
}

fn mib(bytes: usize) -> f64 {
    (bytes.max(64 << 10)) as f64 / (1 << 20) as f64
}

fn smooth(old: Option<f64>, sample: f64) -> f64 {
    match old {
        Some(o) => o + EWMA_WEIGHT * (sample - o),
        None => sample,
    }
}

impl Health {
    pub fn new(ceiling: Duration) -> Self {
        Health {
            nodes: Mutex::new(HashMap::new()),
            overall: Mutex::new(None),
            tripped: Notify::new(),
            ceiling: ceiling.max(STALL_FLOOR),
        }
    }

    /// A transfer of `bytes` to or from `node` finished in `took`: the node is healthy.
    pub fn succeeded(&self, node: NodeId, bytes: usize, took: Duration) {
        let sample = took.as_secs_f64() / mib(bytes);
        let recovered = {
            let mut nodes = self.nodes.lock().expect("health lock");
            let e = nodes.entry(node).or_default();
            e.secs_per_mib = Some(smooth(e.secs_per_mib, sample));
            let was = e.fails > 0;
            e.fails = 0;
            e.failing_until = None;
            was
        };
        let mut o = self.overall.lock().expect("health lock");
        *o = Some(smooth(*o, sample));
        if recovered {
            info!(%node, "storage node answers again");
        }
    }

    /// A transfer with `node` failed or stalled: open its breaker.
    pub fn failed(&self, node: NodeId, why: &str) {
        let backoff = {
            let mut nodes = self.nodes.lock().expect("health lock");
            let e = nodes.entry(node).or_default();
            let now = Instant::now();
            if e.failing_until.is_some_and(|t| t > now) {
                // Already open: other transfers that were under way fail too; that is one
                // failure, not several.
                return;
            }
            e.fails = e.fails.saturating_add(1);
            let backoff = BACKOFF_BASE
                .saturating_mul(1 << (e.fails - 1).min(5))
                .min(BACKOFF_CAP);
            e.failing_until = Some(now + backoff);
            backoff
        };
        warn!(%node, "storage node failing ({why}): avoided for {backoff:?}");
        self.tripped.notify_waiters();
    }

    /// The master says the node is down: avoid it for a while (no back-off growth).
    pub fn reported_down(&self, node: NodeId, for_: Duration) {
        let mut nodes = self.nodes.lock().expect("health lock");
        let e = nodes.entry(node).or_default();
        let until = Instant::now() + for_;
        if e.failing_until.is_none_or(|t| t < until) {
            e.failing_until = Some(until);
        }
    }

    /// Whether the node's breaker is open.
    pub fn is_failing(&self, node: NodeId) -> bool {
        let nodes = self.nodes.lock().expect("health lock");
        nodes
            .get(&node)
            .and_then(|e| e.failing_until)
            .is_some_and(|t| t > Instant::now())
    }

    /// Every node whose breaker is open.
    pub fn failing(&self) -> Vec<NodeId> {
        let now = Instant::now();
        let nodes = self.nodes.lock().expect("health lock");
        nodes
            .iter()
            .filter(|(_, e)| e.failing_until.is_some_and(|t| t > now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// How long a transfer of `bytes` with `node` may take before it counts as stalled.
    pub fn deadline(&self, node: NodeId, bytes: usize) -> Duration {
        let per_mib = {
            let nodes = self.nodes.lock().expect("health lock");
            nodes.get(&node).and_then(|e| e.secs_per_mib)
        }
        .or(*self.overall.lock().expect("health lock"))
        .unwrap_or(DEFAULT_SECS_PER_MIB);
        Duration::from_secs_f64(per_mib * mib(bytes) * STALL_FACTOR)
            .clamp(STALL_FLOOR, self.ceiling)
    }

    /// Resolves when some breaker opens.
    pub async fn tripped(&self) {
        self.tripped.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId(n as u64)
    }

    #[test]
    fn deadline_follows_what_the_node_needs() {
        let h = Health::new(Duration::from_secs(10));
        // Unmeasured: the floor.
        assert_eq!(h.deadline(node(1), 1 << 20), STALL_FLOOR);
        // A slow node (2 s per MiB) gets four times that; a fast one the floor.
        h.succeeded(node(1), 1 << 20, Duration::from_secs(2));
        h.succeeded(node(2), 1 << 20, Duration::from_millis(10));
        assert_eq!(h.deadline(node(1), 1 << 20), Duration::from_secs(8));
        assert_eq!(h.deadline(node(2), 1 << 20), STALL_FLOOR);
        // Never past the ceiling.
        assert_eq!(h.deadline(node(1), 4 << 20), Duration::from_secs(10));
        // An unmeasured node borrows the overall figure.
        assert!(h.deadline(node(3), 1 << 20) > STALL_FLOOR);
    }

    #[test]
    fn breaker_opens_backs_off_and_closes_on_success() {
        let h = Health::new(Duration::from_secs(10));
        assert!(!h.is_failing(node(1)));
        h.failed(node(1), "test");
        assert!(h.is_failing(node(1)));
        assert_eq!(h.failing(), vec![node(1)]);
        // A second failure while open does not grow the back-off.
        h.failed(node(1), "test");
        assert_eq!(h.nodes.lock().unwrap()[&node(1)].fails, 1);
        h.succeeded(node(1), 1 << 20, Duration::from_millis(5));
        assert!(!h.is_failing(node(1)));
        assert!(h.failing().is_empty());
    }

    #[test]
    fn back_off_doubles_per_failure_in_a_row() {
        let h = Health::new(Duration::from_secs(10));
        for _ in 0..3 {
            // Let the breaker close, then fail again.
            h.nodes
                .lock()
                .unwrap()
                .entry(node(1))
                .or_default()
                .failing_until = None;
            h.failed(node(1), "test");
        }
        let e = &h.nodes.lock().unwrap()[&node(1)];
        assert_eq!(e.fails, 3);
        let left = e.failing_until.unwrap() - Instant::now();
        assert!(left > Duration::from_millis(1900) && left <= BACKOFF_BASE * 4);
    }
}
