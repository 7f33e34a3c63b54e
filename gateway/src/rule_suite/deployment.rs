//! One suite's world: a fresh database in the shared cluster with the suite's schema, and the gateway
//! running inside this process on it with the suite's rules (embedded SQLite storage in a temporary
//! directory, the sync API on a loopback port, an HS256 key made for this run).
//!
//! Catching up is checked, never slept on: [`Deployment::catch_up`] emits a write-checkpoint marker in
//! Postgres (its LSN lies past every statement committed before) and waits, woken by each storage
//! commit, until the active version's checkpoint reaches that LSN.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use syncgate_pgcluster::{PgCluster, ScratchDatabase};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::SuiteError;
use crate::config::local::{LocalConfig, LocalStorage, random_hs256_key};
use crate::config::{ClientAuthConfig, Config};
use crate::replicator::Catalog;
use crate::serve::{Embedding, ServeOptions, ServedStorage, serve_embedded};
use crate::storage::{BucketStorage, Checkpoint, Lsn};

/// Backstop for replication to reach a position (the initial snapshot included); reaching it is
/// signalled by storage commits, this only bounds a gateway that is stuck.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// Token lifetime: longer than any suite runs.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
const AUDIENCE: &str = "syncgate-rule-suite";

/// A suite's database and gateway; dropping it stops the gateway, then drops the database.
pub struct Deployment {
    pub endpoint: String,
    pub work_dir: tempfile::TempDir,
    client_auth: ClientAuthConfig,
    storage: Arc<ServedStorage>,
    gateway: JoinHandle<anyhow::Result<()>>,
    shutdown: watch::Sender<bool>,
    /// The runner's own connection: statements of the default connection and catch-up markers.
    pub postgres: tokio_postgres::Client,
    catalog: Catalog,
    /// Dropped in [`Deployment::stop`], once the gateway's replication connections are gone (dropping
    /// terminates them anyway, but a clean shutdown keeps the server log quiet).
    database: Option<ScratchDatabase>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // A suite that failed half-way still stops its gateway: the task would outlive it otherwise.
        self.shutdown.send_replace(true);
    }
}

impl Deployment {
    /// Creates the database, runs `schema` files in it (and creates the `powersync` publication FOR ALL
    /// TABLES unless they made one), then starts the gateway with `rules` and waits for its first
    /// checkpoint. `slot_prefix` must be unique in the cluster.
    pub async fn start(
        cluster: &PgCluster,
        schema: &[PathBuf],
        rules: &Path,
        slot_prefix: &str,
    ) -> Result<Deployment, SuiteError> {
        let database = tokio::task::block_in_place(|| cluster.create_database())?;
        for file in schema {
            let sql = std::fs::read_to_string(file).map_err(|source| SuiteError::Read {
                path: file.clone(),
                source,
            })?;
            tokio::task::block_in_place(|| database.psql(&sql)).map_err(|e| SuiteError::Schema {
                path: file.clone(),
                message: e.to_string(),
            })?;
        }
        let postgres = database
            .connect()
            .await
            .map_err(SuiteError::postgres("connecting to the suite's database"))?;
        postgres
            .batch_execute(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'powersync') THEN
                     CREATE PUBLICATION powersync FOR ALL TABLES;
                   END IF;
                 END $$",
            )
            .await
            .map_err(SuiteError::postgres("creating the powersync publication"))?;
        let marker_connection = database
            .connect()
            .await
            .map_err(SuiteError::postgres("connecting to the suite's database"))?;
        let catalog = Catalog::new(marker_connection);

