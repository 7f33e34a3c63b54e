//! `syncgate.evaluate_row(rules, table_name, row)`: the buckets one row of a table goes to, and
//! the data clients receive for it, computed as the gateway's replicator does.

use pgrx::prelude::*;
use pgrx::spi;
use syncgate_rules::pgtype::map_text_value;
use syncgate_rules::{RowEvaluation, SqliteValue};

use crate::catalog::{self, CatalogTable, TypeResolver, parse_table_name, quote_ident};
use crate::raw_text::RawText;
use crate::rules_input::{compile_or_raise, json_object, raise, required, utf8_argument};

/// The placements of `row` (a JSON object of column values) as a row of `table_name`: one result
/// row per bucket, with the output table, the row id and the synced data (the JSON object clients
/// receive, keys in the same order). Rows of tables no data query reads have no placements. Row errors (a query
/// that fails on this row skips it, as in the gateway) are raised as WARNINGs.
///
/// The row is converted to the table's column types by Postgres (`jsonb_populate_record`, so a
/// value is written as in JSON input to that type: `"2024-05-06 07:08:09+00"` for a timestamptz,
/// a JSON array for an array column) and read back as text under the replication session's
/// settings: the same text logical replication would deliver for the row.
#[pg_extern]
fn evaluate_row(
    rules: Option<RawText<'_>>,
    table_name: Option<RawText<'_>>,
    row: Option<pgrx::JsonB>,
) -> TableIterator<
    'static,
    (
        name!(bucket, String),
        name!(object_type, String),
        name!(object_id, String),
        name!(data, pgrx::Json),
    ),
> {
    const FUNCTION: &str = "evaluate_row";
    let rules = required(rules, FUNCTION, "rules");
    let table_name = utf8_argument(
        required(table_name, FUNCTION, "table_name"),
        FUNCTION,
        "table_name",
    );
    let row = required(row, FUNCTION, "row").0;
    let row = json_object(&row, FUNCTION, "row");
    let rules = compile_or_raise(rules, FUNCTION);
    let (schema, name) = parse_table_name(table_name).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("syncgate.{FUNCTION}: {e}"),
            None,
        )
    });

    let read = Spi::connect(|client| -> spi::Result<Option<(CatalogTable, Vec<SqliteValue>)>> {
        let tables = catalog::read_tables(client)?;
        let Some(table) = tables.into_iter().find(|t| t.schema == schema && t.name == name) else {
            return Ok(None);
        };
        if let Some(unknown) = row.keys().find(|k| !table.columns.iter().any(|c| &c.name == *k)) {
            let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "syncgate.{FUNCTION}: row has the key {unknown:?}, which is not a column of {} (columns: {})",
                    table.display_name(),
                    columns.join(", ")
                ),
                None,
            );
        }
        let from = format!(
            "jsonb_populate_record(NULL::{}, $1::jsonb) AS r",
            table.quoted()
        );
        let json = serde_json::Value::Object(row.clone()).to_string();
        let texts = catalog::with_replication_text_settings(client, || {
            catalog::read_text_rows(client, &table, &from, &[json.as_str().into()])
        })?;
        let texts = texts.into_iter().next().unwrap_or_default();
        let mut types = TypeResolver::default();
        let mut values = Vec::with_capacity(table.columns.len());
        for (column, text) in table.columns.iter().zip(&texts) {
            let ty = types.resolve(client, column.type_oid)?;
            values.push(match text {
                Some(text) => map_text_value(&ty, text, rules.compatibility()),
                None => SqliteValue::Null,
            });
        }
        Ok(Some((table, values)))
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("syncgate.{FUNCTION}: reading the catalog failed: {e}"),
            None,
        )
    });
    let Some((table, values)) = read else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "syncgate.{FUNCTION}: table {}.{} does not exist in this database (the row is read with \
                 its column types)",
                quote_ident(&schema),
                quote_ident(&name)
            ),
            None,
        );
    };

    let plan = rules.plan_table(&table.source_table());
    let mut evaluation = RowEvaluation::default();
    rules.evaluate_row(&plan, &values, &mut evaluation);
    for error in &evaluation.errors {
        ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!(
                "syncgate.{FUNCTION}: {} skips this row: {}",
                error.definition, error.message
            )
        );
    }
    let placements: Vec<_> = evaluation
        .rows()
        .map(|placed| {
            (
                placed.bucket.to_owned(),
                placed.table.to_owned(),
                placed.id.to_owned(),
                pgrx::Json(serde_json::from_str(placed.data).expect("the evaluator writes JSON objects")),
            )
        })
        .collect();
    TableIterator::new(placements)
}
