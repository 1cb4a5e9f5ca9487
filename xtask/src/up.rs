//! `cargo xtask up`: the quickstart. Builds the binaries, starts the control plane with embedded
//! defaults (sled data dir, generated TLS, generated admin token) and one standalone agent under
//! `.portcullis/`, waits until both are ready, prints the commands to try next, and runs until
//! Ctrl-C. With `--postgres` the control plane's store is a PostgreSQL of its own, kept in
//! `.portcullis/postgres` and run by this task.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use portcullis_testkit::Postgres;

/// The database of the control plane in the local PostgreSQL.
const DATABASE: &str = "portcullis";

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the local stack keeps its data.
    #[arg(long, default_value = ".portcullis")]
    data_dir: PathBuf,
    /// gRPC port of the control plane.
    #[arg(long, default_value_t = 8443)]
    port: u16,
    /// Admin HTTP port of the control plane.
    #[arg(long, default_value_t = 9090)]
    admin_port: u16,
    /// Admin HTTP port of the local agent.
    #[arg(long, default_value_t = 9091)]
    agent_admin_port: u16,
    /// Webhook HTTPS port of the local agent.
    #[arg(long, default_value_t = 8444)]
    webhook_port: u16,
    /// The local agent's cluster name.
    #[arg(long, default_value = "local")]
    cluster: String,
    /// Store the control plane's data in a local PostgreSQL (data in DATA_DIR/postgres).
    #[arg(long)]
    postgres: bool,
    /// Port of the local PostgreSQL (with --postgres).
    #[arg(long, default_value_t = 15432)]
    postgres_port: u16,
}

pub fn run(args: UpArgs) -> Result<()> {
    let root = workspace_root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "--bins", "--locked"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    let bin = root.join("target/debug");
    let data = root.join(&args.data_dir);
    let cp_dir = data.join("control-plane");
    // Stopped when dropped (an error below) or by Ctrl-C, as the other processes.
    let postgres = if args.postgres {
        Some(start_postgres(&data, args.postgres_port)?)
    } else {
        None
    };

    let mut command = Command::new(bin.join("portcullis-control-plane"));
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(&cp_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", args.port))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{}", args.admin_port));
    if let Some(postgres) = &postgres {
        // The password from its file, never on the command line.
        command
            .arg("--database-url")
            .arg(postgres.url_without_password(DATABASE))
            .arg("--database-password-file")
            .arg(postgres.password_file());
    }
    let mut control_plane = command
        .spawn()
        .context("starting portcullis-control-plane")?;
    wait_ready(
        &mut control_plane,
        "portcullis-control-plane",
        args.admin_port,
    )?;

    let token = cp_dir.join("admin.token");
    let ca = cp_dir.join("tls/ca.crt");
    let cli = bin.join("portcullis");
    let server = format!("https://127.0.0.1:{}", args.port);

    // One local agent, registered on first start; its token is kept for later starts.
    let agent_dir = data.join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let agent_token = agent_dir.join("token");
    if !agent_token.exists() {
        let out = Command::new(&cli)
            .args(["cluster", "register", &args.cluster, "-o", "json"])
            .args(["--server", &server])
            .arg("--token-file")
            .arg(&token)
            .arg("--ca-file")
            .arg(&ca)
            .output()
            .context("running portcullis cluster register")?;
        if !out.status.success() {
            bail!(
                "registering cluster {}: {}",
                args.cluster,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let response: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let value = response["agentToken"]
            .as_str()
            .context("no agentToken in the answer")?;
        write_private(&agent_token, value)?;
    }
    let mut agent = Command::new(bin.join("portcullis-agent"))
        .args([
            "run",
            "--standalone",
            "--cluster",
            &args.cluster,
            "--control-plane",
            &server,
        ])
        .arg("--token-file")
        .arg(&agent_token)
        .arg("--ca-file")
        .arg(&ca)
        .arg("--data-dir")
        .arg(agent_dir.join("data"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{}", args.agent_admin_port))
        .arg("--webhook-listen")
        .arg(format!("127.0.0.1:{}", args.webhook_port))
        .arg("--webhook-cert-out")
        .arg(agent_dir.join("webhook.crt"))
        .spawn()
        .context("starting portcullis-agent")?;
    if let Err(error) = wait_ready(&mut agent, "portcullis-agent", args.agent_admin_port) {
        let _ = control_plane.kill();
        return Err(error);
    }
    let examples = root.join("examples/policies.yaml");
    let store = match &postgres {
        Some(postgres) => format!(
            "PostgreSQL {}\n               (password in {}, log {})",
            postgres.url_without_password(DATABASE),
            postgres.password_file().display(),
            postgres.log_path().display()
        ),
        None => format!("sled, in {}", cp_dir.display()),
    };
    println!(
        r#"
Portcullis is running: a control plane and one agent (cluster "{cluster}").
  gRPC (TLS)   https://127.0.0.1:{port}
  admin HTTP   http://127.0.0.1:{admin}/readyz  /metrics
  agent admin  http://127.0.0.1:{agent_admin}/state  /readyz  /metrics
  data dir     {data}
  store        {store}
  admin token  {token}   (mode 0600)
  CA           {ca}

Try, in another shell:
  export PORTCULLIS_TOKEN_FILE={token} PORTCULLIS_CA_FILE={ca} PORTCULLIS_SERVER=https://127.0.0.1:{port}
  {cli} policy apply -f {examples}
  {cli} policy list
  {cli} cluster list        # the fleet view: the agent has applied the policies
  curl -s http://127.0.0.1:{agent_admin}/state
  grpcurl -cacert {ca} -H "authorization: Bearer $(cat {token})" 127.0.0.1:{port} list
  grpcurl -cacert {ca} -H "authorization: Bearer $(cat {token})" -d '{{"name": "no-privileged"}}' \
      127.0.0.1:{port} portcullis.v1.PolicyService/GetPolicy

Ctrl-C stops it; the data stays in {data}.
"#,
        port = args.port,
        admin = args.admin_port,
        data = data.display(),
        token = token.display(),
        ca = ca.display(),
        cli = cli.display(),
        examples = examples.display(),
        cluster = args.cluster,
        agent_admin = args.agent_admin_port,
    );
    // Ctrl-C reaches the children (same process group), PostgreSQL included; wait for both.
    let agent_status = agent.wait().context("waiting for the agent")?;
    let status = control_plane
        .wait()
        .context("waiting for the control plane")?;
    if !status.success() || !agent_status.success() {
        bail!("stopped: control plane {status}, agent {agent_status}");
    }
    Ok(())
}

/// The local PostgreSQL (installed first when missing and this is root), with the control
/// plane's database.
fn start_postgres(data: &Path, port: u16) -> Result<Postgres> {
    crate::test::ensure_postgresql()?;
    let dir = data.join("postgres");
    let postgres = Postgres::start_in(dir.clone(), port)
        .with_context(|| format!("starting PostgreSQL in {}", dir.display()))?;
    let exists = postgres.sql(
        "postgres",
        &format!("select 1 from pg_database where datname = '{DATABASE}'"),
    );
    if exists.is_empty() {
        postgres.create_database(DATABASE);
    }
    Ok(postgres)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Polls `/readyz` until it answers 200, the process exits, or 60 s pass.
fn wait_ready(child: &mut Child, name: &str, admin_port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited during start-up: {status}");
        }
        if http_ok(admin_port, "/readyz") {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    bail!("{name} was not ready within 60 s")
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    portcullis_runtime::files::write_private(path, contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn http_ok(port: u16, path: &str) -> bool {
    matches!(portcullis_testkit::http_get(port, path), Some((200, _)))
}
