//! The registry source (OCI distribution): a `registry://` reference served
//! as an image ([`source`]), its blobs fetched by digest, resumably
//! ([`fetch`]), with credentials from the usual files ([`auth`]) and the
//! protocol's client ([`client`]: manifests raw, blobs by digest and
//! range, Basic and bearer authentication, redirects).

pub mod answers;
pub mod auth;
pub mod catalog;
pub mod client;
pub mod fetch;
pub mod source;
mod token;

pub use source::{Options, RegistrySource};

#[cfg(test)]
mod catalog_tests;
#[cfg(test)]
mod tests;
