//! Postgres storage tests beyond the shared suite (`tests.rs` runs that on both storages): migrations,
//! refusing the source database, fencing and taking over, connection loss, and calls from inside a
//! tokio runtime.
//! Every storage gets a schema of its own in one database of the shared throwaway cluster.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use syncgate_test_support::{TestDatabase, shared_cluster};

use super::*;
use crate::config::SslMode;

/// Where one test storage lives: a schema of its own in a database of the shared cluster.
pub(crate) struct Place {
    pub config: PostgresStorageConfig,
    url: String,
}

/// The database the suite's schemas live in (one per test process).
fn suite_database() -> &'static TestDatabase {
    static DATABASE: OnceLock<TestDatabase> = OnceLock::new();
    DATABASE.get_or_init(|| shared_cluster().create_database().unwrap())
}

pub(super) fn storage_config(database: &TestDatabase, schema: &str) -> PostgresStorageConfig {
    PostgresStorageConfig {
        // Short: each compaction waits a poll interval (plus a margin) before it rewrites ops.
        poll_interval: std::time::Duration::from_millis(100),
        ..PostgresStorageConfig::local_trusted(
            database.host(),
            database.port(),
            database.name(),
            database.user(),
            schema,
        )
    }
}

impl Place {
    /// A new schema in the suite's database.
    pub fn new() -> Place {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Place::in_database(
            suite_database(),
            &format!("s{}", NEXT.fetch_add(1, Ordering::Relaxed)),
        )
    }

    pub fn in_database(database: &TestDatabase, schema: &str) -> Place {
        Place {
            config: storage_config(database, schema),
            url: database.url(),
        }
    }

    /// Runs `sql` in the place's schema on a connection of its own; every column read as bigint.
    pub fn rows(&self, sql: &str) -> Vec<Vec<i64>> {
        self.run(sql, |rows| {
            rows.iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, i64>(i)).collect())
                .collect()
        })
    }

    pub fn execute(&self, sql: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (url, schema) = (self.url.clone(), self.config.schema.clone());
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(&format!("SET search_path = {schema}; {sql}"))
                .await
                .unwrap();
        });
    }

    fn run<T>(&self, sql: &str, f: impl FnOnce(&[tokio_postgres::Row]) -> T) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (url, schema) = (self.url.clone(), self.config.schema.clone());
        let rows = runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(&format!("SET search_path = {schema}"))
                .await
                .unwrap();
            client.query(sql, &[]).await.unwrap()
        });
        f(&rows)
    }
}

fn put(key: &str, bucket: &str) -> SourceTransaction {
    SourceTransaction {
        commit_lsn: Lsn(0),
        changes: vec![RowChange {
            row: SourceRowKey {
                table: "public.todos".into(),
                key: key.into(),
            },
            placements: Some(vec![Placement {
                bucket: BucketName::new(bucket),
                table: "todos".into(),
                id: key.into(),
                data: "{}".into(),
            }]),
            parameters: None,
            source_row: None,
        }],
    }
}

fn at(lsn: u64, txn: SourceTransaction) -> SourceTransaction {
    SourceTransaction {
        commit_lsn: Lsn(lsn),
        ..txn
    }
}

#[test]
fn migrations_are_idempotent_and_safe_when_gateways_start_together() {
    let place = Place::new();
    // Several gateways opening a new storage at once: the advisory lock lets one migrate.
    let opened: Vec<PostgresStorage> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| PostgresStorage::open(&place.config)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert_eq!(place.rows("SELECT version::bigint FROM schema_version"), [[4]]);
    assert_eq!(place.rows("SELECT COUNT(*) FROM meta"), [[4]], "seeded once");
    let version = opened[0].create_version("rules").unwrap();
    assert_eq!(opened[3].versions().unwrap().len(), 1, "one storage, seen by all");
    drop(opened);
    // Opening again migrates nothing and keeps the data.
    let again = PostgresStorage::open(&place.config).unwrap();
    assert_eq!(again.versions().unwrap()[0].version, version);
    assert_eq!(place.rows("SELECT version::bigint FROM schema_version"), [[4]]);
}

