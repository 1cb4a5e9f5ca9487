//! The agent's metrics: OpenTelemetry meters exported to the Prometheus registry that
//! `/metrics` serves (see `portcullis_runtime::metrics`).

use std::sync::{Arc, atomic::Ordering};

use portcullis_runtime::metrics::Metrics;

use crate::{
    audit::AuditStats, events::Outbox, state::StateHandle, stats::SyncStats,
    webhook::pool::PoolStats,
};

/// Reads one counter of the sync statistics.
type ReadCounter = fn(&SyncStats) -> u64;

/// One instrument: its name, its description, and how it reads its source.
type Reading<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Which kind of instrument `observe` registers.
#[derive(Clone, Copy)]
enum Instrument {
    Gauge,
    Counter,
}

/// Registers one `u64` instrument per (name, description, reader) over `source`.
fn observe<T: Send + Sync + 'static>(
    meter: &opentelemetry::metrics::Meter,
    instrument: Instrument,
    source: &Arc<T>,
    list: &[Reading<T>],
) {
    for &(name, description, read) in list {
        let source = source.clone();
        let callback = move |observer: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
            observer.observe(read(&source), &[])
        };
        match instrument {
            Instrument::Gauge => {
                meter
                    .u64_observable_gauge(name)
                    .with_description(description)
                    .with_callback(callback)
                    .build();
            }
            Instrument::Counter => {
                meter
                    .u64_observable_counter(name)
                    .with_description(description)
                    .with_callback(callback)
                    .build();
            }
        }
    }
}

/// Registers the agent's instruments; keep the returned `Metrics` alive.
pub fn metrics(
    state: StateHandle,
    stats: Arc<SyncStats>,
    outbox: Option<Arc<Outbox>>,
    webhook: Arc<PoolStats>,
    audit: Option<Arc<AuditStats>>,
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
    observe(&meter, Instrument::Counter, &stats, &counters);
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
    if let Some(audit) = audit {
        type ReadAudit = fn(&AuditStats) -> u64;
        let gauges: [(&str, &str, ReadAudit); 4] = [
            (
                "portcullis_agent_audit_running",
                "1 while this replica audits (it holds the Lease)",
                |a| a.running.load(Ordering::Relaxed),
            ),
            (
                "portcullis_agent_audit_objects",
                "Objects the audit judges on their own (not through a controller)",
                |a| a.objects.load(Ordering::Relaxed),
            ),
            (
                "portcullis_agent_audit_violations_open",
                "Open audit violations",
                |a| a.open.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "portcullis_agent_audit_violations_pending",
                "Violation changes waiting for the control plane",
                |a| a.pending.load(Ordering::Relaxed),
            ),
        ];
        observe(&meter, Instrument::Gauge, &audit, &gauges);
        let counters: [(&str, &str, ReadAudit); 6] = [
            ("portcullis_agent_audit_judged", "Audit judgements", |a| {
                a.judged.load(Ordering::Relaxed)
            }),
            (
                "portcullis_agent_audit_malformed_objects",
                "Watched objects the engine could not read (skipped)",
                |a| a.malformed.load(Ordering::Relaxed),
            ),
            (
                "portcullis_agent_audit_relists",
                "Audit listings after the first (a watch restarted, e.g. after 410 Gone)",
                |a| a.relists.load(Ordering::Relaxed),
            ),
            (
                "portcullis_agent_audit_watch_errors",
                "Audit watch errors (retried with backoff)",
                |a| a.watch_errors.load(Ordering::Relaxed),
            ),
            (
                "portcullis_agent_audit_delivered",
                "Violation changes the control plane acknowledged",
                |a| a.delivered.load(Ordering::Relaxed),
            ),
            (
                "portcullis_agent_audit_refused",
                "Violation changes the control plane refused for good (dropped, logged)",
                |a| a.refused.load(Ordering::Relaxed),
            ),
        ];
        observe(&meter, Instrument::Counter, &audit, &counters);
    }
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
        observe(&meter, Instrument::Gauge, &outbox, &gauges);
    }
    Ok(metrics)
}
