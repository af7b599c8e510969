//! SQL stores (`postgres://`, `sqlite://`) as sources: list tables, describe them,
//! and stream a keyset-bounded window of rows as Arrow batches.

pub mod arrow_build;
pub mod pgcopy;
mod sqlite_read;
pub mod target;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::{ErrorClass, StepError};
use arrow_build::{BatchBuilder, schema};
use pgcopy::{CopyDecoder, PgWire};

/// Names of the helper columns every extract query adds after the table's own.
pub const CURSOR_TEXT: &str = "__fg_cursor";
pub const KEY_TEXT: &str = "__fg_key";
pub const IN_WINDOW: &str = "__fg_recent";

/// A cursor value as a UTC time, when it is one (`2026-01-01 10:00:00.123`,
/// `2026-01-01T10:00:00Z`, `2026-01-01 10:00:00+00`); times without a zone are UTC.
pub fn parse_source_timestamp(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{DateTime, NaiveDateTime, Utc};
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(d) = DateTime::parse_from_str(t, f) {
            return Some(d.with_timezone(&Utc));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, f) {
            return Some(d.and_utc());
        }
    }
    None
}

/// Is this URL a SQL store?
pub fn is_sql_url(url: &str) -> bool {
    url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url.starts_with("sqlite://")
}

/// A SQL source.
#[derive(Debug, Clone)]
pub enum SqlSource {
    Postgres {
        url: String,
        /// One connection per step attempt, opened on first use.
        conn: Arc<tokio::sync::Mutex<Option<tokio_postgres::Client>>>,
    },
    Sqlite {
        path: PathBuf,
    },
}

/// The step's PostgreSQL connection, held for one use at a time.
pub(crate) type PgConn =
    tokio::sync::OwnedMappedMutexGuard<Option<tokio_postgres::Client>, tokio_postgres::Client>;

/// A column as the database describes it.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    /// The type as SQL spells it (`timestamp with time zone`, `numeric(10,2)`, `TEXT`).
    pub sql_type: String,
    pub arrow: DataType,
    /// How PostgreSQL's binary COPY is decoded (`None`: selected as text).
    pub wire: Option<PgWire>,
}

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    pub primary_key: Vec<String>,
}

/// Which rows of a table to read.
#[derive(Debug, Clone)]
pub struct Window {
    pub cursor: String,
    pub key: Vec<String>,
    /// The upper bound: the table's largest cursor when the extract began (text).
    pub hi: String,
    /// Rows after this keyset position (cursor text, key texts)…
    pub after: Option<(String, Vec<String>)>,
    /// …or, with a look-back, every row whose cursor is at least this far before
    /// the last watermark.
    pub lookback: Option<Duration>,
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn ext(e: impl std::fmt::Display) -> StepError {
    StepError::external(e.to_string())
}

fn pg_error(e: tokio_postgres::Error) -> StepError {
    let class = match e.code().map(|c| c.code()) {
        // Undefined table/column, syntax, datatype mismatch, invalid text: fixing needs a person.
        Some(c) if c.starts_with("42") || c.starts_with("22") => ErrorClass::USER,
        Some("28P01") | Some("28000") => ErrorClass::EXTERNAL_FATAL,
        _ => ErrorClass::EXTERNAL_RETRIABLE,
    };
    let text = match e.as_db_error() {
        Some(db) => format!("PostgreSQL {}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    StepError::new(class, text)
}

impl SqlSource {
    pub fn open(url: &str, base: &Path) -> Result<SqlSource, String> {
        if let Some(p) = url.strip_prefix("sqlite://") {
            let path = Path::new(p);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                base.join(path)
            };
            Ok(SqlSource::Sqlite { path })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            crate::secret::register_url_password(url);
            Ok(SqlSource::Postgres {
                url: url.to_string(),
                conn: Arc::default(),
            })
        } else {
            Err(format!("`{url}` is not a SQL store URL"))
        }
    }

    /// The step's connection; connects on first use and after the connection broke.
    pub(crate) async fn pg(&self) -> Result<PgConn, StepError> {
        let SqlSource::Postgres { url, conn } = self else {
            return Err(StepError::internal("not PostgreSQL"));
        };
        let mut slot = conn.clone().lock_owned().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = Some(Self::pg_connect(url).await?);
        }
        tokio::sync::OwnedMutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| StepError::internal("no PostgreSQL connection"))
    }

