//! The command line. Every flag can also be set by a `PORTCULLIS_…` environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::Subcommand;

use crate::sync::endpoints::ControlPlaneUrl;

portcullis_runtime::command_line!("portcullis-agent", "Portcullis per-cluster agent", Command);

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sync from the control plane and enforce.
    Run(Box<RunArgs>),
    /// Remove the webhook configuration and stop every agent from programming it again (the
    /// Helm chart's pre-delete hook runs this).
    Uninstall(UninstallArgs),
    /// Check that enforcement is live: ask the API server to create a privileged Pod in
    /// `--namespace` as a server-side dry run, and succeed only if Portcullis's webhook denies
    /// it (the Helm chart's `helm test` runs this).
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// A namespace the webhook covers (not an exempt one).
    #[arg(long, env = "PORTCULLIS_VERIFY_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The image of the dry-run Pod (never pulled: nothing is created).
    #[arg(long, default_value = "registry.invalid/portcullis-verify:1")]
    pub image: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct UninstallArgs {
    /// The agent's namespace (where its Lease is).
    #[arg(
        long,
        env = "PORTCULLIS_NAMESPACE",
        default_value = "portcullis-system"
    )]
    pub namespace: String,
    #[arg(
        long,
        env = "PORTCULLIS_WEBHOOK_CONFIG_NAME",
        default_value = "portcullis-agent"
    )]
    pub webhook_config_name: String,
    #[arg(
        long,
        env = "PORTCULLIS_LEASE_NAME",
        default_value = "portcullis-agent-leader"
    )]
    pub lease_name: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Run without Kubernetes (no webhook configuration or certificates are programmed).
    #[arg(long, env = "PORTCULLIS_STANDALONE")]
    pub standalone: bool,
    /// This agent's cluster, as registered on the control plane.
    #[arg(long, env = "PORTCULLIS_CLUSTER")]
    pub cluster: String,
    /// Control plane URL: `https://` only (the agent's token never travels in cleartext).
    /// Repeat it (or give a comma-separated list) for several control plane replicas: the
    /// agent fails over between them, and between the addresses a host name resolves to.
    #[arg(long, env = "PORTCULLIS_CONTROL_PLANE", value_parser = ControlPlaneUrl::parse, value_delimiter = ',', required = true)]
    pub control_plane: Vec<ControlPlaneUrl>,
    /// File holding the cluster's agent token (re-read at every reconnect).
    #[arg(long, env = "PORTCULLIS_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// CA certificate (PEM) of the control plane [default: the system roots].
    #[arg(long, env = "PORTCULLIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Directory of the durable cache.
    #[arg(
        long,
        env = "PORTCULLIS_DATA_DIR",
        default_value = "portcullis-agent-data"
    )]
    pub data_dir: PathBuf,
    /// Admin HTTP listen address: /livez, /readyz, /metrics, /state.
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Webhook HTTPS listen address (`POST /validate`).
    #[arg(
        long,
        env = "PORTCULLIS_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    pub webhook_listen: SocketAddr,
    /// Webhook serving certificate (PEM), reloaded when it changes. Without it a self-signed
    /// certificate is generated (standalone runs).
    #[arg(long, env = "PORTCULLIS_WEBHOOK_CERT", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// Webhook serving key (PEM).
    #[arg(long, env = "PORTCULLIS_WEBHOOK_KEY", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// Names for the generated self-signed certificate (repeatable).
    #[arg(long = "webhook-san", env = "PORTCULLIS_WEBHOOK_SANS", value_delimiter = ',', default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    pub webhook_sans: Vec<String>,
    /// Where the generated self-signed certificate is written, for clients to trust.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_CERT_OUT")]
    pub webhook_cert_out: Option<PathBuf>,
    /// The agent's own namespace (exempt from admission).
    #[arg(
        long,
        env = "PORTCULLIS_NAMESPACE",
        default_value = "portcullis-system"
    )]
    pub namespace: String,
    /// The agent's own service account (its requests are admitted).
    #[arg(
        long,
        env = "PORTCULLIS_SERVICE_ACCOUNT",
        default_value = "portcullis-agent"
    )]
    pub service_account: String,
    /// Namespaces exempt from admission [default: kube-system and the agent's namespace].
    #[arg(long, env = "PORTCULLIS_EXEMPT_NAMESPACES", value_delimiter = ',')]
    pub exempt_namespaces: Option<Vec<String>>,
    /// Largest AdmissionReview body accepted, in bytes (larger: HTTP 413).
    #[arg(long, env = "PORTCULLIS_WEBHOOK_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub webhook_max_body_bytes: usize,
    /// Admission requests waiting for an evaluator at most; more are refused with HTTP 503
    /// (and `Retry-After`) at once.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_MAX_IN_FLIGHT", default_value_t = 512, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub webhook_max_in_flight: usize,
    /// CA certificates (PEM) of the clients the webhook accepts: with it, every client must
    /// present a certificate they signed (mutual TLS; the API server sends one when its
    /// AdmissionConfiguration names a kubeconfig for webhooks). Without it, any client may
    /// connect.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_CLIENT_CA")]
    pub webhook_client_ca: Option<PathBuf>,
    /// Threads that evaluate admission requests [default: one per CPU].
    #[arg(long, env = "PORTCULLIS_WEBHOOK_EVALUATORS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub webhook_evaluators: Option<usize>,
    /// Milliseconds a request may wait for an evaluator; one that waited longer is shed with
    /// HTTP 503 and `Retry-After`, so answered requests stay fast under a flood.
    #[arg(
        long,
        env = "PORTCULLIS_WEBHOOK_MAX_QUEUE_WAIT_MS",
        default_value_t = 500
    , value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_max_queue_wait_ms: u64,
    /// Connections the webhook serves at once; more wait in the listen backlog.
    #[arg(
        long,
        env = "PORTCULLIS_WEBHOOK_MAX_CONNECTIONS",
        default_value_t = 1024
    , value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub webhook_max_connections: usize,
    /// Seconds a client has to send a request's head (and, on a kept-alive connection, the
    /// next request) and, separately, its body.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_REQUEST_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_request_timeout: u64,
    /// When traces are exported (`OTEL_EXPORTER_OTLP_ENDPOINT`), the share of admission reviews
    /// that get a span (with the decision and the policies that fired), from 0 (none) to 1
    /// (every one; costly at thousands of reviews per second).
    #[arg(long, env = "PORTCULLIS_TRACE_REVIEWS", default_value_t = 0.01, value_parser = fraction)]
    pub trace_reviews: f64,
    /// Record an event for every blocked or alerted admission (not dry runs) and send it to
    /// the control plane.
    #[arg(long, env = "PORTCULLIS_RECORD_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub record_events: bool,
    /// Events the outbox holds while the control plane is unreachable; past it the oldest
    /// are dropped and counted.
    #[arg(
        long,
        env = "PORTCULLIS_EVENT_OUTBOX_MAX_EVENTS",
        default_value_t = 100_000
    , value_parser = clap::value_parser!(u64).range(1..))]
    pub event_outbox_max_events: u64,
    /// Bytes the outbox holds at most (encoded events).
    #[arg(long, env = "PORTCULLIS_EVENT_OUTBOX_MAX_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_outbox_max_bytes: u64,
    /// Events per ReportEvents call.
    #[arg(long, env = "PORTCULLIS_EVENT_BATCH_SIZE", default_value_t = 500, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub event_batch_size: usize,
    /// Heartbeats missed in a row before the Sync stream counts as dead.
    #[arg(long, env = "PORTCULLIS_HEARTBEAT_MISSES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub heartbeat_misses: u32,
    /// Longest wait between reconnect attempts, in seconds.
    #[arg(long, env = "PORTCULLIS_RECONNECT_MAX", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconnect_max: u64,
    /// Seconds between periodic status reports.
    #[arg(long, env = "PORTCULLIS_STATUS_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub status_interval: u64,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Longest certificate validity accepted, in days (a hundred years).
