use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

const RULES: &str = "bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM todos\n";

/// A temp dir holding `rules.yaml`; configs are parsed as if they were `DIR/powersync.yaml`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
        Fixture { dir }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("powersync.yaml")
    }

    fn load_env(&self, text: &str, vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::parse(text, &self.config_path(), &|name| vars.get(name).cloned())
    }

    fn load(&self, text: &str) -> Result<Loaded, ConfigError> {
        self.load_env(text, &[])
    }

    /// The error's text with the temp path replaced by `CONFIG`.
    fn error(&self, text: &str, vars: &[(&str, &str)]) -> String {
        let e = self.load_env(text, vars).unwrap_err().to_string();
        e.replace(&self.config_path().display().to_string(), "CONFIG")
    }
}

const MINIMAL: &str = "\
replication:
  connections:
    - type: postgresql
      uri: postgresql://app@db.local/app
sync_rules:
  path: rules.yaml
";

#[test]
fn minimal_config_gets_defaults() {
    let f = Fixture::new();
    let loaded = f.load(MINIMAL).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    let conn = c.replication.connection();
    assert_eq!(
        (
            conn.host.as_str(),
            conn.port,
            conn.database.as_str(),
            conn.user.as_str()
        ),
        ("db.local", 5432, "app", "app")
    );
    assert_eq!(conn.password, None);
    assert_eq!(conn.sslmode, SslMode::VerifyFull);
    assert_eq!(conn.tag, "default");
    assert_eq!(conn.publication, DEFAULT_PUBLICATION);
    assert_eq!(c.port, DEFAULT_PORT);
    assert_eq!(
        c.storage,
        StorageConfig::Sqlite {
            path: f.dir.path().join(DEFAULT_STORAGE_PATH)
        }
    );
    assert_eq!(
        c.sync_rules.source,
        SyncRulesSource::Path(f.dir.path().join("rules.yaml"))
    );
    assert_eq!(c.sync_rules.text, RULES);
    assert_eq!(c.client_auth.max_lifetime_seconds, DEFAULT_MAX_LIFETIME_SECONDS);
    assert!(c.client_auth.jwks.is_empty() && c.client_auth.jwks_uri.is_empty());
}

#[test]
fn full_example_reads_every_key() {
    let f = Fixture::new();
    let text = "\
replication:
  connections:
    - type: postgresql
      tag: main
      uri: postgresql://ignored:pw@old-host:1/olddb?sslmode=require
      hostname: pg.example.com
      port: 6543
      database: app
      username: syncgate
      password: !env PS_PG_PASSWORD
      sslmode: verify-ca
      publication_name: mypub
storage:
  type: sqlite
  path: data/buckets.sqlite
sync_rules:
  path: rules.yaml
client_auth:
  jwks_uri: https://auth.example.com/.well-known/jwks.json
  jwks:
    keys:
      - kty: oct
        kid: dev
        alg: HS256
        k: !env PS_DEV_KEY
      - {kty: RSA, kid: r1, n: abc, e: AQAB}
  supabase: true
  supabase_jwt_secret: shh
  audience: [app, 'other']
  max_lifetime_seconds: 3600
port: !env PS_PORT
";
    let loaded = f
        .load_env(
            text,
            &[
                ("PS_PG_PASSWORD", "pg-pass"),
                ("PS_DEV_KEY", "c2VjcmV0"),
                ("PS_PORT", "9090"),
            ],
        )
        .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    let conn = c.replication.connection();
    assert_eq!(conn.tag, "main");
    assert_eq!(conn.host, "pg.example.com");
    assert_eq!(conn.port, 6543);
    assert_eq!(conn.database, "app");
    assert_eq!(conn.user, "syncgate");
    assert_eq!(
        conn.password.as_ref().map(|p| p.expose().as_str()),
        Some("pg-pass")
    );
    assert_eq!(conn.sslmode, SslMode::VerifyCa);
    assert_eq!(conn.publication, "mypub");
    assert_eq!(
        c.storage,
        StorageConfig::Sqlite {
            path: f.dir.path().join("data/buckets.sqlite")
        }
    );
    let auth = &c.client_auth;
    assert_eq!(auth.jwks_uri, ["https://auth.example.com/.well-known/jwks.json"]);
    assert_eq!(auth.jwks.len(), 2);
    assert_eq!(
        (auth.jwks[0].kty.as_str(), auth.jwks[0].kid.as_deref()),
        ("oct", Some("dev"))
    );
    assert_eq!(auth.jwks[0].members["k"], "c2VjcmV0");
    assert_eq!(auth.jwks[1].members["e"], "AQAB");
    assert!(auth.supabase);
    assert_eq!(
        auth.supabase_jwt_secret.as_ref().map(|s| s.expose().as_str()),
        Some("shh")
    );
    assert_eq!(auth.audience, ["app", "other"]);
    assert_eq!(auth.max_lifetime_seconds, 3600);
    assert_eq!(c.port, 9090);
}

