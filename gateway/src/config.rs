//! The gateway's configuration: a YAML file in the PowerSync service's layout (`powersync.yaml`),
//! plus `SYNCGATE_*` environment overrides. docs/config.md documents every key.
//!
//! Loading validates everything the gateway needs before it starts: a bad file is an error with
//! `FILE:LINE:COL`, never a late surprise. Keys PowerSync knows and syncgate does not implement,
//! and unknown keys, are warnings, so an existing PowerSync config loads unchanged.
//! Secrets live in [`Secret`], whose `Debug` prints `***`.

pub mod local;
mod postgres;
mod reader;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use postgres::{DecoderChoice, PostgresConnection, SslMode};

/// Default HTTP port (PowerSync's).
pub const DEFAULT_PORT: u16 = 8080;
/// Default SQLite bucket storage file, relative to the config file's directory.
pub const DEFAULT_STORAGE_PATH: &str = "syncgate.sqlite";
/// Default prefix of replication slot names (PowerSync's is `powersync_`).
pub const DEFAULT_SLOT_NAME_PREFIX: &str = "syncgate_";
/// Default publication name (PowerSync's fixed name).
pub const DEFAULT_PUBLICATION: &str = "powersync";
/// Default maximum token lifetime: PowerSync rejects tokens valid for more than a day.
pub const DEFAULT_MAX_LIFETIME_SECONDS: u64 = 86_400;

/// Environment variables that override the file (they win over file values, `!env` included).
pub mod env {
    /// Replaces the whole source connection (`replication.connections[0]`) with this URI.
    pub const DATABASE_URL: &str = "SYNCGATE_DATABASE_URL";
    /// Replaces the source connection's password.
    pub const DATABASE_PASSWORD: &str = "SYNCGATE_DATABASE_PASSWORD";
    /// Replaces `port`.
    pub const PORT: &str = "SYNCGATE_PORT";
    /// Replaces `storage.path`.
    pub const STORAGE_PATH: &str = "SYNCGATE_STORAGE_PATH";
    /// Replaces `client_auth.supabase_jwt_secret` (an HS256 shared secret).
    pub const JWT_SECRET: &str = "SYNCGATE_JWT_SECRET";
    /// Replaces `dashboard.enabled` (`true`/`false`).
    pub const DASHBOARD_ENABLED: &str = "SYNCGATE_DASHBOARD_ENABLED";
    /// Replaces `api.tokens` with this one admin token (the dashboard's).
    pub const ADMIN_TOKEN: &str = "SYNCGATE_ADMIN_TOKEN";
}

/// A value kept out of logs: `Debug` and `Display` print `***`; [`Secret::expose`] reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The loaded, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was loaded from.
    pub file: PathBuf,
    pub replication: ReplicationConfig,
    pub storage: StorageConfig,
    pub sync_rules: SyncRulesConfig,
    pub client_auth: ClientAuthConfig,
    pub port: u16,
    pub api: ApiSettings,
    pub dashboard: DashboardSettings,
}

/// The diagnostics page at `/dashboard` (docs/dashboard.md): off unless enabled, and then guarded by
/// PowerSync's admin API tokens (`api.tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DashboardSettings {
    pub enabled: bool,
    /// Bearer tokens accepted by the dashboard's JSON endpoints; never empty when `enabled`.
    pub admin_tokens: Vec<Secret<String>>,
}

/// Limits of the sync API (`api.parameters`, PowerSync's keys and defaults where syncgate has them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// Buckets one connection may sync; more end the stream with `PSYNC_S2305`.
    pub max_buckets_per_connection: u64,
    /// Concurrent sync streams of this process; more are answered 503 and retried by the client.
    pub max_concurrent_connections: u64,
    /// Parameter lookups one connection's bucket resolution may make.
    pub max_parameter_query_results: u64,
    /// Largest request body in bytes (413 above).
    pub max_request_bytes: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_buckets_per_connection: 1_000,
            max_concurrent_connections: 20_000,
            max_parameter_query_results: 1_000,
            max_request_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationConfig {
    /// Exactly one today; a list to keep PowerSync's layout.
    pub connections: Vec<PostgresConnection>,
}

