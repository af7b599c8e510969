//! The journal-rollout example's tools.
//!
//! `generate` writes versioned journals (gzipped JSON lines) of changes by two
//! mandators, `tech_head` and `business_head`; one version can be made to
//! conflict with an execution cluster's limits.
//!
//! `import` is a cluster's own importer, as flowgate's import step runs it: it
//! applies the journal in `FLOWGATE_JOURNAL` to a database (PostgreSQL or
//! SQLite) in one transaction, with the import id (`FLOWGATE_IMPORT_ID`) recorded
//! in the same transaction: an id it has applied is not applied again. It counts
//! every call. Exit 0 imported (or held already), 2 rejected (the reason on
//! stderr), 1 anything else.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "journal-rollout",
    about = "The journal-rollout example's journal generator and cluster importer"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write journals `<out>/journals/<version>/journal.jsonl.gz` for versions 1.0.1 … 1.0.N.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// How many versions.
        #[arg(long, default_value_t = 3)]
        versions: u32,
        /// The version number (1-based) whose journal breaks an execution
        /// cluster's limit (0: none).
        #[arg(long, default_value_t = 0)]
        conflicting: u32,
    },
    /// Apply a journal to a cluster database (what flowgate's import step runs).
    Import {
        /// Where the clusters live: `postgres://…` (each cluster a schema) or
        /// `sqlite://DIR` (each cluster a file `DIR/<cluster>.db`).
        #[arg(long)]
        db: String,
        /// The cluster, e.g. `dev_modelling`.
        #[arg(long)]
        cluster: String,
        /// The filtered journal (default: $FLOWGATE_JOURNAL).
        #[arg(long, env = "FLOWGATE_JOURNAL")]
        journal: PathBuf,
        /// What identifies this import (default: $FLOWGATE_IMPORT_ID).
        #[arg(long, env = "FLOWGATE_IMPORT_ID")]
        import_id: String,
        #[arg(long, env = "FLOWGATE_VERSION")]
        version: String,
        /// Reject a change whose `limit` is above this (an execution cluster's cap).
        #[arg(long)]
        max_limit: Option<i64>,
    },
}

/// Run the tools with these arguments (the first is the program's name).
pub fn main_with(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let result = match cli.command {
        Cmd::Generate {
            out,
            versions,
            conflicting,
        } => generate(&out, versions, conflicting).map(|paths| {
            for p in paths {
                println!("{}", p.display());
            }
            Done::Ok
        }),
        Cmd::Import {
            db,
            cluster,
            journal,
            import_id,
            version,
            max_limit,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => Cluster::of(&db, &cluster).and_then(|c| {
                    rt.block_on(import(&c, &journal, &import_id, &version, max_limit))
                }),
                Err(e) => Err(e.into()),
            }
        }
    };
    match result {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::Rejected(why)) => {
            eprintln!("rejected: {why}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The name of version `n` (1-based).
pub fn version_name(n: u32) -> String {
    format!("1.0.{n}")
}

/// The execution clusters' cap on `limit` in the example.
pub const EXECUTION_CAP: i64 = 1000;

/// The records of version `n`'s journal: `set` and `delete` changes by both
/// mandators; the conflicting one also sets a limit above [`EXECUTION_CAP`].
pub fn journal(n: u32, conflicting: bool) -> Vec<Value> {
    let mut out = Vec::new();
    let mut id = 0;
    let mut change = |kind: &str, mandator: &str, entity: String, payload: Value| {
        id += 1;
        out.push(json!({"id": format!("{}-{id:04}", version_name(n)), "kind": kind, "mandator": mandator, "entity": entity, "payload": payload}));
    };
    for i in 0..3 {
        change(
            "set",
            "tech_head",
            format!("tech:{n}-{i}"),
            json!({"limit": 100 * i64::from(n) + i}),
        );
    }
    for i in 0..2 {
        change(
            "set",
            "business_head",
            format!("biz:{n}-{i}"),
            json!({"limit": 10 * i64::from(n) + i}),
        );
    }
    if n > 1 {
        change(
            "delete",
            "tech_head",
            format!("tech:{}-2", n - 1),
            Value::Null,
        );
        change(
            "delete",
            "business_head",
            format!("biz:{}-1", n - 1),
            Value::Null,
        );
    }
    if conflicting {
        change(
            "set",
            "tech_head",
            format!("tech:{n}-over"),
            json!({"limit": EXECUTION_CAP * 5}),
        );
    }
    out
}

/// Write the journals of versions 1..=`versions` under `out/journals/`; version
/// `conflicting` (if any) breaks the execution clusters' cap.
pub fn generate(out: &Path, versions: u32, conflicting: u32) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for n in 1..=versions {
        let dir = out.join("journals").join(version_name(n));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("journal.jsonl.gz");
        let file =
            std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        for r in journal(n, n == conflicting) {
            writeln!(gz, "{r}")?;
        }
        gz.finish()?;
        written.push(path);
    }
    Ok(written)
}

enum Done {
    Ok,
    Rejected(String),
}

/// One change, checked.
struct Change {
    id: String,
    kind: String,
    mandator: String,
    entity: String,
    payload: String,
}

fn changes(
    journal: &Path,
    max_limit: Option<i64>,
) -> Result<std::result::Result<Vec<Change>, String>> {
    let text = std::fs::read_to_string(journal)
        .with_context(|| format!("reading {}", journal.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .with_context(|| format!("line {}: no `{k}`", i + 1))
        };
        let c = Change {
            id: s("id")?,
            kind: s("kind")?,
            mandator: s("mandator")?,
            entity: s("entity")?,
            payload: v["payload"].to_string(),
        };
        if !matches!(c.kind.as_str(), "set" | "delete") {
            return Ok(Err(format!("change {}: unknown kind `{}`", c.id, c.kind)));
        }
        if let (Some(cap), Some(limit)) = (max_limit, v["payload"]["limit"].as_i64())
            && limit > cap
        {
            return Ok(Err(format!(
                "change {} conflicts with this cluster: {} sets limit {limit}, above its cap of {cap}",
                c.id, c.entity
            )));
        }
        out.push(c);
    }
    Ok(Ok(out))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entities (entity TEXT PRIMARY KEY, mandator TEXT NOT NULL, payload TEXT NOT NULL, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS imports (import_id TEXT PRIMARY KEY, version TEXT NOT NULL, changes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS import_calls (import_id TEXT NOT NULL, outcome TEXT NOT NULL);
";

/// One cluster's database.
pub enum Cluster {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A schema of a PostgreSQL database.
    Postgres { url: String, schema: String },
}

impl Cluster {
    pub fn of(db: &str, cluster: &str) -> Result<Cluster> {
        if cluster.is_empty()
            || !cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            anyhow::bail!("--cluster `{cluster}`: letters, digits and `_` only");
        }
        match db.strip_prefix("sqlite://") {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
                Ok(Cluster::Sqlite(
                    Path::new(dir).join(format!("{cluster}.db")),
                ))
            }
            None => Ok(Cluster::Postgres {
                url: db.to_string(),
                schema: cluster.to_ascii_lowercase(),
            }),
        }
    }

    fn sqlite(path: &Path) -> Result<rusqlite::Connection> {
        let c = rusqlite::Connection::open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        c.execute_batch(SCHEMA)?;
        Ok(c)
    }

    async fn pg(url: &str, schema: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("connecting to the cluster's PostgreSQL")?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}; {SCHEMA}"
            ))
            .await
            .context("creating the cluster's tables")?;
        Ok(client)
    }
}

