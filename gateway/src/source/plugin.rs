//! The syncgate output plugin's stream (pg-ext/, format in docs/pg-ext.md) decoded into the same
//! [`SourceEvent`]s as pgoutput, so the replicator does not know which plugin a version streams through.
//!
//! The plugin's messages are decoded in place ([`plugin_format::decode`] borrows from the received
//! bytes); the only copies are the ones the owned [`SourceEvent`] types need (one `String` per text value,
//! exactly as on the pgoutput path).

use std::collections::HashMap;
use std::sync::Arc;

use syncgate_protocol::plugin_format::{self, Message, OldValues, Tuple, Value};
use syncgate_rules::TablePattern;

use super::SourceError;
use super::event::{ColumnInfo, ColumnValue, OldRow, RelationInfo, SourceEvent};

/// Turns plugin messages into [`SourceEvent`]s, remembering relations by oid.
#[derive(Debug, Default)]
pub struct PluginDecoder {
    relations: HashMap<u32, Arc<RelationInfo>>,
}

impl PluginDecoder {
    pub fn new() -> PluginDecoder {
        PluginDecoder::default()
    }

    /// One XLogData payload (one plugin write) as an event.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<SourceEvent, SourceError> {
        let message = plugin_format::decode(bytes)
            .map_err(|error| SourceError::Protocol(format!("syncgate output plugin message: {error}")))?;
        Ok(match message {
            Message::Begin(begin) => SourceEvent::Begin {
                xid: begin.xid,
                final_lsn: begin.final_lsn,
            },
            Message::Commit(commit) => SourceEvent::Commit {
                commit_lsn: commit.commit_lsn,
                end_lsn: commit.end_lsn,
                commit_time: commit.commit_time,
            },
            Message::Relation(relation) => {
                let info = Arc::new(RelationInfo {
                    oid: relation.oid,
                    schema: relation.schema.to_owned(),
                    name: relation.name.to_owned(),
                    replica_identity: relation.replica_identity,
                    columns: relation
                        .columns
                        .iter()
                        .map(|c| ColumnInfo {
                            name: c.name.to_owned(),
                            type_oid: c.type_oid,
                            is_key: c.is_key,
                        })
                        .collect(),
                });
                self.relations.insert(relation.oid, Arc::clone(&info));
                SourceEvent::Relation(info)
            }
            Message::Insert { relation_oid, new } => {
                let relation = self.relation(relation_oid)?;
                let new = tuple_values(&relation, new)?;
                SourceEvent::Insert { relation, new }
            }
            Message::Update {
                relation_oid,
                old,
                new,
            } => {
                let relation = self.relation(relation_oid)?;
                let old = old.map(|old| old_row(&relation, old)).transpose()?;
                let new = tuple_values(&relation, new)?;
                SourceEvent::Update { relation, old, new }
            }
            Message::Delete { relation_oid, old } => {
                let relation = self.relation(relation_oid)?;
                // pgoutput never sends a DELETE without old values (it skips tables that have none);
                // the plugin does for REPLICA IDENTITY NOTHING, and such a row cannot be identified.
                let old = old.ok_or_else(|| {
                    SourceError::Protocol(format!(
                        "DELETE on {}.{} carries no replica identity; give the table a primary key or \
                         REPLICA IDENTITY FULL",
                        relation.schema, relation.name
                    ))
                })?;
                SourceEvent::Delete {
                    relation: Arc::clone(&relation),
                    old: old_row(&relation, old)?,
                }
            }
            Message::Truncate(truncate) => SourceEvent::Truncate {
                relations: truncate
                    .relation_oids
                    .iter()
                    .map(|oid| self.relation(oid))
                    .collect::<Result<_, _>>()?,
            },
            Message::Message(message) => SourceEvent::Message {
                prefix: message.prefix.to_owned(),
                content: message.content.to_vec(),
                transactional: message.transactional,
                lsn: message.lsn,
            },
        })
    }

    fn relation(&self, oid: u32) -> Result<Arc<RelationInfo>, SourceError> {
        self.relations.get(&oid).cloned().ok_or_else(|| {
            // The plugin describes a relation before its first change in every session.
            SourceError::Protocol(format!("change for relation {oid} before its RELATION message"))
        })
    }
}

fn old_row(relation: &RelationInfo, old: OldValues<'_>) -> Result<OldRow, SourceError> {
    Ok(match old {
        OldValues::Key(tuple) => OldRow::Key(tuple_values(relation, tuple)?),
        OldValues::Row(tuple) => OldRow::Full(tuple_values(relation, tuple)?),
    })
}

fn tuple_values(relation: &RelationInfo, tuple: Tuple<'_>) -> Result<Vec<ColumnValue>, SourceError> {
    if tuple.len() != relation.columns.len() {
        return Err(SourceError::Protocol(format!(
            "tuple for {}.{} has {} columns, its RELATION message {}",
            relation.schema,
            relation.name,
            tuple.len(),
            relation.columns.len()
        )));
    }
    Ok(tuple
        .values()
        .map(|value| match value {
            Value::Null => ColumnValue::Null,
            Value::UnchangedToast => ColumnValue::UnchangedToast,
            Value::Text(text) => ColumnValue::Text(text.to_owned()),
        })
        .collect())
}

