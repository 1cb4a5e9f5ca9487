//! A network partition between an agent and the control plane, with network namespaces: the
//! agent runs in a namespace of its own, joined to the host by a veth pair (the campaign's own
//! test hosts, 10.231.x.0/30, made and removed here). The link is cut while a policy changes;
//! the agent must keep enforcing what it holds, then, when the link is back, resume by delta
//! (no new snapshot) to the control plane's revision. Needs root (`ip netns`); where the
//! machine does not allow it, the scenario says so and is skipped.

use std::{
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use portcullis_testkit::{admission_fixture, bin_dir, free_port, http_get};

/// A namespace and its veth pair, removed on drop.
struct Namespace {
    name: String,
    host_link: String,
}

fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

impl Namespace {
    fn create(n: u32) -> Result<(Self, String, String)> {
        let name = format!("pcchaos{n}");
        let (host_link, ns_link) = (format!("pch{n}"), format!("pca{n}"));
        let (host, peer) = (
            format!("10.231.{}.1", n % 250),
            format!("10.231.{}.2", n % 250),
        );
        ip(&["netns", "add", &name])?;
        let ns = Self {
            name: name.clone(),
            host_link: host_link.clone(),
        };
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
        ])?;
        ip(&["link", "set", &ns_link, "netns", &name])?;
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{peer}/30"),
            "dev",
            &ns_link,
        ])?;
        ip(&["-n", &name, "link", "set", &ns_link, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok((ns, host, peer))
    }

    fn set_link(&self, up: bool) -> Result<()> {
        ip(&[
            "link",
            "set",
            &self.host_link,
            if up { "up" } else { "down" },
        ])?;
        Ok(())
    }

    /// `curl` inside the namespace (the agent's own view while the link is down).
    fn curl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "curl", "-s", "--max-time", "5"])
            .args(args)
            .output()
            .context("running curl in the namespace")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace removes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The scenario; `Ok(false)` when network namespaces are not available here.
pub fn run() -> Result<bool> {
    let probe = Command::new("ip").args(["netns", "list"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("chaos: partition skipped: `ip netns` is not available on this machine");
        return Ok(false);
    }
    let (ns, host, peer) = match Namespace::create(std::process::id() % 10_000) {
        Ok(made) => made,
        Err(error) => {
            println!("chaos: partition skipped: cannot make a network namespace ({error:#})");
            return Ok(false);
        }
    };
    let dir = tempfile::tempdir()?;
    let (port, admin) = (free_port(), free_port());
    let data = dir.path().join("cp");
    let cp = Killed(
        Command::new(bin_dir().join("portcullis-control-plane"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("{host}:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--tls-san", &host, "--heartbeat-interval", "1"])
            .env("PORTCULLIS_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(log(&dir.path().join("control-plane.log"))?)
            .spawn()
            .context("starting the control plane")?,
    );
    wait(Duration::from_secs(30), "the control plane", || {
        matches!(http_get(admin, "/readyz"), Some((200, _)))
    })?;
    let cli = |args: &[&str]| -> Result<String> {
        let out = Command::new(bin_dir().join("portcullis"))
            .args(args)
            .env("PORTCULLIS_SERVER", format!("https://{host}:{port}"))
            .env("PORTCULLIS_TOKEN_FILE", data.join("admin.token"))
            .env("PORTCULLIS_CA_FILE", data.join("tls/ca.crt"))
            .output()?;
        ensure!(
            out.status.success(),
            "portcullis {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let registered: serde_json::Value =
        serde_json::from_str(&cli(&["cluster", "register", "edge", "-o", "json"])?)?;
    let token = dir.path().join("token");
    std::fs::write(&token, registered["agentToken"].as_str().unwrap_or(""))?;
    let policy = |name: &str| -> Result<()> {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!("name: {name}\naction: block\nrules: {{resource: {{privileged: {{}}}}}}\n"),
        )?;
        cli(&["policy", "apply", "-f", file.to_str().unwrap()]).map(drop)
    };
    policy("before-partition")?;

    let _agent = Killed(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin_dir().join("portcullis-agent"))
            .args(["run", "--standalone", "--cluster", "edge"])
            .args(["--control-plane", &format!("https://{host}:{port}")])
            .arg("--token-file")
            .arg(&token)
            .arg("--ca-file")
            .arg(data.join("tls/ca.crt"))
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .args([
                "--admin-listen",
                "0.0.0.0:9091",
                "--webhook-listen",
                "0.0.0.0:8444",
            ])
            .args(["--reconnect-max", "1", "--heartbeat-misses", "2"])
            .env("PORTCULLIS_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(log(&dir.path().join("agent.log"))?)
            .spawn()
            .context("starting the agent in its namespace")?,
    );
    let state = || -> serde_json::Value {
        ns.curl(&["http://127.0.0.1:9091/state"])
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    };
    let revision = || -> u64 {
        http_get(admin, "/metrics")
            .and_then(|(_, body)| {
                body.lines()
                    .find(|l| l.starts_with("portcullis_store_revision"))
                    .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    let synced = revision();
    wait(Duration::from_secs(30), "the agent's first sync", || {
        state()["revision"] == synced
    })?;
    let snapshots = state()["snapshots"].as_u64().unwrap_or(0);

    // Cut the link; change a policy meanwhile.
    ns.set_link(false)?;
    policy("during-partition")?;
    wait(
        Duration::from_secs(30),
        "the agent to notice the partition",
        || state()["connected"] == false,
    )?;
    let review = dir.path().join("review.json");
    std::fs::write(&review, admission_fixture("pod-create-privileged.json"))?;
    let answer = ns.curl(&[
        "-k",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &format!("@{}", review.display()),
        "https://127.0.0.1:8444/validate",
    ])?;
    let answer: serde_json::Value = serde_json::from_str(&answer).context("the review's answer")?;
    ensure!(
        answer["response"]["allowed"] == false,
        "cut off, the agent stopped enforcing: {answer}"
    );

    // Heal: the agent resumes by delta to the control plane's revision.
    ns.set_link(true)?;
    let target = revision();
    wait(
        Duration::from_secs(60),
        "the agent to resume after the partition",
        || {
            let s = state();
            s["connected"] == true && s["revision"] == target
        },
    )?;
    let after = state();
    ensure!(
        after["snapshots"].as_u64() == Some(snapshots) && after["lastSyncMode"] == "resume",
        "the agent took a snapshot after the partition instead of resuming: {after}"
    );
    println!(
        "chaos: partition passed: cut off, the agent kept denying the privileged pod; healed, \
         it resumed by delta to revision {target} (peer {peer})"
    );
    drop(cp);
    Ok(true)
}

/// A log file for a child's standard error.
fn log(path: &std::path::Path) -> Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(path)?))
}

fn wait(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
