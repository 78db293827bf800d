//! Directory listings in a bounded window.

use super::*;

impl Core {
    pub async fn opendir(&self, ino: Ino) -> Result<u64> {
        Ok(self.add_handle(Handle::Dir(Arc::new(Mutex::new(Listing {
            ino,
            first: 0,
            entries: std::collections::VecDeque::new(),
            more: true,
        })))))
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().expect("handles lock").remove(&fh);
    }

    /// Entries of an open directory from `offset` on (0 and 1 are "." and "..").
    pub async fn readdir(
        &self,
        fh: u64,
        ino: Ino,
        offset: i64,
        want: usize,
    ) -> Result<Vec<ListEntry>> {
        let listing = match self.handle(fh)? {
            Handle::Dir(l) => l,
            Handle::File(..) => {
                return Err(Error::fs(
                    shardfs_common::ErrorCode::NotDir,
                    "not a directory",
                ))
            }
        };
        let offset = offset.max(0) as usize;
        let mut out = Vec::new();
        if offset < 2 {
            let attr = self.getattr(ino).await?;
            for (o, name) in [(0usize, &b"."[..]), (1, &b".."[..])]
                .into_iter()
                .skip(offset)
            {
                out.push(ListEntry {
                    offset: o as i64 + 1,
                    name: name.to_vec(),
                    attr: attr.clone(),
                });
            }
        }
        let from = offset.saturating_sub(2);
        // Entries kept behind the reader, so a short seek back needs no new listing.
        const KEEP_BEHIND: usize = 1024;
        loop {
            let (have_end, more, after, dir) = {
                let mut l = listing.lock().expect("listing lock");
                if from < l.first {
                    // Before the window: list again from the start.
                    l.first = 0;
                    l.entries.clear();
                    l.more = true;
                }
                // Drop what lies well behind the reader.
                // (The last entry stays: the listing continues after its name.)
                while l.first + KEEP_BEHIND < from && l.entries.len() > 1 {
                    l.entries.pop_front();
                    l.first += 1;
                }
                (
                    l.first + l.entries.len(),
                    l.more,
                    l.entries.back().map(|e| e.name.clone()),
                    l.ino,
                )
            };
            if have_end >= from + want || !more {
                break;
            }
            let req = MasterRequest::ReadDir {
                ino: dir,
                after: after.clone(),
                limit: 1024,
            };
            match self.call_granted(req).await {
                (Ok(MasterResponse::Entries { entries, more }), g) => {
                    for e in &entries {
                        self.remember(&e.attr, g);
                        self.meta().put_name(dir, &e.name, e.attr.ino, g);
                    }
                    if after.is_none() && !more {
                        // The whole directory in one answer.
                        self.know_dir(dir, entries.iter().map(|e| e.name.clone()));
                    }
                    let mut l = listing.lock().expect("listing lock");
                    if l.entries.back().map(|e| &e.name) == after.as_ref() {
                        l.entries.extend(entries);
                        l.more = more;
                    }
                }
                (r, _) => return Err(unexpected(r?)),
            }
        }
        let l = listing.lock().expect("listing lock");
        let skip = from.saturating_sub(l.first);
        for (i, e) in l.entries.iter().enumerate().skip(skip).take(want) {
            out.push(ListEntry {
                offset: (l.first + i + 3) as i64,
                name: e.name.clone(),
                attr: e.attr.clone(),
            });
        }
        drop(l);
        for e in out.iter_mut() {
            if e.attr.kind == FileKind::File {
                e.attr = self.patch(e.attr.clone());
            }
        }
        Ok(out)
    }
}
