//! One Kubernetes test's world on the shared API server (`KubeEnv`), and the charts rendered
//! by the Helm library for it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::MutexGuard,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use super::{ApiServer, Forwarder, serial, text};
use crate::{Agent, ControlPlane};

/// One Kubernetes test's world on the shared API server: a namespace and a release of the
/// agent chart (both named `name`), the chart's ServiceAccount with exactly the chart's RBAC
/// and a token minted for it, a control plane with the cluster `name` registered, and a
/// forwarder in front of the agents (the webhook URL the chart is given). Holds `serial()`;
/// on drop the release's webhook configuration is deleted, so the next test starts clean.
pub struct KubeEnv {
    pub api: &'static ApiServer,
    pub name: String,
    pub cp: ControlPlane,
    pub cluster_token: String,
    /// The rendered agent chart.
    pub chart: Vec<Value>,
    /// The chart ServiceAccount's kubeconfig.
    pub kubeconfig: PathBuf,
    pub forwarder: Forwarder,
    /// The chart ServiceAccount's token.
    pub sa_token: String,
    dir: TempDir,
    _serial: MutexGuard<'static, ()>,
}

/// The agent chart rendered by the Helm library (`helm/render.py`).
pub fn render_chart(
    chart: &str,
    release: &str,
    namespace: &str,
    values_file: Option<&Path>,
    values: &Value,
) -> Vec<Value> {
    let root = crate::workspace_root();
    let mut command = Command::new("python3");
    command
        .arg(root.join("helm/render.py"))
        .arg(chart)
        .args(["--release", release, "--namespace", namespace])
        .args(["--set-json", &values.to_string()]);
    if let Some(file) = values_file {
        command.arg("--values-file").arg(file);
    }
    let out = command.output().expect("running python3 helm/render.py");
    assert!(
        out.status.success(),
        "helm/render.py failed (run through `cargo xtask test`, which installs \
         helm-python-sdk): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("render.py prints JSON");
    list["items"].as_array().expect("a List").clone()
}

/// `b` merged over `a` (objects recursively; anything else replaced).
fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                merge(a.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// The chart's RBAC: what the agent's identity is made of.
const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// Flags the harness sets itself (addresses, files), left out of the chart's.
const HARNESS_FLAGS: [&str; 8] = [
    "--log-format=",
    "--cluster=",
    "--control-plane=",
    "--token-file=",
    "--ca-file=",
    "--data-dir=",
    "--admin-listen=",
    "--webhook-listen=",
];

impl KubeEnv {
    /// Sets up `name` (a DNS label) with the chart's values `values` merged over the
    /// harness's (cluster name, control plane address, the forwarder's URL, a reconcile every
    /// second); `{port}` in `webhook.url` is the forwarder's port. `None` when no API server
    /// is configured.
    pub fn new(name: &str, values: Value) -> Option<Self> {
        let serial = serial();
        let api = ApiServer::shared()?;
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start();
        let cluster_token = cp.register(name);
        let forwarder = Forwarder::start();
        let mut all = serde_json::json!({
            "clusterName": name,
            "controlPlane": {"address": cp.url()},
            "webhook": {"url": format!("https://127.0.0.1:{}/validate", forwarder.port)},
            "extraArgs": ["--reconcile-interval=1"],
        });
        merge(&mut all, &values);
        if let Some(url) = all["webhook"]["url"].as_str() {
            let url = url.replace("{port}", &forwarder.port.to_string());
            all["webhook"]["url"] = url.into();
        }
        let chart = render_chart("portcullis-agent", name, name, None, &all);
        let created = api.kubectl(&["create", "namespace", name]);
        assert!(created.status.success(), "{}", text(&created.stderr));
        // The agent's identity (not the `helm test` Pod's, which has its own).
        let rbac: Vec<Value> = chart
            .iter()
            .filter(|o| RBAC_KINDS.contains(&o["kind"].as_str().unwrap_or("")))
            .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] != "verify")
            .cloned()
            .collect();
        assert_eq!(rbac.len(), RBAC_KINDS.len(), "the chart's RBAC objects");
        api.apply(&rbac);
        let sa = rbac[0]["metadata"]["name"].as_str().unwrap().to_owned();
        let kubeconfig = dir.path().join("agent-kubeconfig");
        let sa_token = api.mint_token(name, &sa);
        api.write_kubeconfig(&kubeconfig, &sa_token);
        Some(Self {
            api,
            name: name.to_owned(),
            cp,
            cluster_token,
            chart,
            kubeconfig,
            forwarder,
            sa_token,
            dir,
            _serial: serial,
        })
    }

    /// The rendered object of `kind` (the first).
    pub fn object(&self, kind: &str) -> &Value {
        self.chart
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("the chart renders no {kind}"))
    }

    /// The agent container's arguments from the chart's StatefulSet, without `run` and the
    /// flags the harness sets.
    pub fn agent_args(&self) -> Vec<String> {
        self.object("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .map(|a| a.as_str().unwrap().to_owned())
            .filter(|a| !HARNESS_FLAGS.iter().any(|f| a.starts_with(f)))
            .collect()
    }

    /// The value of the chart's `--NAME=` argument.
    pub fn flag(&self, name: &str) -> String {
        let prefix = format!("--{name}=");
        self.agent_args()
            .iter()
            .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("the chart passes no --{name}"))
    }

    /// The webhook configuration's name.
    pub fn config_name(&self) -> String {
        self.flag("webhook-config-name")
    }

    /// Points the agents started from now on at the API server through `forwarder` (whose
    /// backend the caller sets to the API server's port), so a test can cut their
    /// connections.
    pub fn route_api_through(&self, forwarder: &Forwarder) {
        let url = format!("https://127.0.0.1:{}", forwarder.port);
        self.api
            .write_kubeconfig_via(&self.kubeconfig, &self.sa_token, &url);
    }

    /// Starts replica `pod` of the agent, as the chart's ServiceAccount with the chart's
    /// arguments (and `extra`), behind the forwarder.
    pub fn start_agent(&self, pod: &str, extra: &[&str]) -> Agent {
        self.start_agent_with_env(pod, extra, &[])
    }

    /// `start_agent`, with environment variables.
    pub fn start_agent_with_env(&self, pod: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut args = self.agent_args();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = Agent::start_kube(
            &self.cp,
            &self.name,
            &self.cluster_token,
            &self.kubeconfig,
            pod,
            &args,
            env,
        );
        self.forwarder.add_backend(agent.webhook_port);
        agent
    }

    /// Applies policy documents (YAML) on the control plane.
    pub fn apply_policy(&self, yaml: &str) {
        let path = self.dir.path().join("policy.yaml");
        std::fs::write(&path, yaml).unwrap();
        crate::success(
            &self
                .cp
                .admin_cli(&["policy", "apply", "-f", path.to_str().unwrap()]),
        );
    }

    /// The webhook configuration as the API server has it.
    pub fn config(&self) -> Option<Value> {
        self.api
            .get("validatingwebhookconfiguration", None, &self.config_name())
    }

    /// Polls the configuration until `pred` holds (60 s at most).
    pub fn wait_config(&self, what: &str, pred: impl Fn(Option<&Value>) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let config = self.config();
            if pred(config.as_ref()) {
                return config;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the webhook configuration: {what}; it is {config:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// A directory for the test's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        let _ = self.api.kubectl(&[
            "delete",
            "validatingwebhookconfiguration",
            &self.config_name(),
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}
