//! The current database's catalog, read through SPI (read-only): the tables replication could
//! deliver, their columns and types as the value mapping needs them, their keys, and publications.
//!
//! The column set is what logical replication sends (no dropped or generated columns), and column
//! types resolve exactly as the gateway's replicator resolves them (gateway/src/replicator/catalog.rs),
//! so rows read here map to the same synced values.

use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::spi::{self, SpiClient};
use syncgate_rules::pgtype::PgType;
use syncgate_rules::table::DEFAULT_CONNECTION_TAG;
use syncgate_rules::{SchemaTable, SourceSchema, SourceTable, TablePattern};

/// One table as replication would see it.
#[derive(Debug, Clone)]
pub struct CatalogTable {
    pub schema: String,
    pub name: String,
    pub columns: Vec<CatalogColumn>,
    /// `pg_class.relreplident`: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    pub has_primary_key: bool,
    pub has_identity_index: bool,
}

#[derive(Debug, Clone)]
pub struct CatalogColumn {
    pub name: String,
    pub type_oid: pg_sys::Oid,
    /// `format_type()`: the type as written in DDL (`character varying(20)`).
    pub type_name: String,
}

impl CatalogTable {
    /// `schema.name` as the gateway and the rules' diagnostics print it.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The name quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Whether updates and deletes of this table reach replication with a key.
    pub fn has_usable_identity(&self) -> bool {
        match self.replica_identity {
            'd' => self.has_primary_key,
            'i' => self.has_identity_index,
            'f' => true,
            _ => false,
        }
    }

    pub fn matches(&self, pattern: &TablePattern) -> bool {
        pattern.matches(&self.source_table())
    }

    /// The table as the rules' planner takes it (columns in table order).
    pub fn source_table(&self) -> SourceTable {
        let columns: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        SourceTable::new(&self.schema, &self.name, &columns)
    }
}

/// Every ordinary and partitioned table outside the system schemas, sorted by schema and name.
pub fn read_tables(client: &SpiClient<'_>) -> spi::Result<Vec<CatalogTable>> {
    let rows = client.select(
        "SELECT n.nspname::text, c.relname::text, c.relreplident::text,
                EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
                a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod)
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                                  AND a.attgenerated = ''
         WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
         ORDER BY n.nspname, c.relname, a.attnum",
        None,
        &[],
    )?;
    let mut tables: Vec<CatalogTable> = Vec::new();
    for row in rows {
        let schema: String = row.get(1)?.unwrap_or_default();
        let name: String = row.get(2)?.unwrap_or_default();
        let same_table = tables
            .last()
            .is_some_and(|t| t.schema == schema && t.name == name);
        if !same_table {
            let identity: String = row.get(3)?.unwrap_or_default();
            tables.push(CatalogTable {
                schema,
                name,
                columns: Vec::new(),
                replica_identity: identity.chars().next().unwrap_or('d'),
                has_primary_key: row.get(4)?.unwrap_or(false),
                has_identity_index: row.get(5)?.unwrap_or(false),
            });
        }
        // A table without columns has one row with NULL column fields.
        if let (Some(column), Some(type_oid), Some(type_name)) = (
            row.get::<String>(6)?,
            row.get::<pg_sys::Oid>(7)?,
            row.get::<String>(8)?,
        ) && let Some(table) = tables.last_mut()
        {
            table.columns.push(CatalogColumn {
                name: column,
                type_oid,
                type_name,
            });
        }
    }
    Ok(tables)
}

/// The catalog in the form the rules compiler validates against.
pub fn source_schema(tables: &[CatalogTable]) -> SourceSchema {
    SourceSchema {
        tables: tables
            .iter()
            .map(|t| SchemaTable {
                connection_tag: DEFAULT_CONNECTION_TAG.into(),
                schema: t.schema.clone(),
                name: t.name.clone(),
                columns: t
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_name.clone()))
                    .collect(),
            })
            .collect(),
    }
}

