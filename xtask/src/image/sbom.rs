//! The images' SBOMs (CycloneDX 1.5): the crates compiled into each binary, from
//! `cargo metadata` (normal dependencies only), and the Debian packages of the base layer.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::{REGISTRY, debian::Deb};

pub fn cargo_metadata(root: &Path) -> Result<Value> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The crates compiled into `binary`: its package's normal dependencies, transitively
/// (build scripts and dev-dependencies are not in the binary). (name, version, source).
pub fn crates_of(metadata: &Value, binary: &str) -> Result<Vec<(String, String, String)>> {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .context("cargo metadata packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let start = packages
        .values()
        .find(|p| {
            p["targets"].as_array().is_some_and(|targets| {
                targets.iter().any(|t| {
                    t["name"] == binary
                        && t["kind"]
                            .as_array()
                            .is_some_and(|k| k.iter().any(|k| k == "bin"))
                })
            })
        })
        .and_then(|p| p["id"].as_str())
        .with_context(|| format!("no package builds the binary {binary}"))?;
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata resolve")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()));
            if normal && let Some(pkg) = dep["pkg"].as_str() {
                stack.push(pkg);
            }
        }
    }
    let mut crates: Vec<(String, String, String)> = seen
        .into_iter()
        .filter_map(|id| packages.get(id))
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["version"].as_str().unwrap_or_default().to_owned(),
                p["source"].as_str().unwrap_or("path").to_owned(),
            )
        })
        .collect();
    crates.sort();
    Ok(crates)
}

/// A CycloneDX 1.5 SBOM of the image.
pub fn sbom(
    name: &str,
    version: &str,
    revision: &str,
    created: &str,
    digest: &str,
    crates: &[(String, String, String)],
    debs: &[Deb],
) -> Value {
    let hex = digest.trim_start_matches("sha256:");
    // A serial number derived from the image, so the same image has the same SBOM.
    let serial = format!(
        "urn:uuid:{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    );
    let mut components: Vec<Value> = crates
        .iter()
        .map(|(crate_name, crate_version, source)| {
            let purl = format!("pkg:cargo/{crate_name}@{crate_version}");
            let mut component = json!({
                "type": if source == "path" { "application" } else { "library" },
                "bom-ref": purl,
                "name": crate_name,
                "version": crate_version,
            });
            if source != "path" {
                component["purl"] = purl.into();
            }
            component
        })
        .collect();
    for deb in debs {
        let purl = format!(
            "pkg:deb/debian/{}@{}?arch={}&distro=debian-12",
            deb.package,
            deb.version.replace('+', "%2B").replace(':', "%3A"),
            deb.architecture
        );
        components.push(json!({
            "type": "library",
            "bom-ref": purl,
            "name": deb.package,
            "version": deb.version,
            "purl": purl,
        }));
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial,
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {"components": [{"type": "application", "name": "cargo xtask image", "version": version}]},
            "component": {
                "type": "container",
                "bom-ref": format!("{REGISTRY}/{name}@{digest}"),
                "name": format!("{REGISTRY}/{name}"),
                "version": version,
                "hashes": [{"alg": "SHA-256", "content": hex}],
                "properties": [{"name": "org.opencontainers.image.revision", "value": revision}],
            },
        },
        "components": components,
    })
}
