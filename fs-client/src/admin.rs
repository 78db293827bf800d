//! Cluster administration from the command line: status, scrub, repair.

use anyhow::{bail, Context};
use shardfs_client::master::MasterClient;
use shardfs_common::pki::{Credential, Role};
use shardfs_common::proto::{Health, MasterRequest, MasterResponse, NodeInfo, NodeState, Users};
use shardfs_common::NodeId;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::human;

/// The master an admin command talks to, and the credential it shows.
pub struct Remote {
    pub addr: SocketAddr,
    pub cred: Arc<Credential>,
}

pub(crate) fn client(to: &Remote, timeout: Duration) -> anyhow::Result<MasterClient> {
    Ok(MasterClient::new(
        to.addr,
        &to.cred,
        Duration::from_secs(5),
        timeout,
    )?)
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A progress bar on stderr: an indicatif bar redrawn in place on a terminal, one line per
/// change otherwise (logs, CI, tests).
pub(crate) struct Progress {
    label: &'static str,
    unit: &'static str,
    bar: Option<indicatif::ProgressBar>,
    first: Option<u64>,
    last: String,
}

impl Progress {
    pub(crate) fn new(label: &'static str, unit: &'static str) -> Self {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(&format!(
                "{label} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{msg}} ({{elapsed}})"
            ))
            .expect("progress template")
            .progress_chars("#>-");
            b.set_style(style);
            b
        });
        Progress {
            label,
            unit,
            bar,
            first: None,
            last: String::new(),
        }
    }

    /// Draw with `left` units still to do (the first call sets the total) and a detail text.
    pub(crate) fn draw(&mut self, left: u64, detail: &str) {
        let total = *self.first.get_or_insert(left.max(1));
        let done = total.saturating_sub(left);
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
            b.set_message(detail.to_string());
            return;
        }
        let fill = (done as usize * 30 / total as usize).min(30);
        let line = format!(
            "{} [{}{}] {done}/{total} {}, {detail}",
            self.label,
            "#".repeat(fill),
            "-".repeat(30 - fill),
            self.unit
        );
        if line != self.last {
            eprintln!("{line}");
        }
        self.last = line;
    }

    /// Draw the bar full: `total` units done.
    pub(crate) fn done(&mut self, total: u64, detail: &str) {
        self.first = Some(total.max(1));
        self.draw(0, detail);
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            if self.first.is_some() {
                b.finish();
            } else {
                b.finish_and_clear();
            }
        }
    }
}

async fn health(mc: &MasterClient) -> anyhow::Result<Health> {
    match mc.call(MasterRequest::Health).await? {
        MasterResponse::Health(h) => Ok(h),
        other => bail!("unexpected answer from the master: {other:?}"),
    }
}

pub fn status(to: &Remote, json: bool) -> anyhow::Result<()> {
    let addr = to.addr;
    let (c, nodes, h, recent) = runtime()?
        .block_on(async {
            let mc = client(to, Duration::from_secs(5))?;
            let c = mc.call(MasterRequest::Cluster).await?;
            let n = mc.call(MasterRequest::Nodes).await?;
            let h = health(&mc).await?;
            let recent = match mc.call(MasterRequest::Recent).await? {
                MasterResponse::History(r) => r,
                _ => Vec::new(),
            };
            mc.close();
            anyhow::Ok((c, n, h, recent))
        })
        .with_context(|| format!("cannot reach the master at {addr}"))?;
    let (MasterResponse::Cluster(c), MasterResponse::Nodes(nodes)) = (c, nodes) else {
        bail!("unexpected answer from the master");
    };
    let up = nodes.iter().filter(|n| n.state != NodeState::Down).count();
    if json {
        // Node ids as users see them (16 hex digits), not as numbers.
        let nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                let mut v = serde_json::to_value(n).unwrap_or_default();
                v["id"] = serde_json::Value::String(n.id.to_string());
                v
            })
            .collect();
        let v = serde_json::json!({
            "master": addr.to_string(),
            "cluster": format!("{:016x}", c.cluster_id),
            "ec": c.ec.to_string(),
            "block_size": c.block_size,
            "nodes_up": up,
            "nodes": nodes,
            "health": h,
            "recent_changes": recent,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "master {addr}  cluster {:016x}  code {}  block {} KiB  nodes {up}/{} up",
        c.cluster_id,
        c.ec,
        c.block_size >> 10,
        nodes.len()
    );
    println!(
        "{:<18} {:<22} {:<8} {:>10} {:>10} {:>10} {:>8}  REASON",
        "NODE", "ADDRESS", "STATE", "USED", "FREE", "CAPACITY", "SHARDS"
    );
    for n in &nodes {
        print_node(n);
    }
    println!("{}", describe(&h));
    if !recent.is_empty() {
        println!("recent concurrent changes (merges, conflicted copies, offline replays):");
        for e in recent.iter().rev().take(10).rev() {
            println!("  {}  inode {}  {}  {}", when(e.time), e.ino, e.who, e.what);
        }
    }
    Ok(())
}

