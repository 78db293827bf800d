//! The trust boundary: only credentials of the cluster get through a handshake, tokens work
//! once, and each role may send only its own requests. Real processes, the real protocol.

use bytes::Bytes;
use shardfs_common::pki::{Ca, Credential, Identity, Role};
use shardfs_common::proto::{
    MasterRequest, MasterResponse, NodeRequest, NodeResponse, ALPN_MASTER, ALPN_NODE,
};
use shardfs_common::{net, wire, BlockId, NodeId};
use shardfs_tests::*;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client that trusts any server (as every client did before the cluster CA) and shows
/// `cert` (or nothing).
fn lax_config(
    alpn: &[u8],
    cert: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut tls = match cert {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ))
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connect with `cfg` and send one request: Ok(answer) only if the server served it.
async fn try_request<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    ep: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    req: &Req,
) -> Result<Resp, String> {
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect_with(cfg.clone(), addr, "shardfs").unwrap(),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        wire::request::<_, Resp>(&conn, req, Bytes::new(), 0),
    )
    .await
    .map_err(|_| "request timed out".to_string())?
    .map(|(r, _)| r)
    .map_err(|e| format!("request: {e} ({:?})", conn.close_reason()));
    conn.close(0u32.into(), b"done");
    r
}

fn chain_of(
    c: &Credential,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    (c.chain(), c.key())
}

/// Every node's address, by id, as the master lists them.
async fn node_addrs(
    cred: &Credential,
    master: SocketAddr,
) -> std::collections::HashMap<NodeId, SocketAddr> {
    match call_master(cred, master, MasterRequest::Nodes).await {
        Ok(MasterResponse::Nodes(n)) => n
            .into_iter()
            .map(|n| (n.id, n.addr.parse().unwrap()))
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn refused_master(r: &Result<MasterResponse, String>) -> bool {
    matches!(r, Ok(MasterResponse::Err(e)) if e.code == shardfs_common::ErrorCode::Permission)
}

fn refused_node(r: &Result<NodeResponse, String>) -> bool {
    matches!(r, Ok(NodeResponse::Err(e)) if e.code == shardfs_common::ErrorCode::Permission)
}

#[test]
fn only_credentials_of_the_cluster_get_through_the_handshake() {
    let c = Cluster::start(3, "2+1");
    let master: SocketAddr = c.master_addr().parse().unwrap();
    let node = c.node_addr(0);
    let admin = c.credential("admin.cred");
    let other_cluster = Ca::create()
        .unwrap()
        .credential(&Identity::new(Role::Admin, "admin-1"))
        .unwrap();
    // A self-signed certificate naming an admin of this cluster.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "shardfs:admin:admin-1".try_into().unwrap(),
    )];
    let self_signed = p.self_signed(&key).unwrap();
    let self_signed = (
        vec![self_signed.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = net::client_endpoint(false).unwrap();
        let cases = [
            ("no certificate (the old accept-anything client)", None),
            (
                "a self-signed certificate",
                Some((self_signed.0.clone(), self_signed.1.clone_key())),
            ),
            (
                "a credential of another cluster",
                Some(chain_of(&other_cluster)),
            ),
        ];
        for (what, cert) in cases {
            let again = cert.as_ref().map(|(c, k)| (c.clone(), k.clone_key()));
            let m = try_request::<_, MasterResponse>(
                &ep,
                &lax_config(ALPN_MASTER, again),
                master,
                &MasterRequest::Cluster,
            )
            .await;
            assert!(m.is_err(), "master served a client with {what}: {m:?}");
            let n = try_request::<_, NodeResponse>(
                &ep,
                &lax_config(ALPN_NODE, cert),
                node,
                &NodeRequest::Stat,
            )
            .await;
            assert!(n.is_err(), "node served a client with {what}: {n:?}");
        }
        // The same client with the cluster's admin credential is served: the refusals above
        // are about the credential, not the test's client.
        let m = try_request::<_, MasterResponse>(
            &ep,
            &lax_config(ALPN_MASTER, Some(chain_of(&admin))),
            master,
            &MasterRequest::Cluster,
        )
        .await;
        assert!(matches!(m, Ok(MasterResponse::Cluster(_))), "{m:?}");
        let n = try_request::<_, NodeResponse>(
            &ep,
            &lax_config(ALPN_NODE, Some(chain_of(&admin))),
            node,
            &NodeRequest::Stat,
        )
        .await;
        assert!(matches!(n, Ok(NodeResponse::Stat { .. })), "{n:?}");
        // A client of this cluster does not trust a server of another: the real client code
        // refuses a master whose certificate another CA signed.
        let e = call_master(&other_cluster, master, MasterRequest::Cluster).await;
        assert!(e.is_err(), "{e:?}");
    });
    let log = std::fs::read_to_string(c.path("logs/master.log")).unwrap();
    assert!(
        log.contains("refused a connection at the handshake"),
        "no log line of the refusals:\n{log}"
    );
    // The admin CLI says what is wrong with a foreign credential.
    other_cluster.save(&c.path("foreign.cred")).unwrap();
    let foreign = c.path("foreign.cred").display().to_string();
    let (ok, out, err) = c.admin_around(&["status"], &["--credentials", &foreign]);
    assert!(!ok, "status with another cluster's credential: {out}");
    assert!(err.contains("CA"), "unclear error: {err}");
}

