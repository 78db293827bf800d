//! QUIC endpoints tuned for bulk transfer on loopback and LANs.
//!
//! On a small machine the client, the master and every node share the cores, so per-packet
//! work is what limits throughput: large datagrams (65,000 bytes on loopback, discovery up to
//! 6,500 elsewhere), large flow-control windows, big socket buffers and many concurrent
//! streams per connection.

use crate::error::{Error, Result};
use crate::pki::{Credential, Role, SERVER_NAME};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Connection, Endpoint, EndpointConfig, ServerConfig, TransportConfig};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

const SOCKET_BUFFER: usize = 16 << 20;

fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(4096u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((64u32 << 20).into())
        .receive_window((512u32 << 20).into())
        .send_window(512 << 20)
        // A peer that died or froze is given up on after IDLE_TIMEOUT of silence (every stream
        // on the connection fails then, and the next request dials again); keep-alives make
        // silence mean exactly that.
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout")))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .initial_mtu(1400)
        .datagram_receive_buffer_size(None);
    // quinn sends up to 10 packets in one segmentation-offload (GSO) batch, and the kernel
    // refuses a batch over 64 KiB (the packets are silently lost, which then looks like a black
    // hole), so with offload on packets stay under a tenth of that.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(GSO_MTU_MAX)
        .interval(Duration::from_secs(60));
    t.mtu_discovery_config(Some(mtu));
    t
}

/// Silence after which a connection is dead. A live peer answers keep-alives within
/// milliseconds on a LAN; this leaves room for a loaded machine's scheduling delays.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(2500);

/// Keep-alive interval: several probes fit in [`IDLE_TIMEOUT`].
const KEEP_ALIVE: Duration = Duration::from_millis(400);

/// Largest packet size usable with segmentation offload (10 packets per batch, 64 KiB each).
const GSO_MTU_MAX: u16 = 6_500;

/// Largest UDP payload on loopback that leaves room for IP and UDP headers.
const LOOPBACK_MTU: u16 = 65_000;

/// Floor for the packet size on loopback. Long-header (handshake) packets, which are padded
/// to this size, must stay under 16 KiB.
const LOOPBACK_MIN_MTU: u16 = 16_000;

/// Transport for a peer on loopback: the path carries 64 KiB datagrams by construction, so
/// packets start at that size, one per send (segmentation offload cannot batch them). Should
/// losses ever look like a black hole, packets shrink to the floor (not to 1,200 bytes) and
/// discovery climbs back a few seconds later.
fn loopback_transport() -> TransportConfig {
    let mut t = transport();
    // The default initial congestion window (14,720 bytes) would not admit one such packet.
    let mut cc = quinn::congestion::CubicConfig::default();
    cc.initial_window(16 * LOOPBACK_MTU as u64);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(LOOPBACK_MTU)
        .interval(Duration::from_secs(60))
        .black_hole_cooldown(Duration::from_secs(5));
    t.initial_mtu(LOOPBACK_MTU)
        .min_mtu(LOOPBACK_MIN_MTU)
        .mtu_discovery_config(Some(mtu))
        .enable_segmentation_offload(false)
        .congestion_controller_factory(Arc::new(cc));
    t
}

/// Accept datagrams as large as UDP allows, so MTU discovery can use loopback's and jumbo
/// frames' large packets.
fn endpoint_config(mut c: EndpointConfig) -> EndpointConfig {
    c.max_udp_payload_size(65_527)
        .expect("valid UDP payload size");
    c
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket> {
    let sock = UdpSocket::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => Error::Config(format!("address {addr} is already in use")),
        std::io::ErrorKind::AddrNotAvailable => {
            Error::Config(format!("address {addr} is not an address of this machine"))
        }
        _ => Error::Config(format!("cannot bind {addr}: {e}")),
    })?;
    let fd = sock.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let v = SOCKET_BUFFER as libc::c_int;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: fd is a valid socket for the duration of the call; v outlives it.
        unsafe {
            let p = &v as *const libc::c_int as *const libc::c_void;
            if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len);
            }
        }
    }
    Ok(sock)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What one connection may have in flight on a server: concurrent requests (streams), and
/// bytes received but not yet read, per stream and per connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub streams: u32,
    pub stream_window: u32,
    pub conn_window: u32,
}

/// The master answers small requests (a merge's texts are the largest, a few MiB).
pub const MASTER_LIMITS: Limits = Limits {
    streams: 1024,
    stream_window: 8 << 20,
    conn_window: 64 << 20,
};

/// Nodes move shards: deep windows for bulk transfer.
pub const NODE_LIMITS: Limits = Limits {
    streams: 4096,
    stream_window: 64 << 20,
    conn_window: 512 << 20,
};

