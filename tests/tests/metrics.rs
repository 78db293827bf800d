//! Prometheus metrics of the master, a node and a mount: they parse as Prometheus text, and
//! their counters move when the test writes and reads; `shardfs top` shows the traffic.

use prometheus_parse::{LineInfo, Scrape, Value};
use shardfs_tests::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// The text at `http://ADDR/metrics` (ADDR read from `file`), checked line by line.
fn scrape(file: &Path) -> Scrape {
    let addr = fs::read_to_string(file).expect("http address file");
    let resp = ureq::get(&format!("http://{}/metrics", addr.trim()))
        .call()
        .expect("GET /metrics");
    assert!(
        resp.content_type().starts_with("text/plain"),
        "content type {}",
        resp.content_type()
    );
    let text = resp.into_string().unwrap();
    for line in text.lines() {
        let ok = match LineInfo::parse(line) {
            LineInfo::Sample { metric_name, .. } => metric_name.starts_with("shardfs_"),
            LineInfo::Doc { .. } | LineInfo::Type { .. } | LineInfo::Empty => true,
            LineInfo::Ignored => line.starts_with('#'),
        };
        assert!(ok, "not a Prometheus line of ShardFS: {line:?}");
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The sum of `metric`'s samples whose labels include `labels`.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

fn has_histogram(s: &Scrape, metric: &str, op: &str) -> bool {
    s.samples.iter().any(|x| {
        x.metric == metric
            && x.labels.get("op") == Some(op)
            && matches!(&x.value, Value::Histogram(b) if b.iter().any(|c| c.count > 0.0))
    })
}

#[test]
fn master_node_and_mount_metrics_parse_and_move_with_traffic() {
    let http = ["--http", "127.0.0.1:0"];
    let mut c = Cluster::start_opts(3, "2+1", &http, &http);
    let mount_file = c.path("mount-http.addr");
    let mf = mount_file.display().to_string();
    let m = c.mount_with("m", &["--http", "127.0.0.1:0", "--http-addr-file", &mf]);
    let master_file = c.path("master/http.addr");
    let node_files: Vec<_> = (0..3).map(|i| c.node_dir(i).join("http.addr")).collect();
    wait_until(Duration::from_secs(10), "metrics addresses", || {
        master_file.exists() && node_files.iter().all(|f| f.exists()) && mount_file.exists()
    });

    let node_written = |_: ()| -> f64 {
        node_files
            .iter()
            .map(|f| value(&scrape(f), "shardfs_node_written_bytes_total", &[]))
            .sum()
    };
    let before = (scrape(&master_file), scrape(&mount_file), node_written(()));
    let data = random_bytes(7, 8 << 20);
    fs::write(m.join("f"), &data).unwrap();
    sh_ok("sync; echo 3 > /proc/sys/vm/drop_caches");
    assert_eq!(fs::read(m.join("f")).unwrap(), data);

    // The mount: operations by kind with their latency, bytes, caches.
    let mount = scrape(&mount_file);
    let moved = |metric: &str, labels: &[(&str, &str)]| {
        value(&mount, metric, labels) - value(&before.1, metric, labels)
    };
    assert!(moved("shardfs_fuse_ops_total", &[("op", "write")]) >= 8.0);
    assert!(moved("shardfs_fuse_ops_total", &[("op", "create")]) >= 1.0);
    assert!(moved("shardfs_mount_written_bytes_total", &[]) >= (8 << 20) as f64);
    assert!(moved("shardfs_mount_read_bytes_total", &[]) >= (8 << 20) as f64);
    assert!(has_histogram(
        &mount,
        "shardfs_fuse_op_duration_seconds",
        "write"
    ));
    assert!(
        moved("shardfs_mount_block_cache_hits_total", &[])
            + moved("shardfs_mount_block_cache_misses_total", &[])
            >= 2.0,
        "the 8 MiB read looked in the block cache"
    );

    // The nodes: shards received (8 MiB in 2+1: 12 MiB over the three), requests, store.
    assert!(node_written(()) - before.2 >= (12 << 20) as f64);
    let n0 = scrape(&node_files[0]);
    assert!(value(&n0, "shardfs_node_requests_total", &[("op", "put")]) > 0.0);
    assert!(has_histogram(
        &n0,
        "shardfs_node_request_duration_seconds",
        "put"
    ));
    assert!(value(&n0, "shardfs_node_stored_bytes", &[]) > 0.0);

    // The master: requests by kind, cluster state, and the traffic the nodes report.
    let master = scrape(&master_file);
    let mv = |metric: &str, labels: &[(&str, &str)]| {
        value(&master, metric, labels) - value(&before.0, metric, labels)
    };
    assert!(mv("shardfs_master_requests_total", &[("op", "create")]) >= 1.0);
    assert!(mv("shardfs_master_requests_total", &[("op", "write")]) >= 1.0);
    assert!(has_histogram(
        &master,
        "shardfs_master_request_duration_seconds",
        "create"
    ));
    assert_eq!(value(&master, "shardfs_nodes", &[("state", "up")]), 3.0);
    assert_eq!(value(&master, "shardfs_nodes", &[("state", "down")]), 0.0);
    assert_eq!(value(&master, "shardfs_blocks_unrecoverable", &[]), 0.0);
    assert!(value(&master, "shardfs_sessions", &[]) >= 1.0);
    assert!(value(&master, "shardfs_rocksdb_keys", &[]) > 0.0);
    // Another mount reads from the nodes (this one may answer from its block cache).
    let other = c.mount("other");
    assert_eq!(fs::read(other.join("f")).unwrap(), data);
    wait_until(
        Duration::from_secs(10),
        "the nodes' traffic at the master",
        || {
            let s = scrape(&master_file);
            value(&s, "shardfs_cluster_written_bytes", &[]) >= (12 << 20) as f64
                && value(&s, "shardfs_cluster_read_bytes", &[]) >= (8 << 20) as f64
        },
    );

    // A node killed shows as down.
    c.kill_node(2);
    wait_until(
        Duration::from_secs(30),
        "a node down in the metrics",
        || value(&scrape(&master_file), "shardfs_nodes", &[("state", "down")]) == 1.0,
    );
    c.start_node(2);
    c.wait_nodes_up(3);

    // `shardfs top`: one line per interval, with the writes going on meanwhile.
    let dir = m.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..12 {
            fs::write(dir.join(format!("w{i}")), random_bytes(i, 4 << 20)).unwrap();
        }
    });
    let addr = fs::read_to_string(&master_file).unwrap();
    let out = std::process::Command::new(bin("shardfs"))
        .args([
            "top",
            "unused",
            "--http",
            addr.trim(),
            "--interval",
            "1",
            "--count",
            "3",
        ])
        .output()
        .unwrap();
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "a header and 3 lines: {text}");
    assert!(
        lines[0].contains("write MB/s") && lines[0].contains("nodes"),
        "{text}"
    );
    let written: f64 = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(written > 0.0, "no writes shown: {text}");
    assert!(lines[1..].iter().all(|l| l.contains("3/3")), "{text}");
    let (ok, _, err) = c.admin_around(&["top"], &["--count", "1"]);
    assert!(
        !ok && err.contains("--http"),
        "top without an address: {err}"
    );
}

