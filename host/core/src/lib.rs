//! tarpool's pure core: the transition table and its decisions, chain IDs,
//! names, policy evaluation, sanitising, and the types the stages share.
//! No I/O, no clocks, no SQL: everything here is a function of its
//! arguments, tested with plain data. That is enforced by Cargo: this crate
//! depends on no async runtime, database, WebAssembly engine or filesystem
//! code (see its `Cargo.toml`), so the host's I/O cannot creep in.

pub mod chain;
pub mod machine;
pub mod model;
pub mod names;
pub mod plan;
pub mod policy;
pub mod registry;
pub mod sanitize;
pub mod states;
