//! Sync-rules changes: a new version builds in the background while the old one serves, then takes
//! over atomically; the old version's slot and data are removed.

use std::time::{Duration, Instant};

use syncgate::storage::VersionState;
use syncgate_test_support::shared_cluster;

use super::harness::{Gateway, Oracle, TIMEOUT, fast_options, unversioned, write_config};
use super::{RULES, setup};

const NEW_RULES: &str = "bucket_definitions:
  by_owner:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, name FROM lists WHERE owner_id = bucket.owner
      - SELECT id, description FROM todos WHERE list_id IN (SELECT id FROM lists WHERE owner_id = bucket.owner)
";

const SIMPLER_NEW_RULES: &str = "bucket_definitions:
  by_owner:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, name FROM lists WHERE owner_id = bucket.owner
  everything:
    data:
      - SELECT id, description FROM todos
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_change_switches_versions_atomically_and_drops_the_old_slot() {
    let db = shared_cluster().create_database().expect("database");
    setup(&db);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &db, RULES, "sg_switch_");
    let gateway = Gateway::start(&config, fast_options());
    let (old, _) = gateway.sync_point(&db).await;
    gateway.stop().await;

    // Invalid new rules are refused at start and the old version is untouched.
    let broken = write_config(dir.path(), &db, NEW_RULES, "sg_switch_");
    let error = Gateway::start(&broken, fast_options()).expect_error().await;
    assert!(error.contains("invalid sync rules"), "{error}");

    let config = write_config(dir.path(), &db, SIMPLER_NEW_RULES, "sg_switch_");
    let gateway = Gateway::start(&config, fast_options());
    // Writes while the new version builds reach both.
    db.psql("INSERT INTO todos VALUES (9001, 'l2', 'during the switch', 'x', false, now())")
        .expect("write");
    let started = Instant::now();
    let mut seen_active = Vec::new();
    let new = loop {
        let versions = gateway.versions();
        let active: Vec<_> = versions
            .iter()
            .filter(|(_, s)| *s == VersionState::Active)
            .map(|(v, _)| *v)
            .collect();
        assert_eq!(
            active.len(),
            1,
            "exactly one active version at every moment: {versions:?}"
        );
        if seen_active.last() != Some(&active[0]) {
            seen_active.push(active[0]);
        }
        if active[0] != old && versions.len() == 1 {
            break active[0];
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the new version did not take over: {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        seen_active,
        vec![old, new],
        "the old version served until the new one took over"
    );
    let slots = db
        .psql(
            "SELECT string_agg(slot_name, ',') FROM pg_replication_slots WHERE database = current_database()",
        )
        .expect("slots");
    assert_eq!(
        slots.trim(),
        format!("sg_switch_{new}"),
        "the old slot is dropped"
    );

    gateway.sync_point(&db).await;
    let oracle = Oracle::from_database(&db, SIMPLER_NEW_RULES).await;
    for user in ["alice", "bob"] {
        let report = syncgate::inspect::inspect(
            &gateway.storage(),
            &serde_json::json!({"sub": user}),
            &serde_json::json!({}),
        )
        .expect("inspect");
        assert_eq!(report.version, new.0);
        let want = oracle.user_buckets(user);
        assert_eq!(report.buckets.len(), want.len());
        for bucket in report.buckets {
            let got: std::collections::BTreeSet<(String, String, String)> = bucket
                .rows
                .iter()
                .map(|r| (r.table.clone(), r.id.clone(), r.data.to_string()))
                .collect();
            let name = unversioned(&bucket.bucket);
            assert_eq!(
                bucket.bucket,
                format!("{new}#{name}"),
                "the new version's buckets carry its prefix"
            );
            assert_eq!(got, want[&name], "bucket {}", bucket.bucket);
        }
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_slots_with_our_prefix_are_dropped_and_others_kept() {
    let db = shared_cluster().create_database().expect("database");
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION powersync FOR ALL TABLES;
         SELECT pg_create_logical_replication_slot('sg_orphan_12345', 'pgoutput');
         SELECT pg_create_logical_replication_slot('someone_elses', 'pgoutput')",
    )
    .expect("schema and slots");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM items\n";
    let config = write_config(dir.path(), &db, rules, "sg_orphan_");
    let gateway = Gateway::start(&config, fast_options());
    let (version, _) = gateway.sync_point(&db).await;
    let slots = db
        .psql("SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE database = current_database()")
        .expect("slots");
    assert_eq!(slots.trim(), format!("sg_orphan_{version},someone_elses"));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_database_gets_its_first_checkpoint_without_any_write() {
    let db = shared_cluster().create_database().expect("database");
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES;
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 30) i",
    )
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM items\n";
    let config = write_config(dir.path(), &db, rules, "sg_idle_");
    let gateway = Gateway::start(&config, fast_options());
    // No write and no marker from the test: the gateway's own marker after the snapshot publishes it.
    let (_, checkpoint) = gateway.wait_for_lsn(syncgate::storage::Lsn::ZERO).await;
    let emitted = db
        .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'sg_idle_%'")
        .expect("slots");
    assert_eq!(emitted.trim(), "1");
    assert!(checkpoint.lsn > syncgate::storage::Lsn::ZERO);
    assert_eq!(
        gateway
            .user_buckets("u")
            .values()
            .map(|rows| rows.len())
            .sum::<usize>(),
        30
    );
    gateway.stop().await;
}

/// SIGHUP to the real binary re-reads the config: new rules build a new version and take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_changed_rules() {
    let db = shared_cluster().create_database().expect("database");
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE PUBLICATION powersync FOR ALL TABLES;
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 10) i",
    )
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let first = "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM items\n";
    let config = write_config(dir.path(), &db, first, "sg_hup_");
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_syncgate"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start syncgate serve"),
    );
    let storage_path = dir.path().join("storage.sqlite");
    let active = |want_rules: &str| -> Option<u64> {
        let storage = syncgate::storage::SqliteStorage::open(&storage_path).ok()?;
        let active = syncgate::storage::BucketStorage::active_version(&storage).ok()??;
        (active.rules == want_rules).then_some(active.version.0)
    };
    let wait = |want_rules: &str| {
        let started = Instant::now();
        loop {
            if let Some(version) = storage_path.exists().then(|| active(want_rules)).flatten() {
                return version;
            }
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            assert!(
                started.elapsed() < TIMEOUT,
                "rules not active in time; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let old = wait(first);

    let second = "bucket_definitions:\n  some:\n    data:\n      - SELECT * FROM items WHERE id > 5\n";
    write_config(dir.path(), &db, second, "sg_hup_");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    let new = wait(second);
    assert_ne!(new, old);
    assert!(
        child.0.try_wait().expect("child status").is_none(),
        "serve keeps running"
    );
}

/// Kills the child process when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
