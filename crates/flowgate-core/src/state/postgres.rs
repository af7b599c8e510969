//! PostgreSQL backend: shared by many workers. Claims use `FOR UPDATE SKIP LOCKED`,
//! the ledger's uniqueness is a unique index, and every lease is judged by the
//! database's clock (`clock_timestamp()`), never by a worker's. A write made under a
//! lease checks it in the same statement, holding its row `FOR SHARE` so that no
//! one can take the lease over until the write has committed.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio_postgres::Row;

use super::rows::{EVENT_COLUMNS, EventRow, RUN_COLUMNS, RunRow, json_text, parse_json};
use super::sqlite::single_run;
use super::*;

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE flowgate.events (
  id BIGSERIAL PRIMARY KEY,
  pipeline TEXT NOT NULL, kind TEXT NOT NULL, dedupe_key TEXT NOT NULL, payload TEXT NOT NULL,
  status TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, run_id TEXT, claimed_by TEXT,
  lease_until BIGINT, created_at BIGINT NOT NULL,
  UNIQUE (pipeline, dedupe_key));
CREATE INDEX events_pending ON flowgate.events (pipeline, status, id);
CREATE TABLE flowgate.runs (
  id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, env TEXT, event_id BIGINT, trigger TEXT NOT NULL,
  params TEXT NOT NULL, status TEXT NOT NULL, attempt BIGINT NOT NULL, worker TEXT NOT NULL,
  started_at BIGINT NOT NULL, finished_at BIGINT, error TEXT, steps TEXT NOT NULL);
CREATE INDEX runs_by_pipeline ON flowgate.runs (pipeline, started_at);
CREATE TABLE flowgate.watermarks (
  pipeline TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, updated_at BIGINT NOT NULL,
  PRIMARY KEY (pipeline, name));
CREATE TABLE flowgate.object_ledger (
  scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, detail TEXT NOT NULL,
  recorded_at BIGINT NOT NULL, PRIMARY KEY (scope, key));
CREATE TABLE flowgate.kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, revision BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE SEQUENCE flowgate.kv_revision;
CREATE TABLE flowgate.leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at BIGINT NOT NULL);
CREATE TABLE flowgate.datasets (
  name TEXT NOT NULL, version TEXT NOT NULL, location TEXT NOT NULL, meta TEXT NOT NULL,
  published_at BIGINT NOT NULL, PRIMARY KEY (name, version));
"#,
    ),
    (
        2,
        r#"
ALTER TABLE flowgate.events ADD COLUMN lane TEXT, ADD COLUMN claim_token BIGINT;
UPDATE flowgate.events SET lane = pipeline;
ALTER TABLE flowgate.events ALTER COLUMN lane SET NOT NULL;
CREATE INDEX events_by_lane ON flowgate.events (lane, status, id);
ALTER TABLE flowgate.runs ADD COLUMN lane TEXT, ADD COLUMN fence BIGINT;
CREATE INDEX runs_running ON flowgate.runs (pipeline) WHERE status = 'running';
ALTER TABLE flowgate.leases ADD COLUMN token BIGINT NOT NULL DEFAULT 0;
"#,
    ),
    (
        3,
        r#"
CREATE TABLE flowgate.kv_history (key TEXT NOT NULL, value TEXT NOT NULL, revision BIGINT NOT NULL,
  updated_at BIGINT NOT NULL, PRIMARY KEY (key, revision));
INSERT INTO flowgate.kv_history SELECT key, value, revision, updated_at FROM flowgate.kv;
"#,
    ),
    (4, "ALTER TABLE flowgate.runs ADD COLUMN code TEXT;"),
];

/// The database's clock in milliseconds since the epoch.
const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// `WITH fence AS (…)`: the lease row of a fence, locked `FOR SHARE`, when its
/// claim is still held; its three parameters (lease, holder, token) are `$at`…
fn fence_cte(at: usize) -> String {
    format!(
        "WITH fence AS (SELECT 1 FROM flowgate.leases WHERE name = ${} AND holder = ${} AND token = ${} AND expires_at > {NOW} FOR SHARE)",
        at,
        at + 1,
        at + 2
    )
}

/// Arbitrary constant: the advisory lock that serialises migrations between workers.
const MIGRATION_LOCK: i64 = 0x666c_6f77_6761_7465;

/// The PostgreSQL state store.
pub struct PostgresState {
    pool: Pool,
    described: String,
}

fn pg<E: std::fmt::Display>(e: E) -> StateError {
    StateError::Postgres(crate::secret::redact(&e.to_string()))
}

