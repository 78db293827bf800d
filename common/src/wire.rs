//! Framing of one request or response on a QUIC stream, and the generic request/serve loops.
//!
//! A frame is a 13-byte prefix — protocol version (u8), header length (u32 BE), bulk length
//! (u64 BE) — then the postcard header, then the bulk bytes. Both lengths are checked against
//! limits before anything is allocated, so a malformed or hostile frame costs nothing but an
//! error reply.

use crate::error::{Error, RemoteError, Result};
use crate::proto::PROTOCOL_VERSION;
use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

pub const PREFIX_LEN: usize = 13;
/// Largest header accepted (a directory page, a block map).
pub const MAX_HEADER: usize = 32 << 20;
/// Largest bulk payload accepted (one shard).
pub const MAX_BULK: usize = 64 << 20;

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

/// Read one frame, refusing headers over [`MAX_HEADER`] and bulk over `max_bulk`.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_bulk: usize,
) -> Result<(T, Vec<u8>)> {
    let mut prefix = [0u8; PREFIX_LEN];
    recv.read_exact(&mut prefix).await.map_err(read_err)?;
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
            "payload of {blen} bytes exceeds the limit"
        )));
    }
    let mut header = vec![0u8; hlen];
    recv.read_exact(&mut header).await.map_err(read_err)?;
    let msg: T = postcard::from_bytes(&header)
        .map_err(|e| Error::Protocol(format!("undecodable header: {e}")))?;
    // Collect the bulk from quinn's own buffers without zero-filling a buffer first.
    let blen = blen as usize;
    let mut bulk = Vec::with_capacity(blen);
    while bulk.len() < blen {
        match recv.read_chunk(blen - bulk.len(), true).await {
            Ok(Some(chunk)) => bulk.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(Error::Protocol(format!(
                    "stream ended after {} of {blen} payload bytes",
                    bulk.len()
                )))
            }
            Err(e) => return Err(Error::Connection(format!("receive: {e}"))),
        }
    }
    Ok((msg, bulk))
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

/// A service: one request enum in, one response enum out.
pub trait Service: Send + Sync + 'static {
    type Req: DeserializeOwned + Send + Sync + std::fmt::Debug;
    type Resp: Serialize + Send + Sync;
    /// Largest bulk payload a request may carry.
    const MAX_REQUEST_BULK: usize;
    fn error_response(e: RemoteError) -> Self::Resp;
    fn handle(
        self: Arc<Self>,
        req: Self::Req,
        bulk: Vec<u8>,
        peer: SocketAddr,
    ) -> impl Future<Output = (Self::Resp, Bytes)> + Send;
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
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, service).await,
                        Err(e) => debug!("handshake failed: {e}"),
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
    let peer = conn.remote_address();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(%peer, "connection ended: {e}");
                return;
            }
        };
        let service = service.clone();
        tokio::spawn(serve_stream(send, recv, service, peer));
    }
}

async fn serve_stream<S: Service>(
    mut send: SendStream,
    mut recv: RecvStream,
    service: Arc<S>,
    peer: SocketAddr,
) {
    let (resp, bulk) = match read_frame::<S::Req>(&mut recv, S::MAX_REQUEST_BULK).await {
        Ok((req, bulk)) => service.handle(req, bulk, peer).await,
        Err(e) => {
            warn!(%peer, "rejected a malformed request: {e}");
            let _ = recv.stop(1u32.into());
            (S::error_response(e.to_remote()), Bytes::new())
        }
    };
    if let Err(e) = write_frame(&mut send, &resp, bulk).await {
        debug!(%peer, "could not send response: {e}");
    }
}
