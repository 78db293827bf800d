//! Quotas: per directory and per uid, bytes and inodes, EDQUOT past them, `df` of a directory
//! under one, and usage that stays exact through a killed writer and a master kill -9.

use shardfs_tests::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn quota(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin("shardfs"))
        .arg("quota")
        .args(args)
        .output()
        .expect("run shardfs quota");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn quota_ok(args: &[&str]) -> String {
    let (ok, out, err) = quota(args);
    assert!(ok, "shardfs quota {args:?} failed: {out}{err}");
    out
}

/// (bytes used, inodes used) as `shardfs quota get --json` reports them.
fn used(args: &[&str]) -> (u64, u64) {
    let mut a = vec!["get", "--json"];
    a.extend_from_slice(args);
    let v: serde_json::Value = serde_json::from_str(&quota_ok(&a)).unwrap();
    (
        v["bytes_used"].as_u64().expect("a quota"),
        v["inodes_used"].as_u64().unwrap(),
    )
}

/// (sum of file sizes, entries) under `dir`, as `du --apparent-size` and `find | wc -l` count.
fn tree_usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut inodes) = (0, 0);
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        inodes += 1;
        if m.is_dir() {
            let (b, i) = tree_usage(&e.path());
            (bytes, inodes) = (bytes + b, inodes + i);
        } else if m.is_file() {
            bytes += m.len();
        }
    }
    (bytes, inodes)
}

/// Write `len` bytes to `path` and make them durable: the error of the write or the fsync.
fn write_synced(path: &Path, len: usize) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(&random_bytes(len as u64, len))?;
    f.sync_all()
}

fn statvfs(path: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s
}

#[test]
fn a_directory_quota_refuses_writes_and_creates_past_it_and_shows_in_df() {
    let mut c = Cluster::start(3, "2+1");
    let m = c.mount("m");
    let q = m.join("q");
    fs::create_dir_all(q.join("sub")).unwrap();
    let qs = q.display().to_string();
    let out = quota_ok(&["set", &qs, "--bytes", "8M"]);
    assert!(out.contains("of 8.0 MiB"), "{out}");
    assert_eq!(used(&[&qs]), (0, 1), "the subdirectory counts");

    // 4 MiB fit; 16 MiB more do not, and leave nothing counted of them.
    write_synced(&q.join("sub/four"), 4 << 20).unwrap();
    let e = write_synced(&q.join("sixteen"), 16 << 20).expect_err("16 MiB past an 8 MiB quota");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    assert_eq!(fs::metadata(q.join("sixteen")).unwrap().len(), 0);
    assert_eq!(used(&[&qs]), (4 << 20, 3));
    assert_eq!(tree_usage(&q), (4 << 20, 3));
    // Outside the directory nothing is limited.
    write_synced(&m.join("outside"), 16 << 20).unwrap();

    // df of the directory shows the quota; of the mount, the cluster.
    let s = statvfs(&q);
    assert_eq!(s.f_blocks * s.f_frsize, 8 << 20);
    assert_eq!(s.f_bavail * s.f_frsize, 4 << 20);
    assert!(statvfs(&m).f_blocks * statvfs(&m).f_frsize > 8 << 20);

    // An inode limit stops creates, and a second kind of limit keeps the first.
    quota_ok(&["set", &qs, "--inodes", "5"]);
    let out = quota_ok(&["get", &qs]);
    assert!(
        out.contains("4.0 MiB used of 8.0 MiB") && out.contains("3 used of 5"),
        "{out}"
    );
    fs::write(q.join("sub/x"), b"x").unwrap();
    fs::create_dir(q.join("y")).unwrap();
    let e = fs::File::create(q.join("z")).expect_err("a sixth inode");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    let s = statvfs(&q);
    assert_eq!((s.f_files - s.f_ffree, s.f_ffree), (5, 0));
    // Removing frees; renaming within the directory changes nothing.
    fs::remove_file(q.join("sub/x")).unwrap();
    fs::rename(q.join("sub/four"), q.join("y/four")).unwrap();
    assert_eq!(used(&[&qs]), (4 << 20, 4));
    // A file moved out takes its usage along; one moved in is checked against the quota.
    fs::rename(q.join("y/four"), m.join("four")).unwrap();
    assert_eq!(used(&[&qs]), (0, 3));
    let e = fs::rename(m.join("outside"), q.join("outside")).expect_err("16 MiB moved in");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    // A directory cannot move between quotas (mv copies instead).
    fs::create_dir(m.join("free")).unwrap();
    let e = fs::rename(m.join("free"), q.join("free")).expect_err("a directory moved in");
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");

    // Only root sets quotas; a squashed credential is refused with a clear message.
    let plain = c.path("plain.cred").display().to_string();
    c.join_client("plain.cred", &[]);
    let p = c.mount_with("p", &["--credentials", &plain]);
    let (ok, _, err) = quota(&["set", &p.join("q").display().to_string(), "--bytes", "1G"]);
    assert!(!ok && err.contains("only root"), "{err}");
    let (ok, _, err) = quota(&["set", "/tmp", "--bytes", "1G"]);
    assert!(!ok && err.contains("not on a ShardFS mount"), "{err}");
    let (ok, _, err) = quota(&["set", &qs, "--bytes", "8X"]);
    assert!(!ok && err.contains("unit"), "{err}");

    // The quota and its usage survive a master kill -9; clearing it lifts the limit.
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(3);
    assert_eq!(used(&[&qs]), (0, 3));
    quota_ok(&["set", &qs, "--clear"]);
    assert!(quota_ok(&["get", &qs]).contains("no quota"));
    write_synced(&q.join("big"), 16 << 20).unwrap();
}

