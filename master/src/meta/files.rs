//! A file's content: opening its block map, commits (with stale-base handling and conflicted copies), truncates, and files kept while open after their last unlink.

use super::*;
use shardfs_common::{IdMap, IdSet};

impl Meta {
    /// Who made the current version `version` of `ino`, if this master saw it.
    pub fn writer_of(&self, ino: Ino, version: u64) -> Option<u64> {
        match self.writers.lock().expect("writers lock").get(&ino) {
            Some(&(v, s)) if v == version => Some(s),
            _ => None,
        }
    }

    /// Record that `session` made version `version` of `ino`.
    pub(super) fn wrote(&self, ino: Ino, version: u64, session: u64) {
        let mut w = self.writers.lock().expect("writers lock");
        if w.len() >= 100_000 {
            w.clear();
        }
        w.insert(ino, (version, session));
    }

    /// True if `session` made the current version of `ino`.
    pub(super) fn made_by(&self, ino: Ino, version: u64, session: u64) -> bool {
        session != 0
            && self.writers.lock().expect("writers lock").get(&ino) == Some(&(version, session))
    }

    pub fn open_file(&self, ino: Ino) -> Result<(Attr, Vec<Slot>), MasterError> {
        let rec = self.inode(ino)?;
        let slots = self.slot_records(ino)?;
        let refs: Vec<Vec<BlockId>> = slots.iter().map(|(_, s)| s.refs()).collect();
        let keys: Vec<Vec<u8>> = refs.iter().flatten().map(k_block).collect();
        let mut metas = self.db.multi_get(&keys).into_iter();
        let mut out = Vec::with_capacity(slots.len());
        for ((index, s), ids) in slots.into_iter().zip(refs) {
            let mut found = HashMap::new();
            for id in ids {
                let raw = metas.next().expect("one answer per key").map_err(db_err)?;
                let raw = raw.ok_or_else(|| {
                    MasterError::Corrupt(format!("inode {ino} slot {index}: block {id} missing"))
                })?;
                let b: BlockRecord = dec(b"B", &raw)?;
                found.insert(id, b.meta);
            }
            let pieces = extent::pieces(&s.extents)
                .iter()
                .map(|p| (found[p].clone(), Default::default()))
                .collect();
            out.push(Slot {
                index,
                used: s.used,
                block: s.block.map(|b| found[&b].clone()),
                cap: Default::default(),
                extents: s.extents,
                pieces,
            });
        }
        Ok((rec.attr, out))
    }

