//! Step kinds, one module each.

pub mod copy;
