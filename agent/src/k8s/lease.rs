//! Leader election with a `coordination.k8s.io/v1` Lease: one replica writes (Secret, webhook
//! configuration); every replica serves. The holder renews its lease every reconcile; another
//! replica takes it over only once it has expired. Writes use the Lease's resourceVersion, so
//! two replicas racing for it cannot both win (the loser gets 409 Conflict).
//!
//! `portcullis-agent uninstall` marks the Lease: agents then stop programming the webhook and
//! remove it, so a running leader cannot recreate what the uninstall deleted.

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

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

fn micro_time(t: OffsetDateTime) -> String {
    // MicroTime: RFC 3339 with microseconds.
    let t = t.replace_nanosecond(t.microsecond() * 1000).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

fn parse_time(value: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value.as_str()?, &Rfc3339).ok()
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
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self.duration_seconds,
                    "acquireTime": micro_time(now),
                    "renewTime": micro_time(now),
                    "leaseTransitions": 0,
                },
            }))
            .map_err(kube::Error::SerdeError)?;
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
        let mut value = serde_json::to_value(&current).map_err(kube::Error::SerdeError)?;
        let uninstalling = value["metadata"]["annotations"][UNINSTALLING] == "true";
        let spec = &value["spec"];
        let holder = spec["holderIdentity"].as_str().unwrap_or_default();
        let duration = spec["leaseDurationSeconds"]
            .as_i64()
            .unwrap_or(self.duration_seconds);
        let renewed = parse_time(&spec["renewTime"]).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let mine = holder == self.identity;
        let expired = renewed + time::Duration::seconds(duration) < now;
        if !mine && !holder.is_empty() && !expired {
            return Ok(Election {
                leader: false,
                uninstalling,
            });
        }
        let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
        let spec = &mut value["spec"];
        if !mine {
            spec["acquireTime"] = micro_time(now).into();
            spec["leaseTransitions"] = (transitions + 1).into();
        }
        spec["holderIdentity"] = self.identity.clone().into();
        spec["leaseDurationSeconds"] = self.duration_seconds.into();
        spec["renewTime"] = micro_time(now).into();
        let lease: Lease = serde_json::from_value(value).map_err(kube::Error::SerdeError)?;
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
    let patch = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "annotations": {UNINSTALLING: "true"}},
    });
    let params = kube::api::PatchParams::apply(super::FIELD_MANAGER).force();
    api.patch(name, &params, &kube::api::Patch::Apply(&patch))
        .await
        .map(drop)
}
