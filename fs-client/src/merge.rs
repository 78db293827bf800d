//! Three-way merge of text files changed on two mounts at once.
//!
//! The change from the common base to each side becomes Automerge text operations (a diff at
//! character level) made on the same base document by two actors; merging the two documents
//! keeps both sides' edits. Each side's actor id is derived from its content, so the result
//! does not depend on which side merges: concurrent inserts at the same place come out in the
//! same order on every mount.

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ReadDoc, ROOT};

fn actor(text: &str, side: u8) -> ActorId {
    let mut id = blake3::hash(text.as_bytes()).as_bytes()[..16].to_vec();
    id[15] ^= side;
    ActorId::from(id)
}

/// Merge `theirs` (committed by another mount) and `mine` (this mount's change), both edits of
/// `base`.
pub fn merge_text(base: &str, theirs: &str, mine: &str) -> Result<String, String> {
    let e = |e: automerge::AutomergeError| format!("text merge: {e}");
    if theirs == mine || theirs == base {
        return Ok(mine.to_string());
    }
    if mine == base {
        return Ok(theirs.to_string());
    }
    let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![0u8; 16]));
    let text = doc.put_object(ROOT, "text", ObjType::Text).map_err(e)?;
    doc.update_text(&text, base).map_err(e)?;
    doc.commit();
    let (a1, a2) = (actor(theirs, 1), actor(mine, 2));
    let mut t = doc.fork().with_actor(a1);
    t.update_text(&text, theirs).map_err(e)?;
    t.commit();
    let mut m = doc.fork().with_actor(a2);
    m.update_text(&text, mine).map_err(e)?;
    m.commit();
    t.merge(&mut m).map_err(e)?;
    t.text(&text).map_err(e)
}

#[cfg(test)]
mod tests {
    use super::merge_text;

    #[test]
    fn edits_of_different_lines_both_survive() {
        let base = "one\ntwo\nthree\n";
        let theirs = "one\nTWO\nthree\n";
        let mine = "one\ntwo\nthree\nfour\n";
        assert_eq!(
            merge_text(base, theirs, mine).unwrap(),
            "one\nTWO\nthree\nfour\n"
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
    fn unchanged_sides_take_the_other() {
        assert_eq!(merge_text("x", "x", "y").unwrap(), "y");
        assert_eq!(merge_text("x", "z", "x").unwrap(), "z");
    }
}
