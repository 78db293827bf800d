//! Keeping every block at full strength: repair and scrub.
//!
//! **Repair.** A shard needs rebuilding when its node has been down for longer than the repair
//! grace (a node back sooner simply catches up), or when a scrub or a node's background check
//! found it corrupt or missing (`R` records in the metadata store, so a restarted master
//! resumes). The repair loop scans the block map when something changed (a node passed the
//! grace, shards were reported lost, a repair failed) and at least every ten minutes. For each
//! degraded block it chooses a target per lost shard — the same node for a shard lost on a live
//! node, otherwise a live node holding no other shard of the block, so shards stay on distinct
//! nodes — and asks the first target to rebuild: that node reads k surviving shards, re-encodes
//! the missing ones, checks each against its recorded hash, stores its own and sends the others
//! to their targets. Only then does the master point the block's shards at their new nodes. A
//! bounded number of blocks are rebuilt at once so user I/O still gets through.
//!
//! **Scrub.** On demand, every live node verifies all its shards. The master compares what each
//! node holds intact with what the block map places there: corrupt and missing shards are
//! recorded for repair; shards nothing references (left by a node that came back after its
//! shards were rebuilt elsewhere, or by uploads that never committed) are deleted once older
//! than the orphan grace.

use crate::{Master, MasterError};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use shardfs_common::dial::Dialer;
use shardfs_common::proto::{BlockMeta, Health, NodeRequest, NodeResponse, ScrubReport, ALPN_NODE};
use shardfs_common::{BlockId, NodeId};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// How long a node must be down before its shards are rebuilt elsewhere.
    pub grace: Duration,
    /// How often the repair loop checks whether anything needs rebuilding.
    pub interval: Duration,
    /// Blocks rebuilt at once.
    pub parallel: usize,
    /// Minimum age of an unreferenced shard before a scrub deletes it.
    pub orphan_grace: Duration,
    /// Move shards when the fullest node's fill exceeds the emptiest one's by more than this
    /// fraction of the mean fill (0: never rebalance).
    pub rebalance_threshold: f64,
}

/// Repair state shared by the repair loop and the request handlers.
pub struct Repairer {
    cfg: RepairConfig,
    health: Mutex<(Health, Option<Instant>)>,
    kick: Notify,
    /// Scan on the next wake-up even if nothing changed.
    forced: AtomicBool,
    /// Held shared while a shard is rebuilt or moved (from the first write to the new place
    /// until the block map points at it), and exclusively while a scrub decides which shard
    /// files are leftovers and deletes them, so a scrub never deletes a shard a repair is
    /// putting in place.
    moves: tokio::sync::RwLock<()>,
    dialer: Dialer,
    /// The running scrub's progress: shards checked, of about how many (0, 0: none).
    scrub_progress: Mutex<(u64, u64)>,
}

impl Repairer {
    pub fn new(
        cfg: RepairConfig,
        own: &shardfs_common::pki::Credential,
    ) -> Result<Self, MasterError> {
        Ok(Repairer {
            cfg,
            health: Mutex::new((Health::default(), None)),
            kick: Notify::new(),
            forced: AtomicBool::new(false),
            moves: tokio::sync::RwLock::new(()),
            dialer: Dialer::new(ALPN_NODE, own, Duration::from_secs(3))?,
            scrub_progress: Mutex::new((0, 0)),
        })
    }

    /// Durability as of the last scan, with the repair counters.
    pub fn health(&self) -> Health {
        let (h, at) = &*self.health.lock().expect("health lock");
        let mut h = h.clone();
        h.scanned_ms_ago = at.map(|t| t.elapsed().as_millis() as u64);
        (h.scrub_checked, h.scrub_total) = *self.scrub_progress.lock().expect("scrub lock");
        h
    }

    fn scrub_progress(&self, f: impl FnOnce(&mut (u64, u64))) {
        f(&mut self.scrub_progress.lock().expect("scrub lock"));
    }

    /// Check for work now instead of at the next interval.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Scan the whole block map now, whether or not anything changed.
    pub fn force(&self) {
        self.forced.store(true, Ordering::SeqCst);
        self.kick();
    }

    fn update(&self, f: impl FnOnce(&mut Health)) {
        f(&mut self.health.lock().expect("health lock").0);
    }
}