        let work_dir = tempfile::tempdir().map_err(SuiteError::io("creating a temporary directory"))?;
        let listener =
            crate::api::bind_listener(0).map_err(SuiteError::io("binding a port for the sync API"))?;
        let port = listener
            .local_addr()
            .map_err(SuiteError::io("binding a port for the sync API"))?
            .port();
        let config_path = write_config(work_dir.path(), &database, rules, slot_prefix, port)?;
        let loaded = Config::load(&config_path).map_err(|e| SuiteError::Gateway(e.to_string()))?;
        let (storage_tx, storage_rx) = oneshot::channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut gateway = tokio::spawn(serve_embedded(
            config_path,
            ServeOptions::default(),
            shutdown_rx,
            Some(Embedding {
                listener,
                storage: storage_tx,
                metrics: Arc::default(),
            }),
        ));
        let storage = tokio::select! {
            storage = storage_rx => storage.ok(),
            ended = &mut gateway => return Err(gateway_ended(ended)),
        };
        let Some(storage) = storage else {
            return Err(gateway_ended(gateway.await));
        };
        let mut deployment = Deployment {
            endpoint: format!("http://127.0.0.1:{port}"),
            work_dir,
            client_auth: loaded.config.client_auth,
            storage,
            gateway,
            shutdown,
            postgres,
            catalog,
            database: Some(database),
        };
        deployment.catch_up().await?;
        Ok(deployment)
    }

    /// Waits until the gateway has published a checkpoint at or past every statement committed so far;
    /// returns that checkpoint.
    pub async fn catch_up(&mut self) -> Result<Checkpoint, SuiteError> {
        let target = self
            .catalog
            .emit_marker()
            .await
            .map_err(|e| SuiteError::Gateway(format!("emitting a write-checkpoint marker: {e}")))?;
        let caught_up = tokio::time::timeout(CATCH_UP_TIMEOUT, self.wait_for_checkpoint(target)).await;
        match caught_up {
            Ok(result) => result,
            Err(_) => Err(SuiteError::Timeout(format!(
                "the gateway did not publish a checkpoint at LSN {target} within {CATCH_UP_TIMEOUT:?}"
            ))),
        }
    }

    async fn wait_for_checkpoint(&mut self, target: Lsn) -> Result<Checkpoint, SuiteError> {
        // Subscribed before reading: a commit between the read and the wait still wakes us.
        let mut commits = self.storage.events().subscribe();
        loop {
            if let Some(checkpoint) = self.published_checkpoint().await?
                && checkpoint.lsn >= target
            {
                return Ok(checkpoint);
            }
            tokio::select! {
                changed = commits.changed() => {
                    if changed.is_err() {
                        return Err(SuiteError::Gateway("the gateway's storage was closed".into()));
                    }
                }
                ended = &mut self.gateway => return Err(gateway_ended(ended)),
            }
        }
    }

    /// The active version's latest checkpoint, if there is one yet.
    async fn published_checkpoint(&self) -> Result<Option<Checkpoint>, SuiteError> {
        let storage = Arc::clone(&self.storage);
        tokio::task::spawn_blocking(move || {
            let Some(active) = storage.active_version()? else {
                return Ok(None);
            };
            storage.latest_checkpoint(active.version)
        })
        .await
        .map_err(|e| SuiteError::Gateway(format!("reading the storage: {e}")))?
        .map_err(|e| SuiteError::Gateway(format!("reading the storage: {e}")))
    }

    /// A token the gateway accepts for `sub` with `claims`.
    pub fn token(&self, sub: &str, claims: &Map<String, Value>) -> Result<String, SuiteError> {
        crate::auth::mint_token(
            &self.client_auth,
            sub,
            claims.clone(),
            TOKEN_TTL,
            std::time::SystemTime::now(),
        )
        .map(|minted| minted.token)
        .map_err(|e| SuiteError::Gateway(format!("minting a token for {sub}: {e}")))
    }

    /// Stops the gateway (open sync streams end first) and drops the database.
    pub async fn stop(mut self) -> Result<(), SuiteError> {
        self.shutdown.send_replace(true);
        let result = match (&mut self.gateway).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SuiteError::Gateway(format!("{error:#}"))),
            Err(error) => Err(SuiteError::Gateway(format!("the gateway task failed: {error}"))),
        };
        let database = self.database.take();
        tokio::task::block_in_place(move || drop(database));
        result
    }
}

fn gateway_ended(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> SuiteError {
    match ended {
        Ok(Ok(())) => SuiteError::Gateway("the gateway stopped unexpectedly".into()),
        Ok(Err(error)) => SuiteError::Gateway(format!("{error:#}")),
        Err(error) => SuiteError::Gateway(format!("the gateway task failed: {error}")),
    }
}

/// Writes `dir/powersync.yaml`; returns its path.
fn write_config(
    dir: &Path,
    database: &ScratchDatabase,
    rules: &Path,
    slot_prefix: &str,
    port: u16,
) -> Result<PathBuf, SuiteError> {
    let rules = rules.canonicalize().map_err(|source| SuiteError::Read {
        path: rules.to_owned(),
        source,
    })?;
    // A key per run: nobody else can mint tokens for the suite's gateway.
    let key = random_hs256_key().map_err(SuiteError::io("reading /dev/urandom for the token key"))?;
    let config = LocalConfig {
        written_by: None,
        source_url: &database.url_without_session_options(),
        slot_name_prefix: Some(slot_prefix),
        storage: LocalStorage::SqliteFile("storage.sqlite"),
        rules_path: &rules.to_string_lossy(),
        port,
        key: &key,
        key_id: "rule-suite",
        audience: AUDIENCE,
    }
    .to_yaml();
    let path = dir.join("powersync.yaml");
    std::fs::write(&path, config).map_err(SuiteError::io("writing the gateway's config file"))?;
    Ok(path)
}
