//! An example manifest step: the layout skopeo's `dir:` transport writes
//! (`skopeo copy docker://... dir:PATH`, `skopeo sync --dest dir`), which
//! people use to carry images across an air gap or keep a mirror on disk.
//! tarpool reads OCI layouts and image archives, not this. The layout:
//!
//! - `version`: `Directory Transport Version: 1.x`;
//! - `manifest.json`: the image's registry manifest (OCI or docker schema
//!   2), or, copied with `--all`, its index, each of whose manifests is
//!   `<hex>.manifest.json`;
//! - every blob (the config, each layer) named by its sha256 in hex.
//!
//! The step answers `none` for anything without that `version` file. It
//! checks the config's sha256 itself (the host checks each layer against
//! the digest this step gives it, as it unpacks it), takes the diff IDs
//! and runtime configuration from the config, and picks the host's
//! platform from an index. Its format is `skopeo-dir`: a policy must allow
//! it (`[formats] allow`).
//!
//! The logic is a plain function ([`parse`]) over a member reader, so
//! `cargo test` runs it natively; on `wasm32` the crate exports the world.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// How a layer's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Tar,
    Gzip,
    Zstd,
    /// The host tells from the bytes.
    Detect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub member: String,
    pub media: Media,
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub layers: Vec<Layer>,
    pub config_digest: String,
    pub config: Config,
}

/// The platform to pick from an index.
pub struct Platform<'a> {
    pub os: &'a str,
    pub architecture: &'a str,
    pub variant: Option<&'a str>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<DescPlatform>,
}

#[derive(Deserialize)]
struct DescPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

/// `sha256:<64 lowercase hex>`: its hex.
fn hex_of(digest: &str) -> Result<&str, String> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| format!("`{}` is not a sha256 digest", short(digest)))
}

/// A name cut for a message.
fn short(s: &str) -> String {
    s.chars().take(80).filter(|c| !c.is_control()).collect()
}

fn json<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| short(&format!("{what}: {e}")))
}

/// Reads the layout, or `None` when `members` is not one (no `version`
/// file of the directory transport). `read` reads a member whole.
pub fn parse(
    members: &[&str],
    read: &mut dyn FnMut(&str) -> Result<Vec<u8>, String>,
    platform: &Platform<'_>,
) -> Result<Option<Layout>, String> {
    if !members.contains(&"version") || !members.contains(&"manifest.json") {
        return Ok(None);
    }
    let version = read("version")?;
    if !version.starts_with(b"Directory Transport Version: 1.") {
        return Ok(None);
    }
    let mut manifest: Manifest = json("manifest.json", &read("manifest.json")?)?;
    if let Some(list) = manifest.manifests.take() {
        // An index (`skopeo copy --all`): the host's platform.
        let d = list
            .iter()
            .find(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    p.os == platform.os
                        && p.architecture == platform.architecture
                        && (platform.variant.is_none() || p.variant.as_deref() == platform.variant)
                })
            })
            .ok_or_else(|| {
                format!(
                    "the index has no manifest for {}/{}",
                    platform.os, platform.architecture
                )
            })?;
        let name = format!("{}.manifest.json", hex_of(&d.digest)?);
        let bytes = read(&name)?;
        check(&d.digest, &bytes)?;
        manifest = json(&name, &bytes)?;
        if manifest.manifests.is_some() {
            return Err("an index inside an index".into());
        }
    }
    let config = manifest
        .config
        .ok_or("manifest.json has no config: not an image manifest")?;
    let layers = manifest
        .layers
        .ok_or("manifest.json has no layers: not an image manifest")?;
    let config_bytes = read(hex_of(&config.digest)?)?;
    check(&config.digest, &config_bytes)?;
    if config_bytes.len() as u64 != config.size {
        return Err(format!(
            "the config is {} bytes, the manifest says {}",
            config_bytes.len(),
            config.size
        ));
    }
    let image: ImageConfig = json("the config", &config_bytes)?;
    if image.rootfs.diff_ids.len() != layers.len() {
        return Err(format!(
            "{} layers but {} diff IDs in the config",
            layers.len(),
            image.rootfs.diff_ids.len()
        ));
    }
    let mut out = Vec::new();
    for (l, diff_id) in layers.iter().zip(&image.rootfs.diff_ids) {
        let media = match l.media_type.as_str() {
            "application/vnd.oci.image.layer.v1.tar" => Media::Tar,
            "application/vnd.oci.image.layer.v1.tar+gzip" => Media::Gzip,
            // Docker's schema 2 says gzip for layers that skopeo copies
            // from a `docker save` archive uncompressed (their digest is
            // their diff ID): the bytes decide.
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar" => Media::Detect,
            "application/vnd.oci.image.layer.v1.tar+zstd" => Media::Zstd,
            other => return Err(format!("a layer of media type `{}`", short(other))),
        };
        hex_of(diff_id)?;
        out.push(Layer {
            member: hex_of(&l.digest)?.to_string(),
            media,
            digest: l.digest.clone(),
            diff_id: diff_id.clone(),
            size: l.size,
        });
    }
    let run = image.config.unwrap_or_default();
    Ok(Some(Layout {
        layers: out,
        config_digest: config.digest,
        config: Config {
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
        },
    }))
}

/// `bytes` hash to `digest`.
fn check(digest: &str, bytes: &[u8]) -> Result<(), String> {
    let got = format!("sha256:{}", hex_of_bytes(&Sha256::digest(bytes)));
    if got != digest {
        return Err(format!("a blob named {} holds {got}", short(digest)));
    }
    Ok(())
}

fn hex_of_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "wit", world: "manifest-step" });

    use tarpool::steps::source::read_member;
    use tarpool::steps::types::{LayerMedia, LayerRef, RuntimeConfig};

    struct Step;

    impl Guest for Step {
        fn parse(
            unit: UnitKind,
            members: Vec<Member>,
            options: ManifestOptions,
        ) -> Result<Option<ImageLayout>, String> {
            if matches!(unit, UnitKind::Registry) {
                return Ok(None);
            }
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            let platform = super::Platform {
                os: &options.os,
                architecture: &options.architecture,
                variant: options.arch_variant.as_deref(),
            };
            let layout = super::parse(&names, &mut |n| read_member(n), &platform)?;
            Ok(layout.map(|l| ImageLayout {
                format: "skopeo-dir".into(),
                layers: l
                    .layers
                    .into_iter()
                    .map(|x| LayerRef {
                        member: x.member,
                        media: match x.media {
                            super::Media::Tar => LayerMedia::Tar,
                            super::Media::Gzip => LayerMedia::Gzip,
                            super::Media::Zstd => LayerMedia::Zstd,
                            super::Media::Detect => LayerMedia::Detect,
                        },
                        digest: Some(x.digest),
                        diff_id: Some(x.diff_id),
                        size: Some(x.size),
                    })
                    .collect(),
                config_digest: Some(l.config_digest),
                config: Some(RuntimeConfig {
                    env: l.config.env,
                    entrypoint: l.config.entrypoint,
                    cmd: l.config.cmd,
                    working_dir: l.config.working_dir,
                    user: l.config.user,
                }),
            }))
        }
    }

    export!(Step);
}

#[cfg(test)]
mod tests;
