//! The app's schema: tables with typed columns, declared in JSON (docs/client.md).
//!
//! Synced rows are stored schemaless (one JSON document per `(type, id)` in `sg_data`); each declared table
//! becomes a VIEW with typed columns over those documents, plus INSTEAD OF triggers that write the document
//! and append to the upload queue in the same statement (hence the same transaction). A schema change only
//! drops and recreates views, triggers and indexes: no synced data is migrated, and rows of types no schema
//! declared yet are already there when a later schema declares them.

use std::collections::HashSet;

use crate::error::ClientError;

/// `{"tables": [...]}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    pub tables: Vec<Table>,
}

/// One app table; `id` (text) is implicit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    #[serde(default)]
    pub indexes: Vec<Index>,
    /// Never synced nor uploaded: local state of the app.
    #[serde(default)]
    pub local_only: bool,
    /// Writes are uploaded but not kept locally (e.g. logs, events).
    #[serde(default)]
    pub insert_only: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Text,
    Integer,
    Real,
}

impl ColumnType {
    fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "TEXT",
            ColumnType::Integer => "INTEGER",
            ColumnType::Real => "REAL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub name: String,
    pub columns: Vec<String>,
}

/// Largest op id / write checkpoint: a local write sets the write-checkpoint target to it, so nothing but
/// a server-issued id can satisfy the apply gate (PROTOCOL §4.3).
pub(crate) const WRITE_CHECKPOINT_SENTINEL: &str = "9223372036854775807";

impl Schema {
    /// Parses and validates a schema file's JSON text.
    pub fn from_json(text: &str) -> Result<Schema, ClientError> {
        let schema: Schema = serde_json::from_str(text).map_err(ClientError::SchemaJson)?;
        schema.validate()?;
        Ok(schema)
    }

    /// Parses a schema file: JSON, or YAML of the same shape (anything not starting with `{`).
    pub fn from_text(text: &str) -> Result<Schema, ClientError> {
        if text.trim_start().starts_with('{') {
            return Self::from_json(text);
        }
        let documents = yaml_rust2::YamlLoader::load_from_str(text)
            .map_err(|e| ClientError::SchemaYaml(e.to_string()))?;
        let [document] = documents.as_slice() else {
            return Err(ClientError::SchemaYaml(format!(
                "expected one YAML document, found {}",
                documents.len()
            )));
        };
        let schema: Schema =
            serde_json::from_value(yaml_to_json(document)?).map_err(ClientError::SchemaJson)?;
        schema.validate()?;
        Ok(schema)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a schema has string keys and plain values")
    }

