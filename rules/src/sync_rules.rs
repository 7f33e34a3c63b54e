//! Compiled sync rules and their evaluation: rows into buckets, parameter rows into lookup
//! entries, and a connection's request into the buckets it may download.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use smallvec::SmallVec;
use syncgate_protocol::{BucketName, BucketPriority};

use crate::compat::Compatibility;
use crate::compiler::clause::{FilterPart, MatchFilter, MatchInput, ParamSet, distinct_array_elements};
use crate::diagnostic::Diagnostic;
use crate::error::EvalError;
use crate::expr::{EvalContext, Expr, SlotBinding};
use crate::functions::{self, JsonScalar};
use crate::request::{ConnectionRequest, SubscriptionParameters};
use crate::table::{SourceTable, TablePattern};
use crate::value::{SqliteValue, write_json_string};

/// Sync rules compiled from YAML, ready to evaluate.
#[derive(Debug, Clone)]
pub struct SyncRules {
    pub(crate) compat: Compatibility,
    /// The deployment version used as bucket id prefix when `versioned_bucket_ids` is on.
    pub(crate) version: u64,
    pub(crate) definitions: Vec<Definition>,
    pub(crate) data_queries: Vec<DataQuery>,
    pub(crate) lookup_queries: Vec<LookupQuery>,
}

#[derive(Debug, Clone)]
pub(crate) struct Definition {
    pub name: Arc<str>,
    pub kind: DefinitionKind,
}

#[derive(Debug, Clone)]
pub(crate) enum DefinitionKind {
    Buckets {
        queriers: Vec<ParameterQuerier>,
    },
    Stream {
        auto_subscribe: bool,
        priority: BucketPriority,
        variants: Vec<StreamVariant>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct ParameterQuerier {
    pub priority: BucketPriority,
    pub kind: QuerierKind,
}

#[derive(Debug, Clone)]
pub(crate) enum QuerierKind {
    /// No FROM: bucket parameters computed from request values.
    Static {
        filter: Option<Expr>,
        outputs: Vec<Expr>,
    },
    /// `FROM json_each(<request value>)`.
    TableValued {
        call: Expr,
        filter: Option<Expr>,
        outputs: Vec<Expr>,
    },
    /// `FROM <table> WHERE <match>`: looked up in the parameter index.
    Lookup { query: usize },
}

/// A query over a parameter table, indexed as the table replicates.
#[derive(Debug, Clone)]
pub(crate) struct LookupQuery {
    pub definition: usize,
    pub id: Arc<str>,
    pub table: TablePattern,
    pub slots: Vec<Arc<str>>,
    pub filter: MatchFilter,
    pub inputs: Vec<MatchInput>,
    pub expanded_input: Option<usize>,
    /// Stored with each index entry.
    pub row_outputs: Vec<Expr>,
    /// For each bucket parameter: a stored row output, or a request expression.
    pub bucket_parameters: Vec<LookupOutput>,
}

#[derive(Debug, Clone)]
pub(crate) enum LookupOutput {
    Row(usize),
    Request(Expr),
}

#[derive(Debug, Clone)]
pub(crate) enum OutputColumn {
    Star,
    Named { name: Arc<str>, expr: Expr },
}

#[derive(Debug, Clone)]
pub(crate) struct DataQuery {
    pub definition: usize,
    /// `by_user` or `stream|0`; the version prefix is added at evaluation.
    pub bucket_prefix: Arc<str>,
    pub table: TablePattern,
    /// Output table name; `None` means "the source table's own name" (unaliased wildcard).
    pub output_table: Option<Arc<str>>,
    pub slots: Vec<Arc<str>>,
    pub columns: Vec<OutputColumn>,
    pub filter: MatchFilter,
    /// For each bucket parameter, the filter input that supplies it.
    pub parameter_inputs: Vec<Option<usize>>,
}

#[derive(Debug, Clone)]
pub(crate) struct StreamVariant {
    pub bucket_prefix: Arc<str>,
    pub parameters: Vec<StreamParameter>,
    pub request_filters: Vec<Expr>,
}

#[derive(Debug, Clone)]
pub(crate) enum StreamParameter {
    /// One value.
    Value(Expr),
    /// Each element of a JSON array value.
    ArrayElements(Expr),
    /// The values a parameter lookup finds.
    Lookup(usize),
}

/// A row placed into a bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluatedRow {
    pub bucket: BucketName,
    /// Output table name.
    pub table: Arc<str>,
    /// Row id within the output table.
    pub id: Arc<str>,
    /// The synced data as a JSON object (SYNC_RULES.md §8.1).
    pub data: Arc<str>,
}

/// An error evaluating one row for one query: that query skips the row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub definition: Arc<str>,
    pub message: String,
}

/// The result of evaluating one source row: its placements and row errors.
///
/// Placements live in one text arena that is reused from row to row, so placing a row
/// allocates nothing once the buffers have grown; [`RowEvaluation::rows`] lends them out.
#[derive(Debug, Clone, Default)]
pub struct RowEvaluation {
    /// Ids, data and bucket ids of this row's placements, back to back.
    text: String,
    outputs: Vec<QueryOutput>,
    placements: Vec<Placement>,
    pub errors: Vec<RowError>,
    /// JSON of the row's columns, each serialized once however many queries output it.
    column_json: ColumnJsonCache,
}

/// One data query's output row: shared by the buckets it is placed in.
#[derive(Debug, Clone)]
struct QueryOutput {
    table: Arc<str>,
    id: Range<usize>,
    data: Range<usize>,
}

#[derive(Debug, Clone)]
struct Placement {
    output: usize,
    bucket: Range<usize>,
}

/// A row placed into a bucket, borrowed from a [`RowEvaluation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedRow<'a> {
    pub bucket: &'a str,
    /// Output table name.
    pub table: &'a str,
    /// Row id within the output table.
    pub id: &'a str,
    /// The synced data as a JSON object (SYNC_RULES.md §8.1).
    pub data: &'a str,
}

