//! Blocks in and out of the storage nodes.
//!
//! Write: a block is hashed (its blake3 is its id), the master places it (or says the cluster
//! already has it), it is erasure-coded and its k + m shards are sent to k + m nodes in
//! parallel. A failed node is excluded and the block placed again.
//!
//! Read: k shards are fetched in parallel, data shards first; a failed or slow shard (past the
//! hedge delay) brings in the parity shards. Each node verifies its shard against the blake3 in
//! the shard's header and returns that hash, which must equal the one the master recorded; the
//! data shards are received straight into the block's buffer, so a healthy read costs one copy
//! and no hashing on the client. A block rebuilt from parity is checked against its id (its
//! blake3); if that fails, the shards are checked one by one and the bad ones dropped. Blocks
//! are kept in an LRU cache bounded in bytes; being content-addressed, a cached block is never
//! stale.

use crate::master::{unexpected, MasterClient};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use lru::LruCache;
use shardfs_common::dial::Dialer;
use shardfs_common::ec::Codec;
use shardfs_common::ids::shard_hash;
use shardfs_common::proto::{
    BlockMeta, MasterRequest, MasterResponse, NodeRequest, NodeResponse, NodeState, Placement,
    ShardLoc, ALPN_NODE,
};
use shardfs_common::{BlockId, Error, NodeId, Result};
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// What [`BlockStore::collect`] gathered: which data shards arrived (in the caller's buffer)
/// and the parity shards that did.
struct Collected {
    data_ok: Vec<bool>,
    parity: Vec<Option<Vec<u8>>>,
}

pub struct BlockConfig {
    pub cache_bytes: usize,
    pub shard_timeout: Duration,
    pub hedge_delay: Duration,
}

type Fetch = Shared<BoxFuture<'static, std::result::Result<Arc<Vec<u8>>, String>>>;

pub struct BlockStore {
    master: Arc<MasterClient>,
    codec: Arc<Codec>,
    dialer: Dialer,
    cfg: BlockConfig,
    addrs: Mutex<HashMap<NodeId, SocketAddr>>,
    /// Nodes that failed recently, and until when to try them last.
    suspect: Mutex<HashMap<NodeId, Instant>>,
    cache: Mutex<Cache>,
    fetching: Mutex<HashMap<BlockId, Fetch>>,
}

struct Cache {
    lru: LruCache<BlockId, Arc<Vec<u8>>>,
    bytes: usize,
    limit: usize,
}

impl Cache {
    fn insert(&mut self, id: BlockId, data: Arc<Vec<u8>>) {
        if data.len() > self.limit {
            return;
        }
        if let Some(old) = self.lru.put(id, data.clone()) {
            self.bytes -= old.len();
        }
        self.bytes += data.len();
        while self.bytes > self.limit {
            match self.lru.pop_lru() {
                Some((_, v)) => self.bytes -= v.len(),
                None => break,
            }
        }
    }
}

