//! # syncgate gateway
//!
//! The `syncgate` binary's library: command line, rules tooling, the config file, client token
//! verification ([`auth`]), and the storage tools [`inspect`] (what a user would sync, net rows of
//! a bucket) and [`compact_cmd`];
//! [`source`] is the Postgres side of replication (slot, snapshot, decoded change stream) and
//! [`storage`] the bucket storage (op log, checksums, checkpoints, compaction); [`replicator`] joins
//! them, [`api`] serves clients (sessions, write checkpoints, probes), and [`serve`] runs it all;
//! [`rule_suite`] runs sqllogictest rule suites against a throwaway Postgres and an embedded gateway;
//! [`dev`] runs the demo app locally (`syncgate dev`).
pub mod api;
pub mod auth;
pub mod cli;
pub mod compact_cmd;
pub mod config;
pub mod config_cmd;
pub mod dev;
pub mod inspect;
pub mod replicator;
pub mod rule_suite;
pub mod rules_cmd;
pub mod serve;
pub mod source;
pub mod storage;
pub mod versioned_rules;
