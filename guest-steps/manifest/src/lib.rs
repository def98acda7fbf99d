//! Format step `manifest`: works out an image's layers from the member list
//! of its unit and the manifest files it reads.
//!
//! The built-in manifest component. It knows `ad-hoc` (a prefix of `1.tar`,
//! `2.tar`, ...), `oci-layout` (a prefix with `oci-layout` and
//! `index.json`), `oci-archive`, `docker-archive` and `single-layer` (any
//! other archive, such as a root filesystem that holds a `/manifest.json`:
//! the archive's structure, not a marker's name, decides; see
//! `ArchiveShape`); for a prefix that is none of these (no OCI markers and
//! no member named like a layer) it answers `none`, and the host asks the
//! next manifest component. Every JSON document passes the `strict`
//! pre-pass (no duplicate or case-variant keys) before it is decoded; the
//! image config gives the runtime config; an index is followed down to
//! the options' platform, `max_index_depth` nested indexes deep.
//!
//! The logic is a plain function ([`parse`]) so it can be unit-tested
//! natively; on `wasm32` the crate also exports the `manifest-step` world of
//! `wit/tarpool.wit`, reading members through the imported `source`
//! interface. This code reads untrusted bytes: it never panics on any input,
//! and every error is one bounded line without control characters that
//! blames the input.

use guest_text::one_line;
use oci_spec::image::{
    Arch, Config, Descriptor, History, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
    Os, Platform, RootFs,
};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap, HashSet};

mod strict;
use strict::Shape;

pub use manifest_types::{
    ImageLayout, LayerMedia, LayerRef, ManifestOptions, Member, Read, RuntimeConfig, UnitKind,
};

/// The formats this component knows; `image-layout.format` carries
/// [`ImageFormat::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    AdHoc,
    DockerArchive,
    OciArchive,
    OciLayout,
    SingleLayer,
    Registry,
}

impl ImageFormat {
    /// The format's name in `image-layout.format` and the policy's `formats`.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::AdHoc => "ad-hoc",
            ImageFormat::DockerArchive => "docker-archive",
            ImageFormat::OciArchive => "oci-archive",
            ImageFormat::OciLayout => "oci-layout",
            ImageFormat::SingleLayer => "single-layer",
            ImageFormat::Registry => "registry",
        }
    }
}

/// Longest name quoted in an error, in characters.
const MAX_NAME_CHARS: usize = 80;

/// Most entries of a runtime-config list (`Env`, `Entrypoint`, `Cmd`).
pub const MAX_CONFIG_ENTRIES: usize = 1000;
/// Longest runtime-config string (an `Env` entry, `WorkingDir`...), in bytes.
pub const MAX_CONFIG_STRING: usize = 64 * 1024;

/// Docker's media types, which oci-spec reads as [`MediaType::Other`].
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Works out the image's layers. `Ok(None)`: the unit is not in a format
/// this component knows (a prefix with neither an OCI layout nor a member
/// named like an ad-hoc layer). An `Err` blames the input; it is one line
/// of at most about 200 characters with no control characters.
pub fn parse(
    unit: UnitKind,
    members: &[Member],
    options: &ManifestOptions,
    read: &mut Read<'_>,
) -> Result<Option<ImageLayout>, String> {
    parse_inner(unit, members, options, read).map_err(|e| one_line(&e))
}

fn parse_inner(
    unit: UnitKind,
    members: &[Member],
    opts: &ManifestOptions,
    read: &mut Read<'_>,
) -> Result<Option<ImageLayout>, String> {
    // Look for the marker files without indexing every member: a flat
    // rootfs archive may list hundreds of thousands.
    let has = |marker: &str| {
        members
            .iter()
            .any(|m| m.name.ends_with(marker) && normalize(&m.name).is_ok_and(|n| n == marker))
    };
    let mut oci = has("oci-layout") && has("index.json");
    let mut docker = has("manifest.json");
    match unit {
        UnitKind::Prefix => {
            if members.is_empty() {
                return Err("prefix holds no members".into());
            }
            if oci {
                let idx = Index::new(members);
                return parse_oci_unit(&idx, read, opts, ImageFormat::OciLayout, docker, false)
                    .map(Some);
            }
            for (have, lack) in [("oci-layout", "index.json"), ("index.json", "oci-layout")] {
                if has(have) {
                    return Err(format!(
                        "prefix has `{have}` but no `{lack}`, so it is not an OCI layout"
                    ));
                }
            }
            if !members.iter().any(|m| looks_like_layer(&m.name)) {
                return Ok(None);
            }
            parse_ad_hoc(members).map(Some)
        }
        UnitKind::Registry => parse_registry(members, read, opts).map(Some),
        UnitKind::Archive => {
            // A marker's name alone does not make an image archive: a flat
            // root filesystem may hold a `/manifest.json` too. The archive's
            // structure decides (see [`ArchiveShape`]).
            let mut legacy = has("repositories");
            let mut pre = Vec::new();
            if oci || docker || legacy {
                let shape = ArchiveShape::of(members, read, &mut pre);
                oci &= shape.oci_valid || !shape.foreign;
                docker &= shape.docker_valid || !shape.foreign;
                legacy &= !shape.foreign;
            }
            // The markers `ArchiveShape` read are not read twice.
            let mut read = |name: &str| match pre.iter().position(|(n, _)| n == name) {
                Some(i) => pre.swap_remove(i).1,
                None => read(name),
            };
            let read: &mut Read<'_> = &mut read;
            let layout = if oci {
                let idx = Index::new(members);
                parse_oci_unit(&idx, read, opts, ImageFormat::OciArchive, docker, true)?
            } else if docker {
                parse_docker(&Index::new(members), read, opts)?
            } else if legacy && legacy_v1(members) {
                return Err("legacy docker image format (v1.0) is not supported".into());
            } else {
                ImageLayout {
                    format: ImageFormat::SingleLayer.name().into(),
                    layers: vec![LayerRef {
                        member: String::new(),
                        media: LayerMedia::Tar,
                        digest: None,
                        diff_id: None,
                        size: None,
                    }],
                    config_digest: None,
                    config: None,
                }
            };
            Ok(Some(layout))
        }
    }
}

