//! `portcullis.v1.ClusterService`: cluster registration (the agent token is returned once and
//! stored hashed), protection settings, and the fleet view (with each cluster's open audit
//! violations). Deleting a cluster deletes its audit violations; its events stay, a record of
//! what was admitted, until their retention.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use portcullis_proto::v1::{
    Cluster, DeleteClusterRequest, DeleteClusterResponse, GetClusterRequest, ListClustersRequest,
    ListClustersResponse, ProtectionSettings, RegisterClusterRequest, RegisterClusterResponse,
    SetProtectionRequest, cluster_service_server::ClusterService,
};
use portcullis_proto::words::FailurePolicy;

use super::{check_name, paging};
use crate::{
    audit::ViolationStore,
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
    audit: Arc<ViolationStore>,
}

impl ClusterApi {
    pub fn new(
        store: Arc<Store>,
        auth: Arc<Authenticator>,
        fleet: Fleet,
        audit: Arc<ViolationStore>,
    ) -> Self {
        Self {
            store,
            auth,
            fleet,
            audit,
        }
    }

    /// The cluster with its agent's status filled in (the fleet view).
    fn with_status(&self, mut cluster: Cluster) -> Cluster {
        let mut status =
            self.fleet
                .status(&cluster.name, self.store.epoch(), self.store.revision());
        status.open_violations = self.audit.open_in(&cluster.name);
        cluster.status = Some(status);
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
            failure_policy: FailurePolicy::Ignore.as_str().into(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
        });
    };
    let policy = match settings.failure_policy.to_ascii_lowercase().as_str() {
        "" => FailurePolicy::Ignore,
        word => word
            .parse::<FailurePolicy>()
            .map_err(|e| Status::invalid_argument(format!("{field}.failurePolicy: {e}")))?,
    };
    settings.failure_policy = policy.as_str().into();
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

