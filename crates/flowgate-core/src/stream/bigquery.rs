//! A stream's BigQuery table, through `tabledata.insertAll` (BigQuery's REST
//! API): the table's schema is read once and is the events' contract, as a
//! PostgreSQL table's columns are.
//!
//! The guarantee is **at least once**, never exactly once: a batch is inserted,
//! then Kafka's offsets are committed. An instance that dies (or loses its
//! partitions to a rebalance) between the two leaves that batch to be read and
//! inserted again, so those events are in the table twice. Each row's
//! `insertId` is `<topic>/<partition>/<offset>`, which real BigQuery uses to drop
//! most such repeats (best effort, for about a minute); nothing here rests on
//! that. Give the table `_topic`, `_partition` and `_offset` columns and every
//! repeat can be counted and removed by those three. Only a batch cut short
//! that way is ever repeated: the repeats of one such moment are at most one
//! batch, one run of offsets per partition.
//!
//! The store: `bigquery://PROJECT?credentials=/path/key.json` (a service
//! account's key file, else `GOOGLE_APPLICATION_CREDENTIALS`);
//! `&endpoint=http://host:port` talks to another server (an emulator), without
//! credentials when none are given. The table is `dataset.table` or
//! `project.dataset.table`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::StreamError;
use super::decode::{At, Cell, Column, Decoded, Decoder, Kind};
use super::google::ServiceAccount;
use super::sink::{DeadLetters, Message, Written};

const GOOGLE: &str = "https://bigquery.googleapis.com";
/// BigQuery's advice for one insertAll request: about 500 rows, well under its
/// 10 MB limit.
const ROWS_PER_REQUEST: usize = 500;
const BYTES_PER_REQUEST: usize = 5 << 20;

/// Is `url` a BigQuery store (`bigquery://PROJECT…`)?
pub fn is_bigquery_url(url: &str) -> bool {
    url.starts_with("bigquery://")
}

/// A `bigquery://` store, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    pub project: Option<String>,
    pub endpoint: String,
    pub credentials: Option<PathBuf>,
}

impl Store {
    pub fn parse(url: &str) -> Result<Store, String> {
        let u = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let project = u.host_str().filter(|h| !h.is_empty()).map(str::to_string);
        let mut endpoint = None;
        let mut credentials = None;
        for (k, v) in u.query_pairs() {
            match &*k {
                "endpoint" => endpoint = Some(v.trim_end_matches('/').to_string()),
                "credentials" => credentials = Some(PathBuf::from(&*v)),
                other => {
                    return Err(format!(
                        "a bigquery:// store takes `credentials` and `endpoint`, not `{other}`"
                    ));
                }
            }
        }
        let credentials = credentials.or_else(|| {
            std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        if endpoint.is_none() && credentials.is_none() {
            return Err("a bigquery:// store needs a service account's key file: \
                 `bigquery://PROJECT?credentials=/path/key.json`, or GOOGLE_APPLICATION_CREDENTIALS"
                .into());
        }
        Ok(Store {
            project,
            endpoint: endpoint.unwrap_or_else(|| GOOGLE.into()),
            credentials,
        })
    }
}

/// A column's type as insertAll takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Send {
    /// A JSON string (also INT64 and NUMERIC: no precision lost on the way).
    Text,
    Bool,
    /// A RECORD or a REPEATED column: the event's JSON value as it is.
    Value,
}

pub struct BqSink {
    http: reqwest::Client,
    /// `…/projects/P/datasets/D/tables/T`
    base: String,
    account: Option<ServiceAccount>,
    pub table: String,
    pub columns: Vec<Column>,
    send: Vec<Send>,
}

impl BqSink {
    /// Read the key file and the table's schema.
    pub async fn open(url: &str, table: &str) -> Result<BqSink, StreamError> {
        let store = Store::parse(url).map_err(StreamError::Config)?;
        let parts: Vec<&str> = table.split('.').collect();
        let (project, dataset, name) = match parts[..] {
            [p, d, t] => (p.to_string(), d, t),
            [d, t] => match &store.project {
                Some(p) => (p.clone(), d, t),
                None => {
                    return Err(StreamError::Config(format!(
                        "the BigQuery table `{table}` names no project, and neither does the store: \
                         use project.dataset.table or bigquery://PROJECT"
                    )));
                }
            },
            _ => {
                return Err(StreamError::Config(format!(
                    "the BigQuery table `{table}` is not dataset.table or project.dataset.table"
                )));
            }
        };
        let account = match &store.credentials {
            Some(path) => Some(ServiceAccount::from_file(path).map_err(StreamError::Config)?),
            None => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| StreamError::sink(table, &format!("an HTTP client: {e}")))?;
        let mut sink = BqSink {
            http,
            base: format!(
                "{}/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{name}",
                store.endpoint
            ),
            account,
            table: table.to_string(),
            columns: Vec::new(),
            send: Vec::new(),
        };
        let meta = sink.call(reqwest::Method::GET, "", None).await?;
        let fields = meta["schema"]["fields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if fields.is_empty() {
            return Err(StreamError::sink(table, "the table has no columns"));
        }
        for f in &fields {
            let (column, send) = column(f);
            sink.columns.push(column);
            sink.send.push(send);
        }
        Ok(sink)
    }

