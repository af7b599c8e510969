//! SQLite as a source (the embedded demo's OLTP database).

use std::path::PathBuf;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;

use super::arrow_build::{BatchBuilder, ColumnBuilder};
use super::{
    CURSOR_TEXT, ColumnInfo, IN_WINDOW, KEY_TEXT, Position, TableInfo, Window, quote_ident,
};
use crate::error::StepError;

pub(crate) fn open(path: &PathBuf) -> Result<Connection, StepError> {
    if !path.exists() {
        return Err(StepError::user(format!(
            "SQLite database {} does not exist",
            path.display()
        )));
    }
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StepError::external(format!("{}: {e}", path.display())))?;
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| StepError::external(e.to_string()))?;
    Ok(c)
}

pub(crate) fn sq(e: rusqlite::Error) -> StepError {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => {
            StepError::external(format!("SQLite busy: {e}"))
        }
        other => StepError::user(format!("SQLite: {other}")),
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StepError::internal(e.to_string()))?
}

pub async fn tables(path: PathBuf) -> Result<Vec<String>, StepError> {
    blocking(move || {
        let c = open(&path)?;
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .map_err(sq)?;
        let names = st.query_map([], |r| r.get(0)).map_err(sq)?.collect::<Result<Vec<String>, _>>().map_err(sq)?;
        Ok(names)
    })
    .await
}

/// SQLite's declared type → Arrow (by affinity; NUMERIC/DECIMAL/dates stay exact text).
fn arrow_for(declared: &str) -> DataType {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        DataType::Int64
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        DataType::Float64
    } else if t.contains("BLOB") {
        DataType::Binary
    } else if t.contains("BOOL") {
        DataType::Boolean
    } else {
        DataType::Utf8
    }
}

pub async fn describe(path: PathBuf, table: String) -> Result<TableInfo, StepError> {
    blocking(move || {
        let c = open(&path)?;
        let mut st = c
            .prepare(&format!("PRAGMA table_info({})", quote_ident(&table)))
            .map_err(sq)?;
        let rows: Vec<(String, String, i64, bool)> = st
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(5)?, r.get(3)?)))
            .map_err(sq)?
            .collect::<Result<_, _>>()
            .map_err(sq)?;
        if rows.is_empty() {
            return Err(StepError::user(format!(
                "table `{table}` does not exist in {}",
                path.display()
            )));
        }
        let mut pk: Vec<(i64, String)> = rows
            .iter()
            .filter(|r| r.2 > 0)
            .map(|r| (r.2, r.0.clone()))
            .collect();
        pk.sort();
        let columns = rows
            .into_iter()
            .map(|(name, declared, _, not_null)| ColumnInfo {
                arrow: arrow_for(&declared),
                sql_type: declared,
                name,
                wire: None,
                nullable: !not_null,
            })
            .collect();
        Ok(TableInfo {
            name: table,
            columns,
            primary_key: pk.into_iter().map(|p| p.1).collect(),
        })
    })
    .await
}

