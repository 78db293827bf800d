//! A mount cut off from the master keeps working on what it has, journals its changes, and
//! merges them when the master is back — or at its next mount if it crashed meanwhile. The cut
//! is real: the mount reaches the master only through a UDP relay process, which is killed and
//! later started again on the same port.

use shardfs_tests::*;
use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `relay.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT`: forwards UDP datagrams both ways, one
/// upstream socket per client address.
const RELAY: &str = r#"
import selectors, socket, sys
port, up = int(sys.argv[1]), (sys.argv[2], int(sys.argv[3]))
lst = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", port))
sel = selectors.DefaultSelector()
sel.register(lst, selectors.EVENT_READ, None)
ups = {}
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data is None:
            data, addr = lst.recvfrom(65535)
            s = ups.get(addr)
            if s is None:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.connect(up)
                ups[addr] = s
                sel.register(s, selectors.EVENT_READ, addr)
            s.send(data)
        else:
            try:
                lst.sendto(key.fileobj.recv(65535), key.data)
            except OSError:
                pass
"#;

fn start_relay(script: &std::path::Path, port: u16, master: &str) -> Child {
    let (host, mport) = master.rsplit_once(':').unwrap();
    let mut child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(host)
        .arg(mport)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn edit_line(path: &std::path::Path, line: usize, text: &str) {
    let t = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = t.lines().map(str::to_string).collect();
    lines[line] = text.to_string();
    let new: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(path, new).unwrap();
}

#[test]
fn edits_made_while_cut_off_merge_when_the_master_is_back() {
    let mut c = Cluster::start(4, "2+2");
    let relay_script = c.path("relay.py");
    fs::write(&relay_script, RELAY).unwrap();
    let port = free_udp_port();
    let master = c.master_addr();
    let mut relay = start_relay(&relay_script, port, &master);
    let journal = c.path("journal");
    let via_relay = format!("127.0.0.1:{port}");
    let m1 = c.mount_via(
        "m1",
        &via_relay,
        &["--timeout", "2", "--journal-dir", journal.to_str().unwrap()],
    );
    let m2 = c.mount("m2");
    let original: String = (0..100).map(|i| format!("line {i}\n")).collect();
    fs::write(m2.join("doc.txt"), &original).unwrap();
    assert_eq!(fs::read_to_string(m1.join("doc.txt")).unwrap(), original);

    // Cut: the relay dies; m1 edits line 10, m2 edits line 90.
    relay.kill().unwrap();
    relay.wait().unwrap();
    edit_line(&m1.join("doc.txt"), 10, "line 10 edited offline on m1");
    assert!(
        fs::read_to_string(m1.join("doc.txt"))
            .unwrap()
            .contains("edited offline on m1"),
        "the offline mount reads its own change"
    );
    let entries = fs::read_dir(&journal).map(|d| d.count()).unwrap_or(0);
    assert!(entries > 0, "the change went to the journal");
    edit_line(&m2.join("doc.txt"), 90, "line 90 edited on m2");

    // The link comes back: the journal is replayed and merged.
    let mut relay2 = start_relay(&relay_script, port, &master);
    for m in [&m1, &m2] {
        wait_until(
            Duration::from_secs(30),
            "edits merged on both mounts",
            || {
                let t = fs::read_to_string(m.join("doc.txt")).unwrap_or_default();
                t.contains("line 10 edited offline on m1\n") && t.contains("line 90 edited on m2\n")
            },
        );
    }
    let t = fs::read_to_string(m2.join("doc.txt")).unwrap();
    assert_eq!(t.lines().count(), 100);
    assert_eq!(fs::read(m1.join("doc.txt")).unwrap(), t.as_bytes());
    let log = fs::read_to_string(c.path("logs/mount-m1.log")).unwrap();
    assert!(
        log.contains("offline change replayed"),
        "the log says what was replayed"
    );
    // So do `shardfs status` and the file's history.
    let (ok, status, _) = c.admin(&["status"]);
    assert!(
        ok && status.contains("offline change replayed: merged"),
        "{status}"
    );
    let out = std::process::Command::new(bin("shardfs"))
        .args(["history", "--json"])
        .arg(m2.join("doc.txt"))
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(history.contains("offline change replayed"), "{history}");
    let _ = relay2.kill();
    let _ = relay2.wait();
}

#[test]
fn a_mount_that_crashed_while_offline_replays_its_journal_when_mounted_again() {
    let mut c = Cluster::start(4, "2+2");
    let relay_script = c.path("relay.py");
    fs::write(&relay_script, RELAY).unwrap();
    let port = free_udp_port();
    let master = c.master_addr();
    let mut relay = start_relay(&relay_script, port, &master);
    let journal = c.path("journal");
    let pid_file = c.path("m1.pid");
    let via_relay = format!("127.0.0.1:{port}");
    let opts = [
        "--timeout",
        "2",
        "--journal-dir",
        journal.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ];
    let m1 = c.mount_via("m1", &via_relay, &opts);
    let m2 = c.mount("m2");
    let original: String = (0..100).map(|i| format!("line {i}\n")).collect();
    fs::write(m2.join("doc.txt"), &original).unwrap();
    assert_eq!(fs::read_to_string(m1.join("doc.txt")).unwrap(), original);
    relay.kill().unwrap();
    relay.wait().unwrap();
    edit_line(&m1.join("doc.txt"), 10, "line 10 edited offline on m1");
    // The mount dies with its change only in the journal.
    let pid = fs::read_to_string(&pid_file).unwrap().trim().to_string();
    sh_ok(&format!("kill -9 {pid}"));
    sh(&format!("umount -l {}", m1.display()));
    edit_line(&m2.join("doc.txt"), 90, "line 90 edited on m2");
    // Mounted again (the master reachable directly now): the journal is replayed.
    let m1 = c.mount_via("m1", &master, &opts);
    for m in [&m1, &m2] {
        wait_until(
            Duration::from_secs(30),
            "journal replayed and merged",
            || {
                let t = fs::read_to_string(m.join("doc.txt")).unwrap_or_default();
                t.contains("line 10 edited offline on m1\n") && t.contains("line 90 edited on m2\n")
            },
        );
    }
    let left = fs::read_dir(&journal)
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    assert_eq!(left, 0, "replayed entries leave the journal");
}
