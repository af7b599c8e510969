//! A validated plan: every reference resolved, every template and pattern compiled,
//! steps ordered. Nothing runs from an unvalidated file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::diagnostic::{Diagnostics, nearest};
use crate::config::model::{
    Access, CopySpec, NotifyEvent, ParamSpec, RetrySpec, StoreSpec, Verify,
};
pub use crate::config::model::{CatchUp, NullCursors, OnMissed, OneAtATime};
use crate::config::{Diagnostic, LoadOptions, Loaded, load_file};
use crate::store::{Location, is_object_store_url};
use crate::units::{Backoff, Schedule, parse_duration, parse_size};

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
    pub vars: BTreeMap<String, String>,
    pub params: BTreeMap<String, ParamSpec>,
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
}

#[derive(Debug, Clone)]
pub struct WatchPlan {
    pub key: String,
    pub on_missed: OnMissed,
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

#[derive(Debug, Clone)]
pub enum StepKind {
    Copy(CopyPlan),
    Deliver(DeliverPlan),
    Extract(ExtractPlan),
    Load(LoadPlan),
    Transform(TransformPlan),
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

#[derive(Debug, Clone)]
pub struct DeliverPlan {
    pub from: Location,
    /// Template naming a `[recipients]` entry.
    pub recipient: String,
    pub attempts: u32,
    pub backoff: Backoff,
    pub concurrency: usize,
    pub headers: BTreeMap<String, String>,
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
    fn parse(text: &str, dir: &Path) -> Pem {
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

#[derive(Debug, Clone)]
pub struct TransformPlan {
    pub models: String,
    pub inputs: Location,
    pub to: Location,
    /// Only objects landed this recently are read (`None`: all of them).
    pub history: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub from: Location,
    /// The SQL store.
    pub into: String,
    /// (folder under `from`, or `None` for `from` itself; where it goes).
    pub targets: Vec<(Option<String>, crate::sql::target::LoadTarget)>,
    pub batch_rows: usize,
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Copy(_) => "copy",
            StepKind::Deliver(_) => "deliver",
            StepKind::Extract(_) => "extract",
            StepKind::Load(_) => "load",
            StepKind::Transform(_) => "transform",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExtractPlan {
    /// The SQL store.
    pub from: String,
    /// `None`: every table of the schema.
    pub tables: Option<Vec<String>>,
    pub schema: String,
    pub cursor: String,
    pub key: Option<Vec<String>>,
    pub lookback: Option<Duration>,
    pub nulls: NullCursors,
    pub to: Location,
    pub format: Option<crate::formats::Format>,
    pub batch_rows: usize,
    /// Connections a large snapshot read is split over.
    pub parallel: usize,
}

#[derive(Debug, Clone)]
pub struct CopyPlan {
    pub from: Location,
    pub to: Location,
    pub include: Option<GlobSet>,
    pub exclude: Option<GlobSet>,
    pub manifest: Option<String>,
    pub verify: Verify,
    pub concurrency: usize,
    pub part_size: usize,
    pub decrypt: Option<crate::config::model::DecryptSpec>,
}

/// Load and validate a pipeline file.
pub fn plan_file(path: &Path, opts: &LoadOptions) -> Result<Plan, Vec<Diagnostic>> {
    let loaded = load_file(path, opts)?;
    build(&loaded)
}

fn glob_set(
    patterns: &[String],
    path: &str,
    loaded: &Loaded,
    d: &mut Diagnostics<'_>,
) -> Option<GlobSet> {
    if patterns.is_empty() {
        return None;
    }
    let mut b = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        match Glob::new(p) {
            Ok(g) => {
                b.add(g);
            }
            Err(e) => d.push(
                loaded.spans.value(&format!("{path}[{i}]")),
                format!("bad glob `{p}`: {e}"),
                None,
            ),
        }
    }
    b.build().ok()
}

/// Validate a loaded file into a plan.
pub fn build(loaded: &Loaded) -> Result<Plan, Vec<Diagnostic>> {
    let f = &loaded.file;
    let spans = &loaded.spans;
    let mut d = Diagnostics::new(loaded.path.clone(), &loaded.text);
    d.items.extend(loaded.problems.iter().cloned());
    let dir = loaded
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };

    if f.name.trim().is_empty()
        || !f
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        d.push(
            spans.value("name"),
            format!(
                "pipeline name `{}` must be letters, digits, `-`, `_` or `.`",
                f.name
            ),
            None,
        );
    }

