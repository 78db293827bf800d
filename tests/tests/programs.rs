//! Real programs on the mount: git, SQLite (rollback journal and WAL), an editor's save by
//! rename, rsync -a, and builds (make + cc, cargo). Each checks its own result the way a user
//! would trust it: git fsck, PRAGMA integrity_check, byte and metadata comparisons, running
//! the built program.

use shardfs_tests::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

#[test]
fn git_init_add_commit_log_status_checkout() {
    let mut c = Cluster::start(4, "2+2");
    let mp = c.mount("m");
    let repo = mp.join("repo");
    fs::create_dir(&repo).unwrap();
    let (files, _) = make_tree(&repo, 300, 5);
    assert!(files >= 300);
    let git = |args: &str| {
        sh_ok(&format!(
            "cd {} && git -c user.name=t -c user.email=t@example.com -c init.defaultBranch=main {args}",
            repo.display()
        ))
    };
    git("init -q");
    git("add -A");
    git("commit -q -m first");
    git("checkout -q -b feature");
    fs::write(repo.join("new-file.txt"), "on the feature branch\n").unwrap();
    let first = fs::read_dir(&repo)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_type().unwrap().is_file() && e.file_name() != "new-file.txt")
        .unwrap()
        .path();
    fs::write(&first, "changed\n").unwrap();
    git("add -A");
    git("commit -q -m second");
    assert_eq!(git("status --porcelain"), "", "clean after commit");
    assert_eq!(git("log --oneline").lines().count(), 2);
    git("checkout -q main");
    assert!(
        !repo.join("new-file.txt").exists(),
        "checkout removed the branch's file"
    );
    assert_ne!(fs::read(&first).unwrap(), b"changed\n");
    assert_eq!(git("status --porcelain"), "");
    git("checkout -q feature");
    assert_eq!(fs::read(&first).unwrap(), b"changed\n");
    git("fsck --full --strict");
    // Another mount sees the same repository state.
    let m2 = c.mount("m2");
    let log2 = sh_ok(&format!(
        "cd {} && git log --format=%s feature",
        m2.join("repo").display()
    ));
    assert_eq!(log2, "second\nfirst\n");
}

const SQLITE: &str = r#"
import sqlite3, sys
path, mode = sys.argv[1], sys.argv[2]
db = sqlite3.connect(path)
assert db.execute(f"PRAGMA journal_mode={mode}").fetchone()[0].lower() == mode.lower()
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
db.execute("CREATE INDEX t_name ON t(name)")
for tx in range(100):
    with db:
        db.executemany("INSERT INTO t (name, payload) VALUES (?, ?)",
                       [(f"row-{tx}-{i}", bytes([i % 256]) * (i * 7 % 900)) for i in range(100)])
with db:
    db.execute("DELETE FROM t WHERE id % 10 = 0")
    db.execute("UPDATE t SET name = name || '-x' WHERE id % 7 = 0")
db.close()
db = sqlite3.connect(path)
print(db.execute("PRAGMA integrity_check").fetchone()[0], db.execute("SELECT count(*) FROM t").fetchone()[0])
"#;

#[test]
fn sqlite_rollback_journal_and_wal_keep_integrity() {
    let mut c = Cluster::start(4, "2+2");
    let mp = c.mount("m");
    let script = c.path("sqlite.py");
    fs::write(&script, SQLITE).unwrap();
    for mode in ["delete", "wal"] {
        let db = mp.join(format!("{mode}.db"));
        let out = sh_ok(&format!(
            "python3 {} {} {mode}",
            script.display(),
            db.display()
        ));
        assert_eq!(
            out.trim(),
            "ok 9000",
            "{mode}: integrity_check and row count"
        );
    }
    // The databases as a second mount reads them (the sqlite3 CLI this time).
    let m2 = c.mount("m2");
    for mode in ["delete", "wal"] {
        let out = sh_ok(&format!(
            "sqlite3 {} 'PRAGMA integrity_check; SELECT count(*) FROM t;'",
            m2.join(format!("{mode}.db")).display()
        ));
        assert_eq!(out, "ok\n9000\n", "{mode} database read from another mount");
    }
}

#[test]
fn editor_save_by_rename_is_atomic_and_seen_by_other_mounts() {
    let mut c = Cluster::start(4, "2+2");
    let (m1, m2) = (c.mount("m1"), c.mount("m2"));
    let doc = m1.join("notes.txt");
    fs::write(&doc, "version 1\n").unwrap();
    assert_eq!(
        fs::read_to_string(m2.join("notes.txt")).unwrap(),
        "version 1\n"
    );
    let ino_before = fs::metadata(&doc).unwrap().ino();
    for v in 2..=5 {
        let tmp = m1.join(format!(".notes.txt.swp{v}"));
        let mut f = fs::File::create(&tmp).unwrap();
        f.write_all(format!("version {v}\n").repeat(1000).as_bytes())
            .unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::rename(&tmp, &doc).unwrap();
        let want = format!("version {v}\n").repeat(1000);
        assert_eq!(fs::read_to_string(&doc).unwrap(), want);
        // The other mount sees the new content once its entry cache (1 s) expires.
        wait_until(
            std::time::Duration::from_secs(5),
            "other mount sees save",
            || fs::read_to_string(m2.join("notes.txt")).ok().as_deref() == Some(want.as_str()),
        );
    }
    assert_ne!(fs::metadata(&doc).unwrap().ino(), ino_before);
    let names: Vec<String> = fs::read_dir(&m1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["notes.txt"], "no temporary files left behind");
}

