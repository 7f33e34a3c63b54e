//! The typed change model, decoded from pgoutput (here) or from the syncgate output plugin
//! ([`super::plugin`]).
//!
//! Values stay in Postgres text form. Three states of a column are kept apart on purpose: SQL NULL, a
//! text value, and "unchanged TOAST" (`'u'`): an out-of-line value an UPDATE did not touch, which
//! pgoutput does not send. Turning the last into NULL would erase data, so the replicator must merge it
//! with the stored row instead.

use std::collections::HashMap;
use std::sync::Arc;

use pg_walstream::{ColumnData, LogicalReplicationMessage, TupleData};

use super::{Lsn, SourceError};

/// `pg_class.relreplident`: which old values DELETE and UPDATE carry (`Nothing`: UPDATE and DELETE cannot
/// be replicated). The same type as the output plugin's format.
pub use syncgate_protocol::plugin_format::ReplicaIdentity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the key pgoutput sends for DELETE and key-changing UPDATE).
    pub is_key: bool,
}

/// A table as pgoutput describes it. Sent before the first change of a table in each session and
/// again after its schema changes, so the latest one wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    Null,
    Text(String),
    /// An out-of-line value the change did not touch and pgoutput did not send. Never NULL.
    UnchangedToast,
}

/// The old values an UPDATE or DELETE carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow {
    /// Replica identity key only ('K'): non-key columns are `Null` placeholders, not data.
    Key(Vec<ColumnValue>),
    /// The whole old row ('O', replica identity FULL).
    Full(Vec<ColumnValue>),
}

impl OldRow {
    pub fn values(&self) -> &[ColumnValue] {
        match self {
            OldRow::Key(values) | OldRow::Full(values) => values,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    Begin {
        xid: u32,
        /// The commit's LSN, known up front.
        final_lsn: Lsn,
    },
    /// Ack `end_lsn` (never `commit_lsn`) once the transaction is durable.
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        /// Commit time in microseconds since 2000-01-01 UTC (Postgres's epoch), for lag reporting.
        commit_time: i64,
    },
    Relation(Arc<RelationInfo>),
    Insert {
        relation: Arc<RelationInfo>,
        new: Vec<ColumnValue>,
    },
    Update {
        relation: Arc<RelationInfo>,
        /// `None` when neither key nor row changed in a way that sends old values (default identity,
        /// key unchanged).
        old: Option<OldRow>,
        new: Vec<ColumnValue>,
    },
    Delete {
        relation: Arc<RelationInfo>,
        old: OldRow,
    },
    Truncate {
        relations: Vec<Arc<RelationInfo>>,
    },
    /// `pg_logical_emit_message`. Non-transactional messages arrive outside Begin/Commit.
    Message {
        prefix: String,
        content: Vec<u8>,
        transactional: bool,
        lsn: Lsn,
    },
}

/// Turns pgoutput messages into [`SourceEvent`]s, remembering relations by oid.
#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Arc<RelationInfo>>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// `Ok(None)` for messages syncgate ignores (Type, Origin, and the streaming/two-phase variants we
    /// do not request).
    pub fn decode(&mut self, message: LogicalReplicationMessage) -> Result<Option<SourceEvent>, SourceError> {
        use LogicalReplicationMessage as M;
        let event = match message {
            M::Begin { final_lsn, xid, .. } => SourceEvent::Begin {
                xid,
                final_lsn: Lsn(final_lsn),
            },
            M::Commit {
                commit_lsn,
                end_lsn,
                timestamp,
                ..
            } => SourceEvent::Commit {
                commit_lsn: Lsn(commit_lsn),
                end_lsn: Lsn(end_lsn),
                commit_time: timestamp,
            },
            M::Relation {
                relation_id,
                namespace,
                relation_name,
                replica_identity,
                columns,
            } => {
                let info = Arc::new(RelationInfo {
                    oid: relation_id,
                    schema: namespace.to_string(),
                    name: relation_name.to_string(),
                    replica_identity: ReplicaIdentity::from_byte(replica_identity).ok_or_else(|| {
                        SourceError::Protocol(format!("unknown replica identity {replica_identity:#x}"))
                    })?,
                    columns: columns
                        .iter()
                        .map(|c| ColumnInfo {
                            name: c.name.to_string(),
                            type_oid: c.type_id,
                            is_key: c.is_key(),
                        })
                        .collect(),
                });
                self.relations.insert(relation_id, Arc::clone(&info));
                SourceEvent::Relation(info)
            }
            M::Insert { relation_id, tuple } => {
                let relation = self.relation(relation_id)?;
                let new = tuple_values(&relation, &tuple)?;
                SourceEvent::Insert { relation, new }
            }
            M::Update {
                relation_id,
                old_tuple,
                new_tuple,
                key_type,
            } => {
                let relation = self.relation(relation_id)?;
                let old = match old_tuple {
                    None => None,
                    Some(tuple) => Some(old_row(&relation, &tuple, key_type.unwrap_or('K'))?),
                };
                let new = tuple_values(&relation, &new_tuple)?;
                SourceEvent::Update { relation, old, new }
            }
            M::Delete {
                relation_id,
                old_tuple,
                key_type,
            } => {
                let relation = self.relation(relation_id)?;
                let old = old_row(&relation, &old_tuple, key_type)?;
                SourceEvent::Delete { relation, old }
            }
            M::Truncate { relation_ids, .. } => SourceEvent::Truncate {
                relations: relation_ids
                    .into_iter()
                    .map(|id| self.relation(id))
                    .collect::<Result<_, _>>()?,
            },
            M::Message {
                flags,
                lsn,
                prefix,
                content,
            } => SourceEvent::Message {
                prefix,
                content: content.to_vec(),
                transactional: flags & 1 == 1,
                lsn: Lsn(lsn),
            },
            _ => return Ok(None),
        };
        Ok(Some(event))
    }

