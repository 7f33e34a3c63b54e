//! The repository's nginx config (deploy/nginx/syncgate.conf, what docker-compose.yml runs) with a real nginx
//! in front of two real gateway processes on one Postgres storage: an HTTP sync stream through it delivers a
//! change while the stream is open (not held in a proxy buffer), WebSocket sync through it works, and the two
//! streams land on different gateways (round robin; either serves any client).
//!
//! The config is rendered, not copied: its upstream `server` lines become the local gateways' addresses and
//! its `listen` port a free one; everything else is the file as shipped. nginx runs unprivileged (as the
//! test cluster's OS user when the test runs as root) with a temporary prefix.
//!
//! Skipped (with the reason printed) when no `nginx` binary is found (`bash scripts/setup-nginx.sh` installs
//! it), unless `SYNCGATE_REQUIRE_NGINX=1` (CI sets it where it installs nginx), which turns the skip into a
//! failure.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use syncgate_protocol::SyncLine;
use syncgate_test_support::serve::{
    ServeProcess, ServeStorage, http_status, sign_token, storage_database, tail,
};
use syncgate_test_support::shared_cluster;

use crate::browser::find_program;
use crate::replication::harness::free_port;
use crate::sync_api::{SyncStream, golden, unix_now};
use crate::websocket::{Client, request_body};

const SITE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx/syncgate.conf");
const GOLDEN_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/golden/sync-rules.yaml");
const WAIT: Duration = Duration::from_secs(60);

/// `deploy/nginx/syncgate.conf` with its upstream servers replaced by `upstreams` (local ports) and its
/// `listen` by `port`. Panics if the file no longer has the shape this relies on.
fn render_site_config(text: &str, upstreams: &[u16], port: u16) -> String {
    let open = "upstream syncgate {\n";
    let start = text.find(open).expect("the config has `upstream syncgate {`") + open.len();
    let end = start + text[start..].find("\n}").expect("the upstream block ends") + 1;
    let servers: String = upstreams
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p};\n"))
        .collect();
    let rendered = format!("{}{servers}{}", &text[..start], &text[end..]);
    let listen = "    listen 8080;\n";
    assert_eq!(rendered.matches(listen).count(), 1, "one `{}`", listen.trim());
    rendered.replacen(listen, &format!("    listen 127.0.0.1:{port};\n"), 1)
}

