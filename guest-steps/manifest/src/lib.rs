//! Format step `manifest`: works out an image's layers from the member list
//! of its unit and the manifest files it reads.
//!
//! The logic is a plain function ([`parse`]) so it can be unit-tested
//! natively; on `wasm32` the crate also exports the `manifest-step` world of
//! `wit/tarpool.wit`, reading members through the imported `source`
//! interface. This code reads untrusted bytes: it never panics on any input,
//! and every error is one bounded line without control characters that
//! blames the input.

use guest_text::one_line;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Whether the unit is a prefix of objects or one archive (mirrors `unit-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    Prefix,
    Archive,
}

/// One member of the unit (mirrors `member`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub size: u64,
}

/// Mirrors `image-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    AdHoc,
    DockerArchive,
    OciArchive,
    OciLayout,
    SingleLayer,
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

/// Mirrors `image-layout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayout {
    pub format: ImageFormat,
    pub layers: Vec<LayerRef>,
    pub config_digest: Option<String>,
}

/// Reads a member of the unit, whole.
pub type Read<'a> = dyn FnMut(&str) -> Result<Vec<u8>, String> + 'a;

/// Longest name quoted in an error, in characters.
const MAX_NAME_CHARS: usize = 80;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Works out the image's layers. An `Err` blames the input; it is one line
/// of at most about 200 characters with no control characters.
pub fn parse(
    unit: UnitKind,
    members: &[Member],
    read: &mut Read<'_>,
) -> Result<ImageLayout, String> {
    parse_inner(unit, members, read).map_err(|e| one_line(&e))
}

fn parse_inner(
    unit: UnitKind,
    members: &[Member],
    read: &mut Read<'_>,
) -> Result<ImageLayout, String> {
    // Look for the marker files without indexing every member: a flat
    // rootfs archive may list hundreds of thousands.
    let has = |marker: &str| {
        members
            .iter()
            .any(|m| m.name.ends_with(marker) && normalize(&m.name).is_ok_and(|n| n == marker))
    };
    let oci = has("oci-layout") && has("index.json");
    match unit {
        UnitKind::Prefix => {
            if members.is_empty() {
                return Err("prefix holds no members".into());
            }
            if oci {
                return parse_oci(&Index::new(members), read, ImageFormat::OciLayout);
            }
            for (have, lack) in [("oci-layout", "index.json"), ("index.json", "oci-layout")] {
                if has(have) {
                    return Err(format!(
                        "prefix has `{have}` but no `{lack}`, so it is not an OCI layout"
                    ));
                }
            }
            parse_ad_hoc(members)
        }
        UnitKind::Archive => {
            if oci {
                parse_oci(&Index::new(members), read, ImageFormat::OciArchive)
            } else if has("manifest.json") {
                parse_docker(&Index::new(members), read)
            } else {
                Ok(ImageLayout {
                    format: ImageFormat::SingleLayer,
                    layers: vec![LayerRef {
                        member: String::new(),
                        media: LayerMedia::Tar,
                        digest: None,
                        diff_id: None,
                        size: None,
                    }],
                    config_digest: None,
                })
            }
        }
    }
}

// ---------------------------------------------------------------- members

/// Members by normalised name (`./a//b` and `a/b` are the same member).
struct Index<'m> {
    by_name: HashMap<String, Slot<'m>>,
}

enum Slot<'m> {
    One(&'m Member),
    Many(usize),
}

impl<'m> Index<'m> {
    fn new(members: &'m [Member]) -> Self {
        let mut by_name = HashMap::with_capacity(members.len());
        for m in members {
            // Names that do not normalise (absolute, `..`) can never be
            // referenced by a valid manifest; leave them out.
            let Ok(norm) = normalize(&m.name) else {
                continue;
            };
            by_name
                .entry(norm)
                .and_modify(|slot| {
                    *slot = match slot {
                        Slot::One(_) => Slot::Many(2),
                        Slot::Many(n) => Slot::Many(n.saturating_add(1)),
                    }
                })
                .or_insert(Slot::One(m));
        }
        Index { by_name }
    }

