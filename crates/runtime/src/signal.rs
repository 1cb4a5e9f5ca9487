//! The signals that start a drain.

use tokio::signal::unix::{SignalKind, signal};
use tracing::error;

/// Resolves on SIGTERM or SIGINT (SIGINT alone if SIGTERM cannot be listened for).
pub async fn shutdown() {
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            error!(%error, "Cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
