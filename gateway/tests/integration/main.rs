//! The `syncgate` binary's integration tests, in one test binary.

mod cli;
mod config;
mod crash;
mod dev;
mod interop;
mod replication;
mod rule_suites;
mod source;
mod sync_api;
mod websocket;
