//! One module per command group.

pub mod audit;
pub mod cluster;
pub mod events;
pub mod policy;
pub mod scan;
pub mod test;

use anyhow::anyhow;
use tonic::{Response, Status};

/// The message of a call, or an error that reads `InvalidArgument: <what the server said>`.
pub fn rpc<T>(result: Result<Response<T>, Status>) -> anyhow::Result<T> {
    result
        .map(Response::into_inner)
        .map_err(|status| anyhow!("{:?}: {}", status.code(), status.message()))
}
