//! The dashboard's JSON endpoints against a real gateway replicating a real Postgres: the admin token,
//! 404 while disabled, the replication status, and "what does this user get" against a real sync.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncgate_test_support::{TestDatabase, shared_cluster};

use crate::replication::harness::write_config;
use crate::sync_api::{Api, golden};

pub(crate) const ADMIN_TOKEN: &str = "dashboard-test-admin-token";

/// The golden rules plus a bucket whose parameters come from a table, so bucket resolution reads the
/// parameter index (the part of authorization that depends on storage).
pub(crate) fn rules() -> String {
    format!(
        "{}  list_todos:\n    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()\n    \
         data:\n      - SELECT * FROM todos WHERE list_id = bucket.list_id\n",
        golden("sync-rules.yaml")
    )
}

/// A config for `db` with the dashboard `enabled` (or not) and [`ADMIN_TOKEN`] in `api.tokens`.
pub(crate) fn dashboard_config(dir: &Path, db: &TestDatabase, prefix: &str, enabled: bool) -> PathBuf {
    let path = write_config(dir, db, &rules(), prefix);
    let mut text = std::fs::read_to_string(&path).expect("read config");
    text.push_str(&format!(
        "dashboard:\n  enabled: {enabled}\napi:\n  tokens:\n    - {ADMIN_TOKEN}\n"
    ));
    std::fs::write(&path, text).expect("write config");
    path
}

pub(crate) async fn golden_database() -> TestDatabase {
    let db = shared_cluster().create_database().expect("database");
    db.psql(&golden("schema.sql")).expect("schema");
    db.psql(&golden("dataset.sql")).expect("dataset");
    db
}

async fn get(api: &Api, path: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = api.http.get(format!("{}{path}", api.base));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn admin_get(api: &Api, path: &str) -> Value {
    let (status, body) = get(api, path, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn user_view(api: &Api, request: &Value) -> (u16, Value) {
    let response = api
        .http
        .post(format!("{}/dashboard/api/user", api.base))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(request.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).expect("JSON body"))
}

/// Per bucket: (checksum, count) from a checkpoint line and the net rows its data lines leave.
type Synced = BTreeMap<String, (i64, u64, BTreeSet<(String, String, String)>)>;

/// What a client holds after `lines` (a first checkpoint, its data and the complete).
fn synced(lines: &[Value]) -> Synced {
    let checkpoint = &lines[0]["checkpoint"];
    let mut out: Synced = checkpoint["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            (
                b["bucket"].as_str().expect("name").to_owned(),
                (
                    b["checksum"].as_i64().expect("checksum"),
                    b["count"].as_u64().expect("count"),
                    BTreeSet::new(),
                ),
            )
        })
        .collect();
    for line in lines {
        let Some(data) = line.get("data") else { continue };
        let rows = &mut out
            .get_mut(data["bucket"].as_str().expect("bucket"))
            .expect("data of a listed bucket")
            .2;
        for op in data["data"].as_array().expect("ops") {
            let key = (
                op["object_type"].as_str().unwrap_or_default().to_owned(),
                op["object_id"].as_str().unwrap_or_default().to_owned(),
            );
            match op["op"].as_str() {
                Some("PUT") => {
                    let data: Value =
                        serde_json::from_str(op["data"].as_str().expect("data")).expect("row JSON");
                    rows.retain(|(t, i, _)| (t, i) != (&key.0, &key.1));
                    rows.insert((key.0, key.1, data.to_string()));
                }
                Some("REMOVE") => rows.retain(|(t, i, _)| (t, i) != (&key.0, &key.1)),
                _ => {}
            }
        }
    }
    out
}

