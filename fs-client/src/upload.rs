//! Where the shards of one block being stored stand: which node holds each, which uploads are
//! under way, and which shards must be placed on another node now.
//!
//! Pure bookkeeping, no I/O: [`crate::blocks`] runs the uploads and asks this what to do. A
//! shard needs another node when it has no upload under way, or when every upload of it has
//! stalled: past the node's adaptive deadline, past a few times what its sibling shards took
//! once the block could already be decoded, or on a node whose breaker opened meanwhile. A
//! stalled upload is not abandoned: it races the new one, and the first to finish holds the
//! shard. Every node holds at most one shard of the block, so the block is committed only
//! with its pieces durable on distinct nodes.

use shardfs_common::NodeId;
use std::time::{Duration, Instant};

/// Uploads of one shard, in all, before the block fails.
pub const MAX_TRIES: u32 = 5;
/// A shard on a node whose breaker opened is placed elsewhere once its upload is this old.
const TRIPPED_GRACE: Duration = Duration::from_millis(100);
/// Once the block could be decoded, a remaining upload is stalled past this many times the
/// slowest finished sibling (and at least `SIBLING_FLOOR`).
const SIBLING_FACTOR: u32 = 3;
const SIBLING_FLOOR: Duration = Duration::from_millis(500);

struct Attempt {
    id: u64,
    node: NodeId,
    started: Instant,
    /// A newer upload of the same shard races this one.
    raced: bool,
}

pub struct ShardUploads {
    /// Shards needed to decode the block.
    k: usize,
    /// Per shard: the node that holds it, and how long storing it took.
    stored: Vec<Option<(NodeId, Duration)>>,
    running: Vec<Vec<Attempt>>,
    tries: Vec<u32>,
    next_id: u64,
}

/// What a finished upload means for the block.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The shard is stored (on this node); cancel these other uploads of it.
    Stored { cancel: Vec<u64> },
    /// The shard was already stored by another upload (this one's copy is an orphan).
    Late,
    /// The upload failed.
    Failed,
}

impl ShardUploads {
    pub fn new(k: usize, n: usize) -> Self {
        ShardUploads {
            k,
            stored: vec![None; n],
            running: (0..n).map(|_| Vec::new()).collect(),
            tries: vec![0; n],
            next_id: 0,
        }
    }

    /// An upload of shard `i` to `node` starts; returns its id.
    pub fn start(&mut self, i: usize, node: NodeId, now: Instant) -> u64 {
        for a in &mut self.running[i] {
            a.raced = true;
        }
        self.next_id += 1;
        self.tries[i] += 1;
        self.running[i].push(Attempt {
            id: self.next_id,
            node,
            started: now,
            raced: false,
        });
        self.next_id
    }

    /// Upload `id` of shard `i` finished.
    pub fn finish(&mut self, i: usize, id: u64, ok: bool, now: Instant) -> Outcome {
        let Some(pos) = self.running[i].iter().position(|a| a.id == id) else {
            return Outcome::Late;
        };
        let a = self.running[i].remove(pos);
        if !ok {
            return Outcome::Failed;
        }
        if self.stored[i].is_some() {
            return Outcome::Late;
        }
        self.stored[i] = Some((a.node, now - a.started));
        let cancel = self.running[i].drain(..).map(|a| a.id).collect();
        Outcome::Stored { cancel }
    }

    /// Shard `i` is held by a node.
    pub fn is_stored(&self, i: usize) -> bool {
        self.stored[i].is_some()
    }

    pub fn complete(&self) -> bool {
        self.stored.iter().all(Option::is_some)
    }

    /// The nodes of each shard, once complete.
    pub fn nodes(&self) -> Option<Vec<NodeId>> {
        self.stored.iter().map(|s| s.map(|(n, _)| n)).collect()
    }

