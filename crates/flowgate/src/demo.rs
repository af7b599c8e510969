//! `flowgate demo`: the examples on embedded defaults, in a fresh folder, with no
//! services at all.

use std::path::Path;

use anyhow::{Context, Result};
use flowgate_core::engine::{Engine, Outcome};
use flowgate_core::plan::plan_file;

use crate::cli::exit;

const COPY_ARRIVAL: &str = include_str!("../../../examples/copy-arrival/pipeline.toml");
const DATA_EGRESS: &str = include_str!("../../../examples/data-egress/pipeline.toml");
const JOURNAL_ROLLOUT: &str = include_str!("../../../examples/journal-rollout/pipeline.toml");

macro_rules! tenant_files {
    ($($path:literal),* $(,)?) => { &[$(($path, include_str!(concat!("../../../examples/tenant-datasets/", $path)))),*] };
}
const TENANT_DATASETS: &[(&str, &str)] = tenant_files!(
    "sync.toml",
    "process.toml",
    "test.toml",
    "upload.toml",
    "lib/stage.sh",
    "lib/update.sh",
    "lib/upload.sh",
    "Project/CAT-BE/tenant.conf",
    "Project/CAT-BE/run_update.sh",
    "Project/CAT-BE-DEV/tenant.conf",
    "Project/CAT-BE-DEV/run_update.sh",
    "Project/DOG-NL/tenant.conf",
    "Project/DOG-NL/run_update.sh",
);

macro_rules! example {
    ($($path:literal),* $(,)?) => { &[$(($path, include_str!(concat!("../../../examples/oltp-warehouse/", $path)))),*] };
}
const OLTP_WAREHOUSE: &[(&str, &str)] = example!(
    "pipeline.toml",
    "query.sql",
    "models/dim_counterparty.sql",
    "models/dim_currency.sql",
    "models/dim_date.sql",
    "models/dim_design.sql",
    "models/dim_location.sql",
    "models/dim_payment_type.sql",
    "models/dim_staff.sql",
    "models/dim_transaction.sql",
    "models/fact_payment.sql",
    "models/fact_purchase_order.sql",
    "models/fact_sales_order.sql",
);

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
    say!("flowgate demo in {}", dir.display());
    say!("\n== copy-arrival: two finished datasets waiting in data/inbox");

    let (plan, engine) = open_example(&example).await?;
    let state = engine.state.clone();
    crate::cli::stop_on_signals(&engine);
    let mut poller = Default::default();
    let first = flowgate_core::trigger::poll_once(&engine, &plan, &mut poller).await?;
    let code = crate::output::outcomes(&first, false);

    say!("\n== the same markers again: the event ledger says they were handled");
    let mut fresh = Default::default();
    let again = flowgate_core::trigger::poll_once(&engine, &plan, &mut fresh).await?;
    if again.is_empty() {
        say!("nothing new to run: both events are already in the ledger as done");
    }

    say!("\n== a producer adds a part to 2026-11-23 and writes a new marker");
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
    let code = code.max(oltp_warehouse(dir).await?);
    let code = code.max(data_egress(dir).await?);
    let code = code.max(journal_rollout(dir).await?);
    let code = code.max(tenant_datasets(dir).await?);

    say!("\n== summary");
    say!("runs: {ran}; files in the outbox: {copied} (each dataset with its _manifest.json)");
    say!("state: {}", state.describe());
    say!(
        "try:   cargo run -- runs --state {}",
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

/// oltp-warehouse on SQLite and local folders: seed, run, change rows, run again,
/// and print the sample query.
async fn oltp_warehouse(dir: &Path) -> Result<u8> {
    let example = dir.join("oltp-warehouse");
    for (path, body) in OLTP_WAREHOUSE {
        write(&example.join(path), body.as_bytes())?;
    }
    say!(
        "\n== oltp-warehouse: totesys (SQLite) → landing (JSON lines) → star schema (Parquet) → warehouse (SQLite)"
    );
    let url = format!("sqlite://{}", example.join("totesys.db").display());
    let db = totesys_generator::Db::connect(&url).await?;
    totesys_generator::seed(&db, 2_000).await?;
    say!("seeded totesys.db with 2000 sales orders and their reference data");
    let (plan, engine) = open_example(&example).await?;
    let first = engine
        .submit_all(
            &plan,
            flowgate_core::engine::Submission::manual("demo", None, Default::default()),
        )
        .await?;
    let mut code = crate::output::outcomes(&first, false);

    say!("\n== 25 new orders and 40 updated ones in the source, then the same pipeline again");
    totesys_generator::churn_once(&db, 25, 40, 1).await?;
    let second = engine
        .submit_all(
            &plan,
            flowgate_core::engine::Submission::manual("demo", None, Default::default()),
        )
        .await?;
    code = code.max(crate::output::outcomes(&second, false));

    say!("\n== units and value sold per counterparty, currency and month (top 10)");
    let query = std::fs::read_to_string(example.join("query.sql"))?;
    let conn = rusqlite::Connection::open(example.join("data/warehouse.db"))?;
    let mut st = conn.prepare(&query)?;
    say!(
        "{:<22} {:<8} {:<8} {:>8} {:>14}",
        "counterparty",
        "currency",
        "month",
        "units",
        "value"
    );
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        say!(
            "{:<22} {:<8} {:<8} {:>8} {:>14.2}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, f64>(4)?
        );
    }
    Ok(code)
}

