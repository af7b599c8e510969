//! What people and scripts see: logs, progress bars, summaries, `--json`.

use std::io::IsTerminal;
use std::sync::Mutex;

use flowgate_core::engine::{Outcome, Progress};
use flowgate_core::secret::{RedactingWriter, redact};
use flowgate_core::state::{RunRecord, RunStatus};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::exit;

/// Logs go to stderr, through the secret redactor, as text or JSON.
pub fn init_logging(json: bool, verbose: u8, serving: bool) {
    let default = match (verbose, serving) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{default},hyper=warn,reqwest=warn,tokio_postgres=warn"
        ))
    });
    let writer = || RedactingWriter::new(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// `flowgate dead-letters list`.
pub fn dead_letters(letters: &[flowgate_core::stream::letters::Letter], json: bool) {
    if json {
        say!(
            "{}",
            redact(&serde_json::to_string_pretty(letters).unwrap_or_default())
        );
        return;
    }
    say!(
        "{:<32} {:>9} {:>10}  REASON",
        "TOPIC",
        "PARTITION",
        "OFFSET"
    );
    for l in letters {
        say!(
            "{:<32} {:>9} {:>10}  {}",
            l.topic,
            l.partition,
            l.offset,
            redact(&l.reason)
        );
    }
    say!("{} dead letter(s)", letters.len());
}

/// Progress bars on a terminal: bytes moved by the current step.
#[derive(Default)]
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn begin(&self, step: &str, objects: u64, bytes: u64) {
        let bar = ProgressBar::new(bytes);
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{step} ({objects} objects)"));
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            b.inc(bytes);
        }
    }
    fn end(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn duration(run: &RunRecord) -> String {
    match run.finished_at {
        Some(end) => format!(
            "{:.1}s",
            (end - run.started_at).num_milliseconds() as f64 / 1000.0
        ),
        None => "still running".into(),
    }
}

/// Print outcomes; return the exit code they add up to.
pub fn outcomes(outcomes: &[Outcome], json: bool) -> u8 {
    let mut code = exit::OK;
    let mut items = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Ran(run) => {
                code = code.max(match run.status {
                    RunStatus::Succeeded | RunStatus::Skipped => exit::OK,
                    RunStatus::Partial => exit::PARTIAL,
                    RunStatus::Interrupted => exit::INTERRUPTED,
                    _ => exit::RUN_FAILED,
                });
                if json {
                    items.push(serde_json::json!({"outcome": "ran", "run": run}));
                } else {
                    summary(run);
                }
            }
            Outcome::AlreadyDone { event } => {
                if json {
                    items.push(serde_json::json!({"outcome": "already_done", "event": event}));
                } else {
                    say!(
                        "nothing to do: event `{}` was already handled by run {}",
                        event.dedupe_key,
                        event.run_id.as_deref().unwrap_or("?")
                    );
                }
            }
            Outcome::NotStarted { matrix } => {
                code = code.max(exit::RUN_FAILED);
                let label: Vec<String> = matrix.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if json {
                    items.push(serde_json::json!({"outcome": "not_started", "matrix": matrix, "reason": "fail_fast"}));
                } else {
                    say!(
                        "not started: {} (fail_fast: an earlier combination failed)",
                        label.join(", ")
                    );
                }
            }
            Outcome::Queued { event, holder } => {
                if json {
                    items.push(
                        serde_json::json!({"outcome": "queued", "event": event, "holder": holder}),
                    );
                } else {
                    say!(
                        "queued: event `{}` waits while another run of this pipeline ({}) is in progress; whoever holds the pipeline next runs it",
                        event.dedupe_key,
                        holder.as_deref().unwrap_or("another worker")
                    );
                }
            }
            Outcome::AlreadyFailed { event } => {
                code = code.max(exit::RUN_FAILED);
                if json {
                    items.push(serde_json::json!({"outcome": "already_failed", "event": event}));
                } else {
                    say!(
                        "not run again: event `{}` failed in run {}; run it again with `flowgate run FILE --key KEY`",
                        event.dedupe_key,
                        event.run_id.as_deref().unwrap_or("?")
                    );
                }
            }
        }
    }
    if json {
        say!(
            "{}",
            redact(&serde_json::to_string_pretty(&items).unwrap_or_default())
        );
    }
    code
}

