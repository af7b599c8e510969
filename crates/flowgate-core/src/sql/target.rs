//! SQL stores as sinks: tables created from the Arrow schema, grown with new
//! nullable columns, loaded in one transaction per input that also records the
//! input in the target's own `flowgate_loaded` ledger — so a crash either loaded
//! an input and recorded it, or did neither.
//!
//! Each input streams in (memory stays around a few batches, whatever its size).
//! Its transaction first checks the lane's fencing token against the target's
//! `flowgate_fence` row (a newer holder's load makes an older one's fail), then
//! claims the input's ledger row: a second loader of the same version finds the
//! row taken and loads nothing.

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
    /// The newest input becomes the whole table (older pending inputs are
    /// superseded by it; an empty input empties the table).
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
#[derive(Debug, Clone)]
pub struct Input {
    pub object: String,
    pub fingerprint: String,
    /// Older inputs this one replaces (`replace` mode): recorded as loaded with it.
    pub superseded: Vec<(String, String)>,
}

/// Who loads: the pipeline's step, under its lane's claim.
#[derive(Debug, Clone)]
pub struct LoadClaim {
    pub pipeline: String,
    pub step: String,
    pub lane: String,
    pub token: i64,
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

/// `CREATE TABLE` for the input's columns, keyed by the load's key when it has one
/// (never when appending).
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
    let key = conflict_cols(t);
    if t.mode != LoadMode::Append && !key.is_empty() {
        let key: Vec<String> = key.iter().map(|c| quote_ident(c)).collect();
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

/// Batches of one input, in order.
pub type Batches = tokio::sync::mpsc::Receiver<Result<RecordBatch, StepError>>;

const LEDGER_PG: &str = "CREATE TABLE IF NOT EXISTS flowgate_loaded (
  pipeline text NOT NULL, step text NOT NULL, object text NOT NULL, fingerprint text NOT NULL,
  rows bigint NOT NULL, loaded_at timestamptz NOT NULL, PRIMARY KEY (pipeline, step, object));
CREATE TABLE IF NOT EXISTS flowgate_fence (lane text PRIMARY KEY, token bigint NOT NULL, at timestamptz NOT NULL)";
const LEDGER_SQLITE: &str = "CREATE TABLE IF NOT EXISTS flowgate_loaded (
  pipeline TEXT NOT NULL, step TEXT NOT NULL, object TEXT NOT NULL, fingerprint TEXT NOT NULL,
  rows INTEGER NOT NULL, loaded_at TEXT NOT NULL, PRIMARY KEY (pipeline, step, object));
CREATE TABLE IF NOT EXISTS flowgate_fence (lane TEXT PRIMARY KEY, token INTEGER NOT NULL, at TEXT NOT NULL)";

/// Take the lane's fence row for this token (0 rows: a newer holder loaded here).
const FENCE_SQL: &str = "INSERT INTO flowgate_fence (lane, token, at) VALUES ($1, $2, CURRENT_TIMESTAMP)
  ON CONFLICT (lane) DO UPDATE SET token = excluded.token, at = excluded.at WHERE flowgate_fence.token <= excluded.token";
/// Claim an input's ledger row (0 rows: this version was loaded before).
const CLAIM_SQL: &str = "INSERT INTO flowgate_loaded (pipeline, step, object, fingerprint, rows, loaded_at) VALUES ($1, $2, $3, $4, 0, CURRENT_TIMESTAMP)
  ON CONFLICT (pipeline, step, object) DO UPDATE SET fingerprint = excluded.fingerprint, rows = 0, loaded_at = excluded.loaded_at
  WHERE flowgate_loaded.fingerprint <> excluded.fingerprint";
const ROWS_SQL: &str =
    "UPDATE flowgate_loaded SET rows = $4 WHERE pipeline = $1 AND step = $2 AND object = $3";

fn fenced_out(lane: &str) -> StepError {
    crate::lane::lost_error().context(format!(
        "a newer run of lane `{lane}` has loaded into this database since this run took its claim"
    ))
}

