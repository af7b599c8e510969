//! The import step: one version of a journal into each of its targets, at most
//! once per (version, target). The journal is read and checked whole before any
//! target gets anything (a bad record anywhere imports nothing anywhere); each
//! target is then imported on its own, and a target's import is recorded in the
//! ledger only after it said it holds it. A target that rejects the journal gets
//! its owners told and the journal set aside in `failed/<version>/`; every
//! outcome is one audit record.

pub mod config;
mod journal;
pub mod plan;
pub mod sql;

use std::io::Write as _;

use chrono::Utc;
use object_store::ObjectStoreExt as _;
use serde_json::{Value, json};

use crate::error::{ErrorKind, StepError};
use crate::state::StepReport;
use crate::steps::context::{StepContext, StepOutput};
use journal::Journal;
use plan::{How, ImportPlan, TargetPlan};

/// A version names folders and ledger entries: a plain name.
fn valid_version(v: &str) -> bool {
    v.len() <= 128
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// A target's name: letters, digits, `.`, `_`, `-`.
pub(crate) fn safe_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// How one target's import ended.
#[derive(Debug)]
enum Outcome {
    Imported,
    AlreadyImported,
    Rejected(String),
    /// Rejected by an earlier attempt of this run: set aside and told then.
    RejectedEarlier(String),
    Failed(StepError),
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Imported => "imported",
            Outcome::AlreadyImported => "already-imported",
            Outcome::Rejected(_) | Outcome::RejectedEarlier(_) => "rejected",
            Outcome::Failed(_) => "failed",
        }
    }
    fn reason(&self) -> Option<String> {
        match self {
            Outcome::Rejected(r) | Outcome::RejectedEarlier(r) => Some(r.clone()),
            Outcome::Failed(e) => Some(e.message.clone()),
            _ => None,
        }
    }
}

/// What every target of this run shares.
struct Job<'a> {
    ctx: &'a StepContext<'a>,
    plan: &'a ImportPlan,
    version: String,
    /// The run's template data with `version`.
    template: Value,
    /// `store:path` of the journal, for messages and the audit.
    source: String,
    scope: String,
}

pub async fn run(ctx: &StepContext<'_>, plan: &ImportPlan) -> Result<StepOutput, StepError> {
    let step = &ctx.step.id;
    let version = crate::template::render(&plan.version, ctx.template).map_err(|e| {
        let hint = if ctx.template["trigger"]["value"].is_null() {
            "; this run has no watched value: set the watched key, or give the step `version = \"{{ params.version }}\"` and run it with --param version=…"
        } else {
            ""
        };
        StepError::user(format!("step `{step}`: the version to import: {e}{hint}"))
    })?;
    let version = version.trim().to_string();
    if !valid_version(&version) {
        return Err(StepError::user(format!(
            "step `{step}`: {} is not a version: {version:?} (a version is letters, digits, `.`, `_`, `-`, `+`, starting with a letter or digit)",
            where_from(ctx.template)
        )));
    }
    let mut template = ctx.template.clone();
    template["version"] = json!(version);
    let path = crate::template::render(&plan.journal.prefix, &template).map_err(StepError::user)?;
    let env = ctx.plan.env.as_deref().unwrap_or("default");
    let job = Job {
        ctx,
        plan,
        source: format!("{}:{path}", plan.journal.store),
        scope: format!("import/{}/{env}/{step}", ctx.plan.name),
        version,
        template,
    };
    let done = ctx.state.ledger_list(&job.scope, &format!("{}/", job.version)).await?;
    let rejected_here = ctx.state.ledger_list(&job.scope, &format!("rejected/{}/", ctx.run_id)).await?;
    let pending: Vec<&TargetPlan> = plan
        .targets
        .iter()
        .filter(|t| !done.contains_key(&job.key(t)) && !rejected_here.contains_key(&job.rejected_key(t)))
        .collect();
    let mut results: Vec<(&TargetPlan, Outcome)> = plan
        .targets
        .iter()
        .filter(|t| done.contains_key(&job.key(t)))
        .map(|t| (t, Outcome::AlreadyImported))
        .collect();
    // A target an earlier attempt of this run rejected still fails the run.
    results.extend(plan.targets.iter().filter_map(|t| {
        let entry = rejected_here.get(&job.rejected_key(t))?;
        let reason = entry.detail["reason"].as_str().unwrap_or("rejected");
        Some((t, Outcome::RejectedEarlier(reason.to_string())))
    }));
    let mut journal = None;
    if !pending.is_empty() {
        match job.read(&path).await {
            Ok(j) => {
                for t in pending {
                    let outcome = job.import(t, &j).await;
                    results.push((t, outcome));
                }
                journal = Some(j);
            }
            Err(e) => {
                results.extend(pending.into_iter().map(|t| (t, Outcome::Failed(e.clone()))));
            }
        }
    }
    job.finish(results, journal.as_ref()).await
}

