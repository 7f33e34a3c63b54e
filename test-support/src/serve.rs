//! The `syncgate serve` binary as its own process, for tests and benchmarks that drive it from outside
//! (the interop test, the official-client benchmark, the client's end-to-end tests): a config with an
//! HS256 key, a free port, readiness, stop and restart. The caller names the binary
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

/// The binary on a free port; killed when dropped.
pub struct ServeProcess {
    binary: PathBuf,
    child: Child,
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    rust_log: String,
}

impl ServeProcess {
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
        let binary = binary.as_ref().to_path_buf();
        let log = dir.join("serve.log");
        let child = spawn_serve(&binary, &config_path, &log, rust_log);
        ServeProcess {
            binary,
            child,
            port,
            config: config_path,
            log,
            rust_log: rust_log.to_owned(),
        }
    }

    /// Kills the process (the service goes offline; its storage stays).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again after [`ServeProcess::stop`], on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_serve(&self.binary, &self.config, &self.log, &self.rust_log);
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

fn spawn_serve(binary: &Path, config: &Path, log: &Path, rust_log: &str) -> Child {
    // Appends: a restarted process keeps the earlier log for failure messages.
    let log = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("serve log");
    Command::new(binary)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", rust_log)
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
