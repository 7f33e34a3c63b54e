//! Classifies and compiles SQL expressions of one query.
//!
//! Every expression is one of: a constant; a *row value* (reads the source row); a *parameter
//! value* (reads request values, or names a bucket parameter); a *parameter match* (a filter
//! that, given a row, yields the sets of parameter values that make it true); or an error
//! (already reported). Functions and operators compose these by fixed rules (constant ∘ X = X,
//! row ∘ parameter is an error), the same classification the reference implementation uses, so
//! the same queries are accepted and rejected with the same messages.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::compat::Compatibility;
use crate::diagnostic::Severity;
use crate::error::EvalError;
use crate::expr::{EvalContext, Expr, ParameterUsage, RequestValue};
use crate::functions::{self, ArithOp, CastType, CompareOp};
use crate::sql::ast::{self, BinaryOp, ExprKind, InRhs, Literal, Span, UnaryOp};
use crate::value::SqliteValue;

/// A diagnostic inside one SQL string, positioned by byte span.
#[derive(Debug, Clone)]
pub(crate) struct SqlDiagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Option<Span>,
}

/// Who a parameter value or match depends on, for the "potentially dangerous" warning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub authenticated: bool,
    pub unauthenticated: bool,
    pub subscription: bool,
}

impl Usage {
    pub(crate) fn union(self, other: Usage) -> Usage {
        Usage {
            authenticated: self.authenticated || other.authenticated,
            unauthenticated: self.unauthenticated || other.unauthenticated,
            subscription: self.subscription || other.subscription,
        }
    }

    fn of(usage: ParameterUsage) -> Usage {
        match usage {
            ParameterUsage::Authenticated => Usage {
                authenticated: true,
                ..Usage::default()
            },
            ParameterUsage::Unauthenticated => Usage {
                unauthenticated: true,
                ..Usage::default()
            },
            ParameterUsage::Subscription => Usage {
                unauthenticated: true,
                subscription: true,
                ..Usage::default()
            },
        }
    }
}

/// A value computed from request values (or naming a bucket parameter in a data query).
#[derive(Debug, Clone)]
pub(crate) struct ParamValue {
    /// Identity of the value, e.g. `bucket.uid` or `request.user_id()`; equal keys mean the same input.
    pub key: String,
    /// How to compute it for a request. `None` for `bucket.x`, which only data queries use.
    pub expr: Option<Expr>,
    pub usage: Usage,
}

/// One input of a parameter match: a value the request supplies and the row side must equal.
#[derive(Debug, Clone)]
pub(crate) struct MatchInput {
    pub key: String,
    /// `row_value IN request_array`: the request side is an array, one lookup per element.
    pub expands: bool,
    /// Request-side value (already converted to 1/0 for boolean inputs).
    pub expr: Option<Expr>,
    /// The condition that introduced the input, for diagnostics about it.
    pub span: Option<Span>,
}

/// The row-side evaluation of a parameter match.
#[derive(Debug, Clone)]
pub(crate) enum MatchFilter {
    /// A row-only condition: all-or-nothing.
    Condition(Expr),
    /// `row_value = <input>`.
    Equals {
        input: usize,
        row: Expr,
    },
    /// `<input> IN row_json_array` or `row_json_array && <input>`: one set per array element.
    InRowArray {
        input: usize,
        row: Expr,
    },
    /// A boolean parameter condition: the row side is always 1.
    ParameterTrue {
        input: usize,
    },
    And(Box<MatchFilter>, Box<MatchFilter>),
    Or(Box<MatchFilter>, Box<MatchFilter>),
}

#[derive(Debug, Clone)]
pub(crate) struct ParamMatch {
    pub inputs: Vec<MatchInput>,
    pub unbounded: bool,
    pub filter: MatchFilter,
    pub usage: Usage,
}

/// One set of input values that make a match true for a row.
pub(crate) type ParamSet = SmallVec<[(usize, SqliteValue); 4]>;

/// All sets that make a match true for one row (usually zero or one).
pub(crate) type ParamSets = SmallVec<[ParamSet; 1]>;

/// The distinct elements of a JSON array value, compared as bucket parameters are.
pub(crate) fn distinct_array_elements(array: &SqliteValue) -> Result<Vec<SqliteValue>, EvalError> {
    let mut distinct: Vec<SqliteValue> = Vec::new();
    for e in functions::json_array_elements(array)? {
        if !distinct.iter().any(|d| d.key_eq(&e)) {
            distinct.push(e);
        }
    }
    Ok(distinct)
}

/// One part of a conjunctive filter (see [`MatchFilter::conjunction`]).
#[derive(Debug, Clone)]
pub(crate) enum FilterPart {
    Condition(Expr),
    /// `row_value = <the parameter>`.
    Equals(Expr),
    /// `<the parameter> IN row_array`.
    InRowArray(Expr),
}

