//! Repair work the master gives a node: verify a block description, rebuild lost shards.

use crate::peers::decode_checked;
use crate::{Node, NodeError};
use shardfs_common::ec::Codec;
use shardfs_common::ids::shard_hash;
use shardfs_common::proto::BlockMeta;
use shardfs_common::Error;
use std::sync::Arc;

impl Node {
    /// Check that a block description is true: its shards, read from `sources`, decode to
    /// content whose blake3 is the block's id, and encoding that content again gives every
    /// recorded shard hash.
    pub(crate) async fn verify(
        self: Arc<Self>,
        meta: BlockMeta,
        sources: Vec<(u8, String)>,
    ) -> Result<(), NodeError> {
        meta.check_shape()?;
        let (n, size) = (meta.ec.total(), meta.shard_size as usize);
        if sources.iter().any(|(i, _)| *i as usize >= n) || sources.len() > n {
            return Err(Error::invalid("verify request does not match the block's code").into());
        }
        let fetches = sources.into_iter().map(|(i, addr)| {
            let this = self.clone();
            let (id, want) = (meta.id, meta.shards[i as usize].hash);
            async move { (i, this.fetch_shard(id, i, want, size, &addr).await) }
        });
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; n];
        for (i, r) in futures::future::join_all(fetches).await {
            if let Ok(d) = r {
                shards[i as usize] = Some(d);
            }
        }
        let (codec, cluster, keys) = (
            Codec::new(meta.ec)?,
            self.cluster_code()?,
            self.data_keys()?,
        );
        tokio::task::spawn_blocking(move || {
            let mut data = decode_checked(&codec, &mut shards, &meta, cluster, &keys)?;
            // Stored as ciphertext: encrypted again to compare shard hashes.
            keys.apply(&meta.id, 0, &mut data)?;
            let again = codec.encode(&data)?;
            if again
                .iter()
                .zip(&meta.shards)
                .any(|(s, l)| shard_hash(s) != l.hash)
            {
                return Err(Error::Corrupt(format!(
                    "block {}: recorded shard hashes are not those of its content",
                    meta.id
                )));
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Unavailable(format!("verify worker failed: {e}")))?
        .map_err(NodeError::from)
    }

    /// Rebuild shards `rebuild` (index, target address) of `meta` from k of `sources` and store
    /// each on its node (here or sent on). Every source shard and every rebuilt shard is checked
    /// against its recorded hash.
    pub(crate) async fn rebuild(
        self: Arc<Self>,
        meta: BlockMeta,
        sources: Vec<(u8, String)>,
        rebuild: Vec<(u8, String)>,
    ) -> Result<(), NodeError> {
        let (n, size) = (meta.ec.total(), meta.shard_size as usize);
        if meta.shards.len() != n
            || sources
                .iter()
                .chain(&rebuild)
                .any(|(i, _)| *i as usize >= n)
        {
            return Err(Error::invalid("rebuild request does not match the block's code").into());
        }
        // A shard still readable somewhere (a move: drain, rebalance) is copied as it is.
        let mut copied: Vec<(u8, String, Vec<u8>)> = Vec::new();
        let mut rest: Vec<(u8, String)> = Vec::new();
        for (i, target) in rebuild {
            let want = meta.shards[i as usize].hash;
            let direct = match sources.iter().find(|(j, _)| *j == i) {
                Some((_, a)) => self.fetch_shard(meta.id, i, want, size, a).await.ok(),
                None => None,
            };
            match direct {
                Some(d) => copied.push((i, target, d)),
                None => rest.push((i, target)),
            }
        }
        let rebuilt = if rest.is_empty() {
            Vec::new()
        } else {
            self.reconstruct(&meta, &sources, rest).await?
        };
        let stores = copied.into_iter().chain(rebuilt).map(|(i, addr, d)| {
            let this = self.clone();
            let (id, hash) = (meta.id, meta.shards[i as usize].hash);
            async move { this.store_shard(&addr, id, i, hash, d).await }
        });
        for r in futures::future::join_all(stores).await {
            r?;
        }
        Ok(())
    }

    /// Fetch k of `sources` (not the shards being rebuilt) and reconstruct the shards `wanted`
    /// from them, each checked against its recorded hash.
    async fn reconstruct(
        &self,
        meta: &BlockMeta,
        sources: &[(u8, String)],
        wanted: Vec<(u8, String)>,
    ) -> Result<Vec<(u8, String, Vec<u8>)>, NodeError> {
        let sources: Vec<(u8, String)> = sources
            .iter()
            .filter(|(i, _)| !wanted.iter().any(|(w, _)| w == i))
            .cloned()
            .collect();
        let mut shards = self.fetch_k(meta, &sources).await?;
        let codec = Codec::new(meta.ec)?;
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            codec.reconstruct(&mut shards)?;
            let mut out = Vec::new();
            for (i, addr) in wanted {
                let d = shards[i as usize].take().expect("reconstructed");
                if shard_hash(&d) != meta.shards[i as usize].hash {
                    return Err(Error::Corrupt(format!(
                        "rebuilt shard {}.{i} does not match its recorded hash",
                        meta.id
                    ))
                    .into());
                }
                out.push((i, addr, d));
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("rebuild worker failed: {e}")))?
    }
}
