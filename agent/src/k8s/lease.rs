//! Leader election with a `coordination.k8s.io/v1` Lease: one replica writes (Secret, webhook
//! configuration); every replica serves. The holder renews its lease every reconcile; another
//! replica takes it over only once it has expired. Writes use the Lease's resourceVersion, so
//! two replicas racing for it cannot both win (the loser gets 409 Conflict).
//!
//! `portcullis-agent uninstall` marks the Lease: agents then stop programming the webhook and
//! remove it, so a running leader cannot recreate what the uninstall deleted.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use time::OffsetDateTime;

/// The annotation `uninstall` sets on the Lease.
pub const UNINSTALLING: &str = "portcullis.io/uninstalling";

/// What a round of election found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Election {
    pub leader: bool,
    /// The chart is being uninstalled: program nothing, remove the webhook.
    pub uninstalling: bool,
}

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration_seconds: i64,
}

/// `t` to the microsecond, as a Lease holds it.
fn micro_time(t: OffsetDateTime) -> Option<MicroTime> {
    let micros = i64::try_from(t.unix_timestamp_nanos() / 1000).ok()?;
    Timestamp::from_microsecond(micros).ok().map(MicroTime)
}

fn from_micro_time(t: &MicroTime) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(t.0.as_nanosecond()).ok()
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration_seconds: i64) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration_seconds,
        }
    }

    /// Takes the lease if it is free or expired, renews it if held; says who leads.
    pub async fn acquire_or_renew(&self, now: OffsetDateTime) -> Result<Election, kube::Error> {
        let duration = i32::try_from(self.duration_seconds).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: micro_time(now),
                    renew_time: micro_time(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Election {
                    leader: true,
                    uninstalling: false,
                }),
                Err(e) if is_conflict(&e) => Ok(Election {
                    leader: false,
                    uninstalling: false,
                }),
                Err(e) => Err(e),
            };
        };
        let uninstalling = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(UNINSTALLING))
            .is_some_and(|v| v == "true");
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.duration_seconds, i64::from);
        let renewed = spec
            .renew_time
            .as_ref()
            .and_then(from_micro_time)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let mine = holder == self.identity;
        let expired = renewed + time::Duration::seconds(held_for) < now;
        if !mine && !holder.is_empty() && !expired {
            return Ok(Election {
                leader: false,
                uninstalling,
            });
        }
        if !mine {
            spec.acquire_time = micro_time(now);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = micro_time(now);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Election {
                leader: true,
                uninstalling,
            }),
            Err(e) if is_conflict(&e) => Ok(Election {
                leader: false,
                uninstalling,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Marks the Lease `uninstalling` (creating it if needed), so no agent programs the webhook
/// again.
pub async fn mark_uninstalling(api: &Api<Lease>, name: &str) -> Result<(), kube::Error> {
    let patch = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(BTreeMap::from([(
                UNINSTALLING.to_owned(),
                "true".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: None,
    };
    let params = kube::api::PatchParams::apply(super::FIELD_MANAGER).force();
    api.patch(name, &params, &kube::api::Patch::Apply(&patch))
        .await
        .map(drop)
}
