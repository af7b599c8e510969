//! The steps: what all kinds share (ids, `needs`, retry, timeout, `when`, their
//! order), each kind planned by its own module under `steps/`, and the policies
//! steps inherit.

use std::collections::HashMap;
use std::time::Duration;

use super::ctx::Ctx;
use super::{OneAtATime, PlannedStep, RetryPolicy, StepKind};
use crate::config::diagnostic::nearest;
use crate::config::model::{Access, RetrySpec, StepSpec};
use crate::store::Location;
use crate::units::Backoff;

/// `[policy]`: what steps inherit, and where bad input goes.
pub(super) struct Policy {
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    pub quarantine: Option<Location>,
    pub dead_letter: Option<Location>,
}

pub(super) fn policy(cx: &mut Ctx<'_>) -> Policy {
    let p = &cx.file().policy;
    let retry = retry_of(cx, "policy.retry", p.retry.as_ref(), RetryPolicy::default());
    let timeout = cx
        .duration("policy.timeout", p.timeout.as_deref())
        .ok()
        .flatten();
    let quarantine = p
        .quarantine
        .as_deref()
        .and_then(|q| cx.location("policy.quarantine", q, Access::Write, "the quarantine"));
    let dead_letter = p.dead_letter.as_deref().and_then(|q| {
        cx.location(
            "policy.dead_letter",
            q,
            Access::Write,
            "the dead-letter sink",
        )
    });
    Policy {
        retry,
        timeout,
        quarantine,
        dead_letter,
    }
}

fn retry_of(cx: &mut Ctx<'_>, at: &str, r: Option<&RetrySpec>, base: RetryPolicy) -> RetryPolicy {
    let Some(r) = r else { return base };
    let backoff = match r.backoff.as_deref().map(Backoff::parse).transpose() {
        Ok(b) => b.unwrap_or(base.backoff),
        Err(e) => {
            cx.error(&format!("{at}.backoff"), e, None);
            base.backoff
        }
    };
    let attempts = r.attempts.unwrap_or(base.attempts);
    if attempts == 0 {
        cx.error(
            &format!("{at}.attempts"),
            "attempts counts the first try too; it must be at least 1",
            None,
        );
    }
    RetryPolicy {
        attempts: attempts.max(1),
        backoff,
    }
}

/// Every step planned, in an order that respects `needs`.
pub(super) fn plan(cx: &mut Ctx<'_>, policy: &Policy) -> Vec<PlannedStep> {
    let file = cx.file();
    let mut planned = Vec::new();
    for (s, at) in file.steps.iter().zip(&cx.loaded.step_paths) {
        if let Some(step) = step(cx, s, at, policy) {
            planned.push(step);
        }
    }
    let steps = match order(&planned) {
        Ok(s) => s,
        Err(cycle) => {
            cx.key_error(
                "steps",
                format!(
                    "steps depend on each other in a cycle: {}",
                    cycle.join(" → ")
                ),
                None,
            );
            Vec::new()
        }
    };
    if file.policy.one_at_a_time == Some(OneAtATime::Event) {
        for s in &steps {
            if let Some((position, hint)) = shared_position(&s.kind) {
                cx.error(
                    "policy.one_at_a_time",
                    format!(
                        "step `{}` {position}, so runs of different events must not overlap",
                        s.id
                    ),
                    Some(hint),
                );
                break;
            }
        }
    }
    steps
}

/// What position of `kind` every run shares (with what to do about it), when
/// runs of different events would step on each other there.
fn shared_position(kind: &StepKind) -> Option<(String, String)> {
    let remove = "remove `one_at_a_time` (the default is \"pipeline\")";
    match kind {
        StepKind::Extract(_) | StepKind::Transform(_) | StepKind::Load(_) => Some((
            "keeps a position all runs share (a watermark, the models' inputs or a table)".into(),
            remove.into(),
        )),
        // Two runs listing one outbox would both send what is in it.
        StepKind::Deliver(d)
            if !crate::template::variables(&d.from.prefix)
                .iter()
                .any(|v| ["trigger", "params", "route", "run"].contains(&v.as_str())) =>
        {
            Some((
                format!(
                    "delivers from an outbox all runs share (`{}:{}`): two runs would both send its objects",
                    d.from.store, d.from.prefix
                ),
                format!(
                    "give each event its own outbox (a prefix with `{{{{ trigger.prefix }}}}`, `{{{{ params.… }}}}` or `{{{{ run.id }}}}`), or {remove}"
                ),
            ))
        }
        _ => None,
    }
}

/// One step: what every kind shares, then its kind's own planner.
fn step(cx: &mut Ctx<'_>, s: &StepSpec, at: &str, policy: &Policy) -> Option<PlannedStep> {
    let ids: Vec<&str> = cx.file().steps.iter().map(|s| s.id.as_str()).collect();
    if ids.iter().filter(|id| **id == s.id).count() > 1 {
        cx.error(
            &format!("{at}.id"),
            format!("step id `{}` is used more than once", s.id),
            None,
        );
    }
    for (j, need) in s.needs.iter().enumerate() {
        if !ids.contains(&need.as_str()) || need == &s.id {
            let hint = nearest(need, ids.iter().copied()).map(|n| format!("did you mean `{n}`?"));
            cx.error(
                &format!("{at}.needs[{j}]"),
                format!("step `{}` needs unknown step `{need}`", s.id),
                hint,
            );
        }
    }
    let retry = retry_of(cx, &format!("{at}.retry"), s.retry.as_ref(), policy.retry);
    let timeout = cx
        .duration(&format!("{at}.timeout"), s.timeout.as_deref())
        .ok()
        .and_then(|t| t.or(policy.timeout));
    if let Some(w) = &s.when
        && let Err(e) = crate::template::check_expression(w)
    {
        cx.error(
            &format!("{at}.when"),
            format!("`when` is not an expression: {e}"),
            Some("for example: when = \"route.transfer_type == 'S3'\"".into()),
        );
    }
    let kind = kind(cx, s, at)?;
    Some(PlannedStep {
        id: s.id.clone(),
        needs: s.needs.clone(),
        retry,
        timeout,
        when: s.when.clone(),
        kind,
    })
}

/// The step's kind, planned by that kind's module: exactly one per step.
fn kind(cx: &mut Ctx<'_>, s: &StepSpec, at: &str) -> Option<StepKind> {
    let set = s.kinds();
    if set.len() > 1 {
        cx.key_error(
            at,
            format!(
                "step `{}` has more than one kind ({}); give each its own step",
                s.id,
                set.join(", ")
            ),
            None,
        );
        return None;
    }
    if set.is_empty() {
        cx.key_error(
            at,
            format!("step `{}` has no kind", s.id),
            Some(format!(
                "add one of: {} (e.g. copy = {{ from = \"…\", to = \"…\" }})",
                crate::steps::KINDS.join(", ")
            )),
        );
        return None;
    }
    crate::steps::plan(s, at, &format!("step `{}`", s.id), cx)
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
