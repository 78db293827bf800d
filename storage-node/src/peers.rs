//! Shards to and from other nodes (or this one): what rebuilding and sealing read and write.
//!
//! Every shard read is checked against the hash its block description records; a store on
//! another node goes through its `Put` (the node role needs no capability).

use crate::store::ShardBuf;
use crate::{peer_addr, Node, NodeError, PEER_TIMEOUT};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use shardfs_common::cap::Cap;
use shardfs_common::crypt::DataKeys;
use shardfs_common::ec::{Codec, EcParams};
use shardfs_common::proto::{BlockMeta, NodeRequest, NodeResponse};
use shardfs_common::{BlockId, Error};

impl Node {
    /// The cluster's code, once this node has registered with the master.
    /// The cluster's data keys, learnt after registering (sealing and verifying decrypt).
    pub(crate) fn data_keys(&self) -> Result<DataKeys, Error> {
        self.keys.read().expect("keys lock").clone().ok_or_else(|| {
            Error::Unavailable("this node has not learnt the cluster's data keys yet".into())
        })
    }

    pub(crate) fn cluster_code(&self) -> Result<EcParams, Error> {
        self.cluster_ec
            .read()
            .expect("cluster code lock")
            .ok_or_else(|| {
                Error::Unavailable("this node has not registered with the master yet".into())
            })
    }

    /// Shard `i` of block `id` from the node at `addr`, if it is the one recorded (`want`).
    pub(crate) async fn fetch_shard(
        &self,
        id: BlockId,
        i: u8,
        want: [u8; 32],
        size: usize,
        addr: &str,
    ) -> Result<Vec<u8>, Error> {
        let a = peer_addr(addr)?;
        let (hash, d) = if addr == self.advertise {
            let store = self.store.clone();
            let (hash, d) = tokio::task::spawn_blocking(move || store.get(&id, i))
                .await
                .map_err(|e| Error::Unavailable(format!("store worker failed: {e}")))?
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            (hash, d.to_vec())
        } else {
            let req = NodeRequest::Get {
                block: id,
                index: i,
                range: None,
                cap: Cap::default(),
            };
            match self
                .peers
                .call::<_, NodeResponse>(a, &req, Bytes::new(), size, PEER_TIMEOUT)
                .await?
            {
                (NodeResponse::Shard { hash }, d) => (hash, d),
                (NodeResponse::Err(e), _) => return Err(Error::from(e)),
                (other, _) => return Err(Error::Protocol(format!("unexpected answer {other:?}"))),
            }
        };
        if hash == want && d.len() == size {
            Ok(d)
        } else {
            Err(Error::Corrupt(format!(
                "shard {id}.{i} from {addr} is not the one recorded"
            )))
        }
    }

    /// Store shard `i` of block `id` (bytes `d`, blake3 `hash`) on the node at `addr`.
    pub(crate) async fn store_shard(
        &self,
        addr: &str,
        id: BlockId,
        i: u8,
        hash: [u8; 32],
        d: Vec<u8>,
    ) -> Result<(), NodeError> {
        if addr == self.advertise {
            let store = self.store.clone();
            return tokio::task::spawn_blocking(move || {
                store.put(&id, i, &hash, ShardBuf::from_slice(&d))
            })
            .await
            .map_err(|e| Error::Unavailable(format!("store worker failed: {e}")))?;
        }
        let a = peer_addr(addr)?;
        let req = NodeRequest::Put {
            block: id,
            index: i,
            hash,
            cap: Cap::default(),
        };
        match self
            .peers
            .call::<_, NodeResponse>(a, &req, Bytes::from(d), 0, PEER_TIMEOUT)
            .await?
        {
            (NodeResponse::Ok, _) => Ok(()),
            (NodeResponse::Err(e), _) => Err(Error::from(e).into()),
            (other, _) => Err(Error::Protocol(format!("unexpected answer {other:?}")).into()),
        }
    }

    /// Any k shards of block `m` from `sources` (index, address), data shards first; a shard
    /// that cannot be read or does not match its hash is replaced by the next source. The
    /// result has k present entries, indexed by shard number.
    pub(crate) async fn fetch_k(
        &self,
        m: &BlockMeta,
        sources: &[(u8, String)],
    ) -> Result<Vec<Option<Vec<u8>>>, NodeError> {
        let (k, n, size) = (m.ec.k as usize, m.ec.total(), m.shard_size as usize);
        let mut order: Vec<(u8, String)> = sources
            .iter()
            .filter(|(i, _)| (*i as usize) < n)
            .cloned()
            .collect();
        order.sort_by_key(|(i, _)| *i);
        let fetch = |i: u8, addr: String| {
            let want = m.shards[i as usize].hash;
            async move { (i, self.fetch_shard(m.id, i, want, size, &addr).await, addr) }
        };
        let mut queue = order.into_iter();
        let mut running = FuturesUnordered::new();
        for (i, a) in queue.by_ref().take(k) {
            running.push(fetch(i, a));
        }
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; n];
        let (mut have, mut errors) = (0usize, Vec::new());
        while let Some((i, r, addr)) = running.next().await {
            match r {
                Ok(d) => {
                    shards[i as usize] = Some(d);
                    have += 1;
                    if have == k {
                        break;
                    }
                }
                Err(e) => {
                    errors.push(format!("shard {i} on {addr}: {e}"));
                    if let Some((i, a)) = queue.next() {
                        running.push(fetch(i, a));
                    }
                }
            }
        }
        if have < k {
            return Err(Error::Unavailable(format!(
                "block {}: only {have} of the {k} shards needed could be read ({})",
                m.id,
                errors.join("; ")
            ))
            .into());
        }
        Ok(shards)
    }
}

/// The content of block `meta` decoded from `shards` (at least k present), if it is the
/// content the block's id names (in a cluster of code `cluster`), decrypted.
pub(crate) fn decode_checked(
    codec: &Codec,
    shards: &mut [Option<Vec<u8>>],
    meta: &BlockMeta,
    cluster: EcParams,
    keys: &DataKeys,
) -> Result<Vec<u8>, Error> {
    let mut data = codec.decode(shards, meta.len as usize)?;
    if !keys.open_checked(meta, &mut data, cluster)? {
        return Err(Error::Corrupt(format!(
            "the shards of block {} decode to other content",
            meta.id
        )));
    }
    Ok(data)
}
