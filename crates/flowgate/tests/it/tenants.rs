//! The tenant-datasets example as its users run it: stages published as a
//! dataset per tenant and environment, checks on LATEST and on a named version,
//! uploads into a real PostgreSQL with and without delete-first.

use std::path::Path;

use crate::common::*;

/// A copy of examples/tenant-datasets (scripts keep their modes).
fn example(to: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tenant-datasets");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The environments' buckets exist beforehand; runs find theirs by prefix.
    for env in ["scraper-dev", "scraper-prod"] {
        std::fs::create_dir_all(to.join("buckets").join(env)).unwrap();
    }
}

fn fg(dir: &Path, args: &[&str]) -> Ran {
    run(flowgate(dir).args(args))
}

#[test]
fn tenants_publish_test_and_upload_their_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    example(d);
    for (project, env) in [("CAT-BE", "PROD"), ("CAT-BE-DEV", "DEV")] {
        let out = fg(
            d,
            &[
                "run",
                "process.toml",
                "-p",
                &format!("project={project}"),
                "-p",
                &format!("env={env}"),
            ],
        );
        assert_eq!(out.code, 0, "{project}: {}", out.all());
    }
    // DOG-NL's stage 2a fails: its run fails and publishes nothing.
    let out = fg(
        d,
        &[
            "run",
            "process.toml",
            "-p",
            "project=DOG-NL",
            "-p",
            "env=PROD",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("the source page changed its layout"),
        "{}",
        out.all()
    );
    assert!(dataset_versions(d, "dog-nl-prod").is_empty());
    // CAT-BE-DEV is the tenant cat-be in the DEV bucket.
    let prod = dataset_versions(d, "cat-be-prod");
    let dev = dataset_versions(d, "cat-be-dev");
    assert_eq!((prod.len(), dev.len()), (1, 1));
    let rows = std::fs::read_to_string(d.join(format!(
        "buckets/scraper-dev/cat-be/datasets/{}/3b/rows.csv",
        dev[0]
    )))
    .unwrap();
    assert_eq!(rows.lines().count(), 41, "40 rows and a header");
    assert!(
        rows.lines().nth(1).unwrap().starts_with("cat-be,1,item-1,"),
        "{rows}"
    );

    // Checks on LATEST with a sample of 10, then on the version by name with all.
    let named = format!("dataset={}", prod[0]);
    for args in [
        &["-p", "sample=10"][..],
        &["-p", "sample=all", "-p", named.as_str()][..],
    ] {
        let out = fg(
            d,
            &[
                &["run", "test.toml", "-p", "project=CAT-BE", "-p", "env=PROD"][..],
                args,
            ]
            .concat(),
        );
        assert_eq!(out.code, 0, "{}", out.all());
    }
    let results = tree(&d.join(format!(
        "buckets/scraper-prod/cat-be/test_results/{}",
        prod[0]
    )));
    let counts: Vec<u64> = results
        .iter()
        .filter(|f| f.0.ends_with("results.json"))
        .map(|f| {
            serde_json::from_slice::<serde_json::Value>(&f.1).unwrap()["records"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        counts.len(),
        2,
        "{:?}",
        results.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(counts.contains(&10) && counts.contains(&120), "{counts:?}");

    // Uploads: append twice, then delete-first replaces; a failing upload keeps the rows.
    let pg = Pg::new();
    let upload = |delete_first: &str| {
        run(flowgate(d).env("DATABASE_URL", &pg.url).args([
            "run",
            "upload.toml",
            "-p",
            "project=CAT-BE",
            "-p",
            "env=PROD",
            "-p",
            &format!("delete_first={delete_first}"),
        ]))
    };
    let count = || {
        pg.rows("SELECT count(*) FROM items WHERE tenant = 'cat-be'")[0][0]
            .clone()
            .unwrap()
    };
    for (flag, expected) in [("no", "120"), ("no", "240"), ("yes", "120")] {
        let out = upload(flag);
        assert_eq!(out.code, 0, "{flag}: {}", out.all());
        assert_eq!(count(), expected, "delete_first={flag}");
    }
    pg.exec("ALTER TABLE items ADD CONSTRAINT refuse_new CHECK (id < 0) NOT VALID");
    let out = upload("yes");
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(count(), "120", "the failed upload's delete was rolled back");
    assert!(
        !out.all().contains(&pg.url),
        "the database URL (a secret) leaked: {}",
        out.all()
    );
}

#[test]
fn a_parameter_cannot_lead_a_command_out_of_the_pipeline_folder() {
    let dir = tempfile::tempdir().unwrap();
    // The example names the dataset after the project: a `/` is refused there.
    example(dir.path());
    let out = fg(
        dir.path(),
        &[
            "run",
            "process.toml",
            "-p",
            "project=../../lib",
            "-p",
            "env=DEV",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .contains("dataset name `../../lib-dev` is empty or has a `/`"),
        "{}",
        out.all()
    );
    // Without a dataset, the working directory itself is confined.
    write(
        &dir.path().join("p.toml"),
        br#"name = "p"
[params]
project = {}
[[steps]]
id = "s"
command = { argv = ["./run_update.sh"], dir = "Project/{{ params.project }}" }
"#,
    );
    let out = fg(dir.path(), &["run", "p.toml", "-p", "project=../lib"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .contains("the working directory `Project/../lib` leaves the pipeline's folder"),
        "{}",
        out.all()
    );
}

/// `process` for CAT-BE in PROD, with extra environment variables.
fn process_prod(d: &Path, env: &[(&str, &str)]) -> Ran {
    let mut cmd = flowgate(d);
    cmd.args([
        "run",
        "process.toml",
        "-p",
        "project=CAT-BE",
        "-p",
        "env=PROD",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

#[test]
fn the_environments_bucket_is_found_by_its_prefix_on_s3_unless_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    example(d);
    let root = service_var("FLOWGATE_TEST_S3_ROOT");
    let endpoint = service_var("FLOWGATE_TEST_S3_ENDPOINT");
    let prefix = format!("fg-{}", uuid_like());
    let (prod, dev) = (format!("{prefix}-prod-7f3a"), format!("{prefix}-dev-1b2c"));
    for b in [&prod, &dev] {
        std::fs::create_dir_all(Path::new(&root).join(b)).unwrap();
    }
    let s3 = [
        ("BUCKET_ROOT", "s3://"),
        ("BUCKET_PREFIX", prefix.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let out = process_prod(d, &s3);
    assert_eq!(out.code, 0, "{}", out.all());
    let datasets = |bucket: &str| {
        tree(&Path::new(&root).join(bucket))
            .iter()
            .filter(|(p, _)| p.ends_with("3b/rows.csv"))
            .count()
    };
    assert_eq!(datasets(&prod), 1, "one dataset in the PROD bucket");
    assert!(
        tree(&Path::new(&root).join(&dev)).is_empty(),
        "nothing in DEV's"
    );

    // A second bucket with the prefix: the run fails before any step, naming both.
    let old = format!("{prefix}-prod-old");
    std::fs::create_dir_all(Path::new(&root).join(&old)).unwrap();
    let out = process_prod(d, &s3);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains(&format!(
            "2 buckets start with `{prefix}-prod` (`{prod}`, `{old}`); make the prefix longer"
        )),
        "{}",
        out.all()
    );
    // Named: that bucket, though others start with its name.
    let mut named = s3.to_vec();
    named.push(("S3_BUCKET_NAME", old.as_str()));
    let out = process_prod(d, &named);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(datasets(&old), 1);

    // Locally, no folder with the prefix: the run says which there are.
    std::fs::remove_dir_all(d.join("buckets/scraper-prod")).unwrap();
    let out = process_prod(d, &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .contains("no bucket starts with `scraper-prod` (there are `scraper-dev`)"),
        "{}",
        out.all()
    );
}
