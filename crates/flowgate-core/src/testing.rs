//! Helpers for tests that talk to the real services started by `scripts/services.sh`.
//! A test that needs a service and cannot find it fails with instructions; it never
//! passes by skipping.

/// The value of a service variable written by `scripts/services.sh env`.
pub fn service_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set, so the service this test needs cannot be reached.\n\
             Run every test with `scripts/test.sh`, or start the services yourself:\n\
             \x20   scripts/services.sh start && eval \"$(scripts/services.sh env)\""
        ),
    }
}

/// A new, empty PostgreSQL database on the test server; returns its URL.
pub async fn fresh_postgres_db() -> String {
    let admin = service_var("FLOWGATE_TEST_POSTGRES_URL");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {admin}: {e}"));
    tokio::spawn(conn);
    let name = format!("fg_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let mut url =
        url::Url::parse(&admin).unwrap_or_else(|e| panic!("bad FLOWGATE_TEST_POSTGRES_URL: {e}"));
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A new, empty bucket on the test S3 server; returns `(bucket, endpoint)`.
/// s3s-fs serves each sub-directory of its root as a bucket.
pub fn fresh_s3_bucket() -> (String, String) {
    let root = service_var("FLOWGATE_TEST_S3_ROOT");
    let endpoint = service_var("FLOWGATE_TEST_S3_ENDPOINT");
    let bucket = format!("fg-{}", uuid::Uuid::now_v7().simple());
    std::fs::create_dir_all(std::path::Path::new(&root).join(&bucket))
        .unwrap_or_else(|e| panic!("cannot create bucket directory under {root}: {e}"));
    (bucket, endpoint)
}

/// A named point where a test may have the process die at once, as a SIGKILL
/// would there: `FLOWGATE_TEST_CRASH_AT=<name>`. Used where a kill timed from
/// outside could not land reliably (between two writes that follow each other).
pub fn crash_point(name: &str) {
    if std::env::var("FLOWGATE_TEST_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("flowgate: crashing at `{name}` (FLOWGATE_TEST_CRASH_AT)");
        std::process::abort();
    }
}

/// A Google service account's key file in `dir`, as `gcloud iam
/// service-accounts keys create` writes it, with a fresh RSA key from openssl.
pub fn service_account_key(dir: &std::path::Path, email: &str) -> std::path::PathBuf {
    let pem = dir.join("sa-key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .output()
        .unwrap_or_else(|e| panic!("openssl (to make a test key) cannot run: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = std::fs::read_to_string(&pem).unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
    let file = dir.join("service-account.json");
    let body = serde_json::json!({
        "type": "service_account", "project_id": "test-project", "private_key_id": "kid1",
        "private_key": key, "client_email": email,
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    std::fs::write(&file, body.to_string()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    file
}