/// What an archive's structure says it is, before either description is
/// parsed in earnest.
///
/// An image archive holds nothing but its descriptions and what they name:
/// `docker save` writes `manifest.json`, `repositories`, the config and the
/// layers (and, before Docker 25, `<id>/json` and `<id>/VERSION`; since,
/// an OCI layout beside them); an OCI archive `oci-layout`, `index.json`
/// and `blobs/`. A member outside that set (`etc/os-release`, `usr/bin/x`)
/// is one no image archive has, so the archive is a flat root filesystem
/// that happens to hold a file with a marker's name, unless that file
/// really describes an image in the archive (a docker `manifest.json`
/// whose every `Config` and `Layers` path is a member; an `index.json`
/// with a manifest whose blob is a member). An archive with no foreign
/// member is an image archive whatever its descriptions say, so a broken
/// one (a layer missing, a manifest that does not decode) fails with the
/// description's own error rather than being unpacked as files.
struct ArchiveShape {
    /// A member no image archive holds (beside what its manifest names).
    foreign: bool,
    /// `manifest.json` lists images whose config and layers are members.
    docker_valid: bool,
    /// `index.json` lists a manifest whose blob is a member.
    oci_valid: bool,
}

/// A docker `manifest.json` entry, decoded leniently (no strict pre-pass)
/// to see which members it names.
#[derive(Deserialize)]
struct LooseDockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct LooseIndex {
    manifests: Vec<LooseDescriptor>,
}

#[derive(Deserialize)]
struct LooseDescriptor {
    digest: String,
}

impl ArchiveShape {
    /// Reads the top-level `manifest.json` and `index.json` (each when it
    /// is one member) into `pre`, by member name, for the parse after.
    fn of(
        members: &[Member],
        read: &mut Read<'_>,
        pre: &mut Vec<(String, Result<Vec<u8>, String>)>,
    ) -> ArchiveShape {
        // Most archives hold image members only: then nothing is read here.
        if members
            .iter()
            .all(|m| normal_form(&m.name).is_some_and(|n| image_archive_member(&n)))
        {
            return ArchiveShape {
                foreign: false,
                docker_valid: false,
                oci_valid: false,
            };
        }
        let mut docker_refs: Option<HashSet<String>> = None;
        let mut oci_refs: HashSet<String> = HashSet::new();
        for marker in ["manifest.json", "index.json"] {
            let mut found = members.iter().filter(|m| {
                m.name.ends_with(marker) && normalize(&m.name).is_ok_and(|n| n == marker)
            });
            let (Some(m), None) = (found.next(), found.next()) else {
                continue;
            };
            let got = read(&m.name);
            let bytes = match &got {
                Ok(b) if u64::try_from(b.len()) == Ok(m.size) => Some(b.as_slice()),
                _ => None,
            };
            if marker == "manifest.json" {
                docker_refs = bytes.and_then(docker_names);
            } else if let Some(b) = bytes {
                oci_refs = oci_names(b);
            }
            pre.push((m.name.clone(), got));
        }
        if docker_refs.as_ref().is_none_or(HashSet::is_empty) && oci_refs.is_empty() {
            // Nothing can explain the member found above.
            return ArchiveShape {
                foreign: true,
                docker_valid: false,
                oci_valid: false,
            };
        }
        let mut present: HashSet<&str> = HashSet::new();
        let mut foreign = false;
        for m in members {
            let Some(norm) = normal_form(&m.name) else {
                foreign = true;
                continue;
            };
            let norm: &str = &norm;
            if let Some(r) = docker_refs.as_ref().and_then(|r| r.get(norm)) {
                present.insert(r);
            } else if let Some(r) = oci_refs.get(norm) {
                present.insert(r);
            } else if !image_archive_member(norm) {
                foreign = true;
            }
        }
        ArchiveShape {
            foreign,
            docker_valid: docker_refs
                .as_ref()
                .is_some_and(|r| !r.is_empty() && r.iter().all(|n| present.contains(n.as_str()))),
            oci_valid: oci_refs.iter().any(|n| present.contains(n.as_str())),
        }
    }
}

/// The members a docker `manifest.json` names, normalised; `None` when it
/// is not a list of image entries or names a path no member can have.
fn docker_names(bytes: &[u8]) -> Option<HashSet<String>> {
    let entries: Vec<LooseDockerEntry> = serde_json::from_slice(bytes).ok()?;
    let mut names = HashSet::new();
    for e in entries {
        for path in std::iter::once(e.config).chain(e.layers) {
            names.insert(normalize(&path).ok()?);
        }
    }
    Some(names)
}

/// The blob members an `index.json` names (an empty set when it names
/// none or is not an index).
fn oci_names(bytes: &[u8]) -> HashSet<String> {
    let Ok(index) = serde_json::from_slice::<LooseIndex>(bytes) else {
        return HashSet::new();
    };
    index
        .manifests
        .iter()
        .filter_map(|d| sha256_hex("index.json", &d.digest).ok())
        .map(|hex| format!("blobs/sha256/{hex}"))
        .collect()
}

