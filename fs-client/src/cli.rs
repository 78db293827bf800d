//! The command line of `shardfs`: its subcommands, their flags, and the optional TOML file
//! of a mount's settings.

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::path::PathBuf;
/// ShardFS: mount an erasure-coded cluster as a local directory.
#[derive(Parser, Debug)]
#[command(name = "shardfs", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Mount a cluster at MOUNTPOINT (in the background unless --foreground).
    Mount(Box<MountArgs>),
    /// Unmount a ShardFS mount.
    Umount {
        /// The mounted directory.
        mountpoint: PathBuf,
    },
    /// Show the cluster's nodes (state, reason, capacity) and the durability of its blocks.
    Status {
        /// Master address HOST:PORT, or a file holding it (e.g. .shardfs/master.addr).
        #[arg(env = "SHARDFS_MASTER")]
        master: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cred: AdminCred,
    },
    /// Have every node verify all its shards now; lost shards are queued for repair.
    Scrub {
        /// Master address HOST:PORT, or a file holding it.
        #[arg(env = "SHARDFS_MASTER")]
        master: String,
        /// Then wait until every repairable block is repaired.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit status 1).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cred: AdminCred,
    },
    /// Manage storage nodes: drain one (move all its shards away) or cancel a drain.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Show who changed a file concurrently with whom: its merges, conflicted copies and
    /// replayed offline changes, oldest first.
    History {
        /// A file on a mounted ShardFS.
        file: PathBuf,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Look for degraded blocks now and wait, with a progress bar, until they are repaired.
    Repair {
        /// Master address HOST:PORT, or a file holding it.
        #[arg(env = "SHARDFS_MASTER")]
        master: String,
        /// Give up after this many seconds (exit status 1).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        cred: AdminCred,
    },
    /// Make one-time join tokens, with which nodes and mounts get their credentials.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// The cluster's credentials (its device list): list them, revoke one.
    Credentials {
        #[command(subcommand)]
        cmd: CredCmd,
    },
    /// The audit log: every namespace change, admin action and refused request, with who
    /// (credential, uid, host), when, the path and the outcome; oldest first.
    Audit {
        /// Master address HOST:PORT, or a file holding it.
        #[arg(env = "SHARDFS_MASTER")]
        master: String,
        /// Entries from this time on: 2026-12-02T07:00:00Z, 2026-12-02 (UTC), unix seconds,
        /// or a time ago (90s, 15m, 2h, 7d). Default: everything kept.
        #[arg(long)]
        since: Option<String>,
        /// Only entries about this path or below it (as seen from the cluster's root, e.g.
        /// /projects/a; a rename counts for both of its paths).
        #[arg(long)]
        path: Option<String>,
        /// Only entries of this credential id, uid, or mount user name.
        #[arg(long)]
        user: Option<String>,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cred: AdminCred,
    },
    /// The cluster's data keys (encryption at rest): list the epochs, rotate to a new key,
    /// rewrite every file under the current key, drop an epoch no block uses any more.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// A live view of the cluster, one line per second: data read and written on the nodes,
    /// node requests, metadata operations and their latency, nodes up, repair.
    Top {
        /// Master address file (the launcher's, with http.addr beside it), or HOST:PORT.
        #[arg(env = "SHARDFS_MASTER")]
        master: String,
        /// The master's metrics address (its --http), if not beside the address file.
        #[arg(long)]
        http: Option<String>,
        /// Seconds between lines.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many lines (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Quotas: bytes and inodes per directory (over its subtree) or per uid (cluster-wide).
    /// Writes and creates past one fail with EDQUOT; `df` of a directory under one shows it.
    Quota {
        #[command(subcommand)]
        cmd: QuotaCmd,
    },
    /// Print a one-time link that signs a browser in to the web UI (browse, preview,
    /// download, upload, cluster page), acting as --uid (default: you) with what the
    /// credential allows. The master must serve HTTP (`shardfs-master --http ADDR`).
    Web {
        /// Master address HOST:PORT, or a file holding it.
        #[arg(env = "SHARDFS_MASTER")]
        master: String,
        #[command(flatten)]
        who: UserCred,
    },
    /// Public links to files and directories (through the master's HTTP address): they
    /// download the file, or a zip of the directory, without credentials until they expire
    /// or are revoked. Password tries are limited per client and per link.
    Share {
        #[command(subcommand)]
        cmd: ShareCmd,
    },
    /// Storage policies of directories and files on a mount: how their data is stored.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Every key epoch, the current one, and how many stored blocks use each.
    List {
        /// Master address HOST:PORT, or a file holding it.
        master: String,
        #[command(flatten)]
        cred: AdminCred,
    },
    /// Make a new current key: data written from now on is encrypted under it (mounts and
    /// nodes learn it within seconds); old data stays readable.
    Rotate {
        master: String,
        #[command(flatten)]
        cred: AdminCred,
    },
    /// Rewrite every file under the current key (in the background, by the sealing loop).
    Rekey {
        master: String,
        /// Wait, with a progress bar, until no block uses an older key.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit status 1).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        cred: AdminCred,
    },
    /// Forget the key of an epoch; refused while a stored block uses it.
    Drop {
        master: String,
        epoch: u32,
        #[command(flatten)]
        cred: AdminCred,
    },
}

#[derive(Subcommand, Debug)]
pub enum QuotaCmd {
    /// Set the quota of a directory, or with --uid of a user (root only). Limits not given
    /// keep their value; 0 is no limit.
    Set {
        /// A directory on a mounted ShardFS (with --uid: any path on the mount, default .).
        path: Option<PathBuf>,
        /// The user whose files, anywhere in the cluster, the quota counts.
        #[arg(long)]
        uid: Option<u32>,
        /// Most bytes (file sizes), e.g. 8M, 10GiB, 1048576.
        #[arg(long)]
        bytes: Option<String>,
        /// Most inodes (files, directories, links).
        #[arg(long)]
        inodes: Option<u64>,
        /// Remove the quota.
        #[arg(long, conflicts_with_all = ["bytes", "inodes"])]
        clear: bool,
    },
    /// Show a quota: its limits and what is used.
    Get {
        /// A directory on a mounted ShardFS (with --uid: any path on the mount, default .).
        path: Option<PathBuf>,
        #[arg(long)]
        uid: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Show the policy of a file or directory (the cluster's code unless one was set).
    Get {
        /// A file or directory on a mounted ShardFS.
        path: PathBuf,
    },
    /// Set the policy of a directory (inherited by what is created in it from now on) or of a
    /// file (its data is rewritten): ec:K+M (K data + M parity shards on K+M distinct nodes),
    /// replica:N (N full copies on N nodes), or default (the cluster's code).
    Set {
        /// A file or directory on a mounted ShardFS (you must own it, or be root).
        path: PathBuf,
        /// ec:K+M, replica:N or default.
        policy: String,
    },
    /// Give everything under a directory the directory's policy, and rewrite its existing data
    /// in that code in the background.
    Apply {
        /// A directory on a mounted ShardFS.
        dir: PathBuf,
        /// Wait, with a progress bar, until the data is rewritten.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit status 1).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
}

/// The admin credential a command shows the master.
#[derive(Args, Debug)]
pub struct AdminCred {
    /// Admin credential file (default: admin.cred beside a MASTER address file, else
    /// ~/.config/shardfs/admin.cred).
    #[arg(long, env = "SHARDFS_ADMIN_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Print a one-time token: `shardfs-node --token T` or `shardfs mount --token T` use it.
    Create {
        /// Master address HOST:PORT, or a file holding it.
        master: String,
        /// What the credential bought with it may do: node, client or admin.
        #[arg(long)]
        role: String,
        /// Seconds the token stays usable.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// A client credential that may act as root (otherwise root is squashed to nobody).
        #[arg(long)]
        allow_root: bool,
        /// The uids a client credential may act as, e.g. `1000-1999,3000` (default: any).
        #[arg(long, value_name = "RANGES")]
        uids: Option<shardfs_common::proto::IdRanges>,
        /// The gids a client credential may act as (default: any); other supplementary
        /// groups of a caller count for nothing.
        #[arg(long, value_name = "RANGES")]
        gids: Option<shardfs_common::proto::IdRanges>,
        #[command(flatten)]
        cred: AdminCred,
    },
}

#[derive(Subcommand, Debug)]
pub enum CredCmd {
    /// Every credential: id, role, host, created, last seen, revoked.
    List {
        /// Master address HOST:PORT, or a file holding it.
        master: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cred: AdminCred,
    },
    /// Exchange a one-time token for a credential on this host, without mounting.
    Join {
        /// Master address HOST:PORT, or a file holding it.
        master: String,
        /// The token (from `shardfs token create`).
        #[arg(long, env = "SHARDFS_TOKEN")]
        token: String,
        /// Where to keep the credential (default: client.cred beside a MASTER address file,
        /// else ~/.config/shardfs/client.cred).
        #[arg(long, env = "SHARDFS_CREDENTIALS")]
        credentials: Option<PathBuf>,
    },
    /// Revoke a credential: the master and every node refuse it from now on.
    Revoke {
        /// Master address HOST:PORT, or a file holding it.
        master: String,
        /// Credential id, as `shardfs credentials list` shows it.
        id: String,
        #[command(flatten)]
        cred: AdminCred,
    },
}

/// Who a command acts as, and with which credential.
#[derive(Args, Debug)]
pub struct UserCred {
    /// The user it acts as (default: the user running this).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Its group (default: the group running this).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Client or admin credential (default: client.cred beside a MASTER address file, else
    /// ~/.config/shardfs/client.cred).
    #[arg(long, env = "SHARDFS_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ShareCmd {
    /// Print a new public link to the file or directory at PATH (from the cluster's root,
    /// e.g. /docs/report.pdf); it reads as --uid, which must be able to read it. A directory's
    /// link downloads a zip of what --uid may read under it at the time of the download.
    Create {
        /// Master address HOST:PORT, or a file holding it.
        master: String,
        path: String,
        /// Seconds the link works (default a day; at most a year).
        #[arg(long, default_value_t = 86_400)]
        expires: u64,
        /// A download asks for a password: SHARDFS_SHARE_PASSWORD if set, else asked for on
        /// the terminal, else the first line of standard input.
        #[arg(long)]
        password: bool,
        #[command(flatten)]
        who: UserCred,
    },
    /// The links --uid made with this credential (an admin credential: everyone's).
    List {
        /// Master address HOST:PORT, or a file holding it.
        master: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        who: UserCred,
    },
    /// End a link (by the id `list` shows).
    Revoke {
        /// Master address HOST:PORT, or a file holding it.
        master: String,
        id: String,
        #[command(flatten)]
        who: UserCred,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Move every shard off node ID (it takes no new ones); then it can be stopped and removed.
    Drain {
        /// Master address HOST:PORT, or a file holding it.
        master: String,
        /// Node id, as `shardfs status` shows it.
        id: String,
        /// Wait until the node holds no shards, with a progress bar.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit status 1).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Stop draining: the node takes shards again.
        #[arg(long)]
        cancel: bool,
        #[command(flatten)]
        cred: AdminCred,
    },
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Master address HOST:PORT, or a file holding it (e.g. .shardfs/master.addr).
    pub master: String,
    /// Existing empty directory to mount on.
    pub mountpoint: PathBuf,
    /// This mount's credential (default: client.cred beside a MASTER address file, else
    /// ~/.config/shardfs/client.cred). With --token, it is made there first.
    #[arg(long, env = "SHARDFS_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
    /// One-time join token (from `shardfs token create MASTER --role client`): exchanged for
    /// a credential kept at --credentials, if none is there yet.
    #[arg(long, env = "SHARDFS_TOKEN")]
    pub token: Option<String>,
    /// Stay in the foreground instead of detaching.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Seconds after which an operation that cannot reach the cluster fails (ETIMEDOUT/EIO).
    #[arg(long, env = "SHARDFS_TIMEOUT")]
    pub timeout: Option<f64>,
    /// Seconds the kernel may cache attributes and names.
    #[arg(long, env = "SHARDFS_ATTR_TTL")]
    pub attr_ttl: Option<f64>,
    /// MiB of decoded blocks to cache in memory.
    #[arg(long, env = "SHARDFS_CACHE_MIB")]
    pub cache_mib: Option<usize>,
    /// Blocks to read ahead for sequential readers.
    #[arg(long)]
    pub readahead_blocks: Option<usize>,
    /// Blocks uploading at once.
    #[arg(long)]
    pub upload_window: Option<usize>,
    /// MiB of writes one open file may hold in memory before they are stored (without
    /// waiting for close or fsync). Default 64.
    #[arg(long)]
    pub dirty_mib: Option<usize>,
    /// Small writes of a flush that come to at most this many KiB travel inside the commit
    /// to the master (an inline piece, one round trip) instead of being stored on m + 1
    /// nodes first; sealing moves them onto the nodes later. 0: never. Default and most: 64.
    #[arg(long, env = "SHARDFS_INLINE_KIB")]
    pub inline_kib: Option<usize>,
    /// Milliseconds to wait for data shards before also asking parity nodes.
    #[arg(long)]
    pub hedge_ms: Option<u64>,
    /// Threads serving the mount's network I/O (hashing, coding and encryption run on a
    /// pool of their own). One is fastest for programs that wait on each operation in
    /// turn: every hand-over between threads is a wakeup. Default 1, most 16.
    #[arg(long, env = "SHARDFS_MOUNT_WORKERS")]
    pub workers: Option<usize>,
    /// Text files (UTF-8) up to this size changed on two mounts at once are merged; larger
    /// ones, other files, and files with the attribute user.shardfs.merge=off get a
    /// conflicted copy instead (0: never merge).
    #[arg(long, env = "SHARDFS_MERGE_MAX_BYTES")]
    pub merge_max_bytes: Option<u64>,
    /// Directory for changes made while the master is unreachable (default:
    /// ~/.cache/shardfs/journal/<mountpoint>); they are replayed when it answers again, or at
    /// the next mount of the same mountpoint.
    #[arg(long, env = "SHARDFS_JOURNAL_DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Size cap of the offline journal in MiB (0: no offline writes); past it, closing a
    /// changed file fails with "no space".
    #[arg(long, env = "SHARDFS_JOURNAL_MIB")]
    pub journal_mib: Option<u64>,
    /// Log file of the background mount (default: /tmp/shardfs-mount-<pid>.log).
    #[arg(long, env = "SHARDFS_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Mount options, comma separated: ro, allow_other, default_permissions, credentials=PATH.
    #[arg(short = 'o')]
    pub options: Vec<String>,
    /// Optional TOML file with the same settings.
    #[arg(long, env = "SHARDFS_CLIENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Write the mount process's pid to this file once mounted.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Serve this mount's Prometheus metrics at http://ADDR/metrics (port 0: a free one).
    /// Default: no HTTP, and no metrics kept.
    #[arg(long, env = "SHARDFS_MOUNT_HTTP")]
    pub http: Option<String>,
    /// Write the bound metrics address to this file.
    #[arg(long, requires = "http")]
    pub http_addr_file: Option<PathBuf>,
    /// Internal: tell the launching process when the mount is ready.
    #[arg(long, hide = true)]
    pub notify_ready: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub credentials: Option<PathBuf>,
    pub timeout: Option<f64>,
    pub attr_ttl: Option<f64>,
    pub cache_mib: Option<usize>,
    pub readahead_blocks: Option<usize>,
    pub upload_window: Option<usize>,
    pub dirty_mib: Option<usize>,
    pub inline_kib: Option<usize>,
    pub hedge_ms: Option<u64>,
    pub workers: Option<usize>,
    pub merge_max_bytes: Option<u64>,
    pub journal_dir: Option<PathBuf>,
    pub journal_mib: Option<u64>,
    pub options: Option<Vec<String>>,
}
