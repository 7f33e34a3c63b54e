//! `syncgate.user_buckets(rules, claims, parameters)`: the buckets a connection with this token
//! and these client parameters gets, resolved as the gateway resolves them.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::{self, SpiClient};
use syncgate_rules::pgtype::map_text_value;
use syncgate_rules::{ConnectionRequest, ParameterEntry, ParameterLookup, RowError, SqliteValue, SyncRules};

use crate::catalog::{self, TypeResolver};
use crate::raw_text::RawText;
use crate::rules_input::{compile_or_raise, json_kind, json_object, raise, required};

/// The buckets of a connection, sorted by name: `claims` is the verified JWT payload (`sub` is the
/// user id), `parameters` the client parameters. Parameter queries that read tables are answered
/// from the tables' current rows (read through SPI, as the gateway's parameter index holds them),
/// so the answer is what a connection would get once replication has caught up.
#[pg_extern]
fn user_buckets(
    rules: Option<RawText<'_>>,
    claims: Option<pgrx::JsonB>,
    parameters: default!(Option<pgrx::JsonB>, "'{}'"),
) -> TableIterator<
    'static,
    (
        name!(bucket, String),
        name!(definition, String),
        name!(priority, i32),
    ),
> {
    const FUNCTION: &str = "user_buckets";
    let rules = required(rules, FUNCTION, "rules");
    let claims = required(claims, FUNCTION, "claims").0;
    let parameters = required(parameters, FUNCTION, "parameters").0;
    check_claims(json_object(&claims, FUNCTION, "claims"));
    json_object(&parameters, FUNCTION, "parameters");
    let rules = compile_or_raise(rules, FUNCTION);

    let request = ConnectionRequest::new(&claims, &parameters);
    let resolved = Spi::connect(|client| {
        let mut index: Option<HashMap<String, Vec<Vec<SqliteValue>>>> = None;
        rules.resolve_buckets(&request, |lookups: &[ParameterLookup]| -> spi::Result<_> {
            // Built on the first lookup only: rules without table parameter queries read no table.
            if index.is_none() {
                index = Some(parameter_index(client, &rules)?);
            }
            let index = index.as_ref().expect("built above");
            Ok(lookups
                .iter()
                .map(|l| index.get(&l.key()).cloned().unwrap_or_default())
                .collect())
        })
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("syncgate.{FUNCTION}: reading the parameter tables failed: {e}"),
            None,
        )
    });
    let rows: Vec<_> = resolved
        .into_iter()
        .map(|b| {
            (
                b.bucket.as_str().to_owned(),
                b.definition.to_string(),
                i32::from(b.priority.get()),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// The claims the gateway's token check requires to have a type (gateway/src/auth/mod.rs):
/// `sub` a string or a number, `parameters` an object. Time and audience claims are not checked here.
fn check_claims(claims: &serde_json::Map<String, serde_json::Value>) {
    let invalid = |message: String| -> ! {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("syncgate.user_buckets: {message}"),
            None,
        )
    };
    match claims.get("sub") {
        None | Some(serde_json::Value::Null) => {
            invalid("claims has no \"sub\" (the user id); the gateway refuses such a token".into())
        }
        Some(serde_json::Value::String(_) | serde_json::Value::Number(_)) => {}
        Some(other) => invalid(format!(
            "claims \"sub\" must be a string or a number, not {}",
            json_kind(other)
        )),
    }
    match claims.get("parameters") {
        None | Some(serde_json::Value::Null | serde_json::Value::Object(_)) => {}
        Some(other) => invalid(format!(
            "claims \"parameters\" must be a JSON object, not {}",
            json_kind(other)
        )),
    }
}

/// The parameter index the gateway's storage would hold: every row of every table a parameter
/// query reads, evaluated with `evaluate_parameter_row`, keyed by `ParameterLookup::key`.
fn parameter_index(
    client: &SpiClient<'_>,
    rules: &SyncRules,
) -> spi::Result<HashMap<String, Vec<Vec<SqliteValue>>>> {
    let patterns = rules.source_tables();
    let tables = catalog::read_tables(client)?;
    let mut types = TypeResolver::default();
    let mut index: HashMap<String, Vec<Vec<SqliteValue>>> = HashMap::new();
    let mut entries: Vec<ParameterEntry> = Vec::new();
    let mut errors: Vec<RowError> = Vec::new();
    for table in tables.iter().filter(|t| patterns.iter().any(|p| t.matches(p))) {
        let plan = rules.plan_table(&table.source_table());
        if !plan.has_parameter_queries() {
            continue;
        }
        let column_types = table
            .columns
            .iter()
            .map(|c| types.resolve(client, c.type_oid))
            .collect::<spi::Result<Vec<_>>>()?;
        let from = format!("{} AS r", table.quoted());
        let rows = catalog::with_replication_text_settings(client, || {
            catalog::read_text_rows(client, table, &from, &[])
        })?;
        for texts in rows {
            let values: Vec<SqliteValue> = texts
                .iter()
                .zip(&column_types)
                .map(|(text, ty)| match text {
                    Some(text) => map_text_value(ty, text, rules.compatibility()),
                    None => SqliteValue::Null,
                })
                .collect();
            entries.clear();
            rules.evaluate_parameter_row(&plan, &values, &mut entries, &mut errors);
            for entry in entries.drain(..) {
                index.entry(entry.lookup.key()).or_default().push(entry.values);
            }
        }
    }
    // Rows a parameter query fails on are left out of the index, as the gateway does (it logs them).
    for error in &errors {
        ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!(
                "syncgate.user_buckets: {} skips a parameter row: {}",
                error.definition, error.message
            )
        );
    }
    Ok(index)
}
