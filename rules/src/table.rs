//! Source tables and the table patterns that rules select from.

use std::sync::Arc;

/// A replicated table as the replicator sees it: its name and its columns in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    /// Postgres connection tag (`default` unless configured otherwise).
    pub connection_tag: Arc<str>,
    pub schema: Arc<str>,
    pub name: Arc<str>,
    /// Column names in the table's order (as replication reports them).
    pub columns: Vec<Arc<str>>,
}

impl SourceTable {
    pub fn new(schema: &str, name: &str, columns: &[&str]) -> Self {
        SourceTable {
            connection_tag: Arc::from(DEFAULT_CONNECTION_TAG),
            schema: Arc::from(schema),
            name: Arc::from(name),
            columns: columns.iter().map(|c| Arc::from(*c)).collect(),
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.as_ref() == name)
    }
}

pub const DEFAULT_CONNECTION_TAG: &str = "default";

/// `[tag.][schema.]table` as written in a query's FROM; a name ending in `%` matches by prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TablePattern {
    pub connection_tag: Arc<str>,
    pub schema: Arc<str>,
    /// The table name, or the prefix of a wildcard pattern (without `%`).
    pub name: Arc<str>,
    pub wildcard: bool,
}

impl TablePattern {
    pub fn new(connection_tag: &str, schema: &str, table: &str) -> Self {
        let (name, wildcard) = match table.strip_suffix('%') {
            Some(prefix) => (prefix, true),
            None => (table, false),
        };
        TablePattern {
            connection_tag: Arc::from(connection_tag),
            schema: Arc::from(schema),
            name: Arc::from(name),
            wildcard,
        }
    }

    pub fn matches(&self, table: &SourceTable) -> bool {
        self.connection_tag == table.connection_tag
            && self.schema == table.schema
            && if self.wildcard {
                table.name.starts_with(self.name.as_ref())
            } else {
                self.name == table.name
            }
    }

    /// What a wildcard matched: the table name after the prefix.
    pub fn suffix<'t>(&self, table_name: &'t str) -> &'t str {
        table_name.get(self.name.len()..).unwrap_or_default()
    }

    /// The pattern as written (`todos_%`).
    pub fn display_name(&self) -> String {
        if self.wildcard {
            format!("{}%", self.name)
        } else {
            self.name.to_string()
        }
    }
}

/// Column names and Postgres types of the source database, for validation against a schema.
#[derive(Debug, Clone, Default)]
pub struct SourceSchema {
    pub tables: Vec<SchemaTable>,
}

#[derive(Debug, Clone)]
pub struct SchemaTable {
    pub connection_tag: String,
    pub schema: String,
    pub name: String,
    /// (column name, Postgres type name)
    pub columns: Vec<(String, String)>,
}

impl SourceSchema {
    pub fn tables_matching<'s>(
        &'s self,
        pattern: &'s TablePattern,
    ) -> impl Iterator<Item = &'s SchemaTable> + 's {
        self.tables.iter().filter(move |t| {
            let as_source = SourceTable {
                connection_tag: Arc::from(t.connection_tag.as_str()),
                schema: Arc::from(t.schema.as_str()),
                name: Arc::from(t.name.as_str()),
                columns: Vec::new(),
            };
            pattern.matches(&as_source)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_patterns_match_by_prefix() {
        let p = TablePattern::new("default", "public", "todos_%");
        assert!(p.wildcard);
        assert!(p.matches(&SourceTable::new("public", "todos_2024", &[])));
        assert!(!p.matches(&SourceTable::new("public", "todo", &[])));
        assert!(!p.matches(&SourceTable::new("other", "todos_1", &[])));
        assert_eq!(p.suffix("todos_2024"), "2024");
        let exact = TablePattern::new("default", "public", "todos");
        assert!(exact.matches(&SourceTable::new("public", "todos", &[])));
        assert!(!exact.matches(&SourceTable::new("public", "todos2", &[])));
    }
}
