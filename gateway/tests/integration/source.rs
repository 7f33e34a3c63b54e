//! The Postgres side of replication against a real cluster: slot + exported snapshot, streaming
//! decode of every change kind, acks surviving a reconnect, and the up-front checks.

use std::time::Duration;

use syncgate::source::event::OldRow;
use syncgate::source::{
    Chunk, ColumnValue, Lsn, OutputPlugin, ReplicationClient, SnapshotReader, SourceEvent,
    SourceRequirements, StartOptions, StreamItem, TableName, WalstreamClient, check_source,
};
use syncgate_test_support::{TestDatabase, shared_cluster};

use crate::replication::harness::test_decoder;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Events of the next transaction, Begin through Commit (keepalives skipped). A non-transactional
/// message arrives alone and is returned alone.
async fn next_txn(client: &mut WalstreamClient) -> Vec<SourceEvent> {
    let mut events = Vec::new();
    loop {
        let item = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("replication event in time")
            .expect("replication stream");
        let StreamItem::Event(event) = item else { continue };
        let done = matches!(event, SourceEvent::Commit { .. });
        events.push(event);
        if done {
            return events;
        }
    }
}

/// What the test decoder starts with: publication `pub` (pgoutput), or the same `tables` of schema
/// public as the plugin's filter.
fn start_options(tables: &[&str]) -> StartOptions {
    match test_decoder() {
        OutputPlugin::Pgoutput => StartOptions::new(vec!["pub".into()]),
        OutputPlugin::Syncgate => StartOptions::syncgate(
            tables
                .iter()
                .map(|t| format!("public.{t}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

fn text(value: &str) -> ColumnValue {
    ColumnValue::Text(value.to_owned())
}

/// Waits for the walsender to let go of the slot, then drops it.
fn drop_slot(db: &TestDatabase, slot: &str) {
    wait_inactive(db, slot);
    db.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .expect("drop the test slot");
}

/// A closed session's walsender may hold the slot for a moment.
fn wait_inactive(db: &TestDatabase, slot: &str) {
    for _ in 0..100 {
        let active = db
            .psql(&format!(
                "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .expect("read pg_replication_slots");
        if active.trim() == "f" {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("slot {slot} stayed active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_every_change_kind() {
    let db = shared_cluster().create_database().unwrap();
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, body text, big text);
         -- EXTERNAL: stored out of line without compression, so an untouched value is sent as 'u'.
         ALTER TABLE items ALTER big SET STORAGE EXTERNAL;
         INSERT INTO items SELECT g, 'row ' || g, NULL FROM generate_series(1, 10) g;
         UPDATE items SET big = repeat('0123456789abcdef', 800) WHERE id = 1;
         CREATE TABLE full_rows (id int, v text);
         ALTER TABLE full_rows REPLICA IDENTITY FULL;
         INSERT INTO full_rows VALUES (7, 'seven');
         CREATE PUBLICATION pub FOR TABLE items, full_rows;",
    )
    .unwrap();

    let mut client = WalstreamClient::connect(&db.replication_url()).await.unwrap();
    let slot = client
        .create_slot("syncgate_test_stream", test_decoder())
        .await
        .unwrap();
    assert!(!slot.snapshot_name.is_empty());
    let plugin = db
        .psql("SELECT plugin FROM pg_replication_slots WHERE slot_name = 'syncgate_test_stream'")
        .unwrap();
    assert_eq!(plugin.trim(), test_decoder().name());

    // After the slot: must come from the stream, not the copy.
    db.psql("INSERT INTO items VALUES (50, 'late', NULL)").unwrap();

    // Import before the replication session runs any other command.
    let reader = SnapshotReader::connect(&db.url(), &slot.snapshot_name)
        .await
        .unwrap();
    let layout = reader.layout(&TableName::new("public", "items")).await.unwrap();
    assert_eq!(layout.columns, ["id", "body", "big"]);
    assert_eq!(layout.key, [0]);
    let mut ids = Vec::new();
    let mut chunks = 0;
    let mut after: Option<Vec<String>> = None;
    loop {
        let chunk = reader.copy_chunk(&layout, after.as_deref(), 4).await.unwrap();
        chunks += 1;
        ids.extend(chunk.rows.iter().map(|r| r.get(0).unwrap().to_owned()));
        match chunk.resume_after {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    reader.finish().await.unwrap();
    let expected: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    assert_eq!(
        ids, expected,
        "the snapshot sees exactly the rows from before the slot"
    );
    assert_eq!(chunks, 3);

    client
        .start(
            &slot.slot_name,
            slot.consistent_point,
            &start_options(&["items", "full_rows"]),
        )
        .await
        .unwrap();

    // The later insert, with its commit LSN.
    let txn = next_txn(&mut client).await;
    let SourceEvent::Begin { final_lsn, .. } = txn[0] else {
        panic!("{txn:?}")
    };
    assert!(matches!(&txn[1], SourceEvent::Relation(r) if r.name == "items" && r.columns[0].is_key));
    let SourceEvent::Insert { relation, new } = &txn[2] else {
        panic!("{txn:?}")
    };
    assert_eq!(relation.name, "items");
    assert_eq!(new, &[text("50"), text("late"), ColumnValue::Null]);
    let SourceEvent::Commit {
        commit_lsn, end_lsn, ..
    } = txn[3]
    else {
        panic!("{txn:?}")
    };
    assert_eq!(commit_lsn, final_lsn);
    assert!(end_lsn > commit_lsn && commit_lsn > slot.consistent_point);

    // Update that leaves the TOASTed column alone.
    db.psql("UPDATE items SET body = 'changed' WHERE id = 1").unwrap();
    let txn = next_txn(&mut client).await;
    let SourceEvent::Update { new, old, .. } = &txn[1] else {
        panic!("{txn:?}")
    };
    assert_eq!(old, &None);
    assert_eq!(new, &[text("1"), text("changed"), ColumnValue::UnchangedToast]);

    // Delete under replica identity FULL carries the whole old row.
    db.psql("DELETE FROM full_rows WHERE id = 7").unwrap();
    let txn = next_txn(&mut client).await;
    assert!(matches!(&txn[1], SourceEvent::Relation(r) if r.name == "full_rows"));
    let SourceEvent::Delete { old, .. } = &txn[2] else {
        panic!("{txn:?}")
    };
    assert_eq!(old, &OldRow::Full(vec![text("7"), text("seven")]));

    // Key-only delete under the default identity.
    db.psql("DELETE FROM items WHERE id = 2").unwrap();
    let txn = next_txn(&mut client).await;
    let SourceEvent::Delete { old, .. } = &txn[1] else {
        panic!("{txn:?}")
    };
    assert_eq!(
        old,
        &OldRow::Key(vec![text("2"), ColumnValue::Null, ColumnValue::Null])
    );

    db.psql("TRUNCATE items, full_rows").unwrap();
    let txn = next_txn(&mut client).await;
    let truncate = txn
        .iter()
        .find(|e| matches!(e, SourceEvent::Truncate { .. }))
        .unwrap();
    let SourceEvent::Truncate { relations } = truncate else {
        unreachable!()
    };
    let mut names: Vec<&str> = relations.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["full_rows", "items"]);

    db.psql("SELECT pg_logical_emit_message(true, 'syncgate', 'x')")
        .unwrap();
    let txn = next_txn(&mut client).await;
    let SourceEvent::Message {
        prefix,
        content,
        transactional,
        lsn,
    } = &txn[1]
    else {
        panic!("{txn:?}")
    };
    assert_eq!(
        (prefix.as_str(), content.as_slice(), *transactional),
        ("syncgate", &b"x"[..], true)
    );
    assert!(*lsn > Lsn::ZERO);

    client.close().await.unwrap();
    drop_slot(&db, &slot.slot_name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_transaction_is_not_resent_after_reconnect() {
    let db = shared_cluster().create_database().unwrap();
    db.psql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;")
        .unwrap();
    let slot_name = "syncgate_test_ack";
    let options = start_options(&["t"]);

    let mut client = WalstreamClient::connect(&db.replication_url()).await.unwrap();
    let slot = client.create_slot(slot_name, test_decoder()).await.unwrap();
    client
        .start(slot_name, slot.consistent_point, &options)
        .await
        .unwrap();
    db.psql("INSERT INTO t VALUES (1)").unwrap();
    db.psql("INSERT INTO t VALUES (2)").unwrap();

    let first = next_txn(&mut client).await;
    let SourceEvent::Commit { end_lsn, .. } = *first.last().unwrap() else {
        panic!()
    };
    client.ack(end_lsn).await.unwrap();
    // Received but never acked: must come again.
    let second = next_txn(&mut client).await;
    // The relation was described in the first transaction of this session: Begin, Insert, Commit.
    assert!(
        matches!(&second[1], SourceEvent::Insert { new, .. } if new == &[text("2")]),
        "{second:?}"
    );
    client.close().await.unwrap();

    wait_inactive(&db, slot_name);
    let confirmed = db
        .psql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot_name}'"
        ))
        .unwrap();
    assert_eq!(confirmed.trim().parse::<Lsn>().unwrap(), end_lsn);

    let mut client = WalstreamClient::connect(&db.replication_url()).await.unwrap();
    // 0/0: the server resumes at the slot's confirmed position.
    client.start(slot_name, Lsn::ZERO, &options).await.unwrap();
    let again = next_txn(&mut client).await;
    let inserts: Vec<&SourceEvent> = again
        .iter()
        .filter(|e| matches!(e, SourceEvent::Insert { .. }))
        .collect();
    assert!(
        matches!(inserts[..], [SourceEvent::Insert { new, .. }] if new == &[text("2")]),
        "{again:?}"
    );
    client.close().await.unwrap();
    drop_slot(&db, slot_name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_say_how_to_fix_the_source() {
    let db = shared_cluster().create_database().unwrap();
    db.psql(
        "CREATE TABLE good (id int PRIMARY KEY);
         CREATE TABLE nokey (v text);
         CREATE TABLE unpublished (id int PRIMARY KEY);
         CREATE PUBLICATION pub FOR TABLE good, nokey;",
    )
    .unwrap();
    let tables = |names: &[&str]| {
        names
            .iter()
            .map(|n| TableName::new("public", *n))
            .collect::<Vec<_>>()
    };

    let su = db.connect().await.unwrap();
    let ok = SourceRequirements {
        publication: Some("pub".into()),
        tables: tables(&["good"]),
    };
    check_source(&su, &ok).await.unwrap();

    let bad = SourceRequirements {
        publication: Some("pub".into()),
        tables: tables(&["good", "nokey", "unpublished", "missing"]),
    };
    let error = check_source(&su, &bad).await.unwrap_err();
    assert_eq!(error.kind(), syncgate::source::ErrorKind::Configuration);
    let message = error.to_string();
    assert!(
        message.contains("ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL"),
        "{message}"
    );
    assert!(
        message.contains("ALTER PUBLICATION \"pub\" ADD TABLE \"public\".\"unpublished\""),
        "{message}"
    );
    assert!(
        message.contains("table public.missing does not exist"),
        "{message}"
    );
    assert!(!message.contains("\"good\""), "{message}");

    let no_publication = SourceRequirements {
        publication: Some("nope".into()),
        tables: tables(&["good"]),
    };
    let message = check_source(&su, &no_publication).await.unwrap_err().to_string();
    assert!(
        message.contains("CREATE PUBLICATION \"nope\" FOR TABLE \"public\".\"good\""),
        "{message}"
    );

    // The syncgate plugin needs no publication: unpublished tables pass, the other checks still apply.
    let without_publication = SourceRequirements {
        publication: None,
        tables: tables(&["good", "unpublished"]),
    };
    check_source(&su, &without_publication).await.unwrap();
    let message = check_source(
        &su,
        &SourceRequirements {
            publication: None,
            tables: tables(&["nokey"]),
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(message.contains("REPLICA IDENTITY FULL"), "{message}");
    assert!(!message.contains("PUBLICATION"), "{message}");

    // A role without REPLICATION and without SELECT.
    let role = format!("plain_{}", db.name());
    db.psql(&format!("CREATE ROLE \"{role}\" LOGIN")).unwrap();
    let url = format!("postgres://{role}@{}:{}/{}", db.host(), db.port(), db.name());
    let (plain, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let message = check_source(&plain, &ok).await.unwrap_err().to_string();
    assert!(
        message.contains(&format!("ALTER ROLE \"{role}\" WITH REPLICATION")),
        "{message}"
    );
    assert!(
        message.contains(&format!("GRANT SELECT ON \"public\".\"good\" TO \"{role}\"")),
        "{message}"
    );
    drop(plain);
    db.psql(&format!("DROP ROLE \"{role}\"")).unwrap();
}

/// The cluster's defaults differ from the session settings (DMY dates, Kathmandu time, SQL-standard
/// intervals): connecting *without* them in the URL proves both connections set them themselves, so
/// the copy and the stream produce the same text. Also runs on pgoutput proto 2 and checks a
/// non-transactional message, which arrives outside any transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_stream_format_values_alike() {
    let db = shared_cluster().create_database().unwrap();
    db.psql(
        "CREATE TABLE v (id int PRIMARY KEY, at timestamptz, d date, i interval);
         INSERT INTO v VALUES (1, '2024-01-02 03:04:05+02', '2024-01-02', '1 day 2 hours');
         CREATE PUBLICATION pub FOR TABLE v;",
    )
    .unwrap();
    let base = db.url_without_session_options();
    let mut client = WalstreamClient::connect(&base).await.unwrap();
    let slot = client
        .create_slot("syncgate_test_settings", test_decoder())
        .await
        .unwrap();
    let reader = SnapshotReader::connect(&base, &slot.snapshot_name).await.unwrap();
    let layout = reader.layout(&TableName::new("public", "v")).await.unwrap();
    let chunk = reader.copy_chunk(&layout, None, 100).await.unwrap();
    reader.finish().await.unwrap();
    let expected = |id: &str| {
        vec![
            id.to_owned(),
            "2024-01-02 01:04:05+00".to_owned(),
            "2024-01-02".to_owned(),
            "1 day 02:00:00".to_owned(),
        ]
    };
    let mut values = Vec::new();
    Chunk::values(&chunk.rows[0], &mut values);
    let copied: Vec<String> = values.iter().map(|v| v.unwrap().to_owned()).collect();
    assert_eq!(copied, expected("1"));

    let mut options = start_options(&["v"]);
    if let StartOptions::Pgoutput { proto_version, .. } = &mut options {
        *proto_version = syncgate::source::ProtoVersion::V2;
    }
    client
        .start(&slot.slot_name, slot.consistent_point, &options)
        .await
        .unwrap();
    db.psql("INSERT INTO v SELECT 2, at, d, i FROM v WHERE id = 1")
        .unwrap();
    let txn = next_txn(&mut client).await;
    let SourceEvent::Insert { new, .. } = &txn[2] else {
        panic!("{txn:?}")
    };
    let streamed: Vec<ColumnValue> = expected("2").iter().map(|v| text(v)).collect();
    assert_eq!(new, &streamed);

    db.psql("SELECT pg_logical_emit_message(false, 'syncgate', 'now')")
        .unwrap();
    let event = loop {
        match tokio::time::timeout(TIMEOUT, client.next())
            .await
            .unwrap()
            .unwrap()
        {
            StreamItem::Event(event) => break event,
            StreamItem::Keepalive { .. } => continue,
        }
    };
    assert!(
        matches!(&event, SourceEvent::Message { transactional: false, content, .. } if content == b"now"),
        "{event:?}"
    );
    client.close().await.unwrap();
    // Dropping through the replication protocol, waiting for the closed walsender to let go.
    let mut admin = WalstreamClient::connect(&base).await.unwrap();
    admin.drop_slot(&slot.slot_name, true).await.unwrap();
    let left = db
        .psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE database = '{}'",
            db.name()
        ))
        .unwrap();
    assert_eq!(left.trim(), "0");
}

/// The test cluster's `wal_sender_timeout` is 5 s: a session waiting in `next()` for longer must answer
/// the server's keepalive requests itself, or the walsender ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_survives_wal_sender_timeout() {
    let db = shared_cluster().create_database().unwrap();
    db.psql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;")
        .unwrap();
    let mut client = WalstreamClient::connect(&db.replication_url()).await.unwrap();
    let slot = client
        .create_slot("syncgate_test_idle", test_decoder())
        .await
        .unwrap();
    client
        .start(&slot.slot_name, slot.consistent_point, &start_options(&["t"]))
        .await
        .unwrap();
    let url = db.url();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7)).await;
        let (c, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    });
    let mut keepalives = 0;
    let txn = loop {
        match tokio::time::timeout(TIMEOUT, client.next())
            .await
            .unwrap()
            .unwrap()
        {
            StreamItem::Keepalive { .. } => keepalives += 1,
            StreamItem::Event(event) => break event,
        }
    };
    writer.await.unwrap();
    assert!(matches!(txn, SourceEvent::Begin { .. }), "{txn:?}");
    assert!(keepalives > 0);
    client.close().await.unwrap();
    drop_slot(&db, &slot.slot_name);
}
