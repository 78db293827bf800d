//! A cluster across several hosts: the master, each storage node and each mount in its own
//! network namespace with its own address on a bridged network (a real multi-host topology on
//! one machine), started as an operator would start them on separate hosts (docs/DEPLOY.md):
//! join tokens, node and client credentials, addresses given on the command line. Files
//! written on one host read identical on another; a node joins later, a node killed in its
//! namespace is repaired around.
//!
//! Needs root and iproute2 (`ip netns`); the processes enter only the network namespace
//! (`nsenter --net`), so a mount made there is visible to the test.

use shardfs_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Network namespaces `<tag>-h1` … `<tag>-hN`, each with one veth into a bridge that lives in
/// its own namespace `<tag>-sw`; host `i` is `10.77.<net>.<i>/24`.
struct Hosts {
    tag: String,
    net: u32,
    count: usize,
}

fn ip(args: &str) {
    let out = sh(&format!("ip {args}"));
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hosts {
    fn new(count: usize) -> Hosts {
        let pid = std::process::id();
        let h = Hosts {
            tag: format!("sfs{}", pid % 100_000),
            net: 1 + pid % 250,
            count,
        };
        let sw = h.ns(0);
        ip(&format!("netns add {sw}"));
        ip(&format!("-n {sw} link add br0 type bridge"));
        ip(&format!("-n {sw} link set br0 up"));
        for i in 1..=count {
            let ns = h.ns(i);
            let port = format!("{}p{i}", h.tag);
            ip(&format!("netns add {ns}"));
            ip(&format!(
                "link add {port} type veth peer name eth0 netns {ns}"
            ));
            ip(&format!("link set {port} netns {sw}"));
            ip(&format!("-n {sw} link set {port} master br0 up"));
            ip(&format!("-n {ns} addr add {}/24 dev eth0", h.addr(i)));
            ip(&format!("-n {ns} link set eth0 up"));
            ip(&format!("-n {ns} link set lo up"));
        }
        h
    }

    /// The namespace of host `i` (0: the switch).
    fn ns(&self, i: usize) -> String {
        match i {
            0 => format!("{}-sw", self.tag),
            _ => format!("{}-h{i}", self.tag),
        }
    }

    fn addr(&self, i: usize) -> String {
        format!("10.77.{}.{i}", self.net)
    }

    /// `program` to run on host `i` (in its network namespace only).
    fn cmd(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns(i)))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..=self.count {
            let _ = sh(&format!("ip netns del {}", self.ns(i)));
        }
    }
}

/// The processes of the test, killed when it ends (pass or fail).
struct Procs {
    children: Vec<(String, Child)>,
    mounts: Vec<PathBuf>,
}

