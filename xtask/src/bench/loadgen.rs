//! A small HTTPS load generator for the webhook benchmark (run from the release build of
//! xtask). Each connection keeps one TLS + HTTP/1.1 keep-alive connection and POSTs the same
//! AdmissionReview body. Without a rate it sends as fast as answers come (closed loop, for
//! throughput); with `--rate` it sends on a fixed schedule (open loop) and measures latency
//! from the scheduled time, so a stall is not hidden by sending less.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::ServerName;

#[derive(clap::Args)]
pub struct LoadArgs {
    #[arg(long)]
    pub port: u16,
    /// PEM certificate to trust.
    #[arg(long)]
    pub ca: PathBuf,
    /// Request body file.
    #[arg(long)]
    pub body: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Requests per second in total; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

pub fn run(args: LoadArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(load(args))
}

async fn load(args: LoadArgs) -> Result<()> {
    let pem = std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let connector = super::harness::tls_connector(&pem)?;
    let body = bytes::Bytes::from(std::fs::read(&args.body)?);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let (connector, body, port, n) =
            (connector.clone(), body.clone(), args.port, args.connections);
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector
                .connect(ServerName::try_from("localhost")?, tcp)
                .await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            // Spread the connections' schedules over one interval.
            let mut next = Instant::now()
                + interval
                    .map(|d| d.mul_f64(i as f64 / n as f64))
                    .unwrap_or_default();
            while Instant::now() < deadline {
                let scheduled = match interval {
                    Some(every) => {
                        tokio::time::sleep_until(next.into()).await;
                        let at = next;
                        next += every;
                        at
                    }
                    None => Instant::now(),
                };
                let request = hyper::Request::post("/validate?timeout=10s")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status() == 200;
                        let _ = response.into_body().collect().await?;
                        if ok {
                            latencies.push(scheduled.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, failed) = task.await??;
        all.extend(latencies);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let at = |p: f64| {
        all.get(((all.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": all.len(),
            "errors": errors,
            "rps": all.len() as f64 / elapsed,
            "p50_ms": at(0.50).as_secs_f64() * 1e3,
            "p99_ms": at(0.99).as_secs_f64() * 1e3,
            "max_ms": all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        })
    );
    Ok(())
}