impl PlacedRow<'_> {
    pub fn to_evaluated_row(self) -> EvaluatedRow {
        EvaluatedRow {
            bucket: BucketName::new(self.bucket),
            table: Arc::from(self.table),
            id: Arc::from(self.id),
            data: Arc::from(self.data),
        }
    }
}

impl RowEvaluation {
    /// Clears the results, keeping allocated capacity for the next row.
    pub fn clear(&mut self) {
        self.text.clear();
        self.outputs.clear();
        self.placements.clear();
        self.errors.clear();
    }

    /// Number of placements.
    pub fn len(&self) -> usize {
        self.placements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placements.is_empty()
    }

    /// Appends a data query's output row for the current source row.
    fn push_output(
        &mut self,
        bound: &BoundQuery,
        query: &DataQuery,
        ctx: &EvalContext<'_>,
        values: &[SqliteValue],
    ) -> Result<usize, EvalError> {
        let (id, data) = transform_row(
            query,
            &bound.layout,
            ctx,
            values,
            &mut self.text,
            &mut self.column_json,
        )?;
        self.outputs.push(QueryOutput {
            table: Arc::clone(&bound.output_table),
            id,
            data,
        });
        Ok(self.outputs.len() - 1)
    }

    /// Places output `output` into one bucket; `write_params` appends the bucket parameters.
    fn place(&mut self, bound: &BoundQuery, output: usize, write_params: impl FnOnce(&mut String)) {
        let start = self.text.len();
        match &bound.constant_bucket {
            Some(bucket) => self.text.push_str(bucket.as_str()),
            None => {
                self.text.push_str(&bound.bucket_id_start);
                write_params(&mut self.text);
                self.text.push(']');
            }
        }
        self.placements.push(Placement {
            output,
            bucket: start..self.text.len(),
        });
    }

    /// The placements, in query order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = PlacedRow<'_>> + '_ {
        self.placements.iter().map(|p| {
            let output = &self.outputs[p.output];
            PlacedRow {
                bucket: &self.text[p.bucket.clone()],
                table: &output.table,
                id: &self.text[output.id.clone()],
                data: &self.text[output.data.clone()],
            }
        })
    }
}

#[derive(Debug, Clone, Default)]
struct ColumnJsonCache {
    text: String,
    /// Per column: its JSON's range in `text`, or `None` until first needed.
    ranges: Vec<Option<(usize, usize)>>,
}

impl ColumnJsonCache {
    fn reset(&mut self, columns: usize) {
        self.text.clear();
        self.ranges.clear();
        self.ranges.resize(columns, None);
    }

    fn json(&mut self, column: usize, value: &SqliteValue) -> &str {
        let range = match self.ranges.get(column).copied().flatten() {
            Some(range) => range,
            None => {
                let start = self.text.len();
                value.write_json(&mut self.text);
                let range = (start, self.text.len());
                if let Some(slot) = self.ranges.get_mut(column) {
                    *slot = Some(range);
                }
                range
            }
        };
        &self.text[range.0..range.1]
    }
}

/// The key under which a parameter row is indexed, and that a connection looks up.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterLookup {
    pub definition: Arc<str>,
    pub query: Arc<str>,
    pub values: Vec<SqliteValue>,
}

impl ParameterLookup {
    /// Canonical text form for storage keys: numbers compare by value (2 and 2.0 are one key).
    pub fn key(&self) -> String {
        let mut s = String::with_capacity(32);
        s.push('[');
        write_json_string(&self.definition, &mut s);
        s.push(',');
        write_json_string(&self.query, &mut s);
        for v in &self.values {
            s.push(',');
            v.write_bucket_param(&mut s);
        }
        s.push(']');
        s
    }
}

/// One entry of the parameter index produced by a parameter-table row.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterEntry {
    pub lookup: ParameterLookup,
    /// The row's stored values (the query's row outputs).
    pub values: Vec<SqliteValue>,
}

/// A bucket a connection may download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBucket {
    pub bucket: BucketName,
    pub definition: Arc<str>,
    pub priority: BucketPriority,
    /// Why the connection has it: each default stream or explicit subscription that produced it
    /// (the checkpoint line's `subscriptions`, PROTOCOL §6.3).
    pub origins: Vec<BucketOrigin>,
}

/// What made a connection include a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BucketOrigin {
    /// A default stream (or classic bucket definition): index into [`ResolvedConnection::streams`].
    Default(usize),
    /// An explicit subscription: index into the request's `subscriptions`.
    Subscription(usize),
}

/// A stream (or classic bucket definition) a connection resolved, as the checkpoint line lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedStream {
    pub name: Arc<str>,
    /// Subscribed by default (classic definitions, `auto_subscribe` streams).
    pub is_default: bool,
    /// Problems resolving it: `(subscription, message)`, `None` for the default subscription.
    pub errors: Vec<(Option<usize>, String)>,
}

/// Everything bucket resolution found for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedConnection {
    /// In resolution order: definitions in file order, each one's buckets in the order its parameter
    /// rows produced them (the order the reference lists them in).
    pub buckets: Vec<ResolvedBucket>,
    pub streams: Vec<ResolvedStream>,
}

/// The queries that apply to one source table, with column slots resolved. Build it once per
/// table (schema) and reuse it for every row.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub table: SourceTable,
    data: Vec<BoundQuery>,
    lookups: Vec<BoundQuery>,
}

#[derive(Debug, Clone)]
struct BoundQuery {
    query: usize,
    slots: Vec<SlotBinding>,
    output_table: Arc<str>,
    /// Data queries: the output object's keys in order, and where each value comes from.
    layout: Vec<OutputSlot>,
    /// Data queries: `<version>#<prefix>[`, the start of every bucket id.
    bucket_id_start: Box<str>,
    /// Data queries without bucket parameters: their one bucket id, built once.
    constant_bucket: Option<BucketName>,
    /// Data queries whose filter is a flat conjunction with at most one bucket parameter.
    conjunction: Option<Vec<FilterPart>>,
}

