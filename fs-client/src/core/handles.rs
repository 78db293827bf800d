//! Open files and their handles: opening, creating, and what closing and flushing a handle publishes.

use super::*;

impl Core {
    pub(super) fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("handles lock").insert(fh, h);
        fh
    }

    pub(super) fn handle(&self, fh: u64) -> Result<Handle> {
        self.handles
            .lock()
            .expect("handles lock")
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("no open handle {fh}")))
    }

    pub(super) fn file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        match self.handle(fh)? {
            Handle::File(f, _) => Ok(f),
            Handle::Dir(_) => Err(Error::fs(
                shardfs_common::ErrorCode::IsDir,
                "is a directory",
            )),
        }
    }

    /// Add a local open of `ino` (`held`: the master was told of it on this session).
    pub(super) fn register_open(
        &self,
        ino: Ino,
        attr: Attr,
        slots: Vec<Slot>,
        held: bool,
    ) -> Arc<OpenFile> {
        let mut files = self.files.lock().expect("files lock");
        let of = files.entry(ino).or_insert_with(|| {
            Arc::new(OpenFile {
                ino,
                st: Mutex::new(FileState::new(attr.clone(), vec![])),
                changed: Notify::new(),
                opens: AtomicUsize::new(0),
                held: AtomicU32::new(0),
            })
        });
        if held {
            of.held.fetch_add(1, Ordering::SeqCst);
        }
        {
            let mut st = of.st.lock().expect("file lock");
            if !st.has_local_changes() {
                st.reset(attr, slots);
            }
        }
        of.opens.fetch_add(1, Ordering::SeqCst);
        of.clone()
    }

    /// Open a file: fetch its attributes and block map (close-to-open consistency).
    /// `access`: ACCESS_READ and/or ACCESS_WRITE, as the open's flags ask.
    pub async fn open(&self, ino: Ino, access: u8) -> Result<u64> {
        let offline = match self.is_offline() {
            true => self.known_read(ino),
            false => None,
        };
        let ((attr, slots), held) = match offline {
            Some(b) => (b, false),
            None => match self.fetch_map(ino, true, access).await {
                Ok(b) => (b, true),
                Err(e) => (self.offline_open(ino, e)?, false),
            },
        };
        if attr.kind == FileKind::Dir {
            return Err(Error::fs(
                shardfs_common::ErrorCode::IsDir,
                "is a directory",
            ));
        }
        self.remember_read(&attr, &slots);
        let of = self.register_open(ino, attr, slots, held);
        Ok(self.add_handle(Handle::File(of, Default::default())))
    }

    pub async fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, u64)> {
        let session = self.session.load(Ordering::Relaxed);
        let attr = self
            .create_inode(parent, name, FileKind::File, mode, uid, gid, 0, session)
            .await?;
        self.name_of(attr.ino, parent, name);
        let of = self.register_open(attr.ino, attr.clone(), vec![], session != 0);
        Ok((attr, self.add_handle(Handle::File(of, Default::default()))))
    }

    /// True if closing handle `fh` has nothing to publish, so it can be answered at once: the
    /// file has no local changes, or none made through this handle since they were last
    /// published while other handles keep the file open (their close publishes them).
    pub fn is_clean(&self, fh: u64) -> bool {
        match self.handle(fh) {
            Ok(Handle::File(of, h)) => !Self::must_publish(&of, &h, false),
            Ok(Handle::Dir(_)) => true,
            Err(_) => true,
        }
    }

    /// Whether closing a handle of `of` that last changed it at `touched` commits the file;
    /// `released`: the handle is already gone from `opens`.
    pub(super) fn must_publish(of: &OpenFile, h: &HandleState, released: bool) -> bool {
        let st = of.st.lock().expect("file lock");
        let others = of.opens.load(Ordering::SeqCst) > usize::from(!released);
        st.has_local_changes() && (!others || h.touched.load(Ordering::SeqCst) > st.published)
    }

    /// Note that thread `pid` changes the file through handle `fh` (a truncate).
    pub fn note_writer(&self, fh: u64, pid: u32) {
        if let Ok(Handle::File(_, h)) = self.handle(fh) {
            h.wrote(pid);
        }
    }

    /// Whether a close of `fh` by thread `pid` is a close by a process that changed the file
    /// through it. A process that only inherited the descriptor (a child forked while the
    /// file was open, closing it at exec) must not publish the writer's half-done edit.
    pub(super) fn closed_by_writer(h: &HandleState, pid: u32) -> bool {
        let writers = h.writers.lock().expect("writers lock").clone();
        if writers.is_empty() || writers.contains(&0) || pid == 0 || writers.contains(&pid) {
            return true;
        }
        let Some(closer) = process_of(pid) else {
            return true;
        };
        writers
            .iter()
            .any(|&w| process_of(w).is_none_or(|p| p == closer))
    }

    /// Release a file handle without waiting for anything if the file has no local changes
    /// at all; false otherwise (use [`Core::release`]).
    pub fn release_if_clean(&self, fh: u64) -> bool {
        let clean = match self.handle(fh) {
            Ok(Handle::File(of, _)) => !of.st.lock().expect("file lock").has_local_changes(),
            _ => true,
        };
        if !clean {
            return false;
        }
        let h = self.handles.lock().expect("handles lock").remove(&fh);
        if let Some(Handle::File(of, _)) = h {
            if of.opens.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.forget_if_closed(&of);
            }
        }
        true
    }

    /// Drop a file nobody has open any more from the open files, unless it has local changes.
    pub(super) fn forget_if_closed(&self, of: &Arc<OpenFile>) {
        let mut files = self.files.lock().expect("files lock");
        let clean = !of.st.lock().expect("file lock").has_local_changes();
        if clean
            && files.get(&of.ino).is_some_and(|f| Arc::ptr_eq(f, of))
            && of.opens.load(Ordering::SeqCst) == 0
        {
            files.remove(&of.ino);
            self.closed(of.ino, of.held.load(Ordering::SeqCst));
        }
    }

    pub async fn release(&self, fh: u64) -> Result<()> {
        let h = self.handles.lock().expect("handles lock").remove(&fh);
        let Some(Handle::File(of, h)) = h else {
            return Ok(());
        };
        let last = of.opens.fetch_sub(1, Ordering::SeqCst) == 1;
        let r = match Self::must_publish(&of, &h, true) {
            true => self.flush_file(&of).await,
            false => Ok(()),
        };
        if last {
            self.forget_if_closed(&of);
        }
        r
    }

    /// A close of handle `fh` by thread `pid`.
    pub async fn flush(&self, fh: u64, pid: u32) -> Result<()> {
        let Handle::File(of, h) = self.handle(fh)? else {
            return Ok(());
        };
        match Self::must_publish(&of, &h, false) && Self::closed_by_writer(&h, pid) {
            true => self.flush_file(&of).await,
            false => Ok(()),
        }
    }

    /// Record that handle `fh` changed its file (`change`: the change's number).
    pub(super) fn touched(&self, fh: u64, change: u64) {
        if let Ok(Handle::File(_, h)) = self.handle(fh) {
            h.touched.fetch_max(change, Ordering::SeqCst);
        }
    }
}
