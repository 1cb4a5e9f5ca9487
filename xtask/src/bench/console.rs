//! `cargo xtask bench console`: the web console against a release control plane with C
//! registered clusters (default 5,000) and E events (default 1,000,000, spread over the last
//! day across the first 10 clusters and 20 policies), over HTTPS on loopback (HTTP/1.1,
//! one keep-alive connection, signed in as the bootstrap admin):
//! 1. the fleet page (`/fleet`: every cluster read, filtered, sorted, events of the last 24 h
//!    counted, first 100 rows rendered): p50 / p99 / max of R requests;
//! 2. the events page filtered by cluster and policy (`/events?cluster=…&policy=…`, first 50);
//! 3. a new event: reported as an agent reports it (`ReportEvents`), until its row arrives on
//!    the console's live stream (`/events/stream`, the page's server-sent events): p50 / p99.
//!
//! Times are the client's, request sent to response read whole: the server's time plus
//! loopback.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, client::conn::http1::SendRequest};

use portcullis_proto::v1::{
    Event, RegisterClusterRequest, ReportEventsRequest, agent_service_client::AgentServiceClient,
    cluster_service_client::ClusterServiceClient,
};

use super::{
    events::ingest,
    harness::{self, Bearer, ControlPlane},
    percentile,
};

#[derive(clap::Args)]
pub struct ConsoleArgs {
    /// Clusters registered.
    #[arg(long, default_value_t = 5000)]
    clusters: usize,
    /// Events stored before the pages are timed.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Requests timed per page.
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// New events timed to the live stream.
    #[arg(long, default_value_t = 50)]
    live: usize,
    /// On PostgreSQL instead of sled.
    #[arg(long)]
    postgres: bool,
}

/// Clusters that have events (the events benchmark's).
const EVENT_CLUSTERS: usize = 10;
const POLICIES: usize = 20;

type Sender = SendRequest<Full<Bytes>>;

/// One HTTP/1.1 connection over TLS to the console.
async fn connect(cp: &ControlPlane) -> Result<Sender> {
    let ca = std::fs::read(cp.ca_file())?;
    let mut connector = harness::tls_connector(&ca)?;
    let mut config = (**connector.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", cp.port)).await?;
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect("localhost".try_into()?, tcp)
        .await
        .context("TLS handshake with the console")?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Signs in with `token`; the session cookie.
async fn sign_in(sender: &mut Sender, token: &str) -> Result<String> {
    sender.ready().await?;
    let response = sender
        .send_request(
            Request::post("/signin")
                .header("host", "localhost")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(format!("token={token}"))))?,
        )
        .await?;
    let cookie = response
        .headers()
        .get("set-cookie")
        .context("sign-in set no cookie")?
        .to_str()?
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    response.into_body().collect().await?;
    Ok(cookie)
}

