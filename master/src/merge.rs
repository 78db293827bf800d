//! Merging concurrent edits of text files.
//!
//! When a mount commits a text file whose content moved on since the mount read it, the mount
//! sends the master three texts: its own (`mine`), the current one, and (if it still can
//! read it) the one it started from (its base). The master merges them in the file's
//! **merge document**, an Automerge document kept in RocksDB (`T` ino): the root list
//! `lines` holds the file's lines, each content version the document knows maps to the
//! document heads that spell it, and every change is made by an actor naming the mount that
//! made it (`user@host`). A merge forks the document at the base's heads, turns base → mine
//! into list splices there (a line diff, one splice per changed run of lines), and merges
//! that fork with the current version's heads: edits of different lines all survive; two
//! inserts at one place both survive, in the order Automerge gives concurrent inserts (by
//! actor), the same for everyone because the master alone merges.
//!
//! A version the document does not know yet (plain commits do not touch it) is added from
//! the text the mount sends, as a change on top of the latest version it knows (versions are
//! a line: each commit starts from the current one). The document is bounded: past
//! `max_doc` bytes saved it is compacted to one change holding the current text; its version
//! table keeps the latest [`MAX_VERSIONS`]. A base it no longer knows is rebuilt from the
//! base text the mount sent. Each file also keeps a log of who merged what ([`HistoryEntry`]),
//! the last [`MAX_LOG`] entries, which outlives compaction.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjType, ReadDoc, ScalarValue, ROOT};
use serde::{Deserialize, Serialize};
use shardfs_common::proto::HistoryEntry;

/// Versions whose heads a merge document remembers.
pub const MAX_VERSIONS: usize = 64;
/// Log entries kept per file.
pub const MAX_LOG: usize = 200;

/// What the master keeps per merged file (`T` ino).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MergeRecord {
    /// The Automerge document, saved (compressed columnar form).
    doc: Vec<u8>,
    /// Content version → document heads, oldest first.
    versions: Vec<(u64, Vec<[u8; 32]>)>,
    /// Merge results not committed yet: (session, the version they merged with, heads). The
    /// session's next commit on that version is the result; it becomes version +1.
    pending: Vec<(u64, u64, Vec<[u8; 32]>)>,
    /// Numbers actors: every change has its own actor (`user@host`, a zero byte, this
    /// counter), since two changes may start from the same heads.
    next_actor: u64,
    pub log: Vec<HistoryEntry>,
}

/// One merge, as a mount asks for it.
pub struct MergeInput<'a> {
    pub ino: u64,
    /// The version the edit started from; None: not a version of this file (an editor's
    /// save over a file that was itself replaced since).
    pub base: Option<u64>,
    pub base_text: Option<&'a str>,
    pub current: u64,
    pub current_text: &'a str,
    /// Who made the current version (`user@host`, or "another mount").
    pub current_by: &'a str,
    pub mine: &'a str,
    /// Who merges (`user@host`).
    pub by: &'a str,
    pub session: u64,
    /// Unix seconds.
    pub now: u64,
    /// Compact the document past this many bytes.
    pub max_doc: usize,
    /// The change was made offline and is being replayed.
    pub replay: bool,
}

fn err(e: automerge::AutomergeError) -> String {
    format!("merge document: {e}")
}

fn heads_of(h: &[ChangeHash]) -> Vec<[u8; 32]> {
    h.iter().map(|c| c.0).collect()
}

fn hashes(h: &[[u8; 32]]) -> Vec<ChangeHash> {
    h.iter().map(|c| ChangeHash(*c)).collect()
}

