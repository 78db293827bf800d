//! Repair and scrub on real processes: nodes killed with SIGKILL, shard files corrupted on disk,
//! and every byte checked afterwards.

use shardfs_tests::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Files of mixed sizes (several blocks, one block, small), written through `mp`; returns
/// name → blake3.
fn write_files(mp: &Path, seed: u64) -> BTreeMap<String, String> {
    let sizes = [
        9 << 20,
        (5 << 20) + 12345,
        4 << 20,
        3 << 20,
        1 << 20,
        200_000,
        70_000,
        4096,
        100,
        0,
    ];
    let mut want = BTreeMap::new();
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("f{i}.bin");
        let data = random_bytes(seed + i as u64, *size);
        fs::write(mp.join(&name), &data).unwrap();
        want.insert(name, blake3::hash(&data).to_hex().to_string());
    }
    want
}

fn check_files(mp: &Path, want: &BTreeMap<String, String>) {
    for (name, hash) in want {
        assert_eq!(&hash_file(&mp.join(name)), hash, "{name} differs");
    }
}

/// `shardfs scrub --json [EXTRA…]`, which must succeed; its report.
fn scrub(c: &Cluster, extra: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = ["scrub", "--json"].iter().chain(extra).copied().collect();
    let (ok, out, err) = c.admin(&args);
    assert!(ok, "scrub failed: {out}{err}");
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

fn health(c: &Cluster) -> serde_json::Value {
    c.status().expect("status")["health"].clone()
}

#[test]
fn repair_keeps_every_file_through_two_rounds_of_two_failures() {
    // 8 nodes, 4+2: after 2 nodes die their shards are rebuilt on the 2 spare nodes; then 2 more
    // die. Without the first repair, blocks with shards on all four dead nodes would be lost.
    let mut c = Cluster::start_with(
        8,
        "4+2",
        &[&FAST_REPAIR[..], &["--gc-grace-secs", "3600"]].concat(),
    );
    let mp = c.mount("m");
    let want = write_files(&mp, 100);
    c.umount(&mp);
    let before: Vec<usize> = (0..8).map(|i| c.shard_files(i).len()).collect();
    assert!(
        before[0] > 0 && before[1] > 0,
        "nodes 0 and 1 hold shards: {before:?}"
    );

    c.kill_node(0);
    c.kill_node(1);
    wait_until(Duration::from_secs(30), "2 nodes down", || {
        c.status().and_then(|s| s["nodes_up"].as_u64()) == Some(6)
    });
    // Past the repair grace, the lost shards are rebuilt; `shardfs repair` waits for it.
    std::thread::sleep(Duration::from_millis(2500));
    let (ok, out, err) = c.admin(&["repair", "--timeout", "180"]);
    assert!(ok, "repair failed: {out}{err}");
    let h = health(&c);
    assert_eq!(h["degraded"], 0, "after repair: {h}");
    // Every rebuilt shard is a new file on a surviving node. (Nodes 0 and 1 may also hold
    // shards of blocks no file references any more, waiting for the collector: those are not
    // rebuilt.)
    let rebuilt = h["repaired_shards"].as_u64().unwrap() as usize;
    assert!(
        rebuilt > 0 && rebuilt <= before[0] + before[1],
        "rebuilt {rebuilt} of the dead nodes' {} shards",
        before[0] + before[1]
    );
    let survivors = |c: &Cluster| (2..8).map(|i| c.shard_files(i).len()).sum::<usize>();
    assert_eq!(
        survivors(&c),
        before[2..].iter().sum::<usize>() + rebuilt,
        "surviving nodes gained exactly the rebuilt shards"
    );

    // The dead nodes come back with stale copies of the rebuilt shards: the master checks
    // returning nodes and deletes those copies on its own (whatever the orphan grace: the
    // blocks are known, their shards placed elsewhere).
    c.start_node(0);
    c.start_node(1);
    c.wait_nodes_up(8);
    wait_until(
        Duration::from_secs(60),
        "stale shards deleted from the returning nodes",
        || c.shard_files(0).len() + c.shard_files(1).len() == before[0] + before[1] - rebuilt,
    );
    // A full scrub then finds nothing wrong and nothing left over.
    let r = scrub(&c, &[]);
    assert_eq!(r["corrupt"], 0, "{r}");
    assert_eq!(r["missing"], 0, "{r}");

    // Two more nodes die: every block still has 4 shards on the other nodes.
    c.kill_node(2);
    c.kill_node(3);
    let mp2 = c.mount_with("m2", &["--cache-mib", "0"]);
    check_files(&mp2, &want);
}

#[test]
fn scrub_finds_corrupted_shards_and_repair_rewrites_them() {
    // No background scrub, so the on-demand scrub is the one that finds the damage.
    // Blocks no file references (an upload superseded by a later one) are collected within
    // seconds, so every shard left on the nodes belongs to a file the reads below go through.
    let mut c = Cluster::start_opts(
        6,
        "4+2",
        &["--repair-interval-ms", "300", "--gc-grace-secs", "1"],
        &["--scrub-mib", "0"],
    );
    let mp = c.mount("m");
    let want = write_files(&mp, 200);
    c.umount(&mp);
    std::thread::sleep(Duration::from_secs(5));

    // Flip one payload byte in 4 data shards and 3 parity shards, each of a different block.
    let mut all: Vec<std::path::PathBuf> = (0..6).flat_map(|i| c.shard_files(i)).collect();
    all.sort_by_key(|p| p.file_name().unwrap().to_owned());
    let mut blocks_hit = std::collections::HashSet::new();
    let (mut data, mut parity) = (Vec::new(), Vec::new());
    for f in all {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let (block, index) = name.split_once('.').unwrap();
        let index: u8 = index.parse().unwrap();
        let list = if index < 4 { &mut data } else { &mut parity };
        if list.len() >= if index < 4 { 4 } else { 3 } || !blocks_hit.insert(block.to_string()) {
            continue;
        }
        let mut raw = fs::read(&f).unwrap();
        let at = 48 + (raw.len() - 48) / 2;
        raw[at] ^= 0x5a;
        fs::write(&f, &raw).unwrap();
        list.push(f);
    }
    assert_eq!((data.len(), parity.len()), (4, 3));
    let flipped: Vec<_> = data.iter().chain(&parity).cloned().collect();

    // Reads are still right (the damaged shards are refused by their nodes, parity fills in).
    let mp2 = c.mount_with("m2", &["--cache-mib", "0"]);
    check_files(&mp2, &want);
    c.umount(&mp2);

    let r = scrub(&c, &["--wait", "--timeout", "180"]);
    // Damaged parity shards are found by the scrub's hash check; damaged data shards were
    // already refused (and quarantined) by their nodes during the reads, so they are missing.
    assert_eq!(r["corrupt"], 3, "damaged parity shards: {r}");
    assert_eq!(r["missing"], 4, "damaged data shards: {r}");
    let h = health(&c);
    assert_eq!(h["degraded"], 0, "{h}");
    assert_eq!(
        h["repaired_shards"].as_u64().unwrap() as usize,
        flipped.len(),
        "{h}"
    );
    // Each damaged shard was rewritten in place, intact.
    for f in &flipped {
        assert!(f.exists(), "{} rebuilt", f.display());
    }
    let (ok, out, err) = c.admin(&["scrub", "--json"]);
    assert!(ok, "scrub failed: {out}{err}");
    let r: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(r["corrupt"], 0, "second scrub: {r}");
    assert_eq!(r["missing"], 0, "second scrub: {r}");
    let checked = r["checked"].as_u64().unwrap();
    assert!(checked > 0);
    // Its progress bar, on stderr, ends full at the count of shards it verified.
    let full = format!("scrub [{}] {checked}/{checked} shards", "#".repeat(30));
    assert!(
        err.contains(&full),
        "no full progress bar {full:?} in: {err}"
    );

    let mp3 = c.mount_with("m3", &["--cache-mib", "0"]);
    check_files(&mp3, &want);
}

#[test]
fn a_joining_node_gets_shards_and_a_drained_node_ends_empty() {
    let mut c = Cluster::start_with(
        6,
        "4+2",
        &[
            "--repair-interval-ms",
            "300",
            "--rebalance-pct",
            "10",
            // Blocks no file references (an upload superseded by a later one) are collected
            // quickly, so the drained node ends with no shard files at all.
            "--gc-grace-secs",
            "1",
        ],
    );
    let mp = c.mount("m");
    let mut want = write_files(&mp, 300);
    let big = random_bytes(399, 40 << 20);
    fs::write(mp.join("big"), &big).unwrap();
    want.insert("big".into(), blake3::hash(&big).to_hex().to_string());
    c.umount(&mp);

    // A seventh node joins an hour later (so to speak): rebalancing moves shards onto it.
    let newcomer = c.add_node();
    c.wait_nodes_up(7);
    // Rebalancing evens out bytes (node fill), not shard counts: a node holding a few big
    // shards of the big file and none of the small pieces is as full as the others.
    let others = |c: &Cluster| c.node_usage()[..6].iter().sum::<u64>() / 6;
    wait_until(
        Duration::from_secs(120),
        "shards moved to the new node",
        || !c.shard_files(newcomer).is_empty() && c.node_usage()[newcomer] * 2 >= others(&c),
    );
    let h = health(&c);
    assert!(h["rebalanced_shards"].as_u64().unwrap() > 0, "{h}");

    // Drain node 0: everything it holds moves elsewhere, and it ends empty.
    let id = fs::read_to_string(c.node_dir(0).join("node.id")).unwrap();
    // The drain is recorded by the master: it goes on after a kill -9 and restart.
    let (ok, out, err) = c.admin_around(&["node", "drain"], &[id.trim()]);
    assert!(ok, "drain failed: {out}{err}");
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(7);
    let (ok, out, err) = c.admin_around(
        &["node", "drain"],
        &[id.trim(), "--wait", "--timeout", "180"],
    );
    assert!(ok, "drain failed: {out}{err}");
    assert!(
        c.shard_files(0).is_empty(),
        "drained node still holds shards"
    );
    let st = c.status().unwrap();
    let n0 = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_str() == Some(id.trim()))
        .unwrap()
        .clone();
    assert_eq!(n0["state"], "draining", "{n0}");

    // With the drained node gone and two more killed, every file is still whole.
    c.kill_node(0);
    c.kill_node(1);
    c.kill_node(2);
    let r = c.mount_with("r", &["--cache-mib", "0"]);
    check_files(&r, &want);
}

