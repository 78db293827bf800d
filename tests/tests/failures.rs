//! Breaking things: dead storage nodes, a killed master, a cluster restart.

use shardfs_tests::*;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn write_set(mp: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, size) in [0usize, 1, 4095, 100_000, 4 << 20, (4 << 20) + 1, 21 << 20]
        .iter()
        .enumerate()
    {
        let name = format!("file{i}");
        fs::write(mp.join(&name), random_bytes(i as u64 + 100, *size)).unwrap();
        out.push((name.clone(), hash_file(&mp.join(&name))));
    }
    out
}

fn verify(mp: &Path, set: &[(String, String)]) {
    for (name, h) in set {
        assert_eq!(&hash_file(&mp.join(name)), h, "{name} differs");
    }
}

#[test]
fn every_file_reads_back_with_any_two_nodes_dead() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("writer");
    let set = write_set(&mp);
    c.umount(&mp);
    for (n, (a, b)) in [(0, 1), (2, 3), (4, 5), (0, 5), (1, 4)]
        .into_iter()
        .enumerate()
    {
        c.kill_node(a);
        c.kill_node(b);
        // A fresh mount with no block cache: every byte comes from the surviving nodes.
        let r = c.mount_with(&format!("reader{n}"), &["--cache-mib", "0"]);
        let t = Instant::now();
        verify(&r, &set);
        eprintln!("nodes {a},{b} down: verified in {:?}", t.elapsed());
        c.umount(&r);
        c.start_node(a);
        c.start_node(b);
        c.wait_nodes_up(6);
    }
}

#[test]
fn closed_files_survive_kill_9_of_the_master() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("mnt");
    let set = write_set(&mp);
    fs::create_dir_all(mp.join("d/e")).unwrap();
    fs::write(mp.join("d/e/small"), b"small file").unwrap();
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(6);
    // The running mount reconnects on its own.
    verify(&mp, &set);
    assert_eq!(fs::read(mp.join("d/e/small")).unwrap(), b"small file");
    fs::write(mp.join("after"), b"written after the restart").unwrap();
    // And a new mount sees the same.
    let m2 = c.mount("fresh");
    verify(&m2, &set);
    assert_eq!(
        fs::read(m2.join("after")).unwrap(),
        b"written after the restart"
    );
}

#[test]
fn whole_cluster_restart_keeps_every_file() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("mnt");
    let set = write_set(&mp);
    c.umount(&mp);
    c.kill_master();
    for i in 0..6 {
        c.kill_node(i);
    }
    c.start_master();
    for i in 0..6 {
        c.start_node(i);
    }
    c.wait_nodes_up(6);
    let m = c.mount("again");
    verify(&m, &set);
}

#[test]
fn syscalls_fail_in_bounded_time_when_the_master_is_down() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount_with("mnt", &["--timeout", "3"]);
    fs::write(mp.join("x"), b"x").unwrap();
    c.kill_master();
    let t = Instant::now();
    let r = fs::metadata(mp.join("never-seen-name"));
    let took = t.elapsed();
    assert!(
        r.is_err(),
        "stat of an unknown name cannot succeed with the master down"
    );
    assert!(
        took < Duration::from_secs(20),
        "stat took {took:?} with a 3 s timeout"
    );
    let t = Instant::now();
    let r = fs::write(mp.join("new-file"), b"data");
    assert!(
        r.is_err(),
        "creating a file cannot succeed with the master down"
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    // Once the master is back, the same mount works again.
    c.start_master();
    c.wait_nodes_up(6);
    fs::write(mp.join("new-file"), b"data").unwrap();
    assert_eq!(fs::read(mp.join("new-file")).unwrap(), b"data");
}

#[test]
fn a_block_with_more_than_m_shards_gone_fails_quickly_and_the_log_names_it() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("w");
    let data = random_bytes(5, 4 << 20);
    fs::write(mp.join("one-block"), &data).unwrap();
    c.umount(&mp);
    // Three of six nodes gone: every block has lost 3 shards, one more than the code survives.
    c.kill_node(0);
    c.kill_node(1);
    c.kill_node(2);
    let r = c.mount_with("r", &["--cache-mib", "0", "--timeout", "5"]);
    let t = Instant::now();
    let e = fs::read(r.join("one-block")).expect_err("a block with 3 of 6 shards gone");
    let took = t.elapsed();
    assert_eq!(e.raw_os_error(), Some(EIO), "{e}");
    assert!(took < Duration::from_secs(20), "read failed after {took:?}");
    let log = fs::read_to_string(c.path("logs/mount-r.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("unreadable"))
        .unwrap_or_else(|| panic!("no log line names the unreadable block:\n{log}"));
    assert!(
        line.contains("of the 4 shards needed") && line.contains("shard "),
        "the log names the block and its missing shards: {line}"
    );
    eprintln!("read failed in {took:?}: {line}");
}

const EIO: i32 = 5;

#[test]
fn a_full_node_takes_no_shards_says_so_and_writes_go_elsewhere() {
    let mut c = Cluster::start(6, "4+2");
    // A seventh node offering 1 MiB: too little for a shard of a 4 MiB block.
    let full = c.add_node_with(&["--capacity", "1048576"]);
    c.wait_nodes_up(7);
    let mp = c.mount("m");
    let set = write_set(&mp);
    c.umount(&mp);
    assert!(
        c.node_usage()[full] < 1 << 20,
        "the full node got shards: {:?}",
        c.node_usage()
    );
    let st = c.status().unwrap();
    let nodes = st["nodes"].as_array().unwrap();
    let reasons: Vec<&str> = nodes.iter().filter_map(|n| n["reason"].as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("full")),
        "status says which node is full: {reasons:?}"
    );
    let r = c.mount_with("r", &["--cache-mib", "0"]);
    verify(&r, &set);
}

/// fsync's promise: once it returns, the bytes survive a crash of the client (the mount process
/// killed with the file still open and more unsynced data written) and a master restart.
#[test]
fn fsynced_data_survives_a_client_crash_and_a_master_restart() {
    let mut c = Cluster::start(6, "4+2");
    let pid_file = c.path("m.pid");
    let mp = c.mount_with("m", &["--pid-file", pid_file.to_str().unwrap()]);
    let synced = random_bytes(77, (9 << 20) + 12345);
    fs::write(c.path("synced.bin"), &synced).unwrap();
    // The writer fsyncs, writes more without syncing, then waits with the file open.
    let script = format!(
        "import os,sys,time\n\
         fd=os.open('{f}',os.O_CREAT|os.O_WRONLY,0o644)\n\
         os.write(fd,open('{src}','rb').read()); os.fsync(fd)\n\
         print('synced',flush=True)\n\
         os.write(fd,b'unsynced tail'*1000)\n\
         time.sleep(60)\n",
        f = mp.join("doc.bin").display(),
        src = c.path("synced.bin").display()
    );
    let mut writer = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(writer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "synced");
    let pid = fs::read_to_string(&pid_file).unwrap().trim().to_string();
    sh_ok(&format!("kill -9 {pid}"));
    let _ = writer.kill();
    let _ = writer.wait();
    sh(&format!("umount -l {}", mp.display()));
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(6);
    let m2 = c.mount("after");
    let back = fs::read(m2.join("doc.bin")).unwrap();
    assert!(
        back.len() >= synced.len(),
        "fsynced bytes lost: {} < {}",
        back.len(),
        synced.len()
    );
    assert!(
        back[..synced.len()] == synced[..],
        "fsynced bytes differ after the crash"
    );
}
