//! Concurrent changes of one file from several mounts: nothing is lost. Content that cannot be
//! merged is kept as a conflicted copy beside the file; every mount sees the outcome.

use shardfs_tests::*;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A process holding a file open for writing: it opens `PATH` when started (so its mount
/// remembers the version it read), then for each line `SRC` on stdin overwrites the file with
/// SRC's bytes and closes it, answering "done".
const WRITER: &str = r#"
import os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR)
os.read(fd, 1 << 20)
print("open", flush=True)
for line in sys.stdin:
    data = open(line.strip(), "rb").read()
    os.lseek(fd, 0, 0)
    os.write(fd, data)
    os.close(fd)
    print("done", flush=True)
    break
"#;

struct Writer {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Writer {
    fn open(script: &Path, path: &Path) -> Writer {
        let mut child = Command::new("python3")
            .arg(script)
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "open");
        Writer { child, stdin, out }
    }

    fn write_and_close(mut self, src: &Path) {
        writeln!(self.stdin, "{}", src.display()).unwrap();
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "done");
        let _ = self.child.wait();
    }
}

#[test]
fn concurrent_binary_overwrites_keep_both_versions() {
    let mut c = Cluster::start(4, "2+2");
    let (m1, m2) = (c.mount("m1"), c.mount("m2"));
    let script = c.path("writer.py");
    fs::write(&script, WRITER).unwrap();
    // Binary content (not UTF-8): nothing to merge.
    let original = random_bytes(1, 300_000);
    let (a, b) = (random_bytes(2, 300_000), random_bytes(3, 300_000));
    fs::write(c.path("a.bin"), &a).unwrap();
    fs::write(c.path("b.bin"), &b).unwrap();
    fs::write(m1.join("report.pdf"), &original).unwrap();

    let w1 = Writer::open(&script, &m1.join("report.pdf"));
    let w2 = Writer::open(&script, &m2.join("report.pdf"));
    w1.write_and_close(&c.path("a.bin"));
    w2.write_and_close(&c.path("b.bin"));

    let host = sh_ok("cat /proc/sys/kernel/hostname").trim().to_string();
    let day = sh_ok("date -u +%F").trim().to_string();
    let copy = format!("report (conflicted copy from {host} {day}).pdf");
    for m in [&m1, &m2] {
        wait_until(Duration::from_secs(5), "both versions visible", || {
            fs::read(m.join("report.pdf")).ok().as_deref() == Some(&a[..])
                && fs::read(m.join(&copy)).ok().as_deref() == Some(&b[..])
        });
    }
    let mut names: Vec<String> = fs::read_dir(&m1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec![copy.clone(), "report.pdf".to_string()]);
}

#[test]
fn a_change_closed_on_one_mount_is_seen_by_cat_on_another_within_a_second() {
    let mut c = Cluster::start(4, "2+2");
    let (m1, m2) = (c.mount("m1"), c.mount("m2"));
    fs::write(m1.join("news.txt"), "old\n").unwrap();
    assert_eq!(
        sh_ok(&format!("cat {}", m2.join("news.txt").display())),
        "old\n"
    );
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let want = format!("edition {i}\n").repeat(i + 1);
        fs::write(m1.join("news.txt"), &want).unwrap();
        let t = Instant::now();
        loop {
            if sh_ok(&format!("cat {}", m2.join("news.txt").display())) == want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "change not seen after 5 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        worst = worst.max(t.elapsed());
    }
    println!("close on one mount -> cat on the other: worst {worst:?} of 10");
    assert!(worst < Duration::from_millis(1500), "took {worst:?}");
}
