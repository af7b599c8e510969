//! `flowgate demo`: the examples on embedded defaults, in a fresh folder, with no
//! services at all.

use std::path::Path;

use anyhow::{Context, Result};
use flowgate_core::engine::{Engine, Outcome};
use flowgate_core::plan::plan_file;

use crate::cli::exit;

const COPY_ARRIVAL: &str = include_str!("../../../examples/copy-arrival/pipeline.toml");

fn write(path: &Path, body: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))
}

/// A producer: a dataset of `files` JSON-lines parts under `prefix`, then the marker.
fn produce(inbox: &Path, prefix: &str, files: usize, rows: usize) -> Result<()> {
    for f in 0..files {
        let mut body = String::new();
        for r in 0..rows {
            body.push_str(&format!(
                "{{\"dataset\":\"{prefix}\",\"part\":{f},\"row\":{r},\"amount\":{}}}\n",
                (f * 31 + r * 7) % 1000
            ));
        }
        write(
            &inbox.join(prefix).join(format!("part-{f:04}.jsonl")),
            body.as_bytes(),
        )?;
    }
    write(&inbox.join(prefix).join("_SUCCESS"), b"")
}

pub async fn run(dir: &Path) -> Result<u8> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let example = dir.join("copy-arrival");
    write(&example.join("pipeline.toml"), COPY_ARRIVAL.as_bytes())?;
    let inbox = example.join("data/inbox");
    produce(&inbox, "2026-11-22", 4, 2_000)?;
    produce(&inbox, "2026-11-23", 6, 2_000)?;
    println!("flowgate demo in {}", dir.display());
    println!("\n== copy-arrival: two finished datasets waiting in data/inbox");

    let plan = plan_file(&example.join("pipeline.toml"), &Default::default()).map_err(|d| {
        anyhow::anyhow!(
            "the embedded example is invalid:\n{}",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let state =
        flowgate_core::state::open(&example.join(".flowgate/state.db").display().to_string())
            .await?;
    let engine = Engine::new(state.clone());
    crate::cli::stop_on_signals(&engine);
    let mut seen = Default::default();
    let first = flowgate_core::trigger::poll_once(&engine, &plan, &mut seen).await?;
    let code = crate::output::outcomes(&first, false);

    println!("\n== the same markers again: the event ledger says they were handled");
    let mut fresh = Default::default();
    let again = flowgate_core::trigger::poll_once(&engine, &plan, &mut fresh).await?;
    if again.is_empty() {
        println!("nothing new to run: both events are already in the ledger as done");
    }

    println!("\n== a producer adds a part to 2026-11-23 and writes a new marker");
    write(
        &inbox.join("2026-11-23/part-0006.jsonl"),
        b"{\"dataset\":\"2026-11-23\",\"part\":6,\"row\":0,\"amount\":1}\n",
    )?;
    write(&inbox.join("2026-11-23/_SUCCESS"), b"republished")?;
    let third = flowgate_core::trigger::poll_once(&engine, &plan, &mut fresh).await?;
    let code = code.max(crate::output::outcomes(&third, false));

    let ran: usize = [&first, &third]
        .iter()
        .map(|o| o.iter().filter(|o| matches!(o, Outcome::Ran(_))).count())
        .sum();
    let outbox = example.join("data/outbox");
    let copied = walk(&outbox)?;
    println!("\n== summary");
    println!("runs: {ran}; files in the outbox: {copied} (each dataset with its _manifest.json)");
    println!("state: {}", state.describe());
    println!(
        "try:   cargo run --release -- runs --state {}",
        example.join(".flowgate/state.db").display()
    );
    Ok(if code == exit::OK { exit::OK } else { code })
}

fn walk(dir: &Path) -> Result<usize> {
    let mut n = 0;
    if dir.is_dir() {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            n += if p.is_dir() { walk(&p)? } else { 1 };
        }
    }
    Ok(n)
}
