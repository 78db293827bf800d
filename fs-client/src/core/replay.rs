//! Replaying offline changes from the journal through the normal commit.

use super::*;

impl Core {
    /// Commit `content` as the new content of `ino`, made from `base` (a replayed offline
    /// change): merged or kept as a conflicted copy if the file changed meanwhile.
    pub(crate) async fn replay_into(
        &self,
        ino: Ino,
        base: Attr,
        base_slots: Vec<Slot>,
        content: &[u8],
    ) -> Result<String> {
        let of = self.snapshot(ino, base, base_slots);
        {
            let mut st = of.st.lock().expect("file lock");
            st.replace_content(content, self.cluster.block_size);
            st.replay = true;
        }
        self.flush_file(&of).await?;
        let outcome = of.st.lock().expect("file lock").outcome.take();
        Ok(outcome.unwrap_or_else(|| "committed".into()))
    }

    /// Tell the master how a replayed offline change ended (for `shardfs status` and the
    /// file's history). Best effort: the mount's log says it too.
    pub(crate) async fn report_replay(&self, ino: Ino, outcome: &str) {
        let req = MasterRequest::Replayed {
            ino,
            session: self.session.load(Ordering::Relaxed),
            outcome: outcome.to_string(),
        };
        if let Err(e) = self.call(req).await {
            debug!(ino, "could not report a replay to the master: {e}");
        }
    }

    /// After a replay: an open file of this mount shows the committed content.
    pub(crate) async fn offline_replayed(&self, ino: Ino) {
        if let Some(of) = self.open_file(ino) {
            if let Ok((attr, slots)) = self.fetch_map(ino, true, 0).await {
                // Opened offline, so the master did not count it until now.
                of.held.fetch_add(1, Ordering::SeqCst);
                of.st.lock().expect("file lock").reset(attr, slots);
            }
        }
        self.invalidate(ino);
    }
}