fn from_dashboard(view: &Value) -> Synced {
    view["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            let rows = b["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| {
                    (
                        r["table"].as_str().expect("table").to_owned(),
                        r["id"].as_str().expect("id").to_owned(),
                        r["data"].to_string(),
                    )
                })
                .collect();
            (
                b["bucket"].as_str().expect("bucket").to_owned(),
                (
                    b["checksum"].as_i64().expect("checksum"),
                    b["count"].as_u64().expect("count"),
                    rows,
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_api_needs_the_admin_token_and_shows_what_a_real_sync_sends() {
    let db = golden_database().await;
    let dir = tempfile::tempdir().expect("dir");
    let api = Api::start_with_config(&dashboard_config(dir.path(), &db, "sg_dash_", true)).await;

    // The page itself is public and carries no data.
    let page = api
        .http
        .get(format!("{}/dashboard", api.base))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let page = page.text().await.expect("page text");
    assert!(page.contains("syncgate dashboard"), "{page}");
    assert!(!page.contains(ADMIN_TOKEN) && !page.contains("user1"));

    for (authorization, reason) in [
        (None, "needs an `Authorization: Bearer <admin token>` header"),
        (
            Some(format!("Token {ADMIN_TOKEN}")),
            "must be `Bearer <admin token>`",
        ),
        (Some("Bearer wrong-token".to_owned()), "not one of `api.tokens`"),
        (Some(format!("Bearer {ADMIN_TOKEN}x")), "not one of `api.tokens`"),
    ] {
        for path in ["status", "rules", "clients"] {
            let (status, body) = get(&api, &format!("/dashboard/api/{path}"), authorization.as_deref()).await;
            assert_eq!(status, 401, "{path} with {authorization:?}: {body}");
            let description = body["error"]["description"].as_str().expect("a reason");
            assert!(description.contains(reason), "{description}");
        }
    }

    // Status after the initial snapshot: the active version streams at a checkpoint.
    let status = admin_get(&api, "/dashboard/api/status").await;
    let version = &status["versions"][0];
    assert_eq!(version["state"], "active", "{status}");
    assert_eq!(version["phase"], "streaming", "{status}");
    let tables = version["snapshot"]["tables"].as_array().expect("tables");
    assert!(!tables.is_empty(), "{status}");
    assert_eq!(
        version["snapshot"]["tables_done"].as_u64(),
        Some(tables.len() as u64)
    );
    assert!(tables.iter().any(|t| t["table"] == "public.todos"), "{status}");
    assert_ne!(status["replication"]["applied_lsn"], "0/0", "{status}");
    assert!(
        status["replication"]["snapshot_rows"].as_u64() > Some(0),
        "{status}"
    );

    let rules_view = admin_get(&api, "/dashboard/api/rules").await;
    assert_eq!(rules_view["version"], version["version"]);
    assert_eq!(rules_view["rules"].as_str(), Some(rules().as_str()));
    // The rules compile cleanly: no diagnostic to show.
    assert_eq!(rules_view["diagnostics"], json!([]), "{rules_view}");

    let clients = admin_get(&api, "/dashboard/api/clients").await;
    assert_eq!(clients["count"], 0, "{clients}");

    // A real sync of user1, held open, and the dashboard's answer for the same claims.
    let mut stream = api.stream("user1", "{}", "application/x-ndjson").await;
    let lines = stream.until_complete().await;
    let real = synced(&lines);
    assert!(real.len() >= 3, "{real:?}");
    assert!(real.values().any(|(_, _, rows)| !rows.is_empty()));
    let (code, view) = user_view(&api, &json!({"claims": {"sub": "user1"}, "sample_rows": 1000})).await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(from_dashboard(&view), real);
    assert_eq!(
        view["checkpoint"]["op_id"], lines[0]["checkpoint"]["last_op_id"],
        "the same checkpoint"
    );
    // Bucket order as in the checkpoint line.
    let order = |buckets: &Value| -> Vec<String> {
        buckets
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b["bucket"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(order(&view["buckets"]), order(&lines[0]["checkpoint"]["buckets"]));

    // Samples are cut at `sample_rows`; counts stay whole.
    let (_, sampled) = user_view(&api, &json!({"claims": {"sub": "user1"}, "sample_rows": 1})).await;
    for bucket in sampled["buckets"].as_array().expect("buckets") {
        assert!(bucket["rows"].as_array().expect("rows").len() <= 1);
    }
    let todos = sampled["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .find(|b| b["bucket"].as_str().is_some_and(|n| n.contains("user_todos")))
        .expect("user_todos bucket");
    assert!(todos["row_count"].as_u64() > Some(1), "{todos}");

    // Another user gets other buckets; a user with nothing gets empty per-user buckets.
    let (_, other) = user_view(&api, &json!({"claims": {"sub": "user2"}})).await;
    assert_ne!(from_dashboard(&other), real);
    let (code, body) = user_view(&api, &json!({"claims": {"name": "no sub"}})).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["description"]
            .as_str()
            .expect("reason")
            .contains("claims.sub")
    );
    let (code, _) = user_view(&api, &json!({"claims": "user1"})).await;
    assert_eq!(code, 400);

    // The open stream is listed with the checkpoint it was sent.
    let started = Instant::now();
    loop {
        let clients = admin_get(&api, "/dashboard/api/clients").await;
        if clients["count"] == 1 {
            let client = &clients["clients"][0];
            assert_eq!(client["user_id"], "user1");
            assert_eq!(client["transport"], "http");
            assert_eq!(client["last_checkpoint"], lines[0]["checkpoint"]["last_op_id"]);
            assert_eq!(client["buckets"].as_u64(), Some(real.len() as u64));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{clients}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stream);
    let started = Instant::now();
    while admin_get(&api, "/dashboard/api/clients").await["count"] != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a closed stream stays listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_dashboard_is_not_found() {
    let db = golden_database().await;
    let dir = tempfile::tempdir().expect("dir");
    let api = Api::start_with_config(&dashboard_config(dir.path(), &db, "sg_dash_off_", false)).await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for path in ["/dashboard", "/dashboard/api/status", "/dashboard/api/clients"] {
        let (status, body) = get(&api, path, Some(&bearer)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "PSYNC_S2002");
    }
    api.gateway.stop().await;
}
