//! SQL stores as sinks: tables created from the Arrow schema, grown with new
//! nullable columns, loaded in one transaction per input that also records the
//! input in the target's own `flowgate_loaded` ledger — so a crash either loaded
//! an input and recorded it, or did neither.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::SinkExt;

use super::sqlite_read::{blocking, sq};
use super::{SqlSource, pg_error, quote_ident};
use crate::error::StepError;

/// How rows meet the table.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMode {
    /// Insert every row.
    Append,
    /// Insert, or update the row with the same key (the last occurrence wins).
    Upsert,
    /// One row per (key, version); a version seen before is not inserted again.
    AppendVersions,
    /// The run's input becomes the whole table.
    Replace,
}

/// What to load where.
#[derive(Debug, Clone)]
pub struct LoadTarget {
    pub schema: String,
    pub table: String,
    pub mode: LoadMode,
    pub key: Vec<String>,
    pub version: Option<String>,
}

/// One input to load in one transaction.
pub struct Input {
    pub object: String,
    pub fingerprint: String,
    pub batches: Vec<RecordBatch>,
}

fn pg_type(dt: &DataType) -> String {
    match dt {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20,0)".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("numeric({p},{s})"),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp(6)".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz(6)".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time(6)".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        _ => "text".into(),
    }
}

fn sqlite_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64 => "INTEGER",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "INTEGER",
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "REAL",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BLOB",
        _ => "TEXT",
    }
}

/// `CREATE TABLE` for the input's columns, keyed unless appending.
fn create_table(
    qualified: &str,
    cols: &[(String, DataType)],
    t: &LoadTarget,
    ty: impl Fn(&DataType) -> String,
) -> String {
    let mut defs: Vec<String> = cols
        .iter()
        .map(|(n, dt)| format!("{} {}", quote_ident(n), ty(dt)))
        .collect();
    if t.mode != LoadMode::Append {
        let key: Vec<String> = conflict_cols(t).iter().map(|c| quote_ident(c)).collect();
        defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {qualified} ({})",
        defs.join(", ")
    )
}

/// Row identity for the table: the key, plus the version for append-versions.
fn conflict_cols(t: &LoadTarget) -> Vec<String> {
    let mut k = t.key.clone();
    if t.mode == LoadMode::AppendVersions
        && let Some(v) = &t.version
    {
        k.push(v.clone());
    }
    k
}

/// COPY text format: one line per row, tab-separated, `\N` for NULL.
fn copy_text(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), StepError> {
    let opts = FormatOptions::default();
    let fmts: Vec<ArrayFormatter<'_>> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
        .collect::<Result<_, _>>()
        .map_err(|e| StepError::internal(e.to_string()))?;
    let mut cell = String::new();
    for row in 0..batch.num_rows() {
        for (i, col) in batch.columns().iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            if col.is_null(row) {
                out.extend_from_slice(b"\\N");
                continue;
            }
            cell.clear();
            match col.data_type() {
                DataType::Binary => {
                    cell.push_str("\\x");
                    cell.push_str(&hex::encode(col.as_binary::<i32>().value(row)));
                }
                _ => {
                    use std::fmt::Write;
                    write!(cell, "{}", fmts[i].value(row))
                        .map_err(|e| StepError::internal(e.to_string()))?;
                }
            }
            for ch in cell.bytes() {
                match ch {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    c => out.push(c),
                }
            }
        }
        out.push(b'\n');
    }
    Ok(())
}

/// What a load did.
#[derive(Debug, Default)]
pub struct Loaded {
    pub rows_in: u64,
    pub rows_written: u64,
    pub added_columns: Vec<String>,
}

