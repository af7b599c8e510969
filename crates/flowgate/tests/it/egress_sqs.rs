//! data-egress end to end on real servers: a moto S3 bucket sends ObjectCreated
//! notifications to a moto SQS queue; flowgate takes them, routes the flag's
//! prefix to an s3s-fs bucket and, over mutual TLS, to nginx; messages are
//! deleted only once handled; a repeated message transfers nothing again.

use crate::common::*;

use std::path::PathBuf;

/// Python against moto, with `s3` and `sqs` clients.
fn moto(script: &str) -> String {
    moto_python(&format!(
        "s3=boto3.client('s3', **kw)\nsqs=boto3.client('sqs', **kw)\n{script}"
    ))
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
    // The key travels as hex: it may hold any character.
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    moto(&format!(
        "s3.put_object(Bucket='{bucket}', Key=bytes.fromhex('{hex}').decode(), Body=open({:?}, 'rb').read())",
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

/// Routing rows from DynamoDB (moto), flags found by listing a local folder.
#[test]
fn routing_rows_come_from_dynamodb() {
    let dir = tempfile::tempdir().unwrap();
    let moto_endpoint = service_var("FLOWGATE_TEST_MOTO_ENDPOINT");
    let table = format!(
        "routes-{}",
        dir.path().file_name().unwrap().to_string_lossy()
    );
    moto(&format!(
        "d=boto3.client('dynamodb', **kw)\nd.create_table(TableName='{table}', KeySchema=[{{'AttributeName':'source_prefix','KeyType':'HASH'}},{{'AttributeName':'pipeline_name','KeyType':'RANGE'}}], AttributeDefinitions=[{{'AttributeName':'source_prefix','AttributeType':'S'}},{{'AttributeName':'pipeline_name','AttributeType':'S'}}], BillingMode='PAY_PER_REQUEST')\n\
         d.put_item(TableName='{table}', Item={{'source_prefix':{{'S':'exports/sales'}},'pipeline_name':{{'S':'sales'}},'transfer_type':{{'S':'S3'}},'destination_bucket':{{'S':'partner-a'}},'destination_prefix':{{'S':'in'}},'decrypt':{{'BOOL':False}},'recipient_name':{{'S':''}}}})\n\
         d.put_item(TableName='{table}', Item={{'source_prefix':{{'S':'exports/other'}},'pipeline_name':{{'S':'other'}},'transfer_type':{{'S':'S3'}},'destination_bucket':{{'S':'partner-b'}},'destination_prefix':{{'S':'in'}}}})"
    ));
    write(
        &dir.path().join("source/exports/sales/run1/a.csv"),
        b"a,b\n1,2\n",
    );
    write(
        &dir.path()
            .join("source/exports/sales/run1/pipeline_success.flag"),
        b"",
    );
    write(
        &dir.path().join("p.toml"),
        format!(
            r#"name = "dyn"
[trigger]
arrival = {{ store = "source", pattern = "**/pipeline_success.flag" }}
[stores]
source = {{ url = "file://./source" }}
dest = {{ url = "file://./buckets/{{{{ route.destination_bucket }}}}", access = "write" }}
outbox = {{ url = "file://./outbox", access = "read-write" }}
[routing]
dynamodb = {{ table = "{table}", endpoint = "{moto_endpoint}" }}
[recipients.receiver]
url = "https://127.0.0.1:9/"
{steps}"#,
            steps = egress_steps("run1", "")
        )
        .as_bytes(),
    );
    let out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        std::fs::read(dir.path().join("buckets/partner-a/in/run1/a.csv")).unwrap(),
        b"a,b\n1,2\n"
    );
    assert!(!dir.path().join("buckets/partner-b").exists());
}

/// Routing rows from a SQL table (SQLite here; PostgreSQL reads the same way).
#[test]
fn routing_rows_come_from_a_sql_table() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(dir.path().join("routes.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE egress_routing (source_prefix TEXT, pipeline_name TEXT, transfer_type TEXT, destination_bucket TEXT, destination_prefix TEXT, decrypt INTEGER, recipient_name TEXT, source_bucket TEXT, PRIMARY KEY (source_prefix, pipeline_name));
             INSERT INTO egress_routing VALUES ('exports', 'all', 'S3', 'partner-c', 'drop', 0, '', 'producer');",
        )
        .unwrap();
    }
    write(
        &dir.path().join("source/exports/sales/run7/x.bin"),
        &bytes(9, 5000),
    );
    write(
        &dir.path()
            .join("source/exports/sales/run7/pipeline_success.flag"),
        b"",
    );
    write(
        &dir.path().join("p.toml"),
        format!(
            r#"name = "sqlroute"
[trigger]
arrival = {{ store = "source", pattern = "**/pipeline_success.flag" }}
[stores]
source = {{ url = "file://./source" }}
routes = {{ url = "sqlite://routes.db" }}
dest = {{ url = "file://./buckets/{{{{ route.destination_bucket }}}}", access = "write" }}
outbox = {{ url = "file://./outbox", access = "read-write" }}
[routing]
table = "routes:egress_routing"
[recipients.receiver]
url = "https://127.0.0.1:9/"
{steps}"#,
            steps = egress_steps("run7", "")
        )
        .as_bytes(),
    );
    // `exports/sales/run7` has no row of its own: its nearest parent with rows,
    // `exports`, routes it.
    let out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        std::fs::read(dir.path().join("buckets/partner-c/drop/run7/x.bin")).unwrap(),
        bytes(9, 5000)
    );
}

