//! `syncgate serve`: runs replication for the configured sync rules, switching versions when the rules
//! change (DESIGN invariant 9), compacting in the background, until SIGINT/SIGTERM.
//!
//! Version choice at start: the active version keeps replicating if its rules equal the configured
//! ones; otherwise a version with the configured rules is built (resumed if one is already building)
//! while the active one keeps serving, and becomes active once caught up. Then the old version's slot
//! and data are removed. SIGHUP re-reads the config file and does the same with the new rules.
//!
//! Several gateways on one Postgres storage: only the holder of the replication lease ([`lease`])
//! replicates, compacts and removes retired versions; the others serve the sync API from the shared
//! storage and campaign for the lease every [`ServeOptions::lease_retry`]. A leader whose lease session
//! dies, or whose storage commit is fenced, stops replicating at once and campaigns again. SQLite
//! storage is one process's (a lock file), which always replicates. [`Role`] narrows what a process does.

pub mod lease;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use syncgate_rules::{CompileOptions, SyncRules, compile};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::api::session::{SessionEnv, SessionLimits, SharedReads};
use crate::api::write_checkpoint::WriteCheckpoints;
use crate::api::{ApiConfig, ApiMetrics, ApiState, Authenticate};
use crate::compact_cmd;
use crate::config::{Config, DecoderChoice, StorageConfig};
use crate::replicator::{
    Catalog, ReplicationMetrics, ReplicatorError, ReplicatorOptions, SlotDrop, SourceConnection, Stopped,
    VersionReplicator, slot_name,
};
use crate::source::{OutputPlugin, SourceRequirements, TableName, check_source};
use crate::storage::{
    BucketStorage, ConfiguredStorage, Notifying, PostgresStorage, RulesVersion, SqliteStorage, StorageError,
    VersionState,
};
use crate::versioned_rules::{RulesCache, compile_version};

/// The storage `serve` runs on: every commit wakes the sync sessions.
pub type ServedStorage = Notifying<ConfiguredStorage>;

/// How a process that runs the gateway inside itself (`syncgate rules test`) joins in: it binds the
/// API's port itself (so it knows the port before the gateway starts, without a race for it) and
/// receives the storage, whose [`StorageEvents`](crate::storage::StorageEvents) tell it when a
/// checkpoint is published.
pub struct Embedding {
    /// Serves the sync API on this listener instead of binding the config's `port`.
    pub listener: tokio::net::TcpListener,
    /// Receives the storage once it is open, before replication starts.
    pub storage: tokio::sync::oneshot::Sender<Arc<ServedStorage>>,
    /// The replication figures the gateway writes (e.g. the initial snapshot's tables and rows).
    pub metrics: Arc<ReplicationMetrics>,
}

/// How often the active version is compacted in the background.
pub const COMPACT_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// What a `serve` process does (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// Serves the sync API and replicates while it holds the replication lease.
    #[default]
    All,
    /// Serves the sync API only; never campaigns for the lease.
    Api,
    /// Replicates while it holds the lease; its port answers probes and `/metrics` but no sync routes.
    Replicator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Replicator => "replicator",
        }
    }

    fn campaigns(self) -> bool {
        self != Role::Api
    }

    /// Whether the sync routes (streams, write checkpoints) are served.
    pub fn serves_sync(self) -> bool {
        self != Role::Replicator
    }
}

/// How often a standby tries to take the replication lease, and a leader checks it still holds it.
pub const LEASE_RETRY: Duration = Duration::from_secs(1);

/// Options of a serve run beyond the config file.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub replicator: ReplicatorOptions,
    pub compact_interval: Duration,
    /// How often replication figures are logged.
    pub report_interval: Duration,
    pub role: Role,
    /// How often a standby campaigns for the replication lease and a leader checks its lease session.
    pub lease_retry: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            replicator: ReplicatorOptions::default(),
            compact_interval: COMPACT_INTERVAL,
            report_interval: Duration::from_secs(10),
            role: Role::default(),
            lease_retry: LEASE_RETRY,
        }
    }
}

/// A shutdown signal that turns true on SIGINT or SIGTERM. Call inside a tokio runtime.
pub(crate) fn shutdown_on_stop_signal() -> watch::Receiver<bool> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        if stop_signal().await {
            shutdown_tx.send_replace(true);
        }
    });
    shutdown_rx
}

