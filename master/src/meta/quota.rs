//! Quotas: bytes and inodes per directory (over its subtree) and per uid (cluster-wide).
//!
//! `Q` `d` ino and `Q` `u` uid hold a quota's limits and its usage. Usage changes in the same
//! batch as the change that causes it, so it never drifts, whatever crashes: every operation
//! that writes inode records goes through [`Txn::commit`], which compares each inode's record
//! before and after and moves the difference to the quotas it counts in. An inode counts
//! while it has a name (nlink > 0): 1 inode, and its size if it is a regular file. It counts in
//! its owner's uid quota and in the quota of every directory above it — above the directory
//! its record names as parent (for a file with several links: where it was created or last
//! moved). A change that would take any of them past a limit is refused with EDQUOT; changes
//! that lower usage always pass. A directory moved between directories under different quotas
//! is refused with EXDEV (as CephFS does): its subtree's usage is not known without a walk,
//! and `mv` copies instead. Setting a quota counts the usage it starts from (a walk of the
//! subtree, or of every inode for a uid) under the writer lock.

use super::*;
use shardfs_common::proto::{QuotaInfo, QuotaTarget};
use std::sync::atomic::Ordering;

fn k_quota(t: QuotaTarget) -> Vec<u8> {
    match t {
        QuotaTarget::Dir(ino) => key(b'Q', &[b"d", &ino.to_be_bytes()]),
        QuotaTarget::Uid(uid) => key(b'Q', &[b"u", &uid.to_be_bytes()]),
    }
}

/// Every quota, as stored (a mirror of the `Q` records, changed only after they are written).
#[derive(Default)]
pub(super) struct Quotas {
    dirs: HashMap<Ino, QuotaInfo>,
    uids: HashMap<u32, QuotaInfo>,
}

impl Quotas {
    pub(super) fn load(db: &DB) -> Result<Quotas, MasterError> {
        let mut q = Quotas::default();
        for item in db.prefix_iterator(b"Q") {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(b"Q") {
                break;
            }
            let info: QuotaInfo = dec(&k, &v)?;
            match (&k[1..2], k.len()) {
                (b"d", 10) => {
                    q.dirs
                        .insert(u64::from_be_bytes(k[2..10].try_into().expect("8")), info);
                }
                (b"u", 6) => {
                    q.uids
                        .insert(u32::from_be_bytes(k[2..6].try_into().expect("4")), info);
                }
                _ => return Err(MasterError::Corrupt(format!("quota record {k:02x?}"))),
            }
        }
        Ok(q)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.uids.is_empty()
    }
}

/// What an inode record counts for: (bytes, inodes), if it counts at all.
fn counted(r: &InodeRecord) -> Option<(u64, u64)> {
    (r.attr.nlink > 0).then(|| {
        let bytes = if r.attr.kind == FileKind::File {
            r.attr.size
        } else {
            0
        };
        (bytes, 1)
    })
}

fn over(info: &QuotaInfo, d: (i64, i64)) -> Option<String> {
    let after = |used: u64, delta: i64| used.saturating_add_signed(delta);
    if d.0 > 0 && info.bytes_limit > 0 && after(info.bytes_used, d.0) > info.bytes_limit {
        return Some(format!(
            "{} bytes used of {} allowed, {} more asked",
            info.bytes_used, info.bytes_limit, d.0
        ));
    }
    if d.1 > 0 && info.inodes_limit > 0 && after(info.inodes_used, d.1) > info.inodes_limit {
        return Some(format!(
            "{} inodes used of {} allowed",
            info.inodes_used, info.inodes_limit
        ));
    }
    None
}

fn moved(info: &QuotaInfo, d: (i64, i64)) -> QuotaInfo {
    QuotaInfo {
        bytes_used: info.bytes_used.saturating_add_signed(d.0),
        inodes_used: info.inodes_used.saturating_add_signed(d.1),
        ..*info
    }
}

impl<'a> Txn<'a> {
    /// The parent of directory `dir` as this operation leaves it.
    fn parent_of(&self, dir: Ino) -> Option<Ino> {
        match self.inodes.get(&dir) {
            Some(Some(r)) => Some(r.parent),
            Some(None) => None,
            None => self.meta.inode(dir).ok().map(|r| r.parent),
        }
    }

