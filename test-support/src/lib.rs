//! # syncgate-test-support
//!
//! Throwaway PostgreSQL 15 clusters for syncgate's integration tests (from `syncgate-pgcluster`), and a
//! pgoutput decoder.
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

pub mod interop;
pub mod pgoutput;
pub mod serve;
pub mod stats;

use std::sync::OnceLock;

/// The cluster code lives in the shipping crate `syncgate-pgcluster` (the `syncgate` binary uses it
/// too); the tests keep their historical names.
pub use syncgate_pgcluster::{
    CLUSTER_OS_USER as TEST_OS_USER, ClusterError as HarnessError, ClusterOptions, OUTPUT_PLUGIN_LIBRARIES,
    PgCluster, REPLICATION_SESSION_OPTIONS, SUPERUSER, ScratchDatabase as TestDatabase,
    has_output_plugin_allow_list,
};

/// The process-wide cluster, started on first use and stopped when the test process exits (the
/// watchdog notices its pipe closing). Tests that just need a database call
/// `shared_cluster().create_database()`.
///
/// Panics if the cluster cannot be started (the error includes the server log).
pub fn shared_cluster() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        PgCluster::start()
            .unwrap_or_else(|e| panic!("could not start the shared PostgreSQL test cluster: {e}"))
    })
}
