//! Sealing a slot at the master's request: the slot's base block and the replicated pieces
//! laid over it become one erasure-coded block.
//!
//! The node reads the base block (any k of its shards) and each piece (any one of its copies)
//! from the nodes that hold them (an inline piece, which the master keeps, comes with the
//! request), each shard checked against its recorded hash and each block's content against its
//! id, lays the extents over the base in memory (one block-sized buffer;
//! pieces are read one at a time), encodes the result with the code it is given and stores
//! shard i on target i. It answers with the new block's description; the master then swaps the
//! slot over to it if the slot has not changed meanwhile. A seal that stored only some shards
//! still answers with the description (marked incomplete) so the master collects them.

use crate::peers::decode_checked;
use crate::{Node, NodeError};
use shardfs_common::ec::Codec;
use shardfs_common::extent;
use shardfs_common::ids::shard_hash;
use shardfs_common::proto::{BlockMeta, SealJob, ShardLoc};
use shardfs_common::{wire, BlockId, Error, NodeId};
use std::collections::HashSet;
use std::sync::Arc;

/// The new block, whether every shard of it is stored, and why not.
pub struct Sealed {
    pub block: BlockMeta,
    pub complete: bool,
    pub error: Option<String>,
}

/// Everything in the request fits together and stays within bounds, before anything is read
/// or allocated.
fn check(job: &SealJob, inline: usize) -> Result<(), Error> {
    let bad = |why: String| Err(Error::invalid(format!("seal request: {why}")));
    job.ec.validate()?;
    if job.len == 0 || job.len as usize > wire::MAX_BULK {
        return bad(format!("a block of {} bytes", job.len));
    }
    if job.targets.len() != job.ec.total() {
        return bad(format!(
            "{} targets for a code of {} shards",
            job.targets.len(),
            job.ec.total()
        ));
    }
    let distinct: HashSet<NodeId> = job.targets.iter().map(|(n, _)| *n).collect();
    if distinct.len() != job.targets.len() {
        return bad("two shards on one node".into());
    }
    extent::check(&job.extents, job.len)
        .map_err(|e| Error::invalid(format!("seal request: {e}")))?;
    match &job.base {
        Some((m, s)) => {
            m.check_shape()?;
            if job.base_len > m.len || job.base_len > job.len {
                return bad("more base bytes than the base block or the slot holds".into());
            }
            check_sources(m, s)?;
        }
        None if job.base_len > 0 => return bad("base bytes without a base block".into()),
        None => {}
    }
    if job.pieces.len() > extent::MAX_EXTENTS {
        return bad(format!("{} pieces", job.pieces.len()));
    }
    for (m, s) in &job.pieces {
        m.check_shape()?;
        check_sources(m, s)?;
    }
    let carried: u64 = job
        .pieces
        .iter()
        .filter(|(m, _)| m.is_inline())
        .map(|(m, _)| m.len)
        .sum();
    if carried != inline as u64 {
        return bad(format!(
            "{inline} bytes of inline pieces sent, {carried} described"
        ));
    }
    let named: HashSet<BlockId> = job.pieces.iter().map(|(m, _)| m.id).collect();
    if let Some(e) = job.extents.iter().find(|e| !named.contains(&e.piece)) {
        return bad(format!("extent at {} names a piece not given", e.off));
    }
    Ok(())
}

impl Node {
    /// The content of inline piece `m` from its stored bytes, if they are what its id names.
    fn open_inline(&self, m: &BlockMeta, stored: &[u8]) -> Result<Vec<u8>, Error> {
        let (keys, cluster) = (self.data_keys()?, self.cluster_code()?);
        let mut data = stored.to_vec();
        if !keys.open_checked(m, &mut data, cluster)? {
            return Err(Error::Corrupt(format!(
                "inline piece {} does not hold the content its id names",
                m.id
            )));
        }
        Ok(data)
    }
}

fn check_sources(m: &BlockMeta, sources: &[(u8, String)]) -> Result<(), Error> {
    if sources.len() > m.ec.total() || sources.iter().any(|(i, _)| *i as usize >= m.ec.total()) {
        return Err(Error::invalid(format!(
            "seal request: sources of block {} do not match its code",
            m.id
        )));
    }
    Ok(())
}

impl Node {
    pub(crate) async fn seal(
        self: Arc<Self>,
        job: SealJob,
        inline: &[u8],
    ) -> Result<Sealed, NodeError> {
        check(&job, inline.len())?;
        let mut inline = inline;
        let mut out = vec![0u8; job.len as usize];
        if let Some((m, sources)) = &job.base {
            let data = self.read_block(m, sources).await?;
            out[..job.base_len as usize].copy_from_slice(&data[..job.base_len as usize]);
        }
        for (m, sources) in &job.pieces {
            let data = match m.is_inline() {
                true => {
                    let (bytes, rest) = inline.split_at(m.len as usize);
                    inline = rest;
                    self.open_inline(m, bytes)?
                }
                false => self.read_block(m, sources).await?,
            };
            extent::copy_from(&job.extents, &m.id, &data, &mut out).map_err(Error::invalid)?;
        }
        let (codec, ec, cluster) = (Codec::new(job.ec)?, job.ec, self.cluster_code()?);
        let keys = self.data_keys()?;
        let (id, shards) = tokio::task::spawn_blocking(move || {
            let id = keys.content_id(ec, cluster, &out);
            keys.apply(&id, 0, &mut out)?;
            codec.encode(&out).map(|s| (id, s))
        })
        .await
        .map_err(|e| Error::Unavailable(format!("encoder failed: {e}")))??;
        // Shard i of this id already exists under another code (a piece stored before copies
        // had ids of their own, with exactly this content): writing would replace its bytes.
        let clash = job
            .base
            .iter()
            .chain(&job.pieces)
            .any(|(m, _)| m.id == id && m.ec != job.ec);
        if clash {
            return Err(Error::fs(
                shardfs_common::ErrorCode::Exists,
                format!("block {id} is stored under another code; the slot is left as it is"),
            )
            .into());
        }
        let block = BlockMeta {
            id,
            ec: job.ec,
            len: job.len,
            shard_size: job.ec.shard_size(job.len as usize) as u32,
            shards: job
                .targets
                .iter()
                .zip(&shards)
                .map(|((node, _), s)| ShardLoc {
                    node: *node,
                    hash: shard_hash(s),
                })
                .collect(),
        };
        let stores = shards.into_iter().enumerate().map(|(i, d)| {
            let this = self.clone();
            let (addr, hash) = (job.targets[i].1.clone(), block.shards[i].hash);
            async move { this.store_shard(&addr, id, i as u8, hash, d).await }
        });
        let errors: Vec<String> = futures::future::join_all(stores)
            .await
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        Ok(Sealed {
            block,
            complete: errors.is_empty(),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        })
    }

    /// The content of block `m`, from any k of its shards at `sources`, checked against its id.
    async fn read_block(
        &self,
        m: &BlockMeta,
        sources: &[(u8, String)],
    ) -> Result<Vec<u8>, NodeError> {
        let mut shards = self.fetch_k(m, sources).await?;
        let (codec, meta, cluster) = (Codec::new(m.ec)?, m.clone(), self.cluster_code()?);
        let keys = self.data_keys()?;
        tokio::task::spawn_blocking(move || {
            decode_checked(&codec, &mut shards, &meta, cluster, &keys)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("decoder failed: {e}")))?
        .map_err(NodeError::from)
    }
}