/// One key of a data query's output object for one table, resolved at plan time: the key
/// order follows from the SELECT list and the table's columns, only the values vary per row.
#[derive(Debug, Clone)]
struct OutputSlot {
    /// `,"key":`, escaped once.
    key_prefix: Box<str>,
    is_id: bool,
    source: OutputSource,
}

#[derive(Debug, Clone)]
enum OutputSource {
    /// The n-th named expression of the SELECT list.
    Expr(usize),
    /// A column of the row (`*`, or a plain column reference).
    Column(usize),
    /// A constant (a column the table lacks, `_table_suffix`).
    Const(SqliteValue),
    /// An explicit column before `*`: its value, or the row's column of that name when NULL.
    ElseColumn(Box<OutputSource>, usize),
}

impl TablePlan {
    /// Whether any data query places rows of this table.
    pub fn has_data_queries(&self) -> bool {
        !self.data.is_empty()
    }

    /// Whether any parameter query indexes rows of this table.
    pub fn has_parameter_queries(&self) -> bool {
        !self.lookups.is_empty()
    }
}

/// Result of compiling a rules file.
#[derive(Debug, Clone)]
pub struct CompileResult {
    /// `None` when there are errors.
    pub rules: Option<SyncRules>,
    pub diagnostics: Vec<Diagnostic>,
}

impl SyncRules {
    pub fn compatibility(&self) -> &Compatibility {
        &self.compat
    }

