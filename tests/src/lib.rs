//! Test harness: starts a real ShardFS cluster (the `shardfs-master` and `shardfs-node`
//! binaries as processes, on 127.0.0.1) in a temporary directory and mounts it with the real
//! `shardfs` client through FUSE. Tests then use the mount like a user would.
//!
//! The binaries are taken from the same target directory as the test executable (build them
//! first with `cargo build --release --bins`; `scripts/test.sh` does) or from `SHARDFS_BIN_DIR`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Master settings that make repair start within seconds of a node's death: a node is down
/// after 3 s of silence, its shards are rebuilt 2 s later, repair looks every 300 ms.
pub const FAST_REPAIR: [&str; 6] = [
    "--node-timeout-ms",
    "3000",
    "--repair-grace-secs",
    "2",
    "--repair-interval-ms",
    "300",
];

pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SHARDFS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf();
    assert!(
        dir.join("shardfs-master").exists(),
        "binaries not found in {}: run `cargo build --release --bins` first (scripts/test.sh does)",
        dir.display()
    );
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ec: String,
    master: Option<Child>,
    nodes: Vec<Option<Child>>,
    mounts: Vec<PathBuf>,
    pub master_args: Vec<String>,
    pub node_args: Vec<String>,
}

impl Cluster {
    /// Start a master and `nodes` storage nodes with code `ec` and wait until all are up.
    pub fn start(nodes: usize, ec: &str) -> Cluster {
        Self::start_with(nodes, ec, &[])
    }

    pub fn start_with(nodes: usize, ec: &str, master_args: &[&str]) -> Cluster {
        Self::start_opts(nodes, ec, master_args, &[])
    }

