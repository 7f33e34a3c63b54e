//! Tokenizer for the sync-rules SQL dialect.
//!
//! Follows PostgreSQL's lexical rules where they matter for the dialect (operator runs, comments,
//! quoting, identifier folding) so that text Postgres users write tokenizes the way they expect.
//! Every token span lies on UTF-8 char boundaries because the scanner only ever advances by whole
//! chars.

use super::ParseError;
use super::ast::Span;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    /// An identifier or keyword. `value` is ASCII-lower-cased unless `quoted` (Postgres folds only
    /// ASCII letters in UTF-8 databases, so column names compare the same way).
    Word {
        value: String,
        raw: String,
        quoted: bool,
    },
    /// A numeric literal exactly as written; the parser decides between integer and real.
    Number(String),
    /// A string literal with escapes resolved.
    String(String),
    /// `$1` or `?`, as written.
    Placeholder(String),
    /// A run of operator characters: `=`, `<>`, `->>`, `@>`, `*`, ...
    Op(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Semicolon,
    DoubleColon,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub span: Span,
}

/// Characters that can form an operator (Postgres' set, minus `?` and backtick: `?` is a
/// placeholder here, see [`Lexer::question_mark`]).
fn is_op_char(c: char) -> bool {
    matches!(
        c,
        '+' | '-' | '*' | '/' | '<' | '>' | '=' | '~' | '!' | '@' | '#' | '%' | '^' | '&' | '|'
    )
}

/// Operators the dialect gives a meaning to. A run such as `=-` or `||-` is split before the
/// trailing sign when what precedes it is one of these, so `x=-1` reads as `x = -1`.
const KNOWN_OPS: &[&str] = &[
    "=", "<>", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "^", "||", "->", "->>", "&&",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (!c.is_ascii() && !c.is_whitespace())
}

fn is_ident_continue(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || (!c.is_ascii() && !c.is_whitespace())
}

/// Splits `src` into tokens, ending with one [`TokenKind::Eof`] whose span is empty at the end.
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut lexer = Lexer {
        src,
        pos: 0,
        tokens: Vec::new(),
    };
    lexer.run()?;
    Ok(lexer.tokens)
}

