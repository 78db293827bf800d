use anyhow::{bail, Context};
mod admin;
mod cli;
mod keys;
mod quota;
mod share;
mod top;

use clap::Parser;
use cli::{
    AdminCred, Cli, Cmd, CredCmd, FileConfig, KeysCmd, MountArgs, NodeCmd, PolicyCmd, QuotaCmd,
    TokenCmd,
};
use shardfs_client::core::{Core, CoreConfig};
use shardfs_client::fuse::ShardFs;
use shardfs_client::kmount;
use shardfs_common::pki::Credential;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    shardfs_common::daemon::init("warn,shardfs_client=info,shardfs=info");
    let cli = match fstab_helper_args() {
        Some(args) => Cli::parse_from(args),
        None => Cli::parse(),
    };
    let r = match cli.cmd {
        Cmd::Mount(a) => mount(*a),
        Cmd::Umount { mountpoint } => umount(&mountpoint),
        Cmd::Status { master, json, cred } => {
            remote(&master, cred).and_then(|r| admin::status(&r, json))
        }
        Cmd::Scrub {
            master,
            wait,
            timeout,
            json,
            cred,
        } => remote(&master, cred).and_then(|r| admin::scrub(&r, wait, timeout, json)),
        Cmd::Node {
            cmd:
                NodeCmd::Drain {
                    master,
                    id,
                    wait,
                    timeout,
                    cancel,
                    cred,
                },
        } => remote(&master, cred).and_then(|r| admin::drain(&r, &id, wait, timeout, cancel)),
        Cmd::History { file, json } => admin::history(&file, json),
        Cmd::Repair {
            master,
            timeout,
            cred,
        } => remote(&master, cred).and_then(|r| admin::repair(&r, timeout)),
        Cmd::Token {
            cmd:
                TokenCmd::Create {
                    master,
                    role,
                    ttl,
                    allow_root,
                    uids,
                    gids,
                    cred,
                },
        } => {
            let users = shardfs_common::proto::Users {
                uids: uids.unwrap_or_default(),
                gids: gids.unwrap_or_default(),
            };
            remote(&master, cred)
                .and_then(|r| admin::create_token(&r, &role, ttl, allow_root, users))
        }
        Cmd::Credentials {
            cmd: CredCmd::List { master, json, cred },
        } => remote(&master, cred).and_then(|r| admin::list_credentials(&r, json)),
        Cmd::Credentials {
            cmd:
                CredCmd::Join {
                    master,
                    token,
                    credentials,
                },
        } => join(&master, &token, credentials),
        Cmd::Credentials {
            cmd: CredCmd::Revoke { master, id, cred },
        } => remote(&master, cred).and_then(|r| admin::revoke(&r, &id)),
        Cmd::Audit {
            master,
            since,
            path,
            user,
            json,
            cred,
        } => since
            .as_deref()
            .map_or(Ok(0), admin::parse_since)
            .and_then(|since| {
                remote(&master, cred).and_then(|r| admin::audit(&r, since, path, user, json))
            }),
        Cmd::Top {
            master,
            http,
            interval,
            count,
        } => {
            if !(0.1..=3600.0).contains(&interval) {
                Err(anyhow::anyhow!(
                    "--interval must be between 0.1 and 3600 seconds"
                ))
            } else {
                top::http_addr(&master, http)
                    .and_then(|a| top::run(&a, Duration::from_secs_f64(interval), count))
            }
        }
        Cmd::Keys { cmd } => match cmd {
            KeysCmd::List { master, cred } => {
                remote(&master, cred).and_then(|r| keys::run(&r, keys::Ask::List))
            }
            KeysCmd::Rotate { master, cred } => {
                remote(&master, cred).and_then(|r| keys::run(&r, keys::Ask::Rotate))
            }
            KeysCmd::Rekey {
                master,
                wait,
                timeout,
                cred,
            } => remote(&master, cred)
                .and_then(|r| keys::run(&r, keys::Ask::Rekey { wait, timeout })),
            KeysCmd::Drop {
                master,
                epoch,
                cred,
            } => remote(&master, cred).and_then(|r| keys::run(&r, keys::Ask::Drop(epoch))),
        },
        Cmd::Quota { cmd } => match cmd {
            QuotaCmd::Set {
                path,
                uid,
                bytes,
                inodes,
                clear,
            } => quota::set(path, uid, bytes, inodes, clear),
            QuotaCmd::Get { path, uid, json } => quota::get(path, uid, json),
        },
        Cmd::Web { master, who } => {
            share::remote_as(&master, who).and_then(|(to, caller)| admin::web_login(&to, caller))
        }
        Cmd::Share { cmd } => share::run(cmd),
        Cmd::Policy { cmd } => match cmd {
            PolicyCmd::Get { path } => admin::policy_get(&path),
            PolicyCmd::Set { path, policy } => admin::policy_set(&path, &policy),
            PolicyCmd::Apply { dir, wait, timeout } => admin::policy_apply(&dir, wait, timeout),
        },
    };
    shardfs_common::daemon::exit("shardfs", r.map_err(|e| format!("{e:#}")))
}

