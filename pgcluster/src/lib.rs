//! # syncgate-pgcluster
//!
//! PostgreSQL clusters, throwaway by default: `initdb` into a temporary directory, `wal_level=logical`, a free
//! port on loopback, trust authentication. Shared by the `syncgate` binary (`syncgate rules test`
//! runs rule suites against one) and the integration tests (through `syncgate-test-support`), so both
//! use one implementation; it ships in the release binary, hence a crate of its own.
//!
//! A cluster lives in its own temporary directory (`/tmp/syncgate-pg-…`): data directory, Unix
//! socket and server log. `initdb` and `postgres` refuse to run as root, so when the process runs as
//! root the cluster runs as the unprivileged OS user [`CLUSTER_OS_USER`], created on first use.
//!
//! **Cleanup.** The server is started by a small watchdog shell (see [`WATCHDOG_SCRIPT`]) whose
//! stdin is a pipe held by this process. When the pipe closes — the [`PgCluster`] is dropped, or
//! the process exits or is killed — the shell stops the server (immediate shutdown) and deletes the
//! directory.
//!
//! **Persistent mode.** [`PgCluster::open_persistent`] keeps a cluster in a directory of the
//! caller's choosing (`syncgate dev`'s project folder): created on first use, reopened later on a new
//! free port, stopped with a fast shutdown, data kept.
//!
//! Binaries come from `$SYNCGATE_PG_BIN`, else `$PG_BIN`, else /usr/lib/postgresql/15/bin.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Session settings the replication connection sets explicitly (SYNC_RULES.md §8): pgoutput sends
/// values as text formatted by the walsender session, and the value mapping parses exactly these
/// forms. ISO dates, `postgres` intervals, UTC offsets (`+00`), shortest-exact floats.
///
/// The URLs handed out by this harness include them (`options=`), and the [`psql`] helpers set
/// them through `PGOPTIONS`. The *server* defaults are deliberately different (see
/// [`CLUSTER_SETTINGS`]), so a connection that forgets them produces text the tests notice.
///
/// [`psql`]: PgCluster::psql
pub const REPLICATION_SESSION_OPTIONS: &str =
    "-c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3";

/// The cluster's superuser (trust authentication, no password).
pub const SUPERUSER: &str = "postgres";

/// The OS user that owns and runs clusters when the process runs as root.
pub const CLUSTER_OS_USER: &str = "syncgate-test";

const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const HOST: &str = "127.0.0.1";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts to find a free port: another process can take the probed port before the server binds it.
const START_ATTEMPTS: usize = 5;

/// Appended to `postgresql.conf`. `unix_socket_directories` is added separately (the data dir,
/// never the system-wide /var/run/postgresql, which an unprivileged user cannot write).
const CLUSTER_SETTINGS: &str = "
# --- syncgate throwaway cluster (pgcluster/src/lib.rs) ---
# TCP on loopback only; the port is given on the command line.
listen_addresses = '127.0.0.1'
# Parallel tests each hold connections, walsenders and slots: well above the defaults of 100/10/10.
max_connections = 200
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
# Walsenders of killed test clients go away after 5 s instead of 60 s and free their slots.
wal_sender_timeout = '5s'
# Test speed: durability is worthless for a throwaway cluster (data is lost on an OS crash only).
fsync = off
full_page_writes = off
# synchronous_commit stays on: logical decoding (walsender and pg_logical_slot_*_changes) only
# reads flushed WAL, so with it off a just-committed change could arrive up to ~0.6 s late. With
# fsync off, the flush at commit is a plain write() anyway.
# Server defaults unlike the replication session settings (REPLICATION_SESSION_OPTIONS), so that
# a connection that does not set them gets different text and the tests fail loudly.
timezone = 'Asia/Kathmandu'
datestyle = 'SQL, DMY'
intervalstyle = 'sql_standard'
";

