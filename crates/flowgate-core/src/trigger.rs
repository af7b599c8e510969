//! Triggers turn the outside world into ledger events: arrival (listing a store,
//! or S3 event notifications from an SQS queue: see `queue`), schedule (cron or
//! interval ticks), watch (a key of the built-in KV). Every pass also runs the
//! freshness watchdog.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::json;

use crate::engine::{Engine, EngineError, Outcome, Stores, Submission};
use crate::error::StepError;
use crate::plan::Plan;
use crate::store::StoreHandle;

/// Objects matching the arrival pattern, as submissions (key + etag dedupe).
pub async fn arrivals(plan: &Plan, stores: &Stores) -> Result<Vec<Submission>, StepError> {
    let Some(arrival) = &plan.arrival else {
        return Ok(Vec::new());
    };
    let store = stores.get(&arrival.store)?;
    let root = store.path("").map_err(|e| StepError::user(e.to_string()))?;
    // Only under the pattern's fixed leading folders: `exports/**/flag` lists
    // `exports/`, not the whole store.
    let under = store
        .path(&literal_folders(&arrival.pattern))
        .map_err(|e| StepError::user(e.to_string()))?;
    let listed: Vec<object_store::ObjectMeta> =
        store.reader().list(Some(&under)).try_collect().await?;
    let mut out = Vec::new();
    for meta in listed {
        let Some(key) = StoreHandle::relative_to(&root, &meta.location) else {
            continue;
        };
        if key.starts_with("failed/") || !arrival.matcher.is_match(&key) {
            continue;
        }
        let version = crate::store::version_of(&meta);
        let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key.as_str()));
        out.push(Submission::event(
            "arrival",
            format!("{key}@{version}"),
            json!({
                "kind": "arrival", "store": arrival.store, "key": key, "prefix": prefix, "name": name,
                "etag": meta.e_tag, "size": meta.size, "last_modified": meta.last_modified.to_rfc3339(),
            }),
        ));
    }
    Ok(out)
}

/// The leading folders of a glob that hold no wildcard: where matches can be.
fn literal_folders(pattern: &str) -> String {
    let segments: Vec<&str> = pattern.split('/').collect();
    let fixed = segments[..segments.len().saturating_sub(1)]
        .iter()
        .take_while(|s| !s.is_empty() && !s.contains(['*', '?', '[', '{', '\\']))
        .copied()
        .collect::<Vec<_>>();
    fixed.join("/")
}

/// The submission for a schedule tick.
pub fn tick(at: DateTime<Utc>) -> Submission {
    let stamp = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Submission::event(
        "schedule",
        format!("schedule:{stamp}"),
        json!({"kind": "schedule", "tick": stamp}),
    )
}

/// What one pipeline's trigger passes keep between passes: the events already
/// submitted, and the arrival store's clients (built once, not on every pass).
#[derive(Default)]
pub struct Poller {
    seen: HashSet<String>,
    stores: Option<Stores>,
}

