//! data-egress end to end on real servers: a moto S3 bucket sends ObjectCreated
//! notifications to a moto SQS queue; flowgate takes them, routes the flag's
//! prefix to an s3s-fs bucket and, over mutual TLS, to nginx; messages are
//! deleted only once handled; a repeated message transfers nothing again.

mod common;
use common::*;

use std::path::PathBuf;

/// Run Python (the services' venv, with boto3) against moto; returns stdout.
fn moto(script: &str) -> String {
    let py = service_var("FLOWGATE_TEST_PYTHON");
    let endpoint = service_var("FLOWGATE_TEST_MOTO_ENDPOINT");
    let prelude = format!(
        "import boto3, json, sys\nE={endpoint:?}\nkw=dict(endpoint_url=E, region_name='us-east-1', aws_access_key_id='k', aws_secret_access_key='s')\ns3=boto3.client('s3', **kw)\nsqs=boto3.client('sqs', **kw)\n"
    );
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Setup {
    bucket: String,
    queue: String,
}

/// A source bucket that notifies a queue of every created object.
fn bucket_with_queue() -> Setup {
    let id = format!(
        "{:x}{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        std::process::id()
    );
    let bucket = format!("src-{id}");
    let queue = moto(&format!(
        "s3.create_bucket(Bucket='{bucket}')\nq=sqs.create_queue(QueueName='q-{id}')['QueueUrl']\narn=sqs.get_queue_attributes(QueueUrl=q, AttributeNames=['QueueArn'])['Attributes']['QueueArn']\ns3.put_bucket_notification_configuration(Bucket='{bucket}', NotificationConfiguration={{'QueueConfigurations':[{{'QueueArn':arn,'Events':['s3:ObjectCreated:*']}}]}})\nprint(q)"
    ));
    Setup { bucket, queue }
}

fn upload(bucket: &str, key: &str, body: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    moto(&format!(
        "s3.put_object(Bucket='{bucket}', Key={key:?}, Body=open({:?}, 'rb').read())",
        file.path().display().to_string()
    ));
}

fn queue_depth(queue: &str) -> u64 {
    moto(&format!(
        "a=sqs.get_queue_attributes(QueueUrl='{queue}', AttributeNames=['ApproximateNumberOfMessages','ApproximateNumberOfMessagesNotVisible'])['Attributes']\nprint(int(a['ApproximateNumberOfMessages'])+int(a['ApproximateNumberOfMessagesNotVisible']))"
    ))
    .parse()
    .unwrap()
}

fn put_lines(root: &std::path::Path) -> usize {
    let log = PathBuf::from(service_var("FLOWGATE_TEST_HTTPS_ROOT")).join("../../logs/access.log");
    let name = root.file_name().unwrap().to_string_lossy().to_string();
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("PUT /inbound/{name}/")) && l.contains("\" 20"))
        .count()
}

