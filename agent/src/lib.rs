//! The Portcullis agent: keeps the control plane's state for its cluster in a durable cache,
//! enforces from it (the webhook reads an immutable snapshot), and reports status back.

pub mod admin;
pub mod args;
pub mod audit;
pub mod cache;
pub mod events;
pub mod k8s;
pub mod state;
pub mod stats;
pub mod sync;
pub mod telemetry;
pub mod webhook;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tracing::{Instrument, error, info, info_span, warn};

use args::{Cli, Command, RunArgs};

/// The agent's version, reported to the control plane.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use portcullis_runtime::clock::now_millis as now_ms;

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_agent(*args).await,
        Command::Verify(args) => {
            let client = ::kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API server")?;
            let denial = k8s::verify(client, &args.namespace, &args.image)
                .await
                .context("verify")?;
            println!("enforcement is live: {denial}");
            Ok(())
        }
        Command::Uninstall(args) => {
            let client = ::kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API server")?;
            k8s::uninstall(
                client,
                &args.namespace,
                &args.webhook_config_name,
                &args.lease_name,
            )
            .await
            .context("uninstall")?;
            Ok(())
        }
    }
}

async fn run_agent(args: RunArgs) -> Result<()> {
    if !args.standalone && args.kube.pod_name.is_empty() {
        bail!(
            "Kubernetes mode needs the pod's name (--pod-name or PORTCULLIS_POD_NAME, from the \
             downward API); run with --standalone outside a cluster"
        );
    }
    let exempt_namespaces = args.exempt_namespaces().map_err(anyhow::Error::msg)?;
    if !args.standalone {
        // Refused before anything starts, not when the leader first issues a certificate.
        args.kube.cert_lifetimes().map_err(anyhow::Error::msg)?;
    }
    // Only this user may read it: it holds the policies and events with user names.
    portcullis_runtime::files::private_dir(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let opened = cache::Cache::open_or_recover(&args.data_dir)
        .with_context(|| format!("opening the cache in {}", args.data_dir.display()))?;
    let stats = Arc::new(stats::SyncStats::default());
    if let Some(note) = &opened.recovered {
        error!(note = %note, "Cache was corrupt: starting empty, a resync rebuilds it");
        *stats
            .cache_recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            Some(format!("cache was corrupt and rebuilt: {note}"));
    }
    if opened.state.is_loaded() {
        info!(epoch = %opened.state.epoch, revision = opened.state.revision, policies = opened.state.policies.len(), "Serving from the cache");
    } else {
        info!("No cached state: waiting for the first snapshot");
    }
    let state = state::handle(opened.state);
    let cache = Arc::new(opened.cache);
    let events_config = events::EventsConfig {
        limits: events::OutboxLimits {
            max_events: args.event_outbox_max_events,
            max_bytes: args.event_outbox_max_bytes,
        },
        batch_events: args.event_batch_size,
        ..Default::default()
    };
    let outbox = if args.record_events {
        let outbox = events::Outbox::open(cache.db(), events_config.limits)
            .context("opening the event outbox")?;
        if !outbox.is_empty() {
            info!(pending = outbox.len(), "Events waiting in the outbox");
        }
        Some(Arc::new(outbox))
    } else {
        None
    };

    // Threads of the runtime that serves the webhook's connections (below).
    let webhook_threads = cpus().min(4);
    let webhook = webhook::Webhook::new(
        webhook::WebhookConfig {
            cluster: args.cluster.clone(),
            exempt_namespaces: exempt_namespaces.clone(),
            exempt_users: vec![args.own_user()],
            max_body_bytes: args.webhook_max_body_bytes,
            max_in_flight: args.webhook_max_in_flight,
            evaluators: args.webhook_evaluators.unwrap_or_else(cpus),
            max_queue_wait: Duration::from_millis(args.webhook_max_queue_wait_ms),
            body_timeout: Duration::from_secs(args.webhook_request_timeout),
            decide_small_inline: webhook_threads >= 2,
        },
        state.clone(),
    )
    .context("starting the webhook's evaluators")?
    .with_trace_ratio(args.trace_reviews);
    let audit_stats =
        (!args.standalone && args.kube.audit).then(|| Arc::new(audit::AuditStats::default()));
    let metrics = telemetry::metrics(
        state.clone(),
        stats.clone(),
        outbox.clone(),
        webhook.pool_stats(),
        audit_stats.clone(),
    )?;
    // Kubernetes mode serves the Secret's certificate: not ready until it is loaded.
    let tls_ready = Arc::new(std::sync::atomic::AtomicBool::new(args.standalone));
    let admin_state = admin::AdminState {
        cluster: args.cluster.clone(),
        control_planes: args.control_plane.iter().map(ToString::to_string).collect(),
        listening: Arc::default(),
        tls_ready: tls_ready.clone(),
        state: state.clone(),
        stats: stats.clone(),
        registry: metrics.registry.clone(),
        outbox: outbox.clone(),
        webhook: webhook.pool_stats(),
        audit: audit_stats.clone(),
    };
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding admin listener {}", args.admin_listen))?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut admin_task = portcullis_runtime::admin::serve(
        admin_listener,
        admin::router(admin_state.clone()),
        shutdown_rx.clone(),
    );

    let resolver = match (&args.webhook_cert, &args.webhook_key) {
        _ if !args.standalone => {
            // A placeholder until the controller loads the Secret's certificate.
            let (key, _) = webhook::tls::self_signed(&["localhost".to_owned()])?;
            webhook::tls::CertResolver::new(key)
        }
        (Some(cert), Some(key)) => {
            let resolver = webhook::tls::CertResolver::new(webhook::tls::load_files(cert, key)?);
            tokio::spawn(
                webhook::tls::watch_files(
                    resolver.clone(),
                    cert.clone(),
                    key.clone(),
                    Duration::from_secs(10),
                )
                .instrument(info_span!("webhook-cert")),
            );
            resolver
        }
        _ => {
            let (key, pem) = webhook::tls::self_signed(&args.webhook_sans)?;
            if let Some(out) = &args.webhook_cert_out {
                std::fs::write(out, pem).with_context(|| format!("writing {}", out.display()))?;
            }
            info!(names = ?args.webhook_sans, "Webhook serves a generated self-signed certificate");
            webhook::tls::CertResolver::new(key)
        }
    };
    let webhook_listener = tokio::net::TcpListener::bind(args.webhook_listen)
        .await
        .with_context(|| format!("binding webhook listener {}", args.webhook_listen))?;
    let reporter = sync::status::StatusReporter::default();
    let kube_task = if args.standalone {
        None
    } else {
        let client = ::kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API server (in-cluster configuration)")?;
        let k = &args.kube;
        let host = k
            .webhook_url
            .as_deref()
            .and_then(|u| u.parse::<http::Uri>().ok())
            .and_then(|u| u.host().map(str::to_owned));
        let mut certs =
            k8s::certs::CertPolicy::for_service(&k.service_name, &args.namespace, host.as_deref());
        certs.ca_validity = time::Duration::days(k.cert_ca_days);
        let (validity, renew_before) = k.cert_lifetimes().map_err(anyhow::Error::msg)?;
        certs.leaf_validity = time::Duration::seconds(validity);
        certs.renew_before = time::Duration::seconds(renew_before);
        let self_check_url = k.webhook_url.clone().unwrap_or_else(|| {
            format!(
                "https://{}.{}.svc:{}/validate",
                k.service_name, args.namespace, k.service_port
            )
        });
        let settings = k8s::KubeSettings {
            namespace: args.namespace.clone(),
            pod_name: k.pod_name.clone(),
            service_name: k.service_name.clone(),
            service_port: k.service_port,
            webhook_config_name: k.webhook_config_name.clone(),
            cert_secret: k.cert_secret.clone(),
            lease_name: k.lease_name.clone(),
            webhook_url: k.webhook_url.clone(),
            exempt_namespaces: exempt_namespaces.clone(),
            certs,
            fail_open_after: Duration::from_secs(k.fail_open_after),
            reconcile_every: Duration::from_secs(k.reconcile_interval),
            lease_seconds: 15,
        };
        let controller = k8s::Controller::new(
            client.clone(),
            settings,
            state.clone(),
            stats.clone(),
            resolver.clone(),
            k8s::selfcheck::through(self_check_url, args.webhook_client_ca.is_some()),
            Arc::new(time::OffsetDateTime::now_utc),
        )
        .with_ready_flag(tls_ready.clone());
        if let Some(audit_stats) = &audit_stats {
            tokio::spawn(audit::run(
                client,
                cache.db().clone(),
                audit::AuditConfig::new(&args.cluster, &exempt_namespaces),
                state.clone(),
                controller.leadership(),
                reporter.client(),
                audit_stats.clone(),
            ));
        }
        Some(tokio::spawn(
            controller.run().instrument(info_span!("kubernetes")),
        ))
    };
    // The writer stops after the webhook has drained, so no decision's event is lost.
    let (events_stop, events_stop_rx) = tokio::sync::watch::channel(false);
    let (webhook, event_tasks) = match &outbox {
        Some(outbox) => {
            let (recorder, rx) = events::Recorder::new(outbox.dropped.clone());
            let written = Arc::new(tokio::sync::Notify::new());
            let writer = tokio::spawn(
                events::run_writer(
                    args.cluster.clone(),
                    outbox.clone(),
                    rx,
                    events_config.flush_interval,
                    written.clone(),
                    events_stop_rx,
                )
                .instrument(info_span!("event-writer")),
            );
            let sender = tokio::spawn(
                events::sender::run_sender(
                    args.cluster.clone(),
                    outbox.clone(),
                    reporter.client(),
                    written,
                    events_config.clone(),
                )
                .instrument(info_span!("event-sender")),
            );
            (webhook.with_recorder(recorder), Some((writer, sender)))
        }
        None => (webhook, None),
    };
    let webhook_tls = match &args.webhook_client_ca {
        Some(path) => {
            let cas = webhook::tls::load_client_cas(path).context("--webhook-client-ca")?;
            info!(client_ca = %path.display(), "Webhook requires client certificates");
            webhook::tls::server_config_mtls(resolver, cas)?
        }
        None => webhook::tls::server_config(resolver),
    };
    // The webhook's connections run on a runtime of their own (and decisions on the
    // evaluation pool), so a flood of admission traffic cannot starve the sync stream, the
    // heartbeats or the admin server of this runtime.
    let webhook_runtime = OwnRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(webhook_threads)
            .thread_name("portcullis-webhook")
            .enable_all()
            .build()
            .context("starting the webhook runtime")?,
    ));
    let webhook_listener = {
        let listener = webhook_listener
            .into_std()
            .context("moving the webhook listener")?;
        let _runtime = webhook_runtime.handle().enter();
        tokio::net::TcpListener::from_std(listener).context("moving the webhook listener")?
    };
    let mut webhook_task = webhook_runtime.handle().spawn(
        webhook::server::serve(
            webhook_listener,
            webhook_tls,
            webhook::router(webhook),
            shutdown_rx.clone(),
            webhook::server::ServeLimits {
                max_connections: args.webhook_max_connections,
                header_timeout: Duration::from_secs(args.webhook_request_timeout),
                ..webhook::server::ServeLimits::default()
            },
        )
        .instrument(info_span!("webhook")),
    );

    let reporter_task = tokio::spawn(
        reporter
            .clone()
            .run(
                args.cluster.clone(),
                state.clone(),
                stats.clone(),
                outbox.clone(),
                Duration::from_secs(args.status_interval),
            )
            .instrument(info_span!("status")),
    );
    let client = sync::SyncClient {
        config: sync::SyncConfig {
            cluster: args.cluster.clone(),
            control_planes: args.control_plane.clone(),
            token_file: args.token_file.clone(),
            ca_file: args.ca_file.clone(),
            heartbeat_misses: args.heartbeat_misses,
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(args.reconnect_max),
        },
        cache,
        state,
        stats,
        reporter,
        last_token: Default::default(),
    };
    let mut sync_task = tokio::spawn(
        client
            .run()
            .instrument(info_span!("sync", cluster = %args.cluster)),
    );

    admin_state.listening.store(true, Ordering::Release);
    info!(cluster = %args.cluster, admin = %args.admin_listen, webhook = %args.webhook_listen, standalone = args.standalone, "Agent running");

    tokio::select! {
        result = &mut sync_task => {
            bail!("the sync client stopped: {result:?}");
        }
        result = &mut admin_task => {
            bail!("the admin server stopped: {result:?}");
        }
        result = &mut webhook_task => {
            bail!("the webhook server stopped: {result:?}");
        }
        () = portcullis_runtime::signal::shutdown() => {}
    }
    info!("Draining");
    admin_state.listening.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    sync_task.abort();
    reporter_task.abort();
    if let Some(task) = kube_task {
        task.abort();
    }
    let drained = async {
        let _ = tokio::join!(admin_task, webhook_task);
        // The webhook is closed: the writer gets the last events to disk.
        if let Some((writer, sender)) = event_tasks {
            let _ = events_stop.send(true);
            let _ = writer.await;
            sender.abort();
        }
    };
    tokio::select! {
        () = drained => info!("Drained"),
        () = tokio::time::sleep(Duration::from_secs(10)) => warn!("Drain timed out"),
        () = portcullis_runtime::signal::shutdown() => warn!("Second signal: exiting now"),
    }
    Ok(())
}

/// A runtime owned by `run`, shut down without waiting when it goes (a runtime dropped the
/// ordinary way would block the async context that drops it).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until dropped")
            .handle()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The CPUs this process may use.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}
