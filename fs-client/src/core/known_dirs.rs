//! Directories whose every name this mount knows, with the inode and kind each leads to: a
//! lookup of a name that is not there is answered without asking the master (the lookup
//! before every create, mkdir, rename target and symlink of a program filling a directory),
//! and the directory's listing comes from here, page by page (`Core::known_listing`).
//!
//! A directory is known once this mount made it (empty) or listed it whole in one answer; it
//! stays known while this mount's own changes are applied to it and the master's change log
//! is being followed, and is forgotten as soon as the log reports a change to it made by
//! anyone else, an outcome this mount could not see (a timeout, a refusal it did not expect)
//! or the log itself is lost. A lookup of a name that is there is asked of the master unless
//! its attributes are held (`meta_cache`). So another mount's new name is missed for as long as the log
//! takes to bring it (the same staleness as the kernel's name cache), never longer.

use lru::LruCache;
use shardfs_common::proto::FileKind;
use shardfs_common::{Ino, Result};
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::ops::Bound;
use std::sync::atomic::Ordering;

/// Directories kept at most.
const DIRS: usize = 4096;
/// A directory with more names than this is not kept (its set would cost too much memory).
const NAMES_PER_DIR: usize = 65_536;
/// Names kept over all directories.
const NAMES: usize = 1 << 20;

/// What a name of a known directory leads to (fixed while the name is there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub ino: Ino,
    pub kind: FileKind,
}

impl Entry {
    pub fn of(a: &shardfs_common::proto::Attr) -> Entry {
        Entry {
            ino: a.ino,
            kind: a.kind,
        }
    }
}

/// A name of a known directory, as a listing gives it.
pub(crate) type Named = (Vec<u8>, Entry);

pub(crate) struct KnownDirs {
    /// Each directory's names in name order (the master's listing order).
    dirs: LruCache<Ino, BTreeMap<Vec<u8>, Entry>>,
    names: usize,
}

impl Default for KnownDirs {
    fn default() -> Self {
        KnownDirs {
            dirs: LruCache::new(NonZeroUsize::new(DIRS).expect("nonzero")),
            names: 0,
        }
    }
}

/// What this mount knows of a name in a directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Known {
    /// The directory is known and has no such name.
    Absent,
    /// Ask the master.
    Ask,
}

impl KnownDirs {
    /// Every name of directory `dir` (just made, or listed whole).
    pub fn know(&mut self, dir: Ino, names: impl IntoIterator<Item = Named>) {
        let set: BTreeMap<Vec<u8>, Entry> = names.into_iter().take(NAMES_PER_DIR + 1).collect();
        self.forget(dir);
        if set.len() > NAMES_PER_DIR {
            return;
        }
        while self.names + set.len() > NAMES {
            match self.dirs.pop_lru() {
                Some((_, s)) => self.names -= s.len(),
                None => return,
            }
        }
        self.names += set.len();
        if let Some((_, s)) = self.dirs.push(dir, set) {
            self.names -= s.len();
        }
    }

    pub fn lookup(&mut self, dir: Ino, name: &[u8]) -> Known {
        match self.dirs.get(&dir) {
            Some(s) if !s.contains_key(name) => Known::Absent,
            _ => Known::Ask,
        }
    }