/// The plugin's `tables` option for the rules' table patterns: `schema.table` or `schema.prefix%`,
/// comma-separated, a name double-quoted when it contains `.`, `,`, `"` or surrounding spaces (see
/// [`plugin_format::parse_tables_option`]). `None` when the rules read no table: the plugin would then
/// send every table, so the caller must not start with an empty filter.
pub fn tables_option(patterns: &[TablePattern]) -> Option<String> {
    let entries: Vec<String> = patterns
        .iter()
        .map(|pattern| {
            let table = if pattern.wildcard {
                format!("{}%", pattern.name)
            } else {
                pattern.name.to_string()
            };
            format!("{}.{}", quote_name(&pattern.schema), quote_name(&table))
        })
        .collect();
    (!entries.is_empty()).then(|| entries.join(","))
}

fn quote_name(name: &str) -> String {
    let needs_quotes = name.is_empty() || name.contains(['.', ',', '"']) || name.trim() != name;
    if needs_quotes {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use syncgate_protocol::plugin_format::{
        OldKind, encode_column, encode_delete_start, encode_insert_start, encode_null, encode_relation_start,
        encode_text, encode_truncate, encode_tuple_start, encode_unchanged_toast, encode_update_start,
    };

    use super::*;
    use crate::source::ReplicaIdentity;

    fn relation_message() -> Vec<u8> {
        let mut out = Vec::new();
        encode_relation_start(&mut out, 42, ReplicaIdentity::Default, b"public", b"items", 2);
        encode_column(&mut out, b"id", 23, -1, true);
        encode_column(&mut out, b"big", 25, -1, false);
        out
    }

    #[test]
    fn keeps_null_text_and_unchanged_toast_apart() {
        let mut decoder = PluginDecoder::new();
        let SourceEvent::Relation(info) = decoder.decode(&relation_message()).unwrap() else {
            panic!("relation")
        };
        assert_eq!((info.schema.as_str(), info.name.as_str()), ("public", "items"));
        assert!(info.columns[0].is_key && !info.columns[1].is_key);

        let mut update = Vec::new();
        encode_update_start(&mut update, 42, OldKind::Key);
        encode_tuple_start(&mut update, 2);
        encode_text(&mut update, b"1");
        encode_null(&mut update);
        encode_tuple_start(&mut update, 2);
        encode_text(&mut update, b"2");
        encode_unchanged_toast(&mut update);
        let SourceEvent::Update { old, new, .. } = decoder.decode(&update).unwrap() else {
            panic!("update")
        };
        assert_eq!(
            old,
            Some(OldRow::Key(vec![
                ColumnValue::Text("1".into()),
                ColumnValue::Null
            ]))
        );
        assert_eq!(
            new,
            vec![ColumnValue::Text("2".into()), ColumnValue::UnchangedToast]
        );

        let mut delete = Vec::new();
        encode_delete_start(&mut delete, 42, OldKind::Row);
        encode_tuple_start(&mut delete, 2);
        encode_text(&mut delete, b"2");
        encode_text(&mut delete, b"x");
        let SourceEvent::Delete { old, .. } = decoder.decode(&delete).unwrap() else {
            panic!("delete")
        };
        assert_eq!(
            old,
            OldRow::Full(vec![ColumnValue::Text("2".into()), ColumnValue::Text("x".into())])
        );

        let mut truncate = Vec::new();
        encode_truncate(&mut truncate, false, false, &[42]);
        let SourceEvent::Truncate { relations } = decoder.decode(&truncate).unwrap() else {
            panic!("truncate")
        };
        assert_eq!(relations, vec![info]);
    }

    #[test]
    fn change_before_relation_wrong_width_or_no_identity_is_a_protocol_error() {
        let mut insert = Vec::new();
        encode_insert_start(&mut insert, 42);
        encode_tuple_start(&mut insert, 1);
        encode_null(&mut insert);
        let mut decoder = PluginDecoder::new();
        let error = decoder.decode(&insert).unwrap_err();
        assert!(error.to_string().contains("before its RELATION"), "{error}");
        decoder.decode(&relation_message()).unwrap();
        let error = decoder.decode(&insert).unwrap_err();
        assert!(error.to_string().contains("has 1 columns"), "{error}");
        let mut delete = Vec::new();
        encode_delete_start(&mut delete, 42, OldKind::None);
        let error = decoder.decode(&delete).unwrap_err();
        assert!(error.to_string().contains("no replica identity"), "{error}");
        let error = decoder.decode(b"X").unwrap_err();
        assert!(matches!(error, SourceError::Protocol(_)), "{error}");
    }

    #[test]
    fn tables_option_round_trips_through_the_plugins_parser() {
        let patterns = vec![
            TablePattern::new("default", "public", "todos"),
            TablePattern::new("default", "public", "todos_%"),
            TablePattern::new("default", "my.schema", "Odd \"name\""),
            TablePattern::new("default", "s", "a,b%"),
        ];
        let option = tables_option(&patterns).expect("tables");
        let parsed = plugin_format::parse_tables_option(&option).expect("parses");
        let expected: Vec<(String, String, bool)> = patterns
            .iter()
            .map(|p| (p.schema.to_string(), p.name.to_string(), p.wildcard))
            .collect();
        let got: Vec<(String, String, bool)> = parsed
            .into_iter()
            .map(|p| (p.schema, p.name, p.wildcard))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(tables_option(&[]), None);
    }
}
