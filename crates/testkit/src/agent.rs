//! An agent process for a test or a benchmark, and clients of its webhook.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tempfile::TempDir;

use crate::{
    ControlPlane, Profile, bin_dir, dump_log_if_panicking, free_port, http_get, log_file,
    owned_pairs, rss_mib,
};

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
        // A port picked free may be taken before the agent binds it (by any process's
        // outgoing connection: they share the ephemeral range), so a first start that fails to
        // bind tries other ports; a restart keeps its ports (a forwarder may point at them).
        for attempt in 1.. {
            match agent.try_spawn() {
                Ok(()) => break,
                Err(_) if attempt < 3 && agent.log().contains("Address already in use") => {
                    agent.admin_port = free_port();
                    agent.webhook_port = free_port();
                }
                Err(status) => panic!("agent exited during start-up: {status}"),
            }
        }
        agent
    }

    /// The agent's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        if let Err(status) = self.try_spawn() {
            panic!("agent exited during start-up: {status}");
        }
    }

    /// Starts the agent and waits until it serves; its exit status if it exits first.
    fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
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
                self.child = None;
                return Err(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
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
