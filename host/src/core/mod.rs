//! The pure core: no I/O, no clocks, no SQL. Everything here is a function of
//! its arguments, so it is tested with plain data.

pub mod chain;
pub mod machine;
pub mod names;
pub mod policy;
pub mod sanitize;
