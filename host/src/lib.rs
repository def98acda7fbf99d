//! tarpool: turns container images kept in a bucket into activated
//! copy-on-write root filesystems. See ARCHITECTURE.md for the codemap.

pub mod archive;
pub mod backend;
pub mod blobs;
pub mod cli;
pub mod container;
pub mod ctx;
pub mod engine;
pub mod error;
pub mod extract;
pub mod failpoint;
pub mod gc;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod source;
pub mod statedir;
pub mod store;
pub mod sys;
pub mod transitions;
pub mod wasm;
pub mod worker;

/// The pure core, its own crate (`host/core`): `crate::core::...` and
/// `crate::model` name it here.
pub use tarpool_core as core;
pub use tarpool_core::model;
