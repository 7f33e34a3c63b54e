//! Rules file → [`SyncRules`]: YAML structure, then each SQL query.
//!
//! Diagnostics carry file positions (SYNC_RULES.md §10): YAML problems point at the node, SQL
//! problems at the token inside the scalar where its text maps back character by character.

pub(crate) mod clause;
pub(crate) mod queries;
mod streams;

use std::sync::Arc;

use syncgate_protocol::BucketPriority;

use crate::compat::{Compatibility, TimestampPrecision};
use crate::diagnostic::{Diagnostic, Severity};
use crate::sql::ast::Span;
use crate::sync_rules::{CompileResult, Definition, DefinitionKind, SyncRules};
use crate::table::SourceSchema;
use crate::yaml::{self, Position, SourceMap, YamlKind, YamlNode};

use self::clause::SqlDiagnostic;

/// Options for compiling a rules file.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// Schema of unqualified table names (`public` for Postgres).
    pub default_schema: String,
    /// The source database's tables, for validation warnings (missing tables and columns).
    pub schema: Option<SourceSchema>,
    /// The deployment version, used as the `<version>#` bucket id prefix when versioned ids are on.
    pub version: u64,
    /// Prefix every bucket id with `<version>#` whatever the edition says. The gateway sets it so that two
    /// sync-rules versions never share a bucket name (a client's op-id position in one version's bucket
    /// means nothing in another's), as the reference's current storage does.
    pub force_versioned_bucket_ids: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            default_schema: "public".into(),
            schema: None,
            version: 1,
            force_versioned_bucket_ids: false,
        }
    }
}

/// Compiles a rules file. Rules are returned only when there are no errors.
pub fn compile(text: &str, options: &CompileOptions) -> CompileResult {
    let mut c = Compiler {
        options,
        source: SourceMap::new(text),
        diagnostics: Vec::new(),
        definitions: Vec::new(),
        data_queries: Vec::new(),
        lookup_queries: Vec::new(),
        names: Vec::new(),
        compat: Compatibility::default(),
    };
    c.compile_document(text);
    let has_errors = c.diagnostics.iter().any(Diagnostic::is_error);
    let mut diagnostics = c.diagnostics;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    let rules = if has_errors {
        None
    } else {
        let mut compat = c.compat;
        compat.versioned_bucket_ids |= options.force_versioned_bucket_ids;
        Some(SyncRules {
            compat,
            version: options.version,
            definitions: c.definitions,
            data_queries: c.data_queries,
            lookup_queries: c.lookup_queries,
        })
    };
    CompileResult { rules, diagnostics }
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "config",
    "bucket_definitions",
    "streams",
    "with",
    "event_definitions",
];
const CONFIG_KEYS: &[&str] = &[
    "edition",
    "timestamps_iso8601",
    "versioned_bucket_ids",
    "fixed_json_extract",
    "custom_postgres_types",
    "unstable_sqlite_expression_engine",
    "timestamp_max_precision",
    "storage_version",
];
const BUCKET_KEYS: &[&str] = &[
    "priority",
    "parameters",
    "data",
    "accept_potentially_dangerous_queries",
];
const STREAM_KEYS: &[&str] = &[
    "query",
    "queries",
    "auto_subscribe",
    "priority",
    "accept_potentially_dangerous_queries",
    "with",
];
const EVENT_KEYS: &[&str] = &["payloads"];
/// Storage versions the reference accepts.
const SUPPORTED_STORAGE_VERSIONS: &[i64] = &[1, 2];

pub(crate) struct Compiler<'a> {
    pub options: &'a CompileOptions,
    pub source: SourceMap<'a>,
    pub diagnostics: Vec<Diagnostic>,
    pub definitions: Vec<Definition>,
    pub data_queries: Vec<crate::sync_rules::DataQuery>,
    pub lookup_queries: Vec<crate::sync_rules::LookupQuery>,
    names: Vec<String>,
    pub compat: Compatibility,
}

/// An SQL string from the rules file and where it came from.
pub(crate) struct SqlSource<'n> {
    pub sql: &'n str,
    pub node: &'n YamlNode,
}

impl<'a> Compiler<'a> {
    pub(crate) fn report(&mut self, severity: Severity, message: impl Into<String>, position: Position) {
        self.diagnostics
            .push(Diagnostic::new(severity, message, position));
    }

    pub(crate) fn error_at(&mut self, node: &YamlNode, message: impl Into<String>) {
        self.report(Severity::Error, message, node.position);
    }

