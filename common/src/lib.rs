//! Shared vocabulary of ShardFS: what crosses the wire and what every part agrees on.
//!
//! The client (`shardfs`), the master (`shardfs-master`) and the storage nodes (`shardfs-node`)
//! talk over QUIC. Every request is one bidirectional stream carrying one frame each way: a small
//! fixed prefix, a postcard-encoded header (one request/response enum per service, see
//! [`proto`]), then the bulk bytes (shard data) streamed after it. [`wire`] does the framing with a
//! size limit on every read, [`net`] builds the QUIC endpoints, [`ec`] wraps the Reed–Solomon code
//! that turns one block into k data + m parity shards, [`extent`] holds the extent maps of small
//! writes laid over a block, and [`error`] holds the error type and the one place where errors
//! become errnos.

pub mod cap;
pub mod config;
pub mod crypt;
pub mod daemon;
pub mod dial;
pub mod ec;
pub mod error;
pub mod extent;
pub mod ids;
pub mod join;
pub mod locks;
pub mod metrics;
pub mod net;
pub mod pki;
pub mod proto;
pub mod wire;

pub use error::{Error, ErrorCode, RemoteError, Result};
pub use ids::{BlockId, IdMap, IdSet, Ino, NodeId};

/// Root directory inode number, as FUSE expects.
pub const ROOT_INO: Ino = 1;

/// Keep freed buffers for reuse instead of returning them to the kernel: shard and block
/// buffers are megabytes each, and mapping fresh pages for every one costs page faults and
/// zeroing on the data path.
pub fn tune_allocator() {
    // SAFETY: mallopt only adjusts glibc allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
