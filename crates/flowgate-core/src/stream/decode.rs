//! One event → one row of the table (COPY text fields), ignored, or a dead
//! letter with the reason. The table's columns are the contract: a field goes
//! to the column of its name, checked against the column's type here, so one
//! bad event never fails the batch it is in.

use serde_json::Value;

/// What a column takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Numeric,
    Bool,
    Timestamp,
    Json,
    /// Any other type: the value as text, left to PostgreSQL (a refusal is
    /// found by writing the batch's rows one by one).
    Other,
}

impl Kind {
    /// The kind of a PostgreSQL type name (`information_schema.columns.data_type`).
    pub fn of(data_type: &str) -> Kind {
        match data_type {
            "text" | "character varying" | "character" => Kind::Text,
            "smallint" | "integer" | "bigint" => Kind::Int,
            "numeric" | "real" | "double precision" => Kind::Numeric,
            "boolean" => Kind::Bool,
            "timestamp with time zone" | "timestamp without time zone" => Kind::Timestamp,
            "json" | "jsonb" => Kind::Json,
            _ => Kind::Other,
        }
    }
}

/// A column of the table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// NOT NULL without a default: an event must give it.
    pub needed: bool,
    /// It has a default, which an event without the field gets.
    pub defaulted: bool,
}

/// One field of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    /// The column's default: the column is left out of the row's COPY.
    Default,
}

/// Where an event came from.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// What becomes of an event.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// One cell per column.
    Row(Vec<Cell>),
    Ignored,
    Dead(String),
}

/// Rules for one stream.
pub struct Decoder<'a> {
    pub columns: &'a [Column],
    pub type_field: &'a str,
    pub ignore: &'a std::collections::HashSet<String>,
    pub required: &'a [String],
    pub contract: Option<&'a super::contract::Contract>,
}

