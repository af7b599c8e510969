//! flowgate's engine: the pipeline model and its validated plan, the state store,
//! the run executor with its policies, triggers, and object stores.

#[cfg(feature = "aws")]
pub mod aws;
pub mod clock;
pub mod code;
pub mod config;
pub mod connect;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod formats;
pub mod lane;
pub mod notify;
pub mod pg;
pub mod plan;
pub mod quarantine;
#[cfg(feature = "aws")]
pub mod queue;
pub mod records;
pub mod routing;
pub mod secret;
#[cfg(feature = "aws")]
pub mod secrets_manager;
pub mod sql;
pub mod state;
pub mod steps;
pub mod store;
pub mod stream;
pub mod template;
pub mod testing;
pub mod trigger;
pub mod units;
