//! Two mounts of one cluster.

use shardfs_tests::*;
use std::fs;
use std::time::{Duration, Instant};

#[test]
fn two_mounts_see_each_others_closed_files() {
    let mut c = Cluster::start(6, "4+2");
    let a = c.mount("a");
    let b = c.mount("b");
    fs::create_dir_all(a.join("shared/dir")).unwrap();
    let data = random_bytes(9, 5 << 20);
    fs::write(a.join("shared/dir/from-a"), &data).unwrap();
    assert_eq!(fs::read(b.join("shared/dir/from-a")).unwrap(), data);
    fs::write(b.join("shared/from-b"), b"hello from b").unwrap();
    assert_eq!(fs::read(a.join("shared/from-b")).unwrap(), b"hello from b");
    let names = |p: &std::path::Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&a.join("shared")), names(&b.join("shared")));
    // A change closed in one mount shows in the other once the attribute cache expires.
    fs::write(a.join("shared/from-b"), b"changed by a, longer than before").unwrap();
    wait_until(Duration::from_secs(5), "b to see a's change", || {
        fs::read(b.join("shared/from-b")).ok().as_deref()
            == Some(&b"changed by a, longer than before"[..])
    });
    fs::remove_file(b.join("shared/dir/from-a")).unwrap();
    wait_until(Duration::from_secs(5), "a to see the removal", || {
        !a.join("shared/dir/from-a").exists()
    });
    c.umount(&b);
    assert!(!is_mounted(&b));
    assert_eq!(
        fs::read(a.join("shared/from-b")).unwrap(),
        b"changed by a, longer than before"
    );
}

#[test]
fn fstab_helper_mounts_with_fstab_options() {
    // mount(8) runs `mount.fuse.shardfs MASTER DIR -o OPTS` for a `fuse.shardfs` fstab entry;
    // the helper is a link to the shardfs binary.
    let mut c = Cluster::start(6, "4+2");
    let helper = c.path("mount.fuse.shardfs");
    std::os::unix::fs::symlink(bin("shardfs"), &helper).unwrap();
    let mp = c.path("fstab-mnt");
    fs::create_dir_all(&mp).unwrap();
    let out = std::process::Command::new(&helper)
        .arg(c.master_addr())
        .arg(&mp)
        .arg("-o")
        .arg(format!(
            "rw,defaults,_netdev,nofail,credentials={}",
            c.path("client.cred").display()
        ))
        .arg("-n")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helper failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mp), "mounted through the fstab helper");
    fs::write(mp.join("via-fstab"), b"ok").unwrap();
    assert_eq!(fs::read(mp.join("via-fstab")).unwrap(), b"ok");
    c.umount(&mp);
    // An option it does not know is refused with a clear message, not ignored.
    let out = std::process::Command::new(&helper)
        .arg(c.master_addr())
        .arg(&mp)
        .args(["-o", "frobnicate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option"));
}