    /// Looks up a normalised name; `what` says who refers to it.
    fn get(&self, what: &str, norm: &str) -> Result<&'m Member, String> {
        match self.by_name.get(norm) {
            Some(Slot::One(m)) => Ok(m),
            Some(Slot::Many(n)) => Err(format!(
                "{what}: member {} appears {n} times",
                quote_name(norm)
            )),
            None => Err(format!("{what} names missing member {}", quote_name(norm))),
        }
    }
}

/// Normalises a member name or a path from a manifest: relative, `/`
/// separated, no `..`, with `.` and empty components dropped.
fn normalize(path: &str) -> Result<String, String> {
    if path.starts_with('/') {
        return Err(format!("path {} is absolute", quote_name(path)));
    }
    if path.contains('\0') {
        return Err(format!("path {} contains NUL", quote_name(path)));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("path {} leaves the image", quote_name(path))),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!("path {} names no member", quote_name(path)));
    }
    Ok(parts.join("/"))
}

/// Reads and decodes a JSON member; `label` names it in errors.
fn read_json<T: DeserializeOwned>(
    read: &mut Read<'_>,
    member: &Member,
    label: &str,
) -> Result<T, String> {
    let bytes = read_bytes(read, member, label)?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{label}: {e}"))
}

/// Reads a member whole, checking it has the size it is listed with.
fn read_bytes(read: &mut Read<'_>, member: &Member, label: &str) -> Result<Vec<u8>, String> {
    let bytes = read(&member.name).map_err(|e| format!("{label}: cannot read: {e}"))?;
    if u64::try_from(bytes.len()) != Ok(member.size) {
        return Err(format!(
            "{label}: read {} bytes but the member is listed as {} bytes",
            bytes.len(),
            member.size
        ));
    }
    Ok(bytes)
}

// ----------------------------------------------------------------- ad hoc

fn parse_ad_hoc(members: &[Member]) -> Result<ImageLayout, String> {
    let mut layers: BTreeMap<u64, &Member> = BTreeMap::new();
    for m in members {
        let n = layer_number(&m.name)?;
        if layers.insert(n, m).is_some() {
            return Err(format!("layer {n}.tar is listed twice"));
        }
    }
    let mut expected: u64 = 1;
    for &n in layers.keys() {
        if n != expected {
            return Err(format!(
                "layer {expected}.tar missing (the prefix has layers up to {}.tar)",
                layers.keys().next_back().copied().unwrap_or(n)
            ));
        }
        expected = expected.saturating_add(1);
    }
    Ok(ImageLayout {
        format: ImageFormat::AdHoc,
        layers: layers
            .into_values()
            .map(|m| LayerRef {
                member: m.name.clone(),
                media: LayerMedia::Detect,
                digest: None,
                diff_id: None,
                size: None,
            })
            .collect(),
        config_digest: None,
    })
}

/// `N.tar` with N decimal, no leading zeros, N >= 1.
fn layer_number(name: &str) -> Result<u64, String> {
    let not_layer = || {
        format!(
            "prefix member {} is not a layer `N.tar` (an ad-hoc image holds only 1.tar, 2.tar, ...)",
            quote_name(name)
        )
    };
    let digits = name.strip_suffix(".tar").ok_or_else(not_layer)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_layer());
    }
    if digits.starts_with('0') {
        return Err(format!(
            "prefix member {} is not a layer name: layers are numbered from 1 without leading zeros",
            quote_name(name)
        ));
    }
    digits
        .parse::<u64>()
        .map_err(|_| format!("prefix member {}: layer number too large", quote_name(name)))
}

// -------------------------------------------------------------------- OCI

#[derive(Deserialize)]
struct OciLayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    image_layout_version: String,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    platform: Option<Platform>,
}