/// SIGKILL in the middle of a transfer taken from SQS: the message is not deleted;
/// after a restart the destination is complete and byte-identical.
#[test]
fn sigkill_mid_transfer_keeps_the_message_and_a_restart_completes_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let s = bucket_with_queue();
    let (dest_bucket, s3_endpoint) = fresh_s3_bucket();
    let moto_endpoint = service_var("FLOWGATE_TEST_MOTO_ENDPOINT");
    let files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| {
            (
                format!("exports/big/run1/part-{i:02}.bin"),
                bytes(100 + i, 3_000_000),
            )
        })
        .collect();
    for (k, v) in &files {
        upload(&s.bucket, k, v);
    }
    upload(&s.bucket, "exports/big/run1/pipeline_success.flag", b"");
    write(
        &dir.path().join("egress.toml"),
        format!(
            r#"name = "egress-crash"
[trigger]
arrival = {{ store = "source", pattern = "**/pipeline_success.flag", queue = "{queue}", poll = "1s", visibility = "3s" }}
[stores]
source = {{ url = "s3://{src}", endpoint = "{moto_endpoint}" }}
dest = {{ url = "s3://{{{{ route.destination_bucket }}}}", endpoint = "{s3_endpoint}", access = "write" }}
outbox = {{ url = "file://./outbox", access = "read-write" }}
[routing]
rows = [ {{ source_prefix = "exports/big", pipeline_name = "big", transfer_type = "S3", destination_bucket = "{dest_bucket}", destination_prefix = "in" }} ]
[recipients.receiver]
url = "https://127.0.0.1:9/"
{steps}"#,
            queue = s.queue,
            src = s.bucket,
            steps = egress_steps("run1", "").replace(
                "exclude = [\"pipeline_success.flag\"] }",
                "exclude = [\"pipeline_success.flag\"], concurrency = 1 }"
            ),
        )
        .as_bytes(),
    );
    let dest = PathBuf::from(service_var("FLOWGATE_TEST_S3_ROOT"))
        .join(&dest_bucket)
        .join("in/run1");
    let count = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .map(|r| {
                r.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("part-"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    // Serve until some objects have been copied, then SIGKILL.
    let mut child = flowgate(dir.path())
        .args(["serve", ".", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while count(&dest) < 3 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "nothing was copied"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let copied = count(&dest);
    assert!(copied < files.len(), "killed before the end ({copied})");
    assert!(!dest.join("_manifest.json").exists());
    assert_eq!(queue_depth(&s.queue), 1, "the message was not deleted");

    // Restart: once the message is visible again, the copy completes.
    let start = std::time::Instant::now();
    while queue_depth(&s.queue) > 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(90),
            "the message was never handled"
        );
        let out = run(flowgate(dir.path()).args(["poll", "egress.toml"]));
        assert!(out.code == 0, "{}", out.all());
    }
    for (k, v) in &files {
        let name = k.rsplit('/').next().unwrap();
        let got = std::fs::read(dest.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(&got == v, "{name} differs");
    }
    assert!(dest.join("_manifest.json").is_file());
}

/// Keys that would leave the outbox (`..`, an empty segment as in an absolute
/// path, a control character) on an SFT route: that object is set aside with
/// its reason, the rest is delivered, the run is partial and its message goes;
/// nothing is written outside the outbox and the quarantine.
#[test]
fn an_object_whose_key_would_escape_the_outbox_is_set_aside_and_the_rest_delivered() {
    for (case, bad_key) in [
        ("dotdot", "exports/evil/run1/../../../escape.txt"),
        ("absolute", "exports/evil/run1//etc/escape.txt"),
        ("control", "exports/evil/run1/bell\u{7}.txt"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = bucket_with_queue();
        let r = receiver_folder();
        let moto_endpoint = service_var("FLOWGATE_TEST_MOTO_ENDPOINT");
        upload(&s.bucket, "exports/evil/run1/good.txt", b"fine");
        upload(&s.bucket, bad_key, b"escaped");
        upload(&s.bucket, "exports/evil/run1/pipeline_success.flag", b"");
        let tls = r.tls.display();
        write(
            &dir.path().join("p.toml"),
            format!(
                r#"name = "evil"
[trigger]
arrival = {{ store = "source", pattern = "**/pipeline_success.flag", queue = "{queue}", poll = "1s", visibility = "1s" }}
[stores]
source = {{ url = "s3://{src}", endpoint = "{moto_endpoint}" }}
dest = {{ url = "file://./unused/{{{{ route.destination_bucket }}}}", access = "write" }}
outbox = {{ url = "file://./box/outbox", access = "read-write" }}
[routing]
rows = [ {{ source_prefix = "exports/evil", pipeline_name = "evil#sft", transfer_type = "SFT", recipient_name = "receiver" }} ]
[recipients.receiver]
url = "{url}"
client_cert = "{tls}/client.pem"
client_key = "{tls}/client.key"
ca = "{tls}/ca.pem"
{steps}"#,
                src = s.bucket,
                queue = s.queue,
                url = r.url,
                steps = egress_steps("run1", ""),
            )
            .as_bytes(),
        );
        // The flag's event comes after the others, which are not flags.
        let mut out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
        for _ in 0..5 {
            if out.code != 0 {
                break;
            }
            out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
        }
        assert_eq!(out.code, 3, "{case}: partial\n{}", out.all());
        assert_eq!(queue_depth(&s.queue), 0, "{case}: the message goes");
        assert_eq!(
            std::fs::read(r.root.join("run1/good.txt")).unwrap(),
            b"fine",
            "{case}: the rest is delivered"
        );
        assert!(
            out.all().contains("no store path can name it"),
            "{case}: the run says what was set aside\n{}",
            out.all()
        );
        assert!(
            !out.all().contains('\u{7}'),
            "{case}: a control character is shown escaped, never sent to the terminal\n{}",
            out.all()
        );
        // Kept with its reason, under a safe name.
        let q = dir.path().join(".flowgate/quarantine/source");
        let mut kept = Vec::new();
        let mut stack = vec![q.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    kept.push(e.path());
                }
            }
        }
        kept.sort();
        assert_eq!(kept.len(), 2, "{case}: the object and its report: {kept:?}");
        let object = kept
            .iter()
            .find(|p| !p.to_string_lossy().ends_with(".error.json"))
            .unwrap();
        assert_eq!(std::fs::read(object).unwrap(), b"escaped");
        let report = kept
            .iter()
            .find(|p| p.to_string_lossy().ends_with(".error.json"))
            .unwrap();
        assert!(
            std::fs::read_to_string(report)
                .unwrap()
                .contains("rename or move it at the source"),
            "{case}"
        );
        // Nothing anywhere but under the outbox and flowgate's own folder.
        let mut stray = Vec::new();
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !p.starts_with(dir.path().join("box/outbox"))
                    && !p.starts_with(dir.path().join(".flowgate"))
                    && p != dir.path().join("p.toml")
                {
                    stray.push(p);
                }
            }
        }
        assert!(
            stray.is_empty(),
            "{case}: written outside the outbox: {stray:?}"
        );
    }
}