#[test]
fn inline_rules_and_sync_config_alias() {
    let f = Fixture::new();
    let text = format!(
        "replication:\n  connections:\n    - type: postgresql\n      uri: postgresql://u@h/d\n\
         sync_config:\n  content: |\n{}",
        RULES.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    let c = f.load(&text).unwrap().config;
    let origin = ContentOrigin {
        first_line: 7,
        indent: 4,
    };
    assert_eq!(
        c.sync_rules.source,
        SyncRulesSource::Content { origin: Some(origin) }
    );
    assert_eq!(c.sync_rules.text, RULES);
    // `SELECT` on content line 4, column 9 is at line 10, column 13 of the config file.
    let at = c.sync_rules.locate(Path::new("ps.yaml"), 4, 9);
    assert_eq!(at, "ps.yaml:10:13");
    let quoted = text.replace("content: |", "content: \"bucket_definitions: {}\"\n  x: |");
    let c = f.load(&quoted).unwrap().config;
    assert_eq!(c.sync_rules.source, SyncRulesSource::Content { origin: None });
    assert_eq!(
        c.sync_rules.locate(Path::new("ps.yaml"), 1, 2),
        "ps.yaml[sync_rules.content]:1:2"
    );
}

#[test]
fn bad_yaml_reports_position() {
    let f = Fixture::new();
    let e = f.error("port: 8080\nstorage: [a\n", &[]);
    assert!(e.starts_with("CONFIG:"), "{e}");
    assert!(e.contains("YAML syntax is invalid"), "{e}");
}

#[test]
fn wrong_types_report_position() {
    let f = Fixture::new();
    let e = f.error(&format!("{MINIMAL}port: [1]\n"), &[]);
    assert_eq!(e, "CONFIG:7:7: `port` must be a single value, not a sequence");
    let e = f.error(&format!("{MINIMAL}client_auth:\n  supabase: maybe\n"), &[]);
    assert_eq!(
        e,
        "CONFIG:8:13: `client_auth.supabase` must be true or false, not `maybe`"
    );
    let e = f.error("replication: 3\n", &[]);
    assert!(e.starts_with("CONFIG:1:14: replication must be a mapping"), "{e}");
}

#[test]
fn bad_ports() {
    let f = Fixture::new();
    for port in ["0", "65536", "http", "-1"] {
        let e = f.error(&format!("{MINIMAL}port: {port}\n"), &[]);
        assert_eq!(
            e,
            format!("CONFIG:7:7: `port` must be a port number from 1 to 65535, not `{port}`")
        );
    }
    // Quoted strings are fine, like PowerSync's port codec.
    assert_eq!(
        f.load(&format!("{MINIMAL}port: '8081'\n")).unwrap().config.port,
        8081
    );
    let e = f.error(MINIMAL, &[(env::PORT, "x")]);
    assert_eq!(
        e,
        "environment variable SYNCGATE_PORT: `x` is not a port number from 1 to 65535"
    );
    // An empty override counts as unset.
    assert_eq!(
        f.load_env(MINIMAL, &[(env::PORT, "")]).unwrap().config.port,
        DEFAULT_PORT
    );
}

#[test]
fn unknown_and_unimplemented_keys_warn() {
    let f = Fixture::new();
    let text = format!("{MINIMAL}telemetry:\n  disable_telemetry_sharing: true\nwhatever: 1\n");
    let loaded = f.load(&text).unwrap();
    let messages: Vec<String> = loaded
        .warnings
        .iter()
        .map(|w| format!("{}:{}: {}", w.line, w.column, w.message))
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with(
            "7:1: `telemetry` is a PowerSync setting that syncgate accepts but does not implement"
        )
    );
    assert!(messages[1].starts_with("9:1: unknown key `whatever` is ignored"));
    let shown = loaded.warnings[0].to_string();
    assert!(
        shown.starts_with(&format!("{}:7:1: warning: ", f.config_path().display())),
        "{shown}"
    );

    let text = MINIMAL.replace("      uri:", "      max_pool_size: 4\n      uri:");
    let loaded = f.load(&text).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0]
            .message
            .contains("`replication.connections[0].max_pool_size`")
    );

    // slot_name_prefix is implemented.
    let text = MINIMAL.replace("      uri:", "      slot_name_prefix: mine_\n      uri:");
    let loaded = f.load(&text).unwrap();
    assert!(loaded.warnings.is_empty());
    assert_eq!(loaded.config.replication.connection().slot_name_prefix, "mine_");
}