/// A member name normalised, borrowed when it already is (as the host's
/// archive index names members); `None` when it cannot be.
fn normal_form(name: &str) -> Option<std::borrow::Cow<'_, str>> {
    let normal = !name.contains('\0')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if normal {
        Some(std::borrow::Cow::Borrowed(name))
    } else {
        normalize(name).ok().map(std::borrow::Cow::Owned)
    }
}

/// Whether a member (normalised name) is one an image archive may hold
/// besides what its manifest names: the markers; OCI blobs
/// (`blobs/<algorithm>/<digest>`); a config or layer at the top
/// (`<hex>.json`, `<hex>.tar`, `<hex>.tar.gz`, `sha256:<hex>`); docker's
/// v1.0 `<id>/json`, `<id>/VERSION` and `<id>/layer.tar`.
fn image_archive_member(norm: &str) -> bool {
    match norm.split_once('/') {
        None => {
            matches!(
                norm,
                "manifest.json" | "repositories" | "oci-layout" | "index.json"
            ) || norm.starts_with("sha256:")
                || [".json", ".tar", ".tar.gz", ".tgz", ".tar.zst"]
                    .iter()
                    .any(|ext| norm.ends_with(ext))
        }
        Some(("blobs", rest)) => rest.split('/').count() == 2,
        Some((_, rest)) => matches!(rest, "json" | "VERSION" | "layer.tar"),
    }
}

/// Whether a prefix member is named like an ad-hoc layer, rightly or not:
/// a number, then `.tar` or `.tgz` in any case (`1.tar`, `01.tar`,
/// `2.TAR`, `3.tar.gz`). A prefix with none is not an ad-hoc image.
fn looks_like_layer(name: &str) -> bool {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    let rest = name.as_bytes().get(digits..).unwrap_or_default();
    digits > 0
        && rest.get(..4).is_some_and(|ext| {
            ext.eq_ignore_ascii_case(b".tar") || ext.eq_ignore_ascii_case(b".tgz")
        })
}

/// Whether an archive has the `<id>/json` members of docker's v1.0 save
/// format (together with `repositories`, and without `manifest.json`).
fn legacy_v1(members: &[Member]) -> bool {
    members.iter().any(|m| {
        m.name.ends_with("/json")
            && normalize(&m.name).is_ok_and(|n| n.strip_suffix("/json").is_some_and(is_hex64))
    })
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

    fn contains(&self, norm: &str) -> bool {
        self.by_name.contains_key(norm)
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
    shape: &Shape,
) -> Result<T, String> {
    let bytes = read_bytes(read, member, label)?;
    decode(&bytes, label, shape)
}

/// Decodes a JSON document after the [`strict`] pre-pass.
fn decode<T: DeserializeOwned>(bytes: &[u8], label: &str, shape: &Shape) -> Result<T, String> {
    strict::check(bytes, shape).map_err(|e| format!("{label}: {e}"))?;
    serde_json::from_slice(bytes).map_err(|e| format!("{label}: {e}"))
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

/// A field that is there (with any value, `null` included) or not.
#[derive(Default)]
struct Seen(bool);

impl<'de> Deserialize<'de> for Seen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Seen(true))
    }
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
        format: ImageFormat::AdHoc.name().into(),
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
        config: None,
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

/// The parts of an index (`index.json` or a nested one) checked before it
/// is decoded as an [`ImageIndex`]: `manifests` may be null (`docker save
/// IMAGE@DIGEST`) and `schemaVersion` absent, and the fields of a manifest
/// and of schema 1 are looked for only to reject a document that has them.
#[derive(Deserialize)]
struct IndexProbe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<DigestProbe>>,
    #[serde(default)]
    config: Seen,
    #[serde(default)]
    layers: Seen,
    #[serde(rename = "fsLayers", default)]
    fs_layers: Seen,
}

/// The same for an image manifest ([`ImageManifest`]); `manifests` and
/// `fsLayers` only to reject them.
#[derive(Deserialize)]
struct ManifestProbe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<DigestProbe>,
    layers: Option<Vec<DigestProbe>>,
    #[serde(default)]
    manifests: Seen,
    #[serde(rename = "fsLayers", default)]
    fs_layers: Seen,
}

/// A descriptor's digest, read as a string so that one oci-spec's
/// [`Digest`](oci_spec::image::Digest) refuses is named as before (see
/// [`check_digest`]).
#[derive(Deserialize)]
struct DigestProbe {
    /// Absent: oci-spec names what is wrong with the descriptor.
    digest: Option<String>,
}

/// Rejects a digest oci-spec would not decode with the message tarpool
/// gives a digest it cannot use, naming the descriptor (`what`). A digest
/// oci-spec takes (`sha512:...` too) passes: it is checked where used.
fn check_digest(what: &str, d: &DigestProbe) -> Result<(), String> {
    let Some(digest) = &d.digest else {
        return Ok(());
    };
    match oci_spec::image::Digest::try_from(digest.as_str()) {
        Ok(_) => Ok(()),
        Err(e) => match sha256_hex(what, digest) {
            Err(mine) => Err(mine),
            Ok(_) => Err(format!("{what}: {e}")),
        },
    }
}

