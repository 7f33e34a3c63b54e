//! The `syncgate` binary's integration tests, in one test binary.

mod cli;
mod config;
mod crash;
mod interop;
mod replication;
#[path = "../support/serve_process.rs"]
mod serve_process;
mod source;
mod sync_api;
mod websocket;
