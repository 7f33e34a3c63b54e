//! `syncgate dev`: the demo todo app running locally in one command — a persistent Postgres cluster in
//! the project folder (or `--database-url`), the demo schema and data, the gateway in this process
//! with embedded storage, and the demo backend for uploads ([`backend`]). docs/dev.md describes it.
//!
//! Everything it starts stops on SIGINT/SIGTERM (or after the first sync with `--exit-after-ready`), in
//! order: the gateway (open sync streams end first), the backend, then Postgres (fast shutdown), each
//! waited for; a signal before the gateway is up stops what was started so far, the same way. Progress
//! goes to stderr ([`progress`]), the ready summary to stdout.

pub mod backend;
mod progress;
pub mod project;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use syncgate_client::{
    BackendConnector, ClientError, Credentials, CrudTransaction, LocalDatabase, Schema, SyncDriver,
    SyncOptions,
};
use syncgate_pgcluster::{ClusterError, PgCluster};
use tokio::sync::{oneshot, watch};

use self::backend::DemoBackend;
use self::progress::Progress;
use self::project::{DEMO_DATA_SQL, DEMO_SCHEMA_SQL, DEMO_TABLES, Project};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::replicator::ReplicationMetrics;
use crate::serve::{Embedding, ServeOptions, ServedStorage, serve_embedded};
use crate::storage::BucketStorage as _;

/// The database the local cluster holds the demo in.
const DEMO_DATABASE: &str = "demo";
/// Tokens printed for the demo users.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// Backstop for the initial snapshot and the first sync (each a fraction of a second for the demo).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the snapshot's figures are read while waiting for the first checkpoint.
const SNAPSHOT_POLL: Duration = Duration::from_millis(200);
/// The least time between two snapshot lines when stderr is not a terminal.
const SNAPSHOT_LINE_EVERY: Duration = Duration::from_secs(1);

/// What `syncgate dev` was asked to do.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub dir: PathBuf,
    pub database_url: Option<String>,
    /// Bucket storage in this Postgres database instead of the project folder's SQLite file.
    pub storage_url: Option<String>,
    pub port: u16,
    pub backend_port: u16,
    pub exit_after_ready: bool,
    /// Write the project folder's files (and load the demo if missing), then exit: docker-compose.yml.
    pub config_only: bool,
    /// The user `--exit-after-ready` syncs.
    pub user: String,
}

/// Runs `syncgate dev` until a signal (or the first sync with `exit_after_ready`).
pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let (progress, redraw) = Progress::start();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let signals = tokio::spawn(forward_signals(shutdown_tx.clone(), progress.clone()));
    let result = run_until_stopped(&options, &progress, shutdown_tx, shutdown_rx).await;
    signals.abort();
    if let Some(redraw) = redraw {
        redraw.abort();
    }
    // An error leaves its stage's spinner behind: its line makes room for the error message.
    progress.finish_quietly();
    result
}

async fn run_until_stopped(
    options: &DevOptions,
    progress: &Progress,
    shutdown_tx: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let project = Project::open(&options.dir)?;
    progress.step(format_args!("project folder {}", project.dir.display()));

    let cluster = match &options.database_url {
        Some(_) => None,
        None => match start_cluster(&project, progress).await {
            Ok(cluster) => Some(cluster),
            // Ctrl-C reaches `initdb` too (our process group), which may fail before our own handler has
            // run: a failure that the signal follows at once is what was asked for.
            Err(error) if signalled_soon(shutdown_rx.clone()).await => {
                let error = format!("{error:#}");
                let first_line = error.lines().next().unwrap_or_default();
                progress.finish(format_args!(
                    "postgres: start interrupted ({first_line}); stopped"
                ));
                return Ok(());
            }
            Err(error) => return Err(error),
        },
    };
    let result = run_with_postgres(
        options,
        &project,
        cluster.as_ref(),
        progress,
        shutdown_tx,
        shutdown_rx,
    )
    .await;
    if let Some(cluster) = cluster {
        let root = cluster.root().to_owned();
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .context("stopping Postgres")?;
        progress.step(format_args!(
            "postgres stopped (fast shutdown; data kept in {})",
            root.display()
        ));
    }
    result
}

