//! The oltp-warehouse example end to end on real services: PostgreSQL as source
//! and warehouse, s3s-fs as landing and processed stores.

use crate::common::*;

fn flowgate_with(dir: &std::path::Path, src: &Pg, wh: &Pg, bucket: &str) -> std::process::Command {
    let mut c = flowgate(dir);
    c.env("TOTESYS_URL", &src.url)
        .env("WAREHOUSE_URL", &wh.url)
        .env("LANDING_URL", format!("s3://{bucket}/landing"))
        .env("PROCESSED_URL", format!("s3://{bucket}/processed"))
        .env("AWS_ENDPOINT_URL", service_var("FLOWGATE_TEST_S3_ENDPOINT"));
    c
}

#[test]
fn warehouse_equals_the_models_applied_to_the_source() {
    let src = Pg::new();
    let wh = Pg::new();
    let (bucket, _) = fresh_s3_bucket();
    let dir = tempfile::tempdir().unwrap();
    oltp_example(dir.path());
    src.rt.block_on(async {
        let db = totesys_generator::Db::connect(&src.url).await.unwrap();
        totesys_generator::seed(&db, 500).await.unwrap();
    });

    // Snapshot.
    let out = run(flowgate_with(dir.path(), &src, &wh, &bucket).args(["run", "pipeline.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());

    // Inserts and updates; two rows with equal cursor values; then a transaction
    // that commits late with an earlier timestamp than rows already extracted.
    src.rt.block_on(async {
        let db = totesys_generator::Db::connect(&src.url).await.unwrap();
        totesys_generator::churn_once(&db, 30, 40, 7).await.unwrap();
    });
    src.exec(
        "INSERT INTO sales_order SELECT 10001 + n, 1, 1, 1, 5, 9.99, 1, current_date, current_date, 1, now(), timestamp '2030-01-01 00:00:00'
         FROM generate_series(0, 1) n",
    );
    let out = run(flowgate_with(dir.path(), &src, &wh, &bucket).args(["run", "pipeline.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    src.exec(
        "INSERT INTO sales_order VALUES (10005, 2, 2, 2, 7, 1.50, 2, current_date, current_date, 2, now(), timestamp '2030-01-01 00:00:00' - interval '2 minutes')",
    );
    let out = run(flowgate_with(dir.path(), &src, &wh, &bucket).args(["run", "pipeline.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());

    // The latest version of each order in the warehouse equals the source.
    let source = src.rows(
        "SELECT sales_order_id, units_sold, unit_price::text, staff_id FROM sales_order ORDER BY 1",
    );
    let warehouse = wh.rows(
        "SELECT sales_order_id, units_sold, unit_price::text, sales_staff_id FROM (
           SELECT *, row_number() OVER (PARTITION BY sales_order_id ORDER BY source_updated_at DESC) rn FROM fact_sales_order) f
         WHERE rn = 1 ORDER BY 1",
    );
    assert_eq!(
        warehouse.len(),
        source.len(),
        "every order is in the warehouse"
    );
    assert_eq!(warehouse, source);
    // One row per order version, none twice.
    assert_eq!(
        wh.rows("SELECT count(*) = count(DISTINCT (sales_order_id, source_updated_at)) FROM fact_sales_order"),
        [[Some("t".into())]]
    );
    // The dimension equals the same join done on the source.
    let staff_src = src.rows(
        "SELECT s.staff_id, s.first_name, d.department_name, d.location FROM staff s JOIN department d USING (department_id) ORDER BY 1",
    );
    let staff_wh =
        wh.rows("SELECT staff_id, first_name, department_name, location FROM dim_staff ORDER BY 1");
    assert_eq!(staff_wh, staff_src);

    // Nothing changed: the next run writes no landing objects and loads nothing new.
    let out = run(flowgate_with(dir.path(), &src, &wh, &bucket).args(["run", "pipeline.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("no changes, no object written"),
        "{}",
        out.stdout
    );

    // The source grows a column: it is kept in landing with a warning, and the
    // models, which do not select it, go on unaffected.
    src.exec("ALTER TABLE staff ADD COLUMN nickname text; UPDATE staff SET nickname = 'Ace', first_name = 'Renamed', last_updated = now() WHERE staff_id = 1");
    let out = run(flowgate_with(dir.path(), &src, &wh, &bucket).args(["run", "pipeline.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("warning: `staff` has a new column `nickname`"),
        "{}",
        out.stdout
    );
    let staff_src = src.rows(
        "SELECT s.staff_id, s.first_name, d.department_name, d.location FROM staff s JOIN department d USING (department_id) ORDER BY 1",
    );
    assert_eq!(
        wh.rows("SELECT staff_id, first_name, department_name, location FROM dim_staff ORDER BY 1"),
        staff_src
    );
    assert_eq!(staff_src[0][1].as_deref(), Some("Renamed"));
}
