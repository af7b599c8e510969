//! Continuous consumption (`[stream]`, run by `flowgate serve`): a Kafka
//! topic's events in micro-batches into a PostgreSQL table (or a BigQuery
//! one: see [`bigquery`] for its guarantee, at least once), ignored types
//! dropped and counted, events the table cannot take dead-lettered with the
//! reason and their (topic, partition, offset).
//!
//! Exactly once into the table: each batch's rows and the next offset of each
//! of its partitions are written in one transaction, the offsets' rows locked
//! first; events below a partition's recorded offset were written before and
//! are left out. So a restart, a rebalance that hands a partition to another
//! instance while a batch is in flight, or a broker restart never writes an
//! event twice. Kafka's group offsets are committed after the transaction:
//! they only say where to start reading, never what was written.

pub mod bigquery;
pub mod contract;
pub mod decode;
pub mod google;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod letters;
pub mod metrics;
pub mod sink;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::config::model::StreamSpec;
use crate::store::Location;

/// Is `url` a Kafka store (`kafka://host:port[,host:port]`)?
pub fn is_kafka_url(url: &str) -> bool {
    url.starts_with("kafka://")
}

/// Errors of a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream: {0}")]
    Config(String),
    #[error("stream: the table {table}: {message}")]
    Sink { table: String, message: String },
    #[error("stream: Kafka: {0}")]
    Kafka(String),
    #[error("stream: dead letters: {0}")]
    DeadLetter(String),
}

impl StreamError {
    /// What the table `table` refused or failed at, secrets masked.
    pub fn sink(table: &str, message: &str) -> StreamError {
        StreamError::Sink {
            table: table.to_string(),
            message: crate::secret::redact(message),
        }
    }
}

/// The `[stream]` of a plan: templates, checked.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub spec: StreamSpec,
    pub dead_letter: Location,
    pub batch_events: usize,
    pub batch_bytes: u64,
    pub batch_wait: Duration,
}

/// What a stream consumes and where it writes, for one set of parameters.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub bootstrap: String,
    /// librdkafka's security settings from the store URL's query
    /// (`security.protocol`, `sasl.*`, `ssl.*`).
    pub kafka_options: Vec<(String, String)>,
    pub topics: Vec<String>,
    pub group: String,
    pub type_field: String,
    pub ignore: HashSet<String>,
    pub required: Vec<String>,
    /// The declared contract, compiled.
    pub contract: Option<std::sync::Arc<contract::Contract>>,
    pub sink_url: String,
    pub table: String,
    pub dead_letter: Location,
}

impl StreamPlan {
    /// Render every template with `params`; the first that fails says which
    /// setting and why (a missing `getenv()` variable names itself).
    pub fn render(
        &self,
        plan: &crate::plan::Plan,
        params: &Value,
    ) -> Result<Rendered, StreamError> {
        let ctx = serde_json::json!({ "params": params, "pipeline": plan.name, "env": plan.env });
        let r = |what: &str, t: &str| {
            crate::template::render(t, &ctx)
                .map(|s| s.trim().to_string())
                .map_err(|e| StreamError::Config(format!("{what}: {e}")))
        };
        let s = &self.spec;
        let store_url = |name: &str| {
            plan.stores
                .get(name)
                .map(|st| r(&format!("the URL of store `{name}`"), &st.url))
                .unwrap_or_else(|| Err(StreamError::Config(format!("unknown store `{name}`"))))
        };
        let (bootstrap, kafka_options) =
            kafka_url(&store_url(&s.from)?).map_err(StreamError::Config)?;
        let sink_url = store_url(&s.to.store)?;
        if bigquery::is_bigquery_url(&sink_url) {
            bigquery::Store::parse(&sink_url).map_err(StreamError::Config)?;
        }
        let mut ignore = HashSet::new();
        for (i, t) in s.ignore.iter().enumerate() {
            ignore.extend(types(&r(&format!("ignore[{i}]"), t)?).map_err(StreamError::Config)?);
        }
        Ok(Rendered {
            bootstrap,
            kafka_options,
            topics: s
                .topics
                .iter()
                .enumerate()
                .map(|(i, t)| r(&format!("topics[{i}]"), t))
                .collect::<Result<_, _>>()?,
            group: r("group", &s.group)?,
            type_field: r("type_field", s.type_field.as_deref().unwrap_or("type"))?,
            ignore,
            required: s
                .required
                .iter()
                .map(|t| r("required", t))
                .collect::<Result<_, _>>()?,
            contract: match &s.contract {
                None => None,
                Some(c) => {
                    let file = plan.dir.join(r("contract.file", &c.file)?);
                    let object = match &c.object {
                        Some(o) => Some(r("contract.object", o)?),
                        None => None,
                    };
                    let loaded = contract::Contract::load(&file, object.as_deref())
                        .map_err(StreamError::Config)?;
                    Some(std::sync::Arc::new(loaded))
                }
            },
            sink_url,
            table: r("to.table", &s.to.table)?,
            dead_letter: Location {
                store: self.dead_letter.store.clone(),
                prefix: r("dead_letter", &self.dead_letter.prefix)?,
            },
        })
    }
}