/// Every statement that merges the staged rows into the table, in order.
fn merge_statements(
    qualified: &str,
    list: &str,
    cols: &[(String, DataType)],
    t: &LoadTarget,
) -> Vec<String> {
    let key = conflict_cols(t);
    let conflict: Vec<String> = key.iter().map(|c| quote_ident(c)).collect();
    let conflict = conflict.join(", ");
    let set: Vec<String> = cols
        .iter()
        .filter(|(n, _)| !key.contains(n))
        .map(|(n, _)| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
        .collect();
    let append =
        format!("INSERT INTO {qualified} ({list}) SELECT {list} FROM _fg_stage ORDER BY _fg_ord");
    // The last occurrence of a key wins.
    let keyed = |on_conflict: &str| {
        format!(
            "INSERT INTO {qualified} ({list}) SELECT {list} FROM (SELECT DISTINCT ON ({conflict}) * FROM _fg_stage ORDER BY {conflict}, _fg_ord DESC) s ON CONFLICT ({conflict}) {on_conflict}"
        )
    };
    let update = if set.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", set.join(", "))
    };
    match t.mode {
        LoadMode::Append => vec![append],
        LoadMode::Replace if key.is_empty() => vec![format!("DELETE FROM {qualified}"), append],
        LoadMode::Replace => vec![format!("DELETE FROM {qualified}"), keyed(&update)],
        LoadMode::Upsert => vec![keyed(&update)],
        LoadMode::AppendVersions => vec![keyed("DO NOTHING")],
    }
}

impl SqlSource {
    /// Make the load ledger's tables, once for this source.
    async fn ledger_pg(&self, c: &tokio_postgres::Client) -> Result<(), StepError> {
        let SqlSource::Postgres { ledger, .. } = self else {
            return Ok(());
        };
        ledger
            .get_or_try_init(|| async {
                crate::pg::create_if_absent(c, LEDGER_PG)
                    .await
                    .map_err(pg_error)
            })
            .await
            .map(|_| ())
    }

