//! Attributes and names this mount learnt from the master, and how long they hold.
//!
//! An answer is *held* when nothing this mount heard of could have changed it between the
//! request and the answer: no change to any cached inode or name was heard of meanwhile (the
//! invalidation counter `seq` did not move), and the master's change log was being followed.
//! A held fact stays true until the log reports a change to it (made by another mount), this
//! mount changes it itself, or the log is lost (`epoch` moves), so lookups and stats of what
//! nobody else touches cost no round trip however old they are. Anything else is trusted for
//! the attribute TTL only, as the kernel trusts what it is told. Stale facts stay available,
//! however old, for working offline.
//!
//! Only the caller decides whether the change log is being followed (`log_fresh`); this type
//! is the bookkeeping, with no I/O, so it is tested on its own.

use lru::LruCache;
use shardfs_common::proto::{Attr, Change};
use shardfs_common::Ino;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// Attributes kept at most.
pub(crate) const ATTRS: usize = 65_536;
/// Names kept at most.
pub(crate) const NAMES: usize = 65_536;

/// Where an answer stood: `Some(seq)` if it may be held, as of invalidation count `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant(Option<u64>);

impl Grant {
    /// An answer that is trusted for the TTL only.
    pub const NONE: Grant = Grant(None);
}

struct Fact<T> {
    value: T,
    at: Instant,
    /// The log epoch this fact is held under (None: trusted for the TTL only).
    held: Option<u64>,
}

pub(crate) struct MetaCache {
    attrs: LruCache<Ino, Fact<Attr>>,
    names: LruCache<(Ino, Vec<u8>), Fact<Ino>>,
    /// Moves on every invalidation.
    seq: u64,
    /// Moves when the change log is lost or no longer followed.
    epoch: u64,
}

impl Default for MetaCache {
    fn default() -> Self {
        MetaCache::with_capacity(ATTRS, NAMES)
    }
}

impl MetaCache {
    pub fn with_capacity(attrs: usize, names: usize) -> Self {
        MetaCache {
            attrs: LruCache::new(NonZeroUsize::new(attrs.max(1)).expect("nonzero")),
            names: LruCache::new(NonZeroUsize::new(names.max(1)).expect("nonzero")),
            seq: 0,
            epoch: 0,
        }
    }

    /// A request is about to be sent: its answer may be held if nothing is invalidated before
    /// it arrives (`log_fresh`: the change log is being followed now).
    pub fn before(&self, log_fresh: bool) -> Grant {
        Grant(log_fresh.then_some(self.seq))
    }

    /// The answer to a request sent under `g` arrived: it may still be held if nothing was
    /// invalidated meanwhile. `touched` (what the request itself changed) is dropped, and a
    /// held answer is held as of after that.
    pub fn after(&mut self, g: Grant, touched: &[Change]) -> Grant {
        let held = g.0 == Some(self.seq);
        self.drop_changes(touched);
        Grant(held.then_some(self.seq))
    }

    /// Whether an answer granted `g` still holds now (nothing was invalidated since).
    pub fn still_holds(&self, g: Grant) -> bool {
        self.holds(g).is_some()
    }

    fn holds(&self, g: Grant) -> Option<u64> {
        (g.0 == Some(self.seq)).then_some(self.epoch)
    }

    pub fn put_attr(&mut self, a: &Attr, g: Grant) {
        let held = self.holds(g);
        self.attrs.put(
            a.ino,
            Fact {
                value: a.clone(),
                at: Instant::now(),
                held,
            },
        );
    }

    pub fn put_name(&mut self, parent: Ino, name: &[u8], ino: Ino, g: Grant) {
        let held = self.holds(g);
        self.names.put(
            (parent, name.to_vec()),
            Fact {
                value: ino,
                at: Instant::now(),
                held,
            },
        );
    }

    fn valid<T>(&self, f: &Fact<T>, ttl: Duration, log_fresh: bool) -> bool {
        (log_fresh && f.held == Some(self.epoch)) || f.at.elapsed() < ttl
    }

