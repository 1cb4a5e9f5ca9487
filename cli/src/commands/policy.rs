//! `portcullis policy …`: apply files, get, list, delete.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use portcullis_proto::v1::{
    ApplyPoliciesRequest, DeletePolicyRequest, GetPolicyRequest, ListPoliciesRequest, Policy,
};

use super::rpc;
use crate::{
    args::{Connection, PolicyCommand},
    client,
    output::{self, Table},
};

pub async fn run(command: PolicyCommand, connection: &Connection) -> Result<()> {
    // Parse every file before connecting: a bad file is reported even with no server.
    let parsed = match &command {
        PolicyCommand::Apply { files, .. } => read_policy_files(files)?,
        _ => Vec::new(),
    };
    let mut clients = client::connect(connection).await?;
    match command {
        PolicyCommand::Apply {
            files: _,
            dry_run,
            output,
        } => {
            let request = ApplyPoliciesRequest {
                policies: parsed,
                validate_only: dry_run,
            };
            let response = rpc(clients.policies.apply_policies(request).await)?;
            output::print(output, &response, || {
                let mut table = Table::new(vec!["NAME", "OUTCOME", "REVISION"]);
                for result in &response.results {
                    let policy = result.policy.clone().unwrap_or_default();
                    table.row(vec![
                        policy.name,
                        result.outcome.clone(),
                        revision(policy.revision),
                    ]);
                }
                table
            })
        }
        PolicyCommand::Get { name, output } => {
            let policy = rpc(clients.policies.get_policy(GetPolicyRequest { name }).await)?;
            output::print(output, &policy, || {
                policy_table(std::slice::from_ref(&policy))
            })
        }
        PolicyCommand::List { output } => {
            let mut policies = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = ListPoliciesRequest {
                    page_size: 1000,
                    page_token,
                };
                let page = rpc(clients.policies.list_policies(request).await)?;
                policies.extend(page.policies);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            output::print(output, &policies, || policy_table(&policies))
        }
        PolicyCommand::Delete { name, revision } => {
            let request = DeletePolicyRequest {
                name: name.clone(),
                revision: revision.unwrap_or(0),
            };
            let response = rpc(clients.policies.delete_policy(request).await)?;
            println!("policy {name:?} deleted at revision {}", response.revision);
            Ok(())
        }
    }
}

fn revision(revision: u64) -> String {
    if revision == 0 {
        "-".into()
    } else {
        revision.to_string()
    }
}

fn policy_table(policies: &[Policy]) -> Table {
    let mut table = Table::new(vec![
        "NAME", "ACTION", "ENABLED", "RULES", "CLUSTERS", "REVISION", "UPDATED",
    ]);
    for policy in policies {
        let rules = policy.rules.as_ref();
        let kinds: Vec<&str> = [
            rules.and_then(|r| r.image.as_ref()).map(|_| "image"),
            rules.and_then(|r| r.resource.as_ref()).map(|_| "resource"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let clusters = policy
            .scope
            .as_ref()
            .map(|s| s.clusters.join(","))
            .unwrap_or_default();
        table.row(vec![
            policy.name.clone(),
            policy.action.clone(),
            policy.enabled.unwrap_or(true).to_string(),
            kinds.join("+"),
            if clusters.is_empty() {
                "*".into()
            } else {
                clusters
            },
            revision(policy.revision),
            output::time(policy.update_time.as_ref()),
        ]);
    }
    table
}

/// Reads and parses every policy document of the given files and directories, so nothing is
/// sent unless all of them parse. Errors name the file, document, line and column.
pub fn read_policy_files(paths: &[PathBuf]) -> Result<Vec<Policy>> {
    let mut policies = Vec::new();
    for path in expand(paths)? {
        let (shown, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            ("<stdin>".to_owned(), text)
        } else {
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            (path.display().to_string(), text)
        };
        let parsed = portcullis_policy::parse_policy_documents(&text)
            .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        policies.extend(parsed);
    }
    if policies.is_empty() {
        bail!("no policies found in {}", show_paths(paths));
    }
    Ok(policies)
}

/// Files as given, and the policy files of directories (sorted).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| is_policy_file(p))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn is_policy_file(path: &Path) -> bool {
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
    fn directories_expand_to_sorted_policy_files() {
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
    fn parse_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        fs::write(&path, "name: [unclosed\n").unwrap();
        let err = read_policy_files(&[path]).unwrap_err().to_string();
        assert!(err.contains("bad.yaml") && err.contains("line"), "{err}");
    }
}
