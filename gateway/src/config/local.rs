//! Configs syncgate writes for a gateway of its own on this machine (`syncgate dev`, `syncgate rules
//! test`): the source over plain TCP, a development HS256 key, storage in a file or a Postgres database.

use base64::Engine as _;
use serde_json::Value;

/// Where a [`LocalConfig`] keeps bucket storage.
#[derive(Debug, Clone, Copy)]
pub enum LocalStorage<'a> {
    /// A SQLite file, relative to the config file's directory.
    SqliteFile(&'a str),
    /// A Postgres database other than the source (`postgresql://…`).
    Postgres(&'a str),
}

/// The values of a config for a gateway on this machine; [`LocalConfig::to_yaml`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct LocalConfig<'a> {
    /// A first line of comment saying who wrote the file (without `#`), if any.
    pub written_by: Option<&'a str>,
    pub source_url: &'a str,
    pub slot_name_prefix: Option<&'a str>,
    pub storage: LocalStorage<'a>,
    /// The rules file, absolute or relative to the config file's directory.
    pub rules_path: &'a str,
    pub port: u16,
    /// The HS256 key, base64url ([`random_hs256_key`]), its `kid`, and the audience tokens must name.
    pub key: &'a str,
    pub key_id: &'a str,
    pub audience: &'a str,
}

impl LocalConfig<'_> {
    pub fn to_yaml(&self) -> String {
        // JSON strings are YAML scalars: URLs, paths and names need no YAML quoting rules of their own.
        let quoted = |text: &str| Value::String(text.to_owned()).to_string();
        let mut yaml = String::new();
        if let Some(by) = self.written_by {
            yaml.push_str(&format!("# {by}\n"));
        }
        yaml.push_str(&format!(
            "replication:\n  connections:\n    - type: postgresql\n      uri: {}\n      sslmode: disable\n",
            quoted(self.source_url)
        ));
        if let Some(prefix) = self.slot_name_prefix {
            yaml.push_str(&format!("      slot_name_prefix: {}\n", quoted(prefix)));
        }
        yaml.push_str(&match self.storage {
            LocalStorage::SqliteFile(path) => format!("storage:\n  type: sqlite\n  path: {}\n", quoted(path)),
            LocalStorage::Postgres(url) => {
                format!(
                    "storage:\n  type: postgresql\n  uri: {}\n  sslmode: disable\n",
                    quoted(url)
                )
            }
        });
        yaml.push_str(&format!(
            "sync_rules:\n  path: {}\nport: {}\nclient_auth:\n  audience: [{}]\n  jwks:\n    keys:\n      \
             - kty: oct\n        alg: HS256\n        kid: {}\n        k: {}\n",
            quoted(self.rules_path),
            self.port,
            quoted(self.audience),
            quoted(self.key_id),
            quoted(self.key)
        ));
        yaml
    }
}

/// A fresh HS256 key: 32 bytes from /dev/urandom, base64url without padding (a JWK's `k`).
pub fn random_hs256_key() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, StorageConfig};

    #[test]
    fn written_configs_load_with_their_values() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = random_hs256_key().expect("key");
        std::fs::write(
            dir.path().join("rules: with a colon.yaml"),
            "bucket_definitions: {}\n",
        )
        .expect("rules");
        let write = |config: LocalConfig<'_>| {
            let path = dir.path().join("powersync.yaml");
            std::fs::write(&path, config.to_yaml()).expect("write");
            Config::load(&path).expect("loads").config
        };
        let base = LocalConfig {
            written_by: Some("Written by a test"),
            source_url: "postgresql://postgres:p%40ss@db:5432/app",
            slot_name_prefix: Some("sg_local_"),
            storage: LocalStorage::SqliteFile("storage.sqlite"),
            rules_path: "rules: with a colon.yaml",
            port: 8123,
            key: &key,
            key_id: "local",
            audience: "syncgate-local",
        };

        let config = write(base);
        let source = config.replication.connection();
        assert_eq!(
            (source.database.as_str(), source.slot_name_prefix.as_str()),
            ("app", "sg_local_")
        );
        assert_eq!(config.port, 8123);
        assert!(
            matches!(&config.storage, StorageConfig::Sqlite { path } if path.ends_with("storage.sqlite"))
        );

        let config = write(LocalConfig {
            slot_name_prefix: None,
            storage: LocalStorage::Postgres("postgresql://postgres@db:5432/buckets"),
            ..base
        });
        let StorageConfig::Postgres(storage) = &config.storage else {
            panic!("Postgres storage expected: {:?}", config.storage)
        };
        assert_eq!(storage.connection.database, "buckets");
    }
}
