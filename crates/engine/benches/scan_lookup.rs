//! Benchmark (not a test): the verdict lookup an agent makes per container image, in an index
//! of 100,000 scanned images of 50 vulnerabilities each. Prints single-call percentiles (each
//! timed alone, so they include the clock's own ~20 ns) for a lookup by tag (short Docker Hub
//! name, normalised on the fly), by digest, and a miss; and the image-rule check of one image
//! against a `severity: high` policy. Run: `cargo bench -p portcullis-engine --bench scan_lookup`.

use std::{hint::black_box, time::Instant};

use portcullis_engine::{self as engine, ScanIndex};
use portcullis_policy::{
    Policy, Severity, parse_policy_documents,
    scan::{ImageIdentity, ScanSummary, SeverityCounts},
};

const IMAGES: usize = 100_000;
const VULNERABILITIES: usize = 50;
const ID_POOL: usize = 20_000;
const ITERATIONS: usize = 200_000;

fn digest(i: usize) -> String {
    format!("sha256:{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15)
}

fn index() -> ScanIndex {
    let severities = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Unknown,
    ];
    let mut index = ScanIndex::default();
    for i in 0..IMAGES {
        let ids: Vec<(String, Severity, bool)> = (0..VULNERABILITIES)
            .map(|v| {
                let id = (i * 131 + v * 7919).wrapping_mul(2_654_435_761) % ID_POOL;
                (
                    format!("CVE-{}-{id:05}", 2015 + id % 10),
                    severities[id % 5],
                    v % 3 != 0,
                )
            })
            .collect();
        let summary = ScanSummary::new(
            ids.iter().map(|v| v.1).collect::<SeverityCounts>(),
            ids.iter().map(|(id, s, f)| (id.as_str(), *s, *f)),
            [],
            [],
        );
        let repository = if i == 0 {
            "docker.io/library/nginx".to_owned()
        } else {
            format!("registry.example.com/team-{}/app-{i}", i % 100)
        };
        let image = ImageIdentity {
            repository,
            tags: vec!["1.0".into()],
            digests: vec![digest(i)],
            image_id: None,
        };
        index.insert_summary(&image, summary);
    }
    index
}

fn report(name: &str, mut samples: Vec<u128>) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    println!(
        "{name:<44} p50 {:>5} ns  p99 {:>5} ns  p99.9 {:>6} ns",
        at(0.50),
        at(0.99),
        at(0.999)
    );
}

fn time(mut f: impl FnMut(usize)) -> Vec<u128> {
    (0..ITERATIONS)
        .map(|i| {
            let start = Instant::now();
            f(i);
            start.elapsed().as_nanos()
        })
        .collect()
}

fn main() {
    let started = Instant::now();
    let index = index();
    let heap: usize = index.scans().map(|s| s.summary.heap_size()).sum();
    println!(
        "index of {IMAGES} images x {VULNERABILITIES} vulnerabilities built in {:?}; summaries hold {:.1} MiB of heap",
        started.elapsed(),
        heap as f64 / 1048576.0
    );
    let tagged: Vec<String> = (1..=1000)
        .map(|i| format!("registry.example.com/team-{}/app-{i}:1.0", i % 100))
        .collect();
    let pinned: Vec<String> = (1..=1000)
        .map(|i| {
            format!(
                "registry.example.com/team-{}/app-{i}@{}",
                i % 100,
                digest(i)
            )
        })
        .collect();
    report(
        "nothing (the clock's own cost)",
        time(|i| {
            black_box(i);
        }),
    );
    report(
        "lookup by tag (registry.example.com/...:1.0)",
        time(|i| {
            black_box(index.lookup(black_box(&tagged[i % 1000])));
        }),
    );
    report(
        "lookup by Docker Hub short name (nginx:1.0)",
        time(|_| {
            black_box(index.lookup(black_box("nginx:1.0")));
        }),
    );
    report(
        "lookup by digest",
        time(|i| {
            black_box(index.lookup(black_box(&pinned[i % 1000])));
        }),
    );
    report(
        "lookup miss",
        time(|_| {
            black_box(index.lookup(black_box("registry.example.com/none/x:9")));
        }),
    );
    let policy: Vec<Policy> = parse_policy_documents(
        "name: high\nrules: {image: {vulnerabilities: {severity: high, fixableOnly: true}}}\n",
    )
    .unwrap()
    .iter()
    .map(|p| Policy::try_from(p).unwrap())
    .collect();
    report(
        "image verdict (lookup + severity: high rule)",
        time(|i| {
            black_box(engine::image_verdict(
                black_box(&tagged[i % 1000]),
                "c1",
                &policy,
                &index,
            ));
        }),
    );
    // Mean per call over batches of 1,000, without the clock in each call.
    let batches: Vec<u128> = (0..200)
        .map(|b| {
            let start = Instant::now();
            for i in 0..1000 {
                black_box(index.lookup(black_box(&tagged[(b * 7 + i) % 1000])));
            }
            start.elapsed().as_nanos() / 1000
        })
        .collect();
    report("lookup by tag, mean of 1,000 calls", batches);
}
