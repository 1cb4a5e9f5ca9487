//! Harness for the end-to-end tests, and for the benchmarks and campaigns of `xtask`: builds
//! the real binaries once, starts them on free loopback ports with temporary data dirs, and
//! kills them when the test ends (pass or fail). Tests run them with short intervals and
//! verbose logs (`Profile::Test`); benchmarks run release binaries as an operator would
//! (`Profile::Bench`, after `use_binaries_in`).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, OnceLock},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tempfile::TempDir;

pub mod kube;

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Runs the binaries of `dir` (built by the caller, say `target/release`) instead of building
/// the debug ones; call it before anything starts.
pub fn use_binaries_in(dir: PathBuf) {
    assert!(
        BIN_DIR.set(dir).is_ok(),
        "use_binaries_in after the binaries were chosen"
    );
}

/// The directory holding the workspace's binaries: the debug ones, built once per test
/// process, unless `use_binaries_in` chose others.
pub fn bin_dir() -> &'static Path {
    BIN_DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        // What cargo sets for a test process only: a build script that reads one of these
        // (ring's does) would otherwise see it change between this build and `cargo test`'s
        // own, and everything above it would be built again each time.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&name.as_ref())
            {
                command.env_remove(name.as_ref());
            }
        }
        let status = command
            .args(["build", "--quiet", "--bins"])
            .args([
                "-p",
                "portcullis-control-plane",
                "-p",
                "portcullis-cli",
                "-p",
                "portcullis-agent",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
        // target/debug/deps/<test> -> target/debug; a binary of the workspace (xtask) sits
        // in target/debug itself.
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().expect("target dir");
        if dir.file_name().is_some_and(|name| name == "deps") {
            dir.parent().expect("target dir").to_path_buf()
        } else {
            dir.to_path_buf()
        }
    })
}

/// How a binary is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// For tests: heartbeats, reconnects and status reports every second, info logs.
    Test,
    /// For benchmarks: the binaries' defaults, warnings only.
    Bench,
}

impl Profile {
    fn log_level(self) -> &'static str {
        match self {
            Profile::Test => "info",
            Profile::Bench => "warn",
        }
    }
}

/// Resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn owned_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status line of `GET path` on a loopback HTTP port, if it answered.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// A running `portcullis-control-plane serve`.
pub struct ControlPlane {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    profile: Profile,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    _tmp: Option<TempDir>,
}

