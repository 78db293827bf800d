use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use shardfs_master::{run, MasterConfig};
use std::path::PathBuf;
use std::time::Duration;

/// ShardFS master: keeps the namespace and the file → block → shard map in RocksDB.
#[derive(Parser, Debug)]
#[command(name = "shardfs-master", version)]
struct Args {
    /// Directory for the metadata store.
    #[arg(long, env = "SHARDFS_MASTER_DATA")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (port 0: reuse the previous run's port, or pick a free one).
    #[arg(long, env = "SHARDFS_MASTER_LISTEN")]
    listen: Option<String>,
    /// Write the bound address to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Erasure code K+M of a new cluster, e.g. 4+2 (an existing cluster keeps its own).
    #[arg(long, env = "SHARDFS_EC")]
    ec: Option<String>,
    /// Block size in bytes of a new cluster (default 4 MiB).
    #[arg(long)]
    block_size: Option<u64>,
    /// A node silent for this many milliseconds is down.
    #[arg(long, env = "SHARDFS_NODE_TIMEOUT_MS")]
    node_timeout_ms: Option<u64>,
    /// Seconds an unreferenced block is kept before its shards are deleted.
    #[arg(long, env = "SHARDFS_GC_GRACE_SECS")]
    gc_grace_secs: Option<u64>,
    /// Seconds a node stays down before its shards are rebuilt on other nodes (a node back
    /// within this time just catches up).
    #[arg(long, env = "SHARDFS_REPAIR_GRACE_SECS")]
    repair_grace_secs: Option<u64>,
    /// Milliseconds between repair checks.
    #[arg(long, env = "SHARDFS_REPAIR_INTERVAL_MS")]
    repair_interval_ms: Option<u64>,
    /// Blocks rebuilt at once (bounds the load repair puts on the nodes).
    #[arg(long, env = "SHARDFS_REPAIR_PARALLEL")]
    repair_parallel: Option<usize>,
    /// Seconds a shard nothing references must be old before a scrub deletes it (a shard just
    /// uploaded is referenced only once its file commits).
    #[arg(long, env = "SHARDFS_ORPHAN_GRACE_SECS")]
    orphan_grace_secs: Option<u64>,
    /// Move shards between nodes when the fullest node's fill (used / capacity) exceeds the
    /// emptiest one's by more than this percentage of the mean fill (0: never).
    #[arg(long, env = "SHARDFS_REBALANCE_PCT")]
    rebalance_pct: Option<f64>,
    /// Seconds a mount may go without renewing its session before its locks are released and
    /// its open files closed.
    #[arg(long, env = "SHARDFS_SESSION_LEASE_SECS")]
    session_lease_secs: Option<f64>,
    /// Largest merge document kept per text file, in MiB (past it the document is compacted
    /// to the current text; the file's merge log stays).
    #[arg(long, env = "SHARDFS_MERGE_DOC_MIB")]
    merge_doc_mib: Option<u64>,
    /// Seconds a file's small writes must have been quiet before they are sealed into
    /// erasure-coded blocks (0: never seal; small writes then stay as full copies).
    #[arg(long, env = "SHARDFS_SEAL_QUIET_SECS")]
    seal_quiet_secs: Option<u64>,
    /// Most MiB of sealed blocks written per second (0: no limit).
    #[arg(long, env = "SHARDFS_SEAL_MIB_PER_SEC")]
    seal_mib_per_sec: Option<u64>,
    /// Days audit log entries are kept (fractions allowed; 0: forever). Default 90.
    #[arg(long, env = "SHARDFS_AUDIT_RETENTION_DAYS")]
    audit_retention_days: Option<f64>,
    /// Also append every audit entry to this file, one JSON object per line (for log
    /// shippers).
    #[arg(long, env = "SHARDFS_AUDIT_FILE")]
    audit_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: a free one; the bound address
    /// is written to http.addr in the data directory). Default: no HTTP.
    #[arg(long, env = "SHARDFS_MASTER_HTTP")]
    http: Option<String>,
    /// Make a new cluster without encryption at rest (data is encrypted by default; an
    /// existing cluster keeps what it was made with).
    #[arg(long)]
    no_encryption: bool,
    /// fsync the metadata log on every operation.
    #[arg(long)]
    sync: bool,
    /// Threads serving requests (1 to 16). One is fastest: a request then never waits for a
    /// hand-off between threads. Repair, collection and sealing run on a thread of their own
    /// either way.
    #[arg(long, env = "SHARDFS_MASTER_WORKERS")]
    workers: Option<usize>,
    /// Optional TOML file with the same settings.
    #[arg(long, env = "SHARDFS_MASTER_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    ec: Option<String>,
    block_size: Option<u64>,
    node_timeout_ms: Option<u64>,
    gc_grace_secs: Option<u64>,
    repair_grace_secs: Option<u64>,
    repair_interval_ms: Option<u64>,
    repair_parallel: Option<usize>,
    orphan_grace_secs: Option<u64>,
    rebalance_pct: Option<f64>,
    session_lease_secs: Option<f64>,
    merge_doc_mib: Option<u64>,
    seal_quiet_secs: Option<u64>,
    seal_mib_per_sec: Option<u64>,
    audit_retention_days: Option<f64>,
    audit_file: Option<PathBuf>,
    http: Option<String>,
    no_encryption: Option<bool>,
    sync: Option<bool>,
    workers: Option<usize>,
}

