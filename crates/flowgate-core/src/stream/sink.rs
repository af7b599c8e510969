//! A stream's table: PostgreSQL's, each batch's rows and its partitions' next
//! offsets in one transaction (see the module above), or BigQuery's (see
//! `bigquery`); and its dead letters.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::SinkExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::json;

use super::StreamError;
use super::decode::{At, Cell, Column, Decoded, Decoder, Kind, copy_line};
use crate::store::{StoreHandle, join_key};

/// A consumed message, owned.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// What a batch did.
#[derive(Debug, Default, Clone)]
pub struct Written {
    pub rows: u64,
    pub ignored: u64,
    pub dead: u64,
    /// Events an earlier write (this instance's or another's) already handled.
    pub seen_before: u64,
    /// The next offset of each (topic, partition) of the batch.
    pub next: BTreeMap<(String, i32), i64>,
}

/// A stream's table: PostgreSQL (exactly once) or BigQuery (at least once).
/// One per stream, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Sink {
    Pg(PgSink),
    Bq(super::bigquery::BqSink),
}

impl Sink {
    /// Open the table `table` of the store at `url`.
    pub async fn open(url: &str, table: &str) -> Result<Sink, StreamError> {
        if super::bigquery::is_bigquery_url(url) {
            Ok(Sink::Bq(super::bigquery::BqSink::open(url, table).await?))
        } else {
            Ok(Sink::Pg(PgSink::open(url, table).await?))
        }
    }

    /// Whether the connection is gone (the next write reconnects). BigQuery's
    /// is an HTTP client, which reconnects by itself.
    pub fn is_closed(&self) -> bool {
        matches!(self, Sink::Pg(s) if s.is_closed())
    }

    /// Write `batch` (see each sink's own `write`).
    pub async fn write(
        &mut self,
        batch: &[Message],
        rules: &super::Rendered,
        dead: &DeadLetters,
    ) -> Result<Written, StreamError> {
        match self {
            Sink::Pg(s) => s.write(batch, rules, dead).await,
            Sink::Bq(s) => s.write(batch, rules, dead).await,
        }
    }
}

/// Where the offsets live, beside the rows, in the sink's database.
const OFFSETS: &str = "flowgate_stream_offsets";

pub struct PgSink {
    client: tokio_postgres::Client,
    /// The table as given (`schema.table`): the offsets' key.
    pub table: String,
    pub columns: Vec<Column>,
    /// The table, quoted for SQL.
    target: String,
}

