//! Directory listings in a bounded window.

use super::*;
use crate::master::CALLER;

/// Entries asked of the master per page: with attributes (one inode record read each; the
/// first page is smaller, as the kernel's first call of a plain listing is a readdirplus
/// too), and names only (the directory's entries alone).
const PAGE_FULL_FIRST: u32 = 256;
const PAGE_FULL: u32 = 1024;
const PAGE_NAMES: u32 = 4096;
/// Entries per page: the first one, or a later one, with or without attributes.
fn page_size(first: bool, attrs: bool) -> u32 {
    match (first, attrs) {
        (true, true) => PAGE_FULL_FIRST,
        (false, true) => PAGE_FULL,
        (_, false) => PAGE_NAMES,
    }
}
/// Entries kept behind the reader, so a short seek back needs no new listing.
const KEEP_BEHIND: usize = 1024;
/// A listing a program reads starts listings of up to this many of its subdirectories
/// ahead of it (a tree walk — `find`, `du`, `rm -rf` — then finds them held), by at most
/// `PREFETCH_TASKS` listings' worth of tasks, each with `PREFETCH_INFLIGHT` requests out.
const PREFETCH_DIRS: usize = 32;
pub(super) const PREFETCH_TASKS: usize = 2;
const PREFETCH_INFLIGHT: usize = 4;

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

    fn listing(&self, fh: u64) -> Result<Arc<Mutex<Listing>>> {
        match self.handle(fh)? {
            Handle::Dir(l) => Ok(l),
            Handle::File(..) => Err(Error::fs(
                shardfs_common::ErrorCode::NotDir,
                "not a directory",
            )),
        }
    }

    /// Entries of an open directory from `offset` on (0 and 1 are "." and ".."), with their
    /// attributes (readdirplus, and everything but the kernel's plain readdir).
    pub async fn readdir(
        self: &Arc<Self>,
        fh: u64,
        ino: Ino,
        offset: i64,
        want: usize,
    ) -> Result<Vec<ListEntry>> {
        let listing = self.listing(fh)?;
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
        self.fill(&listing, from, want, true).await?;
        let l = listing.lock().expect("listing lock");
        let skip = from.saturating_sub(l.first);
        for (i, e) in l.entries.iter().enumerate().skip(skip).take(want) {
            let Some(attr) = &e.attr else {
                // `fill` fetched attributes for the whole span; the window moved meanwhile.
                break;
            };
            out.push(ListEntry {
                offset: (l.first + i + 3) as i64,
                name: e.name.clone(),
                attr: attr.clone(),
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

    /// Entries of an open directory from `offset` on, names, inodes and kinds only (the
    /// kernel's plain readdir: `ls -f`, `find`).
    pub async fn readdir_names(
        self: &Arc<Self>,
        fh: u64,
        ino: Ino,
        offset: i64,
        want: usize,
    ) -> Result<Vec<NameListEntry>> {
        let listing = self.listing(fh)?;
        let offset = offset.max(0) as usize;
        let mut out = Vec::new();
        for (o, name) in [(0usize, &b"."[..]), (1, &b".."[..])]
            .into_iter()
            .skip(offset)
        {
            out.push(NameListEntry {
                offset: o as i64 + 1,
                name: name.to_vec(),
                ino,
                kind: FileKind::Dir,
            });
        }
        let from = offset.saturating_sub(2);
        self.fill(&listing, from, want, false).await?;
        let l = listing.lock().expect("listing lock");
        let skip = from.saturating_sub(l.first);
        for (i, e) in l.entries.iter().enumerate().skip(skip).take(want) {
            out.push(NameListEntry {
                offset: (l.first + i + 3) as i64,
                name: e.name.clone(),
                ino: e.ino,
                kind: e.kind,
            });
        }
        Ok(out)
    }

    /// [`Core::readdir_names`] answered on the caller's thread, with each entry handed to
    /// `add` (which returns true when the kernel's buffer is full) — when the window or a
    /// held listing has the entries. None: ask `readdir_names`.
    pub fn readdir_names_now(
        &self,
        fh: u64,
        ino: Ino,
        offset: i64,
        want: usize,
        mut add: impl FnMut(Ino, i64, FileKind, &[u8]) -> bool,
    ) -> Option<Result<()>> {
        let listing = match self.listing(fh) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let offset = offset.max(0) as usize;
        let from = offset.saturating_sub(2);
        if !self.fill_now(&listing, from, want, false) {
            return None;
        }
        for (o, name) in [(0usize, &b"."[..]), (1, &b".."[..])]
            .into_iter()
            .skip(offset)
        {
            if add(ino, o as i64 + 1, FileKind::Dir, name) {
                return Some(Ok(()));
            }
        }
        let l = listing.lock().expect("listing lock");
        let skip = from.saturating_sub(l.first);
        for (i, e) in l.entries.iter().enumerate().skip(skip).take(want) {
            if add(e.ino, (l.first + i + 3) as i64, e.kind, &e.name) {
                break;
            }
        }
        Some(Ok(()))
    }

    /// Make the window hold entries `[from, from + want)` (or up to the end), with attributes
    /// if `attrs`.
    async fn fill(
        self: &Arc<Self>,
        listing: &Mutex<Listing>,
        from: usize,
        want: usize,
        attrs: bool,
    ) -> Result<()> {
        while let Some((dir, after)) = self.fill_step(listing, from, want, attrs) {
            let (page, more) = match self.known_listing(
                dir,
                after.as_deref(),
                page_size(after.is_none(), attrs) as usize,
                attrs,
            ) {
                Some(held) => {
                    metrics::counter!("shardfs_mount_listing_pages_held_total").increment(1);
                    held
                }
                None => self.list_page(dir, after.clone(), attrs).await?,
            };
            if after.is_none() {
                self.prefetch_children(&page);
            }
            extend_listing(listing, after, page, more);
        }
        Ok(())
    }

    /// [`Core::fill`] without waiting: true if the window holds the span now, from what it
    /// had or from held listings of a later page (a first page goes the waiting way, which
    /// also starts the listings of its subdirectories as the caller).
    fn fill_now(&self, listing: &Mutex<Listing>, from: usize, want: usize, attrs: bool) -> bool {
        while let Some((dir, after)) = self.fill_step(listing, from, want, attrs) {
            if after.is_none() {
                return false;
            }
            let size = page_size(false, attrs) as usize;
            let Some((page, more)) = self.known_listing(dir, after.as_deref(), size, attrs) else {
                return false;
            };
            metrics::counter!("shardfs_mount_listing_pages_held_total").increment(1);
            extend_listing(listing, after, page, more);
        }
        true
    }

    /// Trim the window for a read of `[from, from + want)`; None if it holds that span (or
    /// the listing's end), else the directory and the name its next page starts after.
    fn fill_step(
        &self,
        listing: &Mutex<Listing>,
        from: usize,
        want: usize,
        attrs: bool,
    ) -> Option<(Ino, Option<Vec<u8>>)> {
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
        if attrs {
            // Entries listed without attributes where these are wanted: list again from the
            // one before them.
            let start = from.saturating_sub(l.first);
            let bare = l
                .entries
                .iter()
                .enumerate()
                .skip(start)
                .take(want)
                .find(|(_, e)| e.attr.is_none())
                .map(|(i, _)| i);
            match bare {
                Some(0) => {
                    l.first = 0;
                    l.entries.clear();
                    l.more = true;
                }
                Some(i) => {
                    l.entries.truncate(i);
                    l.more = true;
                }
                None => {}
            }
        }
        if l.first + l.entries.len() >= from + want || !l.more {
            return None;
        }
        Some((l.ino, l.entries.back().map(|e| e.name.clone())))
    }

    /// List, ahead of the reader, the subdirectories in `page` this mount does not know
    /// whole yet. Only while the change log is followed (otherwise nothing listed is held),
    /// and skipped when enough listings are being fetched ahead already.
    fn prefetch_children(self: &Arc<Self>, page: &[Listed]) {
        if !self.log_fresh() {
            return;
        }
        let kids = self.unknown_dirs(
            page.iter()
                .filter(|e| e.kind == FileKind::Dir)
                .map(|e| e.ino),
            PREFETCH_DIRS,
        );
        if kids.is_empty() {
            return;
        }
        let Ok(permit) = self.prefetching.clone().try_acquire_owned() else {
            return;
        };
        let core = self.clone();
        // The caller's identity stays with the task: the master checks each listing against it.
        let caller = CALLER.try_with(|c| *c).ok();
        let walk = async move {
            use futures::StreamExt;
            futures::stream::iter(kids)
                .for_each_concurrent(PREFETCH_INFLIGHT, |ino| {
                    let core = core.clone();
                    async move {
                        if !core.dir_known(ino) {
                            let _ = core.list_page(ino, None, true).await;
                        }
                    }
                })
                .await;
            drop(permit);
        };
        match caller {
            Some(c) => self.rt.spawn(CALLER.scope(c, walk)),
            None => self.rt.spawn(walk),
        };
    }

    /// One page of directory `dir` after `after` from the master, remembered in the caches.
    async fn list_page(
        &self,
        dir: Ino,
        after: Option<Vec<u8>>,
        attrs: bool,
    ) -> Result<(Vec<Listed>, bool)> {
        let whole = after.is_none();
        let after_again = after.clone();
        let limit = page_size(whole, attrs);
        let req = match attrs {
            true => MasterRequest::ReadDir {
                ino: dir,
                limit,
                after,
            },
            false => MasterRequest::ReadDirNames {
                ino: dir,
                after,
                limit,
            },
        };
        let (page, more, g) = match self.call_granted(req).await {
            (Ok(MasterResponse::Entries { entries, more }), g) => {
                let page = entries
                    .into_iter()
                    .map(|e| {
                        self.remember(&e.attr, g);
                        Listed {
                            name: e.name,
                            ino: e.attr.ino,
                            kind: e.attr.kind,
                            attr: Some(e.attr),
                        }
                    })
                    .collect::<Vec<_>>();
                (page, more, g)
            }
            (Ok(MasterResponse::Names { entries, more }), g) => {
                let page = entries
                    .into_iter()
                    .map(|e| Listed {
                        name: e.name,
                        ino: e.ino,
                        kind: e.kind,
                        attr: None,
                    })
                    .collect::<Vec<_>>();
                (page, more, g)
            }
            // A master from before `ReadDirNames` cannot decode the request (it answers a
            // protocol error): list with attributes instead.
            (Err(e), _)
                if !attrs
                    && matches!(
                        e.code(),
                        shardfs_common::ErrorCode::Protocol | shardfs_common::ErrorCode::Invalid
                    ) =>
            {
                return Box::pin(self.list_page(dir, after_again, true)).await;
            }
            (r, _) => return Err(unexpected(r?)),
        };
        for e in &page {
            self.meta().put_name(dir, &e.name, e.ino, g);
        }
        // The whole directory in one answer, if nothing heard of since could have changed it.
        if whole && !more && self.meta().still_holds(g) {
            self.know_dir(
                dir,
                page.iter().map(|e| {
                    let entry = Entry {
                        ino: e.ino,
                        kind: e.kind,
                    };
                    (e.name.clone(), entry)
                }),
            );
        }
        Ok((page, more))
    }
}

/// Add `page`, listed after the name `after`, to the window (unless the window moved on
/// meanwhile).
fn extend_listing(listing: &Mutex<Listing>, after: Option<Vec<u8>>, page: Vec<Listed>, more: bool) {
    let mut l = listing.lock().expect("listing lock");
    if l.entries.back().map(|e| &e.name) == after.as_ref() {
        l.entries.extend(page);
        l.more = more;
    }
}