    // Stores.
    for (name, s) in &f.stores {
        let at = format!("stores.{name}.url");
        if name == STATE_STORE {
            d.push(
                spans.key(&format!("stores.{name}")),
                "`state` is the built-in KV store; pick another name",
                None,
            );
        }
        if !is_object_store_url(&s.url) && !crate::sql::is_sql_url(&s.url) {
            d.push(
                spans.value(&at),
                format!("store `{name}`: `{}` is not a supported URL", s.url),
                Some(
                    "use file://, s3://, gs://, az://, memory://, postgres:// or sqlite://".into(),
                ),
            );
        }
    }
    let store_names: Vec<&str> = f.stores.keys().map(String::as_str).collect();
    let declared = || {
        if store_names.is_empty() {
            "no stores are declared; add one under [stores]".to_string()
        } else {
            format!("declared stores: {}", store_names.join(", "))
        }
    };
    let store_ref = |d: &mut Diagnostics<'_>,
                     at: &str,
                     name: &str,
                     need: Access,
                     what: &str|
     -> bool {
        let Some(s) = f.stores.get(name) else {
            if loaded.broken_stores.iter().any(|b| b == name) {
                return false;
            }
            let hint = match nearest(name, store_names.iter().copied()) {
                Some(n) => format!("did you mean `{n}`? {}", declared()),
                None => declared(),
            };
            d.push(
                spans.value(at),
                format!("unknown store `{name}`"),
                Some(hint),
            );
            return false;
        };
        if need.can_write() && !s.access.can_write() {
            d.push(
                spans.value(at),
                format!("{what} writes to store `{name}`, which is read-only"),
                Some(format!("set access = \"read-write\" (or \"write\") on [stores.{name}] if writing there is intended")),
            );
            return false;
        }
        if need.can_read() && !s.access.can_read() {
            d.push(
                spans.value(at),
                format!("{what} reads from store `{name}`, which is write-only"),
                Some(format!("set access = \"read-write\" on [stores.{name}]")),
            );
            return false;
        }
        true
    };
    let mut location = |d: &mut Diagnostics<'_>,
                        at: &str,
                        text: &str,
                        need: Access,
                        what: &str|
     -> Option<Location> {
        match Location::parse(text) {
            Ok(loc) => {
                if let Err(e) = crate::template::check(&loc.prefix) {
                    d.push(
                        spans.value(at),
                        format!("bad template in `{text}`: {e}"),
                        None,
                    );
                }
                store_ref(d, at, &loc.store, need, what).then_some(loc)
            }
            Err(e) => {
                d.push(spans.value(at), e, None);
                None
            }
        }
    };

    // Triggers.
    let t = &f.trigger;
    let schedule =
        t.schedule
            .as_deref()
            .and_then(|s| match Schedule::parse(s, t.timezone.as_deref()) {
                Ok(s) => Some(s),
                Err(e) => {
                    d.push(
                        spans.value("trigger.schedule"),
                        e,
                        Some("cron fields: minute hour day-of-month month day-of-week".into()),
                    );
                    None
                }
            });
    let watch = t.watch.as_ref().and_then(|w| {
        if w.store != STATE_STORE {
            d.push(
                spans.value("trigger.watch.store"),
                format!(
                    "KV store `{}` cannot be watched yet; only the built-in `state` KV can",
                    w.store
                ),
                None,
            );
            return None;
        }
        Some(WatchPlan {
            key: w.key.clone(),
            on_missed: w.on_missed.unwrap_or_default(),
        })
    });
    let arrival = t.arrival.as_ref().and_then(|a| {
        let poll = match a.poll.as_deref().map(parse_duration).transpose() {
            Ok(p) => p.unwrap_or(Duration::from_secs(30)),
            Err(e) => {
                d.push(spans.value("trigger.arrival.poll"), e, None);
                Duration::from_secs(30)
            }
        };
        let ok = store_ref(
            &mut d,
            "trigger.arrival.store",
            &a.store,
            Access::Read,
            "the arrival trigger",
        );
        // Keys are relative to the store and never hold `.` or `..` folders: such
        // a pattern could not match anything, ever.
        if a.pattern.starts_with('/') || a.pattern.split('/').any(|s| s == "." || s == "..") {
            d.push(
                spans.value("trigger.arrival.pattern"),
                format!(
                    "pattern `{}` can never match: keys are relative to the store, with no leading `/` and no `.` or `..` folders",
                    a.pattern
                ),
                Some("write it from the store's root, e.g. `exports/**/pipeline_success.flag`".into()),
            );
        }
        let matcher = match Glob::new(&a.pattern) {
            Ok(g) => Some(g.compile_matcher()),
            Err(e) => {
                d.push(
                    spans.value("trigger.arrival.pattern"),
                    format!("bad glob `{}`: {e}", a.pattern),
                    None,
                );
                None
            }
        };
        let visibility = match a.visibility.as_deref().map(parse_duration).transpose() {
            Ok(v) => v.unwrap_or(Duration::from_secs(300)).clamp(Duration::from_secs(1), Duration::from_secs(43_200)),
            Err(e) => {
                d.push(spans.value("trigger.arrival.visibility"), e, None);
                Duration::from_secs(300)
            }
        };
        if let Some(q) = &a.queue {
            if url::Url::parse(q).is_err() {
                d.push(
                    spans.value("trigger.arrival.queue"),
                    format!("queue `{q}` is not a URL"),
                    Some("give the queue's URL, e.g. https://sqs.eu-west-2.amazonaws.com/123456789012/egress".into()),
                );
            }
            if !cfg!(feature = "aws") {
                d.push(spans.value("trigger.arrival.queue"), "this flowgate was built without SQS support (cargo feature `aws`)", None);
            }
        }
        let (bucket, root) = match f.stores.get(&a.store).and_then(|s| url::Url::parse(&s.url).ok()) {
            Some(u) if u.scheme() == "s3" => (
                u.host_str().map(str::to_string),
                u.path().trim_matches('/').to_string(),
            ),
            _ => (None, String::new()),
        };
        (ok && matcher.is_some()).then(|| ArrivalPlan {
            queue: a.queue.clone().filter(|q| !q.trim().is_empty()),
            visibility,
            bucket,
            root,
            store: a.store.clone(),
            pattern: a.pattern.clone(),
            matcher: matcher.unwrap_or_else(|| {
                Glob::new("*")
                    .map(|g| g.compile_matcher())
                    .unwrap_or_else(|_| unreachable!())
            }),
            poll,
        })
    });