#[test]
fn a_format_2_storage_is_migrated_and_its_state_rows_update_in_place() {
    let place = Place::new();
    let storage = PostgresStorage::open(&place.config).unwrap();
    let version = storage.create_version("rules").unwrap();
    let with_source_row = |txn: SourceTransaction, source_row: &str| {
        let mut txn = txn;
        txn.changes[0].source_row = Some(source_row.into());
        txn
    };
    storage
        .apply(version, &with_source_row(at(10, put("1", "b1")), "row 1"))
        .unwrap();
    storage.apply(version, &at(20, put("2", "b1"))).unwrap();
    drop(storage);
    // Formats 2, 3 and 4 differ only by storage parameters of three tables: undo migrations 3 and 4.
    place.execute(
        "ALTER TABLE source_state RESET (fillfactor); ALTER TABLE buckets RESET (fillfactor);
         ALTER TABLE op_segments RESET (toast_tuple_target); UPDATE schema_version SET version = 2",
    );
    let parameters = "SELECT COUNT(*) FROM pg_class
         WHERE (oid = 'source_state'::regclass AND 'fillfactor=70' = ANY(reloptions))
            OR (oid = 'buckets'::regclass AND 'fillfactor=50' = ANY(reloptions))
            OR (oid = 'op_segments'::regclass AND 'toast_tuple_target=8160' = ANY(reloptions))";
    assert_eq!(place.rows(parameters), [[0]]);

    let storage = PostgresStorage::open(&place.config).unwrap();
    assert_eq!(place.rows("SELECT version::bigint FROM schema_version"), [[4]]);
    assert_eq!(place.rows(parameters), [[3]]);
    let key = |k: &str| SourceRowKey {
        table: "public.todos".into(),
        key: k.into(),
    };
    assert_eq!(
        storage.source_row(version, &key("1")).unwrap().as_deref(),
        Some("row 1")
    );
    // Rows stored before the migration are updated (by tuple id) and moved between buckets.
    storage
        .apply(version, &with_source_row(at(30, put("1", "b2")), "row 1'"))
        .unwrap();
    storage.apply(version, &at(40, put("2", "b2"))).unwrap();
    assert_eq!(
        storage.source_row(version, &key("1")).unwrap().as_deref(),
        Some("row 1'")
    );
    assert_eq!(place.rows("SELECT COUNT(*) FROM source_state"), [[2]]);
    let checkpoint = storage.latest_checkpoint(version).unwrap().unwrap();
    let ops = |bucket: &str| {
        storage
            .ops(
                version,
                &BucketName::new(bucket),
                OpId::ZERO,
                checkpoint.op_id,
                100,
            )
            .unwrap()
            .into_iter()
            .map(|op| (op.entry.op, op.entry.object_id))
            .collect::<Vec<_>>()
    };
    let put_op = |id: &str| (syncgate_protocol::OpType::Put, Some(id.to_owned()));
    let remove_op = |id: &str| (syncgate_protocol::OpType::Remove, Some(id.to_owned()));
    assert_eq!(
        ops("b1"),
        [put_op("1"), put_op("2"), remove_op("1"), remove_op("2")]
    );
    assert_eq!(ops("b2"), [put_op("1"), put_op("2")]);
}

#[test]
fn a_newer_format_is_refused() {
    let place = Place::new();
    drop(PostgresStorage::open(&place.config).unwrap());
    place.execute("UPDATE schema_version SET version = 99");
    assert!(matches!(
        PostgresStorage::open(&place.config),
        Err(StorageError::FormatTooNew { found: 99, .. })
    ));
}

#[test]
fn the_source_database_is_refused_as_storage() {
    let source = shared_cluster().create_database().unwrap();
    let source_config: tokio_postgres::Config = source.url().parse().unwrap();
    // Storage in the source's own database (another schema does not help): refused before anything
    // is created there.
    let refused =
        PostgresStorage::open_beside_source(&storage_config(&source, "syncgate_storage"), &source_config)
            .unwrap_err();
    assert!(
        matches!(refused, StorageError::SourceDatabase { .. }),
        "{refused}"
    );
    let message = refused.to_string();
    assert!(message.contains(source.name()), "{message}");
    assert!(message.contains("separate database"), "{message}");
    let schemas = source
        .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'syncgate_storage'")
        .unwrap();
    assert_eq!(schemas.trim(), "0", "nothing written to the source");
    // Another database on the same server is fine.
    PostgresStorage::open_beside_source(&Place::new().config, &source_config).unwrap();
}

