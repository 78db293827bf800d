//! Writes while storage nodes fail: a frozen node (SIGSTOP, alive but silent) costs a writer
//! seconds and is used again once it thaws; with more than m nodes gone a write fails with
//! EIO within a bounded time, and the mount keeps working.

use shardfs_tests::*;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Write `data` to `path` and fsync it; how long that took.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<Duration> {
    let t = Instant::now();
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(t.elapsed())
}

#[test]
fn a_frozen_node_costs_a_writer_seconds_and_is_used_again_after() {
    // 7 nodes for 4+2: one spare, so a block never needs the frozen node.
    let mut c = Cluster::start(7, "4+2");
    let mp = c.mount_with("w", &["--timeout", "15"]);
    let mut hashes = Vec::new();
    let mut write = |name: String, seed: u64, size: usize| {
        let data = random_bytes(seed, size);
        let took = write_synced(&mp.join(&name), &data).expect("write");
        hashes.push((name, blake3::hash(&data).to_hex().to_string()));
        took
    };
    let healthy = write("warm".into(), 1, 16 << 20);
    eprintln!("16 MiB with every node up: {healthy:?}");
    // Freeze node 3 in the middle of a write, and keep it frozen for the next ones.
    let frozen = 3;
    let t = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut t = vec![write("during".into(), 10, 64 << 20)];
            t.extend((0..3).map(|i| write(format!("during{i}"), 11 + i, 16 << 20)));
            t
        });
        std::thread::sleep(Duration::from_millis(100));
        c.signal_node(frozen, libc::SIGSTOP);
        let t = h.join().expect("writer");
        c.signal_node(frozen, libc::SIGCONT);
        t
    });
    eprintln!("writes (64 MiB, then 3 x 16 MiB) with node {frozen} frozen: {t:?}");
    for (i, took) in t.iter().enumerate() {
        assert!(
            *took < Duration::from_secs(8),
            "write {i} with a frozen node took {took:?} (healthy: {healthy:?})"
        );
    }
    // Thawed, the node takes shards again (once the mount's breaker closes).
    c.wait_nodes_up(7);
    let before = c.shard_files(frozen).len();
    let mut n = 0u64;
    wait_until(
        Duration::from_secs(60),
        "the thawed node stores new shards",
        || {
            n += 1;
            write(format!("after{n}"), 100 + n, 16 << 20);
            c.shard_files(frozen).len() > before
        },
    );
    // Every byte, read by a fresh mount without a cache.
    let r = c.mount_with("r", &["--cache-mib", "0"]);
    for (name, h) in &hashes {
        assert_eq!(&hash_file(&r.join(name)), h, "{name} differs");
    }
}

#[test]
fn more_than_m_nodes_down_fails_a_write_with_eio_in_bounded_time() {
    let mut c = Cluster::start_with(6, "4+2", &["--node-timeout-ms", "3000"]);
    let mp = c.mount_with("w", &["--timeout", "10"]);
    fs::write(mp.join("before"), b"written with every node up").unwrap();
    for i in 0..3 {
        c.kill_node(i);
    }
    // Right after the kills (the master still counts the nodes up) and once it knows.
    for (round, pause) in [(0, 0), (1, 4)] {
        std::thread::sleep(Duration::from_secs(pause));
        let t = Instant::now();
        let r = write_synced(
            &mp.join(format!("lost{round}")),
            &random_bytes(round, 8 << 20),
        );
        let took = t.elapsed();
        eprintln!("round {round}: {r:?} after {took:?}");
        let e = r.expect_err("a write with 3 of 6 nodes down must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        assert!(
            took < Duration::from_secs(60),
            "the failing write took {took:?}"
        );
    }
    // The mount still answers, and writes again once the nodes are back.
    assert_eq!(
        fs::read(mp.join("before")).unwrap(),
        b"written with every node up"
    );
    for i in 0..3 {
        c.start_node(i);
    }
    c.wait_nodes_up(6);
    let data = random_bytes(7, 8 << 20);
    write_synced(&mp.join("after"), &data).expect("write with the nodes back");
    assert_eq!(fs::read(mp.join("after")).unwrap(), data);
}

#[test]
fn every_node_frozen_for_seconds_delays_writes_and_fails_none() {
    // No spare node: while all six are frozen there is no other node to place a shard on,
    // and the stalled uploads themselves must finish the blocks once the nodes thaw.
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount_with("w", &["--timeout", "15"]);
    write_synced(&mp.join("warm"), &random_bytes(1, 4 << 20)).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("f{i}"),
                random_bytes(10 + i, (8 << 20) + 4096 * i as usize),
            )
        })
        .collect();
    let took = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let t = Instant::now();
            for (name, data) in &files {
                write_synced(&mp.join(name), data)
                    .unwrap_or_else(|e| panic!("{name} failed after all nodes froze for 3 s: {e}"));
            }
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(150));
        for i in 0..6 {
            c.signal_node(i, libc::SIGSTOP);
        }
        std::thread::sleep(Duration::from_secs(3));
        for i in 0..6 {
            c.signal_node(i, libc::SIGCONT);
        }
        h.join().expect("writer")
    });
    eprintln!("4 x 8 MiB with every node frozen for 3 s: {took:?}");
    let r = c.mount_with("r", &["--cache-mib", "0"]);
    for (name, data) in &files {
        assert_eq!(
            hash_file(&r.join(name)),
            blake3::hash(data).to_hex().to_string(),
            "{name} differs"
        );
    }
}