/// Whether a join certificate names a live token (the hash of its secret).
pub type TokenCheck = Arc<dyn Fn(&[u8; 32]) -> bool + Send + Sync>;

/// Who may connect to a server endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// Every peer shows a certificate of the cluster CA (nodes).
    Required,
    /// Also a joining host whose self-signed join certificate names a token `check` accepts
    /// (the master); it is then only served the join exchange.
    AllowJoin(TokenCheck),
}

/// The master's client verifier: a certificate of the cluster CA, or a join certificate of a
/// live token. Anything else — no certificate, a self-signed one, another cluster's — fails
/// the handshake.
struct ClusterOrJoin {
    cluster: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    tokens: TokenCheck,
}

impl std::fmt::Debug for ClusterOrJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterOrJoin")
    }
}

impl rustls::server::danger::ClientCertVerifier for ClusterOrJoin {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.cluster.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        match self
            .cluster
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => Ok(v),
            Err(e) => match crate::pki::join_request(end_entity) {
                // The handshake's signature (checked next) proves the key is the joiner's.
                Some(hash) if (self.tokens)(&hash) => {
                    Ok(rustls::server::danger::ClientCertVerified::assertion())
                }
                Some(_) => Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                )),
                None => Err(e),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.cluster.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.cluster.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.cluster.supported_verify_schemes()
    }
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| Error::Config(format!("cluster CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

/// A QUIC server endpoint on `addr` speaking `alpn`, presenting `cred` and accepting only
/// peers whose certificates the same cluster CA signed.
///
/// `reset_key` should be kept across restarts of the same server: with it, a restarted server
/// answers packets of its previous life with a valid stateless reset, so peers notice at once
/// and reconnect instead of waiting for an idle timeout.
pub fn server_endpoint(
    addr: SocketAddr,
    alpn: &[u8],
    reset_key: &[u8; 32],
    cred: &Credential,
    auth: ClientAuth,
    limits: Limits,
) -> Result<Endpoint> {
    let cluster =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&cred.ca)?, provider())
            .build()
            .map_err(|e| Error::Config(format!("tls: {e}")))?;
    let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = match auth {
        ClientAuth::Required => cluster,
        ClientAuth::AllowJoin(tokens) => Arc::new(ClusterOrJoin { cluster, tokens }),
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("tls: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cred.chain(), cred.key())
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Config(format!("tls: {e}")))?;
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    // A server bound to a loopback address only ever talks to loopback peers.
    let mut t = if addr.ip().is_loopback() {
        loopback_transport()
    } else {
        transport()
    };
    t.max_concurrent_bidi_streams(limits.streams.into())
        .stream_receive_window(limits.stream_window.into())
        .receive_window(limits.conn_window.into());
    server.transport_config(Arc::new(t));
    let socket = udp_socket(addr)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    Endpoint::new(
        endpoint_config(EndpointConfig::new(Arc::new(key))),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| Error::Config(format!("cannot start QUIC on {addr}: {e}")))
}

/// A client endpoint (ephemeral port) able to reach servers of the given family.
pub fn client_endpoint(ipv6: bool) -> Result<Endpoint> {
    let addr: SocketAddr = if ipv6 { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .expect("addr");
    let socket = udp_socket(addr)?;
    // The receive limit is a transport parameter: without it servers would send this client
    // nothing larger than 1,472-byte packets, whatever the path allows.
    Endpoint::new(
        endpoint_config(EndpointConfig::default()),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| Error::Config(format!("cannot start QUIC client: {e}")))
}

/// Client configuration for one service (ALPN): presents `cred` and trusts only servers whose
/// certificates the cluster CA signed for a server role.
pub fn client_config(alpn: &[u8], cred: &Credential) -> Result<ClientConfig> {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&cred.ca)?, provider())
            .build()
            .map_err(|e| Error::Config(format!("tls: {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("tls: {e}")))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(cred.chain(), cred.key())
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    quic_client(tls, alpn)
}

/// Client configuration for the join exchange: a self-signed join certificate of the joiner's
/// key (see [`crate::pki::join_certificate`]), and the master is trusted if the CA it presents
/// has the fingerprint the join token carries.
pub fn join_config(
    alpn: &[u8],
    ca_fingerprint: [u8; 32],
    join_cert: CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<ClientConfig> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("tls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fingerprint: ca_fingerprint,
            provider: provider(),
        }))
        .with_client_auth_cert(vec![join_cert], key)
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    quic_client(tls, alpn)
}

fn quic_client(mut tls: rustls::ClientConfig, alpn: &[u8]) -> Result<ClientConfig> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Config(format!("tls: {e}")))?;
    let mut cfg = ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport()));
    Ok(cfg)
}

