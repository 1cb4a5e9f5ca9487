//! Reading input files: YAML/JSON files, directories of them (sorted), or `-` for standard
//! input; and parsing them as policies or as Kubernetes manifests. Errors name the file, the
//! document, the line and the column. Also scan reports, into the index image rules read.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};

use portcullis_engine::ScanIndex;
use portcullis_policy::MAX_FLOW_DEPTH;
use portcullis_proto::v1::Policy;
use portcullis_scan::{DEFAULT_MAX_REPORT_BYTES, ReportFormat, ScanError};

/// Largest policy or manifest file read (and standard input): far above any real one, and
/// a bound on what a pipeline's hostile input can make the CLI hold.
pub const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// The bytes of `path` (`-` is standard input), at most `limit`. Only regular files are read
/// by name: a device or a pipe (`/dev/zero`) has no end to wait for; give it as `-`.
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let shown = if path.as_os_str() == "-" {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    };
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {what} from standard input"))?;
    } else {
        let file = fs::File::open(path).with_context(|| format!("reading {what} {shown}"))?;
        let metadata = file
            .metadata()
            .with_context(|| format!("reading {what} {shown}"))?;
        if !metadata.is_file() {
            bail!(
                "{what} {shown}: not a regular file; to read a stream, give it as - (standard input)"
            );
        }
        if metadata.len() > limit {
            bail!(
                "{what} {shown}: {} bytes; the limit is {limit}",
                metadata.len()
            );
        }
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {what} {shown}"))?;
    }
    if bytes.len() as u64 > limit {
        bail!("{what} {shown}: more than {limit} bytes; the limit is {limit}");
    }
    Ok(bytes)
}

/// One input file: how to show it, and its text.
pub struct Input {
    pub shown: String,
    pub text: String,
}

/// The texts of the given files, of the YAML/JSON files of the given directories (sorted), and
/// of standard input for `-`.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for path in expand(paths)? {
        let shown = if path.as_os_str() == "-" {
            "<stdin>".to_owned()
        } else {
            path.display().to_string()
        };
        let bytes = read_bounded(&path, MAX_INPUT_BYTES, "file")?;
        let text = String::from_utf8(bytes)
            .map_err(|e| anyhow!("{shown}: not UTF-8 text: {}", e.utf8_error()))?;
        inputs.push(Input { shown, text });
    }
    Ok(inputs)
}