    /// Up to `limit` names of `dir` after `after` in name order (the master's), and whether
    /// more follow; None if the directory is not known.
    pub fn names(
        &self,
        dir: Ino,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Option<(Vec<Named>, bool)> {
        let s = self.dirs.peek(&dir)?;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut names: Vec<Named> = s
            .range::<[u8], _>((from, Bound::Unbounded))
            .take(limit + 1)
            .map(|(n, e)| (n.clone(), *e))
            .collect();
        let more = names.len() > limit;
        names.truncate(limit);
        Some((names, more))
    }

    pub fn is_known(&self, dir: Ino) -> bool {
        self.dirs.contains(&dir)
    }

    /// This mount added `name` to `dir` (or replaced what it led to).
    pub fn added(&mut self, dir: Ino, name: &[u8], e: Entry) {
        let Some(s) = self.dirs.peek_mut(&dir) else {
            return;
        };
        if s.len() >= NAMES_PER_DIR || self.names >= NAMES {
            self.forget(dir);
        } else if s.insert(name.to_vec(), e).is_none() {
            self.names += 1;
        }
    }

    /// This mount removed `name` from `dir`: what it led to, if the directory is known.
    pub fn removed(&mut self, dir: Ino, name: &[u8]) -> Option<Entry> {
        let e = self.dirs.peek_mut(&dir)?.remove(name)?;
        self.names -= 1;
        Some(e)
    }

    /// What is known of `dir` may be wrong.
    pub fn forget(&mut self, dir: Ino) {
        if let Some(s) = self.dirs.pop(&dir) {
            self.names -= s.len();
        }
    }

    pub fn clear(&mut self) {
        self.dirs.clear();
        self.names = 0;
    }

    #[cfg(test)]
    fn name_count(&self) -> usize {
        self.names
    }
}

impl super::Core {
    /// `name` is known not to be in `parent` (so a lookup can say so without the master).
    pub(super) fn known_absent(&self, parent: Ino, name: &[u8]) -> bool {
        self.log_fresh() && self.known().lookup(parent, name) == Known::Absent
    }

    /// Apply the outcome of this mount's change to a directory: `Ok` as `f` says, an error
    /// by forgetting the directories concerned (the change may or may not have happened).
    pub(super) fn dir_change<T>(
        &self,
        r: &Result<T>,
        dirs: &[Ino],
        f: impl FnOnce(&mut KnownDirs, &T),
    ) {
        let mut k = self.known();
        match r {
            Ok(v) => f(&mut k, v),
            Err(_) => dirs.iter().for_each(|d| k.forget(*d)),
        }
    }

    /// Another mount (or the master) changed `ino`'s names or attributes.
    pub(crate) fn forget_dir(&self, ino: Ino) {
        self.known().forget(ino);
    }

    /// Nothing known of any directory holds any more (the change log was lost or stopped).
    pub(crate) fn forget_dirs(&self) {
        self.known().clear();
    }

    /// The change log is not being followed (any more): nothing known holds.
    pub(crate) fn stopped_watching(&self) {
        self.watching.store(false, Ordering::Relaxed);
        self.forget_dirs();
        self.meta().lose_log();
    }

    pub(super) fn know_dir(&self, dir: Ino, names: impl IntoIterator<Item = Named>) {
        self.known().know(dir, names);
    }

    pub(super) fn dir_known(&self, dir: Ino) -> bool {
        self.known().is_known(dir)
    }

    /// Up to `max` of `dirs` that are not known whole (under one look at the known set).
    pub(super) fn unknown_dirs(&self, dirs: impl Iterator<Item = Ino>, max: usize) -> Vec<Ino> {
        let k = self.known();
        dirs.filter(|d| !k.is_known(*d)).take(max).collect()
    }

