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

/// Two mounts append to one marked text file at once: the master merges, and keeps the text
/// in the file's merge document.
fn merge_marked(m1: &Path, m2: &Path) {
    let line = |who: &str| format!("{} from {who}\n", String::from_utf8_lossy(MARKER));
    fs::write(m1.join("notes.txt"), line("the start")).unwrap();
    let open = |m: &Path| {
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("notes.txt"))
            .unwrap()
    };
    let (mut a, mut b) = (open(m1), open(m2));
    a.write_all(line("m1").as_bytes()).unwrap();
    b.write_all(line("m2").as_bytes()).unwrap();
    drop(a);
    drop(b);
    wait_until(Duration::from_secs(10), "the merge", || {
        let t = fs::read_to_string(m1.join("notes.txt")).unwrap_or_default();
        t.contains("from m1") && t.contains("from m2")
    });
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
    let mut c = Cluster::start_with(
        6,
        "4+2",
        &[
            &FAST_REPAIR[..],
            &["--seal-quiet-secs", "1", "--gc-grace-secs", "3600"],
        ]
        .concat(),
    );
    let mp = c.mount("m");
    let (big, small) = write_marked(&mp);
    let m2 = c.mount("m2");
    merge_marked(&mp, &m2);
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
    // Repair works on ciphertext: the dead nodes' shards are rebuilt on the four left (4+2
    // needs six nodes, so two more join empty), the rebuilt shards hold no plaintext, and a
    // read with the two dead nodes still away needs the rebuilt shards.
    wait_until(Duration::from_secs(30), "2 nodes down", || {
        c.status()
            .is_some_and(|s| s["nodes_up"].as_u64() == Some(4))
    });
    let e0 = c.add_node();
    let e1 = c.add_node();
    c.wait_nodes_up(6);
    std::thread::sleep(Duration::from_millis(2500));
    let (ok, out, err) = c.admin(&["repair", "--timeout", "180"]);
    assert!(ok, "repair failed: {out}{err}");
    let h = c.status().unwrap()["health"].clone();
    assert_eq!(h["degraded"], 0, "after repair: {h}");
    let counts: Vec<usize> = (0..8).map(|i| c.shard_files(i).len()).collect();
    assert!(
        counts[e0] > 0 && counts[e1] > 0,
        "nothing rebuilt onto the new nodes: {counts:?} {h}"
    );
    let rebuilt: Vec<_> = [e0, e1].iter().map(|&i| c.node_dir(i)).collect();
    let rebuilt: Vec<&Path> = rebuilt.iter().map(|p| p.as_path()).collect();
    let found = holding_marker(&rebuilt);
    assert!(found.is_empty(), "plaintext in rebuilt shards: {found:?}");
    c.kill_node(2);
    c.kill_node(3);
    let repaired = c.mount_with("repaired", &["--cache-mib", "0"]);
    assert!(
        fs::read(repaired.join("big")).unwrap() == big,
        "read after repair with two more nodes down"
    );
    assert_eq!(fs::read(repaired.join("small")).unwrap(), small);
    // Dedup: the same content under another name stores nothing more. (Nodes 0 and 1 stay
    // away: their stale shards would be collected while the counts below are taken.)
    c.start_node(2);
    c.start_node(3);
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
    let m2 = plain.mount("m2");
    merge_marked(&mp, &m2);
    let master = plain.path("master");
    assert!(
        !holding_marker(&[&master]).is_empty(),
        "the marker is not found in a plain merge document"
    );
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

    // The keys at rest: a wrong key-encryption key, or the sealed ring gone, stop the master
    // with a clear error instead of letting it serve (or write plaintext into) the cluster.
    let mut enc = enc;
    enc.kill_master();
    let master_dir = enc.path("master");
    let run = |env: Option<&str>| {
        let mut cmd = std::process::Command::new(bin("shardfs-master"));
        cmd.arg("--data-dir")
            .arg(&master_dir)
            .args(["--listen", "127.0.0.1:0"]);
        if let Some(k) = env {
            cmd.env("SHARDFS_MASTER_KEK", k);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = run(Some(&"ab".repeat(32)));
    assert!(!ok && err.contains("does not open"), "{err}");
    fs::rename(master_dir.join("data.keys"), enc.path("data.keys.away")).unwrap();
    let (ok, err) = run(None);
    assert!(
        !ok && err.contains("keys") && err.contains("missing"),
        "{err}"
    );
    fs::rename(enc.path("data.keys.away"), master_dir.join("data.keys")).unwrap();
    enc.start_master();
    enc.wait_nodes_up(6);
}

/// `shardfs keys ARGS… MASTER` as the harness's admin: (success, stdout + stderr).
fn keys(c: &Cluster, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = c.admin_around(&["keys", args[0]], &args[1..]);
    (ok, format!("{out}{err}"))
}

#[test]
fn a_rotated_key_takes_new_data_and_a_rekey_lets_the_old_one_go() {
    let mut c = Cluster::start_with(6, "4+2", &["--seal-quiet-secs", "1"]);
    let mp = c.mount("m");
    let m2 = c.mount("m2");
    let before = random_bytes(41, 5 << 20);
    fs::write(mp.join("before"), &before).unwrap();
    merge_marked(&mp, &m2);
    let (ok, out) = keys(&c, &["list"]);
    assert!(ok && out.contains("(current)"), "{out}");
    let (ok, out) = keys(&c, &["rotate"]);
    assert!(ok && out.contains("epoch 2"), "{out}");
    // The mounts learn the new key within a session renewal; new data is written under it.
    std::thread::sleep(Duration::from_secs(4));
    let after = random_bytes(42, 5 << 20);
    fs::write(mp.join("after"), &after).unwrap();
    let (_, out) = keys(&c, &["list"]);
    let blocks = |out: &str, epoch: &str| -> u64 {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(epoch))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no epoch {epoch} in {out}"))
    };
    assert!(blocks(&out, "1") > 0 && blocks(&out, "2") > 0, "{out}");
    // Epoch 1 still holds data: it cannot be dropped, nor can the current key.
    let (ok, out) = keys(&c, &["drop", "1"]);
    assert!(!ok && out.contains("still use"), "{out}");
    let (ok, out) = keys(&c, &["drop", "2"]);
    assert!(!ok && out.contains("current"), "{out}");
    let (ok, out) = keys(&c, &["rekey", "--wait", "--timeout", "120"]);
    assert!(ok, "{out}");
    let (ok, out) = keys(&c, &["drop", "1"]);
    assert!(ok, "{out}");
    let (_, out) = keys(&c, &["list"]);
    assert!(
        !out.lines()
            .any(|l| l.split_whitespace().next() == Some("1")),
        "{out}"
    );
    // Everything reads back without the old key, also after a master kill -9.
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(6);
    let fresh = c.mount_with("fresh", &["--cache-mib", "0"]);
    assert!(fs::read(fresh.join("before")).unwrap() == before);
    assert!(fs::read(fresh.join("after")).unwrap() == after);
    let notes = fs::read_to_string(fresh.join("notes.txt")).unwrap();
    assert!(
        notes.contains("from m1") && notes.contains("from m2"),
        "{notes}"
    );
    // The merge document was sealed again under the new key: a new merge still works.
    merge_marked(&fresh, &m2);
}
