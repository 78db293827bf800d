//! What this mount caches about inodes (attributes, names, the kernel's pages) and how it is dropped when the master reports a change.

use super::*;

impl Core {
    /// Drop the kernel's cached pages and attributes of `ino` (from a task of its own: the
    /// kernel may need a FUSE request answered before the invalidation completes).
    pub(crate) fn invalidate(&self, ino: Ino) {
        self.meta().drop_inode(ino);
        self.xattrs.lock().expect("xattrs lock").pop(&ino);
        if let Some(n) = self.notifier.get().cloned() {
            self.rt.spawn_blocking(move || {
                if let Err(e) = n.inval_inode(ino, 0, 0) {
                    debug!(ino, "kernel cache invalidation: {e}");
                }
            });
        }
    }

    /// Drop the kernel's cached attributes of `ino` (its pages stay).
    pub(crate) fn invalidate_attr(&self, ino: Ino) {
        if let Some(n) = self.notifier.get().cloned() {
            self.rt.spawn_blocking(move || {
                if let Err(e) = n.inval_inode(ino, -1, 0) {
                    debug!(ino, "kernel attribute invalidation: {e}");
                }
            });
        }
    }

    /// Forget every attribute this mount caches (the change log was lost).
    pub(crate) fn forget_cached(&self) {
        self.meta().clear_attrs();
        self.xattrs.lock().expect("xattrs lock").clear();
    }

    /// Drop the kernel's cached entry `parent/name`.
    pub(crate) fn invalidate_entry(&self, parent: Ino, name: Vec<u8>) {
        self.meta().drop_entry(parent, &name);
        if let Some(n) = self.notifier.get().cloned() {
            self.rt.spawn_blocking(move || {
                let name = std::ffi::OsStr::from_bytes(&name);
                if let Err(e) = n.inval_entry(parent, name) {
                    debug!(parent, "kernel entry invalidation: {e}");
                }
            });
        }
    }

    /// Inodes this mount has open (claimed again when the session is re-opened).
    /// The files this mount has open, to claim on a new session: each then counts one open
    /// at the master, as the master counts them.
    pub(crate) fn open_inos(&self) -> Vec<Ino> {
        let files = self.files.lock().expect("files lock");
        for of in files.values() {
            of.held.store(1, Ordering::SeqCst);
        }
        files.keys().copied().collect()
    }

    /// The last attributes seen for `ino`, however old (for working offline).
    pub(crate) fn stale_attr(&self, ino: Ino) -> Option<Attr> {
        if let Some(of) = self.open_file(ino) {
            return Some(of.st.lock().expect("file lock").attr.clone());
        }
        self.meta().stale_attr(ino)
    }

    pub(super) fn meta(&self) -> std::sync::MutexGuard<'_, meta_cache::MetaCache> {
        self.meta.lock().expect("meta cache lock")
    }

    /// The change log answered: what it has not reported changed still holds.
    pub(crate) fn heard_log(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.log_heard.store(ms, Ordering::Relaxed);
        self.watching.store(true, Ordering::Relaxed);
    }

    /// The change log is followed right now: its last answer came lately (a watch waits at
    /// most 10 s for news), and the master is reachable.
    pub(crate) fn log_fresh(&self) -> bool {
        const SILENCE: u64 = 15_000;
        let now = self.started.elapsed().as_millis() as u64;
        !self.cfg.shared
            && self.watching.load(Ordering::Relaxed)
            && !self.is_offline()
            && now.saturating_sub(self.log_heard.load(Ordering::Relaxed)) < SILENCE
    }

    /// What this mount last read of `ino` (attributes and block map), if it still knows.
    pub(crate) fn known_read(&self, ino: Ino) -> Option<ReadBase> {
        let key = self.names.lock().expect("names lock").get(&ino).cloned()?;
        let b = self
            .read_bases
            .lock()
            .expect("bases lock")
            .peek(&key)
            .cloned()?;
        (b.0.ino == ino).then_some(b)
    }

    pub(crate) fn name_of_ino(&self, ino: Ino) -> Option<(Ino, Vec<u8>)> {
        self.names.lock().expect("names lock").get(&ino).cloned()
    }
}
