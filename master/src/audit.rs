//! The audit log: every namespace change, every admin action and every refused request, with
//! when, who (credential, uid, host) and how it ended.
//!
//! Entries are `L` records keyed by time (unix nanoseconds) and a sequence number, so a query
//! from a time on is a range scan. They are written with the WAL right after the request is
//! served (before its answer leaves), so they survive kill -9 of the master; entries older
//! than the retention are deleted in the background. Paths are resolved when the entry is
//! written: directories through their parent links (paths cached, the cache dropped when a
//! directory moves), files through the name they were last looked up, created or renamed
//! under. Optionally every entry is also appended to a file as one JSON line.

use crate::meta::Meta;
use crate::MasterError;
use lru::LruCache;
use shardfs_common::proto::{AuditEntry, AuditQuery, FileKind, MasterRequest, SetAttr};
use shardfs_common::wire::Peer;
use shardfs_common::{ErrorCode, Ino, ROOT_INO};
use std::borrow::Cow;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::warn;

/// The record family of audit entries.
const FAMILY: u8 = b'L';
/// Directory entries looked at to find a file's or directory's name in its parent.
const NAME_SCAN: usize = 100_000;
/// Records one query looks at before it answers with what it found (and a cursor).
const SCAN_BUDGET: usize = 50_000;
/// Bytes of entries one answer carries at most (well inside a frame).
const PAGE_BYTES: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Entries older than this are deleted (zero: kept forever).
    pub retention: Duration,
    /// Also append every entry to this file, one JSON object per line.
    pub file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: Duration::from_secs(90 * 86_400),
            file: None,
        }
    }
}

/// What a request acts on, kept until the entry is written.
enum Target {
    None,
    /// `parent/name`.
    Entry(Ino, Vec<u8>),
    Ino(Ino),
    /// A rename: from `parent/name` to `parent/name`.
    Move(Ino, Vec<u8>, Ino, Vec<u8>),
    /// A hard link of an inode as `parent/name`.
    Link(Ino, Ino, Vec<u8>),
}

/// A request as the log describes it.
pub struct Pending {
    /// The request's kind, as metrics count it.
    pub name: &'static str,
    op: Cow<'static, str>,
    target: Target,
    detail: String,
    /// A change or admin action: logged whatever its outcome. Other requests are logged only
    /// when refused.
    logged: bool,
}

impl Pending {
    /// A request refused before it was read (a connection, a bad session).
    pub fn connection(why: &str) -> Pending {
        Pending {
            name: "connect",
            op: "connect".into(),
            target: Target::None,
            detail: why.to_string(),
            logged: true,
        }
    }