/// Where a shard that must be (re)written goes.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Back on the node it was lost on (that node is alive).
    InPlace,
    /// On a live node chosen by placement.
    Place,
    /// On this node (rebalancing).
    Node(NodeId),
}

/// One block and the shards of it to rebuild or move.
struct Task {
    meta: BlockMeta,
    /// (index, node it is or was on, where it goes).
    missing: Vec<(u8, NodeId, Target)>,
    /// (index, address) of intact shards on live nodes.
    sources: Vec<(u8, String)>,
}

/// Rebuild lost shards until the shutdown signal.
pub(crate) async fn repair_loop(master: Arc<Master>, mut shutdown: watch::Receiver<bool>) {
    let cfg = master.repair.cfg.clone();
    let mut last_dead: HashSet<NodeId> = HashSet::new();
    let mut last_scan: Option<Instant> = None;
    let mut retry = false;
    // After a rebalance scan that found nothing it could move, wait before trying again.
    let mut rebalance_idle_until: Option<Instant> = None;
    let mut last_live: HashSet<NodeId> = HashSet::new();
    let mut last_drain_scrub: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = master.repair.kick.notified() => {}
            _ = shutdown.changed() => return,
        }
        let dead = master.nodes.dead(cfg.grace);
        let lost = match master.meta.lost() {
            Ok(l) => l,
            Err(e) => {
                warn!("repair: cannot read lost shards: {e}");
                continue;
            }
        };
        let forced = master.repair.forced.swap(false, Ordering::SeqCst);
        let live = master.nodes.live();
        let live_now: HashSet<NodeId> = live.keys().copied().collect();
        if live_now != last_live {
            // A node joined or left: rebalancing may be possible again.
            rebalance_idle_until = None;
            last_live = live_now;
        }
        let due = retry
            || forced
            || master.nodes.draining_with_shards()
            || (rebalance_idle_until.is_none_or(|t| Instant::now() >= t)
                && imbalanced(&master.nodes.usage(), cfg.rebalance_threshold).is_some())
            || dead != last_dead
            || !lost.is_empty()
            || last_scan.is_none_or(|t| t.elapsed() > Duration::from_secs(600));
        if !due {
            continue;
        }
        if dead != last_dead {
            for n in dead.difference(&last_dead) {
                warn!(node = %n, grace_s = cfg.grace.as_secs(), "node down past the repair grace: rebuilding its shards elsewhere");
            }
            // A node back after its shards were rebuilt elsewhere: check what it holds and
            // delete the stale copies.
            for n in last_dead.difference(&dead) {
                if let Some(addr) = live.get(n) {
                    spawn_node_check(&master, *n, *addr, "returning node");
                }
            }
        }
        last_dead = dead.clone();
        last_scan = Some(Instant::now());
        let draining = master.nodes.draining();
        let tasks = match scan(&master, &dead, &live, &lost, &draining) {
            Ok(t) => t,
            Err(e) => {
                warn!("repair scan failed: {e}");
                retry = true;
                continue;
            }
        };
        retry = false;
        // A draining node that still holds shards although none of its shards is left to
        // move holds leftovers (copies from an interrupted move, uploads that never
        // committed): have it checked, which deletes them.
        if tasks
            .iter()
            .all(|t| t.missing.iter().all(|m| !draining.contains(&m.1)))
            && last_drain_scrub.is_none_or(|t| t.elapsed() > Duration::from_secs(30))
        {
            let holding = master.nodes.draining_holding();
            if !holding.is_empty() {
                last_drain_scrub = Some(Instant::now());
                for (n, addr) in holding {
                    spawn_node_check(&master, n, addr, "draining node with leftovers");
                }
            }
        }
        let tasks = if tasks.is_empty() && master.nodes.unsettled(cfg.grace) {
            // A node is late or briefly down: wait for it before moving data around.
            Vec::new()
        } else if tasks.is_empty() {
            // Nothing to repair: even out node use instead.
            match rebalance_tasks(&master, &live, cfg.rebalance_threshold, cfg.parallel * 8) {
                Ok(t) => {
                    if t.is_empty() {
                        rebalance_idle_until = Some(Instant::now() + Duration::from_secs(600));
                    }
                    t
                }
                Err(e) => {
                    warn!("rebalance scan failed: {e}");
                    Vec::new()
                }
            }
        } else {
            info!(blocks = tasks.len(), "repairing degraded blocks");
            tasks
        };
        if tasks.is_empty() {
            continue;
        }
        // Rebalancing works in rounds: look again after this one.
        retry = tasks
            .iter()
            .any(|t| t.missing.iter().any(|m| matches!(m.2, Target::Node(_))));
        let mut running = FuturesUnordered::new();
        let mut queue = tasks.into_iter();
        loop {
            while running.len() < cfg.parallel {
                match queue.next() {
                    Some(t) => running.push(repair_block(&master, &live, t)),
                    None => break,
                }
            }
            let Some(r) = running.next().await else { break };
            match r {
                Ok(Done::Repaired(shards, bytes)) => master.repair.update(|h| {
                    h.repaired_shards += shards as u64;
                    h.repaired_bytes += bytes;
                    h.missing_shards = h.missing_shards.saturating_sub(shards as u64);
                    h.degraded = h.degraded.saturating_sub(1);
                }),
                Ok(Done::Moved(shards)) => master.repair.update(|h| {
                    h.draining_shards = h.draining_shards.saturating_sub(shards as u64);
                }),
                Ok(Done::Rebalanced(shards)) => master
                    .repair
                    .update(|h| h.rebalanced_shards += shards as u64),
                Err(e) => {
                    warn!("repair: {e}");
                    retry = true;
                    master.repair.update(|h| h.repair_failures += 1);
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
        info!(health = ?master.repair.health(), "repair pass done");
    }
}

/// Walk the block map: count what is degraded and list what can be repaired now.
fn scan(
    master: &Master,
    dead: &HashSet<NodeId>,
    live: &HashMap<NodeId, SocketAddr>,
    lost: &HashMap<BlockId, crate::meta::LostRecord>,
    draining: &HashSet<NodeId>,
) -> Result<Vec<Task>, MasterError> {
    let mut h = Health::default();
    let mut tasks = Vec::new();
    let mut after: Option<BlockId> = None;
    let mut seen_lost: HashSet<BlockId> = HashSet::new();
    loop {
        let page = master.meta.blocks_page(after.as_ref(), 1000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.meta.id);
        for rec in page {
            if rec.refs == 0 {
                // Unreferenced: the collector deletes it soon.
                continue;
            }
            h.blocks += 1;
            let meta = rec.meta;
            let k = meta.ec.k as usize;
            let lost_here = lost.get(&meta.id);
            if lost_here.is_some() {
                seen_lost.insert(meta.id);
            }
            let mut missing = Vec::new();
            let mut sources = Vec::new();
            let mut lost_count = 0;
            for (i, s) in meta.shards.iter().enumerate() {
                let i = i as u8;
                let lost_live = lost_here.is_some_and(|l| l.shards.contains(&(i, s.node)))
                    && live.contains_key(&s.node);
                if lost_live || dead.contains(&s.node) {
                    let target = if lost_live && !draining.contains(&s.node) {
                        Target::InPlace
                    } else {
                        Target::Place
                    };
                    missing.push((i, s.node, target));
                    lost_count += 1;
                } else if let Some(a) = live.get(&s.node) {
                    sources.push((i, a.to_string()));
                    if draining.contains(&s.node) {
                        // Intact, but it has to move.
                        missing.push((i, s.node, Target::Place));
                        h.draining_shards += 1;
                    }
                }
            }
            if missing.is_empty() {
                continue;
            }
            if lost_count > 0 {
                h.degraded += 1;
                h.missing_shards += lost_count;
            }
            if sources.len() < k {
                h.unrecoverable += 1;
                error!(block = %meta.id, readable = sources.len(), k, missing = ?missing.iter().map(|m| m.0).collect::<Vec<_>>(), "block cannot be repaired now: too few shards readable");
                continue;
            }
            tasks.push(Task {
                meta,
                missing,
                sources,
            });
        }
    }
    // Lost records of blocks that are gone (deleted files) are dropped.
    for id in lost.keys().filter(|id| !seen_lost.contains(id)) {
        master.meta.drop_lost(id)?;
    }
    let mut g = master.repair.health.lock().expect("health lock");
    // Counters run since the master started; the rest is this scan's picture.
    g.0 = Health {
        repaired_shards: g.0.repaired_shards,
        repaired_bytes: g.0.repaired_bytes,
        repair_failures: g.0.repair_failures,
        rebalanced_shards: g.0.rebalanced_shards,
        ..h
    };
    g.1 = Some(Instant::now());
    Ok(tasks)
}

/// Moves that even out node use: shards from the fullest live node to the emptiest, for
/// blocks the emptiest node holds no shard of, at most `limit` of them.
fn rebalance_tasks(
    master: &Master,
    live: &HashMap<NodeId, SocketAddr>,
    threshold: f64,
    limit: usize,
) -> Result<Vec<Task>, MasterError> {
    if threshold <= 0.0 {
        return Ok(Vec::new());
    }
    let Some((hi, lo)) = imbalanced(&master.nodes.usage(), threshold) else {
        return Ok(Vec::new());
    };
    let fill = |u: &(NodeId, u64, u64)| u.1 as f64 / u.2.max(1) as f64;
    // Move about half the gap (in bytes of the emptier node's capacity scale), in `limit`
    // shards at most per round.
    let gap_bytes = ((fill(&hi) - fill(&lo)) / 2.0 * lo.2.max(1) as f64) as u64;
    let mut moved_bytes = 0u64;
    let mut tasks = Vec::new();
    let mut after: Option<BlockId> = None;
    'outer: loop {
        let page = master.meta.blocks_page(after.as_ref(), 1000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.meta.id);
        for rec in page {
            if rec.refs == 0 || rec.meta.shards.iter().any(|s| s.node == lo.0) {
                continue;
            }
            let Some(i) = rec.meta.shards.iter().position(|s| s.node == hi.0) else {
                continue;
            };
            let sources: Vec<(u8, String)> = rec
                .meta
                .shards
                .iter()
                .enumerate()
                .filter_map(|(j, s)| live.get(&s.node).map(|a| (j as u8, a.to_string())))
                .collect();
            moved_bytes += rec.meta.shard_size as u64;
            tasks.push(Task {
                missing: vec![(i as u8, hi.0, Target::Node(lo.0))],
                sources,
                meta: rec.meta,
            });
            if tasks.len() >= limit || moved_bytes >= gap_bytes {
                break 'outer;
            }
        }
    }
    if !tasks.is_empty() {
        info!(from = %hi.0, to = %lo.0, shards = tasks.len(), "rebalancing");
    }
    Ok(tasks)
}

