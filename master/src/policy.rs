//! Storage policies as users reach them: extended attributes of the mount's files.
//!
//! `user.shardfs.policy` reads as the code a file or directory stores new data with (`ec:K+M` or
//! `replica:N`; the cluster's code when none was set) and is set the same way (an empty value,
//! `default`, or removing the attribute go back to the cluster's code). Setting
//! `user.shardfs.policy.apply` on a directory gives everything under it the directory's policy and
//! has the files' data rewritten by the sealing loop; `user.shardfs.policy.pending` reads how many
//! files in the cluster still wait for it. Only the owner (or root) changes a policy. These
//! names are not stored and not listed.

use crate::{Master, MasterError};
use shardfs_common::ec::EcParams;
use shardfs_common::{Error, ErrorCode, Ino};

/// Attribute names the master answers itself.
pub const PREFIX: &[u8] = b"user.shardfs.policy";
const POLICY: &[u8] = b"user.shardfs.policy";
const APPLY: &[u8] = b"user.shardfs.policy.apply";
const PENDING: &[u8] = b"user.shardfs.policy.pending";

fn unknown(name: &[u8]) -> MasterError {
    Error::fs(
        ErrorCode::NotSupported,
        format!(
            "{} is not an attribute ShardFS knows (user.shardfs.policy, .policy.apply, .policy.pending)",
            String::from_utf8_lossy(name)
        ),
    )
    .into()
}

/// Set (or, with an empty value, clear) attribute `name` of `ino`.
pub fn set(master: &Master, ino: Ino, name: &[u8], value: &[u8]) -> Result<(), MasterError> {
    match name {
        POLICY => {
            let text = std::str::from_utf8(value)
                .map_err(|_| Error::invalid("a storage policy is text, e.g. ec:6+3"))?
                .trim();
            let code = match text {
                "" | "default" => None,
                t => Some(EcParams::parse_policy(t)?),
            };
            let nodes = master.nodes.list().len();
            if let Some(c) = code.filter(|c| c.total() > nodes) {
                return Err(Error::fs(
                    ErrorCode::NoSpace,
                    format!(
                        "policy {} needs {} distinct nodes, the cluster has {nodes}",
                        c.policy(),
                        c.total()
                    ),
                )
                .into());
            }
            // The cluster's own code is no policy: files follow the cluster.
            let code = code.filter(|c| *c != master.meta.cluster.ec);
            master.meta.set_policy(ino, code)
        }
        APPLY => master.meta.apply_policy(ino).map(|_| ()),
        _ => Err(unknown(name)),
    }
}

/// The value of attribute `name` of `ino`.
pub fn get(master: &Master, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MasterError> {
    match name {
        POLICY => Ok(master.meta.code_of(ino)?.policy().into_bytes()),
        PENDING => Ok(master.meta.unsealed_files()?.to_string().into_bytes()),
        _ => Err(unknown(name)),
    }
}
