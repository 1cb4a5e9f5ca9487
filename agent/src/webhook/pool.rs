//! The evaluation pool: admission decisions run on a few threads of their own, fed by a
//! bounded queue, not on the async runtimes that serve connections, the sync stream and the
//! heartbeats (with the one exception below). A full queue refuses at once; a request that waited in the queue longer than
//! its budget is shed before it is evaluated (the caller answers 503 with `Retry-After`), so
//! a flood raises refusals, not the latency of the requests that are answered.
//!
//! One small request at a time is decided on the connection's own thread instead
//! (`run_small`): handing it to an evaluator and back costs two thread wake-ups, about as much
//! as the decision itself, and that is the latency every pod create pays. Only one such
//! decision runs at once and only for a body of at most `INLINE_MAX_BYTES` (tens of
//! microseconds of linear work), and only when the connections' runtime has another thread
//! (`inline_small(false)` otherwise): with a single thread every small request would be decided
//! there, one after another, and a flood would never meet the queue's bounds.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

/// Why the pool did not evaluate a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the evaluation queue is full")]
    Full,
    #[error("the request waited longer than its budget for an evaluator")]
    Shed,
}

type Work = Box<dyn FnOnce() + Send>;

/// Dropping a job unevaluated drops its result sender: the caller learns it was shed.
struct Job {
    work: Work,
    enqueued: Instant,
}

/// Counts of what the pool refused, for `/metrics` and `/state`.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub full: AtomicU64,
    pub shed: AtomicU64,
}

/// Largest body decided on the connection's thread (see the module's documentation). Real
/// reviews of a pod or a workload are 2 to 11 KB.
pub const INLINE_MAX_BYTES: usize = 32 * 1024;

/// A handle to the pool; cheap to clone. The threads end when every handle is gone.
#[derive(Clone)]
pub struct Pool {
    queue: mpsc::SyncSender<Job>,
    max_wait: Duration,
    /// Taken while a small request is decided on its connection's thread; `None`: never.
    inline: Option<Arc<AtomicBool>>,
    pub stats: Arc<PoolStats>,
}

impl Pool {
    /// `threads` evaluators, at most `queued` requests waiting, each for at most `max_wait`.
    pub fn new(threads: usize, queued: usize, max_wait: Duration) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::sync_channel::<Job>(queued.max(1));
        let jobs = Arc::new(Mutex::new(jobs));
        let stats = Arc::new(PoolStats::default());
        for n in 0..threads.max(1) {
            let jobs = jobs.clone();
            let stats = stats.clone();
            thread::Builder::new()
                .name(format!("portcullis-eval-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take one job.
                        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        if job.enqueued.elapsed() > max_wait {
                            stats.shed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        (job.work)();
                    }
                })?;
        }
        Ok(Self {
            queue,
            max_wait,
            inline: Some(Arc::new(AtomicBool::new(false))),
            stats,
        })
    }

    /// Whether small requests may be decided on their connection's thread (see the module).
    pub fn inline_small(mut self, allowed: bool) -> Self {
        if !allowed {
            self.inline = None;
        }
        self
    }

    /// Runs `work` for a body of `size` bytes: right here if it is small and no other small
    /// one is being decided here, else as `run` does.
    pub async fn run_small<T: Send + 'static>(
        &self,
        size: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Refused> {
        if let Some(inline) = &self.inline
            && size <= INLINE_MAX_BYTES
            && inline
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            // Released even if `work` panics.
            let _slot = Slot(inline);
            return Ok(work());
        }
        self.run(work).await
    }

    /// Runs `work` on an evaluator and returns its result, unless the queue is full or the
    /// request waited past its budget.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Refused> {
        let (done, result) = oneshot::channel();
        let job = Job {
            work: Box::new(move || {
                let _ = done.send(work());
            }),
            enqueued: Instant::now(),
        };
        if self.queue.try_send(job).is_err() {
            self.stats.full.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        result.await.map_err(|_| Refused::Shed)
    }

    /// How long a request may wait for an evaluator.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }
}

/// Frees the inline slot when dropped.
struct Slot<'a>(&'a AtomicBool);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_and_returns_its_result() {
        let pool = Pool::new(2, 4, Duration::from_secs(5)).unwrap();
        assert_eq!(pool.run(|| 40 + 2).await, Ok(42));
        let name = pool
            .run(|| thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("portcullis-eval-"));
    }

    #[tokio::test]
    async fn one_small_request_at_a_time_is_decided_in_place() {
        let pool = Pool::new(1, 4, Duration::from_secs(5)).unwrap();
        let here = || thread::current().name().map(str::to_owned);
        let small = pool.run_small(100, here).await.unwrap();
        assert_eq!(small, thread::current().name().map(str::to_owned));
        // A large body goes to an evaluator.
        let large = pool.run_small(INLINE_MAX_BYTES + 1, here).await.unwrap();
        assert!(large.unwrap().starts_with("portcullis-eval-"));
        // While one small request is decided in place, the next goes to an evaluator.
        let inner = {
            let pool = pool.clone();
            pool.clone()
                .run_small(100, move || {
                    let handle = tokio::runtime::Handle::current();
                    std::thread::scope(|s| {
                        s.spawn(|| handle.block_on(pool.run_small(100, here)))
                            .join()
                            .unwrap()
                    })
                })
                .await
                .unwrap()
        };
        assert!(inner.unwrap().unwrap().starts_with("portcullis-eval-"));
        // The slot is free again.
        let again = pool.run_small(100, here).await.unwrap();
        assert_eq!(again, thread::current().name().map(str::to_owned));
        // Not allowed (a runtime of one thread): every request goes to an evaluator.
        let pool = pool.inline_small(false);
        let small = pool.run_small(100, here).await.unwrap();
        assert!(small.unwrap().starts_with("portcullis-eval-"));
    }

    /// One evaluator busy with a slow request: the queue fills (refused at once), and what
    /// waited past its budget is shed, not evaluated late.
    #[tokio::test]
    async fn a_full_queue_refuses_and_a_late_request_is_shed() {
        let pool = Pool::new(1, 2, Duration::from_millis(50)).unwrap();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let slow = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = hold.recv();
                })
                .await
            })
        };
        // Let the evaluator take the slow job.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let evaluated = Arc::new(AtomicU64::new(0));
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let (pool, evaluated) = (pool.clone(), evaluated.clone());
                tokio::spawn(async move {
                    pool.run(move || evaluated.fetch_add(1, Ordering::Relaxed))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.run(|| ()).await, Err(Refused::Full));
        // The queued two wait past 50 ms behind the slow one.
        tokio::time::sleep(Duration::from_millis(100)).await;
        release.send(()).unwrap();
        assert_eq!(slow.await.unwrap(), Ok(()));
        for job in queued {
            assert_eq!(job.await.unwrap(), Err(Refused::Shed));
        }
        assert_eq!(evaluated.load(Ordering::Relaxed), 0);
        assert_eq!(pool.stats.shed.load(Ordering::Relaxed), 2);
        assert_eq!(pool.stats.full.load(Ordering::Relaxed), 1);
        // Afterwards the pool serves again.
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }
}
