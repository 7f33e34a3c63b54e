//! YAML tree → [`Config`]: key classification (known, PowerSync-but-ignored, unknown), `!env`
//! resolution, typing of scalars by field, defaults and `SYNCGATE_*` overrides.

use std::path::{Path, PathBuf};

use syncgate_rules::yaml::{self, Position, ScalarStyle, YamlKind, YamlNode};

use super::ContentOrigin;
use super::postgres::{DecoderChoice, UriParts, parse_uri};
use super::{
    ApiSettings, ClientAuthConfig, Config, ConfigError, ConfigWarning, DEFAULT_MAX_LIFETIME_SECONDS,
    DEFAULT_PORT, DEFAULT_PUBLICATION, DEFAULT_SLOT_NAME_PREFIX, DEFAULT_STORAGE_PATH, DashboardSettings,
    EnvLookup, Jwk, Loaded, PostgresConnection, ReplicationConfig, Secret, SslMode, StorageConfig,
    SyncRulesConfig, SyncRulesSource, env,
};
use crate::storage::PostgresStorageConfig;

const TOP_KNOWN: &[&str] = &[
    "replication",
    "storage",
    "sync_rules",
    "sync_config",
    "client_auth",
    "port",
    "api",
    "dashboard",
];
/// PowerSync service keys with no syncgate equivalent yet.
const TOP_IGNORED: &[&str] = &[
    "telemetry",
    "migrations",
    "dev",
    "metadata",
    "healthcheck",
    "system",
    "parameters",
];
const CONNECTION_KNOWN: &[&str] = &[
    "type",
    "tag",
    "uri",
    "hostname",
    "host",
    "port",
    "database",
    "username",
    "user",
    "password",
    "sslmode",
    "publication_name",
    "slot_name_prefix",
    "decoder",
];
const STORAGE_KNOWN: &[&str] = &[
    "type",
    "path",
    "uri",
    "hostname",
    "host",
    "port",
    "database",
    "username",
    "user",
    "password",
    "sslmode",
    "schema",
    "poll_interval_ms",
];
const CONNECTION_IGNORED: &[&str] = &[
    "id",
    "cacert",
    "client_certificate",
    "client_private_key",
    "tls_servername",
    "reject_ip_ranges",
    "max_pool_size",
    "debug_api",
];
const CLIENT_AUTH_KNOWN: &[&str] = &[
    "jwks",
    "jwks_uri",
    "supabase",
    "supabase_jwt_secret",
    "audience",
    "max_lifetime_seconds",
];
const CLIENT_AUTH_IGNORED: &[&str] = &["block_local_jwks", "jwks_reject_ip_ranges"];

pub(super) fn read<'e>(text: &'e str, path: &Path, env: EnvLookup<'e>) -> Result<Loaded, ConfigError> {
    let mut r = Reader {
        file: path.display().to_string(),
        lines: text.lines().collect(),
        env,
        warnings: Vec::new(),
    };
    // Relative paths in the file are relative to the file, wherever the gateway was started.
    let dir = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_default();
    // The YAML reader is shared with the rules compiler, whose messages say "rules file".
    let root =
        yaml::parse(text).map_err(|e| r.err(e.position, e.message.replace("rules file", "config file")))?;
    let top = match &root {
        Some(node) => r.mapping(node, "", TOP_KNOWN, TOP_IGNORED)?,
        None => Map::empty(),
    };
    let replication = r.replication(&top)?;
    let storage = r.storage(&top, &dir)?;
    let sync_rules = r.sync_rules(&top, &dir)?;
    let client_auth = r.client_auth(&top)?;
    let mut dashboard = r.dashboard(&top)?;
    let api = r.api(&top, &mut dashboard)?;
    let mut port = match top.get("port") {
        Some(node) => r.port(node, "port")?,
        None => DEFAULT_PORT,
    };
    if let Some(value) = r.override_var(env::PORT) {
        port = parse_port(&value).ok_or_else(|| ConfigError::Env {
            var: env::PORT,
            message: format!("`{value}` is not a port number from 1 to 65535"),
        })?;
    }
    r.warnings.sort_by_key(|w| (w.line, w.column));
    Ok(Loaded {
        config: Config {
            file: path.to_owned(),
            replication,
            storage,
            sync_rules,
            client_auth,
            port,
            api,
            dashboard,
        },
        warnings: r.warnings,
    })
}

struct Reader<'e> {
    file: String,
    /// The file's lines, to find where inline rules start.
    lines: Vec<&'e str>,
    env: EnvLookup<'e>,
    warnings: Vec<ConfigWarning>,
}