const PG_HBA: &str = "\
# syncgate test cluster: trust on loopback and the socket, including replication connections.
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
";

/// [`ClusterOptions::password_auth`]: the superuser keeps trust (the harness's psql), everyone else
/// needs a password over TCP.
const PG_HBA_PASSWORD: &str = "\
local   all          all                     trust
local   replication  all                     trust
host    all          postgres  127.0.0.1/32  trust
host    replication  postgres  127.0.0.1/32  trust
host    all          all       127.0.0.1/32  scram-sha-256
host    replication  all       127.0.0.1/32  scram-sha-256
";

/// How [`PgCluster::start_with`] sets a cluster up beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// postgresql.conf lines appended last, e.g. `wal_level = replica`.
    pub extra_settings: String,
    /// Require passwords (scram-sha-256) over TCP for every role except the superuser.
    pub password_auth: bool,
}

/// Starts the server, prints its pid, then blocks reading stdin. EOF (the harness dropped the
/// cluster or its process ended) → shutdown with `$PG_STOP_SIGNAL` (QUIT: immediate for throwaway
/// clusters; INT: fast, for persistent ones), wait, and delete the cluster dir if `$PG_REMOVE` is 1.
/// A line `restart` stops the server with a fast shutdown, starts it again and prints the new pid.
const WATCHDOG_SCRIPT: &str = r#"
start() {
  "$PG_BIN/postgres" -D "$PG_DATA" -p "$PG_PORT" </dev/null >>"$PG_LOG" 2>&1 &
  pg=$!
  echo "$pg"
}
start
while read -r line; do
  if [ "$line" = restart ]; then
    kill -INT "$pg" 2>/dev/null
    wait "$pg"
    start
  fi
done
kill -"$PG_STOP_SIGNAL" "$pg" 2>/dev/null
wait "$pg"
if [ "$PG_REMOVE" = 1 ]; then rm -rf "$PG_ROOT"; fi
"#;

/// Appended where the server has `output_plugin_libraries` (see [`has_output_plugin_allow_list`]).
pub const OUTPUT_PLUGIN_LIBRARIES: &str = "output_plugin_libraries = 'pgoutput, test_decoding, syncgate'\n";

/// Whether the server at `bin_dir` has the `output_plugin_libraries` setting (an allow-list of output
/// plugins in recent Debian minors), read from `postgres --describe-config` once per binary directory.
pub fn has_output_plugin_allow_list(bin_dir: &Path) -> bool {
    static KNOWN: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, has)) = known.iter().find(|(dir, _)| dir == bin_dir) {
        return *has;
    }
    let has = Command::new(bin_dir.join("postgres"))
        .arg("--describe-config")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.starts_with("output_plugin_libraries\t"))
        });
    known.push((bin_dir.to_owned(), has));
    has
}

/// postgresql.conf lines of a [persistent](PgCluster::open_persistent) cluster: a developer's data,
/// so durability stays on and the server defaults are the usual ones.
const PERSISTENT_SETTINGS: &str = "
# --- syncgate persistent development cluster (pgcluster/src/lib.rs) ---
# TCP on loopback only; the port is given on the command line (a free one per start).
listen_addresses = '127.0.0.1'
wal_level = logical
";