pub const MAX_CERT_DAYS: i64 = 36_500;
const DAY: i64 = 86_400;

/// Kubernetes mode (everything but `--standalone`).
#[derive(clap::Args, Debug, Clone)]
pub struct KubeArgs {
    /// This replica's pod name (its identity in leader election; set from the downward API).
    #[arg(long, env = "PORTCULLIS_POD_NAME", default_value = "")]
    pub pod_name: String,
    /// The Service in front of the agents' webhook port.
    #[arg(
        long,
        env = "PORTCULLIS_SERVICE_NAME",
        default_value = "portcullis-agent"
    )]
    pub service_name: String,
    #[arg(long, env = "PORTCULLIS_SERVICE_PORT", default_value_t = 443)]
    pub service_port: i32,
    /// The ValidatingWebhookConfiguration the agent owns.
    #[arg(
        long,
        env = "PORTCULLIS_WEBHOOK_CONFIG_NAME",
        default_value = "portcullis-agent"
    )]
    pub webhook_config_name: String,
    /// The Secret holding the webhook's CA and serving certificate.
    #[arg(
        long,
        env = "PORTCULLIS_CERT_SECRET",
        default_value = "portcullis-agent-webhook-tls"
    )]
    pub cert_secret: String,
    /// The Lease of the leader election.
    #[arg(
        long,
        env = "PORTCULLIS_LEASE_NAME",
        default_value = "portcullis-agent-leader"
    )]
    pub lease_name: String,
    /// Register this URL instead of the Service (for API servers that cannot reach cluster
    /// Services); its host is added to the certificate's names.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Validity of the generated CA, in days.
    #[arg(long, env = "PORTCULLIS_CERT_CA_DAYS", default_value_t = 3650, value_parser = clap::value_parser!(i64).range(2..=MAX_CERT_DAYS))]
    pub cert_ca_days: i64,
    /// Validity of the serving certificate, in days.
    #[arg(long, env = "PORTCULLIS_CERT_DAYS", default_value_t = 365, value_parser = clap::value_parser!(i64).range(2..=MAX_CERT_DAYS))]
    pub cert_days: i64,
    /// Renew the serving certificate this many days before it expires.
    #[arg(long, env = "PORTCULLIS_CERT_RENEW_DAYS", default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=MAX_CERT_DAYS))]
    pub cert_renew_days: i64,
    /// Validity of the serving certificate in seconds, instead of `--cert-days` (for
    /// exercising rotation; at least 10).
    #[arg(long, env = "PORTCULLIS_CERT_VALIDITY_SECONDS", value_parser = clap::value_parser!(i64).range(10..=MAX_CERT_DAYS * DAY))]
    pub cert_validity_seconds: Option<i64>,
    /// Renew this many seconds before expiry, instead of `--cert-renew-days` (with
    /// `--cert-validity-seconds`; less than the validity).
    #[arg(long, env = "PORTCULLIS_CERT_RENEW_BEFORE_SECONDS", value_parser = clap::value_parser!(i64).range(1..=MAX_CERT_DAYS * DAY))]
    pub cert_renew_before_seconds: Option<i64>,
    /// Seconds the webhook may fail its self-check through the Service with
    /// `failurePolicy: Fail` programmed before the leader downgrades it to Ignore.
    #[arg(long, env = "PORTCULLIS_FAIL_OPEN_AFTER", default_value_t = 120)]
    pub fail_open_after: u64,
    /// Audit the running workloads (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets,
    /// Jobs, CronJobs, Services outside the exempt namespaces) against the policies and scans,
    /// and report their violations to the control plane. Needs `list` and `watch` on those
    /// kinds; only the replica holding the Lease audits.
    #[arg(long, env = "PORTCULLIS_AUDIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub audit: bool,
    /// Seconds between reconciles of the certificate and the webhook configuration.
    #[arg(long, env = "PORTCULLIS_RECONCILE_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_interval: u64,
}

