//! The totesys sales database for the oltp-warehouse example: create it, seed it
//! with N sales orders (and their reference data), and keep it changing.
//! Values are a deterministic function of the row number, so runs are repeatable.

use std::time::Duration;

use anyhow::{Context, Result};

pub const SCHEMA: &str = include_str!("schema.sql");

/// A connection to PostgreSQL or SQLite.
pub enum Db {
    Postgres(tokio_postgres::Client),
    Sqlite(rusqlite::Connection),
}

impl Db {
    pub async fn connect(url: &str) -> Result<Db> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let c = rusqlite::Connection::open(path).with_context(|| format!("opening {path}"))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.busy_timeout(Duration::from_secs(10))?;
            Ok(Db::Sqlite(c))
        } else {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .context("connecting to PostgreSQL")?;
            tokio::spawn(conn);
            Ok(Db::Postgres(client))
        }
    }

    pub async fn exec(&self, sql: &str) -> Result<()> {
        match self {
            Db::Postgres(c) => c
                .batch_execute(sql)
                .await
                .with_context(|| sql.chars().take(120).collect::<String>()),
            Db::Sqlite(c) => c
                .execute_batch(sql)
                .with_context(|| sql.chars().take(120).collect::<String>()),
        }
    }

    /// `n` from 1 to `count`, as the source of an INSERT … SELECT.
    fn series(&self, count: u64) -> String {
        match self {
            Db::Postgres(_) => format!("generate_series(1::bigint, {count}) AS g(n)"),
            Db::Sqlite(_) => format!(
                "(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) SELECT n FROM s) AS g"
            ),
        }
    }

    /// A timestamp `secs_expr` seconds after 30 days ago.
    fn ts(&self, secs_expr: &str) -> String {
        match self {
            Db::Postgres(_) => format!(
                "(date_trunc('second', now()) - interval '30 days' + ({secs_expr}) * interval '1 second')"
            ),
            Db::Sqlite(_) => format!(
                "strftime('%Y-%m-%d %H:%M:%f', 'now', '-30 days', '+' || ({secs_expr}) || ' seconds')"
            ),
        }
    }

    fn date(&self, days_expr: &str) -> String {
        match self {
            Db::Postgres(_) => format!("(current_date + ({days_expr})::int)"),
            Db::Sqlite(_) => format!("date('now', '+' || ({days_expr}) || ' days')"),
        }
    }

    fn now(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "clock_timestamp()::timestamp",
            Db::Sqlite(_) => "strftime('%Y-%m-%d %H:%M:%f', 'now')",
        }
    }

    async fn max_id(&self, table: &str, col: &str) -> Result<i64> {
        let sql = format!("SELECT COALESCE(MAX({col}), 0) FROM {table}");
        Ok(match self {
            Db::Postgres(c) => i64::from(c.query_one(&sql, &[]).await?.get::<_, i32>(0)),
            Db::Sqlite(c) => c.query_row(&sql, [], |r| r.get(0))?,
        })
    }
}

