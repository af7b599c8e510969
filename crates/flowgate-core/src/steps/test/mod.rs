//! The test step: built-in checks on a sample of records, the results as JSON
//! and JUnit XML beside each other at a location (a new one per run, so tests of
//! one dataset never overwrite each other) and in the run record.

pub mod config;
pub mod plan;

use std::collections::HashSet;

use object_store::ObjectStoreExt as _;
use serde_json::{Value, json};

use crate::error::StepError;
use crate::state::StepReport;
use crate::steps::command::staged::place;
use crate::steps::context::{StepContext, StepOutput};
use crate::store::join_key;
use config::Severity;
use plan::{Check, CheckKind, TestPlan};

/// Failing records quoted per check.
const EXAMPLES: usize = 5;

pub async fn run(ctx: &StepContext<'_>, plan: &TestPlan) -> Result<StepOutput, StepError> {
    let render = |t: &str| crate::template::render(t, ctx.template).map_err(StepError::user);
    let sample = match plan.sample.as_deref().map(render).transpose()?.as_deref().map(str::trim) {
        None | Some("all") => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            StepError::user(format!("step `{}`: sample `{n}` is neither a number nor `all`", ctx.step.id))
        })?),
    };
    let (store, prefix) = place(ctx, &plan.data)?;
    let mut records: Vec<(String, usize, Value)> = Vec::new();
    let mut files = 0;
    for (rel, meta) in store.list_under(&prefix).await? {
        if sample.is_some_and(|n| records.len() >= n) {
            break;
        }
        if !crate::records::is_records_file(&rel) {
            continue;
        }
        files += 1;
        let key = join_key(&prefix, &rel);
        let body = store.reader().get(&meta.location).await.map_err(StepError::from)?.bytes().await.map_err(StepError::from)?;
        let parsed = crate::records::parse(&rel, &body)
            .map_err(|e| StepError::user(format!("{}: {e}", store.display(&key))))?;
        let room = sample.map_or(usize::MAX, |n| n - records.len());
        records.extend(parsed.into_iter().take(room).map(|(line, v)| (key.clone(), line, v)));
    }
    let outcomes: Vec<Value> = plan.checks.iter().map(|c| check(c, &records)).collect();
    let location = plan.results.clone();
    let results_prefix = render(&location.prefix)?.trim_matches('/').to_string();
    let doc = json!({
        "run_id": ctx.run_id,
        "pipeline": ctx.plan.name,
        "step": ctx.step.id,
        "data": store.display(&prefix),
        "dataset": ctx.template.get("dataset"),
        "sample": sample.map_or(json!("all"), |n| json!(n)),
        "files": files,
        "records": records.len(),
        "checks": outcomes,
    });
    let out_store = ctx.stores.get(&location.store)?;
    let writer = out_store
        .writer(&format!("step `{}` (test results)", ctx.step.id))
        .map_err(|e| StepError::user(e.to_string()))?;
    let junit = junit(&ctx.step.id, &outcomes);
    let json_body = serde_json::to_vec_pretty(&doc).map_err(|e| StepError::internal(e.to_string()))?;
    for (name, body) in [("results.json", json_body), ("junit.xml", junit.into_bytes())] {
        let key = join_key(&results_prefix, name);
        let at = out_store.path(&key).map_err(StepError::user)?;
        writer
            .put(&at, body.into())
            .await
            .map_err(|e| StepError::from(e).context(format!("writing {}", out_store.display(&key))))?;
    }
    let failed = |sev: &str| outcomes.iter().filter(|o| o["passed"] == false && o["severity"] == sev).count();
    let (errors, warnings) = (failed("error"), failed("warn"));
    let passed = outcomes.len() - errors - warnings;
    let report = StepReport {
        rows_in: records.len() as u64,
        objects_in: files,
        objects_out: 2,
        notes: outcomes
            .iter()
            .filter(|o| o["passed"] == false)
            .map(|o| format!("{} {}: {}", o["severity"].as_str().unwrap_or("?"), o["name"].as_str().unwrap_or("?"), o["message"].as_str().unwrap_or("")))
            .collect(),
        output: Some(json!({"tests": {"passed": passed, "failed": errors, "warned": warnings, "records": records.len(), "results": out_store.display(&results_prefix)}})),
        ..Default::default()
    };
    if errors == 0 {
        return Ok(report.into());
    }
    let failure = StepError::user(format!(
        "{errors} of {} checks failed on {} records; results in {}",
        outcomes.len(),
        records.len(),
        out_store.display(&results_prefix)
    ));
    Ok(StepOutput { report, failure: Some(failure) })
}

