//! # syncgate gateway
//!
//! The `syncgate` binary's library: command line, rules tooling, the config file and bucket storage
//! ([`storage`]); replication and the sync API arrive with their issues.
pub mod cli;
pub mod config;
pub mod config_cmd;
pub mod rules_cmd;
pub mod storage;