    // Policies.
    let retry_of = |d: &mut Diagnostics<'_>,
                    at: &str,
                    r: Option<&RetrySpec>,
                    base: RetryPolicy|
     -> RetryPolicy {
        let Some(r) = r else { return base };
        let backoff = match r.backoff.as_deref().map(Backoff::parse).transpose() {
            Ok(b) => b.unwrap_or(base.backoff),
            Err(e) => {
                d.push(spans.value(&format!("{at}.backoff")), e, None);
                base.backoff
            }
        };
        let attempts = r.attempts.unwrap_or(base.attempts);
        if attempts == 0 {
            d.push(
                spans.value(&format!("{at}.attempts")),
                "attempts counts the first try too; it must be at least 1",
                None,
            );
        }
        RetryPolicy {
            attempts: attempts.max(1),
            backoff,
        }
    };
    let default_retry = retry_of(
        &mut d,
        "policy.retry",
        f.policy.retry.as_ref(),
        RetryPolicy::default(),
    );
    let default_timeout = f
        .policy
        .timeout
        .as_deref()
        .and_then(|t| match parse_duration(t) {
            Ok(t) => Some(t),
            Err(e) => {
                d.push(spans.value("policy.timeout"), e, None);
                None
            }
        });
    let quarantine = f.policy.quarantine.as_deref().and_then(|q| {
        location(
            &mut d,
            "policy.quarantine",
            q,
            Access::Write,
            "the quarantine",
        )
    });
    let dead_letter = f.policy.dead_letter.as_deref().and_then(|q| {
        location(
            &mut d,
            "policy.dead_letter",
            q,
            Access::Write,
            "the dead-letter sink",
        )
    });

