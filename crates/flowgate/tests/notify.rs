//! Failure and recovery notices reach a webhook (Slack-compatible JSON) and a
//! real SMTP server.

mod common;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A small HTTP receiver: records each POST body, answers 200.
fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            b.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (port, bodies)
}

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
