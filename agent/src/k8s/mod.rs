//! Kubernetes mode: the agent programs and keeps its own admission components.
//!
//! Every replica serves the webhook and reads the serving certificate from a Secret; the
//! replica holding the Lease writes: it creates and rotates the certificate, and reconciles the
//! `ValidatingWebhookConfiguration` (server-side apply, field manager `portcullis-agent`),
//! deleting it while the cluster's protection is off. Failures of the API server (409, 403,
//! 500, unreachable) are logged, reported as `deploy-failed` and retried with backoff; they
//! never stop the agent. Writes are tested against a fake API server (`fake`).

pub mod certs;
pub mod lease;
pub mod selfcheck;
pub mod webhook_config;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::ValidatingWebhookConfiguration, coordination::v1::Lease,
        core::v1::Secret,
    },
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use portcullis_proto::words::{FailurePolicy, ProtectionState};
use serde_json::json;
use time::OffsetDateTime;
use tracing::{Instrument, error, info, info_span, warn};

use crate::{
    state::StateHandle, stats::SyncStats, sync::reconnect::Reconnect, webhook::tls::CertResolver,
};
use certs::{CertPolicy, Material, Verdict};
use lease::{Election, LeaseLock};
use webhook_config::{Desired, Endpoint};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "portcullis-agent";

/// Where the agent's Kubernetes objects are and how it treats them.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    pub namespace: String,
    pub pod_name: String,
    pub service_name: String,
    pub service_port: i32,
    pub webhook_config_name: String,
    pub cert_secret: String,
    pub lease_name: String,
    pub webhook_url: Option<String>,
    pub exempt_namespaces: Vec<String>,
    pub certs: CertPolicy,
    /// How long the webhook may fail its self-check with `failurePolicy: Fail` programmed
    /// before the leader downgrades it to `Ignore`.
    pub fail_open_after: Duration,
    pub reconcile_every: Duration,
    pub lease_seconds: i64,
}

/// The wall clock (replaceable in tests, where certificates must age without waiting).
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// What the reconciler needs besides the API server.
pub struct Controller {
    pub settings: KubeSettings,
    secrets: Api<Secret>,
    configs: Api<ValidatingWebhookConfiguration>,
    lock: LeaseLock,
    state: StateHandle,
    stats: Arc<SyncStats>,
    resolver: Arc<CertResolver>,
    /// Set once the Secret's certificate is served (readiness).
    pub tls_ready: Arc<AtomicBool>,
    self_check: selfcheck::SelfCheck,
    clock: Clock,
    served: Option<Material>,
    /// Since when `failurePolicy: Fail` is programmed while the self-check fails.
    failing_since: Option<OffsetDateTime>,
    /// Whether this replica holds the Lease: set from each election, and cleared when the
    /// Lease could not be renewed for as long as another replica then needs to take it.
    leader: tokio::sync::watch::Sender<bool>,
    /// When this replica last renewed the Lease as its holder.
    renewed: Option<tokio::time::Instant>,
}

/// The outcome of one reconcile, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub leader: bool,
    /// Not `DeployFailed`: a failed round is an error, recorded by the caller.
    pub protection: ProtectionState,
    /// A note for operators (a held-back or downgraded failure policy).
    pub note: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{what}: {}", api_reason(source))]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// What the API server said, as an operator reads it in the fleet view: its message, reason