#[test]
fn rsync_archive_preserves_modes_times_and_links() {
    let mut c = Cluster::start(4, "2+2");
    let mp = c.mount("m");
    let src = c.path("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, 120, 9);
    sh_ok(&format!(
        "cd {s} && mkdir -p bin && printf '#!/bin/sh\\necho hi\\n' > bin/run && chmod 4755 bin/run \
         && chmod 0600 bin && chmod 0700 bin && printf secret > private && chmod 0400 private \
         && ln -s bin/run link-to-run && ln -s missing dangling && ln private hardlink \
         && find . -exec touch -h -d '2003-03-03 03:03:03.5' {{}} + \
         && touch -d '2001-02-03 04:05:06.123456789' private bin/run && touch -h -d '2002-01-01' link-to-run",
        s = src.display()
    ));
    // (rsync skips setting a time that is within the same second as the copy's own, so the
    // source's times are set well in the past above, as they would be for real data.)
    sh_ok(&format!(
        "rsync -aH {}/ {}/copy/",
        src.display(),
        mp.display()
    ));
    // A second rsync in dry-run mode finds nothing to do: sizes, times, modes and links agree.
    let changes = sh_ok(&format!(
        "rsync -aHn --itemize-changes {}/ {}/copy/",
        src.display(),
        mp.display()
    ));
    assert_eq!(changes, "", "rsync sees differences after copying");
    let listing = |root: &std::path::Path| {
        sh_ok(&format!(
            "cd {} && find . -printf '%p %y %m %s %T@ %l %n\\n' | sort",
            root.display()
        ))
    };
    let (a, b) = (listing(&src), listing(&mp.join("copy")));
    assert_eq!(a.lines().count(), b.lines().count());
    for (x, y) in a.lines().zip(b.lines()) {
        // Directory sizes differ between filesystems; everything else must match.
        let strip = |l: &str| {
            let f: Vec<&str> = l.split(' ').collect();
            if f[1] == "d" {
                format!("{} {} {} {}", f[0], f[1], f[2], f[4])
            } else {
                l.to_string()
            }
        };
        assert_eq!(strip(x), strip(y));
    }
    assert_eq!(
        sh_ok(&format!(
            "cd {} && sha256sum $(find . -type f | sort)",
            src.display()
        )),
        sh_ok(&format!(
            "cd {} && sha256sum $(find . -type f | sort)",
            mp.join("copy").display()
        ))
    );
}

#[test]
fn c_and_rust_projects_build_inside_the_mount() {
    let mut c = Cluster::start(4, "2+2");
    let mp = c.mount("m");
    let p = mp.join("cproj");
    fs::create_dir_all(p.join("src")).unwrap();
    for i in 0..20 {
        fs::write(
            p.join(format!("src/f{i}.c")),
            format!("int f{i}(int x) {{ return x * {i} + 1; }}\n"),
        )
        .unwrap();
    }
    let mut main = String::new();
    for i in 0..20 {
        main.push_str(&format!("int f{i}(int);\n"));
    }
    main.push_str("#include <stdio.h>\nint main(void) { int s = 0;\n");
    for i in 0..20 {
        main.push_str(&format!("s += f{i}({i});\n"));
    }
    main.push_str("printf(\"%d\\n\", s); return 0; }\n");
    fs::write(p.join("src/main.c"), main).unwrap();
    fs::write(
        p.join("Makefile"),
        "SRC := $(wildcard src/*.c)\nOBJ := $(SRC:src/%.c=build/%.o)\n\
         app: $(OBJ)\n\tcc -o $@ $^\nbuild/%.o: src/%.c | build\n\tcc -O1 -c -o $@ $<\n\
         build:\n\tmkdir -p build\n",
    )
    .unwrap();
    sh_ok(&format!("make -s -j2 -C {}", p.display()));
    let want: i32 = (0..20).map(|i| i * i + 1).sum();
    assert_eq!(
        sh_ok(&p.join("app").display().to_string()).trim(),
        want.to_string()
    );
    // An incremental rebuild after touching one source rebuilds just that (make sees mtimes).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(p.join("src/f3.c"), "int f3(int x) { return 1000; }\n").unwrap();
    let out = sh_ok(&format!("make -C {} 2>&1", p.display()));
    assert_eq!(
        out.matches("cc -O1").count(),
        1,
        "make rebuilt only f3.c: {out}"
    );
    assert_eq!(
        sh_ok(&p.join("app").display().to_string()).trim(),
        (want - (3 * 3 + 1) + 1000).to_string()
    );

    // A Rust crate (no dependencies, so no network), with its target directory on the mount.
    let r = mp.join("rproj");
    fs::create_dir_all(r.join("src")).unwrap();
    fs::write(
        r.join("Cargo.toml"),
        "[package]\nname = \"onmount\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    fs::write(
        r.join("src/main.rs"),
        "fn main() { let v: u64 = (1..=100).sum(); println!(\"sum {v}\"); }\n",
    )
    .unwrap();
    let out = sh_ok(&format!(
        "cd {} && CARGO_TARGET_DIR={}/target PATH=$HOME/.cargo/bin:$PATH cargo run -q --offline",
        r.display(),
        r.display()
    ));
    assert_eq!(out.trim(), "sum 5050");
}