/// Waits for SIGINT or SIGTERM: true once one arrives; false (after logging why) when SIGTERM cannot be
/// listened for, so the caller's shutdown then comes from elsewhere.
pub(crate) async fn stop_signal() -> bool {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            error!(%error, "cannot listen for SIGTERM");
            return false;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    true
}

/// Compiles rules text; errors carry every diagnostic with its position in the config's rules.
pub fn compile_rules(config: &Config) -> anyhow::Result<SyncRules> {
    let result = compile(&config.sync_rules.text, &CompileOptions::default());
    let mut errors = Vec::new();
    for d in &result.diagnostics {
        let at = config.sync_rules.locate(&config.file, d.line, d.column);
        if d.is_error() {
            errors.push(format!("{at}: error: {}", d.message));
        } else {
            warn!("{at}: {}: {}", d.severity.as_str(), d.message);
        }
    }
    match result.rules {
        Some(rules) if errors.is_empty() => Ok(rules),
        _ => bail!("invalid sync rules:\n{}", errors.join("\n")),
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    let loaded = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    Ok(loaded.config)
}

/// Tables named exactly by the rules (wildcards are matched against the publication at snapshot time).
fn required_tables(rules: &SyncRules) -> Vec<TableName> {
    rules
        .source_tables()
        .into_iter()
        .filter(|p| !p.wildcard)
        .map(|p| TableName::new(p.schema.to_string(), p.name.to_string()))
        .collect()
}

/// The output plugin new versions' slots are created with. `auto` probes the server once (a temporary
/// slot with the syncgate plugin) and falls back to pgoutput with the server's reason; an explicit
/// `syncgate` the server refuses is an error, never a silent fallback.
pub async fn resolve_decoder(catalog: &Catalog, choice: DecoderChoice) -> anyhow::Result<OutputPlugin> {
    match choice {
        DecoderChoice::Pgoutput => Ok(OutputPlugin::Pgoutput),
        DecoderChoice::Syncgate => match catalog.probe_output_plugin(OutputPlugin::Syncgate).await {
            Ok(()) => Ok(OutputPlugin::Syncgate),
            Err(reason) => bail!(
                "`decoder: syncgate` is configured but the source database cannot create a slot with the \
                 syncgate output plugin: {reason}. Install it (docs/pg-ext.md), allow it in \
                 output_plugin_libraries where that setting exists, or set `decoder: pgoutput` or `auto`"
            ),
        },
        DecoderChoice::Auto => match catalog.probe_output_plugin(OutputPlugin::Syncgate).await {
            Ok(()) => {
                info!(
                    "decoder auto: the syncgate output plugin is available; new versions stream through it"
                );
                Ok(OutputPlugin::Syncgate)
            }
            Err(reason) => {
                info!(%reason, "decoder auto: the syncgate output plugin is not usable on the source; new versions stream through pgoutput");
                Ok(OutputPlugin::Pgoutput)
            }
        },
    }
}

/// Runs the gateway's replication until `shutdown` turns true.
pub async fn serve(
    config_path: PathBuf,
    options: ServeOptions,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    serve_embedded(config_path, options, shutdown, None).await
}

/// [`serve`], with the listener and a storage handle of an embedding process.
pub async fn serve_embedded(
    config_path: PathBuf,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
    embedding: Option<Embedding>,
) -> anyhow::Result<()> {
    let config = load_config(&config_path)?;
    let rules = compile_rules(&config)?;
    let role = options.role;
    if role != Role::All && matches!(config.storage, StorageConfig::Sqlite { .. }) {
        bail!(
            "--role {} needs Postgres bucket storage (`storage: {{type: postgresql}}`): SQLite storage belongs \
             to one process, which serves and replicates (--role all)",
            role.name()
        );
    }
    let connection = config.replication.connection().clone();
    let source = SourceConnection::new(&connection).context("source connection")?;
    let mut replicator_options = options.replicator.clone();
    replicator_options.publication.clone_from(&connection.publication);
    replicator_options
        .slot_prefix
        .clone_from(&connection.slot_name_prefix);

    let catalog = Catalog::new(
        source
            .connect("source checks")
            .await
            .context("cannot reach the source database")?,
    );
    let mut decoder_choice = connection.decoder;
    if role.campaigns() {
        replicator_options.decoder = check_replication_source(&catalog, &rules, &connection).await?;
    }

    // Held until serve returns: a second gateway on the same SQLite file would fight over the same slots.
    let mut _storage_lock = None;
    let storage_display = match &config.storage {
        StorageConfig::Sqlite { path } => path.display().to_string(),
        StorageConfig::Postgres(s) => format!("{} schema {}", s.connection.display_safe(), s.schema),
    };
    let opened = match &config.storage {
        StorageConfig::Sqlite { path } => {
            _storage_lock = Some(lock_storage(path)?);
            let path = path.clone();
            ConfiguredStorage::Sqlite(tokio::task::spawn_blocking(move || SqliteStorage::open(path)).await??)
        }
        StorageConfig::Postgres(settings) => {
            let settings = settings.clone();
            let source_config = source.config.clone();
            let opened = tokio::task::spawn_blocking(move || {
                PostgresStorage::open_beside_source(&settings, &source_config)
            })
            .await??;
            ConfiguredStorage::Postgres(opened)
        }
    };
    let storage: Arc<ServedStorage> = Arc::new(Notifying::new(opened));
    // Other gateways' commits to a shared Postgres storage wake this one's sessions; stops with serve.
    let _change_feed = crate::storage::ChangeFeed::spawn(&storage);
    info!(storage = %storage_display, source = %source.display, role = role.name(), "syncgate starting");
    let mut campaign = match (storage.inner(), role.campaigns()) {
        (_, false) => Campaign::Never,
        (ConfiguredStorage::Sqlite(_), true) => Campaign::Sole,
        (ConfiguredStorage::Postgres(postgres), true) => Campaign::Lease(Box::new(lease::Lease::new(
            postgres.lease_connection(),
            postgres.schema(),
        ))),
    };

    let metrics = embedding
        .as_ref()
        .map_or_else(Arc::default, |embedding| Arc::clone(&embedding.metrics));
    // The HTTP port is bound before replication starts, so a port in use fails fast and liveness
    // answers during a long initial snapshot.
    let listener = match embedding {
        Some(Embedding {
            listener,
            storage: storage_tx,
            ..
        }) => {
            // The embedder may have stopped waiting (it failed meanwhile): nothing to tell it then.
            let _ = storage_tx.send(Arc::clone(&storage));
            listener
        }
        None => crate::api::bind_listener(config.port)
            .with_context(|| format!("cannot listen on port {} (config `port`)", config.port))?,
    };
    let replicating = Arc::new(AtomicBool::new(false));
    let node = crate::api::NodeStatus {
        role,
        replicating: Arc::clone(&replicating),
    };
    let api_state = Arc::new(api_state(
        &config,
        &storage,
        &source,
        &metrics,
        node,
        shutdown.clone(),
    )?);
    let api = tokio::spawn(crate::api::serve_api(api_state, listener));

    // What a leader replicates with; SIGHUP updates it also while standing by.
    let mut rules_text = config.sync_rules.text.clone();
    // The start-up checks' connection, reused by the first leadership (an api node has no use for it).
    let mut spare_catalog = role.campaigns().then_some(catalog);
    let leadership = Leadership {
        storage: &storage,
        source: &source,
        metrics: &metrics,
        compact_interval: options.compact_interval,
    };
    let mut leader: Option<Leader> = None;
    match campaign {
        Campaign::Sole => {
            let catalog = spare_catalog.take().expect("not taken yet");
            leader = Some(
                leadership
                    .start(&replicator_options, catalog, &rules_text, None)
                    .await?,
            );
        }
        Campaign::Never => info!("role api: serving the sync API only; never replicating"),
        Campaign::Lease(_) => {}
    }
    replicating.store(leader.is_some(), Ordering::Release);

    let mut campaign_tick = campaign_interval(Duration::ZERO, options.lease_retry);
    let mut standing_by_logged = false;
    let mut report = tokio::time::interval(options.report_interval);
    report.tick().await;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        // Why leadership ended, if it did in this round.
        let mut deposed: Option<String> = None;
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break;
                }
            }
            _ = campaign_tick.tick(), if leader.is_none() => {
                let Campaign::Lease(lease) = &mut campaign else { continue };
                match lease.try_acquire().await {
                    Ok(Some(held)) => {
                        let epoch = held.epoch();
                        info!("replication lease acquired (epoch {epoch})");
                        let catalog = match spare_catalog.take().filter(|c| !c.client().is_closed()) {
                            Some(catalog) => catalog,
                            None => match source.connect("catalog queries").await {
                                Ok(client) => Catalog::new(client),
                                Err(error) => {
                                    // Dropping `held` releases the lease for a gateway that may reach it.
                                    warn!(
                                        %error,
                                        "replication lease released: cannot reach the source database"
                                    );
                                    continue;
                                }
                            },
                        };
                        let started = leadership
                            .start(&replicator_options, catalog, &rules_text, Some(held))
                            .await;
                        match started {
                            Ok(started) => leader = Some(started),
                            Err(error) if is_fenced(&error) => {
                                info!("replication lease lost while starting (epoch {epoch}): {error:#}");
                            }
                            Err(error) => {
                                // The lease went with the failed start: another gateway may reach what this
                                // one cannot (the source passed the start-up checks, so this is likely passing).
                                error!("cannot start replicating (epoch {epoch}); replication lease released: {error:#}");
                                campaign_tick = campaign_interval(options.lease_retry * 2, options.lease_retry);
                            }
                        }
                        standing_by_logged = false;
                    }
                    Ok(None) => {
                        if !standing_by_logged {
                            info!("standing by: another gateway holds the replication lease");
                            standing_by_logged = true;
                        }
                    }
                    Err(error) => warn!("cannot campaign for the replication lease: {error}"),
                }
                replicating.store(leader.is_some(), Ordering::Release);
            }
            event = leader_event(leader.as_mut(), options.lease_retry) => {
                let supervisor = &mut leader.as_mut().expect("events come from a leader").supervisor;
                let handled = match event {
                    LeaderEvent::LeaseLost(error) => Err(anyhow::Error::new(error)),
                    LeaderEvent::TaskEnded(Ok((version, outcome))) => {
                        supervisor.finished(version, outcome, &rules_text).await
                    }
                    LeaderEvent::TaskEnded(Err(error)) => {
                        Err(anyhow::Error::new(error).context("replication task panicked"))
                    }
                    LeaderEvent::Activated => supervisor.remove_retired().await,
                    LeaderEvent::CompactDue => {
                        supervisor.compact().await;
                        Ok(())
                    }
                };
                if let Err(error) = handled {
                    deposed = Some(lost_or_fail(error)?);
                }
            }
            _ = report.tick() => {
                if let Some(leader) = &leader {
                    leader.supervisor.report();
                }
            }
            _ = hangup.recv() => {
                match load_config(&config_path).and_then(|c| compile_rules(&c).map(|_| c)) {
                    Ok(reloaded) => {
                        info!("SIGHUP: reloading sync rules");
                        rules_text.clone_from(&reloaded.sync_rules.text);
                        // A new decoder applies to versions created from now on (a rules change).
                        let choice = reloaded.replication.connection().decoder;
                        if choice != decoder_choice && role.campaigns() {
                            let resolved = match &leader {
                                Some(leader) => resolve_decoder(&leader.supervisor.catalog, choice).await,
                                None => match source.connect("catalog queries").await {
                                    Ok(client) => resolve_decoder(&Catalog::new(client), choice).await,
                                    Err(error) => Err(error.into()),
                                },
                            };
                            match resolved {
                                Ok(plugin) => {
                                    replicator_options.decoder = plugin;
                                    decoder_choice = choice;
                                }
                                Err(error) => error!("SIGHUP: decoder not changed: {error:#}"),
                            }
                        }
                        if let Some(leader) = &mut leader {
                            leader.supervisor.options.decoder = replicator_options.decoder;
                            if let Err(error) = leader.supervisor.start(&rules_text).await {
                                deposed = Some(lost_or_fail(error)?);
                            }
                        }
                    }
                    Err(error) => error!("SIGHUP: config not reloaded: {error:#}"),
                }
            }
        }
        if let Some(reason) = deposed {
            if matches!(campaign, Campaign::Sole) {
                bail!("replication stopped: {reason}");
            }
            if let Some(leader) = leader.take() {
                let epoch = leader.lease.as_ref().map_or(0, lease::HeldLease::epoch);
                leader.depose().await;
                info!(%reason, "replication lease lost (epoch {epoch}): replication stopped; campaigning again");
            }
            // A standby that reaches the storage (a deposed leader may be the one cut off) gets the first
            // chance: it campaigns within one interval, this process only after two.
            campaign_tick = campaign_interval(options.lease_retry * 2, options.lease_retry);
            replicating.store(false, Ordering::Release);
        }
    }
    info!("shutting down");
    if let Some(leader) = leader {
        leader.supervisor.shut_down().await;
    }
    // Streams end at the shutdown signal; the server stops once they are closed.
    if tokio::time::timeout(Duration::from_secs(10), api).await.is_err() {
        warn!("the sync API did not stop within 10 s");
    }
    Ok(())
}