type Usage = (NodeId, u64, u64);

/// The fullest and the emptiest node, if their fill differs by more than `threshold` of the
/// mean fill (used bytes / capacity).
fn imbalanced(usage: &[Usage], threshold: f64) -> Option<(Usage, Usage)> {
    if threshold <= 0.0 || usage.len() < 2 {
        return None;
    }
    let fill = |u: &Usage| u.1 as f64 / u.2.max(1) as f64;
    let mean = usage.iter().map(fill).sum::<f64>() / usage.len() as f64;
    let (mut hi, mut lo) = (usage[0], usage[0]);
    for u in usage {
        if fill(u) > fill(&hi) {
            hi = *u;
        }
        if fill(u) < fill(&lo) {
            lo = *u;
        }
    }
    // Less than a few MiB apart is noise, whatever the ratio.
    if mean <= 0.0 || fill(&hi) - fill(&lo) <= threshold * mean || hi.1 < lo.1 + (8 << 20) {
        return None;
    }
    Some((hi, lo))
}

/// What one task achieved.
enum Done {
    /// Lost shards rebuilt: (shards, bytes).
    Repaired(usize, u64),
    /// Shards moved off draining nodes.
    Moved(usize),
    /// Shards moved to even out node use.
    Rebalanced(usize),
}

