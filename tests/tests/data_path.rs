//! The data path end to end: real master, six real storage nodes, a real FUSE mount.

use shardfs_tests::*;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

#[test]
fn big_file_copied_in_and_out_is_identical() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("mnt");
    let src = c.path("big.src");
    let data = random_bytes(200, 200 << 20);
    fs::write(&src, &data).unwrap();
    drop(data);
    sh_ok(&format!("cp {} {}/big", src.display(), mp.display()));
    // Read back through a second, fresh mount so nothing comes from this mount's caches.
    let mp2 = c.mount("mnt2");
    let out = c.path("big.out");
    sh_ok(&format!("cp {}/big {}", mp2.display(), out.display()));
    assert_eq!(
        hash_file(&src),
        hash_file(&out),
        "200 MiB file differs after the round trip"
    );
    assert_eq!(fs::metadata(mp.join("big")).unwrap().len(), 200 << 20);
    assert_eq!(hash_file(&mp.join("big")), hash_file(&src));
}

#[test]
fn tar_tree_equals_source_and_find_du_see_everything() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("mnt");
    let src = c.path("src");
    let (files, dirs) = make_tree(&src.join("tree"), 2000, 7);
    assert!(files + dirs >= 2000);
    sh_ok(&format!(
        "ln -s f1.bin {}/tree/link-to-f1; ln -s /nonexistent {}/tree/dangling",
        src.display(),
        src.display()
    ));
    let tarball = c.path("tree.tar");
    sh_ok(&format!(
        "tar -C {} -cf {} tree",
        src.display(),
        tarball.display()
    ));
    sh_ok(&format!(
        "tar -C {} -xf {}",
        mp.display(),
        tarball.display()
    ));
    sh_ok(&format!(
        "diff -r --no-dereference {}/tree {}/tree",
        src.display(),
        mp.display()
    ));
    let count = |root: &Path| sh_ok(&format!("cd {} && find tree | sort", root.display()));
    let (a, b) = (count(&src), count(&mp));
    assert_eq!(a, b, "find lists different entries");
    assert!(a.lines().count() >= 2000);
    // du sees every entry with its apparent size.
    let du = |root: &Path| {
        sh_ok(&format!(
            "cd {} && du -ab tree | awk '{{print $2}}' | sort",
            root.display()
        ))
    };
    assert_eq!(du(&src), du(&mp));
    let sum = |root: &Path| {
        sh_ok(&format!(
            "find {}/tree -type f -printf '%s\\n' | awk '{{s+=$1}} END {{print s}}'",
            root.display()
        ))
    };
    assert_eq!(sum(&src), sum(&mp));
    // And ls -l on a directory shows sizes and modes.
    let ls = sh_ok(&format!("ls -l {}/tree", mp.display()));
    assert!(ls.lines().count() > 5);
    // rm -r removes all of it.
    sh_ok(&format!("rm -r {}/tree", mp.display()));
    assert!(!mp.join("tree").exists());
    assert_eq!(fs::read_dir(&mp).unwrap().count(), 0);
}