/// Checks that the source can be replicated from and returns the output plugin new versions use.
async fn check_replication_source(
    catalog: &Catalog,
    rules: &SyncRules,
    connection: &crate::config::PostgresConnection,
) -> anyhow::Result<OutputPlugin> {
    let named = required_tables(rules);
    let exists = catalog.existing(&named).await?;
    let mut tables = Vec::new();
    for (table, exists) in named.into_iter().zip(exists) {
        if exists {
            tables.push(table);
        } else {
            // Not an error: rules may name a table the app creates later; its rows replicate from then on
            // (the publication must include it, e.g. FOR ALL TABLES).
            warn!(%table, "the sync rules read a table that does not exist yet");
        }
    }
    let decoder = resolve_decoder(catalog, connection.decoder).await;
    // Checked before a refused plugin is reported: wal_level or a missing REPLICATION privilege is the
    // more basic problem (and also makes the probe fail).
    check_source(
        catalog.client(),
        &SourceRequirements {
            publication: matches!(decoder, Ok(OutputPlugin::Pgoutput))
                .then(|| connection.publication.clone()),
            tables,
        },
    )
    .await
    .context("the source database is not ready for syncgate")?;
    decoder
}

/// Campaign ticks every `period`, the first after `delay`.
fn campaign_interval(delay: Duration, period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + delay, period);
    // Ticks missed while leading are not made up for.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// How this process comes to replicate.
