//! The `syncgate serve` binary as its own process, for tests and benchmarks that drive it from outside
//! (the interop test, the official-client benchmark): a config with an HS256 key, a free port, readiness.
//! Shared by path (`#[path]`), since a benchmark cannot use an integration test's modules.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The oct key's secret, base64url of `syncgate-interop-test-secret-0123456789abcdef`; tests/interop/interop.mjs
/// signs its tokens with the same secret, kid and audience.
pub const JWT_SECRET: &str = "c3luY2dhdGUtaW50ZXJvcC10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm";
pub const JWT_KID: &str = "interop";
pub const JWT_AUD: &str = "syncgate-interop";

/// The binary on a free port; killed when dropped.
pub struct ServeProcess {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl ServeProcess {
    /// Writes `dir/powersync.yaml` (source `uri`, SQLite storage in `dir`, the rules file, the test key) and
    /// starts `syncgate serve` with `RUST_LOG=rust_log`, its log in `dir/serve.log`.
    pub fn start(dir: &Path, uri: &str, rules: &Path, slot_prefix: &str, rust_log: &str) -> ServeProcess {
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
        k: {JWT_SECRET}
  audience: [{JWT_AUD}]
port: {port}
",
            rules = rules.canonicalize().expect("rules path").display(),
        );
        let config_path = dir.join("powersync.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.join("serve.log");
        let child = Command::new(env!("CARGO_BIN_EXE_syncgate"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("serve log"))
            .spawn()
            .expect("spawn syncgate serve");
        ServeProcess { child, port, log }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Waits for `child` (its stdout piped) at most `timeout`, killing it then; returns its exit status (`None`:
/// killed) and everything it wrote to stdout.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
    let started = Instant::now();
    let mut stdout = child.stdout.take().expect("stdout piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, reader.join().expect("stdout reader"))
}