/// The tables of `publication`, or `None` when there is no such publication.
pub fn publication_tables(
    client: &SpiClient<'_>,
    publication: &str,
) -> spi::Result<Option<Vec<(String, String)>>> {
    let exists = !client
        .select(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            None,
            &[publication.into()],
        )?
        .is_empty();
    if !exists {
        return Ok(None);
    }
    let rows = client.select(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
        None,
        &[publication.into()],
    )?;
    let mut tables = Vec::new();
    for row in rows {
        tables.push((row.get(1)?.unwrap_or_default(), row.get(2)?.unwrap_or_default()));
    }
    Ok(Some(tables))
}

/// Column types for the value mapping: built-ins directly, others (enums, domains, composites,
/// ranges, arrays of those) from `pg_type`, cached for the call.
#[derive(Debug, Default)]
pub struct TypeResolver {
    cache: HashMap<pg_sys::Oid, PgType>,
}

/// A composite can contain itself through an array; stop there rather than recurse forever.
const MAX_TYPE_DEPTH: usize = 16;

impl TypeResolver {
    pub fn resolve(&mut self, client: &SpiClient<'_>, oid: pg_sys::Oid) -> spi::Result<PgType> {
        self.resolve_at(client, oid, 0)
    }

    fn resolve_at(&mut self, client: &SpiClient<'_>, oid: pg_sys::Oid, depth: usize) -> spi::Result<PgType> {
        if let Some(ty) = PgType::from_builtin_oid(oid.to_u32()).or_else(|| self.cache.get(&oid).cloned()) {
            return Ok(ty);
        }
        if depth > MAX_TYPE_DEPTH {
            return Ok(PgType::Other(format!("oid {}", oid.to_u32())));
        }
        let rows = client.select(
            "SELECT t.typname::text, t.typtype::text, t.typbasetype, t.typelem, t.typrelid,
                    t.typcategory::text,
                    (SELECT rngsubtype FROM pg_range WHERE rngtypid = t.oid),
                    (SELECT rngsubtype FROM pg_range WHERE rngmultitypid = t.oid)
             FROM pg_type t WHERE t.oid = $1",
            None,
            &[oid.into()],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(PgType::Other(format!("oid {}", oid.to_u32())));
        };
        let name: String = row.get(1)?.unwrap_or_default();
        let kind: String = row.get(2)?.unwrap_or_default();
        let base: Option<pg_sys::Oid> = row.get(3)?;
        let element: Option<pg_sys::Oid> = row.get(4)?;
        let relid: Option<pg_sys::Oid> = row.get(5)?;
        let category: String = row.get(6)?.unwrap_or_default();
        let range_subtype: Option<pg_sys::Oid> = row.get(7)?;
        let multirange_subtype: Option<pg_sys::Oid> = row.get(8)?;
        let ty = match (
            kind.as_str(),
            base,
            element,
            relid,
            range_subtype,
            multirange_subtype,
        ) {
            ("d", Some(base), ..) => PgType::Domain {
                name,
                base: Box::new(self.resolve_at(client, base, depth + 1)?),
            },
            ("e", ..) => PgType::Enum(name),
            ("c", _, _, Some(relid), ..) => {
                let fields = self.composite_fields(client, relid, depth)?;
                PgType::Composite { name, fields }
            }
            ("r", _, _, _, Some(subtype), _) => PgType::Range {
                name,
                element: Box::new(self.resolve_at(client, subtype, depth + 1)?),
            },
            ("m", _, _, _, _, Some(subtype)) => PgType::Multirange {
                name,
                element: Box::new(self.resolve_at(client, subtype, depth + 1)?),
            },
            ("b", _, Some(element), ..) if category == "A" && element != pg_sys::InvalidOid => {
                PgType::Array(Box::new(self.resolve_at(client, element, depth + 1)?))
            }
            _ => PgType::Other(name),
        };
        self.cache.insert(oid, ty.clone());
        Ok(ty)
    }

    fn composite_fields(
        &mut self,
        client: &SpiClient<'_>,
        relid: pg_sys::Oid,
        depth: usize,
    ) -> spi::Result<Vec<(String, PgType)>> {
        let rows = client.select(
            "SELECT attname::text, atttypid FROM pg_attribute
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            None,
            &[relid.into()],
        )?;
        let mut attributes = Vec::new();
        for row in rows {
            if let (Some(name), Some(type_oid)) = (row.get::<String>(1)?, row.get::<pg_sys::Oid>(2)?) {
                attributes.push((name, type_oid));
            }
        }
        let mut fields = Vec::with_capacity(attributes.len());
        for (name, type_oid) in attributes {
            fields.push((name, self.resolve_at(client, type_oid, depth + 1)?));
        }
        Ok(fields)
    }
}

