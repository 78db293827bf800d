//! Storage policies per directory: `shardfs policy set DIR ec:K+M|replica:N`, inherited by what
//! is created under it, and `shardfs policy apply DIR --wait` to rewrite what is already there.
//! Real master, ten nodes and a mount; every check is on the shard files the nodes hold.

use shardfs_common::BlockId;
use shardfs_tests::*;
use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn policy(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("shardfs"))
        .arg("policy")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The nodes holding each shard of block `id`, checked distinct.
fn placed(c: &Cluster, id: BlockId) -> usize {
    let h = c.holders();
    let Some(v) = h.get(&id.to_hex()) else {
        return 0;
    };
    let nodes: HashSet<usize> = v.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        nodes.len(),
        v.len(),
        "block {id}: two shards on one node: {v:?}"
    );
    v.len()
}

const MIB: usize = 1 << 20;

#[test]
fn directories_store_new_files_in_their_policy_and_apply_rewrites_a_tree() {
    let mut c = Cluster::start_with(
        10,
        "4+2",
        // Plain ids, to find each block's shards by the hash of its content.
        &[
            "--seal-quiet-secs",
            "1",
            "--gc-grace-secs",
            "1",
            "--no-encryption",
        ],
    );
    let mp = c.mount("m");
    for d in ["ec", "rep", "tree"] {
        fs::create_dir(mp.join(d)).unwrap();
    }
    let (ok, out) = policy(&["set", path(&mp.join("ec")), "ec:6+3"]);
    assert!(ok, "{out}");
    let (ok, out) = policy(&["set", path(&mp.join("rep")), "replica:3"]);
    assert!(ok, "{out}");
    assert_eq!(
        policy(&["get", path(&mp.join("ec"))]),
        (true, "ec:6+3".into())
    );
    assert_eq!(
        policy(&["get", path(&mp.join("tree"))]),
        (true, "ec:4+2".into())
    );
    // Refused, with a reason: a policy wider than the cluster, nonsense, a path elsewhere.
    let (ok, out) = policy(&["set", path(&mp.join("tree")), "ec:9+3"]);
    assert!(!ok && out.contains("12 distinct nodes"), "{out}");
    let (ok, out) = policy(&["set", path(&mp.join("tree")), "raid5"]);
    assert!(!ok && out.contains("ec:K+M"), "{out}");
    let (ok, out) = policy(&["get", "/tmp"]);
    assert!(!ok && out.contains("not on a ShardFS mount"), "{out}");

    // New files (and a new directory's files) take their directory's policy.
    fs::create_dir(mp.join("ec/sub")).unwrap();
    assert_eq!(
        policy(&["get", path(&mp.join("ec/sub"))]),
        (true, "ec:6+3".into())
    );
    let a = random_bytes(1, 6 * MIB);
    let b = random_bytes(2, MIB);
    let r = random_bytes(3, 5 * MIB);
    fs::write(mp.join("ec/a"), &a).unwrap();
    fs::write(mp.join("ec/sub/b"), &b).unwrap();
    fs::write(mp.join("rep/r"), &r).unwrap();
    let tree: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(10 + i, 2 * MIB)).collect();
    for (i, t) in tree.iter().enumerate() {
        fs::write(mp.join(format!("tree/t{i}")), t).unwrap();
    }
    for part in [&a[..4 * MIB], &a[4 * MIB..], &b[..]] {
        assert_eq!(
            placed(&c, BlockId::of_coded(6, 3, part)),
            9,
            "ec:6+3: 9 shards"
        );
    }
    for part in [&r[..4 * MIB], &r[4 * MIB..]] {
        assert_eq!(
            placed(&c, BlockId::of_coded(1, 2, part)),
            3,
            "replica:3: 3 copies"
        );
    }
    for t in &tree {
        assert_eq!(placed(&c, BlockId::of(t)), 6, "the cluster's 4+2");
    }

    // Any 3 nodes down: ec:6+3 files still read.
    for (x, y, z) in [(0, 1, 2), (5, 7, 9)] {
        for n in [x, y, z] {
            c.kill_node(n);
        }
        let m = c.mount(&format!("down{x}{y}{z}"));
        assert_eq!(
            hash_file(&m.join("ec/a")),
            blake3::hash(&a).to_hex().to_string()
        );
        assert_eq!(
            hash_file(&m.join("ec/sub/b")),
            blake3::hash(&b).to_hex().to_string()
        );
        c.umount(&m);
        for n in [x, y, z] {
            c.start_node(n);
        }
        c.wait_nodes_up(10);
    }

    // A tree written under the cluster's code, converted: 4+2 (1.5x) becomes 8+2 (1.25x).
    let before: u64 = c.node_usage().iter().sum();
    let (ok, out) = policy(&["set", path(&mp.join("tree")), "ec:8+2"]);
    assert!(ok, "{out}");
    let (ok, out) = policy(&[
        "apply",
        path(&mp.join("tree")),
        "--wait",
        "--timeout",
        "120",
    ]);
    assert!(ok, "policy apply --wait: {out}");
    wait_until(
        Duration::from_secs(30),
        "the old blocks to be collected",
        || tree.iter().all(|t| placed(&c, BlockId::of(t)) == 0),
    );
    for (i, t) in tree.iter().enumerate() {
        assert_eq!(
            placed(&c, BlockId::of_coded(8, 2, t)),
            10,
            "tree/t{i} is 8+2 now"
        );
        assert_eq!(
            hash_file(&mp.join(format!("tree/t{i}"))),
            blake3::hash(t).to_hex().to_string()
        );
    }
    let after: u64 = c.node_usage().iter().sum();
    let logical = (tree.len() * 2 * MIB) as f64;
    let change = (before as f64 - after as f64) / logical;
    eprintln!("stored bytes of the tree: {before} -> {after} ({change:.4} of its size less)");
    assert!(
        (0.23..0.26).contains(&change),
        "from 1.5x to 1.25x the tree's size: {before} -> {after}"
    );
    // Files made there since take the new policy; the others kept theirs.
    assert_eq!(
        policy(&["get", path(&mp.join("tree/t0"))]),
        (true, "ec:8+2".into())
    );
    assert_eq!(
        policy(&["get", path(&mp.join("rep/r"))]),
        (true, "replica:3".into())
    );
}