impl Decoder<'_> {
    pub fn decode(&self, payload: Option<&[u8]>, at: At<'_>) -> Decoded {
        let Some(payload) = payload else {
            return Decoded::Dead("the message has no value (a tombstone)".into());
        };
        let event: Value = match serde_json::from_slice(payload) {
            Ok(v @ Value::Object(_)) => v,
            Ok(other) => {
                return Decoded::Dead(format!("not a JSON object but {}", kind_name(&other)));
            }
            Err(e) => return Decoded::Dead(format!("not JSON: {e}")),
        };
        let kind = if self.type_field.starts_with('/') {
            event.pointer(self.type_field)
        } else {
            event.get(self.type_field)
        };
        if let Some(Value::String(t)) = kind
            && self.ignore.contains(t)
        {
            return Decoded::Ignored;
        }
        if let Some(c) = self.contract
            && let Err(why) = c.check(&event)
        {
            return Decoded::Dead(why);
        }
        if let Some(missing) = self
            .required
            .iter()
            .find(|f| event.get(f.as_str()).is_none_or(Value::is_null))
        {
            return Decoded::Dead(format!("the required field `{missing}` is missing"));
        }
        let mut row = Vec::with_capacity(self.columns.len());
        for c in self.columns {
            let value = match c.name.as_str() {
                "_topic" => Some(Value::String(at.topic.to_string())),
                "_partition" => Some(Value::from(at.partition)),
                "_offset" => Some(Value::from(at.offset)),
                "_event" => Some(event.clone()),
                name => event.get(name).filter(|v| !v.is_null()).cloned(),
            };
            match value {
                None if c.needed => {
                    return Decoded::Dead(format!(
                        "the field `{}` is missing and its column is NOT NULL",
                        c.name
                    ));
                }
                None if c.defaulted => row.push(Cell::Default),
                None => row.push(Cell::Null),
                Some(v) => match field(c, &v) {
                    Ok(text) => row.push(Cell::Text(text)),
                    Err(why) => return Decoded::Dead(format!("the field `{}`: {why}", c.name)),
                },
            }
        }
        Decoded::Row(row)
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The COPY text of `v` for column `c`, or why the column cannot take it.
fn field(c: &Column, v: &Value) -> Result<String, String> {
    let wrong = || format!("{} does not fit a {:?} column", kind_name(v), c.kind);
    match (c.kind, v) {
        (Kind::Json, v) => Ok(v.to_string()),
        (Kind::Text | Kind::Other, Value::String(s)) => Ok(s.clone()),
        (Kind::Text | Kind::Other, Value::Number(_) | Value::Bool(_)) => Ok(v.to_string()),
        (Kind::Text, _) => Ok(v.to_string()),
        (Kind::Int, Value::Number(n)) if n.is_i64() => Ok(n.to_string()),
        (Kind::Int, Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
            Ok(s.trim().to_string())
        }
        (Kind::Numeric, Value::Number(n)) => Ok(n.to_string()),
        (Kind::Numeric, Value::String(s)) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => {
            Ok(s.trim().to_string())
        }
        (Kind::Bool, Value::Bool(b)) => Ok(b.to_string()),
        (Kind::Timestamp, Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|_| s.clone())
            .map_err(|e| format!("`{s}` is not an RFC 3339 timestamp: {e}")),
        _ => Err(wrong()),
    }
}

/// One COPY text line of `row` (tab-separated, `\N` for NULL, defaults left
/// out), appended to `out`.
pub fn copy_line(row: &[Cell], out: &mut Vec<u8>) {
    let mut first = true;
    for f in row {
        if *f == Cell::Default {
            continue;
        }
        if !std::mem::take(&mut first) {
            out.push(b'\t');
        }
        match f {
            Cell::Default => {}
            Cell::Null => out.extend_from_slice(b"\\N"),
            Cell::Text(s) => {
                for b in s.bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<Column> {
        let c = |name: &str, kind, needed, defaulted| Column {
            name: name.into(),
            kind,
            needed,
            defaulted,
        };
        vec![
            c("id", Kind::Int, true, false),
            c("type", Kind::Text, false, false),
            c("at", Kind::Timestamp, false, false),
            c("_offset", Kind::Int, false, false),
            c("_event", Kind::Json, false, false),
            c("status", Kind::Text, false, true),
        ]
    }

    fn decode(payload: &str) -> Decoded {
        let columns = cols();
        let ignore = ["Pinged".to_string()].into_iter().collect();
        let d = Decoder {
            columns: &columns,
            type_field: "type",
            ignore: &ignore,
            required: &[],
            contract: None,
        };
        d.decode(
            Some(payload.as_bytes()),
            At {
                topic: "t",
                partition: 0,
                offset: 7,
            },
        )
    }

    #[test]
    fn events_become_rows_ignored_or_dead_letters_with_a_reason() {
        let Decoded::Row(row) =
            decode(r#"{"id": 1, "type": "Made", "at": "2026-12-04T10:00:00Z", "extra": "x"}"#)
        else {
            panic!()
        };
        let text = |c: &Cell| match c {
            Cell::Text(t) => t.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(text(&row[0]), "1");
        assert_eq!(text(&row[3]), "7");
        assert!(text(&row[4]).contains("\"extra\":\"x\""));
        // No `status` in the event: its column's default; with one, the value.
        assert_eq!(row[5], Cell::Default);
        let Decoded::Row(row) = decode(r#"{"id": 1, "status": "held", "type": null}"#) else {
            panic!()
        };
        assert_eq!(
            (&row[1], &row[5]),
            (&Cell::Null, &Cell::Text("held".into()))
        );
        assert_eq!(decode(r#"{"id": 2, "type": "Pinged"}"#), Decoded::Ignored);
        let dead = |p: &str| match decode(p) {
            Decoded::Dead(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(dead("{nope").starts_with("not JSON"));
        assert_eq!(dead("[1]"), "not a JSON object but a list");
        assert!(dead(r#"{"type": "Made"}"#).contains("`id` is missing and its column is NOT NULL"));
        assert!(dead(r#"{"id": "x1"}"#).contains("the field `id`"));
        assert!(dead(r#"{"id": 3, "at": "yesterday"}"#).contains("not an RFC 3339 timestamp"));
    }

    #[test]
    fn copy_lines_escape_what_copy_text_treats_specially() {
        let mut out = Vec::new();
        copy_line(
            &[Cell::Text("a\tb\\c\nd".into()), Cell::Default, Cell::Null],
            &mut out,
        );
        assert_eq!(out, b"a\\tb\\\\c\\nd\t\\N\n");
    }
}
