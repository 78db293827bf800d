//! Durability while things break: storage nodes killed and restarted at random while 1 GiB of
//! files is written (and written over, until ten nodes were killed), and the master killed
//! during a tree extraction. Every byte is checked afterwards.

use shardfs_tests::*;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`write_files`] wrote: per file the hash and seed of its last content, the failed
/// writes, and how long each successful write took.
struct Written {
    hashes: Vec<String>,
    seeds: Vec<u64>,
    failures: Vec<String>,
    took: Vec<Duration>,
}

/// Write `files` files of `size` random bytes (each with fsync), as a user would: a write that
/// fails is written again. After the first pass the files are written over again, pass after
/// pass, until `enough` is set.
fn write_files(mp: &Path, files: usize, size: usize, enough: &AtomicBool) -> Written {
    let mut w = Written {
        hashes: vec![String::new(); files],
        seeds: vec![0; files],
        failures: Vec::new(),
        took: Vec::new(),
    };
    for pass in 0u64.. {
        for i in 0..files {
            if pass > 0 && enough.load(Ordering::SeqCst) {
                return w;
            }
            let seed = 1000 + pass * 1000 + i as u64;
            let data = random_bytes(seed, size);
            let path = mp.join(format!("big{i:02}"));
            let mut attempt = 0;
            loop {
                let t = Instant::now();
                let r = fs::File::create(&path).and_then(|mut f| {
                    f.write_all(&data)?;
                    f.sync_all()
                });
                match r {
                    Ok(()) => {
                        w.took.push(t.elapsed());
                        break;
                    }
                    Err(e) => {
                        attempt += 1;
                        eprintln!("write of big{i:02} failed ({e}); again");
                        w.failures.push(format!("big{i:02}: {e}"));
                        assert!(attempt < 5, "big{i:02}: five failed attempts in a row");
                    }
                }
            }
            w.hashes[i] = blake3::hash(&data).to_hex().to_string();
            w.seeds[i] = seed;
        }
        if enough.load(Ordering::SeqCst) {
            break;
        }
    }
    w
}

/// Median, p99 and longest of per-file write times, in words.
fn latencies(mut took: Vec<Duration>) -> String {
    took.sort();
    let pct = |p: usize| took[(took.len() * p / 100).min(took.len() - 1)];
    format!(
        "per 16 MiB file (write + fsync): median {:.2?}, p99 {:.2?}, longest {:.2?}",
        pct(50),
        pct(99),
        took[took.len() - 1]
    )
}

/// The chaos test's writes on a healthy cluster, for comparison (docs/BENCHMARKS.md):
/// `cargo test --release -p shardfs-tests --test chaos healthy -- --ignored --nocapture`.
#[test]
#[ignore]
fn healthy_baseline_of_the_chaos_writes() {
    let mut c = Cluster::start_with(8, "4+2", &["--node-timeout-ms", "3000"]);
    let mp = c.mount_with("w", &["--timeout", "10"]);
    let t = Instant::now();
    let w = write_files(&mp, 64, 16 << 20, &AtomicBool::new(true));
    eprintln!(
        "healthy: 1024 MiB written in {:.1?}; {}",
        t.elapsed(),
        latencies(w.took)
    );
    assert!(w.failures.is_empty(), "{:?}", w.failures);
}

