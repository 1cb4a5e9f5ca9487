//! Failover: the sync client's sessions in rounds over the control plane's endpoints. A round
//! resolves the URLs, tries each endpoint once from where the rotation starts, and moves to the
//! next at once when one fails; the bounded backoff comes between rounds.

use std::time::Duration;

use tracing::{Instrument, error, info, info_span, warn};

use super::{
    SessionError, SyncClient,
    connect::Credentials,
    endpoints::{self, Endpoint, Rotation},
    reconnect::Reconnect,
};

impl SyncClient {
    /// Runs forever: rounds over the control plane's endpoints, separated by backoff.
    pub async fn run(self) {
        let mut reconnect =
            Reconnect::new(self.config.reconnect_initial, self.config.reconnect_max);
        let mut rotation = Rotation::default();
        // The endpoint that failed last and why: trying another one next is a failover.
        let mut failed = None;
        loop {
            let delay = self.round(&mut rotation, &mut reconnect, &mut failed).await;
            info!(delay_ms = delay.as_millis() as u64, "Reconnecting");
            self.sleep_unless_token_changes(delay).await;
        }
    }

    /// One round: the endpoints, resolved now, each tried once in the rotation's order, the
    /// next at once when one fails. It ends when all have failed or when a stream that got
    /// going ends (the next round starts after its endpoint); returns the wait before the next.
    async fn round(
        &self,
        rotation: &mut Rotation,
        reconnect: &mut Reconnect,
        failed: &mut Option<(Endpoint, String)>,
    ) -> Duration {
        let credentials = match Credentials::load(&self.config, &self.last_token) {
            Ok(credentials) => credentials,
            Err(error) => {
                self.note_failure(None, &error);
                return reconnect.next_delay();
            }
        };
        let (found, unresolved) = endpoints::resolve(&self.config.control_planes).await;
        let order = rotation.order(found);
        if order.is_empty() {
            let reasons: Vec<String> = unresolved.into_iter().map(|(_, e)| e).collect();
            self.note_failure(None, &SessionError::Connect(reasons.join("; ")));
            return reconnect.next_delay();
        }
        for (url, error) in &unresolved {
            warn!(%url, %error, "Cannot resolve a control plane address: trying the others");
        }
        let mut refused = false;
        for endpoint in order {
            if let Some((from, reason)) = failed.take().filter(|(from, _)| *from != endpoint) {
                info!(from = %from, to = %endpoint, %reason, "Failing over to another control plane address");
            }
            // A trace per session (the task's own span lives as long as the agent).
            let session = info_span!(parent: None, "sync.session", cluster = %self.config.cluster, control_plane = %endpoint);
            let (got_going, error) = match self
                .open(&credentials, &endpoint)
                .instrument(session.clone())
                .await
            {
                Err(error) => (false, error),
                Ok((client, opened)) => {
                    rotation.worked(&endpoint);
                    self.reporter.set_client(client);
                    self.stats.set_control_plane(Some((
                        endpoint.url.to_string(),
                        endpoint.address.to_string(),
                    )));
                    info!(control_plane = %endpoint, "Connected to the control plane");
                    let error = match self.follow(opened, reconnect).instrument(session).await {
                        Ok(never) => match never {},
                        Err(error) => error,
                    };
                    rotation.ended(&endpoint);
                    (true, error)
                }
            };
            self.note_failure(Some(&endpoint), &error);
            *failed = Some((endpoint, error.to_string()));
            refused |= error.is_refusal();
            if got_going {
                refused = error.is_refusal();
                break;
            }
        }
        if refused {
            reconnect.slow_delay()
        } else {
            reconnect.next_delay()
        }
    }

    /// Records and logs why an attempt (on `endpoint`, when it got that far) ended.
    fn note_failure(&self, endpoint: Option<&Endpoint>, error: &SessionError) {
        self.stats.set_connected(false);
        self.stats.set_control_plane(None);
        self.stats.set_error(&error.to_string());
        self.stats
            .reconnects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let control_plane = endpoint.map(ToString::to_string).unwrap_or_default();
        if error.is_refusal() {
            error!(%error, cluster = %self.config.cluster, %control_plane, "Sync refused: check the cluster name and token");
        } else {
            warn!(%error, %control_plane, "Sync stream ended");
        }
    }

    /// Waits `delay`, or less when the token file changes (a rotated Secret is tried at once).
    async fn sleep_unless_token_changes(&self, delay: Duration) {
        let read = || {
            std::fs::read_to_string(&self.config.token_file)
                .ok()
                .map(|t| t.trim().to_owned())
        };
        // Compare with the token the failed attempt used, not with the file at this moment:
        // a Secret rotated between the refusal and now counts as a change too.
        let before = self
            .last_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_secs(1))).await;
            if read() != before {
                info!("Token file changed: reconnecting now");
                return;
            }
        }
    }
}
