//! The transform step: SQL models over what landed, written as files.

pub mod plan;
#[cfg(feature = "transform")]
mod run;
#[cfg(feature = "transform")]
pub use run::*;