    async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, StepError> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| pg_error(e).context("connecting to the source database"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "source connection closed");
            }
        });
        client
            .batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
            .await
            .map_err(pg_error)?;
        Ok(client)
    }

    /// Rows of `table` whose `column` equals `value`, as JSON objects (routing
    /// tables). `table` may be `schema.table`.
    pub async fn select_where(
        &self,
        table: &str,
        column: &str,
        value: &str,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, StepError> {
        let qualified: Vec<String> = table.split('.').map(quote_ident).collect();
        let qualified = qualified.join(".");
        match self {
            SqlSource::Postgres { .. } => {
                let c = self.pg().await?;
                let sql = format!(
                    "SELECT row_to_json(t)::text FROM {qualified} t WHERE {}::text = $1",
                    quote_ident(column)
                );
                let rows = c.query(&sql, &[&value]).await.map_err(pg_error)?;
                rows.iter()
                    .map(|r| {
                        let text: String = r.get(0);
                        serde_json::from_str(&text).map_err(|e| StepError::internal(e.to_string()))
                    })
                    .collect()
            }
            SqlSource::Sqlite { path } => {
                let (path, value) = (path.clone(), value.to_string());
                let sql = format!(
                    "SELECT * FROM {qualified} WHERE CAST({} AS TEXT) = ?1",
                    quote_ident(column)
                );
                sqlite_read::blocking(move || {
                    let c = sqlite_read::open(&path)?;
                    let mut st = c.prepare(&sql).map_err(sqlite_read::sq)?;
                    let names: Vec<String> =
                        st.column_names().iter().map(|s| s.to_string()).collect();
                    let mut rows = st.query([&value]).map_err(sqlite_read::sq)?;
                    let mut out = Vec::new();
                    while let Some(r) = rows.next().map_err(sqlite_read::sq)? {
                        let mut m = serde_json::Map::new();
                        for (i, n) in names.iter().enumerate() {
                            use rusqlite::types::ValueRef;
                            let v = match r.get_ref(i).map_err(sqlite_read::sq)? {
                                ValueRef::Null => serde_json::Value::Null,
                                ValueRef::Integer(x) => x.into(),
                                ValueRef::Real(x) => x.into(),
                                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                                ValueRef::Blob(b) => hex::encode(b).into(),
                            };
                            m.insert(n.clone(), v);
                        }
                        out.push(m);
                    }
                    Ok(out)
                })
                .await
            }
        }
    }

    /// Tables of a schema (PostgreSQL) or of the database (SQLite), sorted.
    pub async fn tables(&self, schema_name: &str) -> Result<Vec<String>, StepError> {
        match self {
            SqlSource::Postgres { .. } => {
                let c = self.pg().await?;
                let rows = c
                    .query(
                        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY 1",
                        &[&schema_name],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            }
            SqlSource::Sqlite { path } => sqlite_read::tables(path.clone()).await,
        }
    }

    pub async fn describe(&self, schema_name: &str, table: &str) -> Result<TableInfo, StepError> {
        match self {
            SqlSource::Postgres { .. } => {
                let c = self.pg().await?;
                let qualified = format!("{}.{}", quote_ident(schema_name), quote_ident(table));
                let cols = c
                    .query(
                        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, a.atttypmod
                         FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
                         ORDER BY a.attnum",
                        &[&qualified],
                    )
                    .await
                    .map_err(|e| pg_error(e).context(format!("table {schema_name}.{table}")))?;
                let pk = c
                    .query(
                        "SELECT a.attname::text FROM pg_index i
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                         WHERE i.indrelid = $1::text::regclass AND i.indisprimary
                         ORDER BY array_position(i.indkey, a.attnum)",
                        &[&qualified],
                    )
                    .await
                    .map_err(pg_error)?;
                let columns = cols
                    .iter()
                    .map(|r| {
                        let oid: u32 = r.get(2);
                        let typmod: i32 = r.get(3);
                        let (wire, arrow) = match PgWire::for_type(oid, typmod) {
                            Some((w, a)) => (Some(w), a),
                            None => (None, DataType::Utf8),
                        };
                        ColumnInfo {
                            name: r.get(0),
                            sql_type: r.get(1),
                            arrow,
                            wire,
                        }
                    })
                    .collect();
                Ok(TableInfo {
                    name: table.to_string(),
                    columns,
                    primary_key: pk.iter().map(|r| r.get(0)).collect(),
                })
            }
            SqlSource::Sqlite { path } => {
                sqlite_read::describe(path.clone(), table.to_string()).await
            }
        }
    }

    /// The table's largest cursor value as text, or `None` when the table is empty.
    pub async fn max_cursor(
        &self,
        schema_name: &str,
        table: &TableInfo,
        cursor: &str,
    ) -> Result<Option<String>, StepError> {
        match self {
            SqlSource::Postgres { .. } => {
                let c = self.pg().await?;
                let sql = format!(
                    "SELECT max({})::text FROM {}.{}",
                    quote_ident(cursor),
                    quote_ident(schema_name),
                    quote_ident(&table.name)
                );
                let row = c.query_one(&sql, &[]).await.map_err(pg_error)?;
                Ok(row.get(0))
            }
            SqlSource::Sqlite { path } => {
                sqlite_read::max_cursor(path.clone(), table.name.clone(), cursor.to_string()).await
            }
        }
    }

    /// The Arrow schema of what [`SqlSource::read`] sends: the table's columns,
    /// then the cursor as text, each key column as text, and the in-window flag.
    pub fn read_schema(table: &TableInfo, window: &Window) -> SchemaRef {
        let mut fields: Vec<(String, DataType)> = table
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.arrow.clone()))
            .collect();
        fields.push((CURSOR_TEXT.into(), DataType::Utf8));
        for i in 0..window.key.len() {
            fields.push((format!("{KEY_TEXT}{i}"), DataType::Utf8));
        }
        fields.push((IN_WINDOW.into(), DataType::Boolean));
        schema(fields)
    }

    /// Stream the window's rows, ordered by (cursor, key), in batches of `batch_rows`.
    pub async fn read(
        &self,
        schema_name: &str,
        table: &TableInfo,
        window: &Window,
        batch_rows: usize,
        tx: mpsc::Sender<Result<RecordBatch, StepError>>,
    ) -> Result<(), StepError> {
        let out_schema = Self::read_schema(table, window);
        match self {
            SqlSource::Postgres { .. } => {
                let client = self.pg().await?;
                let sql = pg_query(schema_name, table, window)?;
                let stream = client.copy_out(&sql).await.map_err(pg_error)?;
                futures::pin_mut!(stream);
                let mut wire: Vec<PgWire> = table
                    .columns
                    .iter()
                    .map(|c| c.wire.unwrap_or(PgWire::Text))
                    .collect();
                wire.push(PgWire::Text);
                wire.extend(window.key.iter().map(|_| PgWire::Text));
                wire.push(PgWire::Bool);
                let mut decoder = CopyDecoder::new(wire);
                let mut builder = BatchBuilder::new(out_schema);
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(pg_error)?;
                    decoder
                        .feed(&chunk, &mut builder, batch_rows)
                        .map_err(|e| StepError::internal(e.to_string()))?;
                    while builder.rows >= batch_rows {
                        let batch = builder.finish().map_err(ext)?;
                        if tx.send(Ok(batch)).await.is_err() {
                            return Ok(());
                        }
                        decoder
                            .feed(&[], &mut builder, batch_rows)
                            .map_err(|e| StepError::internal(e.to_string()))?;
                    }
                }
                if builder.rows > 0 {
                    let _ = tx.send(Ok(builder.finish().map_err(ext)?)).await;
                }
                Ok(())
            }
            SqlSource::Sqlite { path } => {
                sqlite_read::read(
                    path.clone(),
                    table.clone(),
                    window.clone(),
                    out_schema,
                    batch_rows,
                    tx,
                )
                .await
            }
        }
    }
}