    /// Like [`Cluster::start_with`], with extra arguments for every storage node too.
    pub fn start_opts(nodes: usize, ec: &str, master_args: &[&str], node_args: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("shardfs-test-")
            .tempdir()
            .expect("tempdir");
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        let mut c = Cluster {
            dir,
            ec: ec.to_string(),
            master: None,
            nodes: (0..nodes).map(|_| None).collect(),
            mounts: Vec::new(),
            master_args: master_args.iter().map(|s| s.to_string()).collect(),
            node_args: node_args.iter().map(|s| s.to_string()).collect(),
        };
        c.start_master();
        for i in 0..nodes {
            c.start_node(i);
        }
        c.wait_nodes_up(nodes);
        c
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn addr_file(&self) -> PathBuf {
        self.path("master.addr")
    }

    pub fn master_addr(&self) -> String {
        fs::read_to_string(self.addr_file())
            .expect("master.addr")
            .trim()
            .to_string()
    }

    fn log(&self, name: &str) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("logs/{name}.log")))
            .unwrap()
    }

    pub fn start_master(&mut self) {
        assert!(self.master.is_none(), "master already running");
        let _ = fs::remove_file(self.addr_file());
        let child = Command::new(bin("shardfs-master"))
            .arg("--data-dir")
            .arg(self.path("master"))
            .args(["--listen", "127.0.0.1:0", "--ec", &self.ec])
            .arg("--addr-file")
            .arg(self.addr_file())
            .args(&self.master_args)
            .stdout(Stdio::null())
            .stderr(self.log("master"))
            .spawn()
            .expect("start master");
        self.master = Some(child);
        wait_until(Duration::from_secs(30), "master address file", || {
            self.addr_file().exists()
        });
        // As the launcher does: the first admin credential beside the address file, and a
        // client credential (allowed to act as root: the tests run as root) for the mounts.
        if !self.path("admin.cred").exists() {
            fs::copy(self.path("master/admin.cred"), self.path("admin.cred")).expect("admin.cred");
            let token = self.token("client", &["--allow-root"]);
            let (ok, out, err) = self.admin_around(
                &["credentials", "join"],
                &[
                    "--token",
                    &token,
                    "--credentials",
                    &self.path("client.cred").display().to_string(),
                ],
            );
            assert!(ok, "client join failed: {out}{err}");
        }
    }

    /// A credential the harness keeps beside the address file (`admin.cred`, `client.cred`).
    pub fn credential(&self, name: &str) -> shardfs_common::pki::Credential {
        shardfs_common::pki::Credential::load(&self.path(name)).expect("credential")
    }

    /// A one-time join token for `role`, made with the admin credential.
    pub fn token(&self, role: &str, extra: &[&str]) -> String {
        let mut after = vec!["--role", role];
        after.extend_from_slice(extra);
        let (ok, out, err) = self.admin_around(&["token", "create"], &after);
        assert!(ok, "token create failed: {out}{err}");
        out.trim().to_string()
    }

    /// A new client credential `name` (in the cluster dir), joined with a client token made
    /// with `token_args` (e.g. `--uids 1000-1999`), as `shardfs credentials join` makes it.
    pub fn join_client(&self, name: &str, token_args: &[&str]) -> shardfs_common::pki::Credential {
        let token = self.token("client", token_args);
        let path = self.path(name).display().to_string();
        let (ok, out, err) = self.admin_around(
            &["credentials", "join"],
            &["--token", &token, "--credentials", &path],
        );
        assert!(ok, "credentials join failed: {out}{err}");
        self.credential(name)
    }

    /// The master's process id.
    pub fn master_pid(&self) -> u32 {
        self.master.as_ref().expect("master running").id()
    }

    /// kill -9 the master.
    pub fn kill_master(&mut self) {
        if let Some(mut c) = self.master.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} already running");
        let token = match self.node_dir(i).join("node.cred").exists()
            || self.node_args.iter().any(|a| a == "--token")
        {
            true => Vec::new(),
            false => vec!["--token".to_string(), self.token("node", &[])],
        };
        let child = Command::new(bin("shardfs-node"))
            .arg("--data-dir")
            .arg(self.node_dir(i))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-ms",
                "200",
                "--master",
                &self.master_addr(),
            ])
            .args(&token)
            .args(&self.node_args)
            .stdout(Stdio::null())
            .stderr(self.log(&format!("node{i}")))
            .spawn()
            .expect("start node");
        self.nodes[i] = Some(child);
    }

    /// Start one more storage node (joining the running cluster); returns its index.
    pub fn add_node(&mut self) -> usize {
        self.add_node_with(&[])
    }

    /// Like [`Cluster::add_node`], with extra arguments for that node.
    pub fn add_node_with(&mut self, extra: &[&str]) -> usize {
        self.nodes.push(None);
        let i = self.nodes.len() - 1;
        let saved = self.node_args.clone();
        self.node_args.extend(extra.iter().map(|s| s.to_string()));
        self.start_node(i);
        self.node_args = saved;
        i
    }

    /// kill -9 storage node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send signal `sig` to storage node `i` (SIGSTOP freezes it: alive but silent).
    pub fn signal_node(&self, i: usize, sig: i32) {
        let pid = self.nodes[i].as_ref().expect("node running").id();
        // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
        let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({pid}, {sig})");
    }

    /// The address storage node `i` listens on.
    pub fn node_addr(&self, i: usize) -> std::net::SocketAddr {
        fs::read_to_string(self.node_dir(i).join("listen.addr"))
            .expect("listen.addr")
            .trim()
            .parse()
            .expect("node address")
    }

    /// Storage node `i`'s id.
    pub fn node_id(&self, i: usize) -> shardfs_common::NodeId {
        fs::read_to_string(self.node_dir(i).join("node.id"))
            .expect("node.id")
            .trim()
            .parse()
            .expect("node id")
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.path(&format!("node{i}"))
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// `shardfs status --json` parsed.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = Command::new(bin("shardfs"))
            .args(["status", "--json"])
            .arg(self.addr_file())
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Run `shardfs ARGS… MASTER` and return (success, stdout, stderr).
    pub fn admin(&self, args: &[&str]) -> (bool, String, String) {
        self.admin_around(args, &[])
    }

    /// Run `shardfs BEFORE… MASTER AFTER…` and return (success, stdout, stderr).
    pub fn admin_around(&self, before: &[&str], after: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("shardfs"))
            .args(before)
            .arg(self.addr_file())
            .args(after)
            .output()
            .expect("run shardfs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    pub fn wait_nodes_up(&self, n: usize) {
        wait_until(Duration::from_secs(60), &format!("{n} nodes up"), || {
            self.status()
                .and_then(|s| s["nodes_up"].as_u64())
                .unwrap_or(0) as usize
                >= n
        });
    }

    /// Mount the cluster at a new directory `name` (background mount, as a user runs it).
    pub fn mount(&mut self, name: &str) -> PathBuf {
        self.mount_with(name, &[])
    }

    pub fn mount_with(&mut self, name: &str, extra: &[&str]) -> PathBuf {
        let addr = self.addr_file().display().to_string();
        self.mount_via(name, &addr, extra)
    }

    /// Mount giving `master` (an address or a file holding one) as the master's address.
    pub fn mount_via(&mut self, name: &str, master: &str, extra: &[&str]) -> PathBuf {
        let mp = self.path(name);
        fs::create_dir_all(&mp).unwrap();
        let mut cred = vec![];
        if !extra.contains(&"--credentials") {
            cred = vec![
                "--credentials".to_string(),
                self.path("client.cred").display().to_string(),
            ];
        }
        let out = Command::new(bin("shardfs"))
            .arg("mount")
            .arg(master)
            .arg(&mp)
            .arg("--log-file")
            .arg(self.path(&format!("logs/mount-{name}.log")))
            .args(&cred)
            .args(extra)
            .output()
            .expect("run shardfs mount");
        assert!(
            out.status.success(),
            "mount failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            is_mounted(&mp),
            "{} not in /proc/mounts after mount returned",
            mp.display()
        );
        self.mounts.push(mp.clone());
        mp
    }

    pub fn umount(&mut self, mp: &Path) {
        let st = Command::new(bin("shardfs"))
            .arg("umount")
            .arg(mp)
            .status()
            .expect("run umount");
        assert!(st.success(), "umount {} failed", mp.display());
        self.mounts.retain(|m| m != mp);
    }

    /// Shard files stored by node `i` (`<block>.<index>`).
    pub fn shard_files(&self, i: usize) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.node_dir(i).join("shards")) {
            for d in rd.flatten() {
                if let Ok(files) = fs::read_dir(d.path()) {
                    // Shard files, not the chunk sums kept beside them.
                    out.extend(
                        files
                            .flatten()
                            .map(|f| f.path())
                            .filter(|p| p.extension().is_none_or(|e| e != "sum")),
                    );
                }
            }
        }
        out.sort();
        out
    }

    /// What the nodes store: block or piece id (hex) -> (node, shard index) of each shard file.
    pub fn holders(&self) -> std::collections::HashMap<String, Vec<(usize, String)>> {
        let mut out: std::collections::HashMap<String, Vec<(usize, String)>> = Default::default();
        for i in 0..self.node_count() {
            for f in self.shard_files(i) {
                let name = f.file_name().unwrap().to_string_lossy().to_string();
                if let Some((id, idx)) = name.rsplit_once('.') {
                    out.entry(id.to_string())
                        .or_default()
                        .push((i, idx.to_string()));
                }
            }
        }
        out
    }

    /// Bytes of shard files stored by each node.
    pub fn node_usage(&self) -> Vec<u64> {
        (0..self.nodes.len())
            .map(|i| dir_bytes(&self.node_dir(i).join("shards")))
            .collect()
    }

    pub fn dump_logs(&self) {
        if let Ok(rd) = fs::read_dir(self.path("logs")) {
            for e in rd.flatten() {
                let mut s = String::new();
                if let Ok(mut f) = fs::File::open(e.path()) {
                    let _ = f.read_to_string(&mut s);
                }
                let lines = std::env::var("SHARDFS_TEST_LOG_LINES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(30);
                let tail: Vec<&str> = s.lines().rev().take(lines).collect();
                eprintln!("==== {} ====", e.path().display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SHARDFS_TEST_DUMP_LOGS").is_some() {
            self.dump_logs();
        }
        for mp in self.mounts.drain(..) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&mp)
                .stderr(Stdio::null())
                .status();
        }
        for n in self.nodes.iter_mut() {
            if let Some(mut c) = n.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.kill_master();
    }
}

/// A request through the real client code path (mutual TLS with `cred`), for the answer.
pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    alpn: &[u8],
    cred: &shardfs_common::pki::Credential,
    addr: std::net::SocketAddr,
    req: Req,
) -> Result<Resp, String> {
    let d = shardfs_common::dial::Dialer::new(alpn, cred, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let r = d
        .call::<_, Resp>(addr, &req, bytes::Bytes::new(), 0, Duration::from_secs(5))
        .await
        .map(|(r, _)| r)
        .map_err(|e| e.to_string());
    d.close();
    r
}

pub async fn call_master(
    cred: &shardfs_common::pki::Credential,
    addr: std::net::SocketAddr,
    req: shardfs_common::proto::MasterRequest,
) -> Result<shardfs_common::proto::MasterResponse, String> {
    call(shardfs_common::proto::ALPN_MASTER, cred, addr, req).await
}

pub async fn call_node(
    cred: &shardfs_common::pki::Credential,
    addr: std::net::SocketAddr,
    req: shardfs_common::proto::NodeRequest,
) -> Result<shardfs_common::proto::NodeResponse, String> {
    call(shardfs_common::proto::ALPN_NODE, cred, addr, req).await
}

/// Open a new mount session with `cred` (no files, no locks), for its id.
pub async fn open_session(
    cred: &shardfs_common::pki::Credential,
    master: std::net::SocketAddr,
) -> u64 {
    let r = call_master(
        cred,
        master,
        shardfs_common::proto::MasterRequest::SessionOpen {
            id: 0,
            host: "h".into(),
            user: "u".into(),
            mountpoint: "/m".into(),
            opens: vec![],
            locks: vec![],
        },
    )
    .await;
    match r {
        Ok(shardfs_common::proto::MasterResponse::Session { id, .. }) => id,
        other => panic!("session not opened: {other:?}"),
    }
}

/// The request a mount sends to create regular file `name` in `parent` (mode 0644, as root).
pub fn create_request(parent: u64, name: &str) -> shardfs_common::proto::MasterRequest {
    shardfs_common::proto::MasterRequest::Create {
        parent,
        name: name.as_bytes().to_vec(),
        kind: shardfs_common::proto::FileKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        now: shardfs_common::proto::Timespec::now(),
        session: 0,
    }
}

/// Resident memory of a process, in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn is_mounted(mp: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let want = mp.to_string_lossy().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()) && l.starts_with("shardfs"))
}

pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let md = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if md.is_dir() {
                total += dir_bytes(&e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

pub fn hash_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

pub fn sh(cmd: &str) -> std::process::Output {
    Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run bash")
}

/// Run a shell command and assert it succeeds; returns stdout.
/// Run `cmd` with `sh -c` as user and group `uid`, with no supplementary groups.
pub fn sh_as(uid: u32, cmd: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .output()
        .expect("setpriv")
}

pub fn sh_ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Write a tree of files with mixed sizes (0 B .. 1 MiB) under `root`; returns (files, dirs).
pub fn make_tree(root: &Path, files: usize, seed: u64) -> (usize, usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut dirs = vec![root.to_path_buf()];
    fs::create_dir_all(root).unwrap();
    let mut ndirs = 0;
    for i in 0..files {
        if i % 12 == 0 {
            let parent = dirs[rng.gen_range(0..dirs.len())].clone();
            let d = parent.join(format!("dir{i}"));
            fs::create_dir_all(&d).unwrap();
            dirs.push(d);
            ndirs += 1;
        }
        let d = &dirs[rng.gen_range(0..dirs.len())];
        let size = match rng.gen_range(0..100) {
            0..=4 => 0,
            5..=69 => rng.gen_range(1..8192),
            70..=94 => rng.gen_range(8192..131072),
            _ => rng.gen_range(131072..=1 << 20),
        };
        fs::write(
            d.join(format!("f{i}.bin")),
            random_bytes(seed ^ i as u64, size),
        )
        .unwrap();
    }
    (files, ndirs)
}
