//! Triggers turn the outside world into ledger events: arrival (listing a store,
//! or S3 event notifications from an SQS queue: see `queue`), schedule (cron or
//! interval ticks, by the state store's clock), watch (a key of the built-in KV,
//! one event per revision). Schedule and watch keep a position in the built-in KV
//! and move it only once the events up to it are in the ledger; what they missed
//! while busy or down follows `catch_up` and `on_missed`, and what is not run is
//! recorded as a skipped run. Every pass also runs the freshness watchdog.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::json;

use crate::engine::{Engine, EngineError, Outcome, Stores, Submission};
use crate::error::StepError;
use crate::plan::{CatchUp, Plan};
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
/// submitted, and the clients of the arrival store and of a watched Consul or
/// etcd (built once, not on every pass).
#[derive(Default)]
pub struct Poller {
    seen: HashSet<String>,
    stores: Option<Stores>,
    kv: Option<Box<dyn crate::connect::kv::KvStore>>,
}

impl Poller {
    /// The watched external KV store, opened on first use; `None` (logged) when
    /// it cannot be opened, to be tried again next pass.
    fn watched_kv(&mut self, plan: &Plan) -> Option<&dyn crate::connect::kv::KvStore> {
        let s = plan.watch.as_ref()?.store.as_ref()?;
        if self.kv.is_none() {
            match crate::connect::kv::open(&s.url, &s.options) {
                Ok(kv) => self.kv = Some(kv),
                Err(e) => {
                    tracing::warn!(pipeline = %plan.name, store = %s.name, error = %e, "cannot open the watched KV store; will try again");
                }
            }
        }
        self.kv.as_deref()
    }
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
    let mut positions = Vec::new();
    let mut found = Vec::new();
    if let Some(w) = &plan.watch {
        found.push(watch_events(engine, plan, w, poller).await?);
    }
    if let Some(s) = &plan.schedule {
        found.push(due_ticks(engine, plan, s).await?);
    }
    let mut skipped = Vec::new();
    for f in found {
        if let (Some(store), Some(w)) = (&f.unset, &plan.watch)
            && poller.seen.insert(format!("unset:{}", w.key))
        {
            tracing::warn!(
                pipeline = %plan.name, store = %store,
                "the watched key `{}` is not set; nothing runs until it is (flowgate kv set {} VALUE)",
                w.key, w.key
            );
        }
        for (sub, why) in f.skip {
            let what = skipped_line(&sub, &why);
            if engine.skip(plan, sub, &why).await? {
                skipped.push(what);
            }
        }
        subs.extend(f.run);
        positions.extend(f.position);
    }
    if !skipped.is_empty() {
        engine.notify_skipped(plan, &skipped).await;
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
    // Every event found is in the ledger: only now do the positions move (a
    // stopped pass leaves them, and the next pass finds the same events again).
    if engine.cancel.is_cancelled() {
        return Ok(outcomes);
    }
    for (key, value) in positions {
        engine.state.kv_set(&key, &value).await?;
    }
    for run in engine.run_pending(plan).await? {
        outcomes.push(Outcome::Ran(Box::new(run)));
    }
    if let Err(e) = engine.check_freshness(plan).await {
        tracing::warn!(pipeline = %plan.name, error = %e, "freshness check failed; will try again");
    }
    if let Err(e) = engine.prune_if_due().await {
        tracing::warn!(error = %e, "pruning the state store failed; will try again");
    }
    Ok(outcomes)
}

/// One skipped event as a notice says it: the watched value or the tick, and why.
fn skipped_line(sub: &Submission, why: &str) -> String {
    let t = &sub.trigger;
    match (t["key"].as_str(), t["value"].as_str(), t["tick"].as_str()) {
        (Some(key), Some(value), _) => {
            format!("- `{key}` = `{value}` (revision {}): {why}", t["revision"])
        }
        (_, _, Some(tick)) => format!("- tick {tick}: {why}"),
        _ => format!("- {}: {why}", sub.dedupe_key),
    }
}

/// KV key of the newest revision of the watched key a pipeline has recorded.
fn watch_position(pipeline: &str) -> String {
    format!("flowgate/watch/{pipeline}")
}

/// KV key of the last schedule tick a pipeline has recorded.
fn schedule_position(pipeline: &str) -> String {
    format!("flowgate/schedule/{pipeline}")
}

/// One value of a watched key as an event. On an external store the key names
/// the store and the value too: a store whose data started over reuses
/// revision numbers, and a new value must not pass for one already run.
fn watch_sub(store: Option<&str>, e: &crate::state::KvEntry) -> Submission {
    let key = match store {
        None => format!("watch:{}@{}", e.key, e.revision),
        Some(s) => {
            use sha2::Digest;
            let digest = hex::encode(&sha2::Sha256::digest(e.value.as_bytes())[..8]);
            format!("watch:{s}:{}@{}#{digest}", e.key, e.revision)
        }
    };
    Submission::event(
        "watch",
        key,
        json!({"kind": "watch", "store": store.unwrap_or("state"), "key": e.key, "value": e.value, "revision": e.revision}),
    )
}

/// What one trigger found: events to run, events to record as skipped (with
/// why), and the position to store once both are in the ledger.
#[derive(Default)]
struct Found {
    run: Vec<Submission>,
    skip: Vec<(Submission, String)>,
    position: Option<(String, String)>,
    /// The watched key is not set (in this store): said once per poller.
    unset: Option<String>,
}

/// The watched key's revisions since the last pass: each one to run (`each`), or
/// the newest to run and the others to record as skipped (`latest`). On the
/// first pass, the current value only. A KV store that cannot be reached is
/// logged and asked again next pass (the position stays).
async fn watch_events(
    engine: &Engine,
    plan: &Plan,
    w: &crate::plan::WatchPlan,
    poller: &mut Poller,
) -> Result<Found, EngineError> {
    use crate::connect::kv::{Builtin, History, KvStore};
    let position = watch_position(&plan.name);
    let after = engine
        .state
        .kv_get(&position)
        .await?
        .and_then(|e| e.value.parse::<i64>().ok());
    let builtin;
    let kv: &dyn KvStore = match &w.store {
        None => {
            builtin = Builtin::new(engine.state.clone());
            &builtin
        }
        Some(_) => match poller.watched_kv(plan) {
            Some(kv) => kv,
            None => return Ok(Found::default()),
        },
    };
    let read = match after {
        Some(after) => kv.history(&w.key, after).await,
        None => kv
            .get(&w.key)
            .await
            .map(|e| History::Complete(e.into_iter().collect())),
    };
    let (seen, unseen) = match read {
        Ok(History::Complete(seen)) => (seen, false),
        Ok(History::CurrentOnly(now)) => (now.into_iter().collect(), true),
        Err(e) => {
            tracing::warn!(pipeline = %plan.name, store = %kv.describe(), key = %w.key, error = %e, "reading the watched key failed; will try again");
            return Ok(Found::default());
        }
    };
    let Some((newest, older)) = seen.split_last() else {
        return Ok(Found {
            unset: after.is_none().then(|| kv.describe()),
            ..Found::default()
        });
    };
    let store = w.store.as_ref().map(|s| s.name.as_str());
    let sub = |e: &crate::state::KvEntry| {
        let mut s = watch_sub(store, e);
        if unseen {
            // Values set between the last one run and this one are not known.
            s.trigger["missed_after_revision"] = json!(after);
        }
        s
    };
    if unseen {
        tracing::info!(
            pipeline = %plan.name, store = %kv.describe(), key = %w.key,
            after = ?after, now = newest.revision,
            "the watched key changed; the store does not know the values in between (Consul keeps none, etcd compacted them), so the newest runs"
        );
    }
    let mut found = Found {
        position: Some((position, newest.revision.to_string())),
        ..Found::default()
    };
    match w.on_missed {
        crate::plan::OnMissed::Each => found.run = seen.iter().map(sub).collect(),
        crate::plan::OnMissed::Latest => {
            let why = format!(
                "superseded by revision {} before it ran (on_missed = \"latest\")",
                newest.revision
            );
            found.skip = older.iter().map(|e| (sub(e), why.clone())).collect();
            found.run = vec![sub(newest)];
        }
    }
    Ok(found)
}

/// How late a tick may be and still count as on time (`catch_up = "none"`).
const ON_TIME: Duration = Duration::from_secs(60);

/// Schedule ticks due since the last pass, by the state store's clock, under the
/// plan's catch-up rule. The first pass starts counting from now.
async fn due_ticks(
    engine: &Engine,
    plan: &Plan,
    schedule: &crate::units::Schedule,
) -> Result<Found, EngineError> {
    let now = engine.state.now().await?;
    let position = schedule_position(&plan.name);
    let last = engine
        .state
        .kv_get(&position)
        .await?
        .and_then(|e| DateTime::parse_from_rfc3339(&e.value).ok())
        .map(|t| t.with_timezone(&Utc));
    let Some(last) = last else {
        engine.state.kv_set(&position, &now.to_rfc3339()).await?;
        return Ok(Found::default());
    };
    let mut due = Vec::new();
    let mut at = last;
    while let Some(next) = schedule.next_after(at).filter(|n| *n <= now) {
        due.push(next);
        at = next;
        if due.len() >= 10_000 {
            break;
        }
    }
    let Some((&newest, older)) = due.split_last() else {
        return Ok(Found::default());
    };
    let mut found = Found {
        position: Some((position, newest.to_rfc3339())),
        ..Found::default()
    };
    let late = (now - newest).to_std().unwrap_or_default() > ON_TIME;
    let stamp = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match plan.catch_up {
        CatchUp::All => found.run = due.iter().map(|t| tick(*t)).collect(),
        CatchUp::Latest => {
            let why = format!(
                "missed while the pipeline was busy or no worker ran; the tick of {} ran instead (catch_up = \"latest\")",
                stamp(&newest)
            );
            found.skip = older.iter().map(|t| (tick(*t), why.clone())).collect();
            found.run = vec![tick(newest)];
        }
        CatchUp::None => {
            let why = "missed while the pipeline was busy or no worker ran (catch_up = \"none\")";
            found.skip = older.iter().map(|t| (tick(*t), why.to_string())).collect();
            if late {
                found.skip.push((tick(newest), why.to_string()));
            } else {
                found.run = vec![tick(newest)];
            }
        }
    }
    Ok(found)
}

/// Serve one pipeline until the engine is cancelled.
pub async fn serve(engine: &Engine, plan: &Plan) -> Result<(), EngineError> {
    let mut poller = Poller::default();
    // A watched Consul or etcd key wakes the loop itself (a blocking query or a
    // watch, on the pass's own client); the built-in KV is read every second.
    let external = plan.watch.as_ref().is_some_and(|w| w.store.is_some());
    let poll = plan
        .arrival
        .as_ref()
        .map(|a| a.poll)
        .unwrap_or(Duration::from_secs(30))
        .min(if plan.watch.is_some() && !external {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(30)
        });
    loop {
        if let Err(e) = poll_once(engine, plan, &mut poller).await {
            tracing::error!(pipeline = %plan.name, error = %e, "trigger pass failed; will try again");
        }
        let mut wait = poll;
        if let Some(s) = &plan.schedule
            && let Ok(now) = engine.state.now().await
            && let Some(at) = s.next_after(now)
        {
            let until = (at - now).to_std().unwrap_or_default();
            wait = wait.min(until + Duration::from_millis(20));
        }
        let watched = plan.watch.as_ref().map(|w| w.key.as_str());
        let changed = async {
            match (poller.watched_kv(plan), watched) {
                (Some(kv), Some(key)) => changed_after(engine, plan, kv, key, wait).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
            _ = engine.cancel.cancelled() => return Ok(()),
        }
    }
}

/// Returns once the watched key changed past the pipeline's position (at most
/// every 200 ms); never when the store cannot say (the loop's timer wakes it).
async fn changed_after(
    engine: &Engine,
    plan: &Plan,
    kv: &dyn crate::connect::kv::KvStore,
    key: &str,
    wait: Duration,
) {
    let after = engine
        .state
        .kv_get(&watch_position(&plan.name))
        .await
        .ok()
        .flatten()
        .and_then(|e| e.value.parse::<i64>().ok())
        .unwrap_or(0);
    let started = tokio::time::Instant::now();
    match kv.wait(key, after, wait).await {
        Ok(Some(_)) => {
            tokio::time::sleep_until(started + Duration::from_millis(200)).await;
        }
        Ok(None) => std::future::pending().await,
        Err(e) => {
            tracing::warn!(pipeline = %plan.name, key, error = %e, "waiting on the watched key failed; will read it again");
            std::future::pending().await
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