/// One pass over every trigger of `plan`: record new events and run what is pending.
/// Returns the outcomes of runs started in this pass.
pub async fn poll_once(
    engine: &Engine,
    plan: &Plan,
    poller: &mut Poller,
) -> Result<Vec<Outcome>, EngineError> {
    let mut outcomes = Vec::new();
    let mut subs = Vec::new();
    #[cfg(feature = "aws")]
    if let Some(a) = &plan.arrival
        && let Some(q) = &a.queue
    {
        match crate::queue::client_for(q).await {
            Ok(client) => {
                let wait = a.poll.min(Duration::from_secs(20));
                match crate::queue::poll_queue(engine, plan, a, q, &client, wait).await {
                    Ok(o) => outcomes.extend(o),
                    Err(e) => {
                        tracing::warn!(pipeline = %plan.name, error = %e, "receiving from the queue failed; will try again")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(pipeline = %plan.name, error = %e.message, "cannot reach the queue")
            }
        }
    }
    if plan.arrival.as_ref().is_some_and(|a| a.queue.is_none()) {
        if poller.stores.is_none() {
            match Stores::open(plan, &serde_json::Value::Null) {
                Ok(stores) => poller.stores = Some(stores),
                Err(e) => {
                    tracing::warn!(pipeline = %plan.name, error = %e.message, "cannot open the arrival store")
                }
            }
        }
        if let Some(stores) = &poller.stores {
            match arrivals(plan, stores).await {
                Ok(found) => subs.extend(found),
                Err(e) => {
                    tracing::warn!(pipeline = %plan.name, error = %e.message, "listing for arrivals failed; will try again")
                }
            }
        }
    }
    if let Some(w) = &plan.watch
        && let Some(entry) = engine.state.kv_get(&w.key).await?
    {
        subs.push(Submission::event(
            "watch",
            format!("watch:{}@{}", w.key, entry.revision),
            json!({"kind": "watch", "key": w.key, "value": entry.value, "revision": entry.revision}),
        ));
    }
    for sub in subs {
        if engine.cancel.is_cancelled() {
            break;
        }
        if !poller.seen.insert(sub.dedupe_key.clone()) {
            continue;
        }
        for outcome in engine.submit_all(plan, sub).await? {
            // Handled before: said when it happened (a failure was notified).
            if !matches!(
                outcome,
                Outcome::AlreadyDone { .. } | Outcome::AlreadyFailed { .. }
            ) {
                outcomes.push(outcome);
            }
        }
    }
    for run in engine.run_pending(plan).await? {
        outcomes.push(Outcome::Ran(Box::new(run)));
    }
    if let Err(e) = engine.check_freshness(plan).await {
        tracing::warn!(pipeline = %plan.name, error = %e, "freshness check failed; will try again");
    }
    Ok(outcomes)
}

/// Serve one pipeline until the engine is cancelled.
pub async fn serve(engine: &Engine, plan: &Plan) -> Result<(), EngineError> {
    let mut poller = Poller::default();
    let poll = plan
        .arrival
        .as_ref()
        .map(|a| a.poll)
        .unwrap_or(Duration::from_secs(30))
        .min(if plan.watch.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(30)
        });
    let mut next_tick = plan
        .schedule
        .as_ref()
        .and_then(|s| s.next_after(Utc::now()));
    loop {
        if let Err(e) = poll_once(engine, plan, &mut poller).await {
            tracing::error!(pipeline = %plan.name, error = %e, "trigger pass failed; will try again");
        }
        if let (Some(s), Some(at)) = (&plan.schedule, next_tick)
            && Utc::now() >= at
        {
            if let Err(e) = engine.submit_all(plan, tick(at)).await {
                tracing::error!(pipeline = %plan.name, error = %e, "scheduled run could not start");
            }
            next_tick = s.next_after(Utc::now());
        }
        let mut wait = poll;
        if let Some(at) = next_tick {
            let until = (at - Utc::now()).to_std().unwrap_or_default();
            wait = wait.min(until.max(Duration::from_millis(50)));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = engine.cancel.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::literal_folders;

    #[test]
    fn a_listing_starts_below_the_fixed_folders_of_the_pattern() {
        assert_eq!(literal_folders("**/pipeline_success.flag"), "");
        assert_eq!(literal_folders("pipeline_success.flag"), "");
        assert_eq!(
            literal_folders("exports/**/pipeline_success.flag"),
            "exports"
        );
        assert_eq!(literal_folders("exports/daily/*.flag"), "exports/daily");
        assert_eq!(literal_folders("exports/da*/x/y.flag"), "exports");
        assert_eq!(literal_folders("a/{b,c}/d.flag"), "a");
        assert_eq!(literal_folders("a/[bc]/d.flag"), "a");
        assert_eq!(literal_folders("/a/b.flag"), "");
    }
}