    /// A page of the listing of `dir` after `after` from what this mount holds (in name
    /// order, as the master lists), and whether more follow: only while the change log is
    /// followed and the directory is known whole, and with `attrs` only if every entry's
    /// attributes are held. None: ask the master.
    pub(super) fn known_listing(
        &self,
        dir: Ino,
        after: Option<&[u8]>,
        limit: usize,
        attrs: bool,
    ) -> Option<(Vec<super::Listed>, bool)> {
        if !self.log_fresh() {
            return None;
        }
        let (names, more) = self.known().names(dir, after, limit)?;
        let mut meta = attrs.then(|| self.meta());
        let page = names
            .into_iter()
            .map(|(name, e)| {
                let attr = match &mut meta {
                    Some(m) => Some(m.held_attr(e.ino)?),
                    None => None,
                };
                Some(super::Listed {
                    ino: e.ino,
                    kind: e.kind,
                    attr,
                    name,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some((page, more))
    }

    fn known(&self) -> std::sync::MutexGuard<'_, KnownDirs> {
        self.known_dirs.lock().expect("known dirs lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Entry = Entry {
        ino: 77,
        kind: FileKind::File,
    };

    /// Names with the same entry.
    fn n<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Named> {
        names
            .into_iter()
            .map(|s| (s.as_bytes().to_vec(), F))
            .collect()
    }

    #[test]
    fn only_absence_in_a_known_directory_is_answered() {
        let mut k = KnownDirs::default();
        assert_eq!(k.lookup(5, b"a"), Known::Ask, "unknown directory");
        k.know(5, n(["a"]));
        assert_eq!(k.lookup(5, b"a"), Known::Ask, "a name that is there");
        assert_eq!(k.lookup(5, b"b"), Known::Absent);
        k.added(5, b"b", F);
        assert_eq!(k.lookup(5, b"b"), Known::Ask);
        k.removed(5, b"a");
        assert_eq!(k.lookup(5, b"a"), Known::Absent);
        k.forget(5);
        assert_eq!(k.lookup(5, b"a"), Known::Ask);
        assert_eq!(k.name_count(), 0);
    }

    #[test]
    fn a_known_directory_lists_its_names_as_changed() {
        let mut k = KnownDirs::default();
        assert!(!k.is_known(5));
        assert_eq!(k.names(5, None, 10), None);
        k.know(5, n(["d", "a", "b"]));
        let dir = Entry {
            ino: 9,
            kind: FileKind::Dir,
        };
        k.added(5, b"c", dir);
        assert_eq!(k.removed(5, b"a"), Some(F));
        assert_eq!(k.removed(5, b"a"), None);
        let c = (b"c".to_vec(), dir);
        let all = vec![n(["b"])[0].clone(), c.clone(), n(["d"])[0].clone()];
        assert_eq!(k.names(5, None, 10), Some((all.clone(), false)));
        assert_eq!(k.names(5, None, 2), Some((all[..2].to_vec(), true)));
        assert_eq!(k.names(5, Some(b"c"), 2), Some((n(["d"]), false)));
        assert_eq!(k.names(5, Some(b"bb"), 1), Some((vec![c], true)));
        // A name replaced (a rename over it) leads to the new entry.
        k.added(5, b"d", dir);
        assert_eq!(
            k.names(5, Some(b"c"), 2),
            Some((vec![(b"d".to_vec(), dir)], false))
        );
        assert_eq!(k.name_count(), 3);
        assert_eq!(k.names(5, Some(b"d"), 1), Some((vec![], false)));
        k.forget(5);
        assert!(!k.is_known(5));
        assert_eq!(k.names(5, None, 10), None);
    }

    #[test]
    fn changes_to_unknown_directories_are_ignored() {
        let mut k = KnownDirs::default();
        k.added(9, b"x", F);
        assert_eq!(k.lookup(9, b"y"), Known::Ask);
        k.removed(9, b"x");
        assert_eq!(k.name_count(), 0);
    }

    #[test]
    fn bounded_in_directories_and_names() {
        let mut k = KnownDirs::default();
        for d in 0..(DIRS as u64 + 10) {
            k.know(d, n(["n"]));
        }
        assert_eq!(k.lookup(0, b"z"), Known::Ask, "oldest directory dropped");
        assert_eq!(k.lookup(DIRS as u64 + 9, b"z"), Known::Absent);
        assert_eq!(k.name_count(), DIRS);
        // A directory too big to keep is not kept; one that grows too big is dropped.
        let big = (0..=NAMES_PER_DIR).map(|i| (i.to_string().into_bytes(), F));
        k.know(1 << 40, big);
        assert_eq!(k.lookup(1 << 40, b"none"), Known::Ask);
        k.know(
            7 << 40,
            (0..NAMES_PER_DIR).map(|i| (i.to_string().into_bytes(), F)),
        );
        assert_eq!(k.lookup(7 << 40, b"none"), Known::Absent);
        k.added(7 << 40, b"one more", F);
        assert_eq!(k.lookup(7 << 40, b"none"), Known::Ask);
        assert!(k.name_count() <= NAMES);
    }
}
