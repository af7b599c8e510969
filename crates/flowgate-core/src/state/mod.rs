//! The state store: runs, the trigger-event ledger, watermarks, the object ledger,
//! datasets, the built-in KV and leases. One trait, two backends (SQLite for one
//! machine, PostgreSQL for many workers), one shared test suite.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod postgres;
mod rows;
mod sqlite;
#[cfg(test)]
mod suite;

pub use postgres::PostgresState;
pub use sqlite::SqliteState;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("SQLite state at {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("PostgreSQL state: {0}")]
    Postgres(String),
    #[error("state store URL `{0}` is not supported; use a path, sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("state record is corrupt: {0}")]
    Corrupt(String),
    #[error("no run matches `{0}`")]
    RunNotFound(String),
    #[error("`{0}` matches several runs; give more characters of the id")]
    Ambiguous(String),
    #[error("state store task failed: {0}")]
    Task(String),
    /// A write made under a claim that is no longer held: its lease expired or
    /// another worker took the lane over. Retrying cannot help; the run must stop.
    #[error(
        "the claim on `{0}` was lost (its lease expired, or another worker took it over): \
         this worker's write was refused"
    )]
    Fenced(String),
}

pub type StateResult<T> = Result<T, StateError>;

/// Status of a run, and of a step in it (succeeded, partial, skipped, failed or
/// interrupted).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    #[default]
    Queued,
    Running,
    Succeeded,
    /// Succeeded, but some input was quarantined or dead-lettered.
    Partial,
    Failed,
    Skipped,
    /// Stopped by a signal; what was done is recorded, the rest is left for the next run.
    Interrupted,
    /// Its worker stopped renewing its lease (killed or lost); the next run resumes the work.
    Abandoned,
}

impl RunStatus {
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Partial,
        RunStatus::Failed,
        RunStatus::Skipped,
        RunStatus::Interrupted,
        RunStatus::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Finished and will not change again.
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    /// The run's work reached its sinks.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Partial | RunStatus::Skipped
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a step did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: String,
    pub status: RunStatus,
    pub attempts: u32,
    pub objects_in: u64,
    pub objects_out: u64,
    /// Objects that were already at the destination and were not copied again.
    pub objects_skipped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rows_in: u64,
    pub rows_out: u64,
    /// Inputs set aside (quarantined objects, dead-lettered records).
    pub quarantined: u64,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub notes: Vec<String>,
    /// The newest source change this step's positions cover (extract), for freshness.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub newest_change: Option<DateTime<Utc>>,
    /// What the step kind keeps of its own (a command: its exit code and the end
    /// of its stdout and stderr, secrets masked).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub output: Option<serde_json::Value>,
}

impl RunRecord {
    /// A failed run whose every failed step set its bad input aside (quarantine or
    /// dead letter): running the same event again cannot help, a person must.
    pub fn set_aside(&self) -> bool {
        self.status == RunStatus::Failed && failures_set_aside(&self.steps)
    }
}

/// Some step failed, and every failed step set its bad input aside.
pub fn failures_set_aside(steps: &[StepReport]) -> bool {
    let mut failing = steps
        .iter()
        .filter(|s| s.status == RunStatus::Failed)
        .peekable();
    failing.peek().is_some() && failing.all(|s| s.quarantined > 0)
}

/// KV key under which the newest source change visible in a pipeline's sinks is kept.
pub fn freshness_key(pipeline: &str) -> String {
    format!("flowgate/freshness/{pipeline}")
}

/// KV key saying whether the freshness watchdog last found the pipeline stale.
pub fn stale_key(pipeline: &str) -> String {
    format!("flowgate/stale/{pipeline}")
}

/// One execution of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub pipeline: String,
    pub env: Option<String>,
    pub event_id: Option<i64>,
    /// What started it: `manual`, `schedule`, `watch`, `arrival`.
    pub trigger: String,
    pub params: Value,
    pub status: RunStatus,
    pub attempt: u32,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub steps: Vec<StepReport>,
    /// The lane the run held (see [`Fence`]) and the token it held it under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<i64>,
    /// What the run kept of its files (see [`crate::code`]): `{"id", "files",
    /// "bytes"}`, or `{"kept": false, "why"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Value>,
}

/// A claim on a lease, and what every write made under it carries: the lease
/// (`lane`), a holder unique to this claim, and the token it was granted under.
/// Tokens only grow for a lease, so a write carrying an older token than the
/// lease's current one comes from a claim that was lost, and is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
    pub token: i64,
}

/// Status of a trigger event in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Pending,
    Claimed,
    Done,
    Failed,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Claimed => "claimed",
            EventStatus::Done => "done",
            EventStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> StateResult<EventStatus> {
        match s {
            "pending" => Ok(EventStatus::Pending),
            "claimed" => Ok(EventStatus::Claimed),
            "done" => Ok(EventStatus::Done),
            "failed" => Ok(EventStatus::Failed),
            other => Err(StateError::Corrupt(format!("event status `{other}`"))),
        }
    }
}