fn pg_err(e: tokio_postgres::Error) -> StateError {
    // The Display of a server error is only "db error"; the detail is in the source.
    match e.as_db_error() {
        Some(db) => StateError::Postgres(crate::secret::redact(&format!(
            "{}: {}",
            db.code().code(),
            db.message()
        ))),
        None => StateError::Postgres(crate::error::chain(&e)),
    }
}

impl PostgresState {
    pub async fn connect(url: &str) -> StateResult<PostgresState> {
        let (config, tls) = crate::pg::connect_params(url)
            .map_err(|e| StateError::Postgres(format!("the state store URL: {e}")))?;
        let described = describe_url(url);
        let mgr = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr).max_size(8).build().map_err(pg)?;
        let state = PostgresState { pool, described };
        state.migrate().await?;
        Ok(state)
    }

    async fn client(&self) -> StateResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| {
            let text = crate::error::chain(&e);
            StateError::Postgres(format!(
                "cannot connect to {}: {text}{}",
                self.described,
                crate::pg::advice(&e)
            ))
        })
    }

    async fn migrate(&self) -> StateResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS flowgate; CREATE TABLE IF NOT EXISTS flowgate.migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(pg_err)?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM flowgate.migrations",
                &[],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        for (version, sql) in MIGRATIONS {
            if *version > current {
                tx.batch_execute(sql).await.map_err(pg_err)?;
                tx.execute(
                    "INSERT INTO flowgate.migrations VALUES ($1, $2)",
                    &[version, &ms(Utc::now())],
                )
                .await
                .map_err(pg_err)?;
            }
        }
        tx.commit().await.map_err(pg_err)
    }

    /// Claim the event `condition` picks (parameters `$1`–`$3` are the fence, then
    /// `args`), under the fence.
    async fn claim_under(
        &self,
        fence: &Fence,
        condition: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StateResult<Option<TriggerEvent>> {
        let client = self.client().await?;
        let sql = format!(
            "{} UPDATE flowgate.events SET status = 'claimed', claimed_by = $2, claim_token = $3, lease_until = NULL, attempts = attempts + 1
             WHERE id = (SELECT id FROM flowgate.events WHERE lane = $1 AND ({condition})
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
               AND EXISTS (SELECT 1 FROM fence)
             RETURNING {EVENT_COLUMNS}",
            fence_cte(1)
        );
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&fence.lease, &fence.holder, &fence.token];
        params.extend_from_slice(args);
        let row = client.query_opt(&sql, &params).await.map_err(pg_err)?;
        row.map(|r| event_row(&r)?.into_event()).transpose()
    }

    /// Run a statement whose parameters end with a fence (`fence_cte(n)` inside
    /// it); `Fenced` when it changed no row because the claim is gone.
    async fn execute_fenced(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        fence: &Fence,
    ) -> StateResult<u64> {
        let client = self.client().await?;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args.to_vec();
        params.extend_from_slice(&[&fence.lease, &fence.holder, &fence.token]);
        let n = client.execute(sql, &params).await.map_err(pg_err)?;
        if n == 0 {
            return Err(StateError::Fenced(fence.lease.clone()));
        }
        Ok(n)
    }
}

/// `postgres://user:***@host:port/db?…` → `postgres://host:port/db`: no user,
/// password or parameters. Also for what the `url` crate cannot parse but
/// PostgreSQL reads (a socket directory as `postgres://u@/db?host=/run/pg`,
/// several hosts with ports).
fn describe_url(url: &str) -> String {
    match crate::secret::UrlParts::of(url) {
        Some(p) => format!("{}://{}", p.scheme, p.place),
        None => "postgres://…".to_string(),
    }
}

fn event_row(r: &Row) -> StateResult<EventRow> {
    Ok(EventRow {
        id: r.try_get(0).map_err(pg_err)?,
        pipeline: r.try_get(1).map_err(pg_err)?,
        kind: r.try_get(2).map_err(pg_err)?,
        dedupe_key: r.try_get(3).map_err(pg_err)?,
        payload: r.try_get(4).map_err(pg_err)?,
        status: r.try_get(5).map_err(pg_err)?,
        attempts: r.try_get(6).map_err(pg_err)?,
        run_id: r.try_get(7).map_err(pg_err)?,
        claimed_by: r.try_get(8).map_err(pg_err)?,
        lane: r.try_get(9).map_err(pg_err)?,
        claim_token: r.try_get(10).map_err(pg_err)?,
        created_at: r.try_get(11).map_err(pg_err)?,
    })
}

