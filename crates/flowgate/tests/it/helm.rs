//! The Helm chart (deploy/helm/flowgate), rendered and linted by helm itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const VALUES: &str = r#"
image:
  tag: "1.2.3"
deadLetters: s3://acme-events/dead-letters
credentials:
  secretName: warehouse
  env:
    WAREHOUSE_URL: warehouse-url
hostAliases:
  - ip: 10.0.0.11
    hostnames: [kafka-prod1]
consumers:
  - domain: DELIVERY
  - domain: ORDERS
    replicas: 2
"#;

/// `helm VERB` on the chart with `values` and the example's pipeline and .env.
fn helm(verb: &str, values: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("values.yaml");
    write(&v, values.as_bytes());
    let ex = root().join("examples/event-consumer");
    let mut cmd = Command::new(service_var("FLOWGATE_TEST_HELM"));
    cmd.arg(verb);
    if verb == "template" {
        cmd.arg("rel");
    }
    cmd.arg(root().join("deploy/helm/flowgate"))
        .arg("-f")
        .arg(&v)
        .arg("--set-file")
        .arg(format!(
            "pipeline.toml={}",
            ex.join("event-consumer.toml").display()
        ))
        .arg("--set-file")
        .arg(format!("dotenv={}", ex.join(".env").display()))
        .arg("--set-file")
        .arg(format!(
            "contracts.delivery\\.json={}",
            ex.join("contracts/delivery.json").display()
        ));
    cmd.output().unwrap()
}

/// Every object of a rendered chart, by a real YAML parser (PyYAML).
fn objects(yaml: &[u8]) -> Vec<Value> {
    let mut py = Command::new(service_var("FLOWGATE_TEST_PYTHON"))
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    py.stdin.take().unwrap().write_all(yaml).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn two_consumers_render_two_deployments_with_their_domain_env_mounts_and_host_aliases() {
    let out = helm("template", VALUES);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = objects(&out.stdout);
    let kind = |k: &str| all.iter().filter(|o| o["kind"] == k).collect::<Vec<_>>();
    let deployments = kind("Deployment");
    assert_eq!(deployments.len(), 2, "{all:#?}");
    for (d, domain, replicas) in [
        (deployments[0], "DELIVERY", 1),
        (deployments[1], "ORDERS", 2),
    ] {
        assert_eq!(
            d["metadata"]["name"],
            format!("rel-{}", domain.to_lowercase())
        );
        assert_eq!(d["spec"]["replicas"], replicas);
        let pod = &d["spec"]["template"];
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/scrape"],
            "true"
        );
        assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "8080");
        let spec = &pod["spec"];
        assert_eq!(spec["hostAliases"][0]["hostnames"][0], "kafka-prod1");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "ghcr.io/flowgate/flowgate:1.2.3");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args[..5],
            [
                "serve",
                "/etc/flowgate/pipeline/event-consumer.toml",
                "--param",
                &format!("domain={domain}"),
                "--listen"
            ]
        );
        let env = |name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            env("WAREHOUSE_URL")["valueFrom"]["secretKeyRef"]["key"],
            "warehouse-url"
        );
        assert_eq!(
            env("DEAD_LETTERS")["value"],
            "s3://acme-events/dead-letters"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert!(
            mounts.contains(&"/etc/flowgate/pipeline")
                && mounts.contains(&"/var/run/secrets/flowgate"),
            "{mounts:?}"
        );
        assert!(
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "warehouse")
        );
        // The contract beside the pipeline, where IMPORT_PATH_… names it.
        let pipeline = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "pipeline")
            .unwrap();
        let paths: Vec<&str> = pipeline["configMap"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            ["event-consumer.toml", ".env", "contracts/delivery.json"]
        );
    }
    // The team's .env goes in as it is, doubly quoted JSON included.
    let config = kind("ConfigMap");
    assert_eq!(config.len(), 1);
    let dotenv = config[0]["data"][".env"].as_str().unwrap();
    let original = std::fs::read_to_string(root().join("examples/event-consumer/.env")).unwrap();
    assert_eq!(dotenv.trim_end(), original.trim_end());
    let contract: Value =
        serde_json::from_str(config[0]["data"]["delivery.json"].as_str().unwrap()).unwrap();
    assert!(contract["$defs"]["DeliveryEvent"].is_object());
    assert!(
        config[0]["data"]["event-consumer.toml"]
            .as_str()
            .unwrap()
            .contains("[stream]")
    );

    let lint = helm("lint", VALUES);
    assert!(
        lint.status.success(),
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    // Without a place for dead letters, nothing renders: none may be lost with a pod.
    let out = helm(
        "template",
        &VALUES.replace("deadLetters: s3://acme-events/dead-letters\n", ""),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deadLetters"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
