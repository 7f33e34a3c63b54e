//! Replication end to end against a real Postgres: `serve` snapshots and streams a schema of several
//! tables and every kind of change; afterwards what each user would sync equals what the rules make
//! of a direct `SELECT` of the final database.

mod decoders;
mod failures;
#[allow(
    dead_code,
    reason = "shared by several test modules; not each uses every helper"
)]
pub mod harness;
mod lease;
mod versions;

use harness::{Gateway, Oracle, fast_options};
use syncgate_test_support::{TestDatabase, shared_cluster};

pub const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE lists (id text PRIMARY KEY, owner_id text NOT NULL, name text);
CREATE TABLE todos (id bigint PRIMARY KEY, list_id text, description text, big text, done boolean,
                    due timestamptz);
-- Out of line and uncompressed, so an UPDATE that does not touch it sends 'unchanged TOAST'.
ALTER TABLE todos ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE memberships (org_id text, user_id text, role text, PRIMARY KEY (org_id, user_id));
CREATE TABLE docs (org_id text, doc_no int, title text, PRIMARY KEY (org_id, doc_no));
CREATE TABLE notes (id int, body text);
ALTER TABLE notes REPLICA IDENTITY FULL;
CREATE TABLE tagged (code text NOT NULL, label text);
CREATE UNIQUE INDEX tagged_code ON tagged (code);
ALTER TABLE tagged REPLICA IDENTITY USING INDEX tagged_code;
CREATE TABLE typed (
    id uuid PRIMARY KEY, c_int2 int2, c_int4 int4, c_int8 int8, c_num numeric, c_f4 float4, c_f8 float8,
    c_bool bool, c_text text, c_varchar varchar(10), c_char char(3), c_json json, c_jsonb jsonb, c_date date,
    c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz, c_interval interval, c_bytea bytea,
    c_int_arr int4[], c_text_arr text[], c_inet inet, c_mood mood, c_pos posint, c_pair pair,
    c_range int4range, c_point point, c_money money, c_lsn pg_lsn, c_ts_arr timestamptz[]);
CREATE TABLE unrelated (id int PRIMARY KEY, x text);
CREATE PUBLICATION powersync FOR ALL TABLES;
";

pub const RULES: &str = "bucket_definitions:
  global:
    data:
      - SELECT * FROM typed
      - SELECT id, body FROM notes
      - SELECT code AS id, label FROM tagged
      - SELECT * FROM late_items
  by_list:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data:
      - SELECT * FROM lists WHERE id = bucket.list_id
      - SELECT * FROM todos WHERE list_id = bucket.list_id
  by_org:
    parameters: SELECT org_id FROM memberships WHERE user_id = request.user_id()
    data:
      - SELECT org_id || '-' || doc_no AS id, title, org_id FROM docs WHERE org_id = bucket.org_id
      - SELECT org_id || ':' || user_id AS id, role FROM memberships WHERE org_id = bucket.org_id
";

const TYPED_ROW: &str =
    "INSERT INTO typed VALUES (gen_random_uuid(), 1, 2, 3, 12.50, 1.5, 2.25, true, 'text ☃',
    'varchar', 'ab', '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', '2024-02-29', '13:14:15.123456',
    '13:14:15+02', '2024-01-02 03:04:05.678', '2024-01-02 03:04:05.678+05', '1 year 2 mons 3 days 04:05:06',
    '\\x0102ff', '{1,2,NULL}', '{\"a b\",c}', '192.168.0.1/24', 'happy', 7, '(1,\"x y\")', '[1,5)', '(1.5,2)',
    12.34, '0/16B3748', '{\"2024-01-01 00:00:00+00\"}')";

const INITIAL_DATA: &str = "
INSERT INTO lists SELECT 'l' || i, CASE WHEN i % 2 = 0 THEN 'alice' ELSE 'bob' END, 'List ' || i
    FROM generate_series(1, 6) i;
INSERT INTO todos SELECT i, 'l' || (i % 6 + 1), 'todo ' || i, repeat(md5(i::text), 200), i % 3 = 0,
    '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 hour' FROM generate_series(1, 40) i;
INSERT INTO memberships VALUES ('o1', 'alice', 'admin'), ('o1', 'bob', 'member'), ('o2', 'bob', 'admin');
INSERT INTO docs SELECT 'o' || (i % 2 + 1), i, 'doc ' || i FROM generate_series(1, 20) i;
INSERT INTO notes SELECT i, 'note ' || i FROM generate_series(1, 5) i;
INSERT INTO tagged SELECT 'c' || i, 'label ' || i FROM generate_series(1, 5) i;
INSERT INTO unrelated SELECT i, 'x' FROM generate_series(1, 10) i;
";

