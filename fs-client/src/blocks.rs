//! Blocks in and out of the storage nodes.
//!
//! Write: a block is hashed (its blake3 is its id), the master places it (or says the cluster
//! already has it), it is erasure-coded and its k + m shards are sent to k + m nodes in
//! parallel. A shard whose node fails or stalls is placed on another node while the other
//! shards carry on ([`crate::upload`]); nodes that fail are avoided for a while
//! ([`crate::health`]).
//!
//! Read: k shards are fetched in parallel, data shards first; a failed or slow shard (past the
//! hedge delay) brings in the parity shards. Each node verifies its shard against the blake3 in
//! the shard's header and returns that hash, which must equal the one the master recorded; the
//! data shards are received straight into the block's buffer, so a healthy read costs one copy
//! and no hashing on the client. A block rebuilt from parity is checked against its id (its
//! blake3); if that fails, the shards are checked one by one and the bad ones dropped. Blocks
//! are kept in an LRU cache bounded in bytes; being content-addressed, a cached block is never
//! stale.

mod inline;

use crate::health::Health;
use crate::master::{unexpected, MasterClient};
use crate::upload::{Outcome, ShardUploads, MAX_TRIES};
use bytes::Bytes;
use futures::future::{AbortHandle, BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use lru::LruCache;
use shardfs_common::cap::Cap;
use shardfs_common::crypt::DataKeys;
use shardfs_common::dial::Dialer;
use shardfs_common::ec::{Codec, EcParams};
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

/// Blocks at least this big are decrypted off the runtime thread.
const DECRYPT_OFF_THREAD: usize = 256 << 10;

pub struct BlockConfig {
    pub cache_bytes: usize,
    /// Longest wait for one shard transfer.
    pub shard_timeout: Duration,
    pub hedge_delay: Duration,
    /// Longest time storing one block may take, however many nodes fail meanwhile.
    pub put_timeout: Duration,
}

/// How often a block being stored checks its uploads for stalls.
const TICK: Duration = Duration::from_millis(100);
/// Wait before asking the master again for nodes it could not give.
const RETRY_PLACE: Duration = Duration::from_millis(250);
/// How long one request for other nodes may keep asking while the master has none.
const PLACE_WITHIN: Duration = Duration::from_secs(2);

type Fetch = Shared<BoxFuture<'static, std::result::Result<Arc<Vec<u8>>, String>>>;

pub struct BlockStore {
    master: Arc<MasterClient>,
    /// The cluster's code.
    codec: Arc<Codec>,
    /// Codecs of other codes met (pieces, storage policies), made once each.
    codecs: Mutex<HashMap<EcParams, Arc<Codec>>>,
    dialer: Dialer,
    cfg: BlockConfig,
    addrs: Mutex<HashMap<NodeId, SocketAddr>>,
    /// How each node is doing: transfer times and circuit breakers.
    health: Health,
    cache: Mutex<Cache>,
    fetching: Mutex<HashMap<BlockId, Fetch>>,
    /// The cluster's data keys: content is encrypted before it is encoded into shards, and
    /// decrypted after it is read back (the cache holds plaintext).
    keys: DataKeys,
    /// Inline pieces waiting for their commit (see `inline`).
    inline: Mutex<inline::Pending>,
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
        cred: &shardfs_common::pki::Credential,
        codec: Arc<Codec>,
        keys: DataKeys,
        cfg: BlockConfig,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(BlockStore {
            keys,
            master,
            codec,
            codecs: Mutex::new(HashMap::new()),
            dialer: Dialer::new(ALPN_NODE, cred, Duration::from_secs(2))?,
            cache: Mutex::new(Cache {
                lru: LruCache::unbounded(),
                bytes: 0,
                limit: cfg.cache_bytes,
            }),
            health: Health::new(cfg.shard_timeout),
            cfg,
            addrs: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            inline: Mutex::new(inline::Pending::default()),
        }))
    }

    async fn refresh_nodes(&self) -> Result<()> {
        match self.master.call(MasterRequest::Nodes).await? {
            MasterResponse::Nodes(list) => {
                let mut addrs = self.addrs.lock().expect("addrs lock");
                for n in list {
                    if let Ok(a) = n.addr.parse() {
                        addrs.insert(n.id, a);
                    }
                    if n.state == NodeState::Down {
                        self.health.reported_down(n.id, Duration::from_secs(5));
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

    /// The cluster's data keys as this mount holds them.
    pub fn keys(&self) -> &DataKeys {
        &self.keys
    }

    fn cached(&self, id: &BlockId) -> Option<Arc<Vec<u8>>> {
        self.cache.lock().expect("cache lock").lru.get(id).cloned()
    }

    pub fn cache_insert(&self, id: BlockId, data: Arc<Vec<u8>>) {
        self.cache.lock().expect("cache lock").insert(id, data);
    }

    /// Store a block; returns its description (placed now or already in the cluster).
    ///
    /// The k + m shards go to k + m nodes at once. An upload that fails, or stalls past its
    /// node's adaptive deadline, opens that node's breaker and its shard is placed on another
    /// node while the others carry on; the stalled upload races the new one (see
    /// [`crate::upload`]). Fails after the put timeout, or once a shard was tried
    /// [`MAX_TRIES`] times.
    /// Returns the block's description and this mount's capability to read it.
    /// `code`: the file's (its storage policy), None for the cluster's.
    pub async fn put(
        self: &Arc<Self>,
        data: Arc<Vec<u8>>,
        code: Option<EcParams>,
    ) -> Result<(BlockMeta, Cap)> {
        self.put_coded(data, code, false).await
    }

    /// Store a piece of small writes as m + 1 full copies on distinct nodes (m of the file's
    /// code; same rules as [`BlockStore::put`]: acknowledged only once every copy is durable).
    pub async fn put_piece(
        self: &Arc<Self>,
        data: Arc<Vec<u8>>,
        code: Option<EcParams>,
    ) -> Result<(BlockMeta, Cap)> {
        self.put_coded(data, code, true).await
    }

    /// The codec of `ec`.
    fn codec_of(&self, ec: EcParams) -> Result<Arc<Codec>> {
        if ec == self.codec.params() {
            return Ok(self.codec.clone());
        }
        let mut codecs = self.codecs.lock().expect("codecs lock");
        if let Some(c) = codecs.get(&ec) {
            return Ok(c.clone());
        }
        let c = Arc::new(Codec::new(ec)?);
        codecs.insert(ec, c.clone());
        Ok(c)
    }

    async fn put_coded(
        self: &Arc<Self>,
        data: Arc<Vec<u8>>,
        code: Option<EcParams>,
        replicated: bool,
    ) -> Result<(BlockMeta, Cap)> {
        let file_code = code.unwrap_or(self.codec.params());
        let codec = match replicated {
            true => self.codec_of(file_code.replicated())?,
            false => self.codec_of(file_code)?,
        };
        let (d, ec, cluster) = (data.clone(), codec.params(), self.codec.params());
        let keys = self.keys.clone();
        let id = tokio::task::spawn_blocking(move || keys.content_id(ec, cluster, &d))
            .await
            .map_err(|e| Error::Unavailable(format!("hasher failed: {e}")))?;
        let give_up = Instant::now() + self.cfg.put_timeout;
        let placement = self
            .place(id, data.len() as u64, replicated, code, give_up)
            .await?;
        let (d, params, keys) = (data.clone(), codec.params(), self.keys.clone());
        let (shards, hashes) = tokio::task::spawn_blocking(move || {
            let stored = match keys.encrypted() {
                true => {
                    let mut c = d.to_vec();
                    keys.apply(&id, 0, &mut c)?;
                    std::borrow::Cow::Owned(c)
                }
                false => std::borrow::Cow::Borrowed(&d[..]),
            };
            let shards: Vec<Bytes> = codec
                .encode(&stored)?
                .into_iter()
                .map(Bytes::from)
                .collect();
            let hashes: Vec<[u8; 32]> = shards.iter().map(|s| shard_hash(s)).collect();
            Ok::<_, Error>((shards, hashes))
        })
        .await
        .map_err(|e| Error::Unavailable(format!("encoder failed: {e}")))??;
        let (nodes, cap) = match placement {
            // Stored already: only if its shards are exactly these (nodes check every shard
            // against its hash on each read) do they hold this content.
            Placement::Exists(meta, cap)
                if meta.ec == params
                    && meta.len == data.len() as u64
                    && meta
                        .shards
                        .iter()
                        .map(|l| l.hash)
                        .eq(hashes.iter().copied()) =>
            {
                self.cache_insert(id, data);
                return Ok((meta, cap));
            }
            Placement::Exists(..) => {
                warn!(block = %id, "the cluster's description of this block does not match its content; storing it again");
                self.place_more(
                    id,
                    data.len() as u64,
                    params,
                    shards.len(),
                    Vec::new(),
                    self.cfg.put_timeout,
                )
                .await?
            }
            Placement::Place(nodes, cap) => (nodes, cap),
        };
        if nodes.len() != shards.len() {
            return Err(Error::Protocol(format!(
                "placed on {} nodes, need {}",
                nodes.len(),
                shards.len()
            )));
        }
        let shard_len = shards[0].len();
        let nodes = self
            .store_shards(
                id,
                cap,
                data.len() as u64,
                params,
                &shards,
                &hashes,
                nodes,
                give_up,
            )
            .await?;
        let meta = BlockMeta {
            id,
            ec: params,
            len: data.len() as u64,
            shard_size: shard_len as u32,
            shards: nodes
                .iter()
                .zip(hashes.iter())
                .map(|(n, h)| ShardLoc { node: *n, hash: *h })
                .collect(),
        };
        self.cache_insert(id, data);
        Ok((meta, cap))
    }

    /// Send shard i to `nodes[i]`, re-placing shards whose upload fails or stalls, until every
    /// shard is stored on a distinct node; returns the node of each.
    #[allow(clippy::too_many_arguments)]
    async fn store_shards(
        self: &Arc<Self>,
        id: BlockId,
        cap: Cap,
        len: u64,
        ec: EcParams,
        shards: &[Bytes],
        hashes: &[[u8; 32]],
        nodes: Vec<NodeId>,
        give_up: Instant,
    ) -> Result<Vec<NodeId>> {
        let shard_len = shards[0].len();
        let mut up = ShardUploads::new(ec.k as usize, shards.len());
        let mut running = FuturesUnordered::new();
        let mut aborts: HashMap<u64, AbortHandle> = HashMap::new();
        let start = |up: &mut ShardUploads, i: usize, node: NodeId| {
            let aid = up.start(i, node, Instant::now());
            let (this, shard, hash) = (self.clone(), shards[i].clone(), hashes[i]);
            let (task, handle) = futures::future::abortable(async move {
                let t = Instant::now();
                let r = this.put_shard(node, id, cap, i as u8, hash, shard).await;
                (r, t.elapsed())
            });
            (aid, handle, task.map(move |r| (i, aid, node, r)))
        };
        for (i, node) in nodes.into_iter().enumerate() {
            let (aid, handle, task) = start(&mut up, i, node);
            aborts.insert(aid, handle);
            running.push(task);
        }
        let mut last_err: Option<Error> = None;
        let mut place_again = Instant::now();
        // Asking the master for other nodes runs beside the uploads, never instead of them:
        // while it waits (no other node free, a slow master), the uploads it would replace
        // keep going and may well finish first.
        type Placing = BoxFuture<'static, (Vec<usize>, Result<(Vec<NodeId>, Cap)>)>;
        let mut placing: Option<Placing> = None;
        while !up.complete() {
            let now = Instant::now();
            if let Some(i) = up.exhausted() {
                let why = last_err.map_or_else(|| "no node took it".into(), |e| e.to_string());
                return Err(Error::Unavailable(format!(
                    "could not store shard {i} of block {id} after {MAX_TRIES} tries: {why}"
                )));
            }
            if now >= give_up {
                let why = last_err.map_or_else(|| "uploads stalled".into(), |e| e.to_string());
                return Err(Error::Unavailable(format!(
                    "could not store block {id} within {:?}: {why}",
                    self.cfg.put_timeout
                )));
            }
            if placing.is_none() && now >= place_again {
                let need = up.need_more(
                    now,
                    |n| self.health.deadline(n, shard_len),
                    |n| self.health.is_failing(n),
                );
                if !need.is_empty() {
                    for n in up.stalled_nodes(&need) {
                        self.health.failed(n, "upload stalled");
                    }
                    let (this, holding) = (self.clone(), up.holding());
                    let within = give_up.saturating_duration_since(now).min(PLACE_WITHIN);
                    placing = Some(
                        async move {
                            let r = this
                                .place_more(id, len, ec, need.len(), holding, within)
                                .await;
                            (need, r)
                        }
                        .boxed(),
                    );
                }
            }
            tokio::select! {
                (need, r) = async { placing.as_mut().expect("placing").await }, if placing.is_some() => {
                    placing = None;
                    match r {
                        Ok((more, _)) => {
                            // A shard stored meanwhile by the upload this one was to race
                            // needs no other node.
                            for (&i, node) in need.iter().zip(more) {
                                if up.is_stored(i) {
                                    continue;
                                }
                                debug!(block = %id, shard = i, %node, "shard placed again");
                                let (aid, handle, task) = start(&mut up, i, node);
                                aborts.insert(aid, handle);
                                running.push(task);
                            }
                        }
                        Err(e) => {
                            debug!(block = %id, "cannot place shards again yet: {e}");
                            last_err = Some(e);
                            place_again = Instant::now() + RETRY_PLACE;
                        }
                    }
                }
                Some((i, aid, node, r)) = running.next(), if !running.is_empty() => {
                    aborts.remove(&aid);
                    let now = Instant::now();
                    match r {
                        Ok((Ok(()), took)) => {
                            self.health.succeeded(node, shard_len, took);
                            if let Outcome::Stored { cancel } = up.finish(i, aid, true, now) {
                                for c in cancel {
                                    if let Some(h) = aborts.remove(&c) {
                                        h.abort();
                                    }
                                }
                            }
                        }
                        Ok((Err(e), _)) => {
                            warn!(%node, block = %id, shard = i, "shard upload failed: {e}");
                            self.health.failed(node, &e.to_string());
                            up.finish(i, aid, false, now);
                            last_err = Some(e);
                        }
                        // Cancelled: another upload of the shard finished first.
                        Err(_) => {}
                    }
                }
                _ = tokio::time::sleep(TICK) => {}
                _ = self.health.tripped() => {}
            }
        }
        for h in aborts.into_values() {
            h.abort();
        }
        Ok(up.nodes().expect("complete"))
    }

    /// Where to store a new block (or that the cluster has it), asking again while the master
    /// cannot place it (nodes coming and going) until `give_up`.
    async fn place(
        &self,
        id: BlockId,
        len: u64,
        replicated: bool,
        code: Option<EcParams>,
        give_up: Instant,
    ) -> Result<Placement> {
        loop {
            let req = MasterRequest::Place {
                blocks: vec![(id, len)],
                replicated,
                exclude: self.health.failing(),
                code,
            };
            match self.master.call(req).await {
                Ok(MasterResponse::Placements(mut p)) if p.len() == 1 => return Ok(p.remove(0)),
                Ok(other) => return Err(unexpected(other)),
                Err(e @ Error::Unavailable(_)) if Instant::now() + RETRY_PLACE < give_up => {
                    debug!(block = %id, "cannot place yet: {e}");
                    tokio::time::sleep(RETRY_PLACE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `count` more nodes for block `id`, none in `holding` (and the capability to store on
    /// them), asking the master again while it cannot place them, for at most `within`.
    async fn place_more(
        &self,
        id: BlockId,
        len: u64,
        ec: EcParams,
        count: usize,
        holding: Vec<NodeId>,
        within: Duration,
    ) -> Result<(Vec<NodeId>, Cap)> {
        let req = MasterRequest::PlaceMore {
            block: id,
            len,
            count: count as u8,
            holding,
            failing: self.health.failing(),
            code: Some(ec),
        };
        match self.master.call_within(req, within).await? {
            MasterResponse::Placements(mut p) if p.len() == 1 => match p.remove(0) {
                Placement::Place(nodes, cap) if nodes.len() == count => Ok((nodes, cap)),
                other => Err(Error::Protocol(format!("unexpected placement {other:?}"))),
            },
            other => Err(unexpected(other)),
        }
    }

    async fn put_shard(
        &self,
        node: NodeId,
        block: BlockId,
        cap: Cap,
        index: u8,
        hash: [u8; 32],
        data: Bytes,
    ) -> Result<()> {
        let addr = self.addr(node).await?;
        let req = NodeRequest::Put {
            block,
            index,
            hash,
            cap,
        };
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
        cap: Cap,
        index: u8,
        dst: &mut [MaybeUninit<u8>],
    ) -> Result<()> {
        let addr = self.addr(loc.node).await?;
        let req = NodeRequest::Get {
            block,
            index,
            range: None,
            cap,
        };
        let size = dst.len();
        let t = Instant::now();
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
                self.health.succeeded(loc.node, size, t.elapsed());
                Ok(())
            }
            Ok((NodeResponse::Err(e), _)) => Err(e.into()),
            Ok((other, _)) => Err(Error::Protocol(format!("unexpected node answer {other:?}"))),
            Err(e) => {
                self.health.failed(loc.node, &e.to_string());
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
        cap: Cap,
        lo: usize,
        hi: usize,
    ) -> Option<Vec<u8>> {
        if self.cached(&meta.id).is_some() || hi <= lo || meta.is_inline() {
            return None;
        }
        let size = meta.shard_size as usize;
        let k = meta.ec.k as usize;
        if meta.check_shape().is_err() {
            return None;
        }
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
        if k == 1 {
            // A replicated piece: every shard is a full copy; try them in turn.
            let mut order: Vec<usize> = (0..meta.shards.len()).collect();
            order.sort_by_key(|&i| self.health.is_failing(meta.shards[i].node));
            for i in order {
                let got = self
                    .range_of_shard(meta, cap, i, lo, hi - lo, size, true)
                    .await;
                if let Some(mut d) = got {
                    self.keys.apply(&meta.id, lo as u64, &mut d).ok()?;
                    return Some(d);
                }
            }
            return None;
        }
        let fetches = parts
            .iter()
            .map(|&(i, off, len)| self.range_of_shard(meta, cap, i, off, len, size, false));
        let mut out = Vec::with_capacity(hi - lo);
        for d in futures::future::join_all(fetches).await {
            out.extend_from_slice(&d?);
        }
        self.keys.apply(&meta.id, lo as u64, &mut out).ok()?;
        Some(out)
    }

    /// Bytes `[off, off + len)` of shard `i` of a block (None if the node cannot give them;
    /// `any`: try it even if its node failed lately).
    #[allow(clippy::too_many_arguments)]
    async fn range_of_shard(
        self: &Arc<Self>,
        meta: &BlockMeta,
        cap: Cap,
        i: usize,
        off: usize,
        len: usize,
        size: usize,
        any: bool,
    ) -> Option<Vec<u8>> {
        let loc = &meta.shards[i];
        if self.health.is_failing(loc.node) && !any {
            return None;
        }
        let addr = self.addr(loc.node).await.ok()?;
        let req = NodeRequest::Get {
            block: meta.id,
            index: i as u8,
            range: Some((off as u32, len as u32)),
            cap,
        };
        // The node reads its whole shard: give it the time that takes, no more (a range read
        // that fails falls back to a hedged whole-block read).
        let deadline = self.health.deadline(loc.node, size);
        match self
            .dialer
            .call::<_, NodeResponse>(addr, &req, Bytes::new(), len, deadline)
            .await
        {
            Ok((NodeResponse::Shard { hash }, d)) if hash == loc.hash && d.len() == len => Some(d),
            Ok(_) => None,
            Err(e) => {
                self.health.failed(loc.node, &e.to_string());
                None
            }
        }
    }

    /// The content of a block, from the cache or the nodes. Concurrent reads of one block share
    /// one fetch.
    /// `cap`: this mount's capability to read it.
    pub async fn get(self: &Arc<Self>, meta: &BlockMeta, cap: Cap) -> Result<Arc<Vec<u8>>> {
        if let Some(d) = self.cached(&meta.id) {
            metrics::counter!("shardfs_mount_block_cache_hits_total").increment(1);
            return Ok(d);
        }
        metrics::counter!("shardfs_mount_block_cache_misses_total").increment(1);
        let fetch = {
            let mut f = self.fetching.lock().expect("fetching lock");
            f.entry(meta.id)
                .or_insert_with(|| {
                    let this = self.clone();
                    let meta = meta.clone();
                    async move {
                        let r = this.fetch(&meta, cap).await;
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
    pub fn prefetch(self: &Arc<Self>, meta: BlockMeta, cap: Cap) {
        if meta.is_inline()
            || self.cached(&meta.id).is_some()
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
            if let Err(e) = this.get(&meta, cap).await {
                debug!(block = %meta.id, "read-ahead failed: {e}");
            }
        });
    }

    async fn fetch(self: &Arc<Self>, meta: &BlockMeta, cap: Cap) -> Result<Arc<Vec<u8>>> {
        if meta.is_inline() {
            // Read through `get_inline`, which knows the file that names it.
            return match self
                .inline
                .lock()
                .expect("inline lock")
                .pieces_plain(&meta.id)
            {
                Some(d) => Ok(d),
                None => Err(Error::Protocol(format!(
                    "inline piece {} read without its file",
                    meta.id
                ))),
            };
        }
        // Checked before anything is allocated for it: the description came from the master,
        // which got it from some client.
        meta.check_shape()
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        let (k, size, len) = (
            meta.ec.k as usize,
            meta.shard_size as usize,
            meta.len as usize,
        );
        // Data shards are received straight into the block's buffer (one copy out of QUIC's
        // buffers); parity shards, fetched only when a data shard fails or is slow, into
        // their own.
        let mut block: Vec<u8> = Vec::with_capacity(k * size);
        let mut excluded: Vec<usize> = Vec::new();
        for attempt in 0..2 {
            let got = self
                .collect(
                    meta,
                    cap,
                    &excluded,
                    &mut block.spare_capacity_mut()[..k * size],
                )
                .await?;
            if got.data_ok.iter().all(|ok| *ok) {
                // SAFETY: every data shard's region of the spare capacity was filled.
                unsafe { block.set_len(k * size) };
                block.truncate(len);
                return self.decrypt(meta.id, block).await.map(Arc::new);
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
            let (codec, meta2, cluster) =
                (self.codec_for(meta)?, meta.clone(), self.codec.params());
            let keys = self.keys.clone();
            let r = tokio::task::spawn_blocking(move || {
                let arrived: Vec<usize> =
                    (0..shards.len()).filter(|i| shards[*i].is_some()).collect();
                let mut data = codec.decode(&mut shards, meta2.len as usize)?;
                if keys.open_checked(&meta2, &mut data, cluster)? {
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

    /// The plaintext of block `id`'s content as stored. A big block is decrypted on a
    /// blocking thread: on the mount's runtime thread (one by default) a 4 MiB block would
    /// hold up every other request and transfer for a couple of milliseconds.
    async fn decrypt(&self, id: BlockId, mut block: Vec<u8>) -> Result<Vec<u8>> {
        if !self.keys.encrypted() || block.len() < DECRYPT_OFF_THREAD {
            self.keys.apply(&id, 0, &mut block)?;
            return Ok(block);
        }
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || keys.apply(&id, 0, &mut block).map(|()| block))
            .await
            .map_err(|e| Error::Unavailable(format!("decryption failed: {e}")))?
    }

    fn codec_for(&self, meta: &BlockMeta) -> Result<Arc<Codec>> {
        self.codec_of(meta.ec)
    }

    /// Fetch k shards of a block (not those in `excluded`): data shards first, into their
    /// places in `data` (k shard-sized regions), more on failure or after the hedge delay.
    async fn collect(
        self: &Arc<Self>,
        meta: &BlockMeta,
        cap: Cap,
        excluded: &[usize],
        data: &mut [MaybeUninit<u8>],
    ) -> Result<Collected> {
        let k = meta.ec.k as usize;
        let n = meta.shards.len();
        let size = meta.shard_size as usize;
        let mut order: Vec<usize> = (0..n).filter(|i| !excluded.contains(i)).collect();
        order.sort_by_key(|&i| (self.health.is_failing(meta.shards[i].node), i >= k, i));
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
                    Some(dst) => this
                        .get_shard(&loc, id, cap, i as u8, dst)
                        .await
                        .map(|()| None),
                    None => {
                        let mut v = Vec::with_capacity(size);
                        let r = this
                            .get_shard(&loc, id, cap, i as u8, &mut v.spare_capacity_mut()[..size])
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
        // Shards asked for and not answered yet.
        let mut outstanding = vec![false; n];
        while next < k.min(order.len()) {
            outstanding[order[next]] = true;
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
                    outstanding[i] = false;
                    match r {
                        Ok(None) => { got.data_ok[i] = true; have += 1; }
                        Ok(Some(v)) => { got.parity[i] = Some(v); have += 1; }
                        Err(e) => {
                            errors.push(format!("shard {i} on node {}: {e}", meta.shards[i].node));
                            if next < order.len() {
                                outstanding[order[next]] = true;
                                running.push(launch(order[next]));
                                next += 1;
                            }
                        }
                    }
                }
                _ = &mut hedge, if !hedged => {
                    hedged = true;
                    // Some shards came and these did not: their nodes are stalled (the next
                    // blocks try them last) — unless nothing came at all (a slow client).
                    if have > 0 {
                        for (i, _) in outstanding.iter().enumerate().filter(|(_, o)| **o) {
                            self.health.failed(meta.shards[i].node, "read stalled past the hedge delay");
                        }
                    }
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
