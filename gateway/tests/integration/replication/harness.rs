//! Running `serve` against a test database, waiting for it, and computing what the rules say the
//! buckets must hold from a direct `SELECT` of the database (the oracle the replicated state must equal).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use syncgate::config::{Config, StorageConfig};
use syncgate::replicator::{Catalog, ReplicatorOptions, Scratch, SourceConnection, TableMapper};
use syncgate::serve::{ServeOptions, serve};
use syncgate::source::{OutputPlugin, TableName, table_layout};
use syncgate::storage::{
    BucketStorage, Checkpoint, ConfiguredStorage, Lsn, PostgresStorage, RulesVersion, SqliteStorage,
    VersionState,
};
use syncgate_rules::{
    CompileOptions, ConnectionRequest, ParameterLookup, SourceTable, SqliteValue, SyncRules, compile,
};
use syncgate_test_support::TestDatabase;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The decoder the replication tests run with: `SYNCGATE_TEST_DECODER=pgoutput|syncgate`, default
/// pgoutput (CI's main test step runs before the plugin is installed).
pub fn test_decoder() -> OutputPlugin {
    match std::env::var("SYNCGATE_TEST_DECODER").ok().as_deref() {
        None | Some("" | "pgoutput") => OutputPlugin::Pgoutput,
        Some("syncgate") => OutputPlugin::Syncgate,
        Some(other) => panic!("SYNCGATE_TEST_DECODER must be pgoutput or syncgate, not {other:?}"),
    }
}

/// Whether a test that needs the syncgate plugin may run on `db`'s server: `Ok` when a slot with it can
/// be created, else the reason. With `SYNCGATE_REQUIRE_PLUGIN=1` (CI's plugin step) a missing plugin
/// fails the test instead of skipping it.
pub async fn plugin_usable(db: &TestDatabase) -> Result<(), String> {
    let catalog = Catalog::new(db.connect().await.expect("connect"));
    let usable = catalog.probe_output_plugin(OutputPlugin::Syncgate).await;
    if let Err(reason) = &usable {
        assert!(
            std::env::var("SYNCGATE_REQUIRE_PLUGIN").as_deref() != Ok("1"),
            "SYNCGATE_REQUIRE_PLUGIN=1 but the syncgate output plugin is not usable: {reason}"
        );
        eprintln!("skipped: the syncgate output plugin is not usable on the test cluster ({reason})");
    }
    usable
}