/// Rebuild or move one block's shards.
async fn repair_block(
    master: &Master,
    live: &HashMap<NodeId, SocketAddr>,
    t: Task,
) -> Result<Done, String> {
    let _moving = master.repair.moves.read().await;
    let id = t.meta.id;
    let need = t.meta.shard_size as u64 + 4096;
    // Distinct nodes: no target may hold another shard of this block.
    let mut exclude: Vec<NodeId> = t.meta.shards.iter().map(|s| s.node).collect();
    let mut moves: Vec<(u8, NodeId, NodeId)> = Vec::new();
    let mut targets: Vec<(u8, String)> = Vec::new();
    for (i, old, target) in &t.missing {
        let new = match target {
            Target::InPlace => *old,
            Target::Node(n) => *n,
            Target::Place => match master.nodes.place(1, need, &exclude, &[]) {
                Ok(n) => n[0],
                Err(e) => return Err(format!("block {id}: no node to rebuild shard {i} on: {e}")),
            },
        };
        exclude.push(new);
        let addr = live
            .get(&new)
            .map(|a| a.to_string())
            .ok_or_else(|| format!("block {id}: target node {new} is not live"))?;
        moves.push((*i, *old, new));
        targets.push((*i, addr));
    }
    let rebuilder: SocketAddr = targets[0]
        .1
        .parse()
        .map_err(|_| format!("bad node address {}", targets[0].1))?;
    let req = NodeRequest::Rebuild {
        block: t.meta.clone(),
        sources: t.sources,
        rebuild: targets,
    };
    let timeout = Duration::from_secs(30) + Duration::from_millis(need / 1024);
    match master
        .repair
        .dialer
        .call::<_, NodeResponse>(rebuilder, &req, Bytes::new(), 0, timeout)
        .await
    {
        Ok((NodeResponse::Ok, _)) => {}
        Ok((NodeResponse::Err(e), _)) => {
            return Err(format!(
                "block {id}: rebuild on {rebuilder} failed: {}",
                e.message
            ))
        }
        Ok((other, _)) => return Err(format!("block {id}: unexpected answer {other:?}")),
        Err(e) => return Err(format!("block {id}: rebuild on {rebuilder} failed: {e}")),
    }
    let applied = master
        .meta
        .relocate(&id, &moves)
        .map_err(|e| format!("block {id}: recording the new shard places failed: {e}"))?;
    // Shards that moved off a live node (drain, rebalance) are deleted there.
    let mut stale: HashMap<SocketAddr, Vec<(BlockId, u8)>> = HashMap::new();
    let mut lost = 0usize;
    for ((i, old, new), (_, _, target)) in moves.iter().zip(&t.missing) {
        if old == new {
            lost += 1;
            continue;
        }
        match live.get(old) {
            Some(a) if !matches!(target, Target::InPlace) => {
                stale.entry(*a).or_default().push((id, *i))
            }
            _ => lost += 1,
        }
    }
    for (addr, shards) in stale {
        let req = NodeRequest::Delete { shards };
        if let Err(e) = master
            .repair
            .dialer
            .call::<_, NodeResponse>(addr, &req, Bytes::new(), 0, Duration::from_secs(30))
            .await
        {
            warn!(%addr, "could not delete moved shards (a scrub will): {e}");
        }
    }
    info!(block = %id, shards = ?moves.iter().map(|m| (m.0, m.2.to_string())).collect::<Vec<_>>(), "block shards rebuilt or moved");
    Ok(
        if t.missing.iter().any(|m| matches!(m.2, Target::Node(_))) {
            Done::Rebalanced(applied)
        } else if lost > 0 {
            Done::Repaired(applied, applied as u64 * t.meta.shard_size as u64)
        } else {
            Done::Moved(applied)
        },
    )
}

