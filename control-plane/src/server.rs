//! Wiring: open the store, set up auth and TLS, serve gRPC and admin HTTP, compact the change
//! log, enforce event retention and purge resolved violations in the background, and drain on
//! SIGTERM (a second signal exits at once).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use opentelemetry::KeyValue;
use tokio::{net::TcpListener, sync::watch};
use tonic::{service::Routes, transport::Server};
use tracing::{Instrument, error, info, info_span, warn};

use portcullis_proto::v1::{
    agent_service_server::AgentServiceServer, audit_service_server::AuditServiceServer,
    cluster_service_server::ClusterServiceServer, event_service_server::EventServiceServer,
    policy_service_server::PolicyServiceServer, scan_service_server::ScanServiceServer,
};

use crate::{
    admin::{self, AdminState},
    api::{AgentApi, AuditApi, ClusterApi, EventApi, PolicyApi, REQUEST_OVERHEAD_BYTES, ScanApi},
    args::ServeArgs,
    audit::{self, AuditSettings, ViolationStore},
    auth::{self, Authenticator, Role},
    console::{Apis, Console, ConsoleSettings, GrpcOrConsole, SessionLimits, is_grpc},
    events::{self, EventSettings, EventStore},
    fleet::Fleet,
    listen,
    store::Store,
    sync::SyncSettings,
    tls,
};

