//! The two decoders (pgoutput and the syncgate output plugin, docs/pg-ext.md): the same workload gives
//! the same buckets through either, `decoder: auto` picks the plugin only where the server lets it, and a
//! version keeps the decoder its slot was created with (DESIGN invariant 9).
//!
//! Tests that need the plugin skip with a printed reason when it is not installed, unless
//! `SYNCGATE_REQUIRE_PLUGIN=1` (CI's plugin step), which makes them fail instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use syncgate::storage::{BucketStorage, VersionState};
use syncgate_protocol::{BucketName, Checksum, OpId};
use syncgate_test_support::{
    ClusterOptions, PgCluster, TestDatabase, has_output_plugin_allow_list, shared_cluster,
};

use super::harness::{Gateway, TIMEOUT, fast_options, plugin_usable, unversioned, write_config_with_decoder};
use super::{RULES, STREAMED_CHANGES, setup};

/// One bucket as storage holds it at the latest checkpoint: checksum, op count, and every op without
/// its op id (ids differ between storages; the order and content must not).
type BucketOps = (Checksum, u64, Vec<String>);

/// Every bucket of the active version, by unversioned name.
fn bucket_ops(gateway: &Gateway) -> BTreeMap<String, BucketOps> {
    let storage = gateway.storage();
    let active = storage
        .active_version()
        .expect("active")
        .expect("an active version");
    let checkpoint = storage
        .latest_checkpoint(active.version)
        .expect("checkpoint")
        .expect("a checkpoint");
    let buckets: Vec<BucketName> = storage
        .changed_buckets(active.version, OpId::ZERO)
        .expect("buckets");
    let summaries = storage
        .bucket_checksums(active.version, checkpoint.op_id, &buckets)
        .expect("checksums");
    summaries
        .into_iter()
        .map(|summary| {
            let ops = storage
                .ops(
                    active.version,
                    &summary.bucket,
                    OpId::ZERO,
                    checkpoint.op_id,
                    usize::MAX,
                )
                .expect("ops")
                .into_iter()
                .map(|stored| {
                    let e = stored.entry;
                    format!("{:?} {:?}/{:?} {:?}", e.op, e.object_type, e.object_id, e.data)
                })
                .collect();
            (
                unversioned(summary.bucket.as_str()),
                (summary.checksum, summary.count, ops),
            )
        })
        .collect()
}

fn slot_plugins(db: &TestDatabase, prefix: &str) -> Vec<String> {
    db.psql(&format!(
        "SELECT plugin FROM pg_replication_slots WHERE slot_name LIKE '{prefix}%' ORDER BY slot_name"
    ))
    .expect("slots")
    .lines()
    .map(str::to_owned)
    .collect()
}

/// One-row `items` with a publication, readable by an ordinary replication role `app`; returns app's URI.
/// The plugin allow-list binds roles with REPLICATION and a superuser may be exempt, hence the role.
fn items_for_app_role(db: &TestDatabase) -> String {
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES;
         INSERT INTO items VALUES (1, 'one');
         CREATE ROLE app LOGIN REPLICATION; GRANT SELECT ON items TO app",
    )
    .expect("schema");
    format!("postgresql://app@{}:{}/{}", db.host(), db.port(), db.name())
}

