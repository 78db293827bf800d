//! Encryption at rest: with default settings no node or master disk holds a file's content in
//! plain text (whole blocks, pieces of small writes, and blocks sealed from pieces), reads work
//! degraded and after sealing, dedup still works, and another cluster's credential gets
//! nothing.

use shardfs_tests::*;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

const MARKER: &[u8] = b"SHARDFS-PLAINTEXT-MARKER-7f3a91";

/// Text that repeats the marker, `len` bytes.
fn marked(len: usize) -> Vec<u8> {
    MARKER
        .iter()
        .chain(b" ")
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// Files under `dirs` whose bytes contain the marker.
fn holding_marker(dirs: &[&Path]) -> Vec<String> {
    let mut out = Vec::new();
    for d in dirs {
        let o = sh(&format!(
            "grep -rlaF {} {}",
            String::from_utf8_lossy(MARKER),
            d.display()
        ));
        out.extend(String::from_utf8_lossy(&o.stdout).lines().map(String::from));
    }
    out
}

fn shard_count(c: &Cluster) -> usize {
    (0..c.node_count()).map(|i| c.shard_files(i).len()).sum()
}

/// Write a big marked file, a small one, and small writes into the big one (pieces).
fn write_marked(mp: &Path) -> (Vec<u8>, Vec<u8>) {
    let mut big = marked(9 << 20);
    fs::write(mp.join("big"), &big).unwrap();
    let small = marked(3000);
    fs::write(mp.join("small"), &small).unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(mp.join("big"))
        .unwrap();
    for i in 0..20u64 {
        let off = (i * 200_003) % (9 << 20) as u64;
        let patch = marked(4096);
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&patch).unwrap();
        big[off as usize..off as usize + 4096].copy_from_slice(&patch);
        f.sync_all().unwrap();
    }
    (big, small)
}

#[test]
fn no_disk_holds_plaintext_and_reads_repair_and_dedup_still_work() {
    let mut c = Cluster::start_with(6, "4+2", &["--seal-quiet-secs", "1"]);
    let mp = c.mount("m");
    let (big, small) = write_marked(&mp);
    // Sealing turns the pieces into blocks, on the nodes.
    wait_until(Duration::from_secs(60), "sealing", || {
        c.status().is_some_and(|s| {
            s["health"]["unsealed_files"] == 0 && s["health"]["sealed_slots"].as_u64() > Some(0)
        })
    });
    let nodes: Vec<_> = (0..6).map(|i| c.node_dir(i)).collect();
    let mut dirs: Vec<&Path> = nodes.iter().map(|p| p.as_path()).collect();
    let master = c.path("master");
    dirs.push(&master);
    let found = holding_marker(&dirs);
    assert!(found.is_empty(), "plaintext on disk: {found:?}");
    // Reads: a mount with no cache, then with two nodes down (decoding from parity).
    let fresh = c.mount_with("fresh", &["--cache-mib", "0"]);
    assert!(fs::read(fresh.join("big")).unwrap() == big);
    assert_eq!(fs::read(fresh.join("small")).unwrap(), small);
    c.kill_node(0);
    c.kill_node(1);
    let degraded = c.mount_with("degraded", &["--cache-mib", "0"]);
    assert!(
        fs::read(degraded.join("big")).unwrap() == big,
        "degraded read"
    );
    assert_eq!(fs::read(degraded.join("small")).unwrap(), small);
    // Dedup: the same content under another name stores nothing more.
    c.start_node(0);
    c.start_node(1);
    c.wait_nodes_up(6);
    let before = shard_count(&c);
    let copy = random_bytes(5, 8 << 20);
    fs::write(mp.join("one"), &copy).unwrap();
    let after_one = shard_count(&c);
    fs::write(mp.join("two"), &copy).unwrap();
    assert_eq!(shard_count(&c), after_one, "identical content stored twice");
    assert!(after_one > before);
    let found = holding_marker(&dirs);
    assert!(found.is_empty(), "plaintext on disk: {found:?}");
}

#[test]
fn a_plain_cluster_shows_the_marker_and_another_clusters_credential_gets_nothing() {
    // The check above can fail: without encryption the marker is on the nodes' disks.
    let mut plain = Cluster::start_with(6, "4+2", &["--no-encryption"]);
    let mp = plain.mount("m");
    write_marked(&mp);
    let nodes: Vec<_> = (0..6).map(|i| plain.node_dir(i)).collect();
    let dirs: Vec<&Path> = nodes.iter().map(|p| p.as_path()).collect();
    assert!(
        !holding_marker(&dirs).is_empty(),
        "the marker is not found in plain shards"
    );

    // A client of another cluster: refused at the handshake, never sees a byte.
    let mut other = Cluster::start(3, "2+1");
    let foreign = other.path("client.cred").display().to_string();
    let enc = Cluster::start(6, "4+2");
    let mp2 = enc.path("foreign");
    fs::create_dir_all(&mp2).unwrap();
    let out = std::process::Command::new(bin("shardfs"))
        .arg("mount")
        .arg(enc.addr_file())
        .arg(&mp2)
        .args(["--credentials", &foreign, "--timeout", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a foreign credential mounted");
    assert!(!is_mounted(&mp2));
    let _ = other.mount("own");
}
