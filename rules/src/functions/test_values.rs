//! Short value constructors for the function tests.

use crate::compat::Compatibility;
use crate::value::SqliteValue;

pub(crate) const N: SqliteValue = SqliteValue::Null;

pub(crate) fn i(v: i64) -> SqliteValue {
    SqliteValue::Integer(v)
}

pub(crate) fn r(v: f64) -> SqliteValue {
    SqliteValue::Real(v)
}

pub(crate) fn t(v: &str) -> SqliteValue {
    SqliteValue::from(v)
}

pub(crate) fn b(v: &[u8]) -> SqliteValue {
    SqliteValue::from(v.to_vec())
}

/// Edition-1 behaviour (legacy JSON extraction).
pub(crate) fn legacy() -> Compatibility {
    Compatibility::for_edition(1)
}

/// Edition-2 behaviour (`fixed_json_extract`).
pub(crate) fn fixed() -> Compatibility {
    Compatibility::for_edition(2)
}
