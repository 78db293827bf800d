//! Outgoing QUIC connections, one per peer address, shared by every task.
//!
//! Concurrent first requests to a peer share one handshake; a connection that closed is
//! replaced on the next request. Every request has a deadline.

use crate::error::{Error, Result};
use crate::pki::{Credential, Role};
use crate::proto::ALPN_MASTER;
use crate::{net, wire};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use quinn::{ClientConfig, Connection, Endpoint};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

type Pending = Shared<BoxFuture<'static, std::result::Result<Connection, String>>>;

enum Conn {
    Ready(Connection),
    Connecting(Pending),
}

pub struct Dialer {
    endpoint: Endpoint,
    config: ClientConfig,
    /// The role the peers of this dialer must have (master or node).
    expect: Role,
    connect_timeout: Duration,
    conns: Mutex<HashMap<SocketAddr, Conn>>,
}

impl Dialer {
    /// A dialer of one service (`alpn`: the master's or the nodes'), presenting `cred`.
    pub fn new(alpn: &[u8], cred: &Credential, connect_timeout: Duration) -> Result<Self> {
        let config = net::client_config(alpn, cred)?;
        Dialer::with_config(alpn, config, connect_timeout)
    }

    /// A dialer with its own TLS configuration (the join exchange's).
    pub fn with_config(
        alpn: &[u8],
        config: ClientConfig,
        connect_timeout: Duration,
    ) -> Result<Self> {
        Ok(Dialer {
            endpoint: net::client_endpoint(false)?,
            config,
            expect: if alpn == ALPN_MASTER {
                Role::Master
            } else {
                Role::Node
            },
            connect_timeout,
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// A live connection to `addr`, connecting if there is none.
    pub async fn connection(&self, addr: SocketAddr) -> Result<Connection> {
        let pending = {
            let mut conns = self.conns.lock().expect("dialer lock");
            match conns.get(&addr) {
                Some(Conn::Ready(c)) if c.close_reason().is_none() => return Ok(c.clone()),
                Some(Conn::Connecting(p)) => p.clone(),
                _ => {
                    let (endpoint, config, timeout, expect) = (
                        self.endpoint.clone(),
                        self.config.clone(),
                        self.connect_timeout,
                        self.expect,
                    );
                    let fut = async move {
                        net::connect(&endpoint, &config, addr, timeout, expect)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    .boxed()
                    .shared();
                    conns.insert(addr, Conn::Connecting(fut.clone()));
                    fut
                }
            }
        };
        let result = pending.await;
        let mut conns = self.conns.lock().expect("dialer lock");
        match result {
            Ok(c) => {
                let probe = c.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    tracing::debug!(peer = %probe.remote_address(), mtu = probe.stats().path.current_mtu, "path MTU");
                });
                if !matches!(conns.get(&addr), Some(Conn::Ready(cur)) if cur.close_reason().is_none())
                {
                    conns.insert(addr, Conn::Ready(c.clone()));
                }
                Ok(c)
            }
            Err(reason) => {
                if matches!(conns.get(&addr), Some(Conn::Connecting(_))) {
                    conns.remove(&addr);
                }
                Err(Error::Unavailable(reason))
            }
        }
    }

    /// Forget the connection to `addr` (after an error), so the next request reconnects.
    pub fn reset(&self, addr: SocketAddr) {
        let mut conns = self.conns.lock().expect("dialer lock");
        if let Some(Conn::Ready(c)) = conns.remove(&addr) {
            c.close(0u32.into(), b"reset");
        }
    }

    /// One request/response exchange with `addr`, bounded by `timeout` overall.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        req: &Req,
        bulk: Bytes,
        max_bulk: usize,
        timeout: Duration,
    ) -> Result<(Resp, Vec<u8>)> {
        let fut = async {
            let conn = self.connection(addr).await?;
            wire::request(&conn, req, bulk, max_bulk).await
        };
        self.bounded(addr, timeout, fut).await
    }

    /// Like [`Dialer::call`], with the response's bulk received into `dst`; returns the
    /// response and how many bytes of `dst` were filled.
    pub async fn call_into<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        req: &Req,
        dst: &mut [MaybeUninit<u8>],
        timeout: Duration,
    ) -> Result<(Resp, usize)> {
        let fut = async {
            let conn = self.connection(addr).await?;
            wire::request_into(&conn, req, Bytes::new(), dst).await
        };
        self.bounded(addr, timeout, fut).await
    }

    async fn bounded<T>(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                if !matches!(e, Error::Connection(_)) {
                    return Err(e);
                }
                // A server refuses a client certificate after the client saw its handshake
                // finish (TLS 1.3), so a refusal shows up at the first request: say why.
                let why = match self.conns.lock().expect("dialer lock").get(&addr) {
                    Some(Conn::Ready(c)) => c.close_reason(),
                    _ => None,
                };
                self.reset(addr);
                match why {
                    Some(r) if net::is_refusal(&r) => Err(Error::fs(
                        crate::ErrorCode::Permission,
                        format!("{addr}: {}", net::handshake_error(&r)),
                    )),
                    _ => Err(e),
                }
            }
            Err(_) => Err(Error::Timeout(timeout, format!("request to {addr}"))),
        }
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"closing");
    }
}