/// What `plan`'s stream does with `params` (declared, checked, defaulted): the
/// first setting that cannot be rendered is the error (a missing `getenv()`
/// variable names itself). The pipeline's `.env` is read for `getenv()`.
pub fn prepare(
    plan: &crate::plan::Plan,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<Option<(Rendered, Value)>, StreamError> {
    let Some(stream) = &plan.stream else {
        return Ok(None);
    };
    crate::template::use_dotenv(&plan.dir.join(".env")).map_err(StreamError::Config)?;
    let params = crate::engine::resolve_params(plan, params).map_err(StreamError::Config)?;
    let params = serde_json::to_value(params).unwrap_or_default();
    let rendered = stream.render(plan, &params)?;
    Ok(Some((rendered, params)))
}

/// Where the stream `r` (of `plan`, with `params`) keeps its dead letters.
pub fn dead_letters(
    plan: &crate::plan::Plan,
    r: &Rendered,
    params: &Value,
) -> Result<sink::DeadLetters, StreamError> {
    let stores =
        crate::steps::context::Stores::open(plan, &serde_json::json!({ "params": params }))
            .map_err(|e| StreamError::DeadLetter(e.message))?;
    let store = stores
        .get(&r.dead_letter.store)
        .map_err(|e| StreamError::DeadLetter(e.message))?
        .clone();
    Ok(sink::DeadLetters {
        store,
        prefix: r.dead_letter.prefix.clone(),
    })
}

/// Consume `plan`'s stream as [`prepare`] rendered it (`r`, with `params`)
/// until `cancel`.
pub async fn serve(
    plan: &crate::plan::Plan,
    r: &Rendered,
    params: &Value,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<(), StreamError> {
    let Some(stream) = &plan.stream else {
        return Ok(());
    };
    let dead = dead_letters(plan, r, params)?;
    let metrics = metrics::of(&r.group);
    #[cfg(feature = "kafka")]
    return kafka::run(plan, stream, r, dead, metrics, cancel).await;
    #[cfg(not(feature = "kafka"))]
    {
        let _ = (stream, dead, metrics, cancel);
        Err(StreamError::Config(
            "this flowgate was built without the `kafka` feature".into(),
        ))
    }
}

/// A `kafka://host:port[,host:port][?option=value&…]` URL: the brokers, and
/// the librdkafka settings a secured cluster needs (`security.protocol`,
/// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`, …);
/// any other option is refused. Passwords are masked wherever flowgate prints.
fn kafka_url(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let rest = url.trim_start_matches("kafka://");
    let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut options = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let (k, v) = (k.into_owned(), v.into_owned());
        if !(k == "security.protocol" || k.starts_with("sasl.") || k.starts_with("ssl.")) {
            return Err(format!(
                "the Kafka store's option `{k}` is not one flowgate passes on: \
                 use security.protocol, sasl.* or ssl.* (librdkafka's names)"
            ));
        }
        if k.contains("password") || k.contains("secret") {
            crate::secret::register(&v);
        }
        options.push((k, v));
    }
    Ok((hosts.trim_end_matches('/').to_string(), options))
}

/// The event types in one `ignore` entry: a JSON list, a JSON string that holds
/// one (a `.env` value quoted twice), or a plain type name.
fn types(text: &str) -> Result<Vec<String>, String> {
    let mut v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) if text.starts_with('[') => {
            return Err(format!(
                "`{text}` looks like a JSON list but does not parse"
            ));
        }
        Err(_) => {
            return Ok(if text.is_empty() {
                vec![]
            } else {
                vec![text.to_string()]
            });
        }
    };
    if let Value::String(inner) = &v {
        v = serde_json::from_str(inner).unwrap_or_else(|_| Value::String(inner.clone()));
    }
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                other => Err(format!("an ignored event type is not a string: {other}")),
            })
            .collect(),
        Value::String(s) => Ok(vec![s]),
        other => Err(format!("`{other}` is not an event type or a list of them")),
    }
}

#[cfg(test)]
mod tests {
    use super::types;

    #[test]
    fn kafka_urls_carry_brokers_and_security_settings() {
        let (hosts, options) = super::kafka_url(
            "kafka://b1:9093,b2:9093?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512&sasl.password=p%26ss-kafka-secret",
        )
        .unwrap();
        assert_eq!(hosts, "b1:9093,b2:9093");
        assert_eq!(
            options[2],
            ("sasl.password".into(), "p&ss-kafka-secret".into())
        );
        assert_eq!(
            crate::secret::redact("auth failed with p&ss-kafka-secret"),
            "auth failed with ***"
        );
        assert_eq!(
            super::kafka_url("kafka://h:1/").unwrap(),
            ("h:1".into(), vec![])
        );
        let e = super::kafka_url("kafka://h:1?group.id=x").unwrap_err();
        assert!(e.contains("`group.id`"), "{e}");
    }

    #[test]
    fn ignore_entries_are_lists_quoted_lists_or_names() {
        assert_eq!(types(r#"["A","B"]"#).unwrap(), ["A", "B"]);
        assert_eq!(types(r#""[\"A\", \"B\"]""#).unwrap(), ["A", "B"]);
        assert_eq!(types("Pinged").unwrap(), ["Pinged"]);
        assert!(types("").unwrap().is_empty());
        assert!(types("[A,").is_err());
        assert!(types("[1]").is_err());
    }
}
