//! The host's parsers, compiled in by path so they can be fuzzed alone.

pub use tarpool_core::{model, names};

#[path = "../../../host/src/extract/mod.rs"]
pub mod extract;