/// Reads and parses every policy document, so nothing is used unless all of them parse.
pub fn read_policy_files(paths: &[PathBuf]) -> Result<Vec<Policy>> {
    let mut policies = Vec::new();
    for input in read_inputs(paths)? {
        let parsed = portcullis_policy::parse_policy_documents(&input.text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", input.shown))?;
        policies.extend(parsed);
    }
    if policies.is_empty() {
        bail!("no policies found in {}", show_paths(paths));
    }
    Ok(policies)
}

/// Reads scan reports (`format`, or each detected from its content) into one index, with the
/// default size limit. Each report must name its image: there is no per-file override here.
/// A later report of the same image replaces an earlier one.
pub fn read_scan_reports(paths: &[PathBuf], format: Option<ReportFormat>) -> Result<ScanIndex> {
    let mut index = ScanIndex::default();
    for path in paths {
        let shown = path.display();
        let bytes = read_bounded(path, DEFAULT_MAX_REPORT_BYTES as u64, "scan report")?;
        let Some(format) = format.or_else(|| portcullis_scan::detect_format(&bytes)) else {
            bail!(
                "scan report {shown}: not a report we read (expected {}); set --scan-format",
                ReportFormat::NAMES.join(", ")
            );
        };
        let report = portcullis_scan::parse_report(format, &bytes, None, DEFAULT_MAX_REPORT_BYTES)
            .map_err(|error| match error {
                ScanError::NoImageIdentity { artifact } => anyhow!(
                    "scan report {shown}: no image identity: the report is for {artifact}; \
                     portcullis test reads only reports that name their image (scan the image \
                     by reference, or set the image of a native report)"
                ),
                error => anyhow!("scan report {shown} ({}): {error}", format.name()),
            })?;
        index.insert(&report);
    }
    Ok(index)
}

/// A Kubernetes object from a manifest file.
#[derive(Debug)]
pub struct Manifest {
    /// `file` or `file#2` (the second document).
    pub source: String,
    pub value: serde_json::Value,
}

/// Every object of the manifests: YAML streams (`---`) or JSON; a `kind: List` is expanded into
/// its items; empty documents are skipped.
pub fn read_manifests(paths: &[PathBuf]) -> Result<Vec<Manifest>> {
    let mut manifests = Vec::new();
    for input in read_inputs(paths)? {
        // Refused before the YAML parser, whose work grows with the square of the depth.
        if let Err(e) = portcullis_policy::check_flow_depth(&input.text, MAX_FLOW_DEPTH) {
            let document = portcullis_policy::document_at_line(&input.text, e.line);
            bail!(
                "{}: document {document}, line {}, column {}: nested more than {} levels deep",
                input.shown,
                e.line,
                e.column,
                e.max
            );
        }
        for (index, document) in serde_yaml::Deserializer::from_str(&input.text).enumerate() {
            let value = serde_json::Value::deserialize_yaml(document)
                .map_err(|e| anyhow::anyhow!("{}: document {}: {e}", input.shown, index + 1))?;
            let source = if index == 0 {
                input.shown.clone()
            } else {
                format!("{}#{}", input.shown, index + 1)
            };
            push_objects(&mut manifests, &source, value)?;
        }
    }
    Ok(manifests)
}

fn push_objects(out: &mut Vec<Manifest>, source: &str, value: serde_json::Value) -> Result<()> {
    match value {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::Object(ref map)
            if map
                .get("kind")
                .and_then(|k| k.as_str())
                .is_some_and(|k| k.ends_with("List")) =>
        {
            for item in map
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default()
            {
                push_objects(out, source, item)?;
            }
            Ok(())
        }
        serde_json::Value::Object(_) => {
            out.push(Manifest {
                source: source.to_owned(),
                value,
            });
            Ok(())
        }
        other => bail!("{source}: a manifest must be an object with a kind, not {other}"),
    }
}

/// Conversion from a YAML document to JSON.
trait FromYaml: Sized {
    fn deserialize_yaml(document: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error>;
}

impl FromYaml for serde_json::Value {
    fn deserialize_yaml(document: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error> {
        serde::Deserialize::deserialize(document)
    }
}

/// Files as given, and the YAML/JSON files of directories (sorted).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| is_yaml_or_json(p))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn is_yaml_or_json(path: &Path) -> bool {
    path.is_file()
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

fn show_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_expand_to_sorted_yaml_and_json_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.yaml", "a.json", "notes.txt"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let files = expand(&[dir.path().to_owned()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.json", "b.yaml"]);
    }

    #[test]
    fn policy_parse_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        fs::write(&path, "name: [unclosed\n").unwrap();
        let err = read_policy_files(&[path]).unwrap_err().to_string();
        assert!(err.contains("bad.yaml") && err.contains("line"), "{err}");
    }

    fn scan_fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/scan/tests/scans")
            .join(name)
    }

    #[test]
    fn scan_reports_are_detected_and_indexed_by_image() {
        let report = scan_fixture("trivy/debian-buster.json");
        let index = read_scan_reports(std::slice::from_ref(&report), None).unwrap();
        let image = "ghcr.io/aquasecurity/trivy-test-images:debian-buster";
        let summary = index.lookup(image).expect("indexed by its RepoTags");
        assert!(summary.vulnerability("CVE-2019-18224").is_some());
        assert!(
            index
                .lookup("ghcr.io/aquasecurity/trivy-test-images:alpine-310")
                .is_none()
        );
        let given = read_scan_reports(&[report], Some(ReportFormat::Trivy)).unwrap();
        assert_eq!(given, index);
        assert!(read_scan_reports(&[], None).unwrap().is_empty());
    }

    #[test]
    fn scan_report_errors_name_the_file() {
        let no_image = scan_fixture("trivy/dockerfile.json");
        let err = read_scan_reports(std::slice::from_ref(&no_image), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "scan report {}: no image identity",
                no_image.display()
            )) && err.contains("reads only reports that name their image"),
            "{err}"
        );
        let wrong = read_scan_reports(
            &[scan_fixture("trivy/debian-buster.json")],
            Some(ReportFormat::Grype),
        )
        .unwrap_err()
        .to_string();
        assert!(
            wrong.contains("debian-buster.json (grype): this looks like a Trivy report"),
            "{wrong}"
        );
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.json");
        fs::write(&other, r#"{"hello": "world"}"#).unwrap();
        let err = read_scan_reports(&[other], None).unwrap_err().to_string();
        assert!(
            err.contains("other.json: not a report we read") && err.contains("--scan-format"),
            "{err}"
        );
        let missing = read_scan_reports(&[dir.path().join("missing.json")], None).unwrap_err();
        assert!(
            format!("{missing:#}").contains("missing.json"),
            "{missing:#}"
        );
    }

    #[test]
    fn manifests_split_documents_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        fs::write(
            &path,
            "kind: Pod\nmetadata: {name: a}\n---\n---\nkind: List\nitems:\n- {kind: Service, metadata: {name: b}}\n- {kind: Pod, metadata: {name: c}}\n",
        )
        .unwrap();
        let manifests = read_manifests(&[path]).unwrap();
        let names: Vec<_> = manifests
            .iter()
            .map(|m| m.value["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(
            manifests[1].source.ends_with("m.yaml#3"),
            "{}",
            manifests[1].source
        );
        fs::write(dir.path().join("bad.yaml"), "kind: Pod\n  bad: [\n").unwrap();
        let err = read_manifests(&[dir.path().join("bad.yaml")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("line"), "{err}");
    }
}