async fn run_with_postgres(
    options: &DevOptions,
    project: &Project,
    cluster: Option<&PgCluster>,
    progress: &Progress,
    shutdown_tx: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let database_url = match (&options.database_url, cluster) {
        (Some(url), _) => url.clone(),
        (None, Some(cluster)) => {
            prepare_local_database(cluster).await?;
            format!(
                "postgresql://postgres@127.0.0.1:{}/{DEMO_DATABASE}",
                cluster.port()
            )
        }
        (None, None) => bail!("neither --database-url nor a local cluster"),
    };
    let postgres = connect(&database_url).await?;
    load_demo_if_missing(&postgres, options.database_url.is_some(), progress).await?;
    // A signal during the steps above: nothing else to start (`run_until_stopped` stops the cluster).
    if *shutdown_rx.borrow() {
        return Ok(());
    }
    if options.config_only {
        let config_path = project.write_files(&database_url, options.storage_url.as_deref(), options.port)?;
        // What `serve` will read: a bad --storage-url fails here, not when the gateway starts.
        Config::load(&config_path)?;
        progress.step(format_args!("wrote {} (--config-only)", config_path.display()));
        return Ok(());
    }

    let api_listener = crate::api::bind_listener(options.port)
        .with_context(|| format!("binding the sync API's port {} (--port)", options.port))?;
    let api_port = api_listener.local_addr()?.port();
    let backend_listener = backend::bind(SocketAddr::from(([127, 0, 0, 1], options.backend_port)))
        .await
        .with_context(|| {
            format!(
                "binding the demo backend's port {} (--backend-port)",
                options.backend_port
            )
        })?;
    let backend_port = backend_listener.local_addr()?.port();
    let config_path = project.write_files(&database_url, options.storage_url.as_deref(), api_port)?;
    let config = Config::load(&config_path)?.config;

    progress.stage("gateway: starting (source checks, replication slot, initial snapshot)");
    let (storage_tx, storage_rx) = oneshot::channel();
    let metrics = Arc::new(ReplicationMetrics::default());
    let mut gateway = tokio::spawn(serve_embedded(
        config_path.clone(),
        ServeOptions::default(),
        shutdown_rx.clone(),
        Some(Embedding {
            listener: api_listener,
            storage: storage_tx,
            metrics: Arc::clone(&metrics),
        }),
    ));
    let authenticator = Authenticator::new(&config.client_auth).context("the config's client_auth")?;
    let backend = tokio::spawn(
        DemoBackend::new(database_url.clone(), authenticator).serve(backend_listener, shutdown_rx.clone()),
    );

    let outcome = async {
        let mut stop = shutdown_rx.clone();
        let storage = tokio::select! {
            // A signal while the gateway starts: it stops once it notices (awaited below).
            biased;
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
            storage = storage_rx => storage.ok(),
            ended = &mut gateway => return Err(gateway_ended(ended)),
        };
        let Some(storage) = storage else {
            return Err(anyhow::anyhow!("the gateway stopped before opening its storage"));
        };
        wait_for_first_checkpoint(&storage, &metrics, &mut gateway, shutdown_rx.clone(), progress).await?;
        if *shutdown_rx.borrow() {
            return Ok(());
        }
        let endpoint = format!("http://127.0.0.1:{api_port}");
        let backend_url = format!("http://127.0.0.1:{backend_port}/upload");
        let users = demo_users(&postgres).await?;
        let mut tokens = BTreeMap::new();
        for user in &users {
            let minted = crate::auth::mint_token(
                &config.client_auth,
                user,
                serde_json::Map::new(),
                TOKEN_TTL,
                std::time::SystemTime::now(),
            )?;
            tokens.insert(user.clone(), minted.token);
        }
        if options.exit_after_ready {
            let Some(token) = tokens.get(&options.user) else {
                bail!(
                    "--user {}: not a user of the demo data ({})",
                    options.user,
                    users.join(", ")
                );
            };
            let summary = sync_once(project, &options.user, &endpoint, token, &backend_url).await?;
            print!("{summary}");
            println!(
                "ready in {:.1}s; stopping (--exit-after-ready)",
                progress.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        print_ready(project, &endpoint, &backend_url, &database_url, &tokens, progress);
        tokio::select! {
            // Shutdown first: the gateway ends because of it, and its end is then no error (nor consumed
            // here, so it is awaited below).
            biased;
            _ = stop.wait_for(|stop| *stop) => Ok(()),
            ended = &mut gateway => Err(gateway_ended(ended)),
        }
    }
    .await;

    shutdown_tx.send_replace(true);
    progress.finish_quietly();
    if !gateway.is_finished() || outcome.is_ok() {
        match gateway.await {
            Ok(Ok(())) => progress.step("gateway stopped"),
            Ok(Err(error)) => progress.step(format_args!("gateway stopped with an error: {error:#}")),
            Err(error) => progress.step(format_args!("gateway task failed: {error}")),
        }
    }
    match backend.await {
        Ok(Ok(())) => progress.step("demo backend stopped"),
        Ok(Err(error)) => progress.step(format_args!("demo backend stopped with an error: {error}")),
        Err(error) => progress.step(format_args!("demo backend task failed: {error}")),
    }
    outcome
}

/// Opens (or creates) the project's cluster and checks that the server answering on its port is it.
async fn start_cluster(project: &Project, progress: &Progress) -> anyhow::Result<PgCluster> {
    progress.stage("postgres: starting the project's cluster");
    let preferred = project.postgres();
    let opened = tokio::task::spawn_blocking(move || PgCluster::open_persistent(&preferred))
        .await
        .context("starting Postgres")?;
    let opened = match opened {
        Ok(opened) => opened,
        Err(error @ ClusterError::MissingBinaries(_)) => {
            bail!("{error}\n(the dev command runs a local PostgreSQL 15 cluster; or pass --database-url)")
        }
        Err(error) => return Err(error.into()),
    };
    let cluster = opened.cluster;
    if cluster.root() != project.postgres() {
        progress.step(format_args!(
            "postgres: the cluster's OS user cannot reach {}, so the cluster lives in {} (reused by later runs)",
            project.postgres().display(),
            cluster.root().display()
        ));
    }
    let owner = syncgate_pgcluster::server_os_user()
        .map(|user| format!(", run as OS user {user}"))
        .unwrap_or_default();
    progress.finish(format_args!(
        "postgres: {} cluster in {}{owner}, listening on 127.0.0.1:{}",
        if opened.created {
            "created a new"
        } else {
            "reopened the"
        },
        cluster.root().display(),
        cluster.port()
    ));
    // Another server could have taken the port between probing and binding: make sure it is ours.
    let client = connect(&format!(
        "postgresql://postgres@127.0.0.1:{}/postgres",
        cluster.port()
    ))
    .await?;
    let served: String = client.query_one("SHOW data_directory", &[]).await?.get(0);
    let ours = cluster.data_dir().canonicalize()?;
    if std::path::Path::new(&served).canonicalize().ok().as_deref() != Some(ours.as_path()) {
        bail!(
            "the server on port {} serves {served}, not the project's cluster {}",
            cluster.port(),
            ours.display()
        );
    }
    Ok(cluster)
}

/// Creates the demo database in the local cluster if it is missing.
async fn prepare_local_database(cluster: &PgCluster) -> anyhow::Result<()> {
    let client = connect(&format!(
        "postgresql://postgres@127.0.0.1:{}/postgres",
        cluster.port()
    ))
    .await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DEMO_DATABASE])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE {DEMO_DATABASE}"))
            .await?;
    }
    Ok(())
}