/// The master an admin command names, and the admin credential to show it.
fn remote(master: &str, cred: AdminCred) -> anyhow::Result<admin::Remote> {
    Ok(admin::Remote {
        addr: master_addr(master)?,
        cred: Arc::new(credential_path(master, cred.credentials, "admin.cred")?),
    })
}

/// Where a credential is: the path given, else `name` beside a master address file (where the
/// launcher keeps them), else in ~/.config/shardfs.
fn credential_path(master: &str, given: Option<PathBuf>, name: &str) -> anyhow::Result<Credential> {
    let path = given.unwrap_or_else(|| default_credential(master, name));
    Ok(Credential::load(&path)?)
}

fn default_credential(master: &str, name: &str) -> PathBuf {
    let p = Path::new(master);
    if p.is_file() {
        let beside = p.parent().unwrap_or(Path::new(".")).join(name);
        if beside.exists() {
            return beside;
        }
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".config/shardfs").join(name)
}

/// `shardfs credentials join`: a credential bought with a token, kept at its path.
fn join(master_arg: &str, token: &str, path: Option<PathBuf>) -> anyhow::Result<()> {
    let master = master_addr(master_arg)?;
    let path = path.unwrap_or_else(|| default_credential(master_arg, "client.cred"));
    if path.exists() {
        bail!(
            "{} already holds a credential (remove it first)",
            path.display()
        );
    }
    mount_credential(master, master_arg, Some(path), Some(token)).map(|_| ())
}

/// The mount's credential: the one at its path, or (with a token and none there yet) a new one
/// bought with the token and kept there.
fn mount_credential(
    master: SocketAddr,
    master_arg: &str,
    path: Option<PathBuf>,
    token: Option<&str>,
) -> anyhow::Result<Credential> {
    let path = path.unwrap_or_else(|| default_credential(master_arg, "client.cred"));
    if path.exists() || token.is_none() {
        return Ok(Credential::load(&path)?);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = token.unwrap_or_default();
    let cred = rt
        .block_on(shardfs_common::join::join(
            master,
            token,
            None,
            Duration::from_secs(10),
        ))
        .with_context(|| format!("cannot join the cluster at {master}"))?;
    cred.save(&path)?;
    eprintln!(
        "joined as {}; credential kept at {}",
        cred.identity,
        path.display()
    );
    Ok(cred)
}

/// A master address, or a file that holds one.
/// Called as `mount.fuse.shardfs` (a link to this binary, the helper mount(8) runs for
/// `fuse.shardfs` entries in /etc/fstab): `mount.fuse.shardfs MASTER DIR [-o OPTS] [-n] [-v]…`
/// becomes `shardfs mount MASTER DIR -o OPTS`.
fn fstab_helper_args() -> Option<Vec<String>> {
    let mut args = std::env::args();
    let prog = args.next()?;
    if !Path::new(&prog)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("mount.fuse.shardfs"))
    {
        return None;
    }
    let mut out = vec!["shardfs".to_string(), "mount".to_string()];
    let mut rest = args.peekable();
    while let Some(a) = rest.next() {
        match a.as_str() {
            // mount(8) flags that mean nothing here: no mtab, verbose, fake, sloppy.
            "-n" | "-v" | "-f" | "-s" => {}
            "-o" => {
                if let Some(o) = rest.next() {
                    out.push("-o".into());
                    out.push(o);
                }
            }
            "-t" => {
                rest.next();
            }
            _ => out.push(a),
        }
    }
    Some(out)
}

