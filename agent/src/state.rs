//! The state the agent enforces: an immutable snapshot of the policies in scope for its cluster,
//! the image scan summaries and the cluster's protection settings at one (epoch, revision). Readers (the webhook) load
//! the current `Arc<AgentState>` without a lock; the sync client swaps in a new one after each
//! applied revision.

use std::{collections::BTreeMap, sync::Arc};

use arc_swap::ArcSwap;

use portcullis_engine::ScanIndex;

use portcullis_proto::v1::{Policy, ProtectionSettings};

/// A policy as received (for the cache and for reports) and as validated (for enforcement).
#[derive(Debug)]
pub struct LoadedPolicy {
    pub proto: Policy,
    pub policy: portcullis_policy::Policy,
}

impl LoadedPolicy {
    /// Validates a policy from the control plane or the cache.
    pub fn load(proto: Policy) -> Result<Self, String> {
        let policy = portcullis_policy::Policy::try_from(&proto)
            .map_err(|e| format!("policy {:?}: {e}", proto.name))?;
        Ok(Self { proto, policy })
    }
}

/// The policies of a snapshot or of the cache by name (a repeated name keeps the last), with
/// equal rule sets held once (see `SharedRules`: the engine then checks them once).
pub fn policy_map(mut loaded: Vec<LoadedPolicy>) -> BTreeMap<String, Arc<LoadedPolicy>> {
    portcullis_policy::share_rules(loaded.iter_mut().map(|p| &mut p.policy));
    let named = loaded
        .into_iter()
        .map(|p| (p.proto.name.clone(), Arc::new(p)));
    named.collect()
}

/// One applied revision of the control plane's state, as it concerns this cluster.
#[derive(Clone, Debug, Default)]
pub struct AgentState {
    /// Empty until the first snapshot: the agent has never synced.
    pub epoch: String,
    pub revision: u64,
    pub protection: Option<ProtectionSettings>,
    pub policies: BTreeMap<String, Arc<LoadedPolicy>>,
    /// Every image scan's summary (copy-on-write: a new state shares what did not change).
    pub scans: ScanIndex,
    /// Unix milliseconds of the last apply.
    pub applied_at_ms: i64,
}

impl AgentState {
    /// Whether there is any state to enforce (from a sync or from the cache).
    pub fn is_loaded(&self) -> bool {
        !self.epoch.is_empty()
    }
}

/// Where readers find the current state.
pub type StateHandle = Arc<ArcSwap<AgentState>>;

/// A handle holding `state`.
pub fn handle(state: AgentState) -> StateHandle {
    Arc::new(ArcSwap::from_pointee(state))
}
