//! # syncgate extension
//!
//! One shared library, two roles:
//! - the `syncgate` logical decoding output plugin ([`output_plugin`]): a slot created with plugin
//!   `syncgate` streams each transaction's row changes in the compact binary format of
//!   `syncgate_protocol::plugin_format` (layout in docs/pg-ext.md). Decoding needs no
//!   `CREATE EXTENSION`: Postgres loads the library by name.
//! - `CREATE EXTENSION syncgate` (schema `syncgate`): SQL functions over the gateway's own rules
//!   engine (`syncgate-rules`): [`validate_rules`] (diagnostics, then checks against the
//!   database's catalog), [`evaluate_row`] (a row's buckets) and [`user_buckets`] (a connection's
//!   buckets, table parameter queries answered through SPI). Arguments are checked in
//!   [`rules_input`]; the catalog is read in [`catalog`].

use pgrx::prelude::*;

mod catalog;
mod evaluate_row;
mod output_plugin;
mod raw_text;
mod rules_input;
mod user_buckets;
mod validate_rules;

::pgrx::pg_module_magic!(name, version);

/// The extension's version, which is also the version of the plugin's format producer.
#[pg_extern]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_is_callable_in_the_extension_schema() {
        let version = Spi::get_one::<String>("SELECT syncgate.version()").expect("query runs");
        assert_eq!(version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    }
}

#[cfg(test)]
mod decoding_tests;
#[cfg(test)]
mod sql_function_client_tests;
mod sql_function_tests;

/// Required by `cargo pgrx test`: settings of the throwaway test cluster.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "wal_level = 'logical'",
            "max_replication_slots = 16",
            "max_wal_senders = 16",
            // Debian's PostgreSQL 15.20 refuses output plugins not listed here (the setting is new in
            // that minor; `cargo pgrx test` builds against the installed server headers, so it exists).
            "output_plugin_libraries = 'pgoutput, test_decoding, syncgate'",
        ]
    }
}