impl MatchFilter {
    /// The filter as a flat AND of row conditions and at most one parameter match on `input`,
    /// in evaluation order; `None` for any other shape (OR, several parameters, boolean inputs).
    /// Most data queries have this shape, and it evaluates without building parameter sets.
    pub(crate) fn conjunction(&self, input: Option<usize>) -> Option<Vec<FilterPart>> {
        let mut parts = Vec::new();
        let mut params = 0;
        fn collect(
            f: &MatchFilter,
            input: Option<usize>,
            parts: &mut Vec<FilterPart>,
            params: &mut usize,
        ) -> bool {
            match f {
                MatchFilter::Condition(e) => parts.push(FilterPart::Condition(e.clone())),
                MatchFilter::Equals { input: i, row } if Some(*i) == input => {
                    *params += 1;
                    parts.push(FilterPart::Equals(row.clone()));
                }
                MatchFilter::InRowArray { input: i, row } if Some(*i) == input => {
                    *params += 1;
                    parts.push(FilterPart::InRowArray(row.clone()));
                }
                MatchFilter::And(a, b) => {
                    return collect(a, input, parts, params) && collect(b, input, parts, params);
                }
                _ => return false,
            }
            true
        }
        (collect(self, input, &mut parts, &mut params) && params == usize::from(input.is_some()))
            .then_some(parts)
    }

    pub(crate) fn evaluate(&self, ctx: &EvalContext<'_>) -> Result<ParamSets, EvalError> {
        Ok(match self {
            MatchFilter::Condition(e) => {
                if e.eval_ref(ctx)?.is_truthy() {
                    smallvec::smallvec![ParamSet::new()]
                } else {
                    ParamSets::new()
                }
            }
            MatchFilter::Equals { input, row } => {
                let v = row.eval(ctx)?;
                // NULL never equals anything, and blobs cannot be bucket parameters.
                if matches!(v, SqliteValue::Null | SqliteValue::Blob(_)) {
                    ParamSets::new()
                } else {
                    smallvec::smallvec![smallvec::smallvec![(*input, v)]]
                }
            }
            MatchFilter::InRowArray { input, row } => {
                let v = row.eval_ref(ctx)?;
                if v.is_null() {
                    return Ok(ParamSets::new());
                }
                // One set per *distinct* element (SYNC_RULES.md §3: "duplicates are removed"),
                // compared as bucket parameters are (1 and 1.0 are the same). Unlike `OR`, whose
                // branches may legitimately place a row twice, `["a","a"]` places it once.
                // (The reference 0.38.1 places it once per element, duplicates included; the
                // spec's rule is followed here, see SYNC_RULES.md §3.)
                distinct_array_elements(&v)?
                    .into_iter()
                    .map(|e| smallvec::smallvec![(*input, e)])
                    .collect()
            }
            MatchFilter::ParameterTrue { input } => {
                smallvec::smallvec![smallvec::smallvec![(*input, SqliteValue::Integer(1))]]
            }
            MatchFilter::And(a, b) => {
                let left = a.evaluate(ctx)?;
                if left.is_empty() {
                    return Ok(left);
                }
                let right = b.evaluate(ctx)?;
                let mut out = ParamSets::with_capacity(left.len() * right.len());
                for l in &left {
                    for r in &right {
                        let mut combined = l.clone();
                        for (k, v) in r {
                            match combined.iter_mut().find(|(ck, _)| ck == k) {
                                Some(slot) => slot.1 = v.clone(),
                                None => combined.push((*k, v.clone())),
                            }
                        }
                        out.push(combined);
                    }
                }
                out
            }
            MatchFilter::Or(a, b) => {
                let mut out = a.evaluate(ctx)?;
                out.extend(b.evaluate(ctx)?);
                out
            }
        })
    }

