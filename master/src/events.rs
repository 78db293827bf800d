//! The change log that lets mounts drop what they cache as soon as another mount changes it.
//!
//! Every namespace or content change appends events (an inode's attributes or content, a
//! directory entry) to a bounded in-memory log; mounts long-poll it with `Watch` and tell their
//! kernel to forget the affected inodes and names. A watcher that falls behind the log (more
//! than its capacity) is told so and forgets everything.

use shardfs_common::proto::{Change, ChangeEvent, MasterResponse};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

const CAPACITY: usize = 100_000;

pub struct Events {
    /// (sequence number of the first event kept, events)
    log: Mutex<(u64, VecDeque<ChangeEvent>)>,
    added: Notify,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            log: Mutex::new((1, VecDeque::new())),
            added: Notify::new(),
        }
    }
}

impl Events {
    pub fn push(&self, origin: u64, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        {
            let mut g = self.log.lock().expect("events lock");
            for change in changes {
                g.1.push_back(ChangeEvent { origin, change });
            }
            while g.1.len() > CAPACITY {
                g.1.pop_front();
                g.0 += 1;
            }
        }
        self.added.notify_waiters();
    }

    /// Events after sequence number `after` (`u64::MAX`: none, just the current position),
    /// waiting up to `wait` for the first one. Events made by the watcher's own session `me`
    /// (0: unknown) do not end the wait: a mount has nothing to drop for its own changes, and
    /// answering it for each of them doubled the master's work per namespace operation.
    pub async fn watch(&self, mut after: u64, wait: Duration, me: u64) -> MasterResponse {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            {
                let g = self.log.lock().expect("events lock");
                let (first, log) = (g.0, &g.1);
                let last = first + log.len() as u64 - 1;
                if after == u64::MAX {
                    return MasterResponse::Changes {
                        next: last,
                        lost: false,
                        events: Vec::new(),
                    };
                }
                if after > last {
                    // The watcher is ahead of the log: the master restarted.
                    return MasterResponse::Changes {
                        next: last,
                        lost: true,
                        events: Vec::new(),
                    };
                }
                let start = (after + 1).max(first);
                let others = log
                    .iter()
                    .skip((start - first) as usize)
                    .any(|e| me == 0 || e.origin != me);
                if after < last && !others && after + 1 >= first {
                    // Only the watcher's own changes since: move past them and wait on.
                    after = last;
                } else if after < last {
                    let lost = after + 1 < first;
                    let events: Vec<ChangeEvent> = log
                        .iter()
                        .skip((start - first) as usize)
                        .take(10_000)
                        .cloned()
                        .collect();
                    return MasterResponse::Changes {
                        next: start + events.len() as u64 - 1,
                        lost,
                        events,
                    };
                }
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return MasterResponse::Changes {
                    next: after,
                    lost: false,
                    events: Vec::new(),
                };
            }
        }
    }
}

/// The inodes a response reports changed or removed.
pub fn reported(resp: &MasterResponse) -> Vec<Change> {
    match resp {
        MasterResponse::Changed { changed, gone, .. } => changed
            .iter()
            .map(|a| Change::Inode(a.ino))
            .chain(gone.iter().map(|i| Change::Inode(*i)))
            .collect(),
        MasterResponse::Conflicted { copy_attr, .. } => vec![Change::Inode(copy_attr.ino)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_get_what_came_after_their_mark() {
        let e = Events::default();
        let MasterResponse::Changes { next, .. } = e.watch(u64::MAX, Duration::ZERO, 0).await
        else {
            panic!()
        };
        assert_eq!(next, 0);
        e.push(7, vec![Change::Inode(5), Change::Inode(6)]);
        let MasterResponse::Changes { next, lost, events } = e.watch(next, Duration::ZERO, 0).await
        else {
            panic!()
        };
        assert!(!lost);
        assert_eq!(events.len(), 2);
        assert_eq!(next, 2);
        // Nothing new: an empty answer after the wait, same mark.
        let MasterResponse::Changes {
            next: n2, events, ..
        } = e.watch(next, Duration::from_millis(10), 0).await
        else {
            panic!()
        };
        assert!(events.is_empty());
        assert_eq!(n2, 2);
        e.push(7, vec![Change::Inode(9)]);
        let MasterResponse::Changes { events, next, .. } = e.watch(n2, Duration::ZERO, 0).await
        else {
            panic!()
        };
        assert_eq!(events[0].change, Change::Inode(9));
        assert_eq!(next, 3);
    }

    #[tokio::test]
    async fn a_watcher_is_not_woken_for_its_own_changes() {
        let e = Events::default();
        let MasterResponse::Changes { next, .. } = e.watch(u64::MAX, Duration::ZERO, 7).await
        else {
            panic!()
        };
        e.push(7, vec![Change::Inode(5)]);
        // Only its own change: no answer within the wait, and the position moves past it.
        let MasterResponse::Changes {
            next: n2, events, ..
        } = e.watch(next, Duration::from_millis(20), 7).await
        else {
            panic!()
        };
        assert!(events.is_empty());
        assert_eq!(n2, next + 1);
        // Another session's change wakes it, with its own change too if still unseen.
        e.push(7, vec![Change::Inode(6)]);
        e.push(8, vec![Change::Inode(9)]);
        let MasterResponse::Changes { events, .. } = e.watch(n2, Duration::ZERO, 7).await else {
            panic!()
        };
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].origin, 8);
    }
}
