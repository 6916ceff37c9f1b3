//! Results as tables, in the three forms the command line prints (`--format`): aligned text for
//! people, JSON (one document: an array of row objects) and CSV (one header line, then rows)
//! for tools. The rows are the same in all three.

use serde_json::{Map, Value};

/// A table of rows; a cell is a JSON value (text and CSV print strings bare, null empty, the
/// rest as JSON).
#[derive(Debug, Clone, Default)]
pub struct Table {
    columns: Vec<&'static str>,
    /// The first `shown` columns are the text form's; the rest are details for tools (JSON
    /// and CSV), such as structured values the text shows in short.
    shown: usize,
    rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Table {
        Table::with_details(columns, &[])
    }

    /// `columns` in every form, then `details` in JSON and CSV only.
    pub fn with_details(columns: &[&'static str], details: &[&'static str]) -> Table {
        Table {
            columns: columns.iter().chain(details).copied().collect(),
            shown: columns.len(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells beyond the columns are dropped, missing ones are null.
    pub fn push(&mut self, mut cells: Vec<Value>) {
        cells.resize(self.columns.len(), Value::Null);
        self.rows.push(cells);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn cell(value: &Value) -> String {
        match value {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// The rows as JSON objects, column name to value.
    pub fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|row| {
                    let object: Map<String, Value> = self
                        .columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| ((*c).to_owned(), v.clone()))
                        .collect();
                    Value::Object(object)
                })
                .collect(),
        )
    }

    /// A header line, then one line per row.
    pub fn csv(&self) -> Result<String, csv::Error> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&self.columns)?;
        for row in &self.rows {
            w.write_record(row.iter().map(Table::cell))?;
        }
        let bytes = w.into_inner().map_err(|e| e.into_error())?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Aligned columns under a header; a cell's line breaks become spaces.
    pub fn text(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                r[..self.shown]
                    .iter()
                    .map(|v| Table::cell(v).replace('\n', " "))
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = self.columns[..self.shown]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |values: Vec<&str>| {
            let last = values.len().saturating_sub(1);
            let mut out = String::new();
            for (i, v) in values.into_iter().enumerate() {
                if i == last {
                    out.push_str(v);
                } else {
                    let pad = widths[i] - v.chars().count();
                    out.push_str(v);
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = line(self.columns[..self.shown].to_vec());
        out.push('\n');
        for row in &cells {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn details_are_for_tools_only() {
        let mut t = Table::with_details(&["id"], &["detail"]);
        t.push(vec![json!("a"), json!({"k": 1})]);
        assert_eq!(t.json(), json!([{"id": "a", "detail": {"k": 1}}]));
        assert!(t.csv().unwrap().starts_with("id,detail\n"));
        assert_eq!(t.text(), "id\na\n");
    }

    #[test]
    fn the_three_forms_hold_the_same_rows() {
        let mut t = Table::new(&["id", "count", "note"]);
        t.push(vec![json!("a"), json!(3), json!("x, \"y\"\nz")]);
        t.push(vec![json!("b"), Value::Null]);
        assert_eq!(
            t.json(),
            json!([{"id": "a", "count": 3, "note": "x, \"y\"\nz"}, {"id": "b", "count": null, "note": null}])
        );
        let csv = t.csv().unwrap();
        let mut r = csv::Reader::from_reader(csv.as_bytes());
        let rows: Vec<Vec<String>> = r
            .records()
            .map(|rec| rec.unwrap().iter().map(str::to_owned).collect())
            .collect();
        assert_eq!(rows[0], ["a", "3", "x, \"y\"\nz"]);
        assert_eq!(rows[1], ["b", "", ""]);
        let text = t.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("id  count  note"));
        assert!(lines[1].starts_with("a   3      x, \"y\" z"));
    }
}