fn run_row(r: &Row) -> StateResult<RunRow> {
    Ok(RunRow {
        id: r.try_get(0).map_err(pg_err)?,
        pipeline: r.try_get(1).map_err(pg_err)?,
        env: r.try_get(2).map_err(pg_err)?,
        event_id: r.try_get(3).map_err(pg_err)?,
        trigger: r.try_get(4).map_err(pg_err)?,
        params: r.try_get(5).map_err(pg_err)?,
        status: r.try_get(6).map_err(pg_err)?,
        attempt: r.try_get(7).map_err(pg_err)?,
        worker: r.try_get(8).map_err(pg_err)?,
        started_at: r.try_get(9).map_err(pg_err)?,
        finished_at: r.try_get(10).map_err(pg_err)?,
        error: r.try_get(11).map_err(pg_err)?,
        steps: r.try_get(12).map_err(pg_err)?,
        lane: r.try_get(13).map_err(pg_err)?,
        fence: r.try_get(14).map_err(pg_err)?,
        code: r.try_get(15).map_err(pg_err)?,
    })
}

fn kv_row(r: &Row) -> StateResult<KvEntry> {
    Ok(KvEntry {
        key: r.try_get(0).map_err(pg_err)?,
        value: r.try_get(1).map_err(pg_err)?,
        revision: r.try_get(2).map_err(pg_err)?,
        updated_at: Some(from_ms(r.try_get(3).map_err(pg_err)?)),
    })
}

/// No manual event older than the candidate waits for the lane: a lane serves
/// first come, first served (see
/// `StateStore::wait_for_lane`).
fn no_older_waiter() -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM flowgate.events w WHERE w.lane = $1 AND w.kind = 'manual' \
         AND w.status = 'pending' AND w.lease_until > {NOW} AND w.id < events.id)"
    )
}

#[async_trait::async_trait]
impl StateStore for PostgresState {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn now(&self) -> StateResult<DateTime<Utc>> {
        let client = self.client().await?;
        let row = client
            .query_one(&format!("SELECT {NOW}"), &[])
            .await
            .map_err(pg_err)?;
        Ok(from_ms(row.get(0)))
    }

    async fn record_event(&self, event: NewEvent) -> StateResult<Recorded> {
        let client = self.client().await?;
        let inserted = client
            .query_opt(
                &format!(
                    "INSERT INTO flowgate.events (pipeline, lane, kind, dedupe_key, payload, status, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', {NOW}) ON CONFLICT (pipeline, dedupe_key) DO NOTHING RETURNING {EVENT_COLUMNS}"
                ),
                &[&event.pipeline, &event.lane, &event.kind, &event.dedupe_key, &json_text(&event.payload)],
            )
            .await
            .map_err(pg_err)?;
        if let Some(row) = inserted {
            return Ok(Recorded::New(event_row(&row)?.into_event()?));
        }
        let row = client
            .query_one(
                &format!("SELECT {EVENT_COLUMNS} FROM flowgate.events WHERE pipeline = $1 AND dedupe_key = $2"),
                &[&event.pipeline, &event.dedupe_key],
            )
            .await
            .map_err(pg_err)?;
        Ok(Recorded::Duplicate(event_row(&row)?.into_event()?))
    }

    async fn open_lanes(&self, pipeline: &str) -> StateResult<Vec<String>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT lane FROM flowgate.events WHERE pipeline = $1
                   AND ((status = 'pending' AND kind <> 'manual') OR status = 'claimed')
                 GROUP BY lane ORDER BY min(id)",
                &[&pipeline],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn claim_event(&self, fence: &Fence) -> StateResult<Option<TriggerEvent>> {
        self.claim_under(
            fence,
            &format!("kind <> 'manual' AND (status = 'pending' OR (status = 'claimed' AND COALESCE(claim_token, 0) < $3)) AND {}", no_older_waiter()),
            &[],
        )
        .await
    }