/// A short human summary of a finished run.
pub fn summary(run: &RunRecord) {
    let matrix = match run.params.get("matrix").and_then(|m| m.as_object()) {
        Some(m) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            format!(" [{}]", parts.join(", "))
        }
        None => String::new(),
    };
    // Routed runs say which routing row they carry out (its first text value
    // names it: pipeline_name by default).
    let matrix = match run.params.get("route").and_then(|r| r.as_object()) {
        Some(r) => {
            let name = r
                .get("pipeline_name")
                .or_else(|| r.values().find(|v| v.is_string()))
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            format!("{matrix} [route {name}]")
        }
        None => matrix,
    };
    say!(
        "run {} of `{}`{matrix}: {} in {}",
        run.id,
        run.pipeline,
        run.status,
        duration(run)
    );
    if let Some(e) = &run.error {
        say!("  error: {}", redact(e));
    }
    for s in &run.steps {
        if s.status == RunStatus::Skipped {
            say!("  {:<14} skipped", s.step);
            for n in &s.notes {
                say!("  {:<14} note: {}", "", redact(n));
            }
            continue;
        }
        let exit = s.output.as_ref().and_then(|o| o.get("exit_code"));
        let imports = s.output.as_ref().and_then(|o| o.get("imports")?.as_array());
        let tests = s.output.as_ref().and_then(|o| o.get("tests"));
        let moved = if let Some(imports) = imports {
            import_summary(s, imports)
        } else if let Some(t) = tests {
            format!(
                "{} checks passed, {} failed, {} warned on {} records; results in {}",
                t["passed"],
                t["failed"],
                t["warned"],
                t["records"],
                t["results"].as_str().unwrap_or("?")
            )
        } else if let Some(code) = exit {
            match code.as_i64() {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".to_string(),
            }
        } else if s.rows_in > 0 || s.rows_out > 0 {
            format!(
                "{} rows read, {} written to {} object(s) ({})",
                s.rows_in,
                s.rows_out,
                s.objects_out,
                human_bytes(s.bytes_out)
            )
        } else {
            format!(
                "{} object(s) written ({}), {} unchanged",
                s.objects_out,
                human_bytes(s.bytes_out),
                s.objects_skipped
            )
        };
        let attempts = if s.attempts == 1 {
            "1 attempt".to_string()
        } else {
            format!("{} attempts", s.attempts)
        };
        say!(
            "  {:<14} {:<11} {moved}, {} quarantined, {attempts}",
            s.step,
            s.status,
            s.quarantined
        );
        for n in &s.notes {
            say!("  {:<14} note: {}", "", redact(n));
        }
    }
}

pub fn run_list(runs: &[RunRecord], json: bool) {
    if json {
        say!(
            "{}",
            redact(&serde_json::to_string_pretty(runs).unwrap_or_default())
        );
        return;
    }
    if runs.is_empty() {
        say!("no runs");
        return;
    }
    say!(
        "{:<36}  {:<20}  {:<11}  {:<8}  {:<20}  DURATION",
        "RUN",
        "PIPELINE",
        "STATUS",
        "TRIGGER",
        "STARTED (UTC)"
    );
    for r in runs {
        say!(
            "{:<36}  {:<20}  {:<11}  {:<8}  {:<20}  {}",
            r.id,
            r.pipeline,
            r.status,
            r.trigger,
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            duration(r)
        );
    }
}

pub fn run_detail(run: &RunRecord, json: bool) {
    if json {
        say!(
            "{}",
            redact(&serde_json::to_string_pretty(run).unwrap_or_default())
        );
        return;
    }
    say!("run:       {}", run.id);
    say!("pipeline:  {}", run.pipeline);
    say!("env:       {}", run.env.as_deref().unwrap_or("(default)"));
    say!("status:    {}", run.status);
    say!(
        "trigger:   {} (event {})",
        run.trigger,
        run.event_id
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".into())
    );
    say!("attempt:   {}", run.attempt);
    say!("worker:    {}", run.worker);
    say!("started:   {}", run.started_at.to_rfc3339());
    say!("duration:  {}", duration(run));
    say!("params:    {}", redact(&run.params.to_string()));
    if let Some(code) = &run.code {
        match code["id"].as_str() {
            Some(id) if code["restored"] == true => {
                say!("files:     {id} (restored from the run it continues)")
            }
            Some(id) => say!(
                "files:     {id} ({} kept, {} bytes; `runs rerun` restores them)",
                code["files"],
                code["bytes"]
            ),
            None => say!(
                "files:     not kept: {}",
                code["why"].as_str().unwrap_or("")
            ),
        }
    }
    if let Some(e) = &run.error {
        say!("error:     {}", redact(e));
    }
    say!("steps:");
    for s in &run.steps {
        say!(
            "  {} — {}: {} in / {} out / {} unchanged objects, {} in / {} out, {} quarantined, {} attempt(s), {} ms",
            s.step,
            s.status,
            s.objects_in,
            s.objects_out,
            s.objects_skipped,
            human_bytes(s.bytes_in),
            human_bytes(s.bytes_out),
            s.quarantined,
            s.attempts,
            s.duration_ms
        );
        if let Some(e) = &s.error {
            say!("      error: {}", redact(e));
        }
        for n in &s.notes {
            say!("      note: {}", redact(n));
        }
        if let Some(o) = &s.output {
            step_output(o);
        }
    }
}