#[test]
fn a_deposed_writer_is_fenced_and_readers_carry_on() {
    let place = Place::new();
    let old = PostgresStorage::open(&place.config).unwrap();
    let version = old.create_version("rules").unwrap();
    let cp = old.apply(version, &at(10, put("1", "a"))).unwrap().unwrap();
    // Another gateway takes over: the epoch moves.
    place.execute("UPDATE leader_epoch SET epoch = epoch + 1");
    let fenced = old.apply(version, &at(20, put("2", "a"))).unwrap_err();
    assert!(
        matches!(fenced, StorageError::Fenced { held: 1, found: 2 }),
        "{fenced}"
    );
    assert!(!fenced.is_retryable());
    assert!(matches!(old.activate(version), Err(StorageError::Fenced { .. })));
    // Nothing of the fenced commit is visible; reads still work.
    assert_eq!(old.latest_checkpoint(version).unwrap().unwrap().op_id, cp);
    // The new leader writes.
    let new = PostgresStorage::open(&place.config).unwrap();
    assert_eq!(new.stored_epoch().unwrap(), 2);
    assert!(new.apply(version, &at(20, put("2", "a"))).unwrap().unwrap() > cp);
}

#[test]
fn a_lost_connection_is_retryable_and_the_next_call_reconnects() {
    // A database of its own: the test ends every storage connection to it.
    let database = shared_cluster().create_database().unwrap();
    let place = Place::in_database(&database, "syncgate_storage");
    let storage = PostgresStorage::open(&place.config).unwrap();
    let version = storage.create_version("rules").unwrap();
    storage.apply(version, &at(10, put("1", "a"))).unwrap();
    // The write path binds arrays of thousands of keys: planned for their values, Postgres would scan
    // whole tables (postgres.rs, `connect_writer`).
    assert_eq!(
        storage.writer_setting("plan_cache_mode").unwrap(),
        "force_generic_plan"
    );
    place.execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = '{}' AND application_name = 'syncgate-storage'",
        database.name()
    ));
    // The writer either notices the closed connection before its call and reconnects, or its call
    // fails retryably; then the same call again succeeds on a new connection, set up as the first.
    let applied = match storage.apply(version, &at(20, put("2", "a"))) {
        Ok(applied) => applied,
        Err(error) => {
            assert!(error.is_retryable(), "{error}");
            storage.apply(version, &at(20, put("2", "a"))).unwrap()
        }
    };
    assert!(applied.is_some());
    assert_eq!(
        storage.writer_setting("plan_cache_mode").unwrap(),
        "force_generic_plan"
    );
    // Pooled readers lost their connections too: reads reconnect by themselves.
    let ops = storage
        .ops(version, &BucketName::new("a"), OpId::ZERO, OpId::MAX, 10)
        .unwrap();
    assert_eq!(ops.len(), 2);
}

#[test]
fn readers_are_not_blocked_by_a_transaction_holding_write_locks() {
    let place = Place::new();
    let storage = PostgresStorage::open(&place.config).unwrap();
    let version = storage.create_version("rules").unwrap();
    let cp = storage.apply(version, &at(10, put("1", "a"))).unwrap().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (url, schema) = (suite_database().url(), place.config.schema.clone());
    // Another session holds locks that block every write to the storage's tables, in an open
    // transaction: reads answer regardless (MVCC).
    let (client, _connection) = runtime.block_on(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {schema}.op_segments, {schema}.buckets, {schema}.sync_rules,
                   {schema}.parameter_index IN EXCLUSIVE MODE"
            ))
            .await
            .unwrap();
        (client, connection)
    });
    assert_eq!(storage.latest_checkpoint(version).unwrap().unwrap().op_id, cp);
    let a = BucketName::new("a");
    assert_eq!(storage.ops(version, &a, OpId::ZERO, cp, 10).unwrap().len(), 1);
    assert_eq!(storage.bucket_checksums(version, cp, &[a]).unwrap()[0].count, 1);
    runtime.block_on(client.batch_execute("ROLLBACK")).unwrap();
}

