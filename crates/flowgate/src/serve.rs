//! `flowgate serve DIR`: every trigger of every pipeline, plus an HTTP endpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flowgate_core::engine::Engine;
use flowgate_core::plan::{Plan, plan_file};
use flowgate_core::state::{RunFilter, RunStatus, StateStore};
use flowgate_core::stream::metrics::label;

use crate::cli::{exit, stop_on_signals};

/// Pipeline files in `dir`: `*.toml` and `*/pipeline.toml`, sorted.
pub fn pipeline_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = entry?.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "toml") {
            files.push(p);
        } else if p.is_dir() && p.join("pipeline.toml").is_file() {
            files.push(p.join("pipeline.toml"));
        }
    }
    files.sort();
    Ok(files)
}

#[derive(Clone)]
struct App {
    state: Arc<dyn StateStore>,
    plans: Arc<Vec<Plan>>,
    engine: Arc<Engine>,
    /// The consumer groups of the streams served (their `/metrics` labels).
    streams: Arc<Vec<String>>,
}

pub async fn serve(
    dir: &Path,
    param_sets: &[std::collections::BTreeMap<String, String>],
    listen: &str,
    state_url: &Option<String>,
    env: &Option<String>,
    lease_ttl: std::time::Duration,
    retention: Option<std::time::Duration>,
) -> Result<u8> {
    let files = pipeline_files(dir)?;
    if files.is_empty() {
        eprintln!(
            "error: no pipeline files in {} (looked for *.toml and */pipeline.toml)",
            dir.display()
        );
        return Ok(exit::USAGE);
    }
    let mut plans = Vec::new();
    let mut bad = 0;
    for f in &files {
        match plan_file(
            f,
            &flowgate_core::config::LoadOptions {
                env: env.clone(),
                vars: Default::default(),
            },
        ) {
            Ok(p) => plans.push(p),
            Err(diags) => {
                bad += diags.len();
                for d in diags {
                    eprintln!("{d}");
                }
            }
        }
    }
    if bad > 0 {
        eprintln!("{bad} error(s): fix the pipeline files before serving");
        return Ok(exit::USAGE);
    }
    // Each stream is checked before anything starts: a missing variable is a
    // usage error now, not a crash loop later.
    // One stream per set of parameters (`-p domain=A -p domain=B`).
    let mut prepared = Vec::new();
    for p in &plans {
        for params in param_sets {
            match flowgate_core::stream::prepare(p, params) {
                Ok(Some(ready)) => prepared.push((p.clone(), ready)),
                Ok(None) => {}
                Err(e) => {
                    let with = crate::cli::given(params)
                        .map(|g| format!(" ({g})"))
                        .unwrap_or_default();
                    eprintln!("error: {}{with}: {e}", p.file.display());
                    return Ok(exit::USAGE);
                }
            }
        }
    }
    let home = if dir.is_file() {
        dir.parent().unwrap_or(Path::new("."))
    } else {
        dir
    };
    let url = state_url.clone().unwrap_or_else(|| {
        home.join(".flowgate")
            .join("state.db")
            .display()
            .to_string()
    });
    let state = flowgate_core::state::open(&url)
        .await
        .context("opening the state store")?;
    let mut engine = Engine::new(state.clone());
    engine.lease_ttl = lease_ttl;
    engine.retention = retention;
    let engine = Arc::new(engine);
    stop_on_signals(&engine);

    let app = App {
        state: state.clone(),
        plans: Arc::new(plans.clone()),
        engine: engine.clone(),
        streams: Arc::new(prepared.iter().map(|(_, (r, _))| r.group.clone()).collect()),
    };
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/pipelines", get(pipelines))
        .route("/pipelines/{name}/runs", axum::routing::post(start_run))
        .layer(axum::middleware::map_response(redacted))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, pipelines = plans.len(), state = %state.describe(), "serving");
    say!(
        "flowgate serving {} pipeline(s) from {} on http://{bound}",
        plans.len(),
        dir.display()
    );
    let token = engine.cancel.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });

    let mut loops = Vec::new();
    let stream_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (plan, (r, params)) in prepared {
        let cancel = engine.cancel.clone();
        let failed = stream_failed.clone();
        loops.push(tokio::spawn(async move {
            if let Err(e) = flowgate_core::stream::serve(&plan, &r, &params, cancel.clone()).await {
                tracing::error!(pipeline = %plan.name, error = %e, "the stream stopped");
                eprintln!("error: {}", flowgate_core::secret::redact(&e.to_string()));
                // A stream that cannot go on stops the process (exit 4): its
                // supervisor (Kubernetes) restarts it.
                failed.store(true, std::sync::atomic::Ordering::SeqCst);
                cancel.cancel();
            }
        }));
    }
    for plan in plans {
        let engine = engine.clone();
        loops.push(tokio::spawn(async move {
            if let Err(e) = flowgate_core::trigger::serve(&engine, &plan).await {
                tracing::error!(pipeline = %plan.name, error = %e, "pipeline loop stopped");
            }
        }));
    }
    for l in loops {
        let _ = l.await;
    }
    let _ = http.await;
    Ok(if stream_failed.load(std::sync::atomic::Ordering::SeqCst) {
        exit::ERROR
    } else if engine.cancel.is_cancelled() {
        exit::OK
    } else {
        exit::ERROR
    })
}

/// Every answer passes through the secret redactor: state keeps keys and payloads
/// exactly, so what leaves the process is masked here, in one place.
async fn redacted(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let masked = flowgate_core::secret::redact(&text);
            let mut parts = parts;
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(masked))
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the answer: {e}"),
        )
            .into_response(),
    }
}

