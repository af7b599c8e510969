//! Connectors, one folder per role and one file per system. New connectors
//! start here; the older ones (object stores in `store/`, SQL in `sql/`, SQS in
//! `queue.rs`, DynamoDB in `routing.rs`) move here as they are next changed.

pub mod kv;
