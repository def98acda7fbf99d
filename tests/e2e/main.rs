//! End-to-end tests: the real `tarpool` binary, the repository's example
//! bucket (made by GNU tar, umoci and skopeo), real overlay mounts, real
//! SIGKILLs. Run as root (mounting needs it).

mod harness;

mod crash;
mod daemon;
mod example;
mod exec;
mod hostile;
mod load;
mod metrics;
mod private;
mod proxy;
mod registry;
mod s3;
mod sources;
mod steps;
mod worker;
