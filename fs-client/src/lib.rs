//! `shardfs`: the ShardFS client. It mounts a cluster as a local directory through FUSE and
//! carries the `umount` and `status` commands.
//!
//! A POSIX call arrives in [`fuse`], which hands it to the async [`core`] and returns at once.
//! The core asks the master ([`master`]) for names, attributes and block maps, keeps writes into
//! part of a stored block apart and stores them as replicated pieces ([`pieces`]), and moves block
//! content through [`blocks`]: erasure-coded shards to and from the storage nodes over QUIC,
//! with a byte-bounded LRU cache of decoded blocks and read-ahead for sequential readers. The
//! mount's [`session`] with the master keeps its open files and advisory locks known there.
//! [`health`] tracks how each storage node is doing (adaptive deadlines, circuit breakers) and
//! [`upload`] decides, for a block being stored, which shards go to another node.

pub mod blocks;
pub mod core;
pub mod fuse;
pub mod health;
pub mod kmount;
pub mod master;
pub mod offline;
pub mod pieces;
pub mod session;
pub mod upload;