    /// Reports diagnostics of one SQL string, mapping spans into the file.
    pub(crate) fn report_sql(&mut self, source: &SqlSource<'_>, diagnostics: Vec<SqlDiagnostic>) {
        for d in diagnostics {
            let position = self.sql_position(source, d.span);
            self.report(d.severity, d.message, position);
        }
    }

    pub(crate) fn sql_position(&self, source: &SqlSource<'_>, span: Option<Span>) -> Position {
        match span {
            Some(span) => self.source.scalar_position(source.node, span.start),
            None => source.node.position,
        }
    }

    fn compile_document(&mut self, text: &str) {
        let root = match yaml::parse(text) {
            Ok(Some(root)) => root,
            Ok(None) => {
                self.report(
                    Severity::Error,
                    "Sync rules must be a YAML map.",
                    Position { line: 1, column: 1 },
                );
                return;
            }
            Err(e) => {
                self.report(Severity::Error, e.message, e.position);
                return;
            }
        };
        let Some(entries) = root.as_mapping() else {
            self.error_at(&root, "Sync rules must be a YAML map.");
            return;
        };
        self.check_keys(entries, TOP_LEVEL_KEYS);

        if let Some((_, config)) = root.get("config") {
            self.compile_config(config);
        }
        if let Some((_, events)) = root.get("event_definitions") {
            self.compile_event_definitions(events);
        }
        let bucket_definitions = root.get("bucket_definitions");
        let streams = root.get("streams");
        let with = root.get("with");

        if self.compat.edition >= 3 {
            if let Some((key, _)) = bucket_definitions {
                self.error_at(
                    key,
                    "'bucket_definitions' are not supported by the new compiler. Consider using https://powersync-community.github.io/bucket-definitions-to-sync-streams/ to translate them to streams.",
                );
            }
            match streams {
                None => self.report(Severity::Error, "'streams' are required.", root.position),
                Some((_, map)) => self.compile_streams(map, with.map(|(_, v)| v), true),
            }
            return;
        }
        if let Some((key, _)) = with {
            self.error_at(
                key,
                "Common table expressions are not supported without the `sync_config_compiler` option.",
            );
        }
        if bucket_definitions.is_none() && streams.is_none() {
            self.report(
                Severity::Error,
                "'bucket_definitions' or 'streams' is required",
                root.position,
            );
            return;
        }
        if let Some((_, map)) = bucket_definitions {
            match map.as_mapping() {
                Some(defs) => {
                    for (name, def) in defs {
                        self.compile_bucket_definition(name, def);
                    }
                }
                None if map.is_null() => {}
                // A wrong value is reported at the value (§10), not at its key.
                None => self.error_at(map, "'bucket_definitions' must be an object"),
            }
        }
        if let Some((key, map)) = streams {
            if self.compat.edition < 2 {
                // Alpha streams rely on edition-2 behaviour (versioned bucket ids), as in the reference.
                self.error_at(
                    key,
                    "Sync streams require edition 2 or later. Add `config: {edition: 2}` (or 3) to the rules file.",
                );
                return;
            }
            self.report(
                Severity::Warning,
                "This is using an alpha version of Sync Streams. We recommend upgrading `config.edition` to version 3 to support the latest features.",
                key.position,
            );
            self.compile_streams(map, None, false);
        }
    }

    /// JSON-schema-style unknown-key check, plus duplicate keys: lookups use the first
    /// occurrence, so a repeated key would otherwise be silently ignored.
    fn check_keys(&mut self, entries: &[(YamlNode, YamlNode)], allowed: &[&str]) {
        for (i, (key, _)) in entries.iter().enumerate() {
            match key.as_scalar() {
                Some(k) if allowed.contains(&k) => {
                    if entries[..i]
                        .iter()
                        .any(|(earlier, _)| earlier.as_scalar() == Some(k))
                    {
                        self.error_at(key, format!("Map keys must be unique: '{k}'"));
                    }
                }
                Some(k) => self.error_at(key, format!("must NOT have additional properties: '{k}'")),
                None => self.error_at(key, "must NOT have additional properties: keys must be strings"),
            }
        }
    }