/// An image config (OCI or docker) with the fields of oci-spec's
/// [`ImageConfiguration`] and its types, but `os` and `architecture` may
/// be absent or null and `rootfs.diff_ids` absent (docker omits it for an
/// image of no layers), where [`ImageConfiguration`] requires them; it is
/// made one by [`decode_config`].
#[derive(Deserialize)]
struct ConfigDoc {
    created: Option<String>,
    author: Option<String>,
    architecture: Option<Arch>,
    os: Option<Os>,
    #[serde(rename = "os.version")]
    os_version: Option<String>,
    #[serde(rename = "os.features")]
    os_features: Option<Vec<String>>,
    variant: Option<String>,
    config: Option<Config>,
    rootfs: RootFsDoc,
    history: Option<Vec<History>>,
}

#[derive(Deserialize)]
struct RootFsDoc {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// An OCI layout or archive; with `docker` (a `manifest.json` too, as
/// Docker 25+ `docker save` writes) the docker description is parsed as
/// well and must agree with the OCI one (catalogue F62).
fn parse_oci_unit(
    idx: &Index<'_>,
    read: &mut Read<'_>,
    opts: &ManifestOptions,
    format: ImageFormat,
    docker: bool,
    archive: bool,
) -> Result<ImageLayout, String> {
    // `docker save IMAGE@DIGEST` (Docker 25) writes `"manifests": null`:
    // then manifest.json alone describes the image.
    let Some(oci) = parse_oci(idx, read, opts, format, docker && archive)? else {
        return parse_docker(idx, read, opts);
    };
    if docker {
        let other = parse_docker(idx, read, opts)?;
        agree(&oci, &other)?;
    }
    Ok(oci)
}

/// `Ok(None)` only with `docker_fallback`, when `index.json` lists no
/// manifests.
fn parse_oci(
    idx: &Index<'_>,
    read: &mut Read<'_>,
    opts: &ManifestOptions,
    format: ImageFormat,
    docker_fallback: bool,
) -> Result<Option<ImageLayout>, String> {
    let layout: OciLayoutFile = read_json(
        read,
        idx.get("oci-layout", "oci-layout")?,
        "oci-layout",
        &strict::OCI_LAYOUT,
    )?;
    if layout.image_layout_version != "1.0.0" {
        return Err(format!(
            "oci-layout: unsupported imageLayoutVersion {}",
            quote_name(&layout.image_layout_version)
        ));
    }
    let index_member = idx.get("index.json", "index.json")?;
    let bytes = read_bytes(read, index_member, "index.json")?;
    let probe: IndexProbe = decode(&bytes, "index.json", &strict::INDEX_OR_MANIFEST)?;
    let index = match check_index("index.json", &probe, None)? {
        true => decode_index(&bytes, "index.json", &probe)?,
        false if docker_fallback => return Ok(None),
        false => return Err("index.json: `manifests` is missing or null".into()),
    };
    let entries = match index.manifests().as_slice() {
        [] if docker_fallback => return Ok(None),
        [] => return Err("index.json lists no manifests".into()),
        e => e,
    };

    from_index(
        Blobs::Members(idx),
        read,
        opts,
        format,
        "index.json",
        entries,
    )
    .map(Some)
}

/// The image an index's `entries` lead to for the options' platform,
/// following nested indexes (at most `max_index_depth`, no cycles); `label`
/// names the index in errors.
fn from_index(
    blobs: Blobs<'_, '_>,
    read: &mut Read<'_>,
    opts: &ManifestOptions,
    format: ImageFormat,
    label: &str,
    entries: &[Descriptor],
) -> Result<ImageLayout, String> {
    let mut chosen = choose(label, entries, opts)?;
    let mut label = String::from(label);
    // Digests of the nested indexes followed, outermost first.
    let mut path: Vec<String> = Vec::new();
    let max_depth = usize::try_from(opts.max_index_depth).unwrap_or(usize::MAX);
    while is_index(chosen.media_type()) {
        let digest = chosen.digest().as_ref();
        sha256_hex(&label, digest)?;
        if path.iter().any(|d| d == digest) {
            return Err(format!("{label}: index cycle at {digest}"));
        }
        if path.len() >= max_depth {
            return Err(format!(
                "{label} points to a further index; at most {max_depth} nested indexes are followed"
            ));
        }
        path.push(digest.to_owned());
        let nested_label = format!("nested index {}", short(digest));
        let bytes = blobs.read(read, &chosen, &label, &nested_label)?;
        let probe: IndexProbe = decode(&bytes, &nested_label, &strict::INDEX_OR_MANIFEST)?;
        if !check_index(&nested_label, &probe, Some(chosen.media_type().as_ref()))? {
            return Err(format!("{nested_label}: `manifests` is missing or null"));
        }
        let nested = decode_index(&bytes, &nested_label, &probe)?;
        chosen = choose(&nested_label, nested.manifests(), opts)?;
        label = nested_label;
    }
    if !is_manifest(chosen.media_type()) {
        return Err(format!(
            "{label}: entry {} has unsupported media type {}",
            short(chosen.digest().as_ref()),
            quote_name(chosen.media_type().as_ref())
        ));
    }
    let bytes = blobs.read(read, &chosen, &label, "manifest")?;
    from_manifest(
        blobs,
        read,
        opts,
        format,
        &bytes,
        chosen.media_type().as_ref(),
    )
}

/// The image a manifest describes: its config's runtime config and diff
/// IDs, and its layers, where `blobs` holds them. `expected`: the media
/// type of the descriptor that led to it.
fn from_manifest(
    blobs: Blobs<'_, '_>,
    read: &mut Read<'_>,
    opts: &ManifestOptions,
    format: ImageFormat,
    bytes: &[u8],
    expected: &str,
) -> Result<ImageLayout, String> {
    let probe: ManifestProbe = decode(bytes, "manifest", &strict::INDEX_OR_MANIFEST)?;
    check_manifest(&probe, expected)?;
    let manifest: ImageManifest =
        decode_oci(bytes, "manifest", probe.schema_version.is_none(), |v| {
            v.entry("schemaVersion").or_insert(2.into());
        })?;
    let (config_desc, layer_descs) = (manifest.config(), manifest.layers());
    let image_config = match config_desc.media_type() {
        MediaType::ImageConfig => true,
        MediaType::Other(m) => m == DOCKER_CONFIG,
        _ => false,
    };
    if !image_config {
        return Err(format!(
            "manifest: config media type {} is not a container image config",
            quote_name(config_desc.media_type().as_ref())
        ));
    }
    let bytes = blobs.read(read, config_desc, "manifest", "config")?;
    let mut config = decode_config(&bytes)?;
    check_platform(&config, opts)?;
    let runtime = runtime_config(config.config().as_ref())?;
    let diff_ids = diff_ids(config.rootfs_mut(), layer_descs.len(), "manifest")?;

    let mut layers = Vec::with_capacity(layer_descs.len());
    for (i, (desc, diff_id)) in layer_descs.iter().zip(diff_ids).enumerate() {
        let what = format!("manifest: layer {}", i + 1);
        let media_type = desc.media_type().as_ref();
        let media = layer_media(desc.media_type()).ok_or_else(|| {
            format!(
                "{what} has unsupported media type {}",
                quote_name(media_type)
            )
        })?;
        layers.push(LayerRef {
            member: blobs.layer(desc, &what)?,
            media,
            digest: Some(desc.digest().to_string()),
            diff_id: Some(diff_id),
            size: Some(desc.size()),
        });
    }
    Ok(ImageLayout {
        format: format.name().into(),
        layers,
        config_digest: Some(config_desc.digest().to_string()),
        config: Some(runtime),
    })
}

// --------------------------------------------------------------- registry

/// An image in a registry: the unit's one member, `manifest`, is the
/// manifest or index its reference names (a docker schema 2 or OCI
/// document, told apart by its `mediaType`, or by its fields when it has
/// none); everything it points to is read by digest through
/// [`Blobs::Registry`], and the host fetches and verifies each on demand.
fn parse_registry(
    members: &[Member],
    read: &mut Read<'_>,
    opts: &ManifestOptions,
) -> Result<ImageLayout, String> {
    let top = members
        .iter()
        .find(|m| m.name == "manifest")
        .ok_or("a registry image has no `manifest` member")?;
    let bytes = read_bytes(read, top, "manifest")?;
    let probe: IndexProbe = decode(&bytes, "manifest", &strict::INDEX_OR_MANIFEST)?;
    let media_type = probe.media_type.as_deref().map(MediaType::from);
    let index = match &media_type {
        Some(mt) => is_index(mt),
        None => probe.manifests.is_some(),
    };
    if index {
        if !check_index("index", &probe, None)? {
            return Err("index: `manifests` is missing or null".into());
        }
        let index = decode_index(&bytes, "index", &probe)?;
        return from_index(
            Blobs::Registry,
            read,
            opts,
            ImageFormat::Registry,
            "index",
            index.manifests(),
        );
    }
    let mt = media_type.unwrap_or(MediaType::ImageManifest);
    if is_schema1(&mt) || probe.fs_layers.0 {
        return Err("manifest: schema 1 manifests are not supported".into());
    }
    if !is_manifest(&mt) {
        return Err(format!(
            "manifest: media type {} is not an image manifest or index",
            quote_name(mt.as_ref())
        ));
    }
    from_manifest(
        Blobs::Registry,
        read,
        opts,
        ImageFormat::Registry,
        &bytes,
        mt.as_ref(),
    )
}

/// Where an image's blobs are read from: the members of a layout or an
/// archive (`blobs/sha256/<hex>`, listed with the descriptor's size), or a
/// registry, from which the host fetches each by digest when it is read
/// (`manifests/sha256/<hex>` for a manifest or an index, `blobs/sha256/<hex>`
/// for anything else).
#[derive(Clone, Copy)]
enum Blobs<'i, 'm> {
    Members(&'i Index<'m>),
    Registry,
}

impl Blobs<'_, '_> {
    /// The bytes `desc` names, of its size; `referrer` names the document
    /// that holds `desc` in errors, `label` the blob.
    fn read(
        &self,
        read: &mut Read<'_>,
        desc: &Descriptor,
        referrer: &str,
        label: &str,
    ) -> Result<Vec<u8>, String> {
        match self {
            Blobs::Members(idx) => read_blob(idx, read, desc, referrer, label),
            Blobs::Registry => {
                let hex = sha256_hex(referrer, desc.digest().as_ref())?;
                let mt = desc.media_type();
                let dir = if is_manifest(mt) || is_index(mt) {
                    "manifests"
                } else {
                    "blobs"
                };
                let member = Member {
                    name: format!("{dir}/sha256/{hex}"),
                    size: desc.size(),
                };
                read_bytes(read, &member, label)
            }
        }
    }