/// An import step's line: how its targets ended.
fn import_summary(s: &flowgate_core::state::StepReport, imports: &[serde_json::Value]) -> String {
    let outcomes: Vec<String> = imports
        .iter()
        .map(|i| {
            format!(
                "{} {}",
                i["target"].as_str().unwrap_or("?"),
                i["outcome"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let version = s
        .output
        .as_ref()
        .and_then(|o| o["version"].as_str())
        .unwrap_or("?");
    let kept = if s.objects_in == 0 {
        String::new()
    } else {
        format!(" ({} of {} records kept)", s.rows_out, s.rows_in)
    };
    format!("version {version}: {}{kept}", outcomes.join(", "))
}

/// What a step kind keeps of its own, as the run record has it: a command's
/// exit code and the end of its output, an import step's outcome per target.
fn step_output(o: &serde_json::Value) {
    for i in o
        .get("imports")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
    {
        say!(
            "      {}: {}{}",
            i["target"].as_str().unwrap_or("?"),
            i["outcome"].as_str().unwrap_or("?"),
            i["reason"]
                .as_str()
                .map(|r| format!(": {}", redact(r)))
                .unwrap_or_default()
        );
        if let Some(at) = i["failed_at"].as_str() {
            say!("        journal set aside in {at}");
        }
    }
    if let Some(code) = o.get("exit_code") {
        say!("      exit code: {code}");
    }
    for stream in ["stdout", "stderr"] {
        let text = o.get(stream).and_then(|t| t.as_str()).unwrap_or_default();
        if text.is_empty() {
            continue;
        }
        let cut = o
            .get(format!("{stream}_truncated"))
            .and_then(|t| t.as_bool())
            == Some(true);
        say!("      {stream}{}:", if cut { " (its end)" } else { "" });
        for line in text.lines() {
            say!("        {}", redact(line));
        }
    }
}

/// `flowgate datasets list`.
pub fn dataset_list(name: &str, list: &[flowgate_core::state::Dataset], json: bool) {
    if json {
        say!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    if list.is_empty() {
        say!("dataset `{name}` has no published version");
        return;
    }
    say!(
        "{:<22} {:<26} {:>8} {:>10}  location",
        "version",
        "published",
        "objects",
        "size"
    );
    for d in list {
        say!(
            "{:<22} {:<26} {:>8} {:>10}  {}",
            d.version,
            d.published_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            d.meta["objects"].as_u64().unwrap_or(0),
            human_bytes(d.meta["bytes"].as_u64().unwrap_or(0)),
            d.location
        );
    }
}

/// `flowgate datasets show`.
pub fn dataset_detail(d: &flowgate_core::state::Dataset, json: bool) {
    if json {
        say!("{}", serde_json::to_string_pretty(d).unwrap_or_default());
        return;
    }
    say!("dataset:   {}", d.name);
    say!("version:   {}", d.version);
    say!("location:  {}", d.location);
    say!(
        "published: {}",
        d.published_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    say!("run:       {}", d.meta["run_id"].as_str().unwrap_or("?"));
    if let Some(parts) = d.meta["parts"].as_object() {
        for (part, p) in parts {
            say!(
                "  {part:<12} {:>6} objects {:>10}",
                p["objects"].as_u64().unwrap_or(0),
                human_bytes(p["bytes"].as_u64().unwrap_or(0))
            );
        }
    }
}
