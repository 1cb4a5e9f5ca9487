//! Benchmark (not a test): `evaluate` for a Deployment with 4 containers against 50 policies
//! (mixed Pod Security, individual controls and image hygiene; ten of each kind, policies of a
//! kind with the same rules). Prints p50 / p99 / p99.9 of single calls, for the whole
//! `evaluate` (parse + decide), for parsing and for the decision on an already parsed object,
//! `evaluate` again with 50 distinct rule sets (nothing shared between policies), and with
//! images the engine's per-thread memo of prepared images has not seen (new tags each call).
//! The last line times plain arithmetic of `evaluate`'s median duration in the same loop: the
//! machine's own tail at that duration. `PORTCULLIS_BENCH_SHAPE=1` also prints more percentiles. Run:
//! `cargo bench -p portcullis-engine --bench evaluate`.

use std::{hint::black_box, time::Instant};

use portcullis_engine::{
    self as engine, AdmissionInput, Object, Operation, ScanIndex, applicability::Target,
};
use portcullis_policy::{Kind, Policy, parse_policy_documents};

/// Timed calls of each kind; `PORTCULLIS_BENCH_ITERATIONS` lowers it for profilers
/// (callgrind runs about fifty times slower).
fn iterations() -> usize {
    std::env::var("PORTCULLIS_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000)
}

/// The benchmark's 50 policies: ten of each of five kinds. With `distinct`, no two have the
/// same rules (each also gets its own host port range, or its own hostPath prefix or allowed
/// registry), so the engine can share no rule set's work between policies.
fn mk_policies(distinct: bool) -> Vec<Policy> {
    let mut yaml = String::new();
    for i in 0..50 {
        let ports = if distinct {
            format!(", hostPorts: {{min: {}, max: 9000}}", 8000 + i)
        } else {
            String::new()
        };
        let (log, registry) = if distinct {
            (
                format!("/var/log/{i}"),
                format!(", registry-{i}.example.com"),
            )
        } else {
            ("/var/log".to_owned(), String::new())
        };
        let rules = match i % 5 {
            0 => {
                format!("resource: {{podSecurity: {{level: restricted, version: latest}}{ports}}}")
            }
            1 => format!(
                "resource: {{podSecurity: {{level: baseline, version: v1.29}}, privileged: {{}}, hostNamespaces: {{}}{ports}}}"
            ),
            2 => format!(
                "resource: {{capabilities: {{allow: [NET_BIND_SERVICE], requiredDrop: [ALL]}}, allowPrivilegeEscalation: false, \
                  runAsUser: {{rule: MustRunAsNonRoot}}, hostPath: {{allow: [{{pathPrefix: {log}, readOnly: true}}]}}, \
                  seccomp: {{allow: [RuntimeDefault, Localhost]}}, sysctls: {{allow: [\"net.ipv4.*\"]}}, resources: {{requireLimits: [cpu, memory]}}}}"
            ),
            3 => format!(
                "image: {{registries: {{allow: [registry.example.com, docker.io/library{registry}]}}, disallowedTags: [latest], requireDigest: false}}"
            ),
            _ => format!(
                "image: {{registries: {{deny: [\"evil-{i}.example.com\"]}}, disallowedTags: [latest, dev]}}"
            ),
        };
        let action = if i % 7 == 0 { "alert" } else { "block" };
        yaml.push_str(&format!(
            "---\nname: policy-{i:02}\naction: {action}\nscope: {{namespaces: {{exclude: [kube-system]}}}}\n\
             whitelist: {{images: [\"registry.example.com/base/*\"]}}\nrules:\n  {rules}\n"
        ));
    }
    let mut policies: Vec<Policy> = parse_policy_documents(&yaml)
        .unwrap()
        .iter()
        .map(|p| Policy::try_from(p).unwrap())
        .collect();
    // As the agent and the CLI hold them: equal rule sets are one value.
    portcullis_policy::share_rules(&mut policies);
    policies
}

/// The benchmark's Deployment; `suffix` is appended to every image's tag.
fn deployment(suffix: &str) -> String {
    let container = |name: &str, image: &str| {
        format!(
            r#"{{"name":"{name}","image":"{image}","ports":[{{"containerPort":8080}}],
            "resources":{{"limits":{{"cpu":"500m","memory":"256Mi"}},"requests":{{"cpu":"100m"}}}},
            "securityContext":{{"allowPrivilegeEscalation":false,"readOnlyRootFilesystem":true,"runAsNonRoot":true,
              "capabilities":{{"drop":["ALL"]}}}},
            "volumeMounts":[{{"name":"config","mountPath":"/etc/app","readOnly":true}}],
            "readinessProbe":{{"httpGet":{{"path":"/ready","port":8080}}}}}}"#
        )
    };
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"web","namespace":"shop","labels":{{"app":"web"}}}},
        "spec":{{"replicas":3,"selector":{{"matchLabels":{{"app":"web"}}}},"template":{{"metadata":{{"labels":{{"app":"web"}}}},
        "spec":{{"securityContext":{{"runAsUser":10001,"seccompProfile":{{"type":"RuntimeDefault"}}}},
        "containers":[{},{},{}],"initContainers":[{}],
        "volumes":[{{"name":"config","configMap":{{"name":"web"}}}}]}}}}}}}}"#,
        container(
            "web",
            &format!("registry.example.com/shop/web:1.4.2{suffix}")
        ),
        container("proxy", &format!("docker.io/library/nginx:1.25{suffix}")),
        container(
            "metrics",
            &format!("registry.example.com/base/exporter:2.0{suffix}")
        ),
        container(
            "migrate",
            &format!("registry.example.com/shop/migrate:1.4.2{suffix}")
        ),
    )
}