    /// The attributes of `ino`, if they still hold.
    pub fn attr(&mut self, ino: Ino, ttl: Duration, log_fresh: bool) -> Option<Attr> {
        let f = self.attrs.peek(&ino)?;
        if !self.valid(f, ttl, log_fresh) {
            return None;
        }
        self.attrs.get(&ino).map(|f| f.value.clone())
    }

    /// The inode and attributes under `parent/name`, if both are held.
    pub fn lookup(&mut self, parent: Ino, name: &[u8], log_fresh: bool) -> Option<Attr> {
        if !log_fresh {
            return None;
        }
        // One look into each cache (a `find` or `git status` makes thousands in a row).
        let held = Some(self.epoch);
        let ino = match self.names.get(&(parent, name.to_vec())) {
            Some(f) if f.held == held => f.value,
            _ => return None,
        };
        match self.attrs.get(&ino) {
            Some(a) if a.held == held => Some(a.value.clone()),
            _ => None,
        }
    }

    /// The attributes of `ino` if they are held (not merely within the TTL); the caller
    /// follows the change log.
    pub fn held_attr(&self, ino: Ino) -> Option<Attr> {
        let a = self.attrs.peek(&ino)?;
        (a.held == Some(self.epoch)).then(|| a.value.clone())
    }

    /// The last attributes seen for `ino`, however old.
    pub fn stale_attr(&self, ino: Ino) -> Option<Attr> {
        self.attrs.peek(&ino).map(|f| f.value.clone())
    }

    /// The last inode seen under `parent/name`, however old.
    pub fn stale_name(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        self.names.peek(&(parent, name.to_vec())).map(|f| f.value)
    }

    pub fn drop_inode(&mut self, ino: Ino) {
        self.seq += 1;
        self.attrs.pop(&ino);
    }

    /// The entry `parent/name` changed (and with it the directory's attributes).
    pub fn drop_entry(&mut self, parent: Ino, name: &[u8]) {
        self.seq += 1;
        self.names.pop(&(parent, name.to_vec()));
        self.attrs.pop(&parent);
    }

