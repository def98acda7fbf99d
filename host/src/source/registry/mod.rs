//! The registry source (OCI distribution): so far, where its credentials
//! come from ([`auth`]). Pulling is not implemented yet.

pub mod auth;