impl KubeArgs {
    /// The serving certificate's validity and how long before its expiry it is renewed, in
    /// seconds; renewing must come before expiry.
    pub fn cert_lifetimes(&self) -> Result<(i64, i64), String> {
        let validity = self.cert_validity_seconds.unwrap_or(self.cert_days * DAY);
        let (renew_before, flag) =
            match (self.cert_renew_before_seconds, self.cert_validity_seconds) {
                (Some(seconds), _) => (seconds, "--cert-renew-before-seconds"),
                (None, Some(seconds)) => (seconds / 3, "--cert-validity-seconds"),
                (None, None) => (self.cert_renew_days * DAY, "--cert-renew-days"),
            };
        if renew_before >= validity {
            return Err(format!(
                "{flag}: renewing {renew_before} s before expiry must come within the serving \
                 certificate's validity of {validity} s (--cert-days or --cert-validity-seconds)"
            ));
        }
        // The CA is renewed when it has less than a leaf's lifetime and renewal left: a CA
        // no longer than that would be replaced at every reconcile.
        let ca = self.cert_ca_days * DAY;
        if ca <= validity + renew_before {
            return Err(format!(
                "--cert-ca-days: the CA's {ca} s must be longer than the serving certificate's \
                 validity and renewal together ({} s)",
                validity + renew_before
            ));
        }
        Ok((validity, renew_before))
    }
}

