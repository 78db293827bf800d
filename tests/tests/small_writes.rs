//! Small writes into stored blocks: kept as replicated pieces (m + 1 copies) laid over the
//! block, not as a rewrite of the whole erasure-coded block. Real master, nodes and mounts.

use shardfs_tests::*;
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// A pseudo-random 4 KiB write position in a file of `size` bytes: page-aligned mostly, now
/// and then not (SQLite pages are aligned; logs and editors are not).
fn position(i: u64, size: usize) -> usize {
    let x = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(17)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let pages = (size / 4096 - 1) as u64;
    match i % 5 {
        4 => (x % (size as u64 - 4096)) as usize,
        _ => ((x % pages) * 4096) as usize,
    }
}

/// `count` fsync'd-at-the-end 4 KiB writes of `file` at page-aligned positions
/// `base + position(i, span)`, data seeded `seed + i`, applied to `model` too; the lowest
/// offset written.
fn page_writes(
    file: &Path,
    model: &mut [u8],
    count: u64,
    base: usize,
    span: usize,
    seed: u64,
) -> usize {
    let f = fs::OpenOptions::new().write(true).open(file).unwrap();
    let mut lowest = usize::MAX;
    for i in 0..count {
        let off = base + (position(i, span) & !4095);
        let data = random_bytes(seed + i, 4096);
        f.write_at(&data, off as u64).unwrap();
        model[off..off + 4096].copy_from_slice(&data);
        lowest = lowest.min(off);
    }
    f.sync_all().unwrap();
    lowest
}

fn same(p: &Path, model: &[u8]) -> bool {
    hash_file(p) == blake3::hash(model).to_hex().to_string()
}

/// fsync'd 4 KiB writes cost their bytes times the copies, not a re-encoded 4 MiB block each;
/// they are stored as 3 full copies on distinct nodes (4+2: m + 1), read back identical on
/// another mount, and survive a SIGKILLed client, a master kill -9 and restart, and m nodes
/// killed.
#[test]
fn fsynced_small_writes_are_pieces_that_survive_client_master_and_node_crashes() {
    small_writes_survive_crashes(false);
}

/// The same with 32 KiB per fsync: each flush's writes travel inside the commit as an inline
/// piece, nothing is stored on the nodes for them, and they survive the same crashes.
#[test]
fn fsynced_inline_small_writes_survive_client_master_and_node_crashes() {
    small_writes_survive_crashes(true);
}