fn pg(table: &str, what: &str, e: &tokio_postgres::Error) -> StreamError {
    let detail = e
        .as_db_error()
        .map(|d| format!(" ({})", d.message()))
        .unwrap_or_default();
    StreamError::sink(table, &format!("{what}: {e}{detail}"))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl PgSink {
    /// Connect, make sure the offsets table is there, read the table's columns.
    pub async fn open(url: &str, table: &str) -> Result<PgSink, StreamError> {
        let err = |what: &str, e: &tokio_postgres::Error| pg(table, what, e);
        let client = crate::pg::connect(url, "stream sink")
            .await
            .map_err(|e| match e {
                crate::pg::ConnectError::Url(e) => {
                    StreamError::Config(format!("the database URL: {e}"))
                }
                crate::pg::ConnectError::Connect(e) => err("connecting", &e),
            })?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {OFFSETS} (sink TEXT NOT NULL, topic TEXT NOT NULL, partition INT NOT NULL, \
             next_offset BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (sink, topic, partition))"
        );
        crate::pg::create_if_absent(&client, &create)
            .await
            .map_err(|e| err("creating the offsets table", &e))?;
        let (schema, name) = match table.split_once('.') {
            Some((s, t)) => (Some(s.to_string()), t.to_string()),
            None => (None, table.to_string()),
        };
        let rows = client
            .query(
                "SELECT column_name::text, data_type::text, is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO' AND is_generated = 'NEVER', \
                        column_default IS NOT NULL OR is_identity = 'YES', \
                        is_generated <> 'NEVER' OR identity_generation = 'ALWAYS' \
                 FROM information_schema.columns WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2 ORDER BY ordinal_position",
                &[&schema, &name],
            )
            .await
            .map_err(|e| err("reading its columns", &e))?;
        // A generated column (or an identity always generated) is PostgreSQL's
        // alone; one with a default gets it when an event lacks the field.
        let columns: Vec<Column> = rows
            .iter()
            .filter(|r| !r.get::<_, Option<bool>>(4).unwrap_or(false))
            .map(|r| Column {
                name: r.get(0),
                kind: Kind::of(r.get::<_, &str>(1)),
                needed: r.get(2),
                defaulted: r.get(3),
            })
            .collect();
        if rows.is_empty() {
            return Err(StreamError::Sink {
                table: table.to_string(),
                message: "no such table (or no columns it may write): create it first; its columns are the events' contract".into(),
            });
        }
        let target = match &schema {
            Some(s) => format!("{}.{}", quote(s), quote(&name)),
            None => quote(&name),
        };
        Ok(PgSink {
            client,
            table: table.to_string(),
            target,
            columns,
        })
    }

    /// Whether the connection is gone (the next write reconnects).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Write `batch`: lock its partitions' offsets, leave out what was written
    /// before, dead-letter what the table cannot take (before the commit: a
    /// crash writes the same dead letters again, under the same keys), copy the
    /// rest, move the offsets, commit.
    pub async fn write(
        &mut self,
        batch: &[Message],
        rules: &super::Rendered,
        dead: &DeadLetters,
    ) -> Result<Written, StreamError> {
        let PgSink {
            client,
            table,
            columns,
            target,
        } = self;
        let decoder = Decoder {
            columns,
            type_field: &rules.type_field,
            ignore: &rules.ignore,
            required: &rules.required,
            contract: rules.contract.as_deref(),
        };
        let err = |what: &str, e: &tokio_postgres::Error| pg(table, what, e);
        let mut tx = client.transaction().await.map_err(|e| err("BEGIN", &e))?;
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in batch {
            next.entry((m.topic.clone(), m.partition)).or_insert(-1);
        }
        let mut before = BTreeMap::new();
        for (topic, partition) in next.keys() {
            tx.execute(
                &format!("INSERT INTO {OFFSETS} (sink, topic, partition, next_offset) VALUES ($1, $2, $3, -1) ON CONFLICT DO NOTHING"),
                &[&*table, topic, partition],
            )
            .await
            .map_err(|e| err("recording a partition", &e))?;
            let row = tx
                .query_one(
                    &format!("SELECT next_offset FROM {OFFSETS} WHERE sink = $1 AND topic = $2 AND partition = $3 FOR UPDATE"),
                    &[&*table, topic, partition],
                )
                .await
                .map_err(|e| err("locking a partition's offset", &e))?;
            before.insert((topic.clone(), *partition), row.get::<_, i64>(0));
        }
        let mut out = Written::default();
        let mut rows: Vec<(usize, Vec<Cell>)> = Vec::new();
        let mut letters: Vec<(usize, String)> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let k = (m.topic.clone(), m.partition);
            if m.offset < before[&k] {
                out.seen_before += 1;
                continue;
            }
            if let Some(n) = next.get_mut(&k) {
                *n = (*n).max(m.offset + 1);
            }
            match decoder.decode(
                m.payload.as_deref(),
                At {
                    topic: &m.topic,
                    partition: m.partition,
                    offset: m.offset,
                },
            ) {
                Decoded::Row(r) => rows.push((i, r)),
                Decoded::Ignored => out.ignored += 1,
                Decoded::Dead(why) => letters.push((i, why)),
            }
        }
        // One COPY per set of columns left to their defaults (one, usually).
        let mut groups: BTreeMap<Vec<bool>, Vec<(usize, Vec<Cell>)>> = BTreeMap::new();
        for (i, r) in rows {
            let defaults = r.iter().map(|c| *c == Cell::Default).collect();
            groups.entry(defaults).or_default().push((i, r));
        }
        for (defaults, rows) in &groups {
            let cols: Vec<String> = columns
                .iter()
                .zip(defaults)
                .filter(|(_, d)| !**d)
                .map(|(c, _)| quote(&c.name))
                .collect();
            let sql = format!("COPY {target} ({}) FROM STDIN", cols.join(", "));
            let refused = copy_rows(&mut tx, &sql, rows)
                .await
                .map_err(|e| err("COPY", &e))?;
            out.rows += (rows.len() - refused.len()) as u64;
            letters.extend(refused);
        }
        letters.sort();
        out.dead = letters.len() as u64;
        dead.put(batch, &letters).await?;
        for ((topic, partition), n) in &next {
            if *n > before[&(topic.clone(), *partition)] {
                tx.execute(
                    &format!("UPDATE {OFFSETS} SET next_offset = $4, updated_at = now() WHERE sink = $1 AND topic = $2 AND partition = $3"),
                    &[&*table, topic, partition, n],
                )
                .await
                .map_err(|e| err("moving an offset", &e))?;
            }
        }
        crate::testing::crash_point("stream-before-commit");
        tx.commit().await.map_err(|e| err("COMMIT", &e))?;
        // Partitions whose events were all written before: their offset as
        // recorded, so Kafka's catches up.
        out.next = next
            .into_iter()
            .map(|(k, n)| {
                let b = before[&k];
                (k, n.max(b))
            })
            .filter(|(_, n)| *n >= 0)
            .collect();
        Ok(out)
    }
}