async fn health(State(app): State<App>) -> Response {
    match app.state.kv_get("__flowgate_health").await {
        Ok(_) => Json(serde_json::json!({"status": "ok", "pipelines": app.plans.iter().map(|p| &p.name).collect::<Vec<_>>()})).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "state store unreachable", "error": e.to_string()}))).into_response(),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let runs = match app
        .state
        .list_runs(&RunFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let mut counts: BTreeMap<(String, RunStatus), u64> = BTreeMap::new();
    let mut last_success: BTreeMap<String, i64> = BTreeMap::new();
    for r in &runs {
        *counts.entry((r.pipeline.clone(), r.status)).or_default() += 1;
        if r.status.is_success()
            && let Some(end) = r.finished_at
        {
            let t = last_success.entry(r.pipeline.clone()).or_default();
            *t = (*t).max(end.timestamp());
        }
    }
    let mut out = String::new();
    out.push_str("# HELP flowgate_pipelines Pipelines this worker serves.\n# TYPE flowgate_pipelines gauge\n");
    out.push_str(&format!("flowgate_pipelines {}\n", app.plans.len()));
    out.push_str("# HELP flowgate_runs Runs recorded in the state store (latest 10000), by status.\n# TYPE flowgate_runs gauge\n");
    for ((p, s), n) in &counts {
        out.push_str(&format!(
            "flowgate_runs{{pipeline=\"{}\",status=\"{s}\"}} {n}\n",
            label(p)
        ));
    }
    out.push_str("# HELP flowgate_freshness_seconds Now minus the newest source change visible in the pipeline's warehouse.\n# TYPE flowgate_freshness_seconds gauge\n");
    if let Ok(entries) = app.state.kv_list("flowgate/freshness/").await {
        for e in entries {
            let pipeline = e.key.trim_start_matches("flowgate/freshness/");
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&e.value) {
                let age = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds()
                    as f64
                    / 1000.0;
                out.push_str(&format!(
                    "flowgate_freshness_seconds{{pipeline=\"{}\"}} {age:.3}\n",
                    label(pipeline)
                ));
            }
        }
    }
    out.push_str("# HELP flowgate_last_success_timestamp_seconds End of the newest successful run.\n# TYPE flowgate_last_success_timestamp_seconds gauge\n");
    for (p, t) in &last_success {
        out.push_str(&format!(
            "flowgate_last_success_timestamp_seconds{{pipeline=\"{}\"}} {t}\n",
            label(p)
        ));
    }
    if !app.streams.is_empty() {
        out.push_str(&flowgate_core::stream::metrics::render(&app.streams));
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

#[derive(serde::Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn runs(State(app): State<App>, Query(q): Query<RunsQuery>) -> Response {
    let status = match q.status.as_deref().map(|s| RunStatus::parse(s).ok_or(s)) {
        Some(Err(s)) => {
            return (StatusCode::BAD_REQUEST, format!("unknown status `{s}`")).into_response();
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    match app
        .state
        .list_runs(&RunFilter {
            pipeline: q.pipeline,
            status,
            limit: q.limit.unwrap_or(50),
        })
        .await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn run(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Response {
    match app.state.get_run(&id).await {
        Ok(r) => Json(r).into_response(),
        Err(e @ flowgate_core::state::StateError::RunNotFound(_)) => {
            (StatusCode::NOT_FOUND, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn pipelines(State(app): State<App>) -> Response {
    let list: Vec<serde_json::Value> = app
        .plans
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "description": p.description,
                "file": p.file,
                "schedule": p.schedule_text,
                "watch": p.watch.as_ref().map(|w| &w.key),
                "arrival": p.arrival.as_ref().map(|a| serde_json::json!({"store": a.store, "pattern": a.pattern})),
                "params": p.params.keys().collect::<Vec<_>>(),
                "steps": p.steps.iter().map(|s| serde_json::json!({"id": s.id, "kind": s.kind.name(), "needs": s.needs})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(list).into_response()
}

/// Body of `POST /pipelines/{name}/runs`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartRun {
    #[serde(default)]
    params: BTreeMap<String, String>,
    /// Dedupe key: a second request with the same key does not run again.
    #[serde(default)]
    key: Option<String>,
}

/// A manual run over HTTP: checked at once, run in the background (202 Accepted);
/// follow it with `GET /runs?pipeline=NAME`.
async fn start_run(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    body: Option<Json<StartRun>>,
) -> Response {
    let Some(plan) = app.plans.iter().find(|p| p.name == name).cloned() else {
        let known: Vec<&str> = app.plans.iter().map(|p| p.name.as_str()).collect();
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no pipeline `{name}`"), "pipelines": known})),
        )
            .into_response();
    };
    let Json(req) = body.unwrap_or_default();
    if let Err(e) = flowgate_core::engine::resolve_params(&plan, &req.params) {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": e})),
        )
            .into_response();
    }
    let sub = flowgate_core::engine::Submission::manual("http", req.key, req.params);
    let key = sub.dedupe_key.clone();
    let engine = app.engine.clone();
    tokio::spawn(async move {
        if let Err(e) = engine.submit_all(&plan, sub).await {
            tracing::error!(pipeline = %plan.name, error = %e, "manual run over HTTP failed to start");
        }
    });
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"accepted": true, "pipeline": name, "key": key})),
    )
        .into_response()
}
