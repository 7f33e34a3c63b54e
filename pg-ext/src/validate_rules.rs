//! `syncgate.validate_rules(rules, publication)`: what `syncgate rules validate` reports, then what
//! the current database says about the tables the rules read. Problems come back as rows.

use pgrx::prelude::*;
use pgrx::spi::{self, SpiClient};
use syncgate_rules::pgtype::PgType;
use syncgate_rules::{CompileOptions, Diagnostic, Severity, SyncRules, compile};

use crate::catalog::{self, CatalogColumn, CatalogTable, TypeResolver, quote_ident};
use crate::raw_text::RawText;
use crate::rules_input::{required, rules_text, utf8_argument};

/// One diagnostic; no position for findings about the database rather than a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl From<Diagnostic> for Finding {
    fn from(d: Diagnostic) -> Self {
        Finding {
            severity: d.severity,
            position: Some((d.line, d.column)),
            message: d.message,
        }
    }
}

impl Finding {
    fn warning(message: String) -> Self {
        Finding {
            severity: Severity::Warning,
            position: None,
            message,
        }
    }
}

/// Diagnostics of a rules text, as rows: first exactly those of `syncgate rules validate`, then
/// the checks against this database's catalog (warnings). `publication` is the gateway's
/// publication (`powersync` by default, as in its config); NULL skips the publication checks (a
/// gateway reading through the syncgate output plugin needs none).
#[pg_extern(stable)]
fn validate_rules(
    rules: Option<RawText<'_>>,
    publication: default!(Option<RawText<'_>>, "'powersync'"),
) -> TableIterator<
    'static,
    (
        name!(severity, String),
        name!(line, Option<i32>),
        name!(col, Option<i32>),
        name!(message, String),
    ),
> {
    let rules = required(rules, "validate_rules", "rules");
    let publication = publication.map(|p| utf8_argument(p, "validate_rules", "publication"));
    let rows = validate(rules, publication).into_iter().map(|f| {
        let (line, col) = match f.position {
            Some((line, col)) => (i32::try_from(line).ok(), i32::try_from(col).ok()),
            None => (None, None),
        };
        (f.severity.as_str().to_owned(), line, col, f.message)
    });
    TableIterator::new(rows.collect::<Vec<_>>())
}

fn validate(rules: RawText<'_>, publication: Option<&str>) -> Vec<Finding> {
    let text = match rules_text(rules) {
        Ok(text) => text,
        Err(problem) => {
            return vec![Finding {
                severity: Severity::Error,
                position: Some(problem.position()),
                message: problem.message(),
            }];
        }
    };
    // Exactly what `syncgate rules validate` runs (gateway/src/rules_cmd.rs), so the two never drift.
    let plain = compile(text, &CompileOptions::default());
    let mut findings: Vec<Finding> = plain.diagnostics.iter().cloned().map(Finding::from).collect();
    let catalog_findings = Spi::connect(|client| {
        catalog_findings(
            client,
            text,
            &plain.diagnostics,
            plain.rules.as_ref(),
            publication,
        )
    });
    match catalog_findings {
        Ok(more) => findings.extend(more),
        Err(e) => findings.push(Finding::warning(format!(
            "the database's catalog could not be read, so tables were not checked: {e}"
        ))),
    }
    findings
}

/// The rules compiler's own schema checks against this database (tables and columns not found,
/// with positions), then keys, column types and the publication of every table the rules read.
fn catalog_findings(
    client: &SpiClient<'_>,
    text: &str,
    plain: &[Diagnostic],
    rules: Option<&SyncRules>,
    publication: Option<&str>,
) -> spi::Result<Vec<Finding>> {
    let tables = catalog::read_tables(client)?;
    let with_schema = compile(
        text,
        &CompileOptions {
            schema: Some(catalog::source_schema(&tables)),
            ..CompileOptions::default()
        },
    );
    // What the schema adds: its diagnostics minus those already reported (as a multiset).
    let mut already: Vec<&Diagnostic> = plain.iter().collect();
    let mut findings: Vec<Finding> = Vec::new();
    for d in with_schema.diagnostics {
        match already.iter().position(|p| **p == d) {
            Some(i) => {
                already.remove(i);
            }
            None => findings.push(d.into()),
        }
    }
    // Keys, types and publications need the tables the rules read: only rules that compile say.
    let Some(rules) = rules else {
        return Ok(findings);
    };
    let patterns = rules.source_tables();
    let read: Vec<&CatalogTable> = tables
        .iter()
        .filter(|t| patterns.iter().any(|p| t.matches(p)))
        .collect();
    let mut types = TypeResolver::default();
    for table in &read {
        if !table.has_usable_identity() {
            // The gateway's own source check (gateway/src/source/checks.rs) says the same and refuses to start.
            findings.push(Finding::warning(format!(
                "table {} has no primary key or replica identity, so its updates and deletes cannot be \
                 replicated; add a primary key, or run: ALTER TABLE {} REPLICA IDENTITY FULL",
                table.display_name(),
                table.quoted()
            )));
        }
        for column in &table.columns {
            let ty = types.resolve(client, column.type_oid)?;
            if let Some(message) =
                type_finding(table, column, &ty, rules.compatibility().custom_postgres_types)
            {
                findings.push(Finding::warning(message));
            }
        }
    }
    if let Some(publication) = publication
        && !read.is_empty()
    {
        findings.extend(publication_findings(client, publication, &read)?);
    }
    Ok(findings)
}

/// A column whose values do not map to a typed synced value (the value mapping's rules,
/// syncgate_rules::pgtype): unknown types, and structured types without `custom_postgres_types`.
fn type_finding(
    table: &CatalogTable,
    column: &CatalogColumn,
    ty: &PgType,
    custom_types: bool,
) -> Option<String> {
    let builtin = PgType::from_builtin_oid(column.type_oid.to_u32()).is_some();
    let name = format!("{}.{}", table.display_name(), column.name);
    let structured = match ty {
        PgType::Domain { .. } => Some("a domain"),
        PgType::Composite { .. } => Some("a composite type"),
        PgType::Range { .. } => Some("a range"),
        PgType::Multirange { .. } => Some("a multirange"),
        PgType::Array(_) if !builtin => Some("an array of a custom type"),
        _ => None,
    };
    match (structured, ty) {
        (Some(kind), _) if !custom_types => Some(format!(
            "column {name} has type {} ({kind}): without `custom_postgres_types` (config: edition: 2, or \
             custom_postgres_types: true) it is synced as its raw Postgres text",
            column.type_name
        )),
        (None, PgType::Other(_)) if !builtin => Some(format!(
            "column {name} has type {}, which syncgate does not map: it is synced as its text output",
            column.type_name
        )),
        _ => None,
    }
}

fn publication_findings(
    client: &SpiClient<'_>,
    publication: &str,
    read: &[&CatalogTable],
) -> spi::Result<Vec<Finding>> {
    let quoted_publication = quote_ident(publication);
    let Some(published) = catalog::publication_tables(client, publication)? else {
        let tables: Vec<String> = read.iter().map(|t| t.quoted()).collect();
        return Ok(vec![Finding::warning(format!(
            "publication {publication} does not exist; the gateway's default pgoutput decoder needs it \
             (the syncgate output plugin does not), run: CREATE PUBLICATION {quoted_publication} FOR TABLE {}",
            tables.join(", ")
        ))]);
    };
    Ok(read
        .iter()
        .filter(|t| !published.iter().any(|(s, n)| *s == t.schema && *n == t.name))
        .map(|t| {
            Finding::warning(format!(
                "table {} is not in publication {publication}, so pgoutput does not send its changes (the \
                 syncgate output plugin does); run: ALTER PUBLICATION {quoted_publication} ADD TABLE {}",
                t.display_name(),
                t.quoted()
            ))
        })
        .collect())
}
