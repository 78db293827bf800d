//! Three-way merge of text files changed on two mounts at once.
//!
//! The change from the common base to each side becomes Automerge list operations on the
//! file's lines (a line diff, one splice per changed run of lines) made on the same base document by two actors; merging the two documents
//! keeps both sides' edits. Each side's actor id is derived from its content, so the result
//! does not depend on which side merges: concurrent inserts at the same place come out in the
//! same order on every mount.

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ReadDoc, ScalarValue, ROOT};

fn actor(text: &str, side: u8) -> ActorId {
    let mut id = blake3::hash(text.as_bytes()).as_bytes()[..16].to_vec();
    id[15] ^= side;
    ActorId::from(id)
}

/// Turn `old` into `new` in the document's list of lines: a line diff, each changed run of
/// lines one splice.
fn apply_diff(
    doc: &mut AutoCommit,
    list: &automerge::ObjId,
    old: &str,
    new: &str,
) -> Result<(), automerge::AutomergeError> {
    let diff = similar::TextDiff::configure()
        .algorithm(similar::Algorithm::Myers)
        .diff_lines(old, new);
    let new_lines = diff.new_slices();
    let mut shift: isize = 0;
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
    }
    Ok(())
}

/// Merge `theirs` (committed by another mount) and `mine` (this mount's change), both edits of
/// `base`. Lines are the unit: edits of different lines all survive; two different edits of
/// the same line keep both versions of it.
pub fn merge_text(base: &str, theirs: &str, mine: &str) -> Result<String, String> {
    let e = |e: automerge::AutomergeError| format!("text merge: {e}");
    if theirs == mine || theirs == base {
        return Ok(mine.to_string());
    }
    if mine == base {
        return Ok(theirs.to_string());
    }
    let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![0u8; 16]));
    let list = doc.put_object(ROOT, "lines", ObjType::List).map_err(e)?;
    let lines = similar::TextDiff::from_lines(base, base)
        .old_slices()
        .iter()
        .map(|l| ScalarValue::Str((*l).into()))
        .collect::<Vec<_>>();
    doc.splice(&list, 0, 0, lines).map_err(e)?;
    doc.commit();
    let (a1, a2) = (actor(theirs, 1), actor(mine, 2));
    let mut t = doc.fork().with_actor(a1);
    apply_diff(&mut t, &list, base, theirs).map_err(e)?;
    t.commit();
    let mut m = doc.fork().with_actor(a2);
    apply_diff(&mut m, &list, base, mine).map_err(e)?;
    m.commit();
    t.merge(&mut m).map_err(e)?;
    let mut out = String::with_capacity(theirs.len().max(mine.len()));
    for (v, _) in t.values(&list) {
        if let automerge::Value::Scalar(sv) = v {
            if let ScalarValue::Str(l) = sv.as_ref() {
                out.push_str(l);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::merge_text;

    #[test]
    fn edits_of_different_lines_both_survive() {
        let base = "one\ntwo\nthree\n";
        let theirs = "one\nTWÖ\nthree\n";
        let mine = "one\ntwo\nthree\nfour\n";
        assert_eq!(
            merge_text(base, theirs, mine).unwrap(),
            "one\nTWÖ\nthree\nfour\n"
        );
    }

    #[test]
    fn concurrent_appends_both_survive_in_the_same_order_either_way() {
        let base = "log\n";
        let (a, b) = ("log\nfrom a\n", "log\nfrom b\n");
        let ab = merge_text(base, a, b).unwrap();
        let ba = merge_text(base, b, a).unwrap();
        assert_eq!(ab, ba, "the order must not depend on who merges");
        assert!(ab.contains("from a\n") && ab.contains("from b\n"), "{ab}");
        assert!(ab.starts_with("log\n"));
    }

    #[test]
    fn two_edits_of_one_line_keep_both_versions() {
        let m = merge_text("a\nb\nc", "a\nB1\nc", "a\nB2\nc").unwrap();
        assert!(m.starts_with("a\n") && m.ends_with("\nc"), "{m:?}");
        assert!(m.contains("B1\n") && m.contains("B2\n"), "{m:?}");
        assert_eq!(m.len(), "a\nB1\nB2\nc".len());
    }

    #[test]
    fn unchanged_sides_take_the_other() {
        assert_eq!(merge_text("x", "x", "y").unwrap(), "y");
        assert_eq!(merge_text("x", "z", "x").unwrap(), "z");
    }

    /// The cost of one merge of a 1 MiB text with 1,000 concurrent edits (500 per side).
    /// `cargo test --release -p shardfs-client merge_cost -- --ignored --nocapture`
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
        let t = std::time::Instant::now();
        let merged = merge_text(&base, &theirs, &mine).unwrap();
        let el = t.elapsed();
        assert_eq!(merged.matches("edited by").count(), 1000);
        println!(
            "merge of {} KiB text, 1000 edits: {:.1} ms",
            base.len() >> 10,
            el.as_secs_f64() * 1e3
        );
    }
}
