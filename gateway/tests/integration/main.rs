//! The `syncgate` binary's integration tests, in one test binary.

mod browser;
mod cli;
mod cluster;
mod config;
mod crash;
mod dashboard;
mod dev;
mod interop;
mod load_balancer;
mod replication;
mod rule_suites;
mod source;
mod sync_api;
mod websocket;