/// Errors starting or using a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL 15 binaries (initdb, postgres) not found in {0}: install the Debian package \
         postgresql-15 (apt-get install postgresql-15), or set SYNCGATE_PG_BIN (or PG_BIN) to the bin directory"
    )]
    MissingBinaries(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("could not create the OS user {user}: {detail}")]
    User { user: String, detail: String },
    #[error("PostgreSQL did not start: {reason}\n--- server log (last lines) ---\n{log}")]
    Start {
        reason: String,
        log: String,
        port_conflict: bool,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// A running throwaway cluster. Dropping it stops the server and deletes its directory.
pub struct PgCluster {
    bin_dir: PathBuf,
    root: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    watchdog: Child,
    /// Closing this pipe tells the watchdog to stop the server and clean up.
    watchdog_stdin: Option<ChildStdin>,
    /// Where the watchdog prints the server's pid after a restart.
    watchdog_stdout: Mutex<Option<BufReader<ChildStdout>>>,
    next_database: AtomicU64,
    /// Persistent clusters keep their directory; see [`PgCluster::open_persistent`].
    persistent: bool,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("port", &self.port)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The PostgreSQL binaries' directory, checked to hold `postgres` and `initdb`, and the OS user (uid, gid)
/// the cluster must run as: [`CLUSTER_OS_USER`] when we are root (PostgreSQL refuses to run as root).
fn binaries_and_owner() -> Result<(PathBuf, Option<(u32, u32)>), ClusterError> {
    let bin_dir = pg_bin_dir();
    if !bin_dir.join("postgres").is_file() || !bin_dir.join("initdb").is_file() {
        return Err(ClusterError::MissingBinaries(bin_dir));
    }
    let run_as = if rustix::process::geteuid().is_root() {
        Some(ensure_os_user(CLUSTER_OS_USER)?)
    } else {
        None
    };
    Ok((bin_dir, run_as))
}

impl PgCluster {
    /// Initialises and starts a new cluster (PostgreSQL binaries from `$SYNCGATE_PG_BIN`, default
    /// /usr/lib/postgresql/15/bin) and waits until it accepts connections.
    pub fn start() -> Result<PgCluster, ClusterError> {
        Self::start_with(&ClusterOptions::default())
    }

    /// Like [`start`](Self::start), with settings appended after the harness's own (so they win) and
    /// optionally password authentication for every role but the superuser.
    pub fn start_with(options: &ClusterOptions) -> Result<PgCluster, ClusterError> {
        let (bin_dir, run_as) = binaries_and_owner()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(&bin_dir, run_as, options) {
                Err(ClusterError::Start {
                    port_conflict: true, ..
                }) if attempt < START_ATTEMPTS => continue,
                result => return result,
            }
        }
    }

    fn try_start(
        bin_dir: &Path,
        run_as: Option<(u32, u32)>,
        options: &ClusterOptions,
    ) -> Result<PgCluster, ClusterError> {
        let root = create_cluster_dir(run_as)?;
        let data_dir = root.join("data");
        if let Err(e) = init_data_dir(bin_dir, &root, &data_dir, run_as, options) {
            let _ = fs::remove_dir_all(&root);
            return Err(e);
        }
        let launched = free_port().and_then(|port| Self::launch(bin_dir, run_as, root.clone(), port, false));
        if launched.is_err() && root.exists() {
            // The watchdog removes the directory once it runs; before that, it is ours to remove.
            let _ = fs::remove_dir_all(&root);
        }
        launched
    }

    /// Opens the persistent cluster under `preferred_root` (`data/` and `server.log` inside it),
    /// creating it with `initdb` on first use, and starts it on a free port. Unlike [`start`](Self::start)
    /// the directory outlives the cluster: dropping it stops the server with a fast shutdown and
    /// keeps the data, so the next call finds it again.
    ///
    /// Run as root, the cluster belongs to [`CLUSTER_OS_USER`]; when that user cannot reach
    /// `preferred_root` (a parent directory closed to others, such as /root), the cluster lives in
    /// `/var/lib/syncgate-dev/<hash of preferred_root>/` instead: [`root`](Self::root) says where.
    pub fn open_persistent(preferred_root: &Path) -> Result<PersistentCluster, ClusterError> {
        let (bin_dir, run_as) = binaries_and_owner()?;
        let root = persistent_root(preferred_root, run_as)?;
        let data_dir = root.join("data");
        let created = !data_dir.join("PG_VERSION").is_file();
        if created {
            if data_dir.exists() {
                // What a previous initdb left when it failed half-way: initdb needs an empty directory.
                fs::remove_dir_all(&data_dir)
                    .map_err(io_error(format!("removing {}", data_dir.display())))?;
            }
            init_persistent_data_dir(&bin_dir, &root, &data_dir, run_as)?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match free_port().and_then(|port| Self::launch(&bin_dir, run_as, root.clone(), port, true)) {
                Err(ClusterError::Start {
                    port_conflict: true, ..
                }) if attempt < START_ATTEMPTS => continue,
                Ok(cluster) => return Ok(PersistentCluster { cluster, created }),
                Err(error) => return Err(error),
            }
        }
    }

    /// Starts the server of an initialised data directory under a watchdog and waits until it is ready.
    fn launch(
        bin_dir: &Path,
        run_as: Option<(u32, u32)>,
        root: PathBuf,
        port: u16,
        persistent: bool,
    ) -> Result<PgCluster, ClusterError> {
        let data_dir = root.join("data");
        let log_file = root.join("server.log");
        let mut command = as_user(run_as, "sh");
        command
            .args(["-c", WATCHDOG_SCRIPT])
            .env("PG_BIN", bin_dir)
            .env("PG_DATA", &data_dir)
            .env("PG_ROOT", &root)
            .env("PG_LOG", &log_file)
            .env("PG_PORT", port.to_string())
            .env("PG_STOP_SIGNAL", if persistent { "INT" } else { "QUIT" })
            .env("PG_REMOVE", if persistent { "0" } else { "1" })
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if persistent {
            // A group of its own: Ctrl-C in a terminal signals the whole foreground group, and the
            // caller (`syncgate dev`) must stop its gateway before Postgres, not have Postgres stop under it.
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let mut watchdog = command
            .spawn()
            .map_err(io_error("spawning the server watchdog"))?;
        let watchdog_stdin = watchdog.stdin.take();
        let mut watchdog_stdout = watchdog.stdout.take().map(BufReader::new);
        let postmaster_pid = watchdog_stdout.as_mut().and_then(read_pid);
        // From here on, dropping `cluster` stops the server (and cleans up a throwaway one).
        let cluster = PgCluster {
            bin_dir: bin_dir.to_owned(),
            root,
            data_dir,
            log_file,
            port,
            watchdog,
            watchdog_stdin,
            watchdog_stdout: Mutex::new(watchdog_stdout),
            next_database: AtomicU64::new(1),
            persistent,
        };
        let Some(postmaster_pid) = postmaster_pid else {
            return Err(cluster.start_error("the watchdog did not report the server's pid".into(), false));
        };
        cluster.wait_until_ready(postmaster_pid)?;
        Ok(cluster)
    }

    /// The cluster's directory: `data/` (the data directory) and `server.log`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the directory outlives this value ([`open_persistent`](Self::open_persistent)).
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// The server log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Stops the server and waits for it (and its watchdog) to exit: a fast shutdown for a persistent
    /// cluster, which keeps its data; an immediate one for a throwaway cluster, which is removed.
    pub fn stop(self) {
        drop(self);
    }

    fn wait_until_ready(&self, postmaster_pid: u32) -> Result<(), ClusterError> {
        let started = Instant::now();
        loop {
            if !process_alive(postmaster_pid) {
                let log = self.log_tail(40);
                let conflict = log.contains("could not bind") || log.contains("Address already in use");
                return Err(self.start_error(format!("the server exited (port {})", self.port), conflict));
            }
            let ready = Command::new(self.bin_dir.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    HOST,
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    SUPERUSER,
                    "-d",
                    "postgres",
                    "-t",
                    "2",
                ])
                .stdin(Stdio::null())
                .status()
                .map_err(io_error("running pg_isready"))?;
            if ready.success() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(self.start_error(
                    format!("not accepting connections after {READY_TIMEOUT:?}"),
                    false,
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_error(&self, reason: String, port_conflict: bool) -> ClusterError {
        ClusterError::Start {
            reason,
            log: self.log_tail(40),
            port_conflict,
        }
    }

    /// Restarts the server (fast shutdown: sessions are terminated, as in a real restart) and waits
    /// until it accepts connections again. Data and port stay the same.
    pub fn restart(&self) -> Result<(), ClusterError> {
        let mut stdin = self.watchdog_stdin.as_ref().ok_or_else(|| ClusterError::Io {
            context: "restarting the server".into(),
            source: std::io::Error::other("the watchdog is gone"),
        })?;
        stdin
            .write_all(b"restart\n")
            .and_then(|()| stdin.flush())
            .map_err(io_error("asking the watchdog to restart the server"))?;
        let pid = self
            .watchdog_stdout
            .lock()
            .map_err(|_| ClusterError::Io {
                context: "restarting the server".into(),
                source: std::io::Error::other("a previous restart panicked"),
            })?
            .as_mut()
            .and_then(read_pid);
        let Some(pid) = pid else {
            return Err(self.start_error(
                "the watchdog did not report the restarted server's pid".into(),
                false,
            ));
        };
        self.wait_until_ready(pid)
    }

    /// The directory of the PostgreSQL binaries this cluster runs.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        HOST
    }

    /// The superuser name (trust authentication).
    pub fn superuser(&self) -> &'static str {
        SUPERUSER
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB?options=…` with [`REPLICATION_SESSION_OPTIONS`].
    pub fn connection_string(&self, database: &str) -> String {
        database_url(self.port, database, None)
    }

    /// The last `lines` lines of the server log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log_file).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Creates a database with a name unique in this cluster.
    pub fn create_database(&self) -> Result<ScratchDatabase, ClusterError> {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(ScratchDatabase {
            name,
            port: self.port,
            psql: self.bin_dir.join("psql"),
        })
    }

    /// Runs SQL with psql as the superuser (session settings as [`REPLICATION_SESSION_OPTIONS`]);
    /// returns the unaligned, tuples-only output. Statements run one by one in autocommit mode,
    /// so `CREATE DATABASE` and the like work.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        run_psql(&self.bin_dir.join("psql"), self.port, database, sql)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // EOF on the watchdog's stdin: it stops the server (and removes a throwaway directory).
        drop(self.watchdog_stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// A cluster from [`PgCluster::open_persistent`].
#[derive(Debug)]
pub struct PersistentCluster {
    pub cluster: PgCluster,
    /// Whether this call ran `initdb` (an empty cluster) rather than reopening existing data.
    pub created: bool,
}

/// The OS user clusters started by this process run as, when not the process's own (run as root).
pub fn server_os_user() -> Option<&'static str> {
    rustix::process::geteuid().is_root().then_some(CLUSTER_OS_USER)
}

/// `$SYNCGATE_PG_BIN`, else `$PG_BIN`, else /usr/lib/postgresql/15/bin.
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("SYNCGATE_PG_BIN")
        .or_else(|| std::env::var_os("PG_BIN"))
        .map_or_else(|| PathBuf::from(DEFAULT_PG_BIN), PathBuf::from)
}

/// Where a persistent cluster asked for at `preferred` lives: `preferred` itself unless the process
/// is root and [`CLUSTER_OS_USER`] cannot reach it (see [`PgCluster::open_persistent`]). The
/// directory exists and belongs to the user that runs the server when this returns.
fn persistent_root(preferred: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf, ClusterError> {
    let create = |dir: &Path| -> Result<(), ClusterError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(format!("creating {}", dir.display())))?;
        if let Some((uid, gid)) = run_as {
            chown(dir, Some(uid), Some(gid)).map_err(io_error(format!("chown {}", dir.display())))?;
        }
        Ok(())
    };
    create(preferred)?;
    let Some(run_as) = run_as else {
        return Ok(preferred.to_owned());
    };
    let reachable = as_user(Some(run_as), "test")
        .arg("-w")
        .arg(preferred)
        .stdin(Stdio::null())
        .status()
        .map_err(io_error("checking the cluster directory's permissions"))?
        .success();
    if reachable {
        return Ok(preferred.to_owned());
    }
    let canonical = preferred.canonicalize().unwrap_or_else(|_| preferred.to_owned());
    // FNV-1a: stable across runs and Rust versions (std's hasher is not), so the next run finds it.
    let hash = canonical
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    let fallback = PathBuf::from(format!("/var/lib/syncgate-dev/{hash:016x}"));
    // Only the leaf belongs to the server's user; /var/lib/syncgate-dev stays root's but traversable.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create("/var/lib/syncgate-dev")
        .map_err(io_error("creating /var/lib/syncgate-dev"))?;
    create(&fallback)?;
    // The project folder only says where the cluster went; the server never uses it.
    let _ = fs::remove_dir(preferred);
    Ok(fallback)
}

/// Creates a cluster in `data_dir` with `initdb` (superuser [`SUPERUSER`], trust authentication, UTF-8,
/// C locale) plus `extra_args`.
fn run_initdb(
    bin_dir: &Path,
    root: &Path,
    data_dir: &Path,
    run_as: Option<(u32, u32)>,
    extra_args: &[&str],
) -> Result<(), ClusterError> {
    let output = as_user(run_as, &bin_dir.join("initdb").to_string_lossy())
        .arg("-D")
        .arg(data_dir)
        .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C"])
        .args(extra_args)
        .arg("--no-instructions")
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(io_error("running initdb"))?;
    check_output("initdb", output)?;
    Ok(())
}

fn init_persistent_data_dir(
    bin_dir: &Path,
    root: &Path,
    data_dir: &Path,
    run_as: Option<(u32, u32)>,
) -> Result<(), ClusterError> {
    run_initdb(bin_dir, root, data_dir, run_as, &[])?;
    let conf = data_dir.join("postgresql.conf");
    // No Unix socket: every client connects over TCP, and a deep project path would exceed the
    // socket path limit (107 bytes).
    let mut settings = format!("{PERSISTENT_SETTINGS}unix_socket_directories = ''\n");
    if has_output_plugin_allow_list(bin_dir) {
        // So the gateway's `decoder: auto` can pick syncgate's plugin where pg-ext is installed.
        settings.push_str(OUTPUT_PLUGIN_LIBRARIES);
    }
    fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(settings.as_bytes()))
        .map_err(io_error(format!("writing {}", conf.display())))?;
    let hba = data_dir.join("pg_hba.conf");
    fs::write(&hba, PG_HBA).map_err(io_error(format!("writing {}", hba.display())))
}

/// A database in a throwaway cluster. Dropping it drops the database (with its replication slots),
/// best effort.
#[derive(Debug)]
pub struct ScratchDatabase {
    name: String,
    port: u16,
    psql: PathBuf,
}

impl ScratchDatabase {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        HOST
    }

    pub fn user(&self) -> &'static str {
        SUPERUSER
    }

    /// `postgres://postgres@127.0.0.1:PORT/NAME?options=…` with [`REPLICATION_SESSION_OPTIONS`].
    pub fn url(&self) -> String {
        database_url(self.port, &self.name, None)
    }

    /// Like [`url`](Self::url), plus `replication=database` (a logical replication connection).
    pub fn replication_url(&self) -> String {
        database_url(self.port, &self.name, Some("database"))
    }

    /// A URL *without* the session settings: the connection sees the server defaults.
    pub fn url_without_session_options(&self) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{}", self.port, self.name)
    }

    /// Connects with tokio-postgres (using [`url`](Self::url)); the connection task is spawned on
    /// the current tokio runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            // Errors surface on the client's next call; nothing to do with them here.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs SQL in this database with psql; see [`PgCluster::psql`].
    pub fn psql(&self, sql: &str) -> Result<String, ClusterError> {
        run_psql(&self.psql, self.port, &self.name, sql)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Slots block DROP DATABASE and count against max_replication_slots: end their walsenders
        // (they may take a moment to release the slot) and drop them first.
        let name = self.name.replace('\'', "''");
        let sql = format!(
            "DO $$
             DECLARE tries int := 0; slot record;
             BEGIN
               LOOP
                 PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = '{name}' AND pid <> pg_backend_pid();
                 BEGIN
                   FOR slot IN SELECT slot_name FROM pg_replication_slots WHERE database = '{name}' LOOP
                     PERFORM pg_drop_replication_slot(slot.slot_name);
                   END LOOP;
                   EXIT;
                 EXCEPTION WHEN object_in_use THEN
                   tries := tries + 1;
                   IF tries > 200 THEN RAISE; END IF;
                   PERFORM pg_sleep(0.05);
                 END;
               END LOOP;
             END $$;
             DROP DATABASE IF EXISTS \"{}\" WITH (FORCE);",
            self.name.replace('"', "\"\"")
        );
        let _ = run_psql(&self.psql, self.port, "postgres", &sql);
    }
}

fn run_psql(psql: &Path, port: u16, database: &str, sql: &str) -> Result<String, ClusterError> {
    let mut child = Command::new(psql)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            HOST,
            "-p",
            &port.to_string(),
        ])
        .args(["-U", SUPERUSER, "-d", database, "-f", "-"])
        .env("PGOPTIONS", REPLICATION_SESSION_OPTIONS)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error("running psql"))?;
    // Written from a thread: psql may fill its stdout pipe before it has read all of the SQL.
    let writer = child.stdin.take().map(|mut stdin| {
        let sql = sql.to_owned();
        std::thread::spawn(move || stdin.write_all(sql.as_bytes()))
    });
    let output = child.wait_with_output().map_err(io_error("running psql"))?;
    if let Some(writer) = writer {
        // A write error means psql exited early: its output explains why.
        let _ = writer.join();
    }
    check_output(&format!("psql -d {database}"), output)
}

