//! The run executor: trigger event → claimed run → steps in `needs` order with
//! retries and timeouts → recorded outcome → notifications.
//!
//! A trigger event is in the ledger before its run starts; the event is marked done
//! only after every step's sink accepted the data, so a crash at any instant leaves
//! either a done event or one that the next worker claims and resumes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::model::{Access, NotifyEvent, StoreSpec};
use crate::error::{ErrorClass, StepError};
use crate::notify::{Notice, send};
use crate::plan::{Plan, PlannedStep, StepKind};
use crate::quarantine::Quarantine;
use crate::state::{
    EventStatus, NewEvent, Recorded, RunFilter, RunRecord, RunStatus, StateError, StateStore,
    StepReport, TriggerEvent,
};
use crate::store::{Location, StoreHandle};

/// Errors that stop the engine itself (not a run).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Params(String),
    #[error("{0}")]
    Step(StepError),
}

/// Progress of long work, shown by the CLI as bars when it runs in a terminal.
pub trait Progress: Send + Sync {
    fn begin(&self, _step: &str, _objects: u64, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
}

/// Progress that shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What asks for a run.
#[derive(Debug, Clone)]
pub struct Submission {
    /// `manual`, `schedule`, `watch`, `arrival`.
    pub kind: String,
    /// Unique per pipeline: the same key never runs twice to success.
    pub dedupe_key: String,
    /// What templates see as `trigger`.
    pub trigger: Value,
    pub params: BTreeMap<String, String>,
    /// One combination of the pipeline's matrix (empty without a matrix); set by
    /// [`Engine::submit_all`].
    pub matrix: BTreeMap<String, String>,
    /// The routing row this run carries out (`{{ route.* }}`), set by
    /// [`Engine::submit_all`] for pipelines with routing.
    pub route: Option<Value>,
}

impl Submission {
    /// A manual run, by `via` (`cli`, `http`). Without a key every request is a new
    /// event; with one, the same key never runs twice to success.
    pub fn manual(via: &str, key: Option<String>, params: BTreeMap<String, String>) -> Submission {
        let key = key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        Submission {
            kind: "manual".into(),
            dedupe_key: format!("manual:{key}"),
            trigger: json!({"kind": "manual", "via": via}),
            params,
            matrix: BTreeMap::new(),
            route: None,
        }
    }
}

/// What became of a submission.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ran(Box<RunRecord>),
    /// The event was handled before; nothing was done again.
    AlreadyDone {
        event: Box<TriggerEvent>,
    },
    /// A matrix combination that was not started: an earlier one failed and the
    /// matrix has `fail_fast`.
    NotStarted {
        matrix: BTreeMap<String, String>,
    },
    /// Another live worker is running this event right now.
    InProgress {
        event: Box<TriggerEvent>,
    },
}

/// Everything a step may use.
pub struct StepContext<'a> {
    pub plan: &'a Plan,
    pub run_id: &'a str,
    pub step: &'a PlannedStep,
    pub template: &'a Value,
    pub stores: &'a Stores,
    pub state: &'a dyn StateStore,
    pub cancel: &'a CancellationToken,
    pub progress: &'a dyn Progress,
}

/// What a step reports when it finishes.
#[derive(Debug, Default, Clone)]
pub struct StepOutput {
    pub report: StepReport,
    /// The step failed after setting its bad input aside: the report's counts
    /// (quarantined above all) stand, and the step is not retried.
    pub failure: Option<StepError>,
}

impl From<StepReport> for StepOutput {
    fn from(report: StepReport) -> Self {
        StepOutput {
            report,
            failure: None,
        }
    }
}

/// The stores of one run, opened once.
pub struct Stores {
    map: HashMap<String, StoreHandle>,
    /// Stores whose URL template could not be rendered for this run, with why.
    unavailable: HashMap<String, String>,
    dir: std::path::PathBuf,
    quarantine: Option<Location>,
    dead_letter: Option<Location>,
}