    /// The member that holds the layer `desc` names (`what` in errors).
    fn layer(&self, desc: &Descriptor, what: &str) -> Result<String, String> {
        let hex = sha256_hex(what, desc.digest().as_ref())?;
        let foreign = desc.urls().as_ref().is_some_and(|u| !u.is_empty());
        match self {
            Blobs::Members(idx) => {
                if foreign && !idx.contains(&format!("blobs/sha256/{hex}")) {
                    return Err(format!(
                        "{what} is a foreign layer (it has `urls`) whose blob is not in the image; layers are never fetched"
                    ));
                }
                Ok(blob_member(idx, desc, what)?.name.clone())
            }
            Blobs::Registry if foreign => Err(format!(
                "{what} is a foreign layer (it has `urls`); layers are fetched from the registry only"
            )),
            Blobs::Registry => Ok(format!("blobs/sha256/{hex}")),
        }
    }
}

/// Decodes a document with oci-spec's type after its probe has passed;
/// with `fill`, through a JSON value first completed by `fill` with what
/// the type requires but tarpool accepts absent (so that what was
/// accepted before oci-spec still is).
fn decode_oci<T: DeserializeOwned>(
    bytes: &[u8],
    label: &str,
    incomplete: bool,
    fill: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<T, String> {
    if !incomplete {
        return serde_json::from_slice(bytes).map_err(|e| format!("{label}: {e}"));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("{label}: {e}"))?;
    if let Some(map) = value.as_object_mut() {
        fill(map);
    }
    T::deserialize(value).map_err(|e| format!("{label}: {e}"))
}

/// An index whose probe passed (`manifests` is there); an absent
/// `schemaVersion` is taken as 2, as it was before oci-spec.
fn decode_index(bytes: &[u8], label: &str, probe: &IndexProbe) -> Result<ImageIndex, String> {
    decode_oci(bytes, label, probe.schema_version.is_none(), |v| {
        v.entry("schemaVersion").or_insert(2.into());
    })
}

/// Decodes an image config (OCI or docker) after the strict pre-pass; an
/// absent or null `os` or `architecture` is empty (no constraint, see
/// [`check_platform`]), absent `rootfs.diff_ids` none.
fn decode_config(bytes: &[u8]) -> Result<ImageConfiguration, String> {
    let doc: ConfigDoc = decode(bytes, "config", &strict::IMAGE_CONFIG)?;
    let mut rootfs = RootFs::default();
    rootfs.set_typ(doc.rootfs.kind);
    rootfs.set_diff_ids(doc.rootfs.diff_ids);
    let mut config = ImageConfiguration::default();
    config
        .set_created(doc.created)
        .set_author(doc.author)
        .set_architecture(
            doc.architecture
                .unwrap_or_else(|| Arch::Other(String::new())),
        )
        .set_os(doc.os.unwrap_or_else(|| Os::Other(String::new())))
        .set_os_version(doc.os_version)
        .set_os_features(doc.os_features)
        .set_variant(doc.variant)
        .set_config(doc.config)
        .set_rootfs(rootfs)
        .set_history(doc.history);
    Ok(config)
}

/// Checks an index document is one (catalogue F49, F50); `false`:
/// `manifests` is missing or null. `expected`: the media type of the
/// descriptor that led to it (none for `index.json`).
fn check_index(label: &str, doc: &IndexProbe, expected: Option<&str>) -> Result<bool, String> {
    if doc.fs_layers.0 {
        return Err(format!(
            "{label}: schema 1 manifest (`fsLayers`) is not supported"
        ));
    }
    check_schema(label, doc.schema_version)?;
    for (seen, field) in [(&doc.config, "config"), (&doc.layers, "layers")] {
        if seen.0 {
            return Err(format!(
                "{label} has `{field}`, as a manifest does: not a valid index"
            ));
        }
    }
    if let Some(mt) = &doc.media_type {
        match expected {
            Some(want) if mt != want => {
                return Err(format!(
                    "{label}: mediaType {} differs from its descriptor's {}",
                    quote_name(mt),
                    quote_name(want)
                ))
            }
            None if !is_index(&MediaType::from(mt.as_str())) => {
                return Err(format!(
                    "{label}: mediaType {} is not an image index",
                    quote_name(mt)
                ))
            }
            _ => {}
        }
    }
    let Some(entries) = &doc.manifests else {
        return Ok(false);
    };
    for d in entries {
        check_digest(label, d)?;
    }
    Ok(true)
}

/// Checks a manifest document is one (catalogue F49, F50) with a config
/// and layers.
fn check_manifest(doc: &ManifestProbe, expected: &str) -> Result<(), String> {
    if doc.fs_layers.0 {
        return Err("manifest: schema 1 manifest (`fsLayers`) is not supported".into());
    }
    check_schema("manifest", doc.schema_version)?;
    if doc.manifests.0 {
        return Err("manifest has `manifests`, as an index does: not a valid manifest".into());
    }
    if let Some(mt) = &doc.media_type {
        if mt != expected {
            return Err(format!(
                "manifest: mediaType {} differs from its descriptor's {}",
                quote_name(mt),
                quote_name(expected)
            ));
        }
    }
    let config = doc
        .config
        .as_ref()
        .ok_or("manifest: `config` is missing or null")?;
    let layers = doc
        .layers
        .as_deref()
        .ok_or("manifest: `layers` is missing or null")?;
    check_digest("manifest", config)?;
    for (i, d) in layers.iter().enumerate() {
        check_digest(&format!("manifest: layer {}", i + 1), d)?;
    }
    Ok(())
}

fn check_schema(label: &str, version: Option<u64>) -> Result<(), String> {
    match version {
        None | Some(2) => Ok(()),
        Some(v) => Err(format!("{label}: unsupported schemaVersion {v}")),
    }
}

fn is_manifest(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageManifest)
        || matches!(media_type, MediaType::Other(m) if m == DOCKER_MANIFEST)
}

fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex)
        || matches!(media_type, MediaType::Other(m) if m == DOCKER_LIST)
}

