//! The common error type, its wire form, and the one mapping from errors to errnos.

use serde::{Deserialize, Serialize};
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an error is, independent of where it happened. Sent on the wire so a
/// client can turn a master's or node's refusal into the right errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Invalid,
    NameTooLong,
    NoSpace,
    Unavailable,
    Io,
    Protocol,
    Corrupt,
    Permission,
    CrossDevice,
    TooBig,
    Timeout,
    Internal,
    /// No such extended attribute (ENODATA).
    NoData,
    /// A value or name past a limit of the call (E2BIG).
    ArgTooBig,
    /// The caller's buffer is too small (ERANGE).
    Range,
    /// Held by someone else; try again (EAGAIN, e.g. a lock taken with F_SETLK or LOCK_NB).
    Again,
    /// The caller was interrupted by a signal while waiting (EINTR).
    Interrupted,
    /// The operation or this mode of it is not offered (EOPNOTSUPP).
    NotSupported,
    /// Permission bits deny it (EACCES); `Permission` is "not permitted at all" (EPERM).
    Access,
    /// A directory's or a user's quota would be exceeded (EDQUOT).
    Quota,
}

/// An error as it travels in a response frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem-level refusal (no such entry, not empty, …), local or from a peer.
    #[error("{1}")]
    Fs(ErrorCode, String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection lost: {0}")]
    Connection(String),
    #[error("no answer within {0:?}: {1}")]
    Timeout(Duration, String),
    #[error("configuration error: {0}")]
    Config(String),
    #[error("data corrupt: {0}")]
    Corrupt(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    pub fn fs(code: ErrorCode, msg: impl Into<String>) -> Self {
        Error::Fs(code, msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::Fs(ErrorCode::NotFound, msg.into())
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Fs(ErrorCode::Invalid, msg.into())
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Fs(c, _) => *c,
            Error::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) => ErrorCode::NoSpace,
            Error::Io(_) => ErrorCode::Io,
            Error::Protocol(_) => ErrorCode::Protocol,
            Error::Connect { .. } | Error::Connection(_) | Error::Unavailable(_) => {
                ErrorCode::Unavailable
            }
            Error::Timeout(..) => ErrorCode::Timeout,
            Error::Config(_) => ErrorCode::Invalid,
            Error::Corrupt(_) => ErrorCode::Corrupt,
        }
    }

    /// The errno a syscall on the mount returns for this error. The only errno mapping there is.
    pub fn errno(&self) -> i32 {
        match self.code() {
            ErrorCode::NotFound => libc::ENOENT,
            ErrorCode::Exists => libc::EEXIST,
            ErrorCode::NotDir => libc::ENOTDIR,
            ErrorCode::IsDir => libc::EISDIR,
            ErrorCode::NotEmpty => libc::ENOTEMPTY,
            ErrorCode::Invalid => libc::EINVAL,
            ErrorCode::NameTooLong => libc::ENAMETOOLONG,
            ErrorCode::NoSpace => libc::ENOSPC,
            ErrorCode::Permission => libc::EPERM,
            ErrorCode::CrossDevice => libc::EXDEV,
            ErrorCode::TooBig => libc::EFBIG,
            ErrorCode::Timeout => libc::ETIMEDOUT,
            ErrorCode::Unavailable => libc::EIO,
            ErrorCode::NoData => libc::ENODATA,
            ErrorCode::ArgTooBig => libc::E2BIG,
            ErrorCode::Range => libc::ERANGE,
            ErrorCode::Again => libc::EAGAIN,
            ErrorCode::Interrupted => libc::EINTR,
            ErrorCode::NotSupported => libc::EOPNOTSUPP,
            ErrorCode::Access => libc::EACCES,
            ErrorCode::Quota => libc::EDQUOT,
            ErrorCode::Io | ErrorCode::Protocol | ErrorCode::Corrupt | ErrorCode::Internal => {
                libc::EIO
            }
        }
    }

    /// True when trying again later (another node, a reconnect) may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Io
        )
    }

    pub fn to_remote(&self) -> RemoteError {
        RemoteError {
            code: self.code(),
            message: match self {
                Error::Fs(_, m) => m.clone(),
                e => e.to_string(),
            },
        }
    }
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        Error::Fs(e.code, e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(Error::not_found("x").errno(), libc::ENOENT);
        assert_eq!(Error::fs(ErrorCode::NotEmpty, "x").errno(), libc::ENOTEMPTY);
        assert_eq!(
            Error::Timeout(Duration::from_secs(1), "m".into()).errno(),
            libc::ETIMEDOUT
        );
        let e: Error = Error::fs(ErrorCode::Exists, "dup").to_remote().into();
        assert_eq!(e.errno(), libc::EEXIST);
        assert_eq!(e.to_string(), "dup");
        assert_eq!(Error::fs(ErrorCode::Quota, "full").errno(), libc::EDQUOT);
    }
}
