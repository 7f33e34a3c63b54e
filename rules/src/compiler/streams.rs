//! Sync streams: edition-2 ("alpha") streams and the edition-3 subset (SYNC_RULES.md §7).
//!
//! A stream query's WHERE clause is brought into disjunctive normal form; each OR branch is a
//! *variant* with its own bucket-id prefix `<stream>|<n>`. Within a branch, every condition that
//! ties a row value to request data becomes one bucket parameter (in order of appearance):
//! a request value, each element of a request array, or the values a subquery (a parameter
//! lookup) finds. Row-only conditions filter rows; request-only conditions filter connections.

use std::sync::Arc;

use syncgate_protocol::BucketPriority;

use super::clause::{Clause, MatchFilter, QueryScope, RequestFunctions};
use super::queries::{BoundTable, output_table_name};
use super::{Compiler, SqlSource};
use crate::diagnostic::Severity;
use crate::expr::Expr;
use crate::sql::ast::{self, BinaryOp, ExprKind, InRhs, Select, SelectItem, UnaryOp};
use crate::sync_rules::{DataQuery, Definition, DefinitionKind, LookupQuery, StreamParameter, StreamVariant};
use crate::yaml::{Position, YamlNode};

pub(crate) struct StreamOptions {
    pub name: Arc<str>,
    pub auto_subscribe: bool,
    pub priority: BucketPriority,
}

/// A common table expression (edition 3 `with:`).
pub(crate) struct Cte {
    pub name: String,
    pub position: Position,
    node: YamlNode,
    select: Select,
}

/// One condition of a DNF conjunct.
struct Atom<'e> {
    expr: &'e ast::Expr,
    negated: bool,
}

fn to_dnf(expr: &ast::Expr, negated: bool) -> Vec<Vec<Atom<'_>>> {
    match (&expr.kind, negated) {
        (
            ExprKind::Binary {
                op: BinaryOp::And,
                left,
                right,
                ..
            },
            false,
        )
        | (
            ExprKind::Binary {
                op: BinaryOp::Or,
                left,
                right,
                ..
            },
            true,
        ) => {
            let l = to_dnf(left, negated);
            let r = to_dnf(right, negated);
            let mut out = Vec::with_capacity(l.len() * r.len());
            for a in &l {
                for b in &r {
                    let mut c: Vec<Atom<'_>> = a
                        .iter()
                        .map(|x| Atom {
                            expr: x.expr,
                            negated: x.negated,
                        })
                        .collect();
                    c.extend(b.iter().map(|x| Atom {
                        expr: x.expr,
                        negated: x.negated,
                    }));
                    out.push(c);
                }
            }
            out
        }
        (
            ExprKind::Binary {
                op: BinaryOp::Or,
                left,
                right,
                ..
            },
            false,
        )
        | (
            ExprKind::Binary {
                op: BinaryOp::And,
                left,
                right,
                ..
            },
            true,
        ) => {
            let mut out = to_dnf(left, negated);
            out.extend(to_dnf(right, negated));
            out
        }
        (
            ExprKind::Unary {
                op: UnaryOp::Not,
                operand,
            },
            _,
        ) => to_dnf(operand, !negated),
        _ => vec![vec![Atom { expr, negated }]],
    }
}

/// A compiled OR branch of one stream query.
struct VariantParts {
    parameters: Vec<StreamParameter>,
    signature: Vec<String>,
    data_filters: Vec<MatchFilter>,
    request_filters: Vec<Expr>,
}

