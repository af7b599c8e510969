//! The pipeline file, as written by people. Doc comments here are the reference
//! documentation and become descriptions in `flowgate schema`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// Each step kind's own section lives in its folder (steps/<kind>/config.rs);
// the step itself is declared by the registry in steps/mod.rs.
pub use crate::steps::StepSpec;
pub use crate::steps::copy::config::{CopySpec, DecryptSpec, Verify};
pub use crate::steps::deliver::config::DeliverSpec;
pub use crate::steps::extract::config::{ExtractSpec, NullCursors, Tables};
pub use crate::steps::load::config::{LoadSpec, TableLoadSpec};
pub use crate::steps::transform::config::TransformSpec;

/// A pipeline: stores named once, triggers, steps ordered by `needs`, policies.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Unique name of the pipeline; runs, watermarks and ledgers are keyed by it.
    pub name: String,
    /// What the pipeline is for, shown by `flowgate validate` and the HTTP API.
    #[serde(default)]
    pub description: Option<String>,
    /// Free variables for templates and expressions: `{{ vars.region }}`. A value
    /// is a string, number, boolean or list, e.g. `mandators = ["tech_head"]` for
    /// `keep = "record.mandator in vars.mandators"`; env overlays set them per
    /// environment (`[env.qa.vars]`).
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Parameters a manual run may pass with `--param key=value`, with defaults.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// What starts a run. A pipeline can always be run by hand as well.
    #[serde(default)]
    pub trigger: TriggerSpec,
    /// Named connections, each given by URL.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreSpec>,
    /// The steps of a run, executed in `needs` order.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// Retries, timeouts and where data that cannot be processed goes.
    #[serde(default)]
    pub policy: PolicySpec,
    /// Who is told about failures and recoveries.
    #[serde(default)]
    pub notify: NotifySpec,
    /// Parameter sets; each set is its own run.
    #[serde(default)]
    pub matrix: Option<MatrixSpec>,
    /// Routing rows looked up for each trigger event; each matching row is its own
    /// run, with the row as `{{ route.* }}`.
    #[serde(default)]
    pub routing: Option<RoutingSpec>,
    /// HTTPS endpoints that `deliver` steps send to, by name (overridden per
    /// environment: `[env.prod.recipients.acme]`).
    #[serde(default)]
    pub recipients: BTreeMap<String, RecipientSpec>,
    /// The dataset a run makes or reads (see [`DatasetSpec`]).
    #[serde(default)]
    pub dataset: Option<DatasetSpec>,
    /// Files and folders (relative to the pipeline file) whose content each run
    /// keeps by hash in the state store, with the pipeline file itself, e.g.
    /// `["lib", "Project"]` for the scripts its command steps run.
    /// `flowgate runs rerun` runs a failed run again with them as they were;
    /// `--latest` takes today's. `.env*` files, `.git`, `.venv`,
    /// `node_modules` and `__pycache__` are never kept: a rerun sees today's.
    #[serde(default)]
    pub pin: Vec<String>,
    /// Continuous consumption while `flowgate serve` runs (see [`StreamSpec`]).
    #[serde(default)]
    pub stream: Option<StreamSpec>,
    /// Environment overlays (`[env.prod]`), selected with `--env` or `FLOWGATE_ENV`;
    /// each overlay has the same shape as the file and is merged over it.
    #[serde(default)]
    pub env: BTreeMap<String, serde_json::Value>,
}

