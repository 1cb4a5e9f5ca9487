//! Connecting to the control plane: TLS (the given CA or the system roots) and the bearer token
//! on every call.

use std::fs;

use anyhow::{Context, Result, bail};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use portcullis_proto::auth::Bearer;
use portcullis_proto::v1::{
    audit_service_client::AuditServiceClient, cluster_service_client::ClusterServiceClient,
    event_service_client::EventServiceClient, policy_service_client::PolicyServiceClient,
    scan_service_client::ScanServiceClient,
};

use crate::args::Connection;

pub type Authed = InterceptedService<Channel, Bearer>;

/// The clients of one connection.
pub struct Clients {
    pub policies: PolicyServiceClient<Authed>,
    pub clusters: ClusterServiceClient<Authed>,
    pub scans: ScanServiceClient<Authed>,
    pub events: EventServiceClient<Authed>,
    pub audit: AuditServiceClient<Authed>,
}

/// Largest scan result the CLI reads back (a full `ImageScan` of a large image).
const MAX_SCAN_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

pub async fn connect(connection: &Connection) -> Result<Clients> {
    let token = match (&connection.token, &connection.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?
            .trim()
            .to_owned(),
        (None, None) => bail!("no token: pass --token or --token-file (or set PORTCULLIS_TOKEN)"),
    };
    let bearer =
        Bearer::new(&token).map_err(|e| anyhow::anyhow!("--token or --token-file: {e}"))?;

    let url = &connection.server;
    if !url.starts_with("https://") {
        bail!("--server {url:?}: must be an https:// URL (the control plane only speaks TLS)");
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &connection.ca_file {
        Some(path) => {
            let pem =
                fs::read(path).with_context(|| format!("reading CA file {}", path.display()))?;
            tls.ca_certificate(Certificate::from_pem(pem))
        }
        None => tls.with_native_roots(),
    };
    let channel = Endpoint::from_shared(url.clone())
        .with_context(|| format!("--server {url:?}"))?
        .tls_config(tls)
        .context("TLS configuration")?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(Clients {
        policies: PolicyServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        clusters: ClusterServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        scans: ScanServiceClient::with_interceptor(channel.clone(), bearer.clone())
            .max_decoding_message_size(MAX_SCAN_RESPONSE_BYTES),
        events: EventServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        audit: AuditServiceClient::with_interceptor(channel, bearer),
    })
}