/// Where the version came from, for messages: the watched key, or the template.
fn where_from(template: &Value) -> String {
    match (template["trigger"]["key"].as_str(), template["trigger"]["store"].as_str()) {
        (Some(key), Some(store)) => format!("the value of key `{key}` in store `{store}`"),
        _ => "the rendered version".to_string(),
    }
}

impl Job<'_> {
    fn key(&self, t: &TargetPlan) -> String {
        format!("{}/{}", self.version, t.name)
    }

    fn rejected_key(&self, t: &TargetPlan) -> String {
        format!("rejected/{}/{}", self.ctx.run_id, t.name)
    }

    fn import_id(&self, t: &TargetPlan) -> String {
        format!("{}/{}/{}", self.ctx.plan.name, self.version, t.name)
    }

    /// Download, decompress, parse and check the journal, and keep this
    /// environment's records.
    async fn read(&self, path: &str) -> Result<Journal, StepError> {
        let store = self.ctx.stores.get(&self.plan.journal.store)?;
        let location = store.path(path).map_err(|e| StepError::user(format!("journal `{}`: {e}", self.source)))?;
        let got = store
            .reader()
            .get(&location)
            .await
            .map_err(|e| StepError::from(e).context(format!("downloading journal `{}`", self.source)))?;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| StepError::from(e).context(format!("downloading journal `{}`", self.source)))?;
        journal::parse(&self.source, path, bytes, self.plan, &self.template)
    }

    async fn import(&self, t: &TargetPlan, j: &Journal) -> Outcome {
        let outcome = match &t.how {
            How::Command(c) => self.command(t, c, j).await,
            How::Http(url) => self.http(t, url, j).await,
            How::Sql(table) => sql::import(self.ctx, &t.name, table, &self.version, j).await,
        };
        match outcome {
            // A target that says it holds the version (the SQL ledger after a
            // crash) is recorded too: it is not asked again.
            Ok(done @ (Outcome::Imported | Outcome::AlreadyImported)) => {
                let detail = json!({"run": self.ctx.run_id, "records": j.kept.len(), "journal": self.source});
                match self.ctx.state.ledger_put(&self.scope, &self.key(t), &j.digest, &detail, self.ctx.fence()).await {
                    Ok(()) => done,
                    Err(e) => Outcome::Failed(StepError::from(e).context(format!("recording the import of `{}`", t.name))),
                }
            }
            Ok(Outcome::Rejected(reason)) => {
                let detail = json!({"reason": reason});
                if let Err(e) = self.ctx.state.ledger_put(&self.scope, &self.rejected_key(t), &j.digest, &detail, self.ctx.fence()).await {
                    return Outcome::Failed(StepError::from(e).context("recording a rejection"));
                }
                Outcome::Rejected(reason)
            }
            Ok(other) => other,
            Err(e) => Outcome::Failed(e),
        }
    }

    async fn command(&self, t: &TargetPlan, c: &crate::steps::command::plan::CommandPlan, j: &Journal) -> Result<Outcome, StepError> {
        let file = TempJournal::write(self.ctx.run_id, &t.name, &j.kept_jsonl)?;
        let extra = [
            ("FLOWGATE_JOURNAL", file.0.display().to_string()),
            ("FLOWGATE_VERSION", self.version.clone()),
            ("FLOWGATE_TARGET", t.name.clone()),
            ("FLOWGATE_IMPORT_ID", self.import_id(t)),
        ];
        let out = crate::steps::command::execute(self.ctx, c, &self.template, &extra).await?;
        Ok(match out.failure {
            None => Outcome::Imported,
            Some(f) if f.kind == ErrorKind::Rejected => Outcome::Rejected(f.message),
            Some(f) => Outcome::Failed(f),
        })
    }

    async fn http(&self, t: &TargetPlan, url: &url::Url, j: &Journal) -> Result<Outcome, StepError> {
        let client = reqwest::Client::new();
        let resp = client
            .post(url.clone())
            .header("Idempotency-Key", self.import_id(t))
            .header("Content-Type", "application/x-ndjson")
            .body(j.kept_jsonl.clone())
            .send()
            .await
            .map_err(|e| StepError::external(format!("target `{}`: {}", t.name, crate::error::chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Outcome::Imported);
        }
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(2000).collect();
        let why = format!("target `{}` answered {status}: {}", t.name, body.trim());
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            return Err(StepError::external(why));
        }
        Ok(Outcome::Rejected(why))
    }

    /// Set rejected journals aside, tell owners, write the audit, and say how the
    /// step ended.
    async fn finish(&self, results: Vec<(&TargetPlan, Outcome)>, j: Option<&Journal>) -> Result<StepOutput, StepError> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut records = Vec::new();
        let mut notes = Vec::new();
        for (t, outcome) in &results {
            let mut rec = json!({
                "time": now,
                "pipeline": self.ctx.plan.name,
                "env": self.ctx.plan.env,
                "version": self.version,
                "target": t.name,
                "journal": self.source,
                "kinds_kept": j.map(|j| j.kinds_kept.clone()),
                "records_in": j.map(|j| j.records),
                "records_out": j.map(|j| j.kept.len()),
                "outcome": outcome.name(),
                "reason": outcome.reason(),
                "run_id": self.ctx.run_id,
            });
            if let (Outcome::Rejected(reason), Some(j)) = (outcome, j) {
                match self.set_aside(t, reason, j).await {
                    Ok(Some(at)) => {
                        rec["failed_at"] = json!(at);
                        notes.push(format!("target `{}` rejected version {}; the journal is in {at}", t.name, self.version));
                    }
                    Ok(None) => {}
                    Err(e) => notes.push(format!("setting the rejected journal aside failed: {e}")),
                }
                notes.extend(self.tell_owners(t, reason).await);
            }
            records.push(rec);
        }
        if let Err(e) = self.audit(&records).await {
            return Err(e.context("writing the audit"));
        }
        if let Some(table) = &self.plan.audit_table
            && !records.is_empty()
        {
            let object = format!("audit/{}/{}", self.ctx.run_id, Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
            sql::append(self.ctx, "audit", table, &object, &records)
                .await
                .map_err(|e| e.context("writing the audit table"))?;
        }
        let count = |name: &str| results.iter().filter(|(_, o)| o.name() == name).count() as u64;
        let report = StepReport {
            objects_in: u64::from(j.is_some()),
            objects_out: count("imported"),
            objects_skipped: count("already-imported"),
            bytes_in: j.map_or(0, |j| j.bytes),
            rows_in: j.map_or(0, |j| j.records as u64),
            rows_out: j.map_or(0, |j| j.kept.len() as u64),
            notes,
            output: Some(json!({"version": self.version, "imports": records})),
            ..Default::default()
        };
        // A target that can be tried again makes the whole step try again (what
        // is imported or rejected is not redone); a rejection fails it for good.
        if let Some((t, Outcome::Failed(e))) = results.iter().find(|(_, o)| matches!(o, Outcome::Failed(_))) {
            let failed = results.iter().filter(|(_, o)| matches!(o, Outcome::Failed(_))).count();
            let e = e.clone().context(format!("importing version {} into `{}` ({failed} target(s) not imported)", self.version, t.name));
            if e.class.retriable {
                return Err(e);
            }
            return Ok(StepOutput { report, failure: Some(e) });
        }
        let rejected: Vec<&str> = results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Rejected(_) | Outcome::RejectedEarlier(_)))
            .map(|(t, _)| t.name.as_str())
            .collect();
        if rejected.is_empty() {
            return Ok(report.into());
        }
        let failure = StepError::user(format!(
            "version {} was rejected by {}; the other targets are as the audit says",
            self.version,
            rejected.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        ))
        .with_kind(ErrorKind::Rejected);
        Ok(StepOutput { report, failure: Some(failure) })
    }

    /// The original journal and `error.json` into `failed/<version>/` of the
    /// failed store; where it went, or `None` without a failed store.
    async fn set_aside(&self, t: &TargetPlan, reason: &str, j: &Journal) -> Result<Option<String>, StepError> {
        let Some(name) = &self.plan.failed else {
            return Ok(None);
        };
        let store = self.ctx.stores.get(name)?;
        let writer = store.writer(&format!("step `{}` (failed journals)", self.ctx.step.id)).map_err(|e| StepError::user(e.to_string()))?;
        let folder = format!("failed/{}", self.version);
        let put = |rel: String, body: Vec<u8>| async move {
            let p = store.path(&rel).map_err(StepError::user)?;
            writer.put(&p, body.into()).await.map_err(|e| StepError::from(e).context(format!("writing {}", store.display(&rel))))
        };
        put(format!("{folder}/{}", j.file_name), j.original.to_vec()).await?;
        let error_path = format!("{folder}/error.json");
        let mut doc = match store.reader().get(&store.path(&error_path).map_err(StepError::user)?).await {
            Ok(got) => serde_json::from_slice(&got.bytes().await.unwrap_or_default()).unwrap_or_else(|_| json!({})),
            Err(_) => json!({}),
        };
        doc["version"] = json!(self.version);
        doc["journal"] = json!(self.source);
        let entry = json!({
            "cluster": t.name, "reason": reason, "records_in": j.records, "records_out": j.kept.len(),
            "kinds_kept": j.kinds_kept, "env": self.ctx.plan.env, "run_id": self.ctx.run_id,
            "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        match doc["rejections"].as_array_mut() {
            Some(list) => list.push(entry),
            None => doc["rejections"] = json!([entry]),
        }
        let body = serde_json::to_vec_pretty(&doc).map_err(|e| StepError::internal(e.to_string()))?;
        put(error_path, body).await?;
        Ok(Some(store.display(&folder)))
    }

    /// Notes for the run record: what went wrong telling the owners.
    async fn tell_owners(&self, t: &TargetPlan, reason: &str) -> Vec<String> {
        let Some(owners) = &t.owners else {
            return Vec::new();
        };
        let title = format!("flowgate: `{}` rejected journal version {}", t.name, self.version);
        let text = format!(
            "{title}\npipeline `{}`, env {}, run {}\nreason: {reason}",
            self.ctx.plan.name,
            self.ctx.plan.env.as_deref().unwrap_or("default"),
            self.ctx.run_id
        );
        let notice = crate::notify::Notice {
            event: crate::config::model::NotifyEvent::Failure,
            title,
            text: crate::secret::redact(&text),
        };
        crate::notify::send(owners, &notice)
            .await
            .into_iter()
            .map(|p| format!("telling the owners of `{}`: {p}", t.name))
            .collect()
    }

    /// Append this attempt's outcomes to the audit store, one JSON line each.
    async fn audit(&self, records: &[Value]) -> Result<(), StepError> {
        let Some(audit) = &self.plan.audit else {
            return Ok(());
        };
        if records.is_empty() {
            return Ok(());
        }
        let store = self.ctx.stores.get(&audit.store)?;
        let writer = store.writer(&format!("step `{}` (audit)", self.ctx.step.id)).map_err(|e| StepError::user(e.to_string()))?;
        let prefix = crate::template::render(&audit.prefix, &self.template).map_err(StepError::user)?;
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let rel = crate::store::join_key(
            &prefix,
            &format!("{}/{stamp}-{}-{}.jsonl", self.version, self.ctx.run_id, self.ctx.step.id),
        );
        let mut body = Vec::new();
        for r in records {
            serde_json::to_writer(&mut body, r).map_err(|e| StepError::internal(e.to_string()))?;
            body.push(b'\n');
        }
        let p = store.path(&rel).map_err(StepError::user)?;
        writer.put(&p, body.into()).await.map_err(|e| StepError::from(e).context(format!("writing {}", store.display(&rel))))?;
        Ok(())
    }
}

/// The filtered journal as a file for a command, removed when dropped.
struct TempJournal(std::path::PathBuf);

impl TempJournal {
    fn write(run_id: &str, target: &str, body: &[u8]) -> Result<TempJournal, StepError> {
        let path = std::env::temp_dir().join(format!("flowgate-journal-{run_id}-{target}-{}.jsonl", std::process::id()));
        let file = TempJournal(path);
        let mut f = std::fs::File::create(&file.0).map_err(crate::store::io_error)?;
        f.write_all(body).and_then(|()| f.sync_all()).map_err(crate::store::io_error)?;
        Ok(file)
    }
}

impl Drop for TempJournal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
