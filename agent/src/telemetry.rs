//! The agent's metrics: OpenTelemetry meters exported to the Prometheus registry that
//! `/metrics` serves (see `portcullis_runtime::metrics`).

use std::sync::{Arc, atomic::Ordering};

use portcullis_runtime::metrics::Metrics;

use crate::{events::Outbox, state::StateHandle, stats::SyncStats, webhook::pool::PoolStats};

/// Reads one counter of the sync statistics.
type ReadCounter = fn(&SyncStats) -> u64;

/// Registers the agent's instruments; keep the returned `Metrics` alive.
pub fn metrics(
    state: StateHandle,
    stats: Arc<SyncStats>,
    outbox: Option<Arc<Outbox>>,
    webhook: Arc<PoolStats>,
) -> anyhow::Result<Metrics> {
    let metrics = Metrics::new()?;
    let meter = metrics.meter("portcullis-agent");
    let counters: [(&str, &str, ReadCounter); 4] = [
        (
            "portcullis_agent_snapshots_applied",
            "Snapshots applied",
            |s| s.snapshots.load(Ordering::Relaxed),
        ),
        ("portcullis_agent_deltas_applied", "Deltas applied", |s| {
            s.deltas.load(Ordering::Relaxed)
        }),
        (
            "portcullis_agent_nacks",
            "Revisions that could not be applied",
            |s| s.nacks.load(Ordering::Relaxed),
        ),
        ("portcullis_agent_reconnects", "Sync reconnects", |s| {
            s.reconnects.load(Ordering::Relaxed)
        }),
    ];
    for (name, description, read) in counters {
        let stats = stats.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| observer.observe(read(&stats), &[]))
            .build();
    }
    meter
        .u64_observable_gauge("portcullis_agent_revision")
        .with_description("The revision the agent enforces")
        .with_callback(move |observer| observer.observe(state.load().revision, &[]))
        .build();
    let connected = stats.clone();
    meter
        .u64_observable_gauge("portcullis_agent_connected")
        .with_description("1 while the Sync stream is up")
        .with_callback(move |observer| observer.observe(u64::from(connected.connected()), &[]))
        .build();
    let refused = webhook.clone();
    meter
        .u64_observable_counter("portcullis_agent_webhook_refused")
        .with_description("Admission reviews refused with 503: the evaluation queue was full")
        .with_callback(move |observer| observer.observe(refused.full.load(Ordering::Relaxed), &[]))
        .build();
    meter
        .u64_observable_counter("portcullis_agent_webhook_shed")
        .with_description(
            "Admission reviews shed with 503 after waiting past their budget for an evaluator",
        )
        .with_callback(move |observer| observer.observe(webhook.shed.load(Ordering::Relaxed), &[]))
        .build();
    if let Some(outbox) = outbox {
        type ReadOutbox = fn(&Outbox) -> u64;
        let gauges: [(&str, &str, ReadOutbox); 4] = [
            (
                "portcullis_agent_events_pending",
                "Events waiting in the outbox",
                Outbox::len,
            ),
            (
                "portcullis_agent_events_dropped",
                "Events dropped because the outbox was full or an entry was unreadable",
                Outbox::dropped,
            ),
            (
                "portcullis_agent_events_refused",
                "Events the control plane refused for good (dropped, each logged with its id)",
                Outbox::refused,
            ),
            (
                "portcullis_agent_events_delivered",
                "Events the control plane acknowledged since the agent started",
                Outbox::delivered,
            ),
        ];
        for (name, description, read) in gauges {
            let outbox = outbox.clone();
            meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| observer.observe(read(&outbox), &[]))
                .build();
        }
    }
    Ok(metrics)
}
