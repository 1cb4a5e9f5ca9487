//! Portcullis policy model, without I/O: the validated policy (what the engine evaluates),
//! image references, glob patterns and the image scan model; with the `proto` feature (on by
//! default) also their validation from the proto (every invalid field reported with its
//! path), the normalised proto form and the policy file format. The engine
//! (`portcullis-engine`) uses it without `proto`; the control plane, the agent and the CLI
//! with it.

#[cfg(feature = "proto")]
mod file;
mod finding;
pub mod glob;
#[doc(hidden)]
pub mod hash;
mod model;
pub mod pattern;
pub mod reference;
pub mod scan;
#[cfg(feature = "proto")]
mod to_proto;
#[cfg(feature = "proto")]
mod validate;

#[cfg(all(test, feature = "proto"))]
mod testing;

#[cfg(feature = "proto")]
pub use file::{
    MAX_FLOW_DEPTH, PolicyFileError, SourceLocation, TooDeep, check_flow_depth, document_at_line,
    parse_policy_documents,
};
pub use finding::Finding;
pub use glob::{Glob, GlobError};
pub use model::*;
#[cfg(feature = "proto")]
pub use validate::{
    FieldError, InvalidPolicy, InvalidPolicySet, is_dns_label, validate_policy_set,
};
