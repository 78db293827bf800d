//! Storage policies (`P` ino → code): the code a directory's new entries inherit, and the code
//! a file's blocks are stored with. No record: the cluster's code.
//!
//! A new file or directory takes its parent's record at creation. Changing a file's policy, or
//! applying a directory's policy to everything under it, marks the files for sealing (`F` at
//! time 0), which rewrites every slot whose blocks are not in the file's code.

use super::sealing::k_frag;
use super::{enc, key, not_found_ino, DentryRecord, Meta};
use crate::MasterError;
use rocksdb::WriteBatch;
use shardfs_common::ec::EcParams;
use shardfs_common::proto::FileKind;
use shardfs_common::Ino;

pub(super) fn k_policy(ino: Ino) -> Vec<u8> {
    key(b'P', &[&ino.to_be_bytes()])
}

impl Meta {
    /// The code `ino`'s new blocks are stored with, if not the cluster's.
    pub fn policy(&self, ino: Ino) -> Result<Option<EcParams>, MasterError> {
        self.get::<EcParams>(&k_policy(ino))
    }

    /// Whether blocks in code `ec` may be stored: the cluster's code, its pieces', or any
    /// storage policy's (a writer whose view of a file's policy is old; sealing rewrites
    /// blocks not in their file's code).
    pub fn storable(&self, ec: EcParams) -> bool {
        let c = self.cluster.ec;
        ec == c || ec == c.replicated() || EcParams::parse_policy(&ec.policy()).is_ok()
    }

    /// The code blocks of `ino` are stored with: its policy, else the cluster's.
    pub fn code_of(&self, ino: Ino) -> Result<EcParams, MasterError> {
        Ok(self.policy(ino)?.unwrap_or(self.cluster.ec))
    }

    /// Set (or with None, clear) the policy of `ino`. A file's existing blocks are rewritten
    /// in the new code by the sealing loop; a directory's policy is inherited by entries made
    /// in it from now on (see [`Meta::apply_policy`] for those already there).
    pub fn set_policy(&self, ino: Ino, code: Option<EcParams>) -> Result<(), MasterError> {
        let _w = self.writer.lock().expect("writer lock");
        let rec = self.inode(ino)?;
        let mut batch = WriteBatch::default();
        put_policy(&mut batch, ino, code);
        if rec.attr.kind == FileKind::File {
            batch.put(k_frag(ino), enc(&0u64));
        }
        self.write(batch)
    }

    /// Give every file and directory under directory `dir` its policy, and mark the files for
    /// rewriting. Returns how many files were marked.
    pub fn apply_policy(&self, dir: Ino) -> Result<u64, MasterError> {
        let code = self.policy(dir)?;
        if self.inode(dir)?.attr.kind != FileKind::Dir {
            return Err(not_found_ino(dir));
        }
        let (mut queue, mut files) = (vec![dir], 0u64);
        while let Some(d) = queue.pop() {
            // One directory per batch: the writer lock is never held for a whole tree.
            let _w = self.writer.lock().expect("writer lock");
            let mut batch = WriteBatch::default();
            for (_, e) in self.scan::<DentryRecord>(
                &super::k_dentry_prefix(d),
                &super::k_dentry_prefix(d),
                usize::MAX,
            )? {
                put_policy(&mut batch, e.ino, code);
                match e.kind {
                    FileKind::Dir => queue.push(e.ino),
                    FileKind::File => {
                        batch.put(k_frag(e.ino), enc(&0u64));
                        files += 1;
                    }
                    _ => {}
                }
            }
            self.write(batch)?;
        }
        Ok(files)
    }
}

fn put_policy(batch: &mut WriteBatch, ino: Ino, code: Option<EcParams>) {
    match code {
        Some(c) => batch.put(k_policy(ino), enc(&c)),
        None => batch.delete(k_policy(ino)),
    }
}
