//! Write well-formed inputs for every target into fuzz/inputs/<target>/seeds/.

use shardfs_common::pki::{Ca, Identity, JoinToken, Role};
use shardfs_common::proto::{
    Attr, BlockMeta, Caller, MasterRequest, MasterResponse, NewSlot, NodeRequest, SetAttr,
    ShardLoc, Timespec,
};
use shardfs_common::{wire, BlockId, NodeId};

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let header = postcard::to_stdvec(msg).unwrap();
    let mut out = vec![shardfs_common::proto::PROTOCOL_VERSION];
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes());
    out.extend(header);
    out
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("inputs");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target).join("seeds");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let data = b"a block of content".to_vec();
    let meta = BlockMeta {
        id: BlockId::of(&data),
        len: data.len() as u64,
        ec: shardfs_common::ec::EcParams { k: 4, m: 2 },
        shard_size: 5,
        shards: (0..6)
            .map(|i| ShardLoc {
                node: NodeId(i + 1),
                hash: [i as u8; 32],
            })
            .collect(),
    };
    let now = Timespec::now();
    let reqs = [
        MasterRequest::Cluster,
        MasterRequest::Lookup {
            parent: 1,
            name: b"file".to_vec(),
        },
        MasterRequest::Commit {
            ino: 2,
            slots: vec![NewSlot {
                index: 0,
                id: Some(meta.id),
                used: meta.len,
                meta: Some(meta.clone()),
                extents: vec![shardfs_common::extent::Extent {
                    off: 10,
                    len: 20,
                    piece: meta.id,
                    piece_off: 0,
                }],
            }],
            pieces: vec![meta.clone()],
            size: meta.len,
            mtime: now,
            base: Some(1),
            session: 7,
            seq: 1,
            cut: None,
            mergeable: true,
        },
        MasterRequest::As {
            caller: Caller {
                uid: 1000,
                gid: 1000,
                groups: vec![4, 27],
            },
            req: Box::new(MasterRequest::SetAttr {
                ino: 2,
                set: SetAttr {
                    mode: Some(0o644),
                    mtime: Some(now),
                    now,
                    ..Default::default()
                },
                base: None,
            }),
        },
    ];
    for (i, r) in reqs.iter().enumerate() {
        write("frame", &format!("master-{i}"), &frame(r));
    }
    write(
        "frame",
        "node-put",
        &frame(&NodeRequest::Put {
            block: meta.id,
            index: 0,
            hash: [1; 32],
            cap: Default::default(),
        }),
    );
    write(
        "frame",
        "node-rebuild",
        &frame(&NodeRequest::Rebuild {
            block: meta.clone(),
            sources: vec![(0, "127.0.0.1:1".into())],
            rebuild: vec![(1, "127.0.0.1:2".into())],
        }),
    );
    write(
        "frame",
        "response",
        &frame(&MasterResponse::Revoked(vec!["client-1".into()])),
    );
    let _ = wire::MAX_BULK;

    let content = b"shard content".to_vec();
    let hash = shardfs_common::ids::shard_hash(&content);
    let mut shard = shardfs_node::store::shard_header(content.len(), &hash).to_vec();
    shard.extend_from_slice(&content);
    write("shard", "small", &shard);

    let attr = Attr {
        ino: 2,
        kind: shardfs_common::proto::FileKind::File,
        perm: 0o644,
        nlink: 1,
        uid: 0,
        gid: 0,
        size: meta.len,
        atime: now,
        mtime: now,
        ctime: now,
        rdev: 0,
        version: 3,
    };
    let entry = shardfs_client::offline::JournalEntry {
        ino: 2,
        parent: 1,
        name: b"doc.txt".to_vec(),
        base: attr,
        base_slots: vec![shardfs_common::proto::Slot {
            index: 0,
            used: meta.len,
            block: Some(meta.clone()),
            cap: Default::default(),
            extents: vec![shardfs_common::extent::Extent {
                off: 0,
                len: 4,
                piece: meta.id,
                piece_off: 2,
            }],
            pieces: vec![(meta, Default::default())],
        }],
        content: b"line 1\nline 2\n".to_vec(),
    };
    write("journal", "entry", &shardfs_client::offline::encode_entry(&entry));

    let mut doc = automerge::AutoCommit::new();
    use automerge::transaction::Transactable;
    let list = doc
        .put_object(automerge::ROOT, "lines", automerge::ObjType::List)
        .unwrap();
    doc.insert(&list, 0, "line 1\n").unwrap();
    doc.insert(&list, 1, "line 2\n").unwrap();
    write("merge_doc", "two-lines", &doc.save());

    let ca = Ca::create().unwrap();
    let cred = ca
        .credential(&Identity::new(Role::Client, "client-1"))
        .unwrap();
    write("credential", "pem", cred.to_pem().as_bytes());
    write("credential", "cert", &cred.cert);
    let token = JoinToken {
        secret: [3; 16],
        ca: [4; 32],
    };
    write("credential", "token", token.to_string().as_bytes());
}
