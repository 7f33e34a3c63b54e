//! The diagnostics page (`/dashboard`, docs/dashboard.md): replication status and lag, the active sync
//! rules with their diagnostics, open streams, and what a given user syncs.
//!
//! Off unless `dashboard.enabled`: then every dashboard path answers 404 like any unknown route. The HTML
//! shell is public and holds no data; every figure comes from the JSON endpoints under `/dashboard/api/`,
//! which need `Authorization: Bearer <admin token>` (`api.tokens`). "What does this user get" reads
//! through the sync session's own read ([`read_connection_view`]), so its buckets, checksums and counts
//! are those a real sync of that user is sent.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};
use syncgate_protocol::SyncRequest;
use syncgate_rules::{CompileOptions, compile};
use tracing::debug;
use warp::http::{HeaderValue, Response, StatusCode, header};
use warp::{Filter, Rejection};

use super::ApiError;
use super::http::{ApiState, json_reply, reject};
use super::session::{SessionClaims, SessionError, read_connection_view};
use crate::inspect::net_rows;
use crate::storage::{BucketStorage, StorageError, VersionState};

/// The page: plain HTML and vanilla JS, no build step.
const PAGE: &str = include_str!("dashboard/index.html");
/// Sample rows per bucket unless the request asks for another number (at most [`MAX_SAMPLE_ROWS`]).
const DEFAULT_SAMPLE_ROWS: usize = 20;
const MAX_SAMPLE_ROWS: usize = 1_000;
/// Streams listed in full; the count covers all.
const LISTED_CLIENTS: usize = 500;

/// The dashboard's routes; with the dashboard off they match nothing (so 404).
pub fn routes(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let enabled = {
        let enabled = state.dashboard.enabled;
        warp::any()
            .and_then(move || async move {
                if enabled {
                    Ok::<(), Rejection>(())
                } else {
                    Err(warp::reject::not_found())
                }
            })
            .untuple_one()
    };
    let with_state = warp::any().map(move || Arc::clone(&state));
    let admin = warp::header::optional::<String>("authorization")
        .and(with_state.clone())
        .and_then(|authorization: Option<String>, state: Arc<ApiState>| async move {
            match check_admin(authorization.as_deref(), &state) {
                Ok(()) => Ok(state),
                Err(error) => {
                    debug!(reason = %error.description, "dashboard request refused");
                    Err(reject(error))
                }
            }
        });

    let page = warp::path!("dashboard").and(warp::get()).map(|| {
        let mut response = Response::new(PAGE.into());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        // The page loads nothing from elsewhere; this keeps injected markup from running scripts.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
            ),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    });
    let status = warp::path!("dashboard" / "api" / "status")
        .and(warp::get())
        .and(admin.clone())
        .and_then(status);
    let rules = warp::path!("dashboard" / "api" / "rules")
        .and(warp::get())
        .and(admin.clone())
        .and_then(rules);
    let clients = warp::path!("dashboard" / "api" / "clients")
        .and(warp::get())
        .and(admin.clone())
        .map(|state: Arc<ApiState>| json_reply(StatusCode::OK, &clients_json(&state)));
    let user = warp::path!("dashboard" / "api" / "user")
        .and(warp::post())
        .and(admin)
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .and_then(user);

    enabled.and(
        page.or(status)
            .unify()
            .or(rules)
            .unify()
            .or(clients)
            .unify()
            .or(user)
            .unify(),
    )
}

