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
        /// The load ledger's tables are there (made once per step attempt,
        /// not once per input: making them takes a database-wide lock).
        ledger: Arc<tokio::sync::OnceCell<()>>,
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
    /// The column may hold NULL.
    pub nullable: bool,
}

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    pub primary_key: Vec<String>,
}

/// A keyset position: a row's cursor and key as the database prints them, at
/// full precision.
pub type Position = (String, Vec<String>);

/// What a read found besides its rows.
#[derive(Debug, Clone, Default)]
pub struct ReadEnd {
    /// The table's newest position; `None` when it has no row with a cursor.
    pub top: Option<Position>,
    /// Connections the rows were read over.
    pub streams: usize,
}

/// Which rows of a table to read.
///
/// Every read re-reads the rows from `lookback` before the last position up to the
/// newest cursor (with no look-back, the rows at the last cursor value itself), and
/// the caller drops those it emitted before by fingerprint (cursor, key and the
/// row's content): so a row updated again without its cursor moving (a cursor of
/// whole seconds, a date) is read again, and one committed late within the
/// look-back is caught.
#[derive(Debug, Clone)]
pub struct Window {
    pub cursor: String,
    pub key: Vec<String>,
    /// The last position read (`None`: the first read, a full snapshot).
    pub after: Option<Position>,
    /// How far before the last position rows are read again (zero: only the rows
    /// at the last cursor value).
    pub lookback: Duration,
    /// Rows whose cursor is NULL are read too (they have no position).
    pub nulls: bool,
}

