//! flowgate's integration tests: one test binary (one link of the engine instead of
//! one per file). Each module is one area; `cargo nextest run -E "test(/^egress::/)"`
//! runs one of them.

mod bigquery;
mod command;
mod common;
mod concurrency;
mod consul;
mod copy_s3;
mod crash;
mod datasets;
mod demo;
mod egress;
mod egress_crash;
mod egress_sqs;
mod extract;
mod findings;
mod freshness;
mod helm;
mod journal;
mod kv;
mod load;
mod matrix;
mod notify;
mod oltp_crash;
mod oltp_warehouse;
mod oltp_workers;
mod params;
mod postgres_tls;
mod rerun;
mod secrets;
mod stream;
mod tenants;
mod triggers;
mod validate;
mod workers;