fn report(name: &str, mut samples: Vec<u64>) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0;
    if std::env::var_os("PORTCULLIS_BENCH_SHAPE").is_some() {
        println!(
            "{name:<40} p10 {:.2} p50 {:.2} p75 {:.2} p90 {:.2} p95 {:.2} p97 {:.2} p99 {:.2}",
            at(0.10),
            at(0.5),
            at(0.75),
            at(0.9),
            at(0.95),
            at(0.97),
            at(0.99)
        );
    }
    println!(
        "{name:<40} p50 {:>7.2} us  p99 {:>7.2} us  p99.9 {:>7.2} us  mean {mean:>7.2} us  ({} calls)",
        at(0.50),
        at(0.99),
        at(0.999),
        samples.len()
    );
}

fn main() {
    let policies = mk_policies(false);
    let distinct = mk_policies(true);
    assert!(
        (0..distinct.len()).all(|i| (0..i).all(|j| distinct[i].rules != distinct[j].rules)),
        "the distinct policies share rules"
    );
    // No policy here reads scan results, so an empty index changes nothing.
    let scans = ScanIndex::default();
    let raw = deployment("");
    // Far more distinct images than the memo's 256 slots, cycled: each call's own images
    // (four per Deployment) have been pushed out of the memo since they were last seen.
    let unseen: Vec<String> = (0..COLD_VARIANTS)
        .map(|i| deployment(&format!("-{i}")))
        .collect();
    let input = AdmissionInput {
        operation: Operation::Create,
        kind: "Deployment",
        sub_resource: "",
        namespace: "shop",
        name: "web",
        object: Some(&raw),
        old_object: None,
    };
    let decision = engine::evaluate(&input, "prod-eu-1", &policies, &scans);
    println!(
        "{} policies, Deployment with 4 containers: outcome {:?}, {} findings",
        policies.len(),
        decision.outcome,
        decision.findings.len()
    );
    let decision = engine::evaluate(&input, "prod-eu-1", &distinct, &scans);
    println!(
        "the same with 50 distinct rule sets: outcome {:?}, {} findings",
        decision.outcome,
        decision.findings.len()
    );

    let object = Object::parse(Kind::Deployment, &raw).unwrap();
    let labels = object.metadata().labels.clone();
    let target = Target {
        cluster: "prod-eu-1",
        namespace: "shop",
        kind: Kind::Deployment,
        name: "web",
        labels: &labels,
    };

    let mut warm_up = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        for (set, shared) in [(&policies, true), (&distinct, false)] {
            let start = Instant::now();
            black_box(engine::evaluate(
                black_box(&input),
                "prod-eu-1",
                set,
                &scans,
            ));
            if shared {
                warm_up.push(start.elapsed().as_nanos() as u64);
            }
        }
    }
    let mut rounds = spin_rounds(percentile(&warm_up, 0.5));
    let iterations = iterations();
    let mut whole = Vec::with_capacity(iterations);
    let mut decide = Vec::with_capacity(iterations);
    let mut parse = Vec::with_capacity(iterations);
    let mut whole_distinct = Vec::with_capacity(iterations);
    let mut machine = Vec::with_capacity(iterations);
    let mut whole_unseen = Vec::with_capacity(iterations);
    for i in 0..iterations {
        // The machine changes speed during a run: keep the arithmetic's median on
        // `evaluate`'s over the last stretch of calls.
        if i > 0 && i % RESIZE_EVERY == 0 {
            let recent = |samples: &[u64]| percentile(&samples[i - RESIZE_EVERY..], 0.5).max(1);
            rounds = (rounds * recent(&whole) / recent(&machine)).max(1);
        }
        machine.push(time_spin(rounds));

        let start = Instant::now();
        black_box(engine::evaluate(
            black_box(&input),
            "prod-eu-1",
            &policies,
            &scans,
        ));
        whole.push(start.elapsed().as_nanos() as u64);

        let start = Instant::now();
        black_box(Object::parse(Kind::Deployment, black_box(&raw)).unwrap());
        parse.push(start.elapsed().as_nanos() as u64);

        let start = Instant::now();
        black_box(engine::evaluate_object(
            black_box(&object),
            &target,
            &policies,
            &scans,
        ));
        decide.push(start.elapsed().as_nanos() as u64);

        let start = Instant::now();
        black_box(engine::evaluate(
            black_box(&input),
            "prod-eu-1",
            &distinct,
            &scans,
        ));
        whole_distinct.push(start.elapsed().as_nanos() as u64);

        let unseen_input = AdmissionInput {
            object: Some(&unseen[i % COLD_VARIANTS]),
            ..input
        };
        let start = Instant::now();
        black_box(engine::evaluate(
            black_box(&unseen_input),
            "prod-eu-1",
            &policies,
            &scans,
        ));
        whole_unseen.push(start.elapsed().as_nanos() as u64);
    }
    report("evaluate (parse + decide)", whole);
    report("parse the Deployment", parse);
    report("decide (50 policies, parsed object)", decide);
    report("evaluate, 50 distinct rule sets", whole_distinct);
    report("evaluate, images new to the memo", whole_unseen);
    report("machine: arithmetic, evaluate's median", machine);
}

