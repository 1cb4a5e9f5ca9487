//! Benchmark (not a test): `evaluate` for a Deployment with 4 containers against 50 policies
//! (mixed Pod Security, individual controls and image hygiene). Prints p50 / p99 / p99.9 of
//! single calls, for the whole `evaluate` (parse + decide) and for the decision on an already
//! parsed object. Run: `cargo bench -p portcullis-policy --bench evaluate`.

use std::{hint::black_box, time::Instant};

use portcullis_policy::{
    Kind, Policy,
    applicability::Target,
    engine::{self, AdmissionInput, Object, Operation, ScanIndex},
    parse_policy_documents,
};

/// Timed calls of each kind; `PORTCULLIS_BENCH_ITERATIONS` lowers it for profilers
/// (callgrind runs about fifty times slower).
fn iterations() -> usize {
    std::env::var("PORTCULLIS_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000)
}

fn policies() -> Vec<Policy> {
    let mut yaml = String::new();
    for i in 0..50 {
        let rules = match i % 5 {
            0 => "resource: {podSecurity: {level: restricted, version: latest}}".to_owned(),
            1 => "resource: {podSecurity: {level: baseline, version: v1.29}, privileged: {}, hostNamespaces: {}}".to_owned(),
            2 => "resource: {capabilities: {allow: [NET_BIND_SERVICE], requiredDrop: [ALL]}, allowPrivilegeEscalation: false, \
                  runAsUser: {rule: MustRunAsNonRoot}, hostPath: {allow: [{pathPrefix: /var/log, readOnly: true}]}, \
                  seccomp: {allow: [RuntimeDefault, Localhost]}, sysctls: {allow: [\"net.ipv4.*\"]}, resources: {requireLimits: [cpu, memory]}}"
                .to_owned(),
            3 => "image: {registries: {allow: [registry.example.com, docker.io/library]}, disallowedTags: [latest], requireDigest: false}".to_owned(),
            _ => format!("image: {{registries: {{deny: [\"evil-{i}.example.com\"]}}, disallowedTags: [latest, dev]}}"),
        };
        let action = if i % 7 == 0 { "alert" } else { "block" };
        yaml.push_str(&format!(
            "---\nname: policy-{i:02}\naction: {action}\nscope: {{namespaces: {{exclude: [kube-system]}}}}\n\
             whitelist: {{images: [\"registry.example.com/base/*\"]}}\nrules:\n  {rules}\n"
        ));
    }
    parse_policy_documents(&yaml)
        .unwrap()
        .iter()
        .map(|p| Policy::try_from(p).unwrap())
        .collect()
}

fn deployment() -> String {
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
        container("web", "registry.example.com/shop/web:1.4.2"),
        container("proxy", "docker.io/library/nginx:1.25"),
        container("metrics", "registry.example.com/base/exporter:2.0"),
        container("migrate", "registry.example.com/shop/migrate:1.4.2"),
    )
}

fn report(name: &str, mut samples: Vec<u64>) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0;
    println!(
        "{name:<40} p50 {:>7.2} us  p99 {:>7.2} us  p99.9 {:>7.2} us  mean {mean:>7.2} us  ({} calls)",
        at(0.50),
        at(0.99),
        at(0.999),
        samples.len()
    );
}

fn main() {
    let policies = policies();
    // No policy here reads scan results, so an empty index changes nothing.
    let scans = ScanIndex::default();
    let raw = deployment();
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

    let object = Object::parse(Kind::Deployment, &raw).unwrap();
    let labels = object.metadata().labels.clone();
    let target = Target {
        cluster: "prod-eu-1",
        namespace: "shop",
        kind: Kind::Deployment,
        name: "web",
        labels: &labels,
    };

    for _ in 0..2_000 {
        black_box(engine::evaluate(
            black_box(&input),
            "prod-eu-1",
            &policies,
            &scans,
        ));
    }
    let iterations = iterations();
    let mut whole = Vec::with_capacity(iterations);
    let mut decide = Vec::with_capacity(iterations);
    let mut parse = Vec::with_capacity(iterations);
    for _ in 0..iterations {
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
    }
    report("evaluate (parse + decide)", whole);
    report("parse the Deployment", parse);
    report("decide (50 policies, parsed object)", decide);
}