    pub fn drop_changes(&mut self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Inode(ino) => self.drop_inode(*ino),
                Change::Entry { parent, name } => self.drop_entry(*parent, name),
            }
        }
    }

    /// The change log was lost or stopped being followed: nothing is held any more (what
    /// was learnt stays, for the TTL and for working offline).
    pub fn lose_log(&mut self) {
        self.seq += 1;
        self.epoch += 1;
    }

    /// Forget every attribute (names stay, for working offline).
    pub fn clear_attrs(&mut self) {
        self.lose_log();
        self.attrs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: Ino, size: u64) -> Attr {
        Attr::plain_file(ino, size)
    }

    const NO_TTL: Duration = Duration::ZERO;

    #[test]
    fn an_answer_with_nothing_heard_meanwhile_is_held_past_the_ttl() {
        let mut c = MetaCache::default();
        let g = c.before(true);
        let g = c.after(g, &[]);
        c.put_attr(&attr(5, 1), g);
        c.put_name(1, b"a", 5, g);
        assert_eq!(c.attr(5, NO_TTL, true).map(|a| a.size), Some(1));
        assert_eq!(c.lookup(1, b"a", true).map(|a| a.ino), Some(5));
        // Not while the log is not followed.
        assert!(c.attr(5, NO_TTL, false).is_none());
        assert!(c.lookup(1, b"a", false).is_none());
    }

    #[test]
    fn an_invalidation_while_a_request_is_out_makes_its_answer_short_lived() {
        let mut c = MetaCache::default();
        let g = c.before(true);
        c.drop_inode(99); // heard while the request was out
        let g = c.after(g, &[]);
        c.put_attr(&attr(5, 1), g);
        assert!(c.attr(5, NO_TTL, true).is_none());
        assert!(c.attr(5, Duration::from_secs(60), true).is_some());
        // Also when it comes between the answer and its use.
        let g = c.after(c.before(true), &[]);
        c.drop_entry(1, b"x");
        c.put_attr(&attr(6, 1), g);
        assert!(c.attr(6, NO_TTL, true).is_none());
    }

    #[test]
    fn a_request_sent_while_the_log_is_not_followed_is_not_held() {
        let mut c = MetaCache::default();
        let g = c.before(false);
        let g = c.after(g, &[]);
        c.put_attr(&attr(5, 1), g);
        assert!(c.attr(5, NO_TTL, true).is_none());
    }

    #[test]
    fn changes_drop_what_they_touch() {
        let mut c = MetaCache::default();
        let g = c.after(c.before(true), &[]);
        c.put_attr(&attr(1, 0), g);
        c.put_attr(&attr(5, 1), g);
        c.put_name(1, b"a", 5, g);
        c.drop_entry(1, b"a");
        assert!(c.lookup(1, b"a", true).is_none());
        assert!(
            c.attr(1, NO_TTL, true).is_none(),
            "the directory changed too"
        );
        assert!(c.attr(5, NO_TTL, true).is_some());
        c.drop_changes(&[Change::Inode(5)]);
        assert!(c.attr(5, NO_TTL, true).is_none());
    }

    #[test]
    fn a_change_of_this_mount_drops_its_targets_and_its_answer_is_held() {
        let mut c = MetaCache::default();
        let g = c.after(c.before(true), &[]);
        c.put_attr(&attr(1, 0), g);
        let touched = vec![
            Change::Entry {
                parent: 1,
                name: b"new".to_vec(),
            },
            Change::Inode(1),
        ];
        c.drop_changes(&touched); // when it is sent
        let g = c.before(true);
        let g = c.after(g, &touched);
        assert!(c.attr(1, NO_TTL, true).is_none());
        // The answer is the state after the change.
        c.put_attr(&attr(1, 4096), g);
        c.put_attr(&attr(7, 0), g);
        c.put_name(1, b"new", 7, g);
        assert_eq!(c.attr(1, NO_TTL, true).map(|a| a.size), Some(4096));
        assert_eq!(c.lookup(1, b"new", true).map(|a| a.ino), Some(7));
    }

    #[test]
    fn losing_the_log_ends_every_hold_but_keeps_stale_facts() {
        let mut c = MetaCache::default();
        let g = c.after(c.before(true), &[]);
        c.put_attr(&attr(5, 1), g);
        c.put_name(1, b"a", 5, g);
        c.lose_log();
        assert!(c.attr(5, NO_TTL, true).is_none());
        assert!(c.lookup(1, b"a", true).is_none());
        assert_eq!(c.stale_attr(5).map(|a| a.ino), Some(5));
        assert_eq!(c.stale_name(1, b"a"), Some(5));
        c.clear_attrs();
        assert!(c.stale_attr(5).is_none());
    }

    #[test]
    fn a_name_without_held_attributes_is_asked() {
        let mut c = MetaCache::default();
        let g = c.after(c.before(true), &[]);
        c.put_name(1, b"a", 5, g);
        assert!(c.lookup(1, b"a", true).is_none());
        c.put_attr(&attr(5, 1), Grant::NONE);
        assert!(c.lookup(1, b"a", true).is_none());
    }

    #[test]
    fn bounded() {
        let mut c = MetaCache::with_capacity(2, 2);
        let g = c.after(c.before(true), &[]);
        for i in 0..10 {
            c.put_attr(&attr(i, 0), g);
            c.put_name(1, format!("n{i}").as_bytes(), i, g);
        }
        assert!(c.stale_attr(7).is_none());
        assert!(c.stale_attr(9).is_some());
        assert!(c.stale_name(1, b"n0").is_none());
        assert_eq!(c.stale_name(1, b"n9"), Some(9));
    }
}
