//! The record store: typed gets, scans and batches over RocksDB, and the generic records other modules keep.

use super::*;

/// The first byte of a record sealed with a data key (then the epoch and the sealed record).
const SEALED: u8 = 0xE1;

/// The key epoch a stored record value is sealed under, if it is sealed.
pub(super) fn sealed_epoch(v: &[u8]) -> Option<u32> {
    match v.split_first() {
        Some((&SEALED, rest)) if rest.len() >= 4 => {
            Some(u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")))
        }
        _ => None,
    }
}

impl Meta {
    /// The data keys, for records the master seals (merge documents).
    pub fn set_ring(&self, ring: Option<shardfs_common::crypt::KeyRing>) {
        *self.ring.write().expect("ring lock") = ring;
    }

    pub(super) fn write(&self, batch: WriteBatch) -> Result<(), MasterError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.write_opt(batch, &wo).map_err(db_err)
    }

    pub(super) fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, MasterError> {
        match self.db.get_pinned(key).map_err(db_err)? {
            Some(raw) => Ok(Some(dec(key, &raw)?)),
            None => Ok(None),
        }
    }

    /// The merge document of `ino`, if it was ever merged.
    pub fn merge_record(&self, ino: Ino) -> Result<Option<crate::merge::MergeRecord>, MasterError> {
        let key = k_merge(ino);
        let Some(raw) = self.db.get_pinned(&key).map_err(db_err)? else {
            return Ok(None);
        };
        match raw.split_first() {
            Some((&SEALED, rest)) if rest.len() >= 4 => {
                let epoch = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
                let ring = self.ring.read().expect("ring lock");
                let ring = ring.as_ref().ok_or_else(|| {
                    MasterError::Corrupt("an encrypted merge document, and no data keys".into())
                })?;
                let k = shardfs_common::crypt::record_key(ring, epoch, "merge documents")?;
                let plain = shardfs_common::crypt::open(&k, &rest[4..])?;
                Ok(Some(dec(&key, &plain)?))
            }
            _ => Ok(Some(dec(&key, &raw)?)),
        }
    }

    pub fn put_merge_record(
        &self,
        ino: Ino,
        rec: &crate::merge::MergeRecord,
    ) -> Result<(), MasterError> {
        let mut b = WriteBatch::default();
        // The text of a file: sealed under the current data key, if the cluster has keys.
        let value = match self.ring.read().expect("ring lock").as_ref() {
            Some(ring) => {
                let k = shardfs_common::crypt::record_key(ring, ring.current, "merge documents")?;
                let mut v = vec![SEALED];
                v.extend_from_slice(&ring.current.to_be_bytes());
                v.extend(shardfs_common::crypt::seal(&k, &enc(rec)));
                v
            }
            None => enc(rec),
        };
        b.put(k_merge(ino), value);
        self.write(b)
    }

    /// Keys from `start` on, up to the end of `prefix`: the upper bound lets RocksDB stop at
    /// the prefix's end instead of walking over deleted keys after it (thousands of them after
    /// a burst of short-lived records, on every scan that finds nothing more).
    pub(super) fn iter_within(&self, prefix: &[u8], start: &[u8]) -> rocksdb::DBIterator<'_> {
        let mut ro = rocksdb::ReadOptions::default();
        if let Some(end) = prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        self.db
            .iterator_opt(IteratorMode::From(start, Direction::Forward), ro)
    }

    pub(super) fn scan<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, MasterError> {
        let mut out = Vec::new();
        for item in self.iter_within(prefix, start) {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), dec(&k, &v)?));
        }
        Ok(out)
    }

    /// Every key starting with `prefix`, values not decoded.
    pub(super) fn keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, MasterError> {
        let mut out = Vec::new();
        for item in self.iter_within(prefix, prefix) {
            let (k, _) = item.map_err(db_err)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }

    pub(super) fn slot_record(&self, key: &[u8]) -> Result<Option<SlotRecord>, MasterError> {
        match self.db.get_pinned(key).map_err(db_err)? {
            Some(raw) => Ok(Some(dec_slot(key, &raw)?)),
            None => Ok(None),
        }
    }

    pub(super) fn slot_records(&self, ino: Ino) -> Result<Vec<(u64, SlotRecord)>, MasterError> {
        let p = k_slot_prefix(ino);
        let mut out = Vec::new();
        for item in self.iter_within(&p, &p) {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(&p) || k.len() != 17 {
                break;
            }
            let index = u64::from_be_bytes(k[9..17].try_into().expect("slot key"));
            out.push((index, dec_slot(&k, &v)?));
        }
        Ok(out)
    }

    /// Records of families kept by other modules (`credentials`): a one-byte family, a key.
    pub fn put_record<T: Serialize>(&self, family: u8, k: &[u8], v: &T) -> Result<(), MasterError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_opt(key(family, &[k]), enc(v), &wo)
            .map_err(db_err)
    }

    /// The record `k` of `family`, if there is one.
    pub fn get_record<T: DeserializeOwned>(
        &self,
        family: u8,
        k: &[u8],
    ) -> Result<Option<T>, MasterError> {
        self.get(&key(family, &[k]))
    }

    pub fn delete_record(&self, family: u8, k: &[u8]) -> Result<(), MasterError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.delete_opt(key(family, &[k]), &wo).map_err(db_err)
    }

    /// Every record of a family: (key without the family byte, value).
    pub fn records<T: DeserializeOwned>(
        &self,
        family: u8,
    ) -> Result<Vec<(Vec<u8>, T)>, MasterError> {
        Ok(self
            .scan::<T>(&[family], &[family], usize::MAX)?
            .into_iter()
            .map(|(k, v)| (k[1..].to_vec(), v))
            .collect())
    }

    /// A record of an append-only log family (the audit log): written with the WAL like
    /// every operation, fsynced only on a `--sync` master.
    pub fn append_record<T: Serialize>(
        &self,
        family: u8,
        k: &[u8],
        v: &T,
    ) -> Result<(), MasterError> {
        let mut b = WriteBatch::default();
        b.put(key(family, &[k]), enc(v));
        self.write(b)
    }

    /// Records of `family` from key `start` (the whole key, family byte included) on, at
    /// most `limit`.
    pub fn records_from<T: DeserializeOwned>(
        &self,
        family: u8,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, MasterError> {
        self.scan(&[family], start, limit)
    }

    /// Delete every record of `family` whose key (family byte included) is below `end`.
    pub fn delete_records_below(&self, family: u8, end: &[u8]) -> Result<(), MasterError> {
        let mut b = WriteBatch::default();
        b.delete_range(vec![family], end.to_vec());
        self.write(b)
    }

    /// The inode an entry names, and its kind.
    pub fn entry(&self, parent: Ino, name: &[u8]) -> Result<Option<(Ino, FileKind)>, MasterError> {
        Ok(self.dentry(parent, name)?.map(|d| (d.ino, d.kind)))
    }

    /// The name of `ino` in directory `parent`, looking at no more than `limit` entries.
    pub fn name_in(
        &self,
        parent: Ino,
        ino: Ino,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, MasterError> {
        let p = k_dentry_prefix(parent);
        for item in self.iter_within(&p, &p).take(limit) {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(&p) {
                break;
            }
            let d: DentryRecord = dec(&k, &v)?;
            if d.ino == ino {
                return Ok(Some(k[p.len()..].to_vec()));
            }
        }
        Ok(None)
    }

    /// Whether the cluster was recorded as encrypted (so its keys missing is an error, not a
    /// plain cluster).
    pub fn marked_encrypted(&self) -> Result<bool, MasterError> {
        Ok(self.db.get_pinned(K_ENCRYPTED).map_err(db_err)?.is_some())
    }

    pub fn mark_encrypted(&self) -> Result<(), MasterError> {
        let mut b = WriteBatch::default();
        b.put(K_ENCRYPTED, [VERSION]);
        self.write(b)
    }

    /// RocksDB's own figures, as metrics name them.
    pub fn db_stats(&self) -> Vec<(&'static str, u64)> {
        [
            ("shardfs_rocksdb_keys", "rocksdb.estimate-num-keys"),
            ("shardfs_rocksdb_sst_bytes", "rocksdb.total-sst-files-size"),
            (
                "shardfs_rocksdb_live_data_bytes",
                "rocksdb.estimate-live-data-size",
            ),
            (
                "shardfs_rocksdb_memtable_bytes",
                "rocksdb.cur-size-all-mem-tables",
            ),
            (
                "shardfs_rocksdb_pending_compaction_bytes",
                "rocksdb.estimate-pending-compaction-bytes",
            ),
        ]
        .into_iter()
        .filter_map(|(name, prop)| {
            self.db
                .property_int_value(prop)
                .ok()
                .flatten()
                .map(|v| (name, v))
        })
        .collect()
    }

    pub fn count_inodes(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}
