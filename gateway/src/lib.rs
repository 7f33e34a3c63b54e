//! # syncgate gateway
//!
//! The `syncgate` binary's library: command line and rules tooling; replication, bucket storage
//! and the sync API arrive with their issues.
pub mod cli;
pub mod config;
pub mod config_cmd;
pub mod rules_cmd;
