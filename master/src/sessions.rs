//! Mount sessions: which mounts are alive, which files each has open, and the advisory locks
//! they hold.
//!
//! A mount opens a session when it starts and renews it every few seconds; a session not renewed
//! for the lease (default 10 s) is over: its mount died or lost the master. Its locks are
//! released (waiters are woken) and its open files closed, so an unlinked file that only it kept
//! open (an orphan) is deleted. Sessions and locks live in memory: after a master restart every
//! mount finds its session unknown at the next renewal and opens it again under the same id,
//! claiming its open files and locks. Open sessions are recorded in the metadata store, so
//! after a restart new lock requests wait (for at most one lease) until every session open
//! before has come back, and a lock held before the restart cannot be taken by someone else
//! first.

use crate::meta::Meta;
use crate::MasterError;
use shardfs_common::locks::{LockKind, LockOwner, LockRange, LockTable};
use shardfs_common::{Error, ErrorCode, Ino};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{info, warn};

struct Session {
    /// The credential that opened it: only it may use the session.
    owner: String,
    host: String,
    user: String,
    mountpoint: String,
    last_seen: Instant,
    /// Files the mount has open, each with the number of opens not yet closed.
    opens: HashMap<Ino, u32>,
    /// Files opened for writing (or created) through this session: only they take its commits
    /// from a credential that is not allowed root.
    writes: HashSet<Ino>,
}

struct Inner {
    sessions: HashMap<u64, Session>,
    /// The address each mount's requests come from (one QUIC connection per mount).
    peers: HashMap<SocketAddr, u64>,
    locks: LockTable,
}

pub struct Sessions {
    lease: Duration,
    started: Instant,
    /// Sessions open before a restart that have not come back yet, with their credentials.
    returning: Mutex<HashMap<u64, String>>,
    /// Files each session had open for writing before a restart (the `W` records): a claim
    /// of a write open after a restart is taken only if it is on record.
    recorded_writes: Mutex<HashSet<(u64, Ino)>>,
    inner: Mutex<Inner>,
    /// Woken whenever a lock is released, so waiting lock requests look again.
    released: Notify,
    /// The latest commit sequence number seen per (session, file).
    commits: Mutex<HashMap<(u64, Ino), u64>>,
}

impl Sessions {
    pub fn new(meta: &Meta, lease: Duration) -> Self {
        let returning = meta.recorded_sessions().unwrap_or_else(|e| {
            warn!("cannot read the recorded sessions: {e}");
            Vec::new()
        });
        if !returning.is_empty() {
            info!(
                sessions = returning.len(),
                "waiting up to one lease for mounts to claim their locks"
            );
        }
        Sessions {
            lease,
            started: Instant::now(),
            returning: Mutex::new(returning.into_iter().collect()),
            recorded_writes: Mutex::new(meta.recorded_writes().unwrap_or_else(|e| {
                warn!("cannot read the recorded write opens: {e}");
                HashSet::new()
            })),
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                peers: HashMap::new(),
                locks: LockTable::default(),
            }),
            released: Notify::new(),
            commits: Mutex::new(HashMap::new()),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn unknown(id: u64) -> MasterError {
        MasterError::Fs(Error::not_found(format!("no session {id:016x}")))
    }