/// Run a storage node to its exit (it must exit: it has no credential), for (success, stderr).
fn node_run(c: &Cluster, dir: &std::path::Path, token: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(bin("shardfs-node"));
    cmd.arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--master", &c.master_addr()]);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.success(), err);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            return (true, "still running after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_join_once_per_token_under_their_own_id_and_revoked_ones_are_refused() {
    let mut c = Cluster::start(3, "2+1");
    let master: SocketAddr = c.master_addr().parse().unwrap();
    // No token: the node never joins.
    let (ok, err) = node_run(&c, &c.path("lone"), None);
    assert!(!ok && err.contains("--token"), "{err}");
    // A token works once.
    let token = c.token("node", &[]);
    let i = c.add_node_with(&["--token", &token]);
    c.wait_nodes_up(4);
    let (ok, err) = node_run(&c, &c.path("second"), Some(&token));
    assert!(
        !ok && err.contains("token"),
        "a used token worked again: {err}"
    );
    // An expired token is refused.
    let short = c.token("node", &["--ttl", "1"]);
    std::thread::sleep(Duration::from_millis(2100));
    let (ok, err) = node_run(&c, &c.path("late"), Some(&short));
    assert!(
        !ok && err.contains("token"),
        "an expired token worked: {err}"
    );
    // A node cannot join under another node's id…
    let victim = std::fs::read_to_string(c.node_dir(0).join("node.id")).unwrap();
    std::fs::create_dir_all(c.path("impostor")).unwrap();
    std::fs::write(c.path("impostor/node.id"), &victim).unwrap();
    let (ok, err) = node_run(&c, &c.path("impostor"), Some(&c.token("node", &[])));
    assert!(!ok && err.contains("already has a credential"), "{err}");
    // …nor register as one with its own credential.
    let victim: NodeId = victim.trim().parse().unwrap();
    let mine = Credential::load(&c.node_dir(1).join("node.cred")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(call_master(
        &mine,
        master,
        MasterRequest::Register {
            id: victim,
            addr: "127.0.0.1:9".into(),
            capacity: 1 << 40,
            free: 1 << 40,
            used: 0,
            shards: 0,
        },
    ));
    assert!(refused_master(&r), "registered as another node: {r:?}");
    // A revoked node is refused at once by the master, and goes down.
    let added = Credential::load(&c.node_dir(i).join("node.cred")).unwrap();
    let (ok, out, err) = c.admin_around(&["credentials", "revoke"], &[&added.identity.id]);
    assert!(ok, "{out}{err}");
    let r = rt.block_on(call_master(&added, master, MasterRequest::Cluster));
    assert!(
        r.is_err() || refused_master(&r),
        "a revoked node was served: {r:?}"
    );
    let id = added.identity.node_id().unwrap().to_string();
    wait_until(
        Duration::from_secs(30),
        "the revoked node marked down",
        || {
            c.status().is_some_and(|s| {
                s["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|n| n["id"] == id.as_str() && n["state"] == "down")
            })
        },
    );
    let (ok, list, _) = c.admin_around(&["credentials", "list", "--json"], &[]);
    assert!(ok);
    let line = list
        .lines()
        .find(|l| l.contains(&added.identity.id))
        .unwrap();
    assert!(line.contains("\"revoked\":true"), "{line}");
    // The other nodes refuse it too once they heard (from the next heartbeat answer).
    let peer = c.node_addr(0);
    let get = NodeRequest::Get {
        block: BlockId::of(b"nothing"),
        index: 0,
        range: None,
        cap: Default::default(),
    };
    wait_until(
        Duration::from_secs(10),
        "nodes refusing the revoked node",
        || {
            let r = rt.block_on(call_node(&added, peer, get.clone()));
            r.is_err() || refused_node(&r)
        },
    );
}

#[test]
fn each_role_sends_only_its_own_requests() {
    let mut c = Cluster::start(3, "2+1");
    let master: SocketAddr = c.master_addr().parse().unwrap();
    let node = c.node_addr(0);
    let client = c.credential("client.cred");
    let admin = c.credential("admin.cred");
    let node_id = c.node_id(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let master_only_for_others = [
            MasterRequest::Register {
                id: node_id,
                addr: "127.0.0.1:9".into(),
                capacity: 1,
                free: 1,
                used: 0,
                shards: 0,
            },
            MasterRequest::Heartbeat {
                id: node_id,
                capacity: 1,
                free: 1,
                used: 0,
                shards: 0,
            },
            MasterRequest::Drain {
                node: node_id,
                cancel: false,
            },
            MasterRequest::ShardsLost {
                node: node_id,
                shards: vec![(BlockId::of(b"x"), 0)],
            },
            MasterRequest::Scrub,
            MasterRequest::Repair,
            MasterRequest::Health,
            MasterRequest::CreateToken {
                role: Role::Admin,
                ttl_secs: 60,
                allow_root: false,
                users: Default::default(),
            },
            MasterRequest::Credentials,
            MasterRequest::Revoke {
                id: "admin-1".into(),
            },
        ];
        for req in master_only_for_others {
            let r = call_master(&client, master, req.clone()).await;
            assert!(
                refused_master(&r),
                "a client credential sent {req:?}: {r:?}"
            );
        }
        let node_admin = [
            NodeRequest::Delete {
                shards: vec![(BlockId::of(b"x"), 0)],
            },
            NodeRequest::DeleteOrphans {
                shards: vec![(BlockId::of(b"x"), 0)],
                min_age_secs: 0,
            },
            NodeRequest::Scrub {
                after: None,
                limit: 10,
            },
            NodeRequest::Stat,
        ];
        for req in node_admin {
            let r = call_node(&client, node, req.clone()).await;
            assert!(
                refused_node(&r),
                "a client credential sent {req:?} to a node: {r:?}"
            );
        }
        // The admin credential may do what the client's may not.
        let r = call_master(&admin, master, MasterRequest::Health).await;
        assert!(matches!(r, Ok(MasterResponse::Health(_))), "{r:?}");
        let r = call_master(&admin, master, MasterRequest::Credentials).await;
        assert!(matches!(r, Ok(MasterResponse::Credentials(_))), "{r:?}");
    });
    // `shardfs status` needs an admin credential.
    let client_path = c.path("client.cred").display().to_string();
    let (ok, _, err) = c.admin_around(&["status"], &["--credentials", &client_path]);
    assert!(!ok, "status with a client credential");
    assert!(err.contains("admin"), "unclear error: {err}");
    // A revoked mount is refused at once: its next change fails instead of waiting it out.
    let token = c.token("client", &["--allow-root"]);
    let second = c.path("second.cred").display().to_string();
    let mp = c.mount_with(
        "m",
        &[
            "--token",
            &token,
            "--credentials",
            &second,
            "--timeout",
            "20",
        ],
    );
    std::fs::write(mp.join("before"), b"written before the revocation").unwrap();
    let id = Credential::load(&c.path("second.cred"))
        .unwrap()
        .identity
        .id;
    let (ok, out, err) = c.admin_around(&["credentials", "revoke"], &[&id]);
    assert!(ok, "{out}{err}");
    let t = Instant::now();
    let r = std::fs::write(mp.join("after"), b"written after");
    assert!(r.is_err(), "a revoked mount still writes");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}",
        t.elapsed()
    );
}