#[test]
fn flags_from_sqs_go_to_s3_and_https_once_and_repeated_messages_transfer_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = bucket_with_queue();
    let (dest_bucket, s3_endpoint) = fresh_s3_bucket();
    let moto_endpoint = service_var("FLOWGATE_TEST_MOTO_ENDPOINT");
    let tls = PathBuf::from(service_var("FLOWGATE_TEST_TLS_DIR"));
    let rid = format!("sqs{}", s.bucket.trim_start_matches("src-"));
    let receiver_url = format!("{}{rid}/", service_var("FLOWGATE_TEST_HTTPS_URL"));
    let receiver_root = PathBuf::from(service_var("FLOWGATE_TEST_HTTPS_ROOT")).join(&rid);

    let files = [
        ("exports/sales/run1/part-0.csv", bytes(3, 200_000)),
        ("exports/sales/run1/nested/part-1.csv", bytes(4, 9_000)),
    ];
    for (k, v) in &files {
        upload(&s.bucket, k, v);
    }
    upload(&s.bucket, "exports/sales/run1/pipeline_success.flag", b"");

    write(
        &dir.path().join("egress.toml"),
        format!(
            r#"name = "egress-sqs"
[trigger]
arrival = {{ store = "source", pattern = "**/pipeline_success.flag", queue = "{queue}", poll = "1s" }}
[stores]
source = {{ url = "s3://{src}", endpoint = "{moto_endpoint}" }}
dest = {{ url = "s3://{{{{ route.destination_bucket }}}}", endpoint = "{s3_endpoint}", access = "write" }}
outbox = {{ url = "file://./outbox", access = "read-write" }}
[routing]
rows = [
  {{ source_prefix = "exports/sales", pipeline_name = "sales", transfer_type = "S3", destination_bucket = "{dest_bucket}", destination_prefix = "incoming" }},
  {{ source_prefix = "exports/sales", pipeline_name = "sales#sft", transfer_type = "SFT", recipient_name = "receiver" }},
]
[recipients.receiver]
url = "{receiver_url}"
client_cert = "{tls}/client.pem"
client_key = "{tls}/client.key"
ca = "{tls}/ca.pem"
{steps}"#,
            queue = s.queue,
            src = s.bucket,
            tls = tls.display(),
            steps = egress_steps("{{ trigger.prefix }}", ""),
        )
        .as_bytes(),
    );

    // Drain the queue: the set-up test event, one event per data file (not
    // flags: handled and deleted), and the flag's event (two transfers).
    for _ in 0..6 {
        let out = run(flowgate(dir.path()).args(["poll", "egress.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
        if queue_depth(&s.queue) == 0 {
            break;
        }
    }
    assert_eq!(queue_depth(&s.queue), 0, "every handled message is deleted");

    let s3_root = PathBuf::from(service_var("FLOWGATE_TEST_S3_ROOT")).join(&dest_bucket);
    for (k, v) in &files {
        let got = std::fs::read(s3_root.join("incoming").join(k))
            .unwrap_or_else(|e| panic!("{k} not in the destination bucket: {e}"));
        assert!(&got == v, "{k} differs in the destination bucket");
        let got = std::fs::read(receiver_root.join(k))
            .unwrap_or_else(|e| panic!("{k} not at the receiver: {e}"));
        assert!(&got == v, "{k} differs at the receiver");
    }
    assert_eq!(put_lines(&receiver_root), files.len());

    // The same event again (SQS delivers at least once): nothing transferred again.
    let flag = "exports/sales/run1/pipeline_success.flag";
    moto(&format!(
        "h=s3.head_object(Bucket='{b}', Key='{flag}')\nbody={{'Records':[{{'eventName':'ObjectCreated:Put','s3':{{'bucket':{{'name':'{b}'}},'object':{{'key':'{flag}','size':h['ContentLength'],'eTag':h['ETag'].strip('\"')}}}}}}]}}\nsqs.send_message(QueueUrl='{q}', MessageBody=json.dumps(body))",
        b = s.bucket,
        q = s.queue
    ));
    let out = run(flowgate(dir.path()).args(["poll", "egress.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(queue_depth(&s.queue), 0);
    assert_eq!(put_lines(&receiver_root), files.len(), "no second delivery");
    let runs = run(flowgate(dir.path()).args(["runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");

    // A flag uploaded again with new content is a new event: a new transfer.
    upload(&s.bucket, flag, b"again");
    for _ in 0..3 {
        let out = run(flowgate(dir.path()).args(["poll", "egress.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
        if queue_depth(&s.queue) == 0 {
            break;
        }
    }
    let runs = run(flowgate(dir.path()).args(["runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 4, "{runs}");

    // A message that is not an S3 event: dead-lettered and deleted.
    moto(&format!(
        "sqs.send_message(QueueUrl='{}', MessageBody='this is not an event')",
        s.queue
    ));
    let out = run(flowgate(dir.path()).args(["poll", "egress.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(queue_depth(&s.queue), 0);
    let dead = std::fs::read_dir(dir.path().join(".flowgate/dead-letter/egress-sqs"))
        .unwrap()
        .flat_map(|run| std::fs::read_dir(run.unwrap().path()).unwrap())
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect::<Vec<_>>()
        .join("");
    assert!(
        dead.contains("this is not an event") && dead.contains("malformed queue message"),
        "{dead}"
    );
}
