//! The connections of a suite's records: the default one runs SQL on Postgres; a named one runs a
//! query in that user's synced client database, after bringing it up to date.
//!
//! A user's client is the real client SDK (`syncgate-client`) on a SQLite file of its own, syncing
//! over HTTP on loopback with a token signed for the user. Before each of its queries: the gateway
//! catches up with Postgres ([`Deployment::catch_up`]), then the client syncs once on a new stream —
//! whose first checkpoint is the gateway's latest, so at or past the caught-up one — and the runner
//! checks that the checkpoint it applied is not older than the caught-up one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ValueRef;
use serde_json::{Value, json};
use sqllogictest::{DBOutput, DefaultColumnType};
use syncgate_client::{
    BackendConnector, ClientError, Credentials, CrudTransaction, LocalDatabase, RequestOptions, Schema,
    SyncDriver, SyncOptions,
};
use tokio::sync::Mutex as AsyncMutex;

use super::SuiteError;
use super::deployment::Deployment;
use super::directives::UserSpec;

/// Backstop for one client sync; a sync on loopback takes milliseconds.
const CLIENT_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What every connection of a suite shares.
pub struct SuiteState {
    pub deployment: AsyncMutex<Deployment>,
    pub users: BTreeMap<String, UserSpec>,
    /// Where the users' client database files live (the suite's temporary directory).
    pub client_dir: PathBuf,
    /// The connection the next record runs on; the runner sets it before each record, and
    /// [`SuiteConnection::open`] reads it (sqllogictest's connection factory is not told the name).
    pub next_connection: Mutex<Option<String>>,
    /// The rows of the last user query with the buckets each came from, for failure reports.
    pub last_user_query: Mutex<Option<AnnotatedQuery>>,
}

/// A user query's actual rows, each with the buckets that synced it.
#[derive(Debug, Clone)]
pub struct AnnotatedQuery {
    pub user: String,
    pub rows: Vec<(Vec<String>, Vec<String>)>,
    /// Why rows carry no buckets (no `id` column), if so.
    pub note: Option<String>,
    /// Every bucket the user holds, with its row count.
    pub buckets: Vec<(String, u64)>,
}

impl std::fmt::Display for AnnotatedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "actual rows of {}, with the bucket(s) that synced each:",
            self.user
        )?;
        if self.rows.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for (row, buckets) in &self.rows {
            let buckets = if buckets.is_empty() {
                "?".to_owned()
            } else {
                buckets.join(", ")
            };
            writeln!(f, "  {}    <- {buckets}", row.join(" "))?;
        }
        if let Some(note) = &self.note {
            writeln!(f, "  ({note})")?;
        }
        write!(f, "buckets of {}:", self.user)?;
        if self.buckets.is_empty() {
            write!(f, " none")?;
        }
        for (bucket, rows) in &self.buckets {
            write!(f, "\n  {bucket}: {rows} row(s)")?;
        }
        Ok(())
    }
}

/// One named connection of a suite.
pub enum SuiteConnection {
    Postgres(Arc<SuiteState>),
    /// Boxed: a user's client is far larger than the Postgres variant.
    User(Box<UserClient>),
}

