use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use shardfs_node::{run, NodeConfig};
use std::path::PathBuf;
use std::time::Duration;

/// ShardFS storage node: keeps erasure-coded shards on local disk and serves them over QUIC.
#[derive(Parser, Debug)]
#[command(name = "shardfs-node", version)]
struct Args {
    /// Directory for this node's shards and identity.
    #[arg(long, env = "SHARDFS_NODE_DATA")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (port 0: reuse the previous run's port, or pick a free one).
    #[arg(long, env = "SHARDFS_NODE_LISTEN")]
    listen: Option<String>,
    /// Address clients use to reach this node, if not the listen address.
    #[arg(long, env = "SHARDFS_NODE_ADVERTISE")]
    advertise: Option<String>,
    /// The master's address, HOST:PORT.
    #[arg(long, env = "SHARDFS_MASTER")]
    master: Option<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "SHARDFS_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Offer at most this many bytes (default: the disk's free space).
    #[arg(long, env = "SHARDFS_NODE_CAPACITY")]
    capacity: Option<u64>,
    /// Bytes of the disk to keep free.
    #[arg(long, env = "SHARDFS_NODE_RESERVE")]
    reserve: Option<u64>,
    /// Background scrub rate in MiB/s: every shard is re-verified at about this pace, pass after
    /// pass (0: no background scrub; `shardfs scrub` still works).
    #[arg(long, env = "SHARDFS_SCRUB_MIB")]
    scrub_mib: Option<u64>,
    /// Seconds between two background scrub passes.
    #[arg(long, env = "SHARDFS_SCRUB_INTERVAL_SECS")]
    scrub_interval_secs: Option<u64>,
    /// One-time join token (from `shardfs token create MASTER --role node`), needed on the
    /// first start only: the credential it buys is kept in the data directory.
    #[arg(long, env = "SHARDFS_NODE_TOKEN")]
    token: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: a free one; the bound address
    /// is written to http.addr in the data directory). Default: no HTTP.
    #[arg(long, env = "SHARDFS_NODE_HTTP")]
    http: Option<String>,
    /// Threads serving the network (1 to 64). Disk reads and writes, hashing and coding run on
    /// a pool of their own either way; one network thread is fastest for small requests (no
    /// hand-off between threads on the way in and out), more help a node that must encrypt
    /// many GiB/s of QUIC traffic.
    #[arg(long, env = "SHARDFS_NODE_WORKERS")]
    workers: Option<usize>,
    /// Optional TOML file with the same settings (data_dir, listen, master, …).
    #[arg(long, env = "SHARDFS_NODE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertise: Option<String>,
    master: Option<String>,
    heartbeat_ms: Option<u64>,
    capacity: Option<u64>,
    reserve: Option<u64>,
    scrub_mib: Option<u64>,
    scrub_interval_secs: Option<u64>,
    token: Option<String>,
    http: Option<String>,
    workers: Option<usize>,
}

fn main() -> std::process::ExitCode {
    shardfs_common::daemon::init("info");
    shardfs_common::daemon::exit("shardfs-node", real_main().map_err(|e| format!("{e:#}")))
}

fn real_main() -> anyhow::Result<()> {
    let a = Args::parse();
    let f: FileConfig = shardfs_common::config::load(a.config.as_deref())?;
    let data_dir = a
        .data_dir
        .or(f.data_dir)
        .context("--data-dir is required")?;
    let master = a
        .master
        .or(f.master)
        .context("--master HOST:PORT is required")?;
    let master = shardfs_common::net::resolve(&master)?;
    let listen = a
        .listen
        .or(f.listen)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listen = shardfs_common::net::resolve(&listen)?;
    let cfg = NodeConfig {
        data_dir,
        listen,
        advertise: a.advertise.or(f.advertise),
        master,
        heartbeat: Duration::from_millis(a.heartbeat_ms.or(f.heartbeat_ms).unwrap_or(1000).max(10)),
        capacity: a.capacity.or(f.capacity),
        reserve: a.reserve.or(f.reserve).unwrap_or(64 << 20),
        token: a.token.or(f.token),
        scrub_rate: a.scrub_mib.or(f.scrub_mib).unwrap_or(8) << 20,
        scrub_interval: Duration::from_secs(
            a.scrub_interval_secs
                .or(f.scrub_interval_secs)
                .unwrap_or(24 * 3600),
        ),
        http: a
            .http
            .or(f.http)
            .map(|h| shardfs_common::net::resolve(&h))
            .transpose()?,
    };
    let workers = a.workers.or(f.workers).unwrap_or(1);
    if !(1..=64).contains(&workers) {
        anyhow::bail!("--workers must be between 1 and 64");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(async move { run(cfg, shardfs_common::daemon::shutdown_signal()).await })?;
    Ok(())
}
