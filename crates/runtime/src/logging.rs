//! Logs and traces. Logs: tracing to stderr, plain or JSON lines; `PORTCULLIS_LOG` (or
//! `RUST_LOG`) filters them. Traces: the same spans exported over OTLP/gRPC when the standard
//! OpenTelemetry variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn it off), with the SDK's other `OTEL_*` variables
//! (sampler, batching, headers, timeout, resource attributes, service name) as the
//! OpenTelemetry specification defines them, and `OTEL_EXPORTER_OTLP_CERTIFICATE` (or its
//! `TRACES_` form) for the CA of an `https://` collector. Off when unset. The log filter does not apply
//! to traces: Portcullis's own spans are exported at `info` whatever the log level.

use std::sync::atomic::{AtomicBool, Ordering};

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::Targets, fmt, layer::SubscriberExt, util::SubscriberInitExt,
};

/// `--log-format` (`PORTCULLIS_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// `--log-format`, for every subcommand of a binary (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,
}

/// Declares a binary's `Cli`: its name and description, `--version` with the git revision it
/// was built from (`PORTCULLIS_REVISION`, set by the binary's build script), its subcommands,
/// and the log flags every binary shares.
#[macro_export]
macro_rules! command_line {
    ($name:literal, $about:literal, $command:ty) => {
        #[derive(clap::Parser, Debug)]
        #[command(
            name = $name,
            version = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("PORTCULLIS_REVISION"), ")"),
            about = $about
        )]
        pub struct Cli {
            #[command(subcommand)]
            pub command: $command,
            #[command(flatten)]
            pub log: $crate::logging::LogArgs,
        }
    };
}

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (for spans worth making only then, such as a sampled review's).
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Keeps the trace exporter; dropping it sends the spans still queued (at most 5 s).
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            TRACING.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown_with_timeout(std::time::Duration::from_secs(5)) {
                eprintln!("trace export: {error}");
            }
        }
    }
}

/// Installs the global subscriber (logs at `info` unless the environment says otherwise) and,
/// when the environment asks for it, the OTLP trace export of `service` (the default
/// `service.name`; `OTEL_SERVICE_NAME` wins). Call inside the Tokio runtime: the exporter's
/// connection runs on it.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Plain => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (provider, problem) = match trace_export_requested(|name| std::env::var(name).ok()) {
        false => (None, None),
        true => match tracer_provider(service) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        },
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("portcullis"))
            .with_filter(Targets::new().with_target("portcullis", Level::INFO))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .init();
    if let Some(problem) = problem {
        tracing::warn!("traces are not exported: {problem}");
    }
    TRACING.store(provider.is_some(), Ordering::Relaxed);
    Telemetry { provider }
}

/// Whether the environment (`var`) asks for OTLP trace export.
fn trace_export_requested(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn tracer_provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithTonicConfig;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    // The CA of an `https://` collector (the exporter does not read these variables itself).
    let ca_file = [
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ]
    .into_iter()
    .find_map(|name| std::env::var_os(name).filter(|v| !v.is_empty()));
    if let Some(path) = ca_file {
        let pem = std::fs::read(&path)
            .map_err(|e| format!("reading {}: {e}", std::path::Path::new(&path).display()))?;
        exporter = exporter.with_tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        );
    }
    let exporter = exporter.build().map_err(|e| e.to_string())?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_is_on_only_when_an_endpoint_is_set_and_nothing_turns_it_off() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!trace_export_requested(env(&[])));
        assert!(!trace_export_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(trace_export_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4317"
        )])));
        assert!(trace_export_requested(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4317"
        )])));
        for off in [
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let pairs: &'static [(&str, &str)] = Box::leak(Box::new([
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                off,
            ]));
            assert!(!trace_export_requested(env(pairs)));
        }
    }
}