fn check_output(command: &str, output: Output) -> Result<String, ClusterError> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    Err(ClusterError::Command {
        command: command.to_owned(),
        status: output.status.to_string(),
        output: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
    })
}

fn database_url(port: u16, database: &str, replication: Option<&str>) -> String {
    let mut url = format!(
        "postgres://{SUPERUSER}@{HOST}:{port}/{}?",
        percent_encode(database)
    );
    if let Some(mode) = replication {
        let _ = write!(url, "replication={mode}&");
    }
    let _ = write!(url, "options={}", percent_encode(REPLICATION_SESSION_OPTIONS));
    url
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A command run as `run_as` (uid, gid) via setpriv when set, directly otherwise.
fn as_user(run_as: Option<(u32, u32)>, program: &str) -> Command {
    match run_as {
        Some((uid, gid)) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--clear-groups", "--", program]);
            command
        }
        None => Command::new(program),
    }
}

/// A fresh directory for one cluster, owned by the user that will run it.
fn create_cluster_dir(run_as: Option<(u32, u32)>) -> Result<PathBuf, ClusterError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // As root, TMPDIR might point somewhere the unprivileged user cannot reach.
    let base = if run_as.is_some() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = base.join(format!("syncgate-pg-{}-{n}-{nanos:x}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => {
                if let Some((uid, gid)) = run_as {
                    chown(&root, Some(uid), Some(gid))
                        .map_err(io_error(format!("chown {}", root.display())))?;
                }
                return Ok(root);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(format!("creating {}", root.display()))(e)),
        }
    }
    Err(ClusterError::Io {
        context: format!("creating a cluster directory in {}", base.display()),
        source: std::io::ErrorKind::AlreadyExists.into(),
    })
}