impl ControlPlane {
    /// Starts a control plane with a fresh temporary data dir.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with extra `serve` arguments.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::launch(Profile::Test, None, extra_args, &[])
    }

    /// Starts one with extra `serve` arguments and environment variables.
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(Profile::Test, None, extra_args, env)
    }

    /// Starts one as a benchmark runs it (`Profile::Bench`), on `data_dir` when given (kept
    /// afterwards), else on a temporary one.
    pub fn start_bench(data_dir: Option<PathBuf>, extra_args: &[&str]) -> Self {
        Self::launch(Profile::Bench, data_dir, extra_args, &[])
    }

    fn launch(
        profile: Profile,
        data_dir: Option<PathBuf>,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let (data_dir, tmp) = match data_dir {
            Some(dir) => (dir, None),
            None => {
                let tmp = tempfile::tempdir().unwrap();
                (tmp.path().join("data"), Some(tmp))
            }
        };
        let mut cp = Self {
            child: None,
            data_dir,
            port: free_port(),
            admin_port: free_port(),
            profile,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: owned_pairs(env),
            _tmp: tmp,
        };
        cp.spawn();
        cp
    }

    /// The serve command for this control plane (not started).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin_dir().join("portcullis-control-plane"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port));
        if self.profile == Profile::Test {
            cmd.args(["--heartbeat-interval", "1"]);
        }
        cmd.args(&self.extra_args)
            .env("PORTCULLIS_LOG", self.profile.log_level())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self) {
        let log = log_file(&self.data_dir.with_extension("log"));
        let child = self
            .command()
            .stderr(log)
            .spawn()
            .expect("starting portcullis-control-plane");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("control plane exited during start-up: {status}");
            }
            if matches!(http_get(self.admin_port, "/readyz"), Some((200, _))) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("control plane not ready within 30 s");
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("tls/ca.crt")
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// SIGKILL: no chance to flush or drain.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        child.wait().unwrap()
    }

    /// Starts again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts again on the same ports with an empty store (a new epoch); the TLS material and
    /// the admin token are kept.
    pub fn reset_store(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir.join("store")).unwrap();
        std::fs::remove_file(self.data_dir.join("FORMAT")).unwrap();
        self.spawn();
    }

    /// Registers `cluster` and returns its agent token.
    pub fn register(&self, cluster: &str) -> String {
        let out = json(&self.admin_cli(&["cluster", "register", cluster, "-o", "json"]));
        out["agentToken"].as_str().expect("agentToken").to_owned()
    }

    /// The fleet view of one cluster (`cluster get -o json`).
    pub fn cluster(&self, cluster: &str) -> serde_json::Value {
        json(&self.admin_cli(&["cluster", "get", cluster, "-o", "json"]))
    }

    /// The store's revision, read from the admin metrics.
    pub fn revision(&self) -> u64 {
        let (_, body) = http_get(self.admin_port, "/metrics").expect("metrics");
        body.lines()
            .find(|l| l.starts_with("portcullis_store_revision"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("portcullis_store_revision in /metrics")
    }

    /// Runs the `portcullis` CLI against this control plane with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        self.cli_command(token, args)
            .output()
            .expect("running portcullis")
    }

    /// The `portcullis` CLI command against this control plane with `token`, not yet run
    /// (for long-running commands such as `events watch`).
    pub fn cli_command(&self, token: &str, args: &[&str]) -> Command {
        let mut command = Command::new(bin_dir().join("portcullis"));
        command
            .args(args)
            .env("PORTCULLIS_SERVER", self.url())
            .env("PORTCULLIS_TOKEN", token)
            .env("PORTCULLIS_CA_FILE", self.ca_file())
            .env_remove("PORTCULLIS_TOKEN_FILE")
            .stdin(Stdio::null());
        command
    }

    /// Runs the CLI as the bootstrap admin.
    pub fn admin_cli(&self, args: &[&str]) -> Output {
        self.cli(&self.admin_token(), args)
    }

    /// Runs grpcurl against this control plane (TLS, trusting its CA) with `token`, if any.
    pub fn grpcurl(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(grpcurl_path());
        cmd.arg("-cacert").arg(self.ca_file());
        if let Some(token) = token {
            cmd.arg("-H").arg(format!("authorization: Bearer {token}"));
        }
        let (flags, rest) = split_grpcurl_args(args);
        cmd.args(flags).arg(self.addr()).args(rest);
        cmd.stdin(Stdio::null()).output().expect("running grpcurl")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        dump_log_if_panicking("control plane", &self.data_dir.with_extension("log"));
    }
}