impl ReplicationConfig {
    /// The source database (validation guarantees there is exactly one).
    pub fn connection(&self) -> &PostgresConnection {
        &self.connections[0]
    }
}

/// Where buckets are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageConfig {
    /// Embedded SQLite; `path` is absolute (resolved against the config file's directory).
    Sqlite { path: PathBuf },
    /// A schema in a Postgres database (not the source database).
    Postgres(crate::storage::PostgresStorageConfig),
}

/// Where the sync rules came from, and their text (not compiled here: the caller compiles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRulesConfig {
    pub source: SyncRulesSource,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRulesSource {
    /// `sync_rules.path`, absolute (resolved against the config file's directory).
    Path(PathBuf),
    /// `sync_rules.content`, inline in the config file. `origin` is known for a literal block (`|`),
    /// whose lines map one to one to lines of the config file.
    Content { origin: Option<ContentOrigin> },
}

/// Where a literal block of inline rules sits in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentOrigin {
    /// The config file line of the content's first line.
    pub first_line: usize,
    /// The block's indentation in columns.
    pub indent: usize,
}

impl SyncRulesConfig {
    /// The name to put in front of rules diagnostics.
    pub fn display_name(&self, config_file: &Path) -> String {
        match &self.source {
            SyncRulesSource::Path(path) => path.display().to_string(),
            SyncRulesSource::Content { .. } => format!("{}[sync_rules.content]", config_file.display()),
        }
    }

    /// `FILE:LINE:COL` for a 1-based position in the rules text: in the config file itself for a
    /// literal block, else relative to the content (`CONFIG[sync_rules.content]:LINE:COL`).
    pub fn locate(&self, config_file: &Path, line: usize, column: usize) -> String {
        match &self.source {
            SyncRulesSource::Content {
                origin: Some(ContentOrigin { first_line, indent }),
            } => format!(
                "{}:{}:{}",
                config_file.display(),
                first_line + line - 1,
                column + indent
            ),
            _ => format!("{}:{line}:{column}", self.display_name(config_file)),
        }
    }
}

/// How client tokens (JWTs) are verified.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientAuthConfig {
    /// Inline keys (`client_auth.jwks.keys`).
    pub jwks: Vec<Jwk>,
    /// Key sets fetched over HTTP(S).
    pub jwks_uri: Vec<String>,
    /// Accept Supabase-issued tokens (PowerSync's `supabase: true`).
    pub supabase: bool,
    /// HS256 shared secret for Supabase-style tokens (the raw secret string, not base64).
    pub supabase_jwt_secret: Option<Secret<String>>,
    /// Accepted `aud` values; empty means PowerSync's default (the service URL is not checked).
    pub audience: Vec<String>,
    /// Tokens whose `exp - iat` exceeds this are rejected.
    pub max_lifetime_seconds: u64,
}

/// One JSON Web Key. Its members stay in `members` (a JSON object) for the JWT library;
/// `Debug` shows only `kty`, `kid` and `alg` because symmetric keys (`k`) are secrets.
#[derive(Clone, PartialEq)]
pub struct Jwk {
    pub kty: String,
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub members: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kty", &self.kty)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// A problem that does not stop the gateway: an unknown key, or a PowerSync key syncgate ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A problem at a place in the file.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A bad `SYNCGATE_*` override.
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
}

/// A config and the warnings found while loading it (the caller logs them).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

/// Looks up an environment variable; tests pass a map instead of the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Loads `path` with the process environment (for `!env` tags and `SYNCGATE_*` overrides).
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        Self::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// Loads `path`, reading environment variables through `env`.
    pub fn load_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Parses config text as if read from `path` (relative paths resolve against its directory).
    pub fn parse(text: &str, path: &Path, env: EnvLookup<'_>) -> Result<Loaded, ConfigError> {
        reader::read(text, path, env)
    }
}
