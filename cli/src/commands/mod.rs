//! One module per command group.

pub mod audit;
pub mod cluster;
pub mod events;
pub mod policy;
pub mod scan;
pub mod test;

use anyhow::anyhow;
use tonic::{Response, Status};

/// The most items one page asks for (the servers' cap).
const PAGE: usize = 1000;

/// Every item of a paged listing, or its first `limit` (0: all): `page(size, token)` fetches
/// one page and returns its items and the next page's token (empty on the last).
pub async fn collect_pages<T, F, Fut>(limit: usize, mut page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(u32, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let want = match limit {
            0 => PAGE,
            limit => (limit - items.len()).min(PAGE),
        };
        let (got, next) = page(want as u32, token).await?;
        items.extend(got);
        if next.is_empty() || (limit != 0 && items.len() >= limit) {
            return Ok(items);
        }
        token = next;
    }
}

/// The message of a call, or an error that reads `InvalidArgument: <what the server said>`.
pub fn rpc<T>(result: Result<Response<T>, Status>) -> anyhow::Result<T> {
    result
        .map(Response::into_inner)
        .map_err(|status| anyhow!("{:?}: {}", status.code(), status.message()))
}
