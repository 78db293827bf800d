//! Two mounts of one cluster.

use shardfs_tests::*;
use std::fs;
use std::time::Duration;

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
