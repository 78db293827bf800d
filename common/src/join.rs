//! Joining a cluster: a one-time token exchanged for a credential.
//!
//! The joining host makes its key pair and connects to the master with a self-signed join
//! certificate of that key naming the token (the master refuses the handshake unless the token
//! is live; the joiner trusts the master only if its CA has the fingerprint the token carries),
//! then sends the public key with the token's secret. The master answers with a certificate signed by the cluster CA; the private
//! key never leaves this host.

use crate::dial::Dialer;
use crate::error::{Error, Result};
use crate::net;
use crate::pki::{self, Credential, JoinToken};
use crate::proto::{MasterRequest, MasterResponse, ALPN_MASTER};
use crate::NodeId;
use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::time::Duration;

/// Exchange `token` for a credential at `master`; `node`: the id of a joining storage node.
pub async fn join(
    master: SocketAddr,
    token: &str,
    node: Option<NodeId>,
    timeout: Duration,
) -> Result<Credential> {
    let token = JoinToken::parse(token)?;
    let key = pki::new_key()?;
    let join_cert = pki::join_certificate(&key, &token.secret)?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = net::join_config(ALPN_MASTER, token.ca, join_cert, key_der)?;
    let dialer = Dialer::with_config(ALPN_MASTER, config, timeout)?;
    let req = MasterRequest::Join {
        secret: token.secret,
        public_key: key.public_key_raw().to_vec(),
        host: host_name(),
        node,
    };
    let answer = dialer
        .call::<_, MasterResponse>(master, &req, Bytes::new(), 0, timeout)
        .await;
    dialer.close();
    match answer?.0 {
        MasterResponse::Joined { cert, ca } => {
            let ca = CertificateDer::from(ca);
            if pki::fingerprint(&ca) != token.ca {
                return Err(Error::Config(
                    "the master answered with a CA other than the token's".into(),
                ));
            }
            Credential::new(CertificateDer::from(cert), &key, ca)
        }
        MasterResponse::Err(e) => Err(Error::Config(format!("join refused: {}", e.message))),
        other => Err(Error::Protocol(format!(
            "unexpected answer to a join: {other:?}"
        ))),
    }
}

/// This machine's host name (for the credential list).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}
