//! The real `syncgate serve` binary for the client's end-to-end tests: a config with the test HS256 key
//! (the key, kid and audience of gateway/tests/support/serve_process.rs), a free port, readiness, and
//! tokens signed with that key.
//!
//! gateway/tests/support/serve_process.rs cannot be included as is: it names the binary with
//! `CARGO_BIN_EXE_syncgate`, which cargo sets only for the gateway package's own tests.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// base64url of `SECRET`, as the gateway config wants it.
const JWT_SECRET_BASE64URL: &str = "c3luY2dhdGUtaW50ZXJvcC10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm";
const JWT_SECRET: &[u8] = b"syncgate-interop-test-secret-0123456789abcdef";
const JWT_KID: &str = "interop";
const JWT_AUD: &str = "syncgate-interop";

/// The `syncgate` binary of this workspace, next to the test binary's directory (`target/<profile>/`).
/// Built (a no-op when up to date) before use: a lone `cargo test -p syncgate-client` does not build
/// it, and an old one would test old gateway code.
fn syncgate_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test binary lives in target/<profile>/deps");
            let mut args = vec!["build", "-p", "syncgate", "--bin", "syncgate"];
            if profile_dir.ends_with("release") {
                args.push("--release");
            }
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let status = Command::new(cargo)
                .args(&args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the syncgate binary failed");
            profile_dir.join("syncgate")
        })
        .clone()
}

/// `syncgate serve` on a free port; killed when dropped.
pub struct GatewayProcess {
    child: Child,
    pub port: u16,
    log: PathBuf,
    config: PathBuf,
}

impl GatewayProcess {
    pub fn start(dir: &Path, uri: &str, rules: &Path, slot_prefix: &str) -> GatewayProcess {
        let port = free_port();
        let config = format!(
            "replication:
  connections:
    - type: postgresql
      uri: {uri}
      sslmode: disable
      slot_name_prefix: {slot_prefix}
storage:
  type: sqlite
  path: storage.sqlite
sync_rules:
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
            rules = rules.canonicalize().expect("rules path").display(),
        );
        let config_path = dir.join("powersync.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.join("serve.log");
        let child = spawn_serve(&config_path, &log);
        GatewayProcess {
            child,
            port,
            log,
            config: config_path,
        }
    }

    /// Kills the process (the service goes offline; its storage stays).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again after [`GatewayProcess::stop`], on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_serve(&self.config, &self.log);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until `/probes/readiness` answers 200; panics with the log if the process ends or time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("syncgate serve ended ({status}); log:\n{}", self.log_tail(80));
            }
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

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(config: &Path, log: &Path) -> Child {
    // Appends: a restarted process keeps the earlier log for failure messages.
    let log = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("serve log");
    Command::new(syncgate_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn syncgate serve")
}

/// A token for `sub` valid for an hour, signed with the test key.
pub fn token(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({"sub": sub, "aud": JWT_AUD, "iat": now, "exp": now + 3600});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(JWT_KID.to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .expect("sign")
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The status code of a plain HTTP/1.1 GET, or None if the server does not answer.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
