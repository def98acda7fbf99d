//! The transitions' work. Each takes the run's data, does its I/O, and
//! returns a JSON summary for the audit log; the engine persists both.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::archive::{self, IndexedMember};
use crate::capped::{over_limit, Capped};
use crate::core::chain;
use crate::core::names::{printable, Unit};
use crate::core::policy::Verdict;
use crate::engine::Ctx;
use crate::error::StepFailure;
use crate::extract::view::{CheckError, Mode};
use crate::model::{BlobKind, ImageFormat, LayerMedia, Member, RuntimeConfig, UnitKind};
use crate::source::{read_up_to, SourceError};

/// Leading bytes of a blob the classify step is given.
const HEAD: usize = 64 << 10;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunData {
    pub source: String,
    pub unit: Option<Unit>,
    pub fingerprint: String,
    /// member -> blob digest, after download.
    pub blobs: BTreeMap<String, String>,
    /// member -> kind, after classify (prefix units).
    pub kinds: BTreeMap<String, BlobKind>,
    pub archive: Option<ArchiveData>,
    pub format: Option<ImageFormat>,
    /// The runtime config the manifest step found.
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    pub layers: Vec<PlannedLayer>,
    pub top_chain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveData {
    /// Digest of the uncompressed archive blob.
    pub blob: String,
    pub size: u64,
    pub compression: BlobKind,
    pub members: Vec<IndexedMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedLayer {
    pub member: String,
    pub media: LayerMedia,
    pub blob: String,
    pub offset: u64,
    pub len: u64,
    /// Digest of the layer's bytes, when a manifest names it.
    pub digest: Option<String>,
    pub diff_id: Option<String>,
    pub chain_id: Option<String>,
}

/// The policy verdicts a transition produced, recorded by the engine.
pub type Verdicts = Vec<Verdict>;

fn input(m: impl Into<String>) -> StepFailure {
    StepFailure::Input(m.into())
}

fn unit(data: &RunData) -> Result<&Unit, StepFailure> {
    data.unit
        .as_ref()
        .ok_or_else(|| StepFailure::Input("run has no image unit".into()))
}

fn deny_if(v: &Verdict) -> Result<(), StepFailure> {
    if v.allowed() {
        Ok(())
    } else {
        Err(StepFailure::Input(format!("policy: {}", v.detail)))
    }
}

fn source_err(e: SourceError) -> StepFailure {
    match e {
        SourceError::NotFound(k) => StepFailure::Input(format!(
            "image is missing from the source: `{}` is gone",
            printable(&k)
        )),
        SourceError::Denied(m) | SourceError::BadObject(m) => StepFailure::Input(m),
        e => StepFailure::Retry(e.to_string()),
    }
}

pub fn check_image_exists(
    ctx: &Ctx,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, StepFailure> {
    let mut total = 0u64;
    let mut changed = 0;
    for i in 0..unit(data)?.objects.len() {
        changed += usize::from(refresh(ctx, data, i)?);
        let o = &unit(data)?.objects[i];
        let v = ctx.policy.check_object(&o.key, o.size);
        verdicts.push(v.clone());
        deny_if(&v)?;
        total = total.saturating_add(o.size);
    }
    let v = ctx.policy.check_image_size(total);
    verdicts.push(v.clone());
    deny_if(&v)?;
    Ok(
        json!({ "objects": unit(data)?.objects.len(), "bytes": total, "changed_since_listing": changed }),
    )
}

/// Takes the current version of object `i` of the unit: a changed object
/// (new ETag or size) is processed as it is now, not failed. Returns whether
/// it had changed.
fn refresh(ctx: &Ctx, data: &mut RunData, i: usize) -> Result<bool, StepFailure> {
    let key = unit(data)?.objects[i].key.clone();
    let (_, now) = ctx.source.open(&key).map_err(source_err)?;
    let u = data
        .unit
        .as_mut()
        .ok_or_else(|| input("run has no image unit"))?;
    let o = &mut u.objects[i];
    if now.size == o.size && now.stamp == o.stamp {
        return Ok(false);
    }
    o.size = now.size;
    o.stamp = now.stamp;
    o.modified = now.modified;
    data.fingerprint = u.fingerprint();
    Ok(true)
}

pub fn download(ctx: &Ctx, data: &mut RunData) -> Result<Value, StepFailure> {
    let (mut fetched, mut reused, mut bytes, mut restarted) = (0, 0, 0u64, 0);
    for i in 0..unit(data)?.objects.len() {
        let o = unit(data)?.objects[i].clone();
        if let Some((size, stamp, digest)) = ctx.store.object(&data.source, &o.key)? {
            if size == o.size && stamp == o.stamp && ctx.blobs.has(&digest, size) {
                data.blobs.insert(o.member.clone(), digest);
                reused += 1;
                continue;
            }
        }
        let mut o = o;
        let mut attempts = 0;
        let (digest, size) = loop {
            match ctx.source.fetch(&o, &ctx.blobs) {
                // The object changed while it was downloaded: start over with
                // its new version (a few times; then the step retries).
                Err(SourceError::Changed(_)) if attempts < 3 => {
                    attempts += 1;
                    restarted += 1;
                    refresh(ctx, data, i)?;
                    o = unit(data)?.objects[i].clone();
                }
                r => break r.map_err(source_err)?,
            }
        };
        ctx.store
            .put_object(&data.source, &o.key, size, &o.stamp, &o.modified, &digest)?;
        data.blobs.insert(o.member.clone(), digest);
        fetched += 1;
        bytes += size;
    }
    Ok(json!({ "fetched": fetched, "reused": reused, "bytes": bytes, "restarted": restarted }))
}

fn head_of(r: &mut dyn Read) -> Result<Vec<u8>, StepFailure> {
    let mut head = vec![0u8; HEAD];
    let n = read_up_to(r, &mut head).map_err(|e| match e.kind() {
        // A decoder's verdict on the bytes (a file read does not say this):
        // the blob is corrupt, retrying cannot help.
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            input(format!("corrupt compressed data: {e}"))
        }
        _ => StepFailure::io("reading a blob", e),
    })?;
    head.truncate(n);
    Ok(head)
}

fn open_blob(ctx: &Ctx, digest: &str) -> Result<File, StepFailure> {
    ctx.blobs
        .open(digest)
        .map_err(|e| StepFailure::io("opening a stored blob", e))
}

/// A decompressing reader for `kind`.
fn decoder<'a, R: Read + Send + 'a>(
    kind: BlobKind,
    r: R,
) -> Result<Box<dyn Read + Send + 'a>, StepFailure> {
    Ok(match kind {
        BlobKind::Tar => Box::new(r),
        BlobKind::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 20,
            r,
        ))),
        BlobKind::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| StepFailure::io("zstd", e))?)
        }
        k => return Err(input(format!("cannot decode a blob of kind {k:?}"))),
    })
}