/// A trigger event, written before it starts a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerEvent {
    pub id: i64,
    pub pipeline: String,
    pub kind: String,
    /// Unique per pipeline: KV revision, object key + etag, schedule tick, message id.
    pub dedupe_key: String,
    pub payload: Value,
    pub status: EventStatus,
    pub attempts: u32,
    pub run_id: Option<String>,
    pub claimed_by: Option<String>,
    /// The lane whose lease runs it: the pipeline, or the pipeline and one matrix
    /// combination (runs of one lane never overlap).
    pub lane: String,
    /// The fencing token of the claim that holds it (when claimed).
    pub claim_token: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// A new event for the ledger.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub pipeline: String,
    pub lane: String,
    pub kind: String,
    pub dedupe_key: String,
    pub payload: Value,
}

/// The outcome of recording an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    New(TriggerEvent),
    /// The same dedupe key was recorded before; this is that event.
    Duplicate(TriggerEvent),
}

/// An entry of the object ledger: an input that a step has fully handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub key: String,
    /// What identifies the version handled (etag, or size + modification time).
    pub fingerprint: String,
    pub detail: Value,
    pub recorded_at: DateTime<Utc>,
}

/// A KV entry with its revision (a store-wide counter, like etcd's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    pub value: String,
    pub revision: i64,
    /// When it was set, where the store says (the built-in KV; Consul and etcd do not).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub updated_at: Option<DateTime<Utc>>,
}

/// A lease: a name held by one holder until it expires (by the state store's clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub expires_at: DateTime<Utc>,
    pub token: i64,
    /// Held right now (not expired, not released), by the store's clock.
    pub live: bool,
}

/// A published dataset version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub name: String,
    pub version: String,
    pub location: String,
    pub meta: Value,
    pub published_at: DateTime<Utc>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub pipeline: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: usize,
}