    fn relation(&self, oid: u32) -> Result<Arc<RelationInfo>, SourceError> {
        self.relations.get(&oid).cloned().ok_or_else(|| {
            // pgoutput always describes a relation before its first change in a session.
            SourceError::Protocol(format!("change for relation {oid} before its Relation message"))
        })
    }
}

fn old_row(relation: &RelationInfo, tuple: &TupleData, key_type: char) -> Result<OldRow, SourceError> {
    let values = tuple_values(relation, tuple)?;
    match key_type {
        'K' => Ok(OldRow::Key(values)),
        'O' => Ok(OldRow::Full(values)),
        other => Err(SourceError::Protocol(format!("unknown old tuple kind {other:?}"))),
    }
}

fn tuple_values(relation: &RelationInfo, tuple: &TupleData) -> Result<Vec<ColumnValue>, SourceError> {
    if tuple.column_count() != relation.columns.len() {
        return Err(SourceError::Protocol(format!(
            "tuple for {}.{} has {} columns, its Relation message {}",
            relation.schema,
            relation.name,
            tuple.column_count(),
            relation.columns.len()
        )));
    }
    (0..tuple.column_count())
        .map(|i| match tuple.get_column(i) {
            Some(column) => column_value(relation, i, column),
            None => Err(SourceError::Protocol(format!("missing column {i}"))),
        })
        .collect()
}

fn column_value(
    relation: &RelationInfo,
    index: usize,
    column: &ColumnData,
) -> Result<ColumnValue, SourceError> {
    if column.is_null() {
        return Ok(ColumnValue::Null);
    }
    if column.is_unchanged() {
        return Ok(ColumnValue::UnchangedToast);
    }
    if column.is_binary() {
        // We never ask for binary mode; a binary value means the session is not what we started.
        return Err(SourceError::Protocol(
            "binary column value in a text-mode stream".into(),
        ));
    }
    match column.as_string() {
        Some(text) => Ok(ColumnValue::Text(text)),
        None => Err(SourceError::Protocol(format!(
            "column {} of {}.{} is not valid UTF-8",
            relation.columns.get(index).map_or("?", |c| c.name.as_str()),
            relation.schema,
            relation.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use pg_walstream::ColumnInfo as PgColumn;

    use super::*;

    fn relation() -> LogicalReplicationMessage {
        LogicalReplicationMessage::Relation {
            relation_id: 42,
            namespace: "public".into(),
            relation_name: "items".into(),
            replica_identity: b'd',
            columns: vec![
                PgColumn::new(1, "id".into(), 23, -1),
                PgColumn::new(0, "big".into(), 25, -1),
            ],
        }
    }

    #[test]
    fn keeps_null_text_and_unchanged_toast_apart() {
        let mut decoder = Decoder::new();
        let Some(SourceEvent::Relation(info)) = decoder.decode(relation()).unwrap() else {
            panic!()
        };
        assert_eq!(info.replica_identity, ReplicaIdentity::Default);
        assert!(info.columns[0].is_key && !info.columns[1].is_key);
        let update = LogicalReplicationMessage::Update {
            relation_id: 42,
            old_tuple: Some(TupleData::new(vec![
                ColumnData::text(b"1".to_vec()),
                ColumnData::null(),
            ])),
            new_tuple: TupleData::new(vec![ColumnData::text(b"2".to_vec()), ColumnData::unchanged()]),
            key_type: Some('K'),
        };
        let Some(SourceEvent::Update { old, new, .. }) = decoder.decode(update).unwrap() else {
            panic!()
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
    }

    #[test]
    fn change_before_relation_or_with_wrong_width_is_a_protocol_error() {
        let insert = |columns| LogicalReplicationMessage::Insert {
            relation_id: 42,
            tuple: TupleData::new(columns),
        };
        let mut decoder = Decoder::new();
        let error = decoder.decode(insert(vec![ColumnData::null()])).unwrap_err();
        assert!(matches!(error, SourceError::Protocol(_)), "{error}");
        decoder.decode(relation()).unwrap();
        let error = decoder.decode(insert(vec![ColumnData::null()])).unwrap_err();
        assert!(error.to_string().contains("has 1 columns"), "{error}");
    }
}
