//! Blocks as the cluster holds them: descriptions, reference counts, the collector's queue, shards lost and moved.

use super::*;

impl Meta {
    /// Take unreferenced blocks whose grace period is over out of the store, atomically with
    /// respect to placement and commits: each one is forgotten and added to `collecting`, and
    /// the caller deletes its shards. A block referenced again meanwhile is kept.
    pub fn gc_claim(
        &self,
        grace_secs: u64,
        limit: usize,
        collecting: &Mutex<HashSet<BlockId>>,
    ) -> Result<Vec<GcRecord>, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let now = unix_now();
        let mut batch = WriteBatch::default();
        let mut out = Vec::new();
        for (_, g) in self.scan::<GcRecord>(b"G", b"G", limit)? {
            if g.since + grace_secs > now {
                continue;
            }
            let id = g.meta.id;
            batch.delete(k_gc(&id));
            if self
                .get::<BlockRecord>(&k_block(&id))?
                .is_some_and(|b| b.refs > 0)
            {
                continue;
            }
            batch.delete(k_block(&id));
            if g.meta.is_inline() {
                // Nothing on the nodes: the bytes go with the record.
                batch.delete(k_inline(&id));
            }
            collecting.lock().expect("collecting lock").insert(id);
            out.push(g);
        }
        self.db.write(batch).map_err(db_err)?;
        Ok(out)
    }

    /// What a client about to store block `id` needs to know: the block's description if the
    /// cluster holds it (so nothing is uploaded), or None. An unreferenced block still waiting
    /// for collection is revived (its grace period restarts) instead of being stored twice.
    pub fn place_lookup(
        &self,
        id: &BlockId,
        collecting: &Mutex<HashSet<BlockId>>,
    ) -> Result<Option<BlockMeta>, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        if collecting.lock().expect("collecting lock").contains(id) {
            return Err(MasterError::Fs(Error::Unavailable(format!(
                "block {id} is being deleted; retry"
            ))));
        }
        if let Some(b) = self.get::<BlockRecord>(&k_block(id))? {
            return Ok(Some(b.meta));
        }
        if let Some(g) = self.get::<GcRecord>(&k_gc(id))? {
            let mut batch = WriteBatch::default();
            batch.put(
                k_block(id),
                enc(&BlockRecord {
                    meta: g.meta.clone(),
                    refs: 0,
                }),
            );
            batch.put(
                k_gc(id),
                enc(&GcRecord {
                    meta: g.meta.clone(),
                    since: unix_now(),
                }),
            );
            self.write(batch)?;
            return Ok(Some(g.meta));
        }
        Ok(None)
    }

    /// Record shards found corrupt or missing on `node`, for repair. Shards the block map does
    /// not place on that node (already moved, or unknown blocks) are ignored. Returns how many
    /// were recorded.
    pub fn add_lost(&self, node: NodeId, shards: &[(BlockId, u8)]) -> Result<usize, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let mut per_block: HashMap<BlockId, Vec<u8>> = HashMap::new();
        for (b, i) in shards {
            per_block.entry(*b).or_default().push(*i);
        }
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for (b, idx) in per_block {
            let Some(rec) = self.get::<BlockRecord>(&k_block(&b))? else {
                continue;
            };
            let mut lost = self.get::<LostRecord>(&k_lost(&b))?.unwrap_or_default();
            let before = lost.shards.len();
            for i in idx {
                let here = rec
                    .meta
                    .shards
                    .get(i as usize)
                    .is_some_and(|s| s.node == node);
                if here && !lost.shards.contains(&(i, node)) {
                    lost.shards.push((i, node));
                }
            }
            if lost.shards.len() > before {
                n += lost.shards.len() - before;
                batch.put(k_lost(&b), enc(&lost));
            }
        }
        self.write(batch)?;
        Ok(n)
    }

    /// Every block with shards recorded as lost.
    pub fn lost(&self) -> Result<HashMap<BlockId, LostRecord>, MasterError> {
        Ok(self
            .scan::<LostRecord>(b"R", b"R", usize::MAX)?
            .into_iter()
            .filter_map(|(k, v)| Some((BlockId(k[1..].try_into().ok()?), v)))
            .collect())
    }

    /// Up to `limit` blocks of the block map after `after`, in id order.
    pub fn blocks_page(
        &self,
        after: Option<&BlockId>,
        limit: usize,
    ) -> Result<Vec<BlockRecord>, MasterError> {
        let start = match after {
            Some(id) => {
                let mut k = k_block(id);
                k.push(0);
                k
            }
            None => vec![b'B'],
        };
        Ok(self
            .scan::<BlockRecord>(b"B", &start, limit)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Point shards of a block at the nodes they were rebuilt on: each move (index, old node,
    /// new node) applies only if the shard is still where the repair found it. Clears those
    /// shards from the lost record. Returns how many moves applied.
    pub fn relocate(
        &self,
        id: &BlockId,
        moves: &[(u8, NodeId, NodeId)],
    ) -> Result<usize, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let Some(mut rec) = self.get::<BlockRecord>(&k_block(id))? else {
            return Ok(0);
        };
        let mut lost = self.get::<LostRecord>(&k_lost(id))?.unwrap_or_default();
        let mut applied = 0;
        for (i, old, new) in moves {
            if let Some(s) = rec.meta.shards.get_mut(*i as usize) {
                if s.node == *old {
                    s.node = *new;
                    applied += 1;
                }
            }
            lost.shards.retain(|(li, ln)| !(li == i && ln == old));
        }
        let mut batch = WriteBatch::default();
        batch.put(k_block(id), enc(&rec));
        if lost.shards.is_empty() {
            batch.delete(k_lost(id));
        } else {
            batch.put(k_lost(id), enc(&lost));
        }
        self.write(batch)?;
        Ok(applied)
    }

    /// Forget lost-shard records of blocks no longer in the block map.
    pub fn drop_lost(&self, id: &BlockId) -> Result<(), MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        if self.get::<BlockRecord>(&k_block(id))?.is_none() {
            self.db.delete(k_lost(id)).map_err(db_err)?;
        }
        Ok(())
    }

    /// Whether the block map or the collector knows block `id`.
    /// The recorded description of a stored block.
    pub fn block_meta(&self, id: &BlockId) -> Result<Option<BlockMeta>, MasterError> {
        Ok(self.get::<BlockRecord>(&k_block(id))?.map(|r| r.meta))
    }

    /// Replace a stored block's description (keeping its references) with `m`, which a node
    /// verified. The shards of the old description are left for the scrubber.
    pub fn replace_description(&self, m: &BlockMeta) -> Result<bool, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let key = k_block(&m.id);
        let Some(mut rec) = self.get::<BlockRecord>(&key)? else {
            return Ok(false);
        };
        rec.meta = m.clone();
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_opt(key, enc(&rec), &wo).map_err(db_err)?;
        Ok(true)
    }

    pub fn knows_block(&self, id: &BlockId) -> Result<bool, MasterError> {
        Ok(self.get::<BlockRecord>(&k_block(id))?.is_some()
            || self.get::<GcRecord>(&k_gc(id))?.is_some())
    }

    /// Every (block, index) the block map or the collector places on `node`.
    pub fn shards_on(&self, node: NodeId) -> Result<HashSet<(BlockId, u8)>, MasterError> {
        let mut out = HashSet::new();
        for (_, b) in self.scan::<BlockRecord>(b"B", b"B", usize::MAX)? {
            for (i, s) in b.meta.shards.iter().enumerate() {
                if s.node == node {
                    out.insert((b.meta.id, i as u8));
                }
            }
        }
        for (_, g) in self.scan::<GcRecord>(b"G", b"G", usize::MAX)? {
            for (i, s) in g.meta.shards.iter().enumerate() {
                if s.node == node {
                    out.insert((g.meta.id, i as u8));
                }
            }
        }
        Ok(out)
    }
}
