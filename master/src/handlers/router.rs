//! The request router: which part of the master serves each request. One-call requests are
//! answered here; the larger ones go to their handlers.

use crate::*;
use shardfs_common::proto::{MasterRequest, MasterResponse};

impl Master {
    /// Space and inodes of the whole cluster, as data (the code's parity left out).
    fn cluster_stats(&self) -> FsStats {
        let (capacity, free) = self.nodes.capacity();
        let ec = self.meta.cluster.ec;
        let scale = |b: u64| (b as u128 * ec.k as u128 / ec.total() as u128) as u64;
        FsStats {
            total_bytes: scale(capacity),
            free_bytes: scale(free),
            files: self.meta.count_inodes(),
        }
    }

    pub(crate) fn dispatch(
        &self,
        req: MasterRequest,
        from: &wire::Peer,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        use MasterResponse as A;
        let peer = from.addr;
        Ok(match req {
            R::Join {
                secret,
                public_key,
                host,
                node,
            } => {
                let (cert, ca) =
                    self.auth
                        .join(&self.meta, &secret, &public_key, &host, node, from)?;
                A::Joined { cert, ca }
            }
            R::CreateToken {
                role,
                ttl_secs,
                allow_root,
                users,
            } => {
                let (token, expires) = self
                    .auth
                    .create_token(&self.meta, role, ttl_secs, allow_root, users)?;
                info!(by = %from, %role, ttl_secs, "join token made");
                A::Token { token, expires }
            }
            R::Credentials => A::Credentials(self.auth.list()),
            R::Revoke { id } => {
                self.auth.revoke(&self.meta, &id, from)?;
                A::Ok
            }
            R::Cluster => A::Cluster(self.meta.cluster.clone()),
            R::Audit(q) => {
                let (entries, next) = self.audit.query(&self.meta, &q)?;
                A::Audit { entries, next }
            }
            R::Lookup { parent, name } => A::Attr(self.meta.lookup(parent, &name)?),
            R::GetAttr { ino } => A::Attr(self.meta.getattr(ino)?),
            R::SetAttr { ino, set, base } => {
                A::Attr(
                    self.meta
                        .setattr(ino, &set, self.sessions.of_peer(peer), base)?,
                )
            }
            R::DropPrivs { ino, now, clear } => A::Attr(self.meta.drop_privs(ino, clear, now)?),
            req @ R::Create { .. } => self.on_create(req, from)?,
            req @ R::Symlink { .. } => self.on_symlink(req, from)?,
            R::ReadLink { ino } => A::Link(self.meta.readlink(ino)?),
            R::Link {
                ino,
                parent,
                name,
                now,
            } => changed(self.meta.link(ino, parent, &name, now)?),
            R::Unlink { parent, name, now } => removed(self.meta.unlink(parent, &name, now)?),
            R::Rmdir { parent, name, now } => removed(self.meta.rmdir(parent, &name, now)?),
            req @ R::Rename { .. } => self.on_rename(req, from)?,
            R::ReadDir { ino, after, limit } => {
                let (entries, more) =
                    self.meta
                        .readdir(ino, after.as_deref(), limit.clamp(1, 10_000) as usize)?;
                A::Entries { entries, more }
            }
            R::ReadDirNames { ino, after, limit } => {
                let (entries, more) = self.meta.readdir_names(
                    ino,
                    after.as_deref(),
                    limit.clamp(1, 10_000) as usize,
                )?;
                A::Names { entries, more }
            }
            req @ R::Open { .. } => self.on_open(req, from)?,
            R::ReadInline { .. } => {
                return Err(
                    Error::invalid("inline pieces are read with their bytes in the bulk").into(),
                )
            }
            R::Close { session, files } => {
                if files.len() > shardfs_common::proto::CLOSE_MAX {
                    return Err(Error::invalid(format!(
                        "a close names {} files (at most {})",
                        files.len(),
                        shardfs_common::proto::CLOSE_MAX
                    ))
                    .into());
                }
                // Every close is applied; the first failure is the answer.
                let mut first = Ok(());
                for (ino, opens) in files {
                    let r = self.sessions.closed(&self.meta, session, ino, opens);
                    if first.is_ok() {
                        first = r;
                    }
                }
                first?;
                A::Ok
            }
            R::SessionOpen {
                id,
                host,
                user,
                mountpoint,
                opens,
                locks,
            } => A::Session {
                id: self.sessions.open(
                    &self.meta,
                    id,
                    from.who.as_ref().map_or("", |w| w.id.as_str()),
                    peer,
                    host,
                    user,
                    mountpoint,
                    opens,
                    locks,
                ),
                lease_ms: self.sessions.lease().as_millis() as u64,
            },
            R::SessionRenew { id } => {
                self.sessions.renew(id)?;
                A::Ok
            }
            R::SessionClose { id } => {
                self.sessions.close(&self.meta, id, "unmounted");
                A::Ok
            }
            R::Watch { .. } => {
                return Err(Error::invalid("watch requests are served asynchronously").into())
            }
            R::SetLock { .. } => {
                return Err(Error::invalid("lock requests are served asynchronously").into())
            }
            R::GetLock { lock } => {
                let mut held = self.sessions.get_lock(&lock);
                if let Some(h) = held
                    .as_mut()
                    .filter(|h| h.owner.session != lock.owner.session)
                {
                    h.owner.session = 0;
                }
                A::Lock(held)
            }
            R::ReleaseLocks { ino, owner } => {
                self.sessions.release_locks(ino, owner);
                A::Ok
            }
            req @ R::Place { .. } => self.on_place(req, from)?,
            req @ R::PlaceMore { .. } => self.on_place_more(req, from)?,
            req @ R::Commit { .. } => self.on_commit(req, from, HashMap::new())?,
            R::NodeStats {
                id,
                read_bytes,
                written_bytes,
                requests,
            } => {
                self.node_traffic.lock().expect("node traffic lock").insert(
                    id,
                    telemetry::NodeTraffic {
                        read_bytes,
                        written_bytes,
                        requests,
                    },
                );
                A::Ok
            }
            R::DataKeys => A::DataKeys(self.keys.read().expect("keys lock").clone()),
            R::Keys(action) => self.on_keys(action)?,
            R::StatFs => A::StatFs(self.cluster_stats()),
            R::StatFsAt { ino } => {
                let cluster = self.cluster_stats();
                match self.meta.quota_over(ino)? {
                    Some(q) => {
                        let mut stats = cluster;
                        if q.bytes_limit > 0 {
                            stats.total_bytes = q.bytes_limit;
                            stats.free_bytes = q
                                .bytes_limit
                                .saturating_sub(q.bytes_used)
                                .min(cluster.free_bytes);
                        }
                        stats.files = q.inodes_used;
                        let files_free = (q.inodes_limit > 0)
                            .then(|| q.inodes_limit.saturating_sub(q.inodes_used));
                        A::StatFsAt { stats, files_free }
                    }
                    None => A::StatFsAt {
                        stats: cluster,
                        files_free: None,
                    },
                }
            }
            R::Nodes => A::Nodes(self.nodes.list()),
            R::SetXattr {
                ino, name, value, ..
            } if name.starts_with(quota::PREFIX) => {
                quota::set(self, ino, &name, &value)?;
                A::Attr(self.meta.getattr(ino)?)
            }
            R::RemoveXattr { ino, name } if name.starts_with(quota::PREFIX) => {
                quota::set(self, ino, &name, b"")?;
                A::Attr(self.meta.getattr(ino)?)
            }
            R::GetXattr { ino, name } if name.starts_with(quota::PREFIX) => {
                A::Xattr(quota::get(self, ino, &name)?)
            }
            R::SetXattr {
                ino, name, value, ..
            } if name.starts_with(policy::PREFIX) => {
                policy::set(self, ino, &name, &value)?;
                A::Attr(self.meta.getattr(ino)?)
            }
            R::RemoveXattr { ino, name } if name.starts_with(policy::PREFIX) => {
                policy::set(self, ino, &name, b"")?;
                A::Attr(self.meta.getattr(ino)?)
            }
            R::GetXattr { ino, name } if name.starts_with(policy::PREFIX) => {
                A::Xattr(policy::get(self, ino, &name)?)
            }
            R::SetXattr {
                ino,
                name,
                value,
                flags,
            } => A::Attr(self.meta.setxattr(
                ino,
                &name,
                &value,
                flags,
                shardfs_common::proto::Timespec::now(),
            )?),
            R::GetXattr { ino, name } => A::Xattr(self.meta.getxattr(ino, &name)?),
            R::ListXattr { ino } => A::XattrNames(self.meta.listxattr(ino)?),
            R::RemoveXattr { ino, name } => A::Attr(self.meta.removexattr(
                ino,
                &name,
                shardfs_common::proto::Timespec::now(),
            )?),
            R::Health => {
                let mut h = self.repair.health();
                let s = *self.seal_stats.lock().expect("seal stats lock");
                h.unsealed_files = self.meta.unsealed_files()?;
                (h.inline_pieces, h.inline_bytes) = self.meta.inline_usage()?;
                (h.sealed_slots, h.sealed_bytes, h.seal_failures) = (s.slots, s.bytes, s.failed);
                A::Health(h)
            }
            R::Repair => {
                self.repair.force();
                A::Ok
            }
            R::Drain { node, cancel } => {
                self.nodes.set_draining(&self.meta, node, !cancel)?;
                info!(%node, drain = !cancel, "drain {}", if cancel { "cancelled" } else { "started" });
                self.repair.force();
                A::Ok
            }
            R::ShardsLost { node, shards } => {
                let n = self.meta.add_lost(node, &shards)?;
                warn!(%node, reported = shards.len(), recorded = n, "node reports corrupt shards");
                self.repair.kick();
                A::Ok
            }
            R::Scrub | R::Merge { .. } | R::As { .. } | R::WebLogin | R::Share(_) => {
                return Err(Error::invalid("served asynchronously").into())
            }
            R::History { ino } => {
                let log = self.meta.merge_record(ino)?.map(|r| r.log);
                A::History(log.unwrap_or_default())
            }
            R::Recent => A::History(
                self.recent
                    .lock()
                    .expect("recent lock")
                    .iter()
                    .cloned()
                    .collect(),
            ),
            req @ R::Replayed { .. } => self.on_replayed(req, from)?,
            R::Register {
                id,
                addr,
                capacity,
                free,
                used,
                shards,
            } => {
                self.nodes
                    .register(&self.meta, id, addr, capacity, free, used, shards)?;
                A::Registered {
                    cap_key: self.auth.cap_key.bytes(),
                    ec: self.meta.cluster.ec,
                }
            }
            R::Heartbeat {
                id,
                capacity,
                free,
                used,
                shards,
            } => {
                if !self.nodes.heartbeat(id, capacity, free, used, shards) {
                    return Err(Error::not_found(format!("node {id} is not registered")).into());
                }
                A::Revoked(self.auth.revoked())
            }
        })
    }
}