/// and code (`... is forbidden: User ... cannot get ... (Forbidden, 403)`), not the debug form.
fn api_reason(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} ({}, {})", status.message, status.reason, status.code)
        }
        other => other.to_string(),
    }
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let what = what.into();
    move |source| KubeError::Api { what, source }
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        settings: KubeSettings,
        state: StateHandle,
        stats: Arc<SyncStats>,
        resolver: Arc<CertResolver>,
        self_check: selfcheck::SelfCheck,
        clock: Clock,
    ) -> Self {
        let namespace = settings.namespace.clone();
        Self {
            secrets: Api::namespaced(client.clone(), &namespace),
            configs: Api::all(client.clone()),
            lock: LeaseLock::new(
                Api::namespaced(client, &namespace),
                &settings.lease_name,
                &settings.pod_name,
                settings.lease_seconds,
            ),
            settings,
            state,
            stats,
            resolver,
            tls_ready: Arc::default(),
            self_check,
            clock,
            served: None,
            failing_since: None,
            leader: tokio::sync::watch::Sender::new(false),
            renewed: None,
        }
    }

    /// Publishes whether this replica leads.
    fn set_leader(&self, leader: bool) {
        self.leader.send_if_modified(|held| {
            let changed = *held != leader;
            *held = leader;
            changed
        });
    }

    /// After a failed round: a holder that has not renewed within the Lease's duration (less
    /// a margin for clock and request latency) may have been replaced, so it stops leading.
    fn expire_leadership(&mut self) {
        let lease = Duration::from_secs(self.settings.lease_seconds.max(1) as u64);
        let margin = Duration::from_secs(2).min(lease / 2);
        if self
            .renewed
            .is_some_and(|at| at.elapsed() + margin >= lease)
        {
            self.renewed = None;
            warn!("The Lease was not renewed in time: this replica no longer leads");
            self.set_leader(false);
        }
    }

    /// Follows whether this replica leads (what only one replica does, e.g. the audit).
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// Uses `flag` as the readiness flag set once the Secret's certificate is served.
    pub fn with_ready_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.tls_ready = flag;
        self
    }

    /// Reconciles forever: every `reconcile_every` when healthy, with jittered backoff after
    /// a failure.
    pub async fn run(mut self) {
        let mut retry = Reconnect::new(Duration::from_millis(500), Duration::from_secs(60));
        loop {
            let span = info_span!(parent: None, "kubernetes.reconcile");
            // A round that hangs longer than the Lease lasts fails: leadership is decided
            // by the clock, not by how long the API server takes to answer.
            let limit = Duration::from_secs(self.settings.lease_seconds.max(1) as u64);
            let round = match tokio::time::timeout(limit, self.reconcile().instrument(span)).await {
                Ok(round) => round,
                Err(_) => Err(KubeError::Other(format!(
                    "the reconcile took longer than the Lease's {} s",
                    limit.as_secs()
                ))),
            };
            let delay = match round {
                Ok(round) => {
                    retry.reset();
                    self.stats.set_protection(round.protection, &round.note);
                    self.settings.reconcile_every
                }
                Err(error) => {
                    self.expire_leadership();
                    error!(%error, "Kubernetes reconcile failed; retrying");
                    self.stats
                        .set_protection(ProtectionState::DeployFailed, &error.to_string());
                    retry.next_delay()
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// One round: election, certificate, webhook configuration.
    pub async fn reconcile(&mut self) -> Result<Round, KubeError> {
        let now = (self.clock)();
        let election = match self.lock.acquire_or_renew(now).await {
            Ok(election) => election,
            Err(source) => {
                // Serving goes on; writing waits for the lease.
                warn!(error = %api_reason(&source), "Lease not reachable: not writing this round");
                self.ensure_certificate(false, now).await?;
                return Err(KubeError::Api {
                    what: format!("lease {}", self.settings.lease_name),
                    source,
                });
            }
        };
        // Leadership follows the election alone: a round that fails later (the certificate,
        // the webhook configuration) does not change who holds the Lease.
        if election.leader {
            self.renewed = Some(tokio::time::Instant::now());
        }
        self.set_leader(election.leader);
        let material = self.ensure_certificate(election.leader, now).await?;
        let mut round = Round {
            leader: election.leader,
            ..Default::default()
        };
        self.ensure_webhook(election, material.as_ref(), now, &mut round)
            .await?;
        Ok(round)
    }

    /// Reads the Secret; the leader replaces missing, tampered or expiring material. Whatever
    /// sound material there is gets served.
    async fn ensure_certificate(
        &mut self,
        leader: bool,
        now: OffsetDateTime,
    ) -> Result<Option<Material>, KubeError> {
        let name = self.settings.cert_secret.clone();
        let secret = self
            .secrets
            .get_opt(&name)
            .await
            .map_err(api_error(format!("reading Secret {name}")))?;
        let mut material = secret.as_ref().and_then(material_of);
        let verdict = certs::check(material.as_ref(), &self.settings.certs, now);
        if verdict != Verdict::Good && leader {
            let keep_ca = match (&verdict, &material) {
                (Verdict::NewLeaf(_), Some(m)) => Some((m.ca_cert.as_str(), m.ca_key.as_str())),
                _ => None,
            };
            let why = match &verdict {
                Verdict::NewLeaf(why) | Verdict::NewCa(why) => why.clone(),
                Verdict::Good => String::new(),
            };
            info!(secret = %name, reason = %why, new_ca = keep_ca.is_none(), "Issuing the webhook certificate");
            let fresh = certs::generate(&self.settings.certs, keep_ca, now)
                .map_err(|e| KubeError::Other(format!("generating the certificate: {e}")))?;
            let object = secret_object(&name, &fresh);
            self.secrets
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&object),
                )
                .await
                .map_err(api_error(format!("writing Secret {name}")))?;
            material = Some(fresh);
        }
        // The leader has just replaced anything unsound; a follower serves what the Secret
        // holds until the leader renews it.
        if let Some(m) = material.as_ref()
            && self.served.as_ref() != Some(m)
        {
            match crate::webhook::tls::certified_key(
                format!("{}{}", m.tls_cert, m.ca_cert).as_bytes(),
                m.tls_key.as_bytes(),
            ) {
                Ok(key) => {
                    self.resolver.replace(key);
                    self.served = Some(m.clone());
                    self.tls_ready
                        .store(true, std::sync::atomic::Ordering::Release);
                    info!(secret = %name, "Serving the webhook certificate from the Secret");
                }
                Err(error) => warn!(%error, "The Secret's certificate cannot be served"),
            }
        }
        Ok(self.served.clone())
    }

    async fn ensure_webhook(
        &mut self,
        election: Election,
        material: Option<&Material>,
        now: OffsetDateTime,
        round: &mut Round,
    ) -> Result<(), KubeError> {
        let name = self.settings.webhook_config_name.clone();
        let state = self.state.load_full();
        let actual = self
            .configs
            .get_opt(&name)
            .await
            .map_err(api_error(format!(
                "reading ValidatingWebhookConfiguration {name}"
            )))?;
        let protection = state.protection.clone();
        let enabled = protection.as_ref().is_some_and(|p| p.enabled) && !election.uninstalling;
        if protection.is_none() && !election.uninstalling {
            // Never synced: leave whatever is there until the control plane says.
            round.protection = ProtectionState::Unknown;
            return Ok(());
        }
        if !enabled {
            if election.leader && actual.is_some() {
                info!(config = %name, uninstalling = election.uninstalling, "Protection off: deleting the webhook configuration");
                match self.configs.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(api_error(format!("deleting {name}"))(e)),
                }
            }
            round.protection = ProtectionState::Unprotected;
            return Ok(());
        }
        let Some(material) = material else {
            return Err(KubeError::Other(
                "no serving certificate yet (waiting for the leader to issue it)".into(),
            ));
        };
        let settings = protection.unwrap_or_default();
        let failure_policy = self
            .failure_policy(
                &settings.failure_policy,
                actual.as_ref(),
                &material.ca_cert,
                now,
                round,
            )
            .await;
        let desired = Desired {
            name: name.clone(),
            endpoint: match &self.settings.webhook_url {
                Some(url) => Endpoint::Url(url.clone()),
                None => Endpoint::Service {
                    name: self.settings.service_name.clone(),
                    namespace: self.settings.namespace.clone(),
                    port: self.settings.service_port,
                },
            },
            ca_bundle_pem: material.ca_cert.clone(),
            exempt_namespaces: self.settings.exempt_namespaces.clone(),
            failure_policy,
            timeout_seconds: settings.timeout_seconds.clamp(1, 30),
        };
        let in_place = actual.as_ref().is_some_and(|a| desired.matches(a));
        if !in_place {
            if !election.leader {
                // The leader will put it right; until then this replica says what it sees.
                round.protection = if actual.is_some() {
                    ProtectionState::Protected
                } else {
                    ProtectionState::Unknown
                };
                return Ok(());
            }
            info!(config = %name, drift = actual.is_some(), failure_policy = failure_policy.kubernetes(), "Applying the webhook configuration");
            self.configs
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired.object()),
                )
                .await
                .map_err(api_error(format!(
                    "applying ValidatingWebhookConfiguration {name}"
                )))?;
        }
        round.protection = if state.policies.is_empty() {
            ProtectionState::ProtectedWithoutPolicy
        } else {
            ProtectionState::Protected
        };
        Ok(())
    }

    /// `Fail` only once the webhook answers through the Service; a programmed `Fail` whose
    /// webhook keeps failing the self-check for `fail_open_after` goes back to `Ignore`.
    async fn failure_policy(
        &mut self,
        wanted: &str,
        actual: Option<&ValidatingWebhookConfiguration>,
        ca_pem: &str,
        now: OffsetDateTime,
        round: &mut Round,
    ) -> FailurePolicy {
        let programmed_fail =
            actual.and_then(webhook_config::failure_policy_of) == Some(FailurePolicy::Fail);
        // The control plane validates the word; one this agent does not know (from a newer
        // control plane) keeps the default.
        if wanted.parse::<FailurePolicy>() != Ok(FailurePolicy::Fail) {
            self.failing_since = None;
            return FailurePolicy::Ignore;
        }
        match (self.self_check)(ca_pem.to_owned()).await {
            Ok(()) => {
                self.failing_since = None;
                FailurePolicy::Fail
            }
            Err(why) if programmed_fail => {
                let since = *self.failing_since.get_or_insert(now);
                let grace = time::Duration::try_from(self.settings.fail_open_after)
                    .unwrap_or(time::Duration::MAX);
                if now - since >= grace {
                    round.note = format!(
                        "failurePolicy downgraded to Ignore: the webhook has failed its \
                         self-check through the Service since {since}: {why}"
                    );
                    warn!(note = %round.note, "Failing open");
                    FailurePolicy::Ignore
                } else {
                    FailurePolicy::Fail
                }
            }
            Err(why) => {
                round.note = format!(
                    "failurePolicy Fail held back (Ignore programmed) until the webhook \
                     answers its self-check through the Service: {why}"
                );
                FailurePolicy::Ignore
            }
        }
    }
}