/// data-egress on local folders, with an HTTPS receiver that demands a client
/// certificate: one prefix goes to a bucket and over mutual TLS, an encrypted
/// one is decrypted on the way.
async fn data_egress(dir: &Path) -> Result<u8> {
    use age::secrecy::ExposeSecret;
    let example = dir.join("data-egress");
    write(&example.join("pipeline.toml"), DATA_EGRESS.as_bytes())?;
    say!(
        "\n== data-egress: flags → routing rows → a partner bucket, and HTTPS with a client certificate"
    );
    let tls = crate::receiver::make_tls(&example.join("tls"))?;
    let received = example.join("data/received");
    let (addr, receiver) = crate::receiver::start(&tls, received.clone()).await?;
    say!("a demo receiver on https://{addr}/inbound/ accepts only certificates of its own CA");
    let identity = age::x25519::Identity::generate();
    write(
        &example.join(".env"),
        format!(
            "ACME_URL=https://{addr}/inbound/\nEGRESS_AGE_IDENTITY={}\n",
            identity.to_string().expose_secret()
        )
        .as_bytes(),
    )?;
    // The producer: two datasets, each with its flag written last.
    let source = example.join("data/source");
    for i in 1..=3 {
        let mut body = String::from("order_id,units,amount\n");
        for r in 1..=500 {
            body.push_str(&format!(
                "{},{},{}.{:02}\n",
                i * 100_000 + r,
                r % 7 + 1,
                r * 13 % 1000,
                r % 100
            ));
        }
        write(
            &source.join(format!("exports/sales/2026-11-23/part-{i}.csv")),
            body.as_bytes(),
        )?;
    }
    write(
        &source.join("exports/sales/2026-11-23/pipeline_success.flag"),
        b"",
    )?;
    let secret = b"customer_id,iban\n1,GB00 0000 0000 0000\n";
    let encrypted = {
        use std::io::Write;
        let recipient = identity.to_public();
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(|e| anyhow::anyhow!("age: {e}"))?;
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out)?;
        w.write_all(secret)?;
        w.finish()?;
        out
    };
    write(
        &source.join("exports/secure/2026-11-23/customers.csv.age"),
        &encrypted,
    )?;
    write(
        &source.join("exports/secure/2026-11-23/pipeline_success.flag"),
        b"",
    )?;
    say!(
        "a producer wrote exports/sales/2026-11-23 (3 files) and exports/secure/2026-11-23 (1 age-encrypted file), each with its flag"
    );

    let (plan, engine) = open_example(&example).await?;
    let mut poller = Default::default();
    let runs = flowgate_core::trigger::poll_once(&engine, &plan, &mut poller).await?;
    let code = crate::output::outcomes(&runs, false);
    receiver.abort();

    let bucket = example.join("data/buckets/partner-bucket");
    let in_bucket = walk(&bucket)?;
    let at_receiver = walk(&received)?;
    let outbox_left = walk(&example.join("data/outbox/acme"))?;
    let decrypted = std::fs::read(bucket.join("incoming/exports/secure/2026-11-23/customers.csv"))
        .map(|b| b == secret)
        .unwrap_or(false);
    say!(
        "partner bucket: {in_bucket} files (with manifests); at the receiver: {at_receiver} files; left in the outbox: {outbox_left}; customers.csv decrypted: {}",
        if decrypted { "yes" } else { "NO" }
    );
    Ok(code)
}