    /// One request to the table's URL (`tail` after it); the answer's JSON,
    /// or what BigQuery said was wrong.
    async fn call(
        &mut self,
        method: reqwest::Method,
        tail: &str,
        body: Option<String>,
    ) -> Result<Value, StreamError> {
        let mut req = self.http.request(method, format!("{}{tail}", self.base));
        if let Some(a) = &mut self.account {
            let token = a
                .token(&format!("{GOOGLE}/"))
                .map_err(|e| StreamError::sink(&self.table, &e))?;
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let what = if tail.is_empty() {
            "reading its schema"
        } else {
            "inserting rows"
        };
        let resp = req
            .send()
            .await
            .map_err(|e| StreamError::sink(&self.table, &format!("{what}: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| StreamError::sink(&self.table, &format!("{what}: {e}")))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| text.chars().take(300).collect());
            let hint = match status.as_u16() {
                404 if tail.is_empty() => {
                    " (create the table first; its columns are the events' contract)"
                }
                401 | 403 => {
                    " (the service account needs bigquery.tables.get and updateData on it)"
                }
                _ => "",
            };
            return Err(StreamError::sink(
                &self.table,
                &format!("{what}: HTTP {status}: {msg}{hint}"),
            ));
        }
        Ok(v)
    }

    /// Insert `batch`'s rows (those the contract takes), dead-letter the rest
    /// with the reason, insertAll's own refusals included.
    pub async fn write(
        &mut self,
        batch: &[Message],
        rules: &super::Rendered,
        dead: &DeadLetters,
    ) -> Result<Written, StreamError> {
        let decoder = Decoder {
            columns: &self.columns,
            type_field: &rules.type_field,
            ignore: &rules.ignore,
            required: &rules.required,
            contract: rules.contract.as_deref(),
        };
        let mut out = Written::default();
        // Each row's JSON, serialised once (for sizing requests and sending).
        let mut rows: Vec<(usize, String)> = Vec::new();
        let mut letters: Vec<(usize, String)> = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            let next = out.next.entry((m.topic.clone(), m.partition)).or_insert(0);
            *next = (*next).max(m.offset + 1);
            let at = At {
                topic: &m.topic,
                partition: m.partition,
                offset: m.offset,
            };
            match decoder.decode(m.payload.as_deref(), at) {
                Decoded::Row(r) => rows.push((i, self.row(r))),
                Decoded::Ignored => out.ignored += 1,
                Decoded::Dead(why) => letters.push((i, why)),
            }
        }
        crate::testing::crash_point("stream-before-commit");
        for chunk in chunks(&rows) {
            let refused = self.insert(batch, chunk).await?;
            out.rows += (chunk.len() - refused.len()) as u64;
            letters.extend(refused);
        }
        letters.sort();
        out.dead = letters.len() as u64;
        dead.put(batch, &letters).await?;
        Ok(out)
    }

    /// One insertAll of `rows`; the rows BigQuery refused, with its reasons
    /// (the others are in: `skipInvalidRows`).
    async fn insert(
        &mut self,
        batch: &[Message],
        rows: &[(usize, String)],
    ) -> Result<Vec<(usize, String)>, StreamError> {
        let mut body =
            String::from(r#"{"skipInvalidRows":true,"ignoreUnknownValues":false,"rows":["#);
        for (n, (i, row)) in rows.iter().enumerate() {
            let m = &batch[*i];
            let id = Value::String(format!("{}/{}/{}", m.topic, m.partition, m.offset));
            let comma = if n == 0 { "" } else { "," };
            // Writing to a String cannot fail.
            let _ = write!(body, r#"{comma}{{"insertId":{id},"json":{row}}}"#);
        }
        body.push_str("]}");
        let resp = self
            .call(reqwest::Method::POST, "/insertAll", Some(body))
            .await?;
        let mut refused = Vec::new();
        for e in resp["insertErrors"].as_array().into_iter().flatten() {
            let Some(k) = e["index"]
                .as_u64()
                .map(|k| k as usize)
                .filter(|k| *k < rows.len())
            else {
                return Err(StreamError::sink(
                    &self.table,
                    &format!("insertAll answered with an error for no row of the request: {e}"),
                ));
            };
            let why: Vec<String> = e["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    let at = x["location"].as_str().filter(|l| !l.is_empty());
                    format!(
                        "{}{}",
                        at.map(|l| format!("`{l}`: ")).unwrap_or_default(),
                        x["message"].as_str().unwrap_or("refused")
                    )
                })
                .collect();
            refused.push((
                rows[k].0,
                format!("BigQuery refused it: {}", why.join("; ")),
            ));
        }
        Ok(refused)
    }

    /// The insertAll `json` of a decoded row, as text: defaults left out, so
    /// BigQuery gives them.
    fn row(&self, cells: Vec<Cell>) -> String {
        let mut obj = Map::with_capacity(cells.len());
        for ((c, send), cell) in self.columns.iter().zip(&self.send).zip(cells) {
            let v = match cell {
                Cell::Default => continue,
                Cell::Null => Value::Null,
                Cell::Text(t) => match send {
                    Send::Bool => Value::Bool(t == "true"),
                    Send::Value => serde_json::from_str(&t).unwrap_or(Value::String(t)),
                    Send::Text => Value::String(t),
                },
            };
            obj.insert(c.name.clone(), v);
        }
        Value::Object(obj).to_string()
    }
}

/// A field of the table's schema as a column of the contract.
fn column(f: &Value) -> (Column, Send) {
    let mode = f["mode"].as_str().unwrap_or("NULLABLE");
    let defaulted = f["defaultValueExpression"]
        .as_str()
        .is_some_and(|d| !d.is_empty());
    let (kind, send) = match (f["type"].as_str().unwrap_or(""), mode) {
        (_, "REPEATED") | ("RECORD" | "STRUCT", _) => (Kind::Json, Send::Value),
        ("STRING", _) => (Kind::Text, Send::Text),
        ("INTEGER" | "INT64", _) => (Kind::Int, Send::Text),
        ("FLOAT" | "FLOAT64" | "NUMERIC" | "BIGNUMERIC", _) => (Kind::Numeric, Send::Text),
        ("BOOLEAN" | "BOOL", _) => (Kind::Bool, Send::Bool),
        ("TIMESTAMP", _) => (Kind::Timestamp, Send::Text),
        // A JSON column takes the value's JSON text.
        ("JSON", _) => (Kind::Json, Send::Text),
        // DATE, DATETIME, TIME, BYTES, GEOGRAPHY…: as text, BigQuery judges.
        _ => (Kind::Other, Send::Text),
    };
    let column = Column {
        name: f["name"].as_str().unwrap_or_default().to_string(),
        kind,
        needed: mode == "REQUIRED" && !defaulted,
        defaulted,
    };
    (column, send)
}

/// `rows` in requests of at most [`ROWS_PER_REQUEST`] rows and about
/// [`BYTES_PER_REQUEST`] bytes (a row is never split).
fn chunks(rows: &[(usize, String)]) -> Vec<&[(usize, String)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (k, (_, r)) in rows.iter().enumerate() {
        let size = r.len() + 64;
        if k > start && (k - start >= ROWS_PER_REQUEST || bytes + size > BYTES_PER_REQUEST) {
            out.push(&rows[start..k]);
            (start, bytes) = (k, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn store_urls_name_project_credentials_and_endpoint() {
        let s = Store::parse("bigquery://warehouse-dev?credentials=/secrets/dev.json").unwrap();
        assert_eq!(s.project.as_deref(), Some("warehouse-dev"));
        assert_eq!(s.endpoint, GOOGLE);
        assert_eq!(s.credentials, Some(PathBuf::from("/secrets/dev.json")));
        let s = Store::parse("bigquery://p?endpoint=http://127.0.0.1:9050/").unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:9050");
        assert!(
            Store::parse("bigquery://p?key=x")
                .unwrap_err()
                .contains("not `key`")
        );
    }

    #[test]
    fn schema_fields_become_columns_and_rows_their_json() {
        let f = |t: &str, mode: &str| json!({"name": t.to_lowercase(), "type": t, "mode": mode});
        let (id, _) = column(&f("INTEGER", "REQUIRED"));
        assert!(id.needed && id.kind == Kind::Int);
        let (tags, send) = column(&f("STRING", "REPEATED"));
        assert_eq!((tags.kind, send), (Kind::Json, Send::Value));
        let (st, _) = column(
            &json!({"name": "s", "type": "STRING", "mode": "REQUIRED", "defaultValueExpression": "'new'"}),
        );
        assert!(st.defaulted && !st.needed);
        let rows: Vec<(usize, String)> =
            (0..1201).map(|i| (i, format!(r#"{{"i":{i}}}"#))).collect();
        let c = chunks(&rows);
        assert_eq!(
            c.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [500, 500, 201]
        );
        let big: Vec<(usize, String)> = (0..3).map(|i| (i, "x".repeat(3 << 20))).collect();
        assert_eq!(
            chunks(&big).len(),
            3,
            "about 5 MB a request, a row never split"
        );
    }
}