/// The material in a Secret's data, if every key is there as text.
fn material_of(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(Material {
        ca_cert: text(certs::CA_CERT)?,
        ca_key: text(certs::CA_KEY)?,
        tls_cert: text(certs::TLS_CERT)?,
        tls_key: text(certs::TLS_KEY)?,
    })
}

fn secret_object(name: &str, material: &Material) -> serde_json::Value {
    let data: BTreeMap<&str, ByteString> = material
        .entries()
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.as_bytes().to_vec())))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "portcullis-agent"},
        },
        "type": "kubernetes.io/tls",
        "data": data,
    })
}

/// `portcullis-agent uninstall`: stops every agent from programming the webhook (the Lease
/// mark), then deletes the configuration. Idempotent.
pub async fn uninstall(
    client: Client,
    namespace: &str,
    webhook_config_name: &str,
    lease_name: &str,
) -> Result<(), KubeError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    lease::mark_uninstalling(&leases, lease_name)
        .await
        .map_err(api_error(format!("marking Lease {lease_name}")))?;
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client);
    match configs
        .delete(webhook_config_name, &DeleteParams::default())
        .await
    {
        Ok(_) => info!(
            config = webhook_config_name,
            "Webhook configuration deleted"
        ),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            info!(
                config = webhook_config_name,
                "No webhook configuration to delete"
            )
        }
        Err(e) => return Err(api_error(format!("deleting {webhook_config_name}"))(e)),
    }
    Ok(())
}