/// A cluster of 3 nodes whose master serves metrics, and the file naming their address.
fn with_master_metrics() -> (Cluster, std::path::PathBuf) {
    let c = Cluster::start_opts(3, "2+1", &["--http", "127.0.0.1:0"], &[]);
    let master_file = c.path("master/http.addr");
    wait_until(Duration::from_secs(10), "the master's metrics", || {
        master_file.exists()
    });
    (c, master_file)
}

/// A tree walk on a mount that follows the change log: the second walk asks the master for no
/// listing (each directory is held whole, the first walk's listings fetched its subdirectories
/// ahead), and what another mount changes meanwhile is in the next listing all the same.
#[test]
fn held_listings_answer_tree_walks_and_stay_true() {
    let (mut c, master_file) = with_master_metrics();
    let asked = |ops: &[&str]| {
        let s = scrape(&master_file);
        ops.iter()
            .map(|op| value(&s, "shardfs_master_requests_total", &[("op", op)]))
            .sum::<f64>()
    };
    let w = c.mount("w");
    let getxattrs = asked(&["getxattr"]);
    for d in 0..8 {
        fs::create_dir_all(w.join(format!("t/d{d}/sub"))).unwrap();
        for f in 0..5 {
            fs::write(w.join(format!("t/d{d}/f{f}")), "x").unwrap();
        }
    }
    // The kernel's question before the first write of each new file (security.capability)
    // is answered by the mount that made it.
    assert_eq!(
        asked(&["getxattr"]),
        getxattrs,
        "new files' attributes asked"
    );
    let mount_file = c.path("reader-http.addr");
    let mf = mount_file.display().to_string();
    let r = c.mount_with("r", &["--http", "127.0.0.1:0", "--http-addr-file", &mf]);
    wait_until(Duration::from_secs(10), "the mount's metrics", || {
        mount_file.exists()
    });
    let listings = || asked(&["readdir", "readdir_names"]);
    let held = || {
        value(
            &scrape(&mount_file),
            "shardfs_mount_listing_pages_held_total",
            &[],
        )
    };
    let walk = || {
        let out = sh_ok(&format!("cd {} && find t | LC_ALL=C sort", r.display()));
        out.lines().map(String::from).collect::<Vec<_>>()
    };
    let first = walk();
    assert_eq!(first.len(), 1 + 8 * 7, "{first:?}");
    // Let the listings fetched ahead finish, then walk again: all from what the mount holds.
    std::thread::sleep(Duration::from_millis(500));
    let (asked, held_before) = (listings(), held());
    assert_eq!(walk(), first);
    sh_ok(&format!("du -s {}/t", r.display()));
    assert_eq!(
        listings() - asked,
        0.0,
        "the second walk asked for listings"
    );
    assert!(
        held() - held_before >= 2.0 * 17.0,
        "listings held: {}",
        held() - held_before
    );

    // Another mount's changes: a name added, one removed, one renamed, a directory made.
    fs::write(w.join("t/d3/new"), "n").unwrap();
    fs::remove_file(w.join("t/d4/f0")).unwrap();
    fs::rename(w.join("t/d5/f1"), w.join("t/d6/moved")).unwrap();
    fs::create_dir(w.join("t/d7/sub/deeper")).unwrap();
    let names = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(r.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    wait_until(Duration::from_secs(5), "the reader's listings", || {
        names("t/d3").contains(&"new".to_string())
            && !names("t/d4").contains(&"f0".to_string())
            && !names("t/d5").contains(&"f1".to_string())
            && names("t/d6").contains(&"moved".to_string())
            && names("t/d7/sub") == ["deeper"]
    });
    let mut expect = first.clone();
    expect.retain(|p| p != "t/d4/f0" && p != "t/d5/f1");
    expect.extend(["t/d3/new", "t/d6/moved", "t/d7/sub/deeper"].map(String::from));
    expect.sort();
    assert_eq!(walk(), expect);

    // A directory of several pages that the reader made: listed from what it holds, page
    // after page, in order; another mount's change in it is in the next listing.
    fs::create_dir(r.join("big")).unwrap();
    let mut made: Vec<String> = (0..2500).map(|i| format!("f{i:04}")).collect();
    for n in &made {
        fs::File::create(r.join("big").join(n)).unwrap();
    }
    let (asked, held_before) = (listings(), held());
    assert_eq!(names("big"), made);
    assert_eq!(
        listings() - asked,
        0.0,
        "the reader asked for its own directory"
    );
    assert!(
        held() - held_before >= 2.0,
        "pages held: {}",
        held() - held_before
    );
    fs::remove_file(w.join("big/f1000")).unwrap();
    fs::write(w.join("big/g"), "g").unwrap();
    made.retain(|n| n != "f1000");
    made.push("g".into());
    wait_until(
        Duration::from_secs(5),
        "the reader's listing of big",
        || names("big") == made,
    );

    // Renames by the reader in a directory it holds: a listing gives each name's own inode
    // and kind, after an exchange of a file and a directory too.
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    fs::create_dir(r.join("x")).unwrap();
    fs::write(r.join("x/a"), "a").unwrap();
    fs::create_dir(r.join("x/b")).unwrap();
    fs::write(r.join("x/c"), "c").unwrap();
    fs::rename(r.join("x/c"), r.join("x/a")).unwrap();
    fs::rename(r.join("big/g"), r.join("x/g")).unwrap();
    let path = |n: &str| {
        std::ffi::CString::new(r.join("x").join(n).into_os_string().into_encoded_bytes()).unwrap()
    };
    let (from, to) = (path("a"), path("b"));
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let mut listed: Vec<(String, u64, bool)> = fs::read_dir(r.join("x"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.ino(), e.file_type().unwrap().is_dir())
        })
        .collect();
    listed.sort();
    let truth: Vec<(String, u64, bool)> = ["a", "b", "g"]
        .iter()
        .map(|n| {
            let m = fs::symlink_metadata(r.join("x").join(n)).unwrap();
            (n.to_string(), m.ino(), m.is_dir())
        })
        .collect();
    assert_eq!(listed, truth);
    assert!(truth[0].2 && !truth[1].2, "the exchange swapped a and b");
    assert_eq!(fs::read(r.join("x/b")).unwrap(), b"c");
}