fn is_schema1(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::Other(m) if m.starts_with("application/vnd.docker.distribution.manifest.v1+"))
}

fn layer_media(media_type: &MediaType) -> Option<LayerMedia> {
    Some(match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => LayerMedia::Tar,
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => LayerMedia::Gzip,
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => LayerMedia::Zstd,
        MediaType::Other(m) => match m.as_str() {
            "application/vnd.docker.image.rootfs.diff.tar" => LayerMedia::Tar,
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => LayerMedia::Gzip,
            _ => return None,
        },
        _ => return None,
    })
}

/// `os/architecture[/variant]` of the options, for messages.
fn platform_name(opts: &ManifestOptions) -> String {
    let mut name = format!("{}/{}", opts.os, opts.architecture);
    if let Some(v) = &opts.arch_variant {
        name.push('/');
        name.push_str(v);
    }
    name
}

/// Whether an index entry's os and architecture are the options'.
/// Compared as oci-spec's values, not as their names: oci-spec reads
/// `armbe` as [`Arch::ARM64be`], whose name is `arm64be`.
fn platform_os_arch(p: &Platform, opts: &ManifestOptions) -> bool {
    *p.os() == Os::from(opts.os.as_str())
        && *p.architecture() == Arch::from(opts.architecture.as_str())
}

