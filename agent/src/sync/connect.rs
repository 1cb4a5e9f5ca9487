//! Connecting to one control plane endpoint: the token and CA read once per round, TLS to the
//! endpoint's IP address with the certificate checked against its URL's host, and requests
//! that carry the URL as their origin.

use std::{sync::Mutex, time::Duration};

use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use portcullis_proto::v1::agent_service_client::AgentServiceClient;

use super::{
    MAX_MESSAGE_BYTES, SessionError, SyncConfig,
    endpoints::Endpoint,
    status::{AgentClient, Bearer},
};

/// What every connection of a round presents and trusts.
pub(super) struct Credentials {
    bearer: Bearer,
    tls: ClientTlsConfig,
}

impl Credentials {
    /// Reads the token file (again at every round, so a rotated Secret is used) and the CA
    /// file; `last_token` keeps the token read, to notice when the file changes.
    pub(super) fn load(
        config: &SyncConfig,
        last_token: &Mutex<Option<String>>,
    ) -> Result<Self, SessionError> {
        let token = std::fs::read_to_string(&config.token_file).map_err(|e| {
            SessionError::Local(format!(
                "reading token file {}: {e}",
                config.token_file.display()
            ))
        })?;
        *last_token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.trim().to_owned());
        let bearer = Bearer::new(token.trim())
            .map_err(|e| SessionError::Local(format!("the token file: {e}")))?;
        let tls = ClientTlsConfig::new();
        let tls = match &config.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    SessionError::Local(format!("reading CA file {}: {e}", path.display()))
                })?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        Ok(Self { bearer, tls })
    }
}

/// A client of the control plane at `endpoint`, connected.
pub(super) async fn connect(
    credentials: &Credentials,
    endpoint: &Endpoint,
) -> Result<AgentClient, SessionError> {
    let tls = credentials
        .tls
        .clone()
        .domain_name(endpoint.url.host().to_owned());
    let channel: Channel = tonic::transport::Endpoint::from_shared(endpoint.connect_uri())
        .map_err(|e| SessionError::Local(format!("--control-plane: {e}")))?
        .origin(endpoint.url.uri().clone())
        .tls_config(tls)
        .map_err(|e| SessionError::Local(format!("TLS: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        // Room for the control plane to send snapshot chunks ahead while the agent
        // applies earlier ones (the HTTP/2 default is 64 KiB).
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| SessionError::Connect(error_chain(&e)))?;
    // One image summary can be large (a report with tens of thousands of findings).
    Ok(
        AgentServiceClient::with_interceptor(channel, credentials.bearer.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// `error` and its causes, outermost first, each once.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let next = inner.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    #[test]
    fn connect_errors_name_every_cause() {
        let inner = Layer("invalid peer certificate: UnknownIssuer", None);
        let middle = Layer("tls handshake", Some(Box::new(inner)));
        let outer = Layer("transport error", Some(Box::new(middle)));
        assert_eq!(
            error_chain(&outer),
            "transport error: tls handshake: invalid peer certificate: UnknownIssuer"
        );
        // A cause its parent already quotes is not repeated.
        let repeated = Layer("a: b", Some(Box::new(Layer("b", None))));
        assert_eq!(error_chain(&repeated), "a: b");
    }
}
