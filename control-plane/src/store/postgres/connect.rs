//! Connecting to PostgreSQL: the settings, TLS with rustls (`sslmode` from the URL: `disable`
//! connects in clear; `prefer` and `require` use TLS, and the server's certificate is always
//! verified against the system's roots and `--database-ca`, as `verify-full` would), the
//! connection pool, and the follower's listening connection. Error texts never carry the
//! password.

use std::{path::PathBuf, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio_postgres::{AsyncMessage, Config, NoTls, config::SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Shared, StoreError, reads};

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=…]`.
    pub url: String,
    /// A file holding the password (it overrides the URL's).
    pub password_file: Option<PathBuf>,
    /// PEM certificates to verify the database's TLS certificate with (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// Connections in this replica's pool.
    pub pool_size: usize,
    /// How often the follower reads the revision when no notification came.
    pub poll_interval: Duration,
}

impl PgSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password_file: None,
            ca_file: None,
            pool_size: 32,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// The URL without its password, for logs and errors.
    pub fn describe(&self) -> String {
        describe(&self.url)
    }
}

/// What the parsed URL names (user, hosts, ports, database): never its password, however the
/// URL spells it. A URL that does not parse is not shown at all.
fn describe(url: &str) -> String {
    let Ok(config) = url.parse::<Config>() else {
        return "(a --database-url that does not parse)".into();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The connection settings and the TLS connector, for the pool and the follower.
#[derive(Clone)]
pub struct Connector {
    config: Config,
    tls: Tls,
    describe: String,
}

#[derive(Clone)]
enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

impl Connector {
    pub fn new(settings: &PgSettings) -> Result<Self, StoreError> {
        let describe = settings.describe();
        let mut config: Config = settings.url.parse().map_err(|e: tokio_postgres::Error| {
            StoreError::Database(format!("--database-url does not parse: {}", error_text(&e)))
        })?;
        if let Some(file) = &settings.password_file {
            let password = std::fs::read_to_string(file).map_err(|e| {
                StoreError::Database(format!("--database-password-file {}: {e}", file.display()))
            })?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(StoreError::Database(format!(
                    "--database-password-file {}: the file is empty",
                    file.display()
                )));
            }
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("portcullis-control-plane");
        // A connection that dies without a word (a partition, a frozen peer) is noticed in
        // seconds, not after the kernel's two hours.
        config.keepalives_idle(Duration::from_secs(15));
        config.tcp_user_timeout(Duration::from_secs(30));
        // On the server: a transaction a stalled replica leaves open (holding the revision
        // row) is ended, and a write waits for that row at most `lock_timeout`, so one frozen
        // replica cannot stop every other one's writes; a runaway statement is cut off.
        let mut options = config.get_options().unwrap_or("").to_owned();
        options.push_str(
            " -c idle_in_transaction_session_timeout=30000 -c lock_timeout=30000 \
             -c statement_timeout=300000",
        );
        config.options(options.trim());
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => Tls::None,
            // `prefer` (also the default) would go on in clear text when the server declines
            // TLS, which an attacker on the path can make it do: any TLS is required TLS.
            _ => {
                config.ssl_mode(SslMode::Require);
                Tls::Rustls(MakeRustlsConnect::new(client_config(
                    settings.ca_file.as_deref(),
                )?))
            }
        };
        Ok(Self {
            config,
            tls,
            describe,
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn pool(&self, size: usize) -> Result<Pool, StoreError> {
        let manager_config = ManagerConfig {
            // A connection the server closed is noticed when it is taken from the pool.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            Tls::None => Manager::from_config(self.config.clone(), NoTls, manager_config),
            Tls::Rustls(tls) => {
                Manager::from_config(self.config.clone(), tls.clone(), manager_config)
            }
        };
        Pool::builder(manager)
            .max_size(size.max(2))
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Database(format!("connection pool: {e}")))
    }

    /// Listens on `channel` (and every `Topic`) and polls the revision every `interval`, advancing `shared`,
    /// until the connection fails; returns why.
    pub async fn listen(&self, channel: &str, shared: &Shared, interval: Duration) -> String {
        let result = match &self.tls {
            Tls::None => listen_with(&self.config, NoTls, channel, shared, interval).await,
            Tls::Rustls(tls) => {
                listen_with(&self.config, tls.clone(), channel, shared, interval).await
            }
        };
        match result {
            Ok(never) => match never {},
            Err(error) => error,
        }
    }
}

async fn listen_with<T>(
    config: &Config,
    tls: T,
    channel: &str,
    shared: &Shared,
    interval: Duration,
) -> Result<std::convert::Infallible, String>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await.map_err(|e| error_text(&e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection delivers notifications only while it is polled: a task of its own.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx
                        .send(Ok((n.channel().to_owned(), n.payload().to_owned())))
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(error_text(&e)));
                    return;
                }
            }
        }
        let _ = tx.send(Err("the connection closed".into()));
    });
    let _stop_driver = AbortOnDrop(driver);
    let listen: String = std::iter::once(channel)
        .chain(super::Topic::ALL.iter().map(|t| t.channel()))
        .map(|c| format!("LISTEN {c};"))
        .collect();
    client
        .batch_execute(&listen)
        .await
        .map_err(|e| error_text(&e))?;
    // Whatever committed before LISTEN took effect is read here.
    shared.advance(reads::head(&client).await.map_err(|e| e.to_string())?);
    shared.set_available(true);
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some(Ok((channel, payload))) => shared.heard(&channel, &payload),
                Some(Err(error)) => return Err(error),
                None => return Err("the connection closed".into()),
            },
            () = tokio::time::sleep(interval) => {
                let head = tokio::time::timeout(interval.max(Duration::from_secs(5)), reads::head(&client))
                    .await
                    .map_err(|_| "the database did not answer the poll in time".to_owned())?
                    .map_err(|e| e.to_string())?;
                shared.advance(head);
                shared.set_available(true);
            }
        }
    }
}

pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// rustls with the system's roots and `ca_file`'s certificates.
fn client_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = ca_file {
        let pem = std::fs::read(file)
            .map_err(|e| StoreError::Database(format!("--database-ca {}: {e}", file.display())))?;
        let mut added = 0;
        for cert in <CertificateDer as PemObject>::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                StoreError::Database(format!("--database-ca {}: {e}", file.display()))
            })?;
            roots.add(cert).map_err(|e| {
                StoreError::Database(format!("--database-ca {}: {e}", file.display()))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(StoreError::Database(format!(
                "--database-ca {}: no certificate in the file",
                file.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Database(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A tokio-postgres error with its cause (`Display` alone says only "db error").
pub fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// Why the pool could not give a connection.
pub fn reason(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(e) => error_text(e),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_described_without_their_password() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db.example:5432/portcullis?sslmode=require",
                "postgres://app@db.example:5432/portcullis",
            ),
            ("postgres://app@db/p", "postgres://app@db:5432/p"),
            (
                "postgresql://u@db/p?password=s3cret",
                "postgres://u@db:5432/p",
            ),
            ("postgres://a:s3/cr?et@h/d", "postgres://a@h:5432/d"),
            ("postgres://a:s3cret:x@h/d", "postgres://a@h:5432/d"),
            (
                "host=db user=u password=s3cret dbname=d",
                "postgres://u@db/d",
            ),
            (
                "postgres://u:s3cret@h:notaport/d",
                "(a --database-url that does not parse)",
            ),
        ] {
            assert_eq!(describe(url), shown, "{url}");
            assert!(!describe(url).contains("s3"), "{url}");
        }
    }

    #[test]
    fn a_bad_url_and_an_empty_password_file_are_refused_without_the_password() {
        let error = Connector::new(&PgSettings::new("postgres://u:s3cret@h:notaport/db"))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("--database-url"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "\n").unwrap();
        let mut settings = PgSettings::new("postgres://u@h/db");
        settings.password_file = Some(file);
        let error = Connector::new(&settings).err().unwrap().to_string();
        assert!(error.contains("empty"), "{error}");
    }
}