enum Campaign {
    /// SQLite storage: the lock file makes this process the storage's only one; it always replicates.
    Sole,
    /// Postgres storage: replicates while it holds the lease.
    Lease(Box<lease::Lease>),
    /// `--role api`: never replicates.
    Never,
}

/// Replication while this process leads: the supervisor and what it runs on.
struct Leader {
    supervisor: Supervisor,
    /// `None` for SQLite storage (no lease).
    lease: Option<lease::HeldLease>,
    activations: watch::Receiver<Option<RulesVersion>>,
    compact: tokio::time::Interval,
}

/// What every leadership of this process starts from.
struct Leadership<'a> {
    storage: &'a Arc<ServedStorage>,
    source: &'a SourceConnection,
    metrics: &'a Arc<ReplicationMetrics>,
    compact_interval: Duration,
}

impl Leadership<'_> {
    /// Starts replicating `rules_text` (with the lease's epoch taken over, for Postgres storage).
    async fn start(
        &self,
        options: &ReplicatorOptions,
        catalog: Catalog,
        rules_text: &str,
        lease: Option<lease::HeldLease>,
    ) -> anyhow::Result<Leader> {
        if let (Some(held), ConfiguredStorage::Postgres(postgres)) = (&lease, self.storage.inner()) {
            postgres.take_over(held.epoch())?;
        }
        let mut supervisor = Supervisor {
            storage: Arc::clone(self.storage),
            source: self.source.clone(),
            options: options.clone(),
            catalog,
            metrics: Arc::clone(self.metrics),
            active: watch::Sender::new(None),
            tasks: JoinSet::new(),
            running: HashMap::new(),
        };
        let activations = supervisor.active.subscribe();
        if let Err(error) = supervisor.start(rules_text).await {
            supervisor.stop_now().await;
            return Err(error);
        }
        let mut compact = tokio::time::interval(self.compact_interval);
        compact.reset();
        Ok(Leader {
            supervisor,
            lease,
            activations,
            compact,
        })
    }
}

