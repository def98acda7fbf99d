//! parse-manifest: the manifest step (WebAssembly) reads the image's
//! manifests and config through a reader of the stored members; the layer
//! list it returns is checked against the policy and planned
//! (`core::plan`): where each layer lies and how it is decoded.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;

use super::classify::{describe, head_of};
use super::{deny_if, input, open_blob, unit, RunData};
use crate::archive::{self, IndexedMember};
use crate::core::names::{printable, Unit};
use crate::core::plan::{self, Placed};
use crate::core::policy::Verdicts;
use crate::ctx::Ctx;
use crate::error::Failure;
use crate::model::{BlobKind, LayerRef, Member, UnitKind};

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

pub(super) fn run(
    ctx: &Ctx,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, Failure> {
    let u = unit(data)?.clone();
    let layout = match u.kind {
        UnitKind::Prefix => {
            let members = object_members(&u);
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
        UnitKind::Registry => {
            let reg = super::source(ctx, data)?.registry().ok_or_else(|| {
                Failure::Retry(format!(
                    "the image's source {} is not a registry",
                    printable(&data.source)
                ))
            })?;
            let manifest = data
                .blobs
                .get("manifest")
                .ok_or_else(|| input("download did not record the manifest"))?;
            let members = object_members(&u);
            let key = u.objects.first().map_or("", |o| o.key.as_str());
            let (read, failed) = reg
                .member_reader(
                    key,
                    &ctx.blobs,
                    manifest,
                    ctx.policy.max_json_bytes.limit as usize,
                )
                .map_err(|e| Failure::Retry(e.to_string()))?;
            let r =
                ctx.steps
                    .parse_manifest_for(UnitKind::Registry, &members, read, reg.platform());
            // A fetch that failed for the environment's reason is not
            // the image's fault, whatever the step made of it.
            if let (Err(_), Some(e)) = (&r, failed.lock().ok().and_then(|mut f| f.take())) {
                return Err(Failure::Retry(e.to_string()));
            }
            r?
        }
    };
    let (layout, answered) = layout;
    let v = ctx.policy.check_format(&layout.format);
    verdicts.push(v.clone());
    deny_if(&v)?;
    let v = ctx.policy.check_layers(layout.layers.len());
    verdicts.push(v.clone());
    deny_if(&v)?;
    let v = ctx
        .policy
        .check_layer_repeats(plan::max_repeats(&layout.layers));
    if !v.allowed() {
        verdicts.push(v.clone());
    }
    deny_if(&v)?;

    let mut planned = Vec::new();
    for (i, l) in layout.layers.iter().enumerate() {
        let n = i + 1;
        let (at, known_kind) = place(data, &u, n, l)?;
        plan::check_size(n, l, at.len).map_err(|e| input(e.to_string()))?;
        let kind = match known_kind {
            Some(k) => k,
            None => {
                let f = open_blob(ctx, &at.blob)?;
                let head = head_of(
                    &mut archive::range(f, at.offset, at.len)
                        .map_err(|e| Failure::io("reading a layer", e))?,
                )?;
                let c = ctx.steps.classify(&head, at.len)?;
                if !plan::is_layer_kind(c.kind) {
                    return Err(input(format!(
                        "layer {n} (`{}`) is not a tar layer: {}",
                        printable(&l.member),
                        describe(c.kind, &c.detail)
                    )));
                }
                c.kind
            }
        };
        match plan::plan_layer(n, l, at, kind) {
            Ok(p) => planned.push(p),
            Err(e) => {
                verdicts.extend(e.verdict());
                return Err(input(e.to_string()));
            }
        }
    }
    data.format = Some(layout.format.clone());
    data.config = layout.config.clone();
    data.layers = planned;
    super::inspect::check_image(ctx, &u.name, data, verdicts)?;
    Ok(json!({
        "format": layout.format,
        "layers": data.layers.len(),
        "config_digest": layout.config_digest,
        "config": layout.config,
        "component": answered.component,
        "component_sha256": answered.sha256,
    }))
}

/// A prefix's or registry image's objects, as the manifest step sees them.
fn object_members(u: &Unit) -> Vec<Member> {
    u.objects
        .iter()
        .map(|o| Member {
            name: o.member.clone(),
            size: o.size,
        })
        .collect()
}

/// Where layer `n`'s bytes lie (a stored blob, or a member of the archive
/// blob), and their kind when classify already found it.
fn place(
    data: &RunData,
    u: &Unit,
    n: usize,
    l: &LayerRef,
) -> Result<(Placed, Option<BlobKind>), Failure> {
    let missing = || {
        input(format!(
            "layer {n} names missing member `{}`",
            printable(&l.member)
        ))
    };
    Ok(match u.kind {
        UnitKind::Registry => {
            // Fetched by fetch-layers, by digest: named by it here, of the
            // declared size, decoded as declared until its bytes are seen.
            let digest = l
                .digest
                .as_deref()
                .filter(|d| crate::core::chain::is_sha256_digest(d))
                .ok_or_else(|| {
                    input(format!("layer {n}: a registry layer needs a sha256 digest"))
                })?;
            let (Some(len), Some(kind)) = (l.size, plan::declared_kind(l.media)) else {
                return Err(input(format!(
                    "layer {n}: a registry layer needs a declared size and media type"
                )));
            };
            if l.member != format!("blobs/sha256/{}", &digest[7..]) {
                return Err(input(format!(
                    "layer {n} names `{}`, not its digest's blob",
                    printable(&l.member)
                )));
            }
            let at = Placed {
                blob: digest.to_string(),
                offset: 0,
                len,
            };
            (at, Some(kind))
        }
        UnitKind::Prefix => {
            let digest = data.blobs.get(&l.member).ok_or_else(missing)?;
            let size = u
                .objects
                .iter()
                .find(|o| o.member == l.member)
                .map(|o| o.size)
                .unwrap_or(0);
            let at = Placed {
                blob: digest.clone(),
                offset: 0,
                len: size,
            };
            (at, data.kinds.get(&l.member).copied())
        }
        UnitKind::Archive => {
            let a = data
                .archive
                .as_ref()
                .ok_or_else(|| input("classify did not index the archive"))?;
            if l.member.is_empty() {
                let at = Placed {
                    blob: a.blob.clone(),
                    offset: 0,
                    len: a.size,
                };
                (at, Some(BlobKind::Tar))
            } else {
                let m = a
                    .members
                    .iter()
                    .find(|m| m.name == l.member)
                    .ok_or_else(missing)?;
                let at = Placed {
                    blob: a.blob.clone(),
                    offset: m.offset,
                    len: m.size,
                };
                (at, None)
            }
        }
    })
}