    fn compile_config(&mut self, config: &YamlNode) {
        let Some(entries) = config.as_mapping() else {
            if !config.is_null() {
                self.error_at(config, "'config' must be an object");
            }
            return;
        };
        self.check_keys(entries, CONFIG_KEYS);
        let mut edition = 1u8;
        if let Some((_, v)) = config.get("edition") {
            match v.as_integer() {
                Some(e @ 1..=3) => edition = u8::try_from(e).expect("range checked"),
                _ => self.error_at(v, "edition must be equal to one of the allowed values: 1, 2, 3"),
            }
        }
        let mut compat = Compatibility::for_edition(edition);
        for (key, value) in entries {
            let Some(name) = key.as_scalar() else { continue };
            let flag = match name {
                "timestamps_iso8601" => &mut compat.timestamps_iso8601,
                "versioned_bucket_ids" => &mut compat.versioned_bucket_ids,
                "fixed_json_extract" => &mut compat.fixed_json_extract,
                "custom_postgres_types" => &mut compat.custom_postgres_types,
                "unstable_sqlite_expression_engine" => &mut compat.unstable_sqlite_expression_engine,
                _ => continue,
            };
            match value.as_bool() {
                Some(b) => *flag = b,
                None => self.error_at(value, format!("'{name}' must be boolean")),
            }
        }
        if let Some((key, v)) = config.get("timestamp_max_precision") {
            match v.as_scalar().and_then(TimestampPrecision::parse) {
                Some(p) => {
                    compat.timestamp_max_precision = p;
                    // The option that needs the other one is the offending node; `config`
                    // itself would point at whichever option happens to come first.
                    if !compat.timestamps_iso8601 {
                        self.error_at(key, "'timestamp_max_precision' requires 'timestamps_iso8601' to be enabled.");
                    }
                }
                None => self.error_at(
                    v,
                    "timestamp_max_precision must be equal to one of the allowed values: seconds, milliseconds, microseconds, nanoseconds",
                ),
            }
        }
        if compat.unstable_sqlite_expression_engine {
            // Point at the option when it is set explicitly (as for timestamp_max_precision).
            let at = config
                .get("unstable_sqlite_expression_engine")
                .map_or(config, |(k, _)| k);
            if edition < 3 {
                self.error_at(
                    at,
                    "Enabling unstable_sqlite_expression_engine requires edition: 3",
                );
            } else if !compat.fixed_json_extract {
                self.error_at(
                    at,
                    "Enabling unstable_sqlite_expression_engine requires fixed_json_extract",
                );
            } else {
                self.error_at(
                    at,
                    "unstable_sqlite_expression_engine is not supported by syncgate",
                );
            }
        }
        if let Some((_, v)) = config.get("storage_version") {
            match v.as_integer() {
                Some(n) if SUPPORTED_STORAGE_VERSIONS.contains(&n) => {}
                Some(n) => self.error_at(v, format!("Storage version {n} is not supported")),
                None => self.error_at(v, "Storage version must be numeric"),
            }
        }
        self.compat = compat;
    }

    /// `event_definitions`: validated only (events are not part of bucket sync). They used to be
    /// accepted unchecked, so a broken payload query went unnoticed.
    fn compile_event_definitions(&mut self, events: &YamlNode) {
        let Some(entries) = events.as_mapping() else {
            if !events.is_null() {
                self.error_at(events, "'event_definitions' must be an object");
            }
            return;
        };
        for (name, def) in entries {
            let Some(def_entries) = def.as_mapping() else {
                self.error_at(def, "Event definitions must be objects.");
                continue;
            };
            self.check_keys(def_entries, EVENT_KEYS);
            let payloads = match def.get("payloads") {
                Some((_, p)) => p.as_sequence().or_else(|| {
                    self.error_at(p, "Event definition payloads must be an array.");
                    None
                }),
                None => {
                    self.error_at(name, "Event definition payloads must be an array.");
                    None
                }
            };
            for item in payloads.unwrap_or_default() {
                if let Some(source) = self.sql_scalar(item, "Payload queries for events must be scalar.") {
                    self.compile_event_query(&source);
                }
            }
        }
    }

    /// A definition name must be unique across bucket definitions and streams.
    fn check_unique_name(&mut self, key: &YamlNode) -> Option<String> {
        let Some(name) = key.as_scalar() else {
            self.error_at(key, "Definition names must be strings");
            return None;
        };
        if self.names.iter().any(|n| n == name) {
            self.error_at(key, "Duplicate stream or bucket definition.");
            return None;
        }
        self.names.push(name.to_string());
        Some(name.to_string())
    }

    /// `priority:` of a definition or stream.
    fn parse_priority(&mut self, def: &YamlNode) -> Option<BucketPriority> {
        let (_, v) = def.get("priority")?;
        match v.as_integer().and_then(BucketPriority::new) {
            Some(p) => Some(p),
            None => {
                self.error_at(
                    v,
                    "Invalid priority, expected a number between 0 and 3 (inclusive).",
                );
                None
            }
        }
    }