/// Connect to `addr`, failing after `timeout` with an error that names the address.
pub async fn connect(
    endpoint: &Endpoint,
    config: &ClientConfig,
    addr: SocketAddr,
    timeout: Duration,
    expect: Role,
) -> Result<Connection> {
    let fail = |reason: String| Error::Connect {
        addr: addr.to_string(),
        reason,
    };
    let mut config = config.clone();
    if addr.ip().is_loopback() {
        config.transport_config(Arc::new(loopback_transport()));
    }
    let connecting = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|e| fail(e.to_string()))?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(fail(handshake_error(&e))),
        Err(_) => return Err(fail(format!("no answer within {timeout:?}"))),
    };
    // A server without a certificate never gets here (the verifier refused it): the check is
    // that it is the service asked for, not another server of the cluster at that address.
    match crate::pki::peer_identity(&conn) {
        Some(who) if who.role == expect => Ok(conn),
        Some(who) => {
            conn.close(0u32.into(), b"wrong role");
            Err(fail(format!("the peer is {who}, not a {expect}")))
        }
        None => {
            conn.close(0u32.into(), b"no identity");
            Err(fail(
                "the peer's certificate names no ShardFS identity".into(),
            ))
        }
    }
}

/// Whether a connection was closed because the server refused this peer's credential (at the
/// handshake, or when admitting it, or on revocation), as opposed to going away.
pub fn is_refusal(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => [0x2a, 0x2b, 0x2c, 0x30, 0x31, 0x74]
            .iter()
            .any(|&a| c.error_code == quinn::TransportErrorCode::crypto(a)),
        quinn::ConnectionError::ApplicationClosed(c) => {
            c.error_code == REFUSED || c.error_code == REVOKED
        }
        _ => false,
    }
}

/// Application close codes: a server refused a connection's credential, or revoked it.
pub const REFUSED: quinn::VarInt = quinn::VarInt::from_u32(1);
pub const REVOKED: quinn::VarInt = quinn::VarInt::from_u32(2);

/// What a closed or refused connection means, in words that point at the cause.
pub fn handshake_error(e: &quinn::ConnectionError) -> String {
    let alert = |code: u8| quinn::TransportErrorCode::crypto(code);
    match e {
        quinn::ConnectionError::ConnectionClosed(c) if c.error_code == alert(0x78) => {
            "the peer is not a ShardFS service of this protocol version".into()
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == alert(0x74) || c.error_code == alert(0x2a) =>
        {
            "the server wants a credential of this cluster (none was shown)".into()
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == alert(0x30) || c.error_code == alert(0x2b) =>
        {
            "the server refused this credential: its certificate is not signed by this \
             cluster's CA (a credential of another cluster, or self-signed?)"
                .into()
        }
        quinn::ConnectionError::ConnectionClosed(c) if c.error_code == alert(0x31) => {
            "the master refused the join: its token is unknown, already used or expired".into()
        }
        quinn::ConnectionError::TransportError(t) if t.to_string().contains("UnknownIssuer") => {
            "the server's certificate is not signed by this cluster's CA (another cluster?)".into()
        }
        quinn::ConnectionError::ApplicationClosed(c) => {
            format!(
                "the server closed the connection: {}",
                String::from_utf8_lossy(&c.reason)
            )
        }
        e => e.to_string(),
    }
}

/// Load the stateless-reset key kept in `dir`, creating it on first use.
pub fn reset_key(dir: &std::path::Path) -> Result<[u8; 32]> {
    let p = dir.join("reset.key");
    match std::fs::read(&p) {
        Ok(v) if v.len() == 32 => Ok(v.try_into().expect("32 bytes")),
        Ok(_) => Err(Error::Config(format!(
            "{} is damaged; delete it",
            p.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = crate::pki::random();
            std::fs::write(&p, key)
                .map_err(|e| Error::Config(format!("cannot write {}: {e}", p.display())))?;
            Ok(key)
        }
        Err(e) => Err(Error::Config(format!("cannot read {}: {e}", p.display()))),
    }
}

/// Resolve "host:port" to one socket address, with an error a user understands.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    let addr = addr.trim();
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let mut it = addr.to_socket_addrs().map_err(|e| {
        Error::Config(format!(
            "{addr:?} is not a valid address (expected HOST:PORT): {e}"
        ))
    })?;
    it.next()
        .ok_or_else(|| Error::Config(format!("{addr:?} resolves to no address")))
}

/// Trusts a server whose chain ends in a CA certificate of a known fingerprint (the join
/// token's), verified as the cluster's own verifier would with that CA as the root.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| crate::pki::fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General("the master's CA is not the one the join token names".into())
            })?;
        let roots =
            roots(&ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
        match crate::pki::Identity::of_cert(end_entity) {
            Ok(who) if who.role == Role::Master => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::General(
                "the peer is not the cluster's master".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
