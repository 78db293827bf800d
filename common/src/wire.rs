//! Framing of one request or response on a QUIC stream, and the generic request/serve loops.
//!
//! A frame is a 13-byte prefix — protocol version (u8), header length (u32 BE), bulk length
//! (u64 BE) — then the postcard header, then the bulk bytes. Both lengths are checked against
//! limits before anything is allocated, so a malformed or hostile frame costs nothing but an
//! error reply.

use crate::error::{Error, RemoteError, Result};
use crate::pki::{Identity, Role};
use crate::proto::PROTOCOL_VERSION;
use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

pub const PREFIX_LEN: usize = 13;
/// Largest header accepted (a directory page, a block map).
pub const MAX_HEADER: usize = 32 << 20;
/// Headers up to this size are read without reserving from [`HEADER_BUDGET`].
const SMALL_HEADER: usize = 64 << 10;
/// KiB of large headers that may be arriving at once in this process.
static HEADER_BUDGET: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(256 << 10);
/// Largest bulk payload accepted (one shard).
pub const MAX_BULK: usize = 64 << 20;
/// A request (header and bulk) must arrive within this long once its stream is opened, so a
/// stalled stream holds nothing for long.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Write one frame and finish the stream.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T, bulk: Bytes) -> Result<()> {
    let header = postcard::to_stdvec(msg).map_err(|e| Error::Protocol(format!("encode: {e}")))?;
    let mut buf = Vec::with_capacity(PREFIX_LEN + header.len());
    buf.push(PROTOCOL_VERSION);
    buf.extend_from_slice(&(header.len() as u32).to_be_bytes());
    buf.extend_from_slice(&(bulk.len() as u64).to_be_bytes());
    buf.extend_from_slice(&header);
    let mut chunks = [Bytes::from(buf), bulk];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|e| Error::Connection(format!("send: {e}")))?;
    send.finish()
        .map_err(|e| Error::Connection(format!("finish: {e}")))?;
    Ok(())
}

/// Check a frame's prefix: the protocol version, then the header and bulk lengths against
/// their limits. Returns (header length, bulk length).
pub fn parse_prefix(prefix: &[u8; PREFIX_LEN], max_bulk: usize) -> Result<(usize, usize)> {
    if prefix[0] != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!(
            "frame of protocol version {} (this side speaks {PROTOCOL_VERSION})",
            prefix[0]
        )));
    }
    let hlen = u32::from_be_bytes(prefix[1..5].try_into().unwrap()) as usize;
    let blen = u64::from_be_bytes(prefix[5..13].try_into().unwrap());
    if hlen > MAX_HEADER {
        return Err(Error::Protocol(format!(
            "header of {hlen} bytes exceeds the limit"
        )));
    }
    if blen > max_bulk as u64 {
        return Err(Error::Protocol(format!(
            "payload of {blen} bytes exceeds the limit of {max_bulk}"
        )));
    }
    Ok((hlen, blen as usize))
}

/// Decode a frame's header (postcard) into the service's message type.
pub fn decode_header<T: DeserializeOwned>(header: &[u8]) -> Result<T> {
    postcard::from_bytes(header).map_err(|e| Error::Protocol(format!("undecodable header: {e}")))
}

/// Read one frame's prefix and header, refusing headers over [`MAX_HEADER`] and bulk over
/// `max_bulk`. Returns the header and the length of the bulk that follows.
pub async fn read_head<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_bulk: usize,
) -> Result<(T, usize)> {
    let mut prefix = [0u8; PREFIX_LEN];
    recv.read_exact(&mut prefix).await.map_err(read_err)?;
    let (hlen, blen) = parse_prefix(&prefix, max_bulk)?;
    // Large headers (merge texts) are rare: together they may hold at most HEADER_BUDGET while
    // they arrive, so streams that announce big headers and stall cannot exhaust memory.
    let _budget = match hlen > SMALL_HEADER {
        true => Some(
            HEADER_BUDGET
                .acquire_many(hlen.div_ceil(1024) as u32)
                .await
                .map_err(|_| Error::Protocol("server shutting down".into()))?,
        ),
        false => None,
    };
    // Grown as bytes arrive: a prefix that announces a large header costs nothing until the
    // header itself does.
    let mut header = Vec::with_capacity(hlen.min(4 << 10));
    while header.len() < hlen {
        match recv.read_chunk(hlen - header.len(), true).await {
            Ok(Some(chunk)) => header.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(Error::Protocol(format!(
                    "stream ended after {} of {hlen} header bytes",
                    header.len()
                )))
            }
            Err(e) => return Err(Error::Connection(format!("receive: {e}"))),
        }
    }
    Ok((decode_header(&header)?, blen))
}

