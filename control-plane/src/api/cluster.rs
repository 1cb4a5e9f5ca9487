//! `portcullis.v1.ClusterService`: cluster registration (the agent token is returned once and
//! stored hashed), protection settings, and the fleet view.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::info;

use portcullis_proto::v1::{
    Cluster, DeleteClusterRequest, DeleteClusterResponse, GetClusterRequest, ListClustersRequest,
    ListClustersResponse, ProtectionSettings, RegisterClusterRequest, RegisterClusterResponse,
    SetProtectionRequest, cluster_service_server::ClusterService,
};

use super::{check_name, paging};
use crate::{
    auth::{Access, Authenticator, generate_token, token_sha256},
    fleet::Fleet,
    store::Store,
};

const LISTING: &str = "ListClusters";
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10;

pub struct ClusterApi {
    store: Arc<Store>,
    auth: Arc<Authenticator>,
    fleet: Fleet,
}

impl ClusterApi {
    pub fn new(store: Arc<Store>, auth: Arc<Authenticator>, fleet: Fleet) -> Self {
        Self { store, auth, fleet }
    }

    /// The cluster with its agent's status filled in (the fleet view).
    fn with_status(&self, mut cluster: Cluster) -> Cluster {
        cluster.status = Some(self.fleet.status(
            &cluster.name,
            self.store.epoch(),
            self.store.revision(),
        ));
        cluster
    }
}

/// Fills defaults and checks ranges: failure policy ignore|fail, timeout 1..=30 seconds.
fn protection_settings(
    given: Option<ProtectionSettings>,
    field: &str,
) -> Result<ProtectionSettings, Status> {
    let Some(mut settings) = given else {
        return Ok(ProtectionSettings {
            enabled: true,
            failure_policy: "ignore".into(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
        });
    };
    settings.failure_policy = match settings.failure_policy.to_ascii_lowercase().as_str() {
        "" | "ignore" => "ignore".into(),
        "fail" => "fail".into(),
        other => {
            return Err(Status::invalid_argument(format!(
                "{field}.failurePolicy: unknown failure policy {other:?}: expected ignore or fail"
            )));
        }
    };
    settings.timeout_seconds = match settings.timeout_seconds {
        0 => DEFAULT_TIMEOUT_SECONDS,
        t @ 1..=30 => t,
        t => {
            return Err(Status::invalid_argument(format!(
                "{field}.timeoutSeconds: {t} is out of range: Kubernetes allows 1 to 30"
            )));
        }
    };
    Ok(settings)
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn register_cluster(
        &self,
        request: Request<RegisterClusterRequest>,
    ) -> Result<Response<RegisterClusterResponse>, Status> {
        let operator = self.auth.operator(request.metadata(), Access::Write)?;
        let request = request.into_inner();
        check_name("name", &request.name)?;
        let protection = protection_settings(request.protection, "protection")?;
        let token = generate_token("pcl_");
        let cluster = Cluster {
            name: request.name,
            description: request.description,
            labels: request.labels,
            protection: Some(protection),
            ..Default::default()
        };
        let cluster = self
            .store
            .register_cluster(cluster, token_sha256(&token))
            .await?;
        info!(cluster = %cluster.name, revision = cluster.revision, operator = %operator.name, "Cluster registered");
        Ok(Response::new(RegisterClusterResponse {
            cluster: Some(cluster),
            agent_token: token,
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        self.auth.operator(request.metadata(), Access::Read)?;
        let name = request.into_inner().name;
        check_name("name", &name)?;
        self.store
            .get_cluster(&name)?
            .map(|cluster| Response::new(self.with_status(cluster)))
            .ok_or_else(|| Status::not_found(format!("cluster {name:?} not found")))
    }

    async fn list_clusters(
        &self,
        request: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        self.auth.operator(request.metadata(), Access::Read)?;
        let request = request.into_inner();
        let after = paging::decode(LISTING, &request.page_token)?;
        let page = self
            .store
            .list_clusters(after.as_deref(), paging::page_size(request.page_size))?;
        let next_page_token = match (page.more, page.items.last()) {
            (true, Some(last)) => paging::encode(LISTING, &last.name),
            _ => String::new(),
        };
        let clusters = page
            .items
            .into_iter()
            .map(|c| self.with_status(c))
            .collect();
        Ok(Response::new(ListClustersResponse {
            clusters,
            next_page_token,
        }))
    }

    async fn delete_cluster(
        &self,
        request: Request<DeleteClusterRequest>,
    ) -> Result<Response<DeleteClusterResponse>, Status> {
        let operator = self.auth.operator(request.metadata(), Access::Write)?;
        let name = request.into_inner().name;
        check_name("name", &name)?;
        let revision = self.store.delete_cluster(&name).await?;
        self.fleet.remove(&name);
        info!(cluster = %name, revision, operator = %operator.name, "Cluster deleted, agent token revoked");
        Ok(Response::new(DeleteClusterResponse { revision }))
    }

    async fn set_protection(
        &self,
        request: Request<SetProtectionRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let operator = self.auth.operator(request.metadata(), Access::Write)?;
        let request = request.into_inner();
        check_name("name", &request.name)?;
        let Some(given) = request.protection else {
            return Err(Status::invalid_argument("protection: required"));
        };
        let protection = protection_settings(Some(given), "protection")?;
        let cluster = self.with_status(self.store.set_protection(&request.name, protection).await?);
        info!(cluster = %cluster.name, revision = cluster.revision, operator = %operator.name, "Protection settings changed");
        Ok(Response::new(cluster))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protection_defaults_and_ranges() {
        let default = protection_settings(None, "p").unwrap();
        assert_eq!(
            (
                default.enabled,
                default.failure_policy.as_str(),
                default.timeout_seconds
            ),
            (true, "ignore", 10)
        );
        let given = ProtectionSettings {
            enabled: false,
            failure_policy: "Fail".into(),
            timeout_seconds: 0,
        };
        let settings = protection_settings(Some(given), "p").unwrap();
        assert_eq!(
            (settings.failure_policy.as_str(), settings.timeout_seconds),
            ("fail", 10)
        );
        let bad = ProtectionSettings {
            failure_policy: "open".into(),
            ..Default::default()
        };
        assert!(
            protection_settings(Some(bad), "p")
                .unwrap_err()
                .message()
                .contains("p.failurePolicy")
        );
        let bad = ProtectionSettings {
            timeout_seconds: 31,
            ..Default::default()
        };
        assert!(
            protection_settings(Some(bad), "p")
                .unwrap_err()
                .message()
                .contains("p.timeoutSeconds")
        );
    }
}