    async fn wait_for_lane(&self, id: i64, ttl: Duration) -> StateResult<()> {
        let client = self.client().await?;
        client
            .execute(
                &format!("UPDATE flowgate.events SET lease_until = {NOW} + $2 WHERE id = $1 AND status = 'pending'"),
                &[&id, &ttl_ms(ttl)],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn claim_event_id(
        &self,
        id: i64,
        fence: &Fence,
        retry_failed: bool,
    ) -> StateResult<Option<TriggerEvent>> {
        self.claim_under(
            fence,
            &format!("id = $4 AND (status = 'pending' OR (status = 'claimed' AND COALESCE(claim_token, 0) < $3) OR ($5 AND status = 'failed')) AND (kind = 'manual' OR {})", no_older_waiter()),
            &[&id, &retry_failed],
        )
        .await
    }

    async fn close_lost_manual(&self, fence: &Fence) -> StateResult<u64> {
        let client = self.client().await?;
        let sql = format!(
            "{} UPDATE flowgate.events SET status = 'failed' WHERE lane = $1 AND kind = 'manual' AND status = 'claimed'
               AND COALESCE(claim_token, 0) < $3 AND EXISTS (SELECT 1 FROM fence)",
            fence_cte(1)
        );
        client
            .execute(&sql, &[&fence.lease, &fence.holder, &fence.token])
            .await
            .map_err(pg_err)
    }

    async fn finish_event(
        &self,
        id: i64,
        status: EventStatus,
        run_id: &str,
        fence: &Fence,
    ) -> StateResult<()> {
        let sql = format!(
            "{} UPDATE flowgate.events SET status = $1, run_id = $2, lease_until = NULL
             WHERE id = $3 AND claim_token = $6 AND EXISTS (SELECT 1 FROM fence)",
            fence_cte(4)
        );
        self.execute_fenced(&sql, &[&status.as_str(), &run_id, &id], fence)
            .await?;
        Ok(())
    }

    async fn record_skipped(&self, event: NewEvent, run: &RunRecord) -> StateResult<bool> {
        let client = self.client().await?;
        let id: Option<i64> = client
            .query_opt(
                &format!(
                    "INSERT INTO flowgate.events (pipeline, lane, kind, dedupe_key, payload, status, run_id, created_at)
                     VALUES ($1, $2, $3, $4, $5, 'done', $6, {NOW}) ON CONFLICT (pipeline, dedupe_key) DO NOTHING RETURNING id"
                ),
                &[&event.pipeline, &event.lane, &event.kind, &event.dedupe_key, &json_text(&event.payload), &run.id],
            )
            .await
            .map_err(pg_err)?
            .map(|r| r.get(0));
        let Some(id) = id else { return Ok(false) };
        let mut run = run.clone();
        run.event_id = Some(id);
        drop(client);
        self.save_run(&run).await?;
        Ok(true)
    }

    async fn get_event(&self, id: i64) -> StateResult<Option<TriggerEvent>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {EVENT_COLUMNS} FROM flowgate.events WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| event_row(&r)?.into_event()).transpose()
    }