/// A Kafka topic consumed in micro-batches into a PostgreSQL or BigQuery table:
///
/// ```toml
/// [stream]
/// from = "events"                      # a kafka:// store
/// topics = ["delivery-events"]
/// group = "consumer-delivery"
/// ignore = ["DeliveryPinged"]          # by the event's `type`
/// to = { store = "warehouse", table = "delivery" }
/// dead_letter = "dead:delivery"        # store:prefix
/// ```
///
/// Each event's fields go to the table's columns of the same names (the
/// table's own schema is the contract); `_topic`, `_partition`, `_offset` and
/// `_event` (the whole event, json/jsonb) columns are filled when the table has
/// them; a column with a default keeps it for an event without the field. An event that is not a JSON object, lacks a `required` field or has a
/// value its column cannot take goes to the dead letters with the reason and
/// its (topic, partition, offset). Rows and the consumed offsets are written in
/// one transaction, so a restart goes on exactly where the table is; Kafka's
/// group offsets follow after the commit. Every string is a template with
/// `params` and `getenv("NAME")` (the environment, then the pipeline's `.env`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// The `kafka://host:port[,host:port]` store to consume; a secured
    /// cluster's settings go in its query, by librdkafka's names:
    /// `?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512&sasl.username=u&sasl.password=${secret:KAFKA_PASSWORD}&ssl.ca.location=/etc/ca.pem`.
    pub from: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// The consumer group: instances of one group share the partitions.
    pub group: String,
    /// The field holding an event's type (default `type`), or a JSON pointer
    /// (`/meta/type`).
    #[serde(default)]
    pub type_field: Option<String>,
    /// Event types never written (counted as ignored). An entry may also be a
    /// JSON list, or a JSON string holding one (`"[\"A\",\"B\"]"`), as a
    /// `.env` often has it.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Fields every event must have.
    #[serde(default)]
    pub required: Vec<String>,
    /// The events' declared contract: a JSON Schema file (relative to the
    /// pipeline file), and optionally which object of its `$defs` (what
    /// pydantic's `model_json_schema()` writes for several models). An event
    /// that does not match it is a dead letter with the first mismatch.
    #[serde(default)]
    pub contract: Option<ContractSpec>,
    /// Where events are written.
    pub to: StreamSinkSpec,
    /// Where events that cannot be written go, as `store:prefix`: one JSON
    /// object per event at `<prefix>/<topic>/<partition>/<offset>.json`.
    pub dead_letter: String,
    /// When a micro-batch is written.
    #[serde(default)]
    pub batch: BatchSpec,
}

/// `contract = { file = "contracts/delivery.json", object = "DeliveryEvent" }`
/// (both templates: the team's `IMPORT_PATH_<DOMAIN>` and `IMPORT_OBJECT_<DOMAIN>`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    /// A JSON Schema file.
    pub file: String,
    /// An object of the file's `$defs` (or `definitions`); without it, the
    /// whole schema.
    #[serde(default)]
    pub object: Option<String>,
}

/// A stream's table.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSinkSpec {
    /// A `postgres://` store (exactly once) or a `bigquery://` one (at least
    /// once; the table `dataset.table` or `project.dataset.table`).
    pub store: String,
    /// The table, `schema.table` or `table`.
    pub table: String,
}

/// A micro-batch ends at whichever comes first.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Most events (default 10000).
    #[serde(default)]
    pub events: Option<usize>,
    /// Most bytes of event payloads, e.g. `"8MB"` (default 16 MB). What is
    /// read ahead from Kafka is bounded by one batch (its bytes, and its events
    /// in each partition), so a stream holds about two batches in memory.
    #[serde(default)]
    pub bytes: Option<String>,
    /// Longest wait for a batch to fill, e.g. `"500ms"` (default 1 s).
    #[serde(default)]
    pub wait: Option<String>,
}

/// A manual-run parameter.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// Value used when the run does not pass one; without it the parameter is required.
    #[serde(default)]
    pub default: Option<String>,
    /// What the parameter means.
    #[serde(default)]
    pub description: Option<String>,
    /// Its type: `string` (default), `int` or `bool` (`true`/`false`, also
    /// `yes`/`no`, `1`/`0`; templates see `true` or `false`). Checked before a
    /// run starts.
    #[serde(default, rename = "type")]
    pub kind: Option<ParamType>,
    /// The values it may take, e.g. `["DEV", "PROD"]`. For an `int`: words it
    /// may take besides numbers, e.g. `["all"]` for a sample size.
    #[serde(default)]
    pub values: Vec<String>,
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    #[default]
    String,
    Int,
    Bool,
}