/// Apply the same sequence of operations to a local directory and to the mount, and compare.
#[test]
fn posix_operations_behave_as_on_a_local_filesystem() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("mnt");
    let local = c.path("local");
    fs::create_dir_all(&local).unwrap();
    let script = r#"
        set -e
        mkdir -p a/b/c d
        printf 'hello world\n' > a/f
        printf 'second\n' > a/g
        mv a/f a/b/f2                          # rename across directories
        mv a/g a/b/f2                          # rename over an existing file
        printf 'overwrite\n' > a/b/f2          # overwrite (O_TRUNC)
        printf 'more\n' >> a/b/f2              # append
        head -c 10000000 /dev/zero | tr '\0' 'x' > big
        truncate -s 5000001 big                # truncate down mid-block
        truncate -s 9000000 big                # extend: the tail reads as zeros
        printf 'tail' >> big
        dd if=/dev/zero of=sparse bs=1 count=1 seek=12345678 status=none
        printf 'abc' | dd of=big bs=1 seek=4194300 conv=notrunc status=none   # write across a block edge
        ln -s b/f2 a/sym                       # symlinks, relative and dangling
        ln -s /does/not/exist dangling
        ln a/b/f2 hard                         # hard link
        ln hard hard2
        rm hard2
        printf 'via link\n' >> hard            # visible through every name
        mkdir -p x/y/z && touch x/y/z/w x/y/v
        rm -r x
        mv d a/b/c/d                           # move a directory
        rmdir a/b/c/d
        printf '' > empty
        chmod 640 a/b/f2
        mkdir e && mv e a/e2 && touch a/e2/in
        echo done
    "#;
    for root in [&local, &mp] {
        sh_ok(&format!("cd {} && {script}", root.display()));
    }
    // Same names, kinds, sizes, link counts, modes and contents.
    let describe = |root: &Path| {
        sh_ok(&format!(
            "cd {} && find . -mindepth 1 | sort | while read p; do stat -c '%n %F %s %h %a' \"$p\"; \
             if [ -f \"$p\" ] && [ ! -L \"$p\" ]; then b3=$(sha256sum < \"$p\"); echo \"$p $b3\"; fi; \
             if [ -L \"$p\" ]; then echo \"$p -> $(readlink \"$p\")\"; fi; done",
            root.display()
        ))
    };
    let (a, b) = (describe(&local), describe(&mp));
    let strip_dirs = |s: &str| {
        s.lines()
            .map(|l| {
                // Directory sizes differ between filesystems; compare the rest.
                let f: Vec<&str> = l.split(' ').collect();
                if f.len() == 5 && f[1] == "directory" {
                    format!("{} directory {} {}", f[0], f[3], f[4])
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip_dirs(&a),
        strip_dirs(&b),
        "local and ShardFS trees differ"
    );
    // Errors a user relies on.
    let e = |cmd: &str| sh(&format!("cd {} && {cmd}", mp.display()));
    assert!(
        !e("rmdir a").status.success(),
        "rmdir of a non-empty directory must fail"
    );
    assert!(String::from_utf8_lossy(&e("rmdir a").stderr).contains("not empty"));
    assert!(
        !e("mkdir a").status.success(),
        "mkdir over an existing entry must fail"
    );
    assert!(!e("cat nothing-here").status.success());
    assert!(
        !e("mv a a/b/inside").status.success(),
        "moving a directory into itself must fail"
    );
    // Hard links share one inode.
    let h = fs::metadata(mp.join("hard")).unwrap();
    let f = fs::metadata(mp.join("a/b/f2")).unwrap();
    assert_eq!(h.ino(), f.ino());
    assert_eq!(h.nlink(), 2);
    // An editor-style save: write a temp file, fsync, rename over the original.
    let target = mp.join("doc.txt");
    fs::write(&target, "v1\n").unwrap();
    let tmp = mp.join(".doc.txt.swp");
    let mut t = fs::File::create(&tmp).unwrap();
    t.write_all(b"v2 saved by editor\n").unwrap();
    t.sync_all().unwrap();
    drop(t);
    fs::rename(&tmp, &target).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "v2 saved by editor\n");
    assert!(!tmp.exists());
    // Overwrite in the middle of an open file, read back before closing.
    let mut fh = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mp.join("big"))
        .unwrap();
    use std::io::{Read, Seek, SeekFrom};
    fh.seek(SeekFrom::Start(100)).unwrap();
    fh.write_all(b"MIDDLE").unwrap();
    fh.seek(SeekFrom::Start(98)).unwrap();
    let mut buf = [0u8; 10];
    fh.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"xxMIDDLExx");
}