impl Stores {
    /// Open the plan's object stores; a URL may be a template of the run
    /// (`s3://{{ route.destination_bucket }}`).
    pub fn open(plan: &Plan, template: &Value) -> Result<Stores, StepError> {
        let mut map = HashMap::new();
        let mut unavailable = HashMap::new();
        // SQL stores are opened by the steps that use them.
        for (name, spec) in plan
            .stores
            .iter()
            .filter(|(_, s)| !crate::sql::is_sql_url(&s.url))
        {
            let rendered;
            let spec = if spec.url.contains("{{") {
                match crate::template::render(&spec.url, template) {
                    Ok(url) => {
                        rendered = StoreSpec {
                            url,
                            ..spec.clone()
                        };
                        &rendered
                    }
                    // Only a step that uses this store fails.
                    Err(e) => {
                        unavailable.insert(name.clone(), format!("the URL of store `{name}`: {e}"));
                        continue;
                    }
                }
            } else {
                spec
            };
            let h = StoreHandle::open(name, spec, &plan.dir)
                .map_err(|e| StepError::new(ErrorClass::USER, e.to_string()))?;
            map.insert(name.clone(), h);
        }
        Ok(Stores {
            map,
            unavailable,
            dir: plan.dir.clone(),
            quarantine: plan.quarantine.clone(),
            dead_letter: plan.dead_letter.clone(),
        })
    }

    pub fn get(&self, name: &str) -> Result<&StoreHandle, StepError> {
        if let Some(why) = self.unavailable.get(name) {
            return Err(StepError::user(why.clone()));
        }
        self.map
            .get(name)
            .ok_or_else(|| StepError::internal(format!("store `{name}` was not opened")))
    }

    /// Where bad records go: the pipeline's `policy.dead_letter`, else
    /// `.flowgate/dead-letter/` beside the pipeline file.
    pub fn dead_letter(
        &self,
        template: &Value,
    ) -> Result<crate::quarantine::DeadLetter, StepError> {
        if let Some(loc) = &self.dead_letter {
            let prefix = crate::template::render(&loc.prefix, template).map_err(StepError::user)?;
            return Ok(crate::quarantine::DeadLetter {
                store: self.get(&loc.store)?.clone(),
                prefix,
            });
        }
        let spec = StoreSpec::at("file://.flowgate/dead-letter", Access::ReadWrite);
        let store = StoreHandle::open("dead-letter", &spec, &self.dir)
            .map_err(|e| StepError::user(e.to_string()))?;
        Ok(crate::quarantine::DeadLetter {
            store,
            prefix: String::new(),
        })
    }

    /// Where failed inputs of `source` go: the pipeline's `policy.quarantine`, else
    /// `failed/` in the source store when it is writable, else `.flowgate/quarantine/`
    /// beside the pipeline file.
    pub fn quarantine_for(
        &self,
        source: &StoreHandle,
        template: &Value,
    ) -> Result<Quarantine, StepError> {
        if let Some(loc) = &self.quarantine {
            let prefix = crate::template::render(&loc.prefix, template).map_err(StepError::user)?;
            return Ok(Quarantine {
                store: self.get(&loc.store)?.clone(),
                prefix,
            });
        }
        if source.access.can_write() {
            return Ok(Quarantine {
                store: source.clone(),
                prefix: "failed".into(),
            });
        }
        let spec = StoreSpec::at("file://.flowgate/quarantine", Access::ReadWrite);
        let store = StoreHandle::open("quarantine", &spec, &self.dir)
            .map_err(|e| StepError::user(e.to_string()))?;
        Ok(Quarantine {
            store,
            prefix: source.name.clone(),
        })
    }
}

/// The engine: one per process.
pub struct Engine {
    pub state: Arc<dyn StateStore>,
    /// `host:pid:nonce`; written on claims, leases and runs.
    pub worker: String,
    /// Cancelled on SIGINT/SIGTERM: steps stop at a safe point.
    pub cancel: CancellationToken,
    pub progress: Arc<dyn Progress>,
    pub lease_ttl: Duration,
}

/// This process's worker id.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &nonce[nonce.len() - 6..]
    )
}