impl ParamSpec {
    /// `value` checked against the type and the allowed values, in its canonical
    /// form (a bool as `true`/`false`, an int without sign or leading zeros noise).
    pub fn check(&self, name: &str, value: &str) -> Result<String, String> {
        let allowed = || {
            if self.values.is_empty() {
                String::new()
            } else {
                format!(" (allowed: {})", self.values.join(", "))
            }
        };
        match self.kind.unwrap_or_default() {
            ParamType::String
                if self.values.is_empty() || self.values.iter().any(|v| v == value) =>
            {
                Ok(value.to_string())
            }
            ParamType::String => Err(format!(
                "parameter `{name}` cannot be `{value}`{}",
                allowed()
            )),
            ParamType::Int if self.values.iter().any(|v| v == value) => Ok(value.to_string()),
            ParamType::Int => value
                .trim()
                .parse::<i64>()
                .map(|n| n.to_string())
                .map_err(|_| {
                    format!(
                        "parameter `{name}` must be a whole number{}, not `{value}`",
                        allowed()
                    )
                }),
            ParamType::Bool => match value.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => Ok("true".into()),
                "false" | "no" | "0" | "off" => Ok("false".into()),
                _ => Err(format!(
                    "parameter `{name}` must be true or false (yes/no), not `{value}`"
                )),
            },
        }
    }
}

/// Triggers. Any combination may be set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// A cron expression (`"0 3 * * *"`, five or six fields, UTC unless `timezone` is
    /// set) or an interval (`"every 10m"`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Time zone of the cron schedule, as an offset such as `"+02:00"`. Default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Schedule ticks that came due while the pipeline was busy or no worker ran:
    /// `latest` (default) runs the newest of them, `all` runs each in turn,
    /// `none` runs none (only a tick that is on time runs). Ticks not run are
    /// recorded as skipped runs, with why.
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// Watch a key of a KV store: one run per new value.
    #[serde(default)]
    pub watch: Option<WatchSpec>,
    /// Objects arriving in a store: one run per new object (key + etag).
    #[serde(default)]
    pub arrival: Option<ArrivalSpec>,
}

/// A KV watch trigger.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchSpec {
    /// The KV store: `state` (the built-in KV of the state store) by default, or
    /// the name of a `[stores]` entry with a `consul://` or `etcd://` URL.
    #[serde(default = "default_state_kv")]
    pub store: String,
    /// The key to watch.
    pub key: String,
    /// Values set while the pipeline was busy or no worker ran: `each` runs one
    /// run per revision, in order (the default for the built-in KV; etcd until it
    /// compacts the key's history); `latest` runs the newest and records the
    /// others as skipped runs (the default for Consul and etcd; Consul keeps no
    /// history, so the values in between are not known, and the run says so).
    #[serde(default)]
    pub on_missed: Option<OnMissed>,
}

/// What a schedule does with ticks it missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    None,
    #[default]
    Latest,
    All,
}

/// What a watch does with revisions it did not see as they came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnMissed {
    #[default]
    Each,
    Latest,
}

fn default_state_kv() -> String {
    "state".to_string()
}

/// An arrival trigger, found by listing an object store.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArrivalSpec {
    /// The store to list.
    pub store: String,
    /// Glob over keys relative to the store root, e.g. `"**/pipeline_success.flag"`.
    pub pattern: String,
    /// How often to list, e.g. `"10s"`. Default 30s.
    #[serde(default)]
    pub poll: Option<String>,
    /// Take S3 event notifications from this SQS queue URL instead of listing
    /// (`https://sqs.eu-west-2.amazonaws.com/123456789012/egress`; any other host
    /// is used as the endpoint). Messages are deleted only once handled.
    #[serde(default)]
    pub queue: Option<String>,
    /// How long a received message stays hidden from other workers; extended
    /// while its runs go on (default `5m`).
    #[serde(default)]
    pub visibility: Option<String>,
}

/// Who may do what with a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Reads only: any step that would write is refused before it starts.
    #[default]
    Read,
    /// Writes only.
    Write,
    /// Reads and writes.
    ReadWrite,
}

impl Access {
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }
}

