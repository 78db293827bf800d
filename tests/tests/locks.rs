//! Advisory locks across mounts of one cluster (held in the master), and open files that are
//! unlinked elsewhere. Each lock is taken by a real process (Python's fcntl module) on a real
//! mount.

use shardfs_tests::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `lock.py KIND MODE PATH [START LEN]`: KIND flock|fcntl; MODE hold (lock, say "locked", keep
/// it until stdin closes), try (non-blocking: "locked" or "busy"), wait (blocking, then
/// "locked"), getlk (fcntl only: the conflicting lock as "TYPE START LEN PID" or "none").
const SCRIPT: &str = r#"
import fcntl, os, struct, sys
kind, mode, path = sys.argv[1:4]
start, length = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (0, 0)
fd = os.open(path, os.O_RDWR)
def lock(block):
    if kind == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB), length, start)
if mode == "getlk":
    req = struct.pack("hhqqi", fcntl.F_WRLCK, 0, start, length, 0)
    t, _, s, l, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, req))
    print("none" if t == fcntl.F_UNLCK else f"{'write' if t == fcntl.F_WRLCK else 'read'} {s} {l} {pid}", flush=True)
    sys.exit(0)
try:
    lock(mode != "try")
except BlockingIOError:
    print("busy", flush=True)
    sys.exit(0)
print("locked", flush=True)
if mode == "hold":
    sys.stdin.read()