#[test]
fn writes_survive_nodes_killed_and_restarted_at_random() {
    // 8 nodes, 4+2: with at most 2 down there are always 6 live nodes to place a block on.
    let mut c = Cluster::start_with(
        8,
        "4+2",
        &["--node-timeout-ms", "3000", "--repair-grace-secs", "3600"],
    );
    let mp = c.mount_with("w", &["--timeout", "10"]);
    let files: usize = std::env::var("SHARDFS_CHAOS_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let size = 16usize << 20; // 64 × 16 MiB = 1 GiB
                              // The files are written over and over until this many kills have happened.
    let min_kills = 10;
    let (done, enough) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = {
        let (mp, done, enough) = (mp.clone(), done.clone(), enough.clone());
        std::thread::spawn(move || {
            let r = write_files(&mp, files, size, &enough);
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    // Kill a random node, or restart one, every 1 to 2.5 s; never more than 2 down.
    let mut rng_state = 42u64;
    let mut next = || {
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng_state >> 33) as usize
    };
    let mut down: Vec<usize> = Vec::new();
    let mut ever_killed = std::collections::HashSet::new();
    let (mut kills, started) = (0, Instant::now());
    while !done.load(Ordering::SeqCst) && !writer.is_finished() {
        std::thread::sleep(Duration::from_millis(1000 + (next() % 1500) as u64));
        if down.len() < 2 && (down.is_empty() || next() % 2 == 0) {
            let n = loop {
                let n = next() % 8;
                if !down.contains(&n) {
                    break n;
                }
            };
            c.kill_node(n);
            down.push(n);
            ever_killed.insert(n);
            kills += 1;
            if kills >= min_kills {
                enough.store(true, Ordering::SeqCst);
            }
        } else {
            let n = down.remove(next() % down.len());
            c.start_node(n);
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "writing took over 15 minutes"
        );
    }
    let Written {
        hashes,
        seeds,
        failures,
        took,
    } = writer.join().expect("writer");
    eprintln!(
        "chaos: {} MiB written in {:.1?} with {kills} node kills; {}; {} failed writes",
        took.len() * 16,
        started.elapsed(),
        latencies(took),
        failures.len()
    );
    assert!(
        kills >= min_kills,
        "nodes were killed during the write ({kills})"
    );
    assert!(
        failures.is_empty(),
        "writes failed with at most m nodes down: {failures:?}"
    );
    // A node that was never killed was never marked down: heartbeats of live nodes are
    // answered whatever else the master is doing.
    let log = fs::read_to_string(c.path("logs/master.log")).unwrap_or_default();
    let wrongly_down: Vec<String> = (0..8)
        .filter(|i| !ever_killed.contains(i))
        .filter_map(|i| {
            let id = fs::read_to_string(c.node_dir(i).join("node.id")).ok()?;
            let id = id.trim();
            log.lines()
                .find(|l| l.contains("node down") && l.contains(id))
                .map(|l| format!("node {i} (never killed): {l}"))
        })
        .collect();
    assert!(
        wrongly_down.is_empty(),
        "live nodes marked down: {wrongly_down:#?}"
    );
    for n in down {
        c.start_node(n);
    }
    c.wait_nodes_up(8);
    c.umount(&mp);
    let r = c.mount_with("r", &["--cache-mib", "0"]);
    for (i, h) in hashes.iter().enumerate() {
        let p = r.join(format!("big{i:02}"));
        if &hash_file(&p) != h {
            // Say where: size, and which MiB differ.
            let got = fs::read(&p).unwrap();
            let want = random_bytes(seeds[i], size);
            let bad: Vec<usize> = (0..size >> 20)
                .filter(|m| got.get(m << 20..(m + 1) << 20) != Some(&want[m << 20..(m + 1) << 20]))
                .collect();
            panic!(
                "big{i:02} differs: {} bytes (want {size}), MiB {bad:?} differ",
                got.len()
            );
        }
    }
}

#[test]
fn master_killed_during_tar_extraction_loses_nothing() {
    let mut c = Cluster::start(6, "4+2");
    let src = c.path("src");
    let (nfiles, _) = make_tree(&src, 1500, 77);
    let tarball = c.path("tree.tar");
    sh_ok(&format!(
        "tar -C {} -cf {} .",
        src.display(),
        tarball.display()
    ));
    // A timeout longer than the outage: operations in flight wait for the master to return.
    let mp = c.mount_with("m", &["--timeout", "60"]);
    let dst = mp.join("x");
    fs::create_dir(&dst).unwrap();
    let mut tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(&dst)
        .arg("-xf")
        .arg(&tarball)
        .spawn()
        .expect("start tar");
    // Kill the master once about a third of the files are out.
    wait_until(
        Duration::from_secs(120),
        "a third of the tree extracted",
        || {
            sh_ok(&format!("find {} -type f | wc -l", dst.display()))
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
                >= nfiles / 3
        },
    );
    c.kill_master();
    std::thread::sleep(Duration::from_millis(1500));
    c.start_master();
    let st = tar.wait().expect("tar");
    assert!(st.success(), "tar failed across the master restart: {st}");
    // Everything, including files closed before the kill, is there and identical.
    sh_ok(&format!("diff -r {} {}", src.display(), dst.display()));
    c.umount(&mp);
    let m2 = c.mount_with("m2", &["--cache-mib", "0"]);
    sh_ok(&format!(
        "diff -r {} {}",
        src.display(),
        m2.join("x").display()
    ));
}