fn master_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let p = Path::new(s);
    let text = if !s.contains(':') || p.is_file() {
        std::fs::read_to_string(p).with_context(|| {
            format!("{s:?} is neither HOST:PORT nor a readable file holding the master's address")
        })?
    } else {
        s.to_string()
    };
    Ok(shardfs_common::net::resolve(text.trim())?)
}

fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mountpoint.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let tail = l.split(" - ").nth(1).unwrap_or("");
        let mut t = tail.split(' ');
        let (fstype, source) = (t.next().unwrap_or(""), t.next().unwrap_or(""));
        f.len() > 4 && f[4] == want && fstype.starts_with("fuse") && source.starts_with("shardfs")
    })
}

fn mount(a: MountArgs) -> anyhow::Result<()> {
    let f: FileConfig = shardfs_common::config::load(a.config.as_deref())?;
    let mut opts: Vec<String> = f.options.unwrap_or_default();
    for o in &a.options {
        opts.extend(o.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    if opts.iter().any(|o| o == "remount") {
        // `mount -o remount,ro DIR` (through the mount.fuse.shardfs helper).
        let mountpoint = std::fs::canonicalize(&a.mountpoint)
            .with_context(|| format!("{} does not exist", a.mountpoint.display()))?;
        if !is_mounted(&mountpoint) {
            bail!("{} is not a ShardFS mount", mountpoint.display());
        }
        let ro = opts
            .iter()
            .rev()
            .find(|o| *o == "ro" || *o == "rw")
            .is_some_and(|o| o == "ro");
        return kmount::remount(&mountpoint, ro)
            .with_context(|| format!("cannot remount {}", mountpoint.display()));
    }
    let master = master_addr(&a.master)?;
    let md = std::fs::metadata(&a.mountpoint)
        .with_context(|| format!("mountpoint {} does not exist", a.mountpoint.display()))?;
    if !md.is_dir() {
        bail!("mountpoint {} is not a directory", a.mountpoint.display());
    }
    let mountpoint = std::fs::canonicalize(&a.mountpoint)?;
    if is_mounted(&mountpoint) {
        bail!("{} is already a ShardFS mount", mountpoint.display());
    }
    let timeout = a.timeout.or(f.timeout).unwrap_or(15.0);
    if !(timeout > 0.0 && timeout < 86_400.0) {
        bail!("--timeout must be between 0 and 86400 seconds");
    }
    let mut mount_opts = vec![
        fuser::MountOption::FSName(format!("shardfs@{master}")),
        fuser::MountOption::Subtype("shardfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    for o in &opts {
        mount_opts.push(match o.as_str() {
            "ro" => fuser::MountOption::RO,
            "rw" => fuser::MountOption::RW,
            "allow_other" => fuser::MountOption::AllowOther,
            "allow_root" => fuser::MountOption::AllowRoot,
            "default_permissions" => fuser::MountOption::DefaultPermissions,
            "noatime" => fuser::MountOption::NoAtime,
            "_netdev" | "defaults" | "nofail" | "auto" | "noauto" | "user" | "nouser" => continue,
            o if o.starts_with("credentials=") => continue,
            other => bail!("unknown mount option {other:?} (known: ro, rw, allow_other, allow_root, default_permissions)"),
        });
    }
    let dirty_mib = a.dirty_mib.or(f.dirty_mib).unwrap_or(64);
    if !(1..=4096).contains(&dirty_mib) {
        bail!("--dirty-mib {dirty_mib}: give 1 to 4096 (MiB of writes per open file in memory)");
    }
    let workers = a.workers.or(f.workers).unwrap_or(1);
    if !(1..=16).contains(&workers) {
        bail!("--workers {workers}: give 1 to 16 (threads serving the mount's network I/O)");
    }
    let inline_kib = a.inline_kib.or(f.inline_kib).unwrap_or(64);
    if inline_kib > shardfs_common::proto::INLINE_MAX >> 10 {
        bail!(
            "--inline-kib {inline_kib}: give 0 to {} (KiB of small writes carried in a commit)",
            shardfs_common::proto::INLINE_MAX >> 10
        );
    }
    // fstab entries name the credential as an option: credentials=PATH.
    let opt_cred = opts
        .iter()
        .find_map(|o| o.strip_prefix("credentials="))
        .map(PathBuf::from);
    let credential = Arc::new(mount_credential(
        master,
        &a.master,
        a.credentials.clone().or(opt_cred).or(f.credentials.clone()),
        a.token.as_deref(),
    )?);

    let ttl = Duration::from_secs_f64(a.attr_ttl.or(f.attr_ttl).unwrap_or(1.0).clamp(0.0, 3600.0));
    let cfg = CoreConfig {
        attr_ttl: ttl,
        shared: false,
        master,
        credential,
        timeout: Duration::from_secs_f64(timeout),
        connect_timeout: Duration::from_secs_f64(timeout.min(5.0)),
        cache_bytes: a.cache_mib.or(f.cache_mib).unwrap_or(256) << 20,
        readahead_blocks: a.readahead_blocks.or(f.readahead_blocks).unwrap_or(4),
        upload_window: a.upload_window.or(f.upload_window).unwrap_or(8),
        merge_max_bytes: a.merge_max_bytes.or(f.merge_max_bytes).unwrap_or(4 << 20),
        journal_bytes: a.journal_mib.or(f.journal_mib).unwrap_or(256) << 20,
        journal_dir: match a.journal_mib.or(f.journal_mib) {
            Some(0) => None,
            _ => Some(
                a.journal_dir
                    .clone()
                    .or(f.journal_dir.clone())
                    .unwrap_or_else(|| {
                        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                        PathBuf::from(home).join(".cache/shardfs/journal")
                    })
                    .join(
                        mountpoint
                            .to_string_lossy()
                            .trim_start_matches('/')
                            .replace('/', "_"),
                    ),
            ),
        },
        dirty_limit: dirty_mib << 20,
        inline_max: inline_kib << 10,
        hedge_delay: Duration::from_millis(a.hedge_ms.or(f.hedge_ms).unwrap_or(500)),
        shard_timeout: Duration::from_secs_f64(timeout.min(10.0)),
    };

    if !opts.iter().any(|o| o == "allow_root")
        && unsafe { libc::geteuid() } == 0
        && !opts.iter().any(|o| o == "allow_other")
    {
        mount_opts.push(fuser::MountOption::AllowOther);
    }

    if !a.foreground {
        // Check the master before detaching, so a wrong address fails here, with a message.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(Core::connect(cfg.clone()))
            .with_context(|| format!("cannot reach the master at {master}"))?
            .shutdown();
        return spawn_background(&a, &mountpoint);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let core = rt
        .block_on(Core::connect(cfg))
        .with_context(|| format!("cannot reach the master at {master}"))?;
    rt.block_on(core.start_session(mountpoint.display().to_string()))
        .with_context(|| format!("cannot open a session with the master at {master}"))?;
    core.start_replay();
    if let Some(h) = &a.http {
        let addr = shardfs_common::net::resolve(h)?;
        // Served for as long as the process lives.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        std::mem::forget(stop);
        let file = a.http_addr_file.as_deref();
        let bound = rt.block_on(shardfs_common::metrics::serve(
            addr,
            file,
            Arc::new(|| {}),
            axum::Router::new(),
            stopped,
        ))?;
        tracing::info!(%bound, "metrics served at http://{bound}/metrics");
    }
    let fs = ShardFs::new(core.clone(), rt.handle().clone(), ttl);
    // As root the mount is made here, typed fuse.shardfs (see kmount); otherwise the FUSE
    // library mounts through fusermount3.
    let own_mount = unsafe { libc::geteuid() } == 0;
    let mut session = if own_mount {
        let ko = kmount::KernelOptions {
            read_only: mount_opts.contains(&fuser::MountOption::RO),
            allow_other: mount_opts.contains(&fuser::MountOption::AllowOther),
            default_permissions: true,
        };
        let fd = kmount::mount(&mountpoint, &format!("shardfs@{master}"), &ko)
            .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
        let acl = if ko.allow_other {
            fuser::SessionACL::All
        } else {
            fuser::SessionACL::RootAndOwner
        };
        fuser::Session::from_fd(fs, fd, acl)
    } else {
        fuser::Session::new(fs, &mountpoint, &mount_opts)
            .with_context(|| format!("cannot mount on {}", mountpoint.display()))?
    };
    core.set_notifier(session.notifier());
    tracing::info!(mountpoint = %mountpoint.display(), %master, "mounted");
    if let Some(p) = &a.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", p.display()))?;
    }
    if a.notify_ready {
        let mut out = std::io::stdout();
        writeln!(out, "READY")?;
        out.flush()?;
        // Nothing more goes to the launcher: point stdout at /dev/null.
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        use std::os::fd::AsRawFd;
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("signal handler");
        let mut hup = signal(SignalKind::hangup()).expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received, unmounting {}", mp.display());
        let r = if own_mount {
            kmount::unmount(&mp, false)
        } else {
            unmounter.unmount()
        };
        if let Err(e) = r {
            tracing::warn!("unmount failed: {e}; trying lazy unmount");
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
    });
    session.run().context("FUSE session failed")?;
    drop(session);
    rt.block_on(core.end_session());
    core.shutdown();
    tracing::info!("unmounted");
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

fn spawn_background(a: &MountArgs, mountpoint: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let log = a
        .log_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/shardfs-mount-{}.log", std::process::id())));
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open log file {}", log.display()))?;
    // The same command line (as `shardfs mount …` when called as the fstab helper).
    let mut args: Vec<String> = fstab_helper_args()
        .unwrap_or_else(|| std::env::args().collect())
        .into_iter()
        .skip(1)
        .collect();
    args.push("--foreground".into());
    args.push("--notify-ready".into());
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(logf));
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the mount process")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.trim() == "READY" => {
                println!(
                    "mounted ShardFS at {} (log: {}); unmount with: shardfs umount {}",
                    mountpoint.display(),
                    log.display(),
                    mountpoint.display()
                );
                return Ok(());
            }
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("mount failed:\n{}", tail.join("\n"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!(
                        "mount did not become ready within 60 s (log: {})",
                        log.display()
                    );
                }
            }
        }
    }
}

fn umount(mountpoint: &Path) -> anyhow::Result<()> {
    let mp = std::fs::canonicalize(mountpoint)
        .or_else(|_| std::path::absolute(mountpoint))
        .with_context(|| format!("{} does not exist", mountpoint.display()))?;
    if !is_mounted(&mp) {
        bail!("{} is not a ShardFS mount", mp.display());
    }
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg(&mp)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        || Command::new("umount")
            .arg(&mp)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !ok {
        bail!(
            "could not unmount {} (is a file on it still open? `fuser -vm {}` shows who uses it)",
            mp.display(),
            mp.display()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(&mp) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn human(b: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