impl RunArgs {
    /// The exempt namespaces, checked: exact namespace names only (a pattern such as `*` that
    /// would exempt everything is refused).
    pub fn exempt_namespaces(&self) -> Result<Vec<String>, String> {
        let names = self
            .exempt_namespaces
            .clone()
            .unwrap_or_else(|| vec!["kube-system".to_owned(), self.namespace.clone()]);
        if let Some(name) = names.iter().find(|n| !portcullis_policy::is_dns_label(n)) {
            return Err(format!(
                "--exempt-namespaces: {name:?} is not a namespace name (patterns such as \"*\" \
                 would exempt everything and are refused)"
            ));
        }
        Ok(names)
    }

    /// The username of the agent's own service account.
    pub fn own_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// A number from 0 to 1.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?}: expected a number from 0 to 1")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn parses_the_documented_standalone_command() {
        let cli = Cli::try_parse_from([
            "portcullis-agent",
            "run",
            "--standalone",
            "--cluster",
            "c1",
            "--control-plane",
            "https://127.0.0.1:8443",
            "--token-file",
            "t",
            "--ca-file",
            "ca.crt",
            "--data-dir",
            "d",
            "--admin-listen",
            "127.0.0.1:9091",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert!(args.standalone);
        assert_eq!(args.admin_listen.port(), 9091);
        assert!(Cli::try_parse_from(["portcullis-agent", "run", "--standalone"]).is_err());
        assert_eq!(
            args.exempt_namespaces().unwrap(),
            ["kube-system", "portcullis-system"]
        );
        assert_eq!(
            args.own_user(),
            "system:serviceaccount:portcullis-system:portcullis-agent"
        );
        assert_eq!(args.webhook_listen.port(), 8443);
    }

    #[test]
    fn kubernetes_defaults_name_what_the_chart_creates_for_its_default_release() {
        // helm/portcullis-agent/templates/_helpers.tpl, release `portcullis-agent`: the
        // chart's RBAC grants exactly these names, so an agent run by hand with the chart's
        // RBAC (README, "On a local Kubernetes API server") works without naming them.
        let cli = Cli::try_parse_from([
            "portcullis-agent",
            "run",
            "--cluster",
            "c",
            "--control-plane",
            "https://x",
            "--token-file",
            "t",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(args.kube.webhook_config_name, "portcullis-agent");
        assert_eq!(args.kube.service_name, "portcullis-agent");
        assert_eq!(args.kube.cert_secret, "portcullis-agent-webhook-tls");
        assert_eq!(args.kube.lease_name, "portcullis-agent-leader");
        let cli =
            Cli::try_parse_from(["portcullis-agent", "uninstall", "--namespace", "ns"]).unwrap();
        let Command::Uninstall(args) = cli.command else {
            panic!("uninstall")
        };
        assert_eq!(args.lease_name, "portcullis-agent-leader");
        assert_eq!(args.webhook_config_name, "portcullis-agent");
    }

    #[test]
    fn a_cleartext_control_plane_is_refused() {
        let parse = |url: &str| {
            Cli::try_parse_from([
                "portcullis-agent",
                "run",
                "--standalone",
                "--cluster",
                "c",
                "--control-plane",
                url,
                "--token-file",
                "t",
            ])
        };
        for bad in [
            "http://cp.example.com:8443",
            "cp.example.com:8443",
            "https://",
            "",
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("is not an https:// URL"), "{bad}: {error}");
        }
        assert!(parse("https://cp.example.com:8443").is_ok());
        assert!(parse("HTTPS://cp.example.com").is_ok());
    }

    #[test]
    fn the_control_plane_flag_repeats_and_takes_lists() {
        let urls = |args: &RunArgs| -> Vec<String> {
            args.control_plane.iter().map(ToString::to_string).collect()
        };
        assert_eq!(urls(&run_with(&[]).unwrap()), ["https://x"]);
        let args = run_with(&[
            "--control-plane",
            "https://b:8443",
            "--control-plane=https://c:8443,https://10.0.0.4:8443",
        ])
        .unwrap();
        assert_eq!(
            urls(&args),
            [
                "https://x",
                "https://b:8443",
                "https://c:8443",
                "https://10.0.0.4:8443"
            ]
        );
        // One bad entry refuses the command line, naming the flag and the entry.
        for extra in [
            ["--control-plane", "http://b:8443"],
            ["--control-plane", "https://b:8443,http://c:8443"],
        ] {
            let error = run_with(&extra).unwrap_err().to_string();
            assert!(
                error.contains("--control-plane") && error.contains("is not an https:// URL"),
                "{error}"
            );
            assert!(error.contains("\"http://"), "{error}");
            assert!(!error.contains("\"https://b:8443\""), "{error}");
        }
    }

    /// `PORTCULLIS_CONTROL_PLANE` is split at commas. Checked in a child process of this test
    /// binary: this one cannot set a variable (`set_var` is unsafe).
    #[test]
    fn the_control_plane_variable_is_a_comma_separated_list() {
        const CHILD: &str = "PORTCULLIS_TEST_CONTROL_PLANE_CHILD";
        let parse = || {
            Cli::try_parse_from([
                "portcullis-agent",
                "run",
                "--cluster",
                "c",
                "--token-file",
                "t",
            ])
        };
        match std::env::var(CHILD).as_deref() {
            Ok("good") => {
                let Command::Run(args) = parse().unwrap().command else {
                    panic!("run")
                };
                let urls: Vec<String> =
                    args.control_plane.iter().map(ToString::to_string).collect();
                assert_eq!(urls, ["https://a:8443", "https://b:8443"]);
                return;
            }
            Ok(_) => {
                let error = parse().unwrap_err().to_string();
                assert!(
                    error.contains("--control-plane") && error.contains("\"http://b:8443\""),
                    "{error}"
                );
                return;
            }
            Err(_) => {}
        }
        for (kind, value) in [
            ("good", "https://a:8443,https://b:8443"),
            ("bad", "https://a:8443,http://b:8443"),
        ] {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "args::tests::the_control_plane_variable_is_a_comma_separated_list",
                    "--test-threads=1",
                ])
                .env(CHILD, kind)
                .env("PORTCULLIS_CONTROL_PLANE", value)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{kind}: {stdout}");
            // The filter matched the test: it ran, rather than nothing passing.
            assert!(stdout.contains("1 passed"), "{kind}: {stdout}");
        }
    }