/// The storage is called from async code in places (and tests): the calls must not panic there, and
/// nor may dropping it.
#[tokio::test]
async fn calls_and_drop_work_inside_a_tokio_runtime() {
    let place = Place::new();
    let storage = PostgresStorage::open(&place.config).unwrap();
    let version = storage.create_version("rules").unwrap();
    assert!(storage.apply(version, &at(10, put("1", "a"))).unwrap().is_some());
    assert_eq!(storage.versions().unwrap().len(), 1);
    drop(storage);
}

#[test]
fn storage_writes_commit_synchronously_and_sslmodes_needing_tls_are_refused() {
    let place = Place::new();
    let storage = PostgresStorage::open(&place.config).unwrap();
    assert_eq!(storage.writer_setting("synchronous_commit").unwrap(), "on");
    let mut tls = place.config.clone();
    tls.connection.sslmode = SslMode::VerifyFull;
    let refused = PostgresStorage::open(&tls).unwrap_err();
    assert!(refused.to_string().contains("sslmode: disable"), "{refused}");
    let mut bad = place.config.clone();
    bad.schema = "Bad-Name".into();
    assert!(matches!(
        PostgresStorage::open(&bad),
        Err(StorageError::Configuration(_))
    ));
}

/// Serialization failures are retryable, other server errors are not (real errors from the server).
#[test]
fn serialization_failures_are_retryable_and_other_errors_are_not() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = suite_database().url();
    let (conflict, syntax) = runtime.block_on(async move {
        let connect = || async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
        };
        let (first, second) = (connect().await, connect().await);
        first
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS retry_probe (id int PRIMARY KEY, n int);
                            INSERT INTO retry_probe VALUES (1, 0) ON CONFLICT DO NOTHING",
            )
            .await
            .unwrap();
        // Both read the row in REPEATABLE READ; the second update after the first commits conflicts.
        for client in [&first, &second] {
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT n FROM retry_probe")
                .await
                .unwrap();
        }
        first
            .batch_execute("UPDATE retry_probe SET n = n + 1 WHERE id = 1; COMMIT")
            .await
            .unwrap();
        let conflict = second
            .execute("UPDATE retry_probe SET n = n + 1 WHERE id = 1", &[])
            .await
            .unwrap_err();
        let syntax = first.execute("SELEC 1", &[]).await.unwrap_err();
        (conflict, syntax)
    });
    let conflict = StorageError::from(conflict);
    assert!(conflict.is_retryable(), "{conflict}");
    assert!(conflict.to_string().contains("40001"), "{conflict}");
    let syntax = StorageError::from(syntax);
    assert!(!syntax.is_retryable(), "{syntax}");
}

/// A standby's storage handle (opened before the takeover) writes once it takes over the epoch its lease
/// bumped; the old leader's handle is fenced from then on.
#[test]
fn take_over_moves_the_writer_to_the_new_epoch() {
    let place = Place::new();
    let leader = PostgresStorage::open(&place.config).unwrap();
    let standby = PostgresStorage::open(&place.config).unwrap();
    let version = leader.create_version("rules").unwrap();
    let cp = leader.apply(version, &at(10, put("1", "a"))).unwrap().unwrap();
    // What the lease does on taking over, in its own session.
    place.execute("UPDATE leader_epoch SET epoch = epoch + 1");
    standby.take_over(2).unwrap();
    assert_eq!(standby.held_epoch(), 2);
    assert!(standby.apply(version, &at(20, put("2", "a"))).unwrap().unwrap() > cp);
    assert!(matches!(
        leader.apply(version, &at(30, put("3", "a"))),
        Err(StorageError::Fenced { held: 1, found: 2 })
    ));
    let ops = standby
        .ops(version, &BucketName::new("a"), OpId::ZERO, OpId::MAX, 10)
        .unwrap();
    assert_eq!(ops.len(), 2, "the fenced commit left nothing");
}

#[test]
fn the_next_leader_ends_a_compaction_its_dead_predecessor_left_running() {
    let place = Place::new();
    let storage = PostgresStorage::open(&place.config).unwrap();
    // Odd: a compaction started and its gateway died; readers on every gateway would wait forever.
    place.execute("UPDATE meta SET value = 7 WHERE key = 'compaction_generation'");
    // What the lease does on taking over, in its own session.
    place.execute("UPDATE leader_epoch SET epoch = epoch + 1");
    storage.take_over(2).unwrap();
    assert_eq!(
        place.rows("SELECT value FROM meta WHERE key = 'compaction_generation'"),
        [[8]]
    );
}