    /// The entry a successful lookup or create gives: (parent, name).
    pub fn named(&self) -> Option<(Ino, &[u8])> {
        match &self.target {
            Target::Entry(p, n) => Some((*p, n)),
            _ => None,
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn setattr_op(set: &SetAttr) -> (Cow<'static, str>, String) {
    let mut ops = Vec::new();
    let mut detail = Vec::new();
    if let Some(m) = set.mode {
        ops.push("chmod");
        detail.push(format!("mode={:o}", m & 0o7777));
    }
    if set.uid.is_some() || set.gid.is_some() {
        ops.push("chown");
        if let Some(u) = set.uid {
            detail.push(format!("uid={u}"));
        }
        if let Some(g) = set.gid {
            detail.push(format!("gid={g}"));
        }
    }
    if let Some(s) = set.size {
        ops.push("truncate");
        detail.push(format!("size={s}"));
    }
    if set.atime.is_some() || set.mtime.is_some() {
        ops.push("utimes");
    }
    let op = match ops.as_slice() {
        [] => "setattr".into(),
        [one] => Cow::Borrowed(*one),
        more => more.join("+").into(),
    };
    (op, detail.join(" "))
}

/// How the log names a request, what it acts on, and whether it is always logged.
pub fn describe(req: &MasterRequest) -> Pending {
    use MasterRequest as R;
    let change = |op: &'static str, target: Target, detail: String| Pending {
        name: op,
        op: op.into(),
        target,
        detail,
        logged: true,
    };
    let read = |op: &'static str, target: Target| Pending {
        name: op,
        op: op.into(),
        target,
        detail: String::new(),
        logged: false,
    };
    match req {
        R::Create {
            parent,
            name,
            kind,
            mode,
            ..
        } => {
            let op = match kind {
                FileKind::File => "create",
                FileKind::Dir => "mkdir",
                _ => "mknod",
            };
            change(
                op,
                Target::Entry(*parent, name.clone()),
                format!("mode={:o}", mode & 0o7777),
            )
        }
        R::Symlink {
            parent,
            name,
            target,
            ..
        } => change(
            "symlink",
            Target::Entry(*parent, name.clone()),
            format!("target={}", text(&target[..target.len().min(256)])),
        ),
        R::Link {
            ino, parent, name, ..
        } => change(
            "link",
            Target::Link(*ino, *parent, name.clone()),
            String::new(),
        ),
        R::Unlink { parent, name, .. } => change(
            "unlink",
            Target::Entry(*parent, name.clone()),
            String::new(),
        ),
        R::Rmdir { parent, name, .. } => {
            change("rmdir", Target::Entry(*parent, name.clone()), String::new())
        }
        R::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
            ..
        } => change(
            "rename",
            Target::Move(*parent, name.clone(), *new_parent, new_name.clone()),
            match *flags {
                0 => String::new(),
                f => format!("flags={f}"),
            },
        ),
        R::SetAttr { ino, set, .. } => {
            let (op, detail) = setattr_op(set);
            Pending {
                name: "setattr",
                op,
                target: Target::Ino(*ino),
                detail,
                logged: true,
            }
        }
        R::Commit { ino, size, .. } => change("write", Target::Ino(*ino), format!("size={size}")),
        R::SetXattr {
            ino, name, value, ..
        } if name.starts_with(crate::quota::PREFIX) || name.starts_with(crate::policy::PREFIX) => {
            let op = match name.starts_with(crate::quota::PREFIX) {
                true => "quota-set",
                false => "policy-set",
            };
            let value = text(&value[..value.len().min(256)]);
            change(op, Target::Ino(*ino), format!("{}={value}", text(name)))
        }
        R::SetXattr { ino, name, .. } => change(
            "setxattr",
            Target::Ino(*ino),
            format!("name={}", text(name)),
        ),
        R::RemoveXattr { ino, name } => change(
            "removexattr",
            Target::Ino(*ino),
            format!("name={}", text(name)),
        ),
        R::Merge { ino, .. } => change("merge", Target::Ino(*ino), String::new()),
        R::DropPrivs { ino, .. } => change("drop-privs", Target::Ino(*ino), String::new()),
        R::Replayed { ino, outcome, .. } => change(
            "replay",
            Target::Ino(*ino),
            outcome.chars().take(256).collect(),
        ),
        R::Drain { node, cancel } => change(
            if *cancel { "drain-cancel" } else { "drain" },
            Target::None,
            format!("node={node}"),
        ),
        R::Scrub => change("scrub", Target::None, String::new()),
        R::Repair => change("repair", Target::None, String::new()),
        R::CreateToken {
            role,
            ttl_secs,
            allow_root,
            ..
        } => change(
            "token-create",
            Target::None,
            format!("role={role} ttl={ttl_secs}s allow_root={allow_root}"),
        ),
        R::Credentials => change("credentials-list", Target::None, String::new()),
        R::Revoke { id } => change(
            "credential-revoke",
            Target::None,
            format!("id={}", id.chars().take(128).collect::<String>()),
        ),
        R::Join { host, node, .. } => change(
            "join",
            Target::None,
            match node {
                Some(n) => format!(
                    "host={} node={n}",
                    host.chars().take(128).collect::<String>()
                ),
                None => format!("host={}", host.chars().take(128).collect::<String>()),
            },
        ),
        R::Lookup { parent, name } => read("lookup", Target::Entry(*parent, name.clone())),
        R::GetAttr { ino } => read("getattr", Target::Ino(*ino)),
        R::ReadLink { ino } => read("readlink", Target::Ino(*ino)),
        R::ReadDir { ino, .. } => read("readdir", Target::Ino(*ino)),
        // Audited as a readdir; counted apart in the metrics.
        R::ReadDirNames { ino, .. } => Pending {
            name: "readdir_names",
            ..read("readdir", Target::Ino(*ino))
        },
        R::Open { ino, access, .. } => Pending {
            name: "open",
            op: "open".into(),
            target: Target::Ino(*ino),
            detail: format!("access={access}"),
            logged: false,
        },
        R::GetXattr { ino, .. } => read("getxattr", Target::Ino(*ino)),
        R::ReadInline { ino, .. } => read("read_inline", Target::Ino(*ino)),
        R::ListXattr { ino } => read("listxattr", Target::Ino(*ino)),
        R::History { ino } => read("history", Target::Ino(*ino)),
        R::Close { .. } => read("close", Target::None),
        R::Cluster => read("cluster", Target::None),
        R::StatFs => read("statfs", Target::None),
        R::Nodes => read("nodes", Target::None),
        R::Health => read("health", Target::None),
        R::Recent => read("recent", Target::None),
        R::Audit(_) => read("audit", Target::None),
        R::WebLogin => change("web-login", Target::None, String::new()),
        R::Share(a) => change("share", Target::None, format!("{a:?}")),
        R::StatFsAt { ino } => read("statfs", Target::Ino(*ino)),
        R::DataKeys => read("data-keys", Target::None),
        R::Keys(a) => change("keys", Target::None, format!("{a:?}")),
        R::SessionOpen { .. } | R::SessionRenew { .. } | R::SessionClose { .. } => {
            read("session", Target::None)
        }
        R::SetLock { .. } | R::GetLock { .. } | R::ReleaseLocks { .. } => {
            read("lock", Target::None)
        }
        R::Watch { .. } => read("watch", Target::None),
        R::Place { .. } | R::PlaceMore { .. } => read("place", Target::None),
        R::Register { .. } | R::Heartbeat { .. } | R::ShardsLost { .. } | R::NodeStats { .. } => {
            read("node-report", Target::None)
        }
        R::As { req, .. } => describe(req),
    }
}

