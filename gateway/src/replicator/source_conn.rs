//! How the replicator reaches the source database: a libpq conninfo for the replication session and
//! a tokio-postgres config for ordinary connections (catalog, snapshot, markers), built from one
//! [`PostgresConnection`].

use tokio_postgres::Client;
use tokio_postgres::config::SslMode as PgSslMode;
use tracing::debug;

use crate::config::{PostgresConnection, SslMode};
use crate::source::SourceError;

/// Connection settings for both kinds of source connection. Holds the password: never log it.
#[derive(Clone)]
pub struct SourceConnection {
    /// libpq keyword/value conninfo (the replication client adds `replication=database` and the
    /// session settings itself).
    pub conninfo: String,
    pub config: tokio_postgres::Config,
    /// For logs: no password.
    pub display: String,
}

impl std::fmt::Debug for SourceConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConnection")
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

impl SourceConnection {
    /// Builds both forms. Ordinary connections do not speak TLS yet, so `sslmode` `require`,
    /// `verify-ca` and `verify-full` are refused with a message rather than silently downgraded.
    pub fn new(connection: &PostgresConnection) -> Result<SourceConnection, SourceError> {
        let ssl = match connection.sslmode {
            SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                return Err(SourceError::Configuration(format!(
                    "sslmode {} needs TLS, which this syncgate build does not support for its catalog and \
                     snapshot connections yet; set sslmode: disable (or prefer) for a database on a trusted network",
                    connection.sslmode
                )));
            }
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host(&connection.host)
            .port(connection.port)
            .dbname(&connection.database)
            .user(&connection.user)
            .ssl_mode(ssl)
            .application_name("syncgate");
        if let Some(password) = &connection.password {
            config.password(password.expose());
        }
        let conninfo = connection
            .connection_params()
            .into_iter()
            .map(|(key, value)| format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(SourceConnection {
            conninfo: format!("{conninfo} application_name='syncgate'"),
            config,
            display: connection.display_safe(),
        })
    }

    /// From a `postgresql://` URL (tests and tools).
    pub fn from_url(url: &str) -> Result<SourceConnection, SourceError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| SourceError::Configuration(format!("invalid source URL: {e}")))?;
        Ok(SourceConnection {
            conninfo: url.to_owned(),
            config,
            display: url.split('@').next_back().unwrap_or_default().to_owned(),
        })
    }

    /// Opens an ordinary connection; its task runs on the current runtime.
    pub async fn connect(&self, purpose: &str) -> Result<Client, SourceError> {
        let (client, connection) =
            self.config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(SourceError::query(format!(
                    "connecting to {} for {purpose}",
                    self.display
                )))?;
        let purpose = purpose.to_owned();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // The client sees the failure on its next call; this only records the cause.
                debug!(%error, purpose, "source connection ended");
            }
        });
        Ok(client)
    }
}
