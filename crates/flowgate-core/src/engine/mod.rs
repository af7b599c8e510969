//! The run executor: trigger event → claimed run → steps in `needs` order with
//! retries and timeouts → recorded outcome → notifications.
//!
//! A trigger event is in the ledger before its run starts; the event is marked done
//! only after every step's sink accepted the data, so a crash at any instant leaves
//! either a done event or one that the next worker claims and resumes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::model::NotifyEvent;
use crate::error::StepError;
use crate::notify::{Notice, send};
use crate::plan::{Plan, PlannedStep, StepKind};
use crate::state::{
    EventStatus, NewEvent, Recorded, RunFilter, RunRecord, RunStatus, StateError, StateStore,
    StepReport, TriggerEvent,
};

pub use crate::lane::Claim;
pub use crate::steps::context::{NoProgress, Progress, StepContext, StepOutput, Stores};

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
    /// An event that failed before runs again (a new attempt of it): someone asked
    /// again (`run --key`, an HTTP request with the key, a redelivered message).
    pub retry_failed: bool,
    /// Wait while another run of the lane is in progress (a person asked for this
    /// run); otherwise the event is left pending for whoever holds the lane next.
    pub wait: bool,
}

impl Submission {
    /// Run `earlier` (a failed run) again: its parameters, matrix combination,
    /// dataset and what its event said (`trigger`: the earlier event's
    /// `trigger.*`, e.g. an arrival's `prefix`), without the steps it completed.
    pub fn rerun(earlier: &RunRecord, trigger: Option<&Value>) -> Submission {
        let mut params = BTreeMap::new();
        let mut matrix = BTreeMap::new();
        let mut dataset = Value::Null;
        let mut route = None;
        for (k, v) in earlier.params.as_object().into_iter().flatten() {
            match (k.as_str(), v) {
                ("matrix", Value::Object(m)) => {
                    matrix = m
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_string),
                            )
                        })
                        .collect();
                }
                ("dataset", d) => dataset = d.clone(),
                // The routing row it ran for runs again (not looked up anew).
                ("route", r) if r.is_object() => route = Some(r.clone()),
                ("route" | "trigger", _) => {}
                (k, Value::String(s)) => {
                    params.insert(k.to_string(), s.clone());
                }
                _ => {}
            }
        }
        let done: Vec<&str> = earlier
            .steps
            .iter()
            .filter(|s| matches!(s.status, RunStatus::Succeeded))
            .map(|s| s.step.as_str())
            .collect();
        let key = uuid::Uuid::now_v7().to_string();
        let mut said = match trigger {
            Some(Value::Object(t)) => t.clone(),
            _ => serde_json::Map::new(),
        };
        let code = earlier.code.as_ref().and_then(|c| c.get("id")).cloned();
        for (k, v) in [
            ("kind", json!("rerun")),
            ("of", json!(earlier.id)),
            ("done", json!(done)),
            ("dataset", dataset),
            ("code", json!(code)),
        ] {
            said.insert(k.into(), v);
        }
        Submission {
            params,
            matrix,
            route,
            retry_failed: true,
            wait: true,
            ..Submission::event("manual", format!("manual:{key}"), Value::Object(said))
        }
    }

    /// A trigger event (not manual): left pending when its lane is busy, never
    /// retried once it failed (a person does that).
    pub fn event(kind: &str, dedupe_key: String, trigger: Value) -> Submission {
        Submission {
            kind: kind.into(),
            dedupe_key,
            trigger,
            params: BTreeMap::new(),
            matrix: BTreeMap::new(),
            route: None,
            retry_failed: false,
            wait: false,
        }
    }

    /// A manual run, by `via` (`cli`, `http`). Without a key every request is a new
    /// event; with one, the same key never runs twice to success, and asking
    /// again for one that failed runs it again.
    pub fn manual(via: &str, key: Option<String>, params: BTreeMap<String, String>) -> Submission {
        let key = key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        Submission {
            params,
            retry_failed: true,
            wait: true,
            ..Submission::event(
                "manual",
                format!("manual:{key}"),
                json!({"kind": "manual", "via": via}),
            )
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
    /// Another run of the same lane is in progress (`holder`); the event is
    /// recorded and waits for whoever holds the lane next.
    Queued {
        event: Box<TriggerEvent>,
        holder: Option<String>,
    },
    /// The event failed before and nobody asked to run it again.
    AlreadyFailed {
        event: Box<TriggerEvent>,
    },
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
    /// How long finished runs, ended events, ledger entries and old KV values
    /// are kept (see `state::RETENTION_RULES`); `None`: never pruned by itself.
    pub retention: Option<Duration>,
}

/// This process's worker id (`host:pid:nonce`), for people reading runs: who
/// holds what is decided by leases alone, never by reading this.
pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &nonce[nonce.len() - 6..]
    )
}