/// The bounds every stored cluster field has (`limits::cluster`), so a fleet listing is bounded
/// per cluster.
fn check_cluster_fields(
    description: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Result<(), Status> {
    use portcullis_proto::limits::cluster::{
        MAX_DESCRIPTION, MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS,
    };
    let invalid = |what: String| Err(Status::invalid_argument(what));
    if description.len() > MAX_DESCRIPTION {
        return invalid(format!(
            "description: {} bytes; at most {MAX_DESCRIPTION}",
            description.len()
        ));
    }
    if labels.len() > MAX_LABELS {
        return invalid(format!(
            "labels: {} entries; at most {MAX_LABELS}",
            labels.len()
        ));
    }
    let mut keys: Vec<&String> = labels.keys().collect();
    keys.sort();
    for key in keys {
        if key.is_empty() || key.len() > MAX_LABEL_KEY {
            return invalid(format!(
                "labels[{key:?}]: a key of 1 to {MAX_LABEL_KEY} bytes is required"
            ));
        }
        if labels[key].len() > MAX_LABEL_VALUE {
            return invalid(format!(
                "labels[{key:?}]: the value is {} bytes; at most {MAX_LABEL_VALUE}",
                labels[key].len()
            ));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn register_cluster(
        &self,
        request: Request<RegisterClusterRequest>,
    ) -> Result<Response<RegisterClusterResponse>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
        let request = request.into_inner();
        check_name("name", &request.name)?;
        check_cluster_fields(&request.description, &request.labels)?;
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
        self.auth.operator(request.metadata(), Access::Read).await?;
        let name = request.into_inner().name;
        check_name("name", &name)?;
        self.store
            .get_cluster(&name)
            .await?
            .map(|cluster| Response::new(self.with_status(cluster)))
            .ok_or_else(|| Status::not_found(format!("cluster {name:?} not found")))
    }

    async fn list_clusters(
        &self,
        request: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let request = request.into_inner();
        let after = paging::decode(LISTING, &request.page_token)?;
        let page = self
            .store
            .list_clusters(after.as_deref(), paging::page_size(request.page_size))
            .await?;
        let mut clusters: Vec<Cluster> = page
            .items
            .into_iter()
            .map(|c| self.with_status(c))
            .collect();
        let cut = paging::within_budget(&mut clusters);
        let next_page_token = match (page.more || cut, clusters.last()) {
            (true, Some(last)) => paging::encode(LISTING, &last.name),
            _ => String::new(),
        };
        Ok(Response::new(ListClustersResponse {
            clusters,
            next_page_token,
        }))
    }

    async fn delete_cluster(
        &self,
        request: Request<DeleteClusterRequest>,
    ) -> Result<Response<DeleteClusterResponse>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
        let name = request.into_inner().name;
        check_name("name", &name)?;
        let revision = self.store.delete_cluster(&name).await?;
        self.fleet.remove(&name);
        // The cluster is gone either way: what is left is removed when the store next opens.
        if let Err(error) = self.audit.delete_cluster(&name).await {
            warn!(cluster = %name, %error, "Deleting the cluster's audit violations failed");
        }
        info!(cluster = %name, revision, operator = %operator.name, "Cluster deleted, agent token revoked");
        Ok(Response::new(DeleteClusterResponse { revision }))
    }

    async fn set_protection(
        &self,
        request: Request<SetProtectionRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
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
    use crate::auth::Role;
    use portcullis_proto::limits::{self, cluster::*};
    use portcullis_proto::v1::ReportStatusRequest;
    use prost::Message;

    const TOKEN: &str = "an-admin-token-for-tests";

    fn authorized<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        let value = format!("Bearer {TOKEN}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
        request
    }

    async fn api() -> (ClusterApi, tempfile::TempDir) {
        let (store, dir) = crate::store::test_support::temp_store();
        let store = Arc::new(store);
        let mut auth = Authenticator::new(store.clone());
        auth.add_operator("t", Role::Admin, TOKEN);
        let audit = ViolationStore::open(store.clone(), Default::default())
            .await
            .unwrap();
        (
            ClusterApi::new(store, Arc::new(auth), Fleet::default(), Arc::new(audit)),
            dir,
        )
    }

    /// Labels at their limits: `MAX_LABELS` keys of `MAX_LABEL_KEY` bytes, values of
    /// `MAX_LABEL_VALUE`.
    fn max_labels(seed: usize) -> std::collections::HashMap<String, String> {
        (0..MAX_LABELS)
            .map(|i| {
                let key = format!("{seed}-{i}-");
                let key = key.clone() + &"k".repeat(MAX_LABEL_KEY - key.len());
                (key, "v".repeat(MAX_LABEL_VALUE))
            })
            .collect()
    }

    /// 5,000 clusters with every field at its maximum (and agents reporting errors far over
    /// theirs): every page of the fleet view stays under the message limit clients decode,
    /// and paging lists every cluster once.
    #[tokio::test]
    async fn the_fleet_view_pages_within_the_message_limit() {
        let (api, _dir) = api().await;
        let count = 5_000;
        for i in 0..count {
            let name = format!("c{i:04}-{}", "x".repeat(57));
            api.register_cluster(authorized(RegisterClusterRequest {
                name: name.clone(),
                description: "d".repeat(MAX_DESCRIPTION),
                labels: max_labels(i),
                protection: None,
            }))
            .await
            .unwrap();
            api.fleet.report(
                &name,
                &ReportStatusRequest {
                    cluster: name.clone(),
                    agent_version: "v".repeat(1 << 20),
                    applied_epoch: "e".repeat(1 << 20),
                    failed_revision: u64::MAX,
                    error: "é".repeat(2 << 20),
                    protection_state: "p".repeat(1 << 20),
                    ..Default::default()
                },
            );
        }
        let mut token = String::new();
        let mut listed = std::collections::BTreeSet::new();
        let mut pages = 0;
        loop {
            let page = api
                .list_clusters(authorized(ListClustersRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                }))
                .await
                .unwrap()
                .into_inner();
            assert!(page.encoded_len() <= limits::MAX_MESSAGE_BYTES);
            pages += 1;
            let status = page.clusters[0].status.clone().unwrap();
            assert!(status.last_error.len() <= MAX_ERROR);
            assert!(status.agent_version.len() <= MAX_STATUS_FIELD);
            for cluster in page.clusters {
                assert!(listed.insert(cluster.name), "listed twice");
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(listed.len(), count);
        assert!(pages > count / 1000, "{pages} pages");
    }

    #[tokio::test]
    async fn the_fleet_view_counts_open_violations_until_the_cluster_is_deleted() {
        use crate::audit::validate_report;
        use portcullis_proto::v1::{ReportViolationsRequest, Violation};

        let (api, _dir) = api().await;
        let register = RegisterClusterRequest {
            name: "c1".into(),
            ..Default::default()
        };
        api.register_cluster(authorized(register)).await.unwrap();
        let violation = |name: &str, state: &str| Violation {
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: name.into(),
            policy: "p".into(),
            action: "block".into(),
            severity: "high".into(),
            state: state.into(),
            ..Default::default()
        };
        let report = |violations, resync| {
            let request = ReportViolationsRequest {
                cluster: "c1".into(),
                run: "0190f3a0-1c2d-7e4f-8a5b-6c7d8e9f0a1b".into(),
                resync_start: resync,
                resync_end: resync,
                violations,
            };
            validate_report("c1", request).unwrap()
        };
        let open = || async {
            let get = GetClusterRequest { name: "c1".into() };
            let got = api.get_cluster(authorized(get)).await.unwrap().into_inner();
            let listed = api
                .list_clusters(authorized(ListClustersRequest::default()))
                .await
                .unwrap()
                .into_inner();
            let listed = listed.clusters[0].status.clone().unwrap().open_violations;
            assert_eq!(got.status.unwrap().open_violations, listed);
            listed
        };
        assert_eq!(open().await, 0);
        let both = vec![violation("a", "open"), violation("b", "open")];
        api.audit.report(report(both, true)).await.unwrap();
        assert_eq!(open().await, 2);
        let resolved = vec![violation("a", "resolved")];
        api.audit.report(report(resolved, false)).await.unwrap();
        assert_eq!(open().await, 1);
        // A resync that reports nothing resolves the rest.
        api.audit.report(report(vec![], true)).await.unwrap();
        assert_eq!(open().await, 0);
        api.audit
            .report(report(vec![violation("c", "open")], false))
            .await
            .unwrap();
        assert_eq!(open().await, 1);
        let delete = DeleteClusterRequest { name: "c1".into() };
        api.delete_cluster(authorized(delete)).await.unwrap();
        assert_eq!(api.audit.open_in("c1"), 0);
        let all = api.audit.list(&Default::default(), 10, None).await.unwrap();
        assert!(all.violations.is_empty());
    }

    #[tokio::test]
    async fn cluster_fields_past_their_limits_are_refused_with_the_field() {
        let (api, _dir) = api().await;
        let register = |description: String, labels| {
            api.register_cluster(authorized(RegisterClusterRequest {
                name: "c".into(),
                description,
                labels,
                protection: None,
            }))
        };
        let error = register("d".repeat(MAX_DESCRIPTION + 1), Default::default())
            .await
            .unwrap_err();
        assert!(
            error.message().starts_with("description: 1025 bytes"),
            "{}",
            error.message()
        );
        let mut labels = max_labels(0);
        labels.insert("one-more".into(), "v".into());
        let error = register(String::new(), labels).await.unwrap_err();
        assert!(
            error.message().starts_with("labels: 65 entries"),
            "{}",
            error.message()
        );
        let labels = [("k".to_owned(), "v".repeat(MAX_LABEL_VALUE + 1))].into();
        let error = register(String::new(), labels).await.unwrap_err();
        assert!(
            error.message().starts_with(r#"labels["k"]: the value"#),
            "{}",
            error.message()
        );
        let labels = [("k".repeat(MAX_LABEL_KEY + 1), "v".into())].into();
        assert!(register(String::new(), labels).await.is_err());
    }

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
