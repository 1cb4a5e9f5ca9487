//! Logging (tracing, plain or JSON) and metrics (OpenTelemetry meters exported to a Prometheus
//! registry that `/metrics` serves).

use anyhow::Context;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tracing_subscriber::{EnvFilter, fmt};

use crate::args::LogFormat;

/// Installs the global tracing subscriber. `PORTCULLIS_LOG` (or `RUST_LOG`) sets the filter.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The meter provider and the registry it exports to.
pub struct Metrics {
    pub registry: prometheus::Registry,
    provider: SdkMeterProvider,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .context("building the Prometheus exporter")?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        Ok(Self { registry, provider })
    }

    pub fn meter(&self) -> Meter {
        self.provider.meter("portcullis-control-plane")
    }
}
