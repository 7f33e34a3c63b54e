//! The storage test suite, run against both implementations: SQLite files in temp dirs and Postgres
//! schemas in a throwaway cluster (`storage_suite!` at the end instantiates it per storage), plus the
//! SQLite-only tests (file format, WAL, upgrades). Postgres-only tests are in `postgres_tests`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use syncgate_protocol::{BucketName, Checksum, ClientId, OpId, OpType, Subkey, UserId};

use super::postgres_tests;
use super::*;

fn b(name: &str) -> BucketName {
    BucketName::new(name)
}

fn row(key: &str) -> SourceRowKey {
    SourceRowKey {
        table: "public.todos".into(),
        key: key.into(),
    }
}

fn place(bucket: &str, id: &str, data: &str) -> Placement {
    Placement {
        bucket: b(bucket),
        table: "todos".into(),
        id: id.into(),
        data: data.into(),
    }
}

fn set(key: &str, placements: Vec<Placement>) -> RowChange {
    RowChange {
        row: row(key),
        placements: Some(placements),
        parameters: None,
        source_row: None,
    }
}

fn txn(lsn: u64, changes: Vec<RowChange>) -> SourceTransaction {
    SourceTransaction {
        commit_lsn: Lsn(lsn),
        changes,
    }
}

/// A storage implementation under test, with where it lives (a temp dir, a throwaway database).
pub(super) trait TestStorage: BucketStorage + Sized {
    type Place;
    fn create() -> (Self::Place, Self);
    /// Opens the same storage again (a restart).
    fn reopen(place: &Self::Place) -> Self;
    /// Runs `sql` (no parameters) on a connection of its own; every column an integer.
    fn rows(place: &Self::Place, sql: &str) -> Vec<Vec<i64>>;
    /// Whether the writer's commits wait for durable storage (invariant 4).
    fn writes_are_durable(&self) -> bool;
}

impl TestStorage for SqliteStorage {
    type Place = tempfile::TempDir;

    fn create() -> (Self::Place, Self) {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(dir.path().join("buckets.db")).unwrap();
        (dir, storage)
    }

    fn reopen(place: &Self::Place) -> Self {
        SqliteStorage::open(place.path().join("buckets.db")).unwrap()
    }