    /// Table patterns that data or parameter queries read: what replication must include.
    pub fn source_tables(&self) -> Vec<TablePattern> {
        let mut out: Vec<TablePattern> = Vec::new();
        let patterns = self
            .data_queries
            .iter()
            .map(|q| &q.table)
            .chain(self.lookup_queries.iter().map(|q| &q.table));
        for p in patterns {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    /// Names of definitions and streams, in file order.
    pub fn definition_names(&self) -> impl Iterator<Item = &str> {
        self.definitions.iter().map(|d| d.name.as_ref())
    }

    /// Resolves the queries that apply to `table`.
    pub fn plan_table(&self, table: &SourceTable) -> TablePlan {
        let bind = |slots: &[Arc<str>], pattern: &TablePattern| -> Vec<SlotBinding> {
            slots
                .iter()
                .map(|name| match table.column_index(name) {
                    Some(i) => SlotBinding::Index(i),
                    None if pattern.wildcard && name.as_ref() == "_table_suffix" => {
                        SlotBinding::Value(SqliteValue::from(pattern.suffix(&table.name)))
                    }
                    None => SlotBinding::Value(SqliteValue::Null),
                })
                .collect()
        };
        let data = self
            .data_queries
            .iter()
            .enumerate()
            .filter(|(_, q)| q.table.matches(table))
            .map(|(i, q)| {
                let slots = bind(&q.slots, &q.table);
                BoundQuery {
                    query: i,
                    layout: output_layout(q, table, &slots),
                    bucket_id_start: self.bucket_id_start(&q.bucket_prefix),
                    constant_bucket: q
                        .parameter_inputs
                        .is_empty()
                        .then(|| self.bucket_id(&q.bucket_prefix, std::iter::empty())),
                    conjunction: match q.parameter_inputs.as_slice() {
                        [] => q.filter.conjunction(None),
                        [Some(input)] => q.filter.conjunction(Some(*input)),
                        _ => None,
                    },
                    slots,
                    output_table: q.output_table.clone().unwrap_or_else(|| Arc::clone(&table.name)),
                }
            })
            .collect();
        let lookups = self
            .lookup_queries
            .iter()
            .enumerate()
            .filter(|(_, q)| q.table.matches(table))
            .map(|(i, q)| BoundQuery {
                query: i,
                slots: bind(&q.slots, &q.table),
                output_table: Arc::from(""),
                layout: Vec::new(),
                bucket_id_start: Box::from(""),
                constant_bucket: None,
                conjunction: None,
            })
            .collect();
        TablePlan {
            table: table.clone(),
            data,
            lookups,
        }
    }

    /// Appends `<version>#<prefix>[`, the start of every bucket id of a definition or variant.
    fn write_bucket_id_start(&self, prefix: &str, s: &mut String) {
        if self.compat.versioned_bucket_ids {
            s.push_str(itoa::Buffer::new().format(self.version));
            s.push('#');
        }
        s.push_str(prefix);
        s.push('[');
    }

    fn bucket_id_start(&self, prefix: &str) -> Box<str> {
        let mut s = String::with_capacity(prefix.len() + 8);
        self.write_bucket_id_start(prefix, &mut s);
        s.into_boxed_str()
    }

    fn bucket_id<'v>(&self, prefix: &str, values: impl Iterator<Item = &'v SqliteValue>) -> BucketName {
        let mut s = String::with_capacity(prefix.len() + 32);
        self.write_bucket_id_start(prefix, &mut s);
        for (i, v) in values.enumerate() {
            if i > 0 {
                s.push(',');
            }
            v.write_bucket_param(&mut s);
        }
        s.push(']');
        BucketName::new(s.as_str())
    }

    /// Places one source row (values in the plan's table column order) into buckets.
    pub fn evaluate_row(&self, plan: &TablePlan, values: &[SqliteValue], out: &mut RowEvaluation) {
        out.column_json.reset(values.len());
        for bound in &plan.data {
            let query = &self.data_queries[bound.query];
            let ctx = EvalContext {
                row: Some((values, &bound.slots)),
                compat: Some(&self.compat),
                ..EvalContext::default()
            };
            let placed = match &bound.conjunction {
                Some(parts) => self.place_conjunction(bound, query, parts, &ctx, values, out),
                None => self.place_general(bound, query, &ctx, values, out),
            };
            if let Err(e) = placed {
                out.errors.push(RowError {
                    definition: Arc::clone(&self.definitions[query.definition].name),
                    message: e.message,
                });
            }
        }
    }

    /// Fast path: conditions and at most one parameter, evaluated in order without parameter sets.
    fn place_conjunction(
        &self,
        bound: &BoundQuery,
        query: &DataQuery,
        parts: &[FilterPart],
        ctx: &EvalContext<'_>,
        values: &[SqliteValue],
        out: &mut RowEvaluation,
    ) -> Result<(), EvalError> {
        let mut param: Option<Cow<'_, SqliteValue>> = None;
        let mut array: Option<Cow<'_, SqliteValue>> = None;
        for part in parts {
            match part {
                FilterPart::Condition(e) => {
                    if !e.eval_ref(ctx)?.is_truthy() {
                        return Ok(());
                    }
                }
                FilterPart::Equals(e) => {
                    let v = e.eval_ref(ctx)?;
                    // NULL never equals anything, and blobs cannot be bucket parameters.
                    if matches!(&*v, SqliteValue::Null | SqliteValue::Blob(_)) {
                        return Ok(());
                    }
                    param = Some(v);
                }
                FilterPart::InRowArray(e) => {
                    let v = e.eval_ref(ctx)?;
                    if v.is_null() {
                        return Ok(());
                    }
                    array = Some(v);
                }
            }
        }
        // `bucket.x IN row_array`: one placement per distinct element. Flat arrays of scalars
        // (the usual case) are read in place; anything else goes through the JSON parser.
        let mut scalars: SmallVec<[JsonScalar<'_>; 8]> = SmallVec::new();
        let mut elements: Vec<SqliteValue> = Vec::new();
        if let Some(array) = &array {
            match array.as_text().and_then(functions::flat_array_scalars) {
                Some(all) => {
                    for e in all {
                        if !scalars.iter().any(|d| scalar_key_eq(d, &e)) {
                            scalars.push(e);
                        }
                    }
                }
                None => elements = distinct_array_elements(array)?,
            }
            if scalars.is_empty() && elements.is_empty() {
                return Ok(());
            }
        }
        let output = out.push_output(bound, query, ctx, values)?;
        if array.is_some() {
            for e in &scalars {
                out.place(bound, output, |t| write_scalar_param(e, t));
            }
            for e in &elements {
                out.place(bound, output, |t| e.write_bucket_param(t));
            }
        } else {
            out.place(bound, output, |t| {
                if let Some(p) = &param {
                    p.write_bucket_param(t);
                }
            });
        }
        Ok(())
    }

    /// Any filter: the parameter sets that make it true, one placement each.
    fn place_general(
        &self,
        bound: &BoundQuery,
        query: &DataQuery,
        ctx: &EvalContext<'_>,
        values: &[SqliteValue],
        out: &mut RowEvaluation,
    ) -> Result<(), EvalError> {
        let sets = query.filter.evaluate(ctx)?;
        if sets.is_empty() {
            return Ok(());
        }
        let output = out.push_output(bound, query, ctx, values)?;
        for set in sets {
            out.place(bound, output, |t| {
                for (i, input) in query.parameter_inputs.iter().enumerate() {
                    if i > 0 {
                        t.push(',');
                    }
                    param_value(&set, *input).write_bucket_param(t);
                }
            });
        }
        Ok(())
    }

    /// Index entries for one row of a parameter table.
    pub fn evaluate_parameter_row(
        &self,
        plan: &TablePlan,
        values: &[SqliteValue],
        entries: &mut Vec<ParameterEntry>,
        errors: &mut Vec<RowError>,
    ) {
        for bound in &plan.lookups {
            let query = &self.lookup_queries[bound.query];
            let ctx = EvalContext {
                row: Some((values, &bound.slots)),
                compat: Some(&self.compat),
                ..EvalContext::default()
            };
            let result = (|| -> Result<(), EvalError> {
                let sets = query.filter.evaluate(&ctx)?;
                if sets.is_empty() {
                    return Ok(());
                }
                let stored = query
                    .row_outputs
                    .iter()
                    .map(|e| e.eval(&ctx))
                    .collect::<Result<Vec<_>, _>>()?;
                let stored: Vec<SqliteValue> = stored
                    .into_iter()
                    .map(|v| {
                        if matches!(v, SqliteValue::Blob(_)) {
                            SqliteValue::Null
                        } else {
                            v
                        }
                    })
                    .collect();
                for set in sets {
                    let lookup_values = (0..query.inputs.len())
                        .map(|i| normalize(param_value(&set, Some(i)).clone()))
                        .collect();
                    entries.push(ParameterEntry {
                        lookup: ParameterLookup {
                            definition: Arc::clone(&self.definitions[query.definition].name),
                            query: Arc::clone(&query.id),
                            values: lookup_values,
                        },
                        values: stored.clone(),
                    });
                }
                Ok(())
            })();
            if let Err(e) = result {
                errors.push(RowError {
                    definition: Arc::clone(&self.definitions[query.definition].name),
                    message: e.message,
                });
            }
        }
    }

    /// The lookups one parameter query needs for a request.
    fn lookups_for(
        &self,
        query_index: usize,
        ctx: &EvalContext<'_>,
    ) -> Result<Vec<ParameterLookup>, EvalError> {
        let query = &self.lookup_queries[query_index];
        let mut base = Vec::with_capacity(query.inputs.len());
        for input in &query.inputs {
            let v = match &input.expr {
                Some(e) => e.eval(ctx)?,
                None => SqliteValue::Null,
            };
            base.push(v);
        }
        let make = |values: Vec<SqliteValue>| ParameterLookup {
            definition: Arc::clone(&self.definitions[query.definition].name),
            query: Arc::clone(&query.id),
            values,
        };
        match query.expanded_input {
            None => {
                if base.iter().any(|v| matches!(v, SqliteValue::Blob(_))) {
                    return Ok(Vec::new());
                }
                Ok(vec![make(base.into_iter().map(normalize).collect())])
            }
            Some(expanded) => {
                let array = &base[expanded];
                let SqliteValue::Text(_) = array else {
                    return Ok(Vec::new());
                };
                let Ok(elements) = functions::json_array_elements(array) else {
                    return Ok(Vec::new());
                };
                Ok(elements
                    .into_iter()
                    .map(|element| {
                        let mut values = base.clone();
                        values[expanded] = element;
                        make(values.into_iter().map(normalize).collect())
                    })
                    .collect())
            }
        }
    }

    /// Resolves the buckets of a connection, sorted by bucket id. `lookup` answers parameter lookups
    /// from the parameter index: for each lookup, the stored values of every matching entry.
    pub fn resolve_buckets<E>(
        &self,
        request: &ConnectionRequest,
        lookup: impl FnMut(&[ParameterLookup]) -> Result<Vec<Vec<Vec<SqliteValue>>>, E>,
    ) -> Result<Vec<ResolvedBucket>, E> {
        let mut buckets = self.resolve_connection(request, lookup)?.buckets;
        buckets.sort_by(|a, b| a.bucket.cmp(&b.bucket));
        Ok(buckets)
    }

    /// Resolves a connection's buckets and the streams they come from (PROTOCOL §6.3).
    pub fn resolve_connection<E>(
        &self,
        request: &ConnectionRequest,
        mut lookup: impl FnMut(&[ParameterLookup]) -> Result<Vec<Vec<Vec<SqliteValue>>>, E>,
    ) -> Result<ResolvedConnection, E> {
        let contexts = self.evaluation_contexts(request);
        let streams = self.resolved_streams(request, &contexts);
        // Phase 1: every lookup any querier needs, answered in one call.
        let mut pending: Vec<ParameterLookup> = Vec::new();
        for unit in &contexts {
            for query in unit.lookup_queries(self) {
                if let Ok(lookups) = self.lookups_for(query, &unit.ctx(request, &self.compat)) {
                    for l in lookups {
                        if !pending.contains(&l) {
                            pending.push(l);
                        }
                    }
                }
            }
        }
        let answers = if pending.is_empty() {
            Vec::new()
        } else {
            lookup(&pending)?
        };
        let find = LookupResults(pending.iter().map(|l| l.key()).zip(answers).collect());

        // Phase 2: buckets.
        let mut buckets: Vec<ResolvedBucket> = Vec::new();
        let mut index: HashMap<BucketName, usize> = HashMap::new();
        let mut add =
            |bucket: BucketName, definition: &Arc<str>, priority: BucketPriority, origin: BucketOrigin| {
                match index.get(&bucket) {
                    Some(&i) => {
                        let existing = &mut buckets[i];
                        existing.priority = existing.priority.min(priority);
                        if !existing.origins.contains(&origin) {
                            existing.origins.push(origin);
                        }
                    }
                    None => {
                        index.insert(bucket.clone(), buckets.len());
                        buckets.push(ResolvedBucket {
                            bucket,
                            definition: Arc::clone(definition),
                            priority,
                            origins: vec![origin],
                        });
                    }
                }
            };
        for unit in &contexts {
            let definition = &self.definitions[unit.definition];
            let ctx = unit.ctx(request, &self.compat);
            let origin = match unit.subscription_index {
                Some(i) => BucketOrigin::Subscription(i),
                None => BucketOrigin::Default(
                    streams
                        .iter()
                        .position(|s| s.name == definition.name)
                        .unwrap_or_default(),
                ),
            };
            match &definition.kind {
                DefinitionKind::Buckets { queriers } => {
                    for querier in queriers {
                        for values in self.querier_tuples(querier, &ctx, &find) {
                            add(
                                self.bucket_id(&definition.name, values.iter()),
                                &definition.name,
                                querier.priority,
                                origin,
                            );
                        }
                    }
                }
                DefinitionKind::Stream {
                    priority, variants, ..
                } => {
                    let priority = unit.override_priority.unwrap_or(*priority);
                    for variant in variants {
                        for values in self.variant_tuples(variant, &ctx, &find) {
                            add(
                                self.bucket_id(&variant.bucket_prefix, values.iter()),
                                &definition.name,
                                priority,
                                origin,
                            );
                        }
                    }
                }
            }
        }
        Ok(ResolvedConnection { buckets, streams })
    }

    /// The streams a connection resolved: every definition with a default unit, then explicitly
    /// subscribed ones, in file order; subscriptions to unknown streams get an error entry.
    fn resolved_streams(&self, request: &ConnectionRequest, units: &[Unit]) -> Vec<ResolvedStream> {
        let mut streams: Vec<ResolvedStream> = Vec::new();
        for (i, definition) in self.definitions.iter().enumerate() {
            let mine = units.iter().filter(|u| u.definition == i);
            let mut listed = false;
            let mut is_default = false;
            for unit in mine {
                listed = true;
                is_default |= unit.subscription_index.is_none();
            }
            if listed {
                streams.push(ResolvedStream {
                    name: Arc::clone(&definition.name),
                    is_default,
                    errors: Vec::new(),
                });
            }
        }
        for (i, subscription) in request.subscriptions.iter().enumerate() {
            if self
                .definitions
                .iter()
                .any(|d| d.name.as_ref() == subscription.stream)
            {
                continue;
            }
            let message = format!(
                "stream {:?} is not defined in the sync rules",
                subscription.stream
            );
            match streams
                .iter_mut()
                .find(|s| s.name.as_ref() == subscription.stream)
            {
                Some(stream) => stream.errors.push((Some(i), message)),
                None => streams.push(ResolvedStream {
                    name: Arc::from(subscription.stream.as_str()),
                    is_default: false,
                    errors: vec![(Some(i), message)],
                }),
            }
        }
        streams
    }

    fn evaluation_contexts(&self, request: &ConnectionRequest) -> Vec<Unit> {
        let mut units = Vec::new();
        for (i, d) in self.definitions.iter().enumerate() {
            match &d.kind {
                DefinitionKind::Buckets { .. } => units.push(Unit {
                    definition: i,
                    subscription: None,
                    subscription_index: None,
                    override_priority: None,
                }),
                DefinitionKind::Stream { auto_subscribe, .. } => {
                    if *auto_subscribe && request.include_defaults {
                        units.push(Unit {
                            definition: i,
                            subscription: None,
                            subscription_index: None,
                            override_priority: None,
                        });
                    }
                    for (index, s) in request
                        .subscriptions
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.stream == d.name.as_ref())
                    {
                        units.push(Unit {
                            definition: i,
                            subscription: Some(SubscriptionParameters::new(s.parameters.as_ref())),
                            subscription_index: Some(index),
                            override_priority: s
                                .override_priority
                                .and_then(|p| BucketPriority::new(i64::from(p))),
                        });
                    }
                }
            }
        }
        units
    }

    fn querier_tuples(
        &self,
        querier: &ParameterQuerier,
        ctx: &EvalContext<'_>,
        find: &LookupResults,
    ) -> Vec<Vec<SqliteValue>> {
        let evaluate_all = |exprs: &[Expr], ctx: &EvalContext<'_>| -> Option<Vec<SqliteValue>> {
            let values: Vec<SqliteValue> = exprs.iter().map(|e| e.eval(ctx).ok()).collect::<Option<_>>()?;
            // A blob cannot be a bucket parameter.
            (!values.iter().any(|v| matches!(v, SqliteValue::Blob(_)))).then_some(values)
        };
        match &querier.kind {
            QuerierKind::Static { filter, outputs } => {
                let Some(filter) = filter else { return Vec::new() };
                if !filter.eval(ctx).is_ok_and(|v| v.is_truthy()) {
                    return Vec::new();
                }
                evaluate_all(outputs, ctx).into_iter().collect()
            }
            QuerierKind::TableValued {
                call,
                filter,
                outputs,
            } => {
                let Ok(input) = call.eval(ctx) else {
                    return Vec::new();
                };
                let Ok(mut rows) = functions::json_each(&input) else {
                    return Vec::new();
                };
                // Without `fixed_json_extract`, a JSON `null` element's value is the text 'null',
                // as for `->>` (SYNC_RULES.md §5.2 JSON-null handling; the reference converts
                // json_each values with the same rule). Its `type` column stays 'null'.
                if !self.compat.fixed_json_extract {
                    for row in &mut rows {
                        if row.type_.as_text() == Some("null") {
                            row.value = SqliteValue::from("null");
                        }
                    }
                }
                let mut out = Vec::new();
                for row in &rows {
                    let row_ctx = EvalContext {
                        each_row: Some(row),
                        ..*ctx
                    };
                    if let Some(f) = filter
                        && !f.eval(&row_ctx).is_ok_and(|v| v.is_truthy())
                    {
                        continue;
                    }
                    if let Some(values) = evaluate_all(outputs, &row_ctx) {
                        out.push(values);
                    }
                }
                out
            }
            QuerierKind::Lookup { query } => {
                let q = &self.lookup_queries[*query];
                let Ok(lookups) = self.lookups_for(*query, ctx) else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                for l in &lookups {
                    'rows: for stored in find.get(l) {
                        let mut values = Vec::with_capacity(q.bucket_parameters.len());
                        for output in &q.bucket_parameters {
                            let v = match output {
                                LookupOutput::Row(i) => stored.get(*i).cloned().unwrap_or_default(),
                                LookupOutput::Request(e) => match e.eval(ctx) {
                                    Ok(SqliteValue::Blob(_)) | Err(_) => continue 'rows,
                                    Ok(v) => v,
                                },
                            };
                            values.push(v);
                        }
                        out.push(values);
                    }
                }
                out
            }
        }
    }

    fn variant_tuples(
        &self,
        variant: &StreamVariant,
        ctx: &EvalContext<'_>,
        find: &LookupResults,
    ) -> Vec<Vec<SqliteValue>> {
        for f in &variant.request_filters {
            if !f.eval(ctx).is_ok_and(|v| v.is_truthy()) {
                return Vec::new();
            }
        }
        let mut tuples: Vec<Vec<SqliteValue>> = vec![Vec::new()];
        for parameter in &variant.parameters {
            let choices: Vec<SqliteValue> = match parameter {
                StreamParameter::Value(e) => e.eval(ctx).into_iter().collect(),
                StreamParameter::ArrayElements(e) => match e.eval(ctx) {
                    Ok(v @ SqliteValue::Text(_)) => functions::json_array_elements(&v).unwrap_or_default(),
                    _ => Vec::new(),
                },
                StreamParameter::Lookup(query) => {
                    let Ok(lookups) = self.lookups_for(*query, ctx) else {
                        return Vec::new();
                    };
                    let mut values = Vec::new();
                    for l in &lookups {
                        for stored in find.get(l) {
                            if let Some(v) = stored.first()
                                && !values.iter().any(|x: &SqliteValue| x.key_eq(v))
                            {
                                values.push(v.clone());
                            }
                        }
                    }
                    values
                }
            };
            let mut next = Vec::with_capacity(tuples.len() * choices.len());
            for t in &tuples {
                for c in &choices {
                    let mut n = t.clone();
                    n.push(c.clone());
                    next.push(n);
                }
            }
            tuples = next;
            if tuples.is_empty() {
                break;
            }
        }
        tuples
    }
}