fn init_data_dir(
    bin_dir: &Path,
    root: &Path,
    data_dir: &Path,
    run_as: Option<(u32, u32)>,
    options: &ClusterOptions,
) -> Result<(), ClusterError> {
    // No fsync of the new files: the cluster is thrown away anyway.
    run_initdb(bin_dir, root, data_dir, run_as, &["--no-sync"])?;

    let conf = data_dir.join("postgresql.conf");
    let mut settings = String::from(CLUSTER_SETTINGS);
    let _ = writeln!(settings, "unix_socket_directories = '{}'", data_dir.display());
    if has_output_plugin_allow_list(bin_dir) {
        // Debian's 15.20 refuses slots with plugins not listed here; the gateway's tests use syncgate's
        // (pg-ext/) when it is installed. Set only where the setting exists: older servers refuse to
        // start with an unknown name in postgresql.conf. `extra_settings` may override it.
        settings.push_str(OUTPUT_PLUGIN_LIBRARIES);
    }
    settings.push_str(&options.extra_settings);
    settings.push('\n');
    fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(settings.as_bytes()))
        .map_err(io_error(format!("writing {}", conf.display())))?;
    // Truncating the existing file keeps its owner (the server's user) and mode.
    let hba = data_dir.join("pg_hba.conf");
    let hba_text = if options.password_auth {
        PG_HBA_PASSWORD
    } else {
        PG_HBA
    };
    fs::write(&hba, hba_text).map_err(io_error(format!("writing {}", hba.display())))
}