/// nginx in the foreground as one process (no master/worker split, so killing it leaves nothing behind),
/// its config, pid, logs and temp files under a temporary prefix.
struct Nginx {
    child: Child,
    port: u16,
    prefix: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(program: &Path, upstreams: &[u16]) -> Nginx {
        // Under /tmp and open to all: run as root, nginx runs as the cluster's unprivileged user.
        let prefix = tempfile::Builder::new()
            .prefix("syncgate-nginx-")
            .tempdir_in("/tmp")
            .expect("nginx prefix");
        std::fs::set_permissions(prefix.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let dir = prefix.path().display().to_string();
        let port = free_port();
        let site = render_site_config(
            &std::fs::read_to_string(SITE_CONFIG).expect("deploy/nginx/syncgate.conf"),
            upstreams,
            port,
        );
        std::fs::write(prefix.path().join("syncgate.conf"), site).expect("site config");
        // The main context the nginx image (or a distribution's nginx.conf) provides, with every path in
        // the prefix: Debian's compiled-in temp paths are under /var/lib/nginx, closed to other users.
        let main = format!(
            "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {dir}/access.log;\n  client_body_temp_path {dir}/client_body;\n  \
             proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  \
             scgi_temp_path {dir}/scgi;\n  include {dir}/syncgate.conf;\n}}\n"
        );
        std::fs::write(prefix.path().join("nginx.conf"), main).expect("nginx.conf");
        let mut command = match syncgate_pgcluster::server_os_user() {
            Some(user) => {
                let mut command = Command::new("setpriv");
                command
                    .args([&format!("--reuid={user}"), &format!("--regid={user}")])
                    .args(["--clear-groups", "--"])
                    .arg(program);
                command
            }
            None => Command::new(program),
        };
        let child = command
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(prefix.path().join("nginx.conf"))
            .arg("-e")
            .arg(prefix.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, port, prefix };
        let started = Instant::now();
        // Ready when it proxies a readiness probe to a gateway.
        while http_status(port, "/probes/readiness") != Some(200) {
            if let Some(status) = nginx.child.try_wait().expect("try_wait") {
                panic!("nginx ended ({status}); error log:\n{}", nginx.error_log());
            }
            assert!(
                started.elapsed() < WAIT,
                "nginx not proxying within {WAIT:?}; error log:\n{}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("nginx proxying on port {port} after {:?}", started.elapsed());
        nginx
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn error_log(&self) -> String {
        tail(
            &std::fs::read_to_string(self.prefix.path().join("error.log")).unwrap_or_default(),
            40,
        )
    }
}

/// nginx on PATH or where Debian installs it (/usr/sbin is not on every user's PATH).
fn nginx_program() -> Option<PathBuf> {
    find_program(&["nginx"]).or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
}

fn token(sub: &str) -> String {
    let now = unix_now();
    sign_token(sub, now, now + 3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_through_the_repositorys_nginx_config_streams_unbuffered_and_over_websocket() {
    let Some(nginx_program) = nginx_program() else {
        let reason = "nginx is not installed (bash scripts/setup-nginx.sh, as root)";
        assert!(
            std::env::var("SYNCGATE_REQUIRE_NGINX").as_deref() != Ok("1"),
            "SYNCGATE_REQUIRE_NGINX=1 but {reason}"
        );
        eprintln!("skipped: {reason}");
        return;
    };
    let db = shared_cluster().create_database().expect("database");
    db.psql(&golden("schema.sql")).expect("schema");
    db.psql(&golden("dataset.sql")).expect("dataset");
    let uri = db.url_without_session_options();
    // Two gateways, one config's worth of settings: a shared Postgres storage, so one replicates and both
    // serve (as in docker-compose.yml).
    let storage_db = storage_database();
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let mut gateways: Vec<ServeProcess> = dirs
        .iter()
        .map(|dir| {
            ServeProcess::setup(
                env!("CARGO_BIN_EXE_syncgate"),
                dir.path(),
                &uri,
                Path::new(GOLDEN_RULES),
            )
            .slot_prefix("sg_lb_")
            .storage(ServeStorage::postgres(&storage_db, "syncgate_storage"))
            .start()
        })
        .collect();
    for gateway in &mut gateways {
        gateway.wait_ready(WAIT);
    }
    let ports: Vec<u16> = gateways.iter().map(|g| g.port).collect();
    let nginx = Nginx::start(&nginx_program, &ports);
    let http = reqwest::Client::new();

    // HTTP streaming: the initial sync, then a change must arrive while the stream stays open.
    let mut stream = SyncStream::open(
        &http,
        &nginx.base(),
        &token("user1"),
        "{}",
        "application/x-ndjson",
    )
    .await;
    within(stream.until_complete(), "the initial sync over HTTP").await;
    let committed = Instant::now();
    db.psql(
        "UPDATE todos SET description = 'milk (2l)', completed = true \
         WHERE id = 'aaaaaaaa-0000-4000-8000-000000000001'",
    )
    .expect("update");
    // Keepalive lines come every 20 s, so waiting for the change needs its own deadline.
    let lines = within(stream.until_complete(), "the change over HTTP").await;
    eprintln!(
        "HTTP stream through nginx: the change arrived {:?} after its commit",
        committed.elapsed()
    );
    assert!(lines[0].get("checkpoint_diff").is_some(), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.to_string().contains("milk (2l)")),
        "{lines:?}"
    );

    // WebSocket (RSocket) through nginx: the upgrade passes, the initial sync and a change arrive.
    let mut client = Client::connect_to(&nginx.base(), "/sync/stream").await;
    client
        .setup(Some(&format!("Token {}", token("user1"))), 60_000)
        .await;
    client.request_stream(1, 100, &request_body()).await;
    within(
        async {
            assert!(matches!(client.next_line(1).await, SyncLine::Checkpoint(_)));
            while !matches!(client.next_line(1).await, SyncLine::CheckpointComplete(_)) {}
        },
        "the initial sync over WebSocket",
    )
    .await;
    let committed = Instant::now();
    db.psql("UPDATE todos SET description = 'oat milk' WHERE id = 'aaaaaaaa-0000-4000-8000-000000000001'")
        .expect("update");
    let data = within(
        async {
            assert!(matches!(client.next_line(1).await, SyncLine::CheckpointDiff(_)));
            let SyncLine::Data(data) = client.next_line(1).await else {
                panic!("expected data");
            };
            data
        },
        "the change over WebSocket",
    )
    .await;
    eprintln!(
        "WebSocket through nginx: the change arrived {:?} after its commit",
        committed.elapsed()
    );
    assert!(
        data.data
            .iter()
            .any(|op| op.data.as_deref().is_some_and(|d| d.contains("oat milk"))),
        "{data:?}"
    );
    // Round robin: the two streams went to different gateways, the leader and the one that only serves.
    for gateway in &mut gateways {
        gateway.assert_running();
        wait_for_connections(&http, gateway, 1).await;
    }
    drop(nginx);
}

/// `future`'s output, or a panic naming `what` after [`WAIT`].
async fn within<T>(future: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// Waits until `gateway`'s `syncgate_connections` gauge (open sync streams) is `want`.
async fn wait_for_connections(http: &reqwest::Client, gateway: &ServeProcess, want: u64) {
    let started = Instant::now();
    loop {
        let metrics = http
            .get(format!("{}/metrics", gateway.endpoint()))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let open: Option<u64> = metrics
            .lines()
            .find_map(|l| l.strip_prefix("syncgate_connections "))
            .and_then(|v| v.parse().ok());
        if open == Some(want) {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "gateway on port {} has {open:?} open streams, not {want}",
            gateway.port
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