    fn rows(place: &Self::Place, sql: &str) -> Vec<Vec<i64>> {
        let conn = rusqlite::Connection::open(place.path().join("buckets.db")).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let columns = stmt.column_count();
        stmt.query_map([], |r| (0..columns).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn writes_are_durable(&self) -> bool {
        self.writer_synchronous().unwrap() == 2
    }
}

impl TestStorage for PostgresStorage {
    type Place = postgres_tests::Place;

    fn create() -> (Self::Place, Self) {
        let place = postgres_tests::Place::new();
        let storage = PostgresStorage::open(&place.config).unwrap();
        (place, storage)
    }

    fn reopen(place: &Self::Place) -> Self {
        PostgresStorage::open(&place.config).unwrap()
    }

    fn rows(place: &Self::Place, sql: &str) -> Vec<Vec<i64>> {
        place.rows(sql)
    }

    fn writes_are_durable(&self) -> bool {
        self.writer_setting("synchronous_commit").unwrap() == "on"
    }
}

struct Fixture<S: TestStorage> {
    place: S::Place,
    storage: S,
    version: RulesVersion,
}

impl<S: TestStorage> Fixture<S> {
    fn new() -> Self {
        let (place, storage) = S::create();
        let version = storage.create_version("bucket_definitions: {}").unwrap();
        storage.activate(version).unwrap();
        Fixture {
            place,
            storage,
            version,
        }
    }

    fn reopen(self) -> Self {
        let Fixture {
            place,
            storage,
            version,
        } = self;
        drop(storage);
        let storage = S::reopen(&place);
        Fixture {
            place,
            storage,
            version,
        }
    }

    /// `sql` on a connection of its own, every column an integer.
    fn rows(&self, sql: &str) -> Vec<Vec<i64>> {
        S::rows(&self.place, sql)
    }

    fn apply(&self, t: SourceTransaction) -> Option<OpId> {
        self.storage.apply(self.version, &t).unwrap()
    }

    fn ops(&self, bucket: &str) -> Vec<StoredOp> {
        self.storage
            .ops(self.version, &b(bucket), OpId::ZERO, OpId::MAX, usize::MAX)
            .unwrap()
    }

    fn kinds(&self, bucket: &str) -> Vec<OpType> {
        self.ops(bucket).iter().map(|o| o.entry.op).collect()
    }

    fn summary(&self, checkpoint: OpId, bucket: &str) -> BucketSummary {
        self.storage
            .bucket_checksums(self.version, checkpoint, &[b(bucket)])
            .unwrap()
            .remove(0)
    }

    fn latest(&self) -> Checkpoint {
        self.storage.latest_checkpoint(self.version).unwrap().unwrap()
    }
}

#[test]
fn lsn_text_form() {
    let lsn: Lsn = "16/B374D848".parse().unwrap();
    assert_eq!(lsn.get(), 0x16_B374_D848);
    assert_eq!(lsn.to_string(), "16/B374D848");
    assert_eq!(Lsn(0).to_string(), "0/0");
    for bad in ["", "16", "/1", "1/", "g/1", "123456789/0", "1/2/3"] {
        assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
    }
}

fn row_moving_between_buckets_removes_and_puts<S: TestStorage>() {
    let f = Fixture::<S>::new();
    f.apply(txn(10, vec![set("1", vec![place("a", "t1", r#"{"id":"t1"}"#)])]));
    f.apply(txn(20, vec![set("1", vec![place("b", "t1", r#"{"id":"t1"}"#)])]));
    assert_eq!(f.kinds("a"), [OpType::Put, OpType::Remove]);
    assert_eq!(f.kinds("b"), [OpType::Put]);
    let remove = &f.ops("a")[1].entry;
    let subkey = Subkey::for_source_row("public.todos", "1");
    assert_eq!(remove.subkey.as_ref(), Some(&subkey));
    assert_eq!(remove.checksum, Checksum::of_remove(subkey.as_str()));
    assert_eq!(remove.object_id.as_deref(), Some("t1"));
    assert!(f.ops("b")[0].entry.op_id > remove.op_id);
}

fn unchanged_data_writes_no_put_and_changed_data_does<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let first = f.apply(txn(10, vec![set("1", vec![place("a", "t1", r#"{"v":1}"#)])]));
    let same = f.apply(txn(20, vec![set("1", vec![place("a", "t1", r#"{"v":1}"#)])]));
    assert_eq!(first, same, "no op, the checkpoint keeps its op id");
    assert_eq!(f.latest().lsn, Lsn(20));
    f.apply(txn(30, vec![set("1", vec![place("a", "t1", r#"{"v":2}"#)])]));
    assert_eq!(f.kinds("a"), [OpType::Put, OpType::Put]);
}

fn delete_removes_from_every_bucket<S: TestStorage>() {
    let f = Fixture::<S>::new();
    f.apply(txn(
        10,
        vec![set("1", vec![place("a", "t1", "{}"), place("b", "t1", "{}")])],
    ));
    f.apply(txn(20, vec![RowChange::delete(row("1"))]));
    assert_eq!(f.kinds("a"), [OpType::Put, OpType::Remove]);
    assert_eq!(f.kinds("b"), [OpType::Put, OpType::Remove]);
    // Deleting again changes nothing.
    f.apply(txn(30, vec![RowChange::delete(row("1"))]));
    assert_eq!(f.ops("a").len(), 2);
}

fn reapplying_a_stored_lsn_is_skipped<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let t = txn(10, vec![set("1", vec![place("a", "t1", r#"{"v":1}"#)])]);
    assert!(f.apply(t.clone()).is_some());
    assert_eq!(f.apply(t), None);
    let older = txn(5, vec![set("1", vec![place("a", "t1", r#"{"v":9}"#)])]);
    assert_eq!(f.apply(older), None);
    assert_eq!(f.ops("a").len(), 1);
    let f = f.reopen();
    assert_eq!(
        f.apply(txn(10, vec![set("2", vec![place("a", "t2", "{}")])])),
        None
    );
    assert_eq!(f.ops("a").len(), 1);
}

fn op_ids_increase_across_versions_and_reopen_and_start_above_the_clock<S: TestStorage>() {
    let before = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let f = Fixture::<S>::new();
    let first = f
        .apply(txn(10, vec![set("1", vec![place("a", "t1", "{}")])]))
        .unwrap();
    assert!(first.get() >= before, "seeded from the wall clock");
    let v2 = f.storage.create_version("v2").unwrap();
    assert!(v2 > f.version);
    let second = f
        .storage
        .apply(v2, &txn(10, vec![set("1", vec![place("a", "t1", "{}")])]))
        .unwrap()
        .unwrap();
    assert!(second > first, "one sequence across versions");
    let f = f.reopen();
    let third = f
        .apply(txn(20, vec![set("2", vec![place("a", "t2", "{}")])]))
        .unwrap();
    assert!(third > second, "the sequence survives reopen");
}

fn bucket_checksum_is_the_wrapping_sum_of_op_checksums<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let put = |done| format!(r#"{{"id":"t1","description":"Buy milk","done":{done}}}"#);
    let c1 = f
        .apply(txn(10, vec![set("1", vec![place("a", "t1", &put(0))])]))
        .unwrap();
    let c2 = f
        .apply(txn(20, vec![set("1", vec![place("a", "t1", &put(1))])]))
        .unwrap();
    let c3 = f.apply(txn(30, vec![RowChange::delete(row("1"))])).unwrap();
    let expected = Checksum::of_put("todos", "t1", &put(0))
        + Checksum::of_put("todos", "t1", &put(1))
        + Checksum::of_remove(Subkey::for_source_row("public.todos", "1").as_str());
    let latest = f.summary(c3, "a");
    assert_eq!((latest.checksum, latest.count), (expected, 3));
    let ops = f.ops("a");
    assert_eq!(ops.iter().map(|o| o.entry.checksum).sum::<Checksum>(), expected);
    for op in &ops {
        assert_eq!(op.entry.expected_checksum(), Some(op.entry.checksum));
    }
    // Older checkpoints are computed from the ops.
    assert_eq!(
        f.summary(c1, "a").checksum,
        Checksum::of_put("todos", "t1", &put(0))
    );
    assert_eq!(f.summary(c2, "a").count, 2);
    assert_eq!(
        f.summary(c3, "unknown"),
        BucketSummary {
            bucket: b("unknown"),
            checksum: Checksum::ZERO,
            count: 0
        }
    );
}

fn parameter_lookups_read_the_state_at_a_checkpoint<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let params = |key: &str, entries: &[(&str, &str)]| RowChange {
        row: row(key),
        placements: None,
        parameters: Some(
            entries
                .iter()
                .map(|(k, v)| ParameterRow {
                    lookup_key: (*k).into(),
                    values_json: (*v).into(),
                })
                .collect(),
        ),
        source_row: None,
    };
    f.apply(txn(10, vec![params("m1", &[("[\"q\",\"u1\"]", "[\"list1\"]")])]));
    let at10 = f.latest();
    f.apply(txn(
        20,
        vec![
            params("m1", &[("[\"q\",\"u2\"]", "[\"list1\"]")]),
            params("m2", &[("[\"q\",\"u1\"]", "[\"list2\"]")]),
        ],
    ));
    let at20 = f.latest();
    let keys = ["[\"q\",\"u1\"]".to_owned(), "[\"q\",\"u2\"]".to_owned()];
    assert_eq!(
        f.storage.lookup(f.version, &at10, &keys).unwrap(),
        [vec!["[\"list1\"]".to_owned()], vec![]]
    );
    assert_eq!(
        f.storage.lookup(f.version, &at20, &keys).unwrap(),
        [vec!["[\"list2\"]".to_owned()], vec!["[\"list1\"]".to_owned()]]
    );
    f.apply(txn(30, vec![RowChange::delete(row("m2"))]));
    assert_eq!(
        f.storage.lookup(f.version, &f.latest(), &keys).unwrap()[0],
        Vec::<String>::new()
    );
    // Changed twice within one transaction: only the final state is visible.
    f.apply(txn(
        40,
        vec![
            params("m3", &[("[\"q\",\"u1\"]", "[\"x\"]")]),
            params("m3", &[("[\"q\",\"u1\"]", "[\"y\"]")]),
        ],
    ));
    assert_eq!(
        f.storage.lookup(f.version, &f.latest(), &keys).unwrap()[0],
        ["[\"y\"]"]
    );
}

fn evaluated_rules_output_applies_end_to_end<S: TestStorage>() {
    use syncgate_rules::{CompileOptions, RowEvaluation, SourceTable, SqliteValue, compile};
    let rules = compile(
        r#"
bucket_definitions:
  by_list:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT * FROM todos WHERE list_id = bucket.list_id
"#,
        &CompileOptions::default(),
    )
    .rules
    .expect("rules compile");
    let f = Fixture::<S>::new();
    let evaluate = |table: &SourceTable, values: &[&str]| {
        let values: Vec<_> = values.iter().map(|v| SqliteValue::text(*v)).collect();
        let plan = rules.plan_table(table);
        let mut evaluation = RowEvaluation::default();
        rules.evaluate_row(&plan, &values, &mut evaluation);
        let (mut entries, mut errors) = (Vec::new(), Vec::new());
        rules.evaluate_parameter_row(&plan, &values, &mut entries, &mut errors);
        assert!(errors.is_empty() && evaluation.errors.is_empty());
        let key = SourceRowKey {
            table: format!("{}.{}", table.schema, table.name),
            key: values[0].as_text().unwrap().to_owned(),
        };
        RowChange::from_evaluation(key, &plan, &evaluation, &entries, None)
    };
    let lists = SourceTable::new("public", "lists", &["id", "owner_id"]);
    let todos = SourceTable::new("public", "todos", &["id", "list_id"]);
    let list = evaluate(&lists, &["l1", "u1"]);
    assert_eq!(list.parameters.as_ref().map(Vec::len), Some(1));
    assert_eq!(list.placements, None, "lists feed no data query");
    let todo = evaluate(&todos, &["t1", "l1"]);
    assert_eq!(todo.parameters, None, "todos feed no parameter query");
    let placements = todo.placements.clone().unwrap();
    assert_eq!(placements.len(), 1);
    let bucket = placements[0].bucket.clone();
    f.apply(txn(10, vec![list.clone(), todo]));
    let found = f
        .storage
        .lookup(
            f.version,
            &f.latest(),
            &[list.parameters.as_ref().unwrap()[0].lookup_key.clone()],
        )
        .unwrap();
    assert_eq!(found, [vec![r#"["l1"]"#.to_owned()]]);
    assert_eq!(f.kinds(bucket.as_str()), [OpType::Put]);
    // The todo moves to another list: it leaves the first list's bucket.
    f.apply(txn(20, vec![evaluate(&todos, &["t1", "l2"])]));
    assert_eq!(f.kinds(bucket.as_str()), [OpType::Put, OpType::Remove]);
}

fn write_checkpoints_by_user_client_and_lsn<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let user = UserId("u1".into());
    let client = ClientId("c1".into());
    let s = &f.storage;
    let w1 = s.create_write_checkpoint(&user, Some(&client), Lsn(100)).unwrap();
    let w2 = s.create_write_checkpoint(&user, Some(&client), Lsn(200)).unwrap();
    assert!(w2 > w1);
    assert_eq!(
        s.write_checkpoint_for(&user, Some(&client), Lsn(99)).unwrap(),
        None
    );
    assert_eq!(
        s.write_checkpoint_for(&user, Some(&client), Lsn(150)).unwrap(),
        Some(w1)
    );
    assert_eq!(
        s.write_checkpoint_for(&user, Some(&client), Lsn(200)).unwrap(),
        Some(w2)
    );
    assert_eq!(s.write_checkpoint_for(&user, None, Lsn(200)).unwrap(), None);
    assert_eq!(
        s.write_checkpoint_for(&UserId("u2".into()), Some(&client), Lsn(200))
            .unwrap(),
        None
    );
}

fn versions_activate_atomically<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let s = &f.storage;
    assert_eq!(s.active_version().unwrap().unwrap().version, f.version);
    let v2 = s.create_version("rules 2").unwrap();
    assert_eq!(s.active_version().unwrap().unwrap().version, f.version);
    s.activate(v2).unwrap();
    let active = s.active_version().unwrap().unwrap();
    assert_eq!(
        (active.version, active.rules.as_str(), active.state),
        (v2, "rules 2", VersionState::Active)
    );
    assert!(matches!(
        s.activate(RulesVersion(1)),
        Err(StorageError::UnknownVersion(RulesVersion(1)))
    ));
    // The retired version can go, the active one cannot.
    assert!(matches!(
        s.delete_version(v2),
        Err(StorageError::VersionActive(_))
    ));
    f.apply(txn(10, vec![set("1", vec![place("a", "t1", "{}")])]));
    s.delete_version(f.version).unwrap();
    assert!(matches!(
        s.latest_checkpoint(f.version),
        Err(StorageError::UnknownVersion(_))
    ));
    assert!(f.ops("a").is_empty());
    assert_eq!(s.active_version().unwrap().unwrap().version, v2);
}

#[test]
fn the_file_is_in_wal_mode_with_16_kib_pages() {
    let f = Fixture::<SqliteStorage>::new();
    let conn = rusqlite::Connection::open(f.storage.path()).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert_eq!(page_size, 16_384);
}

#[test]
fn processes_opening_a_new_file_at_once_all_open_it() {
    // A gateway creating its storage while `inspect` (or a test) opens the same new file: switching the
    // file to WAL needs it alone, and SQLite answers BUSY there without waiting (found as a CI flake).
    for round in 0..100 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.sqlite");
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        SqliteStorage::open(&path)
                    })
                })
                .collect();
            for handle in opened {
                if let Err(error) = handle.join().unwrap() {
                    panic!("round {round}: {error}");
                }
            }
        });
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
}

fn state_survives_reopen<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let cp = f
        .apply(txn(10, vec![set("1", vec![place("a", "t1", "{}")])]))
        .unwrap();
    let ops = f.ops("a");
    let sum = f.summary(cp, "a");
    let f = f.reopen();
    assert_eq!(
        f.latest(),
        Checkpoint {
            op_id: cp,
            lsn: Lsn(10)
        }
    );
    assert_eq!(f.ops("a"), ops);
    assert_eq!(f.summary(cp, "a"), sum);
    // Row state survived too: an unchanged row writes nothing, a deletion removes.
    f.apply(txn(20, vec![set("1", vec![place("a", "t1", "{}")])]));
    f.apply(txn(30, vec![RowChange::delete(row("1"))]));
    assert_eq!(f.kinds("a"), [OpType::Put, OpType::Remove]);
}

#[test]
fn readers_and_the_writer_do_not_block_each_other() {
    let f = Fixture::<SqliteStorage>::new();
    let cp = f
        .apply(txn(10, vec![set("1", vec![place("a", "t1", "{}")])]))
        .unwrap();
    // Another connection holds an open write transaction: storage reads still answer at once (WAL).
    let mut other = rusqlite::Connection::open(f.storage.path()).unwrap();
    let tx = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    tx.execute("UPDATE meta SET value = value WHERE key = 'next_version'", [])
        .unwrap();
    assert_eq!(f.latest().op_id, cp);
    assert_eq!(f.ops("a").len(), 1);
    tx.rollback().unwrap();
    // A connection holding a read transaction does not stop the replicator, and keeps its snapshot.
    let mut reader = rusqlite::Connection::open(f.storage.path()).unwrap();
    let rtx = reader.transaction().unwrap();
    let count = |c: &rusqlite::Connection| -> i64 {
        c.query_row("SELECT COALESCE(SUM(count), 0) FROM op_segments", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(count(&rtx), 1);
    f.apply(txn(20, vec![set("2", vec![place("a", "t2", "{}")])]))
        .unwrap();
    assert_eq!(count(&rtx), 1);
    rtx.commit().unwrap();
    assert_eq!(f.ops("a").len(), 2);
}

fn an_empty_transaction_moves_the_checkpoint_lsn_only<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let cp = f
        .apply(txn(10, vec![set("1", vec![place("a", "t1", "{}")])]))
        .unwrap();
    assert_eq!(f.apply(txn(15, Vec::new())), Some(cp));
    assert_eq!(
        f.latest(),
        Checkpoint {
            op_id: cp,
            lsn: Lsn(15)
        }
    );
    let fresh = f.storage.create_version("v2").unwrap();
    assert_eq!(f.storage.latest_checkpoint(fresh).unwrap(), None);
    assert_eq!(
        f.storage.apply(fresh, &txn(5, Vec::new())).unwrap(),
        Some(OpId::ZERO)
    );
    assert!(matches!(
        f.storage.apply(RulesVersion(7), &txn(5, Vec::new())),
        Err(StorageError::UnknownVersion(_))
    ));
}

#[test]
fn only_busy_and_locked_are_retryable() {
    let sqlite = |code| {
        StorageError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    };
    assert!(sqlite(rusqlite::ffi::SQLITE_BUSY).is_retryable());
    assert!(sqlite(rusqlite::ffi::SQLITE_LOCKED).is_retryable());
    assert!(!sqlite(rusqlite::ffi::SQLITE_CORRUPT).is_retryable());
    assert!(!StorageError::UnknownVersion(RulesVersion(1)).is_retryable());
}

#[test]
fn a_newer_file_format_is_refused() {
    let f = Fixture::<SqliteStorage>::new();
    let path = f.storage.path().to_path_buf();
    drop(f.storage);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStorage::open(&path),
        Err(StorageError::FormatTooNew { found: 99, .. })
    ));
}

fn compaction_matches_the_spec_example<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let put = |done| format!(r#"{{"id":"t1","description":"Buy milk","done":{done}}}"#);
    f.apply(txn(10, vec![set("1", vec![place("a", "t1", &put(0))])]));
    f.apply(txn(20, vec![set("1", vec![place("a", "t1", &put(1))])]));
    let last = f.apply(txn(30, vec![RowChange::delete(row("1"))])).unwrap();
    let before = f.summary(last, "a");
    f.storage.compact(f.version, OpId::MAX).unwrap();
    let ops = f.ops("a");
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].entry.op, OpType::Clear);
    assert_eq!(ops[0].entry.op_id, last);
    assert_eq!(ops[0].entry.checksum, before.checksum);
    assert_eq!(ops[0].target_op, Some(last));
    let after = f.summary(last, "a");
    assert_eq!((after.checksum, after.count), (before.checksum, 1));
}

/// Net rows of a bucket as a client would hold them after receiving `ops`.
fn replay(ops: &[StoredOp]) -> BTreeMap<(String, String, String), String> {
    let mut rows = BTreeMap::new();
    for op in ops {
        let e = &op.entry;
        let key = || {
            (
                e.object_type.clone().unwrap(),
                e.object_id.clone().unwrap(),
                e.subkey.clone().unwrap().0,
            )
        };
        match e.op {
            OpType::Put => {
                rows.insert(key(), e.data.clone().unwrap());
            }
            OpType::Remove => {
                rows.remove(&key());
            }
            OpType::Move => {}
            OpType::Clear => rows.clear(),
        }
    }
    rows
}

const BUCKETS: [&str; 3] = ["a", "b", "c"];

/// An op with its id relative to the latest checkpoint: (distance, op, object id, data, checksum).
type RelativeOp = (u64, OpType, Option<String>, Option<String>, u32);

#[derive(Debug, Clone)]
enum Change {
    Set { row: u8, buckets: Vec<usize>, data: u8 },
    Delete { row: u8 },
}

fn change_strategy() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0u8..4, proptest::sample::subsequence(vec![0usize, 1, 2], 0..=3), 0u8..3)
            .prop_map(|(row, buckets, data)| Change::Set { row, buckets, data }),
        1 => (0u8..4).prop_map(|row| Change::Delete { row }),
    ]
}

fn to_row_change(change: &Change) -> RowChange {
    match change {
        Change::Set {
            row: r,
            buckets,
            data,
        } => set(
            &r.to_string(),
            buckets
                .iter()
                .map(|&i| place(BUCKETS[i], &format!("t{r}"), &format!(r#"{{"v":{data}}}"#)))
                .collect(),
        ),
        Change::Delete { row: r } => RowChange::delete(row(&r.to_string())),
    }
}

/// Writes are batched into multi-row statements within a storage transaction: a batch must store
/// exactly what the same transactions applied one at a time store, also when rows repeat and the
/// statements fill up (more ops and rows than one statement holds).
fn a_batch_stores_what_single_transactions_store<S: TestStorage>(
    txns: Vec<Vec<Change>>,
    spread: u8,
) -> Result<(), TestCaseError> {
    let txns: Vec<SourceTransaction> = txns
        .iter()
        .enumerate()
        .map(|(i, changes)| {
            let changes = changes
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    // Spread keys so that some rows repeat and most do not.
                    let mut c = to_row_change(c);
                    let k = u8::try_from(j % usize::from(spread)).unwrap();
                    c.row.key = format!("{}-{k}", c.row.key);
                    c
                })
                .collect();
            txn(10 * (u64::try_from(i).unwrap() + 1), changes)
        })
        .collect();
    batch_matches_single_transactions::<S>(&[], &txns, &[])
}

/// Applies `before` one transaction at a time to two fresh storages, then `txns` one at a time to the
/// first and as one batch to the second, then `after` one at a time to both (what the batch stored is
/// what they diff against); both must hold the same ops and source rows.
fn batch_matches_single_transactions<S: TestStorage>(
    before: &[SourceTransaction],
    txns: &[SourceTransaction],
    after: &[SourceTransaction],
) -> Result<(), TestCaseError> {
    let (one, batched) = (Fixture::<S>::new(), Fixture::<S>::new());
    for t in before {
        one.storage.apply(one.version, t).unwrap();
        batched.storage.apply(batched.version, t).unwrap();
    }
    for t in txns {
        one.storage.apply(one.version, t).unwrap();
    }
    batched.storage.apply_batch(batched.version, txns).unwrap();
    for t in after {
        one.storage.apply(one.version, t).unwrap();
        batched.storage.apply(batched.version, t).unwrap();
    }
    // Op ids differ (each file seeds its own sequence); compare ops relative to the first.
    let relative = |f: &Fixture<S>, bucket: &str| -> Vec<RelativeOp> {
        let base = f
            .storage
            .latest_checkpoint(f.version)
            .unwrap()
            .map_or(0, |c| c.op_id.get());
        f.ops(bucket)
            .iter()
            .map(|o| {
                (
                    base - o.entry.op_id.get(),
                    o.entry.op,
                    o.entry.object_id.clone(),
                    o.entry.data.clone(),
                    o.entry.checksum.as_u32(),
                )
            })
            .collect()
    };
    for bucket in BUCKETS {
        prop_assert_eq!(relative(&one, bucket), relative(&batched, bucket));
    }
    let keys = |f: &Fixture<S>| f.storage.source_row_keys(f.version, "public.todos").unwrap();
    prop_assert_eq!(keys(&one), keys(&batched));
    Ok(())
}

/// A batch of more rows than one of the Postgres storage's pipelined state reads or updates covers
/// (`PIPELINE_CHUNK`, 2,000), over rows stored before it: rows repeating across its chunks and its
/// transactions, moving between buckets, deleted, new and unchanged.
fn a_large_batch_stores_what_single_transactions_store<S: TestStorage>() {
    let change = |r: usize, variant: usize| -> RowChange {
        let key = r.to_string();
        if variant.is_multiple_of(23) {
            return RowChange::delete(row(&key));
        }
        let data = format!(r#"{{"v":{}}}"#, variant % 3);
        let buckets = &BUCKETS[variant % 2..=(1 + variant % 2)];
        set(
            &key,
            buckets
                .iter()
                .map(|&b| place(b, &format!("t{r}"), &data))
                .collect(),
        )
    };
    let before = vec![txn(10, (0..5_000).map(|r| change(r, 1)).collect())];
    let txns: Vec<SourceTransaction> = (0..3)
        .map(|t| {
            let changes = (0..3_000)
                .map(|i| change((i * 7 + t * 1_013) % 6_000, i + t))
                .collect();
            txn(20 + 10 * u64::try_from(t).unwrap(), changes)
        })
        .collect();
    let after = vec![txn(100, (0..6_000).map(|r| change(r, 2)).collect())];
    batch_matches_single_transactions::<S>(&before, &txns, &after).unwrap();
}

fn compaction_keeps_checksums_and_net_rows<S: TestStorage>(
    txns: Vec<Vec<Change>>,
    later: Vec<Change>,
    cut: proptest::sample::Index,
) -> Result<(), TestCaseError> {
    let f = Fixture::<S>::new();
    let mut checkpoints = Vec::new();
    for (i, changes) in txns.iter().enumerate() {
        let lsn = 10 * (u64::try_from(i).unwrap() + 1);
        checkpoints.push(
            f.apply(txn(lsn, changes.iter().map(to_row_change).collect()))
                .unwrap(),
        );
    }
    // First a partial compaction: checksums stay at every checkpoint at or above its limit.
    let limit = *cut.get(&checkpoints);
    let at_or_above: Vec<_> = checkpoints
        .iter()
        .filter(|c| **c >= limit)
        .map(|c| (*c, BUCKETS.map(|bk| f.summary(*c, bk).checksum)))
        .collect();
    let untouched: Vec<_> = BUCKETS
        .iter()
        .map(|bk| {
            f.ops(bk)
                .into_iter()
                .filter(|o| o.entry.op_id > limit)
                .collect::<Vec<_>>()
        })
        .collect();
    f.storage.compact(f.version, limit).unwrap();
    for (c, sums) in &at_or_above {
        prop_assert_eq!(&BUCKETS.map(|bk| f.summary(*c, bk).checksum), sums);
    }
    for (bk, ops) in BUCKETS.iter().zip(&untouched) {
        let now: Vec<_> = f.ops(bk).into_iter().filter(|o| o.entry.op_id > limit).collect();
        prop_assert_eq!(&now, ops, "ops above the limit are not rewritten");
    }
    let cp = f.latest();
    let before: Vec<_> = BUCKETS
        .iter()
        .map(|bk| (f.summary(cp.op_id, bk), f.ops(bk)))
        .collect();
    f.storage.compact(f.version, OpId::MAX).unwrap();
    for (bk, (summary, old_ops)) in BUCKETS.iter().zip(&before) {
        let ops = f.ops(bk);
        let after = f.summary(cp.op_id, bk);
        prop_assert_eq!(after.checksum, summary.checksum);
        prop_assert_eq!(after.count, u64::try_from(ops.len()).unwrap());
        prop_assert!(ops.len() <= old_ops.len());
        prop_assert_eq!(
            ops.iter().map(|o| o.entry.checksum).sum::<Checksum>(),
            summary.checksum
        );
        prop_assert_eq!(replay(&ops), replay(old_ops));
        let original: BTreeMap<OpId, &StoredOp> = old_ops.iter().map(|o| (o.entry.op_id, o)).collect();
        for op in &ops {
            if let Some(target) = op.target_op {
                prop_assert!(target <= cp.op_id, "targets are published");
            }
            let was = &original[&op.entry.op_id].entry;
            // A PUT/REMOVE turned into MOVE by this run points at a later op of the same row. (A MOVE
            // from the partial run may point at an op that is now itself a MOVE: the chain leads on.)
            if op.entry.op == OpType::Move && matches!(was.op, OpType::Put | OpType::Remove) {
                let target = &original[&op.target_op.unwrap()].entry;
                prop_assert!(target.op_id > was.op_id);
                prop_assert_eq!(
                    (&target.object_type, &target.object_id, &target.subkey),
                    (&was.object_type, &was.object_id, &was.subkey)
                );
            }
        }
    }
    // Replication continues on top of compacted buckets: running sums still match the ops.
    if !later.is_empty() {
        f.apply(txn(1_000, later.iter().map(to_row_change).collect()));
    }
    let cp = f.latest();
    for bk in BUCKETS {
        let ops = f.ops(bk);
        let summary = f.summary(cp.op_id, bk);
        prop_assert_eq!(
            summary.checksum,
            ops.iter().map(|o| o.entry.checksum).sum::<Checksum>()
        );
        prop_assert_eq!(summary.count, u64::try_from(ops.len()).unwrap());
    }
    // Compacting twice is stable.
    f.storage.compact(f.version, OpId::MAX).unwrap();
    f.storage.compact(f.version, OpId::MAX).unwrap();
    for bk in BUCKETS {
        prop_assert_eq!(
            f.summary(cp.op_id, bk).checksum,
            f.ops(bk).iter().map(|o| o.entry.checksum).sum::<Checksum>()
        );
    }
    Ok(())
}

fn param_change(key: &str, entries: &[(&str, &str)]) -> RowChange {
    RowChange {
        row: row(key),
        placements: None,
        parameters: Some(
            entries
                .iter()
                .map(|(k, v)| ParameterRow {
                    lookup_key: (*k).into(),
                    values_json: (*v).into(),
                })
                .collect(),
        ),
        source_row: None,
    }
}

fn progress(resume_after: Option<&str>, done: bool, lsn: u64) -> TableSnapshot {
    TableSnapshot {
        table: "public.todos".into(),
        resume_after: resume_after.map(Into::into),
        done,
        lsn: Lsn(lsn),
    }
}

fn a_batch_records_a_checkpoint_per_transaction_and_skips_stored_lsns<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let first = f
        .apply(txn(10, vec![set("1", vec![place("a", "t1", r#"{"v":1}"#)])]))
        .unwrap();
    let batch = [
        // Already applied: skipped.
        txn(10, vec![set("1", vec![place("a", "t1", r#"{"v":9}"#)])]),
        // A keepalive first in what the batch applies: its checkpoint keeps the op id before the batch.
        txn(12, Vec::new()),
        txn(20, vec![set("1", vec![place("a", "t1", r#"{"v":2}"#)])]),
        // Not above the previous transaction of the same batch: skipped too.
        txn(15, vec![set("9", vec![place("a", "t9", "{}")])]),
        txn(30, vec![set("2", vec![place("b", "t2", "{}")])]),
        txn(40, Vec::new()),
    ];
    let latest = f.storage.apply_batch(f.version, &batch).unwrap().unwrap();
    assert_eq!(latest, f.latest());
    assert_eq!(latest.lsn, Lsn(40));
    let (a, b_ops) = (f.ops("a"), f.ops("b"));
    assert_eq!(a.len(), 2, "the skipped transactions wrote nothing");
    assert_eq!(a[1].entry.data.as_deref(), Some(r#"{"v":2}"#));
    assert_eq!(b_ops.len(), 1);
    assert_eq!(
        latest.op_id, b_ops[0].entry.op_id,
        "the empty txn keeps the op id"
    );
    // Each applied transaction is a checkpoint of its own: checksums at the first one exclude later ops.
    let at20 = a[1].entry.op_id;
    assert!(at20 > first && at20 < latest.op_id);
    assert_eq!(f.summary(at20, "b").count, 0);
    assert_eq!(f.summary(at20, "a").count, 2);
    assert_eq!(f.summary(first, "a").count, 1);
    let checkpoints: Vec<(i64, i64)> = f
        .rows(&format!(
            "SELECT lsn, op_id FROM checkpoints WHERE version = {} ORDER BY lsn",
            f.version
        ))
        .into_iter()
        .map(|r| (r[0], r[1]))
        .collect();
    assert_eq!(
        checkpoints,
        [
            (10, first.as_i64()),
            (12, first.as_i64()),
            (20, at20.as_i64()),
            (30, latest.op_id.as_i64()),
            (40, latest.op_id.as_i64())
        ]
    );
    // Everything already stored: nothing applied.
    assert_eq!(f.storage.apply_batch(f.version, &batch).unwrap(), None);
    assert_eq!(f.storage.apply_batch(f.version, &[]).unwrap(), None);
}

fn a_failing_batch_applies_nothing<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let before = f
        .apply(txn(10, vec![set("1", vec![place("a", "t1", "{}")])]))
        .unwrap();
    let batch = [
        txn(20, vec![set("2", vec![place("a", "t2", "{}")])]),
        // An LSN beyond SQLite's integers fails after the first transaction was written.
        txn(u64::MAX, vec![set("3", vec![place("a", "t3", "{}")])]),
    ];
    assert!(matches!(
        f.storage.apply_batch(f.version, &batch),
        Err(StorageError::OutOfRange { .. })
    ));
    assert_eq!(
        f.latest(),
        Checkpoint {
            op_id: before,
            lsn: Lsn(10)
        }
    );
    assert_eq!(f.ops("a").len(), 1);
    assert_eq!(f.summary(before, "a").count, 1);
    // The op-id sequence was not advanced either: the next op follows on.
    let next = f
        .apply(txn(20, vec![set("2", vec![place("a", "t2", "{}")])]))
        .unwrap();
    assert_eq!(next.get(), before.get() + 1);
}

fn an_unstored_snapshot_chunk_stores_what_a_transaction_stores<S: TestStorage>() {
    // 40 buckets: more closed segments than one multi-row segment insert holds; 1,100 ops in one bucket:
    // a segment closed while the chunk is written. A repeated row, a parameter row.
    let mut changes: Vec<RowChange> = (0..1_100)
        .map(|i| {
            let id = format!("t{i}");
            let data = format!(r#"{{"v":{i}}}"#);
            set(
                &i.to_string(),
                vec![
                    place("all", &id, &data),
                    place(&format!("b{}", i % 40), &id, &data),
                ],
            )
        })
        .collect();
    changes.push(set("7", vec![place("b0", "t7", r#"{"v":"again"}"#)]));
    changes.push(param_change("m1", &[("k", "[\"l1\"]")]));
    let snapshot = Fixture::<S>::new();
    snapshot
        .storage
        .apply_snapshot_chunk(
            snapshot.version,
            &SnapshotChunk::new(changes.clone()).assume_unstored(),
            &progress(None, true, 7),
        )
        .unwrap();
    let streamed = Fixture::<S>::new();
    streamed.apply(txn(10, changes.clone()));
    let buckets: Vec<String> = (0..40).map(|i| format!("b{i}")).chain(["all".into()]).collect();
    for bucket in &buckets {
        // Op ids start at each file's clock: compare everything else.
        let entries = |f: &Fixture<S>| -> Vec<OplogEntry> {
            f.ops(bucket)
                .into_iter()
                .map(|o| OplogEntry {
                    op_id: OpId::ZERO,
                    ..o.entry
                })
                .collect()
        };
        assert_eq!(entries(&snapshot), entries(&streamed), "bucket {bucket}");
    }
    // 1,100 PUTs and the REMOVE of row 7, which the repeat moved to b0 alone.
    assert_eq!(snapshot.kinds("all").len(), 1_101);
    let (at, keys) = (streamed.latest(), ["k".to_owned()]);
    let found = streamed.storage.lookup(streamed.version, &at, &keys).unwrap();
    assert_eq!(found, [["[\"l1\"]".to_owned()]]);
    assert_eq!(
        snapshot.storage.lookup(snapshot.version, &at, &keys).unwrap(),
        found
    );
    // Unchanged rows streamed after the snapshot write no op.
    let before = snapshot.ops("all").len();
    snapshot.apply(txn(20, changes[..7].to_vec()));
    assert_eq!(snapshot.ops("all").len(), before);
}

fn snapshot_chunks_store_rows_progress_and_parameters_visible_everywhere<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let s = &f.storage;
    assert!(s.snapshot_progress(f.version).unwrap().is_empty());
    let chunk = SnapshotChunk::new(vec![
        set("1", vec![place("a", "t1", r#"{"v":1}"#)]),
        set("2", vec![place("a", "t2", "{}"), place("b", "t2", "{}")]),
        param_change("m1", &[("k", "[\"l1\"]")]),
    ]);
    assert!(s.writes_are_durable(), "durable commits");
    s.apply_snapshot_chunk(f.version, &chunk, &progress(Some("2"), false, 7))
        .unwrap();
    // Chunks commit without waiting for their flush; every other write waits again.
    assert!(s.writes_are_durable(), "durable commits after a chunk");
    assert_eq!(
        s.snapshot_progress(f.version).unwrap(),
        [progress(Some("2"), false, 7)]
    );
    assert_eq!(s.latest_checkpoint(f.version).unwrap(), None, "no checkpoint");
    assert_eq!(f.kinds("a"), [OpType::Put, OpType::Put]);
    // Replaying the chunk (a crash before the progress was seen) writes nothing new.
    s.apply_snapshot_chunk(f.version, &chunk, &progress(Some("2"), false, 7))
        .unwrap();
    assert_eq!(f.ops("a").len(), 2);
    assert_eq!(f.ops("b").len(), 1);
    // A re-copied row that changed is diffed like a streamed one.
    s.apply_snapshot_chunk(
        f.version,
        &SnapshotChunk::new(vec![set("1", vec![place("b", "t1", r#"{"v":1}"#)])]),
        &progress(None, true, 9),
    )
    .unwrap();
    assert_eq!(f.kinds("a"), [OpType::Put, OpType::Put, OpType::Remove]);
    assert_eq!(s.snapshot_progress(f.version).unwrap(), [progress(None, true, 9)]);
    // A row twice in one chunk: the second is diffed against the first.
    s.apply_snapshot_chunk(
        f.version,
        &SnapshotChunk::new(vec![
            set("4", vec![place("c", "t4", "{}")]),
            set("4", vec![place("b", "t4", "{}")]),
        ]),
        &progress(None, true, 9),
    )
    .unwrap();
    assert_eq!(f.kinds("c"), [OpType::Put, OpType::Remove]);
    let snapshot_last = f.ops("b").last().unwrap().entry.op_id;
    // The first streamed transaction's checkpoint covers the snapshot ops, whatever its own changes.
    let cp = f.apply(txn(100, Vec::new())).unwrap();
    assert_eq!(cp, snapshot_last);
    let sum = f.summary(cp, "a");
    assert_eq!(sum.count, 3);
    assert_eq!(
        sum.checksum,
        f.ops("a").iter().map(|o| o.entry.checksum).sum::<Checksum>()
    );
    let later = f
        .apply(txn(110, vec![set("3", vec![place("a", "t3", "{}")])]))
        .unwrap();
    assert!(later > cp);
    // Snapshot parameter entries have no LSN: visible at every checkpoint, even one below the snapshot.
    let early = Checkpoint {
        op_id: cp,
        lsn: Lsn(1),
    };
    assert_eq!(
        s.lookup(f.version, &early, &["k".to_owned()]).unwrap(),
        [vec!["[\"l1\"]".to_owned()]]
    );
    let v2 = s.create_version("v2").unwrap();
    assert!(s.snapshot_progress(v2).unwrap().is_empty());
    assert!(matches!(
        s.apply_snapshot_chunk(
            RulesVersion(7),
            &SnapshotChunk::new(vec![]),
            &progress(None, false, 1)
        ),
        Err(StorageError::UnknownVersion(_))
    ));
}

fn a_table_feeding_one_half_leaves_the_other_alone<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let both = RowChange {
        row: row("1"),
        placements: Some(vec![place("a", "t1", "{}")]),
        parameters: Some(vec![ParameterRow {
            lookup_key: "k".into(),
            values_json: "[1]".into(),
        }]),
        source_row: None,
    };
    f.apply(txn(10, vec![both]));
    // Only the data half: the parameter entry stays.
    f.apply(txn(20, vec![set("1", vec![place("a", "t1", r#"{"v":2}"#)])]));
    let keys = ["k".to_owned()];
    assert_eq!(
        f.storage.lookup(f.version, &f.latest(), &keys).unwrap(),
        [vec!["[1]".to_owned()]]
    );
    // Only the parameter half: the placement stays.
    f.apply(txn(30, vec![param_change("1", &[])]));
    assert_eq!(f.kinds("a"), [OpType::Put, OpType::Put]);
    assert_eq!(
        f.storage.lookup(f.version, &f.latest(), &keys).unwrap(),
        [Vec::<String>::new()]
    );
}

fn replication_state_round_trips<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let s = &f.storage;
    assert_eq!(
        s.replication_state(f.version).unwrap(),
        ReplicationState::default()
    );
    let state = ReplicationState {
        slot_name: Some("syncgate_1".into()),
        start_lsn: Some(Lsn(0x16_B374_D848)),
        snapshot_done_lsn: None,
    };
    s.set_replication_state(f.version, &state).unwrap();
    assert_eq!(s.replication_state(f.version).unwrap(), state);
    let done = ReplicationState {
        snapshot_done_lsn: Some(Lsn(0x17_0000_0000)),
        ..state
    };
    s.set_replication_state(f.version, &done).unwrap();
    let f = f.reopen();
    assert_eq!(f.storage.replication_state(f.version).unwrap(), done);
    assert!(matches!(
        f.storage.replication_state(RulesVersion(7)),
        Err(StorageError::UnknownVersion(_))
    ));
    assert!(matches!(
        f.storage
            .set_replication_state(RulesVersion(7), &ReplicationState::default()),
        Err(StorageError::UnknownVersion(_))
    ));
}

fn source_rows_are_set_overwritten_and_deleted<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let with_source = |key: &str, source: Option<&str>| RowChange {
        source_row: source.map(Into::into),
        ..set(key, vec![place("a", key, "{}")])
    };
    let s = &f.storage;
    assert_eq!(s.source_row(f.version, &row("1")).unwrap(), None);
    f.apply(txn(
        10,
        vec![with_source("1", Some("v1")), with_source("2", Some("w1"))],
    ));
    assert_eq!(s.source_row(f.version, &row("1")).unwrap().as_deref(), Some("v1"));
    f.apply(txn(20, vec![with_source("1", Some("v2"))]));
    assert_eq!(s.source_row(f.version, &row("1")).unwrap().as_deref(), Some("v2"));
    f.apply(txn(30, vec![RowChange::delete(row("1"))]));
    assert_eq!(s.source_row(f.version, &row("1")).unwrap(), None);
    assert_eq!(s.source_row(f.version, &row("2")).unwrap().as_deref(), Some("w1"));
    // Snapshot chunks store them too; versions do not share them.
    s.apply_snapshot_chunk(
        f.version,
        &SnapshotChunk::new(vec![with_source("3", Some("x"))]),
        &progress(None, true, 1),
    )
    .unwrap();
    assert_eq!(s.source_row(f.version, &row("3")).unwrap().as_deref(), Some("x"));
    let v2 = s.create_version("v2").unwrap();
    assert_eq!(s.source_row(v2, &row("3")).unwrap(), None);
}

fn versions_are_listed_oldest_first<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let s = &f.storage;
    let v2 = s.create_version("rules 2").unwrap();
    let listed = s.versions().unwrap();
    assert_eq!(
        listed,
        [
            SyncRulesVersion {
                version: f.version,
                rules: "bucket_definitions: {}".into(),
                state: VersionState::Active
            },
            SyncRulesVersion {
                version: v2,
                rules: "rules 2".into(),
                state: VersionState::Building
            }
        ]
    );
    s.activate(v2).unwrap();
    assert_eq!(
        s.versions().unwrap().iter().map(|v| v.state).collect::<Vec<_>>(),
        [VersionState::Retired, VersionState::Active]
    );
}

fn deleting_a_version_removes_its_snapshot_and_replication_rows<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let s = &f.storage;
    let v2 = s.create_version("v2").unwrap();
    let change = RowChange {
        source_row: Some("src".into()),
        ..set("1", vec![place("a", "t1", "{}")])
    };
    for v in [f.version, v2] {
        s.apply_snapshot_chunk(
            v,
            &SnapshotChunk::new(vec![change.clone()]),
            &progress(Some("1"), false, 5),
        )
        .unwrap();
        s.set_replication_state(
            v,
            &ReplicationState {
                slot_name: Some(format!("slot_{v}")),
                ..ReplicationState::default()
            },
        )
        .unwrap();
    }
    s.activate(v2).unwrap();
    s.delete_version(f.version).unwrap();
    let count = |table: &str| -> i64 {
        f.rows(&format!(
            "SELECT COUNT(*) FROM {table} WHERE version = {}",
            f.version
        ))[0][0]
    };
    for table in ["snapshot_progress", "source_state", "sync_rules", "buckets"] {
        assert_eq!(count(table), 0, "{table}");
    }
    // Ops of the deleted version's buckets are gone; the other version's one op stays.
    // (A cast: Postgres sums bigints to numeric.)
    let ops = f.rows("SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM op_segments")[0][0];
    assert_eq!(ops, 1);
    // The other version keeps its own.
    assert_eq!(s.snapshot_progress(v2).unwrap().len(), 1);
    assert_eq!(s.source_row(v2, &row("1")).unwrap().as_deref(), Some("src"));
    assert_eq!(
        s.replication_state(v2).unwrap().slot_name.as_deref(),
        Some(format!("slot_{v2}").as_str())
    );
    assert_eq!(s.versions().unwrap().len(), 1);
}

#[test]
fn a_format_1_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buckets.db");
    // A file as the first release wrote it: migration 1 only, one version with a row and a checkpoint.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL").unwrap();
        conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            .unwrap();
        conn.execute_batch(sqlite::MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "INSERT INTO meta (key, value) VALUES ('next_op_id', 1000), ('next_write_checkpoint_id', 1),
                 ('next_version', 6);
             INSERT INTO schema_version (version) VALUES (1);
             INSERT INTO sync_rules (version, rules, state, last_op_id, last_lsn) VALUES (5, 'old', 'active', 999, 10);
             INSERT INTO checkpoints (version, lsn, op_id) VALUES (5, 10, 999);
             INSERT INTO ops (op_id, version, bucket, op, object_type, object_id, subkey, data, checksum)
                 VALUES (999, 5, 'a', 'PUT', 'todos', 't1', 'x', '{}', 7);
             INSERT INTO bucket_state (version, bucket, checksum, count, last_op) VALUES (5, 'a', 7, 1, 999);
             INSERT INTO current_rows (version, source_table, source_key, bucket, object_type, object_id, put_op)
                 VALUES (5, 'public.todos', '1', 'a', 'todos', 't1', 999);",
        )
        .unwrap();
    }
    let storage = SqliteStorage::open(&path).unwrap();
    let version = RulesVersion(5);
    let format: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(format, i64::try_from(sqlite::MIGRATIONS.len()).unwrap());
    assert_eq!(
        storage.versions().unwrap(),
        [SyncRulesVersion {
            version,
            rules: "old".into(),
            state: VersionState::Active
        }]
    );
    assert_eq!(
        storage.replication_state(version).unwrap(),
        ReplicationState::default()
    );
    assert!(storage.snapshot_progress(version).unwrap().is_empty());
    assert_eq!(
        storage.latest_checkpoint(version).unwrap(),
        Some(Checkpoint {
            op_id: OpId::from_i64(999).unwrap(),
            lsn: Lsn(10)
        })
    );
    // The old row state carries on: deleting the row removes it from its bucket.
    let removed = storage
        .apply(
            version,
            &txn(
                20,
                vec![RowChange {
                    source_row: Some("src".into()),
                    ..RowChange::delete(row("1"))
                }],
            ),
        )
        .unwrap()
        .unwrap();
    assert_eq!(removed.as_i64(), 1000);
    assert_eq!(
        storage.source_row(version, &row("1")).unwrap().as_deref(),
        Some("src")
    );
    drop(storage);
    // Opening again finds nothing to migrate.
    let storage = SqliteStorage::open(&path).unwrap();
    assert_eq!(storage.versions().unwrap().len(), 1);
}

#[test]
fn a_format_2_file_keeps_its_placements_data_and_source_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buckets.db");
    let put = |id: &str, data: &str| i64::from(Checksum::of_put("todos", id, data).as_u32());
    // Format 2 as written before integer bucket ids: row 1 in buckets a and b, row 2 in a, row 3 only a
    // stored source row.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            .unwrap();
        conn.execute_batch(sqlite::MIGRATIONS[0]).unwrap();
        conn.execute_batch(sqlite::MIGRATIONS[1]).unwrap();
        conn.execute_batch(
            "INSERT INTO meta (key, value) VALUES ('next_op_id', 1000), ('next_write_checkpoint_id', 1),
                 ('next_version', 6);
             INSERT INTO schema_version (version) VALUES (2);
             INSERT INTO sync_rules (version, rules, state, last_op_id, last_lsn) VALUES (5, 'old', 'active', 999, 10);
             INSERT INTO checkpoints (version, lsn, op_id) VALUES (5, 10, 999);
             INSERT INTO source_rows (version, source_table, source_key, data) VALUES (5, 'public.todos', '3', 'src3');",
        )
        .unwrap();
        let subkey = |key: &str| Subkey::for_source_row("public.todos", key).as_str().to_owned();
        let ops = [
            (997, "a", "t1", "1", r#"{"v":1}"#),
            (998, "b", "t1", "1", r#"{"v":1}"#),
            (999, "a", "t2", "2", r#"{"v":2}"#),
        ];
        for (op_id, bucket, id, key, data) in ops {
            conn.execute(
                "INSERT INTO ops (op_id, version, bucket, op, object_type, object_id, subkey, data, checksum)
                 VALUES (?1, 5, ?2, 'PUT', 'todos', ?3, ?4, ?5, ?6)",
                rusqlite::params![op_id, bucket, id, subkey(key), data, put(id, data)],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO current_rows (version, source_table, source_key, bucket, object_type, object_id, put_op)
                 VALUES (5, 'public.todos', ?1, ?2, 'todos', ?3, ?4)",
                rusqlite::params![key, bucket, id, op_id],
            )
            .unwrap();
        }
        let a = (put("t1", r#"{"v":1}"#) + put("t2", r#"{"v":2}"#)) % (1 << 32);
        conn.execute(
            "INSERT INTO bucket_state (version, bucket, checksum, count, last_op) VALUES (5, 'a', ?1, 2, 999),
                 (5, 'b', ?2, 1, 998)",
            rusqlite::params![a, put("t1", r#"{"v":1}"#)],
        )
        .unwrap();
    }
    let f = Fixture::<SqliteStorage> {
        storage: SqliteStorage::open(&path).unwrap(),
        place: dir,
        version: RulesVersion(5),
    };
    let s = &f.storage;
    assert_eq!(f.kinds("a"), [OpType::Put, OpType::Put]);
    assert_eq!(f.summary(f.latest().op_id, "a").count, 2);
    assert_eq!(
        s.source_row_keys(f.version, "public.todos").unwrap(),
        ["1", "2", "3"]
    );
    assert_eq!(
        s.source_row(f.version, &row("3")).unwrap().as_deref(),
        Some("src3")
    );
    // Row 1 keeps its data in a (no op), moves from b to c; row 2's data changes; row 3's source row goes.
    f.apply(txn(
        20,
        vec![
            set(
                "1",
                vec![place("a", "t1", r#"{"v":1}"#), place("c", "t1", r#"{"v":1}"#)],
            ),
            set("2", vec![place("a", "t2", r#"{"v":3}"#)]),
            RowChange {
                row: row("3"),
                placements: None,
                parameters: None,
                source_row: None,
            },
        ],
    ));
    assert_eq!(f.kinds("a"), [OpType::Put, OpType::Put, OpType::Put]);
    assert_eq!(f.kinds("b"), [OpType::Put, OpType::Remove]);
    assert_eq!(f.kinds("c"), [OpType::Put]);
    let latest = f.latest().op_id;
    let a = f.summary(latest, "a");
    let expected = f
        .ops("a")
        .iter()
        .fold(Checksum::ZERO, |sum, op| sum + op.entry.checksum);
    assert_eq!((a.checksum, a.count), (expected, 3));
    assert_eq!(s.source_row(f.version, &row("3")).unwrap(), None);
    assert_eq!(s.source_row_keys(f.version, "public.todos").unwrap(), ["1", "2"]);
    // Compaction works on the converted op log.
    s.compact(f.version, latest).unwrap();
    assert_eq!(f.kinds("b"), [OpType::Clear]);
}

#[test]
fn state_keys_of_integer_row_keys_sort_numerically() {
    let keys: Vec<String> = [1, 2, 9, 10, 99, 100, 12_345, 1_000_000]
        .iter()
        .map(|n| sqlite::state_key(&format!(r#"["{n}"]"#)))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(sqlite::state_key(r#"["7"]"#), r#"15["7"]"#);
    assert_eq!(sqlite::state_key(r#"["1234567"]"#), r#"211["1234567"]"#);
}

/// The text values of the one column `sql` selects, in its order.
fn text_column(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_format_4_file_gets_order_preserving_state_keys() {
    let f = Fixture::<SqliteStorage>::new();
    let keys = [r#"["2"]"#, r#"["10"]"#, "x"];
    f.apply(txn(
        10,
        vec![
            set(keys[0], vec![place("a", "t2", r#"{"v":2}"#)]),
            set(keys[1], vec![place("a", "t10", r#"{"v":10}"#)]),
            RowChange {
                source_row: Some("src".into()),
                ..RowChange::delete(row(keys[2]))
            },
        ],
    ));
    let Fixture {
        place: dir,
        storage,
        version,
    } = f;
    drop(storage);
    // Turn the file back into format 4, which keyed `source_state` by the row key's text.
    let path = dir.path().join("buckets.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE source_state_v4 (
                 version INTEGER NOT NULL, source_table TEXT NOT NULL, source_key TEXT NOT NULL,
                 placements BLOB NOT NULL, source_row TEXT,
                 PRIMARY KEY (version, source_table, source_key)
             ) WITHOUT ROWID;
             INSERT INTO source_state_v4 SELECT version, source_table,
                 substr(state_key, 2 + substr(state_key, 1, 1)), placements, source_row FROM source_state;
             DROP TABLE source_state;
             ALTER TABLE source_state_v4 RENAME TO source_state;
             UPDATE schema_version SET version = 4;",
        )
        .unwrap();
        let old_keys = text_column(&conn, "SELECT source_key FROM source_state ORDER BY source_key");
        let mut text_order = keys.map(String::from).to_vec();
        text_order.sort();
        assert_eq!(old_keys, text_order);
    }
    let f = Fixture::<SqliteStorage> {
        storage: SqliteStorage::open(&path).unwrap(),
        place: dir,
        version,
    };
    let s = &f.storage;
    // The migration's SQL computes the keys this build looks rows up by.
    let state_keys = text_column(
        &rusqlite::Connection::open(&path).unwrap(),
        "SELECT state_key FROM source_state ORDER BY state_key",
    );
    assert_eq!(
        state_keys,
        [keys[2], keys[0], keys[1]].map(sqlite::state_key).to_vec()
    );
    let mut text_order = keys.map(String::from).to_vec();
    text_order.sort();
    // Still in the text's order, as before.
    assert_eq!(s.source_row_keys(f.version, "public.todos").unwrap(), text_order);
    assert_eq!(
        s.source_row(f.version, &row(keys[2])).unwrap().as_deref(),
        Some("src")
    );
    // The migrated placements are diffed against: unchanged data writes nothing, a delete removes.
    let before = f.kinds("a");
    f.apply(txn(
        20,
        vec![
            set(keys[0], vec![place("a", "t2", r#"{"v":2}"#)]),
            RowChange::delete(row(keys[1])),
        ],
    ));
    let mut expected = before;
    expected.push(OpType::Remove);
    assert_eq!(f.kinds("a"), expected);
    assert_eq!(
        s.source_row_keys(f.version, "public.todos").unwrap(),
        [keys[0], keys[2]]
    );
}

/// Ops span several segments (one transaction larger than a segment, then two transactions sharing one):
/// pages of any size read them all in order, checksums at a checkpoint inside a segment count only its
/// ops up to there, and compaction merges the segments without changing what is read.
fn ops_across_segments_read_in_pages_and_sum_at_every_checkpoint<S: TestStorage>() {
    let f = Fixture::<S>::new();
    let s = &f.storage;
    let big: Vec<RowChange> = (0..2_500)
        .map(|i| {
            set(
                &i.to_string(),
                vec![place("a", &format!("t{i}"), &format!(r#"{{"v":{i}}}"#))],
            )
        })
        .collect();
    let first = f.apply(txn(10, big)).unwrap();
    let small = |lsn: u64, from: u32| {
        txn(
            lsn,
            (from..from + 10)
                .map(|i| {
                    set(
                        &i.to_string(),
                        vec![place("a", &format!("t{i}"), r#"{"v":"new"}"#)],
                    )
                })
                .collect(),
        )
    };
    // One storage transaction, one segment, two checkpoints.
    let second = s
        .apply_batch(f.version, &[small(20, 0), small(30, 100)])
        .unwrap()
        .unwrap();
    let all = f.ops("a");
    assert_eq!(all.len(), 2_520);
    assert!(all.windows(2).all(|w| w[0].entry.op_id < w[1].entry.op_id));
    for page in [1, 7, 999, 1_000, 1_001, 5_000] {
        let mut read = Vec::new();
        let mut after = OpId::ZERO;
        loop {
            let ops = s.ops(f.version, &b("a"), after, second.op_id, page).unwrap();
            let Some(last) = ops.last() else { break };
            assert!(ops.len() <= page);
            after = last.entry.op_id;
            read.extend(ops);
        }
        assert_eq!(read, all, "pages of {page}");
    }
    let sum = |ops: &[StoredOp]| ops.iter().fold(Checksum::ZERO, |sum, op| sum + op.entry.checksum);
    let at_first = f.summary(first, "a");
    assert_eq!((at_first.checksum, at_first.count), (sum(&all[..2_500]), 2_500));
    let middle = all[2_509].entry.op_id;
    let at_middle = f.summary(middle, "a");
    assert_eq!((at_middle.checksum, at_middle.count), (sum(&all[..2_510]), 2_510));
    // Ops up to a checkpoint inside the shared segment, and not beyond it.
    let upto = s.ops(f.version, &b("a"), first, middle, usize::MAX).unwrap();
    assert_eq!(upto, all[2_500..2_510]);

    let segments = |f: &Fixture<S>| -> i64 { f.rows("SELECT COUNT(*) FROM op_segments")[0][0] };
    assert_eq!(segments(&f), 4);
    let stats = s.compact(f.version, second.op_id).unwrap();
    assert_eq!(stats.moved, 20, "rows 0-9 and 100-109 were put twice");
    // The MOVEs of rows 0-9 lead the bucket: one CLEAR replaces them.
    assert_eq!(stats.cleared, 9);
    let compacted = f.ops("a");
    assert_eq!(compacted.len(), 2_511);
    assert_eq!(compacted[0].entry.op, OpType::Clear);
    let latest = f.summary(second.op_id, "a");
    assert_eq!((latest.checksum, latest.count), (sum(&all), 2_511));
    assert_eq!(sum(&compacted), sum(&all));
    assert_eq!(segments(&f), 3, "2,520 ops in segments of at most 1,000");
    // A second run finds nothing to do and rewrites nothing.
    let again = s.compact(f.version, second.op_id).unwrap();
    assert_eq!((again.moved, again.cleared), (0, 0));
    assert_eq!(f.ops("a"), compacted);
}

/// Instantiates the generic suite for one storage: `$cases` proptest cases per property.
macro_rules! storage_suite {
    ($module:ident, $storage:ty, $cases:expr) => {
        mod $module {
            use super::*;

            storage_suite!(@tests $storage;
                row_moving_between_buckets_removes_and_puts,
        unchanged_data_writes_no_put_and_changed_data_does,
        delete_removes_from_every_bucket,
        reapplying_a_stored_lsn_is_skipped,
        op_ids_increase_across_versions_and_reopen_and_start_above_the_clock,
        bucket_checksum_is_the_wrapping_sum_of_op_checksums,
        parameter_lookups_read_the_state_at_a_checkpoint,
        evaluated_rules_output_applies_end_to_end,
        write_checkpoints_by_user_client_and_lsn,
        versions_activate_atomically,
        state_survives_reopen,
        an_empty_transaction_moves_the_checkpoint_lsn_only,
        compaction_matches_the_spec_example,
        a_batch_records_a_checkpoint_per_transaction_and_skips_stored_lsns,
        a_failing_batch_applies_nothing,
        an_unstored_snapshot_chunk_stores_what_a_transaction_stores,
        snapshot_chunks_store_rows_progress_and_parameters_visible_everywhere,
        a_table_feeding_one_half_leaves_the_other_alone,
        replication_state_round_trips,
        source_rows_are_set_overwritten_and_deleted,
        versions_are_listed_oldest_first,
        deleting_a_version_removes_its_snapshot_and_replication_rows,
        ops_across_segments_read_in_pages_and_sum_at_every_checkpoint,
        a_large_batch_stores_what_single_transactions_store
            );

            proptest! {
                #![proptest_config(ProptestConfig::with_cases($cases))]

                /// Writes are batched into multi-row statements within a storage transaction: a batch must
                /// store exactly what the same transactions applied one at a time store, also when rows
                /// repeat and the statements fill up.
                #[test]
                fn a_batch_stores_what_single_transactions_store(
                    txns in proptest::collection::vec(proptest::collection::vec(change_strategy(), 1..40), 1..8),
                    spread in 1u8..40,
                ) {
                    super::a_batch_stores_what_single_transactions_store::<$storage>(txns, spread)?;
                }

                #[test]
                fn compaction_keeps_checksums_and_net_rows(
                    txns in proptest::collection::vec(proptest::collection::vec(change_strategy(), 1..3), 1..14),
                    later in proptest::collection::vec(change_strategy(), 0..4),
                    cut in any::<proptest::sample::Index>(),
                ) {
                    super::compaction_keeps_checksums_and_net_rows::<$storage>(txns, later, cut)?;
                }
            }
        }
    };
    (@tests $storage:ty; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                super::$test::<$storage>();
            }
        )*
    };
}

storage_suite!(on_sqlite, SqliteStorage, 48);
// Each case opens fresh storages (a schema each): fewer cases keep the suite's time in line.
storage_suite!(on_postgres, PostgresStorage, 24);
