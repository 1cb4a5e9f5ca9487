//! `cargo xtask chaos`: a fault campaign against the real binaries (debug builds, loopback
//! ports, temporary data), bounded in time. The control plane is SIGKILLed `--kills` times,
//! at random moments, while operators write policies and import scans, and agents report the
//! events of the admissions they deny; some agents are SIGKILLed too, some of them just
//! after they start (mid-snapshot) and some while deltas flow. At the end:
//!
//! - every write the control plane acknowledged is there, with what was written;
//! - every agent converges to the control plane's last revision;
//! - every event of an admission an agent denied is stored exactly once (the agents that take
//!   admissions are never killed: a SIGKILLed agent loses the events of its last half second
//!   by design, since the webhook answers before they are on disk).
//!
//! Then a network partition (`partition`): an agent in a network namespace of its own is cut
//! off from the control plane, keeps enforcing, and resumes by delta when the link is back.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use portcullis_testkit::{Agent, ControlPlane, admission_fixture, bin_dir, post_review};

mod partition;

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Times the control plane is SIGKILLed.
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Agents (each its own cluster).
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Of those, agents that are SIGKILLed and restarted along the way.
    #[arg(long, default_value_t = 10)]
    churned: usize,
    /// Longest time for the whole campaign, in seconds (it fails past it).
    #[arg(long, default_value_t = 900)]
    deadline: u64,
    /// Also cut an agent off the network (needs root for `ip netns`; skipped, saying so,
    /// where the machine does not allow it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    partition: bool,
}

/// The CLI against the control plane as the bootstrap admin, without borrowing it (it is
/// killed and restarted while writers run).
#[derive(Clone)]
struct Operator {
    url: String,
    token: String,
    ca: PathBuf,
}