/// A named connection.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// Where it is: `file://./data`, `s3://bucket/prefix`, `gs://…`, `az://…`,
    /// `memory://name`, `postgres://…`, `sqlite://…`, or a KV store to watch:
    /// `consul://host:8500`, `etcd://host:2379` (`consul+https://`, `etcd+https://`).
    /// Relative `file://` paths are relative to the pipeline file.
    pub url: String,
    /// `read` (default), `write` or `read-write`.
    #[serde(default)]
    pub access: Access,
    /// S3-compatible endpoint, e.g. `http://127.0.0.1:9000` (default: AWS, or `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (default: `AWS_REGION`, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); default true when an endpoint is set.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Allow plain HTTP endpoints (local S3 servers). Default: true for `http://` endpoints.
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// Access key id; default from the environment (`AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key; default from the environment (`AWS_SECRET_ACCESS_KEY`). Always redacted.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Consul's ACL token, from a secret: `"${secret:CONSUL_TOKEN}"` (default:
    /// `CONSUL_HTTP_TOKEN`). Always redacted.
    #[serde(default)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for a `consul+https://` or
    /// `etcd+https://` store (relative to the pipeline file), besides the system's.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Find the bucket when a run starts: the one bucket whose name starts
    /// with this (a template, e.g. `"${BUCKET_PREFIX}-{{ params.env | lower }}"`),
    /// named in templates as `{{ buckets.<store> }}`, the URL included:
    /// `url = "s3://{{ buckets.bucket }}"` lists the endpoint's buckets,
    /// `url = "file://./buckets/{{ buckets.bucket }}"` the folders of `./buckets`.
    /// None or several matching fail the run, naming what there is.
    #[serde(default)]
    pub bucket_prefix: Option<String>,
}

impl StoreSpec {
    /// A store at `url` with `access` and every connection option left to its default.
    pub fn at(url: &str, access: Access) -> StoreSpec {
        StoreSpec {
            url: url.to_string(),
            access,
            endpoint: None,
            region: None,
            path_style: None,
            allow_http: None,
            access_key_id: None,
            secret_access_key: None,
            token: None,
            ca_file: None,
            bucket_prefix: None,
        }
    }
}

/// An HTTPS endpoint with its client certificate.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientSpec {
    /// Base URL, e.g. `https://receiver.example.com/inbound/`.
    pub url: String,
    /// `PUT` (default) or `POST`.
    #[serde(default)]
    pub method: Option<String>,
    /// Where the object's relative path goes: `url` (appended to the URL, default)
    /// or `header:NAME` (e.g. `header:X-Relative-Path`).
    #[serde(default)]
    pub path: Option<String>,
    /// Client certificate chain: PEM text (e.g. `${secret:ACME_CERT}`) or a file path.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// Client private key: PEM text (e.g. `${secret:ACME_KEY}`) or a file path.
    #[serde(default)]
    pub client_key: Option<String>,
    /// CA bundle trusted for the receiver's certificate (PEM text or file path);
    /// when set, it is the only trust.
    #[serde(default)]
    pub ca: Option<String>,
    /// Time limit of one request (default `10m`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Allow `http://` (tests and local stubs only; default false).
    #[serde(default)]
    pub allow_http: bool,
}

/// Routing rows: what to do with the data an event points at.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingSpec {
    /// What is looked up (template; default `"{{ trigger.prefix }}"`). Rows whose
    /// match column is this value or one of its parent folders match; the longest wins.
    #[serde(default)]
    pub key: Option<String>,
    /// Column compared with the key (default `source_prefix`).
    #[serde(default)]
    pub match_column: Option<String>,
    /// Column that names a row; each row is one transfer, deduplicated by it
    /// (default `pipeline_name`).
    #[serde(default)]
    pub id_column: Option<String>,
    /// Inline rows.
    #[serde(default)]
    pub rows: Vec<BTreeMap<String, serde_json::Value>>,
    /// Rows from a SQL table, as `store:table` (the store a postgres:// or sqlite:// one).
    #[serde(default)]
    pub table: Option<String>,
    /// Rows from a DynamoDB table whose partition key is the match column.
    #[serde(default)]
    pub dynamodb: Option<DynamoSpec>,
}