#[derive(Deserialize, Clone)]
struct Platform {
    architecture: String,
    os: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct OciManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

fn parse_oci(
    idx: &Index<'_>,
    read: &mut Read<'_>,
    format: ImageFormat,
) -> Result<ImageLayout, String> {
    let layout: OciLayoutFile =
        read_json(read, idx.get("oci-layout", "oci-layout")?, "oci-layout")?;
    if layout.image_layout_version != "1.0.0" {
        return Err(format!(
            "oci-layout: unsupported imageLayoutVersion {}",
            quote_name(&layout.image_layout_version)
        ));
    }
    let index: OciIndex = read_json(read, idx.get("index.json", "index.json")?, "index.json")?;
    check_schema("index.json", index.schema_version)?;

    let mut chosen = choose("index.json", &index.manifests)?;
    let mut label = String::from("index.json");
    if is_index(&chosen.media_type) {
        let nested_label = format!("nested index {}", short(&chosen.digest));
        let nested: OciIndex = read_blob(idx, read, &chosen, &label, &nested_label)?;
        check_schema(&nested_label, nested.schema_version)?;
        chosen = choose(&nested_label, &nested.manifests)?;
        if is_index(&chosen.media_type) {
            return Err(format!(
                "{nested_label} points to a further index; only one level of nesting is followed"
            ));
        }
        label = nested_label;
    }
    if !is_manifest(&chosen.media_type) {
        return Err(format!(
            "{label}: entry {} has unsupported media type {}",
            short(&chosen.digest),
            quote_name(&chosen.media_type)
        ));
    }
    let manifest: OciManifest = read_blob(idx, read, &chosen, &label, "manifest")?;
    check_schema("manifest", manifest.schema_version)?;
    if let Some(mt) = &manifest.media_type {
        if !is_manifest(mt) {
            return Err(format!(
                "manifest: unsupported mediaType {}",
                quote_name(mt)
            ));
        }
    }
    if manifest.config.media_type != OCI_CONFIG && manifest.config.media_type != DOCKER_CONFIG {
        return Err(format!(
            "manifest: config media type {} is not a container image config",
            quote_name(&manifest.config.media_type)
        ));
    }
    let config_digest = manifest.config.digest.clone();
    let config: ImageConfig = read_blob(idx, read, &manifest.config, "manifest", "config")?;
    let diff_ids = diff_ids(config.rootfs, manifest.layers.len(), "manifest")?;

    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, (desc, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let what = format!("manifest: layer {}", i + 1);
        let media = layer_media(&desc.media_type).ok_or_else(|| {
            format!(
                "{what} has unsupported media type {}",
                quote_name(&desc.media_type)
            )
        })?;
        let member = blob_member(idx, desc, &what)?;
        layers.push(LayerRef {
            member: member.name.clone(),
            media,
            digest: Some(desc.digest.clone()),
            diff_id: Some(diff_id),
            size: Some(desc.size),
        });
    }
    Ok(ImageLayout {
        format,
        layers,
        config_digest: Some(config_digest),
    })
}

fn check_schema(label: &str, version: Option<u64>) -> Result<(), String> {
    match version {
        None | Some(2) => Ok(()),
        Some(v) => Err(format!("{label}: unsupported schemaVersion {v}")),
    }
}

fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

fn layer_media(media_type: &str) -> Option<LayerMedia> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => LayerMedia::Tar,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => LayerMedia::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => LayerMedia::Zstd,
        _ => return None,
    })
}

