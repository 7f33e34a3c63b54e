//! The workloads measured by benches/evaluate.rs and profiled by examples/*_profile.rs.
// Included by several targets (`#[path]`), each of which uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;

use serde_json::json;
use syncgate_rules::{
    CompileOptions, ConnectionRequest, ResolvedBucket, SourceTable, SqliteValue, SyncRules, compile,
};

/// Five bucket definitions over one 10-column table: a global filter, a token parameter, a
/// table lookup, a `json_each` over a token array matched with a row array, and a two-condition match.
pub const ROW_RULES: &str = r#"
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

pub fn compile_rules(text: &str) -> SyncRules {
    compile(text, &CompileOptions::default())
        .rules
        .expect("benchmark rules compile")
}

pub fn items_table() -> SourceTable {
    SourceTable::new(
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
    )
}

/// A ~200-byte row; 1 in 10 archived, 2 in 5 urgent, two tags each.
pub fn item_row(i: i64) -> Vec<SqliteValue> {
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

/// A connection with three parameter queries: a token value, a table lookup, a `json_each`.
pub const RESOLVE_RULES: &str = r#"
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

/// The parameter index as storage would hold it: 100 users, each in three orgs.
pub fn membership_index(rules: &SyncRules) -> HashMap<String, Vec<Vec<SqliteValue>>> {
    let plan = rules.plan_table(&SourceTable::new(
        "public",
        "memberships",
        &["id", "user_id", "org_id"],
    ));
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
    index
}

/// One connection per user.
pub fn connections() -> Vec<ConnectionRequest> {
    (0..100)
        .map(|u| {
            ConnectionRequest::new(
                &json!({"sub": format!("user-{u}"), "tags": ["t1", "t2"]}),
                &json!({}),
            )
        })
        .collect()
}

/// Resolves one connection's buckets, answering lookups from the index.
pub fn resolve(
    rules: &SyncRules,
    request: &ConnectionRequest,
    index: &HashMap<String, Vec<Vec<SqliteValue>>>,
) -> Vec<ResolvedBucket> {
    rules
        .resolve_buckets(request, |lookups| -> Result<_, std::convert::Infallible> {
            Ok(lookups
                .iter()
                .map(|l| index.get(&l.key()).cloned().unwrap_or_default())
                .collect())
        })
        .unwrap_or_else(|never| match never {})
}