/// A port that was free a moment ago (the server may still lose a race for it: retried).
fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((HOST, 0)).map_err(io_error("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("finding a free port"))?
        .port();
    Ok(port)
}

fn read_pid(stdout: &mut BufReader<ChildStdout>) -> Option<u32> {
    let mut line = String::new();
    stdout.read_line(&mut line).ok()?;
    line.trim().parse::<u32>().ok()
}

/// Whether a process exists and is not a zombie (the watchdog reaps the server only at the end).
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// (uid, gid) of an OS user, creating it (as a system user without home) if needed. Parallel
/// test processes may race: "already exists" and a locked passwd file are retried.
fn ensure_os_user(user: &str) -> Result<(u32, u32), ClusterError> {
    let mut last_error = String::new();
    for _ in 0..50 {
        if let Some(ids) = lookup_os_user(user) {
            return Ok(ids);
        }
        let output = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ClusterError::User {
                user: user.to_owned(),
                detail: format!("running useradd: {e}"),
            })?;
        match output.status.code() {
            Some(0) => {}
            // 9: the user appeared meanwhile; 10: passwd file locked by a concurrent useradd.
            Some(9 | 10) => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                return Err(ClusterError::User {
                    user: user.to_owned(),
                    detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                });
            }
        }
        last_error = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    }
    Err(ClusterError::User {
        user: user.to_owned(),
        detail: format!("not found after useradd: {last_error}"),
    })
}

fn lookup_os_user(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_session_options() {
        let url = database_url(5432, "db", None);
        assert_eq!(
            url,
            "postgres://postgres@127.0.0.1:5432/db?options=-c%20DateStyle%3DISO%20-c%20IntervalStyle%3Dpostgres\
             %20-c%20TimeZone%3DUTC%20-c%20extra_float_digits%3D3"
        );
        assert!(database_url(1, "db", Some("database")).contains("?replication=database&options=-c%20"));
        // tokio-postgres reads the options back as they were.
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(config.get_options(), Some(REPLICATION_SESSION_OPTIONS));
        assert_eq!(config.get_dbname(), Some("db"));
    }

    #[test]
    fn passwd_lookup() {
        assert_eq!(lookup_os_user("root"), Some((0, 0)));
        assert_eq!(lookup_os_user("no-such-user-here"), None);
    }

    #[test]
    fn zombie_detection() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }
}
