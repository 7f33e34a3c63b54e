//! Bucket storage write throughput, the same workload on both storages: SQLite on a temp file (WAL,
//! `synchronous=FULL`) and Postgres in a throwaway local cluster (`synchronous_commit=on`): streaming
//! transactions of 1,000 row changes, one and ten per storage commit, and initial-snapshot chunks of
//! 10,000 rows. Each row lands in 1–3 buckets with ~200 bytes of JSON; streaming mixes new rows and
//! updates.
//!
//! `cargo bench -p syncgate --bench storage_apply` (criterion's `thrpt` is row changes per second;
//! benchmark names start with the storage)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use syncgate::storage::{
    BucketStorage, Lsn, Placement, PostgresStorage, PostgresStorageConfig, RowChange, RulesVersion,
    SnapshotChunk, SourceRowKey, SourceTransaction, SqliteStorage, TableSnapshot,
};
use syncgate_protocol::BucketName;

const TXN_ROWS: usize = 1_000;
const CHUNK_ROWS: usize = 10_000;

/// Generates row changes: new rows get fresh keys, updates pick an existing row and change its data.
struct Workload {
    version: RulesVersion,
    rows: u64,
    lsn: u64,
    seed: u64,
    revision: u64,
}

impl Workload {
    fn random(&mut self) -> u64 {
        // xorshift64: deterministic and cheap; the distribution only has to spread updates.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    fn change(&mut self, row: u64) -> RowChange {
        self.revision += 1;
        let list = row % 997;
        let buckets = 1 + row % 3;
        let data = format!(
            r#"{{"id":"item-{row:08}","list_id":"list-{list:04}","owner_id":"user-{owner:05}","description":"Item {row} revision {rev}, some text to make it realistic","done":{done},"priority":{prio},"created_at":"2026-11-26T12:00:00Z"}}"#,
            owner = row % 10_007,
            rev = self.revision,
            done = self.revision.is_multiple_of(2),
            prio = row % 5,
        );
        let placements = (0..buckets)
            .map(|b| Placement {
                bucket: BucketName::new(format!("{}#by_list_{b}[\"list-{list:04}\"]", self.version)),
                table: "items".into(),
                id: format!("item-{row:08}"),
                data: data.clone(),
            })
            .collect();
        RowChange {
            row: SourceRowKey {
                table: "public.items".into(),
                key: row.to_string(),
            },
            placements: Some(placements),
            parameters: None,
            source_row: None,
        }
    }

    /// A streaming transaction: half new rows, half updates of existing ones.
    fn txn(&mut self) -> SourceTransaction {
        let changes = (0..TXN_ROWS)
            .map(|i| {
                let row = if i.is_multiple_of(2) || self.rows == 0 {
                    self.rows += 1;
                    self.rows
                } else {
                    1 + self.random() % self.rows
                };
                self.change(row)
            })
            .collect();
        self.lsn += 100;
        SourceTransaction {
            commit_lsn: Lsn(self.lsn),
            changes,
        }
    }

    fn chunk(&mut self) -> Vec<RowChange> {
        (0..CHUNK_ROWS)
            .map(|_| {
                self.rows += 1;
                self.change(self.rows)
            })
            .collect()
    }
}

/// The storages compared.
const STORAGES: [&str; 2] = ["sqlite", "postgres"];

/// A storage's home (temp dir or database), kept alive as long as the storage.
type Home = Box<dyn std::any::Any>;

fn open(kind: &str) -> (Home, Box<dyn BucketStorage>) {
    // `RUST_LOG=syncgate=debug` shows where each Postgres storage commit spends its time.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    match kind {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let storage = SqliteStorage::open(dir.path().join("bench.db")).unwrap();
            (Box::new(dir), Box::new(storage))
        }
        _ => {
            let database = syncgate_test_support::shared_cluster().create_database().unwrap();
            let config = PostgresStorageConfig::local_trusted(
                database.host(),
                database.port(),
                database.name(),
                database.user(),
                syncgate::storage::DEFAULT_SCHEMA,
            );
            let storage = PostgresStorage::open(&config).unwrap();
            (Box::new(database), Box::new(storage))
        }
    }
}

fn setup(kind: &str) -> (Home, Box<dyn BucketStorage>, Workload) {
    let (home, storage) = open(kind);
    let version = storage.create_version("bench").unwrap();
    let workload = Workload {
        version,
        rows: 0,
        lsn: 0,
        seed: 0x9E37_79B9_7F4A_7C15,
        revision: 0,
    };
    (home, storage, workload)
}

fn streaming(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_batch");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    for (kind, per_commit) in STORAGES.into_iter().flat_map(|k| [(k, 1usize), (k, 10)]) {
        let (_home, storage, mut workload) = setup(kind);
        // Start from a populated storage, so updates and index depths are realistic.
        for _ in 0..20 {
            let batch: Vec<_> = (0..10).map(|_| workload.txn()).collect();
            storage.apply_batch(workload.version, &batch).unwrap();
        }
        let version = workload.version;
        group.throughput(Throughput::Elements((TXN_ROWS * per_commit) as u64));
        group.bench_function(format!("{kind}: {per_commit} x 1000-row txns per commit"), |b| {
            b.iter_batched(
                || (0..per_commit).map(|_| workload.txn()).collect::<Vec<_>>(),
                |batch| storage.apply_batch(version, &batch).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_snapshot_chunk");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    for kind in STORAGES {
        let (_home, storage, mut workload) = setup(kind);
        let version = workload.version;
        group.throughput(Throughput::Elements(CHUNK_ROWS as u64));
        group.bench_function(format!("{kind}: 10000-row chunks"), |b| {
            b.iter_batched(
                || workload.chunk(),
                |chunk| {
                    let progress = TableSnapshot {
                        table: "public.items".into(),
                        resume_after: chunk.last().map(|c| c.row.key.clone()),
                        done: false,
                        lsn: Lsn(1),
                    };
                    storage
                        .apply_snapshot_chunk(version, &SnapshotChunk::new(chunk), &progress)
                        .unwrap()
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, streaming, snapshot);
criterion_main!(benches);
