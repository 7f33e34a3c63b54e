//! Parser tests: constructs, precedence, spans, errors, the public test vectors and fuzzing.

use super::ast::*;
use super::{ParseError, parse_expression, parse_statements};
use proptest::prelude::*;

// ---- helpers ----

/// A compact, fully parenthesised rendering of an expression, for precedence assertions.
fn show(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Literal(l) => match l {
            Literal::Null => "NULL".into(),
            Literal::Bool(b) => b.to_string(),
            Literal::Integer(i) => i.to_string(),
            Literal::Real(r) => format!("{r:?}"),
            Literal::String(s) => format!("'{s}'"),
        },
        ExprKind::Column { qualifiers, name } => path(qualifiers, name),
        ExprKind::Call {
            qualifiers,
            name,
            args,
            star,
            distinct,
        } => {
            let mut inner = list(args);
            if *star {
                inner = "*".into();
            }
            if *distinct {
                inner = format!("DISTINCT {inner}");
            }
            format!("{}({inner})", path(qualifiers, name))
        }
        ExprKind::Unary { op, operand } => format!("({op:?} {})", show(operand)),
        ExprKind::Binary { op, left, right, .. } => format!("({} {op:?} {})", show(left), show(right)),
        ExprKind::IsNull { operand, negated } => {
            format!(
                "({} {})",
                show(operand),
                if *negated { "NOTNULL" } else { "ISNULL" }
            )
        }
        ExprKind::In {
            operand,
            rhs,
            negated,
        } => {
            let rhs = match rhs {
                InRhs::Bare(e) => format!("bare {}", show(e)),
                InRhs::List(l) => format!("list[{}]", list(l)),
                InRhs::Subquery(_) => "subquery".into(),
            };
            format!(
                "({} {}IN {rhs})",
                show(operand),
                if *negated { "NOT " } else { "" }
            )
        }
        ExprKind::Between {
            operand,
            low,
            high,
            negated,
        } => format!(
            "({} {}BETWEEN {} AND {})",
            show(operand),
            if *negated { "NOT " } else { "" },
            show(low),
            show(high)
        ),
        ExprKind::Cast {
            operand,
            type_name,
            syntax,
        } => format!("(cast{syntax:?} {} {})", show(operand), type_name.text),
        ExprKind::Case {
            operand,
            whens,
            else_result,
        } => {
            let mut s = "(CASE".to_string();
            if let Some(o) = operand {
                s += &format!(" {}", show(o));
            }
            for (w, t) in whens {
                s += &format!(" WHEN {} THEN {}", show(w), show(t));
            }
            if let Some(e) = else_result {
                s += &format!(" ELSE {}", show(e));
            }
            s + ")"
        }
        ExprKind::Subquery(_) => "(subquery)".into(),
        ExprKind::Exists(_) => "(exists)".into(),
        ExprKind::Row(l) => format!("row({})", list(l)),
        ExprKind::Placeholder(p) => format!("${p}"),
        ExprKind::Array(l) => format!("array[{}]", list(l)),
    }
}

