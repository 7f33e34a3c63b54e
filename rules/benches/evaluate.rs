//! Sync-rules evaluation throughput: rows placed per second and bucket resolutions per second.
//!
//! `cargo bench -p syncgate-rules --bench evaluate` (criterion prints time per element; the
//! throughput lines give rows/s and resolutions/s).

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use syncgate_rules::{CompileOptions, ConnectionRequest, RowEvaluation, SourceTable, SqliteValue, compile};

/// Five bucket definitions over one 10-column table: a global filter, a token parameter, a
/// table lookup, a `json_each` over a token array matched with a row array, and a two-condition match.
const RULES: &str = r#"
bucket_definitions:
  active_items:
    data:
      - SELECT id, title, status FROM items WHERE status != 'archived'
  by_owner:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT * FROM items WHERE owner_id = bucket.owner
  by_org:
    parameters: SELECT org_id FROM memberships WHERE user_id = request.user_id()
    data:
      - SELECT id, title, org_id, updated_at FROM items WHERE org_id = bucket.org_id
  by_tag:
    parameters: SELECT value AS tag FROM json_each(request.jwt() -> 'tags')
    data:
      - SELECT id, upper(title) AS title, priority FROM items WHERE bucket.tag IN tags
  urgent_assigned:
    parameters: SELECT request.user_id() AS uid
    data:
      - SELECT id, title, score FROM items WHERE assignee_id = bucket.uid AND priority >= 3
"#;

fn item_row(i: i64) -> Vec<SqliteValue> {
    vec![
        SqliteValue::from(format!("item-{i}")),
        SqliteValue::from(format!("user-{}", i % 1000)),
        SqliteValue::from(format!("org-{}", i % 50)),
        SqliteValue::from(format!("user-{}", (i * 7) % 1000)),
        SqliteValue::from(format!("Item number {i} with a reasonably long title")),
        SqliteValue::from(if i % 10 == 0 { "archived" } else { "open" }),
        SqliteValue::Integer(i % 5),
        SqliteValue::from(format!(r#"["t{}","t{}"]"#, i % 20, (i + 3) % 20)),
        SqliteValue::from("2026-11-26T10:05:45.123456Z"),
        #[allow(clippy::cast_precision_loss)]
        SqliteValue::Real(i as f64 * 0.25),
    ]
}

fn evaluate_rows(c: &mut Criterion) {
    let result = compile(RULES, &CompileOptions::default());
    let rules = result.rules.expect("benchmark rules compile");
    let table = SourceTable::new(
        "public",
        "items",
        &[
            "id",
            "owner_id",
            "org_id",
            "assignee_id",
            "title",
            "status",
            "priority",
            "tags",
            "updated_at",
            "score",
        ],
    );
    let plan = rules.plan_table(&table);
    let rows: Vec<Vec<SqliteValue>> = (0..1024).map(item_row).collect();
    let mut group = c.benchmark_group("evaluate_row");
    group.throughput(Throughput::Elements(1));
    let mut out = RowEvaluation::default();
    let mut i = 0usize;
    // Baseline on the same machine in the same run: serializing the row once as a JSON object
    // with serde_json. The VM's speed varies run to run; the ratio to this is stable.
    let names = table.columns.clone();
    let mut j = 0usize;
    group.bench_function("baseline: serde_json of the row", |b| {
        b.iter(|| {
            let row = &rows[j % rows.len()];
            j += 1;
            let object: serde_json::Map<String, serde_json::Value> = names
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

const RESOLVE_RULES: &str = r#"
bucket_definitions:
  mine:
    parameters: SELECT request.user_id() AS uid
    data:
      - SELECT * FROM items WHERE owner_id = bucket.uid
  org_items:
    parameters: SELECT org_id FROM memberships WHERE user_id = request.user_id()
    data:
      - SELECT * FROM items WHERE org_id = bucket.org_id
  tagged:
    parameters: SELECT value AS tag FROM json_each(request.jwt() -> 'tags')
    data:
      - SELECT * FROM items WHERE bucket.tag IN tags
"#;

fn resolve_buckets(c: &mut Criterion) {
    let rules = compile(RESOLVE_RULES, &CompileOptions::default())
        .rules
        .expect("benchmark rules compile");
    // The parameter index as storage would hold it: each user belongs to three orgs.
    let memberships = SourceTable::new("public", "memberships", &["id", "user_id", "org_id"]);
    let plan = rules.plan_table(&memberships);
    let mut index: HashMap<String, Vec<Vec<SqliteValue>>> = HashMap::new();
    for u in 0..100 {
        for o in 0..3 {
            let row = vec![
                SqliteValue::from(format!("m-{u}-{o}")),
                SqliteValue::from(format!("user-{u}")),
                SqliteValue::from(format!("org-{}", (u + o) % 50)),
            ];
            let (mut entries, mut errors) = (Vec::new(), Vec::new());
            rules.evaluate_parameter_row(&plan, &row, &mut entries, &mut errors);
            for e in entries {
                index.entry(e.lookup.key()).or_default().push(e.values);
            }
        }
    }
    let requests: Vec<ConnectionRequest> = (0..100)
        .map(|u| {
            ConnectionRequest::new(
                &json!({"sub": format!("user-{u}"), "tags": ["t1", "t2"]}),
                &json!({}),
            )
        })
        .collect();
    let mut group = c.benchmark_group("resolve_buckets");
    group.throughput(Throughput::Elements(1));
    // Baseline: parsing one connection's token payload with serde_json.
    let payloads: Vec<String> = (0..100)
        .map(|u| json!({"sub": format!("user-{u}"), "tags": ["t1", "t2"]}).to_string())
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
            let request = &requests[i % requests.len()];
            i += 1;
            let buckets = rules
                .resolve_buckets(request, |lookups| -> Result<_, std::convert::Infallible> {
                    Ok(lookups
                        .iter()
                        .map(|l| index.get(&l.key()).cloned().unwrap_or_default())
                        .collect())
                })
                .unwrap_or_else(|never| match never {});
            assert_eq!(buckets.len(), 6);
            black_box(buckets)
        })
    });
    group.finish();
}

criterion_group!(benches, evaluate_rows, resolve_buckets);
criterion_main!(benches);