/// Move a text timestamp by `micros` (negative: earlier), keeping its format.
pub fn shift_timestamp_text(text: &str, micros: i64) -> Option<String> {
    use chrono::{NaiveDateTime, TimeDelta};
    let t = text.trim();
    let (body, zone) = match t
        .find(['Z', '+'])
        .or_else(|| t.rfind('-').filter(|&i| i > 10))
    {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let sep = if body.contains('T') { 'T' } else { ' ' };
    let frac = body.split_once('.').map(|(_, f)| f.len()).unwrap_or(0);
    let parsed = NaiveDateTime::parse_from_str(body, &format!("%Y-%m-%d{sep}%H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(body, &format!("%Y-%m-%d{sep}%H:%M:%S")))
        .ok()?;
    let moved = parsed.checked_add_signed(TimeDelta::microseconds(micros))?;
    let mut out = moved.format(&format!("%Y-%m-%d{sep}%H:%M:%S")).to_string();
    if frac > 0 {
        let f = format!("{:06}", moved.and_utc().timestamp_subsec_micros());
        out.push('.');
        out.push_str(&format!("{f:0<width$}", width = frac)[..frac.min(9)]);
    }
    out.push_str(zone);
    Some(out)
}

/// The window's rows and the table's newest position, from one read transaction
/// (see [`super::SqlSource::read`]).
pub async fn read(
    path: PathBuf,
    table: TableInfo,
    w: Window,
    schema: SchemaRef,
    batch_rows: usize,
    tx: mpsc::Sender<Result<RecordBatch, StepError>>,
) -> Result<Option<Position>, StepError> {
    blocking(move || {
        let mut c = open(&path)?;
        let c = c.transaction().map_err(sq)?;
        let cursor = quote_ident(&w.cursor);
        // Sorted by the table's columns through its alias, not by the text outputs.
        let mut top_select = vec![format!("CAST(t.{cursor} AS TEXT)")];
        let mut top_order = vec![format!("t.{cursor} DESC")];
        for k in &w.key {
            top_select.push(format!("CAST(t.{} AS TEXT)", quote_ident(k)));
            top_order.push(format!("t.{} DESC", quote_ident(k)));
        }
        let top_sql = format!(
            "SELECT {} FROM {} AS t WHERE t.{cursor} IS NOT NULL ORDER BY {} LIMIT 1",
            top_select.join(", "),
            quote_ident(&table.name),
            top_order.join(", ")
        );
        let top: Option<Position> = {
            let mut st = c.prepare(&top_sql).map_err(sq)?;
            let mut rows = st.query([]).map_err(sq)?;
            match rows.next().map_err(sq)? {
                Some(r) => Some((
                    r.get(0).map_err(sq)?,
                    (1..=w.key.len())
                        .map(|i| r.get(i))
                        .collect::<Result<_, _>>()
                        .map_err(sq)?,
                )),
                None => None,
            }
        };
        if top.is_none() && !w.nulls {
            return Ok(None);
        }
        let mut select: Vec<String> = table
            .columns
            .iter()
            .map(|col| quote_ident(&col.name))
            .collect();
        // Helper columns: see `Window`.
        select.push(format!("CAST({cursor} AS TEXT) AS {CURSOR_TEXT}"));
        for (i, k) in w.key.iter().enumerate() {
            select.push(format!("CAST({} AS TEXT) AS {KEY_TEXT}{i}", quote_ident(k)));
        }
        let lookback_us = w.lookback.as_micros() as i64;
        // A position moved back by the look-back (timestamps only; a zero
        // look-back works for any type).
        let back = |text: &str| -> Result<String, StepError> {
            if lookback_us == 0 {
                return Ok(text.to_string());
            }
            shift_timestamp_text(text, -lookback_us).ok_or_else(|| {
                StepError::user(format!(
                    "lookback needs a timestamp cursor; `{}` holds `{text}`",
                    w.cursor
                ))
            })
        };
        let mut params: Vec<String> = Vec::new();
        let mut range = Vec::new();
        match &top {
            Some((hi, _)) => {
                params.push(hi.clone());
                range.push(format!("{cursor} <= ?{}", params.len()));
                params.push(back(hi)?);
                select.push(format!("({cursor} >= ?{}) AS {IN_WINDOW}", params.len()));
            }
            None => select.push(format!("0 AS {IN_WINDOW}")),
        }
        if let Some((c, _)) = &w.after {
            params.push(back(c)?);
            range.push(format!("{cursor} >= ?{}", params.len()));
        }
        let conditions = match (range.is_empty(), w.nulls) {
            (true, _) => vec![format!("{cursor} IS NULL")],
            (false, true) => vec![format!("({cursor} IS NULL OR ({}))", range.join(" AND "))],
            (false, false) => range,
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            select.join(", "),
            quote_ident(&table.name),
            conditions.join(" AND "),
        );
        let mut st = c.prepare(&sql).map_err(sq)?;
        let mut rows = st
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(sq)?;
        let mut b = BatchBuilder::new(schema);
        while let Some(row) = rows.next().map_err(sq)? {
            for (i, col) in b.columns.iter_mut().enumerate() {
                let v = row.get_ref(i).map_err(sq)?;
                append(col, v).map_err(|m| {
                    let name = b.schema.field(i).name().clone();
                    StepError::user(format!("table `{}`, column `{name}`: {m}", table.name))
                })?;
            }
            b.rows += 1;
            if b.rows >= batch_rows {
                let batch = b.finish().map_err(|e| StepError::internal(e.to_string()))?;
                if tx.blocking_send(Ok(batch)).is_err() {
                    return Ok(top);
                }
            }
        }
        if b.rows > 0 {
            let batch = b.finish().map_err(|e| StepError::internal(e.to_string()))?;
            let _ = tx.blocking_send(Ok(batch));
        }
        Ok(top)
    })
    .await
}

fn append(col: &mut ColumnBuilder, v: ValueRef<'_>) -> Result<(), String> {
    let text = |v: ValueRef<'_>| -> Result<String, String> {
        Ok(match v {
            ValueRef::Integer(i) => i.to_string(),
            ValueRef::Real(f) => f.to_string(),
            ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|e| e.to_string())?,
            ValueRef::Blob(b) => {
                String::from_utf8(b.to_vec()).map_err(|_| "binary value in a text column")?
            }
            ValueRef::Null => String::new(),
        })
    };
    if matches!(v, ValueRef::Null) {
        col.append_null();
        return Ok(());
    }
    match col {
        ColumnBuilder::I64(b) => match v {
            ValueRef::Integer(i) => b.append_value(i),
            other => {
                let t = text(other)?;
                b.append_value(
                    t.trim()
                        .parse()
                        .map_err(|_| format!("`{t}` is not an integer"))?,
                )
            }
        },
        ColumnBuilder::F64(b) => match v {
            ValueRef::Real(f) => b.append_value(f),
            ValueRef::Integer(i) => b.append_value(i as f64),
            other => {
                let t = text(other)?;
                b.append_value(
                    t.trim()
                        .parse()
                        .map_err(|_| format!("`{t}` is not a number"))?,
                )
            }
        },
        ColumnBuilder::Bool(b) => match v {
            ValueRef::Integer(i) => b.append_value(i != 0),
            other => {
                let t = text(other)?.to_ascii_lowercase();
                b.append_value(matches!(t.as_str(), "1" | "true" | "t" | "yes"))
            }
        },
        ColumnBuilder::Binary(b) => match v {
            ValueRef::Blob(x) | ValueRef::Text(x) => b.append_value(x),
            other => b.append_value(text(other)?.as_bytes()),
        },
        ColumnBuilder::Utf8(b) => b.append_value(text(v)?),
        _ => return Err("internal: unexpected column builder for SQLite".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shift_timestamp_text as shift;

    #[test]
    fn timestamps_shift_in_their_own_format() {
        assert_eq!(
            shift("2026-01-01 00:05:00", -300_000_000).as_deref(),
            Some("2026-01-01 00:00:00")
        );
        assert_eq!(
            shift("2026-01-01T00:00:00.250Z", -500_000).as_deref(),
            Some("2025-12-31T23:59:59.750Z")
        );
        assert_eq!(
            shift("2026-01-01 10:00:00.123456+00", -1).as_deref(),
            Some("2026-01-01 10:00:00.123455+00")
        );
        assert_eq!(shift("42", -1), None);
    }
}