#[test]
fn reads_do_not_wait_for_a_frozen_node() {
    // 6 nodes for 4+2: every block has a shard on the frozen node.
    let mut c = Cluster::start(6, "4+2");
    let w = c.mount("w");
    let data = random_bytes(3, 64 << 20);
    write_synced(&w.join("f"), &data).unwrap();
    let want = blake3::hash(&data).to_hex().to_string();
    c.umount(&w);
    // Fresh mounts: nothing of the file is cached (a small cache keeps read-ahead working).
    let healthy = c.mount_with("healthy", &["--cache-mib", "32"]);
    let t = Instant::now();
    assert_eq!(hash_file(&healthy.join("f")), want);
    let healthy_took = t.elapsed();
    let r = c.mount_with("r", &["--cache-mib", "32"]);
    c.signal_node(0, libc::SIGSTOP);
    let t = Instant::now();
    let got = hash_file(&r.join("f"));
    let took = t.elapsed();
    c.signal_node(0, libc::SIGCONT);
    eprintln!("64 MiB read: healthy {healthy_took:?}, with a frozen node {took:?}");
    assert_eq!(got, want);
    assert!(
        took < Duration::from_secs(5),
        "reading 64 MiB with one frozen node took {took:?} (healthy {healthy_took:?})"
    );
}

/// Seconds since midnight UTC of a log line's timestamp (`2026-12-01T07:19:12.123456Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?;
    let mut it = t.trim_end_matches('Z').split(':');
    let (h, m, s): (f64, f64, f64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_of_day() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (d.as_secs_f64()) % 86_400.0
}

/// Measurements for docs/BENCHMARKS.md (not a pass/fail test):
/// `cargo test --release -p shardfs-tests --test churn failover -- --ignored --nocapture`.
/// Time from kill -9 of a node under a writer to the mount's breaker opening for it and to
/// the master marking it down (default 5 s node timeout), and a 1 GiB `dd` (4 MiB writes,
/// fsync at the end) on a healthy cluster against one with a node killed in its middle.
#[test]
#[ignore]
fn failover_measurements() {
    let mut c = Cluster::start(8, "4+2");
    let mp = c.mount("m");
    // Two sources: the same bytes twice would be deduplicated (nothing sent the second time).
    let (src, src2) = (c.path("src"), c.path("src2"));
    fs::write(&src, random_bytes(5, 1 << 30)).unwrap();
    fs::write(&src2, random_bytes(6, 1 << 30)).unwrap();
    let dd = |from: &Path, name: &str| {
        format!(
            "dd if={} of={} bs=4M conv=fsync status=none",
            from.display(),
            mp.join(name).display()
        )
    };
    let t = Instant::now();
    sh_ok(&dd(&src, "healthy"));
    let healthy = t.elapsed();
    // Again, killing node 0 half-way (by the healthy run's time).
    let t = Instant::now();
    let mut child = std::process::Command::new("sh")
        .args(["-c", &dd(&src2, "killed")])
        .spawn()
        .unwrap();
    let dd_done = std::thread::spawn(move || {
        let ok = child.wait().unwrap().success();
        (ok, t.elapsed())
    });
    std::thread::sleep(healthy / 2);
    let id = fs::read_to_string(c.node_dir(0).join("node.id"))
        .unwrap()
        .trim()
        .to_string();
    let killed_at = now_of_day();
    c.kill_node(0);
    let kill_t = Instant::now();
    let mut master_down = None;
    while master_down.is_none() && kill_t.elapsed() < Duration::from_secs(30) {
        let st = c.status().unwrap_or_default();
        let down = st["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"].as_str() == Some(id.as_str()) && n["state"] == "down");
        if down {
            master_down = Some(kill_t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, degraded) = dd_done.join().unwrap();
    assert!(ok, "dd with a node killed");
    let log = fs::read_to_string(c.path("logs/mount-m.log")).unwrap_or_default();
    let breaker = log
        .lines()
        .filter(|l| l.contains("storage node failing") && l.contains(&id))
        .filter_map(log_time)
        .find(|&t| t >= killed_at - 0.01)
        .map(|t| t - killed_at);
    let gib = |d: Duration| 1024.0 / d.as_secs_f64();
    eprintln!(
        "failover: kill -9 -> mount stops using the node: {breaker:.3?} s; -> master marks it \
         down: {master_down:.2?}; 1 GiB dd healthy {healthy:.1?} ({:.0} MiB/s), with a node \
         killed in its middle {degraded:.1?} ({:.0} MiB/s)",
        gib(healthy),
        gib(degraded)
    );
    assert_eq!(hash_file(&mp.join("killed")), hash_file(&src2));
    if let Ok(keep) = std::env::var("SHARDFS_KEEP_LOGS") {
        sh_ok(&format!("cp -r {} {keep}", c.path("logs").display()));
    }
}