impl Leader {
    /// Stops replicating at once: a deposed leader's commits are fenced anyway.
    async fn depose(mut self) {
        self.supervisor.stop_now().await;
        // Ends the lease session (if it still lives) so another gateway can take over.
        drop(self.lease.take());
    }
}

/// What a leader's replication asks the serve loop to handle.
enum LeaderEvent {
    LeaseLost(lease::LeaseError),
    TaskEnded(Result<TaskOutcome, tokio::task::JoinError>),
    /// The active version changed: retired versions may be removed.
    Activated,
    CompactDue,
}

/// The leader's next event; never without a leader.
async fn leader_event(leader: Option<&mut Leader>, lease_check: Duration) -> LeaderEvent {
    let Some(Leader {
        supervisor,
        lease,
        activations,
        compact,
    }) = leader
    else {
        return std::future::pending().await;
    };
    let lease_lost = async {
        match lease {
            Some(held) => held.lost(lease_check).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        error = lease_lost => LeaderEvent::LeaseLost(error),
        Some(joined) = supervisor.tasks.join_next() => LeaderEvent::TaskEnded(joined),
        Ok(()) = activations.changed() => LeaderEvent::Activated,
        _ = compact.tick() => LeaderEvent::CompactDue,
    }
}

/// Whether `error` says another gateway took over the storage (its writer epoch moved).
fn is_fenced(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<StorageError>(),
            Some(StorageError::Fenced { .. })
        ) || matches!(
            cause.downcast_ref::<ReplicatorError>(),
            Some(ReplicatorError::Storage(StorageError::Fenced { .. }))
        )
    })
}

