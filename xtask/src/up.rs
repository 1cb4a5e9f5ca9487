//! `cargo xtask up`: the quickstart. Builds the binaries, starts the control plane with embedded
//! defaults (sled data dir, generated TLS, generated admin token) under `.portcullis/`, waits
//! until it is ready, prints the commands to try next, and runs until Ctrl-C.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

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

    let mut control_plane = Command::new(bin.join("portcullis-control-plane"))
        .arg("serve")
        .arg("--data-dir")
        .arg(&cp_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", args.port))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{}", args.admin_port))
        .spawn()
        .context("starting portcullis-control-plane")?;
    wait_ready(&mut control_plane, args.admin_port)?;

    let token = cp_dir.join("admin.token");
    let ca = cp_dir.join("tls/ca.crt");
    let cli = bin.join("portcullis");
    let examples = root.join("examples/policies.yaml");
    println!(
        r#"
Portcullis control plane is ready.
  gRPC (TLS)   https://127.0.0.1:{port}
  admin HTTP   http://127.0.0.1:{admin}/readyz  /metrics
  data dir     {data}
  admin token  {token}   (mode 0600)
  CA           {ca}

Try, in another shell:
  export PORTCULLIS_TOKEN_FILE={token} PORTCULLIS_CA_FILE={ca} PORTCULLIS_SERVER=https://127.0.0.1:{port}
  {cli} policy apply -f {examples}
  {cli} policy list
  {cli} cluster register prod-eu-1
  {cli} cluster list
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
    );
    let status = control_plane
        .wait()
        .context("waiting for the control plane")?;
    if !status.success() {
        bail!("portcullis-control-plane exited: {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Polls `/readyz` until it answers 200, the process exits, or 60 s pass.
fn wait_ready(child: &mut Child, admin_port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("portcullis-control-plane exited during start-up: {status}");
        }
        if http_ok(admin_port, "/readyz") {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    bail!("portcullis-control-plane was not ready within 60 s")
}

fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}