/// Is the worker that wrote `worker` certainly gone (same host, process not running)?
pub fn worker_is_dead(worker: &str) -> bool {
    let mut parts = worker.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let here = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    if host != here {
        return false;
    }
    match pid.parse::<u32>() {
        Ok(pid) if pid == std::process::id() => false,
        Ok(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}

/// Check manual parameters against the declared ones, filling defaults.
pub fn resolve_params(
    plan: &Plan,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for k in given.keys() {
        if !plan.params.contains_key(k) {
            let declared: Vec<&str> = plan.params.keys().map(String::as_str).collect();
            return Err(if declared.is_empty() {
                format!(
                    "unknown parameter `{k}`: pipeline `{}` declares no [params]",
                    plan.name
                )
            } else {
                format!(
                    "unknown parameter `{k}`; declared parameters: {}",
                    declared.join(", ")
                )
            });
        }
    }
    for (k, spec) in &plan.params {
        match given.get(k).or(spec.default.as_ref()) {
            Some(v) => {
                out.insert(k.clone(), v.clone());
            }
            None => {
                return Err(format!(
                    "parameter `{k}` is required: pass --param {k}=VALUE"
                ));
            }
        }
    }
    Ok(out)
}

impl Engine {
    pub fn new(state: Arc<dyn StateStore>) -> Engine {
        Engine {
            state,
            worker: worker_id(),
            cancel: CancellationToken::new(),
            progress: Arc::new(NoProgress),
            lease_ttl: Duration::from_secs(30),
        }
    }

    /// Submit once per matrix combination (or once without a matrix): each
    /// combination is its own event and run, at most `max_parallel` at a time;
    /// failures are independent unless `fail_fast`.
    pub async fn submit_all(
        &self,
        plan: &Plan,
        sub: Submission,
    ) -> Result<Vec<Outcome>, EngineError> {
        if let Some(routing) = &plan.routing {
            return self.submit_routed(plan, routing, sub).await;
        }
        let Some(m) = &plan.matrix else {
            return Ok(vec![self.submit(plan, sub).await?]);
        };
        let mut combos: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
        for (axis, values) in &m.values {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(axis.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
        let failed = std::sync::atomic::AtomicBool::new(false);
        let results: Vec<Result<Outcome, EngineError>> = futures::stream::iter(combos)
            .map(|combo| {
                let (sub, failed) = (&sub, &failed);
                async move {
                    if m.fail_fast && failed.load(std::sync::atomic::Ordering::SeqCst) {
                        return Ok(Outcome::NotStarted { matrix: combo });
                    }
                    let label: Vec<String> =
                        combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let one = Submission {
                        dedupe_key: format!("{}#{}", sub.dedupe_key, label.join(",")),
                        matrix: combo,
                        ..sub.clone()
                    };
                    let outcome = self.submit(plan, one).await?;
                    if let Outcome::Ran(r) = &outcome
                        && !r.status.is_success()
                    {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(outcome)
                }
            })
            .buffered(m.max_parallel.unwrap_or(1).max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// One run per routing row that matches the event, deduplicated per row. An
    /// event with no row is still recorded and run: the run dead-letters the event
    /// with the reason and fails, so it is never dropped silently.
    async fn submit_routed(
        &self,
        plan: &Plan,
        routing: &crate::plan::RoutingPlan,
        sub: Submission,
    ) -> Result<Vec<Outcome>, EngineError> {
        let ctx = json!({ "trigger": sub.trigger, "params": sub.params, "vars": plan.vars, "env": plan.env });
        let key = crate::template::render(&routing.key, &ctx).map_err(EngineError::Params)?;
        let rows = routing.lookup(&key).await.map_err(EngineError::Step)?;
        if rows.is_empty() {
            tracing::warn!(pipeline = %plan.name, key = %key, "no routing row matches the event");
            return Ok(vec![self.submit(plan, sub).await?]);
        }
        let mut outcomes = Vec::new();
        for row in rows {
            let id = row
                .get(&routing.id_column)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let one = Submission {
                dedupe_key: format!("{}#route={id}", sub.dedupe_key),
                route: Some(Value::Object(row)),
                ..sub.clone()
            };
            outcomes.push(self.submit(plan, one).await?);
        }
        Ok(outcomes)
    }

    /// Record an event and run it, unless it was handled before.
    pub async fn submit(&self, plan: &Plan, sub: Submission) -> Result<Outcome, EngineError> {
        let params = resolve_params(plan, &sub.params).map_err(EngineError::Params)?;
        let mut payload = json!({ "trigger": sub.trigger, "params": params, "matrix": sub.matrix, "env": plan.env });
        if let Some(route) = &sub.route {
            payload["route"] = route.clone();
        }
        let recorded = self
            .state
            .record_event(NewEvent {
                pipeline: plan.name.clone(),
                kind: sub.kind,
                dedupe_key: sub.dedupe_key,
                payload,
            })
            .await?;
        let event = match recorded {
            Recorded::New(e) => e,
            Recorded::Duplicate(e) => match e.status {
                EventStatus::Done => return Ok(Outcome::AlreadyDone { event: Box::new(e) }),
                _ => e,
            },
        };
        match self.claim(&event).await? {
            Some(claimed) => Ok(Outcome::Ran(Box::new(self.execute(plan, claimed).await?))),
            None => Ok(Outcome::InProgress {
                event: Box::new(event),
            }),
        }
    }

    /// Claim an event, taking it over at once when its holder is a dead process here.
    async fn claim(&self, event: &TriggerEvent) -> Result<Option<TriggerEvent>, EngineError> {
        if let Some(c) = self
            .state
            .claim_event_id(event.id, &self.worker, self.lease_ttl)
            .await?
        {
            return Ok(Some(c));
        }
        let current = self.state.get_event(event.id).await?;
        if let Some(cur) = current
            && cur.status == EventStatus::Claimed
            && cur.claimed_by.as_deref().is_some_and(worker_is_dead)
        {
            // Release the dead holder's claim, then claim normally.
            self.state
                .finish_event(
                    cur.id,
                    EventStatus::Pending,
                    cur.run_id.as_deref().unwrap_or(""),
                )
                .await?;
            return Ok(self
                .state
                .claim_event_id(event.id, &self.worker, self.lease_ttl)
                .await?);
        }
        Ok(None)
    }

    /// Run every event of `plan` that is pending or whose worker died.
    pub async fn run_pending(&self, plan: &Plan) -> Result<Vec<RunRecord>, EngineError> {
        let mut runs = Vec::new();
        // Events held by dead processes on this host are released first (manual
        // ones are closed instead: only the person who asked reruns them).
        for e in self.state.list_events(&plan.name, 1000).await? {
            if e.status == EventStatus::Claimed
                && e.claimed_by.as_deref().is_some_and(worker_is_dead)
            {
                let status = if e.kind == "manual" {
                    EventStatus::Failed
                } else {
                    EventStatus::Pending
                };
                self.state
                    .finish_event(e.id, status, e.run_id.as_deref().unwrap_or(""))
                    .await?;
            }
        }
        while !self.cancel.is_cancelled() {
            let Some(event) = self
                .state
                .claim_event(&plan.name, &self.worker, self.lease_ttl)
                .await?
            else {
                break;
            };
            runs.push(self.execute(plan, event).await?);
        }
        Ok(runs)
    }

    /// Mark runs of this pipeline whose worker is gone as abandoned.
    async fn sweep_abandoned(&self, plan: &Plan, event_id: i64) -> Result<(), EngineError> {
        let running = self
            .state
            .list_runs(&RunFilter {
                pipeline: Some(plan.name.clone()),
                status: Some(RunStatus::Running),
                limit: 1000,
            })
            .await?;
        for mut r in running {
            let gone = worker_is_dead(&r.worker) || r.event_id == Some(event_id);
            if gone && r.worker != self.worker {
                r.status = RunStatus::Abandoned;
                r.finished_at = Some(Utc::now());
                r.error = Some(
                    "its worker stopped before the run finished; a later run resumed the work"
                        .into(),
                );
                self.state.save_run(&r).await?;
            }
        }
        Ok(())
    }

    async fn execute(&self, plan: &Plan, event: TriggerEvent) -> Result<RunRecord, EngineError> {
        let started = Utc::now();
        let run_id = uuid::Uuid::now_v7().to_string();
        let params = event
            .payload
            .get("params")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let matrix = event
            .payload
            .get("matrix")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let mut recorded_params = match (&params, &matrix) {
            (Value::Object(p), Value::Object(m)) if !m.is_empty() => {
                let mut all = p.clone();
                all.insert("matrix".into(), matrix.clone());
                Value::Object(all)
            }
            _ => params.clone(),
        };
        if let (Value::Object(p), Some(route)) = (&mut recorded_params, event.payload.get("route"))
        {
            p.insert("route".into(), route.clone());
        }
        let mut run = RunRecord {
            id: run_id.clone(),
            pipeline: plan.name.clone(),
            env: plan.env.clone(),
            event_id: Some(event.id),
            trigger: event.kind.clone(),
            params: recorded_params,
            status: RunStatus::Running,
            attempt: event.attempts,
            worker: self.worker.clone(),
            started_at: started,
            finished_at: None,
            error: None,
            steps: Vec::new(),
        };
        self.sweep_abandoned(plan, event.id).await?;
        self.state.save_run(&run).await?;
        tracing::info!(pipeline = %plan.name, run = %run.id, trigger = %event.kind, key = %event.dedupe_key, attempt = event.attempts, "run started");

        // Keep the claim alive; losing it stops the run at a safe point.
        let run_cancel = self.cancel.child_token();
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renew = {
            let (state, worker, ttl, token, lost) = (
                self.state.clone(),
                self.worker.clone(),
                self.lease_ttl,
                run_cancel.clone(),
                lost.clone(),
            );
            let id = event.id;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match state.renew_event(id, &worker, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, std::sync::atomic::Ordering::SeqCst);
                            token.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not renew the run's claim; will try again")
                        }
                    }
                }
            })
        };

        let template = json!({
            "run": { "id": run_id, "started": started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "attempt": event.attempts },
            "pipeline": plan.name,
            "env": plan.env,
            "trigger": event.payload.get("trigger").cloned().unwrap_or(Value::Null),
            "params": params,
            "vars": plan.vars,
            "matrix": matrix,
            "route": event.payload.get("route").cloned().unwrap_or(Value::Null),
        });

        let stores = match (&plan.routing, event.payload.get("route")) {
            (Some(routing), None) => {
                let (e, dead_lettered) = self
                    .unrouted(plan, &run_id, &event, routing, &template)
                    .await;
                // The event is set aside (a dead letter), not lost: the report
                // says so, and the event is not run again by itself.
                run.steps.push(StepReport {
                    step: "routing".into(),
                    status: "failed".into(),
                    quarantined: u64::from(dead_lettered),
                    error: Some(e.message.clone()),
                    ..Default::default()
                });
                Err(e)
            }
            _ => Stores::open(plan, &template),
        };
        let mut failed: HashSet<String> = HashSet::new();
        let mut skipped: HashSet<String> = HashSet::new();
        match &stores {
            Err(e) => {
                run.error = Some(e.message.clone());
                failed.extend(plan.steps.iter().map(|s| s.id.clone()));
            }
            Ok(stores) => {
                for step in &plan.steps {
                    if run_cancel.is_cancelled() {
                        break;
                    }
                    let when = step
                        .when
                        .as_deref()
                        .map(|w| (w, crate::template::truthy(w, &template)));
                    let report = if let Some(n) = step.needs.iter().find(|n| failed.contains(*n)) {
                        failed.insert(step.id.clone());
                        StepReport {
                            step: step.id.clone(),
                            status: "skipped".into(),
                            notes: vec![format!("not run: step `{n}` did not succeed")],
                            ..Default::default()
                        }
                    } else if let Some(n) = step.needs.iter().find(|n| skipped.contains(*n)) {
                        skipped.insert(step.id.clone());
                        StepReport {
                            step: step.id.clone(),
                            status: "skipped".into(),
                            notes: vec![format!("not run: step `{n}` was skipped")],
                            ..Default::default()
                        }
                    } else if let Some((w, Ok(false))) = when {
                        skipped.insert(step.id.clone());
                        StepReport {
                            step: step.id.clone(),
                            status: "skipped".into(),
                            notes: vec![format!("not run: `when = \"{w}\"` is false")],
                            ..Default::default()
                        }
                    } else if let Some((w, Err(msg))) = when {
                        failed.insert(step.id.clone());
                        run.error
                            .get_or_insert_with(|| format!("step `{}`: when {msg}", step.id));
                        StepReport {
                            step: step.id.clone(),
                            status: "failed".into(),
                            error: Some(format!("`when = \"{w}\"` could not be evaluated: {msg}")),
                            ..Default::default()
                        }
                    } else {
                        let ctx = StepContext {
                            plan,
                            run_id: &run_id,
                            step,
                            template: &template,
                            stores,
                            state: self.state.as_ref(),
                            cancel: &run_cancel,
                            progress: self.progress.as_ref(),
                        };
                        let report = run_step(&ctx).await;
                        if report.status != "succeeded" && report.status != "partial" {
                            failed.insert(step.id.clone());
                            if run.error.is_none() {
                                run.error = report
                                    .error
                                    .as_ref()
                                    .map(|e| format!("step `{}`: {e}", step.id));
                            }
                        }
                        report
                    };
                    run.steps.push(report);
                    self.state.save_run(&run).await?;
                }
            }
        }
        renew.abort();

        let interrupted = run_cancel.is_cancelled();
        run.status = if interrupted {
            RunStatus::Interrupted
        } else if !failed.is_empty() {
            RunStatus::Failed
        } else if run.steps.iter().any(|s| s.quarantined > 0) {
            RunStatus::Partial
        } else {
            RunStatus::Succeeded
        };
        if interrupted {
            let why = if lost.load(std::sync::atomic::Ordering::SeqCst) {
                "the run lost its claim on the event (another worker took it over)"
            } else {
                "stopped by a signal; the next run resumes from the last committed position"
            };
            run.error.get_or_insert_with(|| why.to_string());
        }
        run.finished_at = Some(Utc::now());
        self.state.save_run(&run).await?;
        let event_status = match run.status {
            RunStatus::Succeeded | RunStatus::Partial => EventStatus::Done,
            _ if run.set_aside() => EventStatus::Done,
            // A stopped trigger event is resumed by the next worker; a stopped manual
            // run stays stopped until someone asks again (the same --key resumes it).
            RunStatus::Interrupted if event.kind != "manual" => EventStatus::Pending,
            _ => EventStatus::Failed,
        };
        if !lost.load(std::sync::atomic::Ordering::SeqCst) {
            self.state
                .finish_event(event.id, event_status, &run.id)
                .await?;
        }
        tracing::info!(pipeline = %plan.name, run = %run.id, status = %run.status, "run finished");
        self.record_freshness(plan, &run).await;
        self.notify(plan, &run).await;
        Ok(run)
    }

    /// After a successful run that loads, everything extracted so far is in the
    /// warehouse: the newest source change its extract covers is now visible (a
    /// table with nothing new counts as current when it was read; the stalest
    /// table decides).
    async fn record_freshness(&self, plan: &Plan, run: &RunRecord) {
        let loads = plan
            .steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Load(_)));
        let Some(newest) = run.steps.iter().filter_map(|s| s.newest_change).min() else {
            return;
        };
        if !loads || !run.status.is_success() {
            return;
        }
        let key = crate::state::freshness_key(&plan.name);
        let current = self
            .state
            .kv_get(&key)
            .await
            .ok()
            .flatten()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e.value).ok());
        if current.is_none_or(|c| newest > c) {
            let value = newest.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            if let Err(e) = self.state.kv_set(&key, &value).await {
                tracing::warn!(pipeline = %plan.name, error = %e, "could not record freshness");
            }
        }
    }

    /// The freshness watchdog, called by every trigger pass and continuous loop:
    /// notify once when the pipeline's freshness passes `notify.stale_after`, and
    /// once when it is back under. A lease keeps several workers from sending the
    /// same notice. Returns the current freshness, if the pipeline has one.
    pub async fn check_freshness(&self, plan: &Plan) -> Result<Option<Duration>, EngineError> {
        let Some(threshold) = plan.notify.stale_after else {
            return Ok(None);
        };
        let Some(newest) = self
            .state
            .kv_get(&crate::state::freshness_key(&plan.name))
            .await?
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e.value).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            return Ok(None);
        };
        let age = (Utc::now() - newest).to_std().unwrap_or_default();
        let stale = age > threshold;
        let alert_key = crate::state::stale_key(&plan.name);
        let was_stale = |state: Option<crate::state::KvEntry>| {
            state.is_some_and(|e| e.value.starts_with("stale"))
        };
        // The common case, nothing changed, costs two reads; only a change takes
        // the lease (and is checked again under it).
        if was_stale(self.state.kv_get(&alert_key).await?) == stale {
            return Ok(Some(age));
        }
        let lease = format!("freshness-alert/{}", plan.name);
        if !self
            .state
            .acquire_lease(&lease, &self.worker, Duration::from_secs(60))
            .await?
        {
            return Ok(Some(age));
        }
        if stale != was_stale(self.state.kv_get(&alert_key).await?) {
            let value = if stale {
                format!("stale since {}", Utc::now().to_rfc3339())
            } else {
                "fresh".to_string()
            };
            self.state.kv_set(&alert_key, &value).await?;
            if stale {
                tracing::warn!(pipeline = %plan.name, freshness_s = age.as_secs(), threshold_s = threshold.as_secs(), "the warehouse is stale");
            } else {
                tracing::info!(pipeline = %plan.name, freshness_s = age.as_secs(), "the warehouse is fresh again");
            }
            let notice = Notice::freshness(&plan.name, stale, age, threshold, newest);
            for problem in send(&plan.notify, &notice).await {
                tracing::warn!(pipeline = %plan.name, problem = %problem, "notification not delivered");
            }
        }
        self.state.release_lease(&lease, &self.worker).await?;
        Ok(Some(age))
    }

    /// An event no routing row matches: dead-letter it with the reason, and fail
    /// the run (which notifies). Returns the run's error, and whether the event
    /// was dead-lettered (when writing the dead letter failed too, the event is
    /// not set aside: it stays failed and is tried again).
    async fn unrouted(
        &self,
        plan: &Plan,
        run_id: &str,
        event: &TriggerEvent,
        routing: &crate::plan::RoutingPlan,
        template: &Value,
    ) -> (StepError, bool) {
        let key = crate::template::render(&routing.key, template).unwrap_or_default();
        let reason = format!(
            "no routing row has {} `{key}` (or one of its parent folders)",
            routing.match_column
        );
        let record = crate::quarantine::DeadRecord {
            record: event.payload.get("trigger").cloned().unwrap_or(Value::Null),
            reason: reason.clone(),
            position: json!({"event": event.dedupe_key}),
        };
        let at = match Stores::open(plan, template).and_then(|s| s.dead_letter(template)) {
            Ok(dl) => dl.write(&plan.name, run_id, "routing", 0, &[record]).await,
            Err(e) => Err(e),
        };
        match at {
            Ok(at) => (
                StepError::user(format!("{reason}; the event was dead-lettered to {at}")),
                true,
            ),
            Err(e) => (
                StepError::external(format!(
                    "{reason}; dead-lettering the event failed too: {}",
                    e.message
                )),
                false,
            ),
        }
    }

    /// Tell people that something was dead-lettered outside any run (a malformed
    /// queue message).
    pub async fn notify_dead_letter(&self, plan: &Plan, what: &str) {
        let notice = Notice {
            event: NotifyEvent::Failure,
            title: format!("flowgate: pipeline `{}` dead-lettered an event", plan.name),
            text: crate::secret::redact(&format!(
                "flowgate: pipeline `{}` dead-lettered an event\n{what}",
                plan.name
            )),
        };
        for problem in send(&plan.notify, &notice).await {
            tracing::warn!(pipeline = %plan.name, problem = %problem, "notification not delivered");
        }
    }

    async fn notify(&self, plan: &Plan, run: &RunRecord) {
        let event = match run.status {
            RunStatus::Failed => Some(NotifyEvent::Failure),
            RunStatus::Partial => Some(NotifyEvent::Partial),
            RunStatus::Succeeded => {
                let previous = self
                    .state
                    .list_runs(&RunFilter {
                        pipeline: Some(plan.name.clone()),
                        status: None,
                        limit: 20,
                    })
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .find(|r| {
                        r.id != run.id && r.status.is_final() && r.status != RunStatus::Abandoned
                    });
                if previous.is_some_and(|p| p.status == RunStatus::Failed) {
                    Some(NotifyEvent::Recovery)
                } else {
                    Some(NotifyEvent::Success)
                }
            }
            _ => None,
        };
        if let Some(event) = event {
            for problem in send(&plan.notify, &Notice::for_run(event, run)).await {
                tracing::warn!(pipeline = %plan.name, run = %run.id, problem = %problem, "notification not delivered");
            }
        }
    }
}