/// The lane of a pipeline's event: the pipeline, or the pipeline and one matrix
/// combination (combinations run side by side; runs of one lane never overlap);
/// with `one_at_a_time = "event"`, the event itself.
pub fn lane_of(plan: &Plan, matrix: &BTreeMap<String, String>, dedupe_key: &str) -> String {
    let mut lane = plan.name.clone();
    if !matrix.is_empty() {
        let label: Vec<String> = matrix.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lane = format!("{lane}#{}", label.join(","));
    }
    if plan.one_at_a_time == crate::plan::OneAtATime::Event {
        lane = format!("{lane}@{dedupe_key}");
    }
    lane
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
                out.insert(k.clone(), spec.check(k, v)?);
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
            retention: None,
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

    /// Record an event and run it, unless it was handled before. The run holds
    /// the event's lane; while another run holds it, a manual run waits and a
    /// trigger event stays pending for whoever holds the lane next.
    pub async fn submit(&self, plan: &Plan, sub: Submission) -> Result<Outcome, EngineError> {
        let params = resolve_params(plan, &sub.params).map_err(EngineError::Params)?;
        let mut payload = json!({ "trigger": sub.trigger, "params": params, "matrix": sub.matrix, "env": plan.env });
        if let Some(route) = &sub.route {
            payload["route"] = route.clone();
        }
        let lane = lane_of(plan, &sub.matrix, &sub.dedupe_key);
        let recorded = self
            .state
            .record_event(NewEvent {
                pipeline: plan.name.clone(),
                lane: lane.clone(),
                kind: sub.kind,
                dedupe_key: sub.dedupe_key,
                payload,
            })
            .await?;
        let event = match recorded {
            Recorded::New(e) => e,
            Recorded::Duplicate(e) => match e.status {
                EventStatus::Done => return Ok(Outcome::AlreadyDone { event: Box::new(e) }),
                EventStatus::Failed if !sub.retry_failed => {
                    return Ok(Outcome::AlreadyFailed { event: Box::new(e) });
                }
                _ => e,
            },
        };
        let Some(claim) = self.take_lane(&lane, sub.wait.then_some(event.id)).await? else {
            let holder = self.state.get_lease(&lane).await?.map(|l| l.holder);
            return Ok(Outcome::Queued {
                event: Box::new(event),
                holder,
            });
        };
        self.prepare_lane(&claim).await;
        let claimed = self
            .state
            .claim_event_id(event.id, claim.fence(), sub.retry_failed)
            .await;
        let outcome = match claimed {
            Ok(Some(claimed)) => self
                .execute(plan, claimed, &claim)
                .await
                .map(|r| Outcome::Ran(Box::new(r))),
            // Handled meanwhile by the lane's previous holder, or (a trigger
            // event) behind a manual run that waits for the lane: it runs later.
            Ok(None) => match self.state.get_event(event.id).await? {
                Some(e) if e.status == EventStatus::Failed => {
                    Ok(Outcome::AlreadyFailed { event: Box::new(e) })
                }
                Some(e) if e.status == EventStatus::Done => {
                    Ok(Outcome::AlreadyDone { event: Box::new(e) })
                }
                Some(e) => Ok(Outcome::Queued {
                    event: Box::new(e),
                    holder: None,
                }),
                None => Err(EngineError::Step(StepError::internal(format!(
                    "event {} vanished from the ledger",
                    event.id
                )))),
            },
            Err(e) => Err(e.into()),
        };
        claim.release().await;
        outcome
    }

    /// Record an event that is not run (a missed tick under the catch-up rule, a
    /// superseded revision) as a skipped run saying why, so `runs` shows it.
    /// Record an event as skipped; `true` when it was not recorded before.
    pub async fn skip(&self, plan: &Plan, sub: Submission, why: &str) -> Result<bool, EngineError> {
        let now = crate::clock::now();
        let run = RunRecord {
            id: uuid::Uuid::now_v7().to_string(),
            pipeline: plan.name.clone(),
            env: plan.env.clone(),
            event_id: None,
            trigger: sub.kind.clone(),
            params: json!({ "trigger": sub.trigger }),
            status: RunStatus::Skipped,
            attempt: 0,
            worker: self.worker.clone(),
            started_at: now,
            finished_at: Some(now),
            error: Some(why.to_string()),
            steps: Vec::new(),
            lane: None,
            fence: None,
            code: None,
        };
        let event = NewEvent {
            pipeline: plan.name.clone(),
            lane: lane_of(plan, &sub.matrix, &sub.dedupe_key),
            kind: sub.kind,
            dedupe_key: sub.dedupe_key,
            payload: json!({ "trigger": sub.trigger, "params": {}, "matrix": sub.matrix, "env": plan.env }),
        };
        let new = self.state.record_skipped(event, &run).await?;
        if new {
            tracing::info!(pipeline = %plan.name, reason = why, "trigger event recorded as skipped");
        }
        Ok(new)
    }

    /// Tell people, once, about the events one trigger pass recorded as skipped.
    pub async fn notify_skipped(&self, plan: &Plan, skipped: &[String]) {
        let title = format!(
            "flowgate: pipeline `{}` skipped {} trigger event(s)",
            plan.name,
            skipped.len()
        );
        let notice = Notice {
            event: NotifyEvent::Skipped,
            text: crate::secret::redact(&format!("{title}\n{}", skipped.join("\n"))),
            title,
        };
        for problem in send(&plan.notify, &notice).await {
            tracing::warn!(pipeline = %plan.name, problem = %problem, "notification not delivered");
        }
    }

    /// Hold `lane`: at once, or (for a `waiter` event) once its current run ends,
    /// holding back trigger events recorded after the waiter meanwhile. `None`
    /// when it is busy and not waited for, or when the engine is stopping.
    async fn take_lane(
        &self,
        lane: &str,
        waiter: Option<i64>,
    ) -> Result<Option<Claim>, EngineError> {
        let mut told = false;
        loop {
            if let Some(claim) = Claim::take(
                &self.state,
                lane,
                &self.worker,
                self.lease_ttl,
                &self.cancel,
            )
            .await?
            {
                return Ok(Some(claim));
            }
            let Some(waiter) = waiter.filter(|_| !self.cancel.is_cancelled()) else {
                return Ok(None);
            };
            self.state.wait_for_lane(waiter, self.lease_ttl).await?;
            if !told {
                let holder = self.state.get_lease(lane).await?.map(|l| l.holder);
                tracing::info!(
                    lane,
                    holder = holder.as_deref().unwrap_or("another worker"),
                    "another run of this pipeline is in progress; waiting for it to end"
                );
                told = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.cancel.cancelled() => return Ok(None),
            }
        }
    }

    /// On taking a lane: what its earlier holders left behind is settled. Their
    /// runs are abandoned, and their manual events are closed as failed (a
    /// person reruns them); their trigger events are claimed again as they are.
    async fn prepare_lane(&self, claim: &Claim) {
        let fence = claim.fence();
        let why = "its worker stopped holding the lane before the run finished (killed, or cut off from the state store); a later run resumed the work";
        if let Err(e) = self.state.abandon_runs(fence, why).await {
            tracing::warn!(lane = %fence.lease, error = %e, "could not mark abandoned runs");
        }
        match self.state.close_lost_manual(fence).await {
            Ok(n) if n > 0 => {
                tracing::warn!(lane = %fence.lease, events = n, "manual runs whose worker stopped were closed as failed; rerun them with the same --key")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(lane = %fence.lease, error = %e, "could not close lost manual runs")
            }
        }
    }

    /// Run every trigger event of `plan` that waits: lane by lane, for each lane
    /// nobody else holds.
    pub async fn run_pending(&self, plan: &Plan) -> Result<Vec<RunRecord>, EngineError> {
        let mut runs = Vec::new();
        for lane in self.state.open_lanes(&plan.name).await? {
            if self.cancel.is_cancelled() {
                break;
            }
            let Some(claim) = self.take_lane(&lane, None).await? else {
                continue;
            };
            self.prepare_lane(&claim).await;
            let result = async {
                while !self.cancel.is_cancelled() && !claim.is_lost() {
                    let Some(event) = self.state.claim_event(claim.fence()).await? else {
                        break;
                    };
                    runs.push(self.execute(plan, event, &claim).await?);
                }
                Ok::<(), EngineError>(())
            }
            .await;
            claim.release().await;
            result?;
        }
        Ok(runs)
    }

    /// Run a claimed event under `claim`: record the run, run its steps, record
    /// how it ended, mark the event (fenced), tell people.
    async fn execute(
        &self,
        plan: &Plan,
        event: TriggerEvent,
        claim: &Claim,
    ) -> Result<RunRecord, EngineError> {
        let started = crate::clock::now();
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
        let mut run = RunRecord {
            id: run_id.clone(),
            pipeline: plan.name.clone(),
            env: plan.env.clone(),
            event_id: Some(event.id),
            trigger: event.kind.clone(),
            params: recorded_params(&params, &matrix, event.payload.get("route")),
            status: RunStatus::Running,
            attempt: event.attempts,
            worker: self.worker.clone(),
            started_at: started,
            finished_at: None,
            error: None,
            steps: Vec::new(),
            lane: Some(claim.fence().lease.clone()),
            fence: Some(claim.fence().token),
            code: None,
        };
        let earlier_code = event.payload.pointer("/trigger/code");
        run.code = Some(self.keep_code(plan, earlier_code).await?);
        self.state.save_run(&run).await?;
        tracing::info!(pipeline = %plan.name, run = %run.id, trigger = %event.kind, key = %event.dedupe_key, attempt = event.attempts, "run started");

        let mut template = json!({
            "run": { "id": run_id, "started": started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "attempt": event.attempts },
            "pipeline": plan.name,
            "env": plan.env,
            "trigger": event.payload.get("trigger").cloned().unwrap_or(Value::Null),
            "params": params,
            "vars": plan.vars,
            "matrix": matrix,
            "route": event.payload.get("route").cloned().unwrap_or(Value::Null),
        });
        // The run's dataset, resolved once (`LATEST` included) and recorded.
        // A rerun keeps the dataset of the run it continues.
        let pinned = template["trigger"]["dataset"].clone();
        let buckets = find_buckets(plan, &mut template).await;
        let dataset = match &plan.dataset {
            _ if buckets.is_err() => buckets,
            None => Ok(()),
            Some(_) if pinned.is_object() => {
                template["dataset"] = pinned.clone();
                if let Value::Object(p) = &mut run.params {
                    p.insert("dataset".into(), pinned);
                }
                Ok(())
            }
            Some(d) => crate::dataset::resolve(self.state.as_ref(), d, &template, started)
                .await
                .map(|v| {
                    template["dataset"] = v.clone();
                    if let Value::Object(p) = &mut run.params {
                        p.insert("dataset".into(), v);
                    }
                }),
        };
        let stores = match (dataset, &plan.routing, event.payload.get("route")) {
            (Err(e), _, _) => Err((e, false)),
            (Ok(()), Some(routing), None) => Err(self
                .unrouted(plan, &run_id, &event, routing, &template)
                .await),
            (Ok(()), _, _) => Stores::open(plan, &template).map_err(|e| (e, false)),
        };
        let failed = match &stores {
            // No routing row: the event is set aside (a dead letter), not lost,
            // so the run is partial, as for any input set aside, and its event is
            // not run again by itself.
            Err((e, true)) => {
                run.steps.push(StepReport {
                    step: "routing".into(),
                    status: RunStatus::Partial,
                    quarantined: 1,
                    notes: vec![e.message.clone()],
                    ..Default::default()
                });
                run.steps.extend(plan.steps.iter().map(|s| StepReport {
                    step: s.id.clone(),
                    status: RunStatus::Skipped,
                    notes: vec!["not run: no routing row matches the event".into()],
                    ..Default::default()
                }));
                HashSet::new()
            }
            Err((e, false)) => {
                run.error = Some(e.message.clone());
                plan.steps.iter().map(|s| s.id.clone()).collect()
            }
            Ok(stores) => {
                self.run_steps(plan, &mut run, stores, &template, claim)
                    .await?
            }
        };

        let lost = claim.is_lost();
        let interrupted = claim.cancel.is_cancelled() || lost;
        let (status, event_status) = outcome_of(&run, &failed, interrupted, &event.kind);
        run.status = status;
        if interrupted {
            run.error.get_or_insert_with(|| {
                if lost {
                    crate::lane::lost_error().message
                } else {
                    "stopped by a signal; the next run resumes from the last committed position"
                        .to_string()
                }
            });
        }
        run.finished_at = Some(crate::clock::now());
        self.state.save_run(&run).await?;
        if !lost {
            match self
                .state
                .finish_event(event.id, event_status, &run.id, claim.fence())
                .await
            {
                Ok(()) => {}
                // The next holder of the lane runs the event again.
                Err(StateError::Fenced(lane)) => {
                    tracing::warn!(pipeline = %plan.name, run = %run.id, lane = %lane, "the run lost its claim before it could record its end; the next holder of the lane runs the event again")
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(pipeline = %plan.name, run = %run.id, status = %run.status, "run finished");
        self.record_freshness(plan, &run).await;
        self.notify(plan, &run).await;
        Ok(run)
    }

    /// What the run records of its files: the id of what [`crate::code::keep`]
    /// kept, or, for a rerun with the files of an earlier run, that run's id.
    /// Files that cannot be kept do not stop the run: it records why.
    async fn keep_code(&self, plan: &Plan, earlier: Option<&Value>) -> Result<Value, EngineError> {
        if let (Some(_), Some(Value::String(id))) = (&plan.code_dir, earlier) {
            return Ok(json!({ "id": id, "restored": true }));
        }
        match crate::code::keep(self.state.as_ref(), plan).await {
            Ok(k) => Ok(json!({ "id": k.id, "files": k.files, "bytes": k.bytes })),
            Err(crate::code::CodeError::State(e)) => Err(e.into()),
            Err(e) => {
                tracing::warn!(pipeline = %plan.name, error = %e, "the run's files are not kept: a rerun of it needs --latest");
                Ok(json!({ "kept": false, "why": e.to_string() }))
            }
        }
    }

    /// The steps of one run in `needs` order, each report saved as it comes;
    /// returns the steps that failed (or were not run because one they need did).
    async fn run_steps(
        &self,
        plan: &Plan,
        run: &mut RunRecord,
        stores: &Stores,
        template: &Value,
        claim: &Claim,
    ) -> Result<HashSet<String>, EngineError> {
        let mut failed: HashSet<String> = HashSet::new();
        let mut skipped: HashSet<String> = HashSet::new();
        // A rerun: the steps its earlier run completed are not run again.
        let done: HashSet<&str> = template["trigger"]["done"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let of = template["trigger"]["of"].as_str().unwrap_or_default();
        for step in &plan.steps {
            if claim.cancel.is_cancelled() || claim.is_lost() {
                break;
            }
            if done.contains(step.id.as_str()) {
                run.steps.push(StepReport {
                    step: step.id.clone(),
                    status: RunStatus::Skipped,
                    notes: vec![format!("completed by run {of}; not run again")],
                    ..Default::default()
                });
                continue;
            }
            let report = match gate(step, &failed, &skipped, template) {
                Gate::Run => {
                    let ctx = StepContext {
                        plan,
                        run_id: &run.id,
                        step,
                        template,
                        stores,
                        state: self.state.as_ref(),
                        cancel: &claim.cancel,
                        progress: self.progress.as_ref(),
                        claim,
                    };
                    run_step(&ctx).await
                }
                Gate::Skip(note) => {
                    skipped.insert(step.id.clone());
                    StepReport {
                        step: step.id.clone(),
                        status: RunStatus::Skipped,
                        notes: vec![note],
                        ..Default::default()
                    }
                }
                Gate::NotRun(note) => {
                    failed.insert(step.id.clone());
                    StepReport {
                        step: step.id.clone(),
                        status: RunStatus::Skipped,
                        notes: vec![note],
                        ..Default::default()
                    }
                }
                Gate::Fail(error) => StepReport {
                    step: step.id.clone(),
                    status: RunStatus::Failed,
                    error: Some(error),
                    ..Default::default()
                },
            };
            if !matches!(
                report.status,
                RunStatus::Succeeded | RunStatus::Partial | RunStatus::Skipped
            ) {
                failed.insert(step.id.clone());
                if run.error.is_none() {
                    run.error = report
                        .error
                        .as_ref()
                        .map(|e| format!("step `{}`: {e}", step.id));
                }
            }
            run.steps.push(report);
            self.state.save_run(run).await?;
        }
        Ok(failed)
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
        let age = (crate::clock::now() - newest).to_std().unwrap_or_default();
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
        let holder = format!("{}/{}", self.worker, uuid::Uuid::now_v7().simple());
        let Some(fence) = self
            .state
            .acquire_lease(&lease, &holder, Duration::from_secs(60))
            .await?
        else {
            return Ok(Some(age));
        };
        if stale != was_stale(self.state.kv_get(&alert_key).await?) {
            let value = if stale {
                format!("stale since {}", crate::clock::now().to_rfc3339())
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
        self.state.release_lease(&fence).await?;
        Ok(Some(age))
    }

    /// Prune the state store by the retention, at most once an hour across all
    /// workers (judged by the store's clock, under a lease).
    pub async fn prune_if_due(&self) -> Result<Option<crate::state::Pruned>, EngineError> {
        let Some(retention) = self.retention else {
            return Ok(None);
        };
        const EVERY: Duration = Duration::from_secs(3600);
        const LAST: &str = "flowgate/pruned_at";
        let now = self.state.now().await?;
        let due = |e: Option<crate::state::KvEntry>| {
            e.and_then(|e| chrono::DateTime::parse_from_rfc3339(&e.value).ok())
                .is_none_or(|at| {
                    (now - at.with_timezone(&Utc)).to_std().unwrap_or_default() >= EVERY
                })
        };
        if !due(self.state.kv_get(LAST).await?) {
            return Ok(None);
        }
        let holder = format!("{}/{}", self.worker, uuid::Uuid::now_v7().simple());
        let Some(fence) = self
            .state
            .acquire_lease("flowgate/prune", &holder, Duration::from_secs(600))
            .await?
        else {
            return Ok(None);
        };
        let result = async {
            if !due(self.state.kv_get(LAST).await?) {
                return Ok(None);
            }
            let cutoff =
                now - chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX);
            let pruned = self.state.prune(cutoff).await?;
            self.state.kv_set(LAST, &now.to_rfc3339()).await?;
            tracing::info!(
                runs = pruned.runs,
                events = pruned.events,
                ledger_entries = pruned.ledger_entries,
                kv_revisions = pruned.kv_revisions,
                "pruned the state store"
            );
            Ok(Some(pruned))
        }
        .await;
        self.state.release_lease(&fence).await?;
        result
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

/// What the run records as its parameters: the parameters, plus the matrix
/// combination and the routing row when it has them.
fn recorded_params(params: &Value, matrix: &Value, route: Option<&Value>) -> Value {
    let mut recorded = match (params, matrix) {
        (Value::Object(p), Value::Object(m)) if !m.is_empty() => {
            let mut all = p.clone();
            all.insert("matrix".into(), matrix.clone());
            Value::Object(all)
        }
        _ => params.clone(),
    };
    if let (Value::Object(p), Some(route)) = (&mut recorded, route) {
        p.insert("route".into(), route.clone());
    }
    recorded
}

/// `{{ buckets.<store> }}`: each store's bucket found by its `bucket_prefix`.
async fn find_buckets(plan: &Plan, template: &mut Value) -> Result<(), StepError> {
    let mut found = serde_json::Map::new();
    for (name, spec) in &plan.stores {
        let Some(prefix) = &spec.bucket_prefix else {
            continue;
        };
        let prefix = crate::template::render(prefix, template)
            .map_err(|e| StepError::user(format!("the bucket_prefix of store `{name}`: {e}")))?;
        let bucket = crate::store::buckets::find(name, spec, prefix.trim(), &plan.dir)
            .await
            .map_err(|e| StepError::user(e.to_string()))?;
        found.insert(name.clone(), Value::String(bucket));
    }
    if !found.is_empty() {
        template["buckets"] = Value::Object(found);
    }
    Ok(())
}

/// Whether a step runs, given what happened to the steps it needs and its `when`.
#[derive(Debug, PartialEq)]
enum Gate {
    Run,
    /// Skipped, as a step it needs was, or its `when` is false.
    Skip(String),
    /// Not run: a step it needs did not succeed (counts as failed).
    NotRun(String),
    /// Its `when` could not be evaluated.
    Fail(String),
}

fn gate(
    step: &PlannedStep,
    failed: &HashSet<String>,
    skipped: &HashSet<String>,
    template: &Value,
) -> Gate {
    if let Some(n) = step.needs.iter().find(|n| failed.contains(*n)) {
        return Gate::NotRun(format!("not run: step `{n}` did not succeed"));
    }
    if let Some(n) = step.needs.iter().find(|n| skipped.contains(*n)) {
        return Gate::Skip(format!("not run: step `{n}` was skipped"));
    }
    match step
        .when
        .as_deref()
        .map(|w| (w, crate::template::truthy(w, template)))
    {
        Some((w, Ok(false))) => Gate::Skip(format!("not run: `when = \"{w}\"` is false")),
        Some((w, Err(msg))) => {
            Gate::Fail(format!("`when = \"{w}\"` could not be evaluated: {msg}"))
        }
        _ => Gate::Run,
    }
}

/// How a run ended, and what becomes of its event: done when its work reached
/// its sinks or its bad input was set aside; pending again when a trigger
/// event's run was stopped (the lane's next holder resumes it); failed otherwise
/// (a stopped manual run is rerun by a person, with the same key).
fn outcome_of(
    run: &RunRecord,
    failed: &HashSet<String>,
    interrupted: bool,
    kind: &str,
) -> (RunStatus, EventStatus) {
    let status = if interrupted {
        RunStatus::Interrupted
    } else if !failed.is_empty() {
        RunStatus::Failed
    } else if run.steps.iter().any(|s| s.quarantined > 0) {
        RunStatus::Partial
    } else {
        RunStatus::Succeeded
    };
    let set_aside = status == RunStatus::Failed && crate::state::failures_set_aside(&run.steps);
    let event = match status {
        RunStatus::Succeeded | RunStatus::Partial => EventStatus::Done,
        _ if set_aside => EventStatus::Done,
        RunStatus::Interrupted if kind != "manual" => EventStatus::Pending,
        _ => EventStatus::Failed,
    };
    (status, event)
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
        let fut = crate::steps::run(ctx);
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
                    out.report.status = RunStatus::Failed;
                    out.report.error = Some(describe_failure(&e));
                    return out.report;
                }
                out.report.status = if out.report.quarantined > 0 {
                    RunStatus::Partial
                } else {
                    RunStatus::Succeeded
                };
                return out.report;
            }
            Err(e) => {
                if e.kind == crate::error::ErrorKind::ClaimLost {
                    ctx.claim.mark_lost();
                }
                let cancelled = ctx.cancel.is_cancelled();
                let retry = e.class.retriable && attempt < step.retry.attempts && !cancelled;
                tracing::warn!(step = %step.id, attempt, retriable = e.class.retriable, error = %e.message, "step attempt failed");
                if !retry {
                    return StepReport {
                        step: step.id.clone(),
                        status: if cancelled {
                            RunStatus::Interrupted
                        } else {
                            RunStatus::Failed
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
