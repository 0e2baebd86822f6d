//! The schema: which tables sync, their typed columns, the version they appeared in, their parents (for
//! cascading deletes) and owner columns. Built from the `[tables.*]` configuration and checked once, so no
//! unchecked name ever reaches SQL.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::{CoreError, is_valid_name};

/// The type of a column's values. Any column may also hold null.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Number,
    Boolean,
    Json,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Number => "number",
            ColumnType::Boolean => "boolean",
            ColumnType::Json => "json",
        }
    }
}

/// A column as configured: either just its type (`title = "string"`) or a table with a `since` version.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ColumnConfig {
    Type(ColumnType),
    Spec(ColumnSpec),
}

/// The long form of a column: `{ type = "number", since = 2 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    #[serde(rename = "type")]
    pub ty: ColumnType,
    #[serde(default)]
    pub since: Option<u32>,
}

/// A parent declaration: rows of this table whose `column` holds a parent id are deleted with that parent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentConfig {
    pub table: String,
    pub column: String,
}

/// One `[tables.NAME]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub columns: BTreeMap<String, ColumnConfig>,
    /// The schema version the table appeared in; clients on an older version do not receive it.
    #[serde(default)]
    pub since: Option<u32>,
    #[serde(default)]
    pub parent: Option<ParentConfig>,
    #[serde(default)]
    pub parents: Vec<ParentConfig>,
    /// At most one live row per user (settings-like tables).
    #[serde(default)]
    pub singleton: bool,
    /// Columns forced to the token's user, in addition to a column named `user_id`.
    #[serde(default)]
    pub owner_columns: Vec<String>,
}

/// A checked column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub since: u32,
    pub owner: bool,
}

/// A link from a child table to its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// The parent table.
    pub table: String,
    /// The child's column holding the parent's id.
    pub column: String,
}

/// A checked table.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub since: u32,
    pub singleton: bool,
    pub columns: Vec<Column>,
    column_index: HashMap<String, usize>,
    /// Parents of this table.
    pub parents: Vec<ParentRef>,
    /// Tables (and their columns) that name this table as a parent: `(child table, child column)`.
    pub children: Vec<ParentRef>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<(usize, &Column)> {
        // Looked up for every field of every pushed record: a few comparisons beat hashing the name.
        if self.columns.len() <= 16 {
            return self
                .columns
                .iter()
                .enumerate()
                .find(|(_, c)| c.name == name);
        }
        self.column_index.get(name).map(|&i| (i, &self.columns[i]))
    }

    /// Whether a client on `schema_version` knows this table.
    pub fn visible_at(&self, schema_version: Option<u32>) -> bool {
        schema_version.is_none_or(|v| self.since <= v)
    }
}

/// The whole checked schema.
#[derive(Debug, Clone)]
pub struct Schema {
    tables: Vec<Table>,
    index: HashMap<String, usize>,
    /// Table indexes, parents before children.
    topo: Vec<usize>,
}

const RESERVED: [&str; 3] = ["id", "_status", "_changed"];

impl Schema {
    /// Checks a `[tables.*]` configuration and builds the schema.
    pub fn from_config(config: &BTreeMap<String, TableConfig>) -> Result<Schema, CoreError> {
        if config.is_empty() {
            return Err(CoreError::Empty);
        }
        let mut tables = Vec::with_capacity(config.len());
        for (name, tc) in config {
            if !is_valid_name(name) {
                return Err(CoreError::InvalidTableName(name.clone()));
            }
            let mut columns = Vec::with_capacity(tc.columns.len());
            let mut column_index = HashMap::new();
            for (cname, cc) in &tc.columns {
                if !is_valid_name(cname) || RESERVED.contains(&cname.as_str()) {
                    return Err(CoreError::InvalidColumnName {
                        table: name.clone(),
                        column: cname.clone(),
                    });
                }
                let (ty, since) = match cc {
                    ColumnConfig::Type(ty) => (*ty, None),
                    ColumnConfig::Spec(spec) => (spec.ty, spec.since),
                };
                let owner = cname == "user_id" || tc.owner_columns.contains(cname);
                column_index.insert(cname.clone(), columns.len());
                columns.push(Column {
                    name: cname.clone(),
                    ty,
                    since: since.unwrap_or(1),
                    owner,
                });
            }
            for owner in &tc.owner_columns {
                match column_index.get(owner) {
                    Some(&i) if columns[i].ty == ColumnType::String => {}
                    _ => {
                        return Err(CoreError::InvalidOwnerColumn {
                            table: name.clone(),
                            column: owner.clone(),
                        });
                    }
                }
            }
            let parents: Vec<ParentRef> = tc
                .parent
                .iter()
                .chain(tc.parents.iter())
                .map(|p| ParentRef {
                    table: p.table.clone(),
                    column: p.column.clone(),
                })
                .collect();
            tables.push(Table {
                name: name.clone(),
                since: tc.since.unwrap_or(1),
                singleton: tc.singleton,
                columns,
                column_index,
                parents,
                children: Vec::new(),
            });
        }
        let index: HashMap<String, usize> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mut children: Vec<Vec<ParentRef>> = vec![Vec::new(); tables.len()];
        for table in &tables {
            for parent in &table.parents {
                let Some(&pi) = index.get(&parent.table) else {
                    return Err(CoreError::UnknownParentTable {
                        table: table.name.clone(),
                        parent: parent.table.clone(),
                    });
                };
                match table.column(&parent.column) {
                    Some((_, c)) if c.ty == ColumnType::String => {}
                    _ => {
                        return Err(CoreError::InvalidParentColumn {
                            table: table.name.clone(),
                            column: parent.column.clone(),
                        });
                    }
                }
                children[pi].push(ParentRef {
                    table: table.name.clone(),
                    column: parent.column.clone(),
                });
            }
        }
        for (table, kids) in tables.iter_mut().zip(children) {
            table.children = kids;
        }
        let topo = topological_order(&tables, &index)?;
        Ok(Schema {
            tables,
            index,
            topo,
        })
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.index.get(name).map(|&i| &self.tables[i])
    }