#[test]
fn missing_rules_file() {
    let f = Fixture::new();
    let e = f.error(&MINIMAL.replace("rules.yaml", "nope.yaml"), &[]);
    let expected = format!(
        "CONFIG:6:9: cannot read sync rules file {}",
        f.dir.path().join("nope.yaml").display()
    );
    assert!(e.starts_with(&expected), "{e}");
    assert!(
        e.ends_with("(`sync_rules.path` is relative to the config file)"),
        "{e}"
    );
    let e = f.error(
        "replication:\n  connections: []\n",
        &[(env::DATABASE_URL, "postgresql://u@h/d")],
    );
    assert!(e.starts_with("CONFIG:1:1: no sync rules"), "{e}");
}

#[test]
fn unsupported_storage_and_source_types() {
    let f = Fixture::new();
    let e = f.error(&format!("{MINIMAL}storage:\n  type: mongodb\n"), &[]);
    assert_eq!(
        e,
        "CONFIG:8:9: storage type `mongodb` is not supported; use `type: sqlite` (embedded) or `type: postgresql`"
    );
    let e = f.error(&MINIMAL.replace("type: postgresql", "type: mongodb"), &[]);
    assert_eq!(
        e,
        "CONFIG:3:13: syncgate replicates only from PostgreSQL: use `type: postgresql`, not `mongodb`"
    );
}

#[test]
fn two_connections_are_an_error() {
    let f = Fixture::new();
    let text = MINIMAL.replace(
        "sync_rules:",
        "    - type: postgresql\n      uri: postgresql://u@h2/d\nsync_rules:",
    );
    let e = f.error(&text, &[]);
    assert_eq!(
        e,
        "CONFIG:5:7: syncgate replicates from one database; `replication.connections` has 2 entries, keep one"
    );
}

#[test]
fn connection_errors() {
    let f = Fixture::new();
    let e = f.error(
        &MINIMAL.replace(
            "uri: postgresql://app@db.local/app",
            "hostname: h\n      database: d",
        ),
        &[],
    );
    assert!(
        e.starts_with("CONFIG:3:7: `replication.connections[0]` has no user; set `username`"),
        "{e}"
    );
    let e = f.error(&MINIMAL.replace("@db.local", "@db.local:x"), &[]);
    assert!(
        e.starts_with("CONFIG:4:12: `replication.connections[0].uri`: the URI's port is not a number"),
        "{e}"
    );
    let e = f.error(
        &MINIMAL.replace("      uri:", "      sslmode: on\n      uri:"),
        &[],
    );
    assert!(
        e.starts_with("CONFIG:4:16: `replication.connections[0].sslmode` must be one of disable"),
        "{e}"
    );
    let e = f.error("sync_rules:\n  path: rules.yaml\n", &[]);
    assert!(e.starts_with("CONFIG:1:1: no source database"), "{e}");
}

