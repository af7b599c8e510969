//! A validated plan: every reference resolved, every template and pattern compiled,
//! steps ordered. Nothing runs from an unvalidated file.
//!
//! `build` is the orchestrator: the pipeline's name, its stores, triggers,
//! policies, steps (each kind planned by `steps::<kind>::plan`), notifications,
//! recipients and routing, each in a module of its own, all reporting to one
//! [`ctx::Ctx`].

pub(crate) mod ctx;
mod notify;
mod routing;
mod steps;
mod triggers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::model::{Access, NotifyEvent, ParamSpec, StoreSpec};
pub use crate::config::model::{CatchUp, NullCursors, OnMissed, OneAtATime};
use crate::config::{Diagnostic, LoadOptions, Loaded, load_file};
pub use crate::steps::StepKind;
pub use crate::steps::copy::plan::CopyPlan;
pub use crate::steps::deliver::plan::DeliverPlan;
pub use crate::steps::extract::plan::ExtractPlan;
pub use crate::steps::load::plan::LoadPlan;
pub use crate::steps::transform::plan::TransformPlan;
use crate::store::{Location, is_object_store_url};
use crate::units::{Backoff, Schedule};
use ctx::Ctx;

/// The built-in KV store's name.
pub const STATE_STORE: &str = "state";

/// Retry policy of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Backoff::default(),
        }
    }
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: Option<String>,
    pub file: PathBuf,
    /// Directory of the pipeline file: relative paths start here.
    pub dir: PathBuf,
    pub env: Option<String>,
    pub vars: BTreeMap<String, serde_json::Value>,
    pub params: BTreeMap<String, ParamSpec>,
    pub dataset: Option<crate::dataset::DatasetPlan>,
    pub stores: BTreeMap<String, StoreSpec>,
    pub schedule: Option<Schedule>,
    pub schedule_text: Option<String>,
    pub catch_up: CatchUp,
    /// What runs one at a time (`policy.one_at_a_time`).
    pub one_at_a_time: OneAtATime,
    pub watch: Option<WatchPlan>,
    pub arrival: Option<ArrivalPlan>,
    /// Steps in an order that respects `needs`.
    pub steps: Vec<PlannedStep>,
    pub quarantine: Option<Location>,
    pub dead_letter: Option<Location>,
    pub notify: NotifyPlan,
    pub matrix: Option<crate::config::model::MatrixSpec>,
    pub routing: Option<RoutingPlan>,
    pub recipients: BTreeMap<String, RecipientPlan>,
    /// Names of the file's `[env.NAME]` overlays.
    pub environments: Vec<String>,
    /// Continuous consumption while served (`[stream]`).
    pub stream: Option<crate::stream::StreamPlan>,
    /// What each run keeps of its files (`pin`), relative to `dir`.
    pub pin: Vec<PathBuf>,
    /// Where command steps find their files when not in `dir`: the files an
    /// earlier run kept, restored for a rerun (see [`crate::code`]).
    pub code_dir: Option<PathBuf>,
}

impl Plan {
    /// The folder command steps run their files from.
    pub fn code_root(&self) -> &Path {
        self.code_dir.as_deref().unwrap_or(&self.dir)
    }
}

#[derive(Debug, Clone)]
pub struct WatchPlan {
    pub key: String,
    pub on_missed: OnMissed,
    /// The store and how to reach it; `None`: the state store's built-in KV.
    pub store: Option<KvStorePlan>,
}

/// An external KV store (Consul, etcd) a watch reads.
#[derive(Debug, Clone)]
pub struct KvStorePlan {
    /// Its name in `[stores]`.
    pub name: String,
    pub url: String,
    pub options: crate::connect::kv::KvOptions,
}

#[derive(Debug, Clone)]
pub struct ArrivalPlan {
    pub store: String,
    pub pattern: String,
    pub matcher: globset::GlobMatcher,
    /// SQS queue URL of S3 event notifications (else: listing).
    pub queue: Option<String>,
    pub visibility: Duration,
    /// The arrival store's bucket and key prefix, to read event keys against.
    pub bucket: Option<String>,
    pub root: String,
    pub poll: Duration,
}