    #[test]
    fn exempting_everything_is_refused() {
        for bad in ["*", "kube-*", "", "Kube-System"] {
            let args = run_with(&["--exempt-namespaces", bad]).unwrap();
            assert!(
                args.exempt_namespaces()
                    .unwrap_err()
                    .contains("--exempt-namespaces"),
                "{bad}"
            );
        }
    }

    /// `run --standalone` with the required flags and `extra`.
    fn run_with(extra: &[&str]) -> Result<Box<RunArgs>, clap::Error> {
        let base = [
            "portcullis-agent",
            "run",
            "--standalone",
            "--cluster",
            "c",
            "--control-plane",
            "https://x",
            "--token-file",
            "t",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(extra))?;
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        Ok(args)
    }

    #[test]
    fn settings_out_of_range_are_refused_with_the_flag_and_range() {
        for (flag, value) in [
            ("--event-batch-size", "0"),
            ("--event-outbox-max-events", "0"),
            ("--event-outbox-max-bytes", "0"),
            ("--webhook-max-queue-wait-ms", "0"),
            ("--webhook-request-timeout", "0"),
            ("--webhook-max-connections", "0"),
            ("--webhook-max-in-flight", "0"),
            ("--webhook-evaluators", "0"),
            ("--status-interval", "0"),
            ("--reconnect-max", "0"),
            ("--heartbeat-misses", "0"),
            ("--reconcile-interval", "0"),
            ("--cert-days", "1"),
            ("--cert-ca-days", "36501"),
            ("--cert-renew-days", "0"),
            ("--cert-validity-seconds", "9"),
            ("--cert-renew-before-seconds", "0"),
        ] {
            let error = run_with(&[flag, value]).unwrap_err().to_string();
            assert!(
                error.contains(flag) && error.contains(&format!("{value} is not in")),
                "{flag} {value}: {error}"
            );
        }
        assert_eq!(
            run_with(&["--event-batch-size", "1"])
                .unwrap()
                .event_batch_size,
            1
        );
    }