#[test]
fn a_uid_quota_holds_across_directories_and_chown() {
    let mut c = Cluster::start(3, "2+1");
    let m = c.mount_with("m", &["-o", "allow_other"]);
    for d in ["d1", "d2"] {
        fs::create_dir(m.join(d)).unwrap();
        fs::set_permissions(m.join(d), fs::Permissions::from_mode(0o777)).unwrap();
    }
    let ms = m.display().to_string();
    quota_ok(&["set", "--uid", "1000", &ms, "--bytes", "1M"]);
    let as_user = |cmd: &str| sh_as(1000, cmd);
    let out = as_user(&format!(
        "head -c 614400 /dev/zero > {ms}/d1/a && sync {ms}/d1/a"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The second 600 KiB, in another directory, is past the user's 1 MiB.
    let out = as_user(&format!(
        "head -c 614400 /dev/zero > {ms}/d2/b && sync {ms}/d2/b"
    ));
    assert!(!out.status.success(), "a second 600 KiB fit in 1 MiB");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quota"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(used(&["--uid", "1000", &ms]), (614400, 2));
    // Root has no quota; giving the user a file past its quota is refused.
    write_synced(&m.join("d2/root"), 2 << 20).unwrap();
    let e = std::os::unix::fs::chown(m.join("d2/root"), Some(1000), None).expect_err("chown");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    // Taking a file away from the user frees its quota.
    std::os::unix::fs::chown(m.join("d1/a"), Some(0), None).unwrap();
    assert_eq!(used(&["--uid", "1000", &ms]), (0, 1));
    let out = as_user(&format!(
        "head -c 614400 /dev/zero > {ms}/d2/c && sync {ms}/d2/c"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn quota_usage_equals_the_tree_after_a_killed_writer_and_a_master_kill() {
    let mut c = Cluster::start(3, "2+1");
    let m = c.mount("m");
    let q = m.join("q");
    fs::create_dir(&q).unwrap();
    let qs = q.display().to_string();
    quota_ok(&["set", &qs, "--bytes", "1G", "--inodes", "100000"]);
    // A burst of creates, writes, appends, truncates, renames and removes.
    let script = format!(
        "cd {qs} && i=0; while :; do \
           head -c $(( (RANDOM % 64) * 4096 + RANDOM )) /dev/urandom > f$i; \
           [ $((i % 3)) = 0 ] && head -c 5000 /dev/urandom >> f$((i / 2)); \
           [ $((i % 5)) = 0 ] && truncate -s $((RANDOM)) f$((i / 3)); \
           [ $((i % 7)) = 0 ] && mkdir -p d$((i % 4)) && mv f$((i / 4)) d$((i % 4))/; \
           [ $((i % 11)) = 0 ] && rm -f f$((i / 5)); \
           i=$((i + 1)); done"
    );
    let mut writer = std::process::Command::new("bash")
        .args(["-c", &script])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    c.kill_master();
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(writer.id() as i32, libc::SIGKILL) };
    let _ = writer.wait();
    c.start_master();
    c.wait_nodes_up(3);
    // The mount commits what it still holds once the master is back; then usage and the
    // tree agree, and go on agreeing.
    wait_until(Duration::from_secs(60), "usage to equal the tree", || {
        used(&[&qs]) == tree_usage(&q)
    });
    let (bytes, inodes) = tree_usage(&q);
    assert!(inodes > 10, "the writer made only {inodes} entries");
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(3);
    assert_eq!(used(&[&qs]), (bytes, inodes));
    assert_eq!(tree_usage(&q), (bytes, inodes));
}