/// Picks the one image out of an index: the only (distinct) manifest, or
/// else the linux/amd64 one.
fn choose(label: &str, entries: &[Descriptor]) -> Result<Descriptor, String> {
    if entries.is_empty() {
        return Err(format!("{label} lists no manifests"));
    }
    let mut seen = HashSet::new();
    let distinct: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| is_manifest(&d.media_type) || is_index(&d.media_type))
        .filter(|d| seen.insert(d.digest.as_str()))
        .collect();
    match distinct.as_slice() {
        [] => {
            return Err(format!(
                "{label}: none of its {} entries is an image manifest or index (first has media type {})",
                entries.len(),
                quote_name(&entries[0].media_type)
            ))
        }
        [one] => return Ok((*one).clone()),
        _ => {}
    }
    if distinct.iter().all(|d| d.platform.is_none()) {
        return Err(format!(
            "{label} holds {} images without platforms; cannot choose one",
            distinct.len()
        ));
    }
    let amd64: Vec<&Descriptor> = distinct
        .iter()
        .copied()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .collect();
    let plain: Vec<&Descriptor> = amd64
        .iter()
        .copied()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| matches!(p.variant.as_deref(), None | Some("") | Some("v1")))
        })
        .collect();
    match (amd64.as_slice(), plain.as_slice()) {
        ([], _) => Err(format!(
            "{label} has no linux/amd64 image among its {} entries",
            distinct.len()
        )),
        ([one], _) | (_, [one]) => Ok((*one).clone()),
        (many, _) => Err(format!(
            "{label} lists {} linux/amd64 images; cannot choose one",
            many.len()
        )),
    }
}

/// Checks a descriptor's digest and returns its hex part.
fn sha256_hex<'d>(what: &str, digest: &'d str) -> Result<&'d str, String> {
    let Some((alg, hex)) = digest.split_once(':') else {
        return Err(format!(
            "{what}: digest {} is not `algorithm:hex`",
            quote_name(digest)
        ));
    };
    if alg != "sha256" {
        return Err(format!(
            "{what}: digest algorithm {} is not supported (only sha256)",
            quote_name(alg)
        ));
    }
    if !is_hex64(hex) {
        return Err(format!(
            "{what}: malformed sha256 digest {}",
            quote_name(digest)
        ));
    }
    Ok(hex)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The member holding a descriptor's blob, checked to exist with the
/// descriptor's size.
fn blob_member<'m>(idx: &Index<'m>, desc: &Descriptor, what: &str) -> Result<&'m Member, String> {
    let hex = sha256_hex(what, &desc.digest)?;
    let path = format!("blobs/sha256/{hex}");
    let member = idx.get(what, &path)?;
    if member.size != desc.size {
        return Err(format!(
            "{what}: member {} is {} bytes but its descriptor says {}",
            quote_name(&path),
            member.size,
            desc.size
        ));
    }
    Ok(member)
}

fn read_blob<T: DeserializeOwned>(
    idx: &Index<'_>,
    read: &mut Read<'_>,
    desc: &Descriptor,
    referrer: &str,
    label: &str,
) -> Result<T, String> {
    let member = blob_member(idx, desc, referrer)?;
    read_json(read, member, label)
}

fn diff_ids(rootfs: RootFs, layers: usize, manifest: &str) -> Result<Vec<String>, String> {
    if rootfs.kind != "layers" {
        return Err(format!(
            "config: unsupported rootfs type {}",
            quote_name(&rootfs.kind)
        ));
    }
    if rootfs.diff_ids.len() != layers {
        return Err(format!(
            "config: rootfs lists {} diff_ids but the {manifest} has {layers} layers",
            rootfs.diff_ids.len()
        ));
    }
    for (i, d) in rootfs.diff_ids.iter().enumerate() {
        sha256_hex(&format!("config: diff_id {}", i + 1), d)?;
    }
    Ok(rootfs.diff_ids)
}

/// A digest shortened for messages.
fn short(digest: &str) -> String {
    let cut: String = digest.chars().take(19).collect();
    quote_name(&cut)
}