    // Steps.
    let ids: Vec<&str> = f.steps.iter().map(|s| s.id.as_str()).collect();
    let mut planned = Vec::new();
    for (s, at) in f.steps.iter().zip(&loaded.step_paths) {
        let at = at.clone();
        if ids.iter().filter(|id| **id == s.id).count() > 1 {
            d.push(
                spans.value(&format!("{at}.id")),
                format!("step id `{}` is used more than once", s.id),
                None,
            );
        }
        for (j, need) in s.needs.iter().enumerate() {
            if !ids.contains(&need.as_str()) || need == &s.id {
                let hint =
                    nearest(need, ids.iter().copied()).map(|n| format!("did you mean `{n}`?"));
                d.push(
                    spans.value(&format!("{at}.needs[{j}]")),
                    format!("step `{}` needs unknown step `{need}`", s.id),
                    hint,
                );
            }
        }
        let retry = retry_of(
            &mut d,
            &format!("{at}.retry"),
            s.retry.as_ref(),
            default_retry,
        );
        let timeout = match s.timeout.as_deref().map(parse_duration).transpose() {
            Ok(t) => t.or(default_timeout),
            Err(e) => {
                d.push(spans.value(&format!("{at}.timeout")), e, None);
                None
            }
        };
        let what = format!("step `{}`", s.id);
        let kinds = usize::from(s.copy.is_some())
            + usize::from(s.extract.is_some())
            + usize::from(s.load.is_some())
            + usize::from(s.transform.is_some())
            + usize::from(s.deliver.is_some());
        let kind = match (&s.copy, &s.extract) {
            _ if kinds > 1 => {
                d.push(
                    spans.key(&at),
                    format!(
                        "step `{}` has more than one kind; give each its own step",
                        s.id
                    ),
                    None,
                );
                None
            }
            (None, None) if s.transform.is_some() => s.transform.clone().and_then(|t| {
                let mut ok = true;
                for (k, v) in [("inputs", &t.inputs), ("to", &t.to)] {
                    let store = v.split_once(':').map(|(s, _)| s).unwrap_or(v);
                    ok &= kind_is(&mut d, loaded, &format!("{at}.transform.{k}"), store, false, &what);
                }
                let inputs = location(&mut d, &format!("{at}.transform.inputs"), &t.inputs, Access::Read, &what);
                let to = location(&mut d, &format!("{at}.transform.to"), &t.to, Access::Write, &what);
                let dir = loaded.path.parent().unwrap_or(Path::new(".")).join(&t.models);
                if !dir.is_dir() {
                    d.push(spans.value(&format!("{at}.transform.models")), format!("models directory {} does not exist", dir.display()), None);
                    ok = false;
                }
                if !cfg!(feature = "transform") {
                    d.push(spans.key(&format!("{at}.transform")), "this flowgate was built without the transform step (cargo feature `transform`)", None);
                    ok = false;
                }
                let history = match t.history.as_deref().map(parse_duration).transpose() {
                    Ok(h) => h,
                    Err(e) => {
                        d.push(spans.value(&format!("{at}.transform.history")), e, Some("a duration such as `30d`".into()));
                        ok = false;
                        None
                    }
                };
                ok.then_some(())?;
                Some(StepKind::Transform(TransformPlan { models: t.models.clone(), inputs: inputs?, to: to?, history }))
            }),
            (None, None) if s.deliver.is_some() => s.deliver.as_ref().and_then(|dl| {
                let from_store = dl.from.split_once(':').map(|(s, _)| s).unwrap_or(&dl.from);
                let ok = kind_is(&mut d, loaded, &format!("{at}.deliver.from"), from_store, false, &what);
                let from = location(&mut d, &format!("{at}.deliver.from"), &dl.from, Access::ReadWrite, &what);
                if let Err(e) = crate::template::check(&dl.recipient) {
                    d.push(spans.value(&format!("{at}.deliver.recipient")), format!("bad template: {e}"), None);
                } else if !dl.recipient.contains("{{") && !f.recipients.contains_key(&dl.recipient) {
                    let names: Vec<&str> = f.recipients.keys().map(String::as_str).collect();
                    d.push(
                        spans.value(&format!("{at}.deliver.recipient")),
                        format!("unknown recipient `{}`", dl.recipient),
                        Some(match nearest(&dl.recipient, names.iter().copied()) {
                            Some(n) => format!("did you mean `{n}`?"),
                            None => "declare it under [recipients.NAME] with a url".into(),
                        }),
                    );
                }
                let backoff = match dl.backoff.as_deref().map(Backoff::parse).transpose() {
                    Ok(b) => b.unwrap_or(Backoff { min: Duration::from_secs(1), max: Duration::from_secs(30) }),
                    Err(e) => {
                        d.push(spans.value(&format!("{at}.deliver.backoff")), e, None);
                        Backoff { min: Duration::from_secs(1), max: Duration::from_secs(30) }
                    }
                };
                ok.then_some(())?;
                Some(StepKind::Deliver(DeliverPlan {
                    from: from?,
                    recipient: dl.recipient.clone(),
                    attempts: dl.attempts.unwrap_or(5).max(1),
                    backoff,
                    concurrency: dl.concurrency.unwrap_or(4).clamp(1, 64),
                    headers: dl.headers.clone(),
                }))
            }),
            (None, None) if s.load.is_some() => s.load.clone().and_then(|l| {
                let into_at = format!("{at}.load.into");
                let ok_into = store_ref(&mut d, &into_at, &l.into, Access::Write, &what)
                    && kind_is(&mut d, loaded, &into_at, &l.into, true, &what);
                let from_store = l.from.split_once(':').map(|(s, _)| s).unwrap_or(&l.from);
                let ok_from = kind_is(
                    &mut d,
                    loaded,
                    &format!("{at}.load.from"),
                    from_store,
                    false,
                    &what,
                );
                let from = location(
                    &mut d,
                    &format!("{at}.load.from"),
                    &l.from,
                    Access::Read,
                    &what,
                );
                let p = load_plan(&l, &at, loaded, &mut d)?;
                (ok_into && ok_from).then_some(())?;
                Some(StepKind::Load(LoadPlan { from: from?, ..p }))
            }),
            (Some(c), None) => {
                let ok = [("from", &c.from), ("to", &c.to)]
                    .into_iter()
                    .all(|(k, v)| {
                        let store = v.split_once(':').map(|(s, _)| s).unwrap_or(v);
                        kind_is(
                            &mut d,
                            loaded,
                            &format!("{at}.copy.{k}"),
                            store,
                            false,
                            &what,
                        )
                    });
                copy_plan(c, &at, &what, loaded, &mut d, &mut location)
                    .filter(|_| ok)
                    .map(StepKind::Copy)
            }
            (None, Some(e)) => {
                let from_at = format!("{at}.extract.from");
                let ok_from = store_ref(&mut d, &from_at, &e.from, Access::Read, &what)
                    && kind_is(&mut d, loaded, &from_at, &e.from, true, &what);
                let to_store = e.to.split_once(':').map(|(s, _)| s).unwrap_or(&e.to);
                let ok_to = kind_is(
                    &mut d,
                    loaded,
                    &format!("{at}.extract.to"),
                    to_store,
                    false,
                    &what,
                );
                let to = location(
                    &mut d,
                    &format!("{at}.extract.to"),
                    &e.to,
                    Access::Write,
                    &what,
                );
                extract_plan(e, &at, loaded, &mut d).and_then(|mut p| {
                    p.to = to?;
                    (ok_from && ok_to).then_some(StepKind::Extract(p))
                })
            }
            _ => {
                d.push(
                    spans.key(&at),
                    format!("step `{}` has no kind", s.id),
                    Some("add one of: copy = { from = \"…\", to = \"…\" }, extract = { from = \"…\", tables = …, cursor = \"…\", to = \"…\" }, load = { from = \"…\", into = \"…\", table = \"…\", key = […] }".into()),
                );
                None
            }
        };
        if let Some(w) = &s.when
            && let Err(e) = crate::template::check_expression(w)
        {
            d.push(
                spans.value(&format!("{at}.when")),
                format!("`when` is not an expression: {e}"),
                Some("for example: when = \"route.transfer_type == 'S3'\"".into()),
            );
        }
        if let Some(kind) = kind {
            planned.push(PlannedStep {
                id: s.id.clone(),
                needs: s.needs.clone(),
                retry,
                timeout,
                when: s.when.clone(),
                kind,
            });
        }
    }
    let steps = match order(&planned) {
        Ok(s) => s,
        Err(cycle) => {
            d.push(
                spans.key("steps"),
                format!(
                    "steps depend on each other in a cycle: {}",
                    cycle.join(" → ")
                ),
                None,
            );
            Vec::new()
        }
    };
    if f.policy.one_at_a_time == Some(OneAtATime::Event)
        && let Some(shared) = steps.iter().find(|s| {
            matches!(
                s.kind,
                StepKind::Extract(_) | StepKind::Transform(_) | StepKind::Load(_)
            )
        })
    {
        d.push(
            spans.value("policy.one_at_a_time"),
            format!(
                "step `{}` keeps a position all runs share (a watermark, the models' inputs \
                 or a table), so runs of different events must not overlap",
                shared.id
            ),
            Some("remove `one_at_a_time` (the default is \"pipeline\")".into()),
        );
    }