/// Loads sql/demo/ (schema, publication, data) when none of its tables exists; leaves a database with
/// all of them alone and refuses one with only some.
async fn load_demo_if_missing(
    postgres: &tokio_postgres::Client,
    external: bool,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut present = Vec::new();
    for table in DEMO_TABLES {
        let exists: bool = postgres
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("public.{table}")],
            )
            .await?
            .get(0);
        if exists {
            present.push(table);
        }
    }
    let where_ = if external {
        "the --database-url database"
    } else {
        "the demo database"
    };
    if present.len() == DEMO_TABLES.len() {
        progress.step(format_args!(
            "postgres: demo tables present in {where_}: nothing loaded"
        ));
        return Ok(());
    }
    if !present.is_empty() {
        bail!(
            "{where_} has some demo tables ({}) but not all of {DEMO_TABLES:?}: drop them or use another database",
            present.join(", ")
        );
    }
    progress.stage(format_args!(
        "postgres: loading the demo schema and data into {where_}"
    ));
    postgres
        .batch_execute(&format!("BEGIN;\n{DEMO_SCHEMA_SQL}\n{DEMO_DATA_SQL}\nCOMMIT;"))
        .await
        .context("loading the demo schema and data (sql/demo/)")?;
    let mut counts = Vec::new();
    for table in DEMO_TABLES {
        let rows: i64 = postgres
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        counts.push(format!("{rows} {table}"));
    }
    progress.finish(format_args!(
        "postgres: loaded the demo schema and data into {where_}: {}",
        counts.join(", ")
    ));
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(async move {
        // Errors surface on the client's next call.
        let _ = connection.await;
    });
    Ok(client)
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _password)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn demo_users(postgres: &tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    Ok(postgres
        .query("SELECT id FROM users ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// The initial snapshot's figures, as the replicator counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnapshotFigures {
    tables_done: u64,
    tables: u64,
    rows: u64,
}

impl SnapshotFigures {
    fn read(metrics: &ReplicationMetrics) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            tables_done: metrics.snapshot_tables_done.load(Relaxed),
            tables: metrics.snapshot_tables.load(Relaxed),
            rows: metrics.snapshot_rows.load(Relaxed),
        }
    }
}