    /// Make `slots` part of file `ino` with its new size and mtime, in one batch.
    /// Make written blocks part of file `ino`. If `base` is given and the file's content
    /// version has moved past it, the blocks go to a new file beside it instead (a conflicted
    /// copy named after `host` and the date), and the original keeps its content.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        ino: Ino,
        slots: &[NewSlot],
        pieces: &[BlockMeta],
        size: u64,
        mtime: Timespec,
        cut: Option<u64>,
        base: Option<u64>,
        mergeable: bool,
        session: u64,
        host: &str,
    ) -> Result<Committed, MasterError> {
        let none = HashMap::new();
        self.commit_with(
            ino, slots, pieces, size, mtime, cut, base, mergeable, session, host, &none,
        )
    }

    /// [`Meta::commit`] with the bytes of the new inline pieces the commit names (their ids
    /// checked against their content by the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn commit_with(
        &self,
        ino: Ino,
        slots: &[NewSlot],
        pieces: &[BlockMeta],
        size: u64,
        mtime: Timespec,
        cut: Option<u64>,
        base: Option<u64>,
        mergeable: bool,
        session: u64,
        host: &str,
        inline: &HashMap<BlockId, Vec<u8>>,
    ) -> Result<Committed, MasterError> {
        let bs = self.cluster.block_size;
        let _w = self.writer.lock().expect("writer lock");
        let mut txn = Txn::new(self);
        let mut rec = txn.inode(ino)?;
        if rec.attr.kind != FileKind::File {
            return Err(fs_err(ErrorCode::Invalid, "not a regular file"));
        }
        let mut copy = None;
        let stale = base.is_some_and(|b| b != rec.attr.version)
            && rec.attr.nlink > 0
            && !self.made_by(ino, rec.attr.version, session);
        if stale && mergeable {
            return Ok(Committed::Stale(rec.attr));
        }
        if stale {
            let original = rec.attr.clone();
            let (name, new_rec) = self.conflict_copy(&mut txn, &rec, host, mtime)?;
            copy = Some((original, name));
            rec = new_rec;
        }
        let ino = rec.attr.ino;
        // A block uploaded again while another client committed the same content keeps the
        // first description; the second copy's shards on other nodes are left for the scrubber.
        if pieces.len() > 4 * extent::MAX_EXTENTS * slots.len().max(1) {
            return Err(fs_err(ErrorCode::Invalid, "too many piece descriptions"));
        }
        let described: IdMap<&BlockMeta> = pieces.iter().map(|m| (m.id, m)).collect();
        let code = self.code_of(ino)?;
        // Blocks in the file's code, or another storable one (a writer that learnt the file's
        // policy before it changed); those are rewritten by sealing.
        let check = |m: &BlockMeta| match self.storable(m.ec) || m.is_inline() {
            true => m.check(m.ec, bs),
            false => Err(Error::invalid(format!(
                "block {}: code {} cannot be stored",
                m.id, m.ec
            ))),
        };
        // A new inline piece comes with its bytes (checked against its id by the caller),
        // written in this commit's batch beside its block record.
        let keep_inline = |txn: &mut Txn, m: &BlockMeta| -> Result<(), MasterError> {
            if !m.is_inline() {
                return Ok(());
            }
            match inline.get(&m.id) {
                Some(b) if b.len() as u64 == m.len => {
                    txn.batch.put(k_inline(&m.id), enc_inline(b));
                    Ok(())
                }
                // Committed before and not collected yet (its block record went to `G`).
                None if self
                    .inline_bytes(&m.id)?
                    .is_some_and(|b| b.len() as u64 == m.len) =>
                {
                    Ok(())
                }
                _ => Err(fs_err(
                    ErrorCode::Invalid,
                    format!("inline piece {} is not in the commit", m.id),
                )),
            }
        };
        let mut recode = false;
        let mut written: HashMap<u64, SlotRecord> = HashMap::new();
        // Pieces named before and after by unchanged extents: known to be stored.
        let mut kept_pieces = IdSet::default();
        for s in slots {
            let bad = |why: String| fs_err(ErrorCode::Invalid, format!("slot {}: {why}", s.index));
            if s.used > bs {
                return Err(bad("larger than the block size".into()));
            }
            extent::check(&s.extents, bs).map_err(bad)?;
            if s.id.is_none() && (s.meta.is_some() || s.used > 0) {
                return Err(bad("a description or used bytes without a block".into()));
            }
            // Bytes past the file's end are not part of the file: if it grows again, that
            // range must read as zeros.
            let new = SlotRecord {
                block: s.id,
                used: s.used,
                extents: s.extents.clone(),
            }
            .cut(size.saturating_sub(s.index * bs));
            let key = k_slot(ino, s.index);
            // The slot's previous content: set earlier in this same commit, or as stored.
            let old = match written.remove(&s.index) {
                Some(r) => Some(r),
                None => self.slot_record(&key)?,
            };
            // A piece the slot named before, through the very same extents (and the same
            // base block, no further used), keeps its one reference from this slot and was
            // checked when those extents were committed: a slot grown by small appends
            // costs a commit its new pieces only, not all of them again.
            let kept = kept_refs(old.as_ref(), &new);
            // How far into each piece the slot's new extents reach.
            let mut reach: IdMap<u64> = IdMap::default();
            for e in new.extents.iter().filter(|e| !kept.contains(&e.piece)) {
                let end = e.piece_off as u64 + e.len as u64;
                let r = reach.entry(e.piece).or_default();
                *r = (*r).max(end);
            }
            for id in new.refs().into_iter().filter(|id| !kept.contains(id)) {
                let own = s.meta.as_ref().filter(|_| Some(id) == s.id);
                let len = match (txn.block(&id)?, own.or(described.get(&id).copied())) {
                    (Some(mut b), _) => {
                        b.refs += 1;
                        let len = b.meta.len;
                        txn.blocks.insert(id, Some(b));
                        len
                    }
                    (None, Some(m)) => {
                        if m.id != id {
                            return Err(bad("inconsistent block description".into()));
                        }
                        check(m)?;
                        keep_inline(&mut txn, m)?;
                        recode |= Some(id) == s.id && m.ec != code;
                        txn.blocks.insert(
                            id,
                            Some(BlockRecord {
                                meta: m.clone(),
                                refs: 1,
                            }),
                        );
                        m.len
                    }
                    // Unreferenced but not yet collected (a writer's view from before a
                    // seal or another mount's overwrite): referenced again, it stays.
                    (None, None) => match self.get::<GcRecord>(&k_gc(&id))? {
                        Some(g) => {
                            let len = g.meta.len;
                            txn.blocks.insert(
                                id,
                                Some(BlockRecord {
                                    meta: g.meta,
                                    refs: 1,
                                }),
                            );
                            len
                        }
                        None => {
                            return Err(fs_err(
                                ErrorCode::NotFound,
                                format!("block {id} is no longer stored; upload it again"),
                            ))
                        }
                    },
                };
                let past = reach.get(&id).is_some_and(|&end| end > len);
                if (Some(id) == s.id && s.used > len) || past {
                    return Err(bad(format!("refers past the end of block {id}")));
                }
            }
            if let Some(old) = old {
                for id in old.refs().into_iter().filter(|id| !kept.contains(id)) {
                    txn.unref(&id)?;
                }
                kept_pieces.extend(kept);
            }
            txn.batch.put(key, enc_slot(&new));
            written.insert(s.index, new);
        }
        // Extents wait for sealing: the quiet period starts again.
        if recode || written.values().any(|r| !r.extents.is_empty()) {
            txn.batch.put(k_frag(ino), enc(&unix_now()));
        }
        // Pieces stored for this file whose bytes were all overwritten before this commit:
        // known now, so they are collected.
        for m in pieces.iter().filter(|m| !kept_pieces.contains(&m.id)) {
            if txn.block(&m.id)?.is_none() {
                check(m)?;
                keep_inline(&mut txn, m)?;
                txn.blocks.insert(
                    m.id,
                    Some(BlockRecord {
                        meta: m.clone(),
                        refs: 0,
                    }),
                );
            }
        }
        // Stored blocks past the new size, or past a truncate of the open file since its last
        // commit (`cut`), are gone; the blocks this commit writes replace theirs.
        let cut = cut.filter(|_| copy.is_none());
        if size < rec.attr.size || cut.is_some_and(|c| c < rec.attr.size) {
            let to = cut.map_or(size, |c| c.min(size));
            let written: HashSet<u64> = written.keys().copied().collect();
            self.cut_slots(&mut txn, ino, to, &written)?;
        }
        // Blocks written in this commit entirely past the new size (a truncate raced the
        // upload) are not kept: they would reappear if the file grew again.
        for (index, r) in &written {
            if index * bs >= size || r.is_empty() {
                txn.batch.delete(k_slot(ino, *index));
                txn.unref_slot(r)?;
            }
        }
        rec.attr.size = size;
        rec.attr.mtime = mtime;
        rec.attr.ctime = mtime;
        rec.attr.version += 1;
        let attr = rec.attr.clone();
        txn.put_inode(rec);
        let changes = txn.commit()?;
        if copy.is_none() {
            self.wrote(ino, attr.version, session);
        }
        Ok(match copy {
            None => Committed::Done(attr),
            Some((original, name)) => Committed::Copy {
                original,
                name,
                copy: attr,
                changes,
            },
        })
    }

    /// Drop the stored blocks of `ino` past `size` and shorten the one across it (the
    /// slots in `skip` are being replaced in the same batch).
    pub(super) fn cut_slots(
        &self,
        txn: &mut Txn,
        ino: Ino,
        size: u64,
        skip: &HashSet<u64>,
    ) -> Result<(), MasterError> {
        let bs = self.cluster.block_size;
        for (index, s) in self.slot_records(ino)? {
            if skip.contains(&index) {
                continue;
            }
            if index * bs >= size {
                txn.batch.delete(k_slot(ino, index));
                txn.unref_slot(&s)?;
            } else {
                let trimmed = s.cut(size - index * bs);
                if trimmed != s {
                    // Pieces no extent names any more lose this slot's reference.
                    for id in s.refs() {
                        if !trimmed.refs().contains(&id) {
                            txn.unref(&id)?;
                        }
                    }
                    txn.batch.put(k_slot(ino, index), enc_slot(&trimmed));
                }
            }
        }
        Ok(())
    }

    /// A new file beside `rec` (same directory, owner and mode) for a writer whose change
    /// could not be merged: "NAME (conflicted copy from HOST YYYY-MM-DD).EXT".
    pub(super) fn conflict_copy(
        &self,
        txn: &mut Txn,
        rec: &InodeRecord,
        host: &str,
        now: Timespec,
    ) -> Result<(Vec<u8>, InodeRecord), MasterError> {
        let parent = rec.parent;
        let name = self
            .dentry_name(parent, rec.attr.ino)?
            .unwrap_or_else(|| format!("inode {}", rec.attr.ino).into_bytes());
        let mut copy_name = Vec::new();
        for n in 1.. {
            copy_name = conflicted_name(&name, host, now.secs, n);
            if self.dentry(parent, &copy_name)?.is_none() {
                break;
            }
        }
        let ino = self.alloc_ino(&mut txn.batch);
        let attr = Attr {
            ino,
            nlink: 1,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            version: 0,
            ..rec.attr.clone()
        };
        txn.batch.put(
            k_dentry(parent, &copy_name),
            enc(&DentryRecord {
                ino,
                kind: FileKind::File,
            }),
        );
        let mut p = txn.inode(parent)?;
        p.attr.mtime = now;
        p.attr.ctime = now;
        txn.put_inode(p);
        Ok((
            copy_name,
            InodeRecord {
                attr,
                parent,
                target: None,
            },
        ))
    }

    /// Whether some session has `ino` open.
    pub fn is_held(&self, ino: Ino) -> bool {
        self.held.lock().expect("held lock").contains_key(&ino)
    }

    /// One more session has `ino` open.
    pub fn hold(&self, ino: Ino) {
        *self.held.lock().expect("held lock").entry(ino).or_insert(0) += 1;
    }

    /// A session closed `ino`: if it was the last holder of an orphan, the orphan goes.
    pub fn unhold(&self, ino: Ino) -> Result<(), MasterError> {
        {
            let mut held = self.held.lock().expect("held lock");
            match held.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return Ok(());
                }
                Some(_) => {
                    held.remove(&ino);
                }
                None => return Ok(()),
            }
        }
        self.collect_orphan(ino)
    }

    /// Delete orphan `ino` unless a session holds it again.
    pub fn collect_orphan(&self, ino: Ino) -> Result<(), MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        if self.is_held(ino) || self.get::<()>(&k_orphan(ino))?.is_none() {
            return Ok(());
        }
        let mut txn = Txn::new(self);
        match txn.inode(ino) {
            Ok(rec) if rec.attr.nlink == 0 => txn.delete_inode(ino)?,
            Ok(_) => txn.batch.delete(k_orphan(ino)),
            Err(_) => txn.batch.delete(k_orphan(ino)),
        }
        txn.commit().map(drop)
    }

    /// Every orphan on record (after a restart: kept until their mounts had time to come back).
    pub fn orphans(&self) -> Result<Vec<Ino>, MasterError> {
        Ok(self
            .keys(b"O")?
            .iter()
            .filter_map(|k| Some(Ino::from_be_bytes(k.get(1..9)?.try_into().ok()?)))
            .collect())
    }
}

/// The blocks `new` refers to exactly as `old` did: the same base block with no more of it
/// used, or a piece every one of whose extents in `new` is an extent of `old` (so it is
/// stored, referenced by this slot, and its extents were checked against its length).
fn kept_refs(old: Option<&SlotRecord>, new: &SlotRecord) -> IdSet {
    let Some(old) = old else {
        return IdSet::default();
    };
    let old_extents: foldhash::HashSet<&extent::Extent> = old.extents.iter().collect();
    let old_refs: IdSet = old.refs().into_iter().collect();
    let mut changed = IdSet::default();
    for e in &new.extents {
        if !old_extents.contains(e) {
            changed.insert(e.piece);
        }
    }
    if let Some(b) = new.block {
        if old.block != Some(b) || new.used > old.used {
            changed.insert(b);
        }
    }
    new.refs()
        .into_iter()
        .filter(|id| old_refs.contains(id) && !changed.contains(id))
        .collect()
}