/// Runs the control plane until SIGTERM/SIGINT.
pub async fn serve(args: ServeArgs) -> Result<()> {
    // Only this user may read it: it holds tokens' hashes, events with user names, policies.
    portcullis_runtime::files::private_dir(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let store = Arc::new(open_store(&args).await?);
    info!(data_dir = %args.data_dir.display(), backend = store.backend_name(), epoch = store.epoch(), revision = store.revision(), "Store open");

    let mut authenticator = Authenticator::new(store.clone());
    let token_path = args.admin_token_path();
    let admin_token = auth::bootstrap_admin_token(&token_path)
        .with_context(|| format!("bootstrap admin token {}", token_path.display()))?;
    authenticator.add_operator("bootstrap-admin", Role::Admin, &admin_token);
    drop(admin_token);
    info!(path = %token_path.display(), "Bootstrap admin token (mode 0600)");
    if let Some(path) = &args.tokens_file {
        let count = authenticator.load_tokens_file(path)?;
        info!(path = %path.display(), count, "Operator tokens loaded");
    }
    let authenticator = Arc::new(authenticator);

    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => tls::load(cert, key)?,
        _ => {
            let identity = tls::generated(&args.data_dir, &args.tls_sans)?;
            let ca = tls::tls_dir(&args.data_dir).join("ca.crt");
            info!(ca = %ca.display(), "Serving a certificate from the generated local CA");
            identity
        }
    };

    let metrics = portcullis_runtime::metrics::Metrics::new()?;
    let meter = metrics.meter("portcullis-control-plane");
    let gauge_store = store.clone();
    let _revision_gauge = meter
        .u64_observable_gauge("portcullis_store_revision")
        .with_description("The store's last durable revision")
        .with_callback(move |observer| {
            observer.observe(
                gauge_store.revision(),
                &[KeyValue::new("epoch", gauge_store.epoch().to_owned())],
            )
        })
        .build();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PolicyServiceServer<PolicyApi>>()
        .await;
    health_reporter
        .set_serving::<ClusterServiceServer<ClusterApi>>()
        .await;
    health_reporter
        .set_serving::<AgentServiceServer<AgentApi>>()
        .await;
    health_reporter
        .set_serving::<ScanServiceServer<ScanApi>>()
        .await;
    health_reporter
        .set_serving::<EventServiceServer<EventApi>>()
        .await;
    health_reporter
        .set_serving::<AuditServiceServer<AuditApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(portcullis_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection v1")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(portcullis_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    let grpc_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding gRPC listener {}", args.listen))?;
    let admin_listener = admin::bind(args.admin_listen).await?;
    let admin_state = AdminState {
        ready: Arc::default(),
        registry: metrics.registry.clone(),
        store: {
            let store = store.clone();
            Arc::new(move || store.is_available())
        },
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let admin_task = portcullis_runtime::admin::serve(
        admin_listener,
        admin::router(admin_state.clone()),
        shutdown_rx.clone(),
    );
    let compaction_task = tokio::spawn(
        compact_periodically(store.clone(), args.changelog_keep, args.compaction_interval)
            .instrument(info_span!("compaction")),
    );
    let events = Arc::new(
        EventStore::open(
            store.clone(),
            EventSettings {
                max_age: Duration::from_secs(args.event_max_age_hours.saturating_mul(3600)),
                max_count: args.event_max_count,
                max_batch: args.event_max_batch,
            },
        )
        .context("opening the event store")?,
    );
    info!(events = events.len(), "Event store open");
    let retention_task = tokio::spawn(
        events::retain_periodically(events.clone(), Duration::from_secs(60))
            .instrument(info_span!("event_retention")),
    );
    let violations = Arc::new(
        ViolationStore::open(
            store.clone(),
            AuditSettings {
                retention: Duration::from_secs(
                    args.violation_retention_days.saturating_mul(86_400),
                ),
            },
        )
        .await
        .context("opening the audit store")?,
    );
    info!(open = violations.open_total(), "Audit store open");
    let purge_task = tokio::spawn(
        audit::purge_periodically(violations.clone(), Duration::from_secs(3600))
            .instrument(info_span!("violation_retention")),
    );
    let gauge_violations = violations.clone();
    let _violations_gauge = meter
        .u64_observable_gauge("portcullis_violations_open")
        .with_description("Open audit violations of every cluster")
        .with_callback(move |observer| observer.observe(gauge_violations.open_total(), &[]))
        .build();

    let max_report_bytes = args
        .max_report_bytes
        .min(portcullis_scan::MAX_REPORT_BYTES_CEILING);
    let fleet = match store.postgres_pool() {
        Some(pool) => Fleet::shared(pool.clone()),
        None => Fleet::default(),
    };
    let policies = Arc::new(PolicyApi::new(store.clone(), authenticator.clone()));
    let clusters = Arc::new(ClusterApi::new(
        store.clone(),
        authenticator.clone(),
        fleet.clone(),
        violations.clone(),
    ));
    let event_api = Arc::new(EventApi::new(events.clone(), authenticator.clone()));
    let scan_api = Arc::new(ScanApi::new(
        store.clone(),
        authenticator.clone(),
        max_report_bytes,
    ));
    // ImportReport carries the report: tonic must decode a request at the limit. A request
    // slightly over it reaches the parser (InvalidArgument naming --max-report-bytes); one far
    // beyond is refused by tonic's decoder (OutOfRange, naming its limit) before buffering.
    let scans = ScanServiceServer::from_arc(scan_api.clone())
        .max_decoding_message_size(max_report_bytes.saturating_add(REQUEST_OVERHEAD_BYTES));
    let mut grpc_routes = Routes::builder();
    grpc_routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PolicyServiceServer::from_arc(policies.clone()))
        .add_service(ClusterServiceServer::from_arc(clusters.clone()))
        .add_service(scans)
        .add_service(EventServiceServer::from_arc(event_api.clone()))
        .add_service(AuditServiceServer::new(AuditApi::new(
            violations.clone(),
            store.clone(),
            authenticator.clone(),
        )))
        .add_service(AgentServiceServer::new(AgentApi::new(
            store.clone(),
            events,
            violations,
            authenticator.clone(),
            fleet,
            SyncSettings {
                heartbeat: Duration::from_secs(args.heartbeat_interval),
                shutdown: shutdown_rx.clone(),
            },
        )));
    let console = Console::new(
        authenticator.clone(),
        Apis {
            policies,
            clusters,
            events: event_api,
            scans: scan_api,
        },
        ConsoleSettings {
            sessions: SessionLimits {
                idle: Duration::from_secs(args.console_idle_minutes.saturating_mul(60)),
                absolute: Duration::from_secs(args.console_session_hours.saturating_mul(3600)),
                ..SessionLimits::default()
            },
            max_report_bytes,
            shutdown: shutdown_rx.clone(),
        },
    );
    // One TLS port: gRPC by content type, everything else to the web console.
    let routes = Routes::from(axum::Router::new().fallback_service(GrpcOrConsole::new(
        grpc_routes.routes().into_axum_router(),
        console.router(),
    )));
    let grpc = Server::builder()
        // A span per call (the sync session and snapshot spans nest under a Sync call's).
        .trace_fn(|request| {
            let path = request.uri().path();
            if is_grpc(request) {
                info_span!(
                    "grpc",
                    otel.name = %path,
                    otel.kind = "server",
                    rpc.system = "grpc",
                    rpc.method = %path,
                )
            } else {
                // Console pages: paths carry names, so they stay out of the span's name.
                info_span!(
                    "console",
                    otel.name = "console",
                    otel.kind = "server",
                    http.request.method = %request.method(),
                    url.path = %path,
                )
            }
        })
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Browsers may speak HTTP/1.1 to the console.
        .accept_http1(true)
        .add_routes(routes);
    let grpc_addr = grpc_listener.local_addr()?;
    let (incoming, accept_task) =
        listen::incoming(grpc_listener, listen::server_config(&identity)?);
    let mut grpc_shutdown = shutdown_rx.clone();
    let mut grpc_task = tokio::spawn(
        grpc.serve_with_incoming_shutdown(incoming, async move {
            let _ = grpc_shutdown.wait_for(|stop| *stop).await;
        })
        .instrument(info_span!("grpc")),
    );

    admin_state.ready.store(true, Ordering::Release);
    info!(grpc = %grpc_addr, admin = %args.admin_listen, "Control plane ready");

    tokio::select! {
        result = &mut grpc_task => {
            accept_task.abort();
            compaction_task.abort();
            retention_task.abort();
            purge_task.abort();
            return match result {
                Ok(Ok(())) => Err(anyhow::anyhow!("gRPC server stopped unexpectedly")),
                Ok(Err(e)) => Err(e).context("gRPC server failed"),
                Err(e) => Err(e).context("gRPC server task panicked"),
            };
        }
        () = portcullis_runtime::signal::shutdown() => {}
    }

    info!(timeout_s = args.shutdown_timeout, "Draining");
    admin_state.ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    compaction_task.abort();
    retention_task.abort();
    purge_task.abort();
    let drain = async {
        let _ = grpc_task.await;
        accept_task.abort();
        let _ = admin_task.await;
    };
    tokio::select! {
        () = drain => info!("Drained"),
        () = tokio::time::sleep(Duration::from_secs(args.shutdown_timeout)) => warn!("Drain timed out"),
        () = portcullis_runtime::signal::shutdown() => warn!("Second signal: exiting now"),
    }
    Ok(())
}

/// The PostgreSQL store when `--database-url` is given, else sled in the data dir.
async fn open_store(args: &ServeArgs) -> Result<Store> {
    match &args.database_url {
        Some(url) => {
            let settings = crate::store::postgres::PgSettings {
                password_file: args.database_password_file.clone(),
                ca_file: args.database_ca.clone(),
                pool_size: args.database_pool_size,
                ..crate::store::postgres::PgSettings::new(url.clone())
            };
            Store::connect_postgres(&settings)
                .await
                .with_context(|| format!("opening the PostgreSQL store {}", settings.describe()))
        }
        None => Store::open_sled(&args.data_dir)
            .with_context(|| format!("opening store in {}", args.data_dir.display())),
    }
}

async fn compact_periodically(store: Arc<Store>, keep: u64, interval_s: u64) {
    let mut interval = tokio::time::interval(Duration::from_secs(interval_s.max(1)));
    loop {
        interval.tick().await;
        match store.compact(keep).await {
            Ok(0) => {}
            Ok(dropped) => {
                let through = store.compacted_through().await.unwrap_or(0);
                info!(dropped, through, "Change log compacted");
            }
            Err(error) => error!(%error, "Change log compaction failed"),
        }
    }
}