/// Whether an index entry's variant is the one the options ask for.
fn variant_matches(variant: Option<&str>, opts: &ManifestOptions) -> bool {
    match &opts.arch_variant {
        Some(want) => variant == Some(want.as_str()),
        None => {
            matches!(variant, None | Some(""))
                || (opts.architecture == "amd64" && variant == Some("v1"))
        }
    }
}

/// Picks the one image out of an index: the only (distinct) manifest, or
/// else the one for the options' platform. Without a variant in the
/// options, the only entry for the os/architecture is taken whatever its
/// variant, else the only one without a variant (or `v1` on amd64); with a
/// variant, exactly that variant.
fn choose(
    label: &str,
    entries: &[Descriptor],
    opts: &ManifestOptions,
) -> Result<Descriptor, String> {
    let Some(first) = entries.first() else {
        return Err(format!("{label} lists no manifests"));
    };
    let mut seen = HashSet::new();
    let distinct: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| is_manifest(d.media_type()) || is_index(d.media_type()))
        .filter(|d| seen.insert(d.digest().as_ref()))
        .collect();
    match distinct.as_slice() {
        [] if entries.iter().any(|d| is_schema1(d.media_type())) => {
            return Err(format!("{label}: schema 1 manifests are not supported"))
        }
        [] => {
            return Err(format!(
                "{label}: none of its {} entries is an image manifest or index (first has media type {})",
                entries.len(),
                quote_name(first.media_type().as_ref())
            ))
        }
        [one] => return Ok((*one).clone()),
        _ => {}
    }
    if distinct.iter().all(|d| d.platform().is_none()) {
        return Err(format!(
            "{label} holds {} images without platforms; cannot choose one",
            distinct.len()
        ));
    }
    let want = platform_name(opts);
    let matching: Vec<&Descriptor> = distinct
        .iter()
        .copied()
        .filter(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| platform_os_arch(p, opts))
        })
        .collect();
    let exact: Vec<&Descriptor> = matching
        .iter()
        .copied()
        .filter(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| variant_matches(p.variant().as_deref(), opts))
        })
        .collect();
    // Without a variant asked for, the os/architecture decides unless it
    // is ambiguous and exactly one entry has no variant.
    let candidates = if opts.arch_variant.is_some() || (matching.len() > 1 && exact.len() == 1) {
        &exact
    } else {
        &matching
    };
    match candidates.as_slice() {
        [] => Err(format!(
            "{label} has no {want} image among its {} entries",
            distinct.len()
        )),
        [one] => Ok((*one).clone()),
        many => Err(format!(
            "{label} lists {} {want} images; cannot choose one",
            many.len()
        )),
    }
}

/// Checks a descriptor's digest and returns its hex part (catalogue F51:
/// only `sha256:` and 64 lowercase hex digits, so a digest can name a blob
/// path).
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
    let hex = sha256_hex(what, desc.digest().as_ref())?;
    let path = format!("blobs/sha256/{hex}");
    let member = idx.get(what, &path)?;
    if member.size != desc.size() {
        return Err(format!(
            "{what}: member {} is {} bytes but its descriptor says {}",
            quote_name(&path),
            member.size,
            desc.size()
        ));
    }
    Ok(member)
}

/// Reads the blob a descriptor names.
fn read_blob(
    idx: &Index<'_>,
    read: &mut Read<'_>,
    desc: &Descriptor,
    referrer: &str,
    label: &str,
) -> Result<Vec<u8>, String> {
    let member = blob_member(idx, desc, referrer)?;
    read_bytes(read, member, label)
}

/// The config's diff_ids, checked and taken out of it.
fn diff_ids(rootfs: &mut RootFs, layers: usize, manifest: &str) -> Result<Vec<String>, String> {
    if rootfs.typ() != "layers" {
        return Err(format!(
            "config: unsupported rootfs type {}",
            quote_name(rootfs.typ())
        ));
    }
    let ids = rootfs.diff_ids();
    if ids.len() != layers {
        return Err(format!(
            "config: rootfs lists {} diff_ids but the {manifest} has {layers} layers",
            ids.len()
        ));
    }
    for (i, d) in ids.iter().enumerate() {
        sha256_hex(&format!("config: diff_id {}", i + 1), d)?;
    }
    Ok(std::mem::take(rootfs.diff_ids_mut()))
}

