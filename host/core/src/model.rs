//! Plain data shared by the engine, the format steps and the store.
//! Mirrors the records in `wit/tarpool.wit`; the host's `wasm/` converts between them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlobKind {
    Tar,
    Gzip,
    Zstd,
    Empty,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub kind: BlobKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitKind {
    Prefix,
    Archive,
    /// An image in a registry: its one object is the manifest or index its
    /// reference names (member `manifest`); what that names is fetched by
    /// digest.
    Registry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub size: u64,
}

/// An image format's name (`ad-hoc`, `docker-archive`, ... or whatever a
/// configured manifest component recognises).
pub type ImageFormat = String;

/// The image's runtime configuration (from its config blob, or the format's
/// conventions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerMedia {
    Tar,
    Gzip,
    Zstd,
    Detect,
}

impl LayerMedia {
    /// The name the store records with a verified blob (the serde name).
    pub const fn name(self) -> &'static str {
        match self {
            LayerMedia::Tar => "tar",
            LayerMedia::Gzip => "gzip",
            LayerMedia::Zstd => "zstd",
            LayerMedia::Detect => "detect",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub member: String,
    pub media: LayerMedia,
    pub digest: Option<String>,
    pub diff_id: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayout {
    pub format: ImageFormat,
    pub layers: Vec<LayerRef>,
    pub config_digest: Option<String>,
    pub config: Option<RuntimeConfig>,
}
