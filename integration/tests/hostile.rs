//! The hostile-input campaign kept as tests: each probe an attacker tried against the built
//! binaries, with the answer a security control must give. Each test fails if its defect
//! comes back.

use std::{path::Path, process::Command};

use portcullis_testkit::bin_dir;

const DIGEST_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DIGEST_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
/// The manifest digest of the Grype fixture (`crates/scan/tests/scans/grype/image.json`).
const GRYPE_DIGEST: &str =
    "sha256:ca738abb87a8d58f112d3400ebb079b61ceae7dc290beb34bda735be4b1941d5";

/// A native report for `registry.example.com/repo:clean` with no findings.
const CLEAN_REPORT: &str = r#"{"format": "portcullis-scan/v1",
  "image": {"repository": "registry.example.com/repo", "tags": ["clean"]},
  "scanner": {"name": "probe"}}"#;

fn pod(name: &str, privileged: bool, image: &str, extra_spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"payments"}},
        "spec":{{"containers":[{{"name":"c","image":"{image}","securityContext":{{"privileged":{privileged}}}}}]{extra_spec}}}}}"#
    )
}

fn deployment(name: &str, image: &str) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}","namespace":"payments"}},
        "spec":{{"template":{{"spec":{{"containers":[{{"name":"c","image":"{image}","securityContext":{{"privileged":true}}}}]}}}}}}}}"#
    )
}