/// A dataset of many objects sends one S3 event per object before its flag: one
/// `poll` takes them all (not ten at a time), deletes the ones that need no run in
/// batches, and runs the flag's transfer.
#[test]
fn one_poll_drains_a_dataset_of_many_object_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = bucket_with_queue();
    let moto_endpoint = service_var("FLOWGATE_TEST_MOTO_ENDPOINT");
    let parts = 45;
    let script: String = (0..parts)
        .map(|i| format!("s3.put_object(Bucket='{}', Key='exports/many/run1/part-{i:03}.csv', Body=b'{i}')\n", s.bucket))
        .collect();
    moto(&script);
    upload(&s.bucket, "exports/many/run1/pipeline_success.flag", b"");
    write(
        &dir.path().join("drain.toml"),
        format!(
            r#"name = "drain"
[trigger]
arrival = {{ store = "source", pattern = "**/pipeline_success.flag", queue = "{queue}", poll = "1s" }}
[stores]
source = {{ url = "s3://{src}", endpoint = "{moto_endpoint}" }}
local = {{ url = "file://./local", access = "write" }}
[[steps]]
id = "copy"
copy = {{ from = "source:{{{{ trigger.prefix }}}}", to = "local:{{{{ trigger.prefix }}}}", exclude = ["pipeline_success.flag"] }}
"#,
            queue = s.queue,
            src = s.bucket,
        )
        .as_bytes(),
    );
    let out = run(flowgate(dir.path()).args(["poll", "drain.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(queue_depth(&s.queue), 0, "one poll drained the queue");
    let copied = std::fs::read_dir(dir.path().join("local/exports/many/run1"))
        .unwrap()
        .count();
    assert_eq!(copied, parts + 1, "every part and the manifest");
}

/// A transfer that failed runs again when SQS delivers its message again (a new
/// attempt of the same event), and its message goes once it succeeds.
#[test]
fn finding_08_a_redelivered_message_runs_a_failed_transfer_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = bucket_with_queue();
    let moto_endpoint = service_var("FLOWGATE_TEST_MOTO_ENDPOINT");
    upload(&s.bucket, "exports/retry/run1/a.csv", b"1\n");
    upload(&s.bucket, "exports/retry/run1/pipeline_success.flag", b"");
    write(
        &dir.path().join("retry.toml"),
        format!(
            r#"name = "retry"
[trigger]
arrival = {{ store = "source", pattern = "**/pipeline_success.flag", queue = "{queue}", poll = "1s", visibility = "1s" }}
[stores]
source = {{ url = "s3://{src}", endpoint = "{moto_endpoint}" }}
local = {{ url = "file://./local", access = "write" }}
[[steps]]
id = "copy"
copy = {{ from = "source:{{{{ trigger.prefix }}}}", to = "local:{{{{ trigger.prefix }}}}", exclude = ["pipeline_success.flag"] }}
[policy]
retry = {{ attempts = 1 }}
"#,
            queue = s.queue,
            src = s.bucket,
        )
        .as_bytes(),
    );
    // The destination is blocked: a file stands where a folder must go.
    write(&dir.path().join("local/exports"), b"in the way");
    let out = run(flowgate(dir.path()).args(["poll", "retry.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(
        queue_depth(&s.queue),
        1,
        "a failed transfer keeps its message"
    );
    std::fs::remove_file(dir.path().join("local/exports")).unwrap();
    // SQS delivers it again once its visibility runs out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while queue_depth(&s.queue) > 0 {
        assert!(std::time::Instant::now() < deadline, "never ran again");
        std::thread::sleep(std::time::Duration::from_millis(1200));
        let out = run(flowgate(dir.path()).args(["poll", "retry.toml"]));
        assert!(out.code == 0 || out.code == 1, "{}", out.all());
    }
    assert_eq!(
        std::fs::read(dir.path().join("local/exports/retry/run1/a.csv")).unwrap(),
        b"1\n"
    );
    let runs = run(flowgate(dir.path()).args(["runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    let ok = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "succeeded")
        .expect("a run succeeded");
    assert_eq!(
        ok["attempt"], 2,
        "a new attempt of the same event: {runs:#}"
    );
}
