//! Sync-rules evaluation throughput: rows placed per second and bucket resolutions per second,
//! each beside a serde_json baseline measured in the same run (the VM's speed varies from run
//! to run; the ratio does not).
//!
//! `cargo bench -p syncgate-rules --bench evaluate`

#[path = "support/workload.rs"]
mod workload;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use syncgate_rules::{RowEvaluation, SqliteValue};

fn evaluate_rows(c: &mut Criterion) {
    let rules = workload::compile_rules(workload::ROW_RULES);
    let table = workload::items_table();
    let plan = rules.plan_table(&table);
    let rows: Vec<Vec<SqliteValue>> = (0..1024).map(workload::item_row).collect();
    let mut group = c.benchmark_group("evaluate_row");
    group.throughput(Throughput::Elements(1));

    // Baseline: serializing the row once as a JSON object with serde_json.
    let mut j = 0usize;
    group.bench_function("baseline: serde_json of the row", |b| {
        b.iter(|| {
            let row = &rows[j % rows.len()];
            j += 1;
            let object: serde_json::Map<String, serde_json::Value> = table
                .columns
                .iter()
                .zip(row)
                .map(|(n, v)| (n.to_string(), v.to_json()))
                .collect();
            black_box(
                serde_json::to_string(&object)
                    .map(|s| s.len())
                    .unwrap_or_default(),
            )
        })
    });

    let mut out = RowEvaluation::default();
    let mut i = 0usize;
    group.bench_function("10 columns, 5 bucket definitions", |b| {
        b.iter(|| {
            out.clear();
            rules.evaluate_row(&plan, black_box(&rows[i % rows.len()]), &mut out);
            i += 1;
            black_box(out.len())
        })
    });
    group.finish();
}

fn resolve_buckets(c: &mut Criterion) {
    let rules = workload::compile_rules(workload::RESOLVE_RULES);
    let index = workload::membership_index(&rules);
    let requests = workload::connections();
    let mut group = c.benchmark_group("resolve_buckets");
    group.throughput(Throughput::Elements(1));

    // Baseline: parsing one connection's token payload with serde_json.
    let payloads: Vec<String> = (0..100)
        .map(|u| serde_json::json!({"sub": format!("user-{u}"), "tags": ["t1", "t2"]}).to_string())
        .collect();
    let mut k = 0usize;
    group.bench_function("baseline: serde_json parse of the token payload", |b| {
        b.iter(|| {
            let payload = &payloads[k % payloads.len()];
            k += 1;
            black_box(
                serde_json::from_str::<serde_json::Value>(payload)
                    .map(|v| v.is_object())
                    .unwrap_or_default(),
            )
        })
    });

    let mut i = 0usize;
    group.bench_function("3 parameter queries", |b| {
        b.iter(|| {
            let buckets = workload::resolve(&rules, &requests[i % requests.len()], &index);
            i += 1;
            assert_eq!(buckets.len(), 6);
            black_box(buckets)
        })
    });
    group.finish();
}

criterion_group!(benches, evaluate_rows, resolve_buckets);
criterion_main!(benches);