/// Every kind of change, committed in separate transactions except where noted.
const STREAMED_CHANGES: &[&str] = &[
    // Inserts, including a big transaction.
    "INSERT INTO todos SELECT i, 'l' || (i % 6 + 1), 'todo ' || i, repeat(md5(i::text), 200), false, now()
         FROM generate_series(41, 1500) i",
    TYPED_ROW,
    // Plain update; update leaving the TOASTed column unchanged.
    "UPDATE todos SET description = 'edited' WHERE id = 1",
    "UPDATE todos SET done = NOT done WHERE id BETWEEN 2 AND 4",
    // Primary-key change, with the TOASTed column unchanged.
    "UPDATE todos SET id = 10005 WHERE id = 5",
    "DELETE FROM todos WHERE id IN (6, 7)",
    // Multi-statement transaction: rows move between buckets while parameter rows change.
    "BEGIN;
     UPDATE todos SET list_id = 'l2' WHERE list_id = 'l1' AND id < 20;
     UPDATE lists SET owner_id = 'carol' WHERE id = 'l3';
     INSERT INTO memberships VALUES ('o2', 'carol', 'member');
     DELETE FROM memberships WHERE org_id = 'o1' AND user_id = 'bob';
     UPDATE memberships SET user_id = 'dave' WHERE org_id = 'o2' AND user_id = 'bob';
     INSERT INTO todos VALUES (5000, 'l3', 'for carol', 'small', false, now());
     COMMIT",
    // TRUNCATE, then rows again.
    "TRUNCATE docs",
    "INSERT INTO docs SELECT 'o' || (i % 2 + 1), i, 'doc again ' || i FROM generate_series(1, 5) i",
    // A column added while streaming, then written (rows carry a new column once they are next written,
    // as in PowerSync: adding a column does not rewrite rows in the WAL).
    "ALTER TABLE todos ADD COLUMN priority int",
    "UPDATE todos SET priority = id % 3",
    // Replica identity FULL without a key, and USING INDEX.
    "UPDATE notes SET body = 'changed' WHERE id = 2",
    "DELETE FROM notes WHERE id = 3",
    "UPDATE tagged SET label = 'relabelled' WHERE code = 'c1'",
    "UPDATE tagged SET code = 'c99' WHERE code = 'c2'",
    "DELETE FROM tagged WHERE code = 'c3'",
    // A table the rules name, created after the gateway started.
    "CREATE TABLE late_items (id text PRIMARY KEY, v int)",
    "INSERT INTO late_items VALUES ('a', 1), ('b', 2)",
    "UPDATE late_items SET v = 3 WHERE id = 'a'",
    // Changes to a table no rule reads.
    "UPDATE unrelated SET x = 'y'",
    // A TOASTed value rewritten, then left unchanged again.
    "UPDATE todos SET big = repeat('z', 9000) WHERE id = 8",
    "UPDATE todos SET description = 'after big' WHERE id = 8",
];

pub fn setup(db: &TestDatabase) {
    db.psql(SCHEMA).expect("schema");
    db.psql(INITIAL_DATA).expect("initial data");
}

fn assert_users_match(gateway: &Gateway, oracle: &Oracle, users: &[&str]) {
    for user in users {
        let want = oracle.user_buckets(user);
        let got = gateway.user_buckets(user);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "buckets of {user}"
        );
        for (bucket, rows) in &want {
            let got_rows = &got[bucket];
            let brief = |rows: Vec<&(String, String, String)>| -> Vec<String> {
                rows.iter()
                    .map(|(t, i, d)| format!("{t}/{i}: {}", d.chars().take(160).collect::<String>()))
                    .collect()
            };
            let missing = brief(rows.difference(got_rows).collect());
            let extra = brief(got_rows.difference(rows).collect());
            assert!(
                missing.is_empty() && extra.is_empty(),
                "bucket {bucket} of {user}: {} missing {missing:#?}\n{} extra {extra:#?}",
                missing.len(),
                extra.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_streaming_equal_the_rules_applied_to_the_final_database() {
    snapshot_and_streaming(harness::SQLITE_STORAGE, "sg_e2e_").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_storage_snapshot_and_streaming_equal_the_rules_applied() {
    let storage = shared_cluster().create_database().expect("storage database");
    snapshot_and_streaming(&harness::postgres_storage(&storage), "sg_e2e_pg_").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_the_source_database_as_postgres_storage() {
    let db = shared_cluster().create_database().expect("database");
    setup(&db);
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = db.url_without_session_options();
    let config = harness::write_config_with_storage(
        dir.path(),
        &uri,
        RULES,
        "sg_self_",
        &harness::postgres_storage(&db),
    );
    let error = Gateway::start(&config, fast_options()).expect_error().await;
    assert!(
        error.contains(&format!(
            "the storage database is the replication source database `{}`",
            db.name()
        )),
        "{error}"
    );
    assert!(error.contains("point storage.uri at another database"), "{error}");
}

/// The initial snapshot and a streamed workload (TOAST, key changes, deletes) replicated into `storage`
/// (a config `storage` section) equal the rules applied to the final database.
async fn snapshot_and_streaming(storage: &str, prefix: &str) {
    let db = shared_cluster().create_database().expect("database");
    setup(&db);
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = db.url_without_session_options();
    let config = harness::write_config_with_storage(dir.path(), &uri, RULES, prefix, storage);
    let gateway = Gateway::start(&config, fast_options());
    gateway.sync_point(&db).await;

    // The snapshot alone already matches.
    let oracle = Oracle::from_database(&db, RULES).await;
    assert_users_match(&gateway, &oracle, &["alice", "bob", "carol", "dave"]);

    for sql in STREAMED_CHANGES {
        db.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    gateway.sync_point(&db).await;
    let oracle = Oracle::from_database(&db, RULES).await;
    assert!(oracle.buckets.len() > 5, "the workload fills several buckets");
    assert_users_match(&gateway, &oracle, &["alice", "bob", "carol", "dave", "nobody"]);

    // The oracle comparison covers it, but make sure the workload hit the unchanged-TOAST paths: the
    // row whose key changed kept its out-of-line value.
    let alice = gateway.user_buckets("alice");
    let moved = alice
        .values()
        .flatten()
        .find(|(table, id, _)| table == "todos" && id == "10005")
        .expect("todo 10005 synced to alice");
    let data: serde_json::Value = serde_json::from_str(&moved.2).expect("row json");
    assert_eq!(data["big"].as_str().map(str::len), Some(6400));

    // The gateway writes nothing to the app's tables and keeps one slot.
    let slots = db
        .psql(&format!(
            "SELECT count(*) FROM pg_replication_slots
             WHERE slot_name LIKE '{prefix}%' AND database = current_database()"
        ))
        .expect("slots");
    assert_eq!(slots.trim(), "1");
    gateway.stop().await;
}