/// A `serve` run in this process.
pub struct Gateway {
    /// The config's storage, which the test opens alongside the gateway.
    pub storage_config: StorageConfig,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn write_config(dir: &Path, db: &TestDatabase, rules: &str, slot_prefix: &str) -> PathBuf {
    let uri = db.url_without_session_options();
    write_config_with_uri(dir, &uri, rules, slot_prefix)
}

pub fn write_config_with_uri(dir: &Path, uri: &str, rules: &str, slot_prefix: &str) -> PathBuf {
    write_config_with_storage(dir, uri, rules, slot_prefix, SQLITE_STORAGE)
}

/// The `storage` section of [`write_config`]: a file beside the config.
pub const SQLITE_STORAGE: &str = "storage:\n  type: sqlite\n  path: storage.sqlite\n";

/// A `storage` section for Postgres storage in `db` (not the source database).
pub fn postgres_storage(db: &TestDatabase) -> String {
    format!(
        "storage:\n  type: postgresql\n  uri: {}\n  sslmode: disable\n",
        db.url_without_session_options()
    )
}

/// A config for a source at `uri` with `storage` (a YAML `storage:` section) and the test decoder.
pub fn write_config_with_storage(
    dir: &Path,
    uri: &str,
    rules: &str,
    slot_prefix: &str,
    storage: &str,
) -> PathBuf {
    write_config_with_decoder_and_storage(dir, uri, rules, slot_prefix, test_decoder().name(), storage)
}

/// A config with an explicit `decoder` (`pgoutput`, `syncgate` or `auto`) and SQLite storage.
pub fn write_config_with_decoder(
    dir: &Path,
    uri: &str,
    rules: &str,
    slot_prefix: &str,
    decoder: &str,
) -> PathBuf {
    write_config_with_decoder_and_storage(dir, uri, rules, slot_prefix, decoder, SQLITE_STORAGE)
}

pub fn write_config_with_decoder_and_storage(
    dir: &Path,
    uri: &str,
    rules: &str,
    slot_prefix: &str,
    decoder: &str,
    storage: &str,
) -> PathBuf {
    let mut indented = String::new();
    for line in rules.lines() {
        indented.push_str("    ");
        indented.push_str(line);
        indented.push('\n');
    }
    use base64::Engine as _;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(TEST_SECRET);
    let port = free_port();
    let config = format!(
        "replication:\n  connections:\n    - type: postgresql\n      uri: {uri}\n      \
         sslmode: disable\n      slot_name_prefix: {slot_prefix}\n      decoder: {decoder}\n{storage}\
         port: {port}\nclient_auth:\n  audience:\n    - syncgate-test\n  jwks:\n    keys:\n      \
         - kty: oct\n        alg: HS256\n        kid: test-hs256\n        k: {key}\n\
         sync_rules:\n  content: |\n{indented}",
    );
    let path = dir.join("powersync.yaml");
    std::fs::write(&path, config).expect("write config");
    path
}

pub fn fast_options() -> ServeOptions {
    ServeOptions {
        replicator: ReplicatorOptions {
            snapshot_chunk_rows: 7,
            max_batch_delay: Duration::from_millis(10),
            slot_check_interval: Duration::from_secs(1),
            ..ReplicatorOptions::default()
        },
        ..ServeOptions::default()
    }
}

impl Gateway {
    pub fn start(config_path: &Path, options: ServeOptions) -> Gateway {
        let (stop, stop_rx) = watch::channel(false);
        let config = config_path.to_path_buf();
        let storage_config = Config::load(&config).expect("config").config.storage;
        let task = tokio::spawn(async move {
            let result = serve(config, options, stop_rx).await;
            if let Err(error) = &result {
                eprintln!("serve ended with an error: {error:#}");
            }
            result
        });
        Gateway {
            storage_config,
            stop,
            task: Some(task),
        }
    }