fn pg_type_of<'a>(table: &'a TableInfo, column: &str) -> Result<&'a str, StepError> {
    table
        .columns
        .iter()
        .find(|c| c.name == column)
        .map(|c| c.sql_type.as_str())
        .ok_or_else(|| StepError::user(format!("table `{}` has no column `{column}`", table.name)))
}

/// The COPY statement for a window.
fn pg_query(schema_name: &str, table: &TableInfo, w: &Window) -> Result<String, StepError> {
    let mut select: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            if c.wire.is_some() {
                quote_ident(&c.name)
            } else {
                format!("{}::text", quote_ident(&c.name))
            }
        })
        .collect();
    let cursor = quote_ident(&w.cursor);
    let ctype = pg_type_of(table, &w.cursor)?;
    let hi = format!("{}::{ctype}", quote_literal(&w.hi));
    select.push(format!("{cursor}::text AS {CURSOR_TEXT}"));
    for (i, k) in w.key.iter().enumerate() {
        select.push(format!("{}::text AS {KEY_TEXT}{i}", quote_ident(k)));
    }
    let mut conditions = vec![format!("{cursor} <= {hi}")];
    match (&w.after, w.lookback) {
        (Some((c, _)), Some(l)) => {
            let lower = format!(
                "({}::{ctype} - interval '{} microseconds')",
                quote_literal(c),
                l.as_micros()
            );
            conditions.push(format!("{cursor} >= {lower}"));
        }
        (Some((c, keys)), None) => {
            let mut lhs = vec![cursor.clone()];
            let mut rhs = vec![format!("{}::{ctype}", quote_literal(c))];
            for (k, v) in w.key.iter().zip(keys) {
                lhs.push(quote_ident(k));
                rhs.push(format!("{}::{}", quote_literal(v), pg_type_of(table, k)?));
            }
            conditions.push(format!("({}) > ({})", lhs.join(", "), rhs.join(", ")));
        }
        (None, _) => {}
    }
    // Rows this close to the newest change are remembered, so the next look-back
    // can tell a row it already extracted from one committed late.
    select.push(match w.lookback {
        Some(l) => format!(
            "({cursor} >= ({hi} - interval '{} microseconds')) AS {IN_WINDOW}",
            l.as_micros()
        ),
        None => format!("false AS {IN_WINDOW}"),
    });
    let mut order = vec![cursor];
    order.extend(w.key.iter().map(|k| quote_ident(k)));
    Ok(format!(
        "COPY (SELECT {} FROM {}.{} WHERE {} ORDER BY {}) TO STDOUT (FORMAT binary)",
        select.join(", "),
        quote_ident(schema_name),
        quote_ident(&table.name),
        conditions.join(" AND "),
        order.join(", ")
    ))
}
