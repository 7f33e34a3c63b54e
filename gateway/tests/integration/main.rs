//! The `syncgate` binary's integration tests, in one test binary.

mod cli;
mod config;
mod replication;
mod source;