/// Rejects an image whose config names another os or architecture than
/// the options' (catalogue F60 "foreign OS"); absent or empty fields pass.
fn check_platform(config: &ImageConfiguration, opts: &ManifestOptions) -> Result<(), String> {
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    let os = Some(os.as_str()).filter(|s| !s.is_empty());
    let arch = Some(arch.as_str()).filter(|s| !s.is_empty());
    // As in `platform_os_arch`, oci-spec's values are compared.
    if os.is_none_or(|_| *config.os() == Os::from(opts.os.as_str()))
        && arch.is_none_or(|_| *config.architecture() == Arch::from(opts.architecture.as_str()))
    {
        return Ok(());
    }
    let image = format!(
        "{}/{}",
        os.unwrap_or(&opts.os),
        arch.unwrap_or(&opts.architecture)
    );
    Err(format!(
        "config: image is for {}, not {}/{}",
        quote_name(&image),
        opts.os,
        opts.architecture
    ))
}

/// The runtime config, each list at most [`MAX_CONFIG_ENTRIES`] long and
/// each string at most [`MAX_CONFIG_STRING`] bytes without NUL.
fn runtime_config(config: Option<&Config>) -> Result<RuntimeConfig, String> {
    let Some(c) = config else {
        return Ok(RuntimeConfig::default());
    };
    Ok(RuntimeConfig {
        env: config_list("Env", c.env().as_deref())?,
        entrypoint: config_list("Entrypoint", c.entrypoint().as_deref())?,
        cmd: config_list("Cmd", c.cmd().as_deref())?,
        working_dir: config_string("WorkingDir", c.working_dir().as_deref())?,
        user: config_string("User", c.user().as_deref())?,
    })
}

fn config_list(what: &str, list: Option<&[String]>) -> Result<Vec<String>, String> {
    let list = list.unwrap_or_default();
    if list.len() > MAX_CONFIG_ENTRIES {
        return Err(format!(
            "config: {what} has {} entries (at most {MAX_CONFIG_ENTRIES})",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| config_string(&format!("{what} entry {}", i + 1), Some(s)))
        .collect()
}

fn config_string(what: &str, s: Option<&str>) -> Result<String, String> {
    let s = s.unwrap_or_default().to_owned();
    if s.len() > MAX_CONFIG_STRING {
        return Err(format!(
            "config: {what} is {} bytes (at most {MAX_CONFIG_STRING})",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err(format!("config: {what} contains NUL"));
    }
    Ok(s)
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

fn parse_docker(
    idx: &Index<'_>,
    read: &mut Read<'_>,
    opts: &ManifestOptions,
) -> Result<ImageLayout, String> {
    let member = idx.get("manifest.json", "manifest.json")?;
    let bytes = read_bytes(read, member, "manifest.json")?;
    // Count the entries before decoding them, so that an archive of many
    // images is named as such (and costs no memory per entry).
    let count =
        decode::<Option<Vec<IgnoredAny>>>(&bytes, "manifest.json", &strict::DOCKER_MANIFEST)?
            .ok_or("manifest.json is null instead of a list of images")?
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
    let bytes = read_bytes(read, config_member, "config")?;
    let mut config = decode_config(&bytes)?;
    check_platform(&config, opts)?;
    let runtime = runtime_config(config.config().as_ref())?;
    let diff_ids = diff_ids(config.rootfs_mut(), entry.layers.len(), "manifest.json")?;

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
        format: ImageFormat::DockerArchive.name().into(),
        layers,
        config_digest,
        config: Some(runtime),
    })
}

/// Checks the OCI and the docker descriptions of a dual-layout archive
/// describe the same image: the same layer members in the same order, the
/// same diff_ids, the same config.
fn agree(oci: &ImageLayout, docker: &ImageLayout) -> Result<(), String> {
    const WHAT: &str = "index.json and manifest.json disagree";
    if oci.layers.len() != docker.layers.len() {
        return Err(format!(
            "{WHAT}: {} layers against {}",
            oci.layers.len(),
            docker.layers.len()
        ));
    }
    for (i, (o, d)) in oci.layers.iter().zip(&docker.layers).enumerate() {
        if normalize(&o.member).ok() != normalize(&d.member).ok() {
            return Err(format!(
                "{WHAT} on layer {}: {} against {}",
                i + 1,
                quote_name(&o.member),
                quote_name(&d.member)
            ));
        }
        if o.diff_id != d.diff_id {
            return Err(format!("{WHAT} on the diff_id of layer {}", i + 1));
        }
    }
    if oci.config_digest != docker.config_digest {
        return Err(format!("{WHAT} on the image config"));
    }
    if oci.config != docker.config {
        return Err(format!("{WHAT} on the runtime config"));
    }
    Ok(())
}

// ------------------------------------------------------------- component

#[cfg(target_arch = "wasm32")]
// The generated export glue takes the flattened parameters.
#[allow(clippy::too_many_arguments)]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "manifest-step" });

    struct Step;

    manifest_types::guest_parse!(Step, super::parse);

    export!(Step);
}

/// Quotes a name for a message (see [`guest_text::quote`]).
fn quote_name(name: &str) -> String {
    guest_text::quote(name, MAX_NAME_CHARS)
}

#[cfg(test)]
mod tests;
