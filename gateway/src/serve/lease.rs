//! The replication lease: of the gateways sharing one Postgres bucket storage, the one holding it
//! replicates (DESIGN "Scale-out"). The lease is a session advisory lock on the storage database, keyed
//! by the storage's schema, held by a connection of its own (`application_name` `syncgate-lease`): it is
//! released when that session ends, also when its process is killed or the server drops it.
//!
//! Taking it bumps the writer epoch in the same session (`UPDATE leader_epoch … RETURNING epoch`). The
//! update waits for a deposed leader's storage commit in flight and makes all its later ones fail with
//! `StorageError::Fenced` (storage/postgres.rs), so a leader whose lease session died while its process
//! lives cannot write beside its successor.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use tracing::debug;

/// First key of the lease's advisory lock (`pg_try_advisory_lock(int, int)`), "sgwr" in ASCII; the
/// second is `hashtext(<storage schema>)`, so storages in other schemas have their own lease.
const LEASE_CLASS: i32 = 0x7367_7772;

/// How long a lease check may take before the lease counts as lost (the server or network hangs).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("replication lease session: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("replication lease session did not answer within {0:?}")]
    Timeout(Duration),
}

/// Campaigns for the lease of one storage: one attempt per [`Lease::try_acquire`] call, on a session kept
/// open between attempts.
pub struct Lease {
    config: tokio_postgres::Config,
    schema: String,
    session: Option<Client>,
}

impl Lease {
    /// `config` reaches the storage database with `search_path` set to `schema`
    /// (`PostgresStorage::lease_connection`).
    pub fn new(config: tokio_postgres::Config, schema: &str) -> Lease {
        Lease {
            config,
            schema: schema.to_owned(),
            session: None,
        }
    }

    /// Takes the lease if no other session holds it: `Some` with the new, bumped writer epoch.
    pub async fn try_acquire(&mut self) -> Result<Option<HeldLease>, LeaseError> {
        let client = match self.session.take() {
            Some(client) if !client.is_closed() => client,
            _ => connect(&self.config).await?,
        };
        let taken: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&LEASE_CLASS, &self.schema],
            )
            .await?
            .get(0);
        if !taken {
            self.session = Some(client);
            return Ok(None);
        }
        let epoch: i64 = client
            .query_one("UPDATE leader_epoch SET epoch = epoch + 1 RETURNING epoch", &[])
            .await?
            .get(0);
        Ok(Some(HeldLease { client, epoch }))
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, LeaseError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            // The holder notices at its next check; this records the cause.
            debug!(%error, "replication lease session ended");
        }
    });
    Ok(client)
}

/// The lease, held while this session lives; dropping it ends the session and releases the lease.
pub struct HeldLease {
    client: Client,
    epoch: i64,
}

impl HeldLease {
    /// The writer epoch this lease bumped the storage to.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether the session (and with it the lease) is still there: a cheap round trip.
    pub async fn check(&self) -> Result<(), LeaseError> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.client.simple_query("SELECT 1")).await {
            Ok(answer) => answer.map(drop).map_err(LeaseError::from),
            Err(_) => Err(LeaseError::Timeout(CHECK_TIMEOUT)),
        }
    }

    /// Checks every `interval` and returns once the lease is lost, with why.
    pub async fn lost(&self, interval: Duration) -> LeaseError {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(error) = self.check().await {
                return error;
            }
        }
    }
}
