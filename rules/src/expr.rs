//! Compiled expressions: the SQL tree reduced to what evaluation needs, with column references
//! resolved to slots and functions resolved to their implementations.

use std::borrow::Cow;
use std::sync::Arc;

use smallvec::SmallVec;

use serde_json::{Map, Value};

use crate::compat::Compatibility;
use crate::error::EvalError;
use crate::functions::{self, ArithOp, CastType, CompareOp, FunctionDef, JsonEachRow};
use crate::request::{RequestParameters, SubscriptionParameters};
use crate::value::SqliteValue;

/// A request value that expressions can read (SYNC_RULES.md §5.4).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RequestValue {
    /// `request.user_id()`, `auth.user_id()`.
    UserId,
    /// `request.jwt()`, `auth.parameters()`: the payload as JSON text.
    TokenPayload,
    /// `auth.parameter('k')`.
    TokenPayloadField,
    /// `request.parameters()`, `connection.parameters()`.
    ClientParameters,
    /// `connection.parameter('k')`.
    ClientParameter,
    /// `subscription.parameters()`.
    SubscriptionParameters,
    /// `subscription.parameter('k')`.
    SubscriptionParameter,
    /// `token_parameters.<name>`.
    TokenParameter(Arc<str>),
    /// `user_parameters.<name>`.
    UserParameter(Arc<str>),
}

/// Who controls a request value: decides the "potentially dangerous" warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParameterUsage {
    Authenticated,
    Unauthenticated,
    Subscription,
}