impl SqlSource {
    /// Inputs already loaded by `pipeline`/`step`: object → fingerprint.
    pub async fn loaded_inputs(
        &self,
        pipeline: &str,
        step: &str,
    ) -> Result<HashMap<String, String>, StepError> {
        match self {
            SqlSource::Postgres { .. } => {
                let c = self.pg().await?;
                c.batch_execute(LEDGER_PG).await.map_err(pg_error)?;
                let rows = c
                    .query("SELECT object, fingerprint FROM flowgate_loaded WHERE pipeline = $1 AND step = $2", &[&pipeline, &step])
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
            SqlSource::Sqlite { path } => {
                let (path, p, s) = (path.clone(), pipeline.to_string(), step.to_string());
                blocking(move || {
                    let c = sqlite_rw(&path)?;
                    c.execute_batch(LEDGER_SQLITE).map_err(sq)?;
                    let mut st = c.prepare("SELECT object, fingerprint FROM flowgate_loaded WHERE pipeline = ?1 AND step = ?2").map_err(sq)?;
                    let rows = st.query_map([&p, &s], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sq)?;
                    rows.collect::<Result<HashMap<String, String>, _>>().map_err(sq)
                })
                .await
            }
        }
    }

    /// Load `inputs` into the table in one transaction, recording each in the ledger.
    pub async fn load(
        &self,
        pipeline: &str,
        step: &str,
        t: &LoadTarget,
        inputs: Vec<Input>,
    ) -> Result<Loaded, StepError> {
        let Some(schema) = inputs
            .iter()
            .flat_map(|i| i.batches.first())
            .map(|b| b.schema())
            .next()
        else {
            return Ok(Loaded::default());
        };
        for k in conflict_cols(t) {
            if schema.index_of(&k).is_err() {
                return Err(StepError::user(format!(
                    "the input has no column `{k}` (needed as the load's key)"
                )));
            }
        }
        match self {
            SqlSource::Postgres { .. } => self.load_pg(pipeline, step, t, &schema, inputs).await,
            SqlSource::Sqlite { path } => {
                let (path, p, s, t) = (
                    path.clone(),
                    pipeline.to_string(),
                    step.to_string(),
                    t.clone(),
                );
                blocking(move || load_sqlite(&path, &p, &s, &t, &schema, inputs)).await
            }
        }
    }

    async fn load_pg(
        &self,
        pipeline: &str,
        step: &str,
        t: &LoadTarget,
        schema: &Schema,
        inputs: Vec<Input>,
    ) -> Result<Loaded, StepError> {
        let mut client = self.pg().await?;
        client.batch_execute(LEDGER_PG).await.map_err(pg_error)?;
        let qualified = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let mut loaded = Loaded::default();
        let tx = client.transaction().await.map_err(pg_error)?;
        // Create the table, or grow it with the input's new columns.
        let existing: HashSet<String> = tx
            .query(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                &[&t.schema, &t.table],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let cols: Vec<(String, DataType)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        if existing.is_empty() {
            tx.batch_execute(&create_table(&qualified, &cols, t, pg_type))
                .await
                .map_err(pg_error)?;
        } else {
            for (n, dt) in cols.iter().filter(|(n, _)| !existing.contains(n)) {
                tx.batch_execute(&format!(
                    "ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {} {}",
                    quote_ident(n),
                    pg_type(dt)
                ))
                .await
                .map_err(pg_error)?;
                loaded.added_columns.push(n.clone());
            }
        }
        let names: Vec<String> = cols.iter().map(|(n, _)| quote_ident(n)).collect();
        let list = names.join(", ");
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE _fg_stage ON COMMIT DROP AS SELECT {list} FROM {qualified} WITH NO DATA;
             ALTER TABLE _fg_stage ADD COLUMN _fg_ord bigserial"
        ))
        .await
        .map_err(pg_error)?;
        let sink = tx
            .copy_in(&format!("COPY _fg_stage ({list}) FROM STDIN"))
            .await
            .map_err(pg_error)?;
        futures::pin_mut!(sink);
        let mut buf = Vec::with_capacity(1 << 20);
        for input in &inputs {
            for b in &input.batches {
                if b.schema().fields() != schema.fields() {
                    return Err(StepError::user(format!(
                        "{}: its columns differ from the other inputs of this load",
                        input.object
                    )));
                }
                loaded.rows_in += b.num_rows() as u64;
                copy_text(b, &mut buf)?;
                if buf.len() >= 1 << 20 {
                    sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                        .await
                        .map_err(pg_error)?;
                }
            }
        }
        if !buf.is_empty() {
            sink.send(bytes::Bytes::from(buf)).await.map_err(pg_error)?;
        }
        sink.finish().await.map_err(pg_error)?;

        let conflict: Vec<String> = conflict_cols(t).iter().map(|c| quote_ident(c)).collect();
        let conflict = conflict.join(", ");
        let set: Vec<String> = cols
            .iter()
            .filter(|(n, _)| !conflict_cols(t).contains(n))
            .map(|(n, _)| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
            .collect();
        let merge = match t.mode {
            LoadMode::Append => format!(
                "INSERT INTO {qualified} ({list}) SELECT {list} FROM _fg_stage ORDER BY _fg_ord"
            ),
            LoadMode::Replace => format!(
                "DELETE FROM {qualified}; INSERT INTO {qualified} ({list}) SELECT {list} FROM _fg_stage ORDER BY _fg_ord"
            ),
            LoadMode::Upsert | LoadMode::AppendVersions => {
                let on_conflict = if t.mode == LoadMode::AppendVersions || set.is_empty() {
                    "DO NOTHING".to_string()
                } else {
                    format!("DO UPDATE SET {}", set.join(", "))
                };
                format!(
                    "INSERT INTO {qualified} ({list}) SELECT {list} FROM (SELECT DISTINCT ON ({conflict}) * FROM _fg_stage ORDER BY {conflict}, _fg_ord DESC) s ON CONFLICT ({conflict}) {on_conflict}"
                )
            }
        };
        let mut written = 0;
        for stmt in merge.split("; ") {
            written = tx.execute(stmt, &[]).await.map_err(pg_error)?;
        }
        loaded.rows_written = written;
        for input in &inputs {
            let rows: i64 = input.batches.iter().map(|b| b.num_rows() as i64).sum();
            tx.execute(
                "INSERT INTO flowgate_loaded (pipeline, step, object, fingerprint, rows, loaded_at) VALUES ($1, $2, $3, $4, $5, now())
                 ON CONFLICT (pipeline, step, object) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, rows = EXCLUDED.rows, loaded_at = now()",
                &[&pipeline, &step, &input.object, &input.fingerprint, &rows],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(loaded)
    }
}

const LEDGER_PG: &str = "CREATE TABLE IF NOT EXISTS flowgate_loaded (
  pipeline text NOT NULL, step text NOT NULL, object text NOT NULL, fingerprint text NOT NULL,
  rows bigint NOT NULL, loaded_at timestamptz NOT NULL, PRIMARY KEY (pipeline, step, object))";
const LEDGER_SQLITE: &str = "CREATE TABLE IF NOT EXISTS flowgate_loaded (
  pipeline TEXT NOT NULL, step TEXT NOT NULL, object TEXT NOT NULL, fingerprint TEXT NOT NULL,
  rows INTEGER NOT NULL, loaded_at TEXT NOT NULL, PRIMARY KEY (pipeline, step, object))";

fn sqlite_rw(path: &PathBuf) -> Result<rusqlite::Connection, StepError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| StepError::external(format!("{}: {e}", d.display())))?;
    }
    let c = rusqlite::Connection::open(path).map_err(sq)?;
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sq)?;
    Ok(c)
}

