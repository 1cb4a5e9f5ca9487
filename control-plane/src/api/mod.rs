//! The gRPC layer: operator services over the store. Domain and store errors become
//! `tonic::Status` here and nowhere else.

mod agent;
mod audit;
mod cluster;
mod event;
mod paging;
mod policy;
mod scan;
mod scan_proto;

pub use agent::AgentApi;
pub use audit::AuditApi;
pub use cluster::ClusterApi;
pub use event::EventApi;
pub use policy::PolicyApi;
pub use scan::{REQUEST_OVERHEAD_BYTES, ScanApi};

use tonic::Status;

use crate::{audit::AuditError, store::StoreError};

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::NotFound { .. } => Status::not_found(error.to_string()),
            StoreError::AlreadyExists { .. } => Status::already_exists(error.to_string()),
            StoreError::Conflict { .. } => Status::aborted(error.to_string()),
            StoreError::Invalid { .. } => Status::invalid_argument(error.to_string()),
            StoreError::Unavailable(_) => {
                tracing::warn!(%error, "Store unavailable");
                Status::unavailable(format!("store: {error}"))
            }
            StoreError::NewerFormat { .. }
            | StoreError::PreRelease { .. }
            | StoreError::Corrupt { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::Database(_)
            | StoreError::Sled(_)
            | StoreError::Io(_) => {
                tracing::error!(%error, "Store failure");
                Status::internal(format!("store: {error}"))
            }
        }
    }
}

impl From<AuditError> for Status {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::Superseded { .. } => Status::failed_precondition(error.to_string()),
            AuditError::Store(error) => error.into(),
        }
    }
}

/// Validates a DNS-label name (policies, clusters), naming the field on error.
fn check_name(field: &str, name: &str) -> Result<(), Status> {
    if portcullis_policy::is_dns_label(name) {
        Ok(())
    } else if name.is_empty() {
        Err(Status::invalid_argument(format!("{field}: required")))
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: {name:?} is not a DNS label (lower-case letters, digits and '-', at most 63, \
             starting and ending with a letter or digit)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("name", "prod-eu-1").is_ok());
        for bad in ["", "Prod", "-a", "a-", "a_b", &"a".repeat(64)] {
            let err = check_name("name", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(err.message().starts_with("name: "), "{}", err.message());
        }
    }
}
