//! Up-front checks of the source database, so misconfiguration fails at start with a fix instead of
//! as an obscure replication error later (invariant 8: what a read-only source must grant us).

use tokio_postgres::Client;
use tracing::info;

use super::SourceError;
use super::snapshot::{TableName, quote_ident};

/// What the replicator is about to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRequirements {
    /// pgoutput's publication; `None` when new versions stream through the syncgate plugin, which
    /// needs none.
    pub publication: Option<String>,
    pub tables: Vec<TableName>,
}

/// Checks `wal_level`, the role's REPLICATION attribute, the publication (if any) and its tables,
/// SELECT on them, and that each has a key the stream can send for UPDATE and DELETE. Every problem found is
/// reported in one [`SourceError::Configuration`], one line each, with what to run to fix it.
pub async fn check_source(client: &Client, req: &SourceRequirements) -> Result<(), SourceError> {
    let q = |context: &str| SourceError::query(format!("source check: {context}"));
    let mut problems = Vec::new();

    let wal_level: String = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(q("wal_level"))?
        .get(0);
    if wal_level != "logical" {
        problems.push(format!(
            "wal_level is '{wal_level}'; set wal_level = logical in postgresql.conf and restart Postgres"
        ));
    }

    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(q("role"))?;
    let (role, can_replicate): (String, bool) = (row.get(0), row.get(1));
    if !can_replicate {
        problems.push(format!(
            "role {role} may not replicate; run: ALTER ROLE {} WITH REPLICATION",
            quote_ident(&role)
        ));
    }

    let publication = req.publication.as_deref().unwrap_or_default();
    let publication_exists = match &req.publication {
        None => false,
        Some(name) => {
            let exists = client
                .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
                .await
                .map_err(q("publication"))?
                .is_some();
            if !exists {
                let tables: Vec<String> = req.tables.iter().map(TableName::quoted).collect();
                problems.push(format!(
                    "publication {name} does not exist; run: CREATE PUBLICATION {} FOR TABLE {}",
                    quote_ident(name),
                    tables.join(", ")
                ));
            }
            exists
        }
    };

    for table in &req.tables {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
                        has_table_privilege(c.oid, 'SELECT'),
                        EXISTS (SELECT 1 FROM pg_publication_tables p
                                WHERE p.pubname = $3 AND p.schemaname = n.nspname AND p.tablename = c.relname)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.name, &publication],
            )
            .await
            .map_err(q("tables"))?;
        let Some(row) = row else {
            problems.push(format!(
                "table {table} does not exist (check the schema and the name's case)"
            ));
            continue;
        };
        let (identity, has_pk, has_ident_index, can_select, published): (String, bool, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let quoted = table.quoted();
        if publication_exists && !published {
            problems.push(format!(
                "table {table} is not in publication {publication}; run: ALTER PUBLICATION {} ADD TABLE {quoted}",
                quote_ident(publication)
            ));
        }
        if !can_select {
            problems.push(format!(
                "role {role} cannot read {table}; run: GRANT SELECT ON {quoted} TO {}",
                quote_ident(&role)
            ));
        }
        let keyed = match identity.as_str() {
            "d" => has_pk,
            "i" => has_ident_index,
            "f" => true,
            _ => false,
        };
        if !keyed {
            problems.push(format!(
                "table {table} has no primary key or replica identity, so its updates and deletes cannot be \
                 replicated; add a primary key, or run: ALTER TABLE {quoted} REPLICA IDENTITY FULL"
            ));
        }
    }

    if problems.is_empty() {
        info!(publication = ?req.publication, tables = req.tables.len(), "source checks passed");
        Ok(())
    } else {
        Err(SourceError::Configuration(problems.join("\n")))
    }
}