impl Compiler<'_> {
    pub(crate) fn parse_ctes(&mut self, map: &YamlNode) -> Vec<Cte> {
        let Some(entries) = map.as_mapping() else {
            self.error_at(map, "'with' must be an object");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, (key, value)) in entries.iter().enumerate() {
            let Some(name) = key.as_scalar() else { continue };
            // A repeated name would silently lose to the first one.
            if entries[..i].iter().any(|(k, _)| k.as_scalar() == Some(name)) {
                self.error_at(key, format!("Map keys must be unique: '{name}'"));
                continue;
            }
            let Some(source) = self.sql_scalar(value, "Must be a string.") else {
                continue;
            };
            // SQL errors point at the offending token, as in every other query (§10).
            let Some(select) = self.parse_stream_select(&source) else {
                continue;
            };
            if let Some(span) = star_span(&select) {
                let position = self.sql_position(&source, Some(span));
                self.report(
                    Severity::Error,
                    "* columns are not allowed in subqueries or common table expressions",
                    position,
                );
                continue;
            }
            if select.columns.len() != 1 {
                let position = self.sql_position(&source, Some(select.span));
                self.report(
                    Severity::Error,
                    "Common-table expression must return a single column",
                    position,
                );
                continue;
            }
            out.push(Cte {
                name: name.to_string(),
                position: key.position,
                node: value.clone(),
                select,
            });
        }
        out
    }

    /// Compiles the queries of one stream. Returns the names of the CTEs it used.
    pub(crate) fn compile_stream(
        &mut self,
        stream: &StreamOptions,
        queries: &[SqlSource<'_>],
        ctes: &[&Cte],
    ) -> Vec<String> {
        let definition = self.definitions.len();
        self.definitions.push(Definition {
            name: Arc::clone(&stream.name),
            kind: DefinitionKind::Stream {
                auto_subscribe: stream.auto_subscribe,
                priority: stream.priority,
                variants: Vec::new(),
            },
        });
        let mut used_ctes = Vec::new();
        let mut variants: Vec<(StreamVariant, Vec<String>)> = Vec::new();
        for (query_index, source) in queries.iter().enumerate() {
            let Some(select) = self.parse_stream_select(source) else {
                continue;
            };
            self.check_unsupported_clauses(source, &select);
            let mut scope = self.stream_scope(source.sql);
            let Some(BoundTable {
                pattern,
                name: table_name,
                alias,
                known_columns,
                ..
            }) = self.bind_single_table(source, &select, &mut scope)
            else {
                continue;
            };
            let conjuncts = match &select.where_clause {
                Some(w) => to_dnf(w, false),
                None => vec![Vec::new()],
            };
            let mut parts = Vec::new();
            for conjunct in &conjuncts {
                let compiled =
                    self.compile_conjunct(source, &mut scope, conjunct, ctes, definition, &mut used_ctes);
                parts.push(compiled);
            }
            let columns = self.output_columns(source, &mut scope, &select, known_columns.as_deref());
            let diagnostics = std::mem::take(&mut scope.diagnostics);
            let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
            self.report_sql(source, diagnostics);
            let (Some(columns), false) = (columns, failed) else {
                continue;
            };
            let parts: Vec<VariantParts> = parts.into_iter().flatten().collect();
            if parts.len() != conjuncts.len() {
                continue;
            }
            let mut taken = vec![false; variants.len()];
            for part in parts {
                // Queries of one stream share a bucket source when their parameters match.
                let shared = (query_index > 0)
                    .then(|| {
                        variants
                            .iter()
                            .enumerate()
                            .position(|(i, (_, sig))| !taken[i] && *sig == part.signature)
                    })
                    .flatten();
                let variant_index = match shared {
                    Some(i) => {
                        taken[i] = true;
                        i
                    }
                    None => {
                        variants.push((
                            StreamVariant {
                                bucket_prefix: Arc::from(format!("{}|{}", stream.name, variants.len())),
                                parameters: part.parameters,
                                request_filters: part.request_filters,
                            },
                            part.signature.clone(),
                        ));
                        variants.len() - 1
                    }
                };
                let filter = part
                    .data_filters
                    .into_iter()
                    .reduce(|a, b| MatchFilter::And(Box::new(a), Box::new(b)))
                    .unwrap_or(MatchFilter::Condition(Expr::Const(
                        crate::value::SqliteValue::Integer(1),
                    )));
                let parameter_count = variants[variant_index].0.parameters.len();
                let output_table = output_table_name(&pattern, table_name, alias);
                self.data_queries.push(DataQuery {
                    definition,
                    bucket_prefix: Arc::clone(&variants[variant_index].0.bucket_prefix),
                    table: pattern.clone(),
                    output_table,
                    slots: scope.slots.clone(),
                    columns: columns.clone(),
                    filter,
                    parameter_inputs: (0..parameter_count).map(Some).collect(),
                });
            }
        }
        if let DefinitionKind::Stream { variants: v, .. } = &mut self.definitions[definition].kind {
            *v = variants.into_iter().map(|(v, _)| v).collect();
        }
        used_ctes
    }

    /// One SELECT statement; shares the checks (and positions) of bucket-definition queries.
    fn parse_stream_select(&mut self, source: &SqlSource<'_>) -> Option<Select> {
        self.parse_select(source)
    }

    fn stream_scope<'s>(&self, sql: &'s str) -> QueryScope<'s> {
        let mut scope = QueryScope::new(sql, self.compat);
        scope.request_functions = Some(RequestFunctions::Streams);
        scope.supports_parameter_expressions = true;
        scope.supports_expanding = true;
        scope
    }

    fn compile_conjunct(
        &mut self,
        source: &SqlSource<'_>,
        scope: &mut QueryScope<'_>,
        atoms: &[Atom<'_>],
        ctes: &[&Cte],
        definition: usize,
        used_ctes: &mut Vec<String>,
    ) -> Option<VariantParts> {
        let mut parts = VariantParts {
            parameters: Vec::new(),
            signature: Vec::new(),
            data_filters: Vec::new(),
            request_filters: Vec::new(),
        };
        let mut ok = true;
        for atom in atoms {
            // Subquery forms: `row IN (SELECT ...)`, `row IN cte`, `row_array && (SELECT ...)`.
            let subquery = match &atom.expr.kind {
                ExprKind::In {
                    operand,
                    rhs: InRhs::Subquery(select),
                    negated: false,
                } => Some((operand.as_ref(), SubquerySource::Inline(select), false)),
                ExprKind::In {
                    operand,
                    rhs: InRhs::Bare(target),
                    negated: false,
                } => match &target.kind {
                    ExprKind::Column { qualifiers, name } if qualifiers.is_empty() => ctes
                        .iter()
                        .find(|c| c.name.eq_ignore_ascii_case(&name.name))
                        .map(|c| (operand.as_ref(), SubquerySource::Cte(c), false)),
                    _ => None,
                },
                ExprKind::Binary {
                    op: BinaryOp::Overlap,
                    left,
                    right,
                    ..
                } => match &right.kind {
                    ExprKind::Subquery(select) => Some((left.as_ref(), SubquerySource::Inline(select), true)),
                    _ => None,
                },
                _ => None,
            };
            if let Some((operand, sub, overlap)) = subquery {
                if atom.negated {
                    scope.error("Negations are not allowed here", Some(atom.expr.span));
                    ok = false;
                    continue;
                }
                let Some(row) = scope.compile_row_value(operand) else {
                    ok = false;
                    continue;
                };
                let lookup = match sub {
                    SubquerySource::Inline(select) => {
                        self.compile_subquery(source, select, definition, scope)
                    }
                    SubquerySource::Cte(cte) => {
                        if !used_ctes.contains(&cte.name) {
                            used_ctes.push(cte.name.clone());
                        }
                        let cte_source = SqlSource {
                            sql: cte.node.as_scalar().unwrap_or_default(),
                            node: &cte.node,
                        };
                        let mut cte_scope = self.stream_scope(cte_source.sql);
                        let lookup =
                            self.compile_subquery(&cte_source, &cte.select, definition, &mut cte_scope);
                        let diagnostics = std::mem::take(&mut cte_scope.diagnostics);
                        self.report_sql(&cte_source, diagnostics);
                        lookup
                    }
                };
                let Some(lookup) = lookup else {
                    ok = false;
                    continue;
                };
                let input = parts.parameters.len();
                parts.signature.push(format!("lookup:{lookup}"));
                parts.parameters.push(StreamParameter::Lookup(lookup));
                parts.data_filters.push(if overlap {
                    MatchFilter::InRowArray { input, row }
                } else {
                    MatchFilter::Equals { input, row }
                });
                continue;
            }
            match scope.compile(atom.expr) {
                Clause::Error => ok = false,
                Clause::Static(v) => {
                    let e = Expr::Const(v);
                    parts
                        .data_filters
                        .push(MatchFilter::Condition(negate(e, atom.negated)));
                }
                Clause::Row(e) => parts
                    .data_filters
                    .push(MatchFilter::Condition(negate(e, atom.negated))),
                Clause::Param(p) => {
                    parts.signature.push(format!("filter:{}", p.key));
                    parts.request_filters.push(negate(
                        p.expr.unwrap_or(Expr::Const(Default::default())),
                        atom.negated,
                    ));
                }
                Clause::Match(m) => {
                    let single = match (&m.filter, m.inputs.as_slice(), atom.negated) {
                        (MatchFilter::Equals { row, .. }, [input], false) => {
                            Some((row.clone(), input, false))
                        }
                        (MatchFilter::InRowArray { row, .. }, [input], false) => {
                            Some((row.clone(), input, true))
                        }
                        _ => None,
                    };
                    let Some((row, input, in_row_array)) = single else {
                        scope.error(
                            "This condition is not supported in sync streams",
                            Some(atom.expr.span),
                        );
                        ok = false;
                        continue;
                    };
                    let index = parts.parameters.len();
                    let request = input.expr.clone().unwrap_or(Expr::Const(Default::default()));
                    parts.signature.push(format!(
                        "{}:{}",
                        if input.expands { "each" } else { "value" },
                        input.key
                    ));
                    parts.parameters.push(if input.expands {
                        StreamParameter::ArrayElements(request)
                    } else {
                        StreamParameter::Value(request)
                    });
                    parts.data_filters.push(if in_row_array {
                        MatchFilter::InRowArray { input: index, row }
                    } else {
                        MatchFilter::Equals { input: index, row }
                    });
                }
            }
        }
        ok.then_some(parts)
    }

    /// `SELECT c FROM t WHERE <match>` as a parameter lookup; returns its index.
    fn compile_subquery(
        &mut self,
        source: &SqlSource<'_>,
        select: &Select,
        definition: usize,
        outer: &mut QueryScope<'_>,
    ) -> Option<usize> {
        // `*` is reported at the star; two columns are not a `*` problem (the message used to say
        // so) but a column count one.
        if let Some(span) = star_span(select) {
            outer.error(
                "* columns are not allowed in subqueries or common table expressions",
                Some(span),
            );
            return None;
        }
        if select.columns.len() != 1 {
            outer.error("This subquery must return exactly one column", Some(select.span));
            return None;
        }
        self.check_unsupported_clauses(source, select);
        let mut scope = self.stream_scope(source.sql);
        let pattern = self.bind_single_table(source, select, &mut scope)?.pattern;
        let filter = scope.compile_where(select.where_clause.as_ref());
        let SelectItem::Expr { expr, .. } = &select.columns[0] else {
            return None;
        };
        let output = scope.compile_row_value(expr);
        let expanded_input = scope.expanded_input(filter.as_ref(), Some(select.span));
        let diagnostics = std::mem::take(&mut scope.diagnostics);
        let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
        outer.diagnostics.extend(diagnostics);
        if failed {
            return None;
        }
        let (filter, output) = (filter?, output?);
        let id = Arc::from(format!("sq{}", self.lookup_queries.len()));
        self.lookup_queries.push(LookupQuery {
            definition,
            id,
            table: pattern,
            slots: scope.slots,
            filter: filter.filter,
            inputs: filter.inputs,
            expanded_input,
            row_outputs: vec![output],
            bucket_parameters: Vec::new(),
        });
        Some(self.lookup_queries.len() - 1)
    }
}

/// The first `*` / `t.*` of a SELECT list.
fn star_span(select: &Select) -> Option<ast::Span> {
    select.columns.iter().find_map(|c| match c {
        SelectItem::Star { span, .. } => Some(*span),
        SelectItem::Expr { .. } => None,
    })
}

enum SubquerySource<'s> {
    Inline(&'s Select),
    Cte(&'s Cte),
}

fn negate(e: Expr, negated: bool) -> Expr {
    if negated { Expr::Not(Box::new(e)) } else { e }
}
