//! `shardfs quota`: directory and uid quotas, read and set through a mount's extended
//! attributes (`user.shardfs.quota`, `user.shardfs.quota.uid.N`; see the master's `quota`).

use crate::admin::{check_shardfs, get_xattr, set_xattr};
use crate::human;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// The limits and usage of one quota.
#[derive(Default, Debug, PartialEq, Eq)]
struct Quota {
    bytes_limit: u64,
    inodes_limit: u64,
    bytes_used: u64,
    inodes_used: u64,
}

fn parse(v: &[u8]) -> anyhow::Result<Quota> {
    let mut q = Quota::default();
    for part in String::from_utf8_lossy(v).split_whitespace() {
        let (k, v) = part.split_once('=').context("not a quota")?;
        let n: u64 = v.parse()?;
        match k {
            "bytes_limit" => q.bytes_limit = n,
            "inodes_limit" => q.inodes_limit = n,
            "bytes_used" => q.bytes_used = n,
            "inodes_used" => q.inodes_used = n,
            _ => {}
        }
    }
    Ok(q)
}

/// A byte count: digits with an optional binary unit (K, M, G, T, with or without iB / B).
pub fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n
        .parse()
        .with_context(|| format!("{s:?} is not a size (e.g. 8M, 2GiB, 1048576)"))?;
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => bail!("{s:?}: the unit is one of K, M, G, T (binary)"),
    };
    n.checked_mul(1 << shift)
        .with_context(|| format!("{s:?} is too large"))
}

/// The attribute of a directory's quota or uid's, and the path to reach it through.
fn attribute(path: Option<PathBuf>, uid: Option<u32>) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    match (path, uid) {
        (p, Some(u)) => Ok((
            p.unwrap_or_else(|| ".".into()),
            format!("user.shardfs.quota.uid.{u}").into_bytes(),
        )),
        (Some(p), None) => Ok((p, b"user.shardfs.quota".to_vec())),
        (None, None) => bail!("name a directory, or a user with --uid"),
    }
}

fn what(path: &Path, uid: Option<u32>) -> String {
    match uid {
        Some(u) => format!("uid {u}"),
        None => path.display().to_string(),
    }
}

fn read(path: &Path, name: &[u8]) -> anyhow::Result<Option<Quota>> {
    check_shardfs(path)?;
    match get_xattr(path, name) {
        Ok(v) => Ok(Some(parse(&v)?)),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            bail!("{} is not on a ShardFS mount", path.display())
        }
        Err(e) => bail!("cannot read the quota through {}: {e}", path.display()),
    }
}

/// `shardfs quota set`: limits not given keep their current value; `clear` drops the quota.
pub fn set(
    path: Option<PathBuf>,
    uid: Option<u32>,
    bytes: Option<String>,
    inodes: Option<u64>,
    clear: bool,
) -> anyhow::Result<()> {
    let (at, name) = attribute(path, uid)?;
    let value = if clear {
        String::new()
    } else {
        if bytes.is_none() && inodes.is_none() {
            bail!("give --bytes and/or --inodes (0: no limit), or --clear");
        }
        let old = read(&at, &name)?.unwrap_or_default();
        let bytes = bytes
            .as_deref()
            .map(parse_bytes)
            .transpose()?
            .unwrap_or(old.bytes_limit);
        let inodes = inodes.unwrap_or(old.inodes_limit);
        format!("bytes={bytes} inodes={inodes}")
    };
    match set_xattr(&at, &name, value.as_bytes()) {
        Ok(()) => get(Some(at), uid, false),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            bail!("cannot set the quota of {}: only root may", what(&at, uid))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            bail!(
                "{} is not a directory: quotas are set on directories",
                at.display()
            )
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            bail!("{} is not on a ShardFS mount", at.display())
        }
        Err(e) => bail!("cannot set the quota of {}: {e}", what(&at, uid)),
    }
}

/// `shardfs quota get`: limits and usage, with units.
pub fn get(path: Option<PathBuf>, uid: Option<u32>, json: bool) -> anyhow::Result<()> {
    let (at, name) = attribute(path, uid)?;
    let q = read(&at, &name)?;
    let who = what(&at, uid);
    if json {
        let v = match &q {
            Some(q) => serde_json::json!({
                "quota": who, "bytes_limit": q.bytes_limit, "bytes_used": q.bytes_used,
                "inodes_limit": q.inodes_limit, "inodes_used": q.inodes_used,
            }),
            None => serde_json::json!({ "quota": who, "none": true }),
        };
        println!("{v}");
        return Ok(());
    }
    let Some(q) = q else {
        println!("{who}: no quota");
        return Ok(());
    };
    let limit = |used: String, limit: u64, shown: String| match limit {
        0 => format!("{used} used, no limit"),
        _ => format!("{used} used of {shown}"),
    };
    let pct = |used: u64, limit: u64| match limit {
        0 => String::new(),
        l => format!(" ({:.0}%)", used as f64 * 100.0 / l as f64),
    };
    println!(
        "{who}: bytes {}{}, inodes {}{}",
        limit(human(q.bytes_used), q.bytes_limit, human(q.bytes_limit)),
        pct(q.bytes_used, q.bytes_limit),
        limit(
            q.inodes_used.to_string(),
            q.inodes_limit,
            q.inodes_limit.to_string()
        ),
        pct(q.inodes_used, q.inodes_limit),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("8M").unwrap(), 8 << 20);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512KB").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("8X").is_err());
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }

    #[test]
    fn the_attribute_value_reads_back() {
        let q = parse(b"bytes_limit=8 inodes_limit=2 bytes_used=4 inodes_used=1").unwrap();
        assert_eq!(
            q,
            Quota {
                bytes_limit: 8,
                inodes_limit: 2,
                bytes_used: 4,
                inodes_used: 1
            }
        );
    }
}