impl SuiteConnection {
    /// The connection the runner announced in [`SuiteState::next_connection`].
    pub fn open(state: &Arc<SuiteState>) -> Result<SuiteConnection, SuiteError> {
        let name = state
            .next_connection
            .lock()
            .map_err(|_| SuiteError::Usage("a connection lock was poisoned".into()))?
            .clone();
        let Some(name) = name else {
            return Ok(SuiteConnection::Postgres(Arc::clone(state)));
        };
        let Some(spec) = state.users.get(&name) else {
            return Err(SuiteError::Usage(format!(
                "connection {name}: no `# user {name}: {{…}}` line in the suite's header declares this user"
            )));
        };
        let db_path = state.client_dir.join(format!("client-{name}.db"));
        Ok(SuiteConnection::User(Box::new(UserClient {
            name,
            spec: spec.clone(),
            db_path,
            state: Arc::clone(state),
        })))
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for SuiteConnection {
    type Error = SuiteError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SuiteError> {
        match self {
            SuiteConnection::Postgres(state) => run_postgres(state, sql).await,
            SuiteConnection::User(user) => user.query(sql).await,
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        match self {
            SuiteConnection::Postgres(_) => "postgres",
            SuiteConnection::User(_) => "syncgate-client",
        }
    }

    /// Suites synchronise by catching up (see the module docs); a `sleep` record is refused before it
    /// gets here, so this is never a way to wait for sync.
    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

async fn run_postgres(state: &SuiteState, sql: &str) -> Result<DBOutput<DefaultColumnType>, SuiteError> {
    let deployment = state.deployment.lock().await;
    let messages = deployment
        .postgres
        .simple_query(sql)
        .await
        .map_err(|e| SuiteError::Statement(postgres_error_text(&e)))?;
    let mut rows = Vec::new();
    let mut columns = None;
    let mut affected = 0;
    for message in messages {
        match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                rows.push((0..row.len()).map(|i| cell_text(row.get(i))).collect::<Vec<_>>());
            }
            tokio_postgres::SimpleQueryMessage::RowDescription(description) => {
                columns = Some(description.len());
            }
            tokio_postgres::SimpleQueryMessage::CommandComplete(count) => affected = count,
            _ => {}
        }
    }
    Ok(match columns {
        Some(columns) => DBOutput::Rows {
            types: vec![DefaultColumnType::Any; columns],
            rows,
        },
        None => DBOutput::StatementComplete(affected),
    })
}

/// The server's message (and detail) rather than tokio-postgres's generic "db error".
fn postgres_error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.code().code(), db.message()),
            None => format!("{}: {}", db.code().code(), db.message()),
        },
        None => error.to_string(),
    }
}

/// sqllogictest's conventions: NULL as `NULL`, an empty string as `(empty)` (whitespace is normalised
/// away otherwise).
fn cell_text(value: Option<&str>) -> String {
    match value {
        None => "NULL".to_owned(),
        Some("") => "(empty)".to_owned(),
        Some(text) => text.to_owned(),
    }
}

/// A user's client: its database file and what its token and requests carry.
pub struct UserClient {
    name: String,
    spec: UserSpec,
    db_path: PathBuf,
    state: Arc<SuiteState>,
}

impl UserClient {
    async fn query(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SuiteError> {
        let (checkpoint, endpoint, token, postgres_schema) = {
            let mut deployment = self.state.deployment.lock().await;
            let checkpoint = deployment.catch_up().await?;
            let token = deployment.token(&self.spec.sub, &self.spec.claims)?;
            let schema = postgres_tables(&deployment.postgres).await?;
            (checkpoint, deployment.endpoint.clone(), token, schema)
        };
        let db = self.sync_once(endpoint, token).await?;
        let applied = db.applied_checkpoint().map_err(self.client_error())?;
        if applied.is_none_or(|op| op < checkpoint.op_id) {
            return Err(SuiteError::Sync {
                user: self.name.clone(),
                message: format!(
                    "the client applied checkpoint {applied:?}, older than the gateway's caught-up checkpoint {}",
                    checkpoint.op_id
                ),
            });
        }
        let name = self.name.clone();
        let sql = sql.to_owned();
        let (output, annotated) =
            tokio::task::spawn_blocking(move || query_client(db, &name, &sql, &postgres_schema))
                .await
                .map_err(|e| SuiteError::Usage(format!("the query task failed: {e}")))??;
        *self
            .state
            .last_user_query
            .lock()
            .map_err(|_| SuiteError::Usage("a lock was poisoned".into()))? = Some(annotated);
        Ok(output)
    }

    /// Runs the client until it has applied the first checkpoint of a new stream.
    async fn sync_once(&self, endpoint: String, token: String) -> Result<LocalDatabase, SuiteError> {
        let db = LocalDatabase::open(&self.db_path).map_err(self.client_error())?;
        let options = SyncOptions {
            stop_after_first_sync: true,
            // A failed stream is a failed query, reported at once with the client's error.
            max_consecutive_failures: Some(1),
            request: RequestOptions {
                client_parameters: self.spec.parameters.clone(),
                stream_subscriptions: self.spec.subscriptions.clone(),
            },
            ..SyncOptions::default()
        };
        let mut driver = SyncDriver::new(db, FixedCredentials(Credentials { endpoint, token }), options);
        match tokio::time::timeout(CLIENT_SYNC_TIMEOUT, driver.run()).await {
            Ok(Ok(())) => Ok(driver.into_database()),
            Ok(Err(error)) => Err(self.client_error()(error)),
            Err(_) => Err(SuiteError::Timeout(format!(
                "{}'s client did not apply a checkpoint within {CLIENT_SYNC_TIMEOUT:?}",
                self.name
            ))),
        }
    }

    fn client_error(&self) -> impl Fn(ClientError) -> SuiteError + '_ {
        |error| SuiteError::Sync {
            user: self.name.clone(),
            message: error.to_string(),
        }
    }
}

