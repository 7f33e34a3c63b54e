//! The rules crate's integration tests, in one test binary.

mod diagnostics;
mod pg_type_mapping;
mod semantics;