/// A commit outside any session, with no base.
fn commit_request(
    ino: u64,
    slots: Vec<shardfs_common::proto::NewSlot>,
    size: u64,
) -> MasterRequest {
    commit_in(0, ino, slots, size)
}

/// A commit on `session`, with no base.
fn commit_in(
    session: u64,
    ino: u64,
    slots: Vec<shardfs_common::proto::NewSlot>,
    size: u64,
) -> MasterRequest {
    MasterRequest::Commit {
        ino,
        slots,
        pieces: vec![],
        size,
        mtime: shardfs_common::proto::Timespec::now(),
        base: None,
        session,
        seq: 0,
        cut: None,
        mergeable: false,
    }
}

fn code_of(r: &Result<MasterResponse, String>) -> Option<shardfs_common::ErrorCode> {
    match r {
        Ok(MasterResponse::Err(e)) => Some(e.code),
        _ => None,
    }
}

fn as_user(uid: u32, req: MasterRequest) -> MasterRequest {
    MasterRequest::As {
        caller: shardfs_common::proto::Caller {
            uid,
            gid: uid,
            groups: vec![],
        },
        req: Box::new(req),
    }
}

#[test]
fn the_master_enforces_permissions_and_squashes_root_for_clients_that_bypass_their_kernel() {
    use shardfs_common::proto::{SetAttr, Timespec, ACCESS_READ, NOBODY};
    use shardfs_common::ErrorCode;
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::start(3, "2+1");
    let master: SocketAddr = c.master_addr().parse().unwrap();
    // Set up through a mount as root: a 0600 file of uid 1000, a sticky directory with a file
    // of uid 1000 in it.
    let mp = c.mount("m");
    std::fs::write(mp.join("secret"), b"uid 1000's secret").unwrap();
    std::fs::create_dir(mp.join("tmp")).unwrap();
    std::fs::set_permissions(mp.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(mp.join("tmp/theirs"), b"uid 1000's file").unwrap();
    sh_ok(&format!(
        "chown 1000:1000 {0}/secret {0}/tmp/theirs && chmod 600 {0}/secret {0}/tmp/theirs",
        mp.display()
    ));
    // A client credential that does not allow root, used without a kernel.
    let cred = c.join_client("plain.cred", &[]);
    let root_cred = c.credential("client.cred");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let call = |req: MasterRequest| call_master(&cred, master, req);
        let lookup = |name: &str| MasterRequest::Lookup {
            parent: 1,
            name: name.as_bytes().to_vec(),
        };
        let Ok(MasterResponse::Attr(secret)) = call(as_user(2000, lookup("secret"))).await else {
            panic!("lookup failed")
        };
        let Ok(MasterResponse::Attr(tmp)) = call(as_user(2000, lookup("tmp"))).await else {
            panic!("lookup failed")
        };
        let open = |ino| MasterRequest::Open {
            ino,
            session: 0,
            access: ACCESS_READ,
        };
        // Another uid cannot open the 0600 file, acting as itself or as nobody (no `As`)…
        let r = call(as_user(2000, open(secret.ino))).await;
        assert_eq!(code_of(&r), Some(ErrorCode::Access), "{r:?}");
        let r = call(open(secret.ino)).await;
        assert_eq!(code_of(&r), Some(ErrorCode::Access), "{r:?}");
        // …nor as root, which is squashed…
        let r = call(as_user(0, open(secret.ino))).await;
        assert_eq!(
            code_of(&r),
            Some(ErrorCode::Access),
            "root was not squashed: {r:?}"
        );
        // …while its owner can, and so can a credential that allows root.
        let r = call(as_user(1000, open(secret.ino))).await;
        assert!(matches!(r, Ok(MasterResponse::Opened { .. })), "{r:?}");
        let r = call_master(&root_cred, master, as_user(0, open(secret.ino))).await;
        assert!(matches!(r, Ok(MasterResponse::Opened { .. })), "{r:?}");
        // Another user's file in a sticky directory cannot be unlinked.
        let r = call(as_user(
            2000,
            MasterRequest::Unlink {
                parent: tmp.ino,
                name: b"theirs".to_vec(),
                now: Timespec::now(),
            },
        ))
        .await;
        assert_eq!(code_of(&r), Some(ErrorCode::Permission), "{r:?}");
        // The owner cannot give the file to root.
        let r = call(as_user(
            1000,
            MasterRequest::SetAttr {
                ino: secret.ino,
                set: SetAttr {
                    uid: Some(0),
                    now: Timespec::now(),
                    ..Default::default()
                },
                base: None,
            },
        ))
        .await;
        assert_eq!(code_of(&r), Some(ErrorCode::Permission), "{r:?}");
        // A file created "as root" belongs to nobody.
        let r = call(as_user(0, create_request(tmp.ino, "by-root"))).await;
        let Ok(MasterResponse::Changed { attr: Some(a), .. }) = r else {
            panic!("{r:?}")
        };
        assert_eq!((a.uid, a.gid), (NOBODY, NOBODY));
        // Content cannot be committed to a file not opened for writing on one's session.
        let r = call(commit_request(secret.ino, vec![], 0)).await;
        assert_eq!(code_of(&r), Some(ErrorCode::Access), "{r:?}");
        // Sessions are their credential's: another mount's cannot be ended or used.
        let id = open_session(&root_cred, master).await;
        let r = call(MasterRequest::SessionClose { id }).await;
        assert_eq!(code_of(&r), Some(ErrorCode::Permission), "{r:?}");
        let r = call(MasterRequest::ReleaseLocks {
            ino: secret.ino,
            owner: shardfs_common::locks::LockOwner {
                session: id,
                owner: 1,
            },
        })
        .await;
        assert_eq!(code_of(&r), Some(ErrorCode::Permission), "{r:?}");
        let r = call_master(&root_cred, master, MasterRequest::SessionRenew { id }).await;
        assert!(
            matches!(r, Ok(MasterResponse::Ok)),
            "the owner lost its session: {r:?}"
        );
    });
    // Through the mount nothing changed for root (the launcher's credential allows root).
    assert_eq!(
        std::fs::read(mp.join("secret")).unwrap(),
        b"uid 1000's secret"
    );

    // A credential limited to some users acts only as them.
    let (ok, _, err) = c.admin_around(&["token", "create"], &["--role", "node", "--uids", "1000"]);
    assert!(!ok && err.contains("client tokens"), "{err}");
    let (ok, _, err) = c.admin_around(
        &["token", "create"],
        &["--role", "client", "--uids", "1999-1000"],
    );
    assert!(!ok && err.contains("empty"), "{err}");
    let limited = c.join_client(
        "limited.cred",
        &["--uids", "1000-1999", "--gids", "1000-1999"],
    );
    rt.block_on(async {
        let call = |req: MasterRequest| call_master(&limited, master, req);
        let lookup = || MasterRequest::Lookup {
            parent: 1,
            name: b"secret".to_vec(),
        };
        let r = call(as_user(1000, lookup())).await;
        let Ok(MasterResponse::Attr(secret)) = r else {
            panic!("a uid within the credential's was refused: {r:?}")
        };
        let r = call(as_user(
            1000,
            MasterRequest::Open {
                ino: secret.ino,
                session: 0,
                access: ACCESS_READ,
            },
        ))
        .await;
        assert!(matches!(r, Ok(MasterResponse::Opened { .. })), "{r:?}");
        let r = call(as_user(2000, lookup())).await;
        assert_eq!(
            code_of(&r),
            Some(ErrorCode::Permission),
            "a uid outside the credential's was served: {r:?}"
        );
        let r = call(MasterRequest::As {
            caller: shardfs_common::proto::Caller {
                uid: 1000,
                gid: 3000,
                groups: vec![],
            },
            req: Box::new(lookup()),
        })
        .await;
        assert_eq!(
            code_of(&r),
            Some(ErrorCode::Permission),
            "a gid outside the credential's was served: {r:?}"
        );
        // Root is squashed to nobody, which is always allowed.
        let r = call(as_user(0, lookup())).await;
        assert!(matches!(r, Ok(MasterResponse::Attr(_))), "{r:?}");
    });
    let (ok, list, _) = c.admin_around(&["credentials", "list", "--json"], &[]);
    assert!(ok);
    let line = list
        .lines()
        .find(|l| l.contains(&limited.identity.id))
        .unwrap();
    assert!(
        line.contains("\"uids\":\"1000-1999\"") && line.contains("\"gids\":\"1000-1999\""),
        "{line}"
    );
}