fn main() -> std::process::ExitCode {
    shardfs_common::daemon::init("info");
    shardfs_common::daemon::exit("shardfs-master", real_main().map_err(|e| format!("{e:#}")))
}

fn real_main() -> anyhow::Result<()> {
    let a = Args::parse();
    let f: FileConfig = shardfs_common::config::load(a.config.as_deref())?;
    let data_dir = a
        .data_dir
        .or(f.data_dir)
        .context("--data-dir is required")?;
    let listen = a
        .listen
        .or(f.listen)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listen = shardfs_common::net::resolve(&listen)?;
    let ec = a.ec.or(f.ec).unwrap_or_else(|| "4+2".into()).parse()?;
    let block_size = a.block_size.or(f.block_size).unwrap_or(4 << 20);
    if !(4096..=(32 << 20)).contains(&block_size) {
        anyhow::bail!("--block-size must be between 4096 and 33554432 bytes");
    }
    let cfg = MasterConfig {
        data_dir,
        listen,
        addr_file: a.addr_file,
        ec,
        block_size,
        node_timeout: Duration::from_millis(
            a.node_timeout_ms.or(f.node_timeout_ms).unwrap_or(5000),
        ),
        gc_grace: Duration::from_secs(a.gc_grace_secs.or(f.gc_grace_secs).unwrap_or(60)),
        gc_interval: Duration::from_secs(2),
        repair: shardfs_master::repair::RepairConfig {
            grace: Duration::from_secs(a.repair_grace_secs.or(f.repair_grace_secs).unwrap_or(300)),
            interval: Duration::from_millis(
                a.repair_interval_ms
                    .or(f.repair_interval_ms)
                    .unwrap_or(5000)
                    .max(50),
            ),
            parallel: a.repair_parallel.or(f.repair_parallel).unwrap_or(4).max(1),
            orphan_grace: Duration::from_secs(
                a.orphan_grace_secs.or(f.orphan_grace_secs).unwrap_or(3600),
            ),
            rebalance_threshold: a.rebalance_pct.or(f.rebalance_pct).unwrap_or(10.0).max(0.0)
                / 100.0,
        },
        session_lease: {
            let secs = a
                .session_lease_secs
                .or(f.session_lease_secs)
                .unwrap_or(10.0);
            if !(1.0..=3600.0).contains(&secs) {
                anyhow::bail!("--session-lease-secs must be between 1 and 3600");
            }
            Duration::from_secs_f64(secs)
        },
        merge_doc_max: {
            let mib = a.merge_doc_mib.or(f.merge_doc_mib).unwrap_or(16);
            if !(1..=1024).contains(&mib) {
                anyhow::bail!("--merge-doc-mib must be between 1 and 1024");
            }
            (mib << 20) as usize
        },
        seal: {
            let quiet = a.seal_quiet_secs.or(f.seal_quiet_secs).unwrap_or(300);
            let rate = a.seal_mib_per_sec.or(f.seal_mib_per_sec).unwrap_or(64);
            if quiet > 30 * 86_400 || rate > 1 << 20 {
                anyhow::bail!("--seal-quiet-secs is at most 2592000 (30 days), --seal-mib-per-sec at most 1048576");
            }
            shardfs_master::seal::SealConfig {
                quiet: Duration::from_secs(quiet),
                interval: Duration::from_secs(quiet.clamp(1, 30)),
                rate: rate << 20,
            }
        },
        audit: {
            let days = a
                .audit_retention_days
                .or(f.audit_retention_days)
                .unwrap_or(90.0);
            if !(0.0..=36_500.0).contains(&days) {
                anyhow::bail!("--audit-retention-days must be between 0 and 36500");
            }
            shardfs_master::audit::AuditConfig {
                retention: Duration::from_secs_f64(days * 86_400.0),
                file: a.audit_file.or(f.audit_file),
            }
        },
        http: a
            .http
            .or(f.http)
            .map(|h| shardfs_common::net::resolve(&h))
            .transpose()?,
        encrypt: !(a.no_encryption || f.no_encryption.unwrap_or(false)),
        sync: a.sync || f.sync.unwrap_or(false),
    };
    let workers = a.workers.or(f.workers).unwrap_or(1);
    if !(1..=16).contains(&workers) {
        anyhow::bail!("--workers must be between 1 and 16");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(async move { run(cfg, shardfs_common::daemon::shutdown_signal()).await })?;
    Ok(())
}