    // Notifications.
    let webhook = f.notify.webhook.clone().filter(|w| !w.trim().is_empty());
    if let Some(w) = &webhook
        && url::Url::parse(w).is_err()
    {
        d.push(
            spans.value("notify.webhook"),
            "notify.webhook is not a URL",
            None,
        );
    }
    if let Some(e) = &f.notify.email
        && !(e.smtp.starts_with("smtp://")
            || e.smtp.starts_with("smtps://")
            || e.smtp.starts_with("smtp+starttls://"))
    {
        d.push(
            spans.value("notify.email.smtp"),
            "notify.email.smtp must be smtp://, smtps:// or smtp+starttls://",
            None,
        );
    }
    let stale_after = match f.notify.stale_after.as_deref().map(str::trim) {
        None => Some(Duration::from_secs(30 * 60)),
        Some("off" | "never") => None,
        Some(text) => match parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                d.push(
                    spans.value("notify.stale_after"),
                    "notify.stale_after must be longer than zero",
                    Some("write a duration such as \"30m\", or \"off\"".into()),
                );
                None
            }
            Err(e) => {
                d.push(
                    spans.value("notify.stale_after"),
                    e,
                    Some("write a duration such as \"30m\", or \"off\"".into()),
                );
                None
            }
        },
    };
    // Recipients.
    let mut recipients = BTreeMap::new();
    for (name, r) in &f.recipients {
        let at = format!("recipients.{name}");
        crate::secret::register_url_password(&r.url);
        let url = match url::Url::parse(&r.url) {
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && r.allow_http) => Some(u),
            Ok(u) => {
                d.push(
                    spans.value(&format!("{at}.url")),
                    format!("recipient `{name}`: `{}` URLs are not allowed", u.scheme()),
                    Some(
                        "deliveries go over https:// (allow_http = true is for local stubs)".into(),
                    ),
                );
                None
            }
            Err(e) => {
                d.push(
                    spans.value(&format!("{at}.url")),
                    format!("recipient `{name}`: not a URL: {e}"),
                    None,
                );
                None
            }
        };
        let method = match r.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("PUT") => reqwest::Method::PUT,
            Some("POST") => reqwest::Method::POST,
            Some(other) => {
                d.push(
                    spans.value(&format!("{at}.method")),
                    format!("method must be PUT or POST, not `{other}`"),
                    None,
                );
                reqwest::Method::PUT
            }
        };
        let path_in = match r.path.as_deref() {
            None | Some("url") => PathIn::Url,
            Some(h) if h.starts_with("header:") && h.len() > 7 => {
                PathIn::Header(h[7..].to_string())
            }
            Some(other) => {
                d.push(
                    spans.value(&format!("{at}.path")),
                    format!("path must be `url` or `header:NAME`, not `{other}`"),
                    None,
                );
                PathIn::Url
            }
        };
        if r.client_cert.is_some() != r.client_key.is_some() {
            d.push(
                spans.key(&at),
                format!("recipient `{name}` has a client certificate without its key, or a key without its certificate"),
                Some("set both client_cert and client_key".into()),
            );
        }
        let timeout = match r.timeout.as_deref().map(parse_duration).transpose() {
            Ok(t) => t.unwrap_or(Duration::from_secs(600)),
            Err(e) => {
                d.push(spans.value(&format!("{at}.timeout")), e, None);
                Duration::from_secs(600)
            }
        };
        if let Some(url) = url {
            let mut shown = url.clone();
            let _ = shown.set_password(None);
            let _ = shown.set_username("");
            shown.set_query(None);
            recipients.insert(
                name.clone(),
                RecipientPlan {
                    name: name.clone(),
                    url,
                    url_display: shown.to_string(),
                    method,
                    path_in,
                    client_cert: r.client_cert.as_deref().map(|t| Pem::parse(t, &dir)),
                    client_key: r.client_key.as_deref().map(|t| Pem::parse(t, &dir)),
                    ca: r.ca.as_deref().map(|t| Pem::parse(t, &dir)),
                    timeout,
                    allow_http: r.allow_http,
                },
            );
        }
    }

    // Routing.
    let routing = f.routing.as_ref().map(|r| {
        let key = r.key.clone().unwrap_or_else(|| "{{ trigger.prefix }}".into());
        if let Err(e) = crate::template::check(&key) {
            d.push(spans.value("routing.key"), format!("bad template: {e}"), None);
        }
        let match_column = r.match_column.clone().unwrap_or_else(|| "source_prefix".into());
        let id_column = r.id_column.clone().unwrap_or_else(|| "pipeline_name".into());
        let mut seen = std::collections::HashSet::new();
        for (i, row) in r.rows.iter().enumerate() {
            for col in [&match_column, &id_column] {
                if !row.get(col).is_some_and(|v| v.is_string()) {
                    d.push(
                        spans.key(&format!("routing.rows[{i}]")),
                        format!("routing row {} has no text `{col}`", i + 1),
                        None,
                    );
                }
            }
            let id = (row.get(&match_column).map(|v| v.to_string()), row.get(&id_column).map(|v| v.to_string()));
            if !seen.insert(id) {
                d.push(
                    spans.key(&format!("routing.rows[{i}]")),
                    format!("routing row {} repeats the ({match_column}, {id_column}) of an earlier row", i + 1),
                    Some("a second transfer for one prefix needs its own name, e.g. `pipeline_name#sft`".into()),
                );
            }
        }
        let kinds = usize::from(!r.rows.is_empty()) + usize::from(r.table.is_some()) + usize::from(r.dynamodb.is_some());
        if kinds != 1 {
            d.push(
                spans.key("routing"),
                "routing needs exactly one of: rows = [...], table = \"store:table\", dynamodb = { table = \"…\" }",
                None,
            );
        }
        let source = if let Some(t) = &r.table {
            let (store, table) = t.split_once(':').unwrap_or(("", t.as_str()));
            match f.stores.get(store) {
                Some(s) if crate::sql::is_sql_url(&s.url) => match crate::sql::SqlSource::open(&s.url, &dir) {
                    Ok(source) => RoutingSource::Sql { source, table: table.to_string() },
                    Err(e) => {
                        d.push(spans.value("routing.table"), e, None);
                        RoutingSource::Inline(Vec::new())
                    }
                },
                _ => {
                    d.push(
                        spans.value("routing.table"),
                        format!("`{t}` does not name a SQL store and table"),
                        Some("write \"store:table\" with a postgres:// or sqlite:// store".into()),
                    );
                    RoutingSource::Inline(Vec::new())
                }
            }
        } else if let Some(dy) = &r.dynamodb {
            #[cfg(feature = "aws")]
            {
                RoutingSource::Dynamo(DynamoPlan {
                    table: dy.table.clone(),
                    endpoint: dy.endpoint.clone().filter(|e| !e.trim().is_empty()),
                    region: dy.region.clone().filter(|e| !e.trim().is_empty()),
                })
            }
            #[cfg(not(feature = "aws"))]
            {
                let _ = dy;
                d.push(spans.key("routing.dynamodb"), "this flowgate was built without DynamoDB support (cargo feature `aws`)", None);
                RoutingSource::Inline(Vec::new())
            }
        } else {
            RoutingSource::Inline(r.rows.iter().map(|row| row.clone().into_iter().collect()).collect())
        };
        RoutingPlan {
            key,
            match_column,
            id_column,
            source,
        }
    });
    if f.matrix.is_some() && routing.is_some() {
        d.push(
            spans.key("routing"),
            "a pipeline has either a matrix or routing, not both",
            None,
        );
    }

    if let Some(m) = &f.matrix
        && m.values.is_empty()
    {
        d.push(
            spans.key("matrix.values"),
            "a matrix needs at least one axis",
            None,
        );
    }

    if !d.is_empty() {
        let mut items = d.items;
        items.sort_by_key(|d| (d.line, d.col));
        return Err(items);
    }
    Ok(Plan {
        name: f.name.clone(),
        description: f.description.clone(),
        file: loaded.path.clone(),
        dir,
        env: loaded.env.clone(),
        vars: f.vars.clone(),
        params: f.params.clone(),
        stores: f.stores.clone(),
        schedule,
        schedule_text: t.schedule.clone(),
        catch_up: t.catch_up.unwrap_or_default(),
        one_at_a_time: f.policy.one_at_a_time.unwrap_or_default(),
        watch,
        arrival,
        steps,
        quarantine,
        dead_letter,
        notify: NotifyPlan {
            on: f.notify.on.clone().unwrap_or_else(|| {
                vec![
                    NotifyEvent::Failure,
                    NotifyEvent::Recovery,
                    NotifyEvent::Partial,
                    NotifyEvent::Stale,
                ]
            }),
            stale_after,
            webhook,
            email: f.notify.email.clone(),
        },
        matrix: f.matrix.clone(),
        routing,
        recipients,
        environments: f.env.keys().cloned().collect(),
    })
}