/// One check over the sample: `{name, kind, severity, passed, failures, message, examples}`.
fn check(c: &Check, records: &[(String, usize, Value)]) -> Value {
    let at = |(key, line, _): &(String, usize, Value)| format!("{key}:{line}");
    let (failures, message, examples): (usize, String, Vec<String>) = match &c.kind {
        CheckKind::RowCount { min, max } => {
            let n = records.len() as u64;
            let bad = n < *min || max.is_some_and(|m| n > m);
            let range = match max {
                Some(m) => format!("{min}..={m}"),
                None => format!("at least {min}"),
            };
            (usize::from(bad), format!("{n} records, expected {range}"), Vec::new())
        }
        CheckKind::NotNull(f) => {
            let bad: Vec<_> = records.iter().filter(|r| r.2.get(f).is_none_or(Value::is_null)).collect();
            (bad.len(), format!("{} records with `{f}` missing or null", bad.len()), bad.iter().take(EXAMPLES).map(|r| at(r)).collect())
        }
        CheckKind::Unique(f) => {
            let mut seen = HashSet::new();
            let bad: Vec<_> = records.iter().filter(|r| r.2.get(f).is_some_and(|v| !v.is_null()) && !seen.insert(r.2[f].to_string())).collect();
            (bad.len(), format!("{} records repeat a value of `{f}`", bad.len()), bad.iter().take(EXAMPLES).map(|r| format!("{} ({})", at(r), r.2[f])).collect())
        }
        CheckKind::Accepted(f, values) => {
            let bad: Vec<_> = records.iter().filter(|r| r.2.get(f).is_some_and(|v| !v.is_null() && !values.contains(v))).collect();
            (bad.len(), format!("{} records with a `{f}` not accepted", bad.len()), bad.iter().take(EXAMPLES).map(|r| format!("{} ({})", at(r), r.2[f])).collect())
        }
        CheckKind::Columns(cols) => {
            let bad: Vec<_> = records.iter().filter(|r| cols.iter().any(|c| r.2.get(c).is_none())).collect();
            (bad.len(), format!("{} records lack one of {}", bad.len(), cols.join(", ")), bad.iter().take(EXAMPLES).map(|r| at(r)).collect())
        }
    };
    json!({
        "name": c.name,
        "severity": match c.severity { Severity::Error => "error", Severity::Warn => "warn" },
        "passed": failures == 0,
        "failures": failures,
        "message": message,
        "examples": examples,
    })
}

/// The checks as a JUnit XML test suite (a warning is a passed case with its
/// message in `system-out`).
fn junit(suite: &str, outcomes: &[Value]) -> String {
    let failed = outcomes.iter().filter(|o| o["passed"] == false && o["severity"] == "error").count();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" errors=\"0\">\n",
        escape(suite),
        outcomes.len()
    );
    for o in outcomes {
        let name = escape(o["name"].as_str().unwrap_or(""));
        let message = escape(o["message"].as_str().unwrap_or(""));
        x.push_str(&format!("    <testcase classname=\"{}\" name=\"{name}\"", escape(suite)));
        match (o["passed"].as_bool(), o["severity"].as_str()) {
            (Some(true), _) => x.push_str("/>\n"),
            (_, Some("warn")) => x.push_str(&format!(">\n      <system-out>warning: {message}</system-out>\n    </testcase>\n")),
            _ => {
                let examples: Vec<String> = o["examples"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).map(escape).collect();
                x.push_str(&format!(
                    ">\n      <failure message=\"{message}\">{}</failure>\n    </testcase>\n",
                    examples.join("\n")
                ));
            }
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}