"#;

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(script: &Path, args: &[&str]) -> Proc {
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// Let go of a held lock (close stdin; the process exits).
    fn release(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn run(script: &Path, args: &[&str]) -> String {
    let p = Proc::start(script, args);
    let l = p
        .line(Duration::from_secs(30))
        .expect("lock helper answered");
    p.release();
    l
}

#[test]
fn flock_and_fcntl_locks_are_coherent_across_mounts() {
    let mut c = Cluster::start(3, "2+1");
    let (m1, m2) = (c.mount("m1"), c.mount("m2"));
    let script = c.path("lock.py");
    fs::write(&script, SCRIPT).unwrap();
    fs::write(m1.join("f"), vec![7u8; 4096]).unwrap();
    let (f1, f2) = (
        m1.join("f").display().to_string(),
        m2.join("f").display().to_string(),
    );

    // flock: held on m1, the same lock on m2 is refused (LOCK_NB) or waits.
    let holder = Proc::start(&script, &["flock", "hold", &f1]);
    assert_eq!(
        holder.line(Duration::from_secs(30)).as_deref(),
        Some("locked")
    );
    assert_eq!(run(&script, &["flock", "try", &f2]), "busy");
    let waiter = Proc::start(&script, &["flock", "wait", &f2]);
    assert_eq!(
        waiter.line(Duration::from_secs(2)),
        None,
        "a blocking flock on the other mount must wait while the lock is held"
    );
    let t = Instant::now();
    holder.release();
    assert_eq!(
        waiter.line(Duration::from_secs(15)).as_deref(),
        Some("locked"),
        "the waiter gets the lock once the holder lets go"
    );
    println!("flock handed over across mounts in {:?}", t.elapsed());
    waiter.release();

    // fcntl byte ranges: bytes 0..100 write-locked on m1.
    let holder = Proc::start(&script, &["fcntl", "hold", &f1, "0", "100"]);
    assert_eq!(
        holder.line(Duration::from_secs(30)).as_deref(),
        Some("locked")
    );
    assert_eq!(run(&script, &["fcntl", "try", &f2, "50", "10"]), "busy");
    assert_eq!(
        run(&script, &["fcntl", "try", &f2, "100", "100"]),
        "locked",
        "a range past the held one is free"
    );
    let g = run(&script, &["fcntl", "getlk", &f2, "10", "1"]);
    assert!(
        g.starts_with("write 0 100 "),
        "F_GETLK on the other mount: {g}"
    );
    holder.release();
    assert_eq!(run(&script, &["fcntl", "try", &f2, "50", "10"]), "locked");
}

#[test]
fn locks_of_a_dead_mount_are_released() {
    let mut c = Cluster::start_with(3, "2+1", &["--session-lease-secs", "2"]);
    let pid_file = c.path("m1.pid");
    let m1 = c.mount_with("m1", &["--pid-file", pid_file.to_str().unwrap()]);
    let m2 = c.mount("m2");
    let script = c.path("lock.py");
    fs::write(&script, SCRIPT).unwrap();
    fs::write(m1.join("f"), b"x").unwrap();
    let f1 = m1.join("f").display().to_string();
    let f2 = m2.join("f").display().to_string();
    let holder = Proc::start(&script, &["flock", "hold", &f1]);
    assert_eq!(
        holder.line(Duration::from_secs(30)).as_deref(),
        Some("locked")
    );
    assert_eq!(run(&script, &["flock", "try", &f2]), "busy");
    let waiter = Proc::start(&script, &["flock", "wait", &f2]);

    // The holder's mount dies without a word to the master.
    let pid = fs::read_to_string(&pid_file).unwrap().trim().to_string();
    sh_ok(&format!("kill -9 {pid}"));
    let t = Instant::now();
    assert_eq!(
        waiter.line(Duration::from_secs(20)).as_deref(),
        Some("locked"),
        "the lock of a mount that died is released when its session lease runs out"
    );
    println!("lock of a killed mount released after {:?}", t.elapsed());
    waiter.release();
    let mut h = holder;
    let _ = h.child.kill();
    let _ = h.child.wait();
    sh(&format!("umount -l {}", m1.display()));
}

#[test]
fn a_process_waiting_for_a_lock_can_be_interrupted() {
    let mut c = Cluster::start(3, "2+1");
    let m1 = c.mount("m1");
    let script = c.path("lock.py");
    fs::write(&script, SCRIPT).unwrap();
    fs::write(m1.join("f"), b"x").unwrap();
    let f = m1.join("f").display().to_string();
    let holder = Proc::start(&script, &["fcntl", "hold", &f, "0", "0"]);
    assert_eq!(
        holder.line(Duration::from_secs(30)).as_deref(),
        Some("locked")
    );
    let mut waiter = Proc::start(&script, &["fcntl", "wait", &f, "0", "0"]);
    assert_eq!(waiter.line(Duration::from_secs(2)), None);
    let t = Instant::now();
    sh_ok(&format!("kill -TERM {}", waiter.child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = waiter.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "a process blocked in F_SETLKW did not die on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    println!("blocked locker killed in {:?}", t.elapsed());
    holder.release();
}

#[test]
fn an_open_file_unlinked_elsewhere_stays_readable_until_closed() {
    let mut c = Cluster::start(3, "2+1");
    use std::io::Read;
    let (m1, m2) = (c.mount("m1"), c.mount("m2"));
    let data = random_bytes(11, 9 << 20);
    // Several rounds: the close of the writing handle races the new open (a close that
    // arrived after the open once let the file go at the unlink).
    for round in 0..6 {
        let name = format!("f{round}");
        let content = &data[..(9 << 20) >> (5 - round)];
        fs::write(m1.join(&name), content).unwrap();
        let mut f = fs::File::open(m1.join(&name)).unwrap();
        fs::remove_file(m2.join(&name)).unwrap();
        assert!(
            !m1.join(&name).exists() || {
                // m1's entry cache may need its TTL (1 s) to notice.
                std::thread::sleep(Duration::from_millis(1500));
                !m1.join(&name).exists()
            }
        );
        let mut back = Vec::new();
        f.read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("round {round}: reading the unlinked open file: {e}"));
        assert!(
            back == content,
            "round {round}: an open file unlinked on another mount reads back whole"
        );
        drop(f);
    }

    // Same mount: fstat says nlink 0, and the file still takes writes and reads.
    let path = m1.join("g");
    let mut g = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(g.metadata().unwrap().nlink(), 0);
    use std::io::{Seek, Write};
    g.write_all(&data[..1 << 20]).unwrap();
    g.sync_all().unwrap();
    g.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    g.read_to_end(&mut back).unwrap();
    assert!(back == data[..1 << 20]);
}

/// The master counts a session's opens of a file. A close and a new open of the same file
/// travel on separate streams, so the open can arrive first: the close then names fewer opens
/// than the master saw, and the file — unlinked meanwhile — must stay until the last close.
#[test]
fn a_close_overtaken_by_a_new_open_keeps_the_unlinked_file() {
    use shardfs_common::proto::{MasterRequest as R, MasterResponse as A, Timespec, ACCESS_READ};
    let c = Cluster::start(3, "2+1");
    let master = c.master_addr().parse().unwrap();
    let cred = c.credential("client.cred");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let call = |req| call_master(&cred, master, req);
        let session = open_session(&cred, master).await;
        let mut create = create_request(1, "f");
        if let R::Create { session: s, .. } = &mut create {
            *s = session;
        }
        let r = call(create).await;
        let Ok(A::Changed { attr: Some(f), .. }) = r else {
            panic!("{r:?}")
        };
        let open = |session| R::Open {
            ino: f.ino,
            session,
            access: ACCESS_READ,
        };
        let close = R::Close {
            session,
            files: vec![(f.ino, 1)],
        };
        // Opened twice (create, open); the close of the first arrives after the second open.
        assert!(matches!(call(open(session)).await, Ok(A::Opened { .. })));
        assert!(matches!(call(close.clone()).await, Ok(A::Ok)));
        let r = call(R::Unlink {
            parent: 1,
            name: b"f".to_vec(),
            now: Timespec::now(),
        })
        .await;
        assert!(matches!(r, Ok(A::Changed { .. })), "{r:?}");
        let r = call(open(0)).await;
        assert!(
            matches!(r, Ok(A::Opened { .. })),
            "an unlinked file still open once went with a close that overtook: {r:?}"
        );
        // The last close lets it go.
        assert!(matches!(call(close).await, Ok(A::Ok)));
        let r = call(open(0)).await;
        assert!(
            matches!(&r, Ok(A::Err(e)) if e.code == shardfs_common::ErrorCode::NotFound),
            "an unlinked file outlived its last close: {r:?}"
        );
    });
}