/// A decoder's failure on layer `n`: over a policy limit (a reject, pushed
/// to `verdicts`), or corrupt data.
fn decode_failure(n: usize, e: &io::Error, verdicts: &mut Verdicts) -> StepFailure {
    match over_limit(e) {
        Some(o) => {
            verdicts.push(Verdict {
                rule: o.rule.into(),
                action: "reject".into(),
                layer: u32::try_from(n).ok(),
                path: None,
                detail: o.to_string(),
            });
            input(format!("layer {n}: {o}"))
        }
        None => input(format!("layer {n}: corrupt compressed data: {e}")),
    }
}

fn describe(kind: BlobKind, detail: &str) -> String {
    format!("{kind:?} ({detail})").to_lowercase()
}

pub fn classify(
    ctx: &Ctx,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, StepFailure> {
    let u = unit(data)?.clone();
    let mut out = serde_json::Map::new();
    match u.kind {
        UnitKind::Prefix => {
            for o in &u.objects {
                let digest = data
                    .blobs
                    .get(&o.member)
                    .ok_or_else(|| input("download did not record a blob"))?
                    .clone();
                let head = head_of(&mut open_blob(ctx, &digest)?)?;
                let c = ctx.steps.classify(&head, o.size)?;
                out.insert(o.member.clone(), json!(describe(c.kind, &c.detail)));
                data.kinds.insert(o.member.clone(), c.kind);
            }
        }
        UnitKind::Archive => {
            let o = &u.objects[0];
            let digest = data
                .blobs
                .get("")
                .ok_or_else(|| input("download did not record a blob"))?
                .clone();
            let head = head_of(&mut open_blob(ctx, &digest)?)?;
            let c = ctx.steps.classify(&head, o.size)?;
            out.insert("object".into(), json!(describe(c.kind, &c.detail)));
            let (tar_digest, size) = match c.kind {
                BlobKind::Tar => (digest.clone(), o.size),
                BlobKind::Gzip | BlobKind::Zstd => {
                    let mut d = decoder(c.kind, open_blob(ctx, &digest)?)?;
                    let inner = head_of(&mut d)?;
                    let ic = ctx.steps.classify(&inner, u64::MAX)?;
                    if ic.kind != BlobKind::Tar {
                        return Err(input(format!(
                            "`{}` is {} but does not hold a tar archive: {}",
                            printable(&o.key),
                            describe(c.kind, &c.detail),
                            describe(ic.kind, &ic.detail)
                        )));
                    }
                    let d = decoder(c.kind, open_blob(ctx, &digest)?)?;
                    let p = &ctx.policy;
                    let capped = Capped::new(
                        d,
                        o.size,
                        p.decompressed_cap(o.size),
                        p.max_layer_bytes.limit,
                        (p.max_image_bytes.limit, "max-image-bytes"),
                    );
                    ctx.blobs.ingest(capped, None).map_err(|e| {
                        if let Some(over) = over_limit(&e) {
                            verdicts.push(Verdict {
                                rule: over.rule.into(),
                                action: "reject".into(),
                                layer: None,
                                path: None,
                                detail: over.to_string(),
                            });
                            return input(format!("`{}`: {over}", printable(&o.key)));
                        }
                        match e.kind() {
                            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => input(
                                format!("`{}`: corrupt compressed archive: {e}", printable(&o.key)),
                            ),
                            _ => StepFailure::io("decompressing the archive", e),
                        }
                    })?
                }
                k => {
                    return Err(input(format!(
                        "`{}` is not a tar archive: {}",
                        printable(&o.key),
                        describe(k, &c.detail)
                    )))
                }
            };
            let mut check = ctx.steps.tar_check(Mode::Archive, &ctx.policy)?;
            let members = archive::index(&open_blob(ctx, &tar_digest)?, &mut check)?;
            drop(check);
            out.insert("members".into(), json!(members.len()));
            data.archive = Some(ArchiveData {
                blob: tar_digest,
                size,
                compression: c.kind,
                members,
            });
        }
    }
    Ok(Value::Object(out))
}

/// Content-addressed members (`blobs/sha256/<hex>`) must hash to their name:
/// the manifest step reads manifests and configs through this check.
fn verify_addressed(name: &str, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    use sha2::{Digest as _, Sha256};
    if let Some(hex_name) = name.strip_prefix("blobs/sha256/") {
        let got = hex::encode(Sha256::digest(&bytes));
        if got != hex_name {
            return Err(format!(
                "`{}` does not match its digest (content is sha256:{got})",
                printable(name)
            ));
        }
    }
    Ok(bytes)
}

pub fn parse_manifest(
    ctx: &Ctx,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, StepFailure> {
    let u = unit(data)?.clone();
    let layout = match u.kind {
        UnitKind::Prefix => {
            let members: Vec<Member> = u
                .objects
                .iter()
                .map(|o| Member {
                    name: o.member.clone(),
                    size: o.size,
                })
                .collect();
            let blobs = data.blobs.clone();
            let store = &ctx.blobs;
            let mut read = |name: &str| -> Result<Vec<u8>, String> {
                let digest = blobs
                    .get(name)
                    .ok_or_else(|| format!("no member `{name}`"))?;
                let f = store.open(digest).map_err(|e| e.to_string())?;
                let m = IndexedMember {
                    name: name.to_string(),
                    offset: 0,
                    size: f.metadata().map_err(|e| e.to_string())?.len(),
                };
                archive::read_member(&f, &m, ctx.policy.max_json_bytes.limit)
                    .and_then(|b| verify_addressed(name, b))
            };
            ctx.steps
                .parse_manifest(UnitKind::Prefix, &members, &mut read)?
        }
        UnitKind::Archive => {
            let a = data
                .archive
                .as_ref()
                .ok_or_else(|| input("classify did not index the archive"))?;
            let members: Vec<Member> = a
                .members
                .iter()
                .map(|m| Member {
                    name: m.name.clone(),
                    size: m.size,
                })
                .collect();
            let f = open_blob(ctx, &a.blob)?;
            let mut read = |name: &str| -> Result<Vec<u8>, String> {
                let m = a
                    .members
                    .iter()
                    .find(|m| m.name == name)
                    .ok_or_else(|| format!("no member `{name}`"))?;
                archive::read_member(&f, m, ctx.policy.max_json_bytes.limit)
                    .and_then(|b| verify_addressed(name, b))
            };
            ctx.steps
                .parse_manifest(UnitKind::Archive, &members, &mut read)?
        }
    };
    let (layout, answered) = layout;
    let v = ctx.policy.check_format(&layout.format);
    verdicts.push(v.clone());
    deny_if(&v)?;
    let v = ctx.policy.check_layers(layout.layers.len());
    verdicts.push(v.clone());
    deny_if(&v)?;
    let mut times: BTreeMap<(&str, Option<&str>), usize> = BTreeMap::new();
    for l in &layout.layers {
        *times.entry((&l.member, l.digest.as_deref())).or_default() += 1;
    }
    let v = ctx
        .policy
        .check_layer_repeats(times.values().copied().max().unwrap_or(0));
    if !v.allowed() {
        verdicts.push(v.clone());
    }
    deny_if(&v)?;

    let mut planned = Vec::new();
    for (i, l) in layout.layers.iter().enumerate() {
        let n = i + 1;
        let (blob, offset, len, known_kind) = match u.kind {
            UnitKind::Prefix => {
                let digest = data.blobs.get(&l.member).ok_or_else(|| {
                    input(format!(
                        "layer {n} names missing member `{}`",
                        printable(&l.member)
                    ))
                })?;
                let size = u
                    .objects
                    .iter()
                    .find(|o| o.member == l.member)
                    .map(|o| o.size)
                    .unwrap_or(0);
                (digest.clone(), 0, size, data.kinds.get(&l.member).copied())
            }
            UnitKind::Archive => {
                let a = data
                    .archive
                    .as_ref()
                    .ok_or_else(|| input("classify did not index the archive"))?;
                if l.member.is_empty() {
                    (a.blob.clone(), 0, a.size, Some(BlobKind::Tar))
                } else {
                    let m = a
                        .members
                        .iter()
                        .find(|m| m.name == l.member)
                        .ok_or_else(|| {
                            input(format!(
                                "layer {n} names missing member `{}`",
                                printable(&l.member)
                            ))
                        })?;
                    (a.blob.clone(), m.offset, m.size, None)
                }
            }
        };
        if let Some(declared) = l.size {
            if declared != len {
                return Err(input(format!(
                    "layer {n}: manifest says {declared} bytes, the blob has {len}"
                )));
            }
        }
        // The magic bytes decide how a layer is decoded; a declared media
        // type must agree with them (catalogue F57).
        let kind = match known_kind {
            Some(k) => k,
            None => {
                let f = open_blob(ctx, &blob)?;
                let head = head_of(
                    &mut archive::range(f, offset, len)
                        .map_err(|e| StepFailure::io("reading a layer", e))?,
                )?;
                let c = ctx.steps.classify(&head, len)?;
                if !matches!(
                    c.kind,
                    BlobKind::Tar | BlobKind::Gzip | BlobKind::Zstd | BlobKind::Empty
                ) {
                    return Err(input(format!(
                        "layer {n} (`{}`) is not a tar layer: {}",
                        printable(&l.member),
                        describe(c.kind, &c.detail)
                    )));
                }
                c.kind
            }
        };
        let declared = match l.media {
            LayerMedia::Tar => Some(BlobKind::Tar),
            LayerMedia::Gzip => Some(BlobKind::Gzip),
            LayerMedia::Zstd => Some(BlobKind::Zstd),
            LayerMedia::Detect => None,
        };
        if let Some(d) = declared {
            let agrees = d == kind || (d == BlobKind::Tar && kind == BlobKind::Empty);
            if !agrees {
                let (declared, actual) = (
                    format!("{d:?}").to_lowercase(),
                    format!("{kind:?}").to_lowercase(),
                );
                verdicts.push(Verdict {
                    rule: "media-types".into(),
                    action: "reject".into(),
                    layer: u32::try_from(n).ok(),
                    path: Some(printable(&l.member)),
                    detail: format!("declared {declared} but its bytes are {actual}"),
                });
                return Err(input(format!(
                    "layer {n} (`{}`): the manifest declares {declared} but the bytes are {actual}",
                    printable(&l.member),
                )));
            }
        }
        let media = match kind {
            BlobKind::Tar | BlobKind::Empty => LayerMedia::Tar,
            BlobKind::Gzip => LayerMedia::Gzip,
            BlobKind::Zstd => LayerMedia::Zstd,
            BlobKind::Unknown => {
                return Err(input(format!(
                    "layer {n} (`{}`) is not a tar layer",
                    printable(&l.member)
                )))
            }
        };
        for d in [&l.digest, &l.diff_id].into_iter().flatten() {
            if !chain::is_sha256_digest(d) {
                return Err(input(format!(
                    "layer {n}: unsupported digest `{}`",
                    printable(d)
                )));
            }
        }
        planned.push(PlannedLayer {
            member: l.member.clone(),
            media,
            blob,
            offset,
            len,
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            chain_id: None,
        });
    }
    data.format = Some(layout.format.clone());
    data.config = layout.config.clone();
    data.layers = planned;
    Ok(json!({
        "format": layout.format,
        "layers": data.layers.len(),
        "config_digest": layout.config_digest,
        "config": layout.config,
        "component": answered.component,
        "component_sha256": answered.sha256,
    }))
}

fn media_kind(m: LayerMedia) -> BlobKind {
    match m {
        LayerMedia::Gzip => BlobKind::Gzip,
        LayerMedia::Zstd => BlobKind::Zstd,
        _ => BlobKind::Tar,
    }
}

/// Works out every layer's diff ID and chain ID, and which layers are
/// already stored.
///
/// A stored layer is used only once this image's own blob for it has been
/// shown to hold it: otherwise an image whose config claims another image's
/// diff IDs (with junk layer blobs) would be handed that image's files. For
/// every layer whose chain is stored (and every layer whose diff ID no
/// manifest gave), the blob's digest is taken (a whole stored blob is named
/// by it; a member of an archive is hashed here: bytes, never decoded) and
/// checked against the manifest's; its diff ID is then either one verified
/// before for that exact digest (`layer_blobs`), or the digest itself for an
/// uncompressed layer, or computed now by the confined worker
/// ([`crate::worker::Task::Hash`]), which decompresses without unpacking. A
/// layer still to unpack is verified by the worker as it applies it.
pub fn check_unpacked(
    ctx: &Ctx,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, StepFailure> {
    let mut verified = vec![false; data.layers.len()];
    let mut in_worker = 0;
    // Diff IDs that no manifest gave.
    for (i, l) in data.layers.iter_mut().enumerate() {
        if l.diff_id.is_none() {
            let (diff, hashed) = blob_diff_id(ctx, i + 1, l, verdicts)?;
            in_worker += usize::from(hashed);
            l.diff_id = Some(diff);
            verified[i] = true;
        }
    }
    let diffs: Vec<String> = data
        .layers
        .iter()
        .map(|l| l.diff_id.clone().unwrap_or_default())
        .collect();
    let chains = chain::chain_ids(&diffs);
    let mut present = 0;
    let mut report = Vec::new();
    for (i, (l, c)) in data.layers.iter_mut().zip(&chains).enumerate() {
        l.chain_id = Some(c.clone());
        let done = ctx.store.layer(c)?.is_some_and(|r| r.committed);
        if done && !verified[i] {
            in_worker += usize::from(verify_stored(ctx, i + 1, l, verdicts)?);
        }
        present += usize::from(done);
        report.push(json!({ "chain_id": c, "present": done }));
    }
    data.top_chain = chains.last().cloned();
    Ok(json!({
        "layers": report,
        "present": present,
        "to_unpack": data.layers.len() - present,
        "hashed_in_worker": in_worker,
    }))
}

/// Shows that layer `n`'s own blob holds the diff ID its image claims for
/// it, before the image uses the stored layer of that chain (here, and in
/// unpack-layers for a layer another image committed meanwhile). Returns
/// whether the worker had to decompress the blob.
pub fn verify_stored(
    ctx: &Ctx,
    n: usize,
    l: &PlannedLayer,
    verdicts: &mut Verdicts,
) -> Result<bool, StepFailure> {
    let (diff, hashed) = blob_diff_id(ctx, n, l, verdicts)?;
    let claimed = l.diff_id.as_deref().unwrap_or_default();
    if diff != claimed {
        return Err(input(format!(
            "layer {n}: diff ID mismatch: the image's config says {claimed}, its layer blob holds {diff}"
        )));
    }
    Ok(hashed)
}

/// The diff ID layer `n`'s own blob holds, after checking the blob's digest
/// against the manifest's; and whether the worker had to decompress it.
fn blob_diff_id(
    ctx: &Ctx,
    n: usize,
    l: &PlannedLayer,
    verdicts: &mut Verdicts,
) -> Result<(String, bool), StepFailure> {
    let digest = if l.offset == 0 && ctx.blobs.has(&l.blob, l.len) {
        // The blob store names a blob by the sha256 it computed.
        l.blob.clone()
    } else {
        let f = open_blob(ctx, &l.blob)?;
        let r = archive::range(f, l.offset, l.len)
            .map_err(|e| StepFailure::io("reading a layer", e))?;
        let (d, len) = crate::blobs::HashingReader::new(BufReader::with_capacity(1 << 20, r))
            .finish()
            .map_err(|e| StepFailure::io("hashing a layer", e))?;
        if len != l.len {
            return Err(StepFailure::Retry(format!(
                "layer {n}: the stored blob is shorter than the layer ({len} of {} bytes)",
                l.len
            )));
        }
        d
    };
    if let Some(want) = &l.digest {
        if *want != digest {
            return Err(input(format!(
                "layer {n}: digest mismatch: manifest says {want}, blob is {digest}"
            )));
        }
    }
    if let Some(diff) = ctx.store.layer_blob(&digest, media_name(l.media))? {
        return Ok((diff, false));
    }
    if l.media == LayerMedia::Tar {
        // An uncompressed layer's diff ID is its digest.
        return Ok((digest, false));
    }
    let req = crate::worker::Request {
        task: crate::worker::Task::Hash,
        root_fd: -1,
        blob: ctx.blobs.path(&l.blob),
        layer: l.clone(),
        n,
        policy: ctx.policy.clone(),
        tar_cache: std::path::PathBuf::new(),
        unconfined: ctx.unconfined_worker,
        test_escape: None,
        test_no_landlock: false,
        progress: false,
        bench_native_check: false,
    };
    let d = crate::worker::hash(req, verdicts)?;
    if d.digest != digest {
        return Err(StepFailure::Retry(format!(
            "layer {n}: the stored blob changed while it was read"
        )));
    }
    ctx.store
        .put_layer_blob(&d.digest, media_name(l.media), &d.diff_id)?;
    Ok((d.diff_id, true))
}

/// Layer `l`'s decompressed bytes from its raw bytes `raw`, capped at the
/// policy's decompression ratio.
fn decoded<'a, R: Read + Send + 'a>(
    l: &PlannedLayer,
    raw: R,
    policy: &crate::core::policy::Policy,
) -> Result<Capped<Box<dyn Read + Send + 'a>>, StepFailure> {
    // An uncompressed layer is its own size: nothing to cap.
    let ratio_limit = if l.media == LayerMedia::Tar {
        u64::MAX
    } else {
        policy.decompressed_cap(l.len)
    };
    Ok(Capped::new(
        decoder(media_kind(l.media), raw)?,
        l.len,
        ratio_limit,
        policy.max_layer_bytes.limit,
        (u64::MAX, "max-layer-bytes"),
    ))
}

/// Decompressed bytes handed from the decoding thread to the applying one.
const STAGE_CHUNK: usize = 1 << 20;

/// The decoding stage: reads `r` to its end in chunks, sending each (or the
/// error that stopped it); stops early when the receiver is gone.
fn decompress_into<R: Read>(mut r: R, tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>) {
    loop {
        let mut buf = vec![0u8; STAGE_CHUNK];
        match crate::extract::read_full(&mut r, &mut buf) {
            Ok(0) => return,
            Ok(got) => {
                buf.truncate(got);
                if tx.send(Ok(buf)).is_err() || got < STAGE_CHUNK {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// The applying stage's view of the decoded stream.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ChannelReader {
    fn new(rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The decoder finished (or stopped after sending its error).
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Notes whether the underlying (blob file) reader failed, to tell an
/// environment error from a decoder's verdict on the bytes.
struct Watched<R> {
    inner: R,
    failed: Arc<AtomicBool>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed.store(true, Ordering::Relaxed);
            }
        })?;
        crate::progress::RAW_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Shares a running hash between a tap and its owner.
#[derive(Clone)]
struct Tap<R> {
    inner: R,
    state: Arc<Mutex<(sha2::Sha256, u64)>>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0.update(&buf[..n]);
        s.1 += n as u64;
        Ok(n)
    }
}

fn tap_digest(state: &Arc<Mutex<(sha2::Sha256, u64)>>) -> (String, u64) {
    use sha2::Digest as _;
    let s = state.lock().unwrap_or_else(|p| p.into_inner());
    (
        format!("sha256:{}", hex::encode(s.0.clone().finalize())),
        s.1,
    )
}

/// Applies one layer through `root` in the confined extraction worker
/// ([`crate::worker`]), which verifies its digests as it streams.
///
/// A rejection by the tar check is also pushed to `verdicts`, with its rule.
pub fn apply_one(
    ctx: &Ctx,
    image: &str,
    (n, of): (usize, usize),
    l: &PlannedLayer,
    root: rustix::fd::BorrowedFd<'_>,
    verdicts: &mut Verdicts,
) -> Result<crate::extract::ApplyStats, StepFailure> {
    let tar_cache = ctx.steps.tar_check_cache().ok_or_else(|| {
        StepFailure::Retry(
            "the compiled tar check is not cached (is the state directory writable?)".into(),
        )
    })?;
    let req = crate::worker::Request {
        task: crate::worker::Task::Apply,
        root_fd: 0,
        blob: ctx.blobs.path(&l.blob),
        layer: l.clone(),
        n,
        policy: ctx.policy.clone(),
        tar_cache: tar_cache.to_path_buf(),
        unconfined: ctx.unconfined_worker,
        test_escape: None,
        test_no_landlock: false,
        progress: false,
        bench_native_check: cfg!(feature = "bench-native-check")
            && std::env::var_os("TARPOOL_BENCH_NATIVE_CHECK").is_some(),
    };
    let total = l.len;
    let report = move |bytes: u64, entries: u64| {
        crate::progress::layer(image, n, of, bytes, total, entries);
    };
    let on_progress: Option<crate::worker::OnProgress<'_>> =
        crate::progress::active().then_some(&report);
    let r = crate::worker::run(req, root, verdicts, on_progress);
    crate::progress::layer_done(image, n);
    let (stats, digests) = r?;
    // The worker checked both while applying: this blob holds this diff ID.
    ctx.store
        .put_layer_blob(&digests.digest, media_name(l.media), &digests.diff_id)?;
    Ok(stats)
}

/// A layer blob's digest (of its bytes as stored) and diff ID (of its
/// decompressed tar stream), as the confined worker computed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDigests {
    pub digest: String,
    pub diff_id: String,
}

/// The layer media as the store records it with a verified blob.
fn media_name(m: LayerMedia) -> &'static str {
    match m {
        LayerMedia::Tar => "tar",
        LayerMedia::Gzip => "gzip",
        LayerMedia::Zstd => "zstd",
        LayerMedia::Detect => "detect",
    }
}

/// Hashes layer `n` (`l`, in `blob`): its digest, checked against the
/// manifest's, and its diff ID. The worker's [`crate::worker::Task::Hash`]:
/// the decompression happens there, confined, never in the service.
pub(crate) fn hash_stream(
    blob: File,
    n: usize,
    l: &PlannedLayer,
    policy: &crate::core::policy::Policy,
    verdicts: &mut Verdicts,
) -> Result<LayerDigests, StepFailure> {
    use sha2::Digest as _;
    let r =
        archive::range(blob, l.offset, l.len).map_err(|e| StepFailure::io("reading a layer", e))?;
    let raw_state = Arc::new(Mutex::new((sha2::Sha256::new(), 0u64)));
    let failed = Arc::new(AtomicBool::new(false));
    let raw = Tap {
        inner: Watched {
            inner: BufReader::with_capacity(1 << 20, r),
            failed: failed.clone(),
        },
        state: raw_state.clone(),
    };
    let h = crate::blobs::HashingReader::new(decoded(l, raw, policy)?);
    // An error the blob file did not raise is the decoder's verdict on the
    // bytes.
    let (diff_id, _) = h.finish().map_err(|e| {
        if failed.load(Ordering::Relaxed) {
            StepFailure::io("hashing a layer", e)
        } else {
            decode_failure(n, &e, verdicts)
        }
    })?;
    let (digest, raw_len) = tap_digest(&raw_state);
    verify_raw(n, l, &digest, raw_len)?;
    Ok(LayerDigests { digest, diff_id })
}

/// The checks on a layer's stored bytes once its stream has been read:
/// nothing after the compressed stream, and the manifest's digest.
fn verify_raw(n: usize, l: &PlannedLayer, digest: &str, raw_len: u64) -> Result<(), StepFailure> {
    if raw_len != l.len {
        return Err(input(format!(
            "layer {n}: {} bytes follow the compressed stream",
            l.len - raw_len
        )));
    }
    match &l.digest {
        Some(want) if want != digest => Err(input(format!(
            "layer {n}: digest mismatch: manifest says {want}, blob is {digest}"
        ))),
        _ => Ok(()),
    }
}

/// Streams layer `n` (`l`, in `blob`) through the tar check onto `root`,
/// verifying its digests: the worker's job.
pub(crate) fn apply_stream(
    blob: File,
    n: usize,
    l: &PlannedLayer,
    policy: &crate::core::policy::Policy,
    check: &mut dyn crate::extract::view::TarCheck,
    root: rustix::fd::BorrowedFd<'_>,
    verdicts: &mut Verdicts,
) -> Result<(crate::extract::ApplyStats, LayerDigests), StepFailure> {
    use sha2::Digest as _;
    let r =
        archive::range(blob, l.offset, l.len).map_err(|e| StepFailure::io("reading a layer", e))?;
    crate::progress::RAW_BYTES.store(0, Ordering::Relaxed);
    crate::progress::ENTRIES.store(0, Ordering::Relaxed);
    let raw_state = Arc::new(Mutex::new((sha2::Sha256::new(), 0u64)));
    let failed = Arc::new(AtomicBool::new(false));
    let raw = Tap {
        inner: Watched {
            inner: BufReader::with_capacity(1 << 20, r),
            failed: failed.clone(),
        },
        state: raw_state.clone(),
    };
    let diff_state = Arc::new(Mutex::new((sha2::Sha256::new(), 0u64)));
    let decoded = decoded(l, raw, policy)?;
    // Two stages on two cores: a helper thread decompresses and hashes both
    // the compressed bytes (digest) and the decompressed ones (diff ID); this
    // thread runs the tar check and writes, the heavier half.
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let diff = Tap {
        inner: decoded,
        state: diff_state.clone(),
    };
    let applied = std::thread::scope(|s| {
        s.spawn(move || decompress_into(diff, tx));
        crate::extract::apply_layer(root, ChannelReader::new(rx), check)
    });
    let stats = applied.map_err(|e| {
        // The decompression stopped at a policy limit: a decision, not bad data.
        if let crate::extract::ApplyError::Io { source, .. } = &e {
            if over_limit(source).is_some() {
                return decode_failure(n, source, verdicts);
            }
        }
        // A read error the blob file did not raise comes from the decoder:
        // the bytes are bad, not the environment.
        let e = match e {
            crate::extract::ApplyError::Io { context, source }
                if context.starts_with("reading layer") && !failed.load(Ordering::Relaxed) =>
            {
                crate::extract::ApplyError::Input(format!("corrupt layer data: {source}"))
            }
            e => e,
        };
        if let crate::extract::ApplyError::Check(CheckError::Rejected { path, rule, reason }) = &e {
            verdicts.push(Verdict {
                rule: rule.clone(),
                action: "reject".into(),
                layer: u32::try_from(n).ok(),
                path: Some(path.clone()),
                detail: reason.clone(),
            });
        }
        match StepFailure::from(e) {
            StepFailure::Input(m) => StepFailure::Input(format!("layer {n}: {m}")),
            other => other,
        }
    })?;
    // apply_layer read the stream to its end: the digests cover it all.
    let (raw_digest, raw_len) = tap_digest(&raw_state);
    verify_raw(n, l, &raw_digest, raw_len)?;
    let (diff_digest, _) = tap_digest(&diff_state);
    if let Some(want) = &l.diff_id {
        if &diff_digest != want {
            return Err(input(format!(
                "layer {n}: diff ID mismatch: expected {want}, unpacked {diff_digest}"
            )));
        }
    }
    Ok((
        stats,
        LayerDigests {
            digest: raw_digest,
            diff_id: diff_digest,
        },
    ))
}
