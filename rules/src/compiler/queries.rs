//! Data queries and parameter queries of `bucket_definitions`.

use std::sync::Arc;

use syncgate_protocol::BucketPriority;

use super::clause::{QueryScope, RequestFunctions, Usage, ValueTable};
use super::{Compiler, SqlSource};
use crate::diagnostic::Severity;
use crate::expr::Expr;
use crate::sql::ast::{self, FromItem, Literal, Select, SelectItem, Statement, TableSource};
use crate::sql::parse_statements;
use crate::sync_rules::{DataQuery, LookupOutput, LookupQuery, OutputColumn, ParameterQuerier, QuerierKind};
use crate::table::{DEFAULT_CONNECTION_TAG, TablePattern};
use crate::value::SqliteValue;

const DANGEROUS_QUERY_WARNING: &str = "Potentially dangerous query based on parameters set by the client. The client can send any value for these parameters so it's not a good place to do authorization.";

/// Output columns by name.
type NamedExprs = Vec<(Arc<str>, Expr)>;

/// The output table of a data query: its alias, else the table's name; `None` for an
/// unaliased wildcard, whose rows keep their own table's name.
pub(crate) fn output_table_name(
    pattern: &TablePattern,
    name: &ast::Ident,
    alias: Option<&ast::Ident>,
) -> Option<Arc<str>> {
    match (alias, pattern.wildcard) {
        (Some(a), _) => Some(Arc::from(a.name.as_str())),
        (None, true) => None,
        (None, false) => Some(Arc::from(name.name.as_str())),
    }
}

/// A query's one source table (see [`Compiler::bind_single_table`]).
pub(crate) struct BoundTable<'s> {
    pub pattern: TablePattern,
    pub name: &'s ast::Ident,
    pub alias: Option<&'s ast::Ident>,
    pub span: ast::Span,
    pub known_columns: Option<Vec<String>>,
}

pub(crate) struct ParameterQueryOptions {
    pub definition: usize,
    pub query_id: Arc<str>,
    /// The YAML `priority`, if set.
    pub priority: Option<BucketPriority>,
    pub accept_dangerous: bool,
}

/// A parameter query before its outputs are put in the definition's bucket-parameter order.
pub(crate) struct CompiledParameterQuery {
    pub bucket_parameters: Vec<Arc<str>>,
    priority: BucketPriority,
    kind: PendingKind,
}

enum PendingKind {
    Static {
        filter: Option<Expr>,
        outputs: Vec<(Arc<str>, Expr)>,
    },
    TableValued {
        call: Expr,
        filter: Option<Expr>,
        outputs: Vec<(Arc<str>, Expr)>,
    },
    Lookup {
        query: LookupQuery,
        row_names: Vec<Arc<str>>,
        request_outputs: Vec<(Arc<str>, Expr)>,
    },
}

fn ordered(outputs: &[(Arc<str>, Expr)], names: &[Arc<str>]) -> Vec<Expr> {
    names
        .iter()
        .map(|n| {
            outputs
                .iter()
                .find(|(o, _)| o == n)
                .map_or(Expr::Const(SqliteValue::Null), |(_, e)| e.clone())
        })
        .collect()
}

/// Where "Must SELECT from a single table" points: the first JOIN or the second item of a comma
/// join, i.e. the table that is one too many (the first table is fine on its own); a FROM
/// subquery or a missing FROM points at the first item or the SELECT.
fn extra_table_span(select: &Select) -> ast::Span {
    match select.from.as_slice() {
        [] => select.span,
        [first, rest @ ..] => first
            .joins
            .first()
            .map(|j| j.span)
            .or_else(|| rest.first().map(|f| f.source.span()))
            .unwrap_or_else(|| first.source.span()),
    }
}

/// The output name of a SELECT item: its alias or column name.
fn output_name(item: &SelectItem) -> Result<Arc<str>, (&'static str, ast::Span)> {
    match item {
        SelectItem::Star { .. } => Ok(Arc::from("*")),
        SelectItem::Expr { alias: Some(a), .. } => Ok(Arc::from(a.name.as_str())),
        SelectItem::Expr {
            expr, alias: None, ..
        } => match &expr.kind {
            ast::ExprKind::Column { name, .. } => Ok(Arc::from(name.name.as_str())),
            _ => Err(("alias is required", expr.span)),
        },
    }
}

