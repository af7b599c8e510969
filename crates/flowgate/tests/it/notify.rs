//! Failure and recovery notices reach a webhook (Slack-compatible JSON) and a
//! real SMTP server.

use std::time::{Duration, Instant};

use crate::common::*;

fn mails_about(pipeline: &str) -> Vec<String> {
    let dir = std::path::PathBuf::from(service_var("FLOWGATE_TEST_SMTP_MAILDIR")).join("new");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|m| m.contains(pipeline))
        .collect()
}

#[test]
fn failure_then_recovery_is_notified_by_webhook_and_email() {
    let dir = tempfile::tempdir().unwrap();
    let (port, bodies) = receiver();
    let smtp = service_var("FLOWGATE_TEST_SMTP_URL");
    let name = format!("notify-{}", std::process::id());
    let pipeline = format!(
        "name = \"{name}\"\n[stores]\nsrc = {{ url = \"file://./src\" }}\ndst = {{ url = \"file://./dst\", access = \"read-write\" }}\n[[steps]]\nid = \"copy\"\ncopy = {{ from = \"src:\", to = \"dst:\" }}\n[notify]\nwebhook = \"http://127.0.0.1:{port}/hook\"\nemail = {{ smtp = \"{smtp}\", from = \"flowgate@example.test\", to = [\"oncall@example.test\"] }}\n"
    );
    write(&dir.path().join("p.toml"), pipeline.as_bytes());

    // The source directory is missing: the run fails.
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        !out.stderr.contains("notification not delivered"),
        "{}",
        out.stderr
    );
    {
        let b = bodies.lock().unwrap();
        assert_eq!(b.len(), 1, "{b:?}");
        let v: serde_json::Value = serde_json::from_str(&b[0]).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.contains(&format!("pipeline `{name}` failed")),
            "{text}"
        );
        assert!(
            text.contains("does not exist"),
            "the notice says why: {text}"
        );
    }
    let mails = mails_about(&name);
    assert_eq!(mails.len(), 1, "one failure email");
    assert!(mails[0].contains("To: oncall@example.test"), "{}", mails[0]);
    assert!(mails[0].contains("failed"), "{}", mails[0]);

    // Fixed: the next run succeeds and says the pipeline recovered.
    write(&dir.path().join("src/a.txt"), b"hello");
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let b = bodies.lock().unwrap().clone();
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(
        b[1].contains(&format!("pipeline `{name}` recovered")),
        "{}",
        b[1]
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while mails_about(&name).len() < 2 {
        assert!(Instant::now() < deadline, "no recovery email");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(mails_about(&name).iter().any(|m| m.contains("recovered")));

    // A plain success after that is not notified (not in the default `on`).
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0);
    assert_eq!(bodies.lock().unwrap().len(), 2);
}
