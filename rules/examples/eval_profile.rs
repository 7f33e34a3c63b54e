//! Evaluates a fixed number of rows once: run under `valgrind --tool=callgrind` for repeatable
//! instruction counts when tuning (wall-clock benchmarks live in benches/evaluate.rs).

use syncgate_rules::{CompileOptions, RowEvaluation, SourceTable, SqliteValue, compile};

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

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rules = compile(RULES, &CompileOptions::default())
        .rules
        .expect("rules compile");
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
    let data: Vec<Vec<SqliteValue>> = (0..1024).map(item_row).collect();
    let mut out = RowEvaluation::default();
    let mut placed = 0usize;
    let start = std::time::Instant::now();
    for i in 0..rows {
        out.clear();
        rules.evaluate_row(&plan, &data[i % data.len()], &mut out);
        placed += out.len();
    }
    let elapsed = start.elapsed();
    #[allow(clippy::cast_precision_loss)]
    let rate = rows as f64 / elapsed.as_secs_f64();
    println!("{rows} rows, {placed} placements in {elapsed:?}: {rate:.0} rows/s");
}
