//! Sealing: once a file's small writes have been quiet for the quiet period, its fragmented
//! slots are rewritten as erasure-coded blocks by a storage node and the replicated pieces are
//! freed, so data at rest costs (k + m) / k again. Real master, nodes and mounts.

use shardfs_tests::*;
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// Ids stored as 3 copies (pieces) and as 6 shards (4+2 blocks).
fn census(c: &Cluster) -> (usize, usize) {
    let h = c.holders();
    let copies = h.values().filter(|v| v.len() == 3).count();
    let blocks = h.values().filter(|v| v.len() == 6).count();
    (copies, blocks)
}

fn same(p: &Path, model: &[u8]) -> bool {
    hash_file(p) == blake3::hash(model).to_hex().to_string()
}

/// `n` fsync'd 4 KiB writes at pseudo-random page offsets of the file at `p`, mirrored in
/// `model`.
fn small_writes(p: &Path, model: &mut [u8], n: u64, seed: u64) {
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    let pages = (model.len() / 4096) as u64;
    for i in 0..n {
        let x = (seed + i)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
        let off = ((x % pages) * 4096) as usize;
        let data = random_bytes(seed * 1000 + i, 4096);
        f.write_at(&data, off as u64).unwrap();
        model[off..off + 4096].copy_from_slice(&data);
        if i % 16 == 15 {
            f.sync_all().unwrap();
        }
    }
    f.sync_all().unwrap();
}

/// Stored bytes over logical bytes, after sealing.
fn space(c: &Cluster, logical: usize) -> f64 {
    c.node_usage().iter().sum::<u64>() as f64 / logical as f64
}

/// Inline pieces the master holds, as `shardfs status` reports them.
fn inline_pieces(c: &Cluster) -> u64 {
    c.status()
        .and_then(|s| s["health"]["inline_pieces"].as_u64())
        .unwrap_or(u64::MAX)
}

/// 4 KiB random writes into a file are stored as pieces (3 copies; the mount keeps small
/// writes off the master with `--inline-kib 0`); after the quiet period
/// the file's slots are sealed into 4+2 blocks: no piece is left on any node, every stored
/// object is 6 shards on 6 distinct nodes, the bytes stored are (k + m) / k of the file's
/// size, and the file reads back identical, also with any 2 nodes down and after the master
/// is killed and restarted.
#[test]
fn quiet_small_writes_are_sealed_into_erasure_coded_blocks() {
    let mut c = Cluster::start_with(
        6,
        "4+2",
        &["--seal-quiet-secs", "2", "--gc-grace-secs", "1"],
    );
    let mp = c.mount_with("m", &["--inline-kib", "0"]);
    let size = 8 << 20;
    let mut model = random_bytes(1, size);
    fs::write(mp.join("f"), &model).unwrap();
    small_writes(&mp.join("f"), &mut model, 96, 7);
    let (copies, _) = census(&c);
    assert!(copies > 0, "the small writes were stored as pieces first");
    assert!(space(&c, size) > 1.6, "pieces cost more than the code");

    wait_until(Duration::from_secs(90), "the file to be sealed", || {
        census(&c) == (0, 2) && c.holders().len() == 2
    });
    for (id, v) in c.holders() {
        let nodes: HashSet<usize> = v.iter().map(|(n, _)| *n).collect();
        assert_eq!(nodes.len(), 6, "block {id}: six shards on six nodes: {v:?}");
    }
    wait_until(Duration::from_secs(10), "status to show the seals", || {
        c.status()
            .is_some_and(|s| s["health"]["unsealed_files"] == 0 && s["health"]["sealed_slots"] == 2)
    });
    let ratio = space(&c, size);
    eprintln!("stored / logical after sealing: {ratio:.4}");
    assert!(
        (1.5..1.52).contains(&ratio),
        "after sealing, 4+2 costs 1.5x: {ratio}"
    );
    let fresh = c.mount("fresh");
    assert!(same(&fresh.join("f"), &model), "the sealed file reads back");
    c.umount(&fresh);

    for (a, b) in [(0, 1), (3, 5)] {
        c.kill_node(a);
        c.kill_node(b);
        let m = c.mount(&format!("down{a}{b}"));
        assert!(
            same(&m.join("f"), &model),
            "sealed blocks read with nodes {a} and {b} down"
        );
        c.umount(&m);
        c.start_node(a);
        c.start_node(b);
        c.wait_nodes_up(6);
    }
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(6);
    let after = c.mount("after");
    assert!(
        same(&after.join("f"), &model),
        "the sealed file reads back after a master kill -9"
    );
    // Small writes again after sealing: pieces over the sealed blocks, sealed in turn.
    small_writes(&after.join("f"), &mut model, 40, 99);
    assert!(
        same(&mp.join("f"), &model),
        "the first mount reads the new writes"
    );
    wait_until(
        Duration::from_secs(90),
        "the new writes to be sealed",
        || census(&c).0 == 0,
    );
    assert!(
        same(&after.join("f"), &model),
        "sealed twice, still identical"
    );
}