#[test]
fn shards_are_spread_over_k_plus_m_nodes_with_ec_overhead() {
    // Collect unreferenced blocks at once: a close() of the file by any process (a forked child
    // closing inherited descriptors, say) commits what was written so far, and the partial block
    // it stored becomes garbage when the rest arrives.
    let mut c = Cluster::start_with(6, "4+2", &["--gc-grace-secs", "0"]);
    let mp = c.mount("mnt");
    let size = 64u64 << 20;
    fs::write(mp.join("f"), random_bytes(3, size as usize)).unwrap();
    let holders = || {
        let mut holders: HashMap<String, Vec<(usize, String)>> = HashMap::new();
        for (i, name) in shard_files(&c, &[]) {
            let (block, idx) = name.rsplit_once('.').unwrap();
            holders
                .entry(block.to_string())
                .or_default()
                .push((i, idx.to_string()));
        }
        holders
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (usage, ratio) = loop {
        let usage = c.node_usage();
        let ratio = usage.iter().sum::<u64>() as f64 / size as f64;
        let h = holders();
        if h.len() == 16 {
            break (usage, ratio);
        }
        if std::time::Instant::now() > deadline {
            let log = fs::read_to_string(c.path("logs/mount-mnt.log")).unwrap_or_default();
            panic!(
                "{} blocks on the nodes after 30 s, expected 16; mount log:\n{log}",
                h.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("stored/logical {ratio:.3}, per node {usage:?}");
    assert!(
        (1.45..1.6).contains(&ratio),
        "stored/logical = {ratio:.3}, expected about 6/4 = 1.5"
    );
    assert!(
        usage.iter().all(|&u| u > 0),
        "every node holds shards: {usage:?}"
    );
    // Every block has its 6 shards, with distinct shard numbers, on 6 distinct nodes.
    for (block, h) in &holders() {
        let nodes: HashSet<usize> = h.iter().map(|(n, _)| *n).collect();
        let idxs: HashSet<&String> = h.iter().map(|(_, i)| i).collect();
        assert_eq!(
            nodes.len(),
            6,
            "block {block} has shards on {} nodes",
            nodes.len()
        );
        assert_eq!(idxs.len(), 6, "block {block} shard numbers {idxs:?}");
    }
    assert_eq!(
        hash_file(&mp.join("f")),
        blake3::hash(&random_bytes(3, size as usize))
            .to_hex()
            .to_string()
    );
}

/// Shard files (node, name) of the given block ids (all if none given) on every node.
fn shard_files(c: &Cluster, ids: &[String]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for i in 0..c.node_count() {
        for f in sh_ok(&format!(
            "find {} -type f ! -name '*.sum'",
            c.node_dir(i).join("shards").display()
        ))
        .lines()
        {
            let name = Path::new(f)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            if ids.is_empty() || ids.iter().any(|id| name.starts_with(id.as_str())) {
                out.push((i, name));
            }
        }
    }
    out
}

#[test]
fn deleted_data_is_collected_and_identical_blocks_are_stored_once() {
    // Plain ids, to find each block's shards by the hash of its content (dedup under
    // encryption: `encryption::…`).
    let mut c = Cluster::start_with(6, "4+2", &["--gc-grace-secs", "2", "--no-encryption"]);
    let mp = c.mount("mnt");
    let data = random_bytes(11, 12 << 20);
    // Blocks are content-addressed: their ids are the blake3 of each 4 MiB piece.
    let ids: Vec<String> = data
        .chunks(4 << 20)
        .map(|b| blake3::hash(b).to_hex().to_string())
        .collect();
    fs::write(mp.join("a"), &data).unwrap();
    assert_eq!(shard_files(&c, &ids).len(), 18, "3 blocks of 6 shards");
    // The same content under another name is stored once.
    fs::write(mp.join("b"), &data).unwrap();
    assert_eq!(
        shard_files(&c, &ids).len(),
        18,
        "identical blocks stored twice"
    );
    // Removing one name keeps the blocks; removing both frees them after the grace period.
    fs::remove_file(mp.join("a")).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(shard_files(&c, &ids).len(), 18);
    fs::remove_file(mp.join("b")).unwrap();
    // Written again before collection: the waiting blocks are revived, not deleted under it.
    fs::write(mp.join("c"), &data).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let m2 = c.mount("fresh");
    assert_eq!(
        fs::read(m2.join("c")).unwrap(),
        data,
        "revived blocks must survive collection"
    );
    fs::remove_file(m2.join("c")).unwrap();
    wait_until(
        Duration::from_secs(30),
        "shards of deleted files to be removed",
        || shard_files(&c, &ids).is_empty(),
    );
}
