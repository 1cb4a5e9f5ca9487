//! Reconnect pacing for the Sync stream: jittered exponential backoff (the `backoff` crate,
//! kept behind this module), and a slow lane for refusals that retrying soon will not fix.

use std::time::Duration;

use backoff::{ExponentialBackoff, ExponentialBackoffBuilder, backoff::Backoff};

/// The wait after a refusal (bad token, wrong cluster, invalid request).
pub const SLOW_RETRY: Duration = Duration::from_secs(30);

pub struct Reconnect {
    backoff: ExponentialBackoff,
}

impl Reconnect {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let backoff = ExponentialBackoffBuilder::new()
            .with_initial_interval(initial)
            .with_max_interval(max)
            .with_multiplier(2.0)
            .with_randomization_factor(0.5)
            .with_max_elapsed_time(None)
            .build();
        Self { backoff }
    }

    /// The wait before the next attempt after a failure.
    pub fn next_delay(&mut self) -> Duration {
        self.backoff
            .next_backoff()
            .unwrap_or(self.backoff.max_interval)
    }

    /// The wait after a refusal: at least `SLOW_RETRY`.
    pub fn slow_delay(&mut self) -> Duration {
        self.next_delay().max(SLOW_RETRY)
    }

    /// A healthy stream starts the sequence over.
    pub fn reset(&mut self) {
        self.backoff.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut r = Reconnect::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..10).map(|_| r.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(150));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(3)),
            "{delays:?}"
        );
        assert!(delays[9] >= Duration::from_secs(1), "{delays:?}");
        r.reset();
        assert!(r.next_delay() <= Duration::from_millis(150));
        assert!(r.slow_delay() >= SLOW_RETRY);
    }
}