#[test]
fn env_tag_present_missing_and_typed() {
    let f = Fixture::new();
    let text = MINIMAL.replace(
        "uri: postgresql://app@db.local/app",
        "uri: !env PS_DATA_SOURCE_URI",
    );
    let c = f
        .load_env(&text, &[("PS_DATA_SOURCE_URI", "postgresql://u:p@h:1/d")])
        .unwrap()
        .config;
    assert_eq!(c.replication.connection().port, 1);
    let e = f.error(&text, &[]);
    assert_eq!(
        e,
        "CONFIG:4:17: environment variable `PS_DATA_SOURCE_URI` is not set \
         (`replication.connections[0].uri: !env PS_DATA_SOURCE_URI`); set it or change `replication.connections[0].uri`"
    );
    // PowerSync's typed form: `!env VAR::number`, `!env VAR::boolean`.
    let text =
        format!("{MINIMAL}port: !env PS_PORT::number\nclient_auth:\n  supabase: !env PS_SB::boolean\n");
    let c = f
        .load_env(&text, &[("PS_PORT", "7000"), ("PS_SB", "TRUE")])
        .unwrap()
        .config;
    assert_eq!((c.port, c.client_auth.supabase), (7000, true));
    let e = f.error(&text, &[("PS_PORT", "seven"), ("PS_SB", "true")]);
    assert_eq!(
        e,
        "CONFIG:7:12: environment variable `PS_PORT` must be a number for `!env PS_PORT::number`"
    );
    let e = f.error(&format!("{MINIMAL}port: !secret X\n"), &[]);
    assert_eq!(
        e,
        "CONFIG:7:15: unsupported tag `!secret` on `port`; only `!env VAR` is supported"
    );
}

#[test]
fn env_overrides_win_over_the_file() {
    let f = Fixture::new();
    let text = format!(
        "{}port: !env PS_PORT\nstorage:\n  path: file.sqlite\nclient_auth:\n  supabase_jwt_secret: from-file\n",
        MINIMAL.replace(
            "uri: postgresql://app@db.local/app",
            "uri: postgresql://app:filepw@db.local/app\n      sslmode: disable"
        )
    );
    let vars = [
        ("PS_PORT", "9000"),
        (env::PORT, "9100"),
        (env::DATABASE_URL, "postgresql://other@envhost:5439/envdb"),
        (env::DATABASE_PASSWORD, "envpw"),
        (env::STORAGE_PATH, "/var/lib/syncgate/b.sqlite"),
        (env::JWT_SECRET, "env-secret"),
    ];
    let c = f.load_env(&text, &vars).unwrap().config;
    assert_eq!(c.port, 9100);
    let conn = c.replication.connection();
    assert_eq!(
        (
            conn.host.as_str(),
            conn.port,
            conn.database.as_str(),
            conn.user.as_str()
        ),
        ("envhost", 5439, "envdb", "other")
    );
    assert_eq!(conn.password.as_ref().map(|p| p.expose().as_str()), Some("envpw"));
    // Parts the URL lacks keep the file's values.
    assert_eq!(conn.sslmode, SslMode::Disable);
    assert_eq!(
        c.storage,
        StorageConfig::Sqlite {
            path: PathBuf::from("/var/lib/syncgate/b.sqlite")
        }
    );
    assert_eq!(
        c.client_auth
            .supabase_jwt_secret
            .as_ref()
            .map(|s| s.expose().as_str()),
        Some("env-secret")
    );
    // With only the environment, no `replication` section is needed.
    let c = f
        .load_env(
            "sync_rules:\n  path: rules.yaml\n",
            &[(env::DATABASE_URL, "postgresql://u@h/d")],
        )
        .unwrap()
        .config;
    assert_eq!(c.replication.connection().host, "h");
    let e = f.error(
        "sync_rules:\n  path: rules.yaml\n",
        &[(env::DATABASE_URL, "postgresql://u@h")],
    );
    assert!(
        e.starts_with("environment variable SYNCGATE_DATABASE_URL: the URL has no database name"),
        "{e}"
    );
}

