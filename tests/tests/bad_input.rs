//! Bad input gets a clear error, a non-zero exit, no panic and no hang.

use bytes_free::*;
use shardfs_common::pki::{Credential, Role};
use shardfs_common::proto::{
    BlockMeta, MasterRequest, MasterResponse, NewSlot, NodeRequest, NodeResponse, ShardLoc,
    Timespec, ALPN_MASTER, ALPN_NODE, PROTOCOL_VERSION,
};
use shardfs_common::{net, wire};
use shardfs_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

mod bytes_free {
    pub fn run(cmd: &mut std::process::Command) -> (bool, String, std::time::Duration) {
        let t = std::time::Instant::now();
        let out = cmd.output().expect("run command");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text, t.elapsed())
    }
}

#[test]
fn cli_errors_are_clear_and_exit_non_zero() {
    let c = Cluster::start(6, "4+2");
    let addr = c.master_addr();
    let missing = c.path("no-such-dir");
    let (ok, text, _) = run(Command::new(bin("shardfs"))
        .arg("mount")
        .arg(&addr)
        .arg(&missing));
    assert!(!ok);
    assert!(text.contains("does not exist"), "{text}");
    assert!(!text.contains("panicked"), "{text}");

    let mp = c.path("mp");
    std::fs::create_dir_all(&mp).unwrap();
    // No credential: a clear error naming what is missing.
    let (ok, text, _) = run(Command::new(bin("shardfs"))
        .args(["mount", &addr, "--credentials"])
        .arg(c.path("no-such.cred"))
        .arg(&mp));
    assert!(!ok);
    assert!(text.contains("no credential at"), "{text}");
    // Nothing listens on this port: a clear error within the timeout.
    let cred = c.path("client.cred");
    let (ok, text, took) = run(Command::new(bin("shardfs"))
        .args(["mount", "127.0.0.1:9", "--timeout", "2", "--credentials"])
        .arg(&cred)
        .arg(&mp));
    assert!(!ok);
    assert!(text.contains("cannot reach the master"), "{text}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(!is_mounted(&mp));

    // A write-back bound out of range.
    let (ok, text, _) = run(Command::new(bin("shardfs"))
        .args(["mount", &addr, "--dirty-mib", "0", "--credentials"])
        .arg(&cred)
        .arg(&mp));
    assert!(!ok);
    assert!(text.contains("--dirty-mib 0: give 1 to 4096"), "{text}");
    assert!(!is_mounted(&mp));
    for n in ["0", "17"] {
        let (ok, text, _) = run(Command::new(bin("shardfs"))
            .args(["mount", &addr, "--workers", n, "--credentials"])
            .arg(&cred)
            .arg(&mp));
        assert!(!ok);
        assert!(
            text.contains(&format!("--workers {n}: give 1 to 16")),
            "{text}"
        );
        assert!(!is_mounted(&mp));
    }

    let (ok, text, _) = run(Command::new(bin("shardfs"))
        .args(["mount", "not an address"])
        .arg(&mp));
    assert!(!ok);
    assert!(
        text.contains("neither HOST:PORT nor a readable file"),
        "{text}"
    );
    let (ok, text, _) = run(Command::new(bin("shardfs"))
        .args(["mount", "127.0.0.1:99999"])
        .arg(&mp));
    assert!(!ok);
    assert!(text.contains("not a valid address"), "{text}");

    let (ok, text, _) = run(Command::new(bin("shardfs"))
        .args(["status", "127.0.0.1:9", "--credentials"])
        .arg(c.path("admin.cred")));
    assert!(!ok);
    assert!(text.contains("cannot reach the master"), "{text}");

    let (ok, text, _) = run(Command::new(bin("shardfs")).args(["umount"]).arg(&mp));
    assert!(!ok);
    assert!(text.contains("not a ShardFS mount"), "{text}");

    let (ok, text, _) = run(Command::new(bin("shardfs")).args(["mount", "--bogus-flag"]));
    assert!(!ok);
    assert!(text.contains("--bogus-flag"), "{text}");

    let (ok, text, _) =
        run(Command::new(bin("shardfs-master")).args(["--data-dir", "/tmp/x", "--ec", "9"]));
    assert!(!ok);
    assert!(text.contains("not of the form K+M"), "{text}");
    let (ok, text, _) = run(Command::new(bin("shardfs-master"))
        .arg("--data-dir")
        .arg(c.path("m0"))
        .args(["--workers", "0"]));
    assert!(!ok);
    assert!(
        text.contains("--workers must be between 1 and 16"),
        "{text}"
    );
    let (ok, text, _) = run(Command::new(bin("shardfs-node"))
        .arg("--data-dir")
        .arg(c.path("n")));
    assert!(!ok);
    assert!(text.contains("--master"), "{text}");
    let (ok, text, _) = run(Command::new(bin("shardfs-master"))
        .arg("--data-dir")
        .arg(c.path("m2"))
        .args(["--listen", "10.255.255.1:5000"]));
    assert!(!ok);
    assert!(text.contains("not an address of this machine"), "{text}");
}

/// Raw frames, some malformed, sent over a real QUIC connection.
async fn send_raw(conn: &quinn::Connection, raw: &[u8]) -> Option<Vec<u8>> {
    let (mut s, mut r) = conn.open_bi().await.ok()?;
    s.write_all(raw).await.ok()?;
    let _ = s.finish();
    tokio::time::timeout(Duration::from_secs(5), r.read_to_end(1 << 20))
        .await
        .ok()?
        .ok()
}

async fn connect(
    ep: &quinn::Endpoint,
    alpn: &[u8],
    addr: std::net::SocketAddr,
    cred: &Credential,
) -> quinn::Connection {
    let role = if alpn == ALPN_MASTER {
        Role::Master
    } else {
        Role::Node
    };
    net::connect(
        ep,
        &net::client_config(alpn, cred).unwrap(),
        addr,
        Duration::from_secs(5),
        role,
    )
    .await
    .unwrap()
}

/// Send each malformed frame and check the answer is a well-formed error response.
async fn assert_each_rejected<R: serde::de::DeserializeOwned + std::fmt::Debug>(
    conn: &quinn::Connection,
    garbage: &[Vec<u8>],
    is_error: impl Fn(&R) -> bool,
) {
    for g in garbage {
        let resp = send_raw(conn, g)
            .await
            .expect("an answer to a malformed frame");
        assert!(resp.len() >= wire::PREFIX_LEN, "answer too short");
        let msg: R = postcard::from_bytes(&resp[wire::PREFIX_LEN..]).expect("decodable answer");
        assert!(
            is_error(&msg),
            "malformed frame {g:?} answered with {msg:?}"
        );
    }
}

#[test]
fn malformed_frames_get_an_error_and_the_servers_keep_serving() {
    let c = Cluster::start(6, "4+2");
    let master: std::net::SocketAddr = c.master_addr().parse().unwrap();
    let node_addr = c.node_addr(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = net::client_endpoint(false).unwrap();
        // Frames of the current version reach the size checks and the decoder.
        let v = PROTOCOL_VERSION;
        let garbage: Vec<Vec<u8>> = vec![
            b"hello, this is not a frame".to_vec(),
            vec![v, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0], // header length beyond the limit
            vec![
                v, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
            ], // bulk beyond limit
            vec![v, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0xee, 0xee, 0xee], // undecodable header
            vec![v, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0],          // header shorter than it says
            vec![v + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],         // another protocol version
            vec![v, 0, 0],                                           // ends mid-prefix
        ];
        // Master.
        let client = c.credential("client.cred");
        let admin = c.credential("admin.cred");
        let conn = connect(&ep, ALPN_MASTER, master, &client).await;
        assert_each_rejected::<MasterResponse>(&conn, &garbage, |m| {
            matches!(m, MasterResponse::Err(_))
        })
        .await;
        let (resp, _) = wire::request::<_, MasterResponse>(
            &conn,
            &MasterRequest::Cluster,
            Default::default(),
            0,
        )
        .await
        .unwrap();
        assert!(
            matches!(resp, MasterResponse::Cluster(_)),
            "master still serves: {resp:?}"
        );
        // Storage node.
        let conn = connect(&ep, ALPN_NODE, node_addr, &admin).await;
        assert_each_rejected::<NodeResponse>(&conn, &garbage, |m| {
            matches!(m, NodeResponse::Err(_))
        })
        .await;
        // A shard whose bytes do not match its hash is refused.
        let put = NodeRequest::Put {
            block: shardfs_common::BlockId::of(b"x"),
            index: 0,
            hash: [0; 32],
            cap: Default::default(),
        };
        let (resp, _) =
            wire::request::<_, NodeResponse>(&conn, &put, bytes::Bytes::from_static(b"data"), 0)
                .await
                .unwrap();
        assert!(matches!(resp, NodeResponse::Err(_)), "{resp:?}");
        let (resp, _) =
            wire::request::<_, NodeResponse>(&conn, &NodeRequest::Stat, Default::default(), 0)
                .await
                .unwrap();
        assert!(
            matches!(resp, NodeResponse::Stat { .. }),
            "node still serves: {resp:?}"
        );
        // The wrong service (ALPN) is refused at the handshake with a clear error.
        let e = net::connect(
            &ep,
            &net::client_config(ALPN_MASTER, &client).unwrap(),
            node_addr,
            Duration::from_secs(5),
            Role::Master,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("not a ShardFS service"), "{e}");
    });
    // Nothing crashed.
    c.wait_nodes_up(6);
    let t = Instant::now();
    assert!(c.status().is_some());
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// Commits no mount would send — a block description with zero or huge shards, a time at the
/// end of i64 — get a clear error, store nothing, and every mount keeps working.
#[test]
fn crafted_commits_are_refused_and_mounts_keep_working() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("m");
    std::fs::write(mp.join("good"), b"a file written by a mount").unwrap();
    let master: std::net::SocketAddr = c.master_addr().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refusals = rt.block_on(async {
        let ep = net::client_endpoint(false).unwrap();
        let conn = connect(&ep, ALPN_MASTER, master, &c.credential("client.cred")).await;
        let call = |req: MasterRequest| {
            let conn = conn.clone();
            async move {
                wire::request::<_, MasterResponse>(&conn, &req, Default::default(), 0)
                    .await
                    .unwrap()
                    .0
            }
        };
        let created = call(create_request(1, "victim")).await;
        let MasterResponse::Changed {
            attr: Some(attr), ..
        } = created
        else {
            panic!("create: {created:?}");
        };
        let data = b"forged block".to_vec();
        let id = shardfs_common::BlockId::of(&data);
        let nodes: Vec<ShardLoc> = (1..=6)
            .map(|n| ShardLoc {
                node: shardfs_common::NodeId(n),
                hash: [0; 32],
            })
            .collect();
        let commit = |shard_size: u32, mtime: Timespec| MasterRequest::Commit {
            ino: attr.ino,
            slots: vec![NewSlot {
                index: 0,
                id: Some(id),
                extents: vec![],
                used: data.len() as u64,
                meta: Some(BlockMeta {
                    id,
                    ec: shardfs_common::ec::EcParams { k: 4, m: 2 },
                    len: data.len() as u64,
                    shard_size,
                    shards: nodes.clone(),
                }),
            }],
            pieces: vec![],
            size: data.len() as u64,
            mtime,
            base: None,
            session: 0,
            seq: 1,
            cut: None,
            mergeable: false,
        };
        let mut refusals = Vec::new();
        for req in [
            commit(0, Timespec::now()),
            commit(u32::MAX, Timespec::now()),
            commit(
                3,
                Timespec {
                    secs: i64::MAX,
                    nsecs: 0,
                },
            ),
            commit(
                3,
                Timespec {
                    secs: 0,
                    nsecs: u32::MAX,
                },
            ),
        ] {
            match call(req).await {
                MasterResponse::Err(e) => refusals.push(e.message),
                other => panic!("a crafted commit was accepted: {other:?}"),
            }
        }
        let setattr = call(MasterRequest::SetAttr {
            ino: attr.ino,
            set: shardfs_common::proto::SetAttr {
                mode: None,
                uid: None,
                gid: None,
                size: None,
                atime: None,
                mtime: Some(Timespec {
                    secs: i64::MIN,
                    nsecs: 0,
                }),
                now: Timespec::now(),
            },
            base: None,
        })
        .await;
        assert!(matches!(setattr, MasterResponse::Err(_)), "{setattr:?}");
        let drop_privs = call(MasterRequest::DropPrivs {
            ino: attr.ino,
            now: Timespec {
                secs: i64::MAX,
                nsecs: 0,
            },
            clear: 0,
        })
        .await;
        assert!(
            matches!(&drop_privs, MasterResponse::Err(e) if e.message.contains("out of range")),
            "{drop_privs:?}"
        );
        refusals
    });
    eprintln!("refusals: {refusals:#?}");
    assert!(refusals[0].contains("shards of 0 bytes"), "{}", refusals[0]);
    assert!(refusals[2].contains("out of range"), "{}", refusals[2]);
    // Nothing was stored: the file is empty, and the mounts (this one and a new one) work.
    let fresh = c.mount_with("fresh", &["--cache-mib", "0"]);
    for m in [&mp, &fresh] {
        assert_eq!(std::fs::read(m.join("victim")).unwrap(), b"");
        assert_eq!(
            std::fs::read(m.join("good")).unwrap(),
            b"a file written by a mount"
        );
        let names = sh_ok(&format!("ls {}", m.display()));
        assert!(
            names.contains("victim") && names.contains("good"),
            "{names}"
        );
    }
}

