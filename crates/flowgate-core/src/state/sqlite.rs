//! SQLite backend: one file (WAL), for a laptop or several workers on one machine.
//! Leases are judged by SQLite's clock; a write made under a lease checks it in
//! the same `BEGIN IMMEDIATE` transaction, so no one takes the lease over meanwhile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde_json::Value;

use super::rows::{EVENT_COLUMNS, EventRow, RUN_COLUMNS, RunRow, json_text, parse_json};
use super::*;

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  pipeline TEXT NOT NULL, kind TEXT NOT NULL, dedupe_key TEXT NOT NULL, payload TEXT NOT NULL,
  status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, run_id TEXT, claimed_by TEXT,
  lease_until INTEGER, created_at INTEGER NOT NULL,
  UNIQUE (pipeline, dedupe_key));
CREATE INDEX events_pending ON events (pipeline, status, id);
CREATE TABLE runs (
  id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, env TEXT, event_id INTEGER, trigger TEXT NOT NULL,
  params TEXT NOT NULL, status TEXT NOT NULL, attempt INTEGER NOT NULL, worker TEXT NOT NULL,
  started_at INTEGER NOT NULL, finished_at INTEGER, error TEXT, steps TEXT NOT NULL);
CREATE INDEX runs_by_pipeline ON runs (pipeline, started_at);
CREATE TABLE watermarks (
  pipeline TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, updated_at INTEGER NOT NULL,
  PRIMARY KEY (pipeline, name));
CREATE TABLE object_ledger (
  scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, detail TEXT NOT NULL,
  recorded_at INTEGER NOT NULL, PRIMARY KEY (scope, key));
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, revision INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE kv_revision (id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL);
INSERT INTO kv_revision VALUES (1, 0);
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE datasets (
  name TEXT NOT NULL, version TEXT NOT NULL, location TEXT NOT NULL, meta TEXT NOT NULL,
  published_at INTEGER NOT NULL, PRIMARY KEY (name, version));
"#,
    ),
    (
        2,
        r#"
ALTER TABLE events ADD COLUMN lane TEXT;
ALTER TABLE events ADD COLUMN claim_token INTEGER;
UPDATE events SET lane = pipeline;
CREATE INDEX events_by_lane ON events (lane, status, id);
ALTER TABLE runs ADD COLUMN lane TEXT;
ALTER TABLE runs ADD COLUMN fence INTEGER;
ALTER TABLE leases ADD COLUMN token INTEGER NOT NULL DEFAULT 0;
"#,
    ),
    (
        3,
        r#"
CREATE TABLE kv_history (key TEXT NOT NULL, value TEXT NOT NULL, revision INTEGER NOT NULL,
  updated_at INTEGER NOT NULL, PRIMARY KEY (key, revision));
INSERT INTO kv_history SELECT key, value, revision, updated_at FROM kv;
"#,
    ),
    (4, "ALTER TABLE runs ADD COLUMN code TEXT;"),
];

/// SQLite's clock in milliseconds since the epoch.
const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// Is the fence's claim still held (in the caller's transaction)?
fn fence_held(tx: &Connection, f: &Fence) -> rusqlite::Result<bool> {
    tx.query_row(
        &format!(
            "SELECT count(*) FROM leases WHERE name = ?1 AND holder = ?2 AND token = ?3 AND expires_at > {NOW}"
        ),
        params![f.lease, f.holder, f.token],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n == 1)
}

/// The SQLite state store.
pub struct SqliteState {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteState {
    pub async fn open(path: &Path) -> StateResult<SqliteState> {
        let path = path.to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> StateResult<Connection> {
            let err = |source| StateError::Sqlite {
                path: p.display().to_string(),
                source,
            };
            if let Some(dir) = p.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StateError::Task(format!("create {}: {e}", dir.display())))?;
            }
            let mut conn = Connection::open(&p).map_err(err)?;
            conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
            // Switching a new file to WAL and migrating it can meet another
            // process doing the same; SQLite then answers busy without waiting.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match prepare(&mut conn) {
                    Err(e)
                        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => break other.map_err(err)?,
                }
            }
            Ok(conn)
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))??;
        Ok(SqliteState {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StateResult<T> {
        let conn = self.conn.clone();
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard).map_err(|source| StateError::Sqlite { path, source })
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
    }

    /// Run `f` in an immediate transaction, only while the fence's claim is held
    /// (else [`StateError::Fenced`], and nothing is written).
    async fn with_fence<T: Send + 'static>(
        &self,
        fence: &Fence,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StateResult<T> {
        let fence = fence.clone();
        let lease = fence.lease.clone();
        let held = self
            .with(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if !fence_held(&tx, &fence)? {
                    return Ok(None);
                }
                let out = f(&tx)?;
                tx.commit()?;
                Ok(Some(out))
            })
            .await?;
        held.ok_or(StateError::Fenced(lease))
    }
}