    /// Inputs already loaded by `pipeline`/`step`: object → fingerprint.
    pub async fn loaded_inputs(
        &self,
        pipeline: &str,
        step: &str,
    ) -> Result<HashMap<String, String>, StepError> {
        match self {
            SqlSource::Postgres { .. } => {
                let c = self.pg().await?;
                self.ledger_pg(&c).await?;
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

    /// Load one input, streamed from `batches`, in one transaction that records it
    /// (and what it supersedes) in the ledger. `None`: this version of the input
    /// was loaded before (by another loader, perhaps at this very moment).
    pub async fn load(
        &self,
        claim: &LoadClaim,
        t: &LoadTarget,
        input: &Input,
        batches: Batches,
    ) -> Result<Option<Loaded>, StepError> {
        match self {
            SqlSource::Postgres { .. } => self.load_pg(claim, t, input, batches).await,
            SqlSource::Sqlite { path } => {
                let (path, claim, t, input) =
                    (path.clone(), claim.clone(), t.clone(), input.clone());
                blocking(move || load_sqlite(&path, &claim, &t, &input, batches)).await
            }
        }
    }

    async fn load_pg(
        &self,
        claim: &LoadClaim,
        t: &LoadTarget,
        input: &Input,
        mut batches: Batches,
    ) -> Result<Option<Loaded>, StepError> {
        let mut client = self.pg().await?;
        self.ledger_pg(&client).await?;
        let qualified = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let mut loaded = Loaded::default();
        let tx = client.transaction().await.map_err(pg_error)?;
        if tx
            .execute(FENCE_SQL, &[&claim.lane, &claim.token])
            .await
            .map_err(pg_error)?
            == 0
        {
            return Err(fenced_out(&claim.lane));
        }
        let mine = tx
            .execute(
                CLAIM_SQL,
                &[
                    &claim.pipeline,
                    &claim.step,
                    &input.object,
                    &input.fingerprint,
                ],
            )
            .await
            .map_err(pg_error)?;
        if mine == 0 {
            return Ok(None);
        }
        for (object, fp) in &input.superseded {
            tx.execute(CLAIM_SQL, &[&claim.pipeline, &claim.step, object, fp])
                .await
                .map_err(pg_error)?;
        }
        let columns = || async {
            let rows = tx
                .query(
                    "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                    &[&t.schema, &t.table],
                )
                .await
                .map_err(pg_error)?;
            Ok::<HashSet<String>, StepError>(rows.iter().map(|r| r.get(0)).collect())
        };
        let mut existing = columns().await?;
        if existing.is_empty() {
            // Loads creating one table at once would fail all but the first
            // (its CREATE waits for the first to commit, then finds the name
            // taken): the second waits here instead, then sees the table.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&qualified],
            )
            .await
            .map_err(pg_error)?;
            existing = columns().await?;
        }
        let Some(first) = batches.recv().await.transpose()? else {
            // An empty input: a replaced table becomes empty.
            if t.mode == LoadMode::Replace && !existing.is_empty() {
                loaded.rows_written = tx
                    .execute(&format!("DELETE FROM {qualified}"), &[])
                    .await
                    .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            return Ok(Some(loaded));
        };
        let schema = first.schema();
        let cols = columns_with_key(&schema, t)?;
        // Create the table, or grow it with the input's new columns.
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
        let mut next = Some(first);
        while let Some(b) = next {
            same_columns(&b, &schema, &input.object)?;
            loaded.rows_in += b.num_rows() as u64;
            copy_text(&b, &mut buf)?;
            if buf.len() >= 1 << 20 {
                sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                    .await
                    .map_err(pg_error)?;
            }
            next = batches.recv().await.transpose()?;
        }
        if !buf.is_empty() {
            sink.send(bytes::Bytes::from(buf)).await.map_err(pg_error)?;
        }
        sink.finish().await.map_err(pg_error)?;
        for stmt in merge_statements(&qualified, &list, &cols, t) {
            loaded.rows_written = tx.execute(&stmt, &[]).await.map_err(pg_error)?;
        }
        let rows = i64::try_from(loaded.rows_in).unwrap_or(i64::MAX);
        tx.execute(
            ROWS_SQL,
            &[&claim.pipeline, &claim.step, &input.object, &rows],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Some(loaded))
    }
}

/// The input's columns, checked to hold the load's key.
fn columns_with_key(schema: &Schema, t: &LoadTarget) -> Result<Vec<(String, DataType)>, StepError> {
    for k in conflict_cols(t) {
        if schema.index_of(&k).is_err() {
            return Err(StepError::user(format!(
                "the input has no column `{k}` (needed as the load's key)"
            )));
        }
    }
    Ok(schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect())
}

fn same_columns(b: &RecordBatch, schema: &Schema, object: &str) -> Result<(), StepError> {
    if b.schema().fields() != schema.fields() {
        return Err(StepError::user(format!(
            "{object}: its columns change part-way through"
        )));
    }
    Ok(())
}

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
    claim: &LoadClaim,
    t: &LoadTarget,
    input: &Input,
    mut batches: Batches,
) -> Result<Option<Loaded>, StepError> {
    let mut c = sqlite_rw(path)?;
    c.execute_batch(LEDGER_SQLITE).map_err(sq)?;
    let mut loaded = Loaded::default();
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sq)?;
    let sqlite = |sql: &str| sql.replace('$', "?");
    if tx
        .execute(
            &sqlite(FENCE_SQL),
            rusqlite::params![claim.lane, claim.token],
        )
        .map_err(sq)?
        == 0
    {
        return Err(fenced_out(&claim.lane));
    }
    let claim_sql = sqlite(CLAIM_SQL);
    if tx
        .execute(
            &claim_sql,
            rusqlite::params![claim.pipeline, claim.step, input.object, input.fingerprint],
        )
        .map_err(sq)?
        == 0
    {
        return Ok(None);
    }
    for (object, fp) in &input.superseded {
        tx.execute(
            &claim_sql,
            rusqlite::params![claim.pipeline, claim.step, object, fp],
        )
        .map_err(sq)?;
    }
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
    let Some(first) = batches.blocking_recv().transpose()? else {
        // An empty input: a replaced table becomes empty.
        if t.mode == LoadMode::Replace && !existing.is_empty() {
            loaded.rows_written = tx
                .execute(&format!("DELETE FROM {table}"), [])
                .map_err(sq)? as u64;
        }
        tx.commit().map_err(sq)?;
        return Ok(Some(loaded));
    };
    let schema = first.schema();
    let cols = columns_with_key(&schema, t)?;
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
    // Rows are applied in order, so the last occurrence of a key wins.
    let keyed = !conflict.is_empty();
    let tail = match t.mode {
        LoadMode::Upsert | LoadMode::Replace if keyed && !set.is_empty() => format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            conflict
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            set.join(", ")
        ),
        LoadMode::Upsert | LoadMode::Replace | LoadMode::AppendVersions if keyed => {
            " ON CONFLICT DO NOTHING".into()
        }
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
        let mut next = Some(first);
        while let Some(b) = next {
            same_columns(&b, &schema, &input.object)?;
            loaded.rows_in += b.num_rows() as u64;
            loaded.rows_written += insert_sqlite(&mut st, &b)?;
            next = batches.blocking_recv().transpose()?;
        }
    }
    let rows = i64::try_from(loaded.rows_in).unwrap_or(i64::MAX);
    tx.execute(
        &sqlite(ROWS_SQL),
        rusqlite::params![claim.pipeline, claim.step, input.object, rows],
    )
    .map_err(sq)?;
    tx.commit().map_err(sq)?;
    Ok(Some(loaded))
}

