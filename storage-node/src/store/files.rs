//! Shard files: where each lives, how one is written, and bringing them in line with an
//! earlier run's journal.

use super::*;

/// Where shard files live and how one is written.
pub(super) struct Files {
    pub(super) root: PathBuf,
    pub(super) tmp_seq: AtomicU64,
}

impl Files {
    pub(super) fn path(&self, block: &BlockId, index: u8) -> PathBuf {
        let hex = block.to_hex();
        self.root
            .join("shards")
            .join(&hex[..2])
            .join(format!("{hex}.{index}"))
    }

    /// Write shard `index` of `block` to `path` through a temp file and rename it into place;
    /// with `durable`, the file and its directory are fsynced (so it is there after a crash).
    pub(super) fn write(
        &self,
        block: &BlockId,
        index: u8,
        hash: &[u8; 32],
        shard: &mut ShardBuf,
        path: &Path,
        durable: bool,
    ) -> Result<(), NodeError> {
        let len = shard.len;
        let dir = path.parent().expect("shard path has a parent");
        fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{index}.{seq}", block.to_hex()));
        shard.set_header(&shard_header(len, hash));
        // Not fsynced: a lost or torn sums file only makes range reads verify the whole shard.
        if len >= sums::MIN_CONTENT {
            let sums_path = sums_path(path);
            let tmp_sums = tmp.with_extension(format!("{seq}.sum"));
            let written = fs::write(&tmp_sums, sums::encode(shard.data(), hash))
                .and_then(|()| fs::rename(&tmp_sums, &sums_path));
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp_sums);
                tracing::warn!(shard = %path.display(), "chunk sums not written: {e}");
            }
        }
        let write = || -> std::io::Result<()> {
            // Large shards bypass the page cache (O_DIRECT, padded to whole pages): the copy
            // into the cache is the node's largest CPU cost on the write path, and the bytes
            // are not read back soon. Small shards are written plainly, without padding.
            let direct = if len >= DIRECT_MIN {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&tmp)
                    .ok()
            } else {
                None
            };
            let (mut f, bytes) = match direct {
                Some(f) => (f, shard.all()),
                None => (
                    OpenOptions::new().write(true).create_new(true).open(&tmp)?,
                    &shard.all()[..HEADER_LEN + len],
                ),
            };
            f.write_all(bytes)?;
            if durable {
                f.sync_data()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(NodeError::io(&tmp, e));
        }
        fs::rename(&tmp, path).map_err(|e| NodeError::io(path, e))?;
        if durable {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| NodeError::io(dir, e))?;
        }
        Ok(())
    }

    /// Bring the shard files in line with what an earlier run's journal recorded (shards
    /// acknowledged but maybe not on disk, deletions), durably; then remove the journal.
    pub(super) fn replay(&self) -> Result<usize, NodeError> {
        let records = journal::leftover(&self.root)?;
        let mut fixed = 0usize;
        for ((block, index), rec) in journal::final_states(records) {
            let path = self.path(&block, index);
            match rec.kind {
                journal::Kind::Put => {
                    if intact(&path, &rec.hash) {
                        continue;
                    }
                    if shardfs_common::ids::shard_hash(&rec.payload) != rec.hash {
                        continue;
                    }
                    let mut shard = ShardBuf::from_slice(&rec.payload);
                    self.write(&block, index, &rec.hash, &mut shard, &path, true)?;
                    fixed += 1;
                }
                journal::Kind::Delete => {
                    if path.exists() {
                        fs::remove_file(&path).map_err(|e| NodeError::io(&path, e))?;
                        let _ = fs::remove_file(sums_path(&path));
                        fixed += 1;
                    }
                }
                journal::Kind::Durable => {}
            }
        }
        let root = File::open(&self.root).map_err(|e| NodeError::io(&self.root, e))?;
        // SAFETY: syncfs on a valid open descriptor.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) } != 0 {
            return Err(NodeError::io(&self.root, std::io::Error::last_os_error()));
        }
        journal::clear(&self.root)?;
        Ok(fixed)
    }
}
