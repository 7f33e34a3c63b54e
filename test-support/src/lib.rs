//! # syncgate-test-support
//!
//! Throwaway PostgreSQL 15 clusters for syncgate's integration tests, and a pgoutput decoder.
//!
//! - [`shared_cluster`]: one cluster per test process, started on first use; tests take a fresh
//!   database each with [`PgCluster::create_database`].
//! - [`PgCluster::start`]: a private cluster (stopped and deleted when dropped).
//! - [`pgoutput`]: decodes logical replication messages of the `pgoutput` plugin.
//! - [`serve`]: the `syncgate serve` binary as a process of its own, with the test JWT key.
//! - [`interop`]: the official client's node scripts (tests/interop/), skipped or required.
//!
//! ```no_run
//! # async fn demo() {
//! let db = syncgate_test_support::shared_cluster().create_database().expect("test database");
//! let client = db.connect().await.expect("connect");
//! client.batch_execute("CREATE TABLE t (id int primary key)").await.expect("ddl");
//! # }
//! ```

mod cluster;
pub mod interop;
pub mod pgoutput;
pub mod serve;
pub mod stats;

pub use cluster::{
    ClusterOptions, HarnessError, OUTPUT_PLUGIN_LIBRARIES, PgCluster, REPLICATION_SESSION_OPTIONS, SUPERUSER,
    TEST_OS_USER, TestDatabase, has_output_plugin_allow_list, shared_cluster,
};
