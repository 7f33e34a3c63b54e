//! Sync API counters and the Prometheus text exposition of `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::replicator::MetricsSnapshot;

/// Upper bounds (seconds) of the checkpoint-latency histogram buckets.
const LATENCY_BOUNDS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Default)]
pub struct ApiMetrics {
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    lines_sent: AtomicU64,
    bytes_sent: AtomicU64,
    ops_sent: AtomicU64,
    sessions_failed: AtomicU64,
    auth_failures: AtomicU64,
    /// Cumulative histogram counts per bound, then the +Inf count.
    latency_buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_micros_sum: AtomicU64,
}

/// Decrements the open-connection gauge when the connection ends, however it ends.
#[derive(Debug)]
pub struct ConnectionGuard(std::sync::Arc<ApiMetrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ApiMetrics {
    pub fn connection_opened(self: &std::sync::Arc<Self>) -> ConnectionGuard {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(std::sync::Arc::clone(self))
    }

    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    pub fn line_sent(&self) {
        self.lines_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes_sent(&self, bytes: usize) {
        self.bytes_sent
            .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn ops_sent(&self, ops: usize) {
        self.ops_sent
            .fetch_add(u64::try_from(ops).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn session_failed(&self) {
        self.sessions_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Time from noticing a new checkpoint to its line being queued for the client.
    pub fn checkpoint_sent(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        for (bound, count) in LATENCY_BOUNDS.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_buckets[LATENCY_BOUNDS.len()].fetch_add(1, Ordering::Relaxed);
        self.latency_micros_sum.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The Prometheus text format (version 0.0.4) of the API and replication figures.
    pub fn render(&self, replication: &MetricsSnapshot) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "syncgate_connections",
            "gauge",
            "Open sync streams (HTTP and WebSocket).",
            load(&self.connections_open).to_string(),
        );
        metric(
            "syncgate_connections_total",
            "counter",
            "Sync streams opened.",
            load(&self.connections_total).to_string(),
        );
        metric(
            "syncgate_lines_sent_total",
            "counter",
            "Sync lines sent to clients.",
            load(&self.lines_sent).to_string(),
        );
        metric(
            "syncgate_bytes_sent_total",
            "counter",
            "Bytes of sync stream bodies sent (after compression).",
            load(&self.bytes_sent).to_string(),
        );
        metric(
            "syncgate_ops_sent_total",
            "counter",
            "Bucket operations sent in data lines.",
            load(&self.ops_sent).to_string(),
        );
        metric(
            "syncgate_sessions_failed_total",
            "counter",
            "Sync streams ended by an error.",
            load(&self.sessions_failed).to_string(),
        );
        metric(
            "syncgate_auth_failures_total",
            "counter",
            "Requests refused with 401.",
            load(&self.auth_failures).to_string(),
        );
        metric(
            "syncgate_replication_lag_bytes",
            "gauge",
            "WAL received from Postgres but not yet applied to bucket storage.",
            replication.lag_bytes.to_string(),
        );
        metric(
            "syncgate_replication_lag_seconds",
            "gauge",
            "Age of the last applied commit while replication is behind; 0 when caught up.",
            format!("{:.3}", replication.lag_seconds),
        );
        metric(
            "syncgate_replicated_row_changes_total",
            "counter",
            "Source row changes applied to bucket storage (the ingest rate is its rate()).",
            replication.row_changes.to_string(),
        );
        metric(
            "syncgate_replicated_transactions_total",
            "counter",
            "Source transactions applied to bucket storage.",
            replication.transactions.to_string(),
        );
        metric(
            "syncgate_snapshot_rows_total",
            "counter",
            "Rows copied by initial snapshots.",
            replication.snapshot_rows.to_string(),
        );
        metric(
            "syncgate_replication_stream_bytes_total",
            "counter",
            "Change data received from the replication slot's output plugin (keepalives not counted).",
            replication.stream_bytes.to_string(),
        );
        metric(
            "syncgate_replication_apply_seconds_total",
            "counter",
            "Time bucket storage spent applying streamed transactions; a rate() near 1 means storage bounds the ingest.",
            format!("{:.3}", replication.apply_seconds),
        );
        metric(
            "syncgate_replication_retained_wal_bytes",
            "gauge",
            "WAL the replication slot retains on the source.",
            replication.retained_wal_bytes.to_string(),
        );
        let name = "syncgate_checkpoint_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a new checkpoint being noticed to its line being queued for a client.\n# TYPE {name} histogram"
        );
        for (bound, count) in LATENCY_BOUNDS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", load(count));
        }
        let total = load(&self.latency_buckets[LATENCY_BOUNDS.len()]);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        #[allow(clippy::cast_precision_loss)] // a sum of seconds for monitoring
        let sum = load(&self.latency_micros_sum) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = std::sync::Arc::new(ApiMetrics::default());
        let guard = metrics.connection_opened();
        metrics.line_sent();
        metrics.checkpoint_sent(Duration::from_micros(1_500));
        metrics.checkpoint_sent(Duration::from_millis(30));
        let text = metrics.render(&MetricsSnapshot {
            received_lsn: syncgate_protocol::Lsn(0),
            applied_lsn: syncgate_protocol::Lsn(0),
            lag_bytes: 7,
            lag_seconds: 0.0,
            row_changes: 3,
            transactions: 1,
            batches: 1,
            snapshot_rows: 0,
            stream_bytes: 0,
            apply_seconds: 2.5,
            retained_wal_bytes: 0,
        });
        assert!(text.contains("\nsyncgate_connections 1\n"), "{text}");
        assert!(text.contains("syncgate_replication_lag_bytes 7\n"));
        assert!(
            text.contains("syncgate_replication_apply_seconds_total 2.500\n"),
            "{text}"
        );
        assert!(text.contains("syncgate_checkpoint_latency_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("syncgate_checkpoint_latency_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("syncgate_checkpoint_latency_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("syncgate_checkpoint_latency_seconds_count 2\n"));
        drop(guard);
        assert_eq!(metrics.connections_open(), 0);
    }
}