/// 10,000 requests that announce a large header and then stall hold the master's memory to a
/// bound, and meanwhile `shardfs status` (which needs the master and every node's heartbeats)
/// answers within a second.
#[test]
fn ten_thousand_stalled_streams_leave_the_master_bounded_and_answering() {
    let c = Cluster::start(3, "2+1");
    let master: std::net::SocketAddr = c.master_addr().parse().unwrap();
    let client = c.credential("client.cred");
    let before = rss_bytes(c.master_pid());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (conns, streams) = rt.block_on(async {
        let ep = net::client_endpoint(false).unwrap();
        let mut conns = Vec::new();
        let mut streams = Vec::new();
        for _ in 0..10 {
            let conn = connect(&ep, ALPN_MASTER, master, &client).await;
            for _ in 0..1000 {
                let (mut s, r) = conn.open_bi().await.unwrap();
                // A prefix announcing a 16 MiB header, then nothing.
                let mut prefix = vec![PROTOCOL_VERSION];
                prefix.extend_from_slice(&(16u32 << 20).to_be_bytes());
                prefix.extend_from_slice(&0u64.to_be_bytes());
                s.write_all(&prefix).await.unwrap();
                streams.push((s, r));
            }
            conns.push(conn);
        }
        (conns, streams)
    });
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        let t = Instant::now();
        let s = c
            .status()
            .expect("status answers while 10,000 streams stall");
        let took = t.elapsed();
        assert!(took < Duration::from_secs(1), "status took {took:?}");
        assert_eq!(s["nodes_up"], 3, "a node missed its heartbeats: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let during = rss_bytes(c.master_pid());
    println!(
        "master RSS {} MiB before, {} MiB with 10,000 stalled streams",
        before >> 20,
        during >> 20
    );
    assert!(
        during < before + (256 << 20),
        "stalled streams grew the master from {before} to {during} bytes"
    );
    drop(streams);
    drop(conns);
}

/// Inline pieces from the network are checked before anything is stored: bytes that are not
/// the content their id names, a piece named without its bytes, bulk on a request that is
/// not a commit, a truncated bulk, and reads of pieces a file does not name are all refused
/// with a clear error; a mount's own inline piece reads back, and the mounts keep working.
#[test]
fn forged_inline_pieces_are_refused() {
    let mut c = Cluster::start(6, "4+2");
    let mp = c.mount("m");
    std::fs::write(mp.join("small"), b"a small file, kept inline").unwrap();
    let master: std::net::SocketAddr = c.master_addr().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (refusals, read_back) = rt.block_on(async {
        let ep = net::client_endpoint(false).unwrap();
        let conn = connect(&ep, ALPN_MASTER, master, &c.credential("client.cred")).await;
        let call = |req: MasterRequest, bulk: Vec<u8>| {
            let conn = conn.clone();
            async move {
                wire::request::<_, MasterResponse>(&conn, &req, bulk.into(), 1 << 20)
                    .await
                    .unwrap()
            }
        };
        let created = call(create_request(1, "victim"), vec![]).await.0;
        let MasterResponse::Changed {
            attr: Some(attr), ..
        } = created
        else {
            panic!("create: {created:?}");
        };
        let data = b"forged inline bytes".to_vec();
        let id = shardfs_common::BlockId::of_coded(1, 0, &data);
        let meta = BlockMeta::inline(id, data.len());
        let commit = || MasterRequest::Commit {
            ino: attr.ino,
            slots: vec![NewSlot {
                index: 0,
                id: None,
                extents: vec![shardfs_common::extent::Extent {
                    off: 0,
                    len: data.len() as u32,
                    piece: id,
                    piece_off: 0,
                }],
                used: 0,
                meta: None,
            }],
            pieces: vec![meta.clone()],
            size: data.len() as u64,
            mtime: Timespec::now(),
            base: None,
            session: 0,
            seq: 1,
            cut: None,
            mergeable: false,
        };
        let enc = |bytes: &[u8]| shardfs_common::proto::inline_bulk::encode([(id, bytes)]);
        let mut wrong = data.clone();
        wrong[0] ^= 1;
        let mut refusals = Vec::new();
        for (req, bulk) in [
            // Bytes that are not what the id names (the cluster is encrypted: ids are keyed).
            (commit(), enc(&data)),
            (commit(), enc(&wrong)),
            // Named, not carried.
            (commit(), vec![]),
            // Bulk where no bulk belongs, and a truncated one.
            (MasterRequest::GetAttr { ino: attr.ino }, enc(&data)),
            (commit(), enc(&data)[..40].to_vec()),
            // A piece the file does not name.
            (
                MasterRequest::ReadInline {
                    ino: attr.ino,
                    index: 0,
                    id,
                    cap: Default::default(),
                },
                vec![],
            ),
        ] {
            match call(req, bulk).await.0 {
                MasterResponse::Err(e) => refusals.push(e.message),
                other => panic!("a crafted inline request was accepted: {other:?}"),
            }
        }
        // The mount's own inline piece, named by slot 0 of "small": readable there only.
        let a = match call(
            MasterRequest::Lookup {
                parent: 1,
                name: b"small".to_vec(),
            },
            vec![],
        )
        .await
        .0
        {
            MasterResponse::Attr(a) => a,
            other => panic!("lookup: {other:?}"),
        };
        let opened = call(
            MasterRequest::Open {
                ino: a.ino,
                session: 0,
                access: 0,
            },
            vec![],
        )
        .await
        .0;
        let MasterResponse::Opened { slots, .. } = opened else {
            panic!("open: {opened:?}");
        };
        let (piece, _) = slots[0]
            .pieces
            .iter()
            .find(|(m, _)| m.is_inline())
            .expect("the small file is an inline piece")
            .clone();
        let read = |index: u64| MasterRequest::ReadInline {
            ino: a.ino,
            index,
            id: piece.id,
            cap: Default::default(),
        };
        let (ok, bytes) = call(read(0), vec![]).await;
        assert!(matches!(ok, MasterResponse::Inline), "{ok:?}");
        match call(read(1), vec![]).await.0 {
            MasterResponse::Err(e) => refusals.push(e.message),
            other => panic!("a piece read through a slot that does not name it: {other:?}"),
        }
        (refusals, bytes)
    });
    eprintln!("refusals: {refusals:#?}");
    for (i, want) in [
        // A forged id names an epoch the cluster has no key of: no content can match it.
        (0, "not the content its id names"),
        (1, "not the content its id names"),
        (2, "not in the commit"),
        (3, "only a commit carries"),
        (4, "truncated"),
        (5, "no right to read"),
        (6, "no right to read"),
    ] {
        assert!(refusals[i].contains(want), "{i}: {}", refusals[i]);
    }
    // Stored encrypted, as on a node: not the plaintext.
    assert_eq!(read_back.len(), b"a small file, kept inline".len());
    assert_ne!(read_back, b"a small file, kept inline");
    let fresh = c.mount_with("fresh", &["--cache-mib", "0"]);
    for m in [&mp, &fresh] {
        assert_eq!(std::fs::read(m.join("victim")).unwrap(), b"");
        assert_eq!(
            std::fs::read(m.join("small")).unwrap(),
            b"a small file, kept inline"
        );
    }
}