/// Have every live node verify its shards; record corrupt and missing ones for repair and
/// delete shards nothing references.
pub(crate) async fn scrub(master: &Arc<Master>) -> Result<ScrubReport, MasterError> {
    let mut report = ScrubReport::default();
    let live = master.nodes.live();
    let total: u64 = master
        .nodes
        .list()
        .iter()
        .filter(|n| live.contains_key(&n.id))
        .map(|n| n.shards)
        .sum();
    let r = &master.repair;
    r.scrub_progress(|p| *p = (0, total.max(1)));
    for (node, addr) in live {
        let done = scrub_node(master, node, addr, &mut report, true).await;
        if let Err(e) = done {
            r.scrub_progress(|p| *p = (0, 0));
            return Err(e);
        }
    }
    r.scrub_progress(|p| *p = (0, 0));
    info!(?report, "scrub done");
    master.repair.kick();
    Ok(report)
}

/// Scrub one node in the background (`why` goes to the log), then look for repair work.
fn spawn_node_check(master: &Arc<Master>, node: NodeId, addr: SocketAddr, why: &'static str) {
    let m = master.clone();
    tokio::spawn(async move {
        let mut r = ScrubReport::default();
        match scrub_node(&m, node, addr, &mut r, false).await {
            Ok(()) => info!(%node, report = ?r, "{why} checked"),
            Err(e) => warn!(%node, "check of {why} failed: {e}"),
        }
        m.repair.kick();
    });
}