impl Operator {
    fn run(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(bin_dir().join("portcullis"))
            .args(args)
            .env("PORTCULLIS_SERVER", &self.url)
            .env("PORTCULLIS_TOKEN", &self.token)
            .env("PORTCULLIS_CA_FILE", &self.ca)
            .env_remove("PORTCULLIS_TOKEN_FILE")
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A tiny random source (the campaign needs variety, not quality).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// An AdmissionReview of a privileged pod named `name` (denied by the campaign's policy).
fn privileged_review(name: &str) -> Vec<u8> {
    let mut review: serde_json::Value =
        serde_json::from_slice(&admission_fixture("pod-create-privileged.json")).unwrap();
    review["request"]["uid"] = name.into();
    review["request"]["name"] = name.into();
    review["request"]["object"]["metadata"]["name"] = name.into();
    serde_json::to_vec(&review).unwrap()
}

pub fn run(args: ChaosArgs) -> Result<()> {
    ensure!(
        args.churned < args.agents,
        "--churned must be below --agents"
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.deadline);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    println!(
        "chaos: building and starting the control plane and {} agents",
        args.agents
    );
    let mut cp = ControlPlane::start();
    let operator = Operator {
        url: cp.url(),
        token: cp.admin_token(),
        ca: cp.ca_file(),
    };
    let work = tempfile::tempdir()?;
    let base = work.path().join("base.yaml");
    std::fs::write(
        &base,
        "name: no-privileged\naction: block\nrules: {resource: {privileged: {}}}\n",
    )?;
    operator
        .run(&["policy", "apply", "-f", base.to_str().unwrap()])
        .context("applying the base policy")?;
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let cluster = format!("chaos-{i:02}");
        let token = cp.register(&cluster);
        agents.push(Agent::start(&cp, &cluster, &token));
    }
    let churned = agents.split_off(args.agents - args.churned);
    let stable = Arc::new(agents);
    let mut churned = churned;

    let stop = Arc::new(AtomicBool::new(false));
    // Acknowledged writes: policy name -> its text; scan image -> its tag.
    let policies: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let scans: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    // Denied admissions: (cluster, pod name).
    let denied: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
    let mut workers = Vec::new();
    {
        let (stop, policies, operator, dir) = (
            stop.clone(),
            policies.clone(),
            operator.clone(),
            work.path().to_owned(),
        );
        workers.push(thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("chaos-policy-{n:04}");
                let text = format!(
                    "name: {name}\naction: alert\ndescription: written {n}\n\
                     rules: {{image: {{disallowedTags: [tag-{n}]}}}}\n"
                );
                let file = dir.join(format!("{name}.yaml"));
                std::fs::write(&file, &text).unwrap();
                if operator
                    .run(&["policy", "apply", "-f", file.to_str().unwrap()])
                    .is_some()
                {
                    policies.lock().unwrap().insert(name, text);
                    n += 1;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    {
        let (stop, scans, operator, dir) = (
            stop.clone(),
            scans.clone(),
            operator.clone(),
            work.path().to_owned(),
        );
        workers.push(thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let tag = format!("t{n:04}");
                let report = format!(
                    r#"{{"format":"portcullis-scan/v1","image":{{"repository":"registry.example.com/chaos","tags":["{tag}"]}},
                    "scanner":{{"name":"chaos"}},"vulnerabilities":[{{"id":"CVE-2024-{n:05}","severity":"high","package":"p","installedVersion":"1"}}]}}"#
                );
                let file = dir.join(format!("scan-{tag}.json"));
                std::fs::write(&file, report).unwrap();
                if operator
                    .run(&["scan", "import", file.to_str().unwrap()])
                    .is_some()
                {
                    scans.lock().unwrap().insert(tag);
                    n += 1;
                }
                thread::sleep(Duration::from_millis(80));
            }
        }));
    }
    {
        let (stop, denied, stable) = (stop.clone(), denied.clone(), stable.clone());
        workers.push(thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let agent = &stable[(n as usize) % stable.len()];
                let name = format!("pod-{n:06}");
                let (status, review) = post_review(agent, privileged_review(&name));
                if status == 200 && review["response"]["allowed"] == false {
                    denied.lock().unwrap().insert((agent.cluster.clone(), name));
                }
                n += 1;
                thread::sleep(Duration::from_millis(10));
            }
        }));
    }

    for kill in 1..=args.kills {
        ensure!(
            Instant::now() < deadline,
            "the campaign ran past --deadline"
        );
        thread::sleep(Duration::from_millis(1500 + rng.below(2500)));
        cp.kill();
        // Agents too: one restarted on its cache (deltas resume), one from nothing (a snapshot
        // it is killed in the middle of, then restarted again).
        let agent = &mut churned[rng.below(args.churned as u64) as usize];
        agent.kill();
        thread::sleep(Duration::from_millis(200 + rng.below(1000)));
        cp.restart();
        agent.restart();
        let fresh = &mut churned[rng.below(args.churned as u64) as usize];
        fresh.kill();
        std::fs::remove_dir_all(&fresh.data_dir).ok();
        fresh.restart();
        thread::sleep(Duration::from_millis(rng.below(150)));
        fresh.restart();
        println!(
            "chaos: kill {kill}/{}: {} policies, {} scans, {} denials acknowledged so far",
            args.kills,
            policies.lock().unwrap().len(),
            scans.lock().unwrap().len(),
            denied.lock().unwrap().len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))?;
    }

    // Every acknowledged write is there, as written.
    let policies = policies.lock().unwrap().clone();
    let listed = operator
        .run(&["policy", "list", "-o", "json"])
        .context("listing policies")?;
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    let stored: BTreeMap<String, String> = listed
        .as_array()
        .context("policy list")?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["description"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let mut lost = Vec::new();
    for (name, text) in &policies {
        let description = text
            .lines()
            .find_map(|l| l.strip_prefix("description: "))
            .unwrap_or("");
        if stored.get(name).map(String::as_str) != Some(description) {
            lost.push(name.clone());
        }
    }
    ensure!(
        lost.is_empty(),
        "acknowledged policies lost or changed: {lost:?}"
    );
    let scans = scans.lock().unwrap().clone();
    for tag in &scans {
        if operator
            .run(&["scan", "get", &format!("registry.example.com/chaos:{tag}")])
            .is_none()
        {
            bail!("acknowledged scan of tag {tag} lost");
        }
    }

    // Every agent converges to the last revision.
    let revision = cp.revision();
    for agent in stable.iter().chain(churned.iter()) {
        agent.wait_revision(revision);
    }

    // Every denial's event is stored exactly once.
    let denied = denied.lock().unwrap().clone();
    for agent in stable.iter() {
        agent.wait_for("an empty outbox", |s| s["events"]["pending"] == 0);
    }
    let mut stored_events: BTreeMap<(String, String), u64> = BTreeMap::new();
    for agent in stable.iter() {
        let out = operator
            .run(&[
                "events",
                "list",
                "--cluster",
                &agent.cluster,
                "--limit",
                "0",
                "-o",
                "json",
            ])
            .context("listing events")?;
        let events: serde_json::Value = serde_json::from_str(&out)?;
        for event in events.as_array().context("event list")? {
            if event["policy"] == "no-privileged" {
                let key = (
                    agent.cluster.clone(),
                    event["name"].as_str().unwrap_or("").to_owned(),
                );
                *stored_events.entry(key).or_default() += event["count"].as_u64().unwrap_or(1);
            }
        }
    }
    let missing: Vec<_> = denied
        .iter()
        .filter(|key| !stored_events.contains_key(*key))
        .collect();
    let twice: Vec<_> = stored_events.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(
        missing.is_empty() && twice.is_empty(),
        "events: {} missing (first {:?}), {} more than once (first {:?})",
        missing.len(),
        missing.first(),
        twice.len(),
        twice.first()
    );
    println!(
        "chaos: passed in {:.0} s: {} control-plane kills, {} agent kills and {} mid-snapshot \
         kills; {} acknowledged policy writes, {} scan imports and {} denials (each event \
         stored once) all kept; {} agents at revision {revision}",
        started.elapsed().as_secs_f64(),
        args.kills,
        args.kills,
        args.kills,
        policies.len(),
        scans.len(),
        denied.len(),
        args.agents
    );
    drop(cp);
    if args.partition {
        partition::run()?;
    }
    Ok(())
}