/// Copy `rows` (batch index, fields); when PostgreSQL refuses the batch for its
/// data, find the rows it refuses one by one: those come back with the reason.
async fn copy_rows(
    tx: &mut tokio_postgres::Transaction<'_>,
    sql: &str,
    rows: &[(usize, Vec<Cell>)],
) -> Result<Vec<(usize, String)>, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut all = Vec::new();
    for (_, r) in rows {
        copy_line(r, &mut all);
    }
    let sp = tx.transaction().await?;
    match copy(&sp, sql, all).await {
        Ok(()) => {
            sp.commit().await?;
            return Ok(Vec::new());
        }
        Err(e) if !refused_for_its_data(&e) => return Err(e),
        Err(_) => sp.rollback().await?,
    }
    let mut refused = Vec::new();
    for (i, r) in rows {
        let mut line = Vec::new();
        copy_line(r, &mut line);
        let sp = tx.transaction().await?;
        match copy(&sp, sql, line).await {
            Ok(()) => sp.commit().await?,
            Err(e) if refused_for_its_data(&e) => {
                let why = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                sp.rollback().await?;
                refused.push((*i, format!("the table refused it: {why}")));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

async fn copy(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    body: Vec<u8>,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in::<_, Bytes>(sql).await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(body)).await?;
    sink.finish().await.map(|_| ())
}

/// Data exceptions (class 22) and integrity violations (class 23): the rows'
/// fault, not the connection's.
fn refused_for_its_data(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// Where a stream's dead letters go: one JSON object per event, at
/// `<prefix>/<topic>/<partition>/<offset>.json`, so writing one again (after a
/// crash) overwrites it.
pub struct DeadLetters {
    pub store: StoreHandle,
    pub prefix: String,
}

impl DeadLetters {
    pub async fn put(
        &self,
        batch: &[Message],
        letters: &[(usize, String)],
    ) -> Result<(), StreamError> {
        let writer = self
            .store
            .writer("the stream's dead letters")
            .map_err(|e| StreamError::DeadLetter(e.to_string()))?;
        for (i, why) in letters {
            let m = &batch[*i];
            let body = letter(m, why);
            let key = join_key(
                &self.prefix,
                &format!("{}/{}/{}.json", m.topic, m.partition, m.offset),
            );
            let path = self.store.path(&key).map_err(StreamError::DeadLetter)?;
            writer
                .put(&path, PutPayload::from_bytes(Bytes::from(body)))
                .await
                .map_err(|e| {
                    StreamError::DeadLetter(format!("{}: {e}", self.store.display(&key)))
                })?;
        }
        Ok(())
    }
}

/// A dead letter: where the event was, why, and the event exactly (as text when
/// it is UTF-8, else base64).
pub fn letter(m: &Message, why: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = |b: &Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    let text = |b: &Option<Vec<u8>>| {
        b.as_ref()
            .and_then(|b| std::str::from_utf8(b).ok().map(str::to_string))
    };
    let mut v = json!({
        "topic": m.topic, "partition": m.partition, "offset": m.offset,
        "reason": crate::secret::redact(why),
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    match (text(&m.payload), &m.payload) {
        (Some(t), _) => v["value"] = json!(t),
        (None, Some(b)) => v["value_base64"] = json!(b64(b)),
        (None, None) => {}
    }
    match (text(&m.key), &m.key) {
        (Some(t), _) => v["key"] = json!(t),
        (None, Some(b)) => v["key_base64"] = json!(b64(b)),
        (None, None) => {}
    }
    let mut body = v.to_string().into_bytes();
    body.push(b'\n');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instances starting at once on a database without the offsets table
    /// all open (it failed one in a few: "type … already exists").
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn instances_starting_at_once_all_open() {
        let url = crate::testing::fresh_postgres_db().await;
        let client = crate::pg::connect(&url, "test").await.unwrap();
        client
            .batch_execute("CREATE TABLE events (id bigint)")
            .await
            .unwrap();
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgSink::open(&url, "events").await.map(|_| ()) })
            })
            .collect();
        for (i, open) in opens.into_iter().enumerate() {
            let opened = open.await.unwrap();
            assert!(opened.is_ok(), "instance {i}: {opened:?}");
        }
    }
}
