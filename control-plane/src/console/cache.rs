//! What a slow read produced (a period's event counts), kept for a short while and shared by
//! every session: within `ttl` it is served as is; after it, the stale value is served while
//! one refresh runs in the background, so no page waits on the read but the very first.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tonic::Status;
use tracing::warn;

pub struct Cached<T> {
    ttl: Duration,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Option<(Instant, Arc<T>)>,
    refreshing: bool,
}

impl<T: Send + Sync + 'static> Cached<T> {
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(Cached {
            ttl,
            state: Mutex::new(State {
                value: None,
                refreshing: false,
            }),
        })
    }

    /// The value, loading it with `load` when there is none yet (this call waits) or when it is
    /// older than the time to live (in the background; this call gets the old one).
    pub async fn get<F, Fut>(self: &Arc<Self>, load: F) -> Result<Arc<T>, Status>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Status>> + Send + 'static,
    {
        {
            let mut state = self.lock();
            match &state.value {
                Some((at, value)) if at.elapsed() < self.ttl => return Ok(value.clone()),
                Some((_, value)) => {
                    let value = value.clone();
                    if !state.refreshing {
                        state.refreshing = true;
                        let this = self.clone();
                        tokio::spawn(async move {
                            let loaded = load().await;
                            let mut state = this.lock();
                            state.refreshing = false;
                            match loaded {
                                Ok(value) => state.value = Some((Instant::now(), Arc::new(value))),
                                // The old value stays; the next request tries again.
                                Err(status) => warn!(
                                    message = status.message(),
                                    "Console summary refresh failed"
                                ),
                            }
                        });
                    }
                    return Ok(value);
                }
                None => {}
            }
        }
        let value = Arc::new(load().await?);
        self.lock().value = Some((Instant::now(), value.clone()));
        Ok(value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // Every change is one assignment: a panic elsewhere leaves the state whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn fresh_then_stale_while_one_refresh_runs() {
        let cache = Cached::<u32>::new(Duration::from_secs(10));
        let loads = Arc::new(AtomicU32::new(0));
        let load = |loads: Arc<AtomicU32>| {
            move || async move { Ok(loads.fetch_add(1, Ordering::SeqCst) + 1) }
        };
        assert_eq!(
            *cache.get(load(loads.clone())).await.unwrap(),
            1,
            "the first load waits"
        );
        assert_eq!(*cache.get(load(loads.clone())).await.unwrap(), 1, "fresh");
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            *cache.get(load(loads.clone())).await.unwrap(),
            1,
            "stale, served at once"
        );
        assert_eq!(*cache.get(load(loads.clone())).await.unwrap(), 1);
        tokio::task::yield_now().await;
        assert_eq!(loads.load(Ordering::SeqCst), 2, "one refresh for both");
        assert_eq!(
            *cache.get(load(loads.clone())).await.unwrap(),
            2,
            "refreshed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_old_value() {
        let cache = Cached::<u32>::new(Duration::from_secs(10));
        assert!(
            cache
                .get(|| async { Err(Status::unavailable("down")) })
                .await
                .is_err()
        );
        assert_eq!(*cache.get(|| async { Ok(7) }).await.unwrap(), 7);
        tokio::time::advance(Duration::from_secs(11)).await;
        let failing = || async { Err(Status::unavailable("down")) };
        assert_eq!(*cache.get(failing).await.unwrap(), 7);
        tokio::task::yield_now().await;
        assert_eq!(
            *cache.get(|| async { Ok(8) }).await.unwrap(),
            7,
            "still stale: refreshing again"
        );
        tokio::task::yield_now().await;
        assert_eq!(*cache.get(|| async { Ok(9) }).await.unwrap(), 8);
    }
}
