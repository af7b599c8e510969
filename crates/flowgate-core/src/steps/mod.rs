//! Step kinds, one module each.

pub mod copy;
pub mod deliver;
pub mod extract;
pub mod load;
#[cfg(feature = "transform")]
pub mod transform;