/// GETs `path`; the time to the whole body, and the body.
async fn get(sender: &mut Sender, cookie: &str, path: &str) -> Result<(Duration, String)> {
    sender.ready().await?;
    let sent = Instant::now();
    let response = sender
        .send_request(
            Request::get(path)
                .header("host", "localhost")
                .header("cookie", cookie)
                .body(Full::new(Bytes::new()))?,
        )
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let elapsed = sent.elapsed();
    if !status.is_success() {
        bail!("{path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok((elapsed, String::from_utf8_lossy(&body).into_owned()))
}

async fn time_page(
    sender: &mut Sender,
    cookie: &str,
    paths: &[String],
    expect: &str,
) -> Result<()> {
    let mut latencies = Vec::with_capacity(paths.len());
    let mut bytes = 0;
    for path in paths {
        let (elapsed, body) = get(sender, cookie, path).await?;
        if !body.contains(expect) {
            bail!("{path}: the page lacks {expect:?}");
        }
        bytes += body.len();
        latencies.push(elapsed);
    }
    latencies.sort();
    println!(
        "{} requests ({} KiB each on average): p50 {:?}, p99 {:?}, max {:?}",
        paths.len(),
        bytes / paths.len().max(1) / 1024,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default(),
    );
    Ok(())
}

pub async fn run(args: ConsoleArgs) -> Result<()> {
    let database = harness::Database::start(args.postgres)?;
    let cp = database.control_plane(&[
        "--event-max-count",
        &(args.events * 2).to_string(),
        "--event-max-batch",
        "1000",
    ]);
    let channel = harness::channel(&cp).await?;
    let admin = Bearer::new(&cp.admin_token())?;
    println!(
        "== setup: {} clusters, {} events on {}",
        args.clusters,
        args.events,
        database.name()
    );
    let mut tokens = Vec::new();
    let mut registering = Vec::new();
    for worker in 0..8 {
        let mut clusters = ClusterServiceClient::with_interceptor(channel.clone(), admin.clone());
        let total = args.clusters.max(EVENT_CLUSTERS);
        registering.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            for c in (worker..total).step_by(8) {
                let response = clusters
                    .register_cluster(RegisterClusterRequest {
                        name: format!("cluster-{c}"),
                        ..Default::default()
                    })
                    .await?;
                tokens.push((c, response.into_inner().agent_token));
            }
            anyhow::Ok(tokens)
        }));
    }
    for task in registering {
        tokens.extend(task.await??);
    }
    tokens.sort();
    let tokens: Vec<String> = tokens
        .into_iter()
        .take(EVENT_CLUSTERS)
        .map(|(_, t)| t)
        .collect();
    ingest(
        std::slice::from_ref(&channel),
        &tokens,
        args.events,
        1000,
        8,
    )
    .await?;

    let mut sender = connect(&cp).await?;
    let cookie = sign_in(&mut sender, &cp.admin_token()).await?;

    println!(
        "== fleet page: {} clusters, first 100 rows by name",
        args.clusters
    );
    let paths = vec!["/fleet".to_owned(); args.requests];
    time_page(&mut sender, &cookie, &paths, "clusters match").await?;
    println!("== fleet page: sorted by events in the last 24 h, descending");
    let paths = vec!["/fleet?sort=events&desc=1".to_owned(); args.requests];
    time_page(&mut sender, &cookie, &paths, "clusters match").await?;

    println!(
        "== events page: cluster + policy filter over {} events, first 50",
        args.events
    );
    let paths: Vec<String> = (0..args.requests)
        .map(|q| {
            format!(
                "/events?cluster=cluster-{}&policy=policy-{}",
                q % EVENT_CLUSTERS,
                (q * 7) % POLICIES
            )
        })
        .collect();
    time_page(&mut sender, &cookie, &paths, "<tr id=\"event-").await?;

    println!("== overview: 14 days by day, top clusters, policies and images");
    let paths = vec!["/".to_owned(); args.requests.min(20)];
    time_page(&mut sender, &cookie, &paths, "admissions-chart").await?;

    println!("== live: ReportEvents until the row is on the console's stream");
    live(&cp, &channel, &tokens[0], &cookie, args.live).await
}

async fn live(
    cp: &ControlPlane,
    channel: &tonic::transport::Channel,
    token: &str,
    cookie: &str,
    count: usize,
) -> Result<()> {
    let mut stream_conn = connect(cp).await?;
    stream_conn.ready().await?;
    let response = stream_conn
        .send_request(
            Request::get("/events/stream?cluster=cluster-0")
                .header("host", "localhost")
                .header("cookie", cookie)
                .body(Full::new(Bytes::new()))?,
        )
        .await?;
    if !response.status().is_success() {
        bail!("/events/stream: {}", response.status());
    }
    let mut body = response.into_body();
    let mut agent = AgentServiceClient::with_interceptor(channel.clone(), Bearer::new(token)?);
    let mut latencies = Vec::with_capacity(count);
    // Let the stream subscribe.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 0..count {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let id = uuid::Uuid::now_v7().to_string();
        let event = Event {
            id: id.clone(),
            time: Some(pbjson_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            cluster: "cluster-0".into(),
            namespace: "shop".into(),
            kind: "Pod".into(),
            name: format!("live-{n}"),
            operation: "CREATE".into(),
            policy: "policy-0".into(),
            policy_revision: 1,
            action: "blocked".into(),
            admission_uid: uuid::Uuid::new_v4().to_string(),
            count: 1,
            ..Default::default()
        };
        let sent = Instant::now();
        agent
            .report_events(ReportEventsRequest {
                cluster: "cluster-0".into(),
                events: vec![event],
            })
            .await?;
        let mut seen = String::new();
        while !seen.contains(&id) {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .context("no event on the stream within 10 s")?
                .context("the stream ended")??;
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    println!(
        "{count} events: reported → on the stream p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default(),
    );
    Ok(())
}
