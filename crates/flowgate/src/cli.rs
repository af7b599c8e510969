//! Command-line interface.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use flowgate_core::config::{LoadOptions, Variables};
use flowgate_core::engine::{Engine, Submission};
use flowgate_core::plan::{Plan, plan_file, plan_text};
use flowgate_core::state::{self, RunFilter, RunStatus, StateStore};

use crate::output;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Everything succeeded (or there was nothing to do).
    pub const OK: u8 = 0;
    /// A run failed.
    pub const RUN_FAILED: u8 = 1;
    /// The command or a pipeline file is wrong (validation errors, bad arguments).
    pub const USAGE: u8 = 2;
    /// Runs succeeded but some input was quarantined or dead-lettered.
    pub const PARTIAL: u8 = 3;
    /// flowgate could not do its own work (state store unreachable, I/O error).
    pub const ERROR: u8 = 4;
    /// Stopped by SIGINT/SIGTERM; the next run resumes.
    pub const INTERRUPTED: u8 = 130;
}

const AFTER_HELP: &str = "\
Exit codes:
  0    success, or nothing to do
  1    a run failed
  2    bad command line or invalid pipeline file
  3    succeeded, but some input was quarantined (partial)
  4    flowgate itself failed (state store unreachable, I/O)
  130  interrupted by SIGINT/SIGTERM (the next run resumes)