    /// Reads the storage of gateways the test runs otherwise: no serve of its own.
    pub fn watching(config_path: &Path) -> Gateway {
        Gateway {
            storage_config: Config::load(config_path).expect("config").config.storage,
            stop: watch::channel(false).0,
            task: None,
        }
    }

    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("serve stops in time")
                .expect("serve task")
                .unwrap_or_else(|e| panic!("serve ended with an error: {e:#}"));
        }
    }

    /// Waits for serve to end by itself and returns its error (with causes, as the binary prints it).
    pub async fn expect_error(mut self) -> String {
        let task = self.task.take().expect("running");
        let result = tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("serve gives up in time")
            .expect("serve task");
        match result {
            Ok(()) => panic!("serve ended without an error"),
            Err(error) => format!("{error:#}"),
        }
    }

    /// Fails the test if serve has already ended with an error.
    pub fn assert_running(&self) {
        if let Some(task) = &self.task {
            assert!(!task.is_finished(), "serve ended early");
        }
    }

    /// The gateway's storage, opened by the test (a second connection to the same storage).
    pub fn storage(&self) -> ConfiguredStorage {
        match &self.storage_config {
            StorageConfig::Sqlite { path } => {
                ConfiguredStorage::Sqlite(SqliteStorage::open(path).expect("open storage"))
            }
            StorageConfig::Postgres(config) => {
                ConfiguredStorage::Postgres(PostgresStorage::open(config).expect("open storage"))
            }
        }
    }

    /// Whether the storage exists yet (`serve` creates the SQLite file; opening Postgres storage
    /// creates its schema, safely beside the gateway doing the same).
    fn storage_exists(&self) -> bool {
        match &self.storage_config {
            StorageConfig::Sqlite { path } => path.exists(),
            StorageConfig::Postgres(_) => true,
        }
    }

    /// Waits until the active version has a checkpoint at or past `lsn`.
    pub async fn wait_for_lsn(&self, lsn: Lsn) -> (RulesVersion, Checkpoint) {
        let started = Instant::now();
        loop {
            self.assert_running();
            if self.storage_exists() {
                let storage = self.storage();
                if let Some(active) = storage.active_version().expect("active version")
                    && let Some(checkpoint) = storage.latest_checkpoint(active.version).expect("checkpoint")
                    && checkpoint.lsn >= lsn
                {
                    eprintln!("caught up with {lsn} in {:?}", started.elapsed());
                    return (active.version, checkpoint);
                }
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "no checkpoint at {lsn} within {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Emits a marker and waits until the gateway has a checkpoint past it: everything committed
    /// before this call is in storage then.
    pub async fn sync_point(&self, db: &TestDatabase) -> (RulesVersion, Checkpoint) {
        let lsn: Lsn = db
            .psql("SELECT pg_logical_emit_message(false, 'powersync', 'ping')")
            .expect("emit marker")
            .trim()
            .parse()
            .expect("marker lsn");
        self.wait_for_lsn(lsn).await
    }

    /// What `inspect` reports for `user` at the latest checkpoint, as bucket → (table, id, data) rows:
    /// the shape of [`Oracle::user_buckets`].
    pub fn user_buckets(&self, user: &str) -> BTreeMap<String, BTreeSet<(String, String, String)>> {
        let report = syncgate::inspect::inspect(
            &self.storage(),
            &serde_json::json!({ "sub": user }),
            &serde_json::json!({}),
        )
        .expect("inspect");
        report
            .buckets
            .into_iter()
            .map(|b| {
                let rows = b
                    .rows
                    .into_iter()
                    .map(|r| (r.table, r.id, r.data.to_string()))
                    .collect();
                (unversioned(&b.bucket), rows)
            })
            .collect()
    }

    pub fn versions(&self) -> Vec<(RulesVersion, VersionState)> {
        self.assert_running();
        self.storage()
            .versions()
            .expect("versions")
            .into_iter()
            .map(|v| (v.version, v.state))
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// What the rules make of the database's current rows: bucket → rows, lookup key → values.
pub struct Oracle {
    pub rules: SyncRules,
    pub buckets: BTreeMap<String, BTreeSet<(String, String, String)>>,
    pub lookups: HashMap<String, Vec<String>>,
}

pub fn compile_rules(text: &str) -> SyncRules {
    let result = compile(text, &CompileOptions::default());
    result
        .rules
        .unwrap_or_else(|| panic!("rules compile: {:?}", result.diagnostics))
}

impl Oracle {
    /// Reads every published table the rules use with `SELECT` and evaluates each row.
    pub async fn from_database(db: &TestDatabase, rules_text: &str) -> Oracle {
        let rules = compile_rules(rules_text);
        let source = SourceConnection::from_url(&db.url()).expect("source");
        let client = source.connect("oracle").await.expect("connect");
        let mut catalog = Catalog::new(source.connect("oracle catalog").await.expect("connect"));
        let patterns = rules.source_tables();
        let tables = catalog
            .publication_tables("powersync")
            .await
            .expect("publication tables");
        let mut buckets: BTreeMap<String, BTreeSet<(String, String, String)>> = BTreeMap::new();
        let mut lookups: HashMap<String, Vec<String>> = HashMap::new();
        let mut scratch = Scratch::default();
        for table in tables {
            let probe = SourceTable::new(&table.schema, &table.name, &[]);
            if !patterns.iter().any(|p| p.matches(&probe)) {
                continue;
            }
            let layout = table_layout(&client, &TableName::new(table.schema.clone(), table.name.clone()))
                .await
                .expect("layout");
            let mut types = Vec::new();
            for &oid in &layout.type_oids {
                types.push(catalog.column_type(oid).await.expect("type"));
            }
            let mapper = TableMapper::new(
                &rules,
                layout.table.clone(),
                layout.columns.clone(),
                &layout.type_oids,
                types,
                layout.identity.clone(),
            );
            let columns: Vec<String> = layout.columns.iter().map(|c| format!("\"{c}\"")).collect();
            let messages = client
                .simple_query(&format!(
                    "SELECT {} FROM {}",
                    columns.join(", "),
                    layout.table.quoted()
                ))
                .await
                .expect("select");
            for message in messages {
                let tokio_postgres::SimpleQueryMessage::Row(row) = message else {
                    continue;
                };
                let values: Vec<Option<&str>> = (0..row.len()).map(|i| row.get(i)).collect();
                let change = mapper.evaluate(&rules, &values, &mut scratch);
                for p in change.placements.iter().flatten() {
                    buckets.entry(p.bucket.as_str().to_owned()).or_default().insert((
                        p.table.clone(),
                        p.id.clone(),
                        p.data.clone(),
                    ));
                }
                for entry in change.parameters.iter().flatten() {
                    lookups
                        .entry(entry.lookup_key.clone())
                        .or_default()
                        .push(entry.values_json.clone());
                }
            }
        }
        Oracle {
            rules,
            buckets,
            lookups,
        }
    }

    /// The buckets `user` syncs, with their rows (table, id, data as parsed JSON), by the oracle.
    pub fn user_buckets(&self, user: &str) -> BTreeMap<String, BTreeSet<(String, String, String)>> {
        let payload = serde_json::json!({ "sub": user });
        let request = ConnectionRequest::new(&payload, &serde_json::json!({}));
        let resolved = self
            .rules
            .resolve_buckets(
                &request,
                |lookups: &[ParameterLookup]| -> Result<_, std::convert::Infallible> {
                    Ok(lookups
                        .iter()
                        .map(|l| {
                            self.lookups
                                .get(&l.key())
                                .map(|rows| rows.iter().map(|json| json_values(json)).collect())
                                .unwrap_or_default()
                        })
                        .collect::<Vec<Vec<Vec<SqliteValue>>>>())
                },
            )
            .expect("resolve buckets");
        resolved
            .into_iter()
            .map(|b| {
                let name = b.bucket.as_str().to_owned();
                let rows = self
                    .buckets
                    .get(&name)
                    .map(|rows| {
                        rows.iter()
                            .map(|(t, i, d)| (t.clone(), i.clone(), canonical(d)))
                            .collect()
                    })
                    .unwrap_or_default();
                (name, rows)
            })
            .collect()
    }
}

/// JSON text re-serialized, so texts that differ only in spacing compare equal.
/// A stored bucket id without its `<version>#` prefix, as the oracle (compiled unversioned) names it.
pub fn unversioned(bucket: &str) -> String {
    match bucket.split_once('#') {
        Some((version, rest)) if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) => {
            rest.to_owned()
        }
        _ => bucket.to_owned(),
    }
}

/// A free TCP port on the loopback interface (for the gateway's `port`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// HS256 key the test configs accept (`kid` test-hs256, audience syncgate-test).
pub const TEST_SECRET: &str = "syncgate-test-secret-0123456789abcdef0123456789";

pub fn canonical(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .expect("row json")
        .to_string()
}

/// A stored parameter row's values (a JSON array) as rule values.
fn json_values(json: &str) -> Vec<SqliteValue> {
    let parsed: serde_json::Value = serde_json::from_str(json).expect("values json");
    parsed
        .as_array()
        .expect("values array")
        .iter()
        .map(SqliteValue::from_json)
        .collect()
}