/// An append-mode log file for a child's stderr (kept across restarts).
/// A random token of 48 hex digits.
pub fn random_token() -> String {
    let mut bytes = [0u8; 24];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    urandom
        .read_exact(&mut bytes)
        .expect("reading /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn log_file(path: &Path) -> Stdio {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    Stdio::from(file)
}

/// Prints a child's log when the test failed, so CI output shows what the binary said.
fn dump_log_if_panicking(what: &str, path: &Path) {
    if thread::panicking() {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        eprintln!(
            "----- {what} log ({}) -----\n{log}----- end of {what} log -----",
            path.display()
        );
    }
}

/// A running `portcullis-agent run`: `--standalone`, or in Kubernetes mode (`start_kube`).
pub struct Agent {
    child: Option<Child>,
    /// Kubernetes mode: the kubeconfig the agent uses (KUBECONFIG) and its pod name.
    kube: Option<(PathBuf, String)>,
    pub cluster: String,
    pub data_dir: PathBuf,
    pub token_file: PathBuf,
    pub admin_port: u16,
    pub webhook_port: u16,
    /// When the process was last started.
    pub started: Instant,
    control_plane: String,
    ca_file: PathBuf,
    profile: Profile,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    _tmp: TempDir,
}

impl Agent {
    /// Starts an agent for `cluster` against `cp` (which may be down).
    pub fn start(cp: &ControlPlane, cluster: &str, token: &str) -> Self {
        Self::start_with(cp, cluster, token, &[])
    }

    /// Starts an agent with more arguments (kept for restarts).
    pub fn start_with(cp: &ControlPlane, cluster: &str, token: &str, extra_args: &[&str]) -> Self {
        Self::launch(Profile::Test, cp, cluster, token, extra_args, &[], None)
    }

    /// Starts an agent with more arguments and environment variables (kept for restarts).
    pub fn start_with_env(
        cp: &ControlPlane,
        cluster: &str,
        token: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(Profile::Test, cp, cluster, token, extra_args, env, None)
    }

    /// Starts an agent as a benchmark runs it (`Profile::Bench`): standalone, or with a
    /// `kubeconfig`, in Kubernetes mode programming its webhook by URL on its own loopback
    /// port.
    pub fn start_bench(
        cp: &ControlPlane,
        cluster: &str,
        token: &str,
        kubeconfig: Option<&Path>,
        extra_args: &[&str],
    ) -> Self {
        let kube = kubeconfig.map(|k| (k.to_path_buf(), "bench-agent".to_owned()));
        Self::launch(Profile::Bench, cp, cluster, token, extra_args, &[], kube)
    }

    /// Starts an agent in Kubernetes mode: it talks to the API server of `kubeconfig` as
    /// whoever that names, as replica `pod_name`, with `args` (the chart's, say) and `env`.
    pub fn start_kube(
        cp: &ControlPlane,
        cluster: &str,
        token: &str,
        kubeconfig: &Path,
        pod_name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(
            Profile::Test,
            cp,
            cluster,
            token,
            args,
            env,
            Some((kubeconfig.to_path_buf(), pod_name.to_owned())),
        )
    }

    fn launch(
        profile: Profile,
        cp: &ControlPlane,
        cluster: &str,
        token: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        kube: Option<(PathBuf, String)>,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let token_file = tmp.path().join("token");
        std::fs::write(&token_file, token).unwrap();
        let mut agent = Self {
            child: None,
            kube,
            cluster: cluster.to_owned(),
            data_dir: tmp.path().join("data"),
            token_file,
            admin_port: free_port(),
            webhook_port: free_port(),
            started: Instant::now(),
            control_plane: cp.url(),
            ca_file: cp.ca_file(),
            profile,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            env: owned_pairs(env),
            _tmp: tmp,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let mut command = Command::new(bin_dir().join("portcullis-agent"));
        command.arg("run");
        match &self.kube {
            Some((kubeconfig, pod)) => {
                command
                    .env("KUBECONFIG", kubeconfig)
                    .env("PORTCULLIS_POD_NAME", pod);
                if self.profile == Profile::Bench {
                    let url = format!("https://127.0.0.1:{}/validate", self.webhook_port);
                    command.args(["--webhook-url", &url]);
                }
            }
            None => {
                command.arg("--standalone");
                if self.profile == Profile::Test {
                    command.arg("--webhook-cert-out").arg(self.webhook_ca());
                }
            }
        }
        if self.profile == Profile::Test {
            command.args(["--reconnect-max", "1", "--status-interval", "1"]);
        }
        command
            .args(["--cluster", &self.cluster])
            .args(["--control-plane", &self.control_plane])
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--ca-file")
            .arg(&self.ca_file)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .arg("--webhook-listen")
            .arg(format!("127.0.0.1:{}", self.webhook_port))
            .args(&self.extra_args)
            .env("PORTCULLIS_LOG", self.profile.log_level())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(log_file(&self.data_dir.with_extension("log")));
        self.started = Instant::now();
        let child = command.spawn().expect("starting portcullis-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The admin port answers before the webhook's certificate is written and its port
        // bound (the agent writes the certificate first), and both before the agent calls
        // itself started (`listening`, part of readiness): wait for all three, or a review or
        // a readiness probe sent right after a restart meets a closed port, the previous run's
        // certificate or a start-up still in progress.
        let webhook_up = || std::net::TcpStream::connect(("127.0.0.1", self.webhook_port)).is_ok();
        let listening = || {
            http_get(self.admin_port, "/state").is_some_and(|(code, body)| {
                code == 200
                    && serde_json::from_str::<serde_json::Value>(&body)
                        .is_ok_and(|state| state["listening"] == true)
            })
        };
        while http_get(self.admin_port, "/livez").is_none() || !webhook_up() || !listening() {
            assert!(
                Instant::now() < deadline,
                "agent admin or webhook port not up within 30 s"
            );
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("agent exited during start-up: {status}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The webhook's self-signed certificate (what a client trusts).
    pub fn webhook_ca(&self) -> PathBuf {
        self.data_dir.with_extension("webhook.crt")
    }

    /// `/state` as JSON.
    pub fn state(&self) -> serde_json::Value {
        let (code, body) = http_get(self.admin_port, "/state").expect("agent /state");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The `/readyz` status code.
    pub fn readyz(&self) -> u16 {
        http_get(self.admin_port, "/readyz")
            .map(|(code, _)| code)
            .unwrap_or(0)
    }

    /// Polls `/state` until `pred` holds (30 s at most); returns the state that satisfied it.
    pub fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.poll_state(
            Duration::from_secs(30),
            Duration::from_millis(50),
            what,
            pred,
        )
        .unwrap_or_else(|timeout| panic!("{timeout}"))
    }

    /// For benchmarks: polls `/state` every 5 ms until `pred` holds, at most `limit`; the
    /// error says what was not reached and the last state.
    pub fn wait_state(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, String> {
        self.poll_state(limit, Duration::from_millis(5), what, pred)
    }

    fn poll_state(
        &self,
        limit: Duration,
        every: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.state();
            if pred(&state) {
                return Ok(state);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "agent {}: timed out after {limit:?} waiting for {what}; state: {state}",
                    self.cluster
                ));
            }
            thread::sleep(every);
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory, in MiB (NaN when not running).
    pub fn rss_mib(&self) -> f64 {
        self.pid().and_then(rss_mib).unwrap_or(f64::NAN)
    }

    /// Waits until the agent holds `revision`.
    pub fn wait_revision(&self, revision: u64) -> serde_json::Value {
        self.wait_for(&format!("revision {revision}"), |s| {
            s["revision"] == revision
        })
    }

    /// The names of the policies the agent holds.
    pub fn policies(&self) -> Vec<String> {
        self.state()["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect()
    }

    pub fn set_token(&self, token: &str) {
        std::fs::write(&self.token_file, token).unwrap();
    }

    /// SIGTERM, and waits for the agent to exit (a clean stop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again with the same data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        dump_log_if_panicking(
            &format!("agent {}", self.cluster),
            &self.data_dir.with_extension("log"),
        );
    }
}

/// POSTs an AdmissionReview body to an agent's webhook over TLS (trusting its self-signed
/// certificate), as the API server does; returns the HTTP status and the body.
pub fn post_review(agent: &Agent, body: Vec<u8>) -> (u16, serde_json::Value) {
    post_webhook(agent, "/validate?timeout=5s", body)
}

/// POSTs `body` to `path` on an agent's webhook port over TLS; returns the HTTP status and
/// the body (JSON, or the text as a JSON string).
pub fn post_webhook(agent: &Agent, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    post_many(agent, path, vec![body]).remove(0)
}

/// POSTs each body in turn over one keep-alive TLS connection, as the API server does;
/// returns each status and body.
pub fn post_many(agent: &Agent, path: &str, bodies: Vec<Vec<u8>>) -> Vec<(u16, serde_json::Value)> {
    use http_body_util::BodyExt;
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pem = std::fs::read(agent.webhook_ca()).expect("webhook certificate");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", agent.webhook_port))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake with the webhook");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut out = Vec::with_capacity(bodies.len());
        for body in bodies {
            sender.ready().await.unwrap();
            let request = hyper::Request::post(path)
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
                String::from_utf8_lossy(&bytes).into(),
            ));
            out.push((status, json));
        }
        out
    })
}

/// An AdmissionReview fixture captured from kube-apiserver (agent/tests/fixtures/admission).
pub fn admission_fixture(name: &str) -> Vec<u8> {
    let path = workspace_root()
        .join("agent/tests/fixtures/admission")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Polls `pred` until it holds (30 s at most).
pub fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// grpcurl's flags come before the address, the method after it: `["-d", "{}", "--", "svc/M"]`.
fn split_grpcurl_args<'a>(args: &'a [&'a str]) -> (&'a [&'a str], &'a [&'a str]) {
    match args.iter().position(|a| *a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (&[], args),
    }
}

/// grpcurl: `PORTCULLIS_GRPCURL` (set by `cargo xtask test`) or `grpcurl` on PATH.
pub fn grpcurl_path() -> PathBuf {
    let path = std::env::var_os("PORTCULLIS_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| "grpcurl".into());
    let works = Command::new(&path)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "grpcurl not found: run the tests with `cargo xtask test`, which installs it"
    );
    path
}

/// stdout of a command that must succeed.
pub fn success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr of a command that must fail.
pub fn failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "command succeeded but should have failed:\nstdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Parses JSON stdout of a successful command.
pub fn json(output: &Output) -> serde_json::Value {
    let text = success(output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