/// "YYYY-MM-DD HH:MM:SS" (UTC) of unix seconds.
fn when(secs: u64) -> String {
    let date = shardfs_common::proto::civil_date(secs as i64);
    let t = secs % 86_400;
    format!("{date} {:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

/// Extended attribute `name` of `file`.
pub(crate) fn get_xattr(file: &std::path::Path, name: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(file.as_os_str().as_bytes())?;
    let name = std::ffi::CString::new(name)?;
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Set extended attribute `name` of `file` to `value`.
pub(crate) fn set_xattr(file: &std::path::Path, name: &[u8], value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(file.as_os_str().as_bytes())?;
    let name = std::ffi::CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and `value` is readable for its length.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Fail unless `path` is on a ShardFS mount: a FUSE file system that answers the storage
/// policy attribute of every inode.
pub(crate) fn check_shardfs(path: &std::path::Path) -> anyhow::Result<()> {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is NUL-terminated and `s` is a writable statfs.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("{}: {e}", path.display());
    }
    if s.f_type as i64 != FUSE_SUPER_MAGIC || get_xattr(path, POLICY).is_err() {
        bail!("{} is not on a ShardFS mount", path.display());
    }
    Ok(())
}

fn not_shardfs(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP))
}

/// `shardfs policy get PATH`: the storage policy of a file or directory.
pub fn policy_get(path: &std::path::Path) -> anyhow::Result<()> {
    match get_xattr(path, POLICY) {
        Ok(v) => {
            println!("{}", String::from_utf8_lossy(&v));
            Ok(())
        }
        Err(e) if not_shardfs(&e) => bail!("{} is not on a ShardFS mount", path.display()),
        Err(e) => bail!("cannot read the policy of {}: {e}", path.display()),
    }
}

/// `shardfs policy set PATH POLICY`.
pub fn policy_set(path: &std::path::Path, policy: &str) -> anyhow::Result<()> {
    let code = match policy {
        "default" => None,
        p => Some(shardfs_common::ec::EcParams::parse_policy(p)?),
    };
    check_shardfs(path)?;
    match set_xattr(path, POLICY, policy.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => bail!(
            "cannot set {policy} on {}: it needs {} distinct nodes, the cluster has fewer",
            path.display(),
            code.map_or(0, |c| c.total())
        ),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => bail!(
            "cannot set the policy of {}: only its owner or root may",
            path.display()
        ),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            bail!("{} is not on a ShardFS mount", path.display())
        }
        Err(e) => bail!("cannot set the policy of {}: {e}", path.display()),
    }
}

