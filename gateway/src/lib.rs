//! # syncgate gateway
//!
//! The `syncgate` binary's library: command line, and (as later parts land) replication, bucket
//! storage and the sync API.
pub mod cli;
