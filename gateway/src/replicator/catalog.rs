//! Catalog queries on an ordinary (non-replication) connection: column types for the value mapping,
//! the publication's tables, WAL positions, write-checkpoint markers and slot health.
//!
//! Everything here is read-only on the app's data (invariant 8): `pg_logical_emit_message` writes
//! only WAL, and slot management touches only syncgate's own slots.

use std::collections::HashMap;

use syncgate_rules::pgtype::PgType;
use tokio_postgres::Client;
use tracing::warn;

use crate::source::{Lsn, OutputPlugin, SourceError, TableName};

/// Prefix of the write-checkpoint marker messages syncgate emits; `powersync` markers (emitted by a
/// PowerSync service sharing the database, or by tooling) are honoured too.
pub const MARKER_PREFIX: &str = "powersync";

/// Whether a logical message with this prefix is a write-checkpoint marker (PROTOCOL §4.4).
pub fn is_marker_prefix(prefix: &str) -> bool {
    prefix == MARKER_PREFIX || prefix == "syncgate"
}

/// State of a replication slot as `pg_replication_slots` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (Postgres 13+).
    pub wal_status: Option<String>,
    /// Bytes of WAL the slot keeps from being removed.
    pub retained_bytes: Option<u64>,
    pub confirmed_flush: Option<Lsn>,
    /// The output plugin the slot was created with (`pg_replication_slots.plugin`).
    pub plugin: Option<String>,
}

impl SlotStatus {
    /// The server removed WAL the slot still needed: it can never stream again.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// What [`Catalog::drop_slot_when_released`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotDrop {
    /// There was no such slot.
    Absent,
    Dropped,
    /// Still held by a walsender after waiting.
    InUse,
}

/// An ordinary connection to the source database with a type cache.
pub struct Catalog {
    client: Client,
    types: HashMap<u32, PgType>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("types", &self.types.len())
            .finish_non_exhaustive()
    }
}

fn parse_lsn(text: &str, what: &str) -> Result<Lsn, SourceError> {
    text.parse()
        .map_err(|e| SourceError::Protocol(format!("{what}: {e}")))
}