impl RequestValue {
    pub(crate) fn usage(&self) -> ParameterUsage {
        match self {
            RequestValue::UserId
            | RequestValue::TokenPayload
            | RequestValue::TokenPayloadField
            | RequestValue::TokenParameter(_) => ParameterUsage::Authenticated,
            RequestValue::ClientParameters
            | RequestValue::ClientParameter
            | RequestValue::UserParameter(_) => ParameterUsage::Unauthenticated,
            RequestValue::SubscriptionParameters | RequestValue::SubscriptionParameter => {
                ParameterUsage::Subscription
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Const(SqliteValue),
    /// A column of the source row, by the query's slot number.
    Column(usize),
    /// A column of the `json_each` row of a table-valued parameter query.
    EachColumn(Arc<str>),
    Request(RequestValue, Vec<Expr>),
    Call(&'static FunctionDef, Vec<Expr>),
    Compare(CompareOp, Box<Expr>, Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Concat(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull(Box<Expr>, bool),
    Cast(Box<Expr>, CastType),
    JsonArrow(Box<Expr>, Box<Expr>),
    JsonLongArrow(Box<Expr>, Box<Expr>),
    In(Box<Expr>, Box<Expr>),
    Overlap(Box<Expr>, Box<Expr>),
}

/// How a query's column slot is filled for one source table.
#[derive(Debug, Clone)]
pub(crate) enum SlotBinding {
    Index(usize),
    /// A column the table does not have (NULL) or a pseudo-column such as `_table_suffix`.
    Value(SqliteValue),
}

/// Values an expression may read.
#[derive(Clone, Copy, Default)]
pub(crate) struct EvalContext<'a> {
    pub row: Option<(&'a [SqliteValue], &'a [SlotBinding])>,
    pub request: Option<&'a RequestParameters>,
    pub subscription: Option<&'a SubscriptionParameters>,
    pub each_row: Option<&'a JsonEachRow>,
    pub compat: Option<&'a Compatibility>,
}

static LEGACY: Compatibility = Compatibility {
    edition: 1,
    timestamps_iso8601: false,
    versioned_bucket_ids: false,
    fixed_json_extract: false,
    custom_postgres_types: false,
    unstable_sqlite_expression_engine: false,
    timestamp_max_precision: crate::compat::TimestampPrecision::Microseconds,
};

/// Binds each operand to `&SqliteValue`: constants and row columns directly (no `Cow`, no
/// `Result`), anything else through a recursive evaluation kept alive in a local.
macro_rules! operands {
    ($ctx:expr, $($x:ident),+) => {
        $(
            let evaluated;
            let $x: &SqliteValue = match $x.leaf($ctx) {
                Some(v) => v,
                None => {
                    evaluated = $x.eval_ref($ctx)?;
                    &evaluated
                }
            };
        )+
    };
}

impl Expr {
    /// A constant or row column, borrowed; `None` for anything that needs evaluation.
    #[inline]
    fn leaf<'r>(&'r self, ctx: &EvalContext<'r>) -> Option<&'r SqliteValue> {
        static NULL: SqliteValue = SqliteValue::Null;
        match self {
            Expr::Const(v) => Some(v),
            Expr::Column(slot) => Some(match ctx.row {
                Some((values, slots)) => match slots.get(*slot) {
                    Some(SlotBinding::Index(i)) => values.get(*i).unwrap_or(&NULL),
                    Some(SlotBinding::Value(v)) => v,
                    None => &NULL,
                },
                None => &NULL,
            }),
            _ => None,
        }
    }

    pub(crate) fn eval(&self, ctx: &EvalContext<'_>) -> Result<SqliteValue, EvalError> {
        self.eval_ref(ctx).map(Cow::into_owned)
    }

    /// Evaluates without copying constants and row columns: they are borrowed (hot path).
    pub(crate) fn eval_ref<'r>(&'r self, ctx: &EvalContext<'r>) -> Result<Cow<'r, SqliteValue>, EvalError> {
        static NULL: SqliteValue = SqliteValue::Null;
        let compat = ctx.compat.unwrap_or(&LEGACY);
        let owned = match self {
            Expr::Const(_) | Expr::Column(_) => return Ok(Cow::Borrowed(self.leaf(ctx).unwrap_or(&NULL))),
            Expr::EachColumn(name) => {
                return Ok(Cow::Borrowed(
                    ctx.each_row.and_then(|r| r.column(name)).unwrap_or(&NULL),
                ));
            }
            Expr::Request(value, args) => eval_request(value, args, ctx)?,
            Expr::Call(def, args) => {
                let values: SmallVec<[SqliteValue; 4]> =
                    args.iter().map(|a| a.eval(ctx)).collect::<Result<_, _>>()?;
                (def.call)(&values, compat)?
            }
            Expr::Compare(op, a, b) => {
                operands!(ctx, a, b);
                functions::compare(*op, a, b)?
            }
            Expr::Arith(op, a, b) => {
                operands!(ctx, a, b);
                functions::arithmetic(*op, a, b)
            }
            Expr::Concat(a, b) => {
                operands!(ctx, a, b);
                functions::concat(a, b)
            }
            Expr::And(a, b) => {
                operands!(ctx, a, b);
                functions::and(a, b)
            }
            Expr::Or(a, b) => {
                operands!(ctx, a, b);
                functions::or(a, b)
            }
            Expr::Not(a) => functions::not(&*a.eval_ref(ctx)?),
            Expr::IsNull(a, negated) => SqliteValue::from(a.eval_ref(ctx)?.is_null() != *negated),
            Expr::Cast(a, to) => functions::cast(&*a.eval_ref(ctx)?, *to),
            Expr::JsonArrow(a, b) | Expr::JsonLongArrow(a, b) => {
                let long = matches!(self, Expr::JsonLongArrow(..));
                match parsed_request_json(a, ctx) {
                    Some(doc) => functions::json_arrow_parsed(doc, &*b.eval_ref(ctx)?, long, compat)?,
                    None if long => {
                        functions::json_long_arrow(&*a.eval_ref(ctx)?, &*b.eval_ref(ctx)?, compat)?
                    }
                    None => functions::json_arrow(&*a.eval_ref(ctx)?, &*b.eval_ref(ctx)?, compat)?,
                }
            }
            Expr::In(a, b) => functions::json_array_contains(&*a.eval_ref(ctx)?, &*b.eval_ref(ctx)?)?,
            Expr::Overlap(a, b) => functions::json_arrays_overlap(&*a.eval_ref(ctx)?, &*b.eval_ref(ctx)?)?,
        };
        Ok(Cow::Owned(owned))
    }
}

/// The parsed JSON of a whole request object (`request.jwt()`, `request.parameters()`,
/// `subscription.parameters()`, ...), so that `request.jwt() ->> 'x'` does not re-parse the
/// token for every lookup. `None` when `expr` is anything else.
fn parsed_request_json<'r>(expr: &Expr, ctx: &EvalContext<'r>) -> Option<&'r crate::functions::Json> {
    let Expr::Request(value, args) = expr else {
        return None;
    };
    if !args.is_empty() {
        return None;
    }
    let request = ctx.request?;
    match value {
        RequestValue::TokenPayload => request.parsed_token_payload.get(&request.raw_token_payload),
        RequestValue::ClientParameters => request
            .parsed_client_parameters
            .get(&request.raw_client_parameters),
        RequestValue::SubscriptionParameters => {
            let s = ctx.subscription?;
            s.parsed_json.get(&s.raw)
        }
        _ => None,
    }
}

fn eval_request(
    value: &RequestValue,
    args: &[Expr],
    ctx: &EvalContext<'_>,
) -> Result<SqliteValue, EvalError> {
    let Some(request) = ctx.request else {
        return Ok(SqliteValue::Null);
    };
    let empty = Map::new();
    let subscription_map = ctx.subscription.map_or(&empty, |s| &s.parsed);
    let key = |ctx: &EvalContext<'_>| -> Result<Option<SqliteValue>, EvalError> {
        match args.first() {
            Some(a) => Ok(Some(a.eval(ctx)?)),
            None => Ok(None),
        }
    };
    Ok(match value {
        RequestValue::UserId => request.user_id.clone(),
        RequestValue::TokenPayload => SqliteValue::Text(Arc::clone(&request.raw_token_payload)),
        RequestValue::ClientParameters => SqliteValue::Text(Arc::clone(&request.raw_client_parameters)),
        RequestValue::SubscriptionParameters => match ctx.subscription {
            Some(s) => SqliteValue::Text(Arc::clone(&s.raw)),
            None => SqliteValue::from("{}"),
        },
        RequestValue::TokenPayloadField => extract_from_record(&request.token_payload, key(ctx)?),
        RequestValue::ClientParameter => extract_from_record(&request.client_parameters, key(ctx)?),
        RequestValue::SubscriptionParameter => extract_from_record(subscription_map, key(ctx)?),
        RequestValue::TokenParameter(name) => request
            .token_parameters
            .get(name.as_ref())
            .map_or(SqliteValue::Null, SqliteValue::from_json),
        RequestValue::UserParameter(name) => request
            .client_parameters
            .get(name.as_ref())
            .map_or(SqliteValue::Null, SqliteValue::from_json),
    })
}

/// `x.parameter('path')`: a top-level key, or a `$.`-path that splits on dots (always, in every edition).
fn extract_from_record(record: &Map<String, Value>, key: Option<SqliteValue>) -> SqliteValue {
    let Some(SqliteValue::Text(path)) = key else {
        return SqliteValue::Null;
    };
    let found = match path.strip_prefix("$.") {
        Some(rest) => {
            let mut parts = rest.split('.');
            let first = parts.next().unwrap_or_default();
            parts.try_fold(record.get(first), |current, part| Some(current?.get(part)))
        }
        None => Some(record.get(path.as_ref())),
    };
    found.flatten().map_or(SqliteValue::Null, SqliteValue::from_json)
}