impl Compiler<'_> {
    /// Parses an SQL string that must be exactly one SELECT.
    pub(crate) fn parse_select(&mut self, source: &SqlSource<'_>) -> Option<Select> {
        let statements = match parse_statements(source.sql) {
            Ok(s) => s,
            Err(e) => {
                let position = self.sql_position(source, Some(e.span));
                self.report(
                    Severity::Error,
                    format!("SQL is invalid: {}", e.message),
                    position,
                );
                return None;
            }
        };
        if let Some(second) = statements.get(1) {
            let span = match second {
                Statement::Select(s) => s.span,
                Statement::Other { span, .. } => *span,
            };
            let position = self.sql_position(source, Some(span));
            self.report(
                Severity::Error,
                "Only a single SELECT statement is supported",
                position,
            );
            return None;
        }
        match statements.into_iter().next() {
            Some(Statement::Select(select)) => Some(*select),
            Some(Statement::Other { span, .. }) => {
                let position = self.sql_position(source, Some(span));
                self.report(Severity::Error, "Only SELECT statements are supported", position);
                None
            }
            None => {
                let position = source.node.position;
                self.report(Severity::Error, "Only SELECT statements are supported", position);
                None
            }
        }
    }

    /// Clauses the dialect does not support (reported, compilation goes on).
    pub(crate) fn check_unsupported_clauses(&mut self, source: &SqlSource<'_>, select: &Select) {
        let checks = [
            (select.limit, "LIMIT is not supported"),
            (select.order_by, "ORDER BY is not supported"),
            (select.offset, "SKIP is not supported"),
            (select.having, "HAVING is not supported"),
            (select.group_by, "GROUP BY is not supported"),
            (select.distinct, "DISTINCT is not supported"),
            (select.locking, "SELECT FOR is not supported"),
        ];
        for (span, message) in checks {
            if let Some(span) = span {
                let position = self.sql_position(source, Some(span));
                self.report(Severity::Error, message, position);
            }
        }
    }

    /// The single plain table of a FROM clause, or an error "Must SELECT from a single table".
    pub(crate) fn single_table<'s>(
        &mut self,
        source: &SqlSource<'_>,
        select: &'s Select,
    ) -> Option<(TablePattern, &'s ast::Ident, Option<&'s ast::Ident>, ast::Span)> {
        let single = match select.from.as_slice() {
            [
                FromItem {
                    source:
                        TableSource::Table {
                            qualifiers,
                            name,
                            alias,
                            span,
                        },
                    joins,
                },
            ] if joins.is_empty() => Some((qualifiers, name, alias.as_ref(), *span)),
            _ => None,
        };
        let Some((qualifiers, name, alias, span)) = single else {
            let position = self.sql_position(source, Some(extra_table_span(select)));
            self.report(Severity::Error, "Must SELECT from a single table", position);
            return None;
        };
        let (tag, schema) = match qualifiers.as_slice() {
            [] => (DEFAULT_CONNECTION_TAG, self.options.default_schema.as_str()),
            [schema] => (DEFAULT_CONNECTION_TAG, schema.name.as_str()),
            [tag, schema, ..] => (tag.name.as_str(), schema.name.as_str()),
        };
        Some((TablePattern::new(tag, schema, &name.name), name, alias, span))
    }

    /// The single table of a query, bound as the scope's row table (with the columns a schema
    /// knows for it; an unaliased name is checked for case). Reports "Must SELECT from a single
    /// table" otherwise.
    pub(crate) fn bind_single_table<'s>(
        &mut self,
        source: &SqlSource<'_>,
        select: &'s Select,
        scope: &mut QueryScope<'_>,
    ) -> Option<BoundTable<'s>> {
        let (pattern, name, alias, span) = self.single_table(source, select)?;
        if alias.is_none() {
            scope.check_identifier_case(name);
        }
        let known_columns = self.schema_columns(source, &pattern, span);
        scope.value_table = Some(ValueTable {
            sql_name: alias.map_or_else(|| name.name.clone(), |a| a.name.clone()),
            known_columns: known_columns.clone(),
        });
        Some(BoundTable {
            pattern,
            name,
            alias,
            span,
            known_columns,
        })
    }

    /// Known columns of the tables a pattern matches; warns when there are none.
    pub(crate) fn schema_columns(
        &mut self,
        source: &SqlSource<'_>,
        pattern: &TablePattern,
        span: ast::Span,
    ) -> Option<Vec<String>> {
        let schema = self.options.schema.as_ref()?;
        let tables: Vec<_> = schema.tables_matching(pattern).collect();
        if tables.is_empty() {
            let message = format!("Table {}.{} not found", pattern.schema, pattern.display_name());
            let position = self.sql_position(source, Some(span));
            self.report(Severity::Warning, message, position);
            return None;
        }
        let mut columns: Vec<String> = Vec::new();
        for t in tables {
            for (c, _) in &t.columns {
                if !columns.contains(c) {
                    columns.push(c.clone());
                }
            }
        }
        Some(columns)
    }

    pub(crate) fn compile_data_query(
        &mut self,
        source: &SqlSource<'_>,
        definition: usize,
        definition_name: &Arc<str>,
        bucket_parameters: &[Arc<str>],
    ) {
        let Some(select) = self.parse_select(source) else {
            return;
        };
        self.check_unsupported_clauses(source, &select);
        let mut scope = QueryScope::new(source.sql, self.compat);
        let Some(BoundTable {
            pattern,
            name: table_name,
            alias,
            known_columns,
            ..
        }) = self.bind_single_table(source, &select, &mut scope)
        else {
            return;
        };
        scope.parameter_tables = vec!["bucket".into()];
        let filter = scope.compile_where(select.where_clause.as_ref());

        let input_names: Vec<String> = filter
            .as_ref()
            .map(|f| f.inputs.iter().map(|i| i.key.clone()).collect())
            .unwrap_or_default();
        let bucket_names: Vec<String> = bucket_parameters.iter().map(|p| format!("bucket.{p}")).collect();
        let mut all = input_names.clone();
        for b in &bucket_names {
            if !all.contains(b) {
                all.push(b.clone());
            }
        }
        if (filter.is_some() && all.len() != input_names.len()) || all.len() != bucket_parameters.len() {
            let message = format!(
                "Query must cover all bucket parameters. Expected: {} Got: {}",
                serde_json::to_string(&bucket_names).unwrap_or_default(),
                serde_json::to_string(&input_names).unwrap_or_default()
            );
            let position = self.sql_position(source, Some(select.span));
            self.report(Severity::Error, message, position);
        }

        let Some(columns) = self.output_columns(source, &mut scope, &select, known_columns.as_deref()) else {
            return;
        };
        let diagnostics = std::mem::take(&mut scope.diagnostics);
        self.report_sql(source, diagnostics);

        let Some(filter) = filter else { return };
        let parameter_inputs = bucket_names
            .iter()
            .map(|b| filter.inputs.iter().position(|i| &i.key == b))
            .collect();
        let output_table = output_table_name(&pattern, table_name, alias);
        self.data_queries.push(DataQuery {
            definition,
            bucket_prefix: Arc::clone(definition_name),
            table: pattern,
            output_table,
            slots: scope.slots,
            columns,
            filter: filter.filter,
            parameter_inputs,
        });
    }

    /// An `event_definitions` payload query: one SELECT from one table with valid output
    /// columns (like a data query, without bucket parameters or the `id` requirement). Only
    /// checked: events are not part of bucket sync.
    pub(crate) fn compile_event_query(&mut self, source: &SqlSource<'_>) {
        let Some(select) = self.parse_select(source) else {
            return;
        };
        self.check_unsupported_clauses(source, &select);
        let mut scope = QueryScope::new(source.sql, self.compat);
        if self.bind_single_table(source, &select, &mut scope).is_none() {
            return;
        }
        for item in &select.columns {
            let SelectItem::Expr { expr, .. } = item else {
                continue;
            };
            match output_name(item) {
                Ok(_) => {
                    scope.compile_row_value(expr);
                }
                Err((message, span)) => {
                    scope.error(message, Some(span));
                }
            }
        }
        let diagnostics = std::mem::take(&mut scope.diagnostics);
        self.report_sql(source, diagnostics);
    }

    /// The SELECT list of a data query or stream: output columns, and the `id` check.
    /// `None` after an error that aborts the query.
    pub(crate) fn output_columns(
        &mut self,
        source: &SqlSource<'_>,
        scope: &mut QueryScope<'_>,
        select: &Select,
        known_columns: Option<&[String]>,
    ) -> Option<Vec<OutputColumn>> {
        let mut has_id = false;
        let mut has_wildcard = false;
        let mut columns = Vec::new();
        for item in &select.columns {
            let name = match output_name(item) {
                Ok(n) => n,
                Err((message, span)) => {
                    // The reference aborts the whole query here.
                    scope.error(message, Some(span));
                    let diagnostics = std::mem::take(&mut scope.diagnostics);
                    self.report_sql(source, diagnostics);
                    return None;
                }
            };
            match item {
                SelectItem::Star { .. } => {
                    has_wildcard = true;
                    has_id |= known_columns.is_none_or(|c| c.iter().any(|c| c == "id"));
                    columns.push(OutputColumn::Star);
                }
                SelectItem::Expr { expr, alias, .. } => {
                    if let Some(a) = alias {
                        scope.check_identifier_case(a);
                    }
                    if name.as_ref() == "id" {
                        has_id = true;
                    }
                    if let Some(e) = scope.compile_row_value(expr) {
                        columns.push(OutputColumn::Named { name, expr: e });
                    }
                }
            }
        }
        if !has_id {
            let span = select.columns.first().map(|c| match c {
                SelectItem::Star { span, .. } | SelectItem::Expr { span, .. } => *span,
            });
            let position = self.sql_position(source, span.or(Some(select.span)));
            let severity = if has_wildcard {
                Severity::Warning
            } else {
                Severity::Error
            };
            self.report(severity, "Query must return an \"id\" column", position);
        }
        Some(columns)
    }

    /// `_priority` in a parameter query's SELECT list.
    fn extract_priority(&mut self, scope: &mut QueryScope<'_>, expr: &ast::Expr) -> Option<BucketPriority> {
        let ast::ExprKind::Literal(Literal::Integer(value)) = expr.kind else {
            scope.error("Priority must be a simple integer literal", Some(expr.span));
            return None;
        };
        let priority = BucketPriority::new(value);
        if priority.is_none() {
            scope.error(
                "Invalid value for priority, must be between 0 and 3 (inclusive).",
                Some(expr.span),
            );
        }
        priority
    }

    pub(crate) fn compile_parameter_query(
        &mut self,
        source: &SqlSource<'_>,
        options: &ParameterQueryOptions,
    ) -> Option<CompiledParameterQuery> {
        let select = self.parse_select(source)?;
        if select.from.is_empty() {
            return self.compile_static_parameter_query(source, &select, options);
        }
        self.check_unsupported_clauses(source, &select);
        if select.from.len() != 1 || !select.from[0].joins.is_empty() {
            let position = self.sql_position(source, Some(extra_table_span(&select)));
            self.report(Severity::Error, "Must SELECT from a single table", position);
            return None;
        }
        match &select.from[0].source {
            TableSource::Function {
                name,
                args,
                alias,
                span,
            } => {
                if name.name != "json_each" {
                    let position = self.sql_position(source, Some(*span));
                    self.report(
                        Severity::Error,
                        format!("Table-valued function {} is not defined.", name.name),
                        position,
                    );
                    return None;
                }
                let alias = alias
                    .as_ref()
                    .map_or_else(|| name.name.clone(), |a| a.name.clone());
                self.compile_table_valued_query(source, &select, args, alias, options)
            }
            TableSource::Subquery { span, .. } => {
                let position = self.sql_position(source, Some(*span));
                self.report(Severity::Error, "Subqueries are not supported yet", position);
                None
            }
            TableSource::Table { .. } => self.compile_lookup_query(source, &select, options),
        }
    }

    fn parameter_scope<'s>(&self, sql: &'s str) -> QueryScope<'s> {
        let mut scope = QueryScope::new(sql, self.compat);
        scope.parameter_tables = vec!["token_parameters".into(), "user_parameters".into()];
        scope.request_functions = Some(RequestFunctions::Request);
        scope.supports_parameter_expressions = true;
        scope
    }

    /// Output names of a parameter query (`_priority` excluded), or `None` after a fatal error.
    fn parameter_outputs(
        &mut self,
        source: &SqlSource<'_>,
        scope: &mut QueryScope<'_>,
        select: &Select,
    ) -> Option<Vec<Arc<str>>> {
        let mut names = Vec::new();
        for item in &select.columns {
            match output_name(item) {
                Ok(n) if n.as_ref() == "*" => {
                    let span = match item {
                        SelectItem::Star { span, .. } | SelectItem::Expr { span, .. } => *span,
                    };
                    scope.error("* is not supported here - use explicit columns", Some(span));
                    let diagnostics = std::mem::take(&mut scope.diagnostics);
                    self.report_sql(source, diagnostics);
                    return None;
                }
                Ok(n) => {
                    if n.as_ref() != "_priority" {
                        names.push(n);
                    }
                }
                Err((message, span)) => {
                    scope.error(message, Some(span));
                    let diagnostics = std::mem::take(&mut scope.diagnostics);
                    self.report_sql(source, diagnostics);
                    return None;
                }
            }
        }
        Some(names)
    }

    fn finish_scope(
        &mut self,
        source: &SqlSource<'_>,
        scope: &mut QueryScope<'_>,
        dangerous: bool,
        options: &ParameterQueryOptions,
    ) {
        let diagnostics = std::mem::take(&mut scope.diagnostics);
        self.report_sql(source, diagnostics);
        if dangerous && !options.accept_dangerous {
            let position = source.node.position;
            self.report(Severity::Warning, DANGEROUS_QUERY_WARNING, position);
        }
    }

    /// Bucket parameter columns compiled as request values; `_priority` handled.
    fn request_outputs(
        &mut self,
        scope: &mut QueryScope<'_>,
        select: &Select,
        options: &ParameterQueryOptions,
        priority: &mut Option<BucketPriority>,
        row_columns_allowed: bool,
    ) -> (NamedExprs, NamedExprs, Usage) {
        let mut request_outputs = Vec::new();
        let mut row_outputs = Vec::new();
        let mut usage = Usage::default();
        for item in &select.columns {
            let SelectItem::Expr { expr, alias, .. } = item else {
                continue;
            };
            let Ok(name) = output_name(item) else { continue };
            if let Some(a) = alias {
                scope.check_identifier_case(a);
            }
            if name.as_ref() == "_priority" {
                if priority.is_some() || options.priority.is_some() {
                    // At the `_priority` column that sets it again, not at the whole query.
                    scope.error("Cannot set priority multiple times.", Some(expr.span));
                    continue;
                }
                *priority = self.extract_priority(scope, expr);
                continue;
            }
            if row_columns_allowed && scope.is_row_reference(expr) {
                if let Some(e) = scope.compile_row_value(expr) {
                    row_outputs.push((name, e));
                }
            } else if let Some(p) = scope.compile_param_value(expr) {
                usage = usage.union(p.usage);
                request_outputs.push((name, p.expr.unwrap_or(Expr::Const(SqliteValue::Null))));
            }
        }
        (request_outputs, row_outputs, usage)
    }

    fn compile_static_parameter_query(
        &mut self,
        source: &SqlSource<'_>,
        select: &Select,
        options: &ParameterQueryOptions,
    ) -> Option<CompiledParameterQuery> {
        self.check_unsupported_clauses(source, select);
        let mut scope = self.parameter_scope(source.sql);
        let filter = match &select.where_clause {
            Some(w) => scope.compile_param_value(w),
            None => Some(super::clause::ParamValue {
                key: "1".into(),
                expr: Some(Expr::Const(SqliteValue::Integer(1))),
                usage: Usage::default(),
            }),
        };
        let bucket_parameters = self.parameter_outputs(source, &mut scope, select)?;
        let mut priority = None;
        let (outputs, _, output_usage) =
            self.request_outputs(&mut scope, select, options, &mut priority, false);
        let filter_usage = filter.as_ref().map(|f| f.usage).unwrap_or_default();
        let dangerous =
            (filter_usage.unauthenticated || output_usage.unauthenticated) && !output_usage.authenticated;
        self.finish_scope(source, &mut scope, dangerous, options);
        Some(CompiledParameterQuery {
            bucket_parameters,
            priority: priority.or(options.priority).unwrap_or_default(),
            kind: PendingKind::Static {
                filter: filter.and_then(|f| f.expr),
                outputs,
            },
        })
    }

    fn compile_table_valued_query(
        &mut self,
        source: &SqlSource<'_>,
        select: &Select,
        args: &[ast::Expr],
        alias: String,
        options: &ParameterQueryOptions,
    ) -> Option<CompiledParameterQuery> {
        let mut scope = self.parameter_scope(source.sql);
        scope.parameter_tables.push(alias.clone());
        scope.each_table = Some(alias);
        let filter = match &select.where_clause {
            Some(w) => scope.compile_param_value(w),
            None => None,
        };
        let call = match args {
            [arg] => scope.compile_param_value(arg),
            _ => {
                scope.error("json_each expects 1 argument", Some(select.span));
                None
            }
        };
        let bucket_parameters = self.parameter_outputs(source, &mut scope, select)?;
        let mut priority = None;
        let (outputs, _, output_usage) =
            self.request_outputs(&mut scope, select, options, &mut priority, false);
        let usage = filter
            .as_ref()
            .map(|f| f.usage)
            .unwrap_or_default()
            .union(call.as_ref().map(|c| c.usage).unwrap_or_default());
        let dangerous =
            (usage.unauthenticated || output_usage.unauthenticated) && !output_usage.authenticated;
        self.finish_scope(source, &mut scope, dangerous, options);
        let call = call.and_then(|c| c.expr)?;
        Some(CompiledParameterQuery {
            bucket_parameters,
            priority: priority.or(options.priority).unwrap_or_default(),
            kind: PendingKind::TableValued {
                call,
                filter: filter.and_then(|f| f.expr),
                outputs,
            },
        })
    }

    fn compile_lookup_query(
        &mut self,
        source: &SqlSource<'_>,
        select: &Select,
        options: &ParameterQueryOptions,
    ) -> Option<CompiledParameterQuery> {
        let mut scope = self.parameter_scope(source.sql);
        let BoundTable {
            pattern,
            alias,
            span: table_span,
            ..
        } = self.bind_single_table(source, select, &mut scope)?;
        if alias.is_some() {
            let position = self.sql_position(source, Some(table_span));
            self.report(
                Severity::Error,
                "Table aliases not supported in parameter queries",
                position,
            );
        }
        scope.supports_expanding = true;
        let filter = scope.compile_where(select.where_clause.as_ref());
        let bucket_parameters = self.parameter_outputs(source, &mut scope, select)?;
        let mut priority = None;
        let (request_outputs, row_outputs, output_usage) =
            self.request_outputs(&mut scope, select, options, &mut priority, true);
        let expanded_input = scope.expanded_input(filter.as_ref(), None);
        let match_usage = filter.as_ref().map(|f| f.usage).unwrap_or_default();
        let dangerous = (match_usage.unauthenticated || output_usage.unauthenticated)
            && !output_usage.authenticated
            && !match_usage.authenticated;
        self.finish_scope(source, &mut scope, dangerous, options);
        let filter = filter?;
        let row_names: Vec<Arc<str>> = row_outputs.iter().map(|(n, _)| Arc::clone(n)).collect();
        let query = LookupQuery {
            definition: options.definition,
            id: Arc::clone(&options.query_id),
            table: pattern,
            slots: scope.slots,
            filter: filter.filter,
            inputs: filter.inputs,
            expanded_input,
            row_outputs: row_outputs.into_iter().map(|(_, e)| e).collect(),
            bucket_parameters: Vec::new(),
        };
        Some(CompiledParameterQuery {
            bucket_parameters,
            priority: priority.or(options.priority).unwrap_or_default(),
            kind: PendingKind::Lookup {
                query,
                row_names,
                request_outputs,
            },
        })
    }
}