/// Insert every row of `b` with the prepared statement; returns rows written.
fn insert_sqlite(st: &mut rusqlite::Statement<'_>, b: &RecordBatch) -> Result<u64, StepError> {
    use rusqlite::types::Value as V;
    let opts = FormatOptions::default();
    let fmts: Vec<ArrayFormatter<'_>> = b
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
        .collect::<Result<_, _>>()
        .map_err(|e| StepError::internal(e.to_string()))?;
    let mut written = 0;
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
                    DataType::Boolean => V::Integer(i64::from(col.as_boolean().value(row))),
                    DataType::Int64 => {
                        V::Integer(col.as_primitive::<arrow::datatypes::Int64Type>().value(row))
                    }
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
                    DataType::Binary => V::Blob(col.as_binary::<i32>().value(row).to_vec()),
                    DataType::Timestamp(TimeUnit::Microsecond, _) => {
                        V::Text(fmts[i].value(row).to_string().replace('T', " "))
                    }
                    _ => V::Text(fmts[i].value(row).to_string()),
                }
            })
            .collect();
        written += st.execute(rusqlite::params_from_iter(values)).map_err(sq)? as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::Field;
    use std::path::Path;
    use std::sync::Arc;

    /// Loaders that each start a load into one table that is not there yet
    /// all load: the first creates it, the others wait and then append.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn loads_creating_one_table_at_once_all_succeed() {
        let url = crate::testing::fresh_postgres_db().await;
        let t = LoadTarget {
            schema: "public".into(),
            table: "landed".into(),
            mode: LoadMode::Append,
            key: vec![],
            version: None,
        };
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let mut loads = Vec::new();
        let mut senders = Vec::new();
        for i in 0..6i64 {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![i]))])
                    .unwrap();
            tx.send(Ok(batch)).await.unwrap();
            senders.push(tx);
            let (url, t) = (url.clone(), t.clone());
            loads.push(tokio::spawn(async move {
                let source = SqlSource::open(&url, Path::new(".")).unwrap();
                let claim = LoadClaim {
                    pipeline: "p".into(),
                    step: "load".into(),
                    lane: format!("lane-{i}"),
                    token: 1,
                };
                let input = Input {
                    object: format!("part-{i}"),
                    fingerprint: "f".into(),
                    superseded: vec![],
                };
                source.load(&claim, &t, &input, rx).await
            }));
        }
        // Every load has its first batch and is creating (or waiting to);
        // then their inputs end.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        drop(senders);
        for (i, load) in loads.into_iter().enumerate() {
            let loaded = load.await.unwrap();
            assert!(
                matches!(
                    loaded,
                    Ok(Some(Loaded {
                        rows_written: 1,
                        ..
                    }))
                ),
                "load {i}: {loaded:?}"
            );
        }
        let client = crate::pg::connect(&url, "test").await.unwrap();
        let ids: Vec<i64> = client
            .query("SELECT id FROM landed ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5]);
    }

    /// A table whose name holds `"; "` (the statements were once split there):
    /// `replace` makes the newest input the whole table, twice over.
    #[tokio::test]
    async fn replace_into_a_table_named_with_a_semicolon() {
        let url = crate::testing::fresh_postgres_db().await;
        let source = SqlSource::open(&url, Path::new(".")).unwrap();
        let t = LoadTarget {
            schema: "public".into(),
            table: "orders; daily".into(),
            mode: LoadMode::Replace,
            key: vec![],
            version: None,
        };
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        for (n, ids) in [vec![1i64, 2, 3], vec![7, 8]].into_iter().enumerate() {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids))])
                .unwrap();
            tx.send(Ok(batch)).await.unwrap();
            drop(tx);
            let claim = LoadClaim {
                pipeline: "p".into(),
                step: "load".into(),
                lane: "p".into(),
                token: 1,
            };
            let input = Input {
                object: format!("day-{n}"),
                fingerprint: "f".into(),
                superseded: vec![],
            };
            let loaded = source.load(&claim, &t, &input, rx).await;
            assert!(matches!(loaded, Ok(Some(_))), "load {n}: {loaded:?}");
        }
        let client = crate::pg::connect(&url, "test").await.unwrap();
        let ids: Vec<i64> = client
            .query(r#"SELECT id FROM "orders; daily" ORDER BY id"#, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, [7, 8]);
    }
}
