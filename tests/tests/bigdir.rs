//! A directory of 100,000 entries (SHARDFS_BIGDIR_ENTRIES): created, listed with stable
//! offsets (telldir/seekdir), looked up by name, listed without the client holding the whole
//! directory in memory.

use shardfs_tests::*;
use std::fs;
use std::time::Instant;

/// `dirtool create DIR N` creates f0..f{N-1}; `dirtool list DIR` reads the directory once,
/// remembers telldir() at entry 30% and the name there, reads on to the end, seekdir()s back
/// and checks the same name comes again; prints "entries NAMES UNIQUE seek ok".
const DIRTOOL: &str = r#"
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }
int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "create")) {
        long n = atol(argv[3]);
        char p[4096];
        for (long i = 0; i < n; i++) {
            snprintf(p, sizeof p, "%s/f%ld", argv[2], i);
            int fd = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
            if (fd < 0) { perror(p); return 1; }
            close(fd);
        }
        return 0;
    }
    DIR *d = opendir(argv[2]);
    if (!d) { perror("opendir"); return 1; }
    long cap = 1 << 20, n = 0, mark_at = -1;
    char **names = malloc(cap * sizeof *names);
    long mark = -1; char mark_name[256] = "";
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (n == atol(argv[3])) { mark = telldir(d); mark_at = n; }
        if (mark_at >= 0 && n == mark_at + 1 && !mark_name[0]) strcpy(mark_name, e->d_name);
        names[n++] = strdup(e->d_name);
    }
    seekdir(d, mark);
    e = readdir(d);
    int seek_ok = e && !strcmp(e->d_name, mark_name);
    qsort(names, n, sizeof *names, cmp);
    long uniq = n > 0;
    for (long i = 1; i < n; i++) uniq += strcmp(names[i], names[i - 1]) != 0;
    printf("entries %ld unique %ld seek %s\n", n, uniq, seek_ok ? "ok" : "bad");
    closedir(d);
    return 0;
}
"#;

fn rss_kib(pid: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_directory_of_100k_entries_lists_with_stable_offsets() {
    let n: usize = std::env::var("SHARDFS_BIGDIR_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut c = Cluster::start(3, "2+1");
    let pid_file = c.path("m.pid");
    let mp = c.mount_with("m", &["--pid-file", pid_file.to_str().unwrap()]);
    let pid = fs::read_to_string(&pid_file).unwrap().trim().to_string();
    let tool = c.path("dirtool");
    fs::write(c.path("dirtool.c"), DIRTOOL).unwrap();
    sh_ok(&format!(
        "cc -O2 -o {} {}",
        tool.display(),
        c.path("dirtool.c").display()
    ));
    let dir = mp.join("big");
    fs::create_dir(&dir).unwrap();
    let t = Instant::now();
    sh_ok(&format!("{} create {} {n}", tool.display(), dir.display()));
    println!(
        "created {n} files in {:.1?} ({:.0}/s)",
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64()
    );

    // Lookups by name in the big directory (cold: another mount, nothing cached).
    let m2 = c.mount("m2");
    let t = Instant::now();
    for i in (0..n).step_by(n / 1000) {
        assert!(m2.join(format!("big/f{i}")).metadata().unwrap().is_file());
    }
    println!("1000 cold lookups in {:.1?}", t.elapsed());
    assert!(!m2.join("big/f-missing").exists());

    let before = rss_kib(&pid);
    let t = Instant::now();
    let out = sh_ok(&format!(
        "{} list {} {}",
        tool.display(),
        dir.display(),
        n * 3 / 10
    ));
    println!("listed in {:.1?}: {}", t.elapsed(), out.trim());
    assert_eq!(out.trim(), format!("entries {n} unique {n} seek ok"));
    let count = sh_ok(&format!("ls -f {} | wc -l", dir.display()));
    assert_eq!(
        count.trim(),
        (n + 2).to_string(),
        "ls -f sees every entry once"
    );
    let grown = rss_kib(&pid).saturating_sub(before);
    println!("mount process grew by {grown} KiB while listing");
    assert!(
        grown < 12 * 1024,
        "listing {n} entries grew the client by {grown} KiB: it must stream, not hold the directory"
    );
    // Removing them all leaves an empty directory that can go.
    sh_ok(&format!("find {} -mindepth 1 -delete", dir.display()));
    fs::remove_dir(&dir).unwrap();
}

/// `shardfs_master_requests_total{op="OP"}` on the master's /metrics.
fn master_requests(c: &Cluster, op: &str) -> f64 {
    let addr = fs::read_to_string(c.path("master/http.addr")).unwrap();
    let text = ureq::get(&format!("http://{}/metrics", addr.trim()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let key = format!("shardfs_master_requests_total{{op=\"{op}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Lines "SIZE fNNNN" for all `n` files, each of size NNNN % 97.
fn sizes_are_right(lines: &str, n: usize) {
    let mut seen = 0;
    for line in lines.lines() {
        let (size, name) = line.split_once(' ').unwrap();
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(size.parse::<usize>().unwrap(), i % 97, "{name}");
        seen += 1;
    }
    assert_eq!(seen, n);
}

/// A plain listing (`ls -f`) asks the master for names only, not every entry's inode; sizes
/// asked for afterwards (readdirplus, stat) are still right.
#[test]
fn a_plain_listing_reads_names_only_and_attributes_come_when_asked() {
    let mut c = Cluster::start_with(3, "2+1", &["--http", "127.0.0.1:0"]);
    let m = c.mount("m");
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    let n = 3000usize;
    for i in 0..n {
        fs::write(d.join(format!("f{i:04}")), vec![b'x'; i % 97]).unwrap();
    }
    let fresh = c.mount("fresh");
    sh_ok("echo 3 > /proc/sys/vm/drop_caches");
    let (full, names) = (
        master_requests(&c, "readdir"),
        master_requests(&c, "readdir_names"),
    );
    let listed = sh_ok(&format!("ls -f {}", fresh.join("d").display()));
    assert_eq!(listed.lines().count(), n + 2, "ls -f listed {listed:.200}");
    let full = master_requests(&c, "readdir") - full;
    let names = master_requests(&c, "readdir_names") - names;
    // The kernel's first call may be a readdirplus (one page with attributes); the rest
    // come as names.
    assert!(names >= 1.0, "no names-only listing was asked for");
    assert!(
        full <= 1.0,
        "{full} listings with attributes for a plain ls -f"
    );
    // Sizes through a listing with attributes and through stat, on the same fresh mount.
    let long = sh_ok(&format!(
        "ls -l {} | awk 'NR > 1 {{print $5, $NF}}'",
        fresh.join("d").display()
    ));
    sizes_are_right(&long, n);
    // Listing and stat interleaved (the kernel then switches between plain and plus
    // listings of one open directory).
    let again = c.mount("again");
    sh_ok("echo 3 > /proc/sys/vm/drop_caches");
    let walked = sh_ok(&format!(
        "python3 -c 'import os, sys\nfor e in os.scandir(sys.argv[1]): print(e.stat().st_size, e.name)' {}",
        again.join("d").display()
    ));
    sizes_are_right(&walked, n);
    for i in (0..n).step_by(7) {
        let len = fs::metadata(fresh.join("d").join(format!("f{i:04}")))
            .unwrap()
            .len();
        assert_eq!(len as usize, i % 97);
    }
}
