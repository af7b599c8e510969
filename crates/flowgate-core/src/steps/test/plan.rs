//! The test step's plan.

use std::collections::BTreeMap;

use super::config::{CheckSpec, Severity, TestSpec};
use crate::config::model::Access;
use crate::plan::ctx::Ctx;
use crate::steps::command::plan::Staged;
use crate::store::Location;

#[derive(Debug, Clone)]
pub struct TestPlan {
    pub data: Staged,
    pub sample: Option<String>,
    pub results: Location,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub severity: Severity,
    pub kind: CheckKind,
}

#[derive(Debug, Clone)]
pub enum CheckKind {
    RowCount { min: u64, max: Option<u64> },
    NotNull(String),
    Unique(String),
    Accepted(String, Vec<serde_json::Value>),
    Columns(Vec<String>),
}

/// Plan a test step at `at`.
pub(crate) fn build(t: &TestSpec, at: &str, what: &str, cx: &mut Ctx<'_>) -> Option<TestPlan> {
    let at = format!("{at}.test");
    let data = crate::steps::command::plan::staged(
        &BTreeMap::from([("data".to_string(), t.data.clone())]),
        &at,
        false,
        cx,
    )
    .and_then(|mut v| v.pop().map(|(_, s)| s));
    let ok = cx.kind_is(&format!("{at}.results"), &t.results, false, what);
    let results = cx.location(&format!("{at}.results"), &t.results, Access::Write, what);
    if let Some(s) = &t.sample
        && let Err(e) = crate::template::check(s)
    {
        cx.error(&format!("{at}.sample"), format!("not a template: {e}"), None);
    }
    if t.checks.is_empty() {
        cx.error(&format!("{at}.checks"), "a test needs at least one check", None);
    }
    let checks: Vec<Option<Check>> = t
        .checks
        .iter()
        .enumerate()
        .map(|(i, c)| check(c, &format!("{at}.checks[{i}]"), cx))
        .collect();
    if !ok || checks.iter().any(Option::is_none) || t.checks.is_empty() {
        return None;
    }
    Some(TestPlan {
        data: data?,
        sample: t.sample.clone(),
        results: results?,
        checks: checks.into_iter().flatten().collect(),
    })
}

fn check(c: &CheckSpec, at: &str, cx: &mut Ctx<'_>) -> Option<Check> {
    let mut kinds = Vec::new();
    if let Some(r) = &c.row_count {
        kinds.push(("row_count".to_string(), CheckKind::RowCount { min: r.min.unwrap_or(1), max: r.max }));
    }
    if let Some(f) = &c.not_null {
        kinds.push((format!("not_null({f})"), CheckKind::NotNull(f.clone())));
    }
    if let Some(f) = &c.unique {
        kinds.push((format!("unique({f})"), CheckKind::Unique(f.clone())));
    }
    if let Some(a) = &c.accepted_values {
        kinds.push((format!("accepted_values({})", a.column), CheckKind::Accepted(a.column.clone(), a.values.clone())));
    }
    if let Some(cols) = &c.columns {
        kinds.push(("columns".to_string(), CheckKind::Columns(cols.clone())));
    }
    if kinds.len() != 1 {
        cx.error(
            at,
            "a check is exactly one of row_count, not_null, unique, accepted_values, columns",
            Some("for example: { not_null = \"id\" }".into()),
        );
        return None;
    }
    let (default_name, kind) = kinds.remove(0);
    Some(Check {
        name: c.name.clone().unwrap_or(default_name),
        severity: c.severity.unwrap_or_default(),
        kind,
    })
}
