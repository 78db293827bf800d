//! Quotas as users reach them: extended attributes of the mount's directories, set by root.
//!
//! `user.shardfs.quota` of a directory reads `bytes_limit=… inodes_limit=… bytes_used=…
//! inodes_used=…` (ENODATA without a quota) and is set with `bytes=N inodes=N` (either may be
//! left out or 0: no limit of that kind; both 0, an empty value or removing the attribute drops
//! the quota). `user.shardfs.quota.uid.N`, read or set through any path of the mount, is the
//! same for uid N cluster-wide. Only root (a credential that allows it) sets quotas; anyone
//! reads them. These names are not stored and not listed. The accounting itself is
//! `meta::quota`.

use crate::{Master, MasterError};
use shardfs_common::proto::{QuotaInfo, QuotaTarget};
use shardfs_common::{Error, ErrorCode, Ino};

/// Attribute names the master answers itself.
pub const PREFIX: &[u8] = b"user.shardfs.quota";
const UID_PREFIX: &[u8] = b"user.shardfs.quota.uid.";

/// The quota an attribute name of `ino` is about.
fn target(ino: Ino, name: &[u8]) -> Result<QuotaTarget, MasterError> {
    if name == PREFIX {
        return Ok(QuotaTarget::Dir(ino));
    }
    name.strip_prefix(UID_PREFIX)
        .and_then(|u| std::str::from_utf8(u).ok())
        .and_then(|u| u.parse::<u32>().ok())
        .map(QuotaTarget::Uid)
        .ok_or_else(|| {
            Error::fs(
                ErrorCode::NotSupported,
                format!(
                    "{} is not an attribute ShardFS knows (user.shardfs.quota, user.shardfs.quota.uid.N)",
                    String::from_utf8_lossy(name)
                ),
            )
            .into()
        })
}

/// Limits from `bytes=N inodes=N` (each optional; 0 or absent: none).
pub fn parse_limits(value: &[u8]) -> Result<(u64, u64), Error> {
    let text = std::str::from_utf8(value)
        .map_err(|_| Error::invalid("a quota is text: bytes=N inodes=N"))?
        .trim();
    let (mut bytes, mut inodes) = (0, 0);
    if text == "none" {
        return Ok((0, 0));
    }
    for part in text.split_whitespace() {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("{part:?}: a quota is bytes=N inodes=N")))?;
        let n: u64 = v
            .parse()
            .map_err(|_| Error::invalid(format!("{part:?}: not a number")))?;
        match k {
            "bytes" => bytes = n,
            "inodes" => inodes = n,
            _ => {
                return Err(Error::invalid(format!(
                    "{k:?}: a quota has bytes and inodes"
                )))
            }
        }
    }
    Ok((bytes, inodes))
}

pub fn format(i: &QuotaInfo) -> String {
    format!(
        "bytes_limit={} inodes_limit={} bytes_used={} inodes_used={}",
        i.bytes_limit, i.inodes_limit, i.bytes_used, i.inodes_used
    )
}

/// Set (or, with an empty value, drop) the quota attribute `name` of `ino`.
pub fn set(master: &Master, ino: Ino, name: &[u8], value: &[u8]) -> Result<(), MasterError> {
    let t = target(ino, name)?;
    let (bytes, inodes) = parse_limits(value)?;
    master.meta.set_quota(t, bytes, inodes).map(|_| ())
}

/// The value of quota attribute `name` of `ino`.
pub fn get(master: &Master, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MasterError> {
    let t = target(ino, name)?;
    if let QuotaTarget::Dir(d) = t {
        master.meta.getattr(d)?;
    }
    match master.meta.quota(t) {
        Some(i) => Ok(format(&i).into_bytes()),
        None => Err(Error::fs(ErrorCode::NoData, "no quota is set").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_limits(b"bytes=8388608 inodes=10").unwrap(),
            (8 << 20, 10)
        );
        assert_eq!(parse_limits(b" inodes=3 ").unwrap(), (0, 3));
        assert_eq!(parse_limits(b"").unwrap(), (0, 0));
        assert_eq!(parse_limits(b"none").unwrap(), (0, 0));
        assert!(parse_limits(b"bytes=-1").is_err());
        assert!(parse_limits(b"files=3").is_err());
        assert!(parse_limits(b"bytes").is_err());
        assert!(parse_limits(&[0xff]).is_err());
    }

    #[test]
    fn names_say_which_quota() {
        assert_eq!(
            target(5, b"user.shardfs.quota").unwrap(),
            QuotaTarget::Dir(5)
        );
        assert_eq!(
            target(5, b"user.shardfs.quota.uid.1000").unwrap(),
            QuotaTarget::Uid(1000)
        );
        assert!(target(5, b"user.shardfs.quota.uid.x").is_err());
        assert!(target(5, b"user.shardfs.quotas").is_err());
    }
}