/// `portcullis-agent verify`: a privileged Pod created in `namespace` as a server-side dry run
/// (nothing is stored, no event is recorded) must be denied by Portcullis's webhook. Returns
/// the denial; an admission, a denial by something else, or an API error is an error that
/// says which.
pub async fn verify(client: Client, namespace: &str, image: &str) -> Result<String, KubeError> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::PostParams;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "portcullis-verify-"},
        "spec": {"containers": [{
            "name": "privileged",
            "image": image,
            "securityContext": {"privileged": true},
        }]},
    }))
    .map_err(|e| KubeError::Other(format!("building the dry-run Pod: {e}")))?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match pods.create(&params, &pod).await {
        Ok(_) => Err(KubeError::Other(format!(
            "a privileged Pod would be admitted in namespace {namespace}: is the webhook \
             configuration programmed, does it cover {namespace} (not an exempt namespace), \
             and does a policy forbid privileged containers (`portcullis policy apply -f \
             examples/policies.yaml`)?"
        ))),
        Err(kube::Error::Api(status))
            if status.code == 403 && status.message.contains(webhook_config::WEBHOOK_NAME) =>
        {
            Ok(status.message.clone())
        }
        Err(kube::Error::Api(status)) if status.code == 403 => Err(KubeError::Other(format!(
            "the dry run was refused, but not by Portcullis's webhook: {}",
            status.message
        ))),
        Err(source) => Err(KubeError::Api {
            what: format!("creating a privileged Pod in {namespace} (dry run)"),
            source,
        }),
    }
}
