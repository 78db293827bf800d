//! Fuzz targets: every decoder that reads bytes from the network or from disk, each as a
//! function of arbitrary bytes that must never panic (scripts/fuzz.sh runs them under AFL++;
//! `cargo test` here replays the seeds and every regression input kept in `fuzz/inputs/`).

use shardfs_common::pki::{Credential, Identity, JoinToken};
use shardfs_common::proto::{MasterRequest, MasterResponse, NodeRequest, NodeResponse};
use shardfs_common::wire;

/// A fuzz target: takes any bytes, must never panic.
pub type Target = fn(&[u8]);

/// The targets, by name (the name is also the directory of its inputs).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("shard", shard),
    ("journal", journal),
    ("merge_doc", merge_doc),
    ("credential", credential),
];

/// A frame as a server or client reads it: prefix, then the header as each message type,
/// then the checks a master applies before storing anything it names.
pub fn frame(data: &[u8]) {
    let Some(prefix) = data.get(..wire::PREFIX_LEN) else {
        return;
    };
    let prefix: &[u8; wire::PREFIX_LEN] = prefix.try_into().expect("prefix length");
    if wire::parse_prefix(prefix, wire::MAX_BULK).is_err() {
        return;
    }
    let header = &data[wire::PREFIX_LEN..];
    if let Ok(req) = wire::decode_header::<MasterRequest>(header) {
        master_checks(&req);
    }
    let _ = wire::decode_header::<MasterResponse>(header);
    let _ = wire::decode_header::<NodeRequest>(header);
    let _ = wire::decode_header::<NodeResponse>(header);
}

fn master_checks(req: &MasterRequest) {
    let ec = shardfs_common::ec::EcParams { k: 4, m: 2 };
    match req {
        MasterRequest::Commit {
            slots,
            pieces,
            mtime,
            ..
        } => {
            let _ = mtime.check().map(|()| mtime.to_system());
            for s in slots {
                if let Some(meta) = &s.meta {
                    let _ = meta.check(ec, 4 << 20);
                }
                let _ = shardfs_common::extent::check(&s.extents, 4 << 20);
            }
            for m in pieces {
                let _ = m.check(ec, 4 << 20);
            }
        }
        MasterRequest::SetAttr { set, .. } => {
            for t in [Some(set.now), set.atime, set.mtime].into_iter().flatten() {
                let _ = t.check().map(|()| t.to_system());
            }
        }
        MasterRequest::As { req, .. } => master_checks(req),
        _ => {}
    }
}

/// A shard file as a node reads it back.
pub fn shard(data: &[u8]) {
    let _ = shardfs_node::store::parse_shard(data);
}

/// A journal entry as a mount replays it.
pub fn journal(data: &[u8]) {
    if let Ok(e) = shardfs_client::offline::decode_entry(data) {
        for s in &e.base_slots {
            if let Some(b) = &s.block {
                let _ = b.check_shape();
            }
            for (m, _) in &s.pieces {
                let _ = m.check_shape();
            }
            let _ = shardfs_common::extent::check(&s.extents, 4 << 20);
        }
    }
}

/// A merge document as the master loads it: the document, its list of lines, the text.
pub fn merge_doc(data: &[u8]) {
    use automerge::ReadDoc;
    let Ok(doc) = automerge::AutoCommit::load(data) else {
        return;
    };
    if let Ok(Some((automerge::Value::Object(automerge::ObjType::List), list))) =
        doc.get(automerge::ROOT, "lines")
    {
        let heads = doc.clone().get_heads();
        let _ = doc.values_at(&list, &heads).count();
    }
}

/// Credential files, join tokens and certificates as the programs read them.
pub fn credential(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Credential::from_pem(text);
        let _ = JoinToken::parse(text);
    }
    let _ = Identity::of_cert(&rustls::pki_types::CertificateDer::from(data.to_vec()));
}

#[cfg(test)]
mod tests {
    /// Every kept input (seeds and regressions) runs through its target without a panic.
    #[test]
    fn kept_inputs_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("inputs");
        let mut n = 0;
        for (name, f) in super::TARGETS {
            for dir in ["seeds", "regressions"] {
                let Ok(rd) = std::fs::read_dir(root.join(name).join(dir)) else {
                    continue;
                };
                for e in rd.flatten() {
                    f(&std::fs::read(e.path()).unwrap());
                    n += 1;
                }
            }
        }
        assert!(n > 0, "no inputs found under {}", root.display());
    }
}