/// Session settings under which values are read as text: the ones the value mapping assumes
/// (syncgate_rules::pgtype), which the gateway's replication session uses too.
const REPLICATION_TEXT_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
];

/// Runs `read` with the settings of [`REPLICATION_TEXT_SETTINGS`] in force, then puts the caller's
/// values back (transaction-local, so an error on the way aborts the transaction and undoes them).
pub fn with_replication_text_settings<T>(
    client: &SpiClient<'_>,
    read: impl FnOnce() -> spi::Result<T>,
) -> spi::Result<T> {
    let mut previous = Vec::with_capacity(REPLICATION_TEXT_SETTINGS.len());
    for (name, value) in REPLICATION_TEXT_SETTINGS {
        let old: Option<String> = client
            .select(
                "SELECT current_setting($1), set_config($1, $2, true)",
                Some(1),
                &[(*name).into(), (*value).into()],
            )?
            .first()
            .get(1)?;
        previous.push((*name, old.unwrap_or_default()));
    }
    let result = read();
    for (name, old) in previous {
        client.select(
            "SELECT set_config($1, $2, true)",
            Some(1),
            &[name.into(), old.as_str().into()],
        )?;
    }
    result
}

/// Each column of `table` as the text of its type's output function (what logical replication
/// sends, and not always what a cast to text gives: `true` is `t`), for every row that `from` yields;
/// `from` is a FROM item aliased `r` whose columns are the table's. Text that is not UTF-8 (possible
/// only in a database of another encoding) is read with replacement characters.
pub fn read_text_rows(
    client: &SpiClient<'_>,
    table: &CatalogTable,
    from: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> spi::Result<Vec<Vec<Option<String>>>> {
    if table.columns.is_empty() {
        let count = client.select(&format!("SELECT 1 FROM {from}"), None, args)?.len();
        return Ok(vec![Vec::new(); count]);
    }
    let output_functions: Vec<pg_sys::Oid> = table
        .columns
        .iter()
        .map(|c| {
            let mut function = pg_sys::InvalidOid;
            let mut is_varlena = false;
            // SAFETY: looks up a type that exists (it is a column's); fills the two out-parameters.
            unsafe { pg_sys::getTypeOutputInfo(c.type_oid, &mut function, &mut is_varlena) };
            function
        })
        .collect();
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("r.{}", quote_ident(&c.name)))
        .collect();
    let rows = client.select(&format!("SELECT {} FROM {from}", columns.join(", ")), None, args)?;
    let count = rows.len();
    // Raw datums are read at the table's position: `first`, then `next` moves it on.
    let mut rows = rows.first();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut values = Vec::with_capacity(table.columns.len());
        for (i, function) in output_functions.iter().enumerate() {
            let text = rows.get_datum_by_ordinal(i + 1)?.map(|datum| {
                // SAFETY: the datum is of the column's type (the SELECT list is the table's columns)
                // and lives as long as the tuple table; the output function returns a palloc'd C string.
                unsafe {
                    let text = pg_sys::OidOutputFunctionCall(*function, datum);
                    let owned = std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned();
                    pg_sys::pfree(text.cast());
                    owned
                }
            });
            values.push(text);
        }
        out.push(values);
        rows.next();
    }
    Ok(out)
}

/// An SQL identifier in double quotes (always quoted: names are taken as written, case included).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The table named `schema.table`, or bare `table` in `public`.
pub fn parse_table_name(name: &str) -> Result<(String, String), String> {
    let (schema, table) = match name.split_once('.') {
        Some((schema, table)) => (schema, table),
        None => ("public", name),
    };
    if schema.is_empty() || table.is_empty() || table.contains('.') {
        return Err(format!(
            "table_name {name:?} is not `schema.table` or `table` (names are taken as written, without quotes)"
        ));
    }
    Ok((schema.to_owned(), table.to_owned()))
}
