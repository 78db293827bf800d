//! Merges with changes made elsewhere: an editor's save-by-rename over a changed file, and a commit whose base is stale.

use super::*;

impl Core {
    /// Have the master merge `mine` (an edit of `base`) with version `current` of `ino`
    /// (see `MasterRequest::Merge`): the merged text, or None if the file moved past
    /// `current` meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn merge_remote(
        &self,
        ino: Ino,
        base: Option<u64>,
        base_text: Option<Vec<u8>>,
        current: u64,
        current_text: Vec<u8>,
        mine: Vec<u8>,
        replay: bool,
    ) -> Result<Option<String>> {
        let req = MasterRequest::Merge {
            ino,
            session: self.session.load(Ordering::Relaxed),
            base,
            base_text,
            current,
            current_text,
            mine,
            replay,
        };
        match self.call(req).await? {
            MasterResponse::Merged { text } => String::from_utf8(text)
                .map(Some)
                .map_err(|_| Error::Protocol("the master's merge is not UTF-8".into())),
            MasterResponse::Stale { .. } => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// Remember what this mount read under the name of `attr.ino`.
    pub(super) fn remember_read(&self, attr: &Attr, slots: &[Slot]) {
        let Some(key) = self
            .names
            .lock()
            .expect("names lock")
            .get(&attr.ino)
            .cloned()
        else {
            return;
        };
        let mut b = self.read_bases.lock().expect("bases lock");
        b.put(key, (attr.clone(), slots.to_vec()));
    }

    /// `parent/name` was removed (or moved away) by this mount: what was read under it is no
    /// base for a later save over the name.
    pub(super) fn forget_read(&self, parent: Ino, name: &[u8]) {
        let mut b = self.read_bases.lock().expect("bases lock");
        b.pop(&(parent, name.to_vec()));
    }

    /// An editor's save: `parent/name` (a new file) is about to replace `new_parent/new_name`.
    /// If the replaced file changed elsewhere since this mount read it, merge the saved text
    /// with it first (three-way, from what this mount read), or, for content that cannot be
    /// merged, save under a conflicted-copy name instead. Returns the name to rename to.
    pub(super) async fn merge_before_replace(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
    ) -> Result<Vec<u8>> {
        // Nothing is there to replace: nothing to merge with (and no lookups to ask).
        if self.known_absent(new_parent, new_name) {
            return Ok(new_name.to_vec());
        }
        let key = (new_parent, new_name.to_vec());
        let Some((base_attr, base_slots)) = self
            .read_bases
            .lock()
            .expect("bases lock")
            .get(&key)
            .cloned()
        else {
            return Ok(new_name.to_vec());
        };
        let (Ok(src), Ok(cur)) = (
            self.call_attr(MasterRequest::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await,
            self.call_attr(MasterRequest::Lookup {
                parent: new_parent,
                name: new_name.to_vec(),
            })
            .await,
        ) else {
            return Ok(new_name.to_vec());
        };
        if src.kind != FileKind::File
            || cur.kind != FileKind::File
            || (cur.ino == base_attr.ino && cur.version == base_attr.version)
            || src.ino == cur.ino
        {
            return Ok(new_name.to_vec());
        }
        let (src_attr, src_slots) = self.fetch_map(src.ino, false, 0).await?;
        let limit = self.cfg.merge_max_bytes;
        let mut merged = None;
        if src_attr.size <= limit && base_attr.size <= limit {
            let ss = src_attr.size;
            let mine = self
                .read_all(self.snapshot(src.ino, src_attr, src_slots), ss)
                .await?;
            // The version read, if it is a version of the file there now (the master may
            // know it); its text, if it can still be read.
            let base_version = (base_attr.ino == cur.ino).then_some(base_attr.version);
            let bs = base_attr.size;
            let base = self
                .read_all(self.snapshot(base_attr.ino, base_attr, base_slots), bs)
                .await
                .ok()
                .filter(|b| std::str::from_utf8(b).is_ok());
            for _ in 0..3 {
                let (cur_attr, cur_slots) = self.fetch_map(cur.ino, false, 0).await?;
                if cur_attr.size > limit || std::str::from_utf8(&mine).is_err() {
                    break;
                }
                let cs = cur_attr.size;
                let theirs = self
                    .read_all(self.snapshot(cur.ino, cur_attr.clone(), cur_slots), cs)
                    .await?;
                if std::str::from_utf8(&theirs).is_err() {
                    break;
                }
                let r = self
                    .merge_remote(
                        cur.ino,
                        base_version,
                        base.clone(),
                        cur_attr.version,
                        theirs,
                        mine.clone(),
                        false,
                    )
                    .await;
                match r {
                    Ok(Some(text)) => {
                        merged = Some(text);
                        break;
                    }
                    Ok(None) => continue,
                    Err(e) if crate::offline::unreachable(&e) => return Err(e),
                    Err(e) => {
                        warn!(name = %String::from_utf8_lossy(new_name), "the master could not merge: {e}");
                        break;
                    }
                }
            }
        }
        let Some(merged) = merged else {
            // Not mergeable: the save keeps its own name beside the other change.
            let copy = conflicted_name(
                new_name,
                &crate::session::host_name(),
                Timespec::now().secs,
                1,
            );
            warn!(name = %String::from_utf8_lossy(new_name), copy = %String::from_utf8_lossy(&copy),
                "the file changed elsewhere since it was read; the save is kept as a conflicted copy");
            return Ok(copy);
        };
        tracing::info!(name = %String::from_utf8_lossy(new_name), merged = merged.len(),
            "merged an editor's save with changes made elsewhere");
        let fh = self.open(src.ino, ACCESS_READ | ACCESS_WRITE).await?;
        let now = Timespec::now();
        let r = async {
            self.setattr(
                src.ino,
                Some(fh),
                SetAttr {
                    size: Some(0),
                    now,
                    ..SetAttr::default()
                },
            )
            .await?;
            self.write(fh, 0, merged.as_bytes(), 0).await?;
            Ok::<(), Error>(())
        }
        .await;
        let released = self.release(fh).await;
        r.and(released)?;
        Ok(new_name.to_vec())
    }

    pub(super) fn snapshot(&self, ino: Ino, attr: Attr, slots: Vec<Slot>) -> Arc<OpenFile> {
        Arc::new(OpenFile {
            ino,
            st: Mutex::new(FileState::new(attr, slots)),
            changed: Notify::new(),
            opens: AtomicUsize::new(0),
            held: AtomicU32::new(0),
        })
    }

    /// Another mount committed since this mount's base: merge this mount's text with the
    /// current content (three-way, from the base) and make the result the local content, to be
    /// committed on top of `current`. Content that cannot be merged is marked so, and the next
    /// commit keeps it as a conflicted copy.
    pub(super) async fn merge_with(&self, of: &Arc<OpenFile>) -> Result<()> {
        let (base_attr, base_slots, size, changes, replay) = {
            let st = of.st.lock().expect("file lock");
            let mut a = st.attr.clone();
            a.size = st.base_size;
            a.version = st.base;
            (
                a,
                st.base_slots.clone(),
                st.attr.size,
                st.changes,
                st.replay,
            )
        };
        let off = matches!(
            self.getxattr(of.ino, b"user.shardfs.merge")
                .await
                .as_deref(),
            Ok(b"off")
        );
        let (theirs_attr, theirs_slots) = self.fetch_map(of.ino, false, 0).await?;
        let limit = self.cfg.merge_max_bytes;
        let mut merged = None;
        if !off && theirs_attr.size <= limit && size <= limit {
            let mine = self.read_all(of.clone(), size).await?;
            let theirs = self
                .read_all(
                    self.snapshot(of.ino, theirs_attr.clone(), theirs_slots.clone()),
                    theirs_attr.size,
                )
                .await?;
            // The base may be gone from the cluster (long offline): the master may know it.
            let (base_version, base_size) = (base_attr.version, base_attr.size);
            let base = match base_size <= limit {
                true => self
                    .read_all(self.snapshot(of.ino, base_attr, base_slots), base_size)
                    .await
                    .ok()
                    .filter(|b| std::str::from_utf8(b).is_ok()),
                false => None,
            };
            if std::str::from_utf8(&mine).is_ok() && std::str::from_utf8(&theirs).is_ok() {
                let r = self
                    .merge_remote(
                        of.ino,
                        Some(base_version),
                        base,
                        theirs_attr.version,
                        theirs,
                        mine,
                        replay,
                    )
                    .await;
                match r {
                    Ok(Some(text)) => merged = Some(text),
                    // Moved on again: the next commit finds out and merges again.
                    Ok(None) => return Ok(()),
                    Err(e) if crate::offline::unreachable(&e) => return Err(e),
                    Err(e) => warn!(ino = of.ino, "the master could not merge: {e}"),
                }
            }
        }
        let Some(merged) = merged else {
            of.st.lock().expect("file lock").no_merge = true;
            return Ok(());
        };
        of.uploads_settled().await;
        {
            let mut st = of.st.lock().expect("file lock");
            if st.changes != changes {
                // Written to while merging: merge again with what is there now.
                return Ok(());
            }
            let bs = self.cluster.block_size;
            st.reset(theirs_attr, theirs_slots);
            st.replace_content(merged.as_bytes(), bs);
            st.outcome = Some("merged with changes made elsewhere".into());
        }
        self.invalidate(of.ino);
        Ok(())
    }
}
