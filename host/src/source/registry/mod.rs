//! The registry source (OCI distribution), begun: where credentials come
//! from ([`auth`]) and the protocol's client ([`client`]: manifests raw,
//! blobs by digest and range, Basic and bearer authentication). No
//! `registry://` source is served yet: discovery and the transitions do not
//! use it.

pub mod answers;
pub mod auth;
pub mod client;

#[cfg(test)]
mod tests;
