//! The README's launcher: `scripts/cluster.sh up`, `status`, `down`, and `up` again.

use shardfs_tests::*;
use std::fs;
use std::process::Command;

fn cluster_sh(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    Command::new(root.join("scripts/cluster.sh"))
        .args(args)
        .env("SHARDFS_HOME", home)
        .env("SHARDFS_BIN_DIR", bin_dir())
        .env("SHARDFS_SKIP_BUILD", "1")
        .output()
        .expect("run cluster.sh")
}

fn pids_of(home: &std::path::Path) -> Vec<String> {
    // Every process started for this home has it in its command line.
    let out = sh_ok(&format!("pgrep -f '[s]hardfs.*{}' || true", home.display()));
    out.lines().map(str::to_string).collect()
}

#[test]
fn launcher_up_down_up_keeps_every_file() {
    let tmp = tempfile::Builder::new()
        .prefix("shardfs-launcher-")
        .tempdir()
        .unwrap();
    let home = tmp.path().join("home");
    let mp = tmp.path().join("mnt");
    let out = cluster_sh(&home, &["up", mp.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "up failed: {text}");
    assert!(text.contains("Mounted at:"), "{text}");
    assert!(is_mounted(&mp));
    assert!(home.join("master.addr").exists());
    fs::create_dir_all(mp.join("docs/deep")).unwrap();
    let data = random_bytes(77, 9 << 20);
    fs::write(mp.join("docs/deep/blob"), &data).unwrap();
    fs::write(mp.join("docs/note.txt"), b"keep me").unwrap();
    std::os::unix::fs::symlink("note.txt", mp.join("docs/link")).unwrap();

    let st = cluster_sh(&home, &["status"]);
    let st_text = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(st.status.success());
    assert!(st_text.contains("nodes 6/6 up"), "{st_text}");

    let out = cluster_sh(&home, &["down"]);
    assert!(
        out.status.success(),
        "down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mp), "mount still there after down");
    assert!(
        pids_of(&home).is_empty(),
        "processes left after down: {:?}",
        pids_of(&home)
    );

    let out = cluster_sh(&home, &["up", mp.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "second up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(mp.join("docs/deep/blob")).unwrap(), data);
    assert_eq!(fs::read(mp.join("docs/note.txt")).unwrap(), b"keep me");
    assert_eq!(
        fs::read_link(mp.join("docs/link")).unwrap().to_str(),
        Some("note.txt")
    );
    let out = cluster_sh(&home, &["down"]);
    assert!(out.status.success());
    assert!(!is_mounted(&mp));
    assert!(pids_of(&home).is_empty());
}
