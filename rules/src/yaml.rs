//! A YAML tree with source positions, so every diagnostic can point into the user's file.
//!
//! Built from yaml-rust2's marked events. Scalars keep their style so that an offset inside an
//! SQL string can be mapped back to a line and column of the file (SYNC_RULES.md §10): plain and
//! quoted single-line scalars and literal block scalars (`|`) map character by character; where
//! the text was transformed (escapes, folding), positions fall back to the scalar's start.
//!
//! Node positions follow SYNC_RULES.md §10: where yaml-rust2's marks are elsewhere (a block
//! mapping at its first `:`, a block scalar at its first content line, an empty value at the
//! next token), they are moved to the node's start.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based position in the rules file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarStyle {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
    Folded,
}

#[derive(Debug, Clone, PartialEq)]
pub enum YamlKind {
    Scalar {
        value: String,
        style: ScalarStyle,
    },
    Sequence(Vec<YamlNode>),
    Mapping(Vec<(YamlNode, YamlNode)>),
    /// An alias (`*name`): resolved aliases are not needed for sync rules; treated as an unsupported value.
    Alias,
}

#[derive(Debug, Clone, PartialEq)]
pub struct YamlNode {
    pub kind: YamlKind,
    pub position: Position,
    /// Character index of the node start in the file.
    pub char_index: usize,
    /// Tag such as `!accept_potentially_dangerous_queries` (handle + suffix).
    pub tag: Option<String>,
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlSyntaxError {
    pub message: String,
    pub position: Position,
}

impl YamlNode {
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            YamlKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    pub fn as_mapping(&self) -> Option<&[(YamlNode, YamlNode)]> {
        match &self.kind {
            YamlKind::Mapping(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_sequence(&self) -> Option<&[YamlNode]> {
        match &self.kind {
            YamlKind::Sequence(items) => Some(items),
            _ => None,
        }
    }

    /// A plain scalar that is YAML-null (`~`, `null`, empty).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, YamlKind::Scalar { value, style: ScalarStyle::Plain }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// Looks up a key of a mapping node (first occurrence).
    pub fn get(&self, key: &str) -> Option<(&YamlNode, &YamlNode)> {
        self.as_mapping()?
            .iter()
            .find(|(k, _)| k.as_scalar() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// Human-readable kind, for "must be ..." messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            YamlKind::Scalar { .. } if self.is_null() => "null",
            YamlKind::Scalar { .. } => "scalar",
            YamlKind::Sequence(_) => "sequence",
            YamlKind::Mapping(_) => "mapping",
            YamlKind::Alias => "alias",
        }
    }

    /// Core-schema interpretation of a plain scalar as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.kind {
            YamlKind::Scalar {
                value,
                style: ScalarStyle::Plain,
            } => match value.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// Core-schema interpretation of a plain scalar as an integer.
    pub fn as_integer(&self) -> Option<i64> {
        match &self.kind {
            YamlKind::Scalar {
                value,
                style: ScalarStyle::Plain,
            } => {
                let v = value.as_str();
                if let Some(hex) = v.strip_prefix("0x") {
                    i64::from_str_radix(hex, 16).ok()
                } else if let Some(oct) = v.strip_prefix("0o") {
                    i64::from_str_radix(oct, 8).ok()
                } else {
                    v.parse::<i64>().ok()
                }
            }
            _ => None,
        }
    }

    /// Whether a plain scalar reads as a number (integer or float) in the core schema.
    pub fn is_numeric(&self) -> bool {
        match &self.kind {
            YamlKind::Scalar {
                value,
                style: ScalarStyle::Plain,
            } => {
                self.as_integer().is_some()
                    || (value.parse::<f64>().is_ok() && !value.eq_ignore_ascii_case("nan"))
                    || matches!(value.as_str(), ".inf" | "-.inf" | ".nan")
            }
            _ => false,
        }
    }

    /// Whether this node is a string in the core schema (quoted, block, or plain non-null/bool/number).
    pub fn is_string(&self) -> bool {
        match &self.kind {
            YamlKind::Scalar {
                style: ScalarStyle::Plain,
                ..
            } => !self.is_null() && self.as_bool().is_none() && !self.is_numeric(),
            YamlKind::Scalar { .. } => true,
            _ => false,
        }
    }
}

struct TreeBuilder {
    stack: Vec<Frame>,
    root: Option<YamlNode>,
    documents: usize,
    /// The document text, to find where block scalars start.
    chars: Vec<char>,
}

enum Frame {
    Sequence(YamlNode, Vec<YamlNode>),
    Mapping(YamlNode, Vec<YamlNode>),
}

fn position(mark: Marker) -> Position {
    Position {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl TreeBuilder {
    fn push_value(&mut self, mut node: YamlNode) {
        // yaml-rust2 marks an empty (implicit null) value at the *next* token, which may be a
        // later key lines further down. Such a value has no text of its own: report it at its
        // key (`data:` with nothing after it) or at its `-`.
        if matches!(&node.kind, YamlKind::Scalar { value, style: ScalarStyle::Plain } if value.is_empty()) {
            match self.stack.last() {
                Some(Frame::Mapping(_, items)) if items.len() % 2 == 1 => {
                    if let Some(key) = items.last() {
                        node.position = key.position;
                        node.char_index = key.char_index;
                    }
                }
                Some(Frame::Sequence(seq, items)) => {
                    if let Some((char_index, position)) =
                        block_entry(&self.chars, seq, items.len(), node.char_index)
                    {
                        node.position = position;
                        node.char_index = char_index;
                    }
                }
                _ => {}
            }
        }
        match self.stack.last_mut() {
            Some(Frame::Sequence(_, items)) | Some(Frame::Mapping(_, items)) => items.push(node),
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
        }
    }

    fn shell(kind: YamlKind, mark: Marker, tag: Option<String>) -> YamlNode {
        YamlNode {
            kind,
            position: position(mark),
            char_index: mark.index(),
            tag,
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => self.documents += 1,
            Event::Scalar(value, style, _, tag) => {
                let style = match style {
                    TScalarStyle::SingleQuoted => ScalarStyle::SingleQuoted,
                    TScalarStyle::DoubleQuoted => ScalarStyle::DoubleQuoted,
                    TScalarStyle::Literal => ScalarStyle::Literal,
                    TScalarStyle::Folded => ScalarStyle::Folded,
                    _ => ScalarStyle::Plain,
                };
                let tag = tag.map(|t| format!("{}{}", t.handle, t.suffix));
                let block = matches!(style, ScalarStyle::Literal | ScalarStyle::Folded);
                let mut node = Self::shell(YamlKind::Scalar { value, style }, mark, tag);
                // yaml-rust2 marks a block scalar at its first content line; the node starts at
                // its `|` / `>` indicator, on the line of its key or `-`.
                if block && let Some((char_index, position)) = block_indicator(&self.chars, mark) {
                    node.char_index = char_index;
                    node.position = position;
                }
                self.push_value(node);
            }
            Event::Alias(_) => self.push_value(Self::shell(YamlKind::Alias, mark, None)),
            Event::SequenceStart(_, tag) => {
                let tag = tag.map(|t| format!("{}{}", t.handle, t.suffix));
                self.stack.push(Frame::Sequence(
                    Self::shell(YamlKind::Alias, mark, tag),
                    Vec::new(),
                ));
            }
            Event::MappingStart(_, tag) => {
                let tag = tag.map(|t| format!("{}{}", t.handle, t.suffix));
                self.stack.push(Frame::Mapping(
                    Self::shell(YamlKind::Alias, mark, tag),
                    Vec::new(),
                ));
            }
            Event::SequenceEnd => {
                if let Some(Frame::Sequence(mut node, items)) = self.stack.pop() {
                    node.kind = YamlKind::Sequence(items);
                    self.push_value(node);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Mapping(mut node, items)) = self.stack.pop() {
                    // yaml-rust2 marks a block mapping at the `:` after its first key; the
                    // mapping starts at that key. (A flow mapping's mark, its `{`, comes before
                    // the first key and is kept.)
                    if let Some(first) = items.first()
                        && first.char_index < node.char_index
                    {
                        node.position = first.position;
                        node.char_index = first.char_index;
                    }
                    let mut entries = Vec::with_capacity(items.len() / 2);
                    let mut iter = items.into_iter();
                    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
                        entries.push((k, v));
                    }
                    node.kind = YamlKind::Mapping(entries);
                    self.push_value(node);
                }
            }
            _ => {}
        }
    }
}

/// The `|` / `>` indicator of the block scalar whose content yaml-rust2 marked at `mark`: on the
/// last non-blank line before the mark (or before the mark on its own line, for an empty block),
/// the first indicator followed only by chomping/indentation indicators and an optional comment.
fn block_indicator(chars: &[char], mark: Marker) -> Option<(usize, Position)> {
    let mark_index = mark.index().min(chars.len());
    let mut line = mark.line();
    let mut start = mark_index.checked_sub(mark.col())?;
    let mut end = mark_index;
    loop {
        let text = &chars[start..end];
        let text = text.strip_suffix(&['\r']).unwrap_or(text);
        if !text.iter().all(|c| c.is_whitespace()) {
            let column = text.iter().enumerate().position(|(i, c)| {
                matches!(c, '|' | '>') && {
                    let rest = &text[i + 1..];
                    let header = rest
                        .iter()
                        .take_while(|c| matches!(c, '-' | '+' | '1'..='9'))
                        .count();
                    let rest = &rest[header..];
                    let blank = rest.iter().take_while(|c| matches!(c, ' ' | '\t')).count();
                    rest.len() == blank || (blank > 0 && rest[blank] == '#')
                }
            })?;
            return Some((
                start + column,
                Position {
                    line,
                    column: column + 1,
                },
            ));
        }
        // The previous line: `start - 1` is its line break.
        end = start.checked_sub(1)?;
        start = chars[..end].iter().rposition(|c| *c == '\n').map_or(0, |p| p + 1);
        line = line.checked_sub(1)?;
    }
}

/// The `-` of item `n` (0-based) of the block sequence `seq`, searched before char `end`: the
/// `n + 1`-th `-` in the sequence's column that is followed by a blank or a line break and is
/// not in a comment. (Deeper content is indented further, so it never has a `-` in that column.)
fn block_entry(chars: &[char], seq: &YamlNode, n: usize, end: usize) -> Option<(usize, Position)> {
    if chars.get(seq.char_index) != Some(&'-') {
        return None;
    }
    let (mut line, mut column, mut in_comment) = (seq.position.line, seq.position.column, false);
    let mut count = 0;
    for i in seq.char_index..end.min(chars.len()) {
        match chars[i] {
            '\n' => {
                line += 1;
                column = 1;
                in_comment = false;
                continue;
            }
            '#' if i == 0 || matches!(chars[i - 1], ' ' | '\t' | '\n') => in_comment = true,
            '-' if !in_comment
                && column == seq.position.column
                && chars.get(i + 1).is_none_or(|c| c.is_whitespace()) =>
            {
                count += 1;
                if count == n + 1 {
                    return Some((i, Position { line, column }));
                }
            }
            _ => {}
        }
        column += 1;
    }
    None
}

/// A line with content (not blank, not only a comment) found walking back from a position.
struct ContentLine {
    /// 1-based line number.
    line: usize,
    /// Char index of the line start.
    start: usize,
    /// Char index of the first content character.
    first: usize,
}

/// The nearest line with content at or before char `index` (on `index`'s own line only the part
/// before `index` counts). `line` is the 1-based line of `index`. Used to position diagnostics that
/// yaml-rust2 marks at the token *after* the node they are about.
fn previous_content_line(chars: &[char], index: usize, line: usize) -> Option<ContentLine> {
    let mut end = index.min(chars.len());
    let mut line = line;
    loop {
        let start = chars[..end].iter().rposition(|c| *c == '\n').map_or(0, |p| p + 1);
        let text = &chars[start..end];
        // Cut a comment: `#` at the start or after a blank.
        let cut = (0..text.len())
            .find(|&i| text[i] == '#' && (i == 0 || matches!(text[i - 1], ' ' | '\t')))
            .unwrap_or(text.len());
        let content = &text[..cut];
        if let Some(first) = content.iter().position(|c| !c.is_whitespace()) {
            return Some(ContentLine {
                line,
                start,
                first: start + first,
            });
        }
        end = start.checked_sub(1)?;
        line = line.checked_sub(1)?;
    }
}

/// Where a YAML syntax error points. yaml-rust2 reports a missing `:` after a would-be key
/// ("simple key expect ':'", "simple key expected") where it notices it, at the next token, often
/// the next key; the offending node is the would-be key itself, the first thing on the previous
/// line with content. Positions past the end of the text (the scanner adds a final line break)
/// are moved to the end of the last line.
fn syntax_error_position(chars: &[char], info: &str, mark: Marker) -> Position {
    let index = mark.index().min(chars.len());
    if info.starts_with("simple key expect") {
        let line_start = chars[..index]
            .iter()
            .rposition(|c| *c == '\n')
            .map_or(0, |p| p + 1);
        let line = chars[..index].iter().filter(|c| **c == '\n').count() + 1;
        // The mark is the first token of its line (or the forced line break at the end).
        if (mark.col() == 0 || chars[line_start..index].iter().all(|c| c.is_whitespace()))
            && let Some(key) = previous_content_line(chars, index, line)
        {
            return Position {
                line: key.line,
                column: key.first - key.start + 1,
            };
        }
    }
    let lines = chars.iter().filter(|c| **c == '\n').count() + 1;
    if mark.line() > lines {
        let last_start = chars.iter().rposition(|c| *c == '\n').map_or(0, |p| p + 1);
        return Position {
            line: lines,
            column: chars.len() - last_start + 1,
        };
    }
    position(mark)
}

/// Parses a YAML document into a positioned tree. An empty document gives `Ok(None)`.
pub fn parse(text: &str) -> Result<Option<YamlNode>, YamlSyntaxError> {
    let mut builder = TreeBuilder {
        stack: Vec::new(),
        root: None,
        documents: 0,
        chars: text.chars().collect(),
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| YamlSyntaxError {
        message: format!("YAML syntax is invalid: {}", e.info()),
        position: syntax_error_position(&builder.chars, e.info(), *e.marker()),
    })?;
    if builder.documents > 1 {
        return Err(YamlSyntaxError {
            message: "YAML is invalid: the rules file must contain a single document".into(),
            position: Position { line: 1, column: 1 },
        });
    }
    Ok(builder.root)
}

/// Maps positions inside scalar values back to the file.
pub struct SourceMap<'a> {
    chars: Vec<char>,
    line_starts: Vec<usize>,
    _text: &'a str,
}

impl<'a> SourceMap<'a> {
    pub fn new(text: &'a str) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let mut line_starts = vec![0];
        for (i, c) in chars.iter().enumerate() {
            if *c == '\n' {
                line_starts.push(i + 1);
            }
        }
        SourceMap {
            chars,
            line_starts,
            _text: text,
        }
    }

    fn position_of_char(&self, index: usize) -> Position {
        let line = match self.line_starts.binary_search(&index) {
            Ok(l) => l,
            Err(l) => l - 1,
        };
        Position {
            line: line + 1,
            column: index - self.line_starts[line] + 1,
        }
    }

    /// Position of the character at `byte_offset` in a scalar's value, or the scalar's start where
    /// its text cannot be mapped back character by character.
    pub fn scalar_position(&self, node: &YamlNode, byte_offset: usize) -> Position {
        let YamlKind::Scalar { value, style } = &node.kind else {
            return node.position;
        };
        let char_offset = value
            .get(..byte_offset)
            .map_or(0, |prefix| prefix.chars().count());
        let start = node.char_index;
        match style {
            ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => {
                let content_start = if *style == ScalarStyle::Plain {
                    start
                } else {
                    start + 1
                };
                let verbatim = value
                    .chars()
                    .enumerate()
                    .all(|(i, c)| self.chars.get(content_start + i) == Some(&c));
                if verbatim {
                    self.position_of_char(content_start + char_offset)
                } else {
                    node.position
                }
            }
            ScalarStyle::Literal => {
                // The block's final line break(s) are not on a content line: an offset there
                // (the end of the SQL, e.g. "Unexpected end of input") maps to the end of the
                // last content line instead of falling back to the block's start.
                let content = value.trim_end_matches(['\n', '\r']).chars().count();
                self.literal_position(node, value, char_offset.min(content))
                    .unwrap_or(node.position)
            }
            ScalarStyle::Folded => node.position,
        }
    }

    /// In a literal block, each value line is a file line behind the block's indentation.
    fn literal_position(&self, node: &YamlNode, value: &str, char_offset: usize) -> Option<Position> {
        let (line_in_value, col_in_line) = {
            let (mut line, mut col) = (0, 0);
            for c in value.chars().take(char_offset) {
                if c == '\n' {
                    line += 1;
                    col = 0;
                } else {
                    col += 1;
                }
            }
            (line, col)
        };
        let value_lines: Vec<Vec<char>> = value.split('\n').map(|l| l.chars().collect()).collect();
        // The marker may sit on the indicator line or on the first content line: find the first
        // file line that holds the first value line behind whitespace, then walk in step.
        let first_line = self.position_of_char(node.char_index).line;
        let holds = |file_line: usize, expected: &[char]| -> Option<usize> {
            let text = self.line_text(file_line);
            if expected.is_empty() {
                return text.iter().all(|c| c.is_whitespace()).then_some(text.len());
            }
            let indent = text.len().checked_sub(expected.len())?;
            (text[..indent].iter().all(|c| *c == ' ') && &text[indent..] == expected).then_some(indent)
        };
        let total_lines = self.line_starts.len();
        let mut file_line = first_line;
        while file_line <= total_lines && holds(file_line, &value_lines[0]).is_none() {
            file_line += 1;
        }
        for expected in value_lines.iter().take(line_in_value) {
            holds(file_line, expected)?;
            file_line += 1;
        }
        if file_line > total_lines {
            return None;
        }
        let indent = holds(file_line, &value_lines[line_in_value])?;
        Some(Position {
            line: file_line,
            column: indent + col_in_line + 1,
        })
    }

    fn line_text(&self, line: usize) -> &[char] {
        let start = self.line_starts[line - 1];
        let end = self
            .line_starts
            .get(line)
            .map_or(self.chars.len(), |next| next - 1);
        let end = if end > start && self.chars.get(end - 1) == Some(&'\r') {
            end - 1
        } else {
            end
        };
        &self.chars[start..end.max(start)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> YamlNode {
        parse(text).unwrap().unwrap()
    }

    #[test]
    fn positions_are_one_based() {
        let text = "a:\n  b: x\n";
        let r = root(text);
        let (k, v) = r.get("a").unwrap();
        assert_eq!(k.position, Position { line: 1, column: 1 });
        let (k2, v2) = v.get("b").unwrap();
        assert_eq!(k2.position, Position { line: 2, column: 3 });
        assert_eq!(v2.position, Position { line: 2, column: 6 });
    }

    #[test]
    fn maps_offsets_in_plain_and_quoted_scalars() {
        let text = "q: SELECT id FROM t\nr: \"SELECT x FROM u\"\n";
        let r = root(text);
        let map = SourceMap::new(text);
        let (_, q) = r.get("q").unwrap();
        assert_eq!(map.scalar_position(q, 10), Position { line: 1, column: 14 });
        let (_, rq) = r.get("r").unwrap();
        assert_eq!(map.scalar_position(rq, 0), Position { line: 2, column: 5 });
        assert_eq!(map.scalar_position(rq, 9), Position { line: 2, column: 14 });
    }

    #[test]
    fn escaped_scalars_fall_back_to_their_start() {
        let text = "q: \"SELECT \\\"x\\\" FROM t\"\n";
        let r = root(text);
        let map = SourceMap::new(text);
        let (_, q) = r.get("q").unwrap();
        assert_eq!(map.scalar_position(q, 12), q.position);
    }

    #[test]
    fn maps_offsets_in_literal_blocks() {
        let text = "q: |\n  SELECT id\n\n  FROM t\nz: 1\n";
        let r = root(text);
        let map = SourceMap::new(text);
        let (_, q) = r.get("q").unwrap();
        assert_eq!(q.as_scalar(), Some("SELECT id\n\nFROM t\n"));
        let from = "SELECT id\n\n".len();
        assert_eq!(map.scalar_position(q, from), Position { line: 4, column: 3 });
        assert_eq!(map.scalar_position(q, from + 5), Position { line: 4, column: 8 });
        assert_eq!(map.scalar_position(q, 7), Position { line: 2, column: 10 });
    }

    #[test]
    fn block_mappings_start_at_their_first_key() {
        // yaml-rust2 marks a block mapping at the `:` of its first key.
        let r = root("# c\na:\n  b: 1\nf: {x: 1}\n");
        assert_eq!(r.position, Position { line: 2, column: 1 });
        assert_eq!(r.get("a").unwrap().1.position, Position { line: 3, column: 3 });
        assert_eq!(r.get("f").unwrap().1.position, Position { line: 4, column: 4 });
    }

    #[test]
    fn block_scalars_start_at_their_indicator() {
        let text = "a: |\n\n  x\nb: >- # note | x\n  y\nc: |\nd: 1\n";
        let r = root(text);
        assert_eq!(r.get("a").unwrap().1.position, Position { line: 1, column: 4 });
        assert_eq!(r.get("b").unwrap().1.position, Position { line: 4, column: 4 });
        assert_eq!(r.get("c").unwrap().1.position, Position { line: 6, column: 4 });
        // Offsets inside the block still map to the content lines.
        let map = SourceMap::new(text);
        assert_eq!(
            map.scalar_position(r.get("a").unwrap().1, 1),
            Position { line: 3, column: 3 }
        );
    }

    #[test]
    fn empty_values_sit_at_their_key_or_dash() {
        let r = root("a:\n  # nothing\nb:\n  -\n  # c\n  -\n  - x\n");
        assert_eq!(r.get("a").unwrap().1.position, Position { line: 1, column: 1 });
        let items = r.get("b").unwrap().1.as_sequence().unwrap();
        assert_eq!(items[0].position, Position { line: 4, column: 3 });
        assert_eq!(items[1].position, Position { line: 6, column: 3 });
    }

    #[test]
    fn missing_colon_points_at_the_would_be_key() {
        let err = parse("a: 1\nb\n# c\n\nc: 2\n").unwrap_err();
        assert_eq!(err.position, Position { line: 2, column: 1 });
        // At the end of a text without a final line break (the scanner adds one).
        let err = parse("a: 1\nbad").unwrap_err();
        assert_eq!(err.position, Position { line: 2, column: 1 });
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(err.message.contains("invalid"), "{}", err.message);
        assert!(err.position.line >= 1);
    }

    #[test]
    fn tags_are_kept() {
        let r = root("x: !accept_potentially_dangerous_queries true\n");
        let (_, v) = r.get("x").unwrap();
        assert_eq!(v.tag.as_deref(), Some("!accept_potentially_dangerous_queries"));
    }

    #[test]
    fn core_schema_scalars() {
        let r = root("a: 5\nb: true\nc: '5'\nd: ~\ne: text\n");
        assert_eq!(r.get("a").unwrap().1.as_integer(), Some(5));
        assert_eq!(r.get("b").unwrap().1.as_bool(), Some(true));
        assert!(r.get("c").unwrap().1.is_string());
        assert!(r.get("d").unwrap().1.is_null());
        assert!(r.get("e").unwrap().1.is_string());
        assert!(!r.get("a").unwrap().1.is_string());
    }
}