#[test]
fn jwks_validation() {
    let f = Fixture::new();
    let e = f.error(
        &format!("{MINIMAL}client_auth:\n  jwks:\n    keys:\n      - kty: oct\n        k: 'not base64!'\n"),
        &[],
    );
    assert_eq!(
        e,
        "CONFIG:10:9: `client_auth.jwks.keys[0].k` must be the shared secret in base64url (A-Z a-z 0-9 - _)"
    );
    let e = f.error(
        &format!("{MINIMAL}client_auth:\n  jwks:\n    keys:\n      - kid: x\n"),
        &[],
    );
    assert!(
        e.starts_with("CONFIG:10:9: `client_auth.jwks.keys[0]` needs `kty`"),
        "{e}"
    );
    let e = f.error(&format!("{MINIMAL}client_auth:\n  jwks_uri: [ftp://x]\n"), &[]);
    assert!(
        e.starts_with("CONFIG:8:13: `client_auth.jwks_uri` must be http:// or https://"),
        "{e}"
    );
}

#[test]
fn secrets_stay_out_of_debug() {
    let f = Fixture::new();
    let text = format!(
        "{}client_auth:\n  supabase_jwt_secret: jwt-secret-value\n  jwks:\n    keys:\n      - {{kty: oct, k: b2N0LXNlY3JldA}}\n",
        MINIMAL.replace("app@db.local", "app:uri-password@db.local")
    );
    let loaded = f.load(&text).unwrap();
    let debug = format!("{loaded:?}");
    for secret in ["uri-password", "jwt-secret-value", "b2N0LXNlY3JldA"] {
        assert!(!debug.contains(secret), "{secret} leaked: {debug}");
    }
    assert!(debug.contains("***"));
    let conn = loaded.config.replication.connection();
    assert!(!conn.display_safe().contains("uri-password"));
}

#[test]
fn load_reads_the_file_and_reports_missing_files() {
    let f = Fixture::new();
    std::fs::write(f.config_path(), MINIMAL).unwrap();
    let loaded = Config::load_with_env(&f.config_path(), &|_| None).unwrap();
    assert_eq!(loaded.config.file, f.config_path());
    let missing: &Path = &f.dir.path().join("none.yaml");
    let e = Config::load_with_env(missing, &|_| None).unwrap_err().to_string();
    assert!(e.contains("cannot read the config file"), "{e}");
}

#[test]
fn api_limits_use_powersync_keys_with_defaults() {
    let f = Fixture::new();
    assert_eq!(f.load(MINIMAL).unwrap().config.api, ApiSettings::default());
    let text = format!(
        "{MINIMAL}api:\n  tokens:\n    - secret\n  max_request_bytes: 4096\n  parameters:\n    max_buckets_per_connection: 50\n    \
         max_concurrent_connections: 7\n    max_parameter_query_results: 9\n    max_data_fetch_concurrency: 3\n"
    );
    let loaded = f.load(&text).unwrap();
    assert_eq!(
        loaded.config.api,
        ApiSettings {
            max_buckets_per_connection: 50,
            max_concurrent_connections: 7,
            max_parameter_query_results: 9,
            max_request_bytes: 4096,
        }
    );
    let warned: Vec<&str> = loaded.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(warned.iter().any(|m| m.contains("`api.tokens`")), "{warned:?}");
    assert!(
        warned
            .iter()
            .any(|m| m.contains("`api.parameters.max_data_fetch_concurrency`")),
        "{warned:?}"
    );
    let error = f.error(
        &format!("{MINIMAL}api:\n  parameters:\n    max_buckets_per_connection: 0\n"),
        &[],
    );
    assert!(
        error.contains("`api.parameters.max_buckets_per_connection` must be a whole number greater than 0"),
        "{error}"
    );
}

