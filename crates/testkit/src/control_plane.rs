//! A control plane process for a test or a benchmark.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tempfile::TempDir;

use crate::{
    Profile, bin_dir, dump_log_if_panicking, free_port, grpcurl_path, http_get, json, log_file,
    owned_pairs, split_grpcurl_args,
};

/// A running `portcullis-control-plane serve`.
pub struct ControlPlane {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    profile: Profile,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    /// The PostgreSQL database it runs on (`--database-url`), if any.
    pub database: Option<String>,
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

    /// Starts one on the PostgreSQL database at `url`.
    pub fn start_on_database(url: &str, extra_args: &[&str]) -> Self {
        let mut args = vec!["--database-url", url];
        args.extend_from_slice(extra_args);
        Self::launch(Profile::Test, None, &args, &[])
    }

    /// Starts another replica on this one's database, with its TLS certificate and admin
    /// token (so agents and the CLI trust and reach either), on ports of its own.
    pub fn start_replica(&self) -> Self {
        let database = self
            .database
            .as_deref()
            .expect("a replica needs a database");
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(data_dir.join("tls")).unwrap();
        std::fs::copy(self.ca_file(), data_dir.join("tls/ca.crt")).unwrap();
        std::fs::copy(
            self.data_dir.join("admin.token"),
            data_dir.join("admin.token"),
        )
        .unwrap();
        let tls = self.data_dir.join("tls");
        let mut extra_args = self.extra_args.clone();
        if !extra_args.iter().any(|a| a == "--database-url") {
            extra_args.extend(["--database-url".to_owned(), database.to_owned()]);
        }
        extra_args.extend([
            "--tls-cert".to_owned(),
            tls.join("server.crt").display().to_string(),
            "--tls-key".to_owned(),
            tls.join("server.key").display().to_string(),
        ]);
        let mut cp = Self {
            child: None,
            data_dir,
            port: free_port(),
            admin_port: free_port(),
            profile: self.profile,
            extra_args,
            env: self.env.clone(),
            database: Some(database.to_owned()),
            _tmp: Some(tmp),
        };
        cp.spawn();
        cp
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
        let mut extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut database = extra_args
            .iter()
            .position(|a| a == "--database-url")
            .and_then(|i| extra_args.get(i + 1).cloned());
        // The suites that run on either store are run on PostgreSQL too (see
        // `postgres_requested`).
        if database.is_none() && profile == Profile::Test && crate::postgres_requested() {
            let url = crate::fresh_database("e2e")
                .expect("PORTCULLIS_TEST_STORE=postgres but there is no PostgreSQL");
            extra_args.extend(["--database-url".to_owned(), url.clone()]);
            database = Some(url);
        }
        let mut cp = Self {
            child: None,
            data_dir,
            port: free_port(),
            admin_port: free_port(),
            profile,
            extra_args,
            env: owned_pairs(env),
            database,
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
        match self.database.take() {
            // On PostgreSQL: a new database.
            Some(old) => {
                let url = crate::fresh_database("reset").expect("PostgreSQL");
                for arg in &mut self.extra_args {
                    if *arg == old {
                        *arg = url.clone();
                    }
                }
                self.database = Some(url);
                let _ = std::fs::remove_dir_all(self.data_dir.join("replica"));
            }
            None => {
                std::fs::remove_dir_all(self.data_dir.join("store")).unwrap();
                std::fs::remove_file(self.data_dir.join("FORMAT")).unwrap();
            }
        }
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
