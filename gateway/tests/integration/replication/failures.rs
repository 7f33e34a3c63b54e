//! Bad inputs and failures around replication: each gives a clear error, a reconnect, or a documented
//! degradation, and replication goes on where it can.

use std::time::{Duration, Instant};

use syncgate_test_support::{ClusterOptions, PgCluster, shared_cluster};

use syncgate::source::OutputPlugin;

use super::harness::{
    Gateway, Oracle, TIMEOUT, fast_options, test_decoder, write_config, write_config_with_uri,
};

const TODO_RULES: &str = "bucket_definitions:
  global:
    data:
      - SELECT * FROM items
";

/// pgoutput needs the publication: serve stops with the SQL that creates it. The syncgate plugin needs
/// none: serve replicates without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_publication_stops_pgoutput_with_the_fix_and_not_the_plugin() {
    let db = shared_cluster().create_database().expect("database");
    db.psql("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'one')")
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, TODO_RULES, "sg_nopub_");
    match test_decoder() {
        OutputPlugin::Pgoutput => {
            let error = Gateway::start(&config, fast_options()).expect_error().await;
            assert!(error.contains("publication powersync does not exist"), "{error}");
            assert!(
                error.contains("CREATE PUBLICATION \"powersync\" FOR TABLE \"public\".\"items\""),
                "{error}"
            );
        }
        OutputPlugin::Syncgate => {
            let gateway = Gateway::start(&config, fast_options());
            gateway.sync_point(&db).await;
            db.psql("INSERT INTO items VALUES (2, 'two')").expect("insert");
            gateway.sync_point(&db).await;
            let rows: Vec<String> = gateway
                .user_buckets("u")
                .into_values()
                .flatten()
                .map(|(_, id, _)| id)
                .collect();
            assert_eq!(rows, ["1", "2"]);
            gateway.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_key_or_identity_stops_serve_with_the_fix() {
    let db = shared_cluster().create_database().expect("database");
    db.psql("CREATE TABLE items (id int, v text); CREATE PUBLICATION powersync FOR ALL TABLES")
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, TODO_RULES, "sg_nokey_");
    let error = Gateway::start(&config, fast_options()).expect_error().await;
    assert!(
        error.contains("has no primary key or replica identity"),
        "{error}"
    );
    assert!(error.contains("REPLICA IDENTITY FULL"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_sync_as_text_and_a_50_mb_row_replicates() {
    let db = shared_cluster().create_database().expect("database");
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, doc tsvector, x xml, l line, big text);
         CREATE PUBLICATION powersync FOR ALL TABLES;
         INSERT INTO items VALUES (1, 'a fat cat', '<a>1</a>', '{1,2,3}', 'small')",
    )
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, TODO_RULES, "sg_types_");
    let gateway = Gateway::start(&config, fast_options());
    gateway.sync_point(&db).await;
    db.psql("INSERT INTO items VALUES (2, 'b', '<b/>', '{1,-1,0}', repeat('0123456789', 5 * 1024 * 1024))")
        .expect("50 MB row");
    db.psql("UPDATE items SET doc = 'changed' WHERE id = 2")
        .expect("update beside the big value");
    gateway.sync_point(&db).await;

    let oracle = Oracle::from_database(&db, TODO_RULES).await;
    let report = syncgate::inspect::inspect(
        &gateway.storage(),
        &serde_json::json!({"sub": "u"}),
        &serde_json::json!({}),
    )
    .expect("inspect");
    let rows = &report.buckets[0].rows;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].data["doc"], "'a' 'cat' 'fat'");
    assert_eq!(rows[0].data["x"], "<a>1</a>");
    assert_eq!(rows[0].data["l"], "{1,2,3}");
    assert_eq!(rows[1].data["big"].as_str().map(str::len), Some(50 * 1024 * 1024));
    assert_eq!(rows[1].data["doc"], "'changed'");
    let want = oracle.user_buckets("u");
    let got: usize = want.values().map(std::collections::BTreeSet::len).sum();
    assert_eq!(got, 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_behind_the_gateways_back_is_rebuilt_into_a_new_version() {
    let db = shared_cluster().create_database().expect("database");
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         CREATE PUBLICATION powersync FOR ALL TABLES;
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 50) i",
    )
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, TODO_RULES, "sg_lost_");
    let gateway = Gateway::start(&config, fast_options());
    let (first, _) = gateway.sync_point(&db).await;

    // Terminate the walsender and drop the slot before the gateway reconnects.
    let slot = format!("sg_lost_{first}");
    let started = Instant::now();
    loop {
        let dropped = db
            .psql(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active;
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                   WHERE slot_name = '{slot}' AND NOT active"
            ))
            .map(|out| out.contains('\n') || out.trim().is_empty());
        let gone = db
            .psql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .expect("slots")
            .trim()
            == "0";
        if gone {
            break;
        }
        let _ = dropped;
        assert!(started.elapsed() < TIMEOUT, "could not drop the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.psql("INSERT INTO items VALUES (1000, 'after the slot was lost'); DELETE FROM items WHERE id = 1")
        .expect("changes");

    // A new version replicates from a new snapshot and takes over; the old one is removed.
    let started = Instant::now();
    let second = loop {
        let versions = gateway.versions();
        let active: Vec<_> = versions
            .iter()
            .filter(|(_, state)| *state == syncgate::storage::VersionState::Active)
            .collect();
        if let [(version, _)] = active[..]
            && *version != first
            && versions.len() == 1
        {
            break *version;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "no new version took over: {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (active, _) = gateway.sync_point(&db).await;
    assert_eq!(active, second);
    let oracle = Oracle::from_database(&db, TODO_RULES).await;
    let got = gateway.user_buckets("u");
    assert_eq!(got, oracle.user_buckets("u"));
    let slots = db
        .psql(
            "SELECT string_agg(slot_name, ',') FROM pg_replication_slots WHERE database = current_database()",
        )
        .expect("slots");
    assert_eq!(slots.trim(), format!("sg_lost_{second}"));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_stops_serve_with_the_fix() {
    let cluster = PgCluster::start_with(&ClusterOptions {
        extra_settings: "wal_level = replica".into(),
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let db = cluster.create_database().expect("database");
    db.psql("CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES")
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, TODO_RULES, "sg_wal_");
    let error = Gateway::start(&config, fast_options()).expect_error().await;
    assert!(
        error.contains("wal_level is 'replica'; set wal_level = logical"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_stops_serve_with_the_servers_reason() {
    let cluster = PgCluster::start_with(&ClusterOptions {
        password_auth: true,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let db = cluster.create_database().expect("database");
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES;
         CREATE ROLE app LOGIN REPLICATION PASSWORD 'right'; GRANT SELECT ON items TO app",
    )
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = format!("postgresql://app:wrong@{}:{}/{}", db.host(), db.port(), db.name());
    let config = write_config_with_uri(dir.path(), &uri, TODO_RULES, "sg_pw_");
    let error = Gateway::start(&config, fast_options()).expect_error().await;
    assert!(
        error.contains("password authentication failed for user \"app\""),
        "{error}"
    );
    assert!(
        !error.contains("wrong"),
        "the password never appears in errors: {error}"
    );

    // The right password replicates as the unprivileged role.
    db.psql("INSERT INTO items VALUES (1, 'one')").expect("row");
    let uri = format!("postgresql://app:right@{}:{}/{}", db.host(), db.port(), db.name());
    let config = write_config_with_uri(dir.path(), &uri, TODO_RULES, "sg_pw_");
    let gateway = Gateway::start(&config, fast_options());
    gateway.sync_point(&db).await;
    let report = syncgate::inspect::inspect(
        &gateway.storage(),
        &serde_json::json!({"sub": "u"}),
        &serde_json::json!({}),
    )
    .expect("inspect");
    assert_eq!(report.buckets[0].rows.len(), 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_stream_is_survived() {
    let cluster = PgCluster::start().expect("cluster");
    let db = cluster.create_database().expect("database");
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES;
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 100) i",
    )
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, TODO_RULES, "sg_restart_");
    let gateway = Gateway::start(&config, fast_options());
    let (version, _) = gateway.sync_point(&db).await;
    db.psql("UPDATE items SET v = 'before restart' WHERE id <= 10")
        .expect("update");
    cluster.restart().expect("restart");
    db.psql("UPDATE items SET v = 'after restart' WHERE id > 90; DELETE FROM items WHERE id = 50")
        .expect("update after restart");
    let (after, _) = gateway.sync_point(&db).await;
    assert_eq!(after, version, "the same version goes on after reconnecting");
    let oracle = Oracle::from_database(&db, TODO_RULES).await;
    let got = gateway.user_buckets("u");
    assert_eq!(got, oracle.user_buckets("u"));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_storage_is_refused() {
    let db = shared_cluster().create_database().expect("database");
    db.psql("CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES")
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, TODO_RULES, "sg_twice_");
    let first = Gateway::start(&config, fast_options());
    first.sync_point(&db).await;
    let error = Gateway::start(&config, fast_options()).expect_error().await;
    assert!(
        error.contains("another syncgate serve is using the storage"),
        "{error}"
    );
    first.assert_running();
    first.stop().await;
    // Released when the first one stops.
    let again = Gateway::start(&config, fast_options());
    again.sync_point(&db).await;
    again.stop().await;
}