#[test]
fn decoder_defaults_to_auto_and_parses_each_choice() {
    let f = Fixture::new();
    let loaded = f.load(MINIMAL).unwrap();
    assert_eq!(
        loaded.config.replication.connection().decoder,
        DecoderChoice::Auto
    );
    for (text, choice) in [
        ("pgoutput", DecoderChoice::Pgoutput),
        ("syncgate", DecoderChoice::Syncgate),
        ("auto", DecoderChoice::Auto),
    ] {
        let config = MINIMAL.replace("      uri:", &format!("      decoder: {text}\n      uri:"));
        let loaded = f.load(&config).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.replication.connection().decoder, choice);
    }
}

#[test]
fn bad_decoder_is_an_error_at_its_position() {
    let f = Fixture::new();
    let e = f.error(
        &MINIMAL.replace("      uri:", "      decoder: wal2json\n      uri:"),
        &[],
    );
    assert!(
        e.starts_with(
            "CONFIG:4:16: `replication.connections[0].decoder` must be one of pgoutput, syncgate, auto, \
             not `wal2json`"
        ),
        "{e}"
    );
}

#[test]
fn postgres_storage_reads_the_connection_keys_and_schema() {
    let f = Fixture::new();
    let c = f
        .load(&format!(
            "{MINIMAL}storage:\n  type: postgresql\n  uri: postgresql://st%40re:pw@store.local:6543/buckets?sslmode=disable\n"
        ))
        .unwrap()
        .config;
    let StorageConfig::Postgres(storage) = &c.storage else {
        panic!("{:?}", c.storage)
    };
    let conn = &storage.connection;
    assert_eq!(
        (
            conn.host.as_str(),
            conn.port,
            conn.database.as_str(),
            conn.user.as_str()
        ),
        ("store.local", 6543, "buckets", "st@re")
    );
    assert_eq!(conn.password.as_ref().map(|p| p.expose().as_str()), Some("pw"));
    assert_eq!(conn.sslmode, SslMode::Disable);
    assert_eq!(storage.schema, crate::storage::DEFAULT_SCHEMA);
    assert_eq!(storage.poll_interval, crate::storage::DEFAULT_POLL_INTERVAL);
    // Discrete keys override the URI's parts, as for the source; the schema is configurable.
    let c = f
        .load(&format!(
            "{MINIMAL}storage:\n  type: postgresql\n  uri: postgresql://u@h/db\n  database: other\n  \
             port: 7000\n  password: pw-hidden\n  sslmode: prefer\n  schema: tenant_1\n  \
             poll_interval_ms: 250\n"
        ))
        .unwrap()
        .config;
    let StorageConfig::Postgres(storage) = &c.storage else {
        panic!("{:?}", c.storage)
    };
    assert_eq!(
        (storage.connection.database.as_str(), storage.connection.port),
        ("other", 7000)
    );
    assert_eq!(storage.connection.sslmode, SslMode::Prefer);
    assert_eq!(storage.schema, "tenant_1");
    assert_eq!(storage.poll_interval, std::time::Duration::from_millis(250));
    assert!(
        !format!("{c:?}").contains("pw-hidden"),
        "the password stays out of Debug"
    );
}