/// journal-rollout on the built-in KV, local folders and SQLite clusters: a
/// version rolled out to every environment, then a journal one kind of cluster
/// rejects.
async fn journal_rollout(dir: &Path) -> Result<u8> {
    let example = dir.join("journal-rollout");
    write(&example.join("pipeline.toml"), JOURNAL_ROLLOUT.as_bytes())?;
    // The clusters' importer is the example's, built into this binary.
    let exe = std::env::current_exe().context("finding the flowgate binary")?;
    let importer = std::path::absolute(example.join("importer.sh"))?;
    write(
        &importer,
        format!(
            "#!/bin/sh\nexec '{}' {} \"$@\"\n",
            exe.display(),
            crate::JOURNAL_TOOLS
        )
        .as_bytes(),
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&importer, std::fs::Permissions::from_mode(0o755))?;
    }
    write(
        &example.join(".env"),
        format!("JOURNAL_IMPORTER={}\n", importer.display()).as_bytes(),
    )?;
    journal_rollout::generate(&example.join("artifacts"), 3, 3)?;
    say!(
        "\n== journal-rollout: a version set in the built-in KV → each environment's two clusters (SQLite)"
    );
    let mut code = exit::OK;
    let mut rejected = 0;
    for (version, envs) in [
        ("1.0.2", &["dev", "qa", "dit", "prod"][..]),
        ("1.0.3", &["dev", "prod"][..]),
    ] {
        if version == "1.0.3" {
            say!(
                "\n== version 1.0.3 sets a limit above the execution clusters' cap: they reject it"
            );
        }
        // The seeder: one value in the KV every environment's watcher watches.
        let (_, seeder) = open_example_in(&example, None).await?;
        seeder.state.kv_set("journal/version", version).await?;
        for env in envs {
            let (plan, engine) = open_example_in(&example, Some(env)).await?;
            let mut poller = Default::default();
            let runs = flowgate_core::trigger::poll_once(&engine, &plan, &mut poller).await?;
            let got = crate::output::outcomes(&runs, false);
            if version == "1.0.3" && got == exit::RUN_FAILED {
                rejected += 1;
            } else {
                code = code.max(got);
            }
        }
    }
    let failed = walk(&example.join("artifacts/failed"))? + walk(&example.join("failed"))?;
    say!(
        "clusters in {}; rejected journals set aside with their error.json: {failed} files; audit lines in {}",
        example.join("clusters").display(),
        example.join("audit").display()
    );
    if rejected != 2 {
        anyhow::bail!("the conflicting journal was rejected in {rejected} of 2 environments");
    }
    Ok(code)
}

/// tenant-datasets on local folders: the daily sync of three tenants, each
/// tenant's stages published as a dataset (one tenant's stage fails), checks on
/// LATEST. The upload needs PostgreSQL: `scripts/test.sh` runs it.
async fn tenant_datasets(dir: &Path) -> Result<u8> {
    let example = dir.join("tenant-datasets");
    for (path, body) in TENANT_DATASETS {
        let at = example.join(path);
        write(&at, body.as_bytes())?;
        #[cfg(unix)]
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    // The environments' buckets, made beforehand as in production; runs find
    // theirs by prefix.
    for env in ["scraper-dev", "scraper-prod"] {
        std::fs::create_dir_all(example.join("buckets").join(env))?;
    }
    say!("\n== tenant-datasets: staged tenant scripts → timestamped datasets → checks");
    let run = |file: &'static str, params: &'static [(&'static str, &'static str)]| {
        let example = example.clone();
        async move {
            let opts = flowgate_core::config::LoadOptions::default();
            let plan = plan_file(&example.join(file), &opts).map_err(|d| {
                anyhow::anyhow!(
                    "the embedded example is invalid: {}",
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?;
            let state = flowgate_core::state::open(
                &example.join(".flowgate/state.db").display().to_string(),
            )
            .await?;
            let engine = Engine::new(state);
            let params = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let runs = engine
                .submit_all(
                    &plan,
                    flowgate_core::engine::Submission::manual("demo", None, params),
                )
                .await?;
            anyhow::Ok(crate::output::outcomes(&runs, false))
        }
    };
    let mut code = run("sync.toml", &[]).await?;
    for (project, env) in [("CAT-BE", "PROD"), ("CAT-BE-DEV", "DEV")] {
        let params: &'static [(&str, &str)] = if env == "PROD" {
            &[("project", "CAT-BE"), ("env", "PROD")]
        } else {
            &[("project", "CAT-BE-DEV"), ("env", "DEV")]
        };
        say!("\n-- process {project} ({env})");
        code = code.max(run("process.toml", params).await?);
    }
    say!("\n-- process DOG-NL (PROD): its stage 2a fails, so it publishes nothing");
    if run("process.toml", &[("project", "DOG-NL"), ("env", "PROD")]).await? != exit::RUN_FAILED {
        anyhow::bail!("DOG-NL's failing stage did not fail its run");
    }
    say!("\n-- checks on cat-be-prod LATEST, a sample of 10 records");
    code = code.max(
        run(
            "test.toml",
            &[("project", "CAT-BE"), ("env", "PROD"), ("sample", "10")],
        )
        .await?,
    );
    say!(
        "datasets in {}; try: cargo run -- datasets list cat-be-prod --state {}",
        example.join("buckets").display(),
        example.join(".flowgate/state.db").display()
    );
    Ok(code)
}

/// An embedded example's validated plan and an engine on its own state file.
async fn open_example(example: &Path) -> Result<(flowgate_core::plan::Plan, Engine)> {
    open_example_in(example, None).await
}

/// The same, with an environment overlay.
async fn open_example_in(
    example: &Path,
    env: Option<&str>,
) -> Result<(flowgate_core::plan::Plan, Engine)> {
    let opts = flowgate_core::config::LoadOptions {
        env: env.map(str::to_string),
        ..Default::default()
    };
    let plan = plan_file(&example.join("pipeline.toml"), &opts).map_err(|d| {
        let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the embedded example is invalid:\n{}", lines.join("\n"))
    })?;
    let state =
        flowgate_core::state::open(&example.join(".flowgate/state.db").display().to_string())
            .await?;
    Ok((plan, Engine::new(state)))
}