/// A client stores shards of other bytes and commits them under the id of content another
/// client will write (poisoning dedup). The victim's mount notices the description does not
/// match its content, stores its own, the master has a node verify it and replaces the forged
/// one: the victim reads its own bytes, and the forgery cannot be committed again.
#[test]
fn a_forged_block_description_cannot_poison_dedup() {
    use shardfs_common::ec::{Codec, EcParams};
    use shardfs_common::proto::{BlockMeta, NewSlot, Placement, ShardLoc};
    // Plain ids, which the forger computes from the victim's bytes (under encryption a client
    // holds the keys and computes keyed ids the same way; the defence is the same).
    let mut c = Cluster::start_with(3, "2+1", &["--no-encryption"]);
    let master: SocketAddr = c.master_addr().parse().unwrap();
    let attacker = c.credential("client.cred");
    let victim_bytes = random_bytes(7, 1 << 20);
    let id = BlockId::of(&victim_bytes);
    let garbage = random_bytes(8, victim_bytes.len());
    let ec = EcParams { k: 2, m: 1 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let forge = |name: &str| {
        rt.block_on(async {
            let nodes = node_addrs(&attacker, master).await;
            let placed = match call_master(
                &attacker,
                master,
                MasterRequest::Place {
                    blocks: vec![(id, victim_bytes.len() as u64)],
                    replicated: false,
                    exclude: vec![],
                    code: None,
                },
            )
            .await
            {
                Ok(MasterResponse::Placements(mut p)) => p.remove(0),
                other => panic!("{other:?}"),
            };
            let (on, cap) = match placed {
                Placement::Place(n, cap) => (n, cap),
                // Stored already: a read capability only; ask for nodes to store it again, as a
                // mount does whose content does not match the stored description.
                Placement::Exists(..) => {
                    let r = call_master(
                        &attacker,
                        master,
                        MasterRequest::PlaceMore {
                            block: id,
                            len: victim_bytes.len() as u64,
                            count: 3,
                            holding: vec![],
                            failing: vec![],
                            code: None,
                        },
                    )
                    .await;
                    match r {
                        Ok(MasterResponse::Placements(mut p)) => match p.remove(0) {
                            Placement::Place(n, cap) => (n, cap),
                            other => panic!("{other:?}"),
                        },
                        other => panic!("{other:?}"),
                    }
                }
            };
            let shards = Codec::new(ec).unwrap().encode(&garbage).unwrap();
            let d = shardfs_common::dial::Dialer::new(ALPN_NODE, &attacker, Duration::from_secs(5))
                .unwrap();
            let mut locs = Vec::new();
            for (i, (s, node)) in shards.iter().zip(&on).enumerate() {
                let hash = shardfs_common::ids::shard_hash(s);
                let req = NodeRequest::Put {
                    block: id,
                    index: i as u8,
                    hash,
                    cap,
                };
                let (r, _) = d
                    .call::<_, NodeResponse>(
                        nodes[node],
                        &req,
                        Bytes::from(s.clone()),
                        0,
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
                assert!(matches!(r, NodeResponse::Ok), "{r:?}");
                locs.push(ShardLoc { node: *node, hash });
            }
            d.close();
            let forged = BlockMeta {
                id,
                ec,
                len: victim_bytes.len() as u64,
                shard_size: shards[0].len() as u32,
                shards: locs,
            };
            let created = call_master(&attacker, master, create_request(1, name)).await;
            let Ok(MasterResponse::Changed { attr: Some(a), .. }) = created else {
                panic!("{created:?}")
            };
            call_master(
                &attacker,
                master,
                commit_request(
                    a.ino,
                    vec![NewSlot {
                        index: 0,
                        id: Some(id),
                        extents: vec![],
                        used: forged.len,
                        meta: Some(forged.clone()),
                    }],
                    forged.len,
                ),
            )
            .await
        })
    };
    // The forgery is accepted at first: nothing stored contradicts it yet.
    let r = forge("forged");
    assert!(matches!(r, Ok(MasterResponse::Attr(_))), "{r:?}");
    // The victim writes the content whose id was taken.
    let m = c.mount("m");
    std::fs::write(m.join("victim"), &victim_bytes).unwrap();
    let fresh = c.mount_with("fresh", &["--cache-mib", "0"]);
    assert!(
        std::fs::read(fresh.join("victim")).unwrap() == victim_bytes,
        "the victim does not read its own bytes"
    );
    // The same forgery once more: refused now.
    let r = forge("forged-again");
    assert!(
        matches!(&r, Ok(MasterResponse::Err(e)) if e.code == shardfs_common::ErrorCode::Corrupt),
        "{r:?}"
    );
    let log = std::fs::read_to_string(c.path("logs/master.log")).unwrap();
    assert!(log.contains("replaced by a verified one"), "{log}");
}

/// The first slot of file `name` (in the root directory), as the master maps it for `cred`.
async fn first_slot(
    cred: &Credential,
    master: SocketAddr,
    name: &str,
) -> shardfs_common::proto::Slot {
    let r = call_master(
        cred,
        master,
        MasterRequest::Lookup {
            parent: 1,
            name: name.as_bytes().to_vec(),
        },
    )
    .await;
    let Ok(MasterResponse::Attr(a)) = r else {
        panic!("{r:?}")
    };
    let r = call_master(
        cred,
        master,
        MasterRequest::Open {
            ino: a.ino,
            session: 0,
            access: shardfs_common::proto::ACCESS_READ,
        },
    )
    .await;
    let Ok(MasterResponse::Opened { slots, .. }) = r else {
        panic!("{r:?}")
    };
    slots.into_iter().next().expect("a block")
}

/// Nodes take a client's shard reads and writes only with a capability from the master: for
/// that block, that credential and that right.
#[test]
fn nodes_serve_clients_only_the_blocks_the_master_gave_them() {
    use shardfs_common::cap::{self, Cap};
    use shardfs_common::proto::Placement;
    use shardfs_common::ErrorCode;
    let mut c = Cluster::start(3, "2+1");
    let master: SocketAddr = c.master_addr().parse().unwrap();
    let mp = c.mount("m");
    let content = random_bytes(3, 1 << 20);
    std::fs::write(mp.join("f"), &content).unwrap();
    std::fs::write(mp.join("other"), b"another block").unwrap();
    let mine = c.credential("client.cred");
    let second = c.join_client("second.cred", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let nodes = node_addrs(&mine, master).await;
        let slot = first_slot(&second, master, "f").await;
        let other = first_slot(&second, master, "other").await;
        let theirs = first_slot(&mine, master, "f").await;
        let loc = slot.block.as_ref().unwrap().shards[0].clone();
        let d =
            shardfs_common::dial::Dialer::new(ALPN_NODE, &second, Duration::from_secs(5)).unwrap();
        let at = nodes[&loc.node];
        let get = |cap: Cap| {
            let d = &d;
            let req = NodeRequest::Get {
                block: slot.block.as_ref().unwrap().id,
                index: 0,
                range: None,
                cap,
            };
            async move {
                d.call::<_, NodeResponse>(at, &req, Bytes::new(), 1 << 20, Duration::from_secs(5))
                    .await
                    .map(|(r, _)| r)
                    .map_err(|e| e.to_string())
            }
        };
        let refused = |r: &Result<NodeResponse, String>, why: &str| {
            assert!(
                matches!(r, Ok(NodeResponse::Err(e)) if e.code == ErrorCode::Permission),
                "{why}: {r:?}"
            );
        };
        // With the capability the master gave it with the block map: served.
        let r = get(slot.cap).await;
        assert!(
            matches!(&r, Ok(NodeResponse::Shard { hash }) if *hash == loc.hash),
            "{r:?}"
        );
        // Without one, with another block's, or with another credential's: refused.
        refused(
            &get(Cap::default()).await,
            "a read with no capability was served",
        );
        refused(
            &get(other.cap).await,
            "a read with another block's capability was served",
        );
        refused(
            &get(theirs.cap).await,
            "a read with another credential's capability was served",
        );
        // A read capability does not store; a placement's capability does.
        let shard = random_bytes(4, 1000);
        let hash = shardfs_common::ids::shard_hash(&shard);
        let fresh = BlockId::of(b"a block of its own");
        let put = |block: BlockId, cap: Cap| NodeRequest::Put {
            block,
            index: 0,
            hash,
            cap,
        };
        let send = |req: NodeRequest| {
            let (d, shard) = (&d, shard.clone());
            async move {
                d.call::<_, NodeResponse>(at, &req, Bytes::from(shard), 0, Duration::from_secs(5))
                    .await
                    .map(|(r, _)| r)
                    .map_err(|e| e.to_string())
            }
        };
        refused(
            &send(put(fresh, Cap::default())).await,
            "a write with no capability was stored",
        );
        refused(
            &send(put(slot.block.as_ref().unwrap().id, slot.cap)).await,
            "a write with a read capability was stored",
        );
        let forged = Cap {
            rights: cap::READ | cap::WRITE,
            ..slot.cap
        };
        refused(
            &send(put(slot.block.as_ref().unwrap().id, forged)).await,
            "a write with a read capability claiming more rights was stored",
        );
        let r = call_master(
            &second,
            master,
            MasterRequest::Place {
                blocks: vec![(fresh, 1000)],
                replicated: false,
                exclude: vec![],
                code: None,
            },
        )
        .await;
        let Ok(MasterResponse::Placements(p)) = r else {
            panic!("{r:?}")
        };
        let Placement::Place(_, placed) = p[0] else {
            panic!("{p:?}")
        };
        let r = send(put(fresh, placed)).await;
        assert!(matches!(r, Ok(NodeResponse::Ok)), "{r:?}");
        d.close();
    });
    // The mount, using its capabilities throughout, still reads everything back.
    let fresh = c.mount_with("fresh", &["--cache-mib", "0"]);
    assert!(std::fs::read(fresh.join("f")).unwrap() == content);
    let log = std::fs::read_to_string(c.path("logs/node0.log")).unwrap()
        + &std::fs::read_to_string(c.path("logs/node1.log")).unwrap()
        + &std::fs::read_to_string(c.path("logs/node2.log")).unwrap();
    assert!(log.contains("has no capability"), "no refusal logged");
}

/// A mount's claim of session `id` with files `opens`, as after a master restart.
fn claim(id: u64, opens: Vec<u64>) -> MasterRequest {
    MasterRequest::SessionOpen {
        id,
        host: "h".into(),
        user: "u".into(),
        mountpoint: "/m".into(),
        opens,
        locks: vec![],
    }
}

/// After a master restart a mount claims its session again with the files it has open. The
/// claim counts only as far as the master recorded it: another credential cannot take the
/// session, and a file opened for reading does not become writable by claiming it.
#[test]
fn claims_after_a_master_restart_are_checked_against_the_record() {
    use shardfs_common::proto::{ACCESS_READ, ACCESS_WRITE};
    use shardfs_common::ErrorCode;
    let mut c = Cluster::start(3, "2+1");
    let mp = c.mount("m");
    std::fs::write(mp.join("mine"), b"uid 1000's file").unwrap();
    std::fs::write(mp.join("theirs"), b"uid 2000's file").unwrap();
    sh_ok(&format!(
        "chown 1000:1000 {0}/mine && chown 2000:2000 {0}/theirs && chmod 644 {0}/mine {0}/theirs",
        mp.display()
    ));
    let plain = c.join_client("plain.cred", &[]);
    let other = c.credential("client.cred");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let at: SocketAddr = c.master_addr().parse().unwrap();
    let (id, mine, theirs) = rt.block_on(async {
        let id = open_session(&plain, at).await;
        let ino = |name: &str| {
            let req = as_user(
                1000,
                MasterRequest::Lookup {
                    parent: 1,
                    name: name.as_bytes().to_vec(),
                },
            );
            let plain = &plain;
            async move {
                match call_master(plain, at, req).await {
                    Ok(MasterResponse::Attr(a)) => a.ino,
                    other => panic!("{other:?}"),
                }
            }
        };
        let (mine, theirs) = (ino("mine").await, ino("theirs").await);
        for (ino, access) in [(mine, ACCESS_WRITE), (theirs, ACCESS_READ)] {
            let r = call_master(
                &plain,
                at,
                as_user(
                    1000,
                    MasterRequest::Open {
                        ino,
                        session: id,
                        access,
                    },
                ),
            )
            .await;
            assert!(matches!(r, Ok(MasterResponse::Opened { .. })), "{r:?}");
        }
        (id, mine, theirs)
    });
    c.kill_master();
    c.start_master();
    let at: SocketAddr = c.master_addr().parse().unwrap();
    rt.block_on(async {
        let r = call_master(&other, at, claim(id, vec![mine, theirs])).await;
        assert_eq!(
            code_of(&r),
            Some(ErrorCode::Permission),
            "another credential took a session back after the restart: {r:?}"
        );
        let r = call_master(&plain, at, claim(id, vec![mine, theirs])).await;
        assert!(matches!(r, Ok(MasterResponse::Session { .. })), "{r:?}");
        let r = call_master(&plain, at, commit_in(id, theirs, vec![], 0)).await;
        assert_eq!(
            code_of(&r),
            Some(ErrorCode::Access),
            "a file opened for reading took a commit after it was claimed: {r:?}"
        );
        let r = call_master(&plain, at, commit_in(id, mine, vec![], 0)).await;
        assert!(
            matches!(r, Ok(MasterResponse::Attr(_))),
            "a recorded write open was lost in the restart: {r:?}"
        );
    });
}