fn small_writes_survive_crashes(inline: bool) {
    let mut c = Cluster::start(6, "4+2");
    let pid_file = c.path("m.pid");
    let mp = c.mount_with("m", &["--pid-file", pid_file.to_str().unwrap()]);
    let size = 16 << 20;
    let mut model = random_bytes(5, size);
    fs::write(mp.join("db"), &model).unwrap();
    let blocks_before: HashSet<String> = c.holders().into_keys().collect();
    assert_eq!(blocks_before.len(), 4, "four 4 MiB blocks");
    let stored_before: u64 = c.node_usage().iter().sum();

    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mp.join("db"))
        .unwrap();
    // 20 x 4 KiB per fsync is more than an inline piece holds (64 KiB); 8 x 4 KiB is not.
    let (writes, every) = (400u64, if inline { 8u64 } else { 20 });
    for i in 0..writes {
        let off = position(i, size);
        let data = random_bytes(1000 + i, 4096);
        f.write_at(&data, off as u64).unwrap();
        model[off..off + 4096].copy_from_slice(&data);
        if i % every == every - 1 {
            f.sync_all().unwrap();
        }
        // Reads on the writing mount see the writes at once (stored or not).
        if i % 50 == 7 {
            let mut back = vec![0u8; 4096];
            f.read_exact_at(&mut back, off as u64).unwrap();
            assert_eq!(back, data, "read-your-writes at {off}");
        }
    }
    f.sync_all().unwrap();
    let stored: u64 = c.node_usage().iter().sum::<u64>() - stored_before;
    let app = writes * 4096;
    eprintln!(
        "4 KiB writes, fsync every {every}: {stored} bytes stored on the nodes for {app} written \
         (write amplification {:.2})",
        stored as f64 / app as f64
    );
    // Three copies of each byte, plus the shard headers. Rewriting the touched blocks on every
    // fsync (the slot model before pieces) stored about 4 x 6 MiB per fsync: ~100x.
    assert!(
        stored < 5 * app,
        "small writes stored {stored} bytes for {app} written"
    );
    let h = c.holders();
    let pieces: Vec<&Vec<(usize, String)>> = h
        .iter()
        .filter(|(id, _)| !blocks_before.contains(*id))
        .map(|(_, v)| v)
        .collect();
    let held = c
        .status()
        .and_then(|s| s["health"]["inline_pieces"].as_u64())
        .unwrap_or(0);
    if inline {
        assert!(pieces.is_empty(), "no piece on the nodes: {pieces:?}");
        assert_eq!(stored, 0, "nothing stored on the nodes for inline pieces");
        assert!(held >= writes / every / 2, "inline pieces held: {held}");
    } else {
        assert!(!pieces.is_empty(), "the writes were stored as pieces");
        assert_eq!(held, 0, "no inline piece");
    }
    for p in &pieces {
        let nodes: HashSet<usize> = p.iter().map(|(n, _)| *n).collect();
        assert_eq!(p.len(), 3, "a piece has m + 1 = 3 copies: {p:?}");
        assert_eq!(nodes.len(), 3, "its copies are on distinct nodes: {p:?}");
    }
    assert!(
        blocks_before.iter().all(|b| h[b].len() == 6),
        "the erasure-coded blocks are untouched"
    );

    // Another mount reads the file identical.
    let other = c.mount("other");
    assert!(
        same(&other.join("db"), &model),
        "another mount reads the writes"
    );

    // The client dies with the file open; the master is killed and restarted.
    let pid = fs::read_to_string(&pid_file).unwrap().trim().to_string();
    sh_ok(&format!("kill -9 {pid}"));
    drop(f);
    sh(&format!("umount -l {}", mp.display()));
    c.kill_master();
    c.start_master();
    c.wait_nodes_up(6);
    let after = c.mount("after");
    assert!(
        same(&after.join("db"), &model),
        "fsync'd small writes lost after a client crash and a master restart"
    );

    // Any m = 2 nodes down: every piece still has a copy, every block k shards.
    for (a, b) in [(0, 1), (2, 5)] {
        c.kill_node(a);
        c.kill_node(b);
        let m = c.mount(&format!("down{a}{b}"));
        assert!(
            same(&m.join("db"), &model),
            "reads with nodes {a} and {b} down"
        );
        c.umount(&m);
        c.start_node(a);
        c.start_node(b);
        c.wait_nodes_up(6);
    }
}

/// A file made only of small writes at scattered offsets (holes between them), an append to
/// an existing file's last block, and a truncate across written pieces read back as a local
/// file does, on the writing mount and on another one.
#[test]
fn scattered_writes_appends_and_truncates_read_back_as_written() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("m");
    let local = c.path("local");
    fs::create_dir_all(&local).unwrap();
    let (a, b) = (mp.join("f"), local.join("f"));
    fs::write(&a, random_bytes(9, 3 << 20)).unwrap();
    fs::write(&b, random_bytes(9, 3 << 20)).unwrap();
    let fa = fs::OpenOptions::new().write(true).open(&a).unwrap();
    let fb = fs::OpenOptions::new().write(true).open(&b).unwrap();
    for i in 0..300u64 {
        let off = position(i, 10 << 20) as u64;
        let data = random_bytes(i, 1 + (i as usize * 37) % 9000);
        fa.write_at(&data, off).unwrap();
        fb.write_at(&data, off).unwrap();
        if i % 60 == 59 {
            fa.sync_all().unwrap();
        }
        if i == 200 {
            // Cut across everything written so far, then go on.
            fa.set_len(5 << 20).unwrap();
            fb.set_len(5 << 20).unwrap();
        }
    }
    // Small appends at the end of the file, each fsync'd, as a log writer does.
    let end = fs::metadata(&b).unwrap().len();
    for i in 0..50u64 {
        let line = format!("log line {i}\n").into_bytes();
        let at = end + i * line.len() as u64;
        fa.write_at(&line, at).unwrap();
        fb.write_at(&line, at).unwrap();
        fa.sync_all().unwrap();
    }
    drop(fa);
    drop(fb);
    let want = fs::read(&b).unwrap();
    assert_eq!(fs::read(&a).unwrap(), want, "the writing mount");
    let other = c.mount("other");
    assert_eq!(fs::read(other.join("f")).unwrap(), want, "another mount");
}

/// Flip 4 KiB of a stored file's payload (after its 48-byte header) at `at`.
fn corrupt(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    let start = 48 + at as usize;
    for b in &mut bytes[start..start + 4096] {
        *b ^= 0x5a;
    }
    fs::write(path, bytes).unwrap();
}

