//! The `syncgate serve` binary as its own process, for tests and benchmarks that drive it from outside
//! (the interop test, the official-client benchmark, the client's end-to-end tests): a config with an
//! HS256 key, a free port, readiness, stop, kill and restart; several of them on one Postgres storage
//! ([`ServeStorage::Postgres`], [`storage_database`]) for the cluster tests. The caller names the binary
//! (`env!("CARGO_BIN_EXE_syncgate")` in the gateway's own tests), so other crates' tests can use it too.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The oct key's secret, `syncgate-interop-test-secret-0123456789abcdef`; tests/interop/interop.mjs signs
/// its tokens with the same secret, kid and audience.
pub const JWT_SECRET: &[u8] = b"syncgate-interop-test-secret-0123456789abcdef";
/// [`JWT_SECRET`] in base64url, as the config's JWK wants it.
pub const JWT_SECRET_BASE64URL: &str = "c3luY2dhdGUtaW50ZXJvcC10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm";
pub const JWT_KID: &str = "interop";
pub const JWT_AUD: &str = "syncgate-interop";

/// A token for `sub` issued at `iat`, expiring at `exp` (seconds since the epoch), signed with the test key
/// (HS256, [`JWT_KID`], audience [`JWT_AUD`]) that [`ServeProcess`]'s configuration accepts.
pub fn sign_token(sub: &str, iat: u64, exp: u64) -> String {
    let claims = serde_json::json!({"sub": sub, "aud": JWT_AUD, "iat": iat, "exp": exp});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(JWT_KID.to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .expect("sign a test token")
}

/// Where a [`ServeProcess`] keeps its buckets.
#[derive(Debug, Clone)]
pub enum ServeStorage {
    /// A SQLite file; a relative path is relative to the process's directory (where its config is).
    Sqlite(PathBuf),
    /// A schema of a Postgres database other than the source: several processes may share it (one
    /// replicates, the others serve).
    Postgres { uri: String, schema: String },
}

impl ServeStorage {
    /// A schema in `database` (a storage database on the test cluster, see [`storage_database`]).
    pub fn postgres(database: &crate::TestDatabase, schema: &str) -> ServeStorage {
        ServeStorage::Postgres {
            uri: database.url_without_session_options(),
            schema: schema.to_owned(),
        }
    }

    fn config_yaml(&self) -> String {
        match self {
            ServeStorage::Sqlite(path) => format!("  type: sqlite\n  path: {}\n", path.display()),
            ServeStorage::Postgres { uri, schema } => {
                format!("  type: postgresql\n  uri: {uri}\n  sslmode: disable\n  schema: {schema}\n")
            }
        }
    }
}

/// A fresh database on the shared test cluster for a Postgres bucket storage: `serve` refuses the source
/// database as storage, so gateways sharing a storage need one of these beside their source database.
/// Dropped (with the storage in it) when the returned value is.
pub fn storage_database() -> crate::TestDatabase {
    crate::shared_cluster()
        .create_database()
        .unwrap_or_else(|e| panic!("create a storage database on the shared cluster: {e}"))
}

/// How to start a [`ServeProcess`]: [`ServeProcess::setup`], then the options that differ from the
/// defaults, then [`ServeSetup::start`]. Several processes need a directory each (config and log live
/// there) and a shared [`ServeStorage::Postgres`].
#[derive(Debug, Clone)]
pub struct ServeSetup {
    binary: PathBuf,
    dir: PathBuf,
    source_uri: String,
    rules: PathBuf,
    slot_prefix: String,
    rust_log: String,
    storage: ServeStorage,
    role: Option<String>,
}

impl ServeSetup {
    /// The replication slot's name prefix (default `syncgate_`); slot names are cluster-wide, so tests
    /// that run at once on one cluster pick different ones. Gateways sharing a storage share it too.
    pub fn slot_prefix(mut self, prefix: &str) -> ServeSetup {
        self.slot_prefix = prefix.to_owned();
        self
    }

    /// `RUST_LOG` of the process (default `info`).
    pub fn rust_log(mut self, filter: &str) -> ServeSetup {
        self.rust_log = filter.to_owned();
        self
    }

    /// Default: `storage.sqlite` in the process's directory.
    pub fn storage(mut self, storage: ServeStorage) -> ServeSetup {
        self.storage = storage;
        self
    }

    /// Passed as `serve --role ROLE` (default: no `--role`, the binary's default).
    pub fn role(mut self, role: &str) -> ServeSetup {
        self.role = Some(role.to_owned());
        self
    }

    /// Writes `DIR/powersync.yaml` (source, storage, rules, the test key, a free port) and starts
    /// `BINARY serve`, its log in `DIR/serve.log`.
    pub fn start(self) -> ServeProcess {
        let port = free_port();
        let config = format!(
            "replication:
  connections:
    - type: postgresql
      uri: {uri}
      sslmode: disable
      slot_name_prefix: {slot_prefix}
storage:
{storage}sync_rules:
  path: {rules}
client_auth:
  jwks:
    keys:
      - kty: oct
        alg: HS256
        kid: {JWT_KID}
        k: {JWT_SECRET_BASE64URL}
  audience: [{JWT_AUD}]
port: {port}
",
            uri = self.source_uri,
            slot_prefix = self.slot_prefix,
            storage = self.storage.config_yaml(),
            rules = self.rules.canonicalize().expect("rules path").display(),
        );
        let config_path = self.dir.join("powersync.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = self.dir.join("serve.log");
        let child = spawn_serve(&self, &config_path, &log);
        ServeProcess {
            setup: self,
            child,
            port,
            config: config_path,
            log,
        }
    }
}

/// The binary on a free port; killed when dropped.
pub struct ServeProcess {
    setup: ServeSetup,
    child: Child,
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl ServeProcess {
    /// `binary serve` with source `uri` and the rules file, its config and log in `dir`; see
    /// [`ServeSetup`] for the options.
    pub fn setup(binary: impl AsRef<Path>, dir: &Path, uri: &str, rules: &Path) -> ServeSetup {
        ServeSetup {
            binary: binary.as_ref().to_path_buf(),
            dir: dir.to_path_buf(),
            source_uri: uri.to_owned(),
            rules: rules.to_path_buf(),
            slot_prefix: "syncgate_".to_owned(),
            rust_log: "info".to_owned(),
            storage: ServeStorage::Sqlite(PathBuf::from("storage.sqlite")),
            role: None,
        }
    }

    /// Writes `dir/powersync.yaml` (source `uri`, SQLite storage in `dir`, the rules file, the test key) and
    /// starts `binary serve` with `RUST_LOG=rust_log`, its log in `dir/serve.log`.
    pub fn start(
        binary: impl AsRef<Path>,
        dir: &Path,
        uri: &str,
        rules: &Path,
        slot_prefix: &str,
        rust_log: &str,
    ) -> ServeProcess {
        ServeProcess::setup(binary, dir, uri, rules)
            .slot_prefix(slot_prefix)
            .rust_log(rust_log)
            .start()
    }

    /// Kills the process with SIGKILL (no shutdown: a crash, as far as its storage, lease and slot can
    /// tell) and waits for it. Its log stays; [`ServeProcess::restart`] starts it again.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Takes the service offline; its storage stays. The same as [`ServeProcess::kill`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts it again after [`ServeProcess::stop`], on the same port, config and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_serve(&self.setup, &self.config, &self.log);
    }

    /// The running process's id (a restarted one has a new id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/probes/readiness`: its status code and JSON body (e.g. `{"ready": true, ...}`), or None while
    /// the process does not answer.
    pub fn readiness(&self) -> Option<(u16, serde_json::Value)> {
        let (status, body) = http_get(self.port, "/probes/readiness")?;
        Some((status, serde_json::from_slice(&body).ok()?))
    }

    /// The readiness JSON's `"replicating"`: whether this process holds the replication lease (None while
    /// it does not answer or says nothing about it).
    pub fn replicating(&self) -> Option<bool> {
        self.readiness()?.1.get("replicating")?.as_bool()
    }

    /// The config file it was started with (`DIR/powersync.yaml`).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_text(), lines)
    }

    /// Panics with the log when the process has ended.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("syncgate serve ended ({status}); log:\n{}", self.log_tail(80));
        }
    }

    /// Waits until `/probes/readiness` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let started = Instant::now();
        loop {
            self.assert_running();
            if http_status(self.port, "/probes/readiness") == Some(200) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "gateway not ready within {timeout:?}; log:\n{}",
                self.log_tail(80)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_serve(setup: &ServeSetup, config: &Path, log: &Path) -> Child {
    // Appends: a restarted process keeps the earlier log for failure messages.
    let log = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("serve log");
    let mut command = Command::new(&setup.binary);
    command.args(["serve", "--config"]).arg(config);
    if let Some(role) = &setup.role {
        command.args(["--role", role]);
    }
    command
        .env("RUST_LOG", &setup.rust_log)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn syncgate serve")
}

pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The status code of a plain HTTP/1.1 GET, or None if the server does not answer.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(status, _)| status)
}

/// A plain HTTP/1.1 GET on loopback: the status code and the body, or None if the server does not
/// answer in full.
pub fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..head_end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let body = &response[head_end + 4..];
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    Some((status, if chunked { dechunk(body)? } else { body.to_vec() }))
}

/// The payload of a chunked HTTP body.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut payload = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(payload);
        }
        let chunk = body.get(line_end + 2..line_end + 2 + size)?;
        payload.extend_from_slice(chunk);
        body = body.get(line_end + 2 + size + 2..)?;
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a child process left when it ended or was killed.
pub struct Finished {
    /// `None`: killed at the timeout.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout / stderr, where those were piped (else empty).
    pub stdout: String,
    pub stderr: String,
}

/// Waits for `child` at most `timeout`, killing it then, while reading its piped stdout and stderr.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Finished {
    fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    }
    let started = Instant::now();
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}