/// Hands the driver the user's credentials; a suite's clients never write locally.
struct FixedCredentials(Credentials);

impl BackendConnector for FixedCredentials {
    async fn fetch_credentials(&self) -> Result<Credentials, ClientError> {
        Ok(self.0.clone())
    }

    async fn upload_data(&self, _transaction: &CrudTransaction) -> Result<(), ClientError> {
        Err(ClientError::Connector(
            "rule suites make no local writes in client databases".into(),
        ))
    }
}

/// A client-schema column type for a Postgres column: integers and booleans as integer, floats as real,
/// everything else (numeric included, which syncs as text) as text.
fn client_type(postgres_type: &str) -> &'static str {
    match postgres_type {
        "smallint" | "integer" | "bigint" | "boolean" => "integer",
        "real" | "double precision" => "real",
        _ => "text",
    }
}

/// Table → columns (name, client type) of the suite's database, for the client schema.
async fn postgres_tables(
    postgres: &tokio_postgres::Client,
) -> Result<BTreeMap<String, Vec<(String, &'static str)>>, SuiteError> {
    let rows = postgres
        .query(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
             ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .map_err(SuiteError::postgres("reading the tables for the client schema"))?;
    let mut tables: BTreeMap<String, Vec<(String, &'static str)>> = BTreeMap::new();
    for row in rows {
        let (table, column, data_type): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        tables
            .entry(table)
            .or_default()
            .push((column, client_type(&data_type)));
    }
    Ok(tables)
}

/// Gives the client a schema showing everything it synced, runs `sql` (read-only) and annotates the rows.
///
/// The schema is one table per Postgres table (its columns), plus per synced row type the keys its rows
/// carry that no column has (aliases, row types the rules rename): so a query sees every synced value,
/// and a table the user synced nothing of still exists (empty).
fn query_client(
    mut db: LocalDatabase,
    user: &str,
    sql: &str,
    postgres: &BTreeMap<String, Vec<(String, &'static str)>>,
) -> Result<(DBOutput<DefaultColumnType>, AnnotatedQuery), SuiteError> {
    let sqlite = |e: rusqlite::Error| SuiteError::Sync {
        user: user.to_owned(),
        message: e.to_string(),
    };
    let mut tables: BTreeMap<String, Vec<(String, &'static str)>> = postgres
        .iter()
        .filter(|(table, _)| !table.starts_with("sg_"))
        .map(|(table, columns)| {
            let columns = columns.iter().filter(|(c, _)| c != "id").cloned().collect();
            (table.clone(), columns)
        })
        .collect();
    {
        let mut statement = db
            .connection()
            .prepare("SELECT type, data FROM sg_data")
            .map_err(sqlite)?;
        let synced = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
            .map_err(sqlite)?;
        for row in synced {
            let (row_type, data) = row.map_err(sqlite)?;
            if row_type.starts_with("sg_") {
                continue;
            }
            let Ok(Value::Object(values)) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let columns = tables.entry(row_type).or_default();
            for (key, value) in values {
                if key != "id" && !columns.iter().any(|(c, _)| *c == key) {
                    let column_type = match value {
                        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                        Value::Number(_) => "real",
                        _ => "text",
                    };
                    columns.push((key, column_type));
                }
            }
        }
    }
    let schema = json!({"tables": tables.iter().map(|(name, columns)| json!({
        "name": name,
        "columns": columns.iter().map(|(c, t)| json!({"name": c, "type": t})).collect::<Vec<_>>(),
    })).collect::<Vec<_>>()});
    let schema = Schema::from_json(&schema.to_string()).map_err(|e| SuiteError::Sync {
        user: user.to_owned(),
        message: format!("the client schema derived from the tables: {e}"),
    })?;
    db.set_schema(&schema).map_err(|e| SuiteError::Sync {
        user: user.to_owned(),
        message: e.to_string(),
    })?;

    let connection = db.connection();
    let mut statement = connection
        .prepare(sql)
        .map_err(|e| SuiteError::Statement(e.to_string()))?;
    if !statement.readonly() {
        return Err(SuiteError::Usage(format!(
            "connection {user} only reads its synced database; write to Postgres on the default connection"
        )));
    }
    let column_count = statement.column_count();
    let id_column = (0..column_count).find(|&i| statement.column_name(i).is_ok_and(|n| n == "id"));
    let mut raw_rows = statement
        .query([])
        .map_err(|e| SuiteError::Statement(e.to_string()))?;
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    while let Some(row) = raw_rows
        .next()
        .map_err(|e| SuiteError::Statement(e.to_string()))?
    {
        let mut cells = Vec::with_capacity(column_count);
        for i in 0..column_count {
            cells.push(sqlite_text(
                row.get_ref(i).map_err(|e| SuiteError::Statement(e.to_string()))?,
            ));
        }
        ids.push(id_column.and_then(|i| row.get::<_, Option<String>>(i).ok().flatten()));
        rows.push(cells);
    }
    drop(raw_rows);
    drop(statement);

    // Row types the query names: an id is unique only within its type.
    let words: BTreeSet<String> = sql
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map(str::to_ascii_lowercase)
        .collect();
    let named_types: Vec<&String> = tables
        .keys()
        .filter(|t| words.contains(&t.to_ascii_lowercase()))
        .collect();
    let named_types = serde_json::to_string(&named_types).unwrap_or_else(|_| "[]".into());
    let mut annotated_rows = Vec::with_capacity(rows.len());
    {
        let mut buckets_of = connection
            .prepare(
                "SELECT DISTINCT bucket FROM sg_oplog
                 WHERE row_id = ?1 AND row_type IN (SELECT value FROM json_each(?2)) ORDER BY bucket",
            )
            .map_err(sqlite)?;
        for (cells, id) in rows.iter().zip(&ids) {
            let buckets = match id {
                Some(id) => buckets_of
                    .query_map(rusqlite::params![id, named_types], |row| row.get::<_, String>(0))
                    .map_err(sqlite)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(sqlite)?,
                None => Vec::new(),
            };
            annotated_rows.push((cells.clone(), buckets));
        }
    }
    let buckets = {
        let mut statement = connection
            .prepare("SELECT bucket, count(*) FROM sg_oplog GROUP BY bucket ORDER BY bucket")
            .map_err(sqlite)?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))
            .map_err(sqlite)?;
        rows.map(|r| r.map(|(b, n)| (b, u64::try_from(n).unwrap_or(0))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite)?
    };
    let annotated = AnnotatedQuery {
        user: user.to_owned(),
        rows: annotated_rows,
        note: id_column
            .is_none()
            .then(|| "select the `id` column to see each row's buckets".to_owned()),
        buckets,
    };
    let output = DBOutput::Rows {
        types: vec![DefaultColumnType::Any; column_count],
        rows,
    };
    Ok((output, annotated))
}

/// A SQLite value in sqllogictest's text conventions (see [`cell_text`]); blobs as hex.
fn sqlite_text(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(text) => cell_text(Some(&String::from_utf8_lossy(text))),
        ValueRef::Blob(bytes) => bytes.iter().fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_sqllogictest_conventions() {
        assert_eq!(cell_text(None), "NULL");
        assert_eq!(cell_text(Some("")), "(empty)");
        assert_eq!(sqlite_text(ValueRef::Real(1.5)), "1.5");
        assert_eq!(sqlite_text(ValueRef::Blob(&[0, 255])), "00ff");
        assert_eq!(client_type("bigint"), "integer");
        assert_eq!(client_type("numeric"), "text");
    }

    #[test]
    fn annotations_name_the_buckets_of_each_row() {
        let annotated = AnnotatedQuery {
            user: "alice".into(),
            rows: vec![(
                vec!["t1".into(), "Milk".into()],
                vec!["user_lists[\"groceries\"]".into()],
            )],
            note: None,
            buckets: vec![("user_lists[\"groceries\"]".into(), 3)],
        };
        let text = annotated.to_string();
        assert!(text.contains("t1 Milk    <- user_lists[\"groceries\"]"), "{text}");
        assert!(text.contains("user_lists[\"groceries\"]: 3 row(s)"), "{text}");
    }
}