/// A file open on a mount is not sealed (its map would go stale under it); closed, it is.
#[test]
fn an_open_file_is_sealed_only_once_closed() {
    let mut c = Cluster::start_with(
        6,
        "4+2",
        &["--seal-quiet-secs", "1", "--gc-grace-secs", "1"],
    );
    let mp = c.mount_with("m", &["--inline-kib", "0"]);
    let size = 4 << 20;
    let mut model = random_bytes(3, size);
    fs::write(mp.join("f"), &model).unwrap();
    small_writes(&mp.join("f"), &mut model, 20, 5);
    let reader = c.mount("reader");
    let open = fs::File::open(reader.join("f")).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert!(census(&c).0 > 0, "pieces of an open file stay");
    let mut back = vec![0u8; size];
    open.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model, "the open file reads right");
    drop(open);
    wait_until(
        Duration::from_secs(60),
        "the closed file to be sealed",
        || census(&c) == (0, 1),
    );
    assert!(same(&reader.join("f"), &model), "sealed, it reads right");
}

/// The master killed (kill -9) and a node killed while slots are being sealed: nothing is
/// lost, sealing finishes after the restarts, no piece is left, and once a scrub has taken
/// the leftovers of the interrupted seal the bytes stored are (k + m) / k again.
#[test]
fn killing_the_master_and_a_node_during_sealing_loses_nothing() {
    let mut c = Cluster::start_with(
        6,
        "4+2",
        &[
            "--seal-quiet-secs",
            "1",
            "--seal-mib-per-sec",
            "4",
            "--gc-grace-secs",
            "1",
            "--orphan-grace-secs",
            "1",
        ],
    );
    let mp = c.mount("m");
    let size = 48 << 20;
    let mut model = random_bytes(11, size);
    fs::write(mp.join("f"), &model).unwrap();
    small_writes(&mp.join("f"), &mut model, 200, 3);
    c.umount(&mp);
    let slots = size / (4 << 20);
    wait_until(Duration::from_secs(60), "sealing to start", || {
        census(&c).1 > slots
    });
    c.kill_master();
    c.kill_node(4);
    c.start_master();
    let m = c.mount("during");
    assert!(same(&m.join("f"), &model), "reads with a seal interrupted");
    c.umount(&m);
    c.start_node(4);
    c.wait_nodes_up(6);
    wait_until(Duration::from_secs(180), "sealing to finish", || {
        census(&c).0 == 0
    });
    let m = c.mount("after");
    assert!(same(&m.join("f"), &model), "reads after sealing");
    c.umount(&m);
    let (ok, out, err) = c.admin(&["scrub"]);
    assert!(ok, "scrub: {out}{err}");
    wait_until(Duration::from_secs(60), "leftovers to be deleted", || {
        c.holders().len() == slots
    });
    let ratio = space(&c, size);
    eprintln!("stored / logical after sealing through crashes: {ratio:.4}");
    assert!((1.5..1.52).contains(&ratio), "1.5x after sealing: {ratio}");
}