fn percentile(samples: &[u64], p: f64) -> u64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Deployments with images of their own for the cold-memo line (four each).
const COLD_VARIANTS: usize = 2_000;

/// How often (in calls) the arithmetic is resized to `evaluate`'s recent median.
const RESIZE_EVERY: usize = 1_000;

/// A reference for reading the others' tails, timed in the same loop: register arithmetic (no
/// memory, no allocation) sized to `evaluate`'s median (in the warm-up, then over each
/// `RESIZE_EVERY` calls). On a VM whose host interrupts it about every millisecond, a call
/// that spans an interruption takes tens of microseconds more, whatever the code; this line
/// shows how much that adds at this duration during this run.
fn spin(rounds: u64) -> u64 {
    let mut x = 1u64;
    for i in 0..rounds {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
    }
    x
}

fn time_spin(rounds: u64) -> u64 {
    let start = Instant::now();
    black_box(spin(black_box(rounds)));
    start.elapsed().as_nanos() as u64
}

/// Spin rounds that take `nanos`, from the median of calls of a known size.
fn spin_rounds(nanos: u64) -> u64 {
    let probe = 10_000;
    let calibration: Vec<u64> = (0..201).map(|_| time_spin(probe)).collect();
    nanos * probe / percentile(&calibration, 0.5).max(1)
}