fn describe_failure(e: &StepError) -> String {
    format!(
        "{} ({} error{})",
        e.message,
        e.class.domain,
        if e.class.retriable { ", retriable" } else { "" }
    )
}

/// One step with its retry policy and timeout.
async fn run_step(ctx: &StepContext<'_>) -> StepReport {
    let step = ctx.step;
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let fut: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<StepOutput, StepError>> + Send + '_>,
        > = match &step.kind {
            StepKind::Copy(c) => Box::pin(crate::steps::copy::run(ctx, c)),
            StepKind::Deliver(dl) => Box::pin(crate::steps::deliver::run(ctx, dl)),
            StepKind::Extract(e) => Box::pin(crate::steps::extract::run(ctx, e)),
            StepKind::Load(l) => Box::pin(crate::steps::load::run(ctx, l)),
            #[cfg(feature = "transform")]
            StepKind::Transform(t) => Box::pin(crate::steps::transform::run(ctx, t)),
            #[cfg(not(feature = "transform"))]
            StepKind::Transform(_) => {
                Box::pin(async { Err(StepError::user("built without the transform step")) })
            }
        };
        let result = match step.timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => Err(StepError::external(format!(
                    "attempt timed out after {}",
                    humantime::format_duration(t)
                ))),
            },
            None => fut.await,
        };
        match result {
            Ok(mut out) => {
                out.report.step = step.id.clone();
                out.report.attempts = attempt;
                out.report.duration_ms = started.elapsed().as_millis() as u64;
                if let Some(e) = out.failure {
                    out.report.status = "failed".into();
                    out.report.error = Some(describe_failure(&e));
                    return out.report;
                }
                out.report.status = if out.report.quarantined > 0 {
                    "partial".into()
                } else {
                    "succeeded".into()
                };
                return out.report;
            }
            Err(e) => {
                let cancelled = ctx.cancel.is_cancelled();
                let retry = e.class.retriable && attempt < step.retry.attempts && !cancelled;
                tracing::warn!(step = %step.id, attempt, retriable = e.class.retriable, error = %e.message, "step attempt failed");
                if !retry {
                    return StepReport {
                        step: step.id.clone(),
                        status: if cancelled {
                            "interrupted".into()
                        } else {
                            "failed".into()
                        },
                        attempts: attempt,
                        duration_ms: started.elapsed().as_millis() as u64,
                        error: Some(describe_failure(&e)),
                        ..Default::default()
                    };
                }
                let wait = step.retry.backoff.delay(attempt);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.cancel.cancelled() => {}
                }
            }
        }
    }
}