/// fsync'd 4 KiB writes go to the master inside their commits (inline pieces), not to any
/// node: nothing but the file's base block is on the nodes, `status` counts the inline pieces,
/// and the file reads back identical on another mount with no block cache, with any two nodes
/// down, and after a master kill -9. Once quiet, the inline pieces are sealed into 4+2
/// blocks and leave the master, and the bytes stored are (k + m) / k of the file.
#[test]
fn fsynced_small_writes_go_inline_to_the_master_and_are_sealed_onto_the_nodes() {
    let mut c = Cluster::start_with(
        6,
        "4+2",
        &["--seal-quiet-secs", "6", "--gc-grace-secs", "1"],
    );
    let mp = c.mount("m");
    let size = 8 << 20;
    let mut model = random_bytes(21, size);
    fs::write(mp.join("f"), &model).unwrap();
    let before = c.holders();
    assert_eq!(census(&c), (0, 2), "the file's two blocks as 4+2");
    small_writes(&mp.join("f"), &mut model, 64, 17);
    assert_eq!(
        c.holders(),
        before,
        "no node got anything for the small writes"
    );
    let held = inline_pieces(&c);
    assert!(
        (4..u64::MAX).contains(&held),
        "one inline piece per fsync at least: {held}"
    );
    let check = |c: &mut Cluster, name: &str, why: &str| {
        let m = c.mount_with(name, &["--cache-mib", "0"]);
        assert!(same(&m.join("f"), &model), "{why}");
        c.umount(&m);
    };
    check(&mut c, "other", "read on another mount");
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(6);
    check(&mut c, "restarted", "read after a master kill -9");
    c.kill_node(1);
    c.kill_node(4);
    check(&mut c, "down", "read with two nodes down");
    c.start_node(1);
    c.start_node(4);
    c.wait_nodes_up(6);
    wait_until(
        Duration::from_secs(90),
        "the inline pieces to be sealed",
        || inline_pieces(&c) == 0 && census(&c) == (0, 2) && c.holders().len() == 2,
    );
    let ratio = space(&c, size);
    assert!((1.5..1.52).contains(&ratio), "1.5x after sealing: {ratio}");
    check(&mut c, "sealed", "read after sealing");
    c.kill_node(0);
    c.kill_node(5);
    check(&mut c, "sealed-down", "sealed, read with two nodes down");
}

/// A small file (and a new file's short tail) is stored as m + 1 full copies when closed
/// (by a mount that keeps small writes off the master: `--inline-kib 0`), not
/// as k + m shards of a few bytes each; it reads back identical from another mount and with
/// any m nodes down, and is sealed into a 4+2 block once quiet.
#[test]
fn small_files_are_stored_as_copies_then_sealed() {
    let mut c = Cluster::start_with(
        6,
        "4+2",
        &["--seal-quiet-secs", "8", "--gc-grace-secs", "1"],
    );
    let mp = c.mount_with("m", &["--inline-kib", "0"]);
    let sizes = [1usize, 100, 4096, 6000, 30_000, 65_536];
    let mut files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("s{i}"), random_bytes(500 + i as u64, n)))
        .collect();
    files.push(("tail".into(), random_bytes(600, (4 << 20) + 5000)));
    for (name, data) in &files {
        fs::write(mp.join(name), data).unwrap();
    }
    let (copies, blocks) = census(&c);
    assert_eq!(
        (copies, blocks),
        (files.len(), 1),
        "one piece of 3 copies per small file and for the tail, one 4+2 block for the full block"
    );
    let check = |m: &Path, why: &str| {
        for (name, data) in &files {
            assert!(same(&m.join(name), data), "{name}: {why}");
        }
    };
    let other = c.mount("other");
    check(&other, "read on another mount");
    c.umount(&other);
    c.kill_node(0);
    c.kill_node(1);
    let down = c.mount("down");
    check(&down, "read with two nodes down");
    c.umount(&down);
    c.start_node(0);
    c.start_node(1);
    c.wait_nodes_up(6);

    wait_until(
        Duration::from_secs(90),
        "the small files to be sealed",
        || census(&c) == (0, files.len() + 1) && c.holders().len() == files.len() + 1,
    );
    let sealed = c.mount("sealed");
    check(&sealed, "read after sealing");
    c.umount(&sealed);
    c.kill_node(2);
    c.kill_node(5);
    let down = c.mount("down-sealed");
    check(&down, "read after sealing with two nodes down");
}