fn load_plan(
    l: &crate::config::model::LoadSpec,
    at: &str,
    loaded: &Loaded,
    d: &mut Diagnostics<'_>,
) -> Option<LoadPlan> {
    use crate::sql::target::{LoadMode, LoadTarget};
    let schema = l.schema.clone().unwrap_or_else(|| "public".into());
    let mut target = |table: &str,
                      mode: Option<LoadMode>,
                      key: &Option<Vec<String>>,
                      version: &Option<String>,
                      at: &str| {
        let mode = mode.unwrap_or(LoadMode::Upsert);
        let key = key.clone().unwrap_or_default();
        if matches!(mode, LoadMode::Upsert | LoadMode::AppendVersions) && key.is_empty() {
            d.push(
                loaded.spans.value(at),
                format!("table `{table}`: load mode {mode:?} needs `key = [\"column\", …]`"),
                None,
            );
            return None;
        }
        if mode == LoadMode::AppendVersions && version.is_none() {
            d.push(
                loaded.spans.value(at),
                format!("table `{table}`: load mode append-versions needs `version = \"column\"`"),
                None,
            );
            return None;
        }
        Some(LoadTarget {
            schema: schema.clone(),
            table: table.to_string(),
            mode,
            key,
            version: version.clone(),
        })
    };
    let targets = match (&l.table, &l.tables) {
        (Some(t), None) => vec![(
            None,
            target(t, l.mode, &l.key, &l.version, &format!("{at}.load"))?,
        )],
        (None, Some(map)) if !map.is_empty() => {
            let mut out = Vec::new();
            for (name, t) in map {
                out.push((
                    Some(name.clone()),
                    target(
                        name,
                        t.mode,
                        &t.key,
                        &t.version,
                        &format!("{at}.load.tables.{name}"),
                    )?,
                ));
            }
            out
        }
        _ => {
            d.push(loaded.spans.value(&format!("{at}.load")), "load needs either `table = \"name\"` or `tables = { name = { key = [...] }, ... }`", None);
            return None;
        }
    };
    Some(LoadPlan {
        from: Location {
            store: String::new(),
            prefix: String::new(),
        },
        into: l.into.clone(),
        targets,
        batch_rows: l.batch_rows.unwrap_or(65_536).max(1),
    })
}

