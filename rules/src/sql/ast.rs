//! Syntax tree of the sync-rules SQL dialect.
//!
//! Every node carries a [`Span`] of byte offsets into the SQL text it was parsed from, so a
//! diagnostic can point at the user's token (and, through the YAML layer, at a line and column
//! of the rules file). Unquoted identifiers are folded to lower case, as Postgres does; quoted
//! ones keep their case. Names whose spelling matters for messages (functions, cast types)
//! keep the user's text in `Ident::raw`.

/// Byte range `start..end` in the SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    /// Lower-cased unless quoted.
    pub name: String,
    /// The text as written (without quotes), for messages.
    pub raw: String,
    pub quoted: bool,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Select(Box<Select>),
    /// Any statement that is not a SELECT (INSERT, UPDATE, DELETE, CREATE, ...). Only the leading keyword is
    /// recognised; the rest of the statement is skipped up to the next top-level `;`.
    Other {
        keyword: String,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    pub span: Span,
    /// `DISTINCT` keyword span, if present.
    pub distinct: Option<Span>,
    pub columns: Vec<SelectItem>,
    /// Comma-separated FROM list (empty when there is no FROM).
    pub from: Vec<FromItem>,
    pub where_clause: Option<Expr>,
    /// Spans of the clauses that the dialect rejects; each points at the clause's first keyword.
    pub group_by: Option<Span>,
    pub having: Option<Span>,
    pub order_by: Option<Span>,
    pub limit: Option<Span>,
    pub offset: Option<Span>,
    /// `FOR UPDATE` / `FOR SHARE` ...
    pub locking: Option<Span>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `*` or `t.*`.
    Star { table: Option<Ident>, span: Span },
    Expr {
        expr: Expr,
        alias: Option<Ident>,
        span: Span,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct FromItem {
    pub source: TableSource,
    pub joins: Vec<Join>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TableSource {
    /// `[qualifier.]*name [[AS] alias]`. `qualifiers` holds schema (and a connection tag before it).
    Table {
        qualifiers: Vec<Ident>,
        name: Ident,
        alias: Option<Ident>,
        span: Span,
    },
    /// A table-valued function: `json_each(expr) [[AS] alias]`.
    Function {
        name: Ident,
        args: Vec<Expr>,
        alias: Option<Ident>,
        span: Span,
    },
    /// `(SELECT ...) [[AS] alias]`.
    Subquery {
        select: Box<Select>,
        alias: Option<Ident>,
        span: Span,
    },
}

impl TableSource {
    pub fn span(&self) -> Span {
        match self {
            TableSource::Table { span, .. }
            | TableSource::Function { span, .. }
            | TableSource::Subquery { span, .. } => *span,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    Cross,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    pub kind: JoinKind,
    pub source: TableSource,
    /// `ON expr`; `USING (...)` is kept as `None` with the span covering it.
    pub on: Option<Expr>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    /// An integer literal that fits in i64 (a leading `-` on a numeric literal is part of the literal).
    Integer(i64),
    /// A literal with a fraction or exponent, or an integer too large for i64.
    Real(f64),
    String(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    /// `-expr` where expr is not a numeric literal.
    Minus,
    Plus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Is,
    IsNot,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Concat,
    /// `->`
    JsonArrow,
    /// `->>`
    JsonLongArrow,
    /// `&&`
    Overlap,
    Like,
    NotLike,
    ILike,
    NotILike,
    /// Any other operator token (e.g. `@>`, `~`, `^`), kept so it can be reported as unsupported.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InRhs {
    /// `x IN y` without parentheses (PowerSync dialect: y is a JSON array, or a CTE name in edition 3).
    Bare(Box<Expr>),
    /// `x IN (a, b, ...)`: one element means "x is in the JSON array a"; more is a literal list.
    List(Vec<Expr>),
    /// `x IN (SELECT ...)`.
    Subquery(Box<Select>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastSyntax {
    /// `CAST(x AS t)`
    Function,
    /// `x::t`
    DoubleColon,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TypeName {
    /// As written, lower-cased, with internal whitespace collapsed to one space (`double precision`,
    /// `varchar(10)` keeps its modifier text).
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Literal(Literal),
    /// `name`, `t.name`, `bucket.p`, `token_parameters.x`, `s.t.name`.
    Column {
        qualifiers: Vec<Ident>,
        name: Ident,
    },
    /// `f(args)`, `request.user_id()`, `count(*)` (`star` set, args empty).
    Call {
        qualifiers: Vec<Ident>,
        name: Ident,
        args: Vec<Expr>,
        star: bool,
        distinct: bool,
    },
    Unary {
        op: UnaryOp,
        operand: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        op_span: Span,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    IsNull {
        operand: Box<Expr>,
        negated: bool,
    },
    In {
        operand: Box<Expr>,
        rhs: InRhs,
        negated: bool,
    },
    Between {
        operand: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    Cast {
        operand: Box<Expr>,
        type_name: TypeName,
        syntax: CastSyntax,
    },
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        else_result: Option<Box<Expr>>,
    },
    /// `(SELECT ...)` used as a value.
    Subquery(Box<Select>),
    Exists(Box<Select>),
    /// `(a, b)` row constructor / list outside IN.
    Row(Vec<Expr>),
    /// `$1` or `?` placeholders.
    Placeholder(String),
    /// `ARRAY[...]` constructor.
    Array(Vec<Expr>),
}
