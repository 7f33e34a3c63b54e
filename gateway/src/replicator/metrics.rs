//! Replication figures the `/metrics` endpoint and the logs read: positions, lag and rates.
//!
//! Lock-free counters written by the replicator and read by anyone holding the `Arc`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::source::Lsn;

/// Microseconds between the Unix epoch and Postgres's (2000-01-01).
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, Default)]
pub struct ReplicationMetrics {
    /// Highest WAL position the server reported (stream data or keepalive).
    received_lsn: AtomicU64,
    /// Highest LSN durably applied to storage (and confirmed to the server).
    applied_lsn: AtomicU64,
    /// Commit time of the last applied transaction, µs since the Unix epoch (0: none yet).
    applied_commit_unix_micros: AtomicI64,
    /// When the last batch was committed, µs since the Unix epoch.
    applied_at_unix_micros: AtomicI64,
    pub row_changes: AtomicU64,
    pub transactions: AtomicU64,
    pub batches: AtomicU64,
    pub snapshot_rows: AtomicU64,
    /// Tables the latest initial snapshot copies (those its rules read), and how many of them are done
    /// (copied, or found done by an earlier run).
    pub snapshot_tables: AtomicU64,
    pub snapshot_tables_done: AtomicU64,
    /// Bytes of change data (XLogData payloads, not keepalives) received from the server: what the
    /// output plugin sent, including changes of tables no rule reads when it does not filter them.
    pub stream_bytes: AtomicU64,
    /// Time storage spent applying streamed batches, µs. Batches are applied one at a time, so its rate is
    /// the storage writer's busy share: near 1, storage bounds the ingest whatever decodes the stream.
    apply_micros: AtomicU64,
    /// WAL the slot retains (`pg_current_wal_lsn() - restart_lsn`), as last measured.
    retained_wal_bytes: AtomicU64,
}

/// A consistent-enough copy of the figures for reporting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricsSnapshot {
    pub received_lsn: Lsn,
    pub applied_lsn: Lsn,
    /// WAL received but not yet applied.
    pub lag_bytes: u64,
    /// Age of the last applied commit while the stream is behind, 0 when caught up.
    pub lag_seconds: f64,
    pub row_changes: u64,
    pub transactions: u64,
    pub batches: u64,
    pub snapshot_rows: u64,
    pub stream_bytes: u64,
    /// Seconds storage spent applying streamed batches (see [`ReplicationMetrics::applying`]).
    pub apply_seconds: f64,
    pub retained_wal_bytes: u64,
}

fn unix_micros_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl ReplicationMetrics {
    pub fn received(&self, lsn: Lsn) {
        self.received_lsn.fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// A batch became durable: `lsn` is its last commit, `commit_time` that commit's Postgres timestamp.
    pub fn applied(&self, lsn: Lsn, commit_time: Option<i64>, rows: u64, transactions: u64) {
        self.applied_lsn.fetch_max(lsn.0, Ordering::Relaxed);
        self.received(lsn);
        if let Some(pg_micros) = commit_time {
            self.applied_commit_unix_micros.store(
                pg_micros.saturating_add(POSTGRES_EPOCH_UNIX_MICROS),
                Ordering::Relaxed,
            );
        }
        self.applied_at_unix_micros
            .store(unix_micros_now(), Ordering::Relaxed);
        self.row_changes.fetch_add(rows, Ordering::Relaxed);
        self.transactions.fetch_add(transactions, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Storage spent `took` applying one streamed batch (measured on the writing thread, so waits for the
    /// replicator to notice the batch's end are not counted).
    pub fn applying(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.apply_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Everything up to `lsn` is applied or needed nothing (a confirmed keepalive): no lag.
    pub fn caught_up(&self, lsn: Lsn) {
        self.applied_lsn.fetch_max(lsn.0, Ordering::Relaxed);
        self.received(lsn);
    }

    /// When the last batch became durable, µs since the Unix epoch; `None` before the first.
    pub fn last_applied_at_unix_micros(&self) -> Option<i64> {
        Some(self.applied_at_unix_micros.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    pub fn retained_wal(&self, bytes: u64) {
        self.retained_wal_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let received = self.received_lsn.load(Ordering::Relaxed);
        let applied = self.applied_lsn.load(Ordering::Relaxed);
        let lag_bytes = received.saturating_sub(applied);
        let commit = self.applied_commit_unix_micros.load(Ordering::Relaxed);
        let lag_seconds = if lag_bytes > 0 && commit > 0 {
            #[allow(clippy::cast_precision_loss)] // seconds of lag: precision far beyond need
            let seconds = (unix_micros_now() - commit).max(0) as f64 / 1e6;
            seconds
        } else {
            0.0
        };
        MetricsSnapshot {
            received_lsn: Lsn(received),
            applied_lsn: Lsn(applied),
            lag_bytes,
            lag_seconds,
            row_changes: self.row_changes.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            snapshot_rows: self.snapshot_rows.load(Ordering::Relaxed),
            stream_bytes: self.stream_bytes.load(Ordering::Relaxed),
            #[allow(clippy::cast_precision_loss)] // seconds for reporting
            apply_seconds: self.apply_micros.load(Ordering::Relaxed) as f64 / 1e6,
            retained_wal_bytes: self.retained_wal_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_received_minus_applied() {
        let metrics = ReplicationMetrics::default();
        metrics.received(Lsn(1000));
        metrics.applied(Lsn(600), Some(0), 10, 2);
        let figures = metrics.snapshot();
        assert_eq!(figures.lag_bytes, 400);
        assert!(figures.lag_seconds > 0.0);
        assert_eq!(
            (figures.row_changes, figures.transactions, figures.batches),
            (10, 2, 1)
        );
        metrics.applied(Lsn(1000), None, 1, 1);
        assert_eq!(metrics.snapshot().lag_bytes, 0);
        metrics.received(Lsn(1100));
        metrics.caught_up(Lsn(1100));
        assert_eq!(metrics.snapshot().lag_bytes, 0);
        metrics.applying(Duration::from_millis(1_500));
        metrics.applying(Duration::from_millis(250));
        assert!((metrics.snapshot().apply_seconds - 1.75).abs() < 1e-9);
        assert!(metrics.snapshot().lag_seconds.abs() < f64::EPSILON);
    }
}
