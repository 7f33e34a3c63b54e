//! Resolves buckets for a fixed number of connections: run under `valgrind --tool=callgrind` for
//! repeatable instruction counts (wall-clock benchmarks live in benches/evaluate.rs).

use std::collections::HashMap;

use serde_json::json;
use syncgate_rules::{CompileOptions, ConnectionRequest, SourceTable, SqliteValue, compile};

const RULES: &str = r#"
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

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rules = compile(RULES, &CompileOptions::default())
        .rules
        .expect("rules compile");
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
    let start = std::time::Instant::now();
    let mut buckets = 0;
    for i in 0..count {
        let resolved = rules
            .resolve_buckets(
                &requests[i % requests.len()],
                |lookups| -> Result<_, std::convert::Infallible> {
                    Ok(lookups
                        .iter()
                        .map(|l| index.get(&l.key()).cloned().unwrap_or_default())
                        .collect())
                },
            )
            .unwrap_or_else(|never| match never {});
        buckets += resolved.len();
    }
    let elapsed = start.elapsed();
    #[allow(clippy::cast_precision_loss)]
    let rate = count as f64 / elapsed.as_secs_f64();
    println!("{count} resolutions, {buckets} buckets in {elapsed:?}: {rate:.0} resolutions/s");
}