/// A corrupted 4 KiB region of a stored shard, and of one copy of a piece, is found by a
/// 4 KiB read of it (the node checks the 64 KiB chunk the range lies in against its sum, then
/// judges the whole shard and quarantines it), and the read still returns the right bytes: by
/// decoding from other shards, or from another copy of the piece.
#[test]
fn a_corrupted_region_is_found_by_a_small_read_and_the_right_bytes_come_back() {
    // Plain ids: the test finds the base block's shards by the hash of its content.
    let mut c = Cluster::start_with(6, "4+2", &["--no-encryption"]);
    let mp = c.mount("m");
    let size = 4 << 20;
    let mut model = random_bytes(21, size);
    fs::write(mp.join("f"), &model).unwrap();
    let block = blake3::hash(&model).to_hex().to_string();
    // Small writes into the second half only (the first half stays the base block's).
    let lowest = page_writes(&mp.join("f"), &mut model, 40, 2 << 20, 2 << 20, 500);
    let h = c.holders();
    let (bnode, _) = h[&block].iter().find(|(_, i)| i == "0").unwrap().clone();
    let pieces: Vec<(&String, usize)> = h
        .iter()
        .filter(|(id, _)| **id != block)
        .map(|(id, v)| (id, v.iter().find(|(_, i)| i == "0").unwrap().0))
        .collect();
    assert_eq!(pieces.len(), 1, "one flush, one piece: {h:?}");
    let shard_path =
        |node: usize, name: &str| c.node_dir(node).join("shards").join(&name[..2]).join(name);
    // Data shard 0 holds block bytes 0..1 MiB: corrupt 64..68 KiB of it.
    corrupt(&shard_path(bnode, &format!("{block}.0")), 64 << 10);
    // The piece's first bytes are the lowest small write: corrupt them in its first copy.
    let (piece, pnode) = pieces[0];
    corrupt(&shard_path(pnode, &format!("{piece}.0")), 0);

    let m2 = c.mount("fresh");
    let g = fs::File::open(m2.join("f")).unwrap();
    for at in [64usize << 10, lowest] {
        let mut back = vec![0u8; 4096];
        g.read_exact_at(&mut back, at as u64).unwrap();
        assert!(
            back == model[at..at + 4096],
            "4 KiB read at {at} returned wrong bytes"
        );
    }
    let quarantined =
        |node: usize, name: String| c.node_dir(node).join("quarantine").join(name).exists();
    assert!(
        quarantined(bnode, format!("{block}.0")),
        "the corrupt shard was found by the 4 KiB read"
    );
    assert!(
        quarantined(pnode, format!("{piece}.0")),
        "the corrupt piece copy was found by the 4 KiB read"
    );
    assert!(same(&m2.join("f"), &model), "the whole file reads right");
}

/// A slot that would hold more extents than a commit may carry (1,024) is stored whole again
/// by its writer: 1,500 small writes that do not touch each other, in one flush, end as a new
/// erasure-coded block, and the file reads back as written.
#[test]
fn a_slot_with_too_many_extents_is_stored_whole_again() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("m");
    let mut model = random_bytes(31, 4 << 20);
    fs::write(mp.join("f"), &model).unwrap();
    let before: HashSet<String> = c.holders().into_keys().collect();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(mp.join("f"))
        .unwrap();
    for i in 0..1500usize {
        let (off, data) = (i * 2048, random_bytes(9000 + i as u64, 100));
        f.write_at(&data, off as u64).unwrap();
        model[off..off + 100].copy_from_slice(&data);
    }
    f.sync_all().unwrap();
    drop(f);
    let h = c.holders();
    let rewritten = h
        .iter()
        .filter(|(id, v)| !before.contains(*id) && v.len() == 6)
        .count();
    assert_eq!(
        rewritten, 1,
        "the slot was stored whole as a 4+2 block: {h:?}"
    );
    let other = c.mount("other");
    assert!(same(&other.join("f"), &model), "another mount reads it");
}

