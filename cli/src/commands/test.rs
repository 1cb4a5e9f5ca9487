//! `portcullis test` and `portcullis explain`: the agent's engine, offline, on manifest files,
//! with image rules reading the scan reports given with `--scan`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use portcullis_engine::{self as engine, AdmissionInput, Decision, Operation, Outcome};
use portcullis_policy::Policy;

use crate::{
    args::{Output, TestArgs},
    files::{Manifest, read_manifests, read_policy_files, read_scan_reports},
    output::Table,
};

/// One object and what the engine said about it.
struct Tested {
    manifest: Manifest,
    kind: String,
    namespace: String,
    name: String,
    decision: Decision,
    explained: Vec<(String, String)>,
}

impl Tested {
    fn object(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    fn verdict(&self) -> &'static str {
        match (&self.decision.outcome, self.decision.skipped) {
            (Outcome::Block, _) => "block",
            (Outcome::Alert, _) => "alert",
            (Outcome::Invalid(_), _) => "invalid",
            (Outcome::Allow, Some(_)) => "skipped",
            (Outcome::Allow, None) => "allow",
        }
    }
}

pub fn run(args: TestArgs, explain: bool) -> Result<ExitCode> {
    let verbose = args.verbose || explain;
    let mut policies = Vec::new();
    let mut invalid = Vec::new();
    for proto in read_policy_files(&args.policies)? {
        match Policy::try_from(&proto) {
            Ok(policy) => policies.push(policy),
            Err(error) => invalid.push(format!("policy {:?}: {error}", proto.name)),
        }
    }
    if !invalid.is_empty() {
        bail!("invalid policies:\n  {}", invalid.join("\n  "));
    }
    portcullis_policy::share_rules(&mut policies);
    let scans = read_scan_reports(&args.scans, args.scan_format)?;
    let manifests = read_manifests(&args.manifests)?;
    if manifests.is_empty() {
        bail!("no objects found in the manifests");
    }

    let mut results = Vec::with_capacity(manifests.len());
    for manifest in manifests {
        let text = |field: &str| {
            manifest.value["metadata"][field]
                .as_str()
                .unwrap_or("")
                .to_owned()
        };
        let kind = manifest.value["kind"].as_str().unwrap_or("").to_owned();
        let namespace = Some(text("namespace"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| args.namespace.clone());
        let name = Some(text("name"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| text("generateName"));
        let raw = manifest.value.to_string();
        let input = AdmissionInput {
            operation: Operation::Create,
            kind: &kind,
            sub_resource: "",
            namespace: &namespace,
            name: &name,
            object: Some(&raw),
            old_object: None,
        };
        let decision = engine::evaluate(&input, &args.cluster, &policies, &scans);
        let explained = if verbose {
            engine::explain(&input, &args.cluster, &policies)
        } else {
            Vec::new()
        };
        results.push(Tested {
            manifest,
            kind,
            namespace,
            name,
            decision,
            explained,
        });
    }

    match args.output {
        Output::Table => print!("{}", table(&results, verbose)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&results, verbose))?
        ),
        Output::Yaml => print!("{}", serde_yaml::to_string(&to_json(&results, verbose))?),
    }
    let failed = results
        .iter()
        .any(|r| matches!(r.decision.outcome, Outcome::Block | Outcome::Invalid(_)));
    Ok(if failed && !explain {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn table(results: &[Tested], verbose: bool) -> String {
    let mut table = Table::new(vec!["OBJECT", "DECISION", "FINDINGS"]);
    for result in results {
        let mut lines: Vec<String> = result
            .decision
            .findings
            .iter()
            .map(|f| {
                let value = if f.finding.value.is_empty() {
                    String::new()
                } else {
                    format!(" = {}", f.finding.value)
                };
                format!(
                    "[{}] {} at {}{}: {}",
                    f.policy, f.finding.rule, f.finding.path, value, f.finding.message
                )
            })
            .collect();
        if let Outcome::Invalid(reason) = &result.decision.outcome {
            lines.push(format!("not a valid {}: {reason}", result.kind));
        }
        if let Some(reason) = result.decision.skipped {
            lines.push(reason.to_owned());
        }
        if verbose {
            lines.extend(
                result
                    .explained
                    .iter()
                    .map(|(policy, why)| format!("policy {policy}: {why}")),
            );
        }
        let mut first = true;
        if lines.is_empty() {
            lines.push("-".into());
        }
        for line in lines {
            let (object, verdict) = if first {
                (result.object(), result.verdict().to_owned())
            } else {
                (String::new(), String::new())
            };
            table.row(vec![object, verdict, line]);
            first = false;
        }
    }
    table.render()
}

fn to_json(results: &[Tested], verbose: bool) -> Value {
    Value::Array(
        results
            .iter()
            .map(|r| {
                let mut out = json!({
                    "source": r.manifest.source,
                    "kind": r.kind,
                    "namespace": r.namespace,
                    "name": r.name,
                    "decision": r.verdict(),
                    "findings": r.decision.findings.iter().map(|f| json!({
                        "policy": f.policy,
                        "action": f.action.as_str(),
                        "rule": f.finding.rule,
                        "path": f.finding.path,
                        "value": f.finding.value,
                        "message": f.finding.message,
                    })).collect::<Vec<_>>(),
                });
                if let Outcome::Invalid(reason) = &r.decision.outcome {
                    out["invalid"] = Value::String(reason.clone());
                }
                if let Some(reason) = r.decision.skipped {
                    out["skipped"] = Value::String(reason.into());
                }
                if verbose {
                    out["policies"] = r
                        .explained
                        .iter()
                        .map(|(policy, why)| json!({"policy": policy, "applies": why == "applies", "reason": why}))
                        .collect();
                }
                out
            })
            .collect(),
    )
}
