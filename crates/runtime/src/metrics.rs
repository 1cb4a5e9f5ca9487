//! Metrics: OpenTelemetry meters, exported to a Prometheus registry that `/metrics` serves.

use anyhow::Context;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// The meter provider and the registry it exports to; keep it alive as long as the meters.
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

    /// A meter named after the binary (`portcullis-agent`, `portcullis-control-plane`).
    pub fn meter(&self, name: &'static str) -> Meter {
        self.provider.meter(name)
    }
}
