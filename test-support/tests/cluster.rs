//! The harness against a real server: session settings, pgoutput through a logical slot,
//! cleanup of databases and clusters.

use std::path::PathBuf;

use syncgate_test_support::pgoutput::{self, Message, TupleValue};
use syncgate_test_support::{PgCluster, shared_cluster};

#[tokio::test]
async fn urls_apply_the_replication_session_settings() {
    let db = shared_cluster().create_database().unwrap();
    let client = db.connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('DateStyle'), current_setting('IntervalStyle'),
                    current_setting('TimeZone'), current_setting('extra_float_digits'),
                    current_setting('wal_level'), current_setting('max_replication_slots')",
            &[],
        )
        .await
        .unwrap();
    let settings: Vec<String> = (0..6).map(|i| row.get(i)).collect();
    // `DateStyle=ISO` sets the output format; the field order part keeps the server's DMY.
    assert_eq!(settings, ["ISO, DMY", "postgres", "UTC", "3", "logical", "64"]);

    // Without the options, the server's deliberately different defaults show.
    let (plain, connection) =
        tokio_postgres::connect(&db.url_without_session_options(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let rows = plain
        .simple_query("SELECT '2023-03-06 15:47:00+00'::timestamptz")
        .await
        .unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(row) = &rows[1] else {
        panic!("{rows:?}")
    };
    assert_eq!(row.get(0), Some("06/03/2023 21:32:00 +0545"));

    // psql helpers use the session settings too.
    assert_eq!(
        db.psql("SELECT '2023-03-06 15:47:00+00'::timestamptz")
            .unwrap()
            .trim(),
        "2023-03-06 15:47:00+00"
    );
    assert!(db.replication_url().contains("replication=database"));
}

#[tokio::test]
async fn pgoutput_messages_through_a_logical_slot() {
    let db = shared_cluster().create_database().unwrap();
    let client = db.connect().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, big text, n int);
             ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE PUBLICATION p FOR TABLE t;",
        )
        .await
        .unwrap();
    client
        .execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", &[])
        .await
        .unwrap();
    // `big` is stored out of line (TOAST), so an update that leaves it alone does not send it.
    client
        .batch_execute(
            "INSERT INTO t VALUES (1, repeat('x', 5000), NULL);
             UPDATE t SET n = 2 WHERE id = 1;
             DELETE FROM t WHERE id = 1;
             TRUNCATE t;",
        )
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL,
               'proto_version', '1', 'publication_names', 'p')",
            &[],
        )
        .await
        .unwrap();
    let messages: Vec<Message> = rows
        .iter()
        .map(|row| pgoutput::decode(row.get::<_, &[u8]>(0)).unwrap())
        .collect();
    let mut cache = pgoutput::RelationCache::default();
    messages.iter().for_each(|m| cache.observe(m));

    let kinds: String = messages
        .iter()
        .map(|m| match m {
            Message::Begin { .. } => 'B',
            Message::Commit { .. } => 'C',
            Message::Relation(_) => 'R',
            Message::Insert { .. } => 'I',
            Message::Update { .. } => 'U',
            Message::Delete { .. } => 'D',
            Message::Truncate { .. } => 'T',
            _ => '?',
        })
        .collect();
    // pgoutput repeats the Relation before a Truncate.
    assert_eq!(kinds, "BRIUDRTC");

    let Message::Relation(relation) = &messages[1] else {
        unreachable!()
    };
    assert_eq!(
        (relation.namespace.as_str(), relation.name.as_str()),
        ("public", "t")
    );
    let columns: Vec<(&str, u32, bool)> = relation
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.is_key))
        .collect();
    assert_eq!(columns, [("id", 23, true), ("big", 25, false), ("n", 23, false)]);
    assert_eq!(cache.get(relation.id), Some(relation));

    let Message::Insert { new, .. } = &messages[2] else {
        unreachable!()
    };
    assert_eq!(new[0], TupleValue::Text("1".into()));
    assert_eq!(new[1].as_text().map(str::len), Some(5000));
    assert_eq!(new[2], TupleValue::Null);
    let Message::Update {
        new, old_key, old, ..
    } = &messages[3]
    else {
        unreachable!()
    };
    assert_eq!(
        new,
        &[
            TupleValue::Text("1".into()),
            TupleValue::UnchangedToast,
            TupleValue::Text("2".into())
        ]
    );
    assert_eq!((old_key, old), (&None, &None));
    let Message::Delete { old_key, .. } = &messages[4] else {
        unreachable!()
    };
    let old_key = old_key.as_ref().unwrap();
    assert_eq!(old_key[0], TupleValue::Text("1".into()));
    let Message::Truncate { relation_ids, .. } = &messages[6] else {
        unreachable!()
    };
    assert_eq!(relation_ids, &[relation.id]);
}

#[test]
fn dropping_a_test_database_drops_it_and_its_slots() {
    let cluster = shared_cluster();
    let db = cluster.create_database().unwrap();
    let name = db.name().to_owned();
    db.psql("SELECT pg_create_logical_replication_slot('doomed', 'pgoutput')")
        .unwrap();
    drop(db);
    let left = cluster
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{name}';
                 SELECT count(*) FROM pg_replication_slots WHERE database = '{name}';"
            ),
        )
        .unwrap();
    assert_eq!(left.split_whitespace().collect::<Vec<_>>(), ["0", "0"]);
}

#[test]
fn a_private_cluster_is_removed_on_drop() {
    let cluster = PgCluster::start().unwrap();
    let root: PathBuf = cluster.data_dir().parent().unwrap().to_owned();
    let postmaster_pid: u32 = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let db = cluster.create_database().unwrap();
    assert_eq!(db.psql("SELECT 1").unwrap().trim(), "1");
    assert!(
        cluster
            .connection_string(db.name())
            .contains(&format!(":{}/", cluster.port()))
    );
    drop(db);
    drop(cluster);
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(
        !std::path::Path::new(&format!("/proc/{postmaster_pid}")).exists(),
        "postmaster {postmaster_pid} still running"
    );
}
