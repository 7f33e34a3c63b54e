//! Recursive-descent parser for the sync-rules SQL dialect (SYNC_RULES.md §5.5).
//!
//! Expressions use precedence climbing with PostgreSQL's operator precedence. The parser accepts
//! more than the rules compiler supports (joins, ORDER BY, CASE, LIKE, ...) so the compiler can
//! reject those with a specific message and a span instead of a bare syntax error.

use super::ParseError;
use super::ast::{
    BinaryOp, CastSyntax, Expr, ExprKind, FromItem, Ident, InRhs, Join, JoinKind, Literal, Select,
    SelectItem, Span, Statement, TableSource, TypeName, UnaryOp,
};
use super::lexer::{Token, TokenKind, tokenize};

/// Maximum recursion depth (parentheses, subqueries, prefix operators, right operands). Keeps the
/// parser's stack use bounded on hostile input such as 10,000 `(`: a level costs up to ~10 KB of
/// stack in debug builds (much less optimised), and real rules nest a handful of levels.
const MAX_NESTING: usize = 64;

/// Maximum depth of the produced expression tree, counting left-associative chains such as
/// `a OR b OR ...` too: code that walks or drops the tree recursively must not overflow the stack.
const MAX_TREE_DEPTH: usize = 500;

/// Binding powers, lowest first (PostgreSQL's table, "Operator Precedence").
mod prec {
    pub const OR: u8 = 1;
    pub const AND: u8 = 2;
    pub const NOT: u8 = 3;
    pub const IS: u8 = 4;
    pub const CMP: u8 = 5;
    /// `[NOT] IN`, `[NOT] LIKE`, `ILIKE`, `SIMILAR TO`, `[NOT] BETWEEN`.
    pub const LIKE: u8 = 6;
    /// Any other operator: `||`, `->`, `->>`, `&&`, `@>`, ...
    pub const OTHER: u8 = 7;
    pub const ADD: u8 = 8;
    pub const MUL: u8 = 9;
    pub const EXP: u8 = 10;
    pub const UNARY: u8 = 11;
    pub const CAST: u8 = 12;
}

/// Words that cannot be a bare alias or an unquoted column name, because they start or continue a
/// clause. Kept to what the grammar needs (plus `all`/`array`/`case`/`cast`), so unusual column
/// names such as `value`, `type` or `level` stay usable.
#[rustfmt::skip]
const RESERVED: &[&str] = &[
    "all", "and", "array", "as", "between", "case", "cast", "cross", "distinct", "else", "end",
    "except", "false", "fetch", "for", "from", "full", "group", "having", "ilike", "in", "inner",
    "intersect", "into", "is", "isnull", "join", "left", "like", "limit", "natural", "not",
    "notnull", "null", "offset", "on", "or", "order", "outer", "right", "select", "similar", "then",
    "true", "union", "using", "when", "where", "window", "with",
];

fn is_reserved(word: &str) -> bool {
    RESERVED.contains(&word)
}

/// Parses one or more `;`-separated statements. A trailing `;`, empty statements, whitespace and
/// comments are fine. Nesting deeper than 64 levels, or an expression tree deeper than 500 levels
/// (e.g. a chain of 500 `OR`s), is an error, so walking the tree recursively is safe.
pub fn parse_statements(sql: &str) -> Result<Vec<Statement>, ParseError> {
    let mut parser = Parser::new(sql)?;
    let mut statements = Vec::new();
    loop {
        while parser.eat(&TokenKind::Semicolon) {}
        if parser.at_eof() {
            return Ok(statements);
        }
        statements.push(parser.parse_statement()?);
        if !parser.at_eof() && !parser.check(&TokenKind::Semicolon) {
            return Err(parser.unexpected());
        }
    }
}

/// Parses a standalone expression; the whole input must be consumed.
pub fn parse_expression(sql: &str) -> Result<Expr, ParseError> {
    let mut parser = Parser::new(sql)?;
    let expr = parser.parse_expr()?;
    if !parser.at_eof() {
        return Err(parser.unexpected());
    }
    Ok(expr)
}

/// An operator found after a complete operand.
#[derive(Clone, Copy)]
enum Infix {
    /// A plain binary operator made of `tokens` tokens (`NOT LIKE` is two, `NOT SIMILAR TO` three).
    Binary {
        op: BinaryOp,
        prec: u8,
        tokens: usize,
    },
    Is,
    /// `ISNULL` / `NOTNULL`.
    PostfixNull {
        negated: bool,
    },
    In {
        negated: bool,
    },
    Between {
        negated: bool,
    },
    Cast,
}

