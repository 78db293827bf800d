//! Directories whose every name this mount knows, so a lookup of a name that is not there is
//! answered without asking the master (the lookup before every create, mkdir, rename target
//! and symlink of a program filling a directory).
//!
//! A directory is known once this mount made it (empty) or listed it whole in one answer; it
//! stays known while this mount's own changes are applied to it and the master's change log
//! is being followed, and is forgotten as soon as the log reports a change to it made by
//! anyone else, an outcome this mount could not see (a timeout, a refusal it did not expect)
//! or the log itself is lost. A name that is there is always asked of the master: only
//! absence is answered here. So another mount's new name is missed for as long as the log
//! takes to bring it (the same staleness as the kernel's name cache), never longer.

use lru::LruCache;
use shardfs_common::{Ino, Result};
use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;

/// Directories kept at most.
const DIRS: usize = 4096;
/// A directory with more names than this is not kept (its set would cost too much memory).
const NAMES_PER_DIR: usize = 65_536;
/// Names kept over all directories.
const NAMES: usize = 1 << 20;

pub(crate) struct KnownDirs {
    dirs: LruCache<Ino, HashSet<Vec<u8>>>,
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
    pub fn know(&mut self, dir: Ino, names: impl IntoIterator<Item = Vec<u8>>) {
        let set: HashSet<Vec<u8>> = names.into_iter().take(NAMES_PER_DIR + 1).collect();
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
            Some(s) if !s.contains(name) => Known::Absent,
            _ => Known::Ask,
        }
    }

    /// Every name of `dir`, if it is known.
    pub fn names(&self, dir: Ino) -> Option<Vec<Vec<u8>>> {
        self.dirs.peek(&dir).map(|s| s.iter().cloned().collect())
    }

    pub fn is_known(&self, dir: Ino) -> bool {
        self.dirs.contains(&dir)
    }

    /// This mount added `name` to `dir`.
    pub fn added(&mut self, dir: Ino, name: &[u8]) {
        let Some(s) = self.dirs.peek_mut(&dir) else {
            return;
        };
        if s.len() >= NAMES_PER_DIR || self.names >= NAMES {
            self.forget(dir);
        } else if s.insert(name.to_vec()) {
            self.names += 1;
        }
    }

    /// This mount removed `name` from `dir`.
    pub fn removed(&mut self, dir: Ino, name: &[u8]) {
        if let Some(s) = self.dirs.peek_mut(&dir) {
            if s.remove(name) {
                self.names -= 1;
            }
        }
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

    pub(super) fn know_dir(&self, dir: Ino, names: impl IntoIterator<Item = Vec<u8>>) {
        self.known().know(dir, names);
    }

    pub(super) fn dir_known(&self, dir: Ino) -> bool {
        self.known().is_known(dir)
    }

    /// The whole listing of `dir` from what this mount holds (sorted by name, as the master
    /// lists): only while the change log is followed, the directory is known whole, and every
    /// name in it is held with its attributes. None: ask the master.
    pub(super) fn known_listing(&self, dir: Ino) -> Option<Vec<super::Listed>> {
        if !self.log_fresh() {
            return None;
        }
        let mut names = self.known().names(dir)?;
        names.sort_unstable();
        let mut meta = self.meta();
        names
            .into_iter()
            .map(|name| {
                let a = meta.lookup(dir, &name, true)?;
                Some(super::Listed {
                    ino: a.ino,
                    kind: a.kind,
                    attr: Some(a),
                    name,
                })
            })
            .collect()
    }

    fn known(&self) -> std::sync::MutexGuard<'_, KnownDirs> {
        self.known_dirs.lock().expect("known dirs lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absence_in_a_known_directory_is_answered() {
        let mut k = KnownDirs::default();
        assert_eq!(k.lookup(5, b"a"), Known::Ask, "unknown directory");
        k.know(5, [b"a".to_vec()]);
        assert_eq!(k.lookup(5, b"a"), Known::Ask, "a name that is there");
        assert_eq!(k.lookup(5, b"b"), Known::Absent);
        k.added(5, b"b");
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
        assert_eq!(k.names(5), None);
        k.know(5, [b"a".to_vec(), b"b".to_vec()]);
        k.added(5, b"c");
        k.removed(5, b"a");
        let mut names = k.names(5).unwrap();
        names.sort();
        assert_eq!(names, [b"b".to_vec(), b"c".to_vec()]);
        k.forget(5);
        assert!(!k.is_known(5));
        assert_eq!(k.names(5), None);
    }

    #[test]
    fn changes_to_unknown_directories_are_ignored() {
        let mut k = KnownDirs::default();
        k.added(9, b"x");
        assert_eq!(k.lookup(9, b"y"), Known::Ask);
        k.removed(9, b"x");
        assert_eq!(k.name_count(), 0);
    }

    #[test]
    fn bounded_in_directories_and_names() {
        let mut k = KnownDirs::default();
        for d in 0..(DIRS as u64 + 10) {
            k.know(d, [b"n".to_vec()]);
        }
        assert_eq!(k.lookup(0, b"z"), Known::Ask, "oldest directory dropped");
        assert_eq!(k.lookup(DIRS as u64 + 9, b"z"), Known::Absent);
        assert_eq!(k.name_count(), DIRS);
        // A directory too big to keep is not kept; one that grows too big is dropped.
        let big = (0..=NAMES_PER_DIR).map(|i| i.to_string().into_bytes());
        k.know(1 << 40, big);
        assert_eq!(k.lookup(1 << 40, b"none"), Known::Ask);
        k.know(
            7 << 40,
            (0..NAMES_PER_DIR).map(|i| i.to_string().into_bytes()),
        );
        assert_eq!(k.lookup(7 << 40, b"none"), Known::Absent);
        k.added(7 << 40, b"one more");
        assert_eq!(k.lookup(7 << 40, b"none"), Known::Ask);
        assert!(k.name_count() <= NAMES);
    }
}