async fn import(
    c: &Cluster,
    journal: &Path,
    id: &str,
    version: &str,
    max_limit: Option<i64>,
) -> Result<Done> {
    let changes = match changes(journal, max_limit)? {
        Ok(c) => c,
        Err(why) => {
            call(c, id, "rejected").await?;
            return Ok(Done::Rejected(why));
        }
    };
    let applied = match c {
        Cluster::Sqlite(path) => sqlite_apply(path, id, version, &changes)?,
        Cluster::Postgres { url, schema } => pg_apply(url, schema, id, version, &changes).await?,
    };
    call(c, id, if applied { "applied" } else { "held-already" }).await?;
    println!(
        "{} {} changes of version {version} ({id})",
        if applied { "applied" } else { "already held" },
        changes.len()
    );
    Ok(Done::Ok)
}

/// Count a call (outside the import's transaction: every call counts).
async fn call(c: &Cluster, id: &str, outcome: &str) -> Result<()> {
    match c {
        Cluster::Sqlite(path) => {
            Cluster::sqlite(path)?.execute(
                "INSERT INTO import_calls (import_id, outcome) VALUES (?1, ?2)",
                [id, outcome],
            )?;
        }
        Cluster::Postgres { url, schema } => {
            Cluster::pg(url, schema)
                .await?
                .execute(
                    "INSERT INTO import_calls (import_id, outcome) VALUES ($1, $2)",
                    &[&id, &outcome],
                )
                .await?;
        }
    }
    Ok(())
}

async fn pg_apply(
    url: &str,
    schema: &str,
    id: &str,
    version: &str,
    changes: &[Change],
) -> Result<bool> {
    let mut c = Cluster::pg(url, schema).await?;
    let tx = c.transaction().await?;
    let n = i32::try_from(changes.len())?;
    let fresh = tx
        .execute("INSERT INTO imports (import_id, version, changes) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", &[&id, &version, &n])
        .await?;
    if fresh == 0 {
        return Ok(false);
    }
    for ch in changes {
        if ch.kind == "delete" {
            tx.execute("DELETE FROM entities WHERE entity = $1", &[&ch.entity])
                .await?;
        } else {
            tx.execute(
                "INSERT INTO entities (entity, mandator, payload, version) VALUES ($1, $2, $3, $4) ON CONFLICT (entity) DO UPDATE SET mandator = EXCLUDED.mandator, payload = EXCLUDED.payload, version = EXCLUDED.version",
                &[&ch.entity, &ch.mandator, &ch.payload, &version],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

fn sqlite_apply(path: &Path, id: &str, version: &str, changes: &[Change]) -> Result<bool> {
    let mut c = Cluster::sqlite(path)?;
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let fresh = tx.execute(
        "INSERT OR IGNORE INTO imports (import_id, version, changes) VALUES (?1, ?2, ?3)",
        rusqlite::params![id, version, changes.len() as i64],
    )?;
    if fresh == 0 {
        return Ok(false);
    }
    for ch in changes {
        if ch.kind == "delete" {
            tx.execute("DELETE FROM entities WHERE entity = ?1", [&ch.entity])?;
        } else {
            tx.execute(
                "INSERT INTO entities (entity, mandator, payload, version) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (entity) DO UPDATE SET mandator = excluded.mandator, payload = excluded.payload, version = excluded.version",
                [&ch.entity, &ch.mandator, &ch.payload, version],
            )?;
        }
    }
    tx.commit()?;
    Ok(true)
}
