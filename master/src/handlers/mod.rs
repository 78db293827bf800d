//! The handlers of the master's larger requests; `Master::dispatch` routes every request,
//! answering the one-call ones itself and sending these here.

mod files;
mod inline;
mod placement;
mod router;

use crate::MasterError;
use shardfs_common::{Error, ErrorCode};

/// A handler was given another request than its own (a routing bug, never the sender's).
fn misrouted() -> MasterError {
    Error::fs(ErrorCode::Internal, "request routed to the wrong handler").into()
}
