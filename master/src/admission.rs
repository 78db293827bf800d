//! Admission of a request: whether its sender may send it, who it acts for, whether the
//! sessions it names are the sender's, and its audit entry however it ends.

use crate::*;
use shardfs_common::proto::MasterRequest;

impl Master {
    /// Who a request acts as, once its sender's role allows it (the POSIX permissions of that
    /// user are checked next, by `perms::check`). Root is squashed to nobody unless the
    /// credential allows root; a request not wrapped in `As` acts as the credential itself.
    pub(crate) fn as_caller(
        &self,
        req: MasterRequest,
        peer: &wire::Peer,
    ) -> Result<(MasterRequest, shardfs_common::proto::Caller), MasterError> {
        let (req, caller) = match req {
            MasterRequest::As { caller, req } => (*req, Some(caller)),
            r => (r, None),
        };
        if matches!(req, MasterRequest::As { .. }) {
            return Err(Error::invalid("a request can act for one caller only").into());
        }
        self.auth.authorize(&req, peer)?;
        let root_ok = peer.who.as_ref().is_some_and(|w| self.auth.allows_root(w));
        let acts_for_user = caller.is_some();
        let mut caller = match caller {
            Some(c) if c.groups.len() > shardfs_common::proto::MAX_GROUPS => {
                return Err(Error::invalid("too many supplementary groups").into())
            }
            Some(c) if c.uid == 0 && !root_ok => shardfs_common::proto::Caller::nobody(),
            Some(mut c) => {
                if !root_ok && c.gid == 0 {
                    c.gid = shardfs_common::proto::NOBODY;
                }
                c
            }
            None if root_ok => shardfs_common::proto::Caller::root(),
            None => shardfs_common::proto::Caller::nobody(),
        };
        if let (true, Some(who)) = (acts_for_user, &peer.who) {
            perms::within(&self.auth.users(who), who, &mut caller)?;
        }
        Ok((req, caller))
    }

    /// The answer to a request refused before it was served (and its audit entry).
    pub(crate) fn refused(
        &self,
        e: MasterError,
        pending: audit::Pending,
        peer: &wire::Peer,
        ids: Option<(u32, u32)>,
    ) -> (MasterResponse, Bytes) {
        if !matches!(&e, MasterError::Fs(fe) if matches!(fe.code(), ErrorCode::NotFound | ErrorCode::Access))
        {
            warn!(%peer, "request refused: {e}");
        }
        let e = e.to_remote();
        self.audit(pending, peer, ids, Err(&e));
        (MasterResponse::Err(e), Bytes::new())
    }

    /// Log a request that ended with `outcome`, if the audit log wants it. `ids`: the
    /// (uid, gid) it acted for (None: as the credential itself).
    pub(crate) fn audit(
        &self,
        p: audit::Pending,
        peer: &wire::Peer,
        ids: Option<(u32, u32)>,
        outcome: Result<(), &RemoteError>,
    ) {
        if !audit::AuditLog::wants(&p, outcome) {
            return;
        }
        let (uid, gid) = ids.unwrap_or(match peer.who.as_ref() {
            Some(w) if self.auth.allows_root(w) => (0, 0),
            _ => (shardfs_common::proto::NOBODY, shardfs_common::proto::NOBODY),
        });
        let host = match self.sessions.of_peer(peer.addr) {
            0 => peer
                .who
                .as_ref()
                .and_then(|w| self.auth.host_of(&w.id))
                .unwrap_or_default(),
            s => self.sessions.who(s).unwrap_or_default(),
        };
        let who = audit::Who {
            peer,
            uid,
            gid,
            host,
        };
        self.audit.record(&self.meta, p, who, outcome);
    }

    /// Log a request that was served (an answer of `Err` counts as its failure), and note
    /// the names lookups and creates answered.
    pub(crate) fn audit_served(
        &self,
        p: audit::Pending,
        peer: &wire::Peer,
        ids: Option<(u32, u32)>,
        r: &MasterResponse,
    ) {
        match r {
            MasterResponse::Err(e) => return self.audit(p, peer, ids, Err(e)),
            MasterResponse::Attr(a) | MasterResponse::Changed { attr: Some(a), .. } => {
                if let Some((parent, name)) = p.named() {
                    self.audit.seen(parent, name, a.ino);
                }
            }
            _ => {}
        }
        self.audit(p, peer, ids, Ok(()));
    }

    /// Every session id a request names must be a session of the sender's credential.
    pub(crate) fn check_sessions(
        &self,
        req: &MasterRequest,
        peer: &wire::Peer,
    ) -> Result<(), MasterError> {
        use MasterRequest as R;
        let id = match req {
            R::Create { session, .. }
            | R::Open { session, .. }
            | R::Close { session, .. }
            | R::Commit { session, .. }
            | R::Merge { session, .. }
            | R::Replayed { session, .. } => *session,
            R::SessionOpen { id, .. } | R::SessionRenew { id } | R::SessionClose { id } => *id,
            R::SetLock { lock, .. } => lock.owner.session,
            R::ReleaseLocks { owner, .. } => owner.session,
            _ => return Ok(()),
        };
        let who = peer.who.as_ref().map_or("", |w| w.id.as_str());
        if id == 0 || self.sessions.owned_by(id, who) {
            Ok(())
        } else {
            Err(MasterError::Fs(Error::fs(
                ErrorCode::Permission,
                format!("session {id:016x} belongs to another credential"),
            )))
        }
    }
}

/// Every time a request would store must be one that can be represented and shown.
pub(crate) fn check_times(req: &MasterRequest) -> Result<(), Error> {
    use MasterRequest as R;
    match req {
        R::SetAttr { set, .. } => {
            set.now.check()?;
            set.atime.map(|t| t.check()).transpose()?;
            set.mtime.map(|t| t.check()).transpose()?;
            Ok(())
        }
        R::Create { now, .. }
        | R::Symlink { now, .. }
        | R::Link { now, .. }
        | R::Unlink { now, .. }
        | R::Rmdir { now, .. }
        | R::Rename { now, .. }
        | R::DropPrivs { now, .. } => now.check(),
        R::Commit { mtime, .. } => mtime.check(),
        _ => Ok(()),
    }
}