impl BlockStore {
    pub fn new(
        master: Arc<MasterClient>,
        codec: Arc<Codec>,
        cfg: BlockConfig,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(BlockStore {
            master,
            codec,
            dialer: Dialer::new(ALPN_NODE, Duration::from_secs(2))?,
            cache: Mutex::new(Cache {
                lru: LruCache::unbounded(),
                bytes: 0,
                limit: cfg.cache_bytes,
            }),
            cfg,
            addrs: Mutex::new(HashMap::new()),
            suspect: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        }))
    }

    async fn refresh_nodes(&self) -> Result<()> {
        match self.master.call(MasterRequest::Nodes).await? {
            MasterResponse::Nodes(list) => {
                let mut addrs = self.addrs.lock().expect("addrs lock");
                let mut suspect = self.suspect.lock().expect("suspect lock");
                for n in list {
                    if let Ok(a) = n.addr.parse() {
                        addrs.insert(n.id, a);
                    }
                    if n.state == NodeState::Down {
                        suspect.insert(n.id, Instant::now() + Duration::from_secs(5));
                    }
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    async fn addr(&self, node: NodeId) -> Result<SocketAddr> {
        if let Some(a) = self.addrs.lock().expect("addrs lock").get(&node) {
            return Ok(*a);
        }
        self.refresh_nodes().await?;
        self.addrs
            .lock()
            .expect("addrs lock")
            .get(&node)
            .copied()
            .ok_or_else(|| {
                Error::Unavailable(format!("storage node {node} is unknown to the master"))
            })
    }

    fn is_suspect(&self, node: NodeId) -> bool {
        let mut s = self.suspect.lock().expect("suspect lock");
        match s.get(&node) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                s.remove(&node);
                false
            }
            None => false,
        }
    }

    fn mark_suspect(&self, node: NodeId) {
        self.suspect
            .lock()
            .expect("suspect lock")
            .insert(node, Instant::now() + Duration::from_secs(10));
    }

    fn cached(&self, id: &BlockId) -> Option<Arc<Vec<u8>>> {
        self.cache.lock().expect("cache lock").lru.get(id).cloned()
    }

    pub fn cache_insert(&self, id: BlockId, data: Arc<Vec<u8>>) {
        self.cache.lock().expect("cache lock").insert(id, data);
    }

    /// Store a block; returns its description (placed now or already in the cluster).
    pub async fn put(self: &Arc<Self>, data: Arc<Vec<u8>>) -> Result<BlockMeta> {
        let d = data.clone();
        let id = tokio::task::spawn_blocking(move || BlockId::of(&d))
            .await
            .map_err(|e| Error::Unavailable(format!("hasher failed: {e}")))?;
        let mut encoded: Option<(Vec<Bytes>, Vec<[u8; 32]>)> = None;
        let mut exclude: Vec<NodeId> = Vec::new();
        let mut last_err = None;
        for attempt in 0..6u32 {
            if attempt > 0 {
                // Give the master time to notice a node that died.
                tokio::time::sleep(Duration::from_millis(250 * attempt as u64)).await;
            }
            let req = MasterRequest::Place {
                blocks: vec![(id, data.len() as u64)],
                exclude: exclude.clone(),
            };
            let nodes = match self.master.call(req).await? {
                MasterResponse::Placements(mut p) if p.len() == 1 => match p.remove(0) {
                    Placement::Exists(meta) => {
                        self.cache_insert(id, data);
                        return Ok(meta);
                    }
                    Placement::Place(nodes) => nodes,
                },
                other => return Err(unexpected(other)),
            };
            if encoded.is_none() {
                let (d, codec) = (data.clone(), self.codec.clone());
                encoded = Some(
                    tokio::task::spawn_blocking(move || {
                        let shards: Vec<Bytes> =
                            codec.encode(&d)?.into_iter().map(Bytes::from).collect();
                        let hashes: Vec<[u8; 32]> = shards.iter().map(|s| shard_hash(s)).collect();
                        Ok::<_, Error>((shards, hashes))
                    })
                    .await
                    .map_err(|e| Error::Unavailable(format!("encoder failed: {e}")))??,
                );
            }
            let (shards, hashes) = encoded.as_ref().expect("encoded above");
            let mut puts = FuturesUnordered::new();
            for (i, node) in nodes.iter().enumerate() {
                let (shard, hash, node) = (shards[i].clone(), hashes[i], *node);
                let this = self.clone();
                puts.push(async move {
                    let r = this.put_shard(node, id, i as u8, hash, shard).await;
                    (node, r)
                });
            }
            let mut failed = Vec::new();
            while let Some((node, r)) = puts.next().await {
                if let Err(e) = r {
                    warn!(%node, block = %id, "shard upload failed: {e}");
                    self.mark_suspect(node);
                    failed.push(node);
                    last_err = Some(e);
                }
            }
            if failed.is_empty() {
                let meta = BlockMeta {
                    id,
                    ec: self.codec.params(),
                    len: data.len() as u64,
                    shard_size: shards[0].len() as u32,
                    shards: nodes
                        .iter()
                        .zip(hashes.iter())
                        .map(|(n, h)| ShardLoc { node: *n, hash: *h })
                        .collect(),
                };
                self.cache_insert(id, data);
                return Ok(meta);
            }
            exclude.extend(failed);
        }
        Err(last_err.unwrap_or_else(|| Error::Unavailable("could not store block".into())))
    }

    async fn put_shard(
        &self,
        node: NodeId,
        block: BlockId,
        index: u8,
        hash: [u8; 32],
        data: Bytes,
    ) -> Result<()> {
        let addr = self.addr(node).await?;
        let req = NodeRequest::Put { block, index, hash };
        let timeout = self.cfg.shard_timeout + Duration::from_millis(data.len() as u64 / 1024);
        match self
            .dialer
            .call::<_, NodeResponse>(addr, &req, data, 0, timeout)
            .await?
        {
            (NodeResponse::Ok, _) => Ok(()),
            (NodeResponse::Err(e), _) => Err(e.into()),
            (other, _) => Err(Error::Protocol(format!("unexpected node answer {other:?}"))),
        }
    }

    /// Fetch shard `index` of a block into `dst` (exactly the shard's size). The node verifies
    /// the shard against the blake3 in its header and returns that hash; it must be the one the
    /// master recorded, so the bytes are the ones written (QUIC authenticates them in transit).
    async fn get_shard(
        &self,
        loc: &ShardLoc,
        block: BlockId,
        index: u8,
        dst: &mut [MaybeUninit<u8>],
    ) -> Result<()> {
        let addr = self.addr(loc.node).await?;
        let req = NodeRequest::Get {
            block,
            index,
            range: None,
        };
        let size = dst.len();
        let r = self
            .dialer
            .call_into::<_, NodeResponse>(addr, &req, dst, self.cfg.shard_timeout)
            .await;
        match r {
            Ok((NodeResponse::Shard { hash }, n)) => {
                if n != size || hash != loc.hash {
                    return Err(Error::Corrupt(format!(
                        "shard {block}.{index} from {} is not the one recorded ({n} of {size} bytes)",
                        loc.node
                    )));
                }
                Ok(())
            }
            Ok((NodeResponse::Err(e), _)) => Err(e.into()),
            Ok((other, _)) => Err(Error::Protocol(format!("unexpected node answer {other:?}"))),
            Err(e) => {
                self.mark_suspect(loc.node);
                Err(e)
            }
        }
    }

    /// Bytes `[lo, hi)` of a block without fetching all of it: the data shards covering the range
    /// are asked for just those bytes (each node still verifies its whole shard). None if the
    /// block is cached (use [`BlockStore::get`]) or a shard could not be read that way.
    pub async fn get_range(
        self: &Arc<Self>,
        meta: &BlockMeta,
        lo: usize,
        hi: usize,
    ) -> Option<Vec<u8>> {
        if self.cached(&meta.id).is_some() || hi <= lo {
            return None;
        }
        let size = meta.shard_size as usize;
        let k = meta.ec.k as usize;
        let mut parts = Vec::new();
        let mut pos = lo;
        while pos < hi {
            let i = pos / size;
            if i >= k || meta.shards.len() <= i {
                return None;
            }
            let end = hi.min((i + 1) * size);
            parts.push((i, pos - i * size, end - pos));
            pos = end;
        }
        let fetches = parts.iter().map(|&(i, off, len)| {
            let loc = meta.shards[i].clone();
            let this = self.clone();
            let id = meta.id;
            async move {
                if this.is_suspect(loc.node) {
                    return None;
                }
                let addr = this.addr(loc.node).await.ok()?;
                let req = NodeRequest::Get {
                    block: id,
                    index: i as u8,
                    range: Some((off as u32, len as u32)),
                };
                match this
                    .dialer
                    .call::<_, NodeResponse>(addr, &req, Bytes::new(), len, this.cfg.shard_timeout)
                    .await
                {
                    Ok((NodeResponse::Shard { hash }, d)) if hash == loc.hash && d.len() == len => {
                        Some(d)
                    }
                    Ok(_) => None,
                    Err(_) => {
                        this.mark_suspect(loc.node);
                        None
                    }
                }
            }
        });
        let mut out = Vec::with_capacity(hi - lo);
        for d in futures::future::join_all(fetches).await {
            out.extend_from_slice(&d?);
        }
        Some(out)
    }

    /// The content of a block, from the cache or the nodes. Concurrent reads of one block share
    /// one fetch.
    pub async fn get(self: &Arc<Self>, meta: &BlockMeta) -> Result<Arc<Vec<u8>>> {
        if let Some(d) = self.cached(&meta.id) {
            return Ok(d);
        }
        let fetch = {
            let mut f = self.fetching.lock().expect("fetching lock");
            f.entry(meta.id)
                .or_insert_with(|| {
                    let this = self.clone();
                    let meta = meta.clone();
                    async move {
                        let r = this.fetch(&meta).await;
                        this.fetching
                            .lock()
                            .expect("fetching lock")
                            .remove(&meta.id);
                        match r {
                            Ok(d) => {
                                this.cache_insert(meta.id, d.clone());
                                Ok(d)
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        fetch.await.map_err(Error::Unavailable)
    }

    /// Start fetching a block into the cache without waiting for it.
    pub fn prefetch(self: &Arc<Self>, meta: BlockMeta) {
        if self.cached(&meta.id).is_some()
            || self
                .fetching
                .lock()
                .expect("fetching lock")
                .contains_key(&meta.id)
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.get(&meta).await {
                debug!(block = %meta.id, "read-ahead failed: {e}");
            }
        });
    }

    async fn fetch(self: &Arc<Self>, meta: &BlockMeta) -> Result<Arc<Vec<u8>>> {
        let n = meta.shards.len();
        if n != meta.ec.total() {
            return Err(Error::Corrupt(format!(
                "block {} lists {n} shards",
                meta.id
            )));
        }
        let (k, size, len) = (
            meta.ec.k as usize,
            meta.shard_size as usize,
            meta.len as usize,
        );
        if len > k * size {
            return Err(Error::Corrupt(format!(
                "block {} of {len} bytes does not fit {k} shards of {size}",
                meta.id
            )));
        }
        // Data shards are received straight into the block's buffer (one copy out of QUIC's
        // buffers); parity shards, fetched only when a data shard fails or is slow, into
        // their own.
        let mut block: Vec<u8> = Vec::with_capacity(k * size);
        let mut excluded: Vec<usize> = Vec::new();
        for attempt in 0..2 {
            let got = self
                .collect(meta, &excluded, &mut block.spare_capacity_mut()[..k * size])
                .await?;
            if got.data_ok.iter().all(|ok| *ok) {
                // SAFETY: every data shard's region of the spare capacity was filled.
                unsafe { block.set_len(k * size) };
                block.truncate(len);
                return Ok(Arc::new(block));
            }
            // Degraded: rebuild from what arrived, and check the result against the block's id.
            let mut shards: Vec<Option<Vec<u8>>> = got.parity;
            for (i, ok) in got.data_ok.iter().enumerate() {
                if *ok {
                    // SAFETY: shard i's region was filled (data_ok).
                    let region =
                        unsafe { std::slice::from_raw_parts(block.as_ptr().add(i * size), size) };
                    shards[i] = Some(region.to_vec());
                }
            }
            let (codec, meta2) = (self.codec_for(meta)?, meta.clone());
            let r = tokio::task::spawn_blocking(move || {
                let arrived: Vec<usize> =
                    (0..shards.len()).filter(|i| shards[*i].is_some()).collect();
                let data = codec.decode(&mut shards, meta2.len as usize)?;
                if BlockId::of(&data) == meta2.id {
                    return Ok::<_, Error>(Ok(Arc::new(data)));
                }
                // Which of the shards that arrived are not what was written?
                let bad: Vec<usize> = arrived
                    .into_iter()
                    .filter(|i| {
                        shards[*i]
                            .as_ref()
                            .is_some_and(|s| shard_hash(s) != meta2.shards[*i].hash)
                    })
                    .collect();
                Ok(Err(bad))
            })
            .await
            .map_err(|e| Error::Unavailable(format!("decoder failed: {e}")))??;
            match r {
                Ok(data) => return Ok(data),
                Err(bad) => {
                    tracing::error!(block = %meta.id, ?bad, attempt, "shards do not match their hashes");
                    if bad.is_empty() {
                        break;
                    }
                    excluded.extend(bad);
                }
            }
        }
        Err(Error::Corrupt(format!(
            "block {} cannot be rebuilt to its content",
            meta.id
        )))
    }

    fn codec_for(&self, meta: &BlockMeta) -> Result<Arc<Codec>> {
        if meta.ec == self.codec.params() {
            Ok(self.codec.clone())
        } else {
            Ok(Arc::new(Codec::new(meta.ec)?))
        }
    }

    /// Fetch k shards of a block (not those in `excluded`): data shards first, into their
    /// places in `data` (k shard-sized regions), more on failure or after the hedge delay.
    async fn collect(
        self: &Arc<Self>,
        meta: &BlockMeta,
        excluded: &[usize],
        data: &mut [MaybeUninit<u8>],
    ) -> Result<Collected> {
        let k = meta.ec.k as usize;
        let n = meta.shards.len();
        let size = meta.shard_size as usize;
        let mut order: Vec<usize> = (0..n).filter(|i| !excluded.contains(i)).collect();
        order.sort_by_key(|&i| (self.is_suspect(meta.shards[i].node), i >= k, i));
        let mut regions: Vec<Option<&mut [MaybeUninit<u8>]>> =
            data.chunks_mut(size.max(1)).map(Some).collect();
        let mut next = 0usize;
        let mut running = FuturesUnordered::new();
        let mut launch = |i: usize| {
            let this = self.clone();
            let loc = meta.shards[i].clone();
            let id = meta.id;
            let region = regions.get_mut(i).and_then(Option::take);
            async move {
                let r = match region {
                    Some(dst) => this.get_shard(&loc, id, i as u8, dst).await.map(|()| None),
                    None => {
                        let mut v = Vec::with_capacity(size);
                        let r = this
                            .get_shard(&loc, id, i as u8, &mut v.spare_capacity_mut()[..size])
                            .await;
                        r.map(|()| {
                            // SAFETY: get_shard filled all `size` bytes.
                            unsafe { v.set_len(size) };
                            Some(v)
                        })
                    }
                };
                (i, r)
            }
        };
        while next < k.min(order.len()) {
            running.push(launch(order[next]));
            next += 1;
        }
        let mut got = Collected {
            data_ok: vec![false; k],
            parity: vec![None; n],
        };
        let mut have = 0usize;
        let mut errors: Vec<String> = Vec::new();
        let hedge = tokio::time::sleep(self.cfg.hedge_delay);
        tokio::pin!(hedge);
        let mut hedged = false;
        while have < k {
            tokio::select! {
                r = running.next() => {
                    let Some((i, r)) = r else { break };
                    match r {
                        Ok(None) => { got.data_ok[i] = true; have += 1; }
                        Ok(Some(v)) => { got.parity[i] = Some(v); have += 1; }
                        Err(e) => {
                            errors.push(format!("shard {i} on node {}: {e}", meta.shards[i].node));
                            if next < order.len() { running.push(launch(order[next])); next += 1; }
                        }
                    }
                }
                _ = &mut hedge, if !hedged => {
                    hedged = true;
                    while next < order.len() { running.push(launch(order[next])); next += 1; }
                }
            }
        }
        if have < k {
            let msg = format!(
                "block {} unreadable: {have} of the {k} shards needed ({})",
                meta.id,
                errors.join("; ")
            );
            tracing::error!("{msg}");
            return Err(Error::Unavailable(msg));
        }
        if !errors.is_empty() {
            debug!(block = %meta.id, "degraded read: {}", errors.join("; "));
        }
        Ok(got)
    }

    pub fn close(&self) {
        self.dialer.close();
    }
}