    /// Names must be unique, non-empty, not `id` for columns, and must not collide with internal tables.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |message: String| Err(ClientError::InvalidSchema(message));
        let mut tables = HashSet::new();
        for table in &self.tables {
            if table.name.is_empty() || table.name.to_ascii_lowercase().starts_with("sg_") {
                return invalid(format!(
                    "table name {:?} is empty or starts with the reserved prefix sg_",
                    table.name
                ));
            }
            if !tables.insert(table.name.to_ascii_lowercase()) {
                return invalid(format!("table {:?} is declared twice", table.name));
            }
            if table.local_only && table.insert_only {
                return invalid(format!(
                    "table {:?} cannot be both local_only and insert_only",
                    table.name
                ));
            }
            let mut columns = HashSet::new();
            for column in &table.columns {
                if column.name.is_empty() || column.name.eq_ignore_ascii_case("id") {
                    return invalid(format!(
                        "table {:?}: column name {:?} is empty or `id` (id is implicit)",
                        table.name, column.name
                    ));
                }
                if !columns.insert(column.name.to_ascii_lowercase()) {
                    return invalid(format!(
                        "table {:?}: column {:?} is declared twice",
                        table.name, column.name
                    ));
                }
            }
            for index in &table.indexes {
                if index.columns.is_empty() {
                    return invalid(format!(
                        "index {:?} of {:?} has no columns",
                        index.name, table.name
                    ));
                }
                if let Some(missing) = index
                    .columns
                    .iter()
                    .find(|c| !c.eq_ignore_ascii_case("id") && !columns.contains(&c.to_ascii_lowercase()))
                {
                    return invalid(format!(
                        "index {:?} of {:?} names the unknown column {missing:?}",
                        index.name, table.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Statements creating the views, triggers and indexes of this schema.
    pub(crate) fn create_statements(&self) -> Vec<String> {
        self.tables.iter().flat_map(Table::create_statements).collect()
    }

    /// Statements dropping what [`Schema::create_statements`] created.
    pub(crate) fn drop_statements(&self) -> Vec<String> {
        let mut statements = Vec::new();
        for table in &self.tables {
            for index in &table.indexes {
                statements.push(format!("DROP INDEX IF EXISTS {}", table.index_name(index)));
            }
            // Dropping the view drops its triggers.
            statements.push(format!("DROP VIEW IF EXISTS {}", quote_identifier(&table.name)));
        }
        statements
    }
}

impl Table {
    /// The internal table holding this table's rows.
    fn storage_table(&self) -> &'static str {
        if self.local_only {
            "sg_local_data"
        } else {
            "sg_data"
        }
    }

    fn index_name(&self, index: &Index) -> String {
        quote_identifier(&format!("sg_index_{}_{}", self.name, index.name))
    }

    /// `CAST(json_extract(data, '$."col"') AS TYPE)`: the typed value of one column; also the indexed
    /// expression, so an index matches the view's column exactly.
    fn column_expression(column: &Column) -> String {
        format!(
            "CAST(json_extract(data, {}) AS {})",
            quote_literal(&json_path(&column.name)),
            column.column_type.sql()
        )
    }

    /// `json_object('a', NEW."a", ...)`: the document of the row being written.
    fn document_of(&self, row: &str) -> String {
        let mut parts = Vec::with_capacity(self.columns.len());
        for column in &self.columns {
            parts.push(format!(
                "{}, {row}.{}",
                quote_literal(&column.name),
                quote_identifier(&column.name)
            ));
        }
        format!("json_object({})", parts.join(", "))
    }

    fn create_statements(&self) -> Vec<String> {
        let name = quote_identifier(&self.name);
        let type_literal = quote_literal(&self.name);
        let storage = self.storage_table();
        let mut columns = vec!["id".to_owned()];
        for column in &self.columns {
            columns.push(format!(
                "{} AS {}",
                Self::column_expression(column),
                quote_identifier(&column.name)
            ));
        }
        let mut statements = vec![format!(
            "CREATE VIEW {name} AS SELECT {} FROM {storage} WHERE type = {type_literal}",
            columns.join(", ")
        )];

        let new_document = self.document_of("NEW");
        let old_document = self.document_of("OLD");
        let require_id = "SELECT RAISE(ABORT, 'id is required: insert a text id') WHERE NEW.id IS NULL;";
        // A local write invalidates any write checkpoint seen so far (PROTOCOL §4.3).
        let gate = format!(
            "INSERT OR REPLACE INTO sg_kv(key, value) VALUES ('write_checkpoint_target', '{WRITE_CHECKPOINT_SENTINEL}');"
        );
        let queue = |op: &str, data: &str| {
            format!(
                "INSERT INTO sg_crud(tx_id, data) VALUES (NULL, json_object('op', '{op}', 'type', {type_literal}, 'id', {}, 'data', json({data})));",
                if op == "DELETE" { "OLD.id" } else { "NEW.id" }
            )
        };
        let trigger = |what: &str, body: String| {
            format!(
                "CREATE TRIGGER {} INSTEAD OF {what} ON {name} FOR EACH ROW BEGIN {body} END",
                quote_identifier(&format!("sg_{}_{}", what.to_ascii_lowercase(), self.name))
            )
        };

        if self.insert_only {
            statements.push(trigger(
                "INSERT",
                format!("{require_id} {} {gate}", queue("PUT", &new_document)),
            ));
            return statements;
        }
        let (insert_queue, update_queue, delete_queue) = if self.local_only {
            (String::new(), String::new(), String::new())
        } else {
            // PATCH carries the changed columns only.
            let changed = format!(
                "(SELECT json_group_object(n.key, n.value) FROM json_each({new_document}) n \
                 JOIN json_each({old_document}) o ON o.key = n.key WHERE n.value IS NOT o.value \
                 OR n.type IS NOT o.type)"
            );
            (
                format!("{} {gate}", queue("PUT", &new_document)),
                format!("{} {gate}", queue("PATCH", &changed)),
                format!("{} {gate}", queue("DELETE", "NULL")),
            )
        };
        // Live queries over this table re-run when its version moves (LocalDatabase::watch). An upsert:
        // the row keeps its rowid, by which the change hooks know the table.
        let bump = format!(
            "INSERT INTO sg_table_versions(type, version) VALUES ({type_literal}, 1) \
             ON CONFLICT(type) DO UPDATE SET version = version + 1;"
        );
        statements.push(trigger(
            "INSERT",
            format!(
                "{require_id} INSERT INTO {storage}(type, id, data) VALUES ({type_literal}, NEW.id, {new_document}); {bump} {insert_queue}"
            ),
        ));
        statements.push(trigger(
            "UPDATE",
            format!(
                "SELECT RAISE(ABORT, 'the id of a row cannot change') WHERE NEW.id IS NOT OLD.id; \
                 UPDATE {storage} SET data = {new_document} WHERE type = {type_literal} AND id = OLD.id; \
                 {bump} {update_queue}"
            ),
        ));
        statements.push(trigger(
            "DELETE",
            format!(
                "DELETE FROM {storage} WHERE type = {type_literal} AND id = OLD.id; {bump} {delete_queue}"
            ),
        ));
        for index in &self.indexes {
            let expressions: Vec<String> = index
                .columns
                .iter()
                .map(|name| {
                    self.columns
                        .iter()
                        .find(|c| c.name.eq_ignore_ascii_case(name))
                        .map_or_else(|| "id".to_owned(), Self::column_expression)
                })
                .collect();
            // A partial index per table: the view's `WHERE type = ...` lets the planner use it.
            statements.push(format!(
                "CREATE INDEX {} ON {storage}({}) WHERE type = {type_literal}",
                self.index_name(index),
                expressions.join(", ")
            ));
        }
        statements
    }
}

/// A YAML value as JSON (only what a schema file needs: maps with string keys, lists, scalars).
fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Result<serde_json::Value, ClientError> {
    use serde_json::Value;
    use yaml_rust2::Yaml;
    Ok(match yaml {
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(text.clone()), Value::Number),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::Null,
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map {
                let Yaml::String(key) = key else {
                    return Err(ClientError::SchemaYaml(format!(
                        "map keys must be strings, found {key:?}"
                    )));
                };
                object.insert(key.clone(), yaml_to_json(value)?);
            }
            Value::Object(object)
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err(ClientError::SchemaYaml(
                "aliases are not supported in schema files".to_owned(),
            ));
        }
    })
}

/// `"name"` with embedded quotes doubled.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The JSON path of a top-level key, quoted so any column name works.
fn json_path(key: &str) -> String {
    format!("$.\"{}\"", key.replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let schema = Schema::from_json(
            r#"{"tables": [{"name": "todos", "columns": [{"name": "title", "type": "text"},
                {"name": "done", "type": "integer"}], "indexes": [{"name": "by_title", "columns": ["title"]}],
                "local_only": false, "insert_only": false}]}"#,
        )
        .expect("valid");
        assert_eq!(schema.tables[0].columns[1].column_type, ColumnType::Integer);
    }

    #[test]
    fn yaml_reads_like_json() {
        let yaml = Schema::from_text(
            "tables:\n  - name: todos\n    columns:\n      - {name: title, type: text}\n      - name: done\n        type: integer\n    insert_only: true\n",
        )
        .expect("yaml schema");
        let json = Schema::from_text(
            r#"{"tables": [{"name": "todos", "insert_only": true,
                "columns": [{"name": "title", "type": "text"}, {"name": "done", "type": "integer"}]}]}"#,
        )
        .expect("json schema");
        assert_eq!(yaml, json);
        assert!(matches!(
            Schema::from_text("tables: [{name: t, colums: []}]"),
            Err(ClientError::SchemaJson(_))
        ));
    }

    #[test]
    fn rejects_an_explicit_id_column_and_unknown_index_columns() {
        let id =
            Schema::from_json(r#"{"tables": [{"name": "t", "columns": [{"name": "id", "type": "text"}]}]}"#);
        assert!(matches!(id, Err(ClientError::InvalidSchema(_))));
        let index = Schema::from_json(
            r#"{"tables": [{"name": "t", "columns": [], "indexes": [{"name": "i", "columns": ["x"]}]}]}"#,
        );
        assert!(matches!(index, Err(ClientError::InvalidSchema(_))));
        let kind =
            Schema::from_json(r#"{"tables": [{"name": "t", "columns": [{"name": "x", "type": "blob"}]}]}"#);
        assert!(matches!(kind, Err(ClientError::SchemaJson(_))));
    }
}