fn path(qualifiers: &[Ident], name: &Ident) -> String {
    qualifiers
        .iter()
        .chain(std::iter::once(name))
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

fn list(l: &[Expr]) -> String {
    l.iter().map(show).collect::<Vec<_>>().join(", ")
}

fn e(sql: &str) -> String {
    let expr = parse_expression(sql).unwrap_or_else(|err| panic!("{sql}: {err:?}"));
    check_expr(sql, &expr, Span::new(0, sql.len()));
    show(&expr)
}

fn parse(sql: &str) -> Vec<Statement> {
    let stmts = parse_statements(sql).unwrap_or_else(|err| panic!("{sql}: {err:?}"));
    check_statements(sql, &stmts);
    stmts
}

fn sel(sql: &str) -> Select {
    let mut stmts = parse(sql);
    assert_eq!(stmts.len(), 1, "{sql}");
    match stmts.remove(0) {
        Statement::Select(s) => *s,
        other => panic!("not a select: {other:?}"),
    }
}

fn err(sql: &str) -> ParseError {
    match parse_statements(sql) {
        Ok(stmts) => panic!("{sql} parsed: {stmts:?}"),
        Err(err) => err,
    }
}

fn text(sql: &str, span: Span) -> &str {
    &sql[span.start..span.end]
}

fn where_expr(sql: &str) -> Expr {
    sel(sql).where_clause.expect("WHERE")
}

fn item_expr(item: &SelectItem) -> &Expr {
    match item {
        SelectItem::Expr { expr, .. } => expr,
        SelectItem::Star { .. } => panic!("star"),
    }
}

fn alias(item: &SelectItem) -> Option<&str> {
    match item {
        SelectItem::Expr { alias, .. } => alias.as_ref().map(|a| a.name.as_str()),
        SelectItem::Star { .. } => None,
    }
}

// ---- span invariants, shared with the fuzz tests ----

fn check_span(sql: &str, span: Span, parent: Span) {
    assert!(
        span.start <= span.end && span.end <= sql.len(),
        "{span:?} out of bounds"
    );
    assert!(
        sql.is_char_boundary(span.start) && sql.is_char_boundary(span.end),
        "{span:?} not on chars"
    );
    assert!(
        parent.start <= span.start && span.end <= parent.end,
        "{span:?} not within {parent:?} in {sql:?}"
    );
}

fn check_ident(sql: &str, ident: &Ident, parent: Span) {
    check_span(sql, ident.span, parent);
    if !ident.quoted {
        assert_eq!(text(sql, ident.span), ident.raw);
    }
}

fn check_statements(sql: &str, stmts: &[Statement]) {
    let all = Span::new(0, sql.len());
    for stmt in stmts {
        match stmt {
            Statement::Select(s) => check_select(sql, s, all),
            Statement::Other { span, .. } => check_span(sql, *span, all),
        }
    }
}

fn check_select(sql: &str, s: &Select, parent: Span) {
    check_span(sql, s.span, parent);
    let p = s.span;
    for span in [
        s.distinct, s.group_by, s.having, s.order_by, s.limit, s.offset, s.locking,
    ]
    .into_iter()
    .flatten()
    {
        check_span(sql, span, p);
    }
    for item in &s.columns {
        match item {
            SelectItem::Star { table, span } => {
                check_span(sql, *span, p);
                if let Some(t) = table {
                    check_ident(sql, t, *span);
                }
            }
            SelectItem::Expr { expr, alias, span } => {
                check_span(sql, *span, p);
                check_expr(sql, expr, *span);
                if let Some(a) = alias {
                    check_ident(sql, a, *span);
                }
            }
        }
    }
    for item in &s.from {
        check_source(sql, &item.source, p);
        for join in &item.joins {
            check_span(sql, join.span, p);
            check_source(sql, &join.source, join.span);
            if let Some(on) = &join.on {
                check_expr(sql, on, join.span);
            }
        }
    }
    if let Some(w) = &s.where_clause {
        check_expr(sql, w, p);
    }
}

fn check_source(sql: &str, source: &TableSource, parent: Span) {
    let span = source.span();
    check_span(sql, span, parent);
    match source {
        TableSource::Table {
            qualifiers,
            name,
            alias,
            ..
        } => {
            for q in qualifiers.iter().chain([name]).chain(alias) {
                check_ident(sql, q, span);
            }
        }
        TableSource::Function {
            name, args, alias, ..
        } => {
            for i in std::iter::once(name).chain(alias) {
                check_ident(sql, i, span);
            }
            for a in args {
                check_expr(sql, a, span);
            }
        }
        TableSource::Subquery { select, alias, .. } => {
            check_select(sql, select, span);
            if let Some(a) = alias {
                check_ident(sql, a, span);
            }
        }
    }
}

fn check_expr(sql: &str, e: &Expr, parent: Span) {
    check_span(sql, e.span, parent);
    let p = e.span;
    let sub = |x: &Expr| check_expr(sql, x, p);
    match &e.kind {
        ExprKind::Literal(_) | ExprKind::Placeholder(_) => {}
        ExprKind::Column { qualifiers, name } => {
            for i in qualifiers.iter().chain([name]) {
                check_ident(sql, i, p);
            }
        }
        ExprKind::Call {
            qualifiers,
            name,
            args,
            ..
        } => {
            for i in qualifiers.iter().chain([name]) {
                check_ident(sql, i, p);
            }
            args.iter().for_each(sub);
        }
        ExprKind::Unary { operand, .. } | ExprKind::IsNull { operand, .. } => sub(operand),
        ExprKind::Binary {
            op_span, left, right, ..
        } => {
            check_span(sql, *op_span, p);
            sub(left);
            sub(right);
            assert!(left.span.end <= op_span.start && op_span.end <= right.span.start);
        }
        ExprKind::In { operand, rhs, .. } => {
            sub(operand);
            match rhs {
                InRhs::Bare(x) => sub(x),
                InRhs::List(l) => l.iter().for_each(sub),
                InRhs::Subquery(s) => check_select(sql, s, p),
            }
        }
        ExprKind::Between {
            operand, low, high, ..
        } => {
            sub(operand);
            sub(low);
            sub(high);
        }
        ExprKind::Cast {
            operand, type_name, ..
        } => {
            sub(operand);
            check_span(sql, type_name.span, p);
        }
        ExprKind::Case {
            operand,
            whens,
            else_result,
        } => {
            operand.iter().for_each(|o| sub(o));
            for (w, t) in whens {
                sub(w);
                sub(t);
            }
            else_result.iter().for_each(|o| sub(o));
        }
        ExprKind::Subquery(s) | ExprKind::Exists(s) => check_select(sql, s, p),
        ExprKind::Row(l) | ExprKind::Array(l) => l.iter().for_each(sub),
    }
}

// ---- precedence ----

#[test]
fn precedence() {
    let cases = [
        ("a OR b AND c", "(a Or (b And c))"),
        ("a AND b OR c", "((a And b) Or c)"),
        ("NOT a = b", "(Not (a Eq b))"),
        ("NOT a AND b", "((Not a) And b)"),
        ("NOT NOT a", "(Not (Not a))"),
        ("a || b = c", "((a Concat b) Eq c)"),
        ("x -> 'a' ->> 'b'", "((x JsonArrow 'a') JsonLongArrow 'b')"),
        ("a + b * c", "(a Add (b Mul c))"),
        ("a * b + c", "((a Mul b) Add c)"),
        ("a - b - c", "((a Sub b) Sub c)"),
        ("a / b % c", "((a Div b) Mod c)"),
        ("-x", "(Minus x)"),
        ("- 5", "-5"),
        ("-0.5", "-0.5"),
        ("+x", "(Plus x)"),
        ("-x * 2", "((Minus x) Mul 2)"),
        ("a * -5", "(a Mul -5)"),
        ("a=-5", "(a Eq -5)"),
        ("1-2", "(1 Sub 2)"),
        ("- -5", "(Minus -5)"),
        ("-(5)", "(Minus 5)"),
        ("-5::int", "(Minus (castDoubleColon 5 int))"),
        ("x::int + 1", "((castDoubleColon x int) Add 1)"),
        ("-x::int", "(Minus (castDoubleColon x int))"),
        ("(a+b)::text", "(castDoubleColon (a Add b) text)"),
        (
            "'1'::integer::text",
            "(castDoubleColon (castDoubleColon '1' integer) text)",
        ),
        ("a || b || c", "((a Concat b) Concat c)"),
        ("a || b + c", "(a Concat (b Add c))"),
        ("a -> 'x' = b", "((a JsonArrow 'x') Eq b)"),
        ("a && b AND c", "((a Overlap b) And c)"),
        ("a @> b", "(a Other b)"),
        ("a ~ b || c", "((a Other b) Concat c)"),
        ("a ^ b * c", "((a Other b) Mul c)"),
        ("a * b ^ c", "(a Mul (b Other c))"),
        ("a ? 'k'", "(a Other 'k')"),
        ("a < b", "(a Lt b)"),
        ("a <= b", "(a LtEq b)"),
        ("a > b", "(a Gt b)"),
        ("a >= b", "(a GtEq b)"),
        ("a <> b", "(a NotEq b)"),
        ("a != b", "(a NotEq b)"),
        ("a = b = c", "((a Eq b) Eq c)"),
        ("a = b IS NULL", "((a Eq b) ISNULL)"),
        ("a IS NULL AND b", "((a ISNULL) And b)"),
        ("NOT a IS NULL", "(Not (a ISNULL))"),
        ("a LIKE b || c", "(a Like (b Concat c))"),
        ("a = b LIKE c", "(a Eq (b Like c))"),
        ("a IN b AND c", "((a IN bare b) And c)"),
        ("a IN b OR c IN d", "((a IN bare b) Or (c IN bare d))"),
        ("a BETWEEN 1 AND 2 AND c", "((a BETWEEN 1 AND 2) And c)"),
        (
            "a BETWEEN b + 1 AND c || d",
            "(a BETWEEN (b Add 1) AND (c Concat d))",
        ),
        ("NOT a IN b", "(Not (a IN bare b))"),
        ("a = 1 OR b = 2 AND NOT c", "((a Eq 1) Or ((b Eq 2) And (Not c)))"),
    ];
    for (sql, expected) in cases {
        assert_eq!(e(sql), expected, "{sql}");
    }
}

// ---- literals ----

#[test]
fn literals() {
    let lit = |sql: &str| match parse_expression(sql).unwrap().kind {
        ExprKind::Literal(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(lit("42"), Literal::Integer(42));
    assert_eq!(lit("3.25"), Literal::Real(3.25));
    assert_eq!(lit(".5"), Literal::Real(0.5));
    assert_eq!(lit("1e5"), Literal::Real(100000.0));
    assert_eq!(lit("1.5E-3"), Literal::Real(0.0015));
    assert_eq!(lit("-5"), Literal::Integer(-5));
    assert_eq!(lit("- 5"), Literal::Integer(-5));
    assert_eq!(lit("-0.5"), Literal::Real(-0.5));
    assert_eq!(lit("9223372036854775807"), Literal::Integer(i64::MAX));
    assert_eq!(lit("-9223372036854775808"), Literal::Integer(i64::MIN));
    assert_eq!(lit("9223372036854775808"), Literal::Real(9223372036854775808.0));
    assert_eq!(lit("-9223372036854775809"), Literal::Real(-9223372036854775809.0));
    assert_eq!(lit("'it''s'"), Literal::String("it's".into()));
    assert_eq!(lit("E'a\\tb'"), Literal::String("a\tb".into()));
    assert_eq!(lit("TRUE"), Literal::Bool(true));
    assert_eq!(lit("false"), Literal::Bool(false));
    assert_eq!(lit("Null"), Literal::Null);
    let neg = parse_expression("x = - 5").unwrap();
    let ExprKind::Binary { right, .. } = neg.kind else {
        panic!()
    };
    assert_eq!(right.span, Span::new(4, 7));
    assert_eq!(e("?"), "$?");
    assert_eq!(e("$1 + $2"), "($$1 Add $$2)");
}

// ---- names and calls ----

#[test]
fn columns_and_calls() {
    assert_eq!(e("a"), "a");
    assert_eq!(e("T.X"), "t.x");
    assert_eq!(e("s.t.c"), "s.t.c");
    assert_eq!(e("request.user_id()"), "request.user_id()");
    assert_eq!(e("s.f(1, 'a')"), "s.f(1, 'a')");
    assert_eq!(e("count(*)"), "count(*)");
    assert_eq!(e("count(DISTINCT x)"), "count(DISTINCT x)");
    assert_eq!(e("count(ALL x)"), "count(x)");
    assert_eq!(e("f()"), "f()");
    assert_eq!(e("left(x, 2)"), "left(x, 2)");
    assert_eq!(e("auth.parameter('x')"), "auth.parameter('x')");
    assert_eq!(e("t.\"from\""), "t.from");
    assert_eq!(e("t.value"), "t.value");

    let sql = "\"Foo\".\"Bar\"";
    let expr = parse_expression(sql).unwrap();
    let ExprKind::Column { qualifiers, name } = &expr.kind else {
        panic!()
    };
    assert_eq!(qualifiers[0].name, "Foo");
    assert!(qualifiers[0].quoted);
    assert_eq!(name.name, "Bar");
    assert_eq!(name.span, Span::new(6, 11));

    let sql = "Request.User_Id()";
    let expr = parse_expression(sql).unwrap();
    let ExprKind::Call { qualifiers, name, .. } = &expr.kind else {
        panic!()
    };
    assert_eq!(qualifiers[0].name, "request");
    assert_eq!(qualifiers[0].raw, "Request");
    assert!(!qualifiers[0].quoted);
    assert_eq!(name.raw, "User_Id");
    assert_eq!(expr.span, Span::new(0, sql.len()));
}

// ---- casts ----

#[test]
fn casts() {
    let ty = |sql: &str| match parse_expression(sql).unwrap().kind {
        ExprKind::Cast {
            type_name, syntax, ..
        } => (type_name.text, syntax),
        other => panic!("{other:?}"),
    };
    let cases = [
        ("CAST(x AS integer)", "integer"),
        ("CAST(x AS TEXT)", "text"),
        ("CAST(x AS DOUBLE   PRECISION)", "double precision"),
        ("CAST(x AS varchar(10))", "varchar(10)"),
        ("CAST(x AS numeric(10, 2))", "numeric(10, 2)"),
        ("CAST(x AS character varying)", "character varying"),
        ("CAST(x AS timestamp with time zone)", "timestamp with time zone"),
        (
            "CAST(x AS timestamp(3) without time zone)",
            "timestamp(3) without time zone",
        ),
        ("CAST(x AS int[])", "int[]"),
        ("CAST(x AS int[3][])", "int[3][]"),
        ("CAST(x AS pg_catalog.int4)", "pg_catalog.int4"),
        ("CAST(x AS\n  real)", "real"),
    ];
    for (sql, expected) in cases {
        assert_eq!(ty(sql), (expected.to_string(), CastSyntax::Function), "{sql}");
    }
    assert_eq!(ty("x::int"), ("int".into(), CastSyntax::DoubleColon));
    assert_eq!(ty("x :: Numeric"), ("numeric".into(), CastSyntax::DoubleColon));
    assert_eq!(
        ty("x::double precision"),
        ("double precision".into(), CastSyntax::DoubleColon)
    );

    let sql = "(a + b)::VarChar(3)";
    let expr = parse_expression(sql).unwrap();
    assert_eq!(expr.span, Span::new(0, sql.len()));
    let ExprKind::Cast {
        operand, type_name, ..
    } = &expr.kind
    else {
        panic!()
    };
    assert_eq!(text(sql, operand.span), "(a + b)");
    assert_eq!(text(sql, type_name.span), "VarChar(3)");
    assert_eq!(type_name.text, "varchar(3)");
}

// ---- IN, IS, LIKE, BETWEEN ----

#[test]
fn in_forms() {
    assert_eq!(e("bucket.x IN ids"), "(bucket.x IN bare ids)");
    assert_eq!(e("id IN request.jwt()"), "(id IN bare request.jwt())");
    assert_eq!(e("x IN token_parameters.ids"), "(x IN bare token_parameters.ids)");
    assert_eq!(e("x IN ids::text"), "(x IN bare (castDoubleColon ids text))");
    assert_eq!(
        e("id IN (request.jwt() -> 'orgs')"),
        "(id IN list[(request.jwt() JsonArrow 'orgs')])"
    );
    assert_eq!(e("a in ('a','b')"), "(a IN list['a', 'b'])");
    assert_eq!(e("a NOT IN ('a')"), "(a NOT IN list['a'])");
    assert_eq!(e("a NOT IN b"), "(a NOT IN bare b)");
    assert_eq!(e("a IN (SELECT b FROM t)"), "(a IN subquery)");
    assert_eq!(e("a IN ((SELECT b FROM t))"), "(a IN list[(subquery)])");

    let sql = "x NOT IN (SELECT id FROM t WHERE y = 1) AND z";
    let expr = parse_expression(sql).unwrap();
    let ExprKind::Binary { left, .. } = &expr.kind else {
        panic!()
    };
    assert_eq!(text(sql, left.span), "x NOT IN (SELECT id FROM t WHERE y = 1)");
    let ExprKind::In {
        rhs: InRhs::Subquery(s),
        negated: true,
        ..
    } = &left.kind
    else {
        panic!()
    };
    assert_eq!(text(sql, s.span), "SELECT id FROM t WHERE y = 1");

    assert!(parse_expression("a IN ()").is_err());
    assert!(parse_expression("a IN -1").is_err());
}

#[test]
fn is_forms() {
    assert_eq!(e("a IS NULL"), "(a ISNULL)");
    assert_eq!(e("a IS NOT NULL"), "(a NOTNULL)");
    assert_eq!(e("a ISNULL"), "(a ISNULL)");
    assert_eq!(e("a NOTNULL"), "(a NOTNULL)");
    assert_eq!(e("a IS TRUE"), "(a Is true)");
    assert_eq!(e("a IS NOT FALSE"), "(a IsNot false)");
    assert_eq!(e("a IS b"), "(a Is b)");
    assert_eq!(e("a IS NOT b"), "(a IsNot b)");
    assert_eq!(e("a IS DISTINCT FROM b"), "(a IsNot b)");
    assert_eq!(e("a IS NOT DISTINCT FROM b"), "(a Is b)");
    assert_eq!(e("a IS NOT b AND c"), "((a IsNot b) And c)");

    let sql = "a IS NOT TRUE";
    let expr = parse_expression(sql).unwrap();
    let ExprKind::Binary { op_span, right, .. } = &expr.kind else {
        panic!()
    };
    assert_eq!(text(sql, *op_span), "IS NOT");
    assert_eq!(text(sql, right.span), "TRUE");
}

#[test]
fn like_between() {
    assert_eq!(e("name LIKE 'a%'"), "(name Like 'a%')");
    assert_eq!(e("name NOT LIKE 'a%'"), "(name NotLike 'a%')");
    assert_eq!(e("name ILIKE 'a%'"), "(name ILike 'a%')");
    assert_eq!(e("name NOT ILIKE 'a%'"), "(name NotILike 'a%')");
    assert_eq!(e("name SIMILAR TO 'a%'"), "(name Other 'a%')");
    assert_eq!(e("name NOT SIMILAR TO 'a%'"), "(name Other 'a%')");
    assert_eq!(e("x BETWEEN 1 AND 10"), "(x BETWEEN 1 AND 10)");
    assert_eq!(e("x NOT BETWEEN -1 AND 1"), "(x NOT BETWEEN -1 AND 1)");

    let sql = "name NOT LIKE 'a%'";
    let expr = parse_expression(sql).unwrap();
    let ExprKind::Binary { op_span, .. } = &expr.kind else {
        panic!()
    };
    assert_eq!(text(sql, *op_span), "NOT LIKE");
}

// ---- other primaries ----

#[test]
fn case_exists_array_row() {
    assert_eq!(
        e("CASE WHEN x > 0 THEN 'pos' WHEN x < 0 THEN 'neg' ELSE 'zero' END"),
        "(CASE WHEN (x Gt 0) THEN 'pos' WHEN (x Lt 0) THEN 'neg' ELSE 'zero')"
    );
    assert_eq!(e("case x when 1 then 'a' end"), "(CASE x WHEN 1 THEN 'a')");
    assert_eq!(e("EXISTS (SELECT 1 FROM t)"), "(exists)");
    assert_eq!(e("NOT EXISTS (SELECT 1)"), "(Not (exists))");
    assert_eq!(e("ARRAY[1, 2]"), "array[1, 2]");
    assert_eq!(e("ARRAY[]"), "array[]");
    assert_eq!(e("ARRAY[[1], [2, 3]]"), "array[array[1], array[2, 3]]");
    assert_eq!(e("(a, b)"), "row(a, b)");
    assert_eq!(e("(a, b) = (1, 2)"), "(row(a, b) Eq row(1, 2))");
    assert_eq!(e("(SELECT 1) + 1"), "((subquery) Add 1)");
    assert_eq!(e("((a))"), "a");
    assert!(parse_expression("CASE END").is_err());
    assert!(parse_expression("CASE WHEN a THEN b").is_err());
    assert!(parse_expression("EXISTS (1)").is_err());

    let sql = "CASE WHEN a THEN 1 END + 1";
    let expr = parse_expression(sql).unwrap();
    let ExprKind::Binary { left, .. } = &expr.kind else {
        panic!()
    };
    assert_eq!(text(sql, left.span), "CASE WHEN a THEN 1 END");

    let sql = "x = (SELECT max(y) FROM t)";
    let expr = parse_expression(sql).unwrap();
    let ExprKind::Binary { right, .. } = &expr.kind else {
        panic!()
    };
    assert_eq!(text(sql, right.span), "(SELECT max(y) FROM t)");
    let ExprKind::Subquery(s) = &right.kind else {
        panic!()
    };
    assert_eq!(text(sql, s.span), "SELECT max(y) FROM t");
}

// ---- SELECT ----

#[test]
fn select_items() {
    let s = sel("SELECT _id AS id, * FROM public.t");
    assert_eq!(s.columns.len(), 2);
    assert_eq!(alias(&s.columns[0]), Some("id"));
    assert!(matches!(s.columns[1], SelectItem::Star { table: None, .. }));
    let TableSource::Table {
        qualifiers,
        name,
        alias: a,
        ..
    } = &s.from[0].source
    else {
        panic!()
    };
    assert_eq!(qualifiers[0].name, "public");
    assert_eq!(name.name, "t");
    assert!(a.is_none());

    let sql = "SELECT t.*, x y, z AS \"Zed\", w AS from FROM t";
    let s = sel(sql);
    let SelectItem::Star { table: Some(t), span } = &s.columns[0] else {
        panic!()
    };
    assert_eq!(t.name, "t");
    assert_eq!(text(sql, *span), "t.*");
    assert_eq!(alias(&s.columns[1]), Some("y"));
    assert_eq!(alias(&s.columns[2]), Some("Zed"));
    assert_eq!(alias(&s.columns[3]), Some("from"));
    let SelectItem::Expr { span, .. } = &s.columns[2] else {
        panic!()
    };
    assert_eq!(text(sql, *span), "z AS \"Zed\"");

    let s = sel("SELECT request.user_id() as user_id");
    assert!(s.from.is_empty());
    assert_eq!(show(item_expr(&s.columns[0])), "request.user_id()");
    assert_eq!(alias(&s.columns[0]), Some("user_id"));

    let s = sel("SELECT WHERE token_parameters.is_admin");
    assert!(s.columns.is_empty());
    assert_eq!(
        show(s.where_clause.as_ref().unwrap()),
        "token_parameters.is_admin"
    );

    let s = sel("SELECT");
    assert!(s.columns.is_empty());
    let s = sel("SELECT FROM t");
    assert!(s.columns.is_empty() && s.from.len() == 1);

    let s = sel("SELECT id, CAST(x AS integer) AS v, x::text AS w FROM t");
    assert_eq!(show(item_expr(&s.columns[1])), "(castFunction x integer)");
    assert_eq!(show(item_expr(&s.columns[2])), "(castDoubleColon x text)");
    assert_eq!(alias(&s.columns[2]), Some("w"));

    let s = sel("SELECT id, name AS title, count * 2 AS double FROM assets AS things");
    assert_eq!(show(item_expr(&s.columns[2])), "(count Mul 2)");
    assert_eq!(alias(&s.columns[2]), Some("double"));
    let TableSource::Table { alias: Some(a), .. } = &s.from[0].source else {
        panic!()
    };
    assert_eq!(a.name, "things");

    let s = sel("SELECT DISTINCT a FROM t");
    assert!(s.distinct.is_some());
    let s = sel("SELECT DISTINCT ON (a) a, b FROM t");
    assert!(s.distinct.is_some());
    assert_eq!(s.columns.len(), 2);
    let s = sel("SELECT ALL a FROM t");
    assert!(s.distinct.is_none());
}

#[test]
fn powersync_forms() {
    let w = where_expr("SELECT id FROM t WHERE bucket.x IN ids");
    assert_eq!(show(&w), "(bucket.x IN bare ids)");

    let s = sel("SELECT value AS p FROM json_each(request.jwt() -> 'ids')");
    let TableSource::Function {
        name, args, alias: a, ..
    } = &s.from[0].source
    else {
        panic!()
    };
    assert_eq!(name.name, "json_each");
    assert_eq!(list(args), "(request.jwt() JsonArrow 'ids')");
    assert!(a.is_none());
    assert_eq!(alias(&s.columns[0]), Some("p"));

    let sql = "SELECT value FROM json_each(request.jwt() -> 'ids') AS ids";
    let s = sel(sql);
    let TableSource::Function {
        alias: Some(a), span, ..
    } = &s.from[0].source
    else {
        panic!()
    };
    assert_eq!(a.name, "ids");
    assert_eq!(text(sql, *span), "json_each(request.jwt() -> 'ids') AS ids");

    let w = where_expr("SELECT id AS user_id FROM users WHERE id IN (request.jwt() -> 'orgs')");
    assert_eq!(show(&w), "(id IN list[(request.jwt() JsonArrow 'orgs')])");

    let w =
        where_expr("SELECT * FROM docs WHERE org_id IN (SELECT org_id FROM users WHERE id = auth.user_id())");
    let ExprKind::In {
        rhs: InRhs::Subquery(sub),
        ..
    } = &w.kind
    else {
        panic!()
    };
    assert_eq!(show(sub.where_clause.as_ref().unwrap()), "(id Eq auth.user_id())");

    let s = sel("SELECT * FROM \"todos_%\"");
    let TableSource::Table { name, .. } = &s.from[0].source else {
        panic!()
    };
    assert_eq!(name.name, "todos_%");
    assert!(name.quoted);

    let w = where_expr("select id from t where a in ('a','b')");
    assert_eq!(show(&w), "(a IN list['a', 'b'])");

    let w = where_expr("SELECT * FROM docs WHERE org_id IN my_orgs");
    assert_eq!(show(&w), "(org_id IN bare my_orgs)");

    let w = where_expr("SELECT * FROM t WHERE tags && (SELECT tags FROM u WHERE id = auth.user_id())");
    assert_eq!(show(&w), "(tags Overlap (subquery))");

    let s = sel("SELECT id FROM tag.schema.t");
    let TableSource::Table { qualifiers, .. } = &s.from[0].source else {
        panic!()
    };
    assert_eq!(qualifiers.len(), 2);
}

#[test]
fn clauses() {
    let sql = "SELECT id FROM t WHERE a GROUP BY id, b HAVING count(*) > 1 \
               ORDER  BY id DESC NULLS LAST, b USING < LIMIT 10 OFFSET 5 ROWS FOR UPDATE OF t NOWAIT";
    let s = sel(sql);
    assert_eq!(text(sql, s.group_by.unwrap()), "GROUP BY");
    assert_eq!(text(sql, s.having.unwrap()), "HAVING");
    assert_eq!(text(sql, s.order_by.unwrap()), "ORDER  BY");
    assert_eq!(text(sql, s.limit.unwrap()), "LIMIT");
    assert_eq!(text(sql, s.offset.unwrap()), "OFFSET");
    assert_eq!(text(sql, s.locking.unwrap()), "FOR UPDATE");
    assert_eq!(s.span, Span::new(0, sql.len()));

    let sql = "SELECT id FROM t OFFSET 1 LIMIT ALL FOR NO KEY UPDATE FOR SHARE SKIP LOCKED";
    let s = sel(sql);
    assert_eq!(text(sql, s.limit.unwrap()), "LIMIT");
    assert_eq!(text(sql, s.offset.unwrap()), "OFFSET");
    assert_eq!(text(sql, s.locking.unwrap()), "FOR NO KEY UPDATE");

    let sql = "SELECT id FROM t FETCH FIRST 3 ROWS ONLY";
    assert_eq!(text(sql, sel(sql).limit.unwrap()), "FETCH");
    let sql = "SELECT id FROM t ORDER BY id FETCH NEXT ROW WITH TIES";
    assert!(sel(sql).order_by.is_some());
    let sql = "select id from t for key share";
    assert_eq!(text(sql, sel(sql).locking.unwrap()), "for key share");

    // Clauses out of order are syntax errors.
    assert_eq!(
        err("SELECT id FROM t LIMIT 1 WHERE a").message,
        "Syntax error at or near \"WHERE\""
    );
    assert_eq!(
        err("SELECT id FROM t ORDER BY a GROUP BY a").span,
        Span::new(28, 33)
    );
    assert_eq!(err("SELECT 1 UNION SELECT 2").message, "UNION is not supported");
}

#[test]
fn from_and_joins() {
    let sql = "SELECT id FROM a JOIN b ON a.x = b.y";
    let s = sel(sql);
    let join = &s.from[0].joins[0];
    assert_eq!(join.kind, JoinKind::Inner);
    assert_eq!(text(sql, join.span), "JOIN b ON a.x = b.y");
    assert_eq!(show(join.on.as_ref().unwrap()), "(a.x Eq b.y)");

    let s = sel("SELECT id FROM a, b");
    assert_eq!(s.from.len(), 2);
    assert!(s.from.iter().all(|f| f.joins.is_empty()));

    let sql = "SELECT * FROM a AS x INNER JOIN b y ON x.i = y.i LEFT OUTER JOIN c USING (i, j) \
               RIGHT JOIN d ON true FULL JOIN e ON true CROSS JOIN f NATURAL LEFT JOIN g, h";
    let s = sel(sql);
    let kinds: Vec<_> = s.from[0].joins.iter().map(|j| j.kind).collect();
    assert_eq!(
        kinds,
        [
            JoinKind::Inner,
            JoinKind::Left,
            JoinKind::Right,
            JoinKind::Full,
            JoinKind::Cross,
            JoinKind::Left
        ]
    );
    let joins = &s.from[0].joins;
    assert_eq!(text(sql, joins[1].span), "LEFT OUTER JOIN c USING (i, j)");
    assert!(joins[1].on.is_none());
    assert_eq!(text(sql, joins[4].span), "CROSS JOIN f");
    assert_eq!(text(sql, joins[5].span), "NATURAL LEFT JOIN g");
    assert_eq!(text(sql, joins[0].source.span()), "b y");
    assert_eq!(s.from.len(), 2);

    let sql = "SELECT * FROM (SELECT id FROM t) AS sub WHERE sub.id = 1";
    let s = sel(sql);
    let TableSource::Subquery {
        select,
        alias: a,
        span,
    } = &s.from[0].source
    else {
        panic!()
    };
    assert_eq!(text(sql, *span), "(SELECT id FROM t) AS sub");
    assert_eq!(text(sql, select.span), "SELECT id FROM t");
    assert_eq!(a.as_ref().unwrap().name, "sub");

    let s = sel(
        "SELECT users.org_id FROM users JOIN orgs ON users.org_id = orgs.id WHERE users.id = request.user_id()",
    );
    assert_eq!(s.from[0].joins.len(), 1);

    assert_eq!(err("SELECT * FROM a JOIN b").message, "Unexpected end of input");
    assert!(parse_statements("SELECT * FROM s.json_each(x)").is_err());
}

#[test]
fn statements() {
    let stmts = parse("SELECT 1; SELECT 2");
    assert_eq!(stmts.len(), 2);
    let Statement::Select(second) = &stmts[1] else {
        panic!()
    };
    assert_eq!(second.span, Span::new(10, 18));

    let stmts = parse("  ;; SELECT 1 ; ; -- trailing\n");
    assert_eq!(stmts.len(), 1);
    let Statement::Select(s) = &stmts[0] else { panic!() };
    assert_eq!(s.span, Span::new(5, 13));

    assert!(parse("").is_empty());
    assert!(parse(" ; /* c */ ").is_empty());

    let sql = "INSERT INTO t VALUES (1, ';'); delete from t where (a;b); SELECT 1";
    let stmts = parse(sql);
    assert_eq!(stmts.len(), 3);
    let Statement::Other { keyword, span } = &stmts[0] else {
        panic!()
    };
    assert_eq!(keyword, "insert");
    assert_eq!(text(sql, *span), "INSERT INTO t VALUES (1, ';')");
    let Statement::Other { keyword, span } = &stmts[1] else {
        panic!()
    };
    assert_eq!(keyword, "delete");
    assert_eq!(text(sql, *span), "delete from t where (a;b)");

    assert_eq!(
        err("WITH x AS (SELECT 1) SELECT * FROM x").message,
        "WITH is not supported"
    );
    assert_eq!(err("SELECT 1 2").span, Span::new(9, 10));
    assert_eq!(err("1").span, Span::new(0, 1));
}

// ---- spans ----

#[test]
fn spans() {
    let sql = "SELECT 'ü€' AS \"ñ\", a + b AS s, t.x, f(y) FROM tbl WHERE t.x = 'é'";
    let s = sel(sql);
    assert_eq!(s.span, Span::new(0, sql.len()));
    let exprs: Vec<&Expr> = s.columns.iter().map(item_expr).collect();
    assert_eq!(text(sql, exprs[0].span), "'ü€'");
    assert_eq!(exprs[0].span, Span::new(7, 14));
    let start = sql.find("a + b").unwrap();
    assert_eq!(exprs[1].span, Span::new(start, start + 5));
    let ExprKind::Binary {
        op_span, left, right, ..
    } = &exprs[1].kind
    else {
        panic!()
    };
    assert_eq!(text(sql, *op_span), "+");
    assert_eq!(text(sql, left.span), "a");
    assert_eq!(text(sql, right.span), "b");
    assert_eq!(text(sql, exprs[2].span), "t.x");
    assert_eq!(text(sql, exprs[3].span), "f(y)");
    let SelectItem::Expr {
        alias: Some(a), span, ..
    } = &s.columns[0]
    else {
        panic!()
    };
    assert_eq!(a.name, "ñ");
    assert_eq!(text(sql, a.span), "\"ñ\"");
    assert_eq!(text(sql, *span), "'ü€' AS \"ñ\"");
    assert_eq!(text(sql, s.from[0].source.span()), "tbl");
    assert_eq!(text(sql, s.where_clause.unwrap().span), "t.x = 'é'");

    let sql = "SELECT id FROM t WHERE ((a) OR b) AND c IS NOT NULL";
    let w = where_expr(sql);
    let ExprKind::Binary { left, right, .. } = &w.kind else {
        panic!()
    };
    assert_eq!(text(sql, left.span), "((a) OR b)");
    assert_eq!(text(sql, right.span), "c IS NOT NULL");
    let ExprKind::Binary { left: inner, .. } = &left.kind else {
        panic!()
    };
    assert_eq!(text(sql, inner.span), "(a)");

    let sql = "SELECT x FROM t WHERE v BETWEEN 1 AND 2 OR y NOT IN (1, 2)";
    let w = where_expr(sql);
    let ExprKind::Binary { left, right, .. } = &w.kind else {
        panic!()
    };
    assert_eq!(text(sql, left.span), "v BETWEEN 1 AND 2");
    assert_eq!(text(sql, right.span), "y NOT IN (1, 2)");
}

// ---- errors ----

#[test]
fn syntax_errors() {
    let cases: &[(&str, &str, (usize, usize))] = &[
        ("SELECT id FROM", "Unexpected end of input", (14, 14)),
        ("SELECT id FROM t WHERE", "Unexpected end of input", (22, 22)),
        ("SELECT FROM FROM t", "Syntax error at or near \"FROM\"", (12, 16)),
        ("SELECT a, FROM t", "Syntax error at or near \"FROM\"", (10, 14)),
        ("SELECT (a FROM t", "Syntax error at or near \"FROM\"", (10, 14)),
        ("SELECT a) FROM t", "Syntax error at or near \")\"", (8, 9)),
        (
            "SELECT 'ü' + + FROM t",
            "Syntax error at or near \"FROM\"",
            (16, 20),
        ),
        ("SELECT 'ü', {", "Syntax error at or near \"{\"", (13, 14)),
        ("SELECT 'abc", "Unterminated string literal", (7, 11)),
        ("SELECT x IN", "Unexpected end of input", (11, 11)),
        ("SELECT a NOT b", "Syntax error at or near \"NOT\"", (9, 12)),
        (
            "SELECT CAST(x integer)",
            "Syntax error at or near \"integer\"",
            (14, 21),
        ),
        ("SELECT x::", "Unexpected end of input", (10, 10)),
        ("SELECT x::from", "Syntax error at or near \"from\"", (10, 14)),
        ("SELECT a FROM t JOIN u", "Unexpected end of input", (22, 22)),
        (
            "SELECT a BETWEEN 1 OR 2",
            "Syntax error at or near \"OR\"",
            (19, 21),
        ),
        ("SELECT s.t.* FROM t", "Syntax error at or near \"*\"", (11, 12)),
        (
            "SELECT a FROM t WHERE x = = y",
            "Syntax error at or near \"=\"",
            (26, 27),
        ),
    ];
    for (sql, message, (start, end)) in cases {
        let err = err(sql);
        assert_eq!(err.message, *message, "{sql}");
        assert_eq!(err.span, Span::new(*start, *end), "{sql}");
        assert_eq!(err.to_string(), *message);
    }
    assert_eq!(parse_expression("a b").unwrap_err().span, Span::new(2, 3));
    assert_eq!(
        parse_expression("").unwrap_err().message,
        "Unexpected end of input"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let err = parse_expression(&"(".repeat(10_000)).unwrap_err();
    assert_eq!(err.message, "Expression is nested too deeply");
    for sql in [
        format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("SELECT {}1", "NOT ".repeat(10_000)),
        format!("SELECT {}1", "- ".repeat(10_000)),
        format!("SELECT {}1", "+".repeat(10_000)),
        format!("SELECT {}", "ARRAY[".repeat(10_000)),
        format!("SELECT {}", "x IN (".repeat(10_000)),
        format!("SELECT {}", "(SELECT ".repeat(10_000)),
        format!("SELECT {}", "CASE WHEN ".repeat(10_000)),
        format!("SELECT 1{}", "::int".repeat(10_000)),
        format!("SELECT 1{}", " + 1".repeat(100_000)),
        format!("SELECT 1{}", " OR a".repeat(100_000)),
        format!("SELECT a{}", " IN b".repeat(100_000)),
    ] {
        let err = parse_statements(&sql).unwrap_err();
        assert!(
            err.message == "Expression is nested too deeply" || err.message == "Unexpected end of input",
            "{}: {}",
            &sql[..20],
            err.message
        );
    }
    // Reasonable nesting is fine.
    let sql = format!("SELECT {}1{}", "(".repeat(40), ")".repeat(40));
    parse(&sql);
    let sql = format!("SELECT 1{}", " + 1".repeat(400));
    parse(&sql);
}

// ---- the public test vectors ----

/// Collects every string in a YAML document.
fn yaml_strings(yaml: &yaml_rust2::Yaml, out: &mut Vec<String>) {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::String(s) => out.push(s.clone()),
        Yaml::Array(items) => items.iter().for_each(|i| yaml_strings(i, out)),
        Yaml::Hash(map) => map.iter().for_each(|(_, v)| yaml_strings(v, out)),
        _ => {}
    }
}

#[test]
fn every_query_in_the_test_vectors_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/sync-rules-cases.jsonl");
    let cases = std::fs::read_to_string(path).unwrap();
    let mut checked = 0;
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let rules = case["rules"].as_str().unwrap();
        let Ok(docs) = yaml_rust2::YamlLoader::load_from_str(rules) else {
            continue;
        };
        let mut strings = Vec::new();
        docs.iter().for_each(|d| yaml_strings(d, &mut strings));
        for sql in strings {
            let first = sql.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
            if !matches!(first.as_str(), "select" | "insert" | "update" | "delete") {
                continue;
            }
            let stmts = parse(&sql);
            assert!(!stmts.is_empty(), "{sql}");
            checked += 1;
        }
    }
    assert!(checked >= 150, "only {checked} queries found");
}

#[test]
fn more_dialect_queries() {
    for sql in [
        "SELECT id, upper(x) AS v FROM t",
        "SELECT id, substring(x, 4, -2) AS v FROM t",
        "SELECT id, st_x(x) || ',' || st_y(x) AS v FROM t",
        "SELECT id, iif(x > 10, 'big', 'small') AS v FROM t",
        "SELECT id, x IN ('a', 'b') AS v FROM t",
        "SELECT id, x IS NULL AS v FROM t",
        "SELECT id, NOT x AS v FROM t",
        "SELECT id, typeof(json_extract(x, '$.a')) AS v FROM t",
        "SELECT owner_id || '-' || count AS id, name FROM assets",
        "SELECT id FROM flags WHERE on_off = TRUE",
        "SELECT id FROM msgs WHERE sender = bucket.uid OR recipient = bucket.uid",
        "SELECT id, level FROM docs WHERE owner_id = bucket.uid AND level >= 2",
        "SELECT id, v FROM other.items",
        "SELECT upper(name) AS name, * FROM assets",
        "SELECT id, _table_suffix AS suffix FROM \"todos_%\"",
        "SELECT a.id FROM a, b",
        "DELETE FROM assets",
        "SELECT id FROM assets ORDER BY id",
        "SELECT id FROM assets GROUP BY id",
        "SELECT id FROM assets WHERE name LIKE 'a%'",
        "SELECT request.parameters() ->> 'x' AS x",
        "SELECT value AS x FROM json_tree(request.jwt() -> 'a')",
        "SELECT id FROM docs WHERE owner_id = token_parameters.user_id",
        "SELECT id, CASE WHEN x > 0 THEN 'pos' WHEN x < 0 THEN 'neg' ELSE 'zero' END AS v FROM t",
        "SELECT id, x::text AS v FROM t",
        "SELECT id FROM docs WHERE upper(owner_id) || ':x' = bucket.k",
        "SELECT upper(request.user_id()) || ':' || 'x' AS k",
        "SELECT id AS project_id FROM projects WHERE id IN token_parameters.project_ids",
        "SELECT request.jwt() ->> '$.app.team' AS team",
        "SELECT org_id FROM users WHERE id = token_parameters.user_id AND is_admin = true",
        "SELECT id, title FROM docs WHERE project_id IN (subscription.parameters() -> 'projects')",
        "SELECT * FROM todos WHERE list_id = subscription.parameter('list')",
        "SELECT * FROM issues WHERE owner_id = auth.user_id() OR auth.parameter('is_admin')",
        "SELECT * FROM t WHERE length(content) > 5 AND NOT archived",
        "SELECT * FROM \"%\".assets",
        "SELECT id FROM t WHERE x IN request.parameters() -> 'ids'",
        "SELECT id FROM t WHERE created_at > '2024-01-01'::timestamptz",
        "SELECT id FROM t WHERE data @> '{\"a\": 1}' AND data ? 'b' AND data #- '{a}' IS NOT NULL",
        "SELECT id /* comment */ FROM t -- trailing",
        "SELECT id,\n  name\nFROM\n  t\nWHERE\n  a = 1;\n",
    ] {
        parse(sql);
    }
}

// ---- fuzzing ----

const SEEDS: &[&str] = &[
    "SELECT id, upper(x) AS v FROM t WHERE bucket.x IN ids",
    "SELECT value AS p FROM json_each(request.jwt() -> 'ids') AS e",
    "SELECT * FROM docs WHERE org_id IN (SELECT org_id FROM users WHERE id = auth.user_id())",
    "SELECT id, CAST(x AS double precision) AS v, x::numeric(10,2) AS w FROM \"todos_%\" t",
    "SELECT CASE WHEN a THEN 'ü' ELSE E'\\n' END AS c FROM a LEFT JOIN b USING (id) ORDER BY 1 LIMIT 2",
    "SELECT -5, - x, NOT a IS NOT NULL, b BETWEEN 1 AND 2, c NOT LIKE 'x%', ARRAY[1,2] FROM t; INSERT x",
    "select 'é€' || \"Ñ\" as \"名前\" from s.t where a in ('a','b') and exists (select 1) -- c\n",
];

fn check_result(sql: &str) {
    match parse_statements(sql) {
        Ok(stmts) => check_statements(sql, &stmts),
        Err(err) => check_span(sql, err.span, Span::new(0, sql.len())),
    }
    match parse_expression(sql) {
        Ok(expr) => check_expr(sql, &expr, Span::new(0, sql.len())),
        Err(err) => check_span(sql, err.span, Span::new(0, sql.len())),
    }
}

/// Applies `(position, kind, payload)` edits to `seed` at char boundaries.
fn mutate(seed: &str, edits: &[(usize, u8, String)]) -> String {
    let mut s = seed.to_string();
    for (pos, kind, payload) in edits {
        let at = s.floor_char_boundary(pos % (s.len() + 1));
        match kind % 4 {
            0 => s.insert_str(at, payload),
            1 => {
                let end = s.ceil_char_boundary((at + payload.len()).min(s.len()));
                s.replace_range(at..end, "");
            }
            2 => {
                let end = s.ceil_char_boundary((at + payload.len()).min(s.len()));
                let copy = s[at..end].to_string();
                s.insert_str(end, &copy);
            }
            _ => {
                let end = s.ceil_char_boundary((at + 1).min(s.len()));
                s.replace_range(at..end, payload);
            }
        }
    }
    s
}

proptest! {
    #[test]
    fn fuzz_random_text(sql in ".{0,200}") {
        check_result(&sql);
    }

    #[test]
    fn fuzz_sql_alphabet(sql in r#"([ a-zA-Z0-9_'".,;:()\[\]*+\-/<>=!|&@#%^~?$ü€\n]|SELECT |FROM |WHERE | IN | AND | NOT |CASE |END |::|->>|--|/\*|\*/){0,60}"#) {
        check_result(&sql);
    }

    #[test]
    fn fuzz_mutated_queries(
        seed in prop::sample::select(SEEDS),
        edits in prop::collection::vec(
            (any::<usize>(), any::<u8>(), r#"([ a-z'"(),.;:*\-|>=ü]|SELECT|IN|NOT|AND|::|->>|\(SELECT ){0,4}"#),
            1..5,
        ),
    ) {
        check_result(&mutate(seed, &edits));
    }
}

/// The deepest inputs the limits let through must fit in a 1 MiB stack even in debug builds (test
/// threads and tokio workers have 2 MiB).
#[test]
fn deepest_accepted_inputs_fit_in_a_small_stack() {
    let worker = std::thread::Builder::new().stack_size(1024 * 1024).spawn(|| {
        let nest =
            |open: &str, close: &str, n: usize| format!("SELECT {}1{}", open.repeat(n), close.repeat(n));
        let mut accepted = 0;
        for n in 1..80 {
            for sql in [
                nest("(", ")", n),
                nest("(SELECT ", ")", n),
                nest("x IN (", ")", n),
                nest("a = (", ")", n),
                nest("NOT ", "", n),
                nest("- ", "", n),
                nest("CASE WHEN ", " THEN 1 END", n),
                nest("ARRAY[", "]", n),
                nest("f(", ")", n),
                format!("SELECT * FROM {}t{}", "(SELECT * FROM ".repeat(n), ")".repeat(n)),
            ] {
                if parse_statements(&sql).is_ok() {
                    accepted += 1;
                }
            }
        }
        accepted
    });
    let accepted = worker.unwrap().join().unwrap();
    assert!(accepted > 300, "{accepted}");
}