/// A mapping's entries after classification: only known keys remain.
struct Map<'a> {
    path: String,
    position: Position,
    entries: Vec<(&'a str, &'a YamlNode)>,
}

impl<'a> Map<'a> {
    fn empty() -> Self {
        Map {
            path: String::new(),
            position: Position { line: 1, column: 1 },
            entries: Vec::new(),
        }
    }

    /// The value of `key`; an explicit null (`key:` or `key: null`) counts as absent.
    fn get(&self, key: &str) -> Option<&'a YamlNode> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .filter(|v| v.tag.is_some() || !v.is_null())
    }

    fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A scalar after `!env` resolution, with how its type may be read.
struct Scalar {
    text: String,
    kind: ScalarKind,
}

#[derive(PartialEq)]
enum ScalarKind {
    /// A plain scalar: typed by the YAML core schema (null, bool, number or string).
    Plain,
    /// Quoted or block scalar, or a `!env` string: a string, though fields may still parse it.
    Text,
    /// `!env VAR::number`.
    Number,
    /// `!env VAR::boolean`.
    Bool,
}

impl Reader<'_> {
    fn err(&self, position: Position, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: position.line,
            column: position.column,
            message: message.into(),
        }
    }

    /// A `SYNCGATE_*` override; empty counts as unset (compose files often pass `VAR=`).
    fn override_var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }

    fn warn(&mut self, position: Position, message: String) {
        self.warnings.push(ConfigWarning {
            file: self.file.clone(),
            line: position.line,
            column: position.column,
            message,
        });
    }

    fn mapping<'a>(
        &mut self,
        node: &'a YamlNode,
        path: &str,
        known: &[&str],
        ignored: &[&str],
    ) -> Result<Map<'a>, ConfigError> {
        self.no_tag(node, path)?;
        let Some(entries) = node.as_mapping() else {
            let what = if path.is_empty() { "the config file" } else { path };
            return Err(self.err(
                node.position,
                format!(
                    "{what} must be a mapping (`key: value` lines), not a {}",
                    node.kind_name()
                ),
            ));
        };
        let mut map = Map {
            path: path.to_owned(),
            position: node.position,
            entries: Vec::new(),
        };
        for (i, (key, value)) in entries.iter().enumerate() {
            let Some(name) = key.as_scalar() else {
                let what = if path.is_empty() { "top-level keys" } else { path };
                return Err(self.err(key.position, format!("{what}: keys must be plain names")));
            };
            let key_path = join(path, name);
            if entries[..i].iter().any(|(k, _)| k.as_scalar() == Some(name)) {
                return Err(self.err(key.position, format!("duplicate key `{key_path}`; keep only one")));
            }
            if known.contains(&name) {
                map.entries.push((name, value));
            } else if ignored.contains(&name) {
                self.warn(
                    key.position,
                    format!("`{key_path}` is a PowerSync setting that syncgate accepts but does not implement; it has no effect"),
                );
            } else {
                self.warn(
                    key.position,
                    format!(
                        "unknown key `{key_path}` is ignored (known here: {})",
                        known.join(", ")
                    ),
                );
            }
        }
        Ok(map)
    }

    fn no_tag(&self, node: &YamlNode, path: &str) -> Result<(), ConfigError> {
        match &node.tag {
            Some(tag) if tag == "!env" => Err(self.err(
                node.position,
                format!(
                    "`!env` needs a variable name (`{path}: !env VAR`), not a {}",
                    node.kind_name()
                ),
            )),
            Some(tag) => Err(self.err(node.position, unsupported_tag(tag, path))),
            None => Ok(()),
        }
    }

    fn scalar(&self, node: &YamlNode, path: &str) -> Result<Scalar, ConfigError> {
        let YamlKind::Scalar { value, style } = &node.kind else {
            self.no_tag(node, path)?;
            return Err(self.err(
                node.position,
                format!("`{path}` must be a single value, not a {}", node.kind_name()),
            ));
        };
        match node.tag.as_deref() {
            None => Ok(Scalar {
                text: value.clone(),
                kind: if *style == ScalarStyle::Plain {
                    ScalarKind::Plain
                } else {
                    ScalarKind::Text
                },
            }),
            Some("!env") => self.resolve_env(node, value, path),
            Some(tag) => Err(self.err(node.position, unsupported_tag(tag, path))),
        }
    }

    /// PowerSync's `!env VAR[::string|::number|::boolean]`: the variable's value replaces the scalar.
    fn resolve_env(&self, node: &YamlNode, spec: &str, path: &str) -> Result<Scalar, ConfigError> {
        let (name, kind) = spec.split_once("::").unwrap_or((spec, "string"));
        if name.is_empty() {
            return Err(self.err(
                node.position,
                format!("`{path}: !env` needs a variable name: `!env VAR`"),
            ));
        }
        let Some(text) = (self.env)(name) else {
            return Err(self.err(
                node.position,
                format!("environment variable `{name}` is not set (`{path}: !env {spec}`); set it or change `{path}`"),
            ));
        };
        let kind = match kind {
            "string" => ScalarKind::Text,
            "number" if text.trim().parse::<f64>().is_ok() => ScalarKind::Number,
            "number" => {
                return Err(self.err(
                    node.position,
                    format!("environment variable `{name}` must be a number for `!env {spec}`"),
                ));
            }
            "boolean" if matches!(text.to_ascii_lowercase().as_str(), "true" | "false") => ScalarKind::Bool,
            "boolean" => {
                return Err(self.err(
                    node.position,
                    format!("environment variable `{name}` must be `true` or `false` for `!env {spec}`"),
                ));
            }
            other => {
                return Err(self.err(
                    node.position,
                    format!("unknown `!env` type `::{other}`; use ::string, ::number or ::boolean"),
                ));
            }
        };
        let text = if kind == ScalarKind::Bool {
            text.to_ascii_lowercase()
        } else {
            text
        };
        Ok(Scalar { text, kind })
    }

    fn string(&self, node: &YamlNode, path: &str) -> Result<String, ConfigError> {
        let s = self.scalar(node, path)?;
        if s.kind == ScalarKind::Plain && node.is_null() {
            return Err(self.err(node.position, format!("`{path}` must be a string")));
        }
        Ok(s.text)
    }

    fn secret(&self, node: &YamlNode, path: &str) -> Result<Secret<String>, ConfigError> {
        self.string(node, path).map(Secret::new)
    }

    fn bool(&self, node: &YamlNode, path: &str) -> Result<bool, ConfigError> {
        let s = self.scalar(node, path)?;
        match s.text.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.err(
                node.position,
                format!("`{path}` must be true or false, not `{}`", s.text),
            )),
        }
    }

    fn port(&self, node: &YamlNode, path: &str) -> Result<u16, ConfigError> {
        // A string is fine (PowerSync accepts `port: !env PS_PORT` and `port: "8080"`).
        let s = self.scalar(node, path)?;
        parse_port(&s.text).ok_or_else(|| {
            self.err(
                node.position,
                format!("`{path}` must be a port number from 1 to 65535, not `{}`", s.text),
            )
        })
    }

    fn positive(&self, node: &YamlNode, path: &str) -> Result<u64, ConfigError> {
        let s = self.scalar(node, path)?;
        s.text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                self.err(
                    node.position,
                    format!("`{path}` must be a whole number greater than 0, not `{}`", s.text),
                )
            })
    }

    /// One string or a list of strings.
    fn string_list(&self, node: &YamlNode, path: &str) -> Result<Vec<String>, ConfigError> {
        match node.as_sequence() {
            Some(items) => {
                self.no_tag(node, path)?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.string(item, &format!("{path}[{i}]")))
                    .collect()
            }
            None => Ok(vec![self.string(node, path)?]),
        }
    }

    /// Any YAML value as JSON (for JWKs), with `!env` resolved and plain scalars core-schema typed.
    fn json(&self, node: &YamlNode, path: &str) -> Result<serde_json::Value, ConfigError> {
        use serde_json::Value;
        match &node.kind {
            YamlKind::Mapping(entries) => {
                self.no_tag(node, path)?;
                let mut object = serde_json::Map::new();
                for (key, value) in entries {
                    let name = self.string(key, path)?;
                    let v = self.json(value, &join(path, &name))?;
                    object.insert(name, v);
                }
                Ok(Value::Object(object))
            }
            YamlKind::Sequence(items) => {
                self.no_tag(node, path)?;
                let values = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.json(item, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?;
                Ok(Value::Array(values))
            }
            YamlKind::Alias => {
                Err(self.err(node.position, format!("`{path}`: YAML aliases are not supported")))
            }
            YamlKind::Scalar { .. } => {
                let s = self.scalar(node, path)?;
                let number = |text: &str| {
                    text.trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                };
                Ok(match s.kind {
                    ScalarKind::Text => Value::String(s.text),
                    ScalarKind::Bool => Value::Bool(s.text == "true"),
                    ScalarKind::Number => match s.text.trim().parse::<i64>() {
                        Ok(i) => Value::from(i),
                        Err(_) => number(&s.text).map_or(Value::String(s.text), Value::Number),
                    },
                    ScalarKind::Plain if node.is_null() => Value::Null,
                    ScalarKind::Plain => match (node.as_bool(), node.as_integer()) {
                        (Some(b), _) => Value::Bool(b),
                        (_, Some(i)) => Value::from(i),
                        _ if node.is_numeric() => {
                            number(&s.text).map_or(Value::String(s.text), Value::Number)
                        }
                        _ => Value::String(s.text),
                    },
                })
            }
        }
    }

    fn replication(&mut self, top: &Map<'_>) -> Result<ReplicationConfig, ConfigError> {
        let mut draft = ConnectionDraft::default();
        if let Some(node) = top.get("replication") {
            let replication = self.mapping(node, "replication", &["connections"], &[])?;
            if let Some(list) = replication.get("connections") {
                self.no_tag(list, "replication.connections")?;
                let Some(items) = list.as_sequence() else {
                    return Err(self.err(
                        list.position,
                        "`replication.connections` must be a list (`- type: postgresql ...`)",
                    ));
                };
                if let Some(second) = items.get(1) {
                    return Err(self.err(
                        second.position,
                        format!(
                            "syncgate replicates from one database; `replication.connections` has {} entries, keep one",
                            items.len()
                        ),
                    ));
                }
                if let Some(item) = items.first() {
                    draft = self.connection(item)?;
                }
            }
        }
        if let Some(url) = self.override_var(env::DATABASE_URL) {
            let parts = parse_uri(&url).map_err(|message| ConfigError::Env {
                var: env::DATABASE_URL,
                message,
            })?;
            draft.merge(parts);
        }
        if let Some(password) = self.override_var(env::DATABASE_PASSWORD) {
            draft.password = Some(Secret::new(password));
        }
        let connection = self.finish_connection(draft, top.position)?;
        Ok(ReplicationConfig {
            connections: vec![connection],
        })
    }

    fn connection(&mut self, node: &YamlNode) -> Result<ConnectionDraft, ConfigError> {
        let path = "replication.connections[0]";
        let map = self.mapping(node, path, CONNECTION_KNOWN, CONNECTION_IGNORED)?;
        let mut draft = ConnectionDraft {
            position: Some(node.position),
            ..ConnectionDraft::default()
        };
        match map.get("type") {
            None => {
                return Err(self.err(node.position, format!("`{path}` needs `type: postgresql`")));
            }
            Some(t) => {
                let kind = self.string(t, &map.key_path("type"))?;
                if kind != "postgresql" {
                    return Err(self.err(
                        t.position,
                        format!(
                            "syncgate replicates only from PostgreSQL: use `type: postgresql`, not `{kind}`"
                        ),
                    ));
                }
            }
        }
        self.connection_keys(&map, path, &mut draft)?;
        Ok(draft)
    }

    /// Reads the connection keys of `map` (a source connection or Postgres storage) into `draft`: the
    /// URI first, then discrete keys, which override its parts (as in PowerSync).
    fn connection_keys(
        &mut self,
        map: &Map<'_>,
        path: &str,
        draft: &mut ConnectionDraft,
    ) -> Result<(), ConfigError> {
        if let Some(uri) = map.get("uri") {
            let text = self.string(uri, &map.key_path("uri"))?;
            let parts = parse_uri(&text).map_err(|e| self.err(uri.position, format!("`{path}.uri`: {e}")))?;
            if !parts.other_params.is_empty() {
                let ignored = parts.other_params.join(", ");
                self.warn(
                    uri.position,
                    format!("`{path}.uri`: query parameters other than sslmode are ignored ({ignored})"),
                );
            }
            draft.merge(parts);
        }
        for (keys, slot) in [
            (&["hostname", "host"][..], &mut draft.host),
            (&["database"][..], &mut draft.database),
            (&["username", "user"][..], &mut draft.user),
            (&["tag"][..], &mut draft.tag),
            (&["publication_name"][..], &mut draft.publication),
            (&["slot_name_prefix"][..], &mut draft.slot_name_prefix),
        ] {
            for key in keys {
                if let Some(v) = map.get(key) {
                    *slot = Some(self.string(v, &map.key_path(key))?);
                }
            }
        }
        if let Some(v) = map.get("port") {
            draft.port = Some(self.port(v, &map.key_path("port"))?);
        }
        if let Some(v) = map.get("password") {
            draft.password = Some(self.secret(v, &map.key_path("password"))?);
        }
        if let Some(v) = map.get("decoder") {
            let text = self.string(v, &map.key_path("decoder"))?;
            draft.decoder = Some(DecoderChoice::parse(&text).ok_or_else(|| {
                self.err(
                    v.position,
                    format!(
                        "`{path}.decoder` must be one of {}, not `{text}`",
                        DecoderChoice::NAMES
                    ),
                )
            })?);
        }
        if let Some(v) = map.get("sslmode") {
            let text = self.string(v, &map.key_path("sslmode"))?;
            draft.sslmode = Some(SslMode::parse(&text).ok_or_else(|| {
                self.err(
                    v.position,
                    format!("`{path}.sslmode` must be one of {}, not `{text}`", SslMode::NAMES),
                )
            })?);
        }
        Ok(())
    }

    fn finish_connection(
        &self,
        draft: ConnectionDraft,
        top_position: Position,
    ) -> Result<PostgresConnection, ConfigError> {
        let missing = |what: &str, key: &str| {
            match draft.position {
            Some(position) => self.err(
                position,
                format!(
                    "`replication.connections[0]` has no {what}; set `{key}` or include it in `uri` \
                     (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
                ),
            ),
            None if self.override_var(env::DATABASE_URL).is_some() => ConfigError::Env {
                var: env::DATABASE_URL,
                message: format!("the URL has no {what} (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"),
            },
            None => self.err(
                top_position,
                format!(
                    "no source database: add `replication: {{connections: [{{type: postgresql, uri: ...}}]}}` \
                     or set {}",
                    env::DATABASE_URL
                ),
            ),
        }
        };
        let (host, database, user) = draft.required_parts(missing)?;
        Ok(PostgresConnection {
            tag: draft.tag.unwrap_or_else(|| "default".to_owned()),
            host,
            port: draft.port.unwrap_or(5432),
            database,
            user,
            password: draft.password,
            // PowerSync's default: verify the server's certificate and host name.
            sslmode: draft.sslmode.unwrap_or(SslMode::VerifyFull),
            publication: draft
                .publication
                .unwrap_or_else(|| DEFAULT_PUBLICATION.to_owned()),
            slot_name_prefix: draft
                .slot_name_prefix
                .unwrap_or_else(|| DEFAULT_SLOT_NAME_PREFIX.to_owned()),
            decoder: draft.decoder.unwrap_or_default(),
        })
    }

    fn storage(&mut self, top: &Map<'_>, dir: &Path) -> Result<StorageConfig, ConfigError> {
        let mut path = dir.join(DEFAULT_STORAGE_PATH);
        if let Some(node) = top.get("storage") {
            let map = self.mapping(node, "storage", STORAGE_KNOWN, &[])?;
            let postgres = match map.get("type") {
                None => false,
                Some(t) => {
                    let kind = self.string(t, "storage.type")?;
                    match kind.as_str() {
                        "sqlite" => false,
                        "postgresql" => true,
                        "mongodb" => {
                            return Err(self.err(
                                t.position,
                                "storage type `mongodb` is not supported; use `type: sqlite` (embedded) or \
                                 `type: postgresql`",
                            ));
                        }
                        _ => {
                            return Err(self.err(
                                t.position,
                                format!(
                                    "unknown storage type `{kind}`; use `type: sqlite` or `type: postgresql`"
                                ),
                            ));
                        }
                    }
                }
            };
            if postgres {
                return self.postgres_storage(node, &map);
            }
            if let Some((key, value)) = STORAGE_KNOWN
                .iter()
                .filter(|k| !["type", "path"].contains(*k))
                .find_map(|k| map.get(k).map(|v| (k, v)))
            {
                return Err(self.err(
                    value.position,
                    format!(
                        "`storage.{key}` is a key of Postgres storage; add `type: postgresql` or remove it"
                    ),
                ));
            }
            if let Some(p) = map.get("path") {
                path = dir.join(self.string(p, "storage.path")?);
            }
        }
        if let Some(p) = self.override_var(env::STORAGE_PATH) {
            path = std::path::absolute(&p).unwrap_or_else(|_| PathBuf::from(p));
        }
        Ok(StorageConfig::Sqlite { path })
    }

    /// `storage: {type: postgresql, uri: …}`: the same connection keys as the source, and `schema`.
    fn postgres_storage(&mut self, node: &YamlNode, map: &Map<'_>) -> Result<StorageConfig, ConfigError> {
        if let Some(p) = map.get("path") {
            return Err(self.err(
                p.position,
                "`storage.path` is the SQLite file; Postgres storage takes `uri` (or host, database, ...)",
            ));
        }
        let mut draft = ConnectionDraft {
            position: Some(node.position),
            ..ConnectionDraft::default()
        };
        self.connection_keys(map, "storage", &mut draft)?;
        let missing = |what: &str, key: &str| {
            self.err(
                node.position,
                format!(
                    "`storage` has no {what}; set `{key}` or include it in `uri` \
                     (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
                ),
            )
        };
        let (host, database, user) = draft.required_parts(missing)?;
        let schema = match map.get("schema") {
            Some(v) => {
                let schema = self.string(v, "storage.schema")?;
                if !crate::storage::is_identifier(&schema) {
                    return Err(self.err(
                        v.position,
                        format!(
                            "`storage.schema` `{schema}` must be lower-case letters, digits and `_` \
                             (at most 63, not starting with a digit)"
                        ),
                    ));
                }
                schema
            }
            None => crate::storage::DEFAULT_SCHEMA.to_owned(),
        };
        let poll_interval = match map.get("poll_interval_ms") {
            Some(v) => std::time::Duration::from_millis(self.positive(v, "storage.poll_interval_ms")?),
            None => crate::storage::DEFAULT_POLL_INTERVAL,
        };
        Ok(StorageConfig::Postgres(PostgresStorageConfig {
            connection: PostgresConnection {
                tag: "storage".to_owned(),
                host,
                port: draft.port.unwrap_or(5432),
                database,
                user,
                password: draft.password,
                // As for the source: PowerSync's default.
                sslmode: draft.sslmode.unwrap_or(SslMode::VerifyFull),
                // Replication-only settings, unused for storage.
                publication: String::new(),
                slot_name_prefix: String::new(),
                decoder: DecoderChoice::default(),
            },
            schema,
            poll_interval,
        }))
    }

    fn sync_rules(&mut self, top: &Map<'_>, dir: &Path) -> Result<SyncRulesConfig, ConfigError> {
        // `sync_config` is PowerSync's newer name for the same section.
        let (key, node) = match (top.get("sync_rules"), top.get("sync_config")) {
            (Some(_), Some(second)) => {
                return Err(self.err(
                    second.position,
                    "`sync_rules` and `sync_config` are the same section; keep one",
                ));
            }
            (Some(node), None) => ("sync_rules", node),
            (None, Some(node)) => ("sync_config", node),
            (None, None) => {
                return Err(self.err(
                    top.position,
                    "no sync rules: add `sync_rules: {path: sync-rules.yaml}` (relative to this file) \
                     or inline `sync_rules: {content: ...}`",
                ));
            }
        };
        let map = self.mapping(node, key, &["path", "content"], &["exit_on_error"])?;
        match (map.get("path"), map.get("content")) {
            (Some(_), Some(content)) => Err(self.err(
                content.position,
                format!("`{key}` has both `path` and `content`; keep one"),
            )),
            (Some(p), None) => {
                let path = dir.join(self.string(p, &map.key_path("path"))?);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.err(
                        p.position,
                        format!(
                            "cannot read sync rules file {}: {e} (`{key}.path` is relative to the config file)",
                            path.display()
                        ),
                    )
                })?;
                Ok(SyncRulesConfig {
                    source: SyncRulesSource::Path(path),
                    text,
                })
            }
            (None, Some(c)) => Ok(SyncRulesConfig {
                source: SyncRulesSource::Content {
                    origin: self.literal_origin(c),
                },
                text: self.string(c, &map.key_path("content"))?,
            }),
            (None, None) => Err(self.err(map.position, format!("`{key}` needs `path` or `content`"))),
        }
    }

    /// A literal block's content starts on the line after its `|` (the node's position),
    /// indented like its first non-blank line.
    fn literal_origin(&self, node: &YamlNode) -> Option<ContentOrigin> {
        let YamlKind::Scalar {
            style: ScalarStyle::Literal,
            ..
        } = &node.kind
        else {
            return None;
        };
        if node.tag.is_some() {
            return None;
        }
        let first_line = node.position.line + 1;
        let indent = self
            .lines
            .iter()
            .skip(first_line - 1)
            .find(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start_matches(' ').len())?;
        Some(ContentOrigin { first_line, indent })
    }

    /// `dashboard: {enabled}` (a syncgate key), with the `SYNCGATE_DASHBOARD_ENABLED` override. Its
    /// tokens come from `api.tokens`, read by [`Reader::api`].
    fn dashboard(&mut self, top: &Map<'_>) -> Result<DashboardSettings, ConfigError> {
        let mut dashboard = DashboardSettings::default();
        if let Some(node) = top.get("dashboard") {
            let map = self.mapping(node, "dashboard", &["enabled"], &[])?;
            if let Some(v) = map.get("enabled") {
                dashboard.enabled = self.bool(v, "dashboard.enabled")?;
            }
        }
        if let Some(value) = self.override_var(env::DASHBOARD_ENABLED) {
            dashboard.enabled = match value.to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: env::DASHBOARD_ENABLED,
                        message: format!("`{value}` is not `true` or `false`"),
                    });
                }
            };
        }
        Ok(dashboard)
    }

    /// `api: {tokens, parameters: {...}, max_request_bytes}`. PowerSync's admin API is not served;
    /// its `tokens` guard the dashboard, and have no effect (with a warning) while it is off.
    fn api(&mut self, top: &Map<'_>, dashboard: &mut DashboardSettings) -> Result<ApiSettings, ConfigError> {
        let mut api = ApiSettings::default();
        let node = top.get("api");
        let map = match node {
            Some(node) => {
                Some(self.mapping(node, "api", &["tokens", "parameters", "max_request_bytes"], &[])?)
            }
            None => None,
        };
        if let Some(tokens) = map.as_ref().and_then(|m| m.get("tokens")) {
            if dashboard.enabled {
                dashboard.admin_tokens = self
                    .string_list(tokens, "api.tokens")?
                    .into_iter()
                    .filter(|t| !t.is_empty())
                    .map(Secret::new)
                    .collect();
            } else {
                self.warn(
                    tokens.position,
                    "`api.tokens` is a PowerSync setting that syncgate accepts but does not implement; it has no \
                     effect (syncgate uses it only as the dashboard's admin tokens, and `dashboard.enabled` is not \
                     true)"
                        .to_owned(),
                );
            }
        }
        if let Some(token) = self.override_var(env::ADMIN_TOKEN) {
            dashboard.admin_tokens = vec![Secret::new(token)];
        }
        if dashboard.enabled && dashboard.admin_tokens.is_empty() {
            let position = top.get("dashboard").map_or(top.position, |n| n.position);
            return Err(self.err(
                position,
                "the dashboard is enabled but has no admin token: set `api.tokens` (a list) or the \
                 SYNCGATE_ADMIN_TOKEN environment variable",
            ));
        }
        let Some(map) = map else {
            return Ok(api);
        };
        if let Some(v) = map.get("max_request_bytes") {
            api.max_request_bytes = self.positive(v, "api.max_request_bytes")?;
        }
        if let Some(node) = map.get("parameters") {
            let params = self.mapping(
                node,
                "api.parameters",
                &[
                    "max_buckets_per_connection",
                    "max_concurrent_connections",
                    "max_parameter_query_results",
                ],
                &["max_data_fetch_concurrency"],
            )?;
            for (key, field) in [
                ("max_buckets_per_connection", &mut api.max_buckets_per_connection),
                ("max_concurrent_connections", &mut api.max_concurrent_connections),
                (
                    "max_parameter_query_results",
                    &mut api.max_parameter_query_results,
                ),
            ] {
                if let Some(v) = params.get(key) {
                    *field = self.positive(v, &format!("api.parameters.{key}"))?;
                }
            }
        }
        Ok(api)
    }

    fn client_auth(&mut self, top: &Map<'_>) -> Result<ClientAuthConfig, ConfigError> {
        let mut auth = ClientAuthConfig {
            max_lifetime_seconds: DEFAULT_MAX_LIFETIME_SECONDS,
            ..ClientAuthConfig::default()
        };
        if let Some(node) = top.get("client_auth") {
            let map = self.mapping(node, "client_auth", CLIENT_AUTH_KNOWN, CLIENT_AUTH_IGNORED)?;
            if let Some(jwks) = map.get("jwks") {
                auth.jwks = self.jwks(jwks)?;
            }
            if let Some(v) = map.get("jwks_uri") {
                auth.jwks_uri = self.string_list(v, "client_auth.jwks_uri")?;
                if let Some(bad) = auth
                    .jwks_uri
                    .iter()
                    .find(|u| !u.starts_with("https://") && !u.starts_with("http://"))
                {
                    return Err(self.err(
                        v.position,
                        format!("`client_auth.jwks_uri` must be http:// or https:// URLs, not `{bad}`"),
                    ));
                }
            }
            if let Some(v) = map.get("supabase") {
                auth.supabase = self.bool(v, "client_auth.supabase")?;
            }
            if let Some(v) = map.get("supabase_jwt_secret") {
                auth.supabase_jwt_secret = Some(self.secret(v, "client_auth.supabase_jwt_secret")?);
            }
            if let Some(v) = map.get("audience") {
                auth.audience = self.string_list(v, "client_auth.audience")?;
            }
            if let Some(v) = map.get("max_lifetime_seconds") {
                auth.max_lifetime_seconds = self.positive(v, "client_auth.max_lifetime_seconds")?;
            }
        }
        if let Some(secret) = self.override_var(env::JWT_SECRET) {
            auth.supabase_jwt_secret = Some(Secret::new(secret));
        }
        Ok(auth)
    }

    /// `client_auth.jwks: {keys: [...]}`: each key needs a known `kty`; symmetric keys need `k`.
    fn jwks(&mut self, node: &YamlNode) -> Result<Vec<Jwk>, ConfigError> {
        let map = self.mapping(node, "client_auth.jwks", &["keys"], &[])?;
        let Some(keys) = map.get("keys") else {
            return Err(self.err(
                node.position,
                "`client_auth.jwks` needs `keys: [...]` (a JWKS object)",
            ));
        };
        self.no_tag(keys, "client_auth.jwks.keys")?;
        let Some(items) = keys.as_sequence() else {
            return Err(self.err(keys.position, "`client_auth.jwks.keys` must be a list of keys"));
        };
        let mut jwks = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("client_auth.jwks.keys[{i}]");
            let serde_json::Value::Object(members) = self.json(item, &path)? else {
                return Err(self.err(item.position, format!("`{path}` must be a mapping (a JWK)")));
            };
            let text = |name: &str| members.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            let Some(kty) = text("kty") else {
                return Err(self.err(
                    item.position,
                    format!("`{path}` needs `kty` (RSA, EC, OKP or oct)"),
                ));
            };
            if !matches!(kty.as_str(), "RSA" | "EC" | "OKP" | "oct") {
                return Err(self.err(
                    item.position,
                    format!("`{path}.kty` must be RSA, EC, OKP or oct, not `{kty}`"),
                ));
            }
            if kty == "oct" {
                let k = text("k").unwrap_or_default();
                let base64url = k.trim_end_matches('=');
                if base64url.is_empty()
                    || !base64url
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(self.err(
                        item.position,
                        format!("`{path}.k` must be the shared secret in base64url (A-Z a-z 0-9 - _)"),
                    ));
                }
            }
            jwks.push(Jwk {
                kid: text("kid"),
                alg: text("alg"),
                kty,
                members,
            });
        }
        Ok(jwks)
    }
}

