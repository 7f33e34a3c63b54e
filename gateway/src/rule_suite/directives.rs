//! A suite's header: the comment lines before its first record that name its sync rules, its
//! Postgres schema and the users whose synced databases queries may read.
//!
//! ```text
//! # rules: rules.yaml
//! # schema: ../../sql/demo/schema.sql
//! # user alice: {"sub": "alice"}
//! # parameters alice: {"list": "groceries"}
//! # subscribe alice: list_todos {"list_id": "groceries"}
//! ```
//!
//! Paths are relative to the suite file. Other header comments are prose and ignored; directives
//! after the header are not directives (a typo there would otherwise pass unnoticed as a comment,
//! so an unknown `# key:` in the header is an error).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use syncgate_protocol::StreamSubscription;

use super::SuiteError;

/// What a suite's header declares.
#[derive(Debug, Clone, Default)]
pub struct SuiteHeader {
    /// `# rules:`, resolved against the suite's directory.
    pub rules: Option<PathBuf>,
    /// `# schema:` files in order, resolved against the suite's directory.
    pub schema: Vec<PathBuf>,
    /// `# user NAME:` and the `parameters`/`subscribe` lines of that user.
    pub users: BTreeMap<String, UserSpec>,
}

/// A user a suite's queries may run as (`connection NAME`).
#[derive(Debug, Clone, Default)]
pub struct UserSpec {
    /// The token's `sub`: the claims' `sub`, else the user's name.
    pub sub: String,
    /// The token's other claims.
    pub claims: Map<String, Value>,
    /// Client parameters (`request.parameters()`).
    pub parameters: Map<String, Value>,
    /// Explicit stream subscriptions.
    pub subscriptions: Vec<StreamSubscription>,
}

/// Reads the header of the suite `path` with text `text`.
pub fn parse_header(path: &Path, text: &str) -> Result<SuiteHeader, SuiteError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut header = SuiteHeader::default();
    // Users named by `parameters`/`subscribe` before their `user` line are checked at the end.
    let mut parameters: Vec<(usize, String, Map<String, Value>)> = Vec::new();
    let mut subscriptions: Vec<(usize, String, StreamSubscription)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let error = |message: String| SuiteError::Directive {
            path: path.to_owned(),
            line: line_number,
            message,
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let Some(comment) = trimmed.strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = comment.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let mut words = key.split_whitespace();
        let (Some(kind), name, None) = (words.next(), words.next(), words.next()) else {
            // Prose with a colon ("# Alice sees: her lists").
            continue;
        };
        match (kind, name) {
            ("rules", None) => {
                if header.rules.is_some() {
                    return Err(error(
                        "a second `# rules:` line; a suite has one rules file".into(),
                    ));
                }
                header.rules = Some(dir.join(non_empty(value).map_err(&error)?));
            }
            ("schema", None) => header.schema.push(dir.join(non_empty(value).map_err(&error)?)),
            ("user", Some(name)) => {
                let mut claims = json_object(value).map_err(&error)?;
                let sub = match claims.remove("sub") {
                    Some(Value::String(sub)) => sub,
                    Some(other) => return Err(error(format!("`sub` must be a string, not {other}"))),
                    None => name.to_owned(),
                };
                let spec = UserSpec {
                    sub,
                    claims,
                    ..UserSpec::default()
                };
                if header.users.insert(name.to_owned(), spec).is_some() {
                    return Err(error(format!("user {name} is declared twice")));
                }
            }
            ("parameters", Some(name)) => {
                parameters.push((line_number, name.to_owned(), json_object(value).map_err(&error)?));
            }
            ("subscribe", Some(name)) => {
                let (stream, json) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
                let stream = non_empty(stream).map_err(&error)?.to_owned();
                let parameters = if json.trim().is_empty() {
                    None
                } else {
                    Some(json_object(json).map_err(&error)?)
                };
                subscriptions.push((
                    line_number,
                    name.to_owned(),
                    StreamSubscription {
                        stream,
                        parameters,
                        override_priority: None,
                    },
                ));
            }
            ("rules" | "schema", Some(_)) | ("user" | "parameters" | "subscribe", None) => {
                return Err(error(format!(
                    "malformed `# {key}:` directive; expected `# rules: FILE`, `# schema: FILE`, \
                     `# user NAME: {{claims}}`, `# parameters NAME: {{…}}` or `# subscribe NAME: STREAM [{{…}}]`"
                )));
            }
            _ => {}
        }
    }
    let unknown_user = |line: usize, name: &str| SuiteError::Directive {
        path: path.to_owned(),
        line,
        message: format!("no `# user {name}: {{…}}` line declares user {name}"),
    };
    for (line, name, values) in parameters {
        let user = header
            .users
            .get_mut(&name)
            .ok_or_else(|| unknown_user(line, &name))?;
        user.parameters.extend(values);
    }
    for (line, name, subscription) in subscriptions {
        let user = header
            .users
            .get_mut(&name)
            .ok_or_else(|| unknown_user(line, &name))?;
        user.subscriptions.push(subscription);
    }
    Ok(header)
}

fn non_empty(value: &str) -> Result<&str, String> {
    if value.is_empty() {
        Err("the directive needs a value".into())
    } else {
        Ok(value)
    }
}

fn json_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("expected a JSON object, not {other}")),
        Err(e) => Err(format!("invalid JSON ({e}): {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_directives_resolve_against_the_suite() {
        let text = "# A suite.\n# Alice sees: her lists\n# rules: r.yaml\n# schema: ../s.sql\n# schema: d.sql\n\
                    # user alice: {\"role\": \"admin\"}\n# user bob: {\"sub\": \"u-bob\"}\n\
                    # parameters alice: {\"list\": \"l1\"}\n# subscribe bob: todos {\"id\": 1}\n\n\
                    statement ok\nSELECT 1\n# rules: ignored.yaml\n";
        let header = parse_header(Path::new("suites/a.slt"), text).expect("header");
        assert_eq!(header.rules, Some(PathBuf::from("suites/r.yaml")));
        assert_eq!(
            header.schema,
            vec![PathBuf::from("suites/../s.sql"), PathBuf::from("suites/d.sql")]
        );
        let alice = &header.users["alice"];
        assert_eq!(alice.sub, "alice");
        assert_eq!(alice.claims["role"], "admin");
        assert_eq!(alice.parameters["list"], "l1");
        let bob = &header.users["bob"];
        assert_eq!(bob.sub, "u-bob");
        assert_eq!(bob.subscriptions[0].stream, "todos");
        assert_eq!(
            bob.subscriptions[0].parameters.as_ref().expect("parameters")["id"],
            1
        );
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            ("# user alice: [1]\n", 1, "JSON object"),
            ("# rules: a.yaml\n# rules: b.yaml\n", 2, "second"),
            ("# parameters carol: {}\n", 1, "declares user carol"),
            ("# schema alice: x.sql\n", 1, "malformed"),
        ];
        for (text, line, needle) in cases {
            match parse_header(Path::new("a.slt"), text) {
                Err(SuiteError::Directive {
                    line: got, message, ..
                }) => {
                    assert_eq!(got, line, "{text}");
                    assert!(message.contains(needle), "{message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