/// One probe: the policy, the object, the scan reports the CLI reads, and the decision.
struct Probe {
    what: &'static str,
    policy: String,
    object: String,
    scans: Vec<(&'static str, String)>,
    expected: &'static str,
}

fn probe(what: &'static str, policy: &str, object: String, expected: &'static str) -> Probe {
    Probe {
        what,
        policy: policy.to_owned(),
        object,
        scans: Vec::new(),
        expected,
    }
}

/// `portcullis test` on the probe's files: the decision for its one object.
fn decide(probe: &Probe) -> String {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let object = dir.path().join("object.json");
    std::fs::write(&policy, &probe.policy).unwrap();
    std::fs::write(&object, &probe.object).unwrap();
    let mut command = Command::new(bin_dir().join("portcullis"));
    command
        .args(["test", "-p"])
        .arg(&policy)
        .arg("-f")
        .arg(&object);
    for (i, (format, report)) in probe.scans.iter().enumerate() {
        let file = dir.path().join(format!("scan-{i}.json"));
        std::fs::write(&file, report).unwrap();
        command
            .arg("--scan")
            .arg(&file)
            .args(["--scan-format", format]);
    }
    let out = command.args(["-o", "json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: {stdout} {}",
            probe.what,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    results[0]["decision"].as_str().unwrap_or("").to_owned()
}

/// The policy-semantics campaign: each reference or object, the policy, the decision.
#[test]
fn policy_semantics_probes() {
    let grype_fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/scan/tests/scans/grype/image.json"),
    )
    .unwrap();
    let unscanned_block = "name: scanned\naction: block\nrules: {image: {unscanned: block}}\n";
    let deny_evil = "name: deny\naction: block\nrules: {image: {registries: \
                     {deny: [evil.example.com, docker.io/library/nginx]}}}\n";
    let whitelisted_glob = "name: priv\naction: block\n\
                            whitelist: {images: [\"*.corp.example.com/*\"]}\n\
                            rules: {resource: {privileged: {}}}\n";
    let allow_registry = "name: allow\naction: block\n\
                          rules: {image: {registries: {allow: [registry.example.com]}}}\n";
    let whitelisted_workload = "name: priv\naction: block\n\
                                whitelist: {workloads: [payments/legacy-batch]}\n\
                                rules: {resource: {privileged: {}}}\n";
    let image_volume =
        r#","volumes":[{"name":"payload","image":{"reference":"evil.example.com/payload:1"}}]"#;
    let with_clean = |mut p: Probe| {
        p.scans.push(("native", CLEAN_REPORT.to_owned()));
        p
    };
    let with_grype = |mut p: Probe| {
        p.scans.push(("grype", grype_fixture.clone()));
        p
    };
    let probes = [
        // 8. A digest behind a clean tag: only a report for the digest may judge it.
        with_clean(probe(
            "clean tag, scanned",
            unscanned_block,
            pod("p", false, "registry.example.com/repo:clean", ""),
            "allow",
        )),
        with_clean(probe(
            "clean tag with an unscanned digest",
            unscanned_block,
            pod(
                "p",
                false,
                &format!("registry.example.com/repo:clean@{DIGEST_A}"),
                "",
            ),
            "block",
        )),
        // 9. Ports and Docker Hub's aliases do not dodge a deny list.
        probe(
            "denied registry",
            deny_evil,
            pod("p", false, "evil.example.com/x", ""),
            "block",
        ),
        probe(
            "denied registry with its default port",
            deny_evil,
            pod("p", false, "evil.example.com:443/x", ""),
            "block",
        ),
        probe(
            "denied registry in upper case with its port",
            deny_evil,
            pod("p", false, "EVIL.example.com:443/x:1", ""),
            "block",
        ),
        probe(
            "Docker Hub by registry-1.docker.io",
            deny_evil,
            pod("p", false, "registry-1.docker.io/library/nginx", ""),
            "block",
        ),
        probe(
            "Docker Hub by registry.hub.docker.com, short name",
            deny_evil,
            pod("p", false, "registry.hub.docker.com/nginx:1", ""),
            "block",
        ),
        probe(
            "another port is another registry",
            deny_evil,
            pod("p", false, "evil.example.com:5000/x", ""),
            "allow",
        ),
        // 10. An image whitelist glob does not cross `/`.
        probe(
            "whitelist glob across a path component",
            whitelisted_glob,
            pod("p", true, "evil.com/x.corp.example.com/tool:1", ""),
            "block",
        ),
        probe(
            "whitelist glob on the registry",
            whitelisted_glob,
            pod("p", true, "registry.corp.example.com/tool:1", ""),
            "allow",
        ),
        // 11. Image volumes are judged.
        probe(
            "image volume from a registry not allowed",
            allow_registry,
            pod("p", false, "registry.example.com/app:1", image_volume),
            "block",
        ),
        probe(
            "no image volume",
            allow_registry,
            pod("p", false, "registry.example.com/app:1", ""),
            "allow",
        ),
        // 12. A Grype report known by its manifest digest only.
        with_grype(probe(
            "pinned to the Grype report's manifest digest",
            unscanned_block,
            pod(
                "p",
                false,
                &format!("registry.example.com/app@{GRYPE_DIGEST}"),
                "",
            ),
            "allow",
        )),
        with_grype(probe(
            "pinned to another digest",
            unscanned_block,
            pod(
                "p",
                false,
                &format!("registry.example.com/app@{DIGEST_B}"),
                "",
            ),
            "block",
        )),
        // 13. A workload whitelist entry names workload kinds, not a bare Pod.
        probe(
            "bare privileged Pod named like the whitelisted workload",
            whitelisted_workload,
            pod("legacy-batch", true, "registry.example.com/app:1", ""),
            "block",
        ),
        probe(
            "the whitelisted Deployment",
            whitelisted_workload,
            deployment("legacy-batch", "registry.example.com/app:1"),
            "allow",
        ),
        probe(
            "a Pod whitelisted by kind",
            &whitelisted_workload.replace("payments/legacy-batch", "payments/Pod/legacy-batch"),
            pod("legacy-batch", true, "registry.example.com/app:1", ""),
            "allow",
        ),
    ];
    let mut wrong = Vec::new();
    for probe in &probes {
        let decision = decide(probe);
        if decision != probe.expected {
            wrong.push(format!(
                "{}: {decision}, expected {}",
                probe.what, probe.expected
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `portcullis test` in a pipeline, fed hostile files: 100,000-deep nesting (200 KB, which took
/// 76 s to refuse) is refused at once in YAML and JSON, and a device is refused by name and
/// bounded as a stream. Measured: a few milliseconds each (bound 20 s, for a loaded machine).
#[test]
fn the_cli_refuses_deep_and_endless_inputs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000;
    let deep_yaml = dir.path().join("deep.yaml");
    std::fs::write(&deep_yaml, format!("a: {}{}", "[".repeat(n), "]".repeat(n))).unwrap();
    let deep_json = dir.path().join("deep.json");
    std::fs::write(&deep_json, format!("{}{}", "[".repeat(n), "]".repeat(n))).unwrap();
    let deep_policy = dir.path().join("policy.yaml");
    std::fs::write(
        &deep_policy,
        format!("name: a\nrules: {}{}", "{a: ".repeat(n), "}".repeat(n)),
    )
    .unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies.yaml");
    let portcullis = bin_dir().join("portcullis");
    let run = |policy: &Path, manifest: &Path| {
        let started = std::time::Instant::now();
        let out = Command::new(&portcullis)
            .arg("test")
            .arg("-p")
            .arg(policy)
            .arg("-f")
            .arg(manifest)
            .output()
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            took < std::time::Duration::from_secs(20),
            "{took:?}: {stderr}"
        );
        (out.status.code(), stderr)
    };
    for manifest in [&deep_yaml, &deep_json] {
        let (code, stderr) = run(&policies, manifest);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("nested more than 64 levels deep"),
            "{stderr}"
        );
    }
    let (code, stderr) = run(&deep_policy, &deep_yaml);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("line 2, column"), "{stderr}");
    let (code, stderr) = run(&policies, Path::new("/dev/zero"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
    // As standard input, an endless stream is read up to the limit, then refused.
    let out = Command::new(bin_dir().join("portcullis"))
        .arg("test")
        .arg("-p")
        .arg(&policies)
        .args(["-f", "-"])
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the limit is 67108864"), "{stderr}");
}

/// The webhook under a CPU attack: four AdmissionReviews of 3.6 MB whose pod holds 260,000
/// labels in reverse order (each took ~25 s and four stalled the agent for minutes) are
/// answered, while ordinary admissions are answered and the sync stream keeps applying new
/// revisions. Bounds are far above the measured cost (about 1 s per bomb in a debug build).
#[test]
fn a_label_bomb_stalls_neither_admission_nor_sync() {
    use portcullis_testkit::{Agent, ControlPlane, admission_fixture, post_review, success};
    let cp = ControlPlane::start();
    let token = cp.register("c1");
    let agent = Agent::start(&cp, "c1", &token);
    let dir = tempfile::tempdir().unwrap();
    let apply = |name: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!("name: {name}\naction: block\nrules: {{resource: {{privileged: {{}}}}}}\n"),
        )
        .unwrap();
        success(&cp.admin_cli(&["policy", "apply", "-f", file.to_str().unwrap()]));
    };
    apply("first");
    agent.wait_revision(cp.revision());

    let n = 260_000;
    let labels: Vec<String> = (0..n).map(|i| format!(r#""k{:06}":"""#, n - i)).collect();
    let bomb = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"bomb",
        "kind":{{"group":"","version":"v1","kind":"Pod"}},"namespace":"default","operation":"CREATE",
        "userInfo":{{"username":"attacker"}},"object":{{"apiVersion":"v1","kind":"Pod",
        "metadata":{{"name":"p","namespace":"default","labels":{{{}}}}},
        "spec":{{"containers":[{{"name":"c","image":"nginx"}}]}}}}}}}}"#,
        labels.join(",")
    );
    assert!(bomb.len() > 3_000_000, "{}", bomb.len());
    std::thread::scope(|scope| {
        let bombs: Vec<_> = (0..4)
            .map(|_| {
                let (agent, bomb) = (&agent, bomb.clone());
                scope.spawn(move || {
                    let started = std::time::Instant::now();
                    let (status, _) = post_review(agent, bomb.into_bytes());
                    (status, started.elapsed())
                })
            })
            .collect();
        // Meanwhile: ordinary admissions, and a policy change reaching the agent.
        for _ in 0..10 {
            let started = std::time::Instant::now();
            let (status, review) =
                post_review(&agent, admission_fixture("pod-create-privileged.json"));
            assert!(status == 200 || status == 503, "{status}: {review}");
            if status == 200 {
                assert_eq!(review["response"]["allowed"], false);
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(20));
        }
        apply("second");
        agent.wait_revision(cp.revision());
        for bomb in bombs {
            let (status, took) = bomb.join().unwrap();
            assert!(status == 200 || status == 503, "{status}");
            assert!(took < std::time::Duration::from_secs(60), "{took:?}");
        }
    });
    assert_eq!(agent.state()["connected"], true);
}

/// The real agent and control plane with a block policy on privileged pods and an alert
/// policy on every image, the agent synced.
fn events_setup() -> (
    portcullis_testkit::ControlPlane,
    portcullis_testkit::Agent,
    tempfile::TempDir,
) {
    use portcullis_testkit::{Agent, ControlPlane, success};
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start();
    let token = cp.register("c1");
    let policies = dir.path().join("p.yaml");
    std::fs::write(
        &policies,
        "name: no-privileged\nrules: {resource: {privileged: {}}}\n---\n\
         name: every-image\naction: alert\nrules: {image: {registries: {allow: [registry.example.com]}}}\n",
    )
    .unwrap();
    success(&cp.admin_cli(&["policy", "apply", "-f", policies.to_str().unwrap()]));
    let agent = Agent::start(&cp, "c1", &token);
    agent.wait_revision(cp.revision());
    (cp, agent, dir)
}

/// A pod review named `name` whose containers run `images` (none privileged).
fn pod_review(name: &str, images: &[String]) -> Vec<u8> {
    let containers: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
        .collect();
    let mut review: serde_json::Value = serde_json::from_slice(
        &portcullis_testkit::admission_fixture("pod-create-plain.json"),
    )
    .unwrap();
    review["request"]["uid"] = format!("uid-{name}").into();
    review["request"]["name"] = name.into();
    review["request"]["object"]["metadata"]["name"] = name.into();
    review["request"]["object"]["spec"]["containers"] = containers.into();
    serde_json::to_vec(&review).unwrap()
}

/// Probes 2 and 3: an admission whose event would be over the control plane's limits (a
/// 2.5 MiB image name; 300 alert findings) is delivered, fitted, and the events behind it too.
#[test]
fn oversized_events_are_delivered_fitted_and_block_nothing_behind_them() {
    use portcullis_testkit::{json, post_review};
    let (cp, agent, _dir) = events_setup();
    let huge = vec![format!("evil.example.com/{}", "a".repeat(2_500_000))];
    let (status, _) = post_review(&agent, pod_review("huge-image", &huge));
    assert_eq!(status, 200);
    let many: Vec<String> = (0..300)
        .map(|i| format!("evil.example.com/app{i}:1"))
        .collect();
    let (status, review) = post_review(&agent, pod_review("many-findings", &many));
    assert_eq!(
        (status, &review["response"]["allowed"]),
        (200, &true.into())
    );
    let (status, _) = post_review(
        &agent,
        pod_review("ordinary", &["evil.example.com/x:1".to_owned()]),
    );
    assert_eq!(status, 200);
    agent.wait_for("every event delivered", |s| {
        s["events"]["pending"] == 0 && s["events"]["delivered"] == 3
    });
    assert_eq!(agent.state()["events"]["refused"], 0);
    let events = json(&cp.admin_cli(&["events", "list", "--limit", "0", "-o", "json"]));
    let by_name = |name: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no event for {name}: {events}"))
            .clone()
    };
    let huge = by_name("huge-image");
    assert!(
        huge["images"][0]
            .as_str()
            .unwrap()
            .ends_with("…[truncated]")
    );
    let many = by_name("many-findings");
    let findings = many["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 256);
    assert_eq!(findings[255]["rule"], "truncated");
    assert!(
        findings[255]["message"]
            .as_str()
            .unwrap()
            .starts_with("45 more findings")
    );
    by_name("ordinary");
}

/// Probe 4: a flipped byte in the agent's scan chunk file is found at start: the cache is
/// moved aside, the agent says so, resyncs, and enforces the scan as imported.
#[test]
fn a_flipped_byte_in_the_agents_scan_cache_is_caught_and_resynced() {
    use portcullis_testkit::{Agent, ControlPlane, success};
    let cp = ControlPlane::start();
    let token = cp.register("c1");
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("scan.json");
    std::fs::write(
        &report,
        r#"{"format":"portcullis-scan/v1","image":{"repository":"registry.example.com/app","tags":["1"]},
        "scanner":{"name":"probe"},"vulnerabilities":[{"id":"CVE-2024-1111","severity":"critical","package":"p","installedVersion":"1"}]}"#,
    )
    .unwrap();
    success(&cp.admin_cli(&["scan", "import", report.to_str().unwrap()]));
    let policy = dir.path().join("p.yaml");
    std::fs::write(
        &policy,
        "name: no-critical\nrules: {image: {vulnerabilities: {block: [CVE-2024-1111]}}}\n",
    )
    .unwrap();
    success(&cp.admin_cli(&["policy", "apply", "-f", policy.to_str().unwrap()]));
    let mut agent = Agent::start(&cp, "c1", &token);
    agent.wait_revision(cp.revision());
    agent.kill();
    let chunks = agent.data_dir.join("cache-scans");
    let file = std::fs::read_dir(&chunks)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    // A byte of the vulnerability id (the campaign turned a block into an allow this way).
    let at = bytes
        .windows(13)
        .position(|w| w == b"CVE-2024-1111")
        .expect("the id in the chunk file");
    bytes[at + 12] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    agent.restart();
    let state = agent.wait_for("the resynced state", |s| {
        s["revision"] == cp.revision() && s["lastSyncMode"] == "snapshot"
    });
    assert!(
        state["cacheRecovery"]
            .as_str()
            .is_some_and(|note| note.contains("moved aside")),
        "{state}"
    );
    let (_, review) = portcullis_testkit::post_review(
        &agent,
        pod_review("scanned", &["registry.example.com/app:1".to_owned()]),
    );
    assert_eq!(review["response"]["allowed"], false, "{review}");
}