    /// Tables in name order.
    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        self.tables.iter()
    }

    /// Tables with every parent before its children.
    pub fn parents_first(&self) -> impl Iterator<Item = &Table> {
        self.topo.iter().map(|&i| &self.tables[i])
    }

    /// Tables with every child before its parents.
    pub fn children_first(&self) -> impl Iterator<Item = &Table> {
        self.topo.iter().rev().map(|&i| &self.tables[i])
    }
}

fn topological_order(
    tables: &[Table],
    index: &HashMap<String, usize>,
) -> Result<Vec<usize>, CoreError> {
    // 0 = unvisited, 1 = on the current path, 2 = done.
    fn visit(
        i: usize,
        tables: &[Table],
        index: &HashMap<String, usize>,
        mark: &mut [u8],
        out: &mut Vec<usize>,
    ) -> Result<(), CoreError> {
        match mark[i] {
            2 => return Ok(()),
            1 => return Err(CoreError::ParentCycle(tables[i].name.clone())),
            _ => {}
        }
        mark[i] = 1;
        for parent in &tables[i].parents {
            let pi = index[&parent.table];
            if pi != i {
                visit(pi, tables, index, mark, out)?;
            }
        }
        mark[i] = 2;
        out.push(i);
        Ok(())
    }
    let mut mark = vec![0u8; tables.len()];
    let mut out = Vec::with_capacity(tables.len());
    for i in 0..tables.len() {
        visit(i, tables, index, &mut mark, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(toml_like: &[(&str, TableConfig)]) -> Result<Schema, CoreError> {
        Schema::from_config(
            &toml_like
                .iter()
                .map(|(n, c)| (n.to_string(), c.clone()))
                .collect(),
        )
    }

    fn table(columns: &[(&str, ColumnType)], parent: Option<(&str, &str)>) -> TableConfig {
        TableConfig {
            columns: columns
                .iter()
                .map(|(n, t)| (n.to_string(), ColumnConfig::Type(*t)))
                .collect(),
            since: None,
            parent: parent.map(|(t, c)| ParentConfig {
                table: t.into(),
                column: c.into(),
            }),
            parents: vec![],
            singleton: false,
            owner_columns: vec![],
        }
    }

    #[test]
    fn parents_come_first_and_children_are_linked() {
        let s = schema(&[
            (
                "a_tasks",
                table(
                    &[("project_id", ColumnType::String)],
                    Some(("projects", "project_id")),
                ),
            ),
            ("projects", table(&[("name", ColumnType::String)], None)),
        ])
        .unwrap();
        let order: Vec<_> = s.parents_first().map(|t| t.name.as_str()).collect();
        assert_eq!(order, ["projects", "a_tasks"]);
        assert_eq!(s.table("projects").unwrap().children[0].table, "a_tasks");
    }

    #[test]
    fn bad_schemas_are_refused() {
        let err = schema(&[(
            "t",
            table(&[("x", ColumnType::String)], Some(("nope", "x"))),
        )])
        .unwrap_err();
        assert_eq!(
            err,
            CoreError::UnknownParentTable {
                table: "t".into(),
                parent: "nope".into()
            }
        );
        let err = schema(&[("t", table(&[("_status", ColumnType::String)], None))]).unwrap_err();
        assert!(matches!(err, CoreError::InvalidColumnName { .. }));
        let err = schema(&[("T", table(&[], None))]).unwrap_err();
        assert!(matches!(err, CoreError::InvalidTableName(_)));
        let err = schema(&[
            (
                "a",
                table(&[("b_id", ColumnType::String)], Some(("b", "b_id"))),
            ),
            (
                "b",
                table(&[("a_id", ColumnType::String)], Some(("a", "a_id"))),
            ),
        ])
        .unwrap_err();
        assert!(matches!(err, CoreError::ParentCycle(_)));
        let err =
            schema(&[("t", table(&[("n", ColumnType::Number)], Some(("t", "n"))))]).unwrap_err();
        assert!(matches!(err, CoreError::InvalidParentColumn { .. }));
    }
}