/// Read exactly `dst.len()` bulk bytes into `dst`, straight from quinn's receive buffers (one
/// copy, and no zero-fill of `dst` first). On success every byte of `dst` is initialised.
pub async fn read_bulk(recv: &mut RecvStream, dst: &mut [MaybeUninit<u8>]) -> Result<()> {
    let mut at = 0usize;
    while at < dst.len() {
        match recv.read_chunk(dst.len() - at, true).await {
            Ok(Some(chunk)) => {
                let n = chunk.bytes.len().min(dst.len() - at);
                // SAFETY: `n` bytes fit in `dst[at..]`; the source is a separate allocation.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        chunk.bytes.as_ptr(),
                        dst[at..].as_mut_ptr() as *mut u8,
                        n,
                    )
                };
                at += n;
            }
            Ok(None) => {
                return Err(Error::Protocol(format!(
                    "stream ended after {at} of {} payload bytes",
                    dst.len()
                )))
            }
            Err(e) => return Err(Error::Connection(format!("receive: {e}"))),
        }
    }
    Ok(())
}

/// A buffer a frame's bulk is received into, sized once its length is known.
pub trait BulkBuf: Send + 'static {
    /// A buffer for `len` bulk bytes, not yet filled.
    fn for_len(len: usize) -> Self;
    /// The `len` bytes to fill.
    fn unfilled(&mut self) -> &mut [MaybeUninit<u8>];
    /// Record that every byte of [`BulkBuf::unfilled`] has been written.
    ///
    /// # Safety
    /// Only after the whole of `unfilled()` was initialised.
    unsafe fn assume_filled(&mut self);
}

impl BulkBuf for Vec<u8> {
    fn for_len(len: usize) -> Self {
        Vec::with_capacity(len)
    }
    fn unfilled(&mut self) -> &mut [MaybeUninit<u8>] {
        let len = self.capacity() - self.len();
        &mut self.spare_capacity_mut()[..len]
    }
    unsafe fn assume_filled(&mut self) {
        // SAFETY: the caller initialised the spare capacity.
        unsafe { self.set_len(self.capacity()) }
    }
}

/// Read one frame whose bulk goes into a new `B`.
pub async fn read_frame_as<T: DeserializeOwned, B: BulkBuf>(
    recv: &mut RecvStream,
    max_bulk: usize,
) -> Result<(T, B)> {
    let (msg, blen) = read_head(recv, max_bulk).await?;
    let body = read_body(recv, blen).await?;
    see_end(recv);
    Ok((msg, body))
}

/// Take note of the end of a stream whose frame has been read, if it has arrived already (it
/// comes with the frame's last bytes; nothing is waited for). A stream dropped before its end
/// is seen makes quinn ask the peer to stop sending: one more packet each way, and one more
/// acknowledgement, for every request.
fn see_end(recv: &mut RecvStream) {
    use futures::FutureExt;
    let _ = recv.read_chunk(1, true).now_or_never();
}

/// The `blen` bulk bytes that follow a header (see [`read_head`]), into a new `B`.
async fn read_body<B: BulkBuf>(recv: &mut RecvStream, blen: usize) -> Result<B> {
    let mut bulk = B::for_len(blen);
    read_bulk(recv, bulk.unfilled()).await?;
    // SAFETY: read_bulk initialised every byte of unfilled().
    unsafe { bulk.assume_filled() };
    Ok(bulk)
}

/// Read one frame, refusing headers over [`MAX_HEADER`] and bulk over `max_bulk`.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_bulk: usize,
) -> Result<(T, Vec<u8>)> {
    read_frame_as(recv, max_bulk).await
}

fn read_err(e: quinn::ReadExactError) -> Error {
    match e {
        quinn::ReadExactError::FinishedEarly(n) => Error::Protocol(format!(
            "stream ended after {n} bytes, in the middle of a frame"
        )),
        quinn::ReadExactError::ReadError(e) => Error::Connection(format!("receive: {e}")),
    }
}

/// Send one request on a new stream of `conn` and wait for its response.
pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
    conn: &Connection,
    req: &Req,
    bulk: Bytes,
    max_bulk: usize,
) -> Result<(Resp, Vec<u8>)> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::Connection(format!("open stream: {e}")))?;
    write_frame(&mut send, req, bulk).await?;
    read_frame(&mut recv, max_bulk).await
}

/// Like [`request`], with the response's bulk received into `dst` (at most `dst.len()` bytes).
/// Returns the response and how many bytes of `dst` it filled.
pub async fn request_into<Req: Serialize, Resp: DeserializeOwned>(
    conn: &Connection,
    req: &Req,
    bulk: Bytes,
    dst: &mut [MaybeUninit<u8>],
) -> Result<(Resp, usize)> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::Connection(format!("open stream: {e}")))?;
    write_frame(&mut send, req, bulk).await?;
    let (resp, n) = read_head(&mut recv, dst.len()).await?;
    read_bulk(&mut recv, &mut dst[..n]).await?;
    see_end(&mut recv);
    Ok((resp, n))
}