/// Pieces are repaired like blocks: with the node holding a copy of every piece down past the
/// repair grace, each piece is copied again to another node (3 copies on 3 distinct live
/// nodes), and with two more nodes of the copies killed the file still reads back identical.
#[test]
fn lost_piece_copies_are_rebuilt_on_other_nodes() {
    let mut c = Cluster::start_with(
        8,
        "4+2",
        // Plain ids: the test finds the base block by the hash of its content.
        &[&FAST_REPAIR[..], &["--no-encryption"]].concat(),
    );
    let mp = c.mount("m");
    let size = 4 << 20;
    let mut model = random_bytes(31, size);
    fs::write(mp.join("f"), &model).unwrap();
    let block = blake3::hash(&model).to_hex().to_string();
    page_writes(&mp.join("f"), &mut model, 30, 0, size, 700);
    c.umount(&mp);
    let h = c.holders();
    let pieces: Vec<String> = h.keys().filter(|id| **id != block).cloned().collect();
    assert!(!pieces.is_empty(), "the writes are pieces");
    let victim = h[&pieces[0]][0].0;
    c.kill_node(victim);
    let live = |h: &std::collections::HashMap<String, Vec<(usize, String)>>, id: &String| {
        let nodes: HashSet<usize> = h[id]
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != victim)
            .collect();
        nodes.len()
    };
    wait_until(
        Duration::from_secs(60),
        "the lost copies and shards to be rebuilt",
        || {
            let h = c.holders();
            pieces.iter().all(|p| live(&h, p) == 3) && live(&h, &block) == 6
        },
    );
    // Two more of the first piece's live holders die: its third copy still serves it.
    let holders: Vec<usize> = c.holders()[&pieces[0]]
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != victim)
        .collect();
    c.kill_node(holders[0]);
    c.kill_node(holders[1]);
    let m = c.mount("after");
    assert!(
        same(&m.join("f"), &model),
        "read back with its copies rebuilt"
    );
}

/// A storage node answers a small shard's put once the shard's record in its journal is
/// flushed, before the shard's own file is durable. Power lost before the node's next
/// checkpoint leaves the journal and maybe not the files: simulated by killing every node and
/// deleting or tearing each shard file its journal names. At restart the nodes rewrite them
/// from their journals, and the fsync'd small writes read back identical, also with m other
/// nodes down.
#[test]
fn acknowledged_small_writes_survive_nodes_losing_their_unsynced_files() {
    let mut c = Cluster::start(6, "4+2");
    // Small writes go to the nodes (not inline to the master), so through their journals.
    let mp = c.mount_with("m", &["--inline-kib", "0"]);
    let size = 8 << 20;
    let mut model = random_bytes(11, size);
    fs::write(mp.join("db"), &model).unwrap();
    page_writes(&mp.join("db"), &mut model, 200, 0, size, 500);
    let small = random_bytes(12, 3000);
    fs::write(mp.join("small"), &small).unwrap();
    for i in 0..6 {
        c.kill_node(i);
    }
    let (mut lost, mut deleted) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let dir = c.node_dir(i);
        let mut records = Vec::new();
        for name in ["journal.old", "journal"] {
            if let Ok(bytes) = fs::read(dir.join(name)) {
                records.extend(shardfs_node::journal::decode_all(&bytes));
            }
        }
        // What the journal says of each shard: its last record.
        for ((block, index), r) in shardfs_node::journal::final_states(records) {
            let hex = block.to_hex();
            let p = dir
                .join("shards")
                .join(&hex[..2])
                .join(format!("{hex}.{index}"));
            match r.kind {
                shardfs_node::journal::Kind::Put => {
                    match lost.len() % 2 {
                        0 => {
                            let _ = fs::remove_file(&p);
                        }
                        _ => fs::write(&p, b"torn").unwrap(),
                    }
                    lost.push(p);
                }
                // Collected since (a piece a later write replaced): it must stay deleted.
                shardfs_node::journal::Kind::Delete => deleted.push(p),
                shardfs_node::journal::Kind::Durable => {}
            }
        }
    }
    assert!(
        lost.len() >= 3,
        "the small writes went through the nodes' journals: {lost:?}"
    );
    for i in 0..6 {
        c.start_node(i);
    }
    c.wait_nodes_up(6);
    for p in &lost {
        let raw = fs::read(p).unwrap_or_default();
        assert!(
            raw.len() > 48,
            "{} not rewritten from the journal",
            p.display()
        );
    }
    for (a, b) in [(0, 1), (2, 5)] {
        c.kill_node(a);
        c.kill_node(b);
        let m = c.mount_with(&format!("down{a}{b}"), &["--cache-mib", "0"]);
        assert!(
            same(&m.join("db"), &model),
            "fsync'd small writes with nodes {a} and {b} down"
        );
        assert_eq!(fs::read(m.join("small")).unwrap(), small);
        c.umount(&m);
        c.start_node(a);
        c.start_node(b);
        c.wait_nodes_up(6);
    }
}