/// Create the schema and seed it: reference data plus `orders` sales orders,
/// half as many payments and a quarter as many purchase orders.
pub async fn seed(db: &Db, orders: u64) -> Result<()> {
    db.exec(SCHEMA).await?;
    let t = |e: &str| db.ts(e);
    let refs = [
        format!(
            "INSERT INTO currency SELECT n, CASE n WHEN 1 THEN 'GBP' WHEN 2 THEN 'USD' ELSE 'EUR' END, {0}, {0} FROM {1}",
            t("n"),
            db.series(3)
        ),
        format!(
            "INSERT INTO department SELECT n, 'Department ' || n, 'Site ' || (n % 3), 'Manager ' || n, {0}, {0} FROM {1}",
            t("n"),
            db.series(8)
        ),
        format!(
            "INSERT INTO staff SELECT n, 'First' || n, 'Last' || n, 1 + n % 8, 'staff' || n || '@totesys.test', {0}, {0} FROM {1}",
            t("n"),
            db.series(20)
        ),
        format!(
            "INSERT INTO address SELECT n, n || ' High Street', CASE WHEN n % 3 = 0 THEN 'Unit ' || n END, 'District ' || (n % 5), 'City ' || (n % 7), 'PC' || n, 'Country ' || (n % 4), '0100 ' || n, {0}, {0} FROM {1}",
            t("n"),
            db.series(30)
        ),
        format!(
            "INSERT INTO counterparty SELECT n, 'Partner ' || n || ' Ltd', 1 + n % 30, 'Contact ' || n, 'Delivery ' || n, {0}, {0} FROM {1}",
            t("n"),
            db.series(20)
        ),
        format!(
            "INSERT INTO design SELECT n, 'Design ' || n, '/designs/' || n, 'design-' || n || '.json', {0}, {0} FROM {1}",
            t("n"),
            db.series(50)
        ),
        format!(
            "INSERT INTO payment_type SELECT n, CASE n WHEN 1 THEN 'SALES_RECEIPT' WHEN 2 THEN 'SALES_REFUND' WHEN 3 THEN 'PURCHASE_PAYMENT' ELSE 'PURCHASE_REFUND' END, {0}, {0} FROM {1}",
            t("n"),
            db.series(4)
        ),
    ];
    for sql in refs {
        db.exec(&sql).await?;
    }
    let spread = "(n * 7919) % 2592000";
    db.exec(&format!(
        "INSERT INTO sales_order SELECT n, 1 + (n * 31) % 50, 1 + (n * 17) % 20, 1 + (n * 13) % 20, 1 + (n * 7) % 100,
           CAST(((n * 389) % 100000) AS NUMERIC) / 100.0 + 1, 1 + n % 3, {}, {}, 1 + (n * 11) % 30, {ts}, {ts} FROM {}",
        db.date("(n % 60)"),
        db.date("(n % 90)"),
        db.series(orders),
        ts = t(spread)
    ))
    .await?;
    let purchases = orders / 4;
    db.exec(&format!(
        "INSERT INTO purchase_order SELECT n, 1 + (n * 17) % 20, 1 + (n * 13) % 20, 'ITEM-' || (n % 500), 1 + (n * 3) % 400,
           CAST(((n * 577) % 500000) AS NUMERIC) / 100.0 + 1, 1 + n % 3, {}, {}, 1 + (n * 11) % 30, {ts}, {ts} FROM {}",
        db.date("(n % 45)"),
        db.date("(n % 75)"),
        db.series(purchases.max(1)),
        ts = t(spread)
    ))
    .await?;
    db.exec(&format!(
        "INSERT INTO \"transaction\" SELECT n, CASE WHEN n <= {orders} THEN 'SALE' ELSE 'PURCHASE' END,
           CASE WHEN n <= {orders} THEN n END, CASE WHEN n > {orders} THEN n - {orders} END, {ts}, {ts} FROM {}",
        db.series(orders + purchases.max(1)),
        ts = t(spread)
    ))
    .await?;
    db.exec(&format!(
        "INSERT INTO payment SELECT n, 2 * n - 1, 1 + (n * 13) % 20, CAST(((n * 389) % 1000000) AS NUMERIC) / 100.0 + 1, 1 + n % 3,
           1 + n % 4, (n % 3) = 0, {}, 10000000 + n, 20000000 + n, {ts}, {ts} FROM {}",
        db.date("(n % 30)"),
        db.series((orders / 2).max(1)),
        ts = t(spread)
    ))
    .await?;
    Ok(())
}

/// One round of change: `inserts` new sales orders and `updates` updated ones.
pub async fn churn_once(db: &Db, inserts: u64, updates: u64, round: u64) -> Result<()> {
    let max = db.max_id("sales_order", "sales_order_id").await?;
    let now = db.now();
    if inserts > 0 {
        db.exec(&format!(
            "INSERT INTO sales_order SELECT {max} + n, 1 + (n * 31) % 50, 1 + (n * 17) % 20, 1 + (n * 13) % 20, 1 + (n * 7) % 100,
               CAST((((n + {round}) * 389) % 100000) AS NUMERIC) / 100.0 + 1, 1 + n % 3, {}, {}, 1 + (n * 11) % 30, {now}, {now} FROM {}",
            db.date("(n % 60)"),
            db.date("(n % 90)"),
            db.series(inserts)
        ))
        .await?;
    }
    if updates > 0 && max > 0 {
        db.exec(&format!(
            "UPDATE sales_order SET units_sold = units_sold + 1, last_updated = {now}
             WHERE sales_order_id IN (SELECT 1 + ((n + {round}) * 104729) % {max} FROM {})",
            db.series(updates)
        ))
        .await?;
    }
    Ok(())
}

/// Change the database at `per_second` changes a second (half inserts, half
/// updates) for `duration`.
pub async fn churn(db: &Db, per_second: u64, duration: Duration) -> Result<u64> {
    let start = tokio::time::Instant::now();
    let mut round = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while start.elapsed() < duration {
        tick.tick().await;
        round += 1;
        let n = (per_second / 10).max(1);
        churn_once(db, n.div_ceil(2), n / 2, round).await?;
    }
    Ok(round)
}