impl CompiledParameterQuery {
    /// Orders outputs as the definition's bucket parameters (set by its first parameter query).
    pub(crate) fn into_querier(self, compiler: &mut Compiler<'_>, names: &[Arc<str>]) -> ParameterQuerier {
        let kind = match self.kind {
            PendingKind::Static { filter, outputs } => QuerierKind::Static {
                filter,
                outputs: ordered(&outputs, names),
            },
            PendingKind::TableValued {
                call,
                filter,
                outputs,
            } => QuerierKind::TableValued {
                call,
                filter,
                outputs: ordered(&outputs, names),
            },
            PendingKind::Lookup {
                mut query,
                row_names,
                request_outputs,
            } => {
                query.bucket_parameters = names
                    .iter()
                    .map(|n| match row_names.iter().position(|r| r == n) {
                        Some(i) => LookupOutput::Row(i),
                        None => LookupOutput::Request(
                            request_outputs
                                .iter()
                                .find(|(o, _)| o == n)
                                .map_or(Expr::Const(SqliteValue::Null), |(_, e)| e.clone()),
                        ),
                    })
                    .collect();
                compiler.lookup_queries.push(query);
                QuerierKind::Lookup {
                    query: compiler.lookup_queries.len() - 1,
                }
            }
        };
        ParameterQuerier {
            priority: self.priority,
            kind,
        }
    }
}