#[derive(Debug, Clone)]
pub struct NotifyPlan {
    pub on: Vec<NotifyEvent>,
    /// Freshness threshold; `None` when turned off.
    pub stale_after: Option<Duration>,
    pub webhook: Option<String>,
    pub email: Option<crate::config::model::EmailSpec>,
}

#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub id: String,
    pub needs: Vec<String>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    /// Run only when this expression is true.
    pub when: Option<String>,
    pub kind: StepKind,
}

impl ArrivalPlan {
    /// An event's object key relative to the arrival store, or `None` when the
    /// object is in another bucket or outside the store's prefix.
    pub fn relative_key(&self, bucket: &str, key: &str) -> Option<String> {
        if self.bucket.as_deref().is_some_and(|b| b != bucket) {
            return None;
        }
        if self.root.is_empty() {
            return Some(key.to_string());
        }
        key.strip_prefix(&self.root)?
            .strip_prefix('/')
            .map(str::to_string)
    }
}

/// Where a delivered object's relative path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathIn {
    Url,
    Header(String),
}

/// PEM given inline or as a file (read when a run needs it).
#[derive(Debug, Clone)]
pub enum Pem {
    Inline(Vec<u8>),
    File(PathBuf),
}

impl Pem {
    pub(crate) fn parse(text: &str, dir: &Path) -> Pem {
        if text.trim_start().starts_with("-----BEGIN") {
            Pem::Inline(text.as_bytes().to_vec())
        } else {
            Pem::File(dir.join(text))
        }
    }

