//! Portcullis domain core, without I/O: the policy model, its validation from the proto (every
//! invalid field reported with its path), the normalised proto form, glob patterns, and the
//! policy file format. Used by the control plane, the agent and the CLI alike.

mod file;
mod glob;
mod model;
mod to_proto;
mod validate;

#[cfg(test)]
mod testing;

pub use file::{PolicyFileError, SourceLocation, parse_policy_documents};
pub use glob::{Glob, GlobError};
pub use model::*;
pub use validate::{FieldError, InvalidPolicy, InvalidPolicySet, validate_policy_set};