    /// Open session `id` (0: pick a new id), claiming `opens` and `locks` (after a restart).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &self,
        meta: &Meta,
        mut id: u64,
        owner: &str,
        peer: SocketAddr,
        host: String,
        user: String,
        mountpoint: String,
        opens: Vec<Ino>,
        locks: Vec<LockRange>,
    ) -> u64 {
        let mut g = self.inner.lock().expect("sessions lock");
        while id == 0 {
            id = rand::random::<u64>();
        }
        let old = g.sessions.remove(&id);
        let mut s = Session {
            owner: owner.to_string(),
            host,
            user,
            mountpoint,
            last_seen: Instant::now(),
            opens: HashMap::new(),
            writes: HashSet::new(),
        };
        // A claimed write open counts if this master saw it (the session was open here) or
        // recorded it before a restart; otherwise the file is open for reading only.
        {
            let recorded = self.recorded_writes.lock().expect("recorded writes lock");
            s.writes = opens
                .iter()
                .copied()
                .filter(|ino| {
                    old.as_ref().is_some_and(|o| o.writes.contains(ino))
                        || recorded.contains(&(id, *ino))
                })
                .collect();
        }
        let writes: Vec<Ino> = s.writes.iter().copied().collect();
        let unclaimed_writes = opens.len() - writes.len();
        for ino in opens {
            if s.opens.insert(ino, 1).is_none()
                && !old.as_ref().is_some_and(|o| o.opens.contains_key(&ino))
            {
                meta.hold(ino);
            }
        }
        let mut lost = 0;
        g.locks.release_session(id);
        for mut l in locks {
            l.owner.session = id;
            if let Err(c) = g.locks.try_set(l) {
                lost += 1;
                warn!(session = %format!("{id:016x}"), ino = c.ino, "a lock claimed after a restart is held by another mount");
            }
        }
        info!(
            session = %format!("{id:016x}"),
            host = %s.host,
            user = %s.user,
            mountpoint = %s.mountpoint,
            files = s.opens.len(),
            lost_locks = lost,
            unrecorded_writes = unclaimed_writes,
            "mount session opened"
        );
        let stale: Vec<Ino> = old
            .map(|o| {
                o.opens
                    .keys()
                    .filter(|ino| !s.opens.contains_key(ino))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        g.sessions.insert(id, s);
        g.peers.retain(|_, s| *s != id);
        g.peers.insert(peer, id);
        drop(g);
        self.returning.lock().expect("returning lock").remove(&id);
        self.recorded_writes
            .lock()
            .expect("recorded writes lock")
            .retain(|(s, _)| *s != id);
        if let Err(e) = meta.record_session(id, Some((owner, &writes))) {
            warn!("cannot record session: {e}");
        }
        for ino in stale {
            let _ = meta.unhold(ino);
        }
        id
    }

    /// Whether credential `who` may use session `id`: the one that opened it, also for a
    /// session returning after a restart (one recorded without its credential, or not known
    /// at all, is anyone's).
    pub fn owned_by(&self, id: u64, who: &str) -> bool {
        let g = self.inner.lock().expect("sessions lock");
        if let Some(s) = g.sessions.get(&id) {
            return s.owner == who;
        }
        drop(g);
        let returning = self.returning.lock().expect("returning lock");
        returning
            .get(&id)
            .is_none_or(|owner| owner.is_empty() || owner == who)
    }

    /// Forget the sessions open before a restart that never came back.
    pub fn forget_missing(&self, meta: &Meta) {
        let gone: Vec<u64> = self
            .returning
            .lock()
            .expect("returning lock")
            .drain()
            .map(|(id, _)| id)
            .collect();
        self.recorded_writes
            .lock()
            .expect("recorded writes lock")
            .clear();
        for id in gone {
            info!(session = %format!("{id:016x}"), "mount session did not come back after the restart");
            let _ = meta.record_session(id, None);
        }
    }

    /// The session whose mount sends from `peer` (0: none).
    pub fn of_peer(&self, peer: SocketAddr) -> u64 {
        let g = self.inner.lock().expect("sessions lock");
        g.peers.get(&peer).copied().unwrap_or(0)
    }

    /// True unless a later commit of session `id` for `ino` was already applied (`seq`
    /// orders a mount's commits; requests on separate streams can arrive out of order).
    pub fn in_order(&self, id: u64, ino: Ino, seq: u64) -> bool {
        let g = self.commits.lock().expect("commits lock");
        g.get(&(id, ino)).is_none_or(|&last| seq >= last)
    }

    /// A commit of session `id` was applied.
    pub fn applied(&self, id: u64, ino: Ino, seq: u64) {
        if id == 0 || seq == 0 {
            return;
        }
        let mut g = self.commits.lock().expect("commits lock");
        if g.len() >= 100_000 {
            g.clear();
        }
        let last = g.entry((id, ino)).or_insert(0);
        *last = (*last).max(seq);
    }

    /// `user@host` of session `id`'s mount.
    pub fn who(&self, id: u64) -> Option<String> {
        let g = self.inner.lock().expect("sessions lock");
        g.sessions
            .get(&id)
            .map(|s| format!("{}@{}", s.user, s.host))
    }

    /// The host name of session `id`'s mount.
    pub fn host(&self, id: u64) -> Option<String> {
        let g = self.inner.lock().expect("sessions lock");
        g.sessions.get(&id).map(|s| s.host.clone())
    }

    pub fn renew(&self, id: u64) -> Result<(), MasterError> {
        let mut g = self.inner.lock().expect("sessions lock");
        let s = g.sessions.get_mut(&id).ok_or_else(|| Self::unknown(id))?;
        s.last_seen = Instant::now();
        Ok(())
    }

    /// The session's mount has `ino` open (`write`: for writing).
    pub fn opened(&self, meta: &Meta, id: u64, ino: Ino, write: bool) {
        if id == 0 {
            return;
        }
        let mut g = self.inner.lock().expect("sessions lock");
        if let Some(s) = g.sessions.get_mut(&id) {
            let n = s.opens.entry(ino).or_insert(0);
            if *n == 0 {
                meta.hold(ino);
            }
            *n = n.saturating_add(1);
            if write && s.writes.insert(ino) {
                drop(g);
                if let Err(e) = meta.record_write(id, ino, true) {
                    warn!(ino, "cannot record a write open: {e}");
                }
            }
        }
    }

    /// Whether session `id` opened `ino` for writing (and has not closed it since).
    pub fn may_write(&self, id: u64, ino: Ino) -> bool {
        let g = self.inner.lock().expect("sessions lock");
        g.sessions.get(&id).is_some_and(|s| s.writes.contains(&ino))
    }

    /// Session `id` closed `opens` of its opens of `ino`; the last close lets the file go.
    pub fn closed(&self, meta: &Meta, id: u64, ino: Ino, opens: u32) -> Result<(), MasterError> {
        let (was_open, was_write) = {
            let mut g = self.inner.lock().expect("sessions lock");
            match g.sessions.get_mut(&id) {
                Some(s) => match s.opens.get_mut(&ino) {
                    Some(n) => {
                        *n = n.saturating_sub(opens);
                        match *n {
                            0 => {
                                s.opens.remove(&ino);
                                (true, s.writes.remove(&ino))
                            }
                            _ => (false, false),
                        }
                    }
                    None => (false, false),
                },
                None => (false, false),
            }
        };
        if was_write {
            meta.record_write(id, ino, false)?;
        }
        if was_open {
            meta.unhold(ino)?;
        }
        Ok(())
    }

    /// End a session: release its locks and close its files.
    pub fn close(&self, meta: &Meta, id: u64, why: &str) {
        let (s, released) = {
            let mut g = self.inner.lock().expect("sessions lock");
            let s = g.sessions.remove(&id);
            g.peers.retain(|_, s| *s != id);
            let released = g.locks.release_session(id);
            (s, released)
        };
        if released {
            self.released.notify_waiters();
        }
        self.returning.lock().expect("returning lock").remove(&id);
        if let Err(e) = meta.record_session(id, None) {
            warn!("cannot record the end of a session: {e}");
        }
        if let Some(s) = s {
            info!(session = %format!("{id:016x}"), host = %s.host, mountpoint = %s.mountpoint, files = s.opens.len(), "mount session ended: {why}");
            for ino in s.opens.into_keys() {
                if let Err(e) = meta.unhold(ino) {
                    warn!(ino, "cannot delete an orphaned file: {e}");
                }
            }
        }
    }

    /// End every session not renewed within the lease.
    pub fn expire(&self, meta: &Meta) {
        let expired: Vec<u64> = {
            let g = self.inner.lock().expect("sessions lock");
            g.sessions
                .iter()
                .filter(|(_, s)| s.last_seen.elapsed() > self.lease)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in expired {
            self.close(meta, id, "not renewed within the lease");
        }
    }

    /// Mounts known now: (host, user, mountpoint).
    pub fn list(&self) -> Vec<(String, String, String)> {
        let g = self.inner.lock().expect("sessions lock");
        g.sessions
            .values()
            .map(|s| (s.host.clone(), s.user.clone(), s.mountpoint.clone()))
            .collect()
    }

    fn check_owner(g: &Inner, owner: LockOwner) -> Result<(), MasterError> {
        if g.sessions.contains_key(&owner.session) {
            Ok(())
        } else {
            Err(Self::unknown(owner.session))
        }
    }

    /// Set or unlock `lock`, waiting up to `wait` for a conflicting lock to go.
    pub async fn set_lock(&self, lock: LockRange, wait: Duration) -> Result<(), MasterError> {
        let deadline = Instant::now() + wait;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let holder = {
                let mut g = self.inner.lock().expect("sessions lock");
                Self::check_owner(&g, lock.owner)?;
                let grace = lock.kind != LockKind::Unlock
                    && self.started.elapsed() < self.lease
                    && !self.returning.lock().expect("returning lock").is_empty();
                if grace {
                    None
                } else {
                    match g.locks.try_set(lock.clone()) {
                        Ok(()) => {
                            drop(g);
                            if lock.kind != LockKind::Write {
                                // An unlock, or a write lock turned into a read lock.
                                self.released.notify_waiters();
                            }
                            return Ok(());
                        }
                        Err(c) => Some(
                            g.sessions
                                .get(&c.owner.session)
                                .map(|s| format!("{} ({}), pid {}", s.host, s.mountpoint, c.pid))
                                .unwrap_or_default(),
                        ),
                    }
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(MasterError::Fs(Error::fs(
                    ErrorCode::Again,
                    match holder {
                        Some(h) => format!("locked by {h}"),
                        None => "locks are being reclaimed after a master restart".into(),
                    },
                )));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), released).await;
        }
    }

    pub fn get_lock(&self, lock: &LockRange) -> Option<LockRange> {
        let g = self.inner.lock().expect("sessions lock");
        g.locks.conflict(lock).cloned()
    }

    pub fn release_locks(&self, ino: Ino, owner: LockOwner) {
        let released = {
            let mut g = self.inner.lock().expect("sessions lock");
            g.locks.release_owner(ino, owner)
        };
        if released {
            self.released.notify_waiters();
        }
    }
}