/// Scrub one node into `report` (counting its pages in the scrub's progress with `counted`).
async fn scrub_node(
    master: &Arc<Master>,
    node: NodeId,
    addr: SocketAddr,
    report: &mut ScrubReport,
    counted: bool,
) -> Result<(), MasterError> {
    let dialer = &master.repair.dialer;
    let mut intact: HashSet<(BlockId, u8)> = HashSet::new();
    let mut corrupt: Vec<(BlockId, u8)> = Vec::new();
    let mut after = None;
    let mut failed = None;
    loop {
        let req = NodeRequest::Scrub { after, limit: 1000 };
        match dialer
            .call::<_, NodeResponse>(addr, &req, Bytes::new(), 0, Duration::from_secs(600))
            .await
        {
            Ok((
                NodeResponse::Scrubbed {
                    intact: i,
                    corrupt: c,
                    next,
                },
                _,
            )) => {
                if counted {
                    let n = (i.len() + c.len()) as u64;
                    master.repair.scrub_progress(|p| {
                        p.0 += n;
                        p.1 = p.1.max(p.0);
                    });
                }
                intact.extend(i);
                corrupt.extend(c);
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            Ok((other, _)) => {
                failed = Some(format!("unexpected answer {other:?}"));
                break;
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    if let Some(e) = failed {
        report.errors.push(format!("node {node} ({addr}): {e}"));
        return Ok(());
    }
    report.nodes += 1;
    report.checked += (intact.len() + corrupt.len()) as u64;
    report.corrupt += corrupt.len() as u64;
    // What the master places on the node, read after the node's listing and with no await
    // until the leftovers are classified below: commits that happened during the listing are
    // included, and none can slip in between. No shard moves until the leftovers are gone.
    let _no_moves = master.repair.moves.write().await;
    let expected = master.meta.shards_on(node)?;
    let corrupt_set: HashSet<(BlockId, u8)> = corrupt.iter().copied().collect();
    let missing: Vec<(BlockId, u8)> = expected
        .iter()
        .filter(|s| !intact.contains(s) && !corrupt_set.contains(s))
        .copied()
        .collect();
    report.missing += missing.len() as u64;
    let bad: Vec<(BlockId, u8)> = corrupt.into_iter().chain(missing).collect();
    if !bad.is_empty() {
        let n = master.meta.add_lost(node, &bad)?;
        warn!(%node, lost = bad.len(), recorded = n, "scrub found lost shards");
    }
    let orphans: Vec<(BlockId, u8)> = intact
        .into_iter()
        .filter(|s| !expected.contains(s))
        .collect();
    report.orphans += orphans.len() as u64;
    // A copy of a shard the block map now places elsewhere (left by a node that came back
    // after repair, or by a move) goes at once; a shard of a block the master does not
    // know may be an upload not committed yet, so it must be older than the orphan grace.
    let (stale, unknown): (Vec<_>, Vec<_>) = orphans
        .into_iter()
        .partition(|(b, _)| master.meta.knows_block(b).unwrap_or(false));
    for (shards, age) in [
        (stale, Duration::ZERO),
        (unknown, master.repair.cfg.orphan_grace),
    ] {
        if shards.is_empty() {
            continue;
        }
        let req = NodeRequest::DeleteOrphans {
            shards,
            min_age_secs: age.as_secs(),
        };
        if let Err(e) = dialer
            .call::<_, NodeResponse>(addr, &req, Bytes::new(), 0, Duration::from_secs(60))
            .await
        {
            report
                .errors
                .push(format!("node {node}: deleting orphans failed: {e}"));
        }
    }
    Ok(())
}