/// A connection's settings, and the schema brought up to date.
fn prepare(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrate(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS flowgate_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM flowgate_migrations",
        [],
        |r| r.get(0),
    )?;
    for (version, sql) in MIGRATIONS {
        if *version > current {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO flowgate_migrations VALUES (?1, ?2)",
                params![version, ms(Utc::now())],
            )?;
        }
    }
    tx.commit()
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get(0)?,
        pipeline: r.get(1)?,
        kind: r.get(2)?,
        dedupe_key: r.get(3)?,
        payload: r.get(4)?,
        status: r.get(5)?,
        attempts: r.get(6)?,
        run_id: r.get(7)?,
        claimed_by: r.get(8)?,
        lane: r.get(9)?,
        claim_token: r.get(10)?,
        created_at: r.get(11)?,
    })
}

fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        pipeline: r.get(1)?,
        env: r.get(2)?,
        event_id: r.get(3)?,
        trigger: r.get(4)?,
        params: r.get(5)?,
        status: r.get(6)?,
        attempt: r.get(7)?,
        worker: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
        error: r.get(11)?,
        steps: r.get(12)?,
        lane: r.get(13)?,
        fence: r.get(14)?,
        code: r.get(15)?,
    })
}

/// Claim the first event `condition` picks (parameters: `?1` lane, `?2` token,
/// then `args`) for the fence, in the caller's transaction.
fn claim(
    tx: &Connection,
    fence: &Fence,
    condition: &str,
    args: &[rusqlite::types::Value],
) -> rusqlite::Result<Option<EventRow>> {
    let mut values: Vec<rusqlite::types::Value> =
        vec![fence.lease.clone().into(), fence.token.into()];
    values.extend_from_slice(args);
    let row = tx
        .query_row(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE lane = ?1 AND ({condition}) ORDER BY id LIMIT 1"
            ),
            rusqlite::params_from_iter(values.iter()),
            event_row,
        )
        .optional()?;
    let Some(mut row) = row else { return Ok(None) };
    tx.execute(
        "UPDATE events SET status = 'claimed', claimed_by = ?1, claim_token = ?2, lease_until = NULL, attempts = attempts + 1 WHERE id = ?3",
        params![fence.holder, fence.token, row.id],
    )?;
    row.status = "claimed".into();
    row.claimed_by = Some(fence.holder.clone());
    row.claim_token = Some(fence.token);
    row.attempts += 1;
    Ok(Some(row))
}