/// Probe 5: the agent refuses a cleartext control plane before it sends anything.
#[test]
fn the_agent_refuses_a_cleartext_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "a-token-that-must-not-leak").unwrap();
    let out = Command::new(bin_dir().join("portcullis-agent"))
        .args(["run", "--standalone", "--cluster", "c1"])
        .args(["--control-plane", "http://127.0.0.1:1"])
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not an https:// URL"), "{stderr}");
}

/// Probe 6: an agent reporting a 3 MB error (and an oversized version) cannot grow the fleet
/// view: what it sent is cut with a marker, and the listing still works.
#[test]
fn an_agent_cannot_inflate_the_fleet_view() {
    use portcullis_testkit::{ControlPlane, json};
    let cp = ControlPlane::start();
    let token = cp.register("c1");
    let report = serde_json::json!({
        "cluster": "c1",
        "agentVersion": "v".repeat(100_000),
        "failedRevision": "7",
        "error": "e".repeat(3 * 1024 * 1024),
    });
    // The request on standard input (it is too large for an argument).
    let mut grpcurl = Command::new(portcullis_testkit::grpcurl_path())
        .arg("-cacert")
        .arg(cp.ca_file())
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["-max-msg-sz", "8388608", "-d", "@", &cp.addr()])
        .arg("portcullis.v1.AgentService/ReportStatus")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = grpcurl.stdin.take().unwrap();
        stdin.write_all(report.to_string().as_bytes()).unwrap();
    }
    let out = grpcurl.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clusters = json(&cp.admin_cli(&["cluster", "list", "-o", "json"]));
    let status = &clusters[0]["status"];
    let error = status["lastError"].as_str().unwrap();
    assert!(
        error.len() <= 4096 && error.ends_with("…[truncated]"),
        "{}",
        error.len()
    );
    assert!(status["agentVersion"].as_str().unwrap().len() <= 128);
}

/// Risk: the data dirs were created readable by everyone (the agent's holds the event outbox
/// with user names). Both are private to their user now.
#[test]
fn data_dirs_are_private_to_their_user() {
    use std::os::unix::fs::PermissionsExt;
    let cp = portcullis_testkit::ControlPlane::start();
    let token = cp.register("c1");
    let agent = portcullis_testkit::Agent::start(&cp, "c1", &token);
    for dir in [&cp.data_dir, &agent.data_dir] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
}
