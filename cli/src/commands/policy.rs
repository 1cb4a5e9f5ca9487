//! `portcullis policy …`: apply files, get, list, delete.

use anyhow::Result;

use portcullis_proto::v1::{
    ApplyPoliciesRequest, DeletePolicyRequest, GetPolicyRequest, ListPoliciesRequest, Policy,
};

use super::{collect_pages, rpc};
use crate::files::read_policy_files;
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
            let policies = collect_pages(0, |page_size, page_token| {
                let mut client = clients.policies.clone();
                async move {
                    let request = ListPoliciesRequest {
                        page_size,
                        page_token,
                    };
                    let page = rpc(client.list_policies(request).await)?;
                    Ok((page.policies, page.next_page_token))
                }
            })
            .await?;
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
