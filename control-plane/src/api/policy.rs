//! `portcullis.v1.PolicyService`: validated policy CRUD. Every policy is validated by the domain
//! core and stored in its normalised form, so what an operator reads back is what agents enforce.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::info;

use portcullis_proto::v1::{
    AppliedPolicy, ApplyPoliciesRequest, ApplyPoliciesResponse, CreatePolicyRequest,
    DeletePolicyRequest, DeletePolicyResponse, GetPolicyRequest, ListPoliciesRequest,
    ListPoliciesResponse, Policy, UpdatePolicyRequest, policy_service_server::PolicyService,
};

use super::{check_name, paging};
use crate::{
    auth::{Access, Authenticator},
    store::{ApplyOutcome, Store},
};

const LISTING: &str = "ListPolicies";

pub struct PolicyApi {
    store: Arc<Store>,
    auth: Arc<Authenticator>,
}

impl PolicyApi {
    pub fn new(store: Arc<Store>, auth: Arc<Authenticator>) -> Self {
        Self { store, auth }
    }
}

/// Validates a policy and returns its normalised form, keeping the caller's revision (the
/// optimistic-concurrency check) and dropping the other server-set fields.
fn normalise(policy: &Policy, field: &str) -> Result<Policy, Status> {
    let domain = portcullis_policy::Policy::try_from(policy).map_err(|invalid| {
        Status::invalid_argument(format!(
            "{field}: invalid policy {:?}: {invalid}",
            policy.name
        ))
    })?;
    let mut normalised = Policy::from(&domain);
    normalised.revision = policy.revision;
    normalised.create_time = None;
    normalised.update_time = None;
    Ok(normalised)
}

fn required(policy: Option<Policy>) -> Result<Policy, Status> {
    policy.ok_or_else(|| Status::invalid_argument("policy: required"))
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn create_policy(
        &self,
        request: Request<CreatePolicyRequest>,
    ) -> Result<Response<Policy>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
        let request = request.into_inner();
        let mut policy = normalise(&required(request.policy)?, "policy")?;
        policy.revision = 0;
        if request.validate_only {
            return Ok(Response::new(policy));
        }
        let stored = self.store.create_policy(policy).await?;
        info!(policy = %stored.name, revision = stored.revision, operator = %operator.name, "Policy created");
        Ok(Response::new(stored))
    }

    async fn update_policy(
        &self,
        request: Request<UpdatePolicyRequest>,
    ) -> Result<Response<Policy>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
        let request = request.into_inner();
        let policy = normalise(&required(request.policy)?, "policy")?;
        if policy.revision == 0 {
            return Err(Status::invalid_argument(
                "policy.revision: required: the revision you read (optimistic concurrency)",
            ));
        }
        if request.validate_only {
            return Ok(Response::new(policy));
        }
        let stored = self.store.update_policy(policy).await?;
        info!(policy = %stored.name, revision = stored.revision, operator = %operator.name, "Policy updated");
        Ok(Response::new(stored))
    }

    async fn apply_policies(
        &self,
        request: Request<ApplyPoliciesRequest>,
    ) -> Result<Response<ApplyPoliciesResponse>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
        let request = request.into_inner();
        if request.policies.is_empty() {
            return Err(Status::invalid_argument(
                "policies: at least one policy is required",
            ));
        }
        portcullis_policy::validate_policy_set(&request.policies)
            .map_err(|invalid| Status::invalid_argument(invalid.to_string()))?;
        let policies = request
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| normalise(p, &format!("policies[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let results = if request.validate_only {
            policies
                .into_iter()
                .map(|p| (p, ApplyOutcome::Unchanged))
                .collect()
        } else {
            self.store.apply_policies(policies).await?
        };
        for (policy, outcome) in &results {
            if *outcome != ApplyOutcome::Unchanged && !request.validate_only {
                info!(policy = %policy.name, revision = policy.revision, outcome = outcome.as_str(), operator = %operator.name, "Policy applied");
            }
        }
        let results = results
            .into_iter()
            .map(|(policy, outcome)| AppliedPolicy {
                policy: Some(policy),
                outcome: if request.validate_only {
                    "valid"
                } else {
                    outcome.as_str()
                }
                .into(),
            })
            .collect();
        Ok(Response::new(ApplyPoliciesResponse { results }))
    }

    async fn delete_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
        let request = request.into_inner();
        check_name("name", &request.name)?;
        let revision = self
            .store
            .delete_policy(&request.name, request.revision)
            .await?;
        info!(policy = %request.name, revision, operator = %operator.name, "Policy deleted");
        Ok(Response::new(DeletePolicyResponse { revision }))
    }

    async fn get_policy(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<Policy>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let name = request.into_inner().name;
        check_name("name", &name)?;
        self.store
            .get_policy(&name)
            .await?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("policy {name:?} not found")))
    }

    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let request = request.into_inner();
        let after = paging::decode(LISTING, &request.page_token)?;
        let mut page = self
            .store
            .list_policies(after.as_deref(), paging::page_size(request.page_size))
            .await?;
        let cut = paging::within_budget(&mut page.items);
        let next_page_token = match (page.more || cut, page.items.last()) {
            (true, Some(last)) => paging::encode(LISTING, &last.name),
            _ => String::new(),
        };
        Ok(Response::new(ListPoliciesResponse {
            policies: page.items,
            next_page_token,
        }))
    }
}
