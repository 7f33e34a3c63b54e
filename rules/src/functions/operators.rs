//! Comparison, arithmetic, concatenation and boolean operators (SYNC_RULES.md §5.2).

use std::cmp::Ordering;
use std::sync::Arc;

use super::bool_value;
use super::cast::to_numeric;
use crate::error::EvalError;
use crate::value::SqliteValue;

/// A comparison operator. `<>` is `NotEq`; `IS NULL` is `Is` against NULL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Is,
    IsNot,
}

/// Compares two values: 1/0, or NULL when either side is NULL (except `IS`/`IS NOT`, where NULL equals
/// NULL). Classes order NULL < numeric < TEXT < BLOB with no type affinity (`'1' = 1` is 0).
/// Comparing two blobs is an error, as in the reference.
pub fn compare(op: CompareOp, a: &SqliteValue, b: &SqliteValue) -> Result<SqliteValue, EvalError> {
    let null_safe = matches!(op, CompareOp::Is | CompareOp::IsNot);
    let ordering = match (a, b) {
        (SqliteValue::Null, SqliteValue::Null) if null_safe => Ordering::Equal,
        (SqliteValue::Null, _) | (_, SqliteValue::Null) if null_safe => Ordering::Less,
        (SqliteValue::Null, _) | (_, SqliteValue::Null) => return Ok(SqliteValue::Null),
        (SqliteValue::Blob(_), SqliteValue::Blob(_)) => {
            return Err(EvalError::new("Comparing blobs is not supported currently"));
        }
        // `sql_cmp` is only `None` for NULLs, handled above.
        _ => a.sql_cmp(b).unwrap_or(Ordering::Equal),
    };
    Ok(bool_value(match op {
        CompareOp::Eq | CompareOp::Is => ordering == Ordering::Equal,
        CompareOp::NotEq | CompareOp::IsNot => ordering != Ordering::Equal,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::LtEq => ordering != Ordering::Greater,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::GtEq => ordering != Ordering::Less,
    }))
}

/// An arithmetic operator. Unary minus is not part of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// `a op b` with NUMERIC conversion of both sides (text takes its numeric prefix). INTEGER op INTEGER is
/// INTEGER (division truncates); on 64-bit overflow the result is computed as REAL, like SQLite.
/// Anything involving a REAL is REAL. NULL on either side, or division by zero, gives NULL.
pub fn arithmetic(op: ArithOp, a: &SqliteValue, b: &SqliteValue) -> SqliteValue {
    if a.is_null() || b.is_null() {
        return SqliteValue::Null;
    }
    match (to_numeric(a), to_numeric(b)) {
        (SqliteValue::Integer(x), SqliteValue::Integer(y)) => {
            let exact = match op {
                ArithOp::Add => x.checked_add(y),
                ArithOp::Sub => x.checked_sub(y),
                ArithOp::Mul => x.checked_mul(y),
                ArithOp::Div if y == 0 => return SqliteValue::Null,
                // Only i64::MIN / -1 overflows.
                ArithOp::Div => x.checked_div(y),
            };
            exact.map_or_else(|| real_op(op, x as f64, y as f64), SqliteValue::Integer)
        }
        (x, y) => real_op(op, as_f64(&x), as_f64(&y)),
    }
}

fn as_f64(v: &SqliteValue) -> f64 {
    match v {
        SqliteValue::Integer(i) => *i as f64,
        SqliteValue::Real(f) => *f,
        _ => 0.0,
    }
}

fn real_op(op: ArithOp, x: f64, y: f64) -> SqliteValue {
    SqliteValue::Real(match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div if y == 0.0 => return SqliteValue::Null,
        ArithOp::Div => x / y,
    })
}

/// `a || b`: both sides in their text form (`2 || 1.5` is `'21.5'`); NULL if either is NULL.
pub fn concat(a: &SqliteValue, b: &SqliteValue) -> SqliteValue {
    match (a.to_text(), b.to_text()) {
        (Some(x), Some(y)) => {
            let mut s = String::with_capacity(x.len() + y.len());
            s.push_str(&x);
            s.push_str(&y);
            SqliteValue::Text(Arc::from(s))
        }
        _ => SqliteValue::Null,
    }
}

