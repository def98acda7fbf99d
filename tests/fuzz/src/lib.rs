//! The host's parsers, compiled in by path so they can be fuzzed alone.

#[path = "../../../host/src/model.rs"]
pub mod model;

#[path = "../../../host/src/core/names.rs"]
pub mod names;

#[path = "../../../host/src/extract/mod.rs"]
pub mod extract;