#[test]
fn background_scrub_finds_a_corrupt_shard_and_it_is_rebuilt() {
    // Nodes re-verify everything every second at a high rate; the master rebuilds what they
    // report, with no scrub command.
    let mut c = Cluster::start_opts(
        6,
        "4+2",
        &["--repair-interval-ms", "300", "--gc-grace-secs", "1"],
        &["--scrub-mib", "1000", "--scrub-interval-secs", "1"],
    );
    let mp = c.mount("m");
    let want = write_files(&mp, 500);
    c.umount(&mp);
    std::thread::sleep(Duration::from_secs(5));
    // Damage one parity shard (no read would touch it).
    let f = (0..6)
        .flat_map(|i| c.shard_files(i))
        .find(|p| p.to_string_lossy().ends_with(".5"))
        .expect("a parity shard");
    let mut raw = fs::read(&f).unwrap();
    let at = 48 + (raw.len() - 48) / 2;
    raw[at] ^= 0x5a;
    fs::write(&f, &raw).unwrap();
    wait_until(Duration::from_secs(60), "the corrupt shard rebuilt", || {
        health(&c)["repaired_shards"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(fs::read(&f).unwrap().len(), raw.len(), "rebuilt in place");
    assert_ne!(fs::read(&f).unwrap(), raw, "the damaged bytes are gone");
    let r = scrub(&c, &[]);
    assert_eq!(r["corrupt"], 0, "{r}");
    assert_eq!(r["missing"], 0, "{r}");
    let r2 = c.mount_with("r", &["--cache-mib", "0"]);
    check_files(&r2, &want);
}
