//! QUIC endpoints tuned for bulk transfer on loopback and LANs.
//!
//! On a small machine the client, the master and every node share the cores, so per-packet
//! work is what limits throughput: large datagrams (65,000 bytes on loopback, discovery up to
//! 6,500 elsewhere), large flow-control windows, big socket buffers and many concurrent
//! streams per connection.

use crate::error::{Error, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Connection, Endpoint, EndpointConfig, ServerConfig, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// Server name used in TLS; certificates are issued for it.
const SERVER_NAME: &str = "shardfs";
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

/// A QUIC server endpoint on `addr` speaking `alpn`, with a fresh self-signed certificate.
///
/// `reset_key` should be kept across restarts of the same server: with it, a restarted server
/// answers packets of its previous life with a valid stateless reset, so peers notice at once
/// and reconnect instead of waiting for an idle timeout.
pub fn server_endpoint(addr: SocketAddr, alpn: &[u8], reset_key: &[u8; 32]) -> Result<Endpoint> {
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| Error::Config(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let chain = vec![cert.cert.der().clone()];
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Config(format!("tls: {e}")))?;
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    // A server bound to a loopback address only ever talks to loopback peers.
    server.transport_config(Arc::new(if addr.ip().is_loopback() {
        loopback_transport()
    } else {
        transport()
    }));
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

/// Client configuration for one service (ALPN).
///
/// Servers present self-signed certificates; until the cluster CA exists this accepts any
/// certificate, so the channel is encrypted but the peer is not authenticated.
pub fn client_config(alpn: &[u8]) -> Result<ClientConfig> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("tls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
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
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
            if c.error_code == quinn::TransportErrorCode::crypto(0x78) =>
        {
            Err(fail(
                "the peer is not a ShardFS service of this protocol version".into(),
            ))
        }
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail(format!("no answer within {timeout:?}"))),
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
            let key: [u8; 32] = rand_bytes();
            std::fs::write(&p, key)
                .map_err(|e| Error::Config(format!("cannot write {}: {e}", p.display())))?;
            Ok(key)
        }
        Err(e) => Err(Error::Config(format!("cannot read {}: {e}", p.display()))),
    }
}

fn rand_bytes() -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system randomness");
    b
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

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
