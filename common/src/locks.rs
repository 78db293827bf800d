//! Advisory locks: POSIX (fcntl) byte-range locks and flock, as the master keeps them for every
//! mount and as each mount remembers the ones it holds (to claim them again after a master
//! restart). One table type serves both.
//!
//! A lock belongs to an owner: the mount's session and the kernel's lock owner (a process's
//! file table for fcntl, an open file for flock). Setting a lock replaces whatever the same
//! owner held in that range; unlocking removes that part of the owner's ranges, splitting them
//! where needed. Two locks conflict when they overlap, belong to different owners and at least
//! one of them is a write lock.

use crate::ids::Ino;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockOwner {
    /// The mount's session with the master.
    pub session: u64,
    /// The kernel's lock owner on that mount.
    pub owner: u64,
}

/// A lock (or an unlock request) on bytes `start..=end` of inode `ino`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    pub ino: Ino,
    pub owner: LockOwner,
    pub start: u64,
    /// Inclusive; `u64::MAX` (or the kernel's OFFSET_MAX) means "to the end of the file".
    pub end: u64,
    pub kind: LockKind,
    /// The locking process on its own host (reported by F_GETLK).
    pub pid: u32,
}

impl LockRange {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    /// Would this lock and `other` exclude each other?
    pub fn conflicts(&self, other: &LockRange) -> bool {
        self.ino == other.ino
            && self.owner != other.owner
            && self.overlaps(other.start, other.end)
            && (self.kind == LockKind::Write || other.kind == LockKind::Write)
    }
}

#[derive(Default, Debug)]
pub struct LockTable {
    by_ino: HashMap<Ino, Vec<LockRange>>,
}

impl LockTable {
    /// The first lock that `l` (a read or write request) conflicts with.
    pub fn conflict(&self, l: &LockRange) -> Option<&LockRange> {
        if l.kind == LockKind::Unlock {
            return None;
        }
        self.by_ino.get(&l.ino)?.iter().find(|h| h.conflicts(l))
    }

    /// Set or unlock `l` if nothing conflicts; otherwise return the conflicting lock.
    pub fn try_set(&mut self, l: LockRange) -> Result<(), LockRange> {
        if let Some(c) = self.conflict(&l) {
            return Err(c.clone());
        }
        self.apply(l);
        Ok(())
    }

    /// Set or unlock `l` without checking for conflicts.
    pub fn apply(&mut self, l: LockRange) {
        let list = self.by_ino.entry(l.ino).or_default();
        // Cut the owner's existing ranges out of [start, end].
        let mut kept = Vec::with_capacity(list.len() + 1);
        for h in list.drain(..) {
            if h.owner != l.owner || !h.overlaps(l.start, l.end) {
                kept.push(h);
                continue;
            }
            if h.start < l.start {
                kept.push(LockRange {
                    end: l.start - 1,
                    ..h.clone()
                });
            }
            if h.end > l.end {
                kept.push(LockRange {
                    start: l.end + 1,
                    ..h
                });
            }
        }
        if l.kind != LockKind::Unlock {
            // Merge with the owner's adjacent ranges of the same kind.
            let (mut start, mut end) = (l.start, l.end);
            kept.retain(|h| {
                let adjacent = h.owner == l.owner
                    && h.kind == l.kind
                    && (h.end.checked_add(1) == Some(start) || end.checked_add(1) == Some(h.start));
                if adjacent {
                    start = start.min(h.start);
                    end = end.max(h.end);
                }
                !adjacent
            });
            kept.push(LockRange { start, end, ..l });
        }
        if kept.is_empty() {
            self.by_ino.remove(&l.ino);
        } else {
            *list = kept;
        }
    }

    /// Drop every lock of `owner` on `ino`; true if there was one.
    pub fn release_owner(&mut self, ino: Ino, owner: LockOwner) -> bool {
        let Some(list) = self.by_ino.get_mut(&ino) else {
            return false;
        };
        let before = list.len();
        list.retain(|h| h.owner != owner);
        let released = list.len() != before;
        if list.is_empty() {
            self.by_ino.remove(&ino);
        }
        released
    }

    /// Drop every lock of a session (its mount is gone); true if there was one.
    pub fn release_session(&mut self, session: u64) -> bool {
        let mut released = false;
        self.by_ino.retain(|_, list| {
            let before = list.len();
            list.retain(|h| h.owner.session != session);
            released |= list.len() != before;
            !list.is_empty()
        });
        released
    }

    /// True if `owner` holds any lock on `ino`.
    pub fn holds(&self, ino: Ino, owner: LockOwner) -> bool {
        self.by_ino
            .get(&ino)
            .is_some_and(|l| l.iter().any(|h| h.owner == owner))
    }

    pub fn all(&self) -> impl Iterator<Item = &LockRange> {
        self.by_ino.values().flatten()
    }

    pub fn len(&self) -> usize {
        self.by_ino.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(owner: u64, start: u64, end: u64, kind: LockKind) -> LockRange {
        LockRange {
            ino: 7,
            owner: LockOwner { session: 1, owner },
            start,
            end,
            kind,
            pid: 0,
        }
    }

    #[test]
    fn readers_share_writers_exclude() {
        let mut t = LockTable::default();
        assert!(t.try_set(l(1, 0, 99, LockKind::Read)).is_ok());
        assert!(t.try_set(l(2, 50, 150, LockKind::Read)).is_ok());
        let c = t.try_set(l(3, 90, 95, LockKind::Write)).unwrap_err();
        assert!(c.owner.owner == 1 || c.owner.owner == 2);
        // Past both read locks a write lock is fine.
        assert!(t.try_set(l(3, 151, u64::MAX, LockKind::Write)).is_ok());
        // The same owner may upgrade its own range when nobody else overlaps it.
        assert!(t.try_set(l(2, 100, 150, LockKind::Write)).is_ok());
    }

    #[test]
    fn unlock_splits_and_lock_merges() {
        let mut t = LockTable::default();
        t.apply(l(1, 0, 99, LockKind::Write));
        t.apply(l(1, 40, 59, LockKind::Unlock));
        let mut r: Vec<(u64, u64)> = t.all().map(|h| (h.start, h.end)).collect();
        r.sort();
        assert_eq!(r, vec![(0, 39), (60, 99)]);
        assert!(t.try_set(l(2, 40, 59, LockKind::Write)).is_ok());
        assert!(t.try_set(l(2, 39, 39, LockKind::Read)).is_err());
        t.apply(l(1, 40, 59, LockKind::Unlock));
        t.release_owner(
            7,
            LockOwner {
                session: 1,
                owner: 2,
            },
        );
        t.apply(l(1, 40, 59, LockKind::Write));
        let r: Vec<(u64, u64)> = t.all().map(|h| (h.start, h.end)).collect();
        assert_eq!(r, vec![(0, 99)], "adjacent ranges of one owner merge");
        assert!(t.release_session(1));
        assert!(t.is_empty());
    }
}
