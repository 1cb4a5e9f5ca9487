//! The `portcullis` command line. Connection flags can also come from the environment.

use std::path::PathBuf;

use clap::{
    Args, Parser, Subcommand, ValueEnum,
    builder::{PossibleValuesParser, TypedValueParser},
};
use portcullis_proto::words::{
    EventAction, EventState, FailurePolicy, ViolationAction, ViolationState,
};
use portcullis_scan::ReportFormat;

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("PORTCULLIS_REVISION"), ")"),
    about = "Operate Portcullis: policies, clusters, image scans, events, audit violations"
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Control plane address.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// Bearer token.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bearer token (e.g. DATA_DIR/admin.token).
    #[arg(long, global = true, env = "PORTCULLIS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the server [default: the system roots].
    #[arg(long, global = true, env = "PORTCULLIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage protection policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage registered clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Import and inspect image scan results.
    #[command(subcommand)]
    Scan(ScanCommand),
    /// Find, watch and handle protection events (blocked and alerted admissions).
    #[command(subcommand)]
    Events(EventsCommand),
    /// List, summarise and watch audit violations: running workloads that break a policy.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Test manifests against policies offline, with the agent's engine. Exits 1 if anything
    /// is blocked (or not valid for its kind), so a pipeline can gate on it.
    Test(TestArgs),
    /// Like `test --verbose`: which policies applied to each object, and why the others did
    /// not. Exits 0.
    Explain(TestArgs),
}

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Policy file or directory (repeatable).
    #[arg(short = 'p', long = "policy", required = true)]
    pub policies: Vec<PathBuf>,
    /// Manifest file or directory, or - for standard input (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub manifests: Vec<PathBuf>,
    /// The cluster to test for (policies scoped to other clusters do not apply; without it,
    /// only policies with no cluster scope apply).
    #[arg(long, default_value = "")]
    pub cluster: String,
    /// Namespace for objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Scan report (Trivy or Grype JSON, or native) that image rules read (repeatable). Each
    /// must name its image; an image with no report is unscanned.
    #[arg(long = "scan", value_name = "FILE")]
    pub scans: Vec<PathBuf>,
    /// The format of every --scan report [default: detected from each report].
    #[arg(long, value_name = "FORMAT", value_parser = report_format())]
    pub scan_format: Option<ReportFormat>,
    /// Show which policies applied to each object and why the others did not.
    #[arg(short, long)]
    pub verbose: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create or update the policies in YAML/JSON files (all or none).
    Apply {
        /// Policy file, directory of *.yaml/*.yml/*.json files, or - for standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate on the server without storing anything.
        #[arg(long)]
        dry_run: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one policy.
    Get {
        name: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// List policies.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a policy.
    Delete {
        name: String,
        /// Delete only if the policy is still at this revision.
        #[arg(long)]
        revision: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Register a cluster and print its agent token (shown only once).
    Register {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Register with protection off.
        #[arg(long)]
        disabled: bool,
        #[arg(long, value_parser = failure_policy())]
        failure_policy: Option<FailurePolicy>,
        /// Webhook timeout in seconds (1-30).
        #[arg(long)]
        timeout: Option<u32>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one cluster and its agent's status.
    Get {
        name: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// The fleet view: every cluster and its agent's status.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a cluster and revoke its agent token.
    Delete { name: String },
    /// Change protection settings; unspecified settings keep their values.
    Protect {
        name: String,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[arg(long, value_parser = failure_policy())]
        failure_policy: Option<FailurePolicy>,
        /// Webhook timeout in seconds (1-30).
        #[arg(long)]
        timeout: Option<u32>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScanCommand {
    /// Import a Trivy, Grype or native JSON report; replaces the image's previous result.
    Import {
        /// The report, or - for standard input.
        file: PathBuf,
        /// The report's format [default: detected by the control plane].
        #[arg(long, value_name = "FORMAT", value_parser = report_format())]
        format: Option<ReportFormat>,
        /// The image the report describes (required when the report names none).
        #[arg(long, value_name = "REF")]
        image: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one image's scan, found by digest or by image reference.
    Get {
        image: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// List scans (counts only).
    List {
        /// Repository, exact (`nginx`) or a glob (`registry.example.com/*`).
        #[arg(long)]
        repository: Option<String>,
        /// Only images with a vulnerability at or above this severity.
        #[arg(long, value_parser = ["critical", "high", "medium", "low", "unknown"])]
        min_severity: Option<String>,
        /// Only images with malicious files.
        #[arg(long)]
        malware: bool,
        /// Only images whose scan lists this vulnerability id (e.g. CVE-2021-44228).
        #[arg(long, value_name = "ID")]
        vulnerability: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete an image's scan.
    Delete { image: String },
}

/// Which events: every flag given must match.
#[derive(Args, Debug, Clone, Default)]
pub struct EventFilterArgs {
    #[arg(long)]
    pub cluster: Option<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Object kind (Pod, Deployment, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Object name.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub policy: Option<String>,
    #[arg(long, value_parser = PossibleValuesParser::new(EventAction::NAMES))]
    pub action: Option<String>,
    #[arg(long, value_parser = PossibleValuesParser::new(EventState::NAMES))]
    pub state: Option<String>,
    /// Events at or after this time: RFC 3339, or an age such as 30m, 2h, 7d.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Events before this time: RFC 3339, or an age such as 30m, 2h, 7d.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Text in an image reference or a vulnerability id (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// List events, newest first.
    List {
        #[command(flatten)]
        filter: EventFilterArgs,
        /// At most this many events (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one event with its findings.
    Get {
        id: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print new events as they arrive (one JSON document per line with -o json).
    Watch {
        #[command(flatten)]
        filter: EventFilterArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Mark events handled (or ignored, or new again), with a note.
    Handle {
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(long, default_value = "")]
        note: String,
        /// The state to set.
        #[arg(long, default_value = "handled", value_parser = PossibleValuesParser::new(EventState::NAMES))]
        state: String,
    },
    /// Counts by cluster, policy and action.
    Summary {
        /// RFC 3339, or an age such as 30m, 2h, 7d.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// RFC 3339, or an age such as 30m, 2h, 7d.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Which violations: every flag given must match.
#[derive(Args, Debug, Clone, Default)]
pub struct ViolationFilterArgs {
    #[arg(long)]
    pub cluster: Option<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Object kind (Deployment, Pod, Service, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Object name.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub policy: Option<String>,
    #[arg(long, value_parser = PossibleValuesParser::new(ViolationAction::NAMES))]
    pub action: Option<String>,
    /// Text in an image reference (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub image: Option<String>,
    /// A vulnerability id a finding names, e.g. CVE-2024-3094 (case-insensitive).
    #[arg(long, value_name = "ID")]
    pub vulnerability: Option<String>,
    /// open, resolved, or all [default: open for list, all for watch].
    #[arg(long, value_parser = violation_state())]
    pub state: Option<String>,
}

/// Every violation state, or both.
pub const ALL_STATES: &str = "all";

fn violation_state() -> PossibleValuesParser {
    PossibleValuesParser::new(ViolationState::NAMES.iter().copied().chain([ALL_STATES]))
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List violations by cluster, namespace, kind, name and policy.
    List {
        #[command(flatten)]
        filter: ViolationFilterArgs,
        /// At most this many violations (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Open violations counted by cluster, namespace, policy and severity.
    Summary {
        /// Only this cluster's violations.
        #[arg(long)]
        cluster: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print violations as they open, change or resolve (one JSON document per line with
    /// -o json).
    Watch {
        #[command(flatten)]
        filter: ViolationFilterArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

/// `ignore` or `fail`, listed in `--help`.
fn failure_policy() -> impl TypedValueParser<Value = FailurePolicy> {
    PossibleValuesParser::new(FailurePolicy::NAMES).try_map(|name| name.parse::<FailurePolicy>())
}

/// `trivy`, `grype` or `native`, listed in `--help`.
fn report_format() -> impl TypedValueParser<Value = ReportFormat> {
    PossibleValuesParser::new(ReportFormat::NAMES)
        .try_map(|name| ReportFormat::from_name(&name).ok_or("unknown report format"))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}
