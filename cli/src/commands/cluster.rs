//! `portcullis cluster …`: register, get, list (the fleet view), delete, protect.

use anyhow::Result;

use portcullis_proto::v1::{
    Cluster, DeleteClusterRequest, GetClusterRequest, ListClustersRequest, ProtectionSettings,
    RegisterClusterRequest, SetProtectionRequest,
};

use super::{collect_pages, rpc};
use crate::{
    args::{ClusterCommand, Connection, Output},
    client,
    output::{self, Table},
};

pub async fn run(command: ClusterCommand, connection: &Connection) -> Result<()> {
    let mut clients = client::connect(connection).await?;
    match command {
        ClusterCommand::Register {
            name,
            description,
            labels,
            disabled,
            failure_policy,
            timeout,
            output,
        } => {
            let request = RegisterClusterRequest {
                name,
                description,
                labels: labels.into_iter().collect(),
                protection: Some(ProtectionSettings {
                    enabled: !disabled,
                    failure_policy: failure_policy
                        .map(|f| f.as_str().to_owned())
                        .unwrap_or_default(),
                    timeout_seconds: timeout.unwrap_or(0),
                }),
            };
            let response = rpc(clients.clusters.register_cluster(request).await)?;
            let cluster = response.cluster.clone().unwrap_or_default();
            let table = || cluster_table(std::slice::from_ref(&cluster));
            if output != Output::Table {
                return output::print(output, &response, table);
            }
            print!("{}", table().render());
            println!(
                "\nAgent token for cluster {:?} (shown only now; store it as a Secret):",
                cluster.name
            );
            println!("{}", response.agent_token);
            Ok(())
        }
        ClusterCommand::Get { name, output } => {
            let cluster = rpc(clients
                .clusters
                .get_cluster(GetClusterRequest { name })
                .await)?;
            output::print(output, &cluster, || {
                cluster_table(std::slice::from_ref(&cluster))
            })
        }
        ClusterCommand::List { output } => {
            let clusters = collect_pages(0, |page_size, page_token| {
                let mut client = clients.clusters.clone();
                async move {
                    let request = ListClustersRequest {
                        page_size,
                        page_token,
                    };
                    let page = rpc(client.list_clusters(request).await)?;
                    Ok((page.clusters, page.next_page_token))
                }
            })
            .await?;
            output::print(output, &clusters, || cluster_table(&clusters))
        }
        ClusterCommand::Delete { name } => {
            let response = rpc(clients
                .clusters
                .delete_cluster(DeleteClusterRequest { name: name.clone() })
                .await)?;
            println!(
                "cluster {name:?} deleted at revision {}; its agent token is revoked",
                response.revision
            );
            Ok(())
        }
        ClusterCommand::Protect {
            name,
            enable,
            disable,
            failure_policy,
            timeout,
            output,
        } => {
            let current = rpc(clients
                .clusters
                .get_cluster(GetClusterRequest { name: name.clone() })
                .await)?;
            let mut protection = current.protection.unwrap_or_default();
            if enable {
                protection.enabled = true;
            }
            if disable {
                protection.enabled = false;
            }
            if let Some(policy) = failure_policy {
                protection.failure_policy = policy.as_str().to_owned();
            }
            if let Some(timeout) = timeout {
                protection.timeout_seconds = timeout;
            }
            let request = SetProtectionRequest {
                name,
                protection: Some(protection),
            };
            let cluster = rpc(clients.clusters.set_protection(request).await)?;
            output::print(output, &cluster, || {
                cluster_table(std::slice::from_ref(&cluster))
            })
        }
    }
}

fn cluster_table(clusters: &[Cluster]) -> Table {
    let mut table = Table::new(vec![
        "NAME",
        "PROTECTION",
        "FAILURE-POLICY",
        "TIMEOUT",
        "CONNECTED",
        "LAST-SEEN",
        "APPLIED",
        "LAG",
        "STATE",
        "VIOLATIONS",
    ]);
    for cluster in clusters {
        let protection = cluster.protection.clone().unwrap_or_default();
        let status = cluster.status.clone().unwrap_or_default();
        table.row(vec![
            cluster.name.clone(),
            if protection.enabled {
                "enabled"
            } else {
                "disabled"
            }
            .into(),
            protection.failure_policy,
            format!("{}s", protection.timeout_seconds),
            if status.connected { "yes" } else { "no" }.into(),
            output::time(status.last_seen.as_ref()),
            if status.applied_revision == 0 {
                "-".into()
            } else {
                status.applied_revision.to_string()
            },
            status.lag.to_string(),
            if status.protection_state.is_empty() {
                "-".into()
            } else {
                status.protection_state
            },
            status.open_violations.to_string(),
        ]);
    }
    table
}