/// The state store.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Where it is, without credentials.
    fn describe(&self) -> String;

    /// The state store's clock: the one clock leases and schedules are judged by,
    /// whatever each worker's own clock says.
    async fn now(&self) -> StateResult<DateTime<Utc>>;

    // --- trigger-event ledger ---
    async fn record_event(&self, event: NewEvent) -> StateResult<Recorded>;
    /// Lanes of `pipeline` whose events may need a worker: trigger events waiting,
    /// or events claimed by a claim that may be gone. Oldest first.
    async fn open_lanes(&self, pipeline: &str) -> StateResult<Vec<String>>;
    /// Under the fence of a lane, claim its oldest trigger event (not manual) that
    /// is pending or claimed under an older token (its worker lost the lane), and
    /// that no older manual event is waiting for the lane before (see
    /// [`StateStore::wait_for_lane`]): a lane serves its events first come, first
    /// served. Manual events are only claimed by id.
    async fn claim_event(&self, fence: &Fence) -> StateResult<Option<TriggerEvent>>;
    /// Say that a pending manual event's process waits for its lane, for `ttl`
    /// from now on the store's clock; trigger events recorded after it are not
    /// claimed meanwhile. A waiter that stops saying so (killed) stops holding
    /// them back once `ttl` has passed.
    async fn wait_for_lane(&self, id: i64, ttl: Duration) -> StateResult<()>;
    /// Under the fence of its lane, claim one event: pending, claimed under an older
    /// token, or (when `retry_failed`) failed before: a new attempt of it.
    async fn claim_event_id(
        &self,
        id: i64,
        fence: &Fence,
        retry_failed: bool,
    ) -> StateResult<Option<TriggerEvent>>;
    /// Under the fence of a lane, close its manual events claimed under an older
    /// token as failed: their worker is gone, and only a person reruns them.
    async fn close_lost_manual(&self, fence: &Fence) -> StateResult<u64>;
    /// Record how a claimed event ended; refused ([`StateError::Fenced`]) unless
    /// the claim is still held.
    async fn finish_event(
        &self,
        id: i64,
        status: EventStatus,
        run_id: &str,
        fence: &Fence,
    ) -> StateResult<()>;
    /// Record an event that is not run (a missed schedule tick, a revision a
    /// newer one superseded) as done, with its skipped run: `false` when its
    /// dedupe key was recorded before.
    async fn record_skipped(&self, event: NewEvent, run: &RunRecord) -> StateResult<bool>;
    async fn get_event(&self, id: i64) -> StateResult<Option<TriggerEvent>>;
    async fn list_events(&self, pipeline: &str, limit: usize) -> StateResult<Vec<TriggerEvent>>;

    // --- runs ---
    /// Insert or replace a run record (reports included).
    async fn save_run(&self, run: &RunRecord) -> StateResult<()>;
    /// A run by id or unique id prefix.
    async fn get_run(&self, id: &str) -> StateResult<RunRecord>;
    async fn list_runs(&self, filter: &RunFilter) -> StateResult<Vec<RunRecord>>;
    /// Under the fence of a lane, mark its runs still `running` under an older
    /// token as abandoned, with why.
    async fn abandon_runs(&self, fence: &Fence, why: &str) -> StateResult<u64>;

    // --- watermarks ---
    async fn get_watermark(&self, pipeline: &str, name: &str) -> StateResult<Option<Value>>;
    /// Refused ([`StateError::Fenced`]) unless the fence's claim is still held.
    async fn set_watermark(
        &self,
        pipeline: &str,
        name: &str,
        value: &Value,
        fence: &Fence,
    ) -> StateResult<()>;

    // --- object ledger (inputs fully handled, per scope) ---
    async fn ledger_list(
        &self,
        scope: &str,
        prefix: &str,
    ) -> StateResult<HashMap<String, LedgerEntry>>;
    /// Refused ([`StateError::Fenced`]) unless the fence's claim is still held.
    async fn ledger_put(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        detail: &Value,
        fence: &Fence,
    ) -> StateResult<()>;

    // --- KV ---
    async fn kv_get(&self, key: &str) -> StateResult<Option<KvEntry>>;
    /// Set a value; returns its new revision.
    async fn kv_set(&self, key: &str, value: &str) -> StateResult<i64>;
    async fn kv_list(&self, prefix: &str) -> StateResult<Vec<KvEntry>>;
    /// Every value `key` was set to with a revision above `after`, oldest first
    /// (at most `limit`).
    async fn kv_history(&self, key: &str, after: i64, limit: usize) -> StateResult<Vec<KvEntry>>;

    // --- leases (expiry judged by the store's clock) ---
    /// Take `name` for `holder` (unique to this claim) for `ttl`, with a token
    /// larger than any it was granted under before; `None` while someone holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> StateResult<Option<Fence>>;
    /// Extend a held lease by `ttl` from now; false when it was lost (expired,
    /// even if nobody took it since, or taken over).
    async fn renew_lease(&self, fence: &Fence, ttl: Duration) -> StateResult<bool>;
    async fn release_lease(&self, fence: &Fence) -> StateResult<()>;
    async fn get_lease(&self, name: &str) -> StateResult<Option<Lease>>;

    // --- retention ---
    /// Remove what is older than `before` by the rules of [`Pruned`]'s doc (see
    /// [`RETENTION_RULES`]).
    async fn prune(&self, before: DateTime<Utc>) -> StateResult<Pruned>;

    // --- datasets ---
    async fn publish_dataset(
        &self,
        name: &str,
        version: &str,
        location: &str,
        meta: &Value,
    ) -> StateResult<()>;
    async fn list_datasets(&self, name: &str) -> StateResult<Vec<Dataset>>;
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    pub runs: u64,
    pub events: u64,
    pub ledger_entries: u64,
    pub kv_revisions: u64,
}

/// What [`StateStore::prune`] removes once it is older than the retention, and
/// what it keeps whatever its age:
/// - runs that finished before the cutoff, except each pipeline's newest;
/// - schedule, watch and manual events that ended (done or failed) before it,
///   whose keys cannot come again (ticks and revisions only move on; a manual
///   key used again after that long runs again). Arrival events stay: their keys
///   keep an object still in its store from running twice;
/// - copy and delivery ledger entries recorded before it (a later copy of the
///   same unchanged object copies it again, a delivery sends nothing twice
///   that was removed from its outbox); transform input ledgers stay, as long as
///   the inputs they name can be listed;
/// - old values of KV keys set before it (each key keeps its newest).
pub const RETENTION_RULES: &str = "runs finished, schedule/watch/manual events ended, copy/deliver ledger entries and superseded KV values older than the retention";

/// Wait until `key` has a revision above `after`, polling; `None` when `timeout` passes.
pub async fn kv_wait(
    state: &dyn StateStore,
    key: &str,
    after: i64,
    timeout: Duration,
) -> StateResult<Option<KvEntry>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(entry) = state.kv_get(key).await?
            && entry.revision > after
        {
            return Ok(Some(entry));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Open a state store from a URL or a path: `postgres://…`, `sqlite://PATH`, or a file path.
pub async fn open(url: &str) -> StateResult<Arc<dyn StateStore>> {
    crate::secret::register_url_password(url);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresState::connect(url).await?))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(
            SqliteState::open(std::path::Path::new(path)).await?,
        ))
    } else if url.contains("://") {
        Err(StateError::UnsupportedUrl(crate::secret::redact(url)))
    } else {
        Ok(Arc::new(
            SqliteState::open(std::path::Path::new(url)).await?,
        ))
    }
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}