/// A claim under `fence`: `None` also when the fence no longer holds.
async fn claim_fenced(
    s: &SqliteState,
    fence: &Fence,
    condition: &str,
    args: Vec<rusqlite::types::Value>,
) -> StateResult<Option<TriggerEvent>> {
    let f = fence.clone();
    let condition = condition.to_string();
    match s
        .with_fence(fence, move |tx| claim(tx, &f, &condition, &args))
        .await
    {
        Ok(row) => row.map(EventRow::into_event).transpose(),
        Err(StateError::Fenced(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// No manual event older than the candidate waits for the lane: a lane serves
/// first come, first served (see
/// `StateStore::wait_for_lane`).
fn no_older_waiter() -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM events w WHERE w.lane = ?1 AND w.kind = 'manual' \
         AND w.status = 'pending' AND w.lease_until > {NOW} AND w.id < events.id)"
    )
}

#[async_trait::async_trait]
impl StateStore for SqliteState {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    async fn now(&self) -> StateResult<DateTime<Utc>> {
        let at: i64 = self
            .with(|c| c.query_row(&format!("SELECT {NOW}"), [], |r| r.get(0)))
            .await?;
        Ok(from_ms(at))
    }

    async fn record_event(&self, event: NewEvent) -> StateResult<Recorded> {
        let (inserted, row) = self
            .with(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = tx.execute(
                    &format!("INSERT INTO events (pipeline, lane, kind, dedupe_key, payload, status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', {NOW}) ON CONFLICT (pipeline, dedupe_key) DO NOTHING"),
                    params![event.pipeline, event.lane, event.kind, event.dedupe_key, json_text(&event.payload)],
                )?;
                let row = tx.query_row(
                    &format!("SELECT {EVENT_COLUMNS} FROM events WHERE pipeline = ?1 AND dedupe_key = ?2"),
                    params![event.pipeline, event.dedupe_key],
                    event_row,
                )?;
                tx.commit()?;
                Ok((n == 1, row))
            })
            .await?;
        let ev = row.into_event()?;
        Ok(if inserted {
            Recorded::New(ev)
        } else {
            Recorded::Duplicate(ev)
        })
    }

    async fn open_lanes(&self, pipeline: &str) -> StateResult<Vec<String>> {
        let pipeline = pipeline.to_string();
        self.with(move |c| {
            let mut st = c.prepare(
                "SELECT lane FROM events WHERE pipeline = ?1
                   AND ((status = 'pending' AND kind <> 'manual') OR status = 'claimed')
                 GROUP BY lane ORDER BY min(id)",
            )?;
            st.query_map(params![pipeline], |r| r.get(0))?.collect()
        })
        .await
    }

    async fn claim_event(&self, fence: &Fence) -> StateResult<Option<TriggerEvent>> {
        claim_fenced(
            self,
            fence,
            &format!("kind <> 'manual' AND (status = 'pending' OR (status = 'claimed' AND COALESCE(claim_token, 0) < ?2)) AND {}", no_older_waiter()),
            Vec::new(),
        )
        .await
    }

    async fn wait_for_lane(&self, id: i64, ttl: Duration) -> StateResult<()> {
        let ttl = ttl_ms(ttl);
        self.with(move |c| {
            c.execute(
                &format!("UPDATE events SET lease_until = {NOW} + ?2 WHERE id = ?1 AND status = 'pending'"),
                params![id, ttl],
            )
            .map(|_| ())
        })
        .await
    }

    async fn claim_event_id(
        &self,
        id: i64,
        fence: &Fence,
        retry_failed: bool,
    ) -> StateResult<Option<TriggerEvent>> {
        claim_fenced(
            self,
            fence,
            &format!("id = ?3 AND (status = 'pending' OR (status = 'claimed' AND COALESCE(claim_token, 0) < ?2) OR (?4 AND status = 'failed')) AND (kind = 'manual' OR {})", no_older_waiter()),
            vec![id.into(), i64::from(retry_failed).into()],
        )
        .await
    }

    async fn close_lost_manual(&self, fence: &Fence) -> StateResult<u64> {
        let f = fence.clone();
        self.with_fence(fence, move |tx| {
            tx.execute(
                "UPDATE events SET status = 'failed' WHERE lane = ?1 AND kind = 'manual' AND status = 'claimed' AND COALESCE(claim_token, 0) < ?2",
                params![f.lease, f.token],
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn finish_event(
        &self,
        id: i64,
        status: EventStatus,
        run_id: &str,
        fence: &Fence,
    ) -> StateResult<()> {
        let (run_id, token, lease) = (run_id.to_string(), fence.token, fence.lease.clone());
        let n = self
            .with_fence(fence, move |tx| {
                tx.execute(
                    "UPDATE events SET status = ?1, run_id = ?2, lease_until = NULL WHERE id = ?3 AND claim_token = ?4",
                    params![status.as_str(), run_id, id, token],
                )
            })
            .await?;
        if n == 0 {
            return Err(StateError::Fenced(lease));
        }
        Ok(())
    }

    async fn record_skipped(&self, event: NewEvent, run: &RunRecord) -> StateResult<bool> {
        let run_id = run.id.clone();
        let id: Option<i64> = self
            .with(move |c| {
                c.query_row(
                    &format!(
                        "INSERT INTO events (pipeline, lane, kind, dedupe_key, payload, status, run_id, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'done', ?6, {NOW}) ON CONFLICT (pipeline, dedupe_key) DO NOTHING RETURNING id"
                    ),
                    params![event.pipeline, event.lane, event.kind, event.dedupe_key, json_text(&event.payload), run_id],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        let Some(id) = id else { return Ok(false) };
        let mut run = run.clone();
        run.event_id = Some(id);
        self.save_run(&run).await?;
        Ok(true)
    }

    async fn get_event(&self, id: i64) -> StateResult<Option<TriggerEvent>> {
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"),
                params![id],
                event_row,
            )
            .optional()
        })
        .await?
        .map(EventRow::into_event)
        .transpose()
    }

    async fn list_events(&self, pipeline: &str, limit: usize) -> StateResult<Vec<TriggerEvent>> {
        let pipeline = pipeline.to_string();
        let rows = self
            .with(move |c| {
                let mut st = c.prepare(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE pipeline = ?1 ORDER BY id DESC LIMIT ?2"
                ))?;
                st.query_map(params![pipeline, limit as i64], event_row)?.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn save_run(&self, run: &RunRecord) -> StateResult<()> {
        let r = RunRow::from_record(run)?;
        self.with(move |c| {
            c.execute(
                &format!("INSERT OR REPLACE INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
                params![
                    r.id, r.pipeline, r.env, r.event_id, r.trigger, r.params, r.status, r.attempt, r.worker,
                    r.started_at, r.finished_at, r.error, r.steps, r.lane, r.fence, r.code
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn get_run(&self, id: &str) -> StateResult<RunRecord> {
        let prefix = format!("{}%", id.replace(['%', '_'], ""));
        let rows = self
            .with(move |c| {
                let mut st = c.prepare(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE id LIKE ?1 LIMIT 2"
                ))?;
                st.query_map(params![prefix], run_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        single_run(id, rows)
    }

    async fn list_runs(&self, filter: &RunFilter) -> StateResult<Vec<RunRecord>> {
        let pipeline = filter.pipeline.clone();
        let status = filter.status.map(|s| s.as_str().to_string());
        let limit = if filter.limit == 0 { 50 } else { filter.limit } as i64;
        let rows = self
            .with(move |c| {
                let mut st = c.prepare(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR pipeline = ?1) AND (?2 IS NULL OR status = ?2) ORDER BY started_at DESC, id DESC LIMIT ?3"
                ))?;
                st.query_map(params![pipeline, status, limit], run_row)?.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().map(RunRow::into_record).collect()
    }

    async fn abandon_runs(&self, fence: &Fence, why: &str) -> StateResult<u64> {
        let (f, why) = (fence.clone(), why.to_string());
        self.with_fence(fence, move |tx| {
            tx.execute(
                &format!(
                    "UPDATE runs SET status = 'abandoned', finished_at = {NOW}, error = ?3
                     WHERE status = 'running' AND COALESCE(lane, pipeline) = ?1 AND COALESCE(fence, 0) < ?2"
                ),
                params![f.lease, f.token, why],
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn get_watermark(&self, pipeline: &str, name: &str) -> StateResult<Option<Value>> {
        let (p, n) = (pipeline.to_string(), name.to_string());
        let text: Option<String> = self
            .with(move |c| {
                c.query_row(
                    "SELECT value FROM watermarks WHERE pipeline = ?1 AND name = ?2",
                    params![p, n],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        text.as_deref().map(parse_json).transpose()
    }

    async fn set_watermark(
        &self,
        pipeline: &str,
        name: &str,
        value: &Value,
        fence: &Fence,
    ) -> StateResult<()> {
        let (p, n, v) = (pipeline.to_string(), name.to_string(), json_text(value));
        self.with_fence(fence, move |tx| {
            tx.execute(
                &format!("INSERT INTO watermarks (pipeline, name, value, updated_at) VALUES (?1, ?2, ?3, {NOW}) ON CONFLICT (pipeline, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"),
                params![p, n, v],
            )
            .map(|_| ())
        })
        .await
    }

    async fn ledger_list(
        &self,
        scope: &str,
        prefix: &str,
    ) -> StateResult<HashMap<String, LedgerEntry>> {
        let (scope, prefix) = (scope.to_string(), prefix.to_string());
        let rows: Vec<(String, String, String, i64)> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT key, fingerprint, detail, recorded_at FROM object_ledger WHERE scope = ?1 AND substr(key, 1, length(?2)) = ?2",
                )?;
                st.query_map(params![scope, prefix], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect()
            })
            .await?;
        rows.into_iter()
            .map(|(key, fingerprint, detail, at)| {
                Ok((
                    key.clone(),
                    LedgerEntry {
                        key,
                        fingerprint,
                        detail: parse_json(&detail)?,
                        recorded_at: from_ms(at),
                    },
                ))
            })
            .collect()
    }

    async fn ledger_put(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        detail: &Value,
        fence: &Fence,
    ) -> StateResult<()> {
        let (s, k, f, d) = (
            scope.to_string(),
            key.to_string(),
            fingerprint.to_string(),
            json_text(detail),
        );
        self.with_fence(fence, move |tx| {
            tx.execute(
                &format!("INSERT INTO object_ledger (scope, key, fingerprint, detail, recorded_at) VALUES (?1, ?2, ?3, ?4, {NOW}) ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, detail = excluded.detail, recorded_at = excluded.recorded_at"),
                params![s, k, f, d],
            )
            .map(|_| ())
        })
        .await
    }

    async fn kv_get(&self, key: &str) -> StateResult<Option<KvEntry>> {
        let key = key.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT key, value, revision, updated_at FROM kv WHERE key = ?1",
                params![key],
                kv_row,
            )
            .optional()
        })
        .await
    }

    async fn kv_set(&self, key: &str, value: &str) -> StateResult<i64> {
        let (key, value) = (key.to_string(), value.to_string());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let rev: i64 =
                tx.query_row("UPDATE kv_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision", [], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO kv (key, value, revision, updated_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision, updated_at = excluded.updated_at",
                params![key, value, rev, ms(Utc::now())],
            )?;
            tx.execute(
                "INSERT INTO kv_history (key, value, revision, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![key, value, rev, ms(Utc::now())],
            )?;
            tx.commit()?;
            Ok(rev)
        })
        .await
    }

    async fn kv_history(&self, key: &str, after: i64, limit: usize) -> StateResult<Vec<KvEntry>> {
        let key = key.to_string();
        self.with(move |c| {
            let mut st = c.prepare(
                "SELECT key, value, revision, updated_at FROM kv_history WHERE key = ?1 AND revision > ?2 ORDER BY revision LIMIT ?3",
            )?;
            st.query_map(params![key, after, limit as i64], kv_row)?.collect()
        })
        .await
    }

    async fn kv_list(&self, prefix: &str) -> StateResult<Vec<KvEntry>> {
        let prefix = prefix.to_string();
        self.with(move |c| {
            let mut st = c.prepare(
                "SELECT key, value, revision, updated_at FROM kv WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
            )?;
            st.query_map(params![prefix], kv_row)?.collect()
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> StateResult<Option<Fence>> {
        let (name, holder, ttl) = (name.to_string(), holder.to_string(), ttl_ms(ttl));
        let token: Option<i64> = self
            .with({
                let (name, holder) = (name.clone(), holder.clone());
                move |c| {
                    c.query_row(
                        &format!(
                            "INSERT INTO leases AS l (name, holder, expires_at, token) VALUES (?1, ?2, {NOW} + ?3, {NOW})
                             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,
                               token = max(l.token + 1, excluded.token)
                             WHERE l.expires_at <= {NOW}
                             RETURNING token"
                        ),
                        params![name, holder, ttl],
                        |r| r.get(0),
                    )
                    .optional()
                }
            })
            .await?;
        Ok(token.map(|token| Fence {
            lease: name,
            holder,
            token,
        }))
    }

    async fn renew_lease(&self, fence: &Fence, ttl: Duration) -> StateResult<bool> {
        let (f, ttl) = (fence.clone(), ttl_ms(ttl));
        self.with(move |c| {
            let n = c.execute(
                &format!(
                    "UPDATE leases SET expires_at = {NOW} + ?4 WHERE name = ?1 AND holder = ?2 AND token = ?3 AND expires_at > {NOW}"
                ),
                params![f.lease, f.holder, f.token, ttl],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn release_lease(&self, fence: &Fence) -> StateResult<()> {
        let f = fence.clone();
        // The row stays: its token is where the next one counts from.
        self.with(move |c| {
            c.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = ?1 AND holder = ?2 AND token = ?3",
                params![f.lease, f.holder, f.token],
            )
            .map(|_| ())
        })
        .await
    }

    async fn get_lease(&self, name: &str) -> StateResult<Option<Lease>> {
        let name = name.to_string();
        self.with(move |c| {
            c.query_row(
                &format!(
                    "SELECT name, holder, expires_at, token, expires_at > {NOW} FROM leases WHERE name = ?1"
                ),
                params![name],
                |r| {
                    Ok(Lease {
                        name: r.get(0)?,
                        holder: r.get(1)?,
                        expires_at: from_ms(r.get(2)?),
                        token: r.get(3)?,
                        live: r.get(4)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn prune(&self, before: DateTime<Utc>) -> StateResult<Pruned> {
        let cutoff = ms(before);
        let n = self
            .with(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut n = [0u64; 4];
                for (i, sql) in [
                "DELETE FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1 AND id <> (SELECT r2.id FROM runs r2 WHERE r2.pipeline = runs.pipeline ORDER BY r2.started_at DESC, r2.id DESC LIMIT 1)",
                "DELETE FROM events WHERE status IN ('done', 'failed') AND created_at < ?1 AND kind IN ('schedule', 'watch', 'manual')",
                "DELETE FROM object_ledger WHERE recorded_at < ?1 AND scope NOT LIKE '%/inputs'",
                "DELETE FROM kv_history WHERE updated_at < ?1 AND revision < (SELECT max(h2.revision) FROM kv_history h2 WHERE h2.key = kv_history.key)",
                ]
                .into_iter()
                .enumerate()
                {
                    n[i] = tx.execute(sql, params![cutoff])? as u64;
                }
                tx.commit()?;
                Ok(n)
            })
            .await?;
        Ok(Pruned {
            runs: n[0],
            events: n[1],
            ledger_entries: n[2],
            kv_revisions: n[3],
        })
    }

    async fn publish_dataset(
        &self,
        name: &str,
        version: &str,
        location: &str,
        meta: &Value,
    ) -> StateResult<()> {
        let (n, v, l, m) = (
            name.to_string(),
            version.to_string(),
            location.to_string(),
            json_text(meta),
        );
        self.with(move |c| {
            c.execute(
                "INSERT INTO datasets (name, version, location, meta, published_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name, version) DO UPDATE SET location = excluded.location, meta = excluded.meta",
                params![n, v, l, m, ms(Utc::now())],
            )
            .map(|_| ())
        })
        .await
    }

    async fn list_datasets(&self, name: &str) -> StateResult<Vec<Dataset>> {
        let name = name.to_string();
        let rows: Vec<(String, String, String, String, i64)> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT name, version, location, meta, published_at FROM datasets WHERE name = ?1 ORDER BY published_at DESC, version DESC",
                )?;
                st.query_map(params![name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(name, version, location, meta, at)| {
                Ok(Dataset {
                    name,
                    version,
                    location,
                    meta: parse_json(&meta)?,
                    published_at: from_ms(at),
                })
            })
            .collect()
    }
}

fn kv_row(r: &Row<'_>) -> rusqlite::Result<KvEntry> {
    Ok(KvEntry {
        key: r.get(0)?,
        value: r.get(1)?,
        revision: r.get(2)?,
        updated_at: Some(from_ms(r.get(3)?)),
    })
}

pub(crate) fn single_run(id: &str, mut rows: Vec<RunRow>) -> StateResult<RunRecord> {
    match rows.len() {
        0 => Err(StateError::RunNotFound(id.to_string())),
        1 => rows.remove(0).into_record(),
        _ => Err(StateError::Ambiguous(id.to_string())),
    }
}
