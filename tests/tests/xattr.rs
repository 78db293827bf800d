//! Extended attributes on the mount, driven through the system calls (Python's os module).

use shardfs_tests::*;
use std::fs;

const SCRIPT: &str = r#"
import errno, os, sys
p, d = sys.argv[1], sys.argv[2]
def fails(code, f, *a):
    try:
        f(*a)
    except OSError as e:
        assert e.errno == code, (f.__name__, a[1:2], e)
        return
    raise AssertionError(f"{f.__name__}{a[1:2]} should fail with {errno.errorcode[code]}")
os.setxattr(p, "user.a", b"1")
assert os.getxattr(p, "user.a") == b"1"
fails(errno.ENODATA, os.getxattr, p, "user.missing")
fails(errno.EEXIST, os.setxattr, p, "user.a", b"2", os.XATTR_CREATE)
os.setxattr(p, "user.a", b"22", os.XATTR_REPLACE)
fails(errno.ENODATA, os.setxattr, p, "user.b", b"x", os.XATTR_REPLACE)
big = bytes(range(256)) * 256  # 64 KiB, past Python's first 128-byte probe: ERANGE then size
os.setxattr(p, "user.big", big)
assert os.getxattr(p, "user.big") == big
os.setxattr(p, "user.empty", b"")
assert os.getxattr(p, "user.empty") == b""
assert sorted(os.listxattr(p)) == ["user.a", "user.big", "user.empty"], os.listxattr(p)
os.removexattr(p, "user.empty")
fails(errno.ENODATA, os.removexattr, p, "user.empty")
os.setxattr(d, "user.on-dir", b"dir")
assert os.getxattr(d, "user.on-dir") == b"dir"
print("ok")
"#;

#[test]
fn extended_attributes_set_get_list_remove_with_linux_errors() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("m");
    fs::write(mp.join("f"), b"content").unwrap();
    fs::create_dir(mp.join("d")).unwrap();
    let script = c.path("xattr.py");
    fs::write(&script, SCRIPT).unwrap();
    let out = sh_ok(&format!(
        "python3 {} {} {}",
        script.display(),
        mp.join("f").display(),
        mp.join("d").display()
    ));
    assert_eq!(out.trim(), "ok");
    // Kept by the master: another mount sees them.
    let m2 = c.mount("m2");
    let check = sh_ok(&format!(
        "python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], \"user.a\").decode(), sorted(os.listxattr(sys.argv[1])))' {}",
        m2.join("f").display()
    ));
    assert_eq!(check.trim(), "22 ['user.a', 'user.big']");
    // A new file under the same name starts with none (the master's unit tests check that
    // removing the last link deletes the attributes).
    fs::remove_file(m2.join("f")).unwrap();
    fs::write(m2.join("f"), b"again").unwrap();
    let list = sh_ok(&format!(
        "python3 -c 'import os,sys; print(os.listxattr(sys.argv[1]))' {}",
        m2.join("f").display()
    ));
    assert_eq!(list.trim(), "[]");
}

/// A mount keeps what it read of a file's attributes (the kernel asks for
/// `security.capability` before every write), and a change made on another mount still shows
/// at once: the change log drops the kept values.
#[test]
fn attributes_kept_by_a_mount_follow_changes_made_on_another() {
    let mut c = Cluster::start(3, "2+1");
    let (a, b) = (c.mount("a"), c.mount("b"));
    fs::write(a.join("f"), b"content").unwrap();
    let get = |mp: &std::path::Path| {
        sh_ok(&format!(
            "python3 -c 'import os,sys\ntry: print(os.getxattr(sys.argv[1], \"user.k\").decode())\nexcept OSError as e: print(e.errno)' {}",
            mp.join("f").display()
        ))
        .trim()
        .to_string()
    };
    let set = |mp: &std::path::Path, v: &str| {
        sh_ok(&format!(
            "python3 -c 'import os,sys; os.setxattr(sys.argv[1], \"user.k\", sys.argv[2].encode())' {} {v}",
            mp.join("f").display()
        ))
    };
    let enodata = libc::ENODATA.to_string();
    assert_eq!(get(&b), enodata, "none yet (and b keeps that)");
    for v in ["one", "two", "three"] {
        set(&a, v);
        wait_until(
            std::time::Duration::from_millis(900),
            "the other mount to see the new value within the attribute TTL",
            || get(&b) == v,
        );
        assert_eq!(get(&a), v, "the writing mount sees its own value");
    }
    sh_ok(&format!(
        "python3 -c 'import os,sys; os.removexattr(sys.argv[1], \"user.k\")' {}",
        b.join("f").display()
    ));
    wait_until(
        std::time::Duration::from_millis(900),
        "the removal to show on the first mount",
        || get(&a) == enodata,
    );
}

/// The kernel leaves dropping privileges to the filesystem (FUSE_HANDLE_KILLPRIV_V2), so it
/// no longer asks for `security.capability` before writes; set-ID bits and file
/// capabilities still go as they do on a local Linux filesystem, seen from another mount.
#[test]
fn writes_truncates_and_chowns_drop_privileges_as_linux_does() {
    let mut c = Cluster::start(3, "2+1");
    let m = c.mount_with("m", &["-o", "allow_other"]);
    let other = c.mount("other");
    let ms = m.display().to_string();
    sh_ok(&format!("chmod 777 {ms}"));
    let as_user = |cmd: &str| {
        let out = sh_as(1000, cmd);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mode = |name: &str| {
        sh_ok(&format!("stat -c %a {}", other.join(name).display()))
            .trim()
            .to_string()
    };
    for (name, perm) in [
        ("w", "6777"),
        ("t", "6777"),
        ("g", "2767"),
        ("c", "6775"),
        ("c2", "2765"),
        ("r", "4755"),
    ] {
        sh_ok(&format!("touch {ms}/{name} && chmod {perm} {ms}/{name}"));
    }
    // Writes and truncates by a user clear set-user-ID, and set-group-ID when the file is
    // group-executable or the writer is not in its group; root's keep them.
    as_user(&format!("echo x >> {ms}/w"));
    as_user(&format!("truncate -s 1 {ms}/t"));
    as_user(&format!("echo x >> {ms}/g"));
    sh_ok(&format!("echo x >> {ms}/r && truncate -s 1 {ms}/r"));
    // A change of owner clears them whoever makes it (set-group-ID only if executable).
    sh_ok(&format!("chown 1000:1000 {ms}/c {ms}/c2"));
    let got: Vec<String> = ["w", "t", "g", "c", "c2", "r"]
        .iter()
        .map(|n| mode(n))
        .collect();
    assert_eq!(got, ["777", "777", "767", "775", "2765", "4755"]);
    assert_eq!(
        sh_ok(&format!("stat -c %a {ms}/w")).trim(),
        "777",
        "the writer's mount shows the new mode at once"
    );

    // File capabilities go with a write, even root's.
    let cap = "import os,struct,sys; os.setxattr(sys.argv[1], 'security.capability', \
               struct.pack('<5I', 0x02000001, 1 << 13, 0, 0, 0))";
    let has_cap = |p: &std::path::Path| {
        sh(&format!(
            "python3 -c \"import os,sys; os.getxattr(sys.argv[1], 'security.capability')\" {}",
            p.display()
        ))
        .status
        .success()
    };
    sh_ok(&format!("touch {ms}/cap && python3 -c \"{cap}\" {ms}/cap"));
    assert!(has_cap(&other.join("cap")));
    sh_ok(&format!("echo y >> {ms}/cap"));
    assert!(!has_cap(&other.join("cap")), "a write drops the capability");
}
