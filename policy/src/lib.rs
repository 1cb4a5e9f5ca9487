//! Portcullis domain core, without I/O: the policy model, its validation from the proto (every
//! invalid field reported with its path), the normalised proto form, glob patterns, and the
//! policy file format. Used by the control plane, the agent and the CLI alike.

pub mod applicability;
pub mod controls;
pub mod engine;
mod file;
mod finding;
mod glob;
mod hash;
pub mod hygiene;
pub mod k8s;
mod model;
mod pattern;
pub mod pss;
pub mod reference;
pub mod scan;
mod to_proto;
mod validate;

#[cfg(test)]
mod testing;

pub use file::{
    MAX_FLOW_DEPTH, PolicyFileError, SourceLocation, TooDeep, check_flow_depth, document_at_line,
    parse_policy_documents,
};
pub use finding::Finding;
pub use glob::{Glob, GlobError};
pub use model::*;
pub use validate::{
    FieldError, InvalidPolicy, InvalidPolicySet, is_dns_label, validate_policy_set,
};