/// `-o ro` mounts refuse changes with EROFS, and `mount -o remount,rw` (mount(8) runs the
/// helper with `-o remount,rw`) makes the same mount writable without unmounting.
#[test]
fn read_only_mount_and_remount() {
    let mut c = Cluster::start(3, "2+1");
    let w = c.mount("w");
    fs::write(w.join("f"), b"data").unwrap();
    let mp = c.mount_with("ro", &["-o", "ro"]);
    assert_eq!(fs::read(mp.join("f")).unwrap(), b"data");
    let err = fs::write(mp.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(
        fs::remove_file(mp.join("f")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    let helper = c.path("mount.fuse.shardfs");
    std::os::unix::fs::symlink(bin("shardfs"), &helper).unwrap();
    let source = format!("shardfs@{}", c.master_addr());
    let out = std::process::Command::new(&helper)
        .arg(&source)
        .arg(&mp)
        .args(["-o", "remount,rw"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(mp.join("g"), b"now writable").unwrap();
    assert_eq!(fs::read(w.join("g")).unwrap(), b"now writable");
    let out = std::process::Command::new(&helper)
        .arg(&source)
        .arg(&mp)
        .args(["-o", "remount,ro"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        fs::write(mp.join("h"), b"x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    let fstype = sh_ok(&format!("findmnt -n -o FSTYPE {}", mp.display()));
    assert_eq!(fstype.trim(), "fuse.shardfs");
}

/// Wait for `f`, which another mount's change makes true: it must be within 1.5 s (the change
/// log brings it in milliseconds; the kernel's TTL would allow 1 s more).
fn seen_soon(what: &str, f: &dyn Fn() -> bool) {
    let t = Instant::now();
    wait_until(Duration::from_secs(5), what, f);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{what}: took {:?}",
        t.elapsed()
    );
}

#[test]
fn names_another_mount_makes_are_seen_in_directories_this_mount_knows_whole() {
    let mut c = Cluster::start(4, "2+2");
    let (a, b) = (c.mount("a"), c.mount("b"));
    // `a` made d (so it knows every name in it) and finds nothing there.
    fs::create_dir(a.join("d")).unwrap();
    assert!(!a.join("d/x").exists());
    fs::write(b.join("d/x"), "from b").unwrap();
    seen_soon("a sees the file b made", &|| {
        fs::read(a.join("d/x")).ok().as_deref() == Some(&b"from b"[..])
    });
    fs::rename(b.join("d/x"), b.join("d/y")).unwrap();
    seen_soon("a sees b's rename", &|| {
        a.join("d/y").exists() && !a.join("d/x").exists()
    });
    fs::create_dir(b.join("d/sub")).unwrap();
    seen_soon("a sees b's directory", &|| a.join("d/sub").is_dir());
    // Its own changes keep what `a` knows true.
    fs::write(a.join("d/mine"), "a").unwrap();
    assert_eq!(fs::read(a.join("d/mine")).unwrap(), b"a");
    fs::rename(a.join("d/mine"), a.join("d/moved")).unwrap();
    assert!(!a.join("d/mine").exists());
    assert_eq!(fs::read(a.join("d/moved")).unwrap(), b"a");
    fs::hard_link(a.join("d/moved"), a.join("d/linked")).unwrap();
    std::os::unix::fs::symlink("moved", a.join("d/sym")).unwrap();
    assert_eq!(fs::read(a.join("d/sym")).unwrap(), b"a");
    fs::remove_file(a.join("d/moved")).unwrap();
    assert!(!a.join("d/moved").exists());
    assert_eq!(fs::read(a.join("d/linked")).unwrap(), b"a");
    // A directory `a` listed whole (made by b, filled by b): b's next name reaches `a` too.
    fs::create_dir(b.join("l")).unwrap();
    for i in 0..5 {
        fs::write(b.join(format!("l/f{i}")), "x").unwrap();
    }
    seen_soon("a lists what b made", &|| {
        fs::read_dir(a.join("l")).map(|d| d.count()).unwrap_or(0) == 5
    });
    assert!(!a.join("l/late").exists());
    fs::write(b.join("l/late"), "late").unwrap();
    seen_soon("a sees the name b added after a listed", &|| {
        a.join("l/late").exists()
    });
    fs::remove_file(b.join("l/f0")).unwrap();
    seen_soon("a sees b's unlink", &|| !a.join("l/f0").exists());
    let mut names: Vec<String> = fs::read_dir(a.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["linked", "sub", "sym", "y"]);
}

/// What a mount learnt from the master holds past the attribute TTL while the change log says
/// nothing changed it; so every change another mount makes must reach it through the log.
#[test]
fn attributes_another_mount_changes_are_seen_past_the_attribute_ttl() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut c = Cluster::start(4, "2+2");
    let (a, b) = (c.mount("a"), c.mount("b"));
    let meta = |p: &str| fs::symlink_metadata(a.join(p));
    fs::create_dir(a.join("h")).unwrap();
    fs::write(a.join("h/f"), "one").unwrap();
    fs::write(a.join("h/k"), "k").unwrap();
    let mtime = |p: &str| meta(p).map(|m| (m.mtime(), m.mtime_nsec())).unwrap();
    let dir_mtime = mtime("h");
    // Past the TTL, `a` answers these from what it holds.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(meta("h/f").unwrap().len(), 3);
    assert_eq!(meta("h/f").unwrap().permissions().mode() & 0o777, 0o644);

    fs::set_permissions(b.join("h/f"), fs::Permissions::from_mode(0o600)).unwrap();
    seen_soon("a sees b's chmod", &|| {
        meta("h/f").unwrap().permissions().mode() & 0o777 == 0o600
    });
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(b.join("h/f"))
        .unwrap();
    std::io::Write::write_all(&mut f, b" two").unwrap();
    drop(f);
    seen_soon("a sees the size b wrote", &|| {
        meta("h/f").unwrap().len() == 7
    });
    fs::hard_link(b.join("h/k"), b.join("h/k2")).unwrap();
    seen_soon("a sees b's hard link", &|| {
        meta("h/k").unwrap().nlink() == 2
    });
    seen_soon("a sees the directory time b changed", &|| {
        mtime("h") != dir_mtime
    });
    fs::rename(b.join("h/f"), b.join("h/g")).unwrap();
    seen_soon("a sees b's rename", &|| {
        meta("h/f").is_err() && meta("h/g").map(|m| m.len()).ok() == Some(7)
    });
    fs::remove_file(b.join("h/g")).unwrap();
    seen_soon("a sees b's unlink", &|| meta("h/g").is_err());
    fs::set_permissions(b.join("h"), fs::Permissions::from_mode(0o700)).unwrap();
    seen_soon("a sees b's chmod of the directory", &|| {
        meta("h").unwrap().permissions().mode() & 0o777 == 0o700
    });

    // Across a master restart (the log starts again): what `a` held before is asked again.
    assert_eq!(meta("h/k").unwrap().len(), 1);
    c.kill_master();
    c.start_master();
    wait_until(Duration::from_secs(20), "b to write again", || {
        fs::write(b.join("h/k"), "longer now").is_ok()
    });
    wait_until(
        Duration::from_secs(5),
        "a to see b's write after the restart",
        || meta("h/k").map(|m| m.len()).ok() == Some(10),
    );
    // This mount's own changes read back at once.
    fs::write(a.join("h/own"), "12345").unwrap();
    fs::set_permissions(a.join("h/own"), fs::Permissions::from_mode(0o640)).unwrap();
    let m = meta("h/own").unwrap();
    assert_eq!((m.len(), m.permissions().mode() & 0o777), (5, 0o640));
    fs::OpenOptions::new()
        .write(true)
        .open(a.join("h/own"))
        .unwrap()
        .set_len(2)
        .unwrap();
    assert_eq!(meta("h/own").unwrap().len(), 2);
    assert_eq!(fs::read(b.join("h/own")).unwrap(), b"12");
}

/// tar, cp -p and rsync set a file's time just before closing it: that time travels with the
/// content's commit, and both this mount and another one see it (not the time of the writes).
#[test]
fn a_time_set_before_close_is_the_files_time_everywhere() {
    use std::os::unix::fs::MetadataExt;
    let mut c = Cluster::start(4, "2+2");
    let (a, b) = (c.mount("a"), c.mount("b"));
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_577_836_800);
    let mut f = fs::File::create(a.join("t")).unwrap();
    std::io::Write::write_all(&mut f, &random_bytes(4, 10_000)).unwrap();
    f.set_modified(when).unwrap();
    assert_eq!(fs::metadata(a.join("t")).unwrap().mtime(), 1_577_836_800);
    drop(f);
    assert_eq!(fs::metadata(a.join("t")).unwrap().mtime(), 1_577_836_800);
    assert_eq!(fs::metadata(b.join("t")).unwrap().mtime(), 1_577_836_800);
    assert_eq!(fs::read(b.join("t")).unwrap(), random_bytes(4, 10_000));
    // A write after the time was set makes the time "now" again, as POSIX says.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(a.join("t"))
        .unwrap();
    f.set_modified(when).unwrap();
    std::io::Write::write_all(&mut f, b"later").unwrap();
    drop(f);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let seen = fs::metadata(b.join("t")).unwrap().mtime();
    assert!(
        (now - seen).abs() < 60,
        "the write's time: {seen} (now {now})"
    );
}
