//! The Grafana dashboard the control-plane chart ships (`helm/portcullis-control-plane/
//! dashboards/portcullis.json`) queries only metrics that the running binaries export: a metric
//! renamed in the code, or misspelt in the dashboard, fails here rather than as an empty panel.

use std::{collections::BTreeSet, path::Path};

use portcullis_testkit::{Agent, ControlPlane, http_get};
use serde_json::Value;

/// Every `portcullis_…` metric name in the `expr` of every panel target, however nested.
fn queried(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(expr)) = map.get("expr") {
                let bytes = expr.as_bytes();
                let mut at = 0;
                while let Some(found) = expr[at..].find("portcullis_") {
                    let start = at + found;
                    let end = start
                        + bytes[start..]
                            .iter()
                            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                            .count();
                    names.insert(expr[start..end].to_owned());
                    at = end;
                }
            }
            map.values().for_each(|v| queried(v, names));
        }
        Value::Array(items) => items.iter().for_each(|v| queried(v, names)),
        _ => {}
    }
}

/// The metric names a `/metrics` page has samples of.
fn exported(port: u16) -> BTreeSet<String> {
    let (status, body) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../helm/portcullis-control-plane/dashboards/portcullis.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(dashboard["uid"], "portcullis");
    let mut names = BTreeSet::new();
    queried(&dashboard, &mut names);
    assert!(names.len() >= 10, "the dashboard queries {names:?}");

    let cp = ControlPlane::start();
    let token = cp.register("c1");
    let agent = Agent::start(&cp, "c1", &token);
    let mut have = exported(cp.admin_port);
    have.extend(exported(agent.admin_port));
    let missing: Vec<&String> = names.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which neither binary exports; they export {have:?}"
    );
}