/// Answers to the parameter lookups of one resolution, by lookup key.
struct LookupResults(HashMap<String, Vec<Vec<SqliteValue>>>);

impl LookupResults {
    fn get(&self, lookup: &ParameterLookup) -> &[Vec<SqliteValue>] {
        self.0.get(&lookup.key()).map(Vec::as_slice).unwrap_or_default()
    }
}

/// One definition evaluated for one connection (streams: once per subscription).
struct Unit {
    definition: usize,
    subscription: Option<SubscriptionParameters>,
    /// Index of the explicit subscription in the request; `None` for a default unit.
    subscription_index: Option<usize>,
    override_priority: Option<BucketPriority>,
}

impl Unit {
    fn ctx<'a>(&'a self, request: &'a ConnectionRequest, compat: &'a Compatibility) -> EvalContext<'a> {
        EvalContext {
            request: Some(&request.parameters),
            subscription: self.subscription.as_ref(),
            compat: Some(compat),
            ..EvalContext::default()
        }
    }

    fn lookup_queries(&self, rules: &SyncRules) -> Vec<usize> {
        match &rules.definitions[self.definition].kind {
            DefinitionKind::Buckets { queriers } => queriers
                .iter()
                .filter_map(|q| match q.kind {
                    QuerierKind::Lookup { query } => Some(query),
                    _ => None,
                })
                .collect(),
            DefinitionKind::Stream { variants, .. } => variants
                .iter()
                .flat_map(|v| v.parameters.iter())
                .filter_map(|p| match p {
                    StreamParameter::Lookup(q) => Some(*q),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// Whether two array elements are the same bucket parameter (numbers by value).
fn scalar_key_eq(a: &JsonScalar<'_>, b: &JsonScalar<'_>) -> bool {
    match (a, b) {
        (JsonScalar::Text(x), JsonScalar::Text(y)) => x == y,
        (JsonScalar::Text(_), _) | (_, JsonScalar::Text(_)) => false,
        _ => a.to_value().key_eq(&b.to_value()),
    }
}

fn write_scalar_param(e: &JsonScalar<'_>, out: &mut String) {
    match e {
        JsonScalar::Text(s) => write_json_string(s, out),
        other => other.to_value().write_bucket_param(out),
    }
}

fn param_value(set: &ParamSet, input: Option<usize>) -> &SqliteValue {
    static NULL: SqliteValue = SqliteValue::Null;
    input
        .and_then(|i| set.iter().find(|(k, _)| *k == i).map(|(_, v)| v))
        .unwrap_or(&NULL)
}

/// Lookup keys compare numbers by value: whole reals become integers.
fn normalize(v: SqliteValue) -> SqliteValue {
    match v {
        #[allow(clippy::cast_possible_truncation)]
        SqliteValue::Real(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
            SqliteValue::Integer(f as i64)
        }
        other => other,
    }
}

/// Whether a key is a canonical array index, which JavaScript objects order first.
pub(crate) fn is_index_like(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 10
        && key.bytes().all(|b| b.is_ascii_digit())
        && (key == "0" || !key.starts_with('0'))
        && key.parse::<u64>().is_ok_and(|n| n < 4_294_967_295)
}

/// Resolves a data query's output object for one table (see [`OutputSlot`]).
fn output_layout(query: &DataQuery, table: &SourceTable, slots: &[SlotBinding]) -> Vec<OutputSlot> {
    let mut entries: Vec<(Arc<str>, OutputSource)> = Vec::new();
    let mut named = 0;
    for column in &query.columns {
        match column {
            OutputColumn::Named { name, expr, .. } => {
                // A plain column reference reads the row directly, without evaluation.
                let source = match expr {
                    Expr::Column(slot) => match &slots[*slot] {
                        SlotBinding::Index(i) => OutputSource::Column(*i),
                        SlotBinding::Value(v) => OutputSource::Const(v.clone()),
                    },
                    _ => OutputSource::Expr(named),
                };
                named += 1;
                match entries.iter_mut().find(|(k, _)| k == name) {
                    // A later column with the same name replaces the value, keeping the position.
                    Some(entry) => entry.1 = source,
                    None => entries.push((Arc::clone(name), source)),
                }
            }
            OutputColumn::Star => {
                for (i, name) in table.columns.iter().enumerate() {
                    if name.starts_with('_') {
                        continue;
                    }
                    match entries.iter_mut().find(|(k, _)| k == name) {
                        // An explicit column before `*` wins unless it is NULL.
                        Some(entry) => {
                            entry.1 = match std::mem::replace(&mut entry.1, OutputSource::Column(i)) {
                                OutputSource::Const(SqliteValue::Null) => OutputSource::Column(i),
                                OutputSource::Column(j) if j == i => OutputSource::Column(i),
                                fallback @ OutputSource::ElseColumn(..) => fallback,
                                primary => OutputSource::ElseColumn(Box::new(primary), i),
                            }
                        }
                        None => entries.push((Arc::clone(name), OutputSource::Column(i))),
                    }
                }
            }
        }
    }
    // JavaScript objects list array-index keys first, ascending; the reference builds one.
    let (mut ordered, rest): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(k, _)| is_index_like(k));
    ordered.sort_by_key(|(k, _)| k.parse::<u64>().unwrap_or(u64::MAX));
    ordered.extend(rest);
    ordered
        .into_iter()
        .map(|(key, source)| {
            let mut key_prefix = String::with_capacity(key.len() + 4);
            key_prefix.push(',');
            write_json_string(&key, &mut key_prefix);
            key_prefix.push(':');
            OutputSlot {
                key_prefix: key_prefix.into_boxed_str(),
                is_id: key.as_ref() == "id",
                source,
            }
        })
        .collect()
}

impl OutputSource {
    fn value<'v>(
        &'v self,
        evaluated: &'v [Cow<'_, SqliteValue>],
        values: &'v [SqliteValue],
    ) -> &'v SqliteValue {
        static NULL: SqliteValue = SqliteValue::Null;
        match self {
            OutputSource::Expr(k) => evaluated.get(*k).map_or(&NULL, |v| &**v),
            OutputSource::Column(i) => values.get(*i).unwrap_or(&NULL),
            OutputSource::Const(v) => v,
            OutputSource::ElseColumn(primary, _) => primary.value(evaluated, values),
        }
    }

    /// The row column this source reads directly, if any.
    fn column(&self) -> Option<usize> {
        match self {
            OutputSource::Column(i) => Some(*i),
            _ => None,
        }
    }
}

