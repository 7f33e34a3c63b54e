//! The initial copy, through a snapshot exported by slot creation.
//!
//! On an ordinary connection: session settings first (so values are formatted exactly as the
//! replication session formats them), then `BEGIN ISOLATION LEVEL REPEATABLE READ` and
//! `SET TRANSACTION SNAPSHOT` as the transaction's first statement. This must happen before the
//! replication session runs its next command, which ends the exported snapshot. Rows are then read in
//! text form (simple query protocol), in primary-key order, in chunks, so a table of any size is read
//! with bounded memory and a later crash can resume after the last copied key.

use tokio_postgres::{Client, NoTls, SimpleQueryMessage, SimpleQueryRow};
use tracing::{debug, info};

use super::{SESSION_SETTINGS, SourceError};

/// A schema-qualified table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."name"`, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

pub(crate) fn quote_literal(text: &str) -> String {
    // standard_conforming_strings is on (the default since 9.1), so only quotes need doubling.
    format!("'{}'", text.replace('\'', "''"))
}

/// What to copy from a table: its columns in pgoutput's order, and the key to order and chunk by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLayout {
    pub table: TableName,
    pub oid: u32,
    pub columns: Vec<String>,
    pub type_oids: Vec<u32>,
    /// Indexes into `columns`: the primary key, else the replica identity index; empty when the
    /// table has neither (replica identity FULL), in which case it is copied in one chunk.
    pub key: Vec<usize>,
    /// Indexes into `columns` that identify a row: `key`, or every column when there is no key
    /// (replica identity FULL without a primary key).
    pub identity: Vec<usize>,
}

/// One chunk of rows, as received: read the values with [`Chunk::values`]. Kept as the protocol's rows
/// rather than copied into a `String` per value, which cost an allocation, a copy and a free per value.
#[derive(Debug)]
pub struct Chunk {
    pub rows: Vec<SimpleQueryRow>,
    /// Pass to the next [`SnapshotReader::copy_chunk`]; `None` when the table is done.
    pub resume_after: Option<Vec<String>>,
}

impl Chunk {
    /// The values of one of the chunk's rows, in column order, into `values` (cleared first); `None` is
    /// SQL NULL.
    pub fn values<'r>(row: &'r SimpleQueryRow, values: &mut Vec<Option<&'r str>>) {
        values.clear();
        // In bounds, and the values are UTF-8 (the session's client encoding), as when they were received.
        values.extend((0..row.len()).map(|i| row.get(i)));
    }
}

/// Columns (as pgoutput sends them: not dropped, not generated, by attnum), their types, the copy key
/// and the row identity, read from the catalog on any connection.
pub async fn table_layout(client: &Client, table: &TableName) -> Result<TableLayout, SourceError> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid,
                    coalesce(a.attnum = ANY (pk.indkey::int2[]), false),
                    coalesce(a.attnum = ANY (ri.indkey::int2[]), false),
                    c.oid
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
             LEFT JOIN pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0
               AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(SourceError::query(format!("reading the columns of {table}")))?;
    let Some(first) = rows.first() else {
        return Err(SourceError::Configuration(format!(
            "table {table} does not exist or has no columns visible to syncgate"
        )));
    };
    let oid: u32 = first.get(4);
    let columns: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let type_oids: Vec<u32> = rows.iter().map(|r| r.get(1)).collect();
    let pk: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].get::<_, bool>(2)).collect();
    let key = if pk.is_empty() {
        (0..rows.len()).filter(|&i| rows[i].get::<_, bool>(3)).collect()
    } else {
        pk
    };
    let identity = if key.is_empty() {
        (0..columns.len()).collect()
    } else {
        key.clone()
    };
    Ok(TableLayout {
        table: table.clone(),
        oid,
        columns,
        type_oids,
        key,
        identity,
    })
}

/// A REPEATABLE READ transaction on an imported snapshot.
#[derive(Debug)]
pub struct SnapshotReader {
    client: Client,
    snapshot_name: String,
}

async fn set_session(client: &Client) -> Result<(), SourceError> {
    let settings: Vec<String> = SESSION_SETTINGS
        .iter()
        .map(|(name, value)| format!("SET {name} = {}", quote_literal(value)))
        .collect();
    client
        .batch_execute(&settings.join("; "))
        .await
        .map_err(SourceError::query("setting session options"))
}