impl std::fmt::Display for SnapshotFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            tables_done,
            tables,
            rows,
        } = self;
        write!(f, "{tables_done}/{tables} tables, {rows} rows copied")
    }
}

/// Waits, woken by storage commits and a short timer, until replication has published a checkpoint;
/// reports the snapshot's tables and rows meanwhile (a spinner status, or a line now and then).
async fn wait_for_first_checkpoint(
    storage: &Arc<ServedStorage>,
    metrics: &ReplicationMetrics,
    gateway: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
    mut shutdown: watch::Receiver<bool>,
    progress: &Progress,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut commits = storage.events().subscribe();
    let mut poll = tokio::time::interval(SNAPSHOT_POLL);
    let mut last_line: Option<(SnapshotFigures, Instant)> = None;
    loop {
        let storage_for_read = Arc::clone(storage);
        let checkpoint = tokio::task::spawn_blocking(move || {
            let Some(active) = storage_for_read.active_version()? else {
                return Ok(None);
            };
            storage_for_read.latest_checkpoint(active.version)
        })
        .await??;
        let figures = SnapshotFigures::read(metrics);
        if let Some(checkpoint) = checkpoint {
            let snapshot = if figures.tables == 0 {
                "no snapshot needed (storage kept from an earlier run)".to_owned()
            } else {
                format!("initial snapshot done ({figures})")
            };
            progress.finish(format_args!(
                "gateway: {snapshot}, first checkpoint published at LSN {}",
                checkpoint.lsn
            ));
            return Ok(());
        }
        if figures.tables > 0 {
            if progress.terminal() {
                progress.status(format_args!("gateway: initial snapshot: {figures}"));
            } else if figures.tables_done < figures.tables
                && last_line.is_none_or(|(last, at)| last != figures && at.elapsed() >= SNAPSHOT_LINE_EVERY)
            {
                // A line when the figures moved, at most every SNAPSHOT_LINE_EVERY; none once all tables
                // are copied (streaming then catches up to the checkpoint).
                progress.step(format_args!("gateway: initial snapshot in progress: {figures}"));
                last_line = Some((figures, Instant::now()));
            }
        }
        tokio::select! {
            // Shutdown first, for the same reason as in `run_with_postgres`.
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            changed = commits.changed() => {
                if changed.is_err() {
                    bail!("the gateway's storage was closed");
                }
            }
            _ = poll.tick() => {}
            ended = &mut *gateway => return Err(gateway_ended(ended)),
            () = tokio::time::sleep_until(deadline) => {
                bail!("no checkpoint within {READY_TIMEOUT:?}: see the gateway's log lines above")
            }
        }
    }
}