/// The label of an actor id made by [`MergeRecord::actor`].
pub fn actor_label(a: &ActorId) -> String {
    let b = a.to_bytes();
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn lines_of(text: &str) -> Vec<ScalarValue> {
    text.split_inclusive('\n')
        .map(|l| ScalarValue::Str(l.into()))
        .collect()
}

/// Turn `old` into `new` in the document's list of lines: a line diff, each changed run of
/// lines one splice. Returns (lines removed, lines added).
fn apply_diff(
    doc: &mut AutoCommit,
    list: &automerge::ObjId,
    old: &str,
    new: &str,
) -> Result<(usize, usize), automerge::AutomergeError> {
    let diff = similar::TextDiff::configure()
        .algorithm(similar::Algorithm::Myers)
        .diff_lines(old, new);
    let new_lines = diff.new_slices();
    let mut shift: isize = 0;
    let (mut removed, mut added) = (0, 0);
    for op in diff.ops() {
        let (tag, old_r, new_r) = op.as_tag_tuple();
        if tag == similar::DiffTag::Equal {
            continue;
        }
        let pos = (old_r.start as isize + shift) as usize;
        let ins = new_lines[new_r.clone()]
            .iter()
            .map(|l| ScalarValue::Str((*l).into()));
        doc.splice(list, pos, old_r.len() as isize, ins)?;
        shift += new_r.len() as isize - old_r.len() as isize;
        removed += old_r.len();
        added += new_r.len();
    }
    Ok((removed, added))
}

fn list_of(doc: &AutoCommit) -> Result<automerge::ObjId, String> {
    match doc.get(ROOT, "lines").map_err(err)? {
        Some((automerge::Value::Object(ObjType::List), id)) => Ok(id),
        _ => Err("merge document has no list of lines".into()),
    }
}

/// The text at `heads`.
fn text_at(doc: &AutoCommit, list: &automerge::ObjId, heads: &[ChangeHash]) -> String {
    let mut out = String::new();
    for (v, _) in doc.values_at(list, heads) {
        if let automerge::Value::Scalar(sv) = v {
            if let ScalarValue::Str(l) = sv.as_ref() {
                out.push_str(l);
            }
        }
    }
    out
}

impl MergeRecord {
    fn actor(&mut self, label: &str) -> ActorId {
        let mut id = label.as_bytes().to_vec();
        id.push(0);
        id.extend_from_slice(&self.next_actor.to_be_bytes());
        self.next_actor += 1;
        ActorId::from(id)
    }

    fn known(&self, version: u64) -> Option<Vec<ChangeHash>> {
        self.versions
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, h)| hashes(h))
    }

    fn remember(&mut self, version: u64, heads: Vec<[u8; 32]>) {
        self.versions.retain(|(v, _)| *v != version);
        self.versions.push((version, heads));
        self.versions.sort_by_key(|(v, _)| *v);
        if self.versions.len() > MAX_VERSIONS {
            let drop = self.versions.len() - MAX_VERSIONS;
            self.versions.drain(..drop);
        }
    }

    pub fn note(&mut self, e: HistoryEntry) {
        self.log.push(e);
        if self.log.len() > MAX_LOG {
            let drop = self.log.len() - MAX_LOG;
            self.log.drain(..drop);
        }
    }

    /// A new document holding `text` (as `version`, if given); the version table starts
    /// over.
    fn fresh(
        &mut self,
        text: &str,
        version: Option<u64>,
        label: &str,
        now: u64,
    ) -> Result<AutoCommit, String> {
        let mut doc = AutoCommit::new().with_actor(self.actor(label));
        let list = doc.put_object(ROOT, "lines", ObjType::List).map_err(err)?;
        doc.splice(&list, 0, 0, lines_of(text)).map_err(err)?;
        doc.commit_with(
            CommitOptions::default()
                .with_message(match version {
                    Some(v) => format!("version {v}"),
                    None => "base".into(),
                })
                .with_time(now as i64),
        );
        self.versions.clear();
        self.pending.clear();
        if let Some(v) = version {
            let h = heads_of(&doc.get_heads());
            self.remember(v, h);
        }
        Ok(doc)
    }

    /// Make `version` (with `text`, made by `label`) known, as a change on top of the latest
    /// known version before it (or of `fallback`, if none is known).
    fn add_version(
        &mut self,
        doc: &mut AutoCommit,
        version: u64,
        text: &str,
        label: &str,
        now: u64,
        fallback: &[ChangeHash],
    ) -> Result<Vec<ChangeHash>, String> {
        let list = list_of(doc)?;
        let prev = self
            .versions
            .iter()
            .rev()
            .find(|(v, _)| *v < version)
            .map_or_else(|| fallback.to_vec(), |(_, h)| hashes(h));
        let old = text_at(doc, &list, &prev);
        let mut f = doc.fork_at(&prev).map_err(err)?;
        f.set_actor(self.actor(label));
        apply_diff(&mut f, &list, &old, text).map_err(err)?;
        f.commit_with(
            CommitOptions::default()
                .with_message(format!("version {version}"))
                .with_time(now as i64),
        );
        let h = f.get_heads();
        doc.merge(&mut f).map_err(err)?;
        self.remember(version, heads_of(&h));
        Ok(h)
    }

    /// Merge `m.mine` (an edit of version `m.base`) with version `m.current`; the merged text.
    pub fn merge(&mut self, m: &MergeInput) -> Result<String, String> {
        let stored = match self.doc.is_empty() {
            true => None,
            false => AutoCommit::load(&self.doc).ok(),
        };
        // The base: known to the document, or rebuilt from the text the mount sent.
        let known_base = m.base.and_then(|b| self.known(b));
        let (mut doc, base_heads) = match (stored, known_base) {
            (Some(d), Some(h)) => (d, h),
            _ => {
                let text = m.base_text.ok_or_else(|| {
                    "the version this edit started from is no longer known and could not be read"
                        .to_string()
                })?;
                let mut d = self.fresh(text, m.base, "base", m.now)?;
                let h = d.get_heads();
                (d, h)
            }
        };
        let list = list_of(&doc)?;
        // The current version: known with this very text, or added.
        let current_heads = match self
            .known(m.current)
            .filter(|h| text_at(&doc, &list, h) == m.current_text)
        {
            Some(h) => h,
            None => {
                self.versions.retain(|(v, _)| *v < m.current);
                self.add_version(
                    &mut doc,
                    m.current,
                    m.current_text,
                    m.current_by,
                    m.now,
                    &base_heads,
                )?
            }
        };
        let base_text = text_at(&doc, &list, &base_heads);
        // This mount's change, at its base.
        let mut mine = doc.fork_at(&base_heads).map_err(err)?;
        mine.set_actor(self.actor(m.by));
        let (removed, added) = apply_diff(&mut mine, &list, &base_text, m.mine).map_err(err)?;
        let base_name = m
            .base
            .map_or("an earlier version".into(), |b| format!("version {b}"));
        mine.commit_with(
            CommitOptions::default()
                .with_message(format!(
                    "edit of {base_name} merged with version {}",
                    m.current
                ))
                .with_time(m.now as i64),
        );
        // Merged with the current version (not with merges still waiting for their commit).
        let mut out = doc.fork_at(&current_heads).map_err(err)?;
        out.merge(&mut mine).map_err(err)?;
        let out_heads = out.get_heads();
        let text = text_at(&out, &list, &out_heads);
        doc.merge(&mut mine).map_err(err)?;
        self.pending.retain(|(s, _, _)| *s != m.session);
        self.pending
            .push((m.session, m.current, heads_of(&out_heads)));
        if self.pending.len() > 16 {
            self.pending.remove(0);
        }
        let saved = doc.save();
        if saved.len() > m.max_doc {
            // Compact: one change holding the merged text, known as the pending result.
            let mut small = self.fresh(&text, None, "compacted", m.now)?;
            let h = heads_of(&small.get_heads());
            self.pending = vec![(m.session, m.current, h)];
            self.doc = small.save();
        } else {
            self.doc = saved;
        }
        self.note(HistoryEntry {
            time: m.now,
            ino: m.ino,
            version: m.current,
            who: m.by.to_string(),
            what: format!(
                "{}merged an edit of {base_name} (-{removed} +{added} lines) with version {} by {}",
                if m.replay {
                    "offline change replayed: "
                } else {
                    ""
                },
                m.current,
                m.current_by
            ),
        });
        Ok(text)
    }

    /// Session `session` committed `version` on top of `on`: if that is a merge result, the
    /// document knows it as `version` now.
    pub fn committed(&mut self, session: u64, on: u64, version: u64) -> bool {
        let Some(i) = self
            .pending
            .iter()
            .position(|(s, v, _)| *s == session && *v == on)
        else {
            return false;
        };
        let (_, _, heads) = self.pending.remove(i);
        self.remember(version, heads);
        true
    }

    /// The document now belongs to another file (which replaced this one under its name)
    /// whose current version is `version`: only a merge result of `session` (the save that
    /// replaced it) is known, as that version; the old file's versions mean nothing there.
    pub fn adopt(&mut self, session: u64, version: u64) {
        let mine = self.pending.iter().rposition(|(s, _, _)| *s == session);
        self.versions.clear();
        if let Some(i) = mine {
            let (_, _, heads) = self.pending.remove(i);
            self.remember(version, heads);
        }
        self.pending.clear();
    }

    /// Bytes the saved document takes.
    pub fn doc_len(&self) -> usize {
        self.doc.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(
        base: u64,
        base_text: &'a str,
        current: u64,
        current_text: &'a str,
        mine: &'a str,
        by: &'a str,
        session: u64,
    ) -> MergeInput<'a> {
        MergeInput {
            ino: 2,
            base: Some(base),
            base_text: Some(base_text),
            current,
            current_text,
            current_by: "other@host",
            mine,
            by,
            session,
            now: 1_700_000_000,
            max_doc: 64 << 20,
            replay: false,
        }
    }

    fn numbered(n: usize, f: impl Fn(usize) -> String) -> String {
        (0..n).map(|i| format!("{}\n", f(i))).collect()
    }

    #[test]
    fn edits_of_different_lines_both_survive() {
        let base = numbered(10, |i| format!("line {i}"));
        let theirs = base.replace("line 2\n", "line 2 theirs\n");
        let mine = base.replace("line 7\n", "line 7 mine\n");
        let mut r = MergeRecord::default();
        let out = r
            .merge(&input(1, &base, 2, &theirs, &mine, "me@a", 7))
            .unwrap();
        assert!(out.contains("line 2 theirs\n") && out.contains("line 7 mine\n"));
        assert_eq!(out.lines().count(), 10);
        assert_eq!(r.log.len(), 1);
        assert_eq!(r.log[0].who, "me@a");
    }

    #[test]
    fn inserts_at_one_place_both_survive_and_the_document_carries_on() {
        let base = "a\nb\n";
        let theirs = "a\nx\nb\n";
        let mine = "a\ny\nb\n";
        let mut r = MergeRecord::default();
        let out = r
            .merge(&input(1, base, 2, theirs, mine, "me@a", 7))
            .unwrap();
        assert!(out == "a\nx\ny\nb\n" || out == "a\ny\nx\nb\n", "{out:?}");
        assert!(r.committed(7, 2, 3));
        // A third mount edited version 2 (before the merge was committed): the document
        // knows versions 2 and 3 and needs no base text.
        let late = "a\nx\nb\nz\n";
        let mut m = input(2, "", 3, &out, late, "third@c", 9);
        m.base_text = None;
        let out2 = r.merge(&m).unwrap();
        assert_eq!(out2, format!("{out}z\n"));
        // Actors are the mounts' labels.
        let doc = AutoCommit::load(&r.doc).unwrap();
        let mut doc = doc;
        let labels: Vec<String> = doc
            .get_changes(&[])
            .iter()
            .map(|c| actor_label(c.actor_id()))
            .collect();
        assert!(labels.contains(&"me@a".to_string()) && labels.contains(&"third@c".to_string()));
    }

    #[test]
    fn a_big_document_is_compacted_and_still_merges() {
        let base = numbered(2000, |i| format!("line {i} with some text to take room"));
        let mut r = MergeRecord::default();
        let mut current = base.clone();
        let mut version = 1;
        let mut compactions = 0;
        for round in 0..6 {
            let theirs = current.replace(
                &format!("line {} with", round * 10),
                &format!("line {} (theirs {round}) with", round * 10),
            );
            let mine = current.replace(
                &format!("line {} with", round * 10 + 5),
                &format!("line {} (mine {round}) with", round * 10 + 5),
            );
            let mut m = input(version, &current, version + 1, &theirs, &mine, "me@a", 1);
            m.max_doc = 5_500;
            let out = r.merge(&m).unwrap();
            assert!(out.contains(&format!("(theirs {round})")));
            assert!(out.contains(&format!("(mine {round})")));
            assert!(r.committed(1, version + 1, version + 2));
            current = out;
            version += 2;
            // Bounded: within the limit, or just compacted to the text alone.
            let just_compacted = r.versions.len() <= 1;
            compactions += usize::from(just_compacted);
            assert!(
                r.doc_len() <= 5_500 || just_compacted,
                "document of {} bytes not compacted",
                r.doc_len()
            );
        }
        assert!(compactions >= 1, "never compacted");
    }

    #[test]
    fn two_edits_of_one_line_keep_both_versions_and_unchanged_sides_take_the_other() {
        let mut r = MergeRecord::default();
        let m = r
            .merge(&input(1, "a\nb\nc", 2, "a\nB1\nc", "a\nB2\nc", "me@a", 1))
            .unwrap();
        assert!(m.starts_with("a\n") && m.ends_with("\nc"), "{m:?}");
        assert!(m.contains("B1\n") && m.contains("B2\n"), "{m:?}");
        let mut r = MergeRecord::default();
        assert_eq!(
            r.merge(&input(1, "x", 2, "z", "x", "me@a", 1)).unwrap(),
            "z"
        );
        let mut r = MergeRecord::default();
        assert_eq!(
            r.merge(&input(1, "x", 2, "x", "y", "me@a", 1)).unwrap(),
            "y"
        );
    }

    /// The master's cost of merging a 1 MiB text with 1,000 concurrent edits (500 per side),
    /// with a new merge document and with one that already knows both versions.
    /// `cargo test --release -p shardfs-master merge_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn merge_cost_of_a_1_mib_file_with_1000_edits() {
        let lines: Vec<String> = (0..20_000)
            .map(|i| format!("{i:05} the quick brown fox jumps over the lazy dog {i:05}\n"))
            .collect();
        let base: String = lines.concat();
        assert!(base.len() >= 1 << 20);
        let edit = |from: usize, tag: &str| -> String {
            let mut l = lines.clone();
            for k in 0..500 {
                let i = from + k * 32;
                l[i] = format!("{i:05} edited by {tag}\n");
            }
            l.concat()
        };
        let (theirs, mine) = (edit(0, "theirs"), edit(16, "mine"));
        let mut r = MergeRecord::default();
        let t = std::time::Instant::now();
        let merged = r
            .merge(&input(1, &base, 2, &theirs, &mine, "me@a", 1))
            .unwrap();
        let cold = t.elapsed();
        assert_eq!(merged.matches("edited by").count(), 1000);
        // A second mount's edit of version 1: base and current are in the document.
        let other = edit(8, "third");
        let t = std::time::Instant::now();
        let mut m = input(1, "", 2, &theirs, &other, "third@c", 2);
        m.base_text = None;
        let merged2 = r.merge(&m).unwrap();
        let warm = t.elapsed();
        assert_eq!(merged2.matches("edited by").count(), 1000);
        println!(
            "merge of {} KiB text, 1000 edits: {:.1} ms with a new document, {:.1} ms with a known base; document {} KiB",
            base.len() >> 10,
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            r.doc_len() >> 10
        );
    }

    #[test]
    fn an_unknown_base_without_its_text_is_an_error() {
        let mut r = MergeRecord::default();
        let mut m = input(1, "", 2, "a\n", "b\n", "me@a", 1);
        m.base_text = None;
        assert!(r.merge(&m).is_err());
    }
}
