//! Sealing: small writes that have gone quiet become erasure-coded blocks again.
//!
//! Small writes are stored as replicated pieces (m + 1 full copies) laid over a slot's base
//! block as extents. That makes them cheap to write and costly to keep: (m + 1)× their size
//! instead of (k + m) / k. Once a file has had no commit with small writes for the quiet
//! period, and no session has it open, this loop has each of its fragmented slots rewritten by
//! a storage node as one block in the cluster's code (`NodeRequest::Seal`: the node reads the
//! base and the pieces, lays the extents, encodes and stores the shards on nodes chosen here),
//! then swaps the slot over to it if the slot is unchanged (`Meta::seal_slot`). The old base
//! and pieces lose the slot's references and go to the collector. Slots are sealed one at a
//! time, at most `rate` bytes a second, so user I/O keeps its share.
//!
//! Crashes: nothing is swapped before every shard of the new block is stored, so a node or the
//! master dying mid-seal leaves the slot as it was, readable. The file's `F` key stays until
//! every slot is sealed, so a restarted master seals it again. Shards a failed seal stored are
//! handed to the collector when the master learns of them (an incomplete answer, or a slot
//! that changed meanwhile); those of a seal the master died during are orphans the scrubber
//! deletes after the orphan grace.

use crate::{shard_space, Master, MasterError};
use bytes::Bytes;
use shardfs_common::extent;
use shardfs_common::proto::{BlockMeta, NodeRequest, NodeResponse, SealJob};
use shardfs_common::{Error, Ino, NodeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::meta::Swap;
use crate::slots::SlotRecord;

#[derive(Clone, Debug)]
pub struct SealConfig {
    /// A file is sealed once it has had no commit with small writes for this long (zero:
    /// never).
    pub quiet: Duration,
    /// How often the loop looks for files to seal.
    pub interval: Duration,
    /// Bytes of sealed blocks written per second, at most (zero: no limit).
    pub rate: u64,
}

/// Counters of what sealing did since the master started.
#[derive(Debug, Default, Clone, Copy)]
pub struct SealStats {
    pub slots: u64,
    /// Bytes of the sealed blocks (before coding).
    pub bytes: u64,
    pub failed: u64,
}

/// Seal quiet files until shutdown. Starts after `settle` (mounts reclaim their open files
/// after a master restart within it).
pub(crate) async fn seal_loop(
    master: Arc<Master>,
    cfg: SealConfig,
    settle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if cfg.quiet.is_zero() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(settle) => {}
        _ = shutdown.changed() => return,
    }
    loop {
        let candidates = match master.meta.seal_candidates(cfg.quiet.as_secs(), 256) {
            Ok(c) => c,
            Err(e) => {
                warn!("cannot list files to seal: {e}");
                Vec::new()
            }
        };
        for (ino, since) in candidates {
            if *shutdown.borrow() {
                return;
            }
            if master.meta.is_held(ino) {
                continue;
            }
            match seal_file(&master, &cfg, ino).await {
                Ok(true) => {
                    if let Err(e) = master.meta.seal_done(ino, since) {
                        warn!(ino, "cannot record a sealed file: {e}");
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(ino, "sealing failed, will retry: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Seal every fragmented slot of `ino`; true if none is left.
async fn seal_file(master: &Master, cfg: &SealConfig, ino: Ino) -> Result<bool, MasterError> {
    let mut all = true;
    for (index, rec) in master.meta.slots_to_seal(ino)? {
        if master.meta.is_held(ino) {
            return Ok(false);
        }
        let started = tokio::time::Instant::now();
        match seal_slot(master, ino, index, &rec).await {
            Ok(Some(len)) => {
                {
                    let mut s = master.seal_stats.lock().expect("seal stats lock");
                    s.slots += 1;
                    s.bytes += len;
                }
                if cfg.rate > 0 {
                    let due = Duration::from_secs_f64(len as f64 / cfg.rate as f64);
                    tokio::time::sleep_until(started + due).await;
                }
            }
            Ok(None) => all = false,
            Err(e) => {
                master.seal_stats.lock().expect("seal stats lock").failed += 1;
                warn!(ino, slot = index, "cannot seal a slot: {e}");
                all = false;
            }
        }
    }
    Ok(all)
}

/// (index, address) of the live holders of `m`'s shards.
fn sources(m: &BlockMeta, live: &HashMap<NodeId, SocketAddr>) -> Vec<(u8, String)> {
    m.shards
        .iter()
        .enumerate()
        .filter_map(|(i, l)| live.get(&l.node).map(|a| (i as u8, a.to_string())))
        .collect()
}

/// Seal one slot: the bytes of the sealed block, or None if the slot changed meanwhile.
async fn seal_slot(
    master: &Master,
    ino: Ino,
    index: u64,
    rec: &SlotRecord,
) -> Result<Option<u64>, MasterError> {
    let (ec, bs) = (master.meta.code_of(ino)?, master.meta.cluster.block_size);
    let missing = |id| {
        MasterError::Corrupt(format!(
            "slot {index} of inode {ino}: block {id} has no record"
        ))
    };
    let base = match rec.block {
        Some(id) => Some(master.meta.block_meta(&id)?.ok_or_else(|| missing(id))?),
        None => None,
    };
    let base_len = base.as_ref().map_or(0, |b| b.len.min(rec.used));
    let len = rec
        .extents
        .last()
        .map_or(0, |e| e.end() as u64)
        .max(base_len);
    let mut pieces = Vec::new();
    // Inline pieces go with the request, in the order of the job's pieces.
    let mut inline = Vec::new();
    for id in extent::pieces(&rec.extents) {
        let m = master.meta.block_meta(&id)?.ok_or_else(|| missing(id))?;
        if m.is_inline() {
            let bytes = master.meta.inline_bytes(&id)?.ok_or_else(|| {
                MasterError::Corrupt(format!(
                    "slot {index} of inode {ino}: inline piece {id} has no bytes"
                ))
            })?;
            inline.extend_from_slice(&bytes);
        }
        pieces.push(m);
    }
    let live = master.nodes.live();
    let targets: Vec<(NodeId, String)> = master
        .nodes
        .place(ec.total(), shard_space(ec, len), &[], &[])?
        .into_iter()
        .map(|n| {
            let a = live.get(&n).map(|a| a.to_string()).unwrap_or_default();
            (n, a)
        })
        .collect();
    let Some(worker) = targets.first().and_then(|(n, _)| live.get(n)).copied() else {
        return Err(Error::Unavailable("no node to seal on".into()).into());
    };
    let req = NodeRequest::Seal(SealJob {
        base: base.map(|b| {
            let s = sources(&b, &live);
            (b, s)
        }),
        base_len,
        pieces: pieces
            .into_iter()
            .map(|p| {
                let s = sources(&p, &live);
                (p, s)
            })
            .collect(),
        extents: rec.extents.clone(),
        len,
        ec,
        targets: targets.clone(),
    });
    let answer = master
        .node_dialer
        .call::<_, NodeResponse>(
            worker,
            &req,
            Bytes::from(inline),
            0,
            Duration::from_secs(120),
        )
        .await?;
    let (block, complete, error) = match answer {
        (
            NodeResponse::Sealed {
                block,
                complete,
                error,
            },
            _,
        ) => (block, complete, error),
        (NodeResponse::Err(e), _) => return Err(Error::from(e).into()),
        (other, _) => return Err(Error::Protocol(format!("unexpected answer {other:?}")).into()),
    };
    // The node is trusted to store, not to describe: the description must be one of what was
    // asked for.
    let placed = block
        .shards
        .iter()
        .map(|l| l.node)
        .eq(targets.iter().map(|(n, _)| *n));
    if block.ec != ec || block.len != len || !placed {
        return Err(
            Error::Protocol(format!("node {worker} sealed something else than asked")).into(),
        );
    }
    block.check(ec, bs)?;
    if !complete {
        master.meta.seal_abandoned(&block, &master.collecting)?;
        return Err(Error::Unavailable(
            error.unwrap_or_else(|| "not every shard was stored".into()),
        )
        .into());
    }
    match master
        .meta
        .seal_slot(ino, index, rec, &block, &master.collecting)?
    {
        Swap::Sealed => {
            debug!(ino, slot = index, block = %block.id, extents = rec.extents.len(), "sealed");
            Ok(Some(len))
        }
        Swap::Changed => {
            info!(
                ino,
                slot = index,
                "slot changed while it was sealed; sealing it later"
            );
            master.meta.seal_abandoned(&block, &master.collecting)?;
            Ok(None)
        }
    }
}