struct Lexer<'a> {
    src: &'a str,
    /// Always on a char boundary.
    pos: usize,
    tokens: Vec<Token>,
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_char_at(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    fn push(&mut self, kind: TokenKind, start: usize) {
        self.tokens.push(Token {
            kind,
            span: Span::new(start, self.pos),
        });
    }

    fn error(&self, message: impl Into<String>, start: usize, end: usize) -> ParseError {
        ParseError {
            message: message.into(),
            span: Span::new(start, end),
        }
    }

    fn run(&mut self) -> Result<(), ParseError> {
        loop {
            self.skip_whitespace_and_comments()?;
            let start = self.pos;
            let Some(c) = self.peek_char() else {
                self.push(TokenKind::Eof, start);
                return Ok(());
            };
            match c {
                '(' => self.single(TokenKind::LParen),
                ')' => self.single(TokenKind::RParen),
                '[' => self.single(TokenKind::LBracket),
                ']' => self.single(TokenKind::RBracket),
                ',' => self.single(TokenKind::Comma),
                ';' => self.single(TokenKind::Semicolon),
                ':' if self.peek_char_at(1) == Some(':') => {
                    self.pos += 2;
                    self.push(TokenKind::DoubleColon, start);
                }
                '.' if self.peek_char_at(1).is_some_and(|d| d.is_ascii_digit()) => self.number(),
                '.' => self.single(TokenKind::Dot),
                '0'..='9' => self.number(),
                '\'' => {
                    let value = self.string(start, false)?;
                    self.push(TokenKind::String(value), start);
                }
                'e' | 'E' if self.peek_char_at(1) == Some('\'') => {
                    self.pos += 1;
                    let value = self.string(start, true)?;
                    self.push(TokenKind::String(value), start);
                }
                'n' | 'N' if self.peek_char_at(1) == Some('\'') => {
                    self.pos += 1;
                    let value = self.string(start, false)?;
                    self.push(TokenKind::String(value), start);
                }
                '"' => self.quoted_identifier()?,
                '$' => self.dollar_placeholder()?,
                '?' => self.question_mark(),
                c if is_ident_start(c) => self.identifier(),
                c if is_op_char(c) => self.operator(),
                c => {
                    return Err(self.error(
                        format!("Syntax error at or near \"{c}\""),
                        start,
                        start + c.len_utf8(),
                    ));
                }
            }
        }
    }

    fn single(&mut self, kind: TokenKind) {
        let start = self.pos;
        self.pos += 1;
        self.push(kind, start);
    }

    fn skip_whitespace_and_comments(&mut self) -> Result<(), ParseError> {
        loop {
            let rest = self.rest();
            if let Some(c) = rest.chars().next().filter(|c| c.is_whitespace()) {
                self.pos += c.len_utf8();
            } else if rest.starts_with("--") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if rest.starts_with("/*") {
                self.block_comment()?;
            } else {
                return Ok(());
            }
        }
    }

    /// `/* ... */`, nesting like Postgres.
    fn block_comment(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        self.pos += 2;
        let mut depth = 1usize;
        while depth > 0 {
            let rest = self.rest();
            if rest.starts_with("/*") {
                depth += 1;
                self.pos += 2;
            } else if rest.starts_with("*/") {
                depth -= 1;
                self.pos += 2;
            } else if let Some(c) = rest.chars().next() {
                self.pos += c.len_utf8();
            } else {
                return Err(self.error("Unterminated /* comment", start, self.src.len()));
            }
        }
        Ok(())
    }

    /// `42`, `3.25`, `.5`, `5.`, `1e5`, `1.5E-3`.
    fn number(&mut self) {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let digits = |mut i: usize| {
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut end = digits(self.pos);
        // A second dot (`1..2`) is not part of the number.
        if bytes.get(end) == Some(&b'.') && bytes.get(end + 1) != Some(&b'.') {
            end = digits(end + 1);
        }
        if matches!(bytes.get(end), Some(b'e' | b'E')) {
            let mut exp = end + 1;
            if matches!(bytes.get(exp), Some(b'+' | b'-')) {
                exp += 1;
            }
            if bytes.get(exp).is_some_and(u8::is_ascii_digit) {
                end = digits(exp);
            }
        }
        self.pos = end;
        let text = self.src.get(start..end).unwrap_or("").to_string();
        self.push(TokenKind::Number(text), start);
    }

    /// A `'...'` literal starting at the quote under `self.pos`; `''` is a quote. With `escapes`
    /// (an `E'...'` string) backslash escapes are resolved too.
    fn string(&mut self, start: usize, escapes: bool) -> Result<String, ParseError> {
        self.pos += 1; // opening quote
        let mut value = String::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(self.error("Unterminated string literal", start, self.src.len()));
            };
            self.pos += c.len_utf8();
            match c {
                '\'' if self.peek_char() == Some('\'') => {
                    self.pos += 1;
                    value.push('\'');
                }
                '\'' => return Ok(value),
                '\\' if escapes => self.escape(&mut value)?,
                c => value.push(c),
            }
        }
    }

    /// One backslash escape of an `E'...'` string (the backslash is already consumed).
    fn escape(&mut self, value: &mut String) -> Result<(), ParseError> {
        let escape_start = self.pos - 1;
        let Some(c) = self.peek_char() else {
            return Err(self.error("Unterminated string literal", escape_start, self.src.len()));
        };
        self.pos += c.len_utf8();
        let simple = match c {
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            _ => None,
        };
        if let Some(simple) = simple {
            value.push(simple);
            return Ok(());
        }
        let (radix, max_len, first_digit_consumed) = match c {
            'x' => (16, 2, false),
            'u' => (16, 4, false),
            'U' => (16, 8, false),
            '0'..='7' => (8, 3, true),
            other => {
                value.push(other);
                return Ok(());
            }
        };
        let mut code: u32 = if first_digit_consumed {
            c.to_digit(8).unwrap_or(0)
        } else {
            0
        };
        let mut len = usize::from(first_digit_consumed);
        while len < max_len {
            let Some(d) = self.peek_char().and_then(|d| d.to_digit(radix)) else {
                break;
            };
            code = code * radix + d;
            self.pos += 1;
            len += 1;
        }
        if len == 0 {
            // `\x` without hex digits is just `x`, as in Postgres.
            value.push(c);
            return Ok(());
        }
        if matches!(c, 'u' | 'U') && len < max_len {
            return Err(self.error("Invalid Unicode escape", escape_start, self.pos));
        }
        match char::from_u32(code) {
            Some(ch) => value.push(ch),
            None => return Err(self.error("Invalid Unicode escape value", escape_start, self.pos)),
        }
        Ok(())
    }

    /// `"..."` with `""` as an escaped quote; keeps case.
    fn quoted_identifier(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut value = String::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(self.error("Unterminated quoted identifier", start, self.src.len()));
            };
            self.pos += c.len_utf8();
            match c {
                '"' if self.peek_char() == Some('"') => {
                    self.pos += 1;
                    value.push('"');
                }
                '"' => break,
                c => value.push(c),
            }
        }
        if value.is_empty() {
            return Err(self.error("Zero-length quoted identifier", start, self.pos));
        }
        self.push(
            TokenKind::Word {
                value: value.clone(),
                raw: value,
                quoted: true,
            },
            start,
        );
        Ok(())
    }

    fn identifier(&mut self) {
        let start = self.pos;
        while let Some(c) = self.peek_char().filter(|&c| is_ident_continue(c)) {
            self.pos += c.len_utf8();
        }
        let raw = self.src.get(start..self.pos).unwrap_or("").to_string();
        self.push(
            TokenKind::Word {
                value: raw.to_ascii_lowercase(),
                raw,
                quoted: false,
            },
            start,
        );
    }

    /// `$1`, `$2`, ...
    fn dollar_placeholder(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut end = start + 1;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start + 1 {
            return Err(self.error("Syntax error at or near \"$\"", start, start + 1));
        }
        self.pos = end;
        let text = self.src.get(start..end).unwrap_or("").to_string();
        self.push(TokenKind::Placeholder(text), start);
        Ok(())
    }

    /// A lone `?` is a placeholder; `?|` and `?&` are the jsonb operators. The parser reads a `?`
    /// placeholder in operator position as the jsonb `?` operator.
    fn question_mark(&mut self) {
        let start = self.pos;
        self.pos += 1;
        if matches!(self.peek_char(), Some('|' | '&')) {
            self.pos += 1;
            let text = self.src.get(start..self.pos).unwrap_or("").to_string();
            self.push(TokenKind::Op(text), start);
        } else {
            self.push(TokenKind::Placeholder("?".to_string()), start);
        }
    }

    /// A run of operator characters, cut like Postgres does: a comment start ends the run, and a
    /// trailing `+`/`-` is split off (so `a*-1` is `a * -1`) unless the run contains one of the
    /// characters that only user-defined operators use (`@-`, `#-` stay whole).
    fn operator(&mut self) {
        let start = self.pos;
        let mut end = start;
        let bytes = self.src.as_bytes();
        while let Some(&b) = bytes.get(end) {
            if !is_op_char(char::from(b)) {
                break;
            }
            if end > start && matches!((b, bytes.get(end + 1)), (b'-', Some(b'-')) | (b'/', Some(b'*'))) {
                break;
            }
            end += 1;
        }
        let run = self.src.get(start..end).unwrap_or("");
        let mut len = run.len();
        if len > 1 && run.ends_with(['+', '-']) {
            let trimmed = run.trim_end_matches(['+', '-']);
            let has_special = run.contains(['~', '!', '@', '#', '%', '^', '&', '|']);
            if !trimmed.is_empty() && (!has_special || KNOWN_OPS.contains(&trimmed)) {
                len = trimmed.len();
            } else if trimmed.is_empty() {
                // Only signs (`+-+`; `--` would have started a comment): one token per sign.
                len = 1;
            }
        }
        self.pos = start + len;
        let text = self.src.get(start..self.pos).unwrap_or("").to_string();
        self.push(TokenKind::Op(text), start);
        // What was split off is all signs, and rescanning a run of signs yields one sign per token:
        // emit them now rather than rescan (which would be quadratic on `+++...`).
        while self.pos < end {
            let sign_start = self.pos;
            self.pos += 1;
            let sign = self.src.get(sign_start..self.pos).unwrap_or("").to_string();
            self.push(TokenKind::Op(sign), sign_start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        tokenize(src).unwrap().into_iter().map(|t| t.kind).collect()
    }

    fn op(s: &str) -> TokenKind {
        TokenKind::Op(s.to_string())
    }

    fn word(s: &str) -> TokenKind {
        TokenKind::Word {
            value: s.to_ascii_lowercase(),
            raw: s.to_string(),
            quoted: false,
        }
    }

    fn num(s: &str) -> TokenKind {
        TokenKind::Number(s.to_string())
    }

    #[test]
    fn words_fold_ascii_only() {
        assert_eq!(
            kinds("SeLeCt Ünï_x$1"),
            vec![word("SeLeCt"), word("Ünï_x$1"), TokenKind::Eof]
        );
        let TokenKind::Word { value, .. } = &kinds("ÄB")[0] else {
            panic!()
        };
        assert_eq!(value, "Äb");
    }

    #[test]
    fn quoted_identifiers() {
        assert_eq!(
            kinds(r#""Foo ""bar""" "todos_%""#),
            vec![
                TokenKind::Word {
                    value: "Foo \"bar\"".into(),
                    raw: "Foo \"bar\"".into(),
                    quoted: true
                },
                TokenKind::Word {
                    value: "todos_%".into(),
                    raw: "todos_%".into(),
                    quoted: true
                },
                TokenKind::Eof
            ]
        );
        assert_eq!(tokenize(r#"a """#).unwrap_err().span, Span::new(2, 4));
        assert_eq!(tokenize(r#"a "abc"#).unwrap_err().span, Span::new(2, 6));
    }

    #[test]
    fn strings() {
        assert_eq!(
            kinds("'it''s' 'ü'"),
            vec![
                TokenKind::String("it's".into()),
                TokenKind::String("ü".into()),
                TokenKind::Eof
            ]
        );
        assert_eq!(
            kinds(r"E'a\nb\'c\\\x41\101\u00e9\q' e'x' N'n'"),
            vec![
                TokenKind::String("a\nb'c\\AAéq".into()),
                TokenKind::String("x".into()),
                TokenKind::String("n".into()),
                TokenKind::Eof
            ]
        );
        // Not an E-string: a backslash is literal.
        assert_eq!(kinds(r"'a\n'")[0], TokenKind::String(r"a\n".into()));
        let err = tokenize("select 'abc").unwrap_err();
        assert_eq!(err.message, "Unterminated string literal");
        assert_eq!(err.span, Span::new(7, 11));
        assert!(tokenize(r"E'\u12'").is_err());
        assert!(tokenize(r"E'\UFFFFFFFF'").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(
            kinds("42 3.25 .5 5. 1e5 1.5E-3 1e x"),
            vec![
                num("42"),
                num("3.25"),
                num(".5"),
                num("5."),
                num("1e5"),
                num("1.5E-3"),
                num("1"),
                word("e"),
                word("x"),
                TokenKind::Eof
            ]
        );
        assert_eq!(kinds("t.x")[1], TokenKind::Dot);
    }

    #[test]
    fn operators() {
        assert_eq!(
            kinds("= != <> <= >= || -> ->> && @> ~ ^ # :: * / %"),
            vec![
                op("="),
                op("!="),
                op("<>"),
                op("<="),
                op(">="),
                op("||"),
                op("->"),
                op("->>"),
                op("&&"),
                op("@>"),
                op("~"),
                op("^"),
                op("#"),
                TokenKind::DoubleColon,
                op("*"),
                op("/"),
                op("%"),
                TokenKind::Eof
            ]
        );
        assert_eq!(kinds("a=-1")[1..4], [op("="), op("-"), num("1")]);
        assert_eq!(kinds("a*-1")[1..4], [op("*"), op("-"), num("1")]);
        assert_eq!(kinds("a!=-1")[1..4], [op("!="), op("-"), num("1")]);
        assert_eq!(kinds("a||-1")[1..4], [op("||"), op("-"), num("1")]);
        assert_eq!(kinds("a #- b")[1], op("#-"));
        assert_eq!(kinds("a @- b")[1], op("@-"));
        assert_eq!(kinds("a +- b")[1..3], [op("+"), op("-")]);
        assert_eq!(kinds("a ?| b")[1], op("?|"));
        assert_eq!(
            kinds("? $12"),
            vec![
                TokenKind::Placeholder("?".into()),
                TokenKind::Placeholder("$12".into()),
                TokenKind::Eof
            ]
        );
        assert!(tokenize("a : b").is_err());
        assert!(tokenize("$x").is_err());
    }

    #[test]
    fn comments() {
        assert_eq!(
            kinds("a -- c ü\n b /* x /* nested */ y */ c*/**/d"),
            vec![
                word("a"),
                word("b"),
                word("c"),
                op("*"),
                word("d"),
                TokenKind::Eof
            ]
        );
        assert_eq!(kinds("a<--x")[..2], [word("a"), op("<")]);
        let err = tokenize("a /* b").unwrap_err();
        assert_eq!(err.span, Span::new(2, 6));
    }

    #[test]
    fn spans_are_byte_offsets() {
        let toks = tokenize("'ü' x").unwrap();
        assert_eq!(toks[0].span, Span::new(0, 4));
        assert_eq!(toks[1].span, Span::new(5, 6));
        assert_eq!(toks[2].span, Span::new(6, 6));
        let err = tokenize("é {").unwrap_err();
        assert_eq!(err.span, Span::new(3, 4));
        // Non-ASCII letters and symbols are identifier characters, as in Postgres.
        assert_eq!(kinds("a €")[1], word("€"));
    }
}
