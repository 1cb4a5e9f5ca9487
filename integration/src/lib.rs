//! The end-to-end tests are in `tests/`; what starts the binaries for them (and for the
//! benchmarks and campaigns of `xtask`) is `portcullis-testkit`.
