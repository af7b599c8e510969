//! Rows as both backends read them, and their conversion to records.

use serde_json::Value;

use super::{EventStatus, RunRecord, RunStatus, StateError, StateResult, TriggerEvent, from_ms};

pub(crate) struct RunRow {
    pub id: String,
    pub pipeline: String,
    pub env: Option<String>,
    pub event_id: Option<i64>,
    pub trigger: String,
    pub params: String,
    pub status: String,
    pub attempt: i64,
    pub worker: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    pub steps: String,
    pub lane: Option<String>,
    pub fence: Option<i64>,
    pub code: Option<String>,
}

pub(crate) const RUN_COLUMNS: &str = "id, pipeline, env, event_id, trigger, params, status, attempt, worker, started_at, finished_at, error, steps, lane, fence, code";

impl RunRow {
    pub fn into_record(self) -> StateResult<RunRecord> {
        Ok(RunRecord {
            status: RunStatus::parse(&self.status).ok_or_else(|| {
                StateError::Corrupt(format!("run {} has status `{}`", self.id, self.status))
            })?,
            params: serde_json::from_str(&self.params)
                .map_err(|e| StateError::Corrupt(format!("run params: {e}")))?,
            steps: serde_json::from_str(&self.steps)
                .map_err(|e| StateError::Corrupt(format!("run steps: {e}")))?,
            id: self.id,
            pipeline: self.pipeline,
            env: self.env,
            event_id: self.event_id,
            trigger: self.trigger,
            attempt: u32::try_from(self.attempt).unwrap_or(0),
            worker: self.worker,
            started_at: from_ms(self.started_at),
            finished_at: self.finished_at.map(from_ms),
            error: self.error,
            lane: self.lane,
            fence: self.fence,
            code: self
                .code
                .map(|c| serde_json::from_str(&c))
                .transpose()
                .map_err(|e| StateError::Corrupt(format!("run code: {e}")))?,
        })
    }

    pub fn from_record(run: &RunRecord) -> StateResult<RunRow> {
        let json = |v: &dyn erased::Ser| v.to_json();
        Ok(RunRow {
            id: run.id.clone(),
            pipeline: run.pipeline.clone(),
            env: run.env.clone(),
            event_id: run.event_id,
            trigger: run.trigger.clone(),
            params: crate::secret::redact(&json(&run.params)?),
            status: run.status.as_str().to_string(),
            attempt: i64::from(run.attempt),
            worker: run.worker.clone(),
            started_at: super::ms(run.started_at),
            finished_at: run.finished_at.map(super::ms),
            error: run.error.as_deref().map(crate::secret::redact),
            steps: crate::secret::redact(&json(&run.steps)?),
            lane: run.lane.clone(),
            fence: run.fence,
            code: run.code.as_ref().map(|c| json(c)).transpose()?,
        })
    }
}

mod erased {
    use super::{StateError, StateResult};
    pub trait Ser {
        fn to_json(&self) -> StateResult<String>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> StateResult<String> {
            serde_json::to_string(self).map_err(|e| StateError::Corrupt(e.to_string()))
        }
    }
}

pub(crate) struct EventRow {
    pub id: i64,
    pub pipeline: String,
    pub kind: String,
    pub dedupe_key: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub run_id: Option<String>,
    pub claimed_by: Option<String>,
    pub lane: String,
    pub claim_token: Option<i64>,
    pub created_at: i64,
}

pub(crate) const EVENT_COLUMNS: &str = "id, pipeline, kind, dedupe_key, payload, status, attempts, run_id, claimed_by, lane, claim_token, created_at";

impl EventRow {
    pub fn into_event(self) -> StateResult<TriggerEvent> {
        Ok(TriggerEvent {
            id: self.id,
            pipeline: self.pipeline,
            kind: self.kind,
            dedupe_key: self.dedupe_key,
            payload: serde_json::from_str::<Value>(&self.payload)
                .map_err(|e| StateError::Corrupt(format!("event payload: {e}")))?,
            status: EventStatus::parse(&self.status)?,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            run_id: self.run_id,
            claimed_by: self.claimed_by,
            lane: self.lane,
            claim_token: self.claim_token,
            created_at: from_ms(self.created_at),
        })
    }
}

/// Engine data (event payloads, watermarks, ledger details) as stored: exactly,
/// never redacted, since the engine reads it back as its input. Redaction happens
/// where things are shown (logs, CLI, HTTP, notifications) and in run records,
/// which are written for people.
pub(crate) fn json_text(v: &Value) -> String {
    v.to_string()
}

pub(crate) fn parse_json(text: &str) -> StateResult<Value> {
    serde_json::from_str(text).map_err(|e| StateError::Corrupt(e.to_string()))
}
