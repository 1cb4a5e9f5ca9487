// See build-support/revision.rs.
include!("../build-support/revision.rs");
