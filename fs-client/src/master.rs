//! The client's channel to the master: one QUIC connection, many requests in flight, every
//! request bounded by the operation timeout, reconnecting when the master restarts.

use bytes::Bytes;
use shardfs_common::dial::Dialer;
use shardfs_common::pki::Credential;
use shardfs_common::proto::{Caller, MasterRequest, MasterResponse, ALPN_MASTER, MAX_GROUPS};
use shardfs_common::{Error, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::debug;

tokio::task_local! {
    /// The process the current FUSE request came from (set by the FUSE adapter): namespace
    /// requests sent while it is set act for its user, so the master checks that user's
    /// permissions.
    pub static CALLER: Requester;
}

/// The process behind a FUSE request, as the kernel reported it.
#[derive(Clone, Copy, Debug)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Requester {
    /// Who the request acts for, with the process's supplementary groups (read only for
    /// requests that need them, not on the data path).
    fn caller(self) -> Caller {
        Caller {
            uid: self.uid,
            gid: self.gid,
            // Root passes every check whatever its groups (or is squashed to nobody, who has
            // none): its groups are never read.
            groups: if self.uid == 0 {
                Vec::new()
            } else {
                GROUPS.of(self)
            },
        }
    }
}

/// How long a process's supplementary groups are taken as known after they were read (as
/// GlusterFS's `gid-timeout`): a process that changes its groups without changing its uid or
/// gid is acted for with the old ones for at most this long. The kernel checks permissions
/// itself with the process's current groups first (`default_permissions`), so a group
/// dropped that late is still refused by the kernel.
const GROUPS_FRESH: Duration = Duration::from_secs(1);

/// The supplementary groups of recent requesters, read from `/proc` at most once per
/// [`GROUPS_FRESH`] per process and identity (a read of `/proc/PID/status` costs a tenth of
/// an unlink's round trip).
struct GroupsCache(std::sync::Mutex<lru::LruCache<GroupsKey, (Instant, Vec<u32>)>>);

/// A requester as the groups cache knows it: process, uid, gid.
type GroupsKey = (u32, u32, u32);

static GROUPS: std::sync::LazyLock<GroupsCache> = std::sync::LazyLock::new(|| {
    GroupsCache(std::sync::Mutex::new(lru::LruCache::new(
        std::num::NonZeroUsize::new(1024).expect("non-zero"),
    )))
});

impl GroupsCache {
    fn of(&self, r: Requester) -> Vec<u32> {
        let key = (r.pid, r.uid, r.gid);
        if let Some((at, groups)) = self.0.lock().expect("groups lock").get(&key) {
            if at.elapsed() < GROUPS_FRESH {
                return groups.clone();
            }
        }
        let groups = read_groups(r.pid);
        self.0
            .lock()
            .expect("groups lock")
            .put(key, (Instant::now(), groups.clone()));
        groups
    }
}

/// The supplementary groups of process `pid` (none if it is gone).
fn read_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .take(MAX_GROUPS)
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Requests whose permission depends on the user making them.
fn acts_for_user(req: &MasterRequest) -> bool {
    use MasterRequest as R;
    matches!(
        req,
        R::Lookup { .. }
            | R::Create { .. }
            | R::Symlink { .. }
            | R::Link { .. }
            | R::Unlink { .. }
            | R::Rmdir { .. }
            | R::Rename { .. }
            | R::ReadDir { .. }
            | R::ReadDirNames { .. }
            | R::Open { .. }
            | R::SetAttr { .. }
            | R::SetXattr { .. }
            | R::GetXattr { .. }
            | R::ListXattr { .. }
            | R::RemoveXattr { .. }
            | R::DropPrivs { .. }
    )
}

pub struct MasterClient {
    addr: SocketAddr,
    dialer: Dialer,
    timeout: Duration,
}

impl MasterClient {
    pub fn new(
        addr: SocketAddr,
        cred: &Credential,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self> {
        Ok(MasterClient {
            addr,
            dialer: Dialer::new(ALPN_MASTER, cred, connect_timeout)?,
            timeout,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Send `req`; retry while the master is unreachable, until the operation timeout.
    ///
    /// # Errors
    /// The master's refusal (as an [`Error::Fs`]), or a timeout/unavailable error once the
    /// deadline passes.
    pub async fn call(&self, req: MasterRequest) -> Result<MasterResponse> {
        self.call_within(req, self.timeout).await
    }

    /// [`MasterClient::call`] with a deadline of its own.
    pub async fn call_within(
        &self,
        req: MasterRequest,
        timeout: Duration,
    ) -> Result<MasterResponse> {
        let req = match CALLER.try_with(|r| *r) {
            Ok(who) if acts_for_user(&req) => MasterRequest::As {
                caller: who.caller(),
                req: Box::new(req),
            },
            _ => req,
        };
        let started = Instant::now();
        let r = self.call_until(&req, timeout, Bytes::new(), 0).await;
        metrics::histogram!("shardfs_mount_master_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        r.map(|(resp, _)| resp)
    }

    /// [`MasterClient::call`] with bulk bytes sent after the request (a commit's inline
    /// pieces) and up to `max_bulk` received after the answer (an inline piece).
    pub async fn call_bulk(
        &self,
        req: MasterRequest,
        bulk: Bytes,
        max_bulk: usize,
    ) -> Result<(MasterResponse, Vec<u8>)> {
        let started = Instant::now();
        let r = self.call_until(&req, self.timeout, bulk, max_bulk).await;
        metrics::histogram!("shardfs_mount_master_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        r
    }

    async fn call_until(
        &self,
        req: &MasterRequest,
        timeout: Duration,
        bulk: Bytes,
        max_bulk: usize,
    ) -> Result<(MasterResponse, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match self
                .dialer
                .call::<_, MasterResponse>(self.addr, req, bulk.clone(), max_bulk, left)
                .await
            {
                Ok((MasterResponse::Err(e), _)) => {
                    let e: Error = e.into();
                    if !e.is_transient() {
                        return Err(e);
                    }
                    e
                }
                Ok(answer) => return Ok(answer),
                // A refused credential (revoked, unknown) will not get better by retrying.
                Err(e @ Error::Fs(shardfs_common::ErrorCode::Permission, _)) => return Err(e),
                Err(e) => e,
            };
            if matches!(err, Error::Timeout(..)) {
                self.dialer.reset(self.addr);
            }
            if Instant::now() + backoff >= deadline {
                return Err(match err {
                    Error::Timeout(..) => {
                        Error::Timeout(timeout, format!("master {} did not answer", self.addr))
                    }
                    e => e,
                });
            }
            debug!("master request failed, retrying: {err}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    pub fn close(&self) {
        self.dialer.close();
    }
}

/// Turn an unexpected response variant into a protocol error.
pub fn unexpected(resp: MasterResponse) -> Error {
    Error::Protocol(format!("unexpected answer from master: {resp:?}"))
}