    /// The quota directories at or above directory `dir`.
    fn quota_dirs(&self, q: &Quotas, mut dir: Ino) -> Vec<Ino> {
        let mut out = Vec::new();
        if q.dirs.is_empty() {
            return out;
        }
        for _ in 0..4096 {
            if q.dirs.contains_key(&dir) {
                out.push(dir);
            }
            if dir == ROOT_INO {
                break;
            }
            match self.parent_of(dir) {
                Some(p) => dir = p,
                None => break,
            }
        }
        out
    }

    /// Move every inode's change of usage to its quotas, refusing with EDQUOT a change past a
    /// limit: the new quota records go into the batch, and are returned to be mirrored once
    /// it is written.
    pub(super) fn account(
        &mut self,
        q: &Quotas,
    ) -> Result<Vec<(QuotaTarget, Option<QuotaInfo>)>, MasterError> {
        let mut dirs: HashMap<Ino, (i64, i64)> = HashMap::new();
        let mut uids: HashMap<u32, (i64, i64)> = HashMap::new();
        let mut gone = Vec::new();
        for (ino, new) in &self.inodes {
            let old = match self.orig.get(ino) {
                Some(o) => o.clone(),
                None => self.meta.inode(*ino).ok(),
            };
            if new.is_none() && q.dirs.contains_key(ino) {
                gone.push(*ino);
            }
            for (rec, sign) in [(old.as_ref(), -1i64), (new.as_ref(), 1)] {
                let Some((r, (bytes, inodes))) = rec.and_then(|r| counted(r).map(|c| (r, c)))
                else {
                    continue;
                };
                let d = (sign * bytes as i64, sign * inodes as i64);
                if q.uids.contains_key(&r.attr.uid) {
                    let e = uids.entry(r.attr.uid).or_default();
                    (e.0, e.1) = (e.0 + d.0, e.1 + d.1);
                }
                for dir in self.quota_dirs(q, r.parent) {
                    let e = dirs.entry(dir).or_default();
                    (e.0, e.1) = (e.0 + d.0, e.1 + d.1);
                }
            }
        }
        let mut out = Vec::new();
        for (dir, d) in dirs.into_iter().filter(|(_, d)| *d != (0, 0)) {
            let info = &q.dirs[&dir];
            if let Some(why) = over(info, d) {
                return Err(fs_err(
                    ErrorCode::Quota,
                    format!("the quota of directory {dir} is reached: {why}"),
                ));
            }
            out.push((QuotaTarget::Dir(dir), Some(moved(info, d))));
        }
        for (uid, d) in uids.into_iter().filter(|(_, d)| *d != (0, 0)) {
            let info = &q.uids[&uid];
            if let Some(why) = over(info, d) {
                return Err(fs_err(
                    ErrorCode::Quota,
                    format!("the quota of uid {uid} is reached: {why}"),
                ));
            }
            out.push((QuotaTarget::Uid(uid), Some(moved(info, d))));
        }
        out.retain(|(t, _)| !matches!(t, QuotaTarget::Dir(d) if gone.contains(d)));
        out.extend(gone.into_iter().map(|d| (QuotaTarget::Dir(d), None)));
        for (t, info) in &out {
            match info {
                Some(i) => self.batch.put(k_quota(*t), enc(i)),
                None => self.batch.delete(k_quota(*t)),
            }
        }
        Ok(out)
    }

    /// Refuse (EXDEV) moving directory entry `ino` from `from` to `to` when they are under
    /// different directory quotas (its subtree's usage would have to move with it).
    pub(super) fn check_move(&self, from: Ino, to: Ino) -> Result<(), MasterError> {
        if from == to || !self.meta.quotas_on.load(Ordering::Relaxed) {
            return Ok(());
        }
        let q = self.meta.quotas.lock().expect("quotas lock");
        if self.quota_dirs(&q, from) != self.quota_dirs(&q, to) {
            return Err(fs_err(
                ErrorCode::CrossDevice,
                "a directory cannot move between directories under different quotas (copy it)",
            ));
        }
        Ok(())
    }
}

impl Meta {
    pub(super) fn mirror_quotas(
        &self,
        q: &mut Quotas,
        done: Vec<(QuotaTarget, Option<QuotaInfo>)>,
    ) {
        for (t, info) in done {
            match (t, info) {
                (QuotaTarget::Dir(d), Some(i)) => {
                    q.dirs.insert(d, i);
                }
                (QuotaTarget::Dir(d), None) => {
                    q.dirs.remove(&d);
                }
                (QuotaTarget::Uid(u), Some(i)) => {
                    q.uids.insert(u, i);
                }
                (QuotaTarget::Uid(u), None) => {
                    q.uids.remove(&u);
                }
            }
        }
        self.quotas_on.store(!q.is_empty(), Ordering::Relaxed);
    }