impl Window {
    /// Rows whose cursor and key come as text too (the helper columns are NULL
    /// otherwise): rows near the newest change are remembered, and after the first
    /// read every row read may be one already extracted.
    fn texts_for_every_row(&self) -> bool {
        self.after.is_some()
    }
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
        // With its causes: "error performing TLS handshake" alone does not say why.
        None => {
            let text = crate::error::chain(&e);
            let advice = crate::pg::advice(&e);
            format!("{text}{advice}")
        }
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
                ledger: Arc::default(),
            })
        } else {
            Err(format!("`{url}` is not a SQL store URL"))
        }
    }

    /// The step's connection; connects on first use and after the connection broke.
    pub(crate) async fn pg(&self) -> Result<PgConn, StepError> {
        let SqlSource::Postgres { url, conn, .. } = self else {
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
        let client = crate::pg::connect(url, "source")
            .await
            .map_err(|e| match e {
                crate::pg::ConnectError::Url(e) => {
                    StepError::user(format!("the database URL: {e}"))
                }
                crate::pg::ConnectError::Connect(e) => {
                    pg_error(e).context("connecting to the source database")
                }
            })?;
        client
            // Positions are kept as the server prints them: in one style, whatever
            // the role or database says, so they read back the same tomorrow.
            .batch_execute(
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3",
            )
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
                        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, a.atttypmod, NOT a.attnotnull
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
                            nullable: r.get(4),
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

    /// The Arrow schema of what [`SqlSource::read`] sends: the table's columns,
    /// then the cursor as text, each key column as text (NULL where not needed,
    /// see [`Window`]) and the in-window flag (cursor within the look-back of the
    /// newest cursor).
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

    /// Rows of `table` whose `column` is NULL (0 when the column cannot hold NULL).
    pub async fn count_nulls(
        &self,
        schema_name: &str,
        table: &TableInfo,
        column: &str,
    ) -> Result<u64, StepError> {
        if !table.columns.iter().any(|c| c.name == column && c.nullable) {
            return Ok(0);
        }
        match self {
            SqlSource::Postgres { .. } => {
                let c = self.pg().await?;
                let sql = format!(
                    "SELECT count(*) FROM {}.{} WHERE {} IS NULL",
                    quote_ident(schema_name),
                    quote_ident(&table.name),
                    quote_ident(column)
                );
                let n: i64 = c.query_one(&sql, &[]).await.map_err(pg_error)?.get(0);
                Ok(u64::try_from(n).unwrap_or(0))
            }
            SqlSource::Sqlite { path } => {
                let sql = format!(
                    "SELECT count(*) FROM {} WHERE {} IS NULL",
                    quote_ident(&table.name),
                    quote_ident(column)
                );
                let path = path.clone();
                sqlite_read::blocking(move || {
                    let c = sqlite_read::open(&path)?;
                    let n: i64 = c
                        .query_row(&sql, [], |r| r.get(0))
                        .map_err(sqlite_read::sq)?;
                    Ok(u64::try_from(n).unwrap_or(0))
                })
                .await
            }
        }
    }

    /// Stream the window's rows in batches of `batch_rows`, in no particular
    /// order, and return the table's newest position (largest (cursor, key)) as of
    /// the same snapshot; no position when the table has no row with a cursor
    /// (then only rows with a NULL cursor are sent, if the window asks for them). A large first read from PostgreSQL is split over up to
    /// `parallel` connections, each reading a range of the table's pages in the
    /// same snapshot.
    pub async fn read(
        &self,
        schema_name: &str,
        table: &TableInfo,
        window: &Window,
        batch_rows: usize,
        parallel: usize,
        tx: mpsc::Sender<Result<RecordBatch, StepError>>,
    ) -> Result<ReadEnd, StepError> {
        let out_schema = Self::read_schema(table, window);
        match self {
            SqlSource::Postgres { url, .. } => {
                let mut client = self.pg().await?;
                // One snapshot for the newest position and the rows: every row the
                // position covers is in the stream. The position comes first: the
                // rows near it are marked (see `Window`).
                let txn = snapshot_transaction(&mut client).await?;
                let top_sql = pg_top_query(schema_name, table, window)?;
                let top: Option<Position> = txn
                    .query_opt(&top_sql, &[])
                    .await
                    .map_err(pg_error)?
                    .map(|r| (r.get(0), (1..=window.key.len()).map(|i| r.get(i)).collect()));
                if top.is_none() && !window.nulls {
                    return Ok(ReadEnd::default());
                }
                let ranges = match (&window.after, parallel) {
                    (None, n) if n > 1 => page_ranges(&txn, schema_name, table, n).await?,
                    _ => vec![PageRange::ALL],
                };
                let mut wire: Vec<PgWire> = table
                    .columns
                    .iter()
                    .map(|c| c.wire.unwrap_or(PgWire::Text))
                    .collect();
                wire.push(PgWire::Text);
                wire.extend(window.key.iter().map(|_| PgWire::Text));
                wire.push(PgWire::Bool);
                let hi_text = top.as_ref().map(|h| h.0.as_str());
                let sqls = ranges
                    .iter()
                    .map(|r| pg_query(schema_name, table, window, hi_text, *r))
                    .collect::<Result<Vec<_>, _>>()?;
                if let [sql] = &sqls[..] {
                    copy_into(&txn, sql, wire, out_schema, batch_rows, &tx).await?;
                    txn.commit().await.map_err(pg_error)?;
                    return Ok(ReadEnd { top, streams: 1 });
                }
                let snapshot: String = txn
                    .query_one("SELECT pg_export_snapshot()", &[])
                    .await
                    .map_err(pg_error)?
                    .get(0);
                // Each range decodes on its own task; the set stops them all if
                // this read is dropped.
                let mut streams = tokio::task::JoinSet::new();
                let n = sqls.len();
                for sql in sqls {
                    let (url, snapshot, wire, schema, tx) = (
                        url.clone(),
                        snapshot.clone(),
                        wire.clone(),
                        out_schema.clone(),
                        tx.clone(),
                    );
                    streams.spawn(async move {
                        let mut c = Self::pg_connect(&url).await?;
                        let t = snapshot_transaction(&mut c).await?;
                        t.batch_execute(&format!(
                            "SET TRANSACTION SNAPSHOT {}",
                            quote_literal(&snapshot)
                        ))
                        .await
                        .map_err(pg_error)?;
                        copy_into(&t, &sql, wire, schema, batch_rows, &tx).await?;
                        t.commit().await.map_err(pg_error)
                    });
                }
                drop(tx);
                while let Some(done) = streams.join_next().await {
                    done.map_err(|e| StepError::internal(format!("reader task: {e}")))??;
                }
                txn.commit().await.map_err(pg_error)?;
                Ok(ReadEnd { top, streams: n })
            }
            SqlSource::Sqlite { path } => {
                let top = sqlite_read::read(
                    path.clone(),
                    table.clone(),
                    window.clone(),
                    out_schema,
                    batch_rows,
                    tx,
                )
                .await?;
                Ok(ReadEnd { top, streams: 1 })
            }
        }
    }
}

/// A read-only transaction that sees one snapshot throughout.
async fn snapshot_transaction(
    c: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, StepError> {
    c.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)
}

/// Part of a table by physical position (`ctid`): pages `[start, end)`.
#[derive(Debug, Clone, Copy)]
struct PageRange {
    start: Option<u64>,
    end: Option<u64>,
}

impl PageRange {
    const ALL: PageRange = PageRange {
        start: None,
        end: None,
    };

    fn condition(&self) -> Option<String> {
        let mut c = Vec::new();
        if let Some(s) = self.start {
            c.push(format!("ctid >= '({s},0)'::tid"));
        }
        if let Some(e) = self.end {
            c.push(format!("ctid < '({e},0)'::tid"));
        }
        (!c.is_empty()).then(|| c.join(" AND "))
    }
}

/// Below this many pages (8 KiB each) per connection a table is read over one.
const MIN_PAGES_PER_STREAM: u64 = 64;

/// Up to `n` ranges covering the whole table (open-ended at both ends), each at
/// least [`MIN_PAGES_PER_STREAM`] pages.
async fn page_ranges(
    txn: &tokio_postgres::Transaction<'_>,
    schema_name: &str,
    table: &TableInfo,
    n: usize,
) -> Result<Vec<PageRange>, StepError> {
    let qualified = format!("{}.{}", quote_ident(schema_name), quote_ident(&table.name));
    let row = txn
        .query_one(
            "SELECT (pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint)::bigint",
            &[&qualified],
        )
        .await
        .map_err(pg_error)?;
    let pages = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    let n = (n as u64).min(pages / MIN_PAGES_PER_STREAM).max(1);
    let per = pages.div_ceil(n);
    Ok((0..n)
        .map(|i| PageRange {
            start: (i > 0).then_some(i * per),
            end: (i + 1 < n).then_some((i + 1) * per),
        })
        .collect())
}

/// Run one COPY … TO STDOUT (binary) and send its rows as batches.
async fn copy_into(
    txn: &tokio_postgres::Transaction<'_>,
    sql: &str,
    wire: Vec<PgWire>,
    schema: SchemaRef,
    batch_rows: usize,
    tx: &mpsc::Sender<Result<RecordBatch, StepError>>,
) -> Result<(), StepError> {
    let stream = txn.copy_out(sql).await.map_err(pg_error)?;
    futures::pin_mut!(stream);
    let mut decoder = CopyDecoder::new(wire);
    let mut builder = BatchBuilder::new(schema);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(pg_error)?;
        decoder
            .feed(&chunk, &mut builder, batch_rows)
            .map_err(|e| StepError::internal(e.to_string()))?;
        while builder.rows >= batch_rows {
            let batch = builder.finish().map_err(ext)?;
            if tx.send(Ok(batch)).await.is_err() {
                return Ok(()); // the consumer stopped; it says why
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

fn pg_type_of<'a>(table: &'a TableInfo, column: &str) -> Result<&'a str, StepError> {
    table
        .columns
        .iter()
        .find(|c| c.name == column)
        .map(|c| c.sql_type.as_str())
        .ok_or_else(|| StepError::user(format!("table `{}` has no column `{column}`", table.name)))
}

/// The table's newest row: (cursor, key…) as text. (The ORDER BY names the
/// table's columns through its alias: a bare name would sort by the text output
/// column of the same name, where '9' comes after '10'.)
fn pg_top_query(schema_name: &str, table: &TableInfo, w: &Window) -> Result<String, StepError> {
    pg_type_of(table, &w.cursor)?;
    let cursor = quote_ident(&w.cursor);
    let mut select = vec![format!("t.{cursor}::text")];
    let mut order = vec![format!("t.{cursor} DESC")];
    for k in &w.key {
        select.push(format!("t.{}::text", quote_ident(k)));
        order.push(format!("t.{} DESC", quote_ident(k)));
    }
    Ok(format!(
        "SELECT {} FROM {}.{} AS t WHERE t.{cursor} IS NOT NULL ORDER BY {} LIMIT 1",
        select.join(", "),
        quote_ident(schema_name),
        quote_ident(&table.name),
        order.join(", ")
    ))
}

/// The COPY statement for a window, over one range of pages. No ORDER BY: the
/// newest position comes from [`pg_top_query`] in the same snapshot. `hi` is the
/// newest cursor (`None`: no row has one, so only rows with a NULL cursor are read).
fn pg_query(
    schema_name: &str,
    table: &TableInfo,
    w: &Window,
    hi: Option<&str>,
    pages: PageRange,
) -> Result<String, StepError> {
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
    let at = |text: &str| format!("{}::{ctype}", quote_literal(text));
    // A position moved back by the look-back (timestamp cursors only; a zero
    // look-back works for any type).
    let back = |text: &str| match w.lookback.as_micros() {
        0 => at(text),
        us => format!("({} - interval '{us} microseconds')", at(text)),
    };
    let mut range = Vec::new();
    // Rows this close to the newest change are remembered, so the next read can
    // tell a row it already extracted from a new version or a late commit.
    let in_window = match hi {
        Some(hi) => {
            range.push(format!("{cursor} <= {}", at(hi)));
            format!("({cursor} >= {})", back(hi))
        }
        None => "false".to_string(),
    };
    if let Some((c, _)) = &w.after {
        range.push(format!("{cursor} >= {}", back(c)));
    }
    // Text of cursor and key only where a fingerprint needs it: the casts cost as
    // much as the rest of the row.
    let text = |expr: String| match w.texts_for_every_row() {
        true => format!("{expr}::text"),
        false => format!("CASE WHEN {in_window} THEN {expr}::text END"),
    };
    select.push(format!("{} AS {CURSOR_TEXT}", text(cursor.clone())));
    for (i, k) in w.key.iter().enumerate() {
        select.push(format!("{} AS {KEY_TEXT}{i}", text(quote_ident(k))));
    }
    select.push(format!("{in_window} AS {IN_WINDOW}"));
    let mut conditions = Vec::new();
    match (range.is_empty(), w.nulls) {
        (true, _) => conditions.push(format!("{cursor} IS NULL")),
        (false, true) => {
            conditions.push(format!("({cursor} IS NULL OR ({}))", range.join(" AND ")))
        }
        (false, false) => conditions.extend(range),
    }
    conditions.extend(pages.condition());
    Ok(format!(
        "COPY (SELECT {} FROM {}.{} WHERE {}) TO STDOUT (FORMAT binary)",
        select.join(", "),
        quote_ident(schema_name),
        quote_ident(&table.name),
        conditions.join(" AND "),
    ))
}