fn load_sqlite(
    path: &PathBuf,
    pipeline: &str,
    step: &str,
    t: &LoadTarget,
    schema: &Schema,
    inputs: Vec<Input>,
) -> Result<Loaded, StepError> {
    use rusqlite::types::Value as V;
    let mut c = sqlite_rw(path)?;
    c.execute_batch(LEDGER_SQLITE).map_err(sq)?;
    let mut loaded = Loaded::default();
    let tx = c.transaction().map_err(sq)?;
    let table = quote_ident(&t.table);
    let existing: HashSet<String> = {
        let mut st = tx
            .prepare(&format!("PRAGMA table_info({table})"))
            .map_err(sq)?;
        st.query_map([], |r| r.get::<_, String>(1))
            .map_err(sq)?
            .collect::<Result<_, _>>()
            .map_err(sq)?
    };
    let cols: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let conflict = conflict_cols(t);
    if existing.is_empty() {
        tx.execute_batch(&create_table(&table, &cols, t, |dt| {
            sqlite_type(dt).to_string()
        }))
        .map_err(sq)?;
    } else {
        for (n, dt) in cols.iter().filter(|(n, _)| !existing.contains(n)) {
            tx.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {} {}",
                quote_ident(n),
                sqlite_type(dt)
            ))
            .map_err(sq)?;
            loaded.added_columns.push(n.clone());
        }
    }
    if t.mode == LoadMode::Replace {
        tx.execute_batch(&format!("DELETE FROM {table}"))
            .map_err(sq)?;
    }
    let list: Vec<String> = cols.iter().map(|(n, _)| quote_ident(n)).collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let set: Vec<String> = cols
        .iter()
        .filter(|(n, _)| !conflict.contains(n))
        .map(|(n, _)| format!("{0} = excluded.{0}", quote_ident(n)))
        .collect();
    let tail = match t.mode {
        LoadMode::Upsert if !set.is_empty() => format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            conflict
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            set.join(", ")
        ),
        LoadMode::Upsert | LoadMode::AppendVersions => " ON CONFLICT DO NOTHING".into(),
        _ => String::new(),
    };
    {
        let mut st = tx
            .prepare(&format!(
                "INSERT INTO {table} ({}) VALUES ({}){tail}",
                list.join(", "),
                marks.join(", ")
            ))
            .map_err(sq)?;
        let opts = FormatOptions::default();
        for input in &inputs {
            for b in &input.batches {
                loaded.rows_in += b.num_rows() as u64;
                let fmts: Vec<ArrayFormatter<'_>> = b
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                    .collect::<Result<_, _>>()
                    .map_err(|e| StepError::internal(e.to_string()))?;
                for row in 0..b.num_rows() {
                    let values: Vec<V> = b
                        .columns()
                        .iter()
                        .enumerate()
                        .map(|(i, col)| {
                            if col.is_null(row) {
                                return V::Null;
                            }
                            match col.data_type() {
                                DataType::Boolean => {
                                    V::Integer(i64::from(col.as_boolean().value(row)))
                                }
                                DataType::Int64 => V::Integer(
                                    col.as_primitive::<arrow::datatypes::Int64Type>().value(row),
                                ),
                                DataType::Int32 => V::Integer(i64::from(
                                    col.as_primitive::<arrow::datatypes::Int32Type>().value(row),
                                )),
                                DataType::Int16 => V::Integer(i64::from(
                                    col.as_primitive::<arrow::datatypes::Int16Type>().value(row),
                                )),
                                DataType::Float64 => V::Real(
                                    col.as_primitive::<arrow::datatypes::Float64Type>()
                                        .value(row),
                                ),
                                DataType::Float32 => V::Real(f64::from(
                                    col.as_primitive::<arrow::datatypes::Float32Type>()
                                        .value(row),
                                )),
                                DataType::Binary => {
                                    V::Blob(col.as_binary::<i32>().value(row).to_vec())
                                }
                                DataType::Timestamp(TimeUnit::Microsecond, _) => {
                                    V::Text(fmts[i].value(row).to_string().replace('T', " "))
                                }
                                _ => V::Text(fmts[i].value(row).to_string()),
                            }
                        })
                        .collect();
                    loaded.rows_written +=
                        st.execute(rusqlite::params_from_iter(values)).map_err(sq)? as u64;
                }
            }
        }
    }
    let now = chrono::Utc::now().to_rfc3339();
    for input in &inputs {
        let rows: i64 = input.batches.iter().map(|b| b.num_rows() as i64).sum();
        tx.execute(
            "INSERT INTO flowgate_loaded (pipeline, step, object, fingerprint, rows, loaded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (pipeline, step, object) DO UPDATE SET fingerprint = excluded.fingerprint, rows = excluded.rows, loaded_at = excluded.loaded_at",
            rusqlite::params![pipeline, step, input.object, input.fingerprint, rows, now],
        )
        .map_err(sq)?;
    }
    tx.commit().map_err(sq)?;
    Ok(loaded)
}