/// A DynamoDB table (credentials from the usual AWS chain).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamoSpec {
    pub table: String,
    /// Endpoint for DynamoDB-compatible servers (default: AWS).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (default `AWS_REGION`, else us-east-1).
    #[serde(default)]
    pub region: Option<String>,
}

/// Retry policy.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, including the first (default 3).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Backoff range `"min..max"`, doubled each attempt with full jitter (default `"1s..1m"`).
    #[serde(default)]
    pub backoff: Option<String>,
}

/// What happens to what cannot be processed.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Default retry policy of every step.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Default time limit of one step attempt, e.g. `"1h"`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Where failed input objects go, as `store:prefix` (default: `failed/` in the
    /// source store when it is writable, else `.flowgate/quarantine/` beside the pipeline).
    #[serde(default)]
    pub quarantine: Option<String>,
    /// Where bad records go, as `store:prefix`, written as JSON lines with the reason
    /// and source position (default `.flowgate/dead-letter/` beside the pipeline).
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// What runs one at a time: `pipeline` (default: one run of the pipeline, per
    /// matrix combination, at a time, on all workers together) or `event` (runs of
    /// different trigger events may overlap). Take `event` only when runs never
    /// share a position: `validate` refuses it with an extract (its watermark),
    /// a transform (its inputs), a load (its table) or a delivery from an outbox
    /// all runs share (one whose prefix names none of `trigger`, `params`,
    /// `route`, `run`). A copy of each arrival's own prefix is fine.
    #[serde(default)]
    pub one_at_a_time: Option<OneAtATime>,
}

/// The unit of "one run at a time".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OneAtATime {
    #[default]
    Pipeline,
    Event,
}

/// Notifications.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    /// Events to notify: `failure`, `recovery`, `partial`, `stale`, `skipped`,
    /// `success` (default: failure, recovery, partial, stale, skipped).
    #[serde(default)]
    pub on: Option<Vec<NotifyEvent>>,
    /// Freshness threshold: notify (`stale`) once when now minus the newest source
    /// change visible in the warehouse passes it, and once when it is back under
    /// (default `30m`; `off` to never). Only pipelines that extract and load have a
    /// freshness.
    #[serde(default)]
    pub stale_after: Option<String>,
    /// Slack-compatible webhook URL (JSON `{"text": …}` by POST). Redacted in all output.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Email through SMTP.
    #[serde(default)]
    pub email: Option<EmailSpec>,
}

/// When to notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyEvent {
    Failure,
    Recovery,
    Partial,
    /// Freshness passed `stale_after` (and, later, came back under it).
    Stale,
    /// Trigger events recorded as skipped, not run (values of a watched key a
    /// newer one superseded, missed schedule ticks): one notice per pass.
    Skipped,
    Success,
}

/// SMTP notification settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// `smtp://[user:password@]host:port` (plain), `smtps://…` (TLS) or `smtp+starttls://…`.
    pub smtp: String,
    /// Sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
}

/// A matrix of parameter sets.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatrixSpec {
    /// Axis name → values; every combination is one run (`{{ matrix.tenant }}`).
    pub values: BTreeMap<String, Vec<String>>,
    /// Runs at once (default 1).
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// Stop starting runs after the first failure (default false: failures independent).
    #[serde(default)]
    pub fail_fast: bool,
}

/// A dataset: an immutable, named, timestamped set of objects, published as a
/// whole. A run makes a new version (`<at>/<yyyymmdd_hhmmss>_utc/`, its steps
/// writing parts with `outputs = { NAME = "dataset:PART" }` and a `publish` step
/// writing its manifest last) or, with `read`, reads a published one. Templates
/// see `{{ dataset.name }}`, `{{ dataset.version }}`, `{{ dataset.location }}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Its name (a template), e.g. `"{{ params.tenant }}"`.
    pub name: String,
    /// Where its versions live: `store:prefix` (a template), e.g.
    /// `"bucket:{{ params.tenant }}/datasets"`.
    pub at: String,
    /// Read a published version instead of making one: `"LATEST"` or a version
    /// (a template, e.g. `"{{ params.dataset }}"`), resolved once when the run
    /// starts and recorded with its parameters.
    #[serde(default)]
    pub read: Option<String>,
}