#[test]
fn postgres_storage_errors_point_at_the_key() {
    let f = Fixture::new();
    let storage = |body: &str| f.error(&format!("{MINIMAL}storage:\n{body}"), &[]);
    assert_eq!(
        storage("  type: postgresql\n  uri: mysql://x\n"),
        "CONFIG:9:8: `storage.uri`: the URI must start with postgresql:// (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
    );
    assert_eq!(
        storage("  type: postgresql\n  hostname: h\n  username: u\n"),
        "CONFIG:8:3: `storage` has no database name; set `database` or include it in `uri` \
         (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
    );
    assert_eq!(
        storage("  type: postgresql\n  uri: postgresql://u@h/d\n  sslmode: sometimes\n"),
        "CONFIG:10:12: `storage.sslmode` must be one of disable, allow, prefer, require, verify-ca, verify-full, not `sometimes`"
    );
    assert_eq!(
        storage("  type: postgresql\n  uri: postgresql://u@h/d\n  schema: Public\n"),
        "CONFIG:10:11: `storage.schema` `Public` must be lower-case letters, digits and `_` \
         (at most 63, not starting with a digit)"
    );
    assert_eq!(
        storage("  type: postgresql\n  uri: postgresql://u@h/d\n  poll_interval_ms: 0\n"),
        "CONFIG:10:21: `storage.poll_interval_ms` must be a whole number greater than 0, not `0`"
    );
    assert_eq!(
        storage("  type: postgresql\n  uri: postgresql://u@h/d\n  path: x.sqlite\n"),
        "CONFIG:10:9: `storage.path` is the SQLite file; Postgres storage takes `uri` (or host, database, ...)"
    );
    assert_eq!(
        storage("  uri: postgresql://u@h/d\n"),
        "CONFIG:8:8: `storage.uri` is a key of Postgres storage; add `type: postgresql` or remove it"
    );
}

#[test]
fn the_dashboard_is_off_by_default_and_needs_an_admin_token_when_enabled() {
    let f = Fixture::new();
    let off = f.load(MINIMAL).unwrap().config.dashboard;
    assert!(!off.enabled && off.admin_tokens.is_empty());

    let on = f
        .load(&format!(
            "{MINIMAL}dashboard:\n  enabled: true\napi:\n  tokens:\n    - first\n    - second\n"
        ))
        .unwrap();
    assert!(on.config.dashboard.enabled);
    let tokens: Vec<&str> = on
        .config
        .dashboard
        .admin_tokens
        .iter()
        .map(|t| t.expose().as_str())
        .collect();
    assert_eq!(tokens, ["first", "second"]);
    // The tokens take effect: no "has no effect" warning, and they never show in Debug output.
    assert!(on.warnings.is_empty(), "{:?}", on.warnings);
    assert!(!format!("{:?}", on.config).contains("first"));

    let e = f.error(&format!("{MINIMAL}dashboard:\n  enabled: true\n"), &[]);
    assert!(e.starts_with("CONFIG:"), "{e}");
    assert!(
        e.contains("no admin token") && e.contains("SYNCGATE_ADMIN_TOKEN"),
        "{e}"
    );

    // Environment overrides: enable without touching the file, and replace the tokens.
    let env = f
        .load_env(
            &format!("{MINIMAL}api:\n  tokens: [from-file]\n"),
            &[
                ("SYNCGATE_DASHBOARD_ENABLED", "true"),
                ("SYNCGATE_ADMIN_TOKEN", "from-env"),
            ],
        )
        .unwrap()
        .config
        .dashboard;
    assert!(env.enabled);
    assert_eq!(env.admin_tokens, [Secret::new("from-env".to_owned())]);
    let e = f.error(MINIMAL, &[("SYNCGATE_DASHBOARD_ENABLED", "yes")]);
    assert!(
        e.contains("SYNCGATE_DASHBOARD_ENABLED") && e.contains("`yes`"),
        "{e}"
    );
    let off = f
        .load_env(
            &format!("{MINIMAL}dashboard:\n  enabled: true\n"),
            &[("SYNCGATE_DASHBOARD_ENABLED", "false")],
        )
        .unwrap();
    assert!(!off.config.dashboard.enabled);
}
