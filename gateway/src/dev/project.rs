//! The project folder of `syncgate dev` (`.syncgate-dev/` by default): what persists between runs and
//! what each run rewrites.
//!
//! - `dev-key`: the development HS256 key, generated on first use and kept (tokens stay valid across
//!   runs); mode 0600.
//! - `sync-rules.yaml`: the demo rules, written when missing (edit it; delete it to get the demo's back).
//! - `powersync.yaml`: the gateway's config, rewritten every run (the Postgres port may change).
//! - `client-schema.json`: the demo app's client schema for `syncgate-client sync --schema`.
//! - `storage.sqlite`: the gateway's bucket storage; `clients/`: the databases of `--exit-after-ready`.
//! - `postgres/`: the local cluster (`data/`, `server.log`), unless elsewhere (see `PgCluster::open_persistent`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::local::{LocalConfig, LocalStorage, random_hs256_key};

pub const DEMO_SCHEMA_SQL: &str = include_str!("../../../sql/demo/schema.sql");
pub const DEMO_DATA_SQL: &str = include_str!("../../../sql/demo/data.sql");
pub const DEMO_RULES: &str = include_str!("../../../sql/demo/sync-rules.yaml");
/// The demo tables, in the order the schema creates them.
pub const DEMO_TABLES: [&str; 4] = ["users", "lists", "list_members", "todos"];
/// Tokens say this audience; the config accepts it.
pub const AUDIENCE: &str = "syncgate-dev";

/// The client schema of the demo app (sql/demo/client-schema.json): what the demo rules sync, with client
/// column types (booleans as integers, timestamps as text).
pub const CLIENT_SCHEMA: &str = include_str!("../../../sql/demo/client-schema.json");

/// The project folder's paths.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
}

impl Project {
    /// Creates the folder if needed; paths are absolute so printed commands work from anywhere.
    pub fn open(dir: &Path) -> anyhow::Result<Project> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the project folder {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        Ok(Project { dir })
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("powersync.yaml")
    }

    pub fn rules(&self) -> PathBuf {
        self.dir.join("sync-rules.yaml")
    }

    pub fn client_schema(&self) -> PathBuf {
        self.dir.join("client-schema.json")
    }

    pub fn postgres(&self) -> PathBuf {
        self.dir.join("postgres")
    }

    pub fn clients(&self) -> PathBuf {
        self.dir.join("clients")
    }

    /// The development key (base64url, 32 random bytes), created on first use.
    pub fn dev_key(&self) -> anyhow::Result<String> {
        let path = self.dir.join("dev-key");
        match std::fs::read_to_string(&path) {
            Ok(key) => return Ok(key.trim().to_owned()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        }
        let key = random_hs256_key().context("reading /dev/urandom for the development key")?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{key}"))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(key)
    }

    /// Writes the demo rules (when missing), the client schema and the config for `database_url`, with
    /// bucket storage in `storage_url` (Postgres) or else the project folder's SQLite file; returns the
    /// config's path.
    pub fn write_files(
        &self,
        database_url: &str,
        storage_url: Option<&str>,
        api_port: u16,
    ) -> anyhow::Result<PathBuf> {
        let rules = self.rules();
        if !rules.exists() {
            std::fs::write(&rules, DEMO_RULES).with_context(|| format!("writing {}", rules.display()))?;
        }
        let schema = self.client_schema();
        std::fs::write(&schema, CLIENT_SCHEMA).with_context(|| format!("writing {}", schema.display()))?;
        let key = self.dev_key()?;
        let config = LocalConfig {
            written_by: Some(
                "Written by `syncgate dev` on every run (docs/dev.md); a development key: never use in production.",
            ),
            source_url: database_url,
            slot_name_prefix: None,
            storage: match storage_url {
                Some(url) => LocalStorage::Postgres(url),
                None => LocalStorage::SqliteFile("storage.sqlite"),
            },
            rules_path: "sync-rules.yaml",
            port: api_port,
            key: &key,
            key_id: "syncgate-dev",
            audience: AUDIENCE,
        }
        .to_yaml();
        let path = self.config();
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}