/// Is store `name` of the right kind (SQL or object)? Unknown stores are reported elsewhere.
fn kind_is(
    d: &mut Diagnostics<'_>,
    loaded: &Loaded,
    at: &str,
    name: &str,
    sql: bool,
    what: &str,
) -> bool {
    let Some(spec) = loaded.file.stores.get(name) else {
        return true;
    };
    if crate::sql::is_sql_url(&spec.url) == sql {
        return true;
    }
    let (want, got) = if sql {
        ("a SQL store (postgres:// or sqlite://)", "an object store")
    } else {
        ("an object store", "a SQL store")
    };
    d.push(
        loaded.spans.value(at),
        format!("{what} needs {want} here, but `{name}` is {got}"),
        None,
    );
    false
}

fn extract_plan(
    e: &crate::config::model::ExtractSpec,
    at: &str,
    loaded: &Loaded,
    d: &mut Diagnostics<'_>,
) -> Option<ExtractPlan> {
    use crate::config::model::Tables;
    let spans = &loaded.spans;
    let tables = match &e.tables {
        Tables::All(s) if s == "*" => None,
        Tables::All(s) => {
            d.push(
                spans.value(&format!("{at}.extract.tables")),
                format!("tables = \"{s}\": write a list (`[\"{s}\"]`) or \"*\""),
                None,
            );
            return None;
        }
        Tables::List(v) if v.is_empty() => {
            d.push(
                spans.value(&format!("{at}.extract.tables")),
                "tables is empty; list some or write \"*\"",
                None,
            );
            return None;
        }
        Tables::List(v) => Some(v.clone()),
    };
    let lookback = match e.lookback.as_deref().map(parse_duration).transpose() {
        Ok(l) => l.filter(|l| !l.is_zero()),
        Err(err) => {
            d.push(spans.value(&format!("{at}.extract.lookback")), err, None);
            return None;
        }
    };
    Some(ExtractPlan {
        from: e.from.clone(),
        tables,
        schema: e.schema.clone().unwrap_or_else(|| "public".into()),
        cursor: e.cursor.clone(),
        key: e.key.clone(),
        lookback,
        nulls: e.nulls.unwrap_or_default(),
        to: Location {
            store: String::new(),
            prefix: String::new(),
        },
        format: e.format,
        batch_rows: e.batch_rows.unwrap_or(65_536).max(1),
        parallel: e
            .parallel
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get().min(4))
                    .unwrap_or(1)
            })
            .max(1),
    })
}

