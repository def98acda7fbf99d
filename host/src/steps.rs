//! The transitions' work. Each takes the run's data, does its I/O, and
//! returns a JSON summary for the audit log; the engine persists both.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::AsFd as _;

use crate::archive::{self, IndexedMember};
use crate::core::chain;
use crate::core::names::{printable, Unit};
use crate::core::policy::Verdict;
use crate::engine::Ctx;
use crate::error::StepFailure;
use crate::extract::view::Mode;
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
                    // Decompressed by the confined worker into a file here;
                    // this process only hashes and adopts the bytes.
                    let (tar_digest, size) = decompress_archive(
                        ctx, &digest, c.kind, o.size, verdicts,
                    )
                    .map_err(|e| match e {
                        StepFailure::Input(m) => input(format!("`{}`: {m}", printable(&o.key))),
                        e => e,
                    })?;
                    let inner = head_of(&mut open_blob(ctx, &tar_digest)?)?;
                    let ic = ctx.steps.classify(&inner, size)?;
                    if ic.kind != BlobKind::Tar {
                        return Err(input(format!(
                            "`{}` is {} but does not hold a tar archive: {}",
                            printable(&o.key),
                            describe(c.kind, &c.detail),
                            describe(ic.kind, &ic.detail)
                        )));
                    }
                    (tar_digest, size)
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

/// A request to the extraction worker for `task` on layer `n` (`l`, in its
/// blob), under this run's policy and opt-out; no test hooks.
fn worker_request(
    ctx: &Ctx,
    task: crate::worker::Task,
    l: PlannedLayer,
    n: usize,
) -> crate::worker::Request {
    crate::worker::Request {
        task,
        root_fd: -1,
        blob: ctx.blobs.path(&l.blob),
        layer: l,
        n,
        policy: ctx.policy.clone(),
        tar_cache: std::path::PathBuf::new(),
        unconfined: ctx.unconfined_worker,
        test_escape: None,
        test_no_landlock: false,
        test_landlock_abi: None,
        test_escape_kind: Default::default(),
        progress: false,
        bench_native_check: false,
    }
}

/// Has the confined worker decompress the archive blob `digest` (`kind`,
/// `size` bytes) into a staging file, then adopts the file into the blob
/// store: its digest and size.
fn decompress_archive(
    ctx: &Ctx,
    digest: &str,
    kind: BlobKind,
    size: u64,
    verdicts: &mut Verdicts,
) -> Result<(String, u64), StepFailure> {
    let staging = ctx
        .blobs
        .staging()
        .map_err(|e| StepFailure::io("creating a staging file", e))?;
    let layer = PlannedLayer {
        member: String::new(),
        media: if kind == BlobKind::Zstd {
            LayerMedia::Zstd
        } else {
            LayerMedia::Gzip
        },
        blob: digest.to_string(),
        offset: 0,
        len: size,
        digest: None,
        diff_id: None,
        chain_id: None,
    };
    let req = worker_request(ctx, crate::worker::Task::Decompress, layer, 0);
    crate::worker::decompress(req, staging.as_file().as_fd(), verdicts)?;
    ctx.blobs
        .adopt(staging)
        .map_err(|e| StepFailure::io("storing the decompressed archive", e))
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
            // The reader owns what it reads: each member's blob path, the cap.
            let paths: BTreeMap<String, std::path::PathBuf> = data
                .blobs
                .iter()
                .map(|(m, d)| (m.clone(), ctx.blobs.path(d)))
                .collect();
            let cap = ctx.policy.max_json_bytes.limit;
            let read = move |name: &str| -> Result<Vec<u8>, String> {
                let path = paths
                    .get(name)
                    .ok_or_else(|| format!("no member `{name}`"))?;
                let f = File::open(path).map_err(|e| e.to_string())?;
                let m = IndexedMember {
                    name: name.to_string(),
                    offset: 0,
                    size: f.metadata().map_err(|e| e.to_string())?.len(),
                };
                archive::read_member(&f, &m, cap).and_then(|b| verify_addressed(name, b))
            };
            ctx.steps
                .parse_manifest(UnitKind::Prefix, &members, Box::new(read))?
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
            let (index, cap) = (a.members.clone(), ctx.policy.max_json_bytes.limit);
            let read = move |name: &str| -> Result<Vec<u8>, String> {
                let m = index
                    .iter()
                    .find(|m| m.name == name)
                    .ok_or_else(|| format!("no member `{name}`"))?;
                archive::read_member(&f, m, cap).and_then(|b| verify_addressed(name, b))
            };
            ctx.steps
                .parse_manifest(UnitKind::Archive, &members, Box::new(read))?
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
    let req = worker_request(ctx, crate::worker::Task::Hash, l.clone(), n);
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
    let mut req = worker_request(ctx, crate::worker::Task::Apply, l.clone(), n);
    req.tar_cache = tar_cache.to_path_buf();
    req.bench_native_check = cfg!(feature = "bench-native-check")
        && std::env::var_os("TARPOOL_BENCH_NATIVE_CHECK").is_some();
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