/// Appends the output row of a data query to `text`: returns the ranges of its id and JSON data.
fn transform_row(
    query: &DataQuery,
    layout: &[OutputSlot],
    ctx: &EvalContext<'_>,
    values: &[SqliteValue],
    text: &mut String,
    column_json: &mut ColumnJsonCache,
) -> Result<(Range<usize>, Range<usize>), EvalError> {
    // Every named expression is evaluated first (an error in any of them skips the row, and
    // nothing has been written yet); plain column references are read through the layout.
    let mut evaluated: SmallVec<[Cow<'_, SqliteValue>; 8]> = SmallVec::new();
    for column in &query.columns {
        if let OutputColumn::Named { expr, .. } = column {
            evaluated.push(match expr {
                Expr::Column(_) => Cow::Owned(SqliteValue::Null),
                e => e.eval_ref(ctx)?,
            });
        }
    }
    let null = SqliteValue::Null;
    let mut id: Option<&SqliteValue> = None;
    let data_start = text.len();
    text.push('{');
    let mut first = true;
    for slot in layout {
        let (value, column) = match &slot.source {
            OutputSource::Column(i) => (values.get(*i).unwrap_or(&null), Some(*i)),
            OutputSource::ElseColumn(primary, i) => match primary.value(&evaluated, values) {
                SqliteValue::Null => (values.get(*i).unwrap_or(&null), Some(*i)),
                v => (v, primary.column()),
            },
            source => (source.value(&evaluated, values), None),
        };
        // Blobs are never synced.
        if matches!(value, SqliteValue::Blob(_)) {
            continue;
        }
        if slot.is_id {
            id = Some(value);
        }
        // The prefix is `,"key":`; the first member goes without the comma.
        text.push_str(if first {
            &slot.key_prefix[1..]
        } else {
            &slot.key_prefix
        });
        first = false;
        match column {
            Some(i) => text.push_str(column_json.json(i, value)),
            None => {
                value.write_json(text);
            }
        }
    }
    text.push('}');
    let data = data_start..text.len();
    // The row id: the text rule of `id`, "" when there is none or it is NULL.
    if let Some(v) = id {
        v.write_text(text);
    }
    Ok((data.end..text.len(), data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CompileOptions, compile};

    fn placements(out: &RowEvaluation) -> Vec<(String, String, String, String)> {
        out.rows()
            .map(|r| (r.bucket.into(), r.table.into(), r.id.into(), r.data.into()))
            .collect()
    }

    /// The conjunction fast path must place rows exactly as the general parameter-set path does.
    #[test]
    fn conjunction_fast_path_agrees_with_the_general_path() {
        let rules = compile(
            r#"
bucket_definitions:
  global:
    data:
      - SELECT id, n FROM t WHERE n > 1
  by_owner:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT * FROM t WHERE owner = bucket.owner AND n IS NOT NULL
  by_tag:
    parameters: SELECT value AS tag FROM json_each(request.jwt() -> 'tags')
    data:
      - SELECT id, upper(owner) AS o FROM t WHERE bucket.tag IN tags
  checked:
    parameters: SELECT request.user_id() AS owner
    data:
      - SELECT id, uuid_blob(owner) AS u FROM t WHERE owner = bucket.owner
"#,
            &CompileOptions::default(),
        )
        .rules
        .expect("rules compile");
        let table = SourceTable::new("public", "t", &["id", "owner", "n", "tags"]);
        let fast = rules.plan_table(&table);
        assert!(
            fast.data.iter().all(|b| b.conjunction.is_some()),
            "all four queries take the fast path"
        );
        let mut general = fast.clone();
        for b in &mut general.data {
            b.conjunction = None;
        }
        let text = |s: &str| SqliteValue::from(s);
        let rows = [
            vec![
                text("a"),
                text("u1"),
                SqliteValue::Integer(2),
                text(r#"["x","y","x"]"#),
            ],
            vec![
                text("b"),
                SqliteValue::Null,
                SqliteValue::Real(1.5),
                text("[1, 1.0, 2, null, true]"),
            ],
            vec![
                text("c"),
                text("u\"2"),
                SqliteValue::Null,
                text(r#"["e\"s", {"a": 1}, [2]]"#),
            ],
            vec![
                text("d"),
                SqliteValue::from(vec![1u8]),
                SqliteValue::Integer(0),
                text("not json"),
            ],
            vec![
                SqliteValue::Integer(7),
                text("u3"),
                SqliteValue::Integer(5),
                SqliteValue::Null,
            ],
            vec![
                text("e"),
                text("00000000-0000-0000-0000-000000000000"),
                SqliteValue::Integer(3),
                text("[]"),
            ],
        ];
        let (mut placed, mut errors) = (0, 0);
        for row in &rows {
            let (mut a, mut b) = (RowEvaluation::default(), RowEvaluation::default());
            rules.evaluate_row(&fast, row, &mut a);
            rules.evaluate_row(&general, row, &mut b);
            assert_eq!(placements(&a), placements(&b), "row {row:?}");
            assert_eq!(a.errors, b.errors, "row {row:?}");
            placed += a.len();
            errors += a.errors.len();
        }
        // The rows exercise placements and row errors (uuid_blob, a non-array `tags`).
        assert!(
            placed >= 10 && errors >= 2,
            "{placed} placements, {errors} errors"
        );
    }
}