    /// Nodes that hold a shard of the block or are storing one: no other shard goes there.
    pub fn holding(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.stored.iter().flatten().map(|(n, _)| *n).collect();
        v.extend(self.running.iter().flatten().map(|a| a.node));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Shards with no upload under way that have been tried `MAX_TRIES` times.
    pub fn exhausted(&self) -> Option<usize> {
        (0..self.stored.len()).find(|&i| {
            self.stored[i].is_none() && self.running[i].is_empty() && self.tries[i] >= MAX_TRIES
        })
    }

    /// Shards that need another node now. `deadline` is how long an upload to a node may
    /// take; `failing` whether a node's breaker is open.
    pub fn need_more(
        &self,
        now: Instant,
        deadline: impl Fn(NodeId) -> Duration,
        failing: impl Fn(NodeId) -> bool,
    ) -> Vec<usize> {
        let done = self.stored.iter().flatten().count();
        let sibling_bound = (done >= self.k).then(|| {
            let slowest = self
                .stored
                .iter()
                .flatten()
                .map(|(_, d)| *d)
                .max()
                .unwrap_or_default();
            (slowest * SIBLING_FACTOR).max(SIBLING_FLOOR)
        });
        (0..self.stored.len())
            .filter(|&i| self.stored[i].is_none() && self.tries[i] < MAX_TRIES)
            .filter(|&i| {
                // The newest upload of a shard decides (older ones race it already).
                self.running[i].iter().filter(|a| !a.raced).all(|a| {
                    let age = now.saturating_duration_since(a.started);
                    age > deadline(a.node)
                        || sibling_bound.is_some_and(|b| age > b)
                        || (age > TRIPPED_GRACE && failing(a.node))
                })
            })
            .collect()
    }

    /// Nodes of uploads that stalled (for the breaker): the running, not yet raced uploads
    /// of `shards`.
    pub fn stalled_nodes(&self, shards: &[usize]) -> Vec<NodeId> {
        shards
            .iter()
            .flat_map(|&i| self.running[i].iter().filter(|a| !a.raced).map(|a| a.node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u64) -> NodeId {
        NodeId(i)
    }

    const SEC: Duration = Duration::from_secs(1);

    /// Nodes 0 and 3 are expected to answer within a second, the others within ten.
    fn due(x: NodeId) -> Duration {
        if x == n(0) || x == n(3) {
            SEC
        } else {
            SEC * 10
        }
    }

    #[test]
    fn all_stored_on_distinct_nodes() {
        let t = Instant::now();
        let mut u = ShardUploads::new(2, 3);
        let ids: Vec<u64> = (0..3).map(|i| u.start(i, n(i as u64), t)).collect();
        assert_eq!(u.holding(), vec![n(0), n(1), n(2)]);
        for (i, id) in ids.into_iter().enumerate() {
            assert_eq!(
                u.finish(i, id, true, t + SEC / 10),
                Outcome::Stored { cancel: vec![] }
            );
        }
        assert!(u.complete());
        assert_eq!(u.nodes(), Some(vec![n(0), n(1), n(2)]));
    }

    #[test]
    fn failed_shard_needs_a_node_at_once() {
        let t = Instant::now();
        let mut u = ShardUploads::new(2, 3);
        let a = u.start(0, n(0), t);
        u.start(1, n(1), t);
        u.start(2, n(2), t);
        assert_eq!(u.finish(0, a, false, t), Outcome::Failed);
        assert_eq!(u.need_more(t, |_| SEC * 10, |_| false), vec![0]);
        // The failed node holds nothing: it may take a shard again.
        assert_eq!(u.holding(), vec![n(1), n(2)]);
    }

    #[test]
    fn stalled_upload_is_raced_not_dropped() {
        let t = Instant::now();
        let mut u = ShardUploads::new(2, 3);
        let slow = u.start(0, n(0), t);
        u.start(1, n(1), t);
        u.start(2, n(2), t);
        // Within its deadline: nothing to do.
        assert!(u.need_more(t + SEC / 2, due, |_| false).is_empty());
        // Past it: place shard 0 elsewhere, and only once.
        let later = t + SEC * 2;
        assert_eq!(u.need_more(later, due, |_| false), vec![0]);
        assert_eq!(u.stalled_nodes(&[0]), vec![n(0)]);
        let fresh = u.start(0, n(3), later);
        assert!(u.need_more(later, due, |_| false).is_empty());
        assert_eq!(u.holding(), vec![n(0), n(1), n(2), n(3)]);
        // The slow one finishes first after all: it holds the shard, the new one is cancelled.
        assert_eq!(
            u.finish(0, slow, true, later),
            Outcome::Stored {
                cancel: vec![fresh]
            }
        );
        assert_eq!(u.finish(0, fresh, true, later), Outcome::Late);
    }

    #[test]
    fn a_raced_upload_that_stalls_too_is_raced_again() {
        let t = Instant::now();
        let mut u = ShardUploads::new(2, 3);
        u.start(0, n(0), t);
        u.start(1, n(1), t);
        u.start(2, n(2), t);
        u.start(0, n(3), t + SEC * 2);
        assert!(u.need_more(t + SEC * 5 / 2, due, |_| false).is_empty());
        assert_eq!(u.need_more(t + SEC * 4, due, |_| false), vec![0]);
        assert_eq!(u.stalled_nodes(&[0]), vec![n(3)]);
    }

    #[test]
    fn siblings_set_the_pace_once_the_block_is_decodable() {
        let t = Instant::now();
        let mut u = ShardUploads::new(2, 3);
        let ids: Vec<u64> = (0..3).map(|i| u.start(i, n(i as u64), t)).collect();
        u.finish(0, ids[0], true, t + SEC / 10);
        // One sibling done of the two needed: the long deadline applies.
        assert!(u.need_more(t + SEC, |_| SEC * 10, |_| false).is_empty());
        u.finish(1, ids[1], true, t + SEC / 5);
        // Two done in at most 0.2 s: shard 2 is stalled after 0.6 s (floor 0.5 s).
        assert!(u.need_more(t + SEC / 2, |_| SEC * 10, |_| false).is_empty());
        assert_eq!(
            u.need_more(t + SEC * 7 / 10, |_| SEC * 10, |_| false),
            vec![2]
        );
    }

    #[test]
    fn tripped_breaker_moves_the_shard() {
        let t = Instant::now();
        let mut u = ShardUploads::new(2, 3);
        for i in 0..3 {
            u.start(i, n(i as u64), t);
        }
        let now = t + SEC / 5;
        assert_eq!(u.need_more(now, |_| SEC * 10, |x| x == n(1)), vec![1]);
    }

    #[test]
    fn tries_are_bounded() {
        let t = Instant::now();
        let mut u = ShardUploads::new(1, 1);
        for _ in 0..MAX_TRIES {
            let id = u.start(0, n(0), t);
            u.finish(0, id, false, t);
        }
        assert!(u.need_more(t, |_| SEC, |_| false).is_empty());
        assert_eq!(u.exhausted(), Some(0));
    }
}
