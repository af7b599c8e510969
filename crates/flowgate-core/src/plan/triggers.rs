//! What starts runs: a schedule, a watched KV key, arriving objects.

use std::time::Duration;

use globset::Glob;

use super::ctx::Ctx;
use super::{ArrivalPlan, KvStorePlan, OnMissed, STATE_STORE, WatchPlan};
use crate::config::diagnostic::nearest;
use crate::config::model::{Access, ArrivalSpec};
use crate::units::Schedule;

pub(super) fn schedule(cx: &mut Ctx<'_>) -> Option<Schedule> {
    let t = &cx.file().trigger;
    let text = t.schedule.as_deref()?;
    Schedule::parse(text, t.timezone.as_deref())
        .map_err(|e| {
            cx.error(
                "trigger.schedule",
                e,
                Some("cron fields: minute hour day-of-month month day-of-week".into()),
            )
        })
        .ok()
}

pub(super) fn watch(cx: &mut Ctx<'_>) -> Option<WatchPlan> {
    let w = cx.file().trigger.watch.as_ref()?;
    if w.store == STATE_STORE {
        return Some(WatchPlan {
            key: w.key.clone(),
            on_missed: w.on_missed.unwrap_or(OnMissed::Each),
            store: None,
        });
    }
    let Some(spec) = cx.file().stores.get(&w.store) else {
        let names = cx.file().stores.keys().map(String::as_str);
        let hint = nearest(&w.store, names).map(|n| format!("did you mean `{n}`?"));
        cx.error(
            "trigger.watch.store",
            format!("the watch names store `{}`, which `[stores]` does not have", w.store),
            hint.or(Some("`state` is the built-in KV; a Consul or etcd store is a `[stores]` entry with a consul:// or etcd:// URL".into())),
        );
        return None;
    };
    let Some(kind) = crate::connect::kv::kind_of(&spec.url) else {
        cx.error(
            "trigger.watch.store",
            format!(
                "store `{}` is not a KV store: a watch reads `state`, consul:// or etcd://",
                w.store
            ),
            None,
        );
        return None;
    };
    let on_missed = w.on_missed.unwrap_or(OnMissed::Latest);
    if !kind.keeps_history() && on_missed == OnMissed::Each {
        cx.error(
            "trigger.watch.on_missed",
            "Consul keeps no history of a key, so the values set while no worker looked cannot be run each",
            Some("use on_missed = \"latest\" (the default): the newest runs, and the run says values were missed".into()),
        );
        return None;
    }
    Some(WatchPlan {
        key: w.key.clone(),
        on_missed,
        store: Some(KvStorePlan {
            name: w.store.clone(),
            url: spec.url.clone(),
            options: crate::connect::kv::KvOptions::of(spec, &cx.dir),
        }),
    })
}

pub(super) fn arrival(cx: &mut Ctx<'_>) -> Option<ArrivalPlan> {
    let a = cx.file().trigger.arrival.as_ref()?;
    let poll = cx
        .duration("trigger.arrival.poll", a.poll.as_deref())
        .ok()
        .flatten()
        .unwrap_or(Duration::from_secs(30));
    let ok = cx.store_ref(
        "trigger.arrival.store",
        &a.store,
        Access::Read,
        "the arrival trigger",
    );
    let matcher = pattern(cx, a);
    let visibility = cx
        .duration("trigger.arrival.visibility", a.visibility.as_deref())
        .ok()
        .flatten()
        .unwrap_or(Duration::from_secs(300))
        .clamp(Duration::from_secs(1), Duration::from_secs(43_200));
    if let Some(q) = &a.queue {
        if url::Url::parse(q).is_err() {
            cx.error(
                "trigger.arrival.queue",
                format!("queue `{q}` is not a URL"),
                Some("give the queue's URL, e.g. https://sqs.eu-west-2.amazonaws.com/123456789012/egress".into()),
            );
        }
        if !cfg!(feature = "aws") {
            cx.error(
                "trigger.arrival.queue",
                "this flowgate was built without SQS support (cargo feature `aws`)",
                None,
            );
        }
    }
    let store_url = cx
        .file()
        .stores
        .get(&a.store)
        .and_then(|s| url::Url::parse(&s.url).ok());
    let (bucket, root) = match store_url {
        Some(u) if u.scheme() == "s3" => (
            u.host_str().map(str::to_string),
            u.path().trim_matches('/').to_string(),
        ),
        _ => (None, String::new()),
    };
    let matcher = matcher.filter(|_| ok)?;
    Some(ArrivalPlan {
        queue: a.queue.clone().filter(|q| !q.trim().is_empty()),
        visibility,
        bucket,
        root,
        store: a.store.clone(),
        pattern: a.pattern.clone(),
        matcher,
        poll,
    })
}

/// The arrival pattern, compiled; one that can never match a key is refused.
fn pattern(cx: &mut Ctx<'_>, a: &ArrivalSpec) -> Option<globset::GlobMatcher> {
    // Keys are relative to the store and never hold `.` or `..` folders: such
    // a pattern could not match anything, ever.
    if a.pattern.starts_with('/') || a.pattern.split('/').any(|s| s == "." || s == "..") {
        cx.error(
            "trigger.arrival.pattern",
            format!(
                "pattern `{}` can never match: keys are relative to the store, with no leading `/` and no `.` or `..` folders",
                a.pattern
            ),
            Some("write it from the store's root, e.g. `exports/**/pipeline_success.flag`".into()),
        );
    }
    match Glob::new(&a.pattern) {
        Ok(g) => Some(g.compile_matcher()),
        Err(e) => {
            cx.error(
                "trigger.arrival.pattern",
                format!("bad glob `{}`: {e}", a.pattern),
                None,
            );
            None
        }
    }
}