type LocationFn<'a> =
    dyn FnMut(&mut Diagnostics<'_>, &str, &str, Access, &str) -> Option<Location> + 'a;

fn copy_plan(
    c: &CopySpec,
    at: &str,
    what: &str,
    loaded: &Loaded,
    d: &mut Diagnostics<'_>,
    location: &mut LocationFn<'_>,
) -> Option<CopyPlan> {
    let from = location(d, &format!("{at}.copy.from"), &c.from, Access::Read, what);
    let to = location(d, &format!("{at}.copy.to"), &c.to, Access::Write, what);
    let include = glob_set(&c.include, &format!("{at}.copy.include"), loaded, d);
    let exclude = glob_set(&c.exclude, &format!("{at}.copy.exclude"), loaded, d);
    let part_size = match c.part_size.as_deref().map(parse_size).transpose() {
        Ok(p) => p.unwrap_or(10 << 20),
        Err(e) => {
            d.push(loaded.spans.value(&format!("{at}.copy.part_size")), e, None);
            10 << 20
        }
    };
    if let Some(dec) = &c.decrypt {
        crate::secret::register(&dec.age_identity);
        // Empty: checked when a run decrypts (rows may never ask for it).
        if !dec.age_identity.trim().is_empty()
            && let Err(e) = crate::steps::copy::age_identity(&dec.age_identity)
        {
            d.push(
                loaded
                    .spans
                    .value(&format!("{at}.copy.decrypt.age_identity")),
                e,
                Some(
                    "give an age identity (AGE-SECRET-KEY-1…) through a secret: \"${secret:NAME}\""
                        .into(),
                ),
            );
        }
        if let Some(w) = &dec.when
            && let Err(e) = crate::template::check_expression(w)
        {
            d.push(
                loaded.spans.value(&format!("{at}.copy.decrypt.when")),
                format!("not an expression: {e}"),
                None,
            );
        }
    }
    if part_size < 5 << 20 {
        d.push(
            loaded.spans.value(&format!("{at}.copy.part_size")),
            "part_size must be at least 5MiB (the S3 minimum)",
            None,
        );
    }
    Some(CopyPlan {
        from: from?,
        to: to?,
        include,
        exclude,
        manifest: match c.manifest.as_deref() {
            Some("") => None,
            Some(m) => Some(m.to_string()),
            None => Some("_manifest.json".to_string()),
        },
        verify: c.verify.unwrap_or(Verify::Sha256),
        concurrency: c.concurrency.unwrap_or(8).clamp(1, 256),
        part_size: usize::try_from(part_size).unwrap_or(10 << 20),
        decrypt: c.decrypt.clone(),
    })
}

/// Order steps so that each comes after what it needs (stable: file order otherwise).
fn order(steps: &[PlannedStep]) -> Result<Vec<PlannedStep>, Vec<String>> {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut state = vec![0u8; steps.len()]; // 0 new, 1 visiting, 2 done
    let mut out = Vec::new();
    fn visit(
        i: usize,
        steps: &[PlannedStep],
        index: &HashMap<&str, usize>,
        state: &mut [u8],
        out: &mut Vec<PlannedStep>,
        trail: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                trail.push(steps[i].id.clone());
                return Err(trail.clone());
            }
            _ => {}
        }
        state[i] = 1;
        trail.push(steps[i].id.clone());
        for need in &steps[i].needs {
            if let Some(&j) = index.get(need.as_str()) {
                visit(j, steps, index, state, out, trail)?;
            }
        }
        trail.pop();
        state[i] = 2;
        out.push(steps[i].clone());
        Ok(())
    }
    for i in 0..steps.len() {
        visit(i, steps, &index, &mut state, &mut out, &mut Vec::new())?;
    }
    Ok(out)
}
