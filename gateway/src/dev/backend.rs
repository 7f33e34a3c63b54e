//! The demo app's backend: what an app's own server does with the client's uploads. `POST /upload`
//! takes one queued transaction (`{"transaction_id", "operations": [{"op", "type", "id", "data"}]}`,
//! docs/client.md), checks the bearer token as the gateway would, and applies the operations to Postgres
//! in one transaction, idempotently by row id (a client that crashed before the answer sends it again):
//! PUT upserts, PATCH updates the given columns, DELETE deletes the id if present. The change then
//! reaches every client through replication, like any other write.
//!
//! It authenticates but does not authorize: any user may write any row of the demo tables. A real
//! backend checks that the token's user may make each change.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;
use warp::Filter as _;
use warp::http::StatusCode;

use crate::auth::Authenticator;

/// Tables uploads may change: the demo's tables keyed by a text `id` (list_members has no `id`).
const WRITABLE_TABLES: [&str; 3] = ["users", "lists", "todos"];

/// Why an upload was refused or failed; the client retries any of them until the backend accepts.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("bad upload: {0}")]
    BadRequest(String),
    #[error("Postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl UploadError {
    fn status(&self) -> StatusCode {
        match self {
            UploadError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            UploadError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UploadError::Postgres(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What the backend needs: where to write and how to check tokens.
pub struct DemoBackend {
    database_url: String,
    authenticator: Authenticator,
}

impl DemoBackend {
    pub fn new(database_url: String, authenticator: Authenticator) -> DemoBackend {
        DemoBackend {
            database_url,
            authenticator,
        }
    }

    /// Serves `POST /upload` on `listener` until `shutdown` turns true; requests in flight finish first.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let backend = Arc::new(self);
        let route = warp::post()
            .and(warp::path!("upload"))
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .then(move |authorization: Option<String>, body: bytes::Bytes| {
                let backend = Arc::clone(&backend);
                async move {
                    match backend.upload(authorization, body).await {
                        Ok(applied) => warp::reply::with_status(
                            warp::reply::json(&serde_json::json!({"applied": applied})),
                            StatusCode::OK,
                        ),
                        Err(error) => {
                            tracing::warn!(%error, "demo backend refused an upload");
                            warp::reply::with_status(
                                warp::reply::json(&serde_json::json!({"error": error.to_string()})),
                                error.status(),
                            )
                        }
                    }
                }
            });
        warp::serve(route)
            .incoming(listener)
            .graceful(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .run()
            .await;
        Ok(())
    }

    /// Checks the token, then applies the transaction; returns how many operations were applied.
    pub async fn upload(
        &self,
        authorization: Option<String>,
        body: bytes::Bytes,
    ) -> Result<usize, UploadError> {
        let token = authorization
            .as_deref()
            .and_then(crate::auth::token_from_header)
            .ok_or_else(|| UploadError::Unauthorized("no `Authorization: Bearer <token>` header".into()))?;
        let claims = self
            .authenticator
            .verify(token, std::time::SystemTime::now())
            .map_err(|e| UploadError::Unauthorized(e.to_string()))?;
        let user = format!("{:?}", claims.user_id());
        drop(claims);
        let request: Value = serde_json::from_slice(&body)
            .map_err(|e| UploadError::BadRequest(format!("the body is not JSON: {e}")))?;
        let operations = request["operations"]
            .as_array()
            .ok_or_else(|| UploadError::BadRequest("no `operations` array".into()))?;
        let (mut client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            // Errors surface on the client's next call.
            let _ = connection.await;
        });
        let tx = client.transaction().await?;
        for operation in operations {
            apply(&tx, operation).await?;
        }
        tx.commit().await?;
        tracing::info!(
            %user,
            transaction_id = request["transaction_id"].as_i64(),
            operations = operations.len(),
            "demo backend applied an upload"
        );
        Ok(operations.len())
    }
}

async fn apply(tx: &tokio_postgres::Transaction<'_>, operation: &Value) -> Result<(), UploadError> {
    let bad = |what: &str| UploadError::BadRequest(format!("{what} in {operation}"));
    let table = operation["type"].as_str().ok_or_else(|| bad("no `type`"))?;
    if !WRITABLE_TABLES.contains(&table) {
        return Err(UploadError::BadRequest(format!(
            "table {table:?} is not writable (the demo backend writes {WRITABLE_TABLES:?})"
        )));
    }
    // Owned: a borrowed `&str` parameter makes the future's Send bound unprovable (rust#96865).
    let id: String = operation["id"].as_str().ok_or_else(|| bad("no `id`"))?.to_owned();
    let table_name: String = table.to_owned();
    let data = match &operation["data"] {
        Value::Object(data) => data.clone(),
        Value::Null => serde_json::Map::new(),
        _ => return Err(bad("`data` is not an object")),
    };
    // Column names come from the client: only the table's real columns get into the SQL, quoted.
    let known: BTreeSet<String> = tx
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = $1",
            &[&table_name],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut columns = Vec::new();
    for column in data.keys().filter(|c| *c != "id") {
        if !known.contains(column) {
            return Err(UploadError::BadRequest(format!(
                "{table} has no column {column:?}"
            )));
        }
        columns.push(format!("\"{column}\""));
    }
    let data = Value::Object(data).to_string();
    match operation["op"].as_str().ok_or_else(|| bad("no `op`"))? {
        "PUT" => {
            let selected: Vec<String> = columns.iter().map(|c| format!("r.{c}")).collect();
            let updates: Vec<String> = columns.iter().map(|c| format!("{c} = excluded.{c}")).collect();
            let on_conflict = if updates.is_empty() {
                "DO NOTHING".to_owned()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            let sql = format!(
                "INSERT INTO \"{table}\" (id{comma}{columns}) SELECT $1{comma}{selected}
                 FROM json_populate_record(NULL::\"{table}\", $2::text::json) r
                 ON CONFLICT (id) {on_conflict}",
                comma = if columns.is_empty() { "" } else { ", " },
                columns = columns.join(", "),
                selected = selected.join(", "),
            );
            tx.execute(&sql, &[&id, &data]).await?;
        }
        "PATCH" if columns.is_empty() => {}
        "PATCH" => {
            let updates: Vec<String> = columns.iter().map(|c| format!("{c} = r.{c}")).collect();
            let sql = format!(
                "UPDATE \"{table}\" t SET {}
                 FROM json_populate_record(NULL::\"{table}\", $2::text::json) r WHERE t.id = $1",
                updates.join(", ")
            );
            tx.execute(&sql, &[&id, &data]).await?;
        }
        "DELETE" => {
            tx.execute(&format!("DELETE FROM \"{table}\" WHERE id = $1"), &[&id])
                .await?;
        }
        other => return Err(UploadError::BadRequest(format!("unknown op {other:?}"))),
    }
    Ok(())
}

/// Binds the backend's listener; port 0 picks a free one.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}
