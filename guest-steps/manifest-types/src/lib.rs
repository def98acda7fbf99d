//! The native mirrors of the types of the `manifest-step` world of
//! `wit/tarpool.wit` (`interface types`), shared by the manifest components
//! (`manifest`, `rootfs-dir`) so their logic is plain Rust that can be
//! unit-tested and fuzzed natively.
//!
//! On `wasm32` each component generates its own bindings (distinct types per
//! crate); [`guest_parse!`] implements the world's `Guest::parse` over them,
//! converting to and from these types, so the conversion is written once.

/// Whether the unit is a prefix of objects or one archive (mirrors `unit-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    Prefix,
    Archive,
    /// An image in a registry: one member, `manifest`; everything else is
    /// read by digest (`manifests/sha256/<hex>`, `blobs/sha256/<hex>`).
    Registry,
}

/// One member of the unit (mirrors `member`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub size: u64,
}

/// Mirrors `manifest-options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestOptions {
    pub os: String,
    pub architecture: String,
    /// `None`: an entry without a variant (or `""`, or `v1` on amd64) is
    /// preferred; `Some(v)`: only entries with variant `v` are taken.
    pub arch_variant: Option<String>,
    /// Indexes followed below the top one (`index.json`).
    pub max_index_depth: u32,
}

impl Default for ManifestOptions {
    /// linux/amd64, no variant, one nested index: the guests' tests' default
    /// (the host always passes its own options; its `max_index_depth` is 4).
    fn default() -> Self {
        ManifestOptions {
            os: "linux".into(),
            architecture: "amd64".into(),
            arch_variant: None,
            max_index_depth: 1,
        }
    }
}

/// Mirrors `layer-media`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerMedia {
    Tar,
    Gzip,
    Zstd,
    Detect,
}

/// Mirrors `layer-ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub member: String,
    pub media: LayerMedia,
    pub digest: Option<String>,
    pub diff_id: Option<String>,
    pub size: Option<u64>,
}

/// Mirrors `runtime-config`: the image config's `Env`, `Entrypoint`, `Cmd`,
/// `WorkingDir` and `User` (empty when absent or null).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// Mirrors `image-layout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayout {
    /// The format's name (`oci-layout`, `lxc-rootfs`, ...), which the
    /// policy's `formats` list allows.
    pub format: String,
    /// Bottom layer first.
    pub layers: Vec<LayerRef>,
    pub config_digest: Option<String>,
    /// The runtime config, when the format has one.
    pub config: Option<RuntimeConfig>,
}

/// Reads a member of the unit, whole.
pub type Read<'a> = dyn FnMut(&str) -> Result<Vec<u8>, String> + 'a;

/// Implements the `manifest-step` world's `Guest` trait for `$step` with
/// `$parse`, a function like
/// `fn(UnitKind, &[Member], &ManifestOptions, &mut Read) -> Result<Option<ImageLayout>, String>`
/// on this crate's types, reading members through the `source` import.
///
/// Invoke it in the module where `wit_bindgen::generate!` made the world's
/// bindings: it names their `Guest`, `tarpool::steps::types` and
/// `tarpool::steps::source::read_member` from there.
#[macro_export]
macro_rules! guest_parse {
    ($step:ty, $parse:path) => {
        impl Guest for $step {
            fn parse(
                unit: tarpool::steps::types::UnitKind,
                members: ::std::vec::Vec<tarpool::steps::types::Member>,
                options: tarpool::steps::types::ManifestOptions,
            ) -> ::std::result::Result<
                ::std::option::Option<tarpool::steps::types::ImageLayout>,
                ::std::string::String,
            > {
                use tarpool::steps::types as wit;
                let unit = match unit {
                    wit::UnitKind::Prefix => $crate::UnitKind::Prefix,
                    wit::UnitKind::Archive => $crate::UnitKind::Archive,
                    wit::UnitKind::Registry => $crate::UnitKind::Registry,
                };
                let members: ::std::vec::Vec<$crate::Member> = members
                    .into_iter()
                    .map(|m| $crate::Member {
                        name: m.name,
                        size: m.size,
                    })
                    .collect();
                let options = $crate::ManifestOptions {
                    os: options.os,
                    architecture: options.architecture,
                    arch_variant: options.arch_variant,
                    max_index_depth: options.max_index_depth,
                };
                let mut read = |name: &str| tarpool::steps::source::read_member(name);
                let ::std::option::Option::Some(layout) =
                    $parse(unit, &members, &options, &mut read)?
                else {
                    return ::std::result::Result::Ok(::std::option::Option::None);
                };
                ::std::result::Result::Ok(::std::option::Option::Some(wit::ImageLayout {
                    format: layout.format,
                    layers: layout
                        .layers
                        .into_iter()
                        .map(|l| wit::LayerRef {
                            member: l.member,
                            media: match l.media {
                                $crate::LayerMedia::Tar => wit::LayerMedia::Tar,
                                $crate::LayerMedia::Gzip => wit::LayerMedia::Gzip,
                                $crate::LayerMedia::Zstd => wit::LayerMedia::Zstd,
                                $crate::LayerMedia::Detect => wit::LayerMedia::Detect,
                            },
                            digest: l.digest,
                            diff_id: l.diff_id,
                            size: l.size,
                        })
                        .collect(),
                    config_digest: layout.config_digest,
                    config: layout.config.map(|c| wit::RuntimeConfig {
                        env: c.env,
                        entrypoint: c.entrypoint,
                        cmd: c.cmd,
                        working_dir: c.working_dir,
                        user: c.user,
                    }),
                }))
            }
        }
    };
}

#[cfg(test)]
mod tests;