impl Catalog {
    pub fn new(client: Client) -> Catalog {
        Catalog {
            client,
            types: HashMap::new(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The mapping type of a column type OID: built-ins directly, others (enums, domains, composites,
    /// ranges, arrays of those) from `pg_type`, cached. An OID the catalog does not know maps as text.
    pub async fn column_type(&mut self, oid: u32) -> Result<PgType, SourceError> {
        if let Some(ty) = PgType::from_builtin_oid(oid).or_else(|| self.types.get(&oid).cloned()) {
            return Ok(ty);
        }
        let ty = self.resolve(oid, 0).await?;
        self.types.insert(oid, ty.clone());
        Ok(ty)
    }

    fn resolve(
        &mut self,
        oid: u32,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<PgType, SourceError>> + Send + '_>> {
        Box::pin(async move {
            if let Some(ty) = PgType::from_builtin_oid(oid).or_else(|| self.types.get(&oid).cloned()) {
                return Ok(ty);
            }
            // A composite containing itself through an array is legal; stop rather than recurse forever.
            if depth > 16 {
                return Ok(PgType::Other(format!("oid {oid}")));
            }
            let row = self
                .client
                .query_opt(
                    "SELECT t.typname::text, t.typtype::text, t.typbasetype, t.typelem, t.typrelid,
                            t.typcategory::text,
                            (SELECT rngsubtype FROM pg_range WHERE rngtypid = t.oid),
                            (SELECT rngsubtype FROM pg_range WHERE rngmultitypid = t.oid)
                     FROM pg_type t WHERE t.oid = $1",
                    &[&oid],
                )
                .await
                .map_err(SourceError::query(format!("looking up type {oid}")))?;
            let Some(row) = row else {
                warn!(oid, "column type not in pg_type; syncing its values as text");
                return Ok(PgType::Other(format!("oid {oid}")));
            };
            let name: String = row.get(0);
            let kind: String = row.get(1);
            let ty = match kind.as_str() {
                "d" => PgType::Domain {
                    name,
                    base: Box::new(self.resolve(row.get(2), depth + 1).await?),
                },
                "e" => PgType::Enum(name),
                "c" => {
                    let relid: u32 = row.get(4);
                    let attributes = self
                        .client
                        .query(
                            "SELECT attname::text, atttypid FROM pg_attribute
                             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                            &[&relid],
                        )
                        .await
                        .map_err(SourceError::query(format!(
                            "looking up the fields of type {name}"
                        )))?;
                    let mut fields = Vec::with_capacity(attributes.len());
                    for attribute in attributes {
                        let field_type = self.resolve(attribute.get(1), depth + 1).await?;
                        fields.push((attribute.get(0), field_type));
                    }
                    PgType::Composite { name, fields }
                }
                "r" => match row.get::<_, Option<u32>>(6) {
                    Some(subtype) => PgType::Range {
                        name,
                        element: Box::new(self.resolve(subtype, depth + 1).await?),
                    },
                    None => PgType::Other(name),
                },
                "m" => match row.get::<_, Option<u32>>(7) {
                    Some(subtype) => PgType::Multirange {
                        name,
                        element: Box::new(self.resolve(subtype, depth + 1).await?),
                    },
                    None => PgType::Other(name),
                },
                "b" if row.get::<_, String>(5) == "A" && row.get::<_, u32>(3) != 0 => {
                    PgType::Array(Box::new(self.resolve(row.get(3), depth + 1).await?))
                }
                _ => PgType::Other(name),
            };
            self.types.insert(oid, ty.clone());
            Ok(ty)
        })
    }

    /// Forgets cached custom types (after a relation message: an enum or composite may have changed).
    pub fn forget_types(&mut self) {
        self.types.clear();
    }

    /// Tables in `publication` (a `FOR ALL TABLES` publication lists every table).
    pub async fn publication_tables(&self, publication: &str) -> Result<Vec<TableName>, SourceError> {
        let rows = self
            .client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables
                 WHERE pubname = $1 ORDER BY 1, 2",
                &[&publication],
            )
            .await
            .map_err(SourceError::query("listing the publication's tables"))?;
        Ok(rows
            .iter()
            .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// Every ordinary table of the database outside the system schemas: what the syncgate plugin can
    /// stream (it needs no publication). Partitioned parents are left out, as a `FOR ALL TABLES`
    /// publication leaves them out: their rows are in (and stream from) the partitions.
    pub async fn user_tables(&self) -> Result<Vec<TableName>, SourceError> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(SourceError::query("listing the database's tables"))?;
        Ok(rows
            .iter()
            .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// Whether the server lets this role create a logical slot decoding with `plugin`: creates a
    /// temporary slot and drops it. `Err` carries the server's reason (library not installed, refused
    /// by `output_plugin_libraries`, no REPLICATION privilege, …). Like every logical slot creation it
    /// waits for transactions already running to end.
    pub async fn probe_output_plugin(&self, plugin: OutputPlugin) -> Result<(), String> {
        // Outside any slot prefix, so orphan cleanup never mistakes it for a version's slot; temporary, so
        // the server drops it even if this session dies before the explicit drop.
        // Slot names are cluster-wide: unique per process and per probe.
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let probe = format!(
            "sgprobe_{}_{}_{}",
            plugin.name(),
            std::process::id(),
            PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let created = self
            .client
            .query_one(
                "SELECT slot_name::text FROM pg_create_logical_replication_slot($1, $2, true)",
                &[&probe, &plugin.name()],
            )
            .await;
        if let Err(error) = created {
            return Err(match error.as_db_error() {
                Some(db) => db.message().to_owned(),
                None => error.to_string(),
            });
        }
        if let Err(error) = self.drop_slot(&probe).await {
            warn!(%error, slot = probe, "could not drop the probe slot; it goes away with this connection");
        }
        Ok(())
    }

    /// Which of `tables` exist (as ordinary or partitioned tables).
    pub async fn existing(&self, tables: &[TableName]) -> Result<Vec<bool>, SourceError> {
        let mut out = Vec::with_capacity(tables.len());
        for table in tables {
            let row = self
                .client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                    WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))",
                    &[&table.schema, &table.name],
                )
                .await
                .map_err(SourceError::query("checking which tables exist"))?;
            out.push(row.get(0));
        }
        Ok(out)
    }

    /// The current WAL insert position.
    pub async fn current_wal_lsn(&self) -> Result<Lsn, SourceError> {
        let text: String = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(SourceError::query("reading the WAL position"))?
            .get(0);
        parse_lsn(&text, "pg_current_wal_lsn")
    }

    /// Emits a non-transactional write-checkpoint marker and returns its LSN, so the stream moves past
    /// it even on an idle database (PROTOCOL §4.4).
    pub async fn emit_marker(&self) -> Result<Lsn, SourceError> {
        let text: String = self
            .client
            .query_one(
                "SELECT pg_logical_emit_message(false, $1, 'ping')::text",
                &[&MARKER_PREFIX],
            )
            .await
            .map_err(SourceError::query(
                "emitting a write-checkpoint marker (needs EXECUTE on pg_logical_emit_message)",
            ))?
            .get(0);
        parse_lsn(&text, "pg_logical_emit_message")
    }

    /// The slot's status, `None` when it does not exist.
    pub async fn slot_status(&self, slot_name: &str) -> Result<Option<SlotStatus>, SourceError> {
        let row = self
            .client
            .query_opt(
                "SELECT active, wal_status::text,
                        (pg_current_wal_lsn() - restart_lsn)::bigint,
                        confirmed_flush_lsn::text, plugin::text
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot_name],
            )
            .await
            .map_err(SourceError::query("reading replication slot status"))?;
        let Some(row) = row else { return Ok(None) };
        let retained: Option<i64> = row.get(2);
        let confirmed: Option<String> = row.get(3);
        Ok(Some(SlotStatus {
            active: row.get(0),
            wal_status: row.get(1),
            retained_bytes: retained.and_then(|b| u64::try_from(b).ok()),
            confirmed_flush: confirmed
                .map(|t| parse_lsn(&t, "confirmed_flush_lsn"))
                .transpose()?,
            plugin: row.get(4),
        }))
    }

    /// Names of logical slots starting with `prefix` in this database.
    pub async fn slots_with_prefix(&self, prefix: &str) -> Result<Vec<(String, bool)>, SourceError> {
        let rows = self
            .client
            .query(
                "SELECT slot_name::text, active FROM pg_replication_slots
                 WHERE slot_type = 'logical' AND database = current_database()
                   AND starts_with(slot_name::text, $1)
                 ORDER BY 1",
                &[&prefix],
            )
            .await
            .map_err(SourceError::query("listing replication slots"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Drops `slot` once no walsender holds it: the walsender of a session that just closed, or of a run
    /// that was killed, may keep the slot for a moment. Gives up after about 10 s.
    pub async fn drop_slot_when_released(&self, slot_name: &str) -> Result<SlotDrop, SourceError> {
        for _ in 0..50 {
            match self.slot_status(slot_name).await? {
                None => return Ok(SlotDrop::Absent),
                Some(status) if !status.active => {
                    self.drop_slot(slot_name).await?;
                    return Ok(SlotDrop::Dropped);
                }
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
        Ok(SlotDrop::InUse)
    }

    /// Drops one of syncgate's slots (must be inactive).
    pub async fn drop_slot(&self, slot_name: &str) -> Result<(), SourceError> {
        self.client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot_name])
            .await
            .map_err(SourceError::query(format!(
                "dropping replication slot {slot_name}"
            )))?;
        Ok(())
    }
}