/// Checks `Authorization: Bearer <admin token>`; the error says which part is wrong (never the token).
fn check_admin(authorization: Option<&str>, state: &ApiState) -> Result<(), ApiError> {
    let refuse = |reason: &str| ApiError::new(401, "PSYNC_S2106", "AuthorizationError", reason);
    let Some(value) = authorization else {
        return Err(refuse(
            "the dashboard API needs an `Authorization: Bearer <admin token>` header (a token of `api.tokens`)",
        ));
    };
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Err(refuse("the Authorization header must be `Bearer <admin token>`"));
    };
    // Every token is compared in full, so timing reveals neither which token nor how much matched.
    let accepted = state.dashboard.admin_tokens.iter().fold(false, |found, t| {
        constant_time_eq(t.expose().as_bytes(), token.as_bytes()) | found
    });
    if accepted {
        Ok(())
    } else {
        Err(refuse("the admin token is not one of `api.tokens`"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn unix_micros_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn storage_error(error: &StorageError) -> Rejection {
    reject(ApiError::internal(format!("reading bucket storage: {error}")))
}

fn task_error(error: &tokio::task::JoinError) -> Rejection {
    reject(ApiError::internal(format!("dashboard task failed: {error}")))
}

/// Replication state of every stored version plus the live replication figures.
async fn status(state: Arc<ApiState>) -> Result<warp::reply::Response, Rejection> {
    let storage = Arc::clone(&state.env.storage);
    let versions = tokio::task::spawn_blocking(move || versions_json(&*storage))
        .await
        .map_err(|e| task_error(&e))?
        .map_err(|e| storage_error(&e))?;
    let figures = state.replication.snapshot();
    let since_commit = state.replication.last_applied_at_unix_micros().map(|at| {
        #[allow(clippy::cast_precision_loss)] // seconds for display
        let seconds = (unix_micros_now() - at).max(0) as f64 / 1e6;
        seconds
    });
    let body = json!({
        "versions": versions,
        "replication": {
            "source_wal_lsn": figures.received_lsn.to_string(),
            "applied_lsn": figures.applied_lsn.to_string(),
            "lag_bytes": figures.lag_bytes,
            "lag_seconds": figures.lag_seconds,
            "seconds_since_last_commit": since_commit,
            "retained_wal_bytes": figures.retained_wal_bytes,
            "row_changes": figures.row_changes,
            "transactions": figures.transactions,
            "snapshot_rows": figures.snapshot_rows,
        },
        "connections": state.env.metrics.connections_open(),
    });
    Ok(json_reply(StatusCode::OK, &body))
}

/// Each live version (active first, then building ones): state, progress of its initial snapshot, and
/// its latest checkpoint.
fn versions_json(storage: &dyn BucketStorage) -> Result<Vec<Value>, StorageError> {
    let mut versions = storage.versions()?;
    versions.retain(|v| v.state != VersionState::Retired);
    versions.sort_by_key(|v| (v.state != VersionState::Active, v.version));
    let mut out = Vec::with_capacity(versions.len());
    for version in versions {
        let checkpoint = storage.latest_checkpoint(version.version)?;
        let tables = storage.snapshot_progress(version.version)?;
        let tables_done = tables.iter().filter(|t| t.done).count();
        // A version publishes its first checkpoint only once its snapshot is complete (invariant 5).
        let phase = if checkpoint.is_some() {
            "streaming"
        } else {
            "snapshotting"
        };
        out.push(json!({
            "version": version.version.0,
            "state": match version.state {
                VersionState::Active => "active",
                VersionState::Building => "building",
                VersionState::Retired => "retired",
            },
            "phase": phase,
            "snapshot": {
                "tables_done": tables_done,
                "tables": tables.iter().map(|t| json!({"table": t.table, "done": t.done})).collect::<Vec<_>>(),
            },
            "checkpoint": checkpoint.map(|c| json!({"op_id": c.op_id.get().to_string(), "lsn": c.lsn.to_string()})),
        }));
    }
    Ok(out)
}

/// The active version's rules text and what the compiler says about it (positions in that text).
async fn rules(state: Arc<ApiState>) -> Result<warp::reply::Response, Rejection> {
    let storage = Arc::clone(&state.env.storage);
    let active = tokio::task::spawn_blocking(move || storage.active_version())
        .await
        .map_err(|e| task_error(&e))?
        .map_err(|e| storage_error(&e))?;
    let Some(active) = active else {
        return Ok(json_reply(
            StatusCode::OK,
            &json!({"version": null, "rules": null, "diagnostics": []}),
        ));
    };
    let compiled = compile(&active.rules, &CompileOptions::default());
    let diagnostics: Vec<Value> = compiled
        .diagnostics
        .iter()
        .map(|d| {
            json!({
                "line": d.line,
                "column": d.column,
                "severity": d.severity.as_str(),
                "message": d.message,
            })
        })
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({"version": active.version.0, "rules": active.rules, "diagnostics": diagnostics}),
    ))
}

fn clients_json(state: &ApiState) -> Value {
    let (count, clients) = state.clients.list(LISTED_CLIENTS);
    json!({"count": count, "listed": clients.len(), "clients": clients})
}

/// `POST /dashboard/api/user` with `{"claims": {...}, "parameters": {...}, "sample_rows": N}`: the
/// buckets that token and client parameters sync at the latest checkpoint, with each bucket's checksum,
/// op count and its first rows.
async fn user(state: Arc<ApiState>, body: Bytes) -> Result<warp::reply::Response, Rejection> {
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| reject(ApiError::validation(format!("the body is not JSON: {e}"))))?;
    let claims = match request.get("claims") {
        Some(Value::Object(claims)) => claims.clone(),
        _ => {
            return Err(reject(ApiError::validation(
                "`claims` must be a JSON object: the token payload, e.g. {\"sub\": \"alice\"}",
            )));
        }
    };
    // The authenticator's user id is `sub` as text (a number's decimal form).
    let user_id = match claims.get("sub") {
        Some(Value::String(sub)) => sub.clone(),
        Some(Value::Number(sub)) => sub.to_string(),
        _ => {
            return Err(reject(ApiError::validation(
                "`claims.sub` is required (a string or number), as in a client token",
            )));
        }
    };
    let parameters = match request.get("parameters") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(parameters)) => parameters.clone(),
        Some(_) => {
            return Err(reject(ApiError::validation(
                "`parameters` must be a JSON object (the client parameters)",
            )));
        }
    };
    let sample_rows = match request.get("sample_rows") {
        None | Some(Value::Null) => DEFAULT_SAMPLE_ROWS,
        Some(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n <= MAX_SAMPLE_ROWS)
            .ok_or_else(|| {
                reject(ApiError::validation(format!(
                    "`sample_rows` must be a whole number from 0 to {MAX_SAMPLE_ROWS}"
                )))
            })?,
    };
    // A sync request body with the client parameters and default subscriptions, as an SDK sends it.
    let sync_request = SyncRequest::from_json(json!({"parameters": parameters}).to_string().as_bytes())
        .map_err(|e| reject(ApiError::validation(e.to_string())))?;
    let session_claims = SessionClaims {
        user_id,
        payload: Value::Object(claims),
        // Not read: the view is one read, not a stream that expires.
        expires_at: u64::MAX,
    };
    let env = Arc::clone(&state.env);
    let result = tokio::task::spawn_blocking(move || -> Result<Option<Value>, UserViewError> {
        let Some(view) = read_connection_view(&env, &session_claims, &sync_request)? else {
            return Ok(None);
        };
        let mut buckets = Vec::with_capacity(view.buckets.len());
        for bucket in &view.buckets {
            let rows = net_rows(&*env.storage, view.version, &bucket.bucket, view.checkpoint.op_id)
                .map_err(|e| UserViewError::Rows(e.to_string()))?;
            buckets.push(json!({
                "bucket": bucket.bucket.as_str(),
                "priority": bucket.priority.get(),
                "checksum": bucket.checksum.as_i32(),
                "count": bucket.count,
                "row_count": rows.len(),
                "rows": rows.iter().take(sample_rows).collect::<Vec<_>>(),
            }));
        }
        Ok(Some(json!({
            "version": view.version.0,
            "checkpoint": {"op_id": view.checkpoint.op_id.get().to_string(), "lsn": view.checkpoint.lsn.to_string()},
            "buckets": buckets,
        })))
    })
    .await
    .map_err(|e| task_error(&e))?;
    match result {
        Ok(Some(body)) => Ok(json_reply(StatusCode::OK, &body)),
        Ok(None) => Err(reject(ApiError::unavailable(
            "no checkpoint is published yet (the initial snapshot is running); try again when replication is streaming",
        ))),
        Err(UserViewError::Session(SessionError::Storage(e))) => Err(storage_error(&e)),
        // Too many buckets or lookups, rules that do not compile: the sync would fail the same way.
        Err(UserViewError::Session(e)) => Err(reject(ApiError::validation(format!(
            "a sync with these claims would fail: {e}"
        )))),
        Err(UserViewError::Rows(e)) => Err(reject(ApiError::internal(e))),
    }
}

#[derive(Debug, thiserror::Error)]
enum UserViewError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("{0}")]
    Rows(String),
}
