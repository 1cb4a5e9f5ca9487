//! What both binaries share, so that they cannot drift apart: the log format flag and the
//! subscriber it installs, the Prometheus registry the OpenTelemetry meters export to, the
//! admin server's `/livez`, `/readyz` (named conditions) and `/metrics` (the Prometheus text
//! content type), the shutdown signals, files only the owner may read, the clock, and the TLS
//! bootstrap (a local CA and the server certificates it issues).

pub mod admin;
pub mod clock;
pub mod files;
pub mod logging;
pub mod metrics;
pub mod record;
pub mod signal;
pub mod tls;