// ----------------------------------------------------------------- docker

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn parse_docker(idx: &Index<'_>, read: &mut Read<'_>) -> Result<ImageLayout, String> {
    let member = idx.get("manifest.json", "manifest.json")?;
    let bytes = read_bytes(read, member, "manifest.json")?;
    // Count the entries before decoding them, so that an archive of many
    // images is named as such (and costs no memory per entry).
    let count = serde_json::from_slice::<Vec<IgnoredAny>>(&bytes)
        .map_err(|e| format!("manifest.json: {e}"))?
        .len();
    if count != 1 {
        return Err(format!(
            "manifest.json: archive holds {count} images, expected 1"
        ));
    }
    let [entry]: [DockerEntry; 1] =
        serde_json::from_slice(&bytes).map_err(|e| format!("manifest.json: {e}"))?;

    let config_path = normalize(&entry.config).map_err(|e| format!("manifest.json: Config {e}"))?;
    let config_member = idx.get("manifest.json: Config", &config_path)?;
    let config: ImageConfig = read_json(read, config_member, "config")?;
    let diff_ids = diff_ids(config.rootfs, entry.layers.len(), "manifest.json")?;

    let mut layers = Vec::with_capacity(entry.layers.len());
    for (i, (path, diff_id)) in entry.layers.iter().zip(diff_ids).enumerate() {
        let what = format!("manifest.json: layer {}", i + 1);
        let norm = normalize(path).map_err(|e| format!("{what}: {e}"))?;
        let member = idx.get(&what, &norm)?;
        let digest = norm
            .strip_prefix("blobs/sha256/")
            .filter(|h| is_hex64(h))
            .map(|h| format!("sha256:{h}"));
        layers.push(LayerRef {
            member: member.name.clone(),
            media: LayerMedia::Detect,
            digest,
            diff_id: Some(diff_id),
            size: None,
        });
    }
    let config_digest = config_path
        .strip_prefix("blobs/sha256/")
        .or_else(|| config_path.strip_suffix(".json"))
        .filter(|h| is_hex64(h))
        .map(|h| format!("sha256:{h}"));
    Ok(ImageLayout {
        format: ImageFormat::DockerArchive,
        layers,
        config_digest,
    })
}

// ------------------------------------------------------------------- text

// ------------------------------------------------------------- component

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "manifest-step" });

    use tarpool::steps::source::read_member;
    use tarpool::steps::types as wit;

    struct Step;

    impl Guest for Step {
        fn parse(
            unit: wit::UnitKind,
            members: Vec<wit::Member>,
        ) -> Result<wit::ImageLayout, String> {
            let unit = match unit {
                wit::UnitKind::Prefix => super::UnitKind::Prefix,
                wit::UnitKind::Archive => super::UnitKind::Archive,
            };
            let members: Vec<super::Member> = members
                .into_iter()
                .map(|m| super::Member {
                    name: m.name,
                    size: m.size,
                })
                .collect();
            let layout = super::parse(unit, &members, &mut |name: &str| read_member(name))?;
            Ok(wit::ImageLayout {
                format: match layout.format {
                    super::ImageFormat::AdHoc => wit::ImageFormat::AdHoc,
                    super::ImageFormat::DockerArchive => wit::ImageFormat::DockerArchive,
                    super::ImageFormat::OciArchive => wit::ImageFormat::OciArchive,
                    super::ImageFormat::OciLayout => wit::ImageFormat::OciLayout,
                    super::ImageFormat::SingleLayer => wit::ImageFormat::SingleLayer,
                },
                layers: layout
                    .layers
                    .into_iter()
                    .map(|l| wit::LayerRef {
                        member: l.member,
                        media: match l.media {
                            super::LayerMedia::Tar => wit::LayerMedia::Tar,
                            super::LayerMedia::Gzip => wit::LayerMedia::Gzip,
                            super::LayerMedia::Zstd => wit::LayerMedia::Zstd,
                            super::LayerMedia::Detect => wit::LayerMedia::Detect,
                        },
                        digest: l.digest,
                        diff_id: l.diff_id,
                        size: l.size,
                    })
                    .collect(),
                config_digest: layout.config_digest,
            })
        }
    }

    export!(Step);
}

/// Quotes a name for a message (see [`guest_text::quote`]).
fn quote_name(name: &str) -> String {
    guest_text::quote(name, MAX_NAME_CHARS)
}

#[cfg(test)]
mod tests;