/// `shardfs policy apply DIR`: give everything under DIR its policy and have existing data
/// rewritten; with `wait`, until no file in the cluster waits for rewriting.
pub fn policy_apply(dir: &std::path::Path, wait: bool, timeout: u64) -> anyhow::Result<()> {
    let pending = || -> anyhow::Result<u64> {
        let v = get_xattr(dir, PENDING)
            .with_context(|| format!("cannot follow the rewriting under {}", dir.display()))?;
        Ok(String::from_utf8_lossy(&v).trim().parse()?)
    };
    match set_xattr(dir, APPLY, b"1") {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            bail!("{} is not on a ShardFS mount", dir.display())
        }
        Err(e) => bail!("cannot apply the policy of {}: {e}", dir.display()),
    }
    if !wait {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut bar = Progress::new("policy apply", "files");
    loop {
        let left = pending()?;
        bar.draw(left, "rewritten in the new code");
        if left == 0 {
            bar.finish();
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{left} files not rewritten yet after {timeout} s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

const POLICY: &[u8] = shardfs_client::core::POLICY_XATTR;
const APPLY: &[u8] = b"user.shardfs.policy.apply";
const PENDING: &[u8] = b"user.shardfs.policy.pending";

/// `shardfs history FILE`: the file's merge history, which its mount serves as an attribute.
pub fn history(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let buf = match get_xattr(file, shardfs_client::core::HISTORY_XATTR) {
        Ok(b) => b,
        Err(e) if not_shardfs(&e) => bail!("{} is not a file on a ShardFS mount", file.display()),
        Err(e) => bail!("cannot read the history of {}: {e}", file.display()),
    };
    let text = String::from_utf8_lossy(&buf);
    if json {
        print!("{text}");
        return Ok(());
    }
    if text.trim().is_empty() {
        println!("{}: no concurrent changes recorded", file.display());
        return Ok(());
    }
    println!("{:<20} {:>8}  {:<24} WHAT", "TIME (UTC)", "VERSION", "WHO");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        println!(
            "{:<20} {:>8}  {:<24} {}",
            when(v["time"].as_u64().unwrap_or(0)),
            v["version"].as_u64().unwrap_or(0),
            v["who"].as_str().unwrap_or("?"),
            v["what"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn print_node(n: &NodeInfo) {
    println!(
        "{:<18} {:<22} {:<8} {:>10} {:>10} {:>10} {:>8}  {}",
        n.id.to_string(),
        n.addr,
        n.state.to_string(),
        human(n.used),
        human(n.free),
        human(n.capacity),
        n.shards,
        n.reason
    );
}

fn describe(h: &Health) -> String {
    let scanned = match h.scanned_ms_ago {
        Some(ms) => format!("checked {:.0} s ago", ms as f64 / 1000.0),
        None => "not checked yet".into(),
    };
    let mut s = format!(
        "blocks {}: {} degraded ({} shards to rebuild), {} unrecoverable; {scanned}",
        h.blocks, h.degraded, h.missing_shards, h.unrecoverable
    );
    if h.repaired_shards > 0 || h.repair_failures > 0 {
        s.push_str(&format!(
            "\nrepaired {} shards ({}) since the master started, {} attempts failed and retried",
            h.repaired_shards,
            human(h.repaired_bytes),
            h.repair_failures
        ));
    }
    if h.unsealed_files > 0 || h.sealed_slots > 0 || h.seal_failures > 0 {
        s.push_str(&format!(
            "\nsmall writes: {} files not sealed yet; {} slots sealed ({}) since the master started, {} seals failed and retried",
            h.unsealed_files,
            h.sealed_slots,
            human(h.sealed_bytes),
            h.seal_failures
        ));
    }
    if h.inline_pieces > 0 {
        s.push_str(&format!(
            "\ninline pieces in the master: {} ({})",
            h.inline_pieces,
            human(h.inline_bytes)
        ));
    }
    s
}

pub fn scrub(to: &Remote, wait: bool, timeout: u64, json: bool) -> anyhow::Result<()> {
    let addr = to.addr;
    let rt = runtime()?;
    let report = rt
        .block_on(async {
            // A scrub reads every shard of every node: allow it the whole timeout.
            let mc = client(to, Duration::from_secs(timeout.max(1)))?;
            let scrub = mc.call(MasterRequest::Scrub);
            tokio::pin!(scrub);
            // Progress from the master's health while the scrub runs.
            let mut bar = Progress::new("scrub", "shards");
            let r = loop {
                tokio::select! {
                    r = &mut scrub => break r?,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        if let Ok(h) = health(&mc).await {
                            if h.scrub_total > 0 {
                                let left = h.scrub_total.saturating_sub(h.scrub_checked);
                                bar.draw(left, "verified by their nodes");
                            }
                        }
                    }
                }
            };
            if let MasterResponse::Scrubbed(rep) = &r {
                bar.done(rep.checked, "verified by their nodes");
            }
            bar.finish();
            mc.close();
            anyhow::Ok(r)
        })
        .with_context(|| format!("scrub through the master at {addr} failed"))?;
    let MasterResponse::Scrubbed(r) = report else {
        bail!("unexpected answer from the master: {report:?}");
    };
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "scrubbed {} nodes: {} shards checked, {} corrupt, {} missing, {} orphans",
            r.nodes, r.checked, r.corrupt, r.missing, r.orphans
        );
        for e in &r.errors {
            println!("  not scrubbed: {e}");
        }
    }
    if wait && r.corrupt + r.missing > 0 {
        repair(to, timeout)?;
    }
    if !r.errors.is_empty() {
        bail!("{} nodes could not be scrubbed", r.errors.len());
    }
    Ok(())
}

/// Ask for a repair pass and wait until no repairable block is left, drawing progress.
pub fn repair(to: &Remote, timeout: u64) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let mc = client(to, Duration::from_secs(10))?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(timeout);
        mc.call(MasterRequest::Repair).await?;
        let mut bar = Progress::new("repair", "shards");
        loop {
            let h = health(&mc).await?;
            // Only a scan that ran after the request counts.
            let fresh = h
                .scanned_ms_ago
                .is_some_and(|ms| Duration::from_millis(ms) < started.elapsed());
            if fresh {
                bar.draw(
                    h.missing_shards,
                    &format!(
                        "{} degraded blocks left, {} rebuilt",
                        h.degraded,
                        human(h.repaired_bytes)
                    ),
                );
                if h.degraded == h.unrecoverable {
                    bar.finish();
                    mc.close();
                    if h.unrecoverable > 0 {
                        bail!(
                            "{} blocks cannot be repaired now: fewer than k of their shards are readable",
                            h.unrecoverable
                        );
                    }
                    println!("{}", describe(&h));
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                mc.close();
                bail!("repair not finished after {timeout} s: {}", describe(&h));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// Start (or cancel) draining a node; with `wait`, until it holds no shards.
pub fn drain(to: &Remote, id: &str, wait: bool, timeout: u64, cancel: bool) -> anyhow::Result<()> {
    let node: NodeId = id.parse()?;
    runtime()?.block_on(async {
        let mc = client(to, Duration::from_secs(10))?;
        match mc.call(MasterRequest::Drain { node, cancel }).await? {
            MasterResponse::Ok => {}
            other => bail!("unexpected answer from the master: {other:?}"),
        }
        if cancel {
            println!("node {node}: drain cancelled");
            return Ok(());
        }
        println!("node {node}: draining");
        if !wait {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut bar = Progress::new("drain", "shards");
        loop {
            let n = match mc.call(MasterRequest::Nodes).await? {
                MasterResponse::Nodes(list) => list.into_iter().find(|n| n.id == node),
                other => bail!("unexpected answer from the master: {other:?}"),
            };
            let Some(n) = n else { bail!("node {node} is no longer known") };
            if n.last_seen_ms.is_none() {
                // The master restarted and has not heard from the node yet: its shard count
                // is from before.
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            if n.state == NodeState::Down {
                bail!("node {node} went down while draining ({}); its shards will be rebuilt after the repair grace", n.reason);
            }
            bar.draw(n.shards, &format!("{} left to move", human(n.used)));
            if n.shards == 0 {
                bar.finish();
                println!("node {node} holds no shards: it can be stopped");
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("drain of {node} not finished after {timeout} s: {} shards left", n.shards);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

pub fn create_token(
    to: &Remote,
    role: &str,
    ttl: u64,
    allow_root: bool,
    users: Users,
) -> anyhow::Result<()> {
    let Some(role) = Role::parse(role).filter(|r| *r != Role::Master) else {
        bail!("--role must be node, client or admin (not {role:?})");
    };
    if allow_root && role != Role::Client {
        bail!("--allow-root is for client tokens");
    }
    if !users.is_any() && role != Role::Client {
        bail!("--uids and --gids are for client tokens");
    }
    let answer = runtime()?.block_on(async {
        let mc = client(to, Duration::from_secs(10))?;
        let r = mc
            .call(MasterRequest::CreateToken {
                role,
                ttl_secs: ttl,
                allow_root,
                users,
            })
            .await;
        mc.close();
        anyhow::Ok(r?)
    })?;
    match answer {
        MasterResponse::Token { token, expires } => {
            println!("{token}");
            eprintln!("one-time {role} token, valid until {}", when(expires));
            Ok(())
        }
        other => bail!("unexpected answer from the master: {other:?}"),
    }
}

pub fn list_credentials(to: &Remote, json: bool) -> anyhow::Result<()> {
    let answer = runtime()?.block_on(async {
        let mc = client(to, Duration::from_secs(10))?;
        let r = mc.call(MasterRequest::Credentials).await;
        mc.close();
        anyhow::Ok(r?)
    })?;
    let MasterResponse::Credentials(list) = answer else {
        bail!("unexpected answer from the master: {answer:?}");
    };
    let mut out = std::io::stdout().lock();
    if json {
        for c in &list {
            let v = serde_json::json!({
                "id": c.id, "role": c.role.as_str(), "host": c.host, "created": c.created,
                "last_seen": c.last_seen, "revoked": c.revoked, "allow_root": c.allow_root,
                "uids": c.users.uids.to_string(), "gids": c.users.gids.to_string(),
            });
            writeln!(out, "{v}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<7} {:<20} {:<22} {:<22} state",
        "id", "role", "host", "created", "last seen"
    )?;
    for c in &list {
        let seen = match c.last_seen {
            0 => "never (since restart)".to_string(),
            t => when(t),
        };
        let mut state = match (c.revoked, c.allow_root) {
            (true, _) => "revoked".to_string(),
            (false, true) => "active (root allowed)".to_string(),
            (false, false) => "active".to_string(),
        };
        if !c.users.is_any() {
            state += &format!(" uids {} gids {}", c.users.uids, c.users.gids);
        }
        writeln!(
            out,
            "{:<24} {:<7} {:<20} {:<22} {:<22} {state}",
            c.id,
            c.role.as_str(),
            c.host,
            when(c.created),
            seen
        )?;
    }
    Ok(())
}

pub fn revoke(to: &Remote, id: &str) -> anyhow::Result<()> {
    let answer = runtime()?.block_on(async {
        let mc = client(to, Duration::from_secs(10))?;
        let r = mc.call(MasterRequest::Revoke { id: id.to_string() }).await;
        mc.close();
        anyhow::Ok(r?)
    })?;
    match answer {
        MasterResponse::Ok => {
            println!("credential {id} revoked");
            Ok(())
        }
        other => bail!("unexpected answer from the master: {other:?}"),
    }
}

/// Unix nanoseconds of a `--since` value: an RFC 3339 time (`2026-12-02T07:00:00Z`), a date
/// (`2026-12-02`, UTC), unix seconds, or a time ago (`90s`, `15m`, `2h`, `7d`).
pub fn parse_since(s: &str) -> anyhow::Result<u64> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    if let Some((n, unit)) = s
        .find(|c: char| !c.is_ascii_digit())
        .filter(|&i| i > 0 && s.len() - i == 1)
        .map(|i| s.split_at(i))
    {
        let n: u64 = n.parse()?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            _ => bail!("--since {s:?}: a time ago ends in s, m, h or d"),
        };
        return Ok(now.saturating_sub(secs.saturating_mul(1_000_000_000)));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return Ok(s.parse::<u64>()?.saturating_mul(1_000_000_000));
    }
    let full = match s.len() {
        10 => format!("{s}T00:00:00Z"),
        19 => format!("{}Z", s.replacen(' ', "T", 1)),
        _ => s.replacen(' ', "T", 1),
    };
    let t = time::OffsetDateTime::parse(&full, &Rfc3339).with_context(|| {
        format!("--since {s:?}: give a time like 2026-12-02T07:00:00Z, a date, unix seconds or 2h")
    })?;
    Ok(u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0))
}

/// `shardfs audit`: the audit log's entries that match, oldest first.
pub fn audit(
    to: &Remote,
    since_ns: u64,
    path: Option<String>,
    user: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let mut query = shardfs_common::proto::AuditQuery {
        since_ns,
        path,
        user,
        after: None,
        limit: shardfs_common::proto::AuditQuery::MAX_LIMIT,
    };
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:<23} {:<12} {:<26} {:>5} {:<20} {:<8} path",
            "time (UTC)", "op", "credential", "uid", "host", "outcome"
        )?;
    }
    runtime()?.block_on(async {
        let mc = client(to, Duration::from_secs(30))?;
        let r = async {
            loop {
                let answer = mc.call(MasterRequest::Audit(query.clone())).await?;
                let MasterResponse::Audit { entries, next } = answer else {
                    bail!("unexpected answer from the master: {answer:?}");
                };
                for e in &entries {
                    print_audit_entry(&mut out, e, json)?;
                }
                match next {
                    Some(n) => query.after = Some(n),
                    None => return Ok(()),
                }
            }
        }
        .await;
        mc.close();
        r
    })
}

fn print_audit_entry(
    out: &mut impl Write,
    e: &shardfs_common::proto::AuditEntry,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(e)?;
        v["time"] = serde_json::Value::String(rfc3339(e.time_ns));
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let outcome = match (e.outcome.as_str(), e.refused) {
        ("ok", _) => "ok",
        (_, true) => "REFUSED",
        _ => "failed",
    };
    let mut path = e.path.clone();
    if let Some(t) = &e.to {
        path += &format!(" -> {t}");
    }
    if !e.detail.is_empty() {
        path += &format!("  ({})", e.detail);
    }
    if outcome != "ok" {
        path += &format!("  [{}]", e.outcome);
    }
    writeln!(
        out,
        "{}.{:03} {:<12} {:<26} {:>5} {:<20} {:<8} {path}",
        when(e.time_ns / 1_000_000_000),
        e.time_ns / 1_000_000 % 1000,
        e.op,
        e.credential,
        e.uid,
        e.host,
        outcome
    )?;
    Ok(())
}

/// RFC 3339 (UTC, milliseconds) of unix nanoseconds.
fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let t = when(secs).replacen(' ', "T", 1);
    format!("{t}.{:03}Z", ns / 1_000_000 % 1000)
}

/// One request to the master made for `caller` (wrapped in `As`), with `timeout`.
pub(crate) fn call_as(
    to: &Remote,
    caller: shardfs_common::proto::Caller,
    req: MasterRequest,
    timeout: Duration,
) -> anyhow::Result<MasterResponse> {
    let req = MasterRequest::As {
        caller,
        req: Box::new(req),
    };
    runtime()?.block_on(async {
        let mc = client(to, timeout)?;
        let r = mc.call(req).await;
        mc.close();
        anyhow::Ok(r?)
    })
}

/// Ask the master for a web sign-in link acting as `caller`, and print it.
pub fn web_login(to: &Remote, caller: shardfs_common::proto::Caller) -> anyhow::Result<()> {
    let answer = call_as(to, caller, MasterRequest::WebLogin, Duration::from_secs(10))
        .with_context(|| format!("no sign-in link from the master at {}", to.addr))?;
    match answer {
        MasterResponse::WebLogin { url, expires } => {
            println!("{url}");
            eprintln!(
                "open it in a browser within {} minutes; it works once",
                expires
                    .saturating_sub(shardfs_common::proto::Timespec::now().secs as u64)
                    .div_ceil(60)
            );
            Ok(())
        }
        other => bail!("unexpected answer from the master: {other:?}"),
    }
}