fn gateway_ended(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("the gateway stopped unexpectedly"),
        Ok(Err(error)) => error.context("the gateway stopped"),
        Err(error) => anyhow::anyhow!("the gateway task failed: {error}"),
    }
}

/// Syncs `user` once into a fresh client database with the client library; returns the summary.
async fn sync_once(
    project: &Project,
    user: &str,
    endpoint: &str,
    token: &str,
    backend_url: &str,
) -> anyhow::Result<String> {
    let clients = project.clients();
    std::fs::create_dir_all(&clients)?;
    let db_path = clients.join(format!("{user}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db_path.clone().into_os_string();
        path.push(suffix);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("removing {}", PathBuf::from(path).display()));
            }
            _ => {}
        }
    }
    let started = Instant::now();
    let mut db = LocalDatabase::open(&db_path)?;
    db.set_schema(&Schema::from_json(project::CLIENT_SCHEMA)?)?;
    let options = SyncOptions {
        stop_after_first_sync: true,
        max_consecutive_failures: Some(3),
        ..SyncOptions::default()
    };
    let connector = FixedConnector {
        credentials: Credentials {
            endpoint: endpoint.to_owned(),
            token: token.to_owned(),
        },
        backend_url: backend_url.to_owned(),
    };
    let mut driver = SyncDriver::new(db, connector, options);
    tokio::time::timeout(READY_TIMEOUT, driver.run())
        .await
        .with_context(|| format!("{user}'s first sync took longer than {READY_TIMEOUT:?}"))??;
    let elapsed = started.elapsed();
    let db = driver.into_database();
    let mut summary = format!(
        "synced {user} with the Rust client into {} in {} ms:\n",
        db_path.display(),
        elapsed.as_millis()
    );
    for table in ["users", "lists", "todos"] {
        let rows: i64 = db
            .connection()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))?;
        summary.push_str(&format!("  {table}: {rows} row(s)\n"));
    }
    Ok(summary)
}

/// The client's credentials, and uploads as `POST`s to the demo backend (the same body as the
/// `syncgate-client` CLI sends, docs/client.md).
struct FixedConnector {
    credentials: Credentials,
    backend_url: String,
}

impl BackendConnector for FixedConnector {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        Ok(self.credentials.clone())
    }

    async fn upload_data(&self, transaction: &CrudTransaction) -> Result<(), ClientError> {
        // `--exit-after-ready` makes no local writes; a queued one means someone else wrote to the file.
        Err(ClientError::Connector(format!(
            "transaction {} is queued: syncgate dev's own client does not upload; use {} with syncgate-client",
            transaction.transaction_id, self.backend_url
        )))
    }
}