    pub fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Pem::Inline(b) => Ok(b.clone()),
            Pem::File(p) => std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecipientPlan {
    pub name: String,
    pub url: url::Url,
    /// The URL without credentials or query, for messages.
    pub url_display: String,
    pub method: reqwest::Method,
    pub path_in: PathIn,
    pub client_cert: Option<Pem>,
    pub client_key: Option<Pem>,
    pub ca: Option<Pem>,
    pub timeout: Duration,
    pub allow_http: bool,
}

#[derive(Debug, Clone)]
pub struct RoutingPlan {
    pub key: String,
    pub match_column: String,
    pub id_column: String,
    pub source: RoutingSource,
}

/// Where routing rows are read.
#[derive(Debug, Clone)]
pub enum RoutingSource {
    Inline(Vec<serde_json::Map<String, serde_json::Value>>),
    Sql {
        source: crate::sql::SqlSource,
        table: String,
    },
    #[cfg(feature = "aws")]
    Dynamo(DynamoPlan),
}

#[derive(Debug, Clone)]
pub struct DynamoPlan {
    pub table: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// What a run records beside its parameters, under their names. (`dataset` may
/// be a parameter: it names the dataset, and the record then says which it was.)
const RECORDED_BESIDE_PARAMS: &[&str] = &["matrix", "route", "trigger", "code"];

/// Load and validate a pipeline file.
pub fn plan_file(path: &Path, opts: &LoadOptions) -> Result<Plan, Vec<Diagnostic>> {
    let loaded = load_file(path, opts)?;
    build(&loaded)
}

/// Validate `text` as the pipeline file at `path` (a rerun's file as it was).
pub fn plan_text(path: &Path, text: String, opts: &LoadOptions) -> Result<Plan, Vec<Diagnostic>> {
    build(&crate::config::load_file_text(path, text, opts)?)
}

/// Validate a loaded file into a plan: every problem is reported at once.
pub fn build(loaded: &Loaded) -> Result<Plan, Vec<Diagnostic>> {
    let mut cx = Ctx::new(loaded);
    let f = cx.file();
    name(&mut cx);
    stores(&mut cx);
    let t = &f.trigger;
    let schedule = triggers::schedule(&mut cx);
    let watch = triggers::watch(&mut cx);
    let arrival = triggers::arrival(&mut cx);
    let policy = steps::policy(&mut cx);
    let steps = steps::plan(&mut cx, &policy);
    let notify = notify::plan(&mut cx);
    let recipients = notify::recipients(&mut cx);
    let routing = routing::plan(&mut cx);
    if f.matrix.is_some() && routing.is_some() {
        cx.key_error(
            "routing",
            "a pipeline has either a matrix or routing, not both",
            None,
        );
    }
    if let Some(m) = &f.matrix
        && m.values.is_empty()
    {
        cx.key_error("matrix.values", "a matrix needs at least one axis", None);
    }
    let dataset = dataset(&mut cx);
    let pin = pin(&mut cx);
    let stream = stream(&mut cx);
    for (k, p) in &f.params {
        if RECORDED_BESIDE_PARAMS.contains(&k.as_str()) {
            cx.key_error(
                &format!("params.{k}"),
                format!("`{k}` is recorded beside a run's parameters and cannot be one"),
                Some("give the parameter another name".into()),
            );
        }
        if let Some(d) = &p.default
            && let Err(e) = p.check(k, d)
        {
            cx.error(&format!("params.{k}.default"), e, None);
        }
    }
    if !cx.d.is_empty() {
        let mut items = cx.d.items;
        items.sort_by_key(|d| (d.line, d.col));
        return Err(items);
    }
    Ok(Plan {
        name: f.name.clone(),
        description: f.description.clone(),
        file: loaded.path.clone(),
        dir: cx.dir,
        env: loaded.env.clone(),
        vars: f.vars.clone(),
        params: f.params.clone(),
        dataset,
        stores: f.stores.clone(),
        schedule,
        schedule_text: t.schedule.clone(),
        catch_up: t.catch_up.unwrap_or_default(),
        one_at_a_time: f.policy.one_at_a_time.unwrap_or_default(),
        watch,
        arrival,
        steps,
        quarantine: policy.quarantine,
        dead_letter: policy.dead_letter,
        notify,
        matrix: f.matrix.clone(),
        routing,
        recipients,
        environments: f.env.keys().cloned().collect(),
        pin,
        code_dir: None,
        stream,
    })
}

/// The pipeline's name: letters, digits, `-`, `_` or `.`.
fn name(cx: &mut Ctx<'_>) {
    let name = &cx.file().name;
    if name.trim().is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        cx.error(
            "name",
            format!("pipeline name `{name}` must be letters, digits, `-`, `_` or `.`"),
            None,
        );
    }
}

/// Each store: a supported URL, and not the built-in KV's name.
fn stores(cx: &mut Ctx<'_>) {
    for (name, s) in &cx.file().stores {
        if name == STATE_STORE {
            cx.key_error(
                &format!("stores.{name}"),
                "`state` is the built-in KV store; pick another name",
                None,
            );
        }
        if !is_object_store_url(&s.url)
            && !crate::stream::is_kafka_url(&s.url)
            && !crate::stream::bigquery::is_bigquery_url(&s.url)
            && !crate::sql::is_sql_url(&s.url)
            && !crate::connect::kv::is_kv_url(&s.url)
        {
            cx.error(
                &format!("stores.{name}.url"),
                format!("store `{name}`: `{}` is not a supported URL", s.url),
                Some(
                    "use file://, s3://, gs://, az://, memory://, postgres://, sqlite://, consul://, etcd://, kafka:// or bigquery://".into(),
                ),
            );
        }
        if s.bucket_prefix.is_some() {
            let before = s.url.split("{{").next().unwrap_or_default();
            if !s.url.contains(&format!("buckets.{name}"))
                || !(before == "s3://" || before.starts_with("file://"))
            {
                cx.error(
                    &format!("stores.{name}.url"),
                    format!("store `{name}` finds its bucket by bucket_prefix, and its URL must say where it goes"),
                    Some(format!("url = \"s3://{{{{ buckets.{name} }}}}\" (or \"file://DIR/{{{{ buckets.{name} }}}}\")")),
                );
            }
        }
    }
}

/// `[stream]`: a Kafka store, a PostgreSQL table it may write, a dead-letter
/// location it may write, templates that compile, batch sizes that parse.
fn stream(cx: &mut Ctx<'_>) -> Option<crate::stream::StreamPlan> {
    let s = cx.file().stream.as_ref()?;
    let url = |cx: &Ctx<'_>, name: &str| cx.file().stores.get(name).map(|st| st.url.clone());
    match url(cx, &s.from) {
        Some(u) if crate::stream::is_kafka_url(&u) => {}
        Some(_) => cx.error(
            "stream.from",
            format!(
                "store `{}` is not a Kafka store (kafka://host:port)",
                s.from
            ),
            None,
        ),
        None => {
            cx.store_ref("stream.from", &s.from, Access::Read, "the stream");
        }
    }
    if cx.store_ref("stream.to.store", &s.to.store, Access::Write, "the stream")
        && !url(cx, &s.to.store).is_some_and(|u| {
            u.starts_with("postgres") || crate::stream::bigquery::is_bigquery_url(&u)
        })
    {
        cx.error(
            "stream.to.store",
            format!(
                "store `{}` is neither PostgreSQL (postgres://…) nor BigQuery (bigquery://…)",
                s.to.store
            ),
            None,
        );
    }
    cx.kind_is(
        "stream.dead_letter",
        &s.dead_letter,
        false,
        "the stream's dead letters",
    );
    let dead_letter = cx.location(
        "stream.dead_letter",
        &s.dead_letter,
        Access::Write,
        "the stream's dead letters",
    );
    let templates = [("stream.group", &s.group), ("stream.to.table", &s.to.table)]
        .into_iter()
        .chain(s.topics.iter().map(|t| ("stream.topics", t)))
        .chain(s.ignore.iter().map(|t| ("stream.ignore", t)));
    for (at, t) in templates {
        if let Err(e) = crate::template::check(t) {
            cx.error(at, format!("not a template: {e}"), None);
        }
    }
    if s.topics.is_empty() {
        cx.error("stream.topics", "a stream needs at least one topic", None);
    }
    let mut parsed =
        |at: &str, v: &Option<String>, default: &str, f: fn(&str) -> Result<u64, String>| match f(v
            .as_deref()
            .unwrap_or(default))
        {
            Ok(n) if n > 0 => n,
            Ok(_) => {
                cx.error(at, "must be more than zero", None);
                1
            }
            Err(e) => {
                cx.error(at, e, None);
                1
            }
        };
    let batch_bytes = parsed(
        "stream.batch.bytes",
        &s.batch.bytes,
        "16MB",
        crate::units::parse_size,
    );
    let wait_ms = parsed("stream.batch.wait", &s.batch.wait, "1s", |t| {
        crate::units::parse_duration(t).map(|d| d.as_millis() as u64)
    });
    Some(crate::stream::StreamPlan {
        spec: s.clone(),
        dead_letter: dead_letter?,
        batch_events: s.batch.events.unwrap_or(10_000).max(1),
        batch_bytes,
        batch_wait: Duration::from_millis(wait_ms),
    })
}

/// `pin`: paths inside the pipeline's folder that exist.
fn pin(cx: &mut Ctx<'_>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (i, p) in cx.file().pin.iter().enumerate() {
        let path = Path::new(p);
        let inside = path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if !inside || p.is_empty() {
            cx.error(
                &format!("pin[{i}]"),
                format!("`{p}` is not a path inside the pipeline's folder"),
                Some("name files or folders relative to the pipeline file, without `..`".into()),
            );
        } else if !cx.dir.join(path).exists() {
            cx.error(
                &format!("pin[{i}]"),
                format!("`{p}` does not exist in {}", cx.dir.display()),
                None,
            );
        } else {
            out.push(path.to_path_buf());
        }
    }
    out
}

/// `[dataset]`: its store may be written unless the run only reads it.
fn dataset(cx: &mut Ctx<'_>) -> Option<crate::dataset::DatasetPlan> {
    let d = cx.file().dataset.as_ref()?;
    let need = if d.read.is_some() {
        Access::Read
    } else {
        Access::ReadWrite
    };
    let what = "the dataset";
    let ok = cx.kind_is("dataset.at", &d.at, false, what);
    let at = cx.location("dataset.at", &d.at, need, what);
    for (path, t) in [
        ("dataset.name", Some(&d.name)),
        ("dataset.read", d.read.as_ref()),
    ] {
        if let Some(t) = t
            && let Err(e) = crate::template::check(t)
        {
            cx.error(path, format!("not a template: {e}"), None);
        }
    }
    ok.then_some(())?;
    Some(crate::dataset::DatasetPlan {
        name: d.name.clone(),
        at: at?,
        read: d.read.clone(),
    })
}