/// `a AND b`: 1/0, never NULL (NULL is false).
pub fn and(a: &SqliteValue, b: &SqliteValue) -> SqliteValue {
    bool_value(a.is_truthy() && b.is_truthy())
}

/// `a OR b`: 1/0, never NULL (NULL is false).
pub fn or(a: &SqliteValue, b: &SqliteValue) -> SqliteValue {
    bool_value(a.is_truthy() || b.is_truthy())
}

/// `NOT a`: 1/0, never NULL (`NOT NULL` is 1).
pub fn not(a: &SqliteValue) -> SqliteValue {
    bool_value(!a.is_truthy())
}

/// `a IS NULL`.
pub fn is_null(a: &SqliteValue) -> SqliteValue {
    bool_value(a.is_null())
}

/// `a IS NOT NULL`.
pub fn is_not_null(a: &SqliteValue) -> SqliteValue {
    bool_value(!a.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::test_values::{N, b, i, r, t};
    use proptest::prelude::*;

    fn cmp(op: CompareOp, a: &SqliteValue, b: &SqliteValue) -> SqliteValue {
        compare(op, a, b).unwrap()
    }

    #[test]
    fn comparisons_give_one_or_zero() {
        use CompareOp::*;
        assert_eq!(cmp(Gt, &i(11), &i(10)), i(1));
        assert_eq!(cmp(Gt, &i(5), &i(10)), i(0));
        assert_eq!(cmp(Eq, &i(2), &r(2.0)), i(1));
        assert_eq!(cmp(Lt, &r(1.5), &i(2)), i(1));
        assert_eq!(cmp(LtEq, &i(2), &i(2)), i(1));
        assert_eq!(cmp(GtEq, &i(1), &i(2)), i(0));
        assert_eq!(cmp(NotEq, &t("a"), &t("b")), i(1));
        assert_eq!(cmp(Lt, &t("a"), &t("b")), i(1));
        assert_eq!(cmp(Eq, &t("é"), &t("é")), i(1));
        // Exact for integers beyond 2^53.
        assert_eq!(
            cmp(Eq, &i(9_007_199_254_740_993), &r(9_007_199_254_740_992.0)),
            i(0)
        );
        assert_eq!(
            cmp(Gt, &i(9_007_199_254_740_993), &r(9_007_199_254_740_992.0)),
            i(1)
        );
    }

    #[test]
    fn comparisons_have_no_type_affinity() {
        use CompareOp::*;
        assert_eq!(cmp(Eq, &t("1"), &i(1)), i(0));
        assert_eq!(cmp(Gt, &t("1"), &i(100)), i(1));
        assert_eq!(cmp(Lt, &r(1e300), &t("")), i(1));
        assert_eq!(cmp(Gt, &b(b"\0"), &t("zzz")), i(1));
        assert_eq!(cmp(Lt, &i(5), &b(b"")), i(1));
    }

    #[test]
    fn comparisons_with_null_are_null() {
        for op in [
            CompareOp::Eq,
            CompareOp::NotEq,
            CompareOp::Lt,
            CompareOp::LtEq,
            CompareOp::Gt,
            CompareOp::GtEq,
        ] {
            assert_eq!(cmp(op, &N, &i(1)), N);
            assert_eq!(cmp(op, &t("a"), &N), N);
            assert_eq!(cmp(op, &N, &N), N);
            assert_eq!(cmp(op, &b(b"x"), &N), N);
        }
    }

    #[test]
    fn is_treats_null_as_a_value() {
        use CompareOp::*;
        assert_eq!(cmp(Is, &N, &N), i(1));
        assert_eq!(cmp(IsNot, &N, &N), i(0));
        assert_eq!(cmp(Is, &i(1), &N), i(0));
        assert_eq!(cmp(IsNot, &N, &t("")), i(1));
        assert_eq!(cmp(Is, &i(1), &r(1.0)), i(1));
        assert_eq!(cmp(IsNot, &t("1"), &i(1)), i(1));
        assert_eq!(cmp(Is, &b(b"x"), &N), i(0));
    }

    #[test]
    fn comparing_two_blobs_is_an_error() {
        for op in [CompareOp::Eq, CompareOp::Lt, CompareOp::Is, CompareOp::IsNot] {
            let err = compare(op, &b(b"a"), &b(b"a")).unwrap_err();
            assert_eq!(err.message, "Comparing blobs is not supported currently");
        }
    }

    #[test]
    fn integer_arithmetic_stays_integer() {
        use ArithOp::*;
        assert_eq!(arithmetic(Add, &i(41), &i(1)), i(42));
        assert_eq!(arithmetic(Sub, &i(1), &i(3)), i(-2));
        assert_eq!(arithmetic(Mul, &i(6), &i(7)), i(42));
        assert_eq!(arithmetic(Div, &i(7), &i(2)), i(3));
        assert_eq!(arithmetic(Div, &i(-7), &i(2)), i(-3));
    }

    #[test]
    fn mixed_arithmetic_is_real() {
        use ArithOp::*;
        assert_eq!(arithmetic(Add, &i(1), &r(0.5)), r(1.5));
        assert_eq!(arithmetic(Div, &r(7.0), &i(2)), r(3.5));
        assert_eq!(arithmetic(Mul, &r(2.0), &r(3.0)), r(6.0));
        assert_eq!(arithmetic(Sub, &r(0.5), &r(0.25)), r(0.25));
    }

    #[test]
    fn arithmetic_converts_text_by_numeric_prefix() {
        use ArithOp::*;
        assert_eq!(arithmetic(Add, &t("12abc"), &i(1)), i(13));
        assert_eq!(arithmetic(Add, &t("abc"), &i(1)), i(1));
        assert_eq!(arithmetic(Add, &t("1.5e2"), &i(1)), r(151.0));
        assert_eq!(arithmetic(Mul, &t(" -2"), &t("3")), i(-6));
        assert_eq!(arithmetic(Add, &b(b"5"), &i(1)), i(6));
    }

    #[test]
    fn arithmetic_null_and_division_by_zero() {
        use ArithOp::*;
        for op in [Add, Sub, Mul, Div] {
            assert_eq!(arithmetic(op, &N, &i(1)), N);
            assert_eq!(arithmetic(op, &i(1), &N), N);
        }
        assert_eq!(arithmetic(Div, &i(1), &i(0)), N);
        assert_eq!(arithmetic(Div, &r(1.0), &r(0.0)), N);
        assert_eq!(arithmetic(Div, &r(1.0), &r(-0.0)), N);
        assert_eq!(arithmetic(Div, &i(1), &t("abc")), N);
        assert_eq!(arithmetic(Div, &i(1), &t("0.0")), N);
    }

    #[test]
    fn integer_overflow_becomes_real() {
        use ArithOp::*;
        assert_eq!(
            arithmetic(Add, &i(i64::MAX), &i(1)),
            r(9_223_372_036_854_775_808.0)
        );
        assert_eq!(
            arithmetic(Sub, &i(i64::MIN), &i(1)),
            r(-9_223_372_036_854_775_808.0)
        );
        assert_eq!(
            arithmetic(Mul, &i(i64::MAX), &i(2)),
            r(1.844_674_407_370_955_2e19)
        );
        assert_eq!(
            arithmetic(Div, &i(i64::MIN), &i(-1)),
            r(9_223_372_036_854_775_808.0)
        );
    }

    #[test]
    fn concat_uses_the_text_rule() {
        assert_eq!(concat(&t("a"), &t("-r0")), t("a-r0"));
        assert_eq!(concat(&i(2), &r(1.5)), t("21.5"));
        assert_eq!(concat(&r(1.0), &t(",")), t("1,"));
        assert_eq!(concat(&t("lit"), &t("x")), t("litx"));
        assert_eq!(concat(&b(b"ab"), &t("c")), t("abc"));
        assert_eq!(concat(&N, &t("x")), N);
        assert_eq!(concat(&t("x"), &N), N);
        assert_eq!(concat(&t(""), &t("")), t(""));
    }

    #[test]
    fn boolean_operators_never_give_null() {
        assert_eq!(and(&i(1), &t("1")), i(1));
        assert_eq!(and(&i(1), &N), i(0));
        assert_eq!(and(&N, &N), i(0));
        assert_eq!(and(&r(0.5), &t("0x1")), i(1));
        assert_eq!(and(&i(1), &t("0.5")), i(0));
        assert_eq!(or(&N, &i(2)), i(1));
        assert_eq!(or(&N, &N), i(0));
        assert_eq!(or(&b(b"1"), &t("abc")), i(0));
        assert_eq!(not(&i(1)), i(0));
        assert_eq!(not(&i(0)), i(1));
        assert_eq!(not(&N), i(1));
        assert_eq!(not(&t(" -3")), i(0));
        assert_eq!(not(&b(b"\x01")), i(1));
    }

    #[test]
    fn null_tests() {
        assert_eq!(is_null(&N), i(1));
        assert_eq!(is_null(&t("a")), i(0));
        assert_eq!(is_null(&t("")), i(0));
        assert_eq!(is_not_null(&N), i(0));
        assert_eq!(is_not_null(&i(0)), i(1));
    }

    fn any_value() -> impl Strategy<Value = SqliteValue> {
        prop_oneof![Just(SqliteValue::Null), non_null_value()]
    }

    fn non_null_value() -> impl Strategy<Value = SqliteValue> {
        prop_oneof![
            any::<i64>().prop_map(SqliteValue::Integer),
            prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1), Just(0)].prop_map(SqliteValue::Integer),
            any::<f64>().prop_map(SqliteValue::Real),
            ".{0,12}".prop_map(SqliteValue::from),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(SqliteValue::from),
        ]
    }

    proptest! {
        #[test]
        fn operators_never_panic(a in any_value(), b in any_value()) {
            for op in [ArithOp::Add, ArithOp::Sub, ArithOp::Mul, ArithOp::Div] {
                let _ = arithmetic(op, &a, &b);
            }
            for op in [CompareOp::Eq, CompareOp::NotEq, CompareOp::Lt, CompareOp::LtEq, CompareOp::Gt,
                       CompareOp::GtEq, CompareOp::Is, CompareOp::IsNot] {
                let _ = compare(op, &a, &b);
            }
            let _ = (concat(&a, &b), and(&a, &b), or(&a, &b), not(&a), is_null(&a));
        }

        #[test]
        fn integer_arithmetic_matches_i128(x in any::<i64>(), y in any::<i64>()) {
            let cases = [
                (ArithOp::Add, i128::from(x) + i128::from(y)),
                (ArithOp::Sub, i128::from(x) - i128::from(y)),
                (ArithOp::Mul, i128::from(x) * i128::from(y)),
            ];
            for (op, exact) in cases {
                match arithmetic(op, &i(x), &i(y)) {
                    SqliteValue::Integer(v) => prop_assert_eq!(i128::from(v), exact),
                    SqliteValue::Real(_) => prop_assert!(i64::try_from(exact).is_err()),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            let q = arithmetic(ArithOp::Div, &i(x), &i(y));
            if y == 0 {
                prop_assert_eq!(q, N);
            } else if let SqliteValue::Integer(v) = q {
                prop_assert_eq!(i128::from(v), i128::from(x) / i128::from(y));
            } else {
                prop_assert!(x == i64::MIN && y == -1);
            }
        }

        #[test]
        fn is_and_eq_agree_on_non_null(a in non_null_value(), b in non_null_value()) {
            prop_assert_eq!(compare(CompareOp::Eq, &a, &b), compare(CompareOp::Is, &a, &b));
            prop_assert_eq!(compare(CompareOp::NotEq, &a, &b), compare(CompareOp::IsNot, &a, &b));
        }
    }
}