/// A leader's failure: a lost lease or a fenced commit means leadership is lost (returned as the
/// reason); anything else ends serve.
fn lost_or_fail(error: anyhow::Error) -> anyhow::Result<String> {
    if is_fenced(&error) || error.downcast_ref::<lease::LeaseError>().is_some() {
        Ok(format!("{error:#}"))
    } else {
        Err(error)
    }
}

/// The sync API's shared state for a config.
fn api_state(
    config: &Config,
    storage: &Arc<ServedStorage>,
    source: &SourceConnection,
    replication: &Arc<ReplicationMetrics>,
    node: crate::api::NodeStatus,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ApiState> {
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let limits = SessionLimits {
        max_buckets: to_usize(config.api.max_buckets_per_connection),
        max_lookups: to_usize(config.api.max_parameter_query_results),
        ..SessionLimits::default()
    };
    let served: Arc<dyn BucketStorage> = storage.clone();
    Ok(ApiState {
        env: Arc::new(SessionEnv {
            storage: served,
            events: Arc::clone(storage.events()),
            rules: Arc::new(RulesCache::default()),
            limits,
            metrics: Arc::new(ApiMetrics::default()),
            reads: SharedReads::default(),
        }),
        auth: authenticator(config)?,
        write_checkpoints: Arc::new(WriteCheckpoints::new(source.clone())),
        replication: Arc::clone(replication),
        config: ApiConfig {
            max_body_bytes: to_usize(config.api.max_request_bytes),
            max_connections: to_usize(config.api.max_concurrent_connections),
        },
        shutdown,
        clients: Arc::default(),
        dashboard: config.dashboard.clone(),
        node,
    })
}

/// Takes an exclusive lock on `<storage>.lock` (released when the process ends, also on a crash).
fn lock_storage(storage_path: &Path) -> anyhow::Result<std::fs::File> {
    let mut lock_path = storage_path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot create the storage lock file {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another syncgate serve is using the storage {} (lock {}); stop it first, or give this one its own storage path",
            storage_path.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
}

type TaskOutcome = (RulesVersion, Result<Stopped, ReplicatorError>);

struct Supervisor {
    storage: Arc<ServedStorage>,
    source: SourceConnection,
    options: ReplicatorOptions,
    catalog: Catalog,
    metrics: Arc<ReplicationMetrics>,
    active: watch::Sender<Option<RulesVersion>>,
    tasks: JoinSet<TaskOutcome>,
    /// Versions with a running replicator.
    running: HashMap<RulesVersion, Running>,
}

struct Running {
    rules: String,
    stop: watch::Sender<bool>,
    /// Stopped because its rules were replaced before it became active: remove it once stopped.
    discard: bool,
}

impl Supervisor {
    /// Stops every replicator and waits for them (shutdown: they confirm what they committed).
    async fn shut_down(mut self) {
        for running in self.running.values() {
            running.stop.send_replace(true);
        }
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok((version, Err(error))) = joined {
                warn!(%version, %error, "replication ended with an error during shutdown");
            }
        }
    }

    /// Stops every replicator at once (leadership lost: whatever they would still commit is fenced).
    async fn stop_now(&mut self) {
        for running in self.running.values() {
            running.stop.send_replace(true);
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.running.clear();
    }

    async fn storage<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ServedStorage) -> Result<T, crate::storage::StorageError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let storage = Arc::clone(&self.storage);
        Ok(tokio::task::spawn_blocking(move || f(&storage)).await??)
    }

    /// Makes `rules_text` the rules being served: keeps the active version if it has these rules,
    /// else resumes or creates a building version for them. Removes other building and retired
    /// versions, drops orphaned slots, and starts a replicator for each version that needs one.
    async fn start(&mut self, rules_text: &str) -> anyhow::Result<()> {
        let versions = self.storage(|s| s.versions()).await?;
        let active = versions.iter().find(|v| v.state == VersionState::Active).cloned();
        self.active.send_replace(active.as_ref().map(|v| v.version));
        let mut wanted = Vec::new();
        if let Some(active) = &active {
            wanted.push(active.version);
        }
        if active.as_ref().is_none_or(|a| a.rules != rules_text) {
            let building = versions
                .iter()
                .find(|v| v.state == VersionState::Building && v.rules == rules_text)
                .map(|v| v.version);
            let target = match building {
                Some(version) => version,
                None => {
                    let text = rules_text.to_owned();
                    let version = self.storage(move |s| s.create_version(&text)).await?;
                    info!(%version, "new sync rules: building a new version in the background");
                    version
                }
            };
            wanted.push(target);
        }
        for stale in versions
            .iter()
            .filter(|v| !wanted.contains(&v.version) && v.state != VersionState::Active)
        {
            if let Some(running) = self.running.get_mut(&stale.version) {
                // A building version whose rules were replaced: stop it, then remove it.
                running.discard = true;
                running.stop.send_replace(true);
                continue;
            }
            self.remove_version(stale.version).await?;
        }
        self.drop_orphan_slots().await?;
        for version in wanted {
            if self.running.contains_key(&version) {
                continue;
            }
            let text = versions
                .iter()
                .find(|v| v.version == version)
                .map_or_else(|| rules_text.to_owned(), |v| v.rules.clone());
            self.spawn(version, &text)?;
        }
        Ok(())
    }

    fn spawn(&mut self, version: RulesVersion, rules_text: &str) -> anyhow::Result<()> {
        let rules = compile_version(version, rules_text)?;
        let (stop, stop_rx) = watch::channel(false);
        let mut replicator = VersionReplicator::new(
            Arc::clone(&self.storage),
            version,
            Arc::new(rules),
            self.source.clone(),
            self.options.clone(),
            Arc::clone(&self.metrics),
            self.active.clone(),
            stop_rx,
        );
        self.running.insert(
            version,
            Running {
                rules: rules_text.to_owned(),
                stop,
                discard: false,
            },
        );
        self.tasks.spawn(async move {
            let outcome = replicator.run().await;
            (version, outcome)
        });
        Ok(())
    }

    /// A replicator stopped: clean up a retired version, rebuild after a lost slot, or fail.
    async fn finished(
        &mut self,
        version: RulesVersion,
        outcome: Result<Stopped, ReplicatorError>,
        rules_text: &str,
    ) -> anyhow::Result<()> {
        let (version_rules, discard) = self
            .running
            .remove(&version)
            .map_or_else(|| (rules_text.to_owned(), false), |r| (r.rules, r.discard));
        match outcome {
            Ok(Stopped::Shutdown) if discard => self.remove_version(version).await,
            Ok(Stopped::Shutdown) => Ok(()),
            Ok(Stopped::Retired) => {
                info!(%version, "removing the retired version's slot and data");
                self.remove_version(version).await
            }
            Err(ReplicatorError::SlotLost { slot, reason }) => {
                error!(%version, slot, reason, "replication slot lost; re-snapshotting into a new version");
                let is_active = *self.active.borrow() == Some(version);
                if !is_active {
                    self.remove_version(version).await?;
                }
                // The active version keeps serving what it has until the new one catches up.
                let text = version_rules.clone();
                let new_version = self.storage(move |s| s.create_version(&text)).await?;
                self.spawn(new_version, &version_rules)
            }
            Err(error) => {
                Err(anyhow::Error::new(error).context(format!("replication of version {version} failed")))
            }
        }
    }

    /// Removes retired versions nobody replicates any more (one whose slot was lost keeps serving until
    /// its replacement is active, then lands here). Running ones clean up when their replicator stops.
    async fn remove_retired(&self) -> anyhow::Result<()> {
        let versions = self.storage(|s| s.versions()).await?;
        for version in versions {
            if version.state == VersionState::Retired && !self.running.contains_key(&version.version) {
                self.remove_version(version.version).await?;
            }
        }
        Ok(())
    }

    /// Deletes a non-active version's data and its slot.
    async fn remove_version(&self, version: RulesVersion) -> anyhow::Result<()> {
        let slot = slot_name(&self.options.slot_prefix, version);
        self.drop_slot_if_inactive(&slot).await?;
        self.storage(move |s| s.delete_version(version)).await?;
        info!(%version, "removed sync rules version");
        Ok(())
    }

    async fn drop_slot_if_inactive(&self, slot: &str) -> anyhow::Result<()> {
        match self.catalog.drop_slot_when_released(slot).await? {
            SlotDrop::Absent => {}
            SlotDrop::Dropped => info!(slot, "dropped replication slot"),
            SlotDrop::InUse => {
                warn!(
                    slot,
                    "replication slot still in use; not dropped (it is retried at the next start)"
                );
            }
        }
        Ok(())
    }

    /// Drops inactive slots with our prefix whose version storage no longer has (invariant 8).
    async fn drop_orphan_slots(&self) -> anyhow::Result<()> {
        let known: Vec<String> = self
            .storage(|s| s.versions())
            .await?
            .iter()
            .map(|v| slot_name(&self.options.slot_prefix, v.version))
            .collect();
        for (slot, active) in self.catalog.slots_with_prefix(&self.options.slot_prefix).await? {
            if known.contains(&slot) {
                continue;
            }
            if active {
                warn!(
                    slot,
                    "orphaned replication slot is in use by another process; not dropped"
                );
                continue;
            }
            self.catalog.drop_slot(&slot).await?;
            info!(slot, "dropped orphaned replication slot");
        }
        Ok(())
    }

    async fn compact(&self) {
        if self.active.borrow().is_none() {
            return;
        }
        let storage = Arc::clone(&self.storage);
        match tokio::task::spawn_blocking(move || compact_cmd::compact_active(&*storage)).await {
            Ok(Ok((version, stats))) => info!("{}", compact_cmd::summary(version, &stats)),
            Ok(Err(error)) => warn!("background compaction failed: {error}"),
            Err(error) => warn!("background compaction failed: {error}"),
        }
    }

    fn report(&self) {
        let m = self.metrics.snapshot();
        info!(
            applied_lsn = %m.applied_lsn,
            lag_bytes = m.lag_bytes,
            lag_seconds = m.lag_seconds,
            row_changes = m.row_changes,
            transactions = m.transactions,
            snapshot_rows = m.snapshot_rows,
            retained_wal_bytes = m.retained_wal_bytes,
            "replication"
        );
    }
}

/// The token verifier of `client_auth`; `jwks_uri` keys are fetched in the background from now on.
fn authenticator(config: &Config) -> anyhow::Result<Arc<dyn Authenticate>> {
    let authenticator = crate::auth::Authenticator::new(&config.client_auth).context("client_auth")?;
    authenticator.start_refresh();
    Ok(Arc::new(authenticator))
}