    #[test]
    fn renewal_must_come_before_expiry() {
        let lifetimes = |extra: &[&str]| run_with(extra).unwrap().kube.cert_lifetimes();
        assert_eq!(lifetimes(&[]), Ok((365 * DAY, 30 * DAY)));
        assert_eq!(lifetimes(&["--cert-validity-seconds", "90"]), Ok((90, 30)));
        assert_eq!(
            lifetimes(&[
                "--cert-validity-seconds",
                "90",
                "--cert-renew-before-seconds",
                "60"
            ]),
            Ok((90, 60))
        );
        let error = lifetimes(&["--cert-days", "20"]).unwrap_err();
        assert!(error.starts_with("--cert-renew-days: "), "{error}");
        let error = lifetimes(&[
            "--cert-validity-seconds",
            "60",
            "--cert-renew-before-seconds",
            "60",
        ])
        .unwrap_err();
        assert!(
            error.starts_with("--cert-renew-before-seconds: "),
            "{error}"
        );
    }

    #[test]
    fn the_share_of_traced_reviews_is_a_fraction() {
        assert_eq!(run_with(&[]).unwrap().trace_reviews, 0.01);
        assert_eq!(
            run_with(&["--trace-reviews", "1"]).unwrap().trace_reviews,
            1.0
        );
        for bad in ["1.5", "-0.1", "NaN", "all"] {
            let flag = format!("--trace-reviews={bad}");
            let error = run_with(&[flag.as_str()]).unwrap_err().to_string();
            assert!(error.contains("--trace-reviews"), "{error}");
            assert!(error.contains("from 0 to 1"), "{error}");
        }
    }
}