/// Who sent a request, as far as the master knows.
pub struct Who<'a> {
    pub peer: &'a Peer,
    pub uid: u32,
    pub gid: u32,
    pub host: String,
}

pub struct AuditLog {
    cfg: AuditConfig,
    file: Option<Mutex<std::fs::File>>,
    seq: AtomicU32,
    /// Paths of directories.
    dirs: Mutex<LruCache<Ino, String>>,
    /// The entry each file was last seen under: (parent, name).
    names: Mutex<LruCache<Ino, (Ino, Vec<u8>)>>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn time_key(ns: u64) -> Vec<u8> {
    let mut k = vec![FAMILY];
    k.extend_from_slice(&ns.to_be_bytes());
    k
}

impl AuditLog {
    pub fn new(cfg: AuditConfig) -> Result<AuditLog, MasterError> {
        let file = match &cfg.file {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| MasterError::Config(format!("audit file {}: {e}", p.display())))?,
            )),
            None => None,
        };
        let cap = NonZeroUsize::new(16_384).expect("non-zero");
        Ok(AuditLog {
            cfg,
            file,
            seq: AtomicU32::new(0),
            dirs: Mutex::new(LruCache::new(cap)),
            names: Mutex::new(LruCache::new(cap)),
        })
    }

    /// Whether a request that ended with `outcome` goes into the log.
    pub fn wants(p: &Pending, outcome: Result<(), &shardfs_common::error::RemoteError>) -> bool {
        p.logged || matches!(outcome, Err(e) if is_refusal(e.code))
    }

    /// A file or directory was seen under `parent/name` (a lookup or create answered).
    pub fn seen(&self, parent: Ino, name: &[u8], ino: Ino) {
        self.names
            .lock()
            .expect("audit names lock")
            .put(ino, (parent, name.to_vec()));
    }

    /// Write the entry of a request that ended with `outcome`.
    pub fn record(
        &self,
        meta: &Meta,
        p: Pending,
        who: Who<'_>,
        outcome: Result<(), &shardfs_common::error::RemoteError>,
    ) {
        let (path, to) = match &p.target {
            Target::None => (String::new(), None),
            Target::Entry(parent, name) => (self.entry_path(meta, *parent, name), None),
            Target::Ino(ino) => (self.ino_path(meta, *ino), None),
            Target::Move(p1, n1, p2, n2) => (
                self.entry_path(meta, *p1, n1),
                Some(self.entry_path(meta, *p2, n2)),
            ),
            Target::Link(ino, parent, name) => (
                self.ino_path(meta, *ino),
                Some(self.entry_path(meta, *parent, name)),
            ),
        };
        if outcome.is_ok() {
            self.after(meta, &p.target);
        }
        let (role, credential) = match &who.peer.who {
            Some(w) => (w.role.to_string(), w.id.clone()),
            None => (String::new(), String::new()),
        };
        let e = AuditEntry {
            time_ns: now_ns(),
            credential,
            role,
            uid: who.uid,
            gid: who.gid,
            host: who.host,
            addr: who.peer.addr.to_string(),
            op: p.op.into_owned(),
            path,
            to,
            detail: p.detail,
            outcome: match outcome {
                Ok(()) => "ok".into(),
                Err(e) => format!("{:?}: {}", e.code, e.message),
            },
            refused: matches!(outcome, Err(e) if is_refusal(e.code)),
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut key = e.time_ns.to_be_bytes().to_vec();
        key.extend_from_slice(&seq.to_be_bytes());
        if let Err(err) = meta.append_record(FAMILY, &key, &e) {
            warn!("cannot write an audit entry ({} {}): {err}", e.op, e.path);
        }
        if let Some(f) = &self.file {
            if let Ok(mut line) = serde_json::to_vec(&e) {
                line.push(b'\n');
                if let Err(err) = f.lock().expect("audit file lock").write_all(&line) {
                    warn!("cannot append to the audit file: {err}");
                }
            }
        }
    }

    /// Keep the path caches true after a change.
    fn after(&self, meta: &Meta, t: &Target) {
        if let Target::Move(_, _, p2, n2) = t {
            match meta.entry(*p2, n2) {
                Ok(Some((_, FileKind::Dir))) | Err(_) => {
                    self.dirs.lock().expect("audit dirs lock").clear();
                    self.names.lock().expect("audit names lock").clear();
                }
                Ok(Some((ino, _))) => self.seen(*p2, n2, ino),
                Ok(None) => {}
            }
        }
    }

    fn entry_path(&self, meta: &Meta, parent: Ino, name: &[u8]) -> String {
        let mut p = self.dir_path(meta, parent);
        if !p.ends_with('/') {
            p.push('/');
        }
        p.push_str(&String::from_utf8_lossy(name));
        p
    }

    /// The path of `ino`: a directory's through its parents, a file's through the entry it
    /// was last seen under (checked), else found in the parent it was created in.
    fn ino_path(&self, meta: &Meta, ino: Ino) -> String {
        if ino == ROOT_INO {
            return "/".into();
        }
        let rec = match meta.inode(ino) {
            Ok(r) => r,
            Err(_) => return format!("<inode {ino}>"),
        };
        if rec.attr.kind == FileKind::Dir {
            return self.dir_path(meta, ino);
        }
        let cached = self
            .names
            .lock()
            .expect("audit names lock")
            .get(&ino)
            .cloned();
        if let Some((parent, name)) = cached {
            if matches!(meta.entry(parent, &name), Ok(Some((i, _))) if i == ino) {
                return self.entry_path(meta, parent, &name);
            }
        }
        match meta.name_in(rec.parent, ino, NAME_SCAN) {
            Ok(Some(name)) => {
                self.seen(rec.parent, &name, ino);
                self.entry_path(meta, rec.parent, &name)
            }
            _ => format!("<inode {ino}>"),
        }
    }

    fn dir_path(&self, meta: &Meta, ino: Ino) -> String {
        if ino == ROOT_INO {
            return "/".into();
        }
        if let Some(p) = self.dirs.lock().expect("audit dirs lock").get(&ino) {
            return p.clone();
        }
        // Up the parent links to the root (or to a cached ancestor), then down again.
        let mut names = Vec::new();
        let mut at = ino;
        let mut base = String::new();
        for _ in 0..4096 {
            if at == ROOT_INO {
                break;
            }
            if let Some(p) = self.dirs.lock().expect("audit dirs lock").get(&at) {
                base = p.clone();
                break;
            }
            let Ok(rec) = meta.inode(at) else {
                return format!("<directory {ino}>");
            };
            match meta.name_in(rec.parent, at, NAME_SCAN) {
                Ok(Some(n)) => names.push(String::from_utf8_lossy(&n).into_owned()),
                _ => return format!("<directory {ino}>"),
            }
            at = rec.parent;
        }
        let mut path = base;
        for n in names.iter().rev() {
            path.push('/');
            path.push_str(n);
        }
        if path.is_empty() {
            path.push('/');
        }
        self.dirs
            .lock()
            .expect("audit dirs lock")
            .put(ino, path.clone());
        path
    }

    /// Entries matching `q`, oldest first, and where to go on if there may be more.
    pub fn query(
        &self,
        meta: &Meta,
        q: &AuditQuery,
    ) -> Result<(Vec<AuditEntry>, Option<Vec<u8>>), MasterError> {
        let start = match &q.after {
            Some(a) if a.len() > AuditQuery::MAX_CURSOR || a.first() != Some(&FAMILY) => {
                return Err(shardfs_common::Error::invalid("not a cursor of this audit log").into())
            }
            Some(a) => {
                let mut s = a.clone();
                s.push(0);
                s
            }
            None => time_key(q.since_ns),
        };
        let limit = q.limit.clamp(1, AuditQuery::MAX_LIMIT) as usize;
        let page = meta.records_from::<AuditEntry>(FAMILY, &start, SCAN_BUDGET)?;
        let scanned_all = page.len() < SCAN_BUDGET;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        for (k, e) in page {
            last = Some(k);
            if !matches_query(&e, q) {
                continue;
            }
            bytes += e.path.len() + e.to.as_ref().map_or(0, String::len) + e.detail.len() + 256;
            out.push(e);
            if out.len() >= limit || bytes >= PAGE_BYTES {
                return Ok((out, last));
            }
        }
        Ok((out, if scanned_all { None } else { last }))
    }

    /// Delete the entries past the retention.
    pub fn prune(&self, meta: &Meta) -> Result<(), MasterError> {
        if self.cfg.retention.is_zero() {
            return Ok(());
        }
        let cutoff = now_ns().saturating_sub(self.cfg.retention.as_nanos() as u64);
        meta.delete_records_below(FAMILY, &time_key(cutoff))
    }

    /// How often to prune: often enough that nothing outlives the retention by much.
    pub fn prune_every(&self) -> Duration {
        (self.cfg.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

/// EACCES and EPERM: the caller's identity or permissions do not allow it.
fn is_refusal(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Access | ErrorCode::Permission)
}

fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn matches_query(e: &AuditEntry, q: &AuditQuery) -> bool {
    if e.time_ns < q.since_ns {
        return false;
    }
    if let Some(p) = &q.path {
        if !under(&e.path, p) && !e.to.as_deref().is_some_and(|t| under(t, p)) {
            return false;
        }
    }
    if let Some(u) = &q.user {
        let mount_user = e.host.split('@').next().unwrap_or("");
        if *u != e.credential && *u != e.uid.to_string() && u != mount_user {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_at_component_boundaries() {
        assert!(under("/a/b", "/a"));
        assert!(under("/a", "/a/"));
        assert!(under("/a/b", "/"));
        assert!(!under("/ab", "/a"));
        assert!(!under("/", "/a"));
    }

    #[test]
    fn setattr_names_what_it_changes() {
        let mut set = SetAttr {
            mode: None,
            uid: Some(5),
            gid: None,
            size: None,
            atime: None,
            mtime: None,
            now: shardfs_common::proto::Timespec::now(),
        };
        assert_eq!(setattr_op(&set), ("chown".into(), "uid=5".into()));
        set.mode = Some(0o100644);
        assert_eq!(setattr_op(&set).0, "chmod+chown");
        assert_eq!(setattr_op(&set).1, "mode=644 uid=5");
    }
}