    /// Renumbers inputs (used when merging the inputs of two matches).
    fn remap(&mut self, map: &[usize]) {
        match self {
            MatchFilter::Condition(_) => {}
            MatchFilter::Equals { input, .. }
            | MatchFilter::InRowArray { input, .. }
            | MatchFilter::ParameterTrue { input } => *input = map[*input],
            MatchFilter::And(a, b) | MatchFilter::Or(a, b) => {
                a.remap(map);
                b.remap(map);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Clause {
    Static(SqliteValue),
    Row(Expr),
    Param(ParamValue),
    Match(ParamMatch),
    Error,
}

impl Clause {
    fn is_row(&self) -> bool {
        matches!(self, Clause::Static(_) | Clause::Row(_))
    }

    fn is_param(&self) -> bool {
        matches!(self, Clause::Static(_) | Clause::Param(_))
    }

    fn row_expr(&self) -> Option<Expr> {
        match self {
            Clause::Static(v) => Some(Expr::Const(v.clone())),
            Clause::Row(e) => Some(e.clone()),
            _ => None,
        }
    }

    pub(crate) fn param_value(&self) -> Option<ParamValue> {
        match self {
            Clause::Static(v) => Some(ParamValue {
                key: static_key(v),
                expr: Some(Expr::Const(v.clone())),
                usage: Usage::default(),
            }),
            Clause::Param(p) => Some(p.clone()),
            _ => None,
        }
    }
}

fn static_key(v: &SqliteValue) -> String {
    let mut s = String::new();
    v.write_bucket_param(&mut s);
    s
}

/// Which request functions a query may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFunctions {
    /// `request.*` (parameter queries of bucket definitions).
    Request,
    /// `auth.*`, `subscription.*`, `connection.*` (sync streams).
    Streams,
}

/// A table whose columns are row values in this query.
#[derive(Debug, Clone)]
pub(crate) struct ValueTable {
    /// Name the query uses (alias or name).
    pub sql_name: String,
    /// Columns known from a schema, for "column not found" warnings.
    pub known_columns: Option<Vec<String>>,
}

/// The compilation context of one query.
pub(crate) struct QueryScope<'a> {
    pub sql: &'a str,
    pub compat: Compatibility,
    pub value_table: Option<ValueTable>,
    /// Tables whose columns are parameter values: `bucket`, `token_parameters`, `user_parameters`,
    /// or a `json_each(...)` alias.
    pub parameter_tables: Vec<String>,
    /// The `json_each` alias, whose columns read the table-valued row.
    pub each_table: Option<String>,
    pub request_functions: Option<RequestFunctions>,
    pub supports_expanding: bool,
    pub supports_parameter_expressions: bool,
    /// Column names read from the source row; `Expr::Column(i)` reads `slots[i]`.
    pub slots: Vec<Arc<str>>,
    pub diagnostics: Vec<SqlDiagnostic>,
}

impl<'a> QueryScope<'a> {
    pub(crate) fn new(sql: &'a str, compat: Compatibility) -> Self {
        QueryScope {
            sql,
            compat,
            value_table: None,
            parameter_tables: Vec::new(),
            each_table: None,
            request_functions: None,
            supports_expanding: false,
            supports_parameter_expressions: false,
            slots: Vec::new(),
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, message: impl Into<String>, span: Option<Span>) -> Clause {
        self.diagnostics.push(SqlDiagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
        });
        Clause::Error
    }

    pub(crate) fn warn(&mut self, message: impl Into<String>, span: Option<Span>) {
        self.diagnostics.push(SqlDiagnostic {
            severity: Severity::Warning,
            message: message.into(),
            span,
        });
    }

    pub(crate) fn slot(&mut self, column: &str) -> usize {
        match self.slots.iter().position(|s| s.as_ref() == column) {
            Some(i) => i,
            None => {
                self.slots.push(Arc::from(column));
                self.slots.len() - 1
            }
        }
    }

    /// A WHERE clause as a parameter match (a missing clause is always true).
    pub(crate) fn compile_where(&mut self, expr: Option<&ast::Expr>) -> Option<ParamMatch> {
        let clause = match expr {
            Some(e) => self.compile(e),
            None => Clause::Static(SqliteValue::Integer(1)),
        };
        to_match(clause)
    }

    /// The one input of a WHERE match that expands a request array (`row IN request_array`),
    /// reporting a second one as an error (at it, else at `fallback`).
    pub(crate) fn expanded_input(
        &mut self,
        filter: Option<&ParamMatch>,
        fallback: Option<Span>,
    ) -> Option<usize> {
        let filter = filter?;
        let mut expanding = filter.inputs.iter().enumerate().filter(|(_, i)| i.expands);
        let first = expanding.next().map(|(n, _)| n);
        if let Some((_, second)) = expanding.next() {
            self.error(
                "Cannot have multiple array input parameters",
                second.span.or(fallback),
            );
        }
        first
    }

    /// A SELECT-list expression that must be a row value.
    pub(crate) fn compile_row_value(&mut self, expr: &ast::Expr) -> Option<Expr> {
        match self.compile(expr) {
            Clause::Error => None,
            c if c.is_row() => c.row_expr(),
            _ => {
                self.error("Parameter match expression is not allowed here", Some(expr.span));
                None
            }
        }
    }

    /// An expression that must be a request value (or constant).
    pub(crate) fn compile_param_value(&mut self, expr: &ast::Expr) -> Option<ParamValue> {
        match self.compile(expr) {
            Clause::Error => None,
            c if c.is_param() => c.param_value(),
            _ => {
                self.error("Parameter match expression is not allowed here", Some(expr.span));
                None
            }
        }
    }

    /// Whether a column reference names a row column (and not a parameter table).
    pub(crate) fn is_row_reference(&self, expr: &ast::Expr) -> bool {
        let ExprKind::Column { qualifiers, .. } = &expr.kind else {
            return false;
        };
        match qualifiers.as_slice() {
            [] => self.value_table.is_some() && !self.default_is_parameter_table(),
            [t] => self.value_table.as_ref().is_some_and(|v| v.sql_name == t.name),
            _ => false,
        }
    }

    fn default_is_parameter_table(&self) -> bool {
        // For table-valued parameter queries the default table is the json_each alias.
        self.value_table.is_none() && self.each_table.is_some()
    }

    pub(crate) fn compile(&mut self, expr: &ast::Expr) -> Clause {
        match &expr.kind {
            ExprKind::Literal(lit) => Clause::Static(match lit {
                Literal::Null => SqliteValue::Null,
                Literal::Bool(b) => SqliteValue::from(*b),
                Literal::Integer(i) => SqliteValue::Integer(*i),
                Literal::Real(f) => SqliteValue::Real(*f),
                Literal::String(s) => SqliteValue::from(s.as_str()),
            }),
            ExprKind::Column { qualifiers, name } => self.compile_column(expr, qualifiers, name),
            ExprKind::Binary { op, left, right, .. } => self.compile_binary(expr, *op, left, right),
            ExprKind::Unary {
                op: UnaryOp::Not,
                operand,
            } => {
                let c = self.compile(operand);
                self.compose(Composer::Not, vec![c], &[operand.span])
            }
            ExprKind::Unary {
                op: UnaryOp::Minus, ..
            } => self.error("Operator - is not supported", Some(expr.span)),
            ExprKind::Unary {
                op: UnaryOp::Plus, ..
            } => self.error("Operator + is not supported", Some(expr.span)),
            ExprKind::IsNull { operand, negated } => {
                let c = self.compile(operand);
                self.compose(Composer::IsNull(*negated), vec![c], &[operand.span])
            }
            ExprKind::In {
                operand,
                rhs,
                negated,
            } => {
                if *negated {
                    return self.error("Operator NOT IN is not supported", Some(expr.span));
                }
                match rhs {
                    InRhs::Bare(r) => self.compile_in(operand, r),
                    InRhs::List(items) if items.len() == 1 => self.compile_in(operand, &items[0]),
                    InRhs::List(_) => self.error("list not supported here", Some(expr.span)),
                    InRhs::Subquery(_) => self.error("select not supported here", Some(expr.span)),
                }
            }
            ExprKind::Call {
                qualifiers,
                name,
                args,
                star,
                ..
            } => {
                if *star {
                    return self.error(format!("Function '{}' is not defined", name.raw), Some(expr.span));
                }
                self.compile_call(expr, qualifiers, name, args)
            }
            ExprKind::Cast {
                operand, type_name, ..
            } => {
                let c = self.compile(operand);
                match CastType::from_name(&type_name.text) {
                    Some(to) => self.compose(Composer::Cast(to), vec![c], &[operand.span]),
                    None => self.error(
                        format!("CAST not supported for '{}'", type_name.text),
                        Some(expr.span),
                    ),
                }
            }
            ExprKind::Case { .. } => self.error("case not supported here", Some(expr.span)),
            ExprKind::Between { .. } => self.error("Operator not supported: BETWEEN", Some(expr.span)),
            ExprKind::Subquery(_) | ExprKind::Exists(_) => {
                self.error("select not supported here", Some(expr.span))
            }
            ExprKind::Row(_) => self.error("list not supported here", Some(expr.span)),
            ExprKind::Placeholder(_) => self.error("parameter not supported here", Some(expr.span)),
            ExprKind::Array(_) => self.error("array not supported here", Some(expr.span)),
        }
    }

    fn compile_column(&mut self, expr: &ast::Expr, qualifiers: &[ast::Ident], name: &ast::Ident) -> Clause {
        self.check_identifier_case(name);
        if name.name == "*" {
            return self.error("* not supported here", Some(expr.span));
        }
        if qualifiers.len() > 1 {
            return self.error("Schema is not supported in column references", Some(expr.span));
        }
        let table = qualifiers.first().map(|q| q.name.as_str());
        // Parameter tables: an explicit qualifier, or the default table when it is one.
        let parameter_table = match table {
            Some(t) => self.parameter_tables.iter().find(|p| p.as_str() == t).cloned(),
            None if self.default_is_parameter_table() => self.each_table.clone(),
            None => None,
        };
        if let Some(ptable) = parameter_table {
            return self.parameter_reference(&ptable, &name.name);
        }
        let value_table = match (&self.value_table, table) {
            (Some(v), None) => Some(v.clone()),
            (Some(v), Some(t)) if v.sql_name == t => Some(v.clone()),
            _ => None,
        };
        if let Some(vt) = value_table {
            if let Some(known) = &vt.known_columns
                && !known.iter().any(|c| c == &name.name)
            {
                self.warn(format!("Column not found: {}", name.name), Some(expr.span));
            }
            let slot = self.slot(&name.name);
            return Clause::Row(Expr::Column(slot));
        }
        let reference = qualifiers
            .iter()
            .map(|q| q.name.as_str())
            .chain([name.name.as_str()])
            .collect::<Vec<_>>();
        self.error(
            format!("Undefined reference: {}", reference.join(".")),
            Some(expr.span),
        )
    }

    fn parameter_reference(&mut self, table: &str, column: &str) -> Clause {
        let key = format!("{table}.{column}");
        let (expr, usage) = match table {
            "bucket" => (None, Usage::default()),
            "token_parameters" => (
                Some(Expr::Request(
                    RequestValue::TokenParameter(Arc::from(column)),
                    Vec::new(),
                )),
                Usage::of(ParameterUsage::Authenticated),
            ),
            "user_parameters" => (
                Some(Expr::Request(
                    RequestValue::UserParameter(Arc::from(column)),
                    Vec::new(),
                )),
                Usage::of(ParameterUsage::Unauthenticated),
            ),
            _ => (Some(Expr::EachColumn(Arc::from(column))), Usage::default()),
        };
        Clause::Param(ParamValue { key, expr, usage })
    }

    /// Unquoted identifiers are folded to lower case; warn when the user wrote capitals.
    pub(crate) fn check_identifier_case(&mut self, ident: &ast::Ident) {
        if !ident.quoted && ident.raw != ident.name {
            self.warn(
                format!(
                    "Unquoted identifiers are converted to lower-case. Use \"{}\" instead.",
                    ident.raw
                ),
                Some(ident.span),
            );
        }
    }

    fn compile_binary(
        &mut self,
        expr: &ast::Expr,
        op: BinaryOp,
        left: &ast::Expr,
        right: &ast::Expr,
    ) -> Clause {
        let composer = match op {
            BinaryOp::And | BinaryOp::Or => {
                let l = self.compile(left);
                let r = self.compile(right);
                if matches!(l, Clause::Error) || matches!(r, Clause::Error) {
                    return Clause::Error;
                }
                return match combine_logical(op == BinaryOp::And, l, r) {
                    Ok(c) => c,
                    Err(message) => self.error(message, Some(expr.span)),
                };
            }
            BinaryOp::Eq => return self.compile_equals(expr, left, right),
            BinaryOp::NotEq => Composer::Compare(CompareOp::NotEq),
            BinaryOp::Lt => Composer::Compare(CompareOp::Lt),
            BinaryOp::LtEq => Composer::Compare(CompareOp::LtEq),
            BinaryOp::Gt => Composer::Compare(CompareOp::Gt),
            BinaryOp::GtEq => Composer::Compare(CompareOp::GtEq),
            BinaryOp::Is => Composer::Compare(CompareOp::Is),
            BinaryOp::IsNot => Composer::Compare(CompareOp::IsNot),
            BinaryOp::Add => Composer::Arith(ArithOp::Add),
            BinaryOp::Sub => Composer::Arith(ArithOp::Sub),
            BinaryOp::Mul => Composer::Arith(ArithOp::Mul),
            BinaryOp::Div => Composer::Arith(ArithOp::Div),
            BinaryOp::Concat => Composer::Concat,
            BinaryOp::JsonArrow => Composer::JsonArrow,
            BinaryOp::JsonLongArrow => Composer::JsonLongArrow,
            BinaryOp::Overlap => return self.compile_overlap(expr, left, right),
            BinaryOp::Mod => return self.error("Operator not supported: %", Some(expr.span)),
            BinaryOp::Like | BinaryOp::NotLike => {
                return self.error(
                    format!(
                        "Operator not supported: {}",
                        if op == BinaryOp::Like { "LIKE" } else { "NOT LIKE" }
                    ),
                    Some(expr.span),
                );
            }
            BinaryOp::ILike | BinaryOp::NotILike => {
                return self.error("Operator not supported: ILIKE", Some(expr.span));
            }
            BinaryOp::Other => {
                let text = self
                    .sql
                    .get(expr.span.start..expr.span.end)
                    .unwrap_or_default()
                    .to_string();
                return self.error(format!("Operator not supported in: {text}"), Some(expr.span));
            }
        };
        let l = self.compile(left);
        let r = self.compile(right);
        self.compose(composer, vec![l, r], &[left.span, right.span])
    }

    fn compile_equals(&mut self, expr: &ast::Expr, left: &ast::Expr, right: &ast::Expr) -> Clause {
        let l = self.compile(left);
        let r = self.compile(right);
        if matches!(l, Clause::Error) || matches!(r, Clause::Error) {
            return Clause::Error;
        }
        if self.supports_parameter_expressions && l.is_param() && r.is_param() {
            return self.compose(
                Composer::Compare(CompareOp::Eq),
                vec![l, r],
                &[left.span, right.span],
            );
        }
        if !l.is_row() && !r.is_row() {
            return self.error(
                "Cannot have bucket parameters on both sides of = operator",
                Some(expr.span),
            );
        }
        let (row, other) = if l.is_row() { (l, r) } else { (r, l) };
        match other {
            other if other.is_row() => {
                let (a, b) = (row.row_expr(), other.row_expr());
                match (a, b) {
                    (Some(a), Some(b)) => {
                        // Both are row values, so `row` is the left operand: order is kept.
                        Clause::Row(Expr::Compare(CompareOp::Eq, Box::new(a), Box::new(b)))
                    }
                    _ => Clause::Error,
                }
            }
            Clause::Param(p) => {
                let row_expr = row.row_expr().unwrap_or(Expr::Const(SqliteValue::Null));
                let usage = p.usage;
                Clause::Match(ParamMatch {
                    inputs: vec![MatchInput {
                        key: p.key,
                        expands: false,
                        expr: p.expr,
                        span: Some(expr.span),
                    }],
                    unbounded: false,
                    filter: MatchFilter::Equals {
                        input: 0,
                        row: row_expr,
                    },
                    usage,
                })
            }
            Clause::Match(_) => self.error("Parameter match clauses cannot be used here", Some(expr.span)),
            _ => Clause::Error,
        }
    }

    fn compile_in(&mut self, left: &ast::Expr, right: &ast::Expr) -> Clause {
        let l = self.compile(left);
        let r = self.compile(right);
        self.compile_membership(Composer::In, l, r, left.span, right.span)
    }

    fn compile_overlap(&mut self, _expr: &ast::Expr, left: &ast::Expr, right: &ast::Expr) -> Clause {
        let l = self.compile(left);
        let r = self.compile(right);
        self.compile_membership(Composer::Overlap, l, r, left.span, right.span)
    }

    /// `IN` and `&&`: plain composition where possible; otherwise the parameter-expanding forms.
    fn compile_membership(&mut self, composer: Composer, l: Clause, r: Clause, ls: Span, rs: Span) -> Clause {
        match self.compose_type(&composer, &[&l, &r], &[ls, rs]) {
            Err(ComposeError::Reported) => Clause::Error,
            Ok(_) => self.compose(composer, vec![l, r], &[ls, rs]),
            Err(ComposeError::Message(message, span)) => {
                let is_overlap = matches!(composer, Composer::Overlap);
                match (&l, &r) {
                    // bucket.param IN row.array / token_parameters.x IN row.array
                    (Clause::Param(p), right) if right.is_row() => {
                        let row = right.row_expr().unwrap_or(Expr::Const(SqliteValue::Null));
                        Clause::Match(ParamMatch {
                            inputs: vec![MatchInput {
                                key: p.key.clone(),
                                expands: false,
                                expr: p.expr.clone(),
                                span: Some(ls.to(rs)),
                            }],
                            unbounded: true,
                            filter: MatchFilter::InRowArray { input: 0, row },
                            usage: p.usage,
                        })
                    }
                    // row.value IN request_array: one lookup per array element.
                    (left, Clause::Param(p)) if self.supports_expanding && left.is_row() => {
                        let row = left.row_expr().unwrap_or(Expr::Const(SqliteValue::Null));
                        let input = MatchInput {
                            key: format!("{}[*]", p.key),
                            expands: true,
                            expr: p.expr.clone(),
                            span: Some(ls.to(rs)),
                        };
                        let filter = if is_overlap {
                            MatchFilter::InRowArray { input: 0, row }
                        } else {
                            MatchFilter::Equals { input: 0, row }
                        };
                        Clause::Match(ParamMatch {
                            inputs: vec![input],
                            unbounded: false,
                            filter,
                            usage: p.usage,
                        })
                    }
                    _ => self.error(message, Some(span)),
                }
            }
        }
    }

    fn compile_call(
        &mut self,
        expr: &ast::Expr,
        qualifiers: &[ast::Ident],
        name: &ast::Ident,
        args: &[ast::Expr],
    ) -> Clause {
        match qualifiers {
            [] => {
                let Some(def) = functions::lookup_function(&name.name) else {
                    return self.error(
                        format!("Function '{}' is not defined", name.name),
                        Some(expr.span),
                    );
                };
                if args.len() < def.min_args || args.len() > def.max_args {
                    return self.error(
                        format!(
                            "Function '{}' got {} arguments, which is not supported",
                            name.name,
                            args.len()
                        ),
                        Some(expr.span),
                    );
                }
                let compiled: Vec<Clause> = args.iter().map(|a| self.compile(a)).collect();
                let spans: Vec<Span> = args.iter().map(|a| a.span).collect();
                self.compose(Composer::Function(def), compiled, &spans)
            }
            [schema] => self.compile_request_call(expr, &schema.name, &name.name, args),
            _ => {
                let full = qualifiers
                    .iter()
                    .map(|q| q.name.as_str())
                    .chain([name.name.as_str()])
                    .collect::<Vec<_>>();
                self.error(
                    format!("Function '{}' is not defined", full.join(".")),
                    Some(expr.span),
                )
            }
        }
    }

    fn compile_request_call(
        &mut self,
        expr: &ast::Expr,
        schema: &str,
        function: &str,
        args: &[ast::Expr],
    ) -> Clause {
        let known_schema = match self.request_functions {
            Some(RequestFunctions::Request) => schema == "request",
            Some(RequestFunctions::Streams) => matches!(schema, "auth" | "subscription" | "connection"),
            None => false,
        };
        if !known_schema {
            if matches!(schema, "request" | "auth" | "subscription" | "connection")
                && !self.supports_parameter_expressions
            {
                return self.error(
                    format!("{schema} schema is not available in data queries"),
                    Some(expr.span),
                );
            }
            return self.error(
                format!("Function '{schema}.{function}' is not defined"),
                Some(expr.span),
            );
        }
        if !self.supports_parameter_expressions {
            return self.error(
                format!("{schema} schema is not available in data queries"),
                Some(expr.span),
            );
        }
        let (value, arity) = match (schema, function) {
            ("request", "user_id") | ("auth", "user_id") => (RequestValue::UserId, 0),
            ("request", "jwt") | ("auth", "jwt") => (RequestValue::TokenPayload, 0),
            ("auth", "parameters") => (RequestValue::TokenPayload, 0),
            ("auth", "parameter") => (RequestValue::TokenPayloadField, 1),
            ("request", "parameters") | ("connection", "parameters") => (RequestValue::ClientParameters, 0),
            ("connection", "parameter") => (RequestValue::ClientParameter, 1),
            ("subscription", "parameters") => (RequestValue::SubscriptionParameters, 0),
            ("subscription", "parameter") => (RequestValue::SubscriptionParameter, 1),
            _ => {
                return self.error(
                    format!("Function '{schema}.{function}' is not defined"),
                    Some(expr.span),
                );
            }
        };
        if args.len() != arity {
            return self.error(
                format!("Function '{schema}.{function}' takes {arity} arguments."),
                Some(expr.span),
            );
        }
        let mut arg_exprs = Vec::new();
        let mut usage = Usage::of(value.usage());
        let mut key_args = Vec::new();
        for arg in args {
            match self.compile(arg) {
                Clause::Error => return Clause::Error,
                c if c.is_param() => {
                    let p = c.param_value().expect("is_param checked");
                    usage = usage.union(p.usage);
                    key_args.push(p.key);
                    arg_exprs.push(p.expr.unwrap_or(Expr::Const(SqliteValue::Null)));
                }
                _ => {
                    return self.error("Must only depend on data derived from request.", Some(arg.span));
                }
            }
        }
        Clause::Param(ParamValue {
            key: format!("{schema}.{function}({})", key_args.join(",")),
            expr: Some(Expr::Request(value, arg_exprs)),
            usage,
        })
    }

    fn compose_type(
        &self,
        composer: &Composer,
        args: &[&Clause],
        spans: &[Span],
    ) -> Result<ArgsType, ComposeError> {
        let mut args_type = ArgsType::Static;
        for (clause, span) in args.iter().zip(spans) {
            match clause {
                Clause::Error => return Err(ComposeError::Reported),
                Clause::Static(_) => {}
                Clause::Param(_) => {
                    if !self.supports_parameter_expressions {
                        let message = if matches!(composer, Composer::In) {
                            "Cannot use bucket parameters on the right side of IN operators"
                        } else {
                            "Cannot use bucket parameters in expressions"
                        };
                        return Err(ComposeError::Message(message.into(), *span));
                    }
                    if args_type == ArgsType::Row {
                        return Err(ComposeError::Message(
                            "Cannot use table values and parameters in the same clauses".into(),
                            *span,
                        ));
                    }
                    args_type = ArgsType::Param;
                }
                Clause::Row(_) => {
                    if args_type == ArgsType::Param {
                        return Err(ComposeError::Message(
                            "Cannot use table values and parameters in the same clauses".into(),
                            *span,
                        ));
                    }
                    args_type = ArgsType::Row;
                }
                Clause::Match(_) => {
                    return Err(ComposeError::Message(
                        "Parameter match clauses cannot be used here".into(),
                        *span,
                    ));
                }
            }
        }
        Ok(args_type)
    }

    fn compose(&mut self, composer: Composer, args: Vec<Clause>, spans: &[Span]) -> Clause {
        let refs: Vec<&Clause> = args.iter().collect();
        let args_type = match self.compose_type(&composer, &refs, spans) {
            Ok(t) => t,
            Err(ComposeError::Reported) => return Clause::Error,
            Err(ComposeError::Message(m, span)) => return self.error(m, Some(span)),
        };
        match args_type {
            ArgsType::Static | ArgsType::Row => {
                let exprs: Vec<Expr> = args.iter().filter_map(Clause::row_expr).collect();
                let expr = composer.build(exprs);
                if args_type == ArgsType::Static {
                    let ctx = EvalContext {
                        compat: Some(&self.compat),
                        ..EvalContext::default()
                    };
                    match expr.eval(&ctx) {
                        Ok(v) => Clause::Static(v),
                        Err(e) => self.error(e.message, spans.first().copied()),
                    }
                } else {
                    Clause::Row(expr)
                }
            }
            ArgsType::Param => {
                let mut usage = Usage::default();
                let mut keys = Vec::new();
                let mut exprs = Vec::new();
                for a in &args {
                    let p = a.param_value().expect("compose_type checked");
                    usage = usage.union(p.usage);
                    keys.push(p.key);
                    exprs.push(p.expr.unwrap_or(Expr::Const(SqliteValue::Null)));
                }
                Clause::Param(ParamValue {
                    key: format!("{}({})", composer.debug_name(), keys.join(",")),
                    expr: Some(composer.build(exprs)),
                    usage,
                })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgsType {
    Static,
    Row,
    Param,
}

enum ComposeError {
    /// An argument already failed and was reported.
    Reported,
    Message(String, Span),
}

/// How to combine compiled arguments into one expression.
#[derive(Debug, Clone)]
enum Composer {
    Function(&'static functions::FunctionDef),
    Compare(CompareOp),
    Arith(ArithOp),
    Concat,
    Not,
    IsNull(bool),
    Cast(CastType),
    JsonArrow,
    JsonLongArrow,
    In,
    Overlap,
}

impl Composer {
    fn build(&self, args: Vec<Expr>) -> Expr {
        if let Composer::Function(def) = self {
            return Expr::Call(def, args);
        }
        let mut args = args.into_iter();
        let mut next = || args.next().unwrap_or(Expr::Const(SqliteValue::Null));
        match self {
            Composer::Function(_) => unreachable!("handled above"),
            Composer::Compare(op) => Expr::Compare(*op, Box::new(next()), Box::new(next())),
            Composer::Arith(op) => Expr::Arith(*op, Box::new(next()), Box::new(next())),
            Composer::Concat => Expr::Concat(Box::new(next()), Box::new(next())),
            Composer::Not => Expr::Not(Box::new(next())),
            Composer::IsNull(negated) => Expr::IsNull(Box::new(next()), *negated),
            Composer::Cast(to) => Expr::Cast(Box::new(next()), *to),
            Composer::JsonArrow => Expr::JsonArrow(Box::new(next()), Box::new(next())),
            Composer::JsonLongArrow => Expr::JsonLongArrow(Box::new(next()), Box::new(next())),
            Composer::In => Expr::In(Box::new(next()), Box::new(next())),
            Composer::Overlap => Expr::Overlap(Box::new(next()), Box::new(next())),
        }
    }

    fn debug_name(&self) -> String {
        match self {
            Composer::Function(def) => def.name.to_string(),
            Composer::Compare(op) => format!("operator{op:?}"),
            Composer::Arith(op) => format!("operator{op:?}"),
            Composer::Concat => "operator||".into(),
            Composer::Not => "operator_not".into(),
            Composer::IsNull(false) => "operator_is_null".into(),
            Composer::IsNull(true) => "operator_is_not_null".into(),
            Composer::Cast(to) => format!("cast_{to:?}"),
            Composer::JsonArrow => "operator->".into(),
            Composer::JsonLongArrow => "operator->>".into(),
            Composer::In => "operatorIN".into(),
            Composer::Overlap => "operator&&".into(),
        }
    }
}

/// `AND` / `OR` over compiled clauses.
fn combine_logical(is_and: bool, a: Clause, b: Clause) -> Result<Clause, String> {
    if a.is_row() && b.is_row() {
        let (ea, eb) = (a.row_expr().expect("row"), b.row_expr().expect("row"));
        let expr = if is_and {
            Expr::And(Box::new(ea), Box::new(eb))
        } else {
            Expr::Or(Box::new(ea), Box::new(eb))
        };
        if let (Clause::Static(_), Clause::Static(_)) = (&a, &b) {
            let v = expr.eval(&EvalContext::default()).map_err(|e| e.message)?;
            return Ok(Clause::Static(v));
        }
        return Ok(Clause::Row(expr));
    }
    if a.is_param() && b.is_param() {
        let (pa, pb) = (a.param_value().expect("param"), b.param_value().expect("param"));
        let (ea, eb) = (
            pa.expr.unwrap_or(Expr::Const(SqliteValue::Null)),
            pb.expr.unwrap_or(Expr::Const(SqliteValue::Null)),
        );
        let expr = if is_and {
            Expr::And(Box::new(ea), Box::new(eb))
        } else {
            Expr::Or(Box::new(ea), Box::new(eb))
        };
        return Ok(Clause::Param(ParamValue {
            key: format!("{}{},{}", if is_and { "and" } else { "or" }, pa.key, pb.key),
            expr: Some(expr),
            usage: pa.usage.union(pb.usage),
        }));
    }
    let (Some(ma), Some(mb)) = (to_match(a), to_match(b)) else {
        return Err("invalid clause".into());
    };
    if is_and {
        if ma.unbounded && mb.unbounded {
            return Err("Cannot have multiple IN expressions on bucket parameters".into());
        }
        Ok(Clause::Match(merge(ma, mb, true)))
    } else {
        let keys_a: Vec<&str> = ma.inputs.iter().map(|i| i.key.as_str()).collect();
        let keys_b: Vec<&str> = mb.inputs.iter().map(|i| i.key.as_str()).collect();
        let mut combined: Vec<&str> = keys_a.clone();
        for k in &keys_b {
            if !combined.contains(k) {
                combined.push(k);
            }
        }
        if combined.len() != keys_a.len() || combined.len() != keys_b.len() {
            return Err(format!(
                "Left and right sides of OR must use the same parameters, or split into separate queries. {keys_a:?} != {keys_b:?}"
            ));
        }
        // For the dangerous-query check, OR is authenticated only if both sides are.
        let usage = Usage {
            authenticated: ma.usage.authenticated && mb.usage.authenticated,
            unauthenticated: ma.usage.unauthenticated || mb.usage.unauthenticated,
            subscription: ma.usage.subscription || mb.usage.subscription,
        };
        let mut merged = merge(ma, mb, false);
        merged.usage = usage;
        Ok(Clause::Match(merged))
    }
}

fn merge(a: ParamMatch, b: ParamMatch, is_and: bool) -> ParamMatch {
    let mut inputs = a.inputs;
    let mut map = Vec::with_capacity(b.inputs.len());
    for input in b.inputs {
        match inputs.iter().position(|i| i.key == input.key) {
            Some(pos) => map.push(pos),
            None => {
                inputs.push(input);
                map.push(inputs.len() - 1);
            }
        }
    }
    let mut bf = b.filter;
    bf.remap(&map);
    let filter = if is_and {
        MatchFilter::And(Box::new(a.filter), Box::new(bf))
    } else {
        MatchFilter::Or(Box::new(a.filter), Box::new(bf))
    };
    ParamMatch {
        inputs,
        unbounded: a.unbounded || b.unbounded,
        filter,
        usage: a.usage.union(b.usage),
    }
}

/// Any clause as a parameter match: row conditions become all-or-nothing filters and parameter
/// values become boolean inputs. `None` for an error.
pub(crate) fn to_match(clause: Clause) -> Option<ParamMatch> {
    match clause {
        Clause::Match(m) => Some(m),
        Clause::Static(v) => Some(ParamMatch {
            inputs: Vec::new(),
            unbounded: false,
            filter: MatchFilter::Condition(Expr::Const(v)),
            usage: Usage::default(),
        }),
        Clause::Row(e) => Some(ParamMatch {
            inputs: Vec::new(),
            unbounded: false,
            filter: MatchFilter::Condition(e),
            usage: Usage::default(),
        }),
        Clause::Param(p) => {
            // The request side must be truthy: compare its boolean value with the constant 1.
            let expr = p.expr.map(|e| Expr::Not(Box::new(Expr::Not(Box::new(e)))));
            Some(ParamMatch {
                inputs: vec![MatchInput {
                    key: p.key,
                    expands: false,
                    expr,
                    span: None,
                }],
                unbounded: false,
                filter: MatchFilter::ParameterTrue { input: 0 },
                usage: p.usage,
            })
        }
        Clause::Error => None,
    }
}