    /// The quota of `t`, if one is set.
    pub fn quota(&self, t: QuotaTarget) -> Option<QuotaInfo> {
        let q = self.quotas.lock().expect("quotas lock");
        match t {
            QuotaTarget::Dir(d) => q.dirs.get(&d).copied(),
            QuotaTarget::Uid(u) => q.uids.get(&u).copied(),
        }
    }

    /// The nearest directory quota at or above `ino` (a file: its parent's), for `df`.
    pub fn quota_over(&self, ino: Ino) -> Result<Option<QuotaInfo>, MasterError> {
        if !self.quotas_on.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let rec = self.inode(ino)?;
        let mut dir = if rec.attr.kind == FileKind::Dir {
            ino
        } else {
            rec.parent
        };
        let q = self.quotas.lock().expect("quotas lock");
        for _ in 0..4096 {
            if let Some(i) = q.dirs.get(&dir) {
                return Ok(Some(*i));
            }
            if dir == ROOT_INO {
                break;
            }
            dir = self.inode(dir)?.parent;
        }
        Ok(None)
    }

    /// Set the limits of quota `t` (0: none; both 0 removes it). A new quota starts from the
    /// usage counted now.
    pub fn set_quota(
        &self,
        t: QuotaTarget,
        bytes_limit: u64,
        inodes_limit: u64,
    ) -> Result<Option<QuotaInfo>, MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let mut q = self.quotas.lock().expect("quotas lock");
        let current = match t {
            QuotaTarget::Dir(d) => q.dirs.get(&d).copied(),
            QuotaTarget::Uid(u) => q.uids.get(&u).copied(),
        };
        let mut b = WriteBatch::default();
        let info = if bytes_limit == 0 && inodes_limit == 0 {
            b.delete(k_quota(t));
            None
        } else {
            let (bytes_used, inodes_used) = match current {
                Some(c) => (c.bytes_used, c.inodes_used),
                None => self.usage_of(t)?,
            };
            let info = QuotaInfo {
                bytes_limit,
                inodes_limit,
                bytes_used,
                inodes_used,
            };
            b.put(k_quota(t), enc(&info));
            Some(info)
        };
        self.write(b)?;
        self.mirror_quotas(&mut q, vec![(t, info)]);
        Ok(info)
    }

    /// What `t` uses now: a walk of a directory's subtree, or of every inode for a uid.
    fn usage_of(&self, t: QuotaTarget) -> Result<(u64, u64), MasterError> {
        let (mut bytes, mut inodes) = (0u64, 0u64);
        match t {
            QuotaTarget::Uid(uid) => {
                for item in self.iter_within(b"I", b"I") {
                    let (k, v) = item.map_err(db_err)?;
                    if !k.starts_with(b"I") {
                        break;
                    }
                    let r = dec_inode(&k, &v)?;
                    if let Some((b, i)) = counted(&r).filter(|_| r.attr.uid == uid) {
                        (bytes, inodes) = (bytes + b, inodes + i);
                    }
                }
            }
            QuotaTarget::Dir(dir) => {
                if self.inode(dir)?.attr.kind != FileKind::Dir {
                    return Err(fs_err(ErrorCode::NotDir, "a quota is set on a directory"));
                }
                let mut queue = vec![dir];
                while let Some(d) = queue.pop() {
                    let p = k_dentry_prefix(d);
                    for item in self.iter_within(&p, &p) {
                        let (k, v) = item.map_err(db_err)?;
                        if !k.starts_with(&p) {
                            break;
                        }
                        let e: DentryRecord = dec(&k, &v)?;
                        let r = self.inode(e.ino)?;
                        if r.attr.kind == FileKind::Dir {
                            queue.push(e.ino);
                        }
                        // A file with several links counts where its record says it is.
                        if let Some((b, i)) = counted(&r).filter(|_| r.parent == d) {
                            (bytes, inodes) = (bytes + b, inodes + i);
                        }
                    }
                }
            }
        }
        Ok((bytes, inodes))
    }
}