    async fn list_events(&self, pipeline: &str, limit: usize) -> StateResult<Vec<TriggerEvent>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {EVENT_COLUMNS} FROM flowgate.events WHERE pipeline = $1 ORDER BY id DESC LIMIT $2"),
                &[&pipeline, &(limit as i64)],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(|r| event_row(r)?.into_event()).collect()
    }

    async fn save_run(&self, run: &RunRecord) -> StateResult<()> {
        let r = RunRow::from_record(run)?;
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "INSERT INTO flowgate.runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                     ON CONFLICT (id) DO UPDATE SET status = excluded.status, attempt = excluded.attempt, worker = excluded.worker,
                       finished_at = excluded.finished_at, error = excluded.error, steps = excluded.steps, params = excluded.params,
                       lane = excluded.lane, fence = excluded.fence, code = excluded.code"
                ),
                &[
                    &r.id, &r.pipeline, &r.env, &r.event_id, &r.trigger, &r.params, &r.status, &r.attempt, &r.worker,
                    &r.started_at, &r.finished_at, &r.error, &r.steps, &r.lane, &r.fence, &r.code,
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn get_run(&self, id: &str) -> StateResult<RunRecord> {
        let client = self.client().await?;
        let prefix = format!("{}%", id.replace(['%', '_'], ""));
        let rows = client
            .query(
                &format!("SELECT {RUN_COLUMNS} FROM flowgate.runs WHERE id LIKE $1 LIMIT 2"),
                &[&prefix],
            )
            .await
            .map_err(pg_err)?;
        let rows = rows.iter().map(run_row).collect::<StateResult<Vec<_>>>()?;
        single_run(id, rows)
    }

    async fn list_runs(&self, filter: &RunFilter) -> StateResult<Vec<RunRecord>> {
        let client = self.client().await?;
        let status = filter.status.map(|s| s.as_str().to_string());
        let limit = if filter.limit == 0 { 50 } else { filter.limit } as i64;
        let rows = client
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM flowgate.runs WHERE ($1::TEXT IS NULL OR pipeline = $1) AND ($2::TEXT IS NULL OR status = $2) ORDER BY started_at DESC, id DESC LIMIT $3"
                ),
                &[&filter.pipeline, &status, &limit],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(|r| run_row(r)?.into_record()).collect()
    }

    async fn abandon_runs(&self, fence: &Fence, why: &str) -> StateResult<u64> {
        let client = self.client().await?;
        let sql = format!(
            "{} UPDATE flowgate.runs SET status = 'abandoned', finished_at = {NOW}, error = $4
             WHERE status = 'running' AND COALESCE(lane, pipeline) = $1 AND COALESCE(fence, 0) < $3
               AND EXISTS (SELECT 1 FROM fence)",
            fence_cte(1)
        );
        client
            .execute(&sql, &[&fence.lease, &fence.holder, &fence.token, &why])
            .await
            .map_err(pg_err)
    }

    async fn get_watermark(&self, pipeline: &str, name: &str) -> StateResult<Option<Value>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT value FROM flowgate.watermarks WHERE pipeline = $1 AND name = $2",
                &[&pipeline, &name],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| parse_json(r.get::<_, &str>(0))).transpose()
    }

    async fn set_watermark(
        &self,
        pipeline: &str,
        name: &str,
        value: &Value,
        fence: &Fence,
    ) -> StateResult<()> {
        let sql = format!(
            "{} INSERT INTO flowgate.watermarks (pipeline, name, value, updated_at)
             SELECT $1::text, $2::text, $3::text, {NOW} FROM fence
             ON CONFLICT (pipeline, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            fence_cte(4)
        );
        self.execute_fenced(&sql, &[&pipeline, &name, &json_text(value)], fence)
            .await?;
        Ok(())
    }

    async fn ledger_list(
        &self,
        scope: &str,
        prefix: &str,
    ) -> StateResult<HashMap<String, LedgerEntry>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key, fingerprint, detail, recorded_at FROM flowgate.object_ledger WHERE scope = $1 AND left(key, length($2)) = $2",
                &[&scope, &prefix],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                Ok((
                    key.clone(),
                    LedgerEntry {
                        key,
                        fingerprint: r.get(1),
                        detail: parse_json(r.get::<_, &str>(2))?,
                        recorded_at: from_ms(r.get(3)),
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
        let sql = format!(
            "{} INSERT INTO flowgate.object_ledger (scope, key, fingerprint, detail, recorded_at)
             SELECT $1::text, $2::text, $3::text, $4::text, {NOW} FROM fence
             ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, detail = excluded.detail, recorded_at = excluded.recorded_at",
            fence_cte(5)
        );
        self.execute_fenced(
            &sql,
            &[&scope, &key, &fingerprint, &json_text(detail)],
            fence,
        )
        .await?;
        Ok(())
    }

    async fn kv_get(&self, key: &str) -> StateResult<Option<KvEntry>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT key, value, revision, updated_at FROM flowgate.kv WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(pg_err)?;
        row.map(|r| kv_row(&r)).transpose()
    }

    async fn kv_set(&self, key: &str, value: &str) -> StateResult<i64> {
        let client = self.client().await?;
        // The value and its place in the key's history, in one statement.
        let row = client
            .query_one(
                &format!(
                    "WITH r AS (SELECT nextval('flowgate.kv_revision') AS rev),
                     h AS (INSERT INTO flowgate.kv_history (key, value, revision, updated_at) SELECT $1, $2, rev, {NOW} FROM r)
                     INSERT INTO flowgate.kv (key, value, revision, updated_at) SELECT $1, $2, rev, {NOW} FROM r
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision, updated_at = excluded.updated_at
                     RETURNING revision"
                ),
                &[&key, &value],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }

    async fn kv_history(&self, key: &str, after: i64, limit: usize) -> StateResult<Vec<KvEntry>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key, value, revision, updated_at FROM flowgate.kv_history WHERE key = $1 AND revision > $2 ORDER BY revision LIMIT $3",
                &[&key, &after, &(limit as i64)],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(kv_row).collect()
    }

    async fn kv_list(&self, prefix: &str) -> StateResult<Vec<KvEntry>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key, value, revision, updated_at FROM flowgate.kv WHERE left(key, length($1)) = $1 ORDER BY key",
                &[&prefix],
            )
            .await
            .map_err(pg_err)?;
        rows.iter().map(kv_row).collect()
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> StateResult<Option<Fence>> {
        let client = self.client().await?;
        // A new token is larger than the lease's last one and than the clock, so
        // tokens keep growing even for a state store started afresh.
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO flowgate.leases AS l (name, holder, expires_at, token) VALUES ($1, $2, {NOW} + $3, {NOW})
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,
                       token = GREATEST(l.token + 1, excluded.token)
                     WHERE l.expires_at <= {NOW}
                     RETURNING token"
                ),
                &[&name, &holder, &ttl_ms(ttl)],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| Fence {
            lease: name.to_string(),
            holder: holder.to_string(),
            token: r.get(0),
        }))
    }

    async fn renew_lease(&self, fence: &Fence, ttl: Duration) -> StateResult<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                &format!(
                    "UPDATE flowgate.leases SET expires_at = {NOW} + $4
                     WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > {NOW}"
                ),
                &[&fence.lease, &fence.holder, &fence.token, &ttl_ms(ttl)],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    async fn release_lease(&self, fence: &Fence) -> StateResult<()> {
        let client = self.client().await?;
        // The row stays: its token is where the next one counts from.
        client
            .execute(
                "UPDATE flowgate.leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3",
                &[&fence.lease, &fence.holder, &fence.token],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn get_lease(&self, name: &str) -> StateResult<Option<Lease>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT name, holder, expires_at, token, expires_at > {NOW} FROM flowgate.leases WHERE name = $1"
                ),
                &[&name],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| Lease {
            name: r.get(0),
            holder: r.get(1),
            expires_at: from_ms(r.get(2)),
            token: r.get(3),
            live: r.get(4),
        }))
    }

    async fn prune(&self, before: DateTime<Utc>) -> StateResult<Pruned> {
        let client = self.client().await?;
        let mut pruned = Pruned::default();
        for (what, sql) in [
            (
                "runs",
                "DELETE FROM flowgate.runs WHERE finished_at IS NOT NULL AND finished_at < $1 AND id <> (SELECT r2.id FROM flowgate.runs r2 WHERE r2.pipeline = flowgate.runs.pipeline ORDER BY r2.started_at DESC, r2.id DESC LIMIT 1)",
            ),
            (
                "events",
                "DELETE FROM flowgate.events WHERE status IN ('done', 'failed') AND created_at < $1 AND kind IN ('schedule', 'watch', 'manual')",
            ),
            (
                "ledger_entries",
                "DELETE FROM flowgate.object_ledger WHERE recorded_at < $1 AND scope NOT LIKE '%/inputs'",
            ),
            (
                "kv_revisions",
                "DELETE FROM flowgate.kv_history WHERE updated_at < $1 AND revision < (SELECT max(h2.revision) FROM flowgate.kv_history h2 WHERE h2.key = flowgate.kv_history.key)",
            ),
        ] {
            let n = client.execute(sql, &[&ms(before)]).await.map_err(pg_err)?;
            match what {
                "runs" => pruned.runs = n,
                "events" => pruned.events = n,
                "ledger_entries" => pruned.ledger_entries = n,
                _ => pruned.kv_revisions = n,
            }
        }
        Ok(pruned)
    }

    async fn publish_dataset(
        &self,
        name: &str,
        version: &str,
        location: &str,
        meta: &Value,
    ) -> StateResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO flowgate.datasets (name, version, location, meta, published_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, version) DO UPDATE SET location = excluded.location, meta = excluded.meta",
                &[&name, &version, &location, &json_text(meta), &ms(Utc::now())],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn list_datasets(&self, name: &str) -> StateResult<Vec<Dataset>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, version, location, meta, published_at FROM flowgate.datasets WHERE name = $1 ORDER BY published_at DESC, version DESC",
                &[&name],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(Dataset {
                    name: r.get(0),
                    version: r.get(1),
                    location: r.get(2),
                    meta: parse_json(r.get::<_, &str>(3))?,
                    published_at: from_ms(r.get(4)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::describe_url;

    #[test]
    fn a_described_url_shows_where_but_no_credentials_or_parameters() {
        for (url, shown) in [
            (
                "postgres://u:p%40ss@db.example:5433/state?sslmode=require&password=x",
                "postgres://db.example:5433/state",
            ),
            ("postgres://u:a/b@c@h/db", "postgres://h/db"),
            ("postgres://u@/db?host=/run/postgresql", "postgres:///db"),
            (
                "postgresql://h1:5432,h2:5433/db",
                "postgresql://h1:5432,h2:5433/db",
            ),
        ] {
            assert_eq!(describe_url(url), shown, "{url}");
        }
    }
}