Examples:
  flowgate validate pipelines/*.toml
  flowgate run pipelines/copy.toml --param day=2026-11-23 --env prod
  flowgate poll examples/copy-arrival/pipeline.toml
  flowgate serve pipelines/ --listen 127.0.0.1:8080
  flowgate runs --status failed --json
  flowgate kv set releases/version 1.4.2";

/// flowgate runs data pipelines declared in files: it waits for what should start a
/// run, moves data between stores, remembers where it left off, retries what fails
/// and sets aside (never drops) what cannot be processed.
#[derive(Parser)]
#[command(name = "flowgate", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// State store: a SQLite path, sqlite://PATH or postgres://… (default:
    /// .flowgate/state.db beside the pipeline, or in the current directory).
    #[arg(long, global = true, env = "FLOWGATE_STATE")]
    state: Option<String>,
    /// Environment overlay to apply ([env.NAME] in pipeline files).
    #[arg(long = "env", global = true, env = "FLOWGATE_ENV", value_name = "NAME")]
    env_name: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// How long a run's hold on its pipeline lasts without renewal (renewed every
    /// third of it). A worker that dies holds its pipeline this long at most;
    /// shorter means faster takeover, and more writes to the state store.
    #[arg(long, global = true, env = "FLOWGATE_LEASE_TTL", default_value = "30s", value_parser = lease_ttl)]
    lease_ttl: std::time::Duration,
    /// How long finished runs, ended schedule/watch/manual events, copy and
    /// delivery ledger entries and old KV values are kept; `serve` and `poll`
    /// prune what is older, at most once an hour (`off`: never by themselves).
    #[arg(long, global = true, env = "FLOWGATE_RETENTION", default_value = "30d", value_parser = retention)]
    retention: Retention,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check pipeline files; print every problem as file:line:col: message.
    #[command(after_help = "Example:\n  flowgate validate pipelines/*.toml --env prod")]
    Validate {
        /// Pipeline files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// A parameter, as key=value (repeatable): a `[stream]` is then rendered
        /// with it, and a variable it needs that is not set is named. One key
        /// given more than once checks each value (`-p domain=A -p domain=B`).
        #[arg(long = "param", short = 'p', value_parser = parse_kv)]
        params: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of pipeline files (for editors).
    Schema,
    /// Run a pipeline now (a manual trigger).
    #[command(after_help = "Example:\n  flowgate run pipelines/copy.toml --param day=2026-11-23")]
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// A parameter declared under [params], as key=value (repeatable).
        #[arg(long = "param", short = 'p', value_parser = parse_kv)]
        params: Vec<(String, String)>,
        /// Dedupe key of this run: a second run with the same key does nothing.
        #[arg(long, conflicts_with = "continuous")]
        key: Option<String>,
        /// Run again and again, `--every` apart, until SIGINT/SIGTERM (which lets the
        /// current run finish). Only runs that moved data or failed are printed.
        #[arg(long)]
        continuous: bool,
        /// Pause between continuous runs.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "continuous")]
        every: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Check a pipeline's triggers once, run what they found (and anything left
    /// unfinished), then exit. Suits cron and CI.
    Poll {
        pipeline: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run every trigger of every pipeline in a directory, with an HTTP endpoint
    /// for /health, /metrics and /runs.
    Serve {
        /// A pipeline file, or a directory of them (*.toml, and */pipeline.toml).
        dir: PathBuf,
        /// A parameter of the served pipelines' streams, as key=value
        /// (repeatable), e.g. `--param domain=DELIVERY`. One key given more
        /// than once serves one stream per value in this process:
        /// `-p domain=DELIVERY -p domain=ORDERS`.
        #[arg(long = "param", short = 'p', value_parser = parse_kv)]
        params: Vec<(String, String)>,
        /// Address of the HTTP endpoint.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Each pipeline's last run and freshness (now minus the newest source change
    /// visible in its warehouse).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List runs, newest first; `runs show ID` for one run.
    Runs(RunsArgs),
    /// A KV store: the built-in one of the state store (what `watch` triggers
    /// watch by default), or Consul or etcd with `--store URL`.
    #[command(
        after_help = "Examples:\n  flowgate kv set releases/version 1.4.2\n  flowgate kv --store consul://127.0.0.1:8500 set journal/dev/version 42\n  flowgate kv --store etcd://127.0.0.1:2379 watch journal/dev/version\n  flowgate kv --store versions --pipeline journal-rollout.toml --env qa set journal/version 42\n\nConsul's ACL token: the store's `token`, else CONSUL_HTTP_TOKEN."
    )]
    Kv {
        /// consul://host:port, consul+https://host:port, etcd://host:port or
        /// etcd+https://host:port, or the name of a store of --pipeline FILE
        /// (with --env for its overlay). Default: the state store's KV.
        #[arg(long, global = true)]
        store: Option<String>,
        /// The pipeline file whose `[stores]` --store NAME is looked up in.
        #[arg(long, global = true, value_name = "FILE")]
        pipeline: Option<PathBuf>,
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Published datasets: complete versions only, newest first.
    #[command(
        after_help = "Examples:\n  flowgate datasets list cat-be\n  flowgate datasets show cat-be LATEST --json"
    )]
    Datasets {
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// A stream's dead letters: the events its table could not take.
    #[command(
        name = "dead-letters",
        after_help = "Examples:\n  flowgate dead-letters list event-consumer.toml -p domain=DELIVERY\n  flowgate dead-letters replay event-consumer.toml -p domain=DELIVERY --offset 100\n\nA replayed event goes back to its topic (header flowgate-replay-of: topic/partition/offset) and its letter moves under replayed/."
    )]
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// The state store itself.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Run the examples on embedded defaults in a fresh folder and print a summary.
    Demo {
        /// Where to put the demo's data and state.
        #[arg(long, default_value = "flowgate-demo")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DatasetsCommand {
    /// The published versions of a dataset, newest first.
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// One published version (default LATEST): where it is and what it holds.
    Show {
        name: String,
        #[arg(default_value = "LATEST")]
        version: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// The dead letters waiting, by topic, partition and offset, with why.
    List {
        /// The pipeline file with the [stream].
        pipeline: PathBuf,
        /// Its parameters, as key=value (repeatable), e.g. domain=DELIVERY.
        #[arg(long = "param", short = 'p', value_parser = parse_kv)]
        params: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their topics (all, or those chosen).
    Replay {
        pipeline: PathBuf,
        #[arg(long = "param", short = 'p', value_parser = parse_kv)]
        params: Vec<(String, String)>,
        /// Only the letter of this offset.
        #[arg(long)]
        offset: Option<i64>,
        /// Only letters of this topic.
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct RunsArgs {
    #[command(subcommand)]
    show: Option<RunsCommand>,
    /// Only runs of this pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// Only runs with this status.
    #[arg(long, value_parser = parse_status)]
    status: Option<RunStatus>,
    /// At most this many runs.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// One run with its step reports (an id or a unique prefix of one).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a failed run again: its parameters, matrix combination and dataset,
    /// without the steps it completed, with the pipeline file and pinned files
    /// (`pin = [...]`) as they were when it ran.
    #[command(
        after_help = "The files a run ran are kept by content hash in the state store; the rerun \
restores them into a folder of their own, beside links to everything else in the \
pipeline's folder (data, .env files, caches: today's). Stores, state and data paths \
stay where the pipeline file is.

Examples:
  flowgate runs rerun 01a2 examples/tenant-datasets/process.toml
  flowgate runs rerun 01a2 examples/tenant-datasets/process.toml --latest"
    )]
    Rerun {
        /// The failed run (an id or a unique prefix of one).
        id: String,
        /// Its pipeline file (where it is today: it says where the state is).
        pipeline: PathBuf,
        /// With the pipeline file and scripts as they are now, not as they were.
        #[arg(long)]
        latest: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KvCommand {
    /// Print a value.
    Get {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a value (a new revision).
    Set { key: String, value: String },
    /// Print each new value of a key as it changes, until interrupted.
    Watch {
        key: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum StateCommand {
    /// Remove runs that finished, schedule/watch/manual events that ended, copy
    /// and delivery ledger entries, and old KV values, older than a time
    /// (each pipeline keeps its newest run; arrival events stay, their keys keep
    /// an object still in its store from running twice).
    #[command(
        after_help = "Example:\n  flowgate state prune --older-than 90d --state postgres://…"
    )]
    Prune {
        /// Age past which things go (default: the --retention, 30d).
        #[arg(long, value_parser = flowgate_core::units::parse_duration)]
        older_than: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
}

/// `--retention`: a duration, or `off`.
#[derive(Clone, Copy, Debug)]
struct Retention(Option<std::time::Duration>);

fn retention(text: &str) -> Result<Retention, String> {
    if text.trim() == "off" {
        return Ok(Retention(None));
    }
    flowgate_core::units::parse_duration(text).map(|d| Retention(Some(d)))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

/// `with k=v, k2=v2`: the parameters a message was made with (none: `None`).
pub(crate) fn given(params: &BTreeMap<String, String>) -> Option<String> {
    let kv: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    (!kv.is_empty()).then(|| format!("with {}", kv.join(", ")))
}

/// `--param`s as the sets of parameters to serve or check: one set, or, when
/// one key is given more than once, one set per value of it (the other keys in
/// each).
fn param_sets(params: Vec<(String, String)>) -> Result<Vec<BTreeMap<String, String>>, String> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in params {
        let values = by_key.entry(k).or_default();
        if !values.contains(&v) {
            values.push(v);
        }
    }
    let repeated: Vec<&String> = by_key
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .collect();
    let single = |skip: Option<&String>| -> BTreeMap<String, String> {
        by_key
            .iter()
            .filter(|(k, _)| Some(*k) != skip)
            .map(|(k, v)| (k.clone(), v[0].clone()))
            .collect()
    };
    match repeated[..] {
        [] => Ok(vec![single(None)]),
        [key] => Ok(by_key[key]
            .iter()
            .map(|v| {
                let mut set = single(Some(key));
                set.insert(key.clone(), v.clone());
                set
            })
            .collect()),
        _ => Err(format!(
            "only one --param may be given more than once (to serve one stream per value); {} are",
            repeated
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
}

fn parse_status(s: &str) -> Result<RunStatus, String> {
    RunStatus::parse(s).ok_or_else(|| {
        format!(
            "`{s}` is not a run status; use one of: {}",
            RunStatus::ALL.map(|s| s.as_str()).join(", ")
        )
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_logging(
        matches!(cli.log_format, LogFormat::Json),
        cli.verbose,
        matches!(cli.command, Command::Serve { .. }),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!(
                "error: {}",
                flowgate_core::secret::redact(&format!("{e:#}"))
            );
            ExitCode::from(exit::ERROR)
        }
    }
}

fn load_opts(env: &Option<String>) -> LoadOptions {
    LoadOptions {
        env: env.clone(),
        vars: Variables::default(),
    }
}

/// Load and validate one pipeline, printing diagnostics on failure.
fn plan_or_report(path: &Path, env: &Option<String>) -> Result<Plan, u8> {
    plan_file(path, &load_opts(env)).map_err(|diags| report(path, &diags))
}

/// Print a file's diagnostics; the exit code they mean.
fn report(path: &Path, diags: &[flowgate_core::config::Diagnostic]) -> u8 {
    for d in diags {
        eprintln!("{d}");
    }
    eprintln!(
        "{}: {} error{}",
        path.display(),
        diags.len(),
        if diags.len() == 1 { "" } else { "s" }
    );
    exit::USAGE
}

fn default_state(dir: &Path) -> String {
    dir.join(".flowgate").join("state.db").display().to_string()
}

async fn open_state(explicit: &Option<String>, dir: &Path) -> Result<Arc<dyn StateStore>> {
    let url = explicit.clone().unwrap_or_else(|| default_state(dir));
    flowgate_core::state::open(&url).await.with_context(|| {
        format!(
            "opening the state store {}",
            flowgate_core::secret::redact(&url)
        )
    })
}

/// Open the state store for reading: without --state, the default file must exist
/// (a listing must not create an empty store somewhere unexpected).
async fn open_existing_state(explicit: &Option<String>) -> Result<Option<Arc<dyn StateStore>>> {
    if explicit.is_none() {
        let path = default_state(Path::new("."));
        if !Path::new(&path).exists() {
            eprintln!(
                "error: no state store at {path}\n    hint: run this from the directory of your pipeline files, or pass --state PATH (or postgres://…)"
            );
            return Ok(None);
        }
    }
    open_state(explicit, Path::new(".")).await.map(Some)
}

/// Cancel the engine on SIGINT/SIGTERM; a second signal exits at once.
pub fn stop_on_signals(engine: &Engine) {
    let token = engine.cancel.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term_fut = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term_fut => {}
        }
        tracing::warn!(
            "stopping: finishing in-flight work at a safe point (signal again to exit at once)"
        );
        eprintln!("stopping at a safe point… (press Ctrl-C again to exit at once)");
        token.cancel();
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(i32::from(exit::INTERRUPTED));
    });
}

fn lease_ttl(text: &str) -> Result<std::time::Duration, String> {
    let d = flowgate_core::units::parse_duration(text)?;
    if d < std::time::Duration::from_secs(1) {
        return Err("the lease time-to-live must be at least 1s".into());
    }
    Ok(d)
}

fn engine(
    state: Arc<dyn StateStore>,
    show_progress: bool,
    lease_ttl: std::time::Duration,
) -> Engine {
    let mut e = Engine::new(state);
    e.lease_ttl = lease_ttl;
    if show_progress && std::io::stderr().is_terminal() {
        e.progress = Arc::new(output::Bars::default());
    }
    stop_on_signals(&e);
    e
}

async fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Validate {
            paths,
            params,
            json,
        } => match param_sets(params) {
            Ok(sets) => Ok(validate(&paths, &cli.env_name, &sets, json)),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(exit::USAGE)
            }
        },
        Command::Schema => {
            say!(
                "{}",
                serde_json::to_string_pretty(&flowgate_core::config::json_schema())?
            );
            Ok(exit::OK)
        }
        Command::Run {
            pipeline,
            params,
            key,
            continuous,
            every,
            json,
        } => {
            let plan = match plan_or_report(&pipeline, &cli.env_name) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let state = open_state(&cli.state, &plan.dir).await?;
            let mut engine = engine(state, !json, cli.lease_ttl);
            engine.retention = cli.retention.0;
            let params: BTreeMap<String, String> = params.into_iter().collect();
            if continuous {
                return continuous_runs(&engine, &plan, &params, every, json).await;
            }
            let sub = Submission::manual("cli", key, params);
            match engine.submit_all(&plan, sub).await {
                Ok(outcomes) => Ok(output::outcomes(&outcomes, json)),
                Err(flowgate_core::engine::EngineError::Params(msg)) => {
                    eprintln!("error: {msg}");
                    Ok(exit::USAGE)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Poll { pipeline, json } => {
            let plan = match plan_or_report(&pipeline, &cli.env_name) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let state = open_state(&cli.state, &plan.dir).await?;
            let mut engine = engine(state, !json, cli.lease_ttl);
            engine.retention = cli.retention.0;
            let mut poller = Default::default();
            let outcomes = flowgate_core::trigger::poll_once(&engine, &plan, &mut poller).await?;
            if outcomes.is_empty() && !json {
                say!(
                    "{}: nothing new to run (every trigger event found was handled before)",
                    plan.name
                );
            }
            Ok(output::outcomes(&outcomes, json))
        }
        Command::Serve {
            dir,
            listen,
            params,
        } => {
            let sets = match param_sets(params) {
                Ok(sets) => sets,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(exit::USAGE);
                }
            };
            crate::serve::serve(
                &dir,
                &sets,
                &listen,
                &cli.state,
                &cli.env_name,
                cli.lease_ttl,
                cli.retention.0,
            )
            .await
        }
        Command::Runs(args) => {
            let at = Where {
                state: cli.state.clone(),
                env: cli.env_name.clone(),
                lease_ttl: cli.lease_ttl,
            };
            runs(&at, args).await
        }
        Command::Status { json } => status(&cli.state, json).await,
        Command::Kv {
            store: Some(store),
            pipeline,
            command,
        } => {
            let (url, opts) = match kv_store(&store, pipeline.as_deref(), &cli.env_name) {
                Ok(found) => found,
                Err(code) => return Ok(code),
            };
            kv(
                flowgate_core::connect::kv::open(&url, &opts)?.as_ref(),
                command,
            )
            .await
        }
        Command::Kv {
            store: None,
            command,
            ..
        } => {
            // `kv set` may create the store; reading commands never do.
            let state = match &command {
                KvCommand::Set { .. } => open_state(&cli.state, Path::new(".")).await?,
                _ => match open_existing_state(&cli.state).await? {
                    Some(s) => s,
                    None => return Ok(exit::USAGE),
                },
            };
            kv(&flowgate_core::connect::kv::Builtin::new(state), command).await
        }
        Command::State {
            command: StateCommand::Prune { older_than, json },
        } => prune(&cli.state, older_than.or(cli.retention.0), json).await,
        Command::Datasets { command } => datasets(&cli.state, command).await,
        Command::DeadLetters { command } => dead_letters(&cli.env_name, command).await,
        Command::Demo { dir } => crate::demo::run(&dir).await,
    }
}

/// `flowgate dead-letters list|replay FILE -p k=v`.
async fn dead_letters(env: &Option<String>, command: DeadLettersCommand) -> Result<u8> {
    use flowgate_core::stream::letters;
    let (pipeline, params, only, json) = match &command {
        DeadLettersCommand::List {
            pipeline,
            params,
            json,
        } => (pipeline, params, (None, None), *json),
        DeadLettersCommand::Replay {
            pipeline,
            params,
            offset,
            topic,
            json,
        } => (pipeline, params, (*offset, topic.clone()), *json),
    };
    let plan = match plan_or_report(pipeline, env) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let params: BTreeMap<String, String> = params.iter().cloned().collect();
    let (r, dead) = match flowgate_core::stream::prepare(&plan, &params)
        .and_then(|p| {
            p.ok_or_else(|| {
                flowgate_core::stream::StreamError::Config(format!(
                    "pipeline `{}` has no [stream]",
                    plan.name
                ))
            })
        })
        .and_then(|(r, params)| Ok((flowgate_core::stream::dead_letters(&plan, &r, &params)?, r)))
    {
        Ok((dead, r)) => (r, dead),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
    };
    let (store, prefix) = (&dead.store, dead.prefix.as_str());
    let mut all = letters::list(store, prefix).await?;
    all.retain(|l| {
        only.0.is_none_or(|o| l.offset == o) && only.1.as_ref().is_none_or(|t| &l.topic == t)
    });
    if let DeadLettersCommand::List { .. } = command {
        output::dead_letters(&all, json);
        return Ok(exit::OK);
    }
    let sent = letters::replay(&r, store, prefix, &all).await?;
    if json {
        say!("{}", serde_json::json!({ "replayed": sent }));
    } else {
        say!(
            "{sent} dead letter(s) sent back to their topics; their letters moved under replayed/"
        );
    }
    Ok(exit::OK)
}

/// `flowgate datasets list NAME` and `flowgate datasets show NAME [VERSION]`.
async fn datasets(explicit: &Option<String>, command: DatasetsCommand) -> Result<u8> {
    let Some(state) = open_existing_state(explicit).await? else {
        return Ok(exit::USAGE);
    };
    match command {
        DatasetsCommand::List { name, json } => {
            let list = state.list_datasets(&name).await?;
            output::dataset_list(&name, &list, json);
            Ok(exit::OK)
        }
        DatasetsCommand::Show {
            name,
            version,
            json,
        } => {
            let list = state.list_datasets(&name).await?;
            let found = if version == flowgate_core::dataset::LATEST {
                list.first()
            } else {
                list.iter().find(|d| d.version == version)
            };
            match found {
                Some(d) => {
                    output::dataset_detail(d, json);
                    Ok(exit::OK)
                }
                None => {
                    eprintln!(
                        "error: dataset `{name}` has no published version `{version}` ({} published)",
                        list.len()
                    );
                    Ok(exit::USAGE)
                }
            }
        }
    }
}

/// `flowgate runs` and `flowgate runs show ID`.
/// What `runs` needs of the global options.
struct Where {
    state: Option<String>,
    env: Option<String>,
    lease_ttl: std::time::Duration,
}

async fn runs(cli: &Where, args: RunsArgs) -> Result<u8> {
    if let Some(RunsCommand::Rerun {
        id,
        pipeline,
        latest,
        json,
    }) = args.show
    {
        return rerun(cli, &id, &pipeline, latest, json).await;
    }
    let Some(state) = open_existing_state(&cli.state).await? else {
        return Ok(exit::USAGE);
    };
    match args.show {
        Some(RunsCommand::Rerun { .. }) => Ok(exit::USAGE),
        Some(RunsCommand::Show { id, json }) => match state.get_run(&id).await {
            Ok(run) => {
                output::run_detail(&run, json || args.json);
                Ok(exit::OK)
            }
            Err(e @ (state::StateError::RunNotFound(_) | state::StateError::Ambiguous(_))) => {
                eprintln!("error: {e}");
                Ok(exit::USAGE)
            }
            Err(e) => Err(e.into()),
        },
        None => {
            let runs = state
                .list_runs(&RunFilter {
                    pipeline: args.pipeline,
                    status: args.status,
                    limit: args.limit,
                })
                .await?;
            output::run_list(&runs, args.json);
            Ok(exit::OK)
        }
    }
}

/// `flowgate runs rerun ID FILE`: a failed run's failed and unrun steps again,
/// with the files it ran unless `latest`.
async fn rerun(cli: &Where, id: &str, pipeline: &Path, latest: bool, json: bool) -> Result<u8> {
    let today = match plan_or_report(pipeline, &cli.env) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let state = open_state(&cli.state, &today.dir).await?;
    let earlier = match state.get_run(id).await {
        Ok(r) => r,
        Err(e @ (state::StateError::RunNotFound(_) | state::StateError::Ambiguous(_))) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
        Err(e) => return Err(e.into()),
    };
    if earlier.pipeline != today.name || earlier.status.is_success() || !earlier.status.is_final() {
        eprintln!(
            "error: run {} is a {} run of `{}`; only a failed run of `{}` can be run again",
            earlier.id, earlier.status, earlier.pipeline, today.name
        );
        return Ok(exit::USAGE);
    }
    let (plan, _restored) = if latest {
        (today, None)
    } else {
        match as_it_ran(state.as_ref(), &earlier, today, &cli.env).await? {
            Ok(pair) => pair,
            Err(code) => return Ok(code),
        }
    };
    // What the earlier run's event said (an arrival's prefix…) is said again.
    let trigger = match earlier.event_id {
        Some(id) => state
            .get_event(id)
            .await?
            .map(|e| e.payload["trigger"].clone()),
        None => None,
    };
    let engine = engine(state, !json, cli.lease_ttl);
    let outcome = engine
        .submit(&plan, Submission::rerun(&earlier, trigger.as_ref()))
        .await?;
    Ok(output::outcomes(&[outcome], json))
}

/// The plan of `earlier` with the pipeline file and pinned files it ran,
/// restored beside today's folder (removed when the returned guard drops).
async fn as_it_ran(
    state: &dyn StateStore,
    earlier: &state::RunRecord,
    today: Plan,
    env: &Option<String>,
) -> Result<Result<(Plan, Option<flowgate_core::code::Restored>), u8>> {
    let latest = "`--latest` runs it with today's files";
    let Some(code) = earlier.code.as_ref().and_then(|c| c["id"].as_str()) else {
        let why = earlier
            .code
            .as_ref()
            .and_then(|c| c["why"].as_str())
            .unwrap_or("it ran before flowgate kept a run's files");
        eprintln!(
            "error: run {} has no kept files ({why}); {latest}",
            earlier.id
        );
        return Ok(Err(exit::USAGE));
    };
    let restored = match flowgate_core::code::restore(state, &earlier.id, code, &today.dir).await {
        Ok(r) => r,
        Err(flowgate_core::code::CodeError::State(e)) => return Err(e.into()),
        Err(e) => {
            eprintln!("error: {e}; {latest}");
            return Ok(Err(exit::ERROR));
        }
    };
    let mut plan = match plan_text(&today.file, restored.text.clone(), &load_opts(env)) {
        Ok(p) => p,
        Err(diags) => {
            eprintln!(
                "error: the pipeline file run {} ran no longer loads (below); {latest}",
                earlier.id
            );
            return Ok(Err(report(&today.file, &diags)));
        }
    };
    if plan.name != today.name {
        eprintln!(
            "error: run {} ran pipeline `{}`, not `{}`; {latest}",
            earlier.id, plan.name, today.name
        );
        return Ok(Err(exit::USAGE));
    }
    plan.code_dir = Some(restored.root().to_path_buf());
    tracing::info!(run = %earlier.id, code = %&code[..12.min(code.len())], "running with the pipeline file and pinned files the run ran");
    Ok(Ok((plan, Some(restored))))
}

/// `flowgate status`: each pipeline's last run and freshness.
async fn status(explicit: &Option<String>, json: bool) -> Result<u8> {
    let Some(state) = open_existing_state(explicit).await? else {
        return Ok(exit::USAGE);
    };
    let runs = state
        .list_runs(&RunFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await?;
    let mut seen = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    for r in runs.iter().filter(|r| seen.insert(r.pipeline.clone())) {
        let newest = state
            .kv_get(&state::freshness_key(&r.pipeline))
            .await?
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e.value).ok())
            .map(|d| d.with_timezone(&chrono::Utc));
        let freshness = newest.map(|n| (chrono::Utc::now() - n).num_milliseconds() as f64 / 1000.0);
        let stale = state
            .kv_get(&state::stale_key(&r.pipeline))
            .await?
            .is_some_and(|e| e.value.starts_with("stale"));
        rows.push(serde_json::json!({
            "pipeline": r.pipeline, "last_run": r.id, "status": r.status, "started_at": r.started_at,
            "newest_change_visible": newest, "freshness_seconds": freshness, "stale": stale,
        }));
    }
    if json {
        say!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        say!(
            "{:<24} {:<11} {:<20} FRESHNESS",
            "PIPELINE",
            "STATUS",
            "LAST RUN (UTC)"
        );
        for r in &rows {
            let fresh = r["freshness_seconds"]
                .as_f64()
                .map(|s| {
                    humantime::format_duration(std::time::Duration::from_secs(s.max(0.0) as u64))
                        .to_string()
                })
                .map(|f| {
                    if r["stale"] == true {
                        format!("{f} (stale)")
                    } else {
                        f
                    }
                })
                .unwrap_or_else(|| "-".into());
            let started = r["started_at"]
                .as_str()
                .unwrap_or_default()
                .get(..19)
                .unwrap_or_default()
                .replace('T', " ");
            say!(
                "{:<24} {:<11} {:<20} {fresh}",
                r["pipeline"].as_str().unwrap_or_default(),
                r["status"].as_str().unwrap_or_default(),
                started
            );
        }
    }
    Ok(exit::OK)
}

/// `state prune`: what is older than `age` goes (see `state::RETENTION_RULES`).
async fn prune(
    state_url: &Option<String>,
    age: Option<std::time::Duration>,
    json: bool,
) -> Result<u8> {
    let Some(state) = open_existing_state(state_url).await? else {
        return Ok(exit::USAGE);
    };
    let Some(age) = age else {
        eprintln!("error: --retention is off: say how old with --older-than (e.g. 30d)");
        return Ok(exit::USAGE);
    };
    let cutoff =
        state.now().await? - chrono::TimeDelta::from_std(age).unwrap_or(chrono::TimeDelta::MAX);
    let pruned = state.prune(cutoff).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&pruned)?);
    } else {
        say!(
            "pruned what ended before {}: {} run(s), {} event(s), {} ledger entr(ies), {} old KV value(s)",
            cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            pruned.runs,
            pruned.events,
            pruned.ledger_entries,
            pruned.kv_revisions
        );
    }
    Ok(exit::OK)
}

/// `run --continuous`: one manual run after another until stopped.
async fn continuous_runs(
    engine: &Engine,
    plan: &Plan,
    params: &BTreeMap<String, String>,
    every: std::time::Duration,
    json: bool,
) -> Result<u8> {
    use flowgate_core::engine::Outcome;
    if !json {
        eprintln!(
            "running `{}` every {} until interrupted",
            plan.name,
            humantime::format_duration(every)
        );
    }
    while !engine.cancel.is_cancelled() {
        let outcomes = match engine
            .submit_all(plan, Submission::manual("continuous", None, params.clone()))
            .await
        {
            Ok(o) => o,
            Err(flowgate_core::engine::EngineError::Params(msg)) => {
                eprintln!("error: {msg}");
                return Ok(exit::USAGE);
            }
            Err(e) => return Err(e.into()),
        };
        let worth_showing: Vec<Outcome> = outcomes
            .into_iter()
            .filter(|o| match o {
                Outcome::Ran(r) => {
                    r.status != RunStatus::Succeeded
                        || r.steps.iter().any(|s| s.objects_out > 0 || s.rows_out > 0)
                }
                _ => true,
            })
            .collect();
        if !worth_showing.is_empty() {
            output::outcomes(&worth_showing, json);
        }
        if let Err(e) = engine.check_freshness(plan).await {
            tracing::warn!(pipeline = %plan.name, error = %e, "freshness check failed; will try again");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = engine.cancel.cancelled() => {}
        }
    }
    Ok(exit::OK)
}

fn validate(
    paths: &[PathBuf],
    env: &Option<String>,
    sets: &[BTreeMap<String, String>],
    json: bool,
) -> u8 {
    let mut all = Vec::new();
    let mut ok = Vec::new();
    for p in paths {
        match plan_file(p, &load_opts(env)) {
            Ok(plan) => {
                // Without --env, every overlay is checked too; its variables are
                // only required where it runs, so missing ones are not errors here.
                if env.is_none() {
                    for name in &plan.environments {
                        if let Err(d) = plan_file(p, &load_opts(&Some(name.clone()))) {
                            all.extend(d.into_iter().filter(|d| d.missing_variable.is_none()).map(
                                |mut d| {
                                    d.message = format!("{} (with --env {name})", d.message);
                                    d
                                },
                            ));
                        }
                    }
                }
                for params in sets {
                    let Err(e) = flowgate_core::stream::prepare(&plan, params) else {
                        continue;
                    };
                    all.push(flowgate_core::config::Diagnostic {
                        file: plan.file.clone(),
                        line: 1,
                        col: 1,
                        message: flowgate_core::secret::redact(&e.to_string()),
                        hint: given(params),
                        missing_variable: None,
                    });
                }
                ok.push(plan);
            }
            Err(d) => all.extend(d),
        }
    }
    let ok: Vec<_> = ok
        .into_iter()
        .filter(|p| !all.iter().any(|d| d.file == p.file))
        .collect();
    if json {
        let v = serde_json::json!({
            "valid": all.is_empty(),
            "errors": all,
            "pipelines": ok.iter().map(|p| serde_json::json!({"name": p.name, "file": p.file, "steps": p.steps.len()})).collect::<Vec<_>>(),
        });
        say!(
            "{}",
            flowgate_core::secret::redact(&serde_json::to_string_pretty(&v).unwrap_or_default())
        );
    } else {
        for d in &all {
            eprintln!("{d}");
        }
        for p in &ok {
            say!(
                "{}: ok (pipeline `{}`, {} step{})",
                p.file.display(),
                p.name,
                p.steps.len(),
                if p.steps.len() == 1 { "" } else { "s" }
            );
        }
        if !all.is_empty() {
            eprintln!(
                "{} error{}",
                all.len(),
                if all.len() == 1 { "" } else { "s" }
            );
        }
    }
    if all.is_empty() {
        exit::OK
    } else {
        exit::USAGE
    }
}

/// The KV store `--store` names: a URL, or a store of `--pipeline FILE` (with
/// its `--env` overlay), with the store's token and CA file.
fn kv_store(
    store: &str,
    pipeline: Option<&Path>,
    env: &Option<String>,
) -> std::result::Result<(String, flowgate_core::connect::kv::KvOptions), u8> {
    if store.contains("://") {
        return Ok((store.to_string(), Default::default()));
    }
    let Some(path) = pipeline else {
        eprintln!(
            "error: `--store {store}` names a store of a pipeline file: add --pipeline FILE \
             (and --env NAME for its overlay), or give a URL (consul://host:port, etcd://host:port)"
        );
        return Err(exit::USAGE);
    };
    let plan = plan_or_report(path, env)?;
    let Some(spec) = plan.stores.get(store) else {
        let names: Vec<&str> = plan.stores.keys().map(String::as_str).collect();
        eprintln!(
            "error: {} has no store `{store}`; its stores: {}",
            path.display(),
            names.join(", ")
        );
        return Err(exit::USAGE);
    };
    let opts = flowgate_core::connect::kv::KvOptions::of(spec, &plan.dir);
    Ok((spec.url.clone(), opts))
}

async fn kv(store: &dyn flowgate_core::connect::kv::KvStore, command: KvCommand) -> Result<u8> {
    match command {
        KvCommand::Get { key, json } => match store.get(&key).await? {
            Some(e) if json => {
                say!("{}", serde_json::to_string(&e)?);
                Ok(exit::OK)
            }
            Some(e) => {
                say!("{}", e.value);
                Ok(exit::OK)
            }
            None => {
                eprintln!("error: key `{key}` is not set");
                Ok(exit::RUN_FAILED)
            }
        },
        KvCommand::Set { key, value } => {
            let rev = store.set(&key, &value).await?;
            say!("{key} = {value} (revision {rev})");
            Ok(exit::OK)
        }
        KvCommand::Watch { key, json } => {
            let show = |e: &flowgate_core::connect::kv::KvEntry| -> Result<()> {
                if json {
                    say!("{}", serde_json::to_string(e)?)
                } else {
                    say!("{} = {} (revision {})", e.key, e.value, e.revision)
                }
                Ok(())
            };
            // The current value first, then each change after it.
            let mut after = match store.get(&key).await? {
                Some(e) => {
                    show(&e)?;
                    e.revision
                }
                None => 0,
            };
            let stop = tokio_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return Ok(exit::OK),
                    got = store.wait(&key, after, std::time::Duration::from_secs(300)) => {
                        if let Some(e) = got? {
                            after = e.revision;
                            show(&e)?;
                        }
                    }
                }
            }
        }
    }
}

async fn tokio_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_param_gives_one_set_per_value() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let sets = param_sets(vec![kv("domain", "A"), kv("env", "x"), kv("domain", "B")]).unwrap();
        let domains: Vec<_> = sets
            .iter()
            .map(|s| (s["domain"].as_str(), s["env"].as_str()))
            .collect();
        assert_eq!(domains, [("A", "x"), ("B", "x")]);
        assert_eq!(param_sets(vec![]).unwrap(), [BTreeMap::new()]);
        let e =
            param_sets(vec![kv("a", "1"), kv("a", "2"), kv("b", "1"), kv("b", "2")]).unwrap_err();
        assert!(e.contains("`a` and `b`"), "{e}");
    }
}