    fn accepts_dangerous_queries(&mut self, def: &YamlNode) -> bool {
        if def.as_mapping().is_some_and(|entries| {
            entries.iter().any(|(k, v)| {
                k.tag.as_deref() == Some("!accept_potentially_dangerous_queries")
                    || v.tag.as_deref() == Some("!accept_potentially_dangerous_queries")
            })
        }) || def.tag.as_deref() == Some("!accept_potentially_dangerous_queries")
        {
            return true;
        }
        match def.get("accept_potentially_dangerous_queries") {
            Some((_, v)) => match v.as_bool() {
                Some(b) => b,
                None => {
                    self.error_at(v, "'accept_potentially_dangerous_queries' must be boolean");
                    false
                }
            },
            None => false,
        }
    }

    /// A scalar that must be an SQL string.
    pub(crate) fn sql_scalar<'n>(&mut self, node: &'n YamlNode, message: &str) -> Option<SqlSource<'n>> {
        match &node.kind {
            YamlKind::Scalar { value, .. } if !node.is_null() => Some(SqlSource { sql: value, node }),
            _ => {
                self.error_at(node, message);
                None
            }
        }
    }

    fn compile_bucket_definition(&mut self, key: &YamlNode, def: &YamlNode) {
        let Some(name) = self.check_unique_name(key) else {
            return;
        };
        let Some(entries) = def.as_mapping() else {
            self.error_at(def, format!("'{name}' bucket definition must be an object"));
            return;
        };
        self.check_keys(entries, BUCKET_KEYS);
        let accept_dangerous = self.accepts_dangerous_queries(def);
        let priority = self.parse_priority(def);
        let definition_index = self.definitions.len();
        let name: Arc<str> = Arc::from(name.as_str());
        self.definitions.push(Definition {
            name: Arc::clone(&name),
            kind: DefinitionKind::Buckets { queriers: Vec::new() },
        });

        let mut parameter_sources: Vec<SqlSource<'_>> = Vec::new();
        let implicit_global;
        match def.get("parameters") {
            None => {
                implicit_global = YamlNode {
                    kind: YamlKind::Scalar {
                        value: "SELECT".into(),
                        style: yaml::ScalarStyle::Plain,
                    },
                    position: key.position,
                    char_index: key.char_index,
                    tag: None,
                };
                parameter_sources.push(SqlSource {
                    sql: "SELECT",
                    node: &implicit_global,
                });
            }
            Some((_, p)) => match &p.kind {
                YamlKind::Sequence(items) => {
                    for item in items {
                        if let Some(s) =
                            self.sql_scalar(item, "Parameters must be a string or array of strings")
                        {
                            parameter_sources.push(s);
                        }
                    }
                }
                _ => {
                    if let Some(s) = self.sql_scalar(p, "Parameters must be a string or array of strings") {
                        parameter_sources.push(s);
                    }
                }
            },
        }

        let mut bucket_parameters: Option<Vec<Arc<str>>> = None;
        let mut queriers = Vec::new();
        for (i, source) in parameter_sources.iter().enumerate() {
            let options = queries::ParameterQueryOptions {
                definition: definition_index,
                query_id: Arc::from((i + 1).to_string()),
                priority,
                accept_dangerous,
            };
            let Some(compiled) = self.compile_parameter_query(source, &options) else {
                continue;
            };
            match &bucket_parameters {
                None => bucket_parameters = Some(compiled.bucket_parameters.clone()),
                Some(existing) => {
                    let mut union: Vec<&Arc<str>> = existing.iter().collect();
                    for p in &compiled.bucket_parameters {
                        if !union.contains(&p) {
                            union.push(p);
                        }
                    }
                    if union.len() != existing.len() {
                        let position = source.node.position;
                        self.report(
                            Severity::Error,
                            "Bucket parameters must match for each parameter query within a bucket",
                            position,
                        );
                        continue;
                    }
                }
            }
            let names = bucket_parameters.clone().unwrap_or_default();
            queriers.push(compiled.into_querier(self, &names));
        }

        let data = match def.get("data") {
            Some((_, d)) => match d.as_sequence() {
                Some(items) => Some(items),
                None => {
                    self.error_at(d, "'data' must be an array");
                    None
                }
            },
            None => {
                self.error_at(key, "'data' must be an array");
                None
            }
        };
        for item in data.unwrap_or_default() {
            let Some(source) = self.sql_scalar(item, "Must be a string.") else {
                continue;
            };
            match &bucket_parameters {
                None => {
                    let position = source.node.position;
                    self.report(Severity::Error, "Bucket parameters must be defined", position);
                }
                Some(params) => {
                    let params = params.clone();
                    self.compile_data_query(&source, definition_index, &name, &params);
                }
            }
        }
        if let DefinitionKind::Buckets { queriers: q } = &mut self.definitions[definition_index].kind {
            *q = queriers;
        }
    }

    fn compile_streams(&mut self, map: &YamlNode, global_with: Option<&YamlNode>, edition3: bool) {
        let Some(entries) = map.as_mapping() else {
            if !map.is_null() {
                self.error_at(map, "'streams' must be an object");
            }
            return;
        };
        let global_ctes = match global_with {
            Some(w) => self.parse_ctes(w),
            None => Vec::new(),
        };
        let mut used_ctes = vec![false; global_ctes.len()];
        for (key, def) in entries {
            let Some(name) = self.check_unique_name(key) else {
                continue;
            };
            let Some(stream_entries) = def.as_mapping() else {
                self.error_at(def, format!("'{name}' stream must be an object"));
                continue;
            };
            self.check_keys(stream_entries, STREAM_KEYS);
            let priority = self.parse_priority(def);
            let auto_subscribe = match def.get("auto_subscribe") {
                Some((_, v)) => match v.as_bool() {
                    Some(b) => b,
                    None => {
                        self.error_at(v, "'auto_subscribe' must be boolean");
                        false
                    }
                },
                None => false,
            };
            let _ = self.accepts_dangerous_queries(def);
            let mut queries: Vec<SqlSource<'_>> = Vec::new();
            let query = def.get("query");
            let many = def.get("queries");
            let mut local_ctes = Vec::new();
            if edition3 {
                if query.is_some() == many.is_some() {
                    self.error_at(key, "One of `queries` or `query` must be given.");
                }
                if let Some((_, w)) = def.get("with") {
                    local_ctes = self.parse_ctes(w);
                }
            } else {
                if let Some((k, _)) = def.get("with") {
                    self.error_at(k, "Common table expressions are not supported without the `sync_config_compiler` option.");
                }
                if let Some((k, _)) = many {
                    self.error_at(
                        k,
                        "Multiple queries not supported without the `sync_config_compiler` option.",
                    );
                }
                if query.is_none() {
                    self.error_at(key, "'query' is required: Must be a string.");
                }
            }
            if let Some((_, q)) = query
                && let Some(s) = self.sql_scalar(q, "Must be a string.")
            {
                queries.push(s);
            }
            if edition3 && let Some((_, many)) = many {
                match many.as_sequence() {
                    Some(items) => {
                        for item in items {
                            if let Some(s) = self.sql_scalar(item, "Must be a string.") {
                                queries.push(s);
                            }
                        }
                    }
                    None => self.error_at(many, "'queries' must be an array"),
                }
            }
            let stream = streams::StreamOptions {
                name: Arc::from(name.as_str()),
                auto_subscribe,
                priority: priority.unwrap_or_default(),
            };
            let mut ctes: Vec<&streams::Cte> = local_ctes.iter().collect();
            for g in &global_ctes {
                if !ctes.iter().any(|c| c.name.eq_ignore_ascii_case(&g.name)) {
                    ctes.push(g);
                }
            }
            let used = self.compile_stream(&stream, &queries, &ctes);
            for (i, g) in global_ctes.iter().enumerate() {
                if used.iter().any(|u| u.eq_ignore_ascii_case(&g.name))
                    && !local_ctes.iter().any(|l| l.name.eq_ignore_ascii_case(&g.name))
                {
                    used_ctes[i] = true;
                }
            }
            for l in &local_ctes {
                if !used.iter().any(|u| u.eq_ignore_ascii_case(&l.name)) {
                    self.report(
                        Severity::Warning,
                        "This common table expression isn't referenced.",
                        l.position,
                    );
                }
            }
        }
        for (i, g) in global_ctes.iter().enumerate() {
            if !used_ctes[i] {
                self.report(
                    Severity::Warning,
                    "This common table expression isn't referenced.",
                    g.position,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_need_edition_two() {
        let result = compile(
            "streams:\n  s:\n    query: SELECT * FROM t\n",
            &CompileOptions::default(),
        );
        assert!(result.rules.is_none());
        let d = &result.diagnostics[0];
        assert_eq!((d.severity, d.line, d.column), (Severity::Error, 1, 1));
        assert!(
            d.message.starts_with("Sync streams require edition 2 or later"),
            "{}",
            d.message
        );
    }
}