/// A service: one request enum in, one response enum out.
pub trait Service: Send + Sync + 'static {
    type Req: DeserializeOwned + Send + Sync + std::fmt::Debug;
    type Resp: Serialize + Send + Sync;
    /// What a request's bulk payload is received into.
    type Bulk: BulkBuf;
    /// Largest bulk payload a request may carry.
    const MAX_REQUEST_BULK: usize;
    fn error_response(e: RemoteError) -> Self::Resp;
    fn handle(
        self: Arc<Self>,
        req: Self::Req,
        bulk: Self::Bulk,
        peer: Peer,
    ) -> impl Future<Output = (Self::Resp, Bytes)> + Send;
    /// Whether `peer` may send `req`, decided from its header before any of its bulk is
    /// received (a refused upload costs the server nothing).
    fn check(&self, _req: &Self::Req, _peer: &Peer) -> std::result::Result<(), RemoteError> {
        Ok(())
    }
    /// Whether a peer that completed the handshake may be served (for example: not revoked).
    /// A refused connection is closed with the reason, which its peer sees.
    fn admit(&self, _peer: &Peer, _conn: &Connection) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// The other end of a connection: its address and the identity its verified certificate names
/// (`None` only if the certificate names none, which the server refuses at once).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub who: Option<Identity>,
}

impl Peer {
    pub fn role(&self) -> Option<Role> {
        self.who.as_ref().map(|w| w.role)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.who {
            Some(w) => write!(f, "{w} at {}", self.addr),
            None => write!(f, "{} (no credential)", self.addr),
        }
    }
}

/// Accept connections on `endpoint` and answer every stream with `service` until `shutdown`.
pub async fn serve<S: Service>(
    endpoint: Endpoint,
    service: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let service = service.clone();
                tokio::spawn(async move {
                    let from = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, service).await,
                        Err(e) => warn!(peer = %from, "refused a connection at the handshake: {e}"),
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    endpoint.close(0u32.into(), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn serve_connection<S: Service>(conn: Connection, service: Arc<S>) {
    let peer = Peer {
        addr: conn.remote_address(),
        who: crate::pki::peer_identity(&conn),
    };
    if conn.peer_identity().is_some() && peer.who.is_none() {
        warn!(peer = %peer.addr, "refused a certificate that names no ShardFS identity");
        conn.close(
            crate::net::REFUSED,
            b"the certificate names no ShardFS identity",
        );
        return;
    }
    if let Err(reason) = service.admit(&peer, &conn) {
        warn!(%peer, "refused a connection: {reason}");
        conn.close(crate::net::REFUSED, reason.as_bytes());
        return;
    }
    let probe = conn.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        debug!(peer = %probe.remote_address(), mtu = probe.stats().path.current_mtu, "path MTU to client");
    });
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(%peer, "connection ended: {e}");
                return;
            }
        };
        let service = service.clone();
        tokio::spawn(serve_stream(send, recv, service, peer.clone()));
    }
}

async fn serve_stream<S: Service>(
    mut send: SendStream,
    mut recv: RecvStream,
    service: Arc<S>,
    peer: Peer,
) {
    let addr = peer.addr;
    let read = tokio::time::timeout(REQUEST_DEADLINE, async {
        let (req, blen) = read_head::<S::Req>(&mut recv, S::MAX_REQUEST_BULK).await?;
        if let Err(e) = service.check(&req, &peer) {
            return Ok(Err(e));
        }
        let bulk = read_body::<S::Bulk>(&mut recv, blen).await?;
        see_end(&mut recv);
        Ok(Ok((req, bulk)))
    })
    .await
    .unwrap_or_else(|_| {
        Err(Error::Protocol(format!(
            "request not received within {REQUEST_DEADLINE:?}"
        )))
    });
    let (resp, bulk) = match read {
        Ok(Ok((req, bulk))) => service.handle(req, bulk, peer).await,
        Ok(Err(refused)) => {
            warn!(peer = %peer, "request refused: {}", refused.message);
            let _ = recv.stop(1u32.into());
            (S::error_response(refused), Bytes::new())
        }
        Err(e) => {
            warn!(peer = %peer, "rejected a malformed request: {e}");
            let _ = recv.stop(1u32.into());
            (S::error_response(e.to_remote()), Bytes::new())
        }
    };
    if let Err(e) = write_frame(&mut send, &resp, bulk).await {
        debug!(peer = %addr, "could not send response: {e}");
    }
}