impl SnapshotReader {
    /// Connects with tokio-postgres (the connection task runs on the current runtime) and imports
    /// `snapshot_name`.
    pub async fn connect(url: &str, snapshot_name: &str) -> Result<SnapshotReader, SourceError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(SourceError::query("connecting for the initial snapshot"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // The client sees the failure on its next call; this only records the cause.
                debug!(%error, "snapshot connection ended");
            }
        });
        SnapshotReader::import(client, snapshot_name).await
    }

    /// Imports `snapshot_name` on an open connection that is not in a transaction.
    pub async fn import(client: Client, snapshot_name: &str) -> Result<SnapshotReader, SourceError> {
        set_session(&client).await?;
        // SET TRANSACTION SNAPSHOT must be the transaction's first statement.
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(snapshot_name)
            ))
            .await
            .map_err(SourceError::query(format!("importing snapshot {snapshot_name}")))?;
        info!(snapshot = snapshot_name, "imported exported snapshot");
        Ok(SnapshotReader {
            client,
            snapshot_name: snapshot_name.to_owned(),
        })
    }

    /// Starts a REPEATABLE READ transaction on its own snapshot (resuming a copy after the exported
    /// snapshot is gone) and returns the WAL position it was taken at: every transaction the snapshot
    /// sees committed below it, so streaming must pass it before the copied rows are consistent.
    pub async fn begin_fresh(client: Client) -> Result<(SnapshotReader, super::Lsn), SourceError> {
        set_session(&client).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(SourceError::query("starting the snapshot transaction"))?;
        // The first query fixes the snapshot; the WAL position read after it is past every commit it sees.
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(SourceError::query("reading the snapshot's WAL position"))?
            .get(0);
        let lsn = lsn
            .parse()
            .map_err(|e| SourceError::Protocol(format!("pg_current_wal_lsn: {e}")))?;
        info!(%lsn, "started a fresh snapshot to resume the initial copy");
        Ok((
            SnapshotReader {
                client,
                snapshot_name: String::new(),
            },
            lsn,
        ))
    }

    pub fn snapshot_name(&self) -> &str {
        &self.snapshot_name
    }

    /// Columns (as pgoutput sends them: not dropped, not generated, by attnum) and the copy key.
    pub async fn layout(&self, table: &TableName) -> Result<TableLayout, SourceError> {
        table_layout(&self.client, table).await
    }

    /// Reads up to `limit` rows after `resume_after` (a key from the previous chunk), in key order.
    pub async fn copy_chunk(
        &self,
        layout: &TableLayout,
        resume_after: Option<&[String]>,
        limit: usize,
    ) -> Result<Chunk, SourceError> {
        let columns: Vec<String> = layout.columns.iter().map(|c| quote_ident(c)).collect();
        let key: Vec<&str> = layout.key.iter().map(|&i| columns[i].as_str()).collect();
        let mut sql = format!("SELECT {} FROM {}", columns.join(", "), layout.table.quoted());
        if key.is_empty() {
            // No key to resume by: one chunk with everything.
            debug!(table = %layout.table, "copying table without key in one chunk");
        } else {
            if let Some(after) = resume_after {
                let literals: Vec<String> = after.iter().map(|v| quote_literal(v)).collect();
                sql.push_str(&format!(
                    " WHERE ({}) > ({})",
                    key.join(", "),
                    literals.join(", ")
                ));
            }
            sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", key.join(", ")));
        }
        let messages = self
            .client
            .simple_query(&sql)
            .await
            .map_err(SourceError::query(format!("copying {}", layout.table)))?;
        let rows: Vec<SimpleQueryRow> = messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect();
        let resume_after = if key.is_empty() || rows.len() < limit {
            None
        } else {
            rows.last().map(|last| {
                layout
                    .key
                    .iter()
                    .map(|&i| last.get(i).unwrap_or_default().to_owned())
                    .collect()
            })
        };
        debug!(table = %layout.table, rows = rows.len(), "copied chunk");
        Ok(Chunk { rows, resume_after })
    }

    /// Ends the snapshot transaction and hands the connection back.
    pub async fn finish(self) -> Result<Client, SourceError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(SourceError::query("ending the snapshot transaction"))?;
        Ok(self.client)
    }
}