fn config_uri(db: &TestDatabase) -> String {
    db.url_without_session_options()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgoutput_and_the_plugin_build_identical_buckets() {
    let db = shared_cluster().create_database().expect("database");
    if plugin_usable(&db).await.is_err() {
        return;
    }
    setup(&db);
    let pg_dir = tempfile::tempdir().expect("tempdir");
    let plugin_dir = tempfile::tempdir().expect("tempdir");
    let uri = config_uri(&db);
    let via_pgoutput = Gateway::start(
        &write_config_with_decoder(pg_dir.path(), &uri, RULES, "sg_cmp_pg_", "pgoutput"),
        fast_options(),
    );
    let via_plugin = Gateway::start(
        &write_config_with_decoder(plugin_dir.path(), &uri, RULES, "sg_cmp_sg_", "syncgate"),
        fast_options(),
    );
    // Both snapshots are done before the workload, so both see it as streamed changes only.
    via_pgoutput.sync_point(&db).await;
    via_plugin.sync_point(&db).await;
    assert_eq!(slot_plugins(&db, "sg_cmp_pg_"), ["pgoutput"]);
    assert_eq!(slot_plugins(&db, "sg_cmp_sg_"), ["syncgate"]);
    assert_eq!(
        bucket_ops(&via_pgoutput),
        bucket_ops(&via_plugin),
        "after the snapshot"
    );

    for sql in STREAMED_CHANGES {
        db.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    via_pgoutput.sync_point(&db).await;
    via_plugin.sync_point(&db).await;
    let expected = bucket_ops(&via_pgoutput);
    let got = bucket_ops(&via_plugin);
    assert!(expected.len() > 5, "the workload fills several buckets");
    for (bucket, (checksum, count, ops)) in &expected {
        let (got_checksum, got_count, got_ops) = got
            .get(bucket)
            .unwrap_or_else(|| panic!("bucket {bucket} missing from the plugin's storage"));
        assert_eq!(got_ops, ops, "ops of bucket {bucket}");
        assert_eq!(
            (got_checksum, got_count),
            (checksum, count),
            "checksum and count of {bucket}"
        );
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    via_pgoutput.stop().await;
    via_plugin.stop().await;
}

const ITEM_RULES: &str = "bucket_definitions:
  global:
    data:
      - SELECT * FROM items
";

const ITEM_RULES_V2: &str = "bucket_definitions:
  global:
    data:
      - SELECT id, v AS value FROM items
";

/// `auto` takes the plugin on a server that allows it, and pgoutput on one whose
/// `output_plugin_libraries` leaves it out (there, an explicit `decoder: syncgate` is an error with the
/// server's reason rather than a silent fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_the_plugin_only_where_the_server_allows_it() {
    let db = shared_cluster().create_database().expect("database");
    let expected = match plugin_usable(&db).await {
        Ok(()) => "syncgate",
        Err(_) => "pgoutput",
    };
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES;
         INSERT INTO items VALUES (1, 'one')",
    )
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config_with_decoder(dir.path(), &config_uri(&db), ITEM_RULES, "sg_auto_", "auto");
    let gateway = Gateway::start(&config, fast_options());
    gateway.sync_point(&db).await;
    assert_eq!(slot_plugins(&db, "sg_auto_"), [expected]);
    gateway.stop().await;

    let cluster = shared_cluster();
    if !has_output_plugin_allow_list(cluster.bin_dir()) {
        eprintln!("skipped the refused-plugin half: this server has no output_plugin_libraries setting");
        return;
    }
    let refusing = PgCluster::start_with(&ClusterOptions {
        extra_settings: "output_plugin_libraries = 'pgoutput, test_decoding'".into(),
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let db = refusing.create_database().expect("database");
    let uri = items_for_app_role(&db);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config_with_decoder(dir.path(), &uri, ITEM_RULES, "sg_auto_", "syncgate");
    let error = Gateway::start(&config, fast_options()).expect_error().await;
    assert!(
        error.contains("`decoder: syncgate` is configured but the source database cannot create a slot"),
        "{error}"
    );
    let config = write_config_with_decoder(dir.path(), &uri, ITEM_RULES, "sg_auto_", "auto");
    let gateway = Gateway::start(&config, fast_options());
    gateway.sync_point(&db).await;
    assert_eq!(slot_plugins(&db, "sg_auto_"), ["pgoutput"]);
    assert_eq!(gateway.user_buckets("u").values().flatten().count(), 1);
    gateway.stop().await;
}

/// A version keeps the decoder its slot was created with when the config names the other one; the next
/// version (a rules change) is created with the configured one. Both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_keeps_its_decoder_across_restarts_with_another_configured() {
    let db = shared_cluster().create_database().expect("database");
    if plugin_usable(&db).await.is_err() {
        return;
    }
    db.psql("CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES")
        .expect("schema");
    let uri = config_uri(&db);
    for (first, then, prefix) in [
        ("syncgate", "pgoutput", "sg_keep_a_"),
        ("pgoutput", "syncgate", "sg_keep_b_"),
    ] {
        db.psql("TRUNCATE items; INSERT INTO items VALUES (1, 'one')")
            .expect("rows");
        let dir = tempfile::tempdir().expect("tempdir");
        let gateway = Gateway::start(
            &write_config_with_decoder(dir.path(), &uri, ITEM_RULES, prefix, first),
            fast_options(),
        );
        let (version, _) = gateway.sync_point(&db).await;
        gateway.stop().await;

        let gateway = Gateway::start(
            &write_config_with_decoder(dir.path(), &uri, ITEM_RULES, prefix, then),
            fast_options(),
        );
        db.psql("INSERT INTO items VALUES (2, 'two')").expect("insert");
        let (same, _) = gateway.sync_point(&db).await;
        assert_eq!(same, version, "{first} → {then}: the same version goes on");
        assert_eq!(slot_plugins(&db, prefix), [first], "{first} → {then}");
        assert_eq!(gateway.user_buckets("u").values().flatten().count(), 2);

        // A rules change builds the next version with the configured decoder.
        gateway.stop().await;
        let gateway = Gateway::start(
            &write_config_with_decoder(dir.path(), &uri, ITEM_RULES_V2, prefix, then),
            fast_options(),
        );
        let started = Instant::now();
        loop {
            let versions = gateway.versions();
            if versions
                .iter()
                .any(|(v, state)| *v != version && *state == VersionState::Active)
                && versions.len() == 1
            {
                break;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "no switch to the new rules: {versions:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway.sync_point(&db).await;
        // The old slot goes once its walsender lets go.
        let started = Instant::now();
        while slot_plugins(&db, prefix).len() > 1 {
            assert!(started.elapsed() < TIMEOUT, "old slot not dropped");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            slot_plugins(&db, prefix),
            [then],
            "{first} → {then}: the new version"
        );
        gateway.stop().await;
    }
}

/// A version created with the plugin never falls back to pgoutput: once the server refuses the plugin,
/// the configured pgoutput applies to new versions only, and the old version keeps retrying its own
/// plugin with the server's reason and what to do in every warning (clients go on syncing its data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_plugin_is_refused_later_retries_with_a_clear_error() {
    let cluster = PgCluster::start().expect("cluster");
    let db = cluster.create_database().expect("database");
    if plugin_usable(&db).await.is_err() {
        return;
    }
    if !has_output_plugin_allow_list(cluster.bin_dir()) {
        eprintln!("skipped: this server has no output_plugin_libraries setting to refuse the plugin with");
        return;
    }
    let uri = items_for_app_role(&db);
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = Gateway::start(
        &write_config_with_decoder(dir.path(), &uri, ITEM_RULES, "sg_gone_", "syncgate"),
        fast_options(),
    );
    let (version, _) = gateway.sync_point(&db).await;
    gateway.stop().await;

    db.psql("ALTER SYSTEM SET output_plugin_libraries = 'pgoutput, test_decoding'; SELECT pg_reload_conf()")
        .expect("refuse the plugin");
    db.psql("INSERT INTO items VALUES (2, 'two')").expect("insert");
    // The binary, for its log: the retries are warnings, not an exit.
    let config = write_config_with_decoder(dir.path(), &uri, ITEM_RULES, "sg_gone_", "pgoutput");
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_syncgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn syncgate serve");
    let started = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log_path).expect("read log");
        if text.contains("replication interrupted; reconnecting") {
            break text;
        }
        if started.elapsed() > TIMEOUT || serve.try_wait().expect("serve status").is_some() {
            let _ = serve.kill();
            panic!("no retry warning:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(text.contains("may not be used as an output plugin"), "{text}");
    assert!(
        text.contains(&format!(
            "version {version} was created with the syncgate output plugin"
        )),
        "{text}"
    );
    assert_eq!(slot_plugins(&db, "sg_gone_"), ["syncgate"]);
}