impl Infix {
    fn prec(self) -> u8 {
        match self {
            Infix::Binary { prec, .. } => prec,
            Infix::Is | Infix::PostfixNull { .. } => prec::IS,
            Infix::In { .. } | Infix::Between { .. } => prec::LIKE,
            Infix::Cast => prec::CAST,
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    tokens: Vec<Token>,
    /// Returned when peeking past the end (the token list itself ends with one Eof).
    eof: Token,
    pos: usize,
    /// End of the last consumed token: where a node that ends "here" ends.
    prev_end: usize,
    nesting: usize,
    tree_depth: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Result<Self, ParseError> {
        let tokens = tokenize(src)?;
        let eof = Token {
            kind: TokenKind::Eof,
            span: Span::new(src.len(), src.len()),
        };
        Ok(Parser {
            src,
            tokens,
            eof,
            pos: 0,
            prev_end: 0,
            nesting: 0,
            tree_depth: 0,
        })
    }

    // ---- token helpers ----

    fn peek(&self) -> &Token {
        self.peek_at(0)
    }

    fn peek_at(&self, n: usize) -> &Token {
        self.tokens.get(self.pos + n).unwrap_or(&self.eof)
    }

    fn at_eof(&self) -> bool {
        self.check(&TokenKind::Eof)
    }

    fn bump(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != TokenKind::Eof {
            self.pos += 1;
            self.prev_end = token.span.end;
        }
        token
    }

    fn check(&self, kind: &TokenKind) -> bool {
        &self.peek().kind == kind
    }

    fn check_at(&self, n: usize, kind: &TokenKind) -> bool {
        &self.peek_at(n).kind == kind
    }

    fn eat(&mut self, kind: &TokenKind) -> bool {
        let found = self.check(kind);
        if found {
            self.bump();
        }
        found
    }

    fn expect(&mut self, kind: &TokenKind) -> Result<Span, ParseError> {
        if self.check(kind) {
            Ok(self.bump().span)
        } else {
            Err(self.unexpected())
        }
    }

    fn is_op_at(&self, n: usize, op: &str) -> bool {
        matches!(&self.peek_at(n).kind, TokenKind::Op(o) if o == op)
    }

    /// Whether token `n` ahead is the unquoted keyword `kw` (lower case).
    fn is_kw_at(&self, n: usize, kw: &str) -> bool {
        matches!(&self.peek_at(n).kind, TokenKind::Word { value, quoted: false, .. } if value == kw)
    }

    fn is_kw(&self, kw: &str) -> bool {
        self.is_kw_at(0, kw)
    }

    fn is_any_kw(&self, kws: &[&str]) -> bool {
        kws.iter().any(|kw| self.is_kw(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> Option<Span> {
        self.is_kw(kw).then(|| self.bump().span)
    }

    fn expect_kw(&mut self, kw: &str) -> Result<Span, ParseError> {
        self.eat_kw(kw).ok_or_else(|| self.unexpected())
    }

    fn unexpected(&self) -> ParseError {
        let token = self.peek();
        if token.kind == TokenKind::Eof {
            return ParseError {
                message: "Unexpected end of input".to_string(),
                span: Span::new(self.src.len(), self.src.len()),
            };
        }
        let text = self.src.get(token.span.start..token.span.end).unwrap_or("");
        ParseError {
            message: format!("Syntax error at or near \"{text}\""),
            span: token.span,
        }
    }

    fn error_at(&self, message: impl Into<String>, span: Span) -> ParseError {
        ParseError {
            message: message.into(),
            span,
        }
    }

    fn span_from(&self, start: usize) -> Span {
        Span::new(start, self.prev_end.max(start))
    }

    /// Turns the current word token into an identifier. `allow_reserved` is for positions where
    /// Postgres accepts any label (after `AS`, after a `.`).
    fn ident(&mut self, allow_reserved: bool) -> Result<Ident, ParseError> {
        match &self.peek().kind {
            TokenKind::Word { value, raw, quoted } if *quoted || allow_reserved || !is_reserved(value) => {
                let ident = Ident {
                    name: value.clone(),
                    raw: raw.clone(),
                    quoted: *quoted,
                    span: self.peek().span,
                };
                self.bump();
                Ok(ident)
            }
            _ => Err(self.unexpected()),
        }
    }

    // ---- depth guards ----

    fn enter(&mut self) -> Result<(usize, usize), ParseError> {
        let saved = (self.nesting, self.tree_depth);
        self.nesting += 1;
        self.tree_depth += 1;
        self.check_depth()?;
        Ok(saved)
    }

    fn leave(&mut self, saved: (usize, usize)) {
        (self.nesting, self.tree_depth) = saved;
    }

    fn check_depth(&self) -> Result<(), ParseError> {
        if self.nesting > MAX_NESTING || self.tree_depth > MAX_TREE_DEPTH {
            return Err(self.error_at("Expression is nested too deeply", self.peek().span));
        }
        Ok(())
    }

    // ---- statements ----

    fn parse_statement(&mut self) -> Result<Statement, ParseError> {
        if self.is_kw("select") {
            return Ok(Statement::Select(Box::new(self.parse_select()?)));
        }
        if self.is_kw("with") {
            return Err(self.error_at("WITH is not supported", self.peek().span));
        }
        let TokenKind::Word {
            value, quoted: false, ..
        } = &self.peek().kind
        else {
            return Err(self.unexpected());
        };
        let keyword = value.clone();
        let start = self.bump().span.start;
        // Skip to the next `;` outside brackets.
        let mut depth = 0usize;
        loop {
            match self.peek().kind {
                TokenKind::Eof => break,
                TokenKind::Semicolon if depth == 0 => break,
                TokenKind::LParen | TokenKind::LBracket => depth += 1,
                TokenKind::RParen | TokenKind::RBracket => depth = depth.saturating_sub(1),
                _ => {}
            }
            self.bump();
        }
        Ok(Statement::Other {
            keyword,
            span: self.span_from(start),
        })
    }

    fn parse_select(&mut self) -> Result<Select, ParseError> {
        let saved = self.enter()?;
        let result = self.parse_select_inner();
        self.leave(saved);
        result
    }

    fn parse_select_inner(&mut self) -> Result<Select, ParseError> {
        let start = self.expect_kw("select")?.start;
        let mut distinct = None;
        if let Some(span) = self.eat_kw("distinct") {
            distinct = Some(span);
            if self.eat_kw("on").is_some() {
                self.expect(&TokenKind::LParen)?;
                self.parse_expr_list()?;
                self.expect(&TokenKind::RParen)?;
            }
        } else {
            self.eat_kw("all");
        }

        let columns = if self.at_select_list_end() {
            Vec::new()
        } else {
            self.parse_select_items()?
        };
        if self.is_kw("into") {
            return Err(self.error_at("SELECT INTO is not supported", self.peek().span));
        }
        let from = if self.eat_kw("from").is_some() {
            self.parse_from_list()?
        } else {
            Vec::new()
        };
        let where_clause = if self.eat_kw("where").is_some() {
            Some(self.parse_expr()?)
        } else {
            None
        };
        let group_by = if self.is_kw("group") && self.is_kw_at(1, "by") {
            let span = self.bump().span.to(self.bump().span);
            self.parse_expr_list()?;
            Some(span)
        } else {
            None
        };
        let having = if let Some(span) = self.eat_kw("having") {
            self.parse_expr()?;
            Some(span)
        } else {
            None
        };
        if self.is_any_kw(&["union", "intersect", "except", "window"]) {
            let span = self.peek().span;
            let word = self
                .src
                .get(span.start..span.end)
                .unwrap_or("")
                .to_ascii_uppercase();
            return Err(self.error_at(format!("{word} is not supported"), span));
        }
        let order_by = if self.is_kw("order") && self.is_kw_at(1, "by") {
            let span = self.bump().span.to(self.bump().span);
            self.parse_order_by_items()?;
            Some(span)
        } else {
            None
        };
        let (limit, offset) = self.parse_limit_offset()?;
        let locking = self.parse_locking()?;
        Ok(Select {
            span: self.span_from(start),
            distinct,
            columns,
            from,
            where_clause,
            group_by,
            having,
            order_by,
            limit,
            offset,
            locking,
        })
    }

    /// Whether the select list is empty (`SELECT WHERE ...`, `SELECT FROM t`, `SELECT;`).
    fn at_select_list_end(&self) -> bool {
        matches!(
            self.peek().kind,
            TokenKind::Eof | TokenKind::Semicolon | TokenKind::RParen
        ) || self.is_any_kw(&[
            "from",
            "where",
            "group",
            "having",
            "order",
            "limit",
            "offset",
            "fetch",
            "for",
            "union",
            "intersect",
            "except",
            "window",
            "into",
        ])
    }

    fn parse_select_items(&mut self) -> Result<Vec<SelectItem>, ParseError> {
        let mut items = Vec::new();
        loop {
            items.push(self.parse_select_item()?);
            if !self.eat(&TokenKind::Comma) {
                return Ok(items);
            }
        }
    }

    fn parse_select_item(&mut self) -> Result<SelectItem, ParseError> {
        if self.is_op_at(0, "*") {
            let span = self.bump().span;
            return Ok(SelectItem::Star { table: None, span });
        }
        if matches!(self.peek().kind, TokenKind::Word { .. })
            && self.check_at(1, &TokenKind::Dot)
            && self.is_op_at(2, "*")
        {
            let table = self.ident(false)?;
            self.bump();
            let end = self.bump().span;
            let span = table.span.to(end);
            return Ok(SelectItem::Star {
                table: Some(table),
                span,
            });
        }
        let expr = self.parse_expr()?;
        let alias = self.parse_alias()?;
        let span = match &alias {
            Some(alias) => expr.span.to(alias.span),
            None => expr.span,
        };
        Ok(SelectItem::Expr { expr, alias, span })
    }

    /// `[AS] alias`: after `AS` any word; without it, a quoted or non-reserved identifier.
    fn parse_alias(&mut self) -> Result<Option<Ident>, ParseError> {
        if self.eat_kw("as").is_some() {
            return Ok(Some(self.ident(true)?));
        }
        match &self.peek().kind {
            TokenKind::Word { value, quoted, .. } if *quoted || !is_reserved(value) => {
                Ok(Some(self.ident(false)?))
            }
            _ => Ok(None),
        }
    }

    fn parse_order_by_items(&mut self) -> Result<(), ParseError> {
        loop {
            self.parse_expr()?;
            if self.eat_kw("asc").is_none() && self.eat_kw("desc").is_none() && self.eat_kw("using").is_some()
            {
                match self.peek().kind {
                    TokenKind::Op(_) => {
                        self.bump();
                    }
                    _ => return Err(self.unexpected()),
                }
            }
            if self.eat_kw("nulls").is_some() && self.eat_kw("first").is_none() {
                self.expect_kw("last")?;
            }
            if !self.eat(&TokenKind::Comma) {
                return Ok(());
            }
        }
    }

    /// `LIMIT n|ALL`, `OFFSET n [ROW|ROWS]`, `FETCH FIRST|NEXT [n] ROW|ROWS ONLY|WITH TIES`, in either
    /// order as Postgres allows. `FETCH` counts as a limit.
    fn parse_limit_offset(&mut self) -> Result<(Option<Span>, Option<Span>), ParseError> {
        let mut limit = None;
        let mut offset = None;
        loop {
            if limit.is_none() && self.is_kw("limit") {
                limit = Some(self.bump().span);
                if self.eat_kw("all").is_none() {
                    self.parse_expr()?;
                }
            } else if offset.is_none() && self.is_kw("offset") {
                offset = Some(self.bump().span);
                self.parse_expr()?;
                if self.eat_kw("row").is_none() {
                    self.eat_kw("rows");
                }
            } else if limit.is_none() && self.is_kw("fetch") {
                limit = Some(self.bump().span);
                if self.eat_kw("first").is_none() {
                    self.expect_kw("next")?;
                }
                if !self.is_kw("row") && !self.is_kw("rows") {
                    self.parse_expr()?;
                }
                if self.eat_kw("row").is_none() {
                    self.expect_kw("rows")?;
                }
                if self.eat_kw("with").is_some() {
                    self.expect_kw("ties")?;
                } else {
                    self.expect_kw("only")?;
                }
            } else {
                return Ok((limit, offset));
            }
        }
    }

    /// `FOR [NO KEY] UPDATE | FOR [KEY] SHARE [OF t, ...] [NOWAIT | SKIP LOCKED]`, possibly repeated.
    /// The span covers the first clause's `FOR ...` keywords.
    fn parse_locking(&mut self) -> Result<Option<Span>, ParseError> {
        let mut locking: Option<Span> = None;
        while let Some(start) = self.eat_kw("for") {
            if self.eat_kw("no").is_some() {
                self.expect_kw("key")?;
                self.expect_kw("update")?;
            } else if self.eat_kw("update").is_none() {
                self.eat_kw("key");
                self.expect_kw("share")?;
            }
            let span = self.span_from(start.start);
            locking.get_or_insert(span);
            if self.eat_kw("of").is_some() {
                loop {
                    self.ident(false)?;
                    while self.eat(&TokenKind::Dot) {
                        self.ident(true)?;
                    }
                    if !self.eat(&TokenKind::Comma) {
                        break;
                    }
                }
            }
            if self.eat_kw("nowait").is_none() && self.eat_kw("skip").is_some() {
                self.expect_kw("locked")?;
            }
        }
        Ok(locking)
    }

    // ---- FROM ----

    fn parse_from_list(&mut self) -> Result<Vec<FromItem>, ParseError> {
        let mut items = Vec::new();
        loop {
            let source = self.parse_table_source()?;
            let joins = self.parse_joins()?;
            items.push(FromItem { source, joins });
            if !self.eat(&TokenKind::Comma) {
                return Ok(items);
            }
        }
    }

    fn parse_table_source(&mut self) -> Result<TableSource, ParseError> {
        let start = self.peek().span.start;
        if self.check(&TokenKind::LParen) {
            if !self.is_kw_at(1, "select") {
                return Err(self.unexpected());
            }
            self.bump();
            let select = Box::new(self.parse_select()?);
            self.expect(&TokenKind::RParen)?;
            let alias = self.parse_alias()?;
            return Ok(TableSource::Subquery {
                select,
                alias,
                span: self.span_from(start),
            });
        }
        let mut path = vec![self.ident(false)?];
        while self.eat(&TokenKind::Dot) {
            path.push(self.ident(true)?);
        }
        let Some(name) = path.pop() else {
            return Err(self.unexpected());
        };
        if self.check(&TokenKind::LParen) {
            if let Some(first) = path.first() {
                return Err(self.error_at(
                    "Schema-qualified table-valued functions are not supported",
                    first.span.to(name.span),
                ));
            }
            let (args, _, _) = self.parse_call_args()?;
            let alias = self.parse_alias()?;
            return Ok(TableSource::Function {
                name,
                args,
                alias,
                span: self.span_from(start),
            });
        }
        let alias = self.parse_alias()?;
        Ok(TableSource::Table {
            qualifiers: path,
            name,
            alias,
            span: self.span_from(start),
        })
    }

    fn parse_joins(&mut self) -> Result<Vec<Join>, ParseError> {
        let mut joins = Vec::new();
        loop {
            let start = self.peek().span.start;
            let natural = self.eat_kw("natural").is_some();
            let kind = if self.eat_kw("join").is_some() {
                JoinKind::Inner
            } else if self.eat_kw("inner").is_some() {
                self.expect_kw("join")?;
                JoinKind::Inner
            } else if self.is_any_kw(&["left", "right", "full"]) {
                let kind = if self.eat_kw("left").is_some() {
                    JoinKind::Left
                } else if self.eat_kw("right").is_some() {
                    JoinKind::Right
                } else {
                    self.bump();
                    JoinKind::Full
                };
                self.eat_kw("outer");
                self.expect_kw("join")?;
                kind
            } else if !natural && self.eat_kw("cross").is_some() {
                self.expect_kw("join")?;
                JoinKind::Cross
            } else if natural {
                return Err(self.unexpected());
            } else {
                return Ok(joins);
            };
            let source = self.parse_table_source()?;
            let mut on = None;
            if !natural && kind != JoinKind::Cross {
                if self.eat_kw("on").is_some() {
                    on = Some(self.parse_expr()?);
                } else if self.eat_kw("using").is_some() {
                    self.expect(&TokenKind::LParen)?;
                    loop {
                        self.ident(false)?;
                        if !self.eat(&TokenKind::Comma) {
                            break;
                        }
                    }
                    self.expect(&TokenKind::RParen)?;
                } else {
                    return Err(self.unexpected());
                }
            }
            joins.push(Join {
                kind,
                source,
                on,
                span: self.span_from(start),
            });
        }
    }

    // ---- expressions ----

    fn parse_expr(&mut self) -> Result<Expr, ParseError> {
        self.parse_expr_prec(prec::OR)
    }

    fn parse_expr_list(&mut self) -> Result<Vec<Expr>, ParseError> {
        let mut list = Vec::new();
        loop {
            list.push(self.parse_expr()?);
            if !self.eat(&TokenKind::Comma) {
                return Ok(list);
            }
        }
    }

    /// Parses an expression whose operators all bind at least as tightly as `min`.
    fn parse_expr_prec(&mut self, min: u8) -> Result<Expr, ParseError> {
        let saved = self.enter()?;
        let result = self.parse_expr_prec_inner(min);
        self.leave(saved);
        result
    }

    fn parse_expr_prec_inner(&mut self, min: u8) -> Result<Expr, ParseError> {
        let mut left = self.parse_prefix()?;
        while let Some(infix) = self.peek_infix() {
            if infix.prec() < min {
                break;
            }
            // Each round puts `left` one level deeper in the tree.
            self.tree_depth += 1;
            self.check_depth()?;
            left = self.parse_infix(left, infix)?;
        }
        Ok(left)
    }

    fn peek_infix(&self) -> Option<Infix> {
        let binary = |op, prec| Some(Infix::Binary { op, prec, tokens: 1 });
        match &self.peek().kind {
            TokenKind::Op(op) => match op.as_str() {
                "=" => binary(BinaryOp::Eq, prec::CMP),
                "<>" | "!=" => binary(BinaryOp::NotEq, prec::CMP),
                "<" => binary(BinaryOp::Lt, prec::CMP),
                "<=" => binary(BinaryOp::LtEq, prec::CMP),
                ">" => binary(BinaryOp::Gt, prec::CMP),
                ">=" => binary(BinaryOp::GtEq, prec::CMP),
                "+" => binary(BinaryOp::Add, prec::ADD),
                "-" => binary(BinaryOp::Sub, prec::ADD),
                "*" => binary(BinaryOp::Mul, prec::MUL),
                "/" => binary(BinaryOp::Div, prec::MUL),
                "%" => binary(BinaryOp::Mod, prec::MUL),
                "^" => binary(BinaryOp::Other, prec::EXP),
                "||" => binary(BinaryOp::Concat, prec::OTHER),
                "->" => binary(BinaryOp::JsonArrow, prec::OTHER),
                "->>" => binary(BinaryOp::JsonLongArrow, prec::OTHER),
                "&&" => binary(BinaryOp::Overlap, prec::OTHER),
                _ => binary(BinaryOp::Other, prec::OTHER),
            },
            // The jsonb key-exists operator `?`.
            TokenKind::Placeholder(p) if p == "?" => binary(BinaryOp::Other, prec::OTHER),
            TokenKind::DoubleColon => Some(Infix::Cast),
            TokenKind::Word {
                value, quoted: false, ..
            } => match value.as_str() {
                "or" => binary(BinaryOp::Or, prec::OR),
                "and" => binary(BinaryOp::And, prec::AND),
                "is" => Some(Infix::Is),
                "isnull" => Some(Infix::PostfixNull { negated: false }),
                "notnull" => Some(Infix::PostfixNull { negated: true }),
                "in" => Some(Infix::In { negated: false }),
                "between" => Some(Infix::Between { negated: false }),
                "like" => binary(BinaryOp::Like, prec::LIKE),
                "ilike" => binary(BinaryOp::ILike, prec::LIKE),
                "similar" if self.is_kw_at(1, "to") => Some(Infix::Binary {
                    op: BinaryOp::Other,
                    prec: prec::LIKE,
                    tokens: 2,
                }),
                "not" => {
                    let negated = |op| {
                        Some(Infix::Binary {
                            op,
                            prec: prec::LIKE,
                            tokens: 2,
                        })
                    };
                    if self.is_kw_at(1, "in") {
                        Some(Infix::In { negated: true })
                    } else if self.is_kw_at(1, "between") {
                        Some(Infix::Between { negated: true })
                    } else if self.is_kw_at(1, "like") {
                        negated(BinaryOp::NotLike)
                    } else if self.is_kw_at(1, "ilike") {
                        negated(BinaryOp::NotILike)
                    } else if self.is_kw_at(1, "similar") && self.is_kw_at(2, "to") {
                        Some(Infix::Binary {
                            op: BinaryOp::Other,
                            prec: prec::LIKE,
                            tokens: 3,
                        })
                    } else {
                        None
                    }
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Dispatches on the operator. Each form has its own function so that, in debug builds, the
    /// frames on the recursion path stay small (see [`MAX_NESTING`]).
    fn parse_infix(&mut self, left: Expr, infix: Infix) -> Result<Expr, ParseError> {
        match infix {
            Infix::Binary { op, prec, tokens } => self.parse_binary(left, op, prec, tokens),
            Infix::Is => self.parse_is(left),
            Infix::PostfixNull { negated } => {
                self.bump();
                Ok(self.node(
                    left.span.start,
                    ExprKind::IsNull {
                        operand: Box::new(left),
                        negated,
                    },
                ))
            }
            Infix::In { negated } => self.parse_in(left, negated),
            Infix::Between { negated } => self.parse_between(left, negated),
            Infix::Cast => self.parse_double_colon(left),
        }
    }

    /// An expression node from `start` to the end of the last consumed token.
    fn node(&self, start: usize, kind: ExprKind) -> Expr {
        Expr {
            kind,
            span: self.span_from(start),
        }
    }

    fn parse_binary(
        &mut self,
        left: Expr,
        op: BinaryOp,
        prec: u8,
        tokens: usize,
    ) -> Result<Expr, ParseError> {
        let op_start = self.peek().span.start;
        for _ in 0..tokens {
            self.bump();
        }
        let op_span = self.span_from(op_start);
        // Left-associative: the right operand only takes tighter operators.
        let right = self.parse_expr_prec(prec + 1)?;
        Ok(self.node(
            left.span.start,
            ExprKind::Binary {
                op,
                op_span,
                left: Box::new(left),
                right: Box::new(right),
            },
        ))
    }

    fn parse_in(&mut self, left: Expr, negated: bool) -> Result<Expr, ParseError> {
        if negated {
            self.bump();
        }
        self.bump();
        let rhs = self.parse_in_rhs()?;
        Ok(self.node(
            left.span.start,
            ExprKind::In {
                operand: Box::new(left),
                rhs,
                negated,
            },
        ))
    }

    fn parse_between(&mut self, left: Expr, negated: bool) -> Result<Expr, ParseError> {
        if negated {
            self.bump();
        }
        self.bump();
        // Bounds cannot hold unparenthesised AND (it separates them) or comparisons.
        let low = self.parse_expr_prec(prec::OTHER)?;
        self.expect_kw("and")?;
        let high = self.parse_expr_prec(prec::OTHER)?;
        Ok(self.node(
            left.span.start,
            ExprKind::Between {
                operand: Box::new(left),
                low: Box::new(low),
                high: Box::new(high),
                negated,
            },
        ))
    }

    fn parse_double_colon(&mut self, left: Expr) -> Result<Expr, ParseError> {
        self.bump();
        let type_name = self.parse_type_name()?;
        Ok(self.node(
            left.span.start,
            ExprKind::Cast {
                operand: Box::new(left),
                type_name,
                syntax: CastSyntax::DoubleColon,
            },
        ))
    }

    /// After `x`: `IS [NOT] NULL|UNKNOWN`, `IS [NOT] DISTINCT FROM y`, or `IS [NOT] y` (which covers
    /// `IS [NOT] TRUE|FALSE`).
    fn parse_is(&mut self, left: Expr) -> Result<Expr, ParseError> {
        let start = left.span.start;
        let is_start = self.bump().span.start;
        let negated = self.eat_kw("not").is_some();
        if self.eat_kw("null").is_some() || self.eat_kw("unknown").is_some() {
            return Ok(Expr {
                kind: ExprKind::IsNull {
                    operand: Box::new(left),
                    negated,
                },
                span: self.span_from(start),
            });
        }
        // `IS DISTINCT FROM` is `IS NOT`, and the other way round.
        let distinct = self.is_kw("distinct") && self.is_kw_at(1, "from");
        if distinct {
            self.bump();
            self.bump();
        }
        let op = if negated != distinct {
            BinaryOp::IsNot
        } else {
            BinaryOp::Is
        };
        let op_span = self.span_from(is_start);
        let right = self.parse_expr_prec(prec::IS + 1)?;
        Ok(Expr {
            kind: ExprKind::Binary {
                op,
                op_span,
                left: Box::new(left),
                right: Box::new(right),
            },
            span: self.span_from(start),
        })
    }

    /// What follows `IN`: `(SELECT ...)`, `(a, b, ...)`, or a bare operand (PowerSync's JSON array
    /// form: a primary such as `ids`, `bucket.x` or `request.jwt()`, with `::` casts).
    fn parse_in_rhs(&mut self) -> Result<InRhs, ParseError> {
        if self.check(&TokenKind::LParen) {
            self.bump();
            if self.is_kw("select") {
                let select = self.parse_select()?;
                self.expect(&TokenKind::RParen)?;
                return Ok(InRhs::Subquery(Box::new(select)));
            }
            let list = self.parse_expr_list()?;
            self.expect(&TokenKind::RParen)?;
            return Ok(InRhs::List(list));
        }
        let saved = self.enter()?;
        let result = self.parse_primary_with_casts();
        self.leave(saved);
        Ok(InRhs::Bare(Box::new(result?)))
    }

    fn parse_primary_with_casts(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.parse_primary()?;
        while self.check(&TokenKind::DoubleColon) {
            self.tree_depth += 1;
            self.check_depth()?;
            expr = self.parse_infix(expr, Infix::Cast)?;
        }
        Ok(expr)
    }

    fn parse_prefix(&mut self) -> Result<Expr, ParseError> {
        let (op, prec) = if self.is_kw("not") {
            (UnaryOp::Not, prec::NOT)
        } else if self.is_op_at(0, "-") {
            (UnaryOp::Minus, prec::UNARY)
        } else if self.is_op_at(0, "+") {
            (UnaryOp::Plus, prec::UNARY)
        } else {
            return self.parse_primary();
        };
        let start = self.bump().span.start;
        // `-5` and `- 0.5` are negative literals; `::` binds tighter, so `-5::int` is not one.
        if op == UnaryOp::Minus
            && matches!(self.peek().kind, TokenKind::Number(_))
            && !self.check_at(1, &TokenKind::DoubleColon)
        {
            return self.parse_negative_number(start);
        }
        let operand = self.parse_expr_prec(prec)?;
        Ok(self.node(
            start,
            ExprKind::Unary {
                op,
                operand: Box::new(operand),
            },
        ))
    }

    /// The number after a prefix `-` at `start`. Negating the text (not the value) keeps
    /// `-9223372036854775808` an integer.
    fn parse_negative_number(&mut self, start: usize) -> Result<Expr, ParseError> {
        let number = self.bump();
        let TokenKind::Number(text) = &number.kind else {
            return Err(self.error_at("Expected a number", number.span));
        };
        let literal = self.number_literal(&format!("-{text}"), number.span)?;
        Ok(self.node(start, ExprKind::Literal(literal)))
    }

    fn number_literal(&self, text: &str, span: Span) -> Result<Literal, ParseError> {
        let is_integer = text.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        if is_integer && let Ok(value) = text.parse::<i64>() {
            return Ok(Literal::Integer(value));
        }
        text.parse::<f64>()
            .map(Literal::Real)
            .map_err(|_| self.error_at(format!("Invalid number \"{text}\""), span))
    }

    fn parse_primary(&mut self) -> Result<Expr, ParseError> {
        match &self.peek().kind {
            TokenKind::Number(_) | TokenKind::String(_) | TokenKind::Placeholder(_) => self.parse_constant(),
            TokenKind::LParen => self.parse_parenthesized(),
            TokenKind::Word { quoted: true, .. } => self.parse_name_expr(false),
            TokenKind::Word { value, .. } => match value.as_str() {
                "true" | "false" | "null" => self.parse_constant(),
                "case" => self.parse_case(),
                "cast" if self.check_at(1, &TokenKind::LParen) => self.parse_cast(),
                "exists" if self.check_at(1, &TokenKind::LParen) => self.parse_exists(),
                "array" if self.check_at(1, &TokenKind::LBracket) => {
                    let start = self.bump().span.start;
                    self.parse_array_body(start)
                }
                // Postgres' `left(s, n)` / `right(s, n)`: reserved words usable as function names.
                "left" | "right" if self.check_at(1, &TokenKind::LParen) => self.parse_name_expr(true),
                word if is_reserved(word) => Err(self.unexpected()),
                _ => self.parse_name_expr(false),
            },
            _ => Err(self.unexpected()),
        }
    }

    /// A number, string, placeholder, TRUE, FALSE or NULL.
    fn parse_constant(&mut self) -> Result<Expr, ParseError> {
        let token = self.bump();
        let kind = match token.kind {
            TokenKind::Number(text) => ExprKind::Literal(self.number_literal(&text, token.span)?),
            TokenKind::String(value) => ExprKind::Literal(Literal::String(value)),
            TokenKind::Placeholder(text) => ExprKind::Placeholder(text),
            TokenKind::Word { value, .. } if value == "null" => ExprKind::Literal(Literal::Null),
            TokenKind::Word { value, .. } => ExprKind::Literal(Literal::Bool(value == "true")),
            _ => return Err(self.error_at("Expected a constant", token.span)),
        };
        Ok(Expr {
            kind,
            span: token.span,
        })
    }

    /// `(expr)`, `(a, b, ...)` (a row) or `(SELECT ...)`. A parenthesised expression keeps its own
    /// node but its span grows to cover the parentheses, so enclosing spans stay contiguous.
    fn parse_parenthesized(&mut self) -> Result<Expr, ParseError> {
        let start = self.bump().span.start;
        if self.is_kw("select") {
            let select = self.parse_select()?;
            self.expect(&TokenKind::RParen)?;
            return Ok(Expr {
                kind: ExprKind::Subquery(Box::new(select)),
                span: self.span_from(start),
            });
        }
        let mut list = self.parse_expr_list()?;
        self.expect(&TokenKind::RParen)?;
        let span = self.span_from(start);
        if list.len() == 1
            && let Some(mut inner) = list.pop()
        {
            inner.span = span;
            return Ok(inner);
        }
        Ok(Expr {
            kind: ExprKind::Row(list),
            span,
        })
    }

    /// A column reference (`a`, `t.a`, `s.t.a`) or a call (`f(...)`, `request.user_id()`).
    fn parse_name_expr(&mut self, allow_reserved: bool) -> Result<Expr, ParseError> {
        let start = self.peek().span.start;
        let mut path = vec![self.ident(allow_reserved)?];
        while self.eat(&TokenKind::Dot) {
            path.push(self.ident(true)?);
        }
        let Some(name) = path.pop() else {
            return Err(self.unexpected());
        };
        let kind = if self.check(&TokenKind::LParen) {
            let (args, star, distinct) = self.parse_call_args()?;
            ExprKind::Call {
                qualifiers: path,
                name,
                args,
                star,
                distinct,
            }
        } else {
            ExprKind::Column {
                qualifiers: path,
                name,
            }
        };
        Ok(Expr {
            kind,
            span: self.span_from(start),
        })
    }

    /// `( [DISTINCT|ALL] args | * )`, returning (args, star, distinct).
    fn parse_call_args(&mut self) -> Result<(Vec<Expr>, bool, bool), ParseError> {
        self.expect(&TokenKind::LParen)?;
        if self.eat(&TokenKind::RParen) {
            return Ok((Vec::new(), false, false));
        }
        if self.is_op_at(0, "*") && self.check_at(1, &TokenKind::RParen) {
            self.bump();
            self.bump();
            return Ok((Vec::new(), true, false));
        }
        let distinct = self.eat_kw("distinct").is_some();
        if !distinct {
            self.eat_kw("all");
        }
        let args = self.parse_expr_list()?;
        self.expect(&TokenKind::RParen)?;
        Ok((args, false, distinct))
    }

    fn parse_case(&mut self) -> Result<Expr, ParseError> {
        let start = self.bump().span.start;
        let operand = if self.is_kw("when") {
            None
        } else {
            Some(Box::new(self.parse_expr()?))
        };
        let mut whens = Vec::new();
        while self.eat_kw("when").is_some() {
            let condition = self.parse_expr()?;
            self.expect_kw("then")?;
            let result = self.parse_expr()?;
            whens.push((condition, result));
        }
        if whens.is_empty() {
            return Err(self.unexpected());
        }
        let else_result = if self.eat_kw("else").is_some() {
            Some(Box::new(self.parse_expr()?))
        } else {
            None
        };
        self.expect_kw("end")?;
        Ok(Expr {
            kind: ExprKind::Case {
                operand,
                whens,
                else_result,
            },
            span: self.span_from(start),
        })
    }

    fn parse_cast(&mut self) -> Result<Expr, ParseError> {
        let start = self.bump().span.start;
        self.expect(&TokenKind::LParen)?;
        let operand = self.parse_expr()?;
        self.expect_kw("as")?;
        let type_name = self.parse_type_name()?;
        self.expect(&TokenKind::RParen)?;
        Ok(Expr {
            kind: ExprKind::Cast {
                operand: Box::new(operand),
                type_name,
                syntax: CastSyntax::Function,
            },
            span: self.span_from(start),
        })
    }

    fn parse_exists(&mut self) -> Result<Expr, ParseError> {
        let start = self.bump().span.start;
        self.expect(&TokenKind::LParen)?;
        if !self.is_kw("select") {
            return Err(self.unexpected());
        }
        let select = self.parse_select()?;
        self.expect(&TokenKind::RParen)?;
        Ok(Expr {
            kind: ExprKind::Exists(Box::new(select)),
            span: self.span_from(start),
        })
    }

    /// `[a, b, ...]` after `ARRAY` (or nested inside it, where Postgres allows bare brackets).
    fn parse_array_body(&mut self, start: usize) -> Result<Expr, ParseError> {
        let saved = self.enter()?;
        let result = self.parse_array_body_inner(start);
        self.leave(saved);
        result
    }

    fn parse_array_body_inner(&mut self, start: usize) -> Result<Expr, ParseError> {
        self.expect(&TokenKind::LBracket)?;
        let mut elements = Vec::new();
        if !self.check(&TokenKind::RBracket) {
            loop {
                if self.check(&TokenKind::LBracket) {
                    let nested_start = self.peek().span.start;
                    elements.push(self.parse_array_body(nested_start)?);
                } else {
                    elements.push(self.parse_expr()?);
                }
                if !self.eat(&TokenKind::Comma) {
                    break;
                }
            }
        }
        self.expect(&TokenKind::RBracket)?;
        Ok(Expr {
            kind: ExprKind::Array(elements),
            span: self.span_from(start),
        })
    }

    /// A type name for `CAST(x AS t)` / `x::t`: `[schema.]name`, multi-word names (`double
    /// precision`, `character varying`, `timestamp [(p)] with time zone`), an optional modifier list
    /// `(10, 2)` and array suffixes `[]`. The text is the user's spelling, normalised.
    fn parse_type_name(&mut self) -> Result<TypeName, ParseError> {
        let start = self.peek().span.start;
        let mut last = self.ident(false)?;
        while self.eat(&TokenKind::Dot) {
            last = self.ident(true)?;
        }
        if !last.quoted {
            match last.name.as_str() {
                "double" => {
                    self.eat_kw("precision");
                }
                "character" | "char" | "nchar" | "bit" => {
                    self.eat_kw("varying");
                }
                "national" => {
                    // `national character [varying]`, `national char [varying]`.
                    let _ = self.eat_kw("character").or_else(|| self.eat_kw("char"));
                    self.eat_kw("varying");
                }
                _ => {}
            }
        }
        if self.eat(&TokenKind::LParen) {
            self.parse_expr_list()?;
            self.expect(&TokenKind::RParen)?;
        }
        if !last.quoted
            && matches!(last.name.as_str(), "timestamp" | "time")
            && (self.is_kw("with") || self.is_kw("without"))
            && self.is_kw_at(1, "time")
            && self.is_kw_at(2, "zone")
        {
            for _ in 0..3 {
                self.bump();
            }
        }
        while self.eat(&TokenKind::LBracket) {
            if matches!(self.peek().kind, TokenKind::Number(_)) {
                self.bump();
            }
            self.expect(&TokenKind::RBracket)?;
        }
        let span = self.span_from(start);
        let raw = self.src.get(span.start..span.end).unwrap_or("");
        let text = raw
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        Ok(TypeName { text, span })
    }
}
