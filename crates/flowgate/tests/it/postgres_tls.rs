//! PostgreSQL over TLS, written as libpq users write it: `sslmode` and
//! `sslrootcert` in the URL, for sources and for the state store. The test server
//! lets the role `flowgate_tls_only` in over TLS only (scripts/services.sh), so a
//! run that succeeds as that role was encrypted.

use crate::common::*;
use flowgate_core::testing::service_var;

fn as_tls_role(url: &str, query: &str) -> String {
    let u = url.replacen("://postgres@", "://flowgate_tls_only@", 1);
    assert_ne!(u, url, "the test PostgreSQL URL names the user postgres");
    format!("{u}?{query}")
}

fn pipeline(dir: &std::path::Path, source: &str) {
    write(
        &dir.join("p.toml"),
        format!(
            "name = \"tls\"\n[stores]\ntotesys = {{ url = \"{source}\" }}\nlanding = {{ url = \"file://./landing\", access = \"read-write\" }}\n[[steps]]\nid = \"ingest\"\nretry = {{ attempts = 2, backoff = \"10ms..20ms\" }}\nextract = {{ from = \"totesys\", tables = [\"sales_order\"], cursor = \"last_updated\", to = \"landing:{{{{ table }}}}/{{{{ run.id }}}}.jsonl\" }}\n"
        )
        .as_bytes(),
    );
}

fn landed_rows(dir: &std::path::Path) -> usize {
    data_files(&dir.join("landing/sales_order"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum()
}

#[test]
fn verify_full_connects_over_tls_and_a_certificate_from_another_ca_is_refused() {
    let pg = Pg::new();
    pg.exec(
        "DO $$ BEGIN CREATE ROLE flowgate_tls_only LOGIN SUPERUSER;
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE TABLE sales_order (sales_order_id int PRIMARY KEY, last_updated timestamp NOT NULL);
         INSERT INTO sales_order VALUES (1, '2026-01-01 10:00'), (2, '2026-01-01 11:00')",
    );
    let state_db = pg.rt.block_on(flowgate_core::testing::fresh_postgres_db());
    let tls = service_var("FLOWGATE_TEST_TLS_DIR");
    let ca = format!("{tls}/ca.pem");
    let rogue = format!("{tls}/rogue-ca.pem");

    // The role really cannot get in without TLS.
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), &as_tls_role(&pg.url, "sslmode=disable"));
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.all().contains("no encryption"), "{}", out.all());

    // verify-full with the server's CA: the source and the state store, both over TLS.
    let dir = tempfile::tempdir().unwrap();
    let state = as_tls_role(&state_db, &format!("sslmode=verify-full&sslrootcert={ca}"));
    pipeline(
        dir.path(),
        &as_tls_role(&pg.url, &format!("sslmode=verify-full&sslrootcert={ca}")),
    );
    let out = run(flowgate(dir.path()).args(["--state", &state, "run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(landed_rows(dir.path()), 2);
    let out = run(flowgate(dir.path()).args(["--state", &state, "runs", "--json"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs:#}");
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#}");

    // A root certificate that did not sign the server's: refused, and the
    // reason says so; the same with `require`, which checks the chain once a
    // root certificate is given (as libpq does).
    for mode in ["verify-full", "verify-ca", "require"] {
        let dir = tempfile::tempdir().unwrap();
        pipeline(
            dir.path(),
            &as_tls_role(&pg.url, &format!("sslmode={mode}&sslrootcert={rogue}")),
        );
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
        assert_eq!(out.code, 1, "{mode}: {}", out.all());
        assert!(
            out.all().contains("TLS")
                && out.all().contains("UnknownIssuer")
                && out
                    .all()
                    .contains("set sslrootcert to the CA that signed it"),
            "{mode}: the reason names the certificate problem\n{}",
            out.all()
        );
        assert_eq!(landed_rows(dir.path()), 0, "{mode}");
    }

    // The right CA but another name (the TCP address given as hostaddr): verify-full
    // refuses, verify-ca accepts.
    let renamed = pg.url.replacen("@127.0.0.1:", "@db.example.invalid:", 1);
    for (mode, code) in [("verify-full", 1), ("verify-ca", 0)] {
        let dir = tempfile::tempdir().unwrap();
        pipeline(
            dir.path(),
            &as_tls_role(
                &renamed,
                &format!("hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}"),
            ),
        );
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
        assert_eq!(out.code, code, "{mode}: {}", out.all());
        if code == 1 {
            assert!(
                out.all()
                    .contains("not valid for name \"db.example.invalid\"")
                    && out
                        .all()
                        .contains("connect by a name the certificate holds"),
                "{}",
                out.all()
            );
        }
    }

    // `require` without a root certificate: encrypted, the server not checked.
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), &as_tls_role(&pg.url, "sslmode=require"));
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(landed_rows(dir.path()), 2);

    // A state store whose URL names a missing root file says which file.
    let out = run(flowgate(dir.path()).args([
        "--state",
        &as_tls_role(
            &state_db,
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ),
        "runs",
    ]));
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(
        out.all().contains("sslrootcert `/nonexistent/ca.pem`"),
        "{}",
        out.all()
    );
}

/// A Unix socket (`host=/dir`) connects too, in the default mode: TLS is never
/// offered there, and the TLS connector must not stand in the way.
#[test]
fn a_unix_socket_connects_the_source_and_the_state_store() {
    let pg = Pg::new();
    pg.exec(
        "CREATE TABLE sales_order (sales_order_id int PRIMARY KEY, last_updated timestamp NOT NULL);
         INSERT INTO sales_order VALUES (1, '2026-01-01 10:00'), (2, '2026-01-01 11:00')",
    );
    let state_db = pg.rt.block_on(flowgate_core::testing::fresh_postgres_db());
    let socket = service_var("FLOWGATE_TEST_POSTGRES_SOCKET");
    let (dir, port) = socket
        .rsplit_once(':')
        .expect("FLOWGATE_TEST_POSTGRES_SOCKET is DIR:PORT");
    let over_socket = |tcp_url: &str| {
        let db = tcp_url.rsplit('/').next().unwrap();
        format!("postgres://postgres@/{db}?host={dir}&port={port}")
    };
    let work = tempfile::tempdir().unwrap();
    pipeline(work.path(), &over_socket(&pg.url));
    let state = over_socket(&state_db);
    let out = run(flowgate(work.path()).args(["--state", &state, "run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(landed_rows(work.path()), 2);
    let out = run(flowgate(work.path()).args(["--state", &state, "runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#}");
}