fn unsupported_tag(tag: &str, path: &str) -> String {
    format!("unsupported tag `{tag}` on `{path}`; only `!env VAR` is supported")
}

fn parse_port(text: &str) -> Option<u16> {
    text.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// A connection's parts as they are gathered from the URI, the keys and the environment.
#[derive(Default)]
struct ConnectionDraft {
    /// Where the connection is in the file; `None` when it comes only from the environment.
    position: Option<Position>,
    tag: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    user: Option<String>,
    password: Option<Secret<String>>,
    sslmode: Option<SslMode>,
    publication: Option<String>,
    slot_name_prefix: Option<String>,
    decoder: Option<DecoderChoice>,
}

impl ConnectionDraft {
    /// Host, database and user, which have no defaults; `missing(what, key)` says which is absent.
    fn required_parts(
        &self,
        missing: impl Fn(&str, &str) -> ConfigError,
    ) -> Result<(String, String, String), ConfigError> {
        let host = self.host.clone().ok_or_else(|| missing("host", "hostname"))?;
        let database = self
            .database
            .clone()
            .ok_or_else(|| missing("database name", "database"))?;
        let user = self.user.clone().ok_or_else(|| missing("user", "username"))?;
        Ok((host, database, user))
    }

    /// Takes every part the URI has.
    fn merge(&mut self, parts: UriParts) {
        self.host = parts.host.or(self.host.take());
        self.port = parts.port.or(self.port);
        self.database = parts.database.or(self.database.take());
        self.user = parts.user.or(self.user.take());
        self.password = parts.password.or(self.password.take());
        self.sslmode = parts.sslmode.or(self.sslmode);
    }
}