impl Procs {
    fn kill(&mut self, name: &str) {
        if let Some(at) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(at);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for mp in &self.mounts {
            let _ = sh(&format!("umount -l {}", mp.display()));
        }
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn log(dir: &Path, name: &str) -> fs::File {
    fs::File::create(dir.join(format!("{name}.log"))).unwrap()
}

#[test]
fn a_cluster_across_network_namespaces_serves_every_host_and_repairs_around_a_lost_node() {
    if sh("ip netns list").status.code() != Some(0) {
        panic!("this test needs root and iproute2 (ip netns)");
    }
    // Hosts: 1 master, 2–4 storage nodes, 5 a node that joins later, 6 and 7 mounts.
    let hosts = Hosts::new(7);
    let tmp = tempfile::Builder::new()
        .prefix("shardfs-multihost-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let mut procs = Procs {
        children: Vec::new(),
        mounts: Vec::new(),
    };
    let addr_file = dir.join("master.addr");
    let master = hosts
        .cmd(1, &bin("shardfs-master"))
        .arg("--data-dir")
        .arg(dir.join("master"))
        .args(["--listen", &format!("{}:0", hosts.addr(1)), "--ec", "2+1"])
        .arg("--addr-file")
        .arg(&addr_file)
        .args(FAST_REPAIR)
        .stdout(Stdio::null())
        .stderr(log(dir, "master"))
        .spawn()
        .unwrap();
    procs.children.push(("master".into(), master));
    wait_until(Duration::from_secs(30), "the master's address", || {
        addr_file.exists()
    });
    let master_addr = fs::read_to_string(&addr_file).unwrap().trim().to_string();
    assert!(
        master_addr.starts_with(&hosts.addr(1)),
        "the master listens on its host's address: {master_addr}"
    );
    // The first admin credential, beside the address file where the CLI looks for it.
    fs::copy(dir.join("master/admin.cred"), dir.join("admin.cred")).unwrap();
    // Admin commands from the master's host, as an operator there runs them.
    let admin = |args: &[&str], after: &[&str]| -> String {
        let mut c = hosts.cmd(1, &bin("shardfs"));
        c.args(args).arg(&addr_file).args(after);
        run(c, &format!("shardfs {args:?}"))
    };
    let token = |role: &str, extra: &[&str]| -> String {
        let mut after = vec!["--role", role];
        after.extend_from_slice(extra);
        admin(&["token", "create"], &after).trim().to_string()
    };
    let status = || -> serde_json::Value {
        serde_json::from_str(&admin(&["status", "--json"], &[])).unwrap()
    };
    let start_node = |procs: &mut Procs, host: usize| {
        let t = token("node", &[]);
        let child = hosts
            .cmd(host, &bin("shardfs-node"))
            .arg("--data-dir")
            .arg(dir.join(format!("node-h{host}")))
            .args([
                "--listen",
                &format!("{}:0", hosts.addr(host)),
                "--heartbeat-ms",
                "200",
                "--master",
                &master_addr,
                "--token",
                &t,
            ])
            .stdout(Stdio::null())
            .stderr(log(dir, &format!("node-h{host}")))
            .spawn()
            .unwrap();
        procs.children.push((format!("node-h{host}"), child));
    };
    let nodes_up = |n: u64| {
        wait_until(Duration::from_secs(60), &format!("{n} nodes up"), || {
            status()["nodes_up"].as_u64() == Some(n)
        })
    };
    for host in 2..=4 {
        start_node(&mut procs, host);
    }
    nodes_up(3);
    // Every node is known by its own host's address.
    let nodes = admin(&["status", "--json"], &[]);
    for host in 2..=4 {
        assert!(
            nodes.contains(&hosts.addr(host)),
            "node on host {host} not at {}: {nodes}",
            hosts.addr(host)
        );
    }

    // Mounts on two more hosts, each with its own client credential.
    let mount = |procs: &mut Procs, host: usize, name: &str, extra: &[&str]| -> PathBuf {
        let cred = dir.join(format!("{name}.cred"));
        if !cred.exists() {
            let t = token("client", &["--allow-root"]);
            let mut c = hosts.cmd(host, &bin("shardfs"));
            c.args(["credentials", "join", &master_addr, "--token", &t])
                .arg("--credentials")
                .arg(&cred);
            run(c, "credentials join");
        }
        let mp = dir.join(name);
        fs::create_dir_all(&mp).unwrap();
        let mut c = hosts.cmd(host, &bin("shardfs"));
        c.args(["mount", &master_addr])
            .arg(&mp)
            .arg("--credentials")
            .arg(&cred)
            .arg("--log-file")
            .arg(dir.join(format!("mount-{name}.log")))
            .args(extra);
        run(c, "shardfs mount");
        assert!(is_mounted(&mp), "{name} mounted");
        procs.mounts.push(mp.clone());
        mp
    };
    let a = mount(&mut procs, 6, "a", &[]);
    let b = mount(&mut procs, 7, "b", &[]);
    let big = random_bytes(1, 9 << 20);
    fs::write(a.join("big"), &big).unwrap();
    fs::create_dir(a.join("tree")).unwrap();
    let mut want = Vec::new();
    for i in 0..40u64 {
        let d = random_bytes(100 + i, (i as usize * 997) % 20_000 + 1);
        fs::write(a.join(format!("tree/f{i}")), &d).unwrap();
        want.push((format!("tree/f{i}"), d));
    }
    let check = |mp: &Path, what: &str| {
        assert!(fs::read(mp.join("big")).unwrap() == big, "{what}: big");
        for (name, d) in &want {
            assert!(fs::read(mp.join(name)).unwrap() == *d, "{what}: {name}");
        }
    };
    check(&b, "read on another host");
    fs::write(b.join("from-b"), b"written on host 7\n").unwrap();
    assert_eq!(fs::read(a.join("from-b")).unwrap(), b"written on host 7\n");

    // A node joins later, on its own host; then the node on host 2 dies there. Its shards
    // are rebuilt on the other three (2+1 needs three nodes).
    start_node(&mut procs, 5);
    nodes_up(4);
    procs.kill("node-h2");
    nodes_up(3);
    std::thread::sleep(Duration::from_millis(2500));
    admin(&["repair"], &["--timeout", "180"]);
    let h = status();
    assert_eq!(h["health"]["degraded"], 0, "after repair: {h}");
    let rebuilt: usize = sh_ok(&format!(
        "find {} -type f -name '*.[0-9]' | wc -l",
        dir.join("node-h5/shards").display()
    ))
    .trim()
    .parse()
    .unwrap();
    assert!(rebuilt > 0, "nothing rebuilt on the node that joined later");
    // With host 3's node gone too, every block is read from hosts 4 and 5: the rebuilt
    // shards are what makes that possible.
    procs.kill("node-h3");
    let c = mount(&mut procs, 7, "c", &["--cache-mib", "0"]);
    check(&c, "read after repair with another node down");
}