fn print_ready(
    project: &Project,
    endpoint: &str,
    backend_url: &str,
    database_url: &str,
    tokens: &BTreeMap<String, String>,
    progress: &Progress,
) {
    let schema = project.client_schema();
    let first = tokens.iter().next();
    println!("ready in {:.1}s", progress.elapsed().as_secs_f64());
    println!("sync API:     {endpoint}  (readiness {endpoint}/probes/readiness)");
    println!("demo backend: {backend_url}  (POST an upload batch; docs/dev.md)");
    println!(
        "postgres:     {}  (psql \"{}\")",
        redact(database_url),
        database_url
    );
    println!("tokens (valid 12 h):");
    for (user, token) in tokens {
        println!("  {user}: {token}");
    }
    if let Some((user, token)) = first {
        println!(
            "sync {user} into {user}.db (from the repository root; --once to stop after the first sync):"
        );
        println!(
            "  cargo run --release --bin syncgate-client -- sync --endpoint {endpoint} --token {token} \
             --db {user}.db --schema {} --backend {backend_url}",
            schema.display()
        );
    }
    println!("Ctrl-C stops the gateway, the demo backend and Postgres.");
}

/// Whether shutdown is (or within a moment becomes) requested.
async fn signalled_soon(mut shutdown: watch::Receiver<bool>) -> bool {
    tokio::time::timeout(Duration::from_millis(500), shutdown.wait_for(|stop| *stop))
        .await
        .is_ok_and(|waited| waited.is_ok())
}

/// Turns SIGINT or SIGTERM into the shutdown signal.
async fn forward_signals(shutdown: watch::Sender<bool>, progress: Progress) {
    if crate::serve::stop_signal().await {
        shutdown.send_replace(true);
        progress.step("stopping…");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgresql://postgres:secret@db:5432/demo"),
            "postgresql://postgres:***@db:5432/demo"
        );
        assert_eq!(
            redact("postgresql://postgres@127.0.0.1:5432/demo"),
            "postgresql://postgres@127.0.0.1:5432/demo"
        );
    }

    #[test]
    fn snapshot_figures_read_as_tables_and_rows() {
        let metrics = ReplicationMetrics::default();
        metrics
            .snapshot_tables
            .store(4, std::sync::atomic::Ordering::Relaxed);
        metrics
            .snapshot_tables_done
            .store(2, std::sync::atomic::Ordering::Relaxed);
        metrics
            .snapshot_rows
            .store(11, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            SnapshotFigures::read(&metrics).to_string(),
            "2/4 tables, 11 rows copied"
        );
    }

    #[test]
    fn the_client_schema_covers_what_the_demo_rules_sync() {
        let schema = Schema::from_json(project::CLIENT_SCHEMA).expect("valid schema");
        let text = format!("{schema:?}");
        for table in ["users", "lists", "todos"] {
            assert!(text.contains(table), "{table} missing from {text}");
        }
    }

    #[test]
    fn the_config_keeps_storage_in_sqlite_or_in_the_given_postgres() {
        let dir = tempfile::tempdir().expect("temp dir");
        let project = Project::open(dir.path()).expect("project");
        let source = "postgresql://postgres:pw@db:5432/demo";

        let config = Config::load(&project.write_files(source, None, 8080).expect("files"))
            .expect("config loads")
            .config;
        assert!(
            matches!(&config.storage, crate::config::StorageConfig::Sqlite { .. }),
            "{:?}",
            config.storage
        );

        let storage_url = "postgresql://postgres:pw@db:5432/syncgate_storage";
        let config = Config::load(
            &project
                .write_files(source, Some(storage_url), 8080)
                .expect("files"),
        )
        .expect("config loads")
        .config;
        let crate::config::StorageConfig::Postgres(storage) = &config.storage else {
            panic!("Postgres storage expected: {:?}", config.storage)
        };
        assert_eq!(
            (
                storage.connection.host.as_str(),
                storage.connection.database.as_str()
            ),
            ("db", "syncgate_storage")
        );
    }
}
