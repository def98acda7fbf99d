//! fetch-layers: a registry image's layer blobs fetched by digest, several
//! at a time, each verified against its digest and declared size as it
//! streams (`source::registry::fetch`), then planned again from its magic
//! bytes. A blob already stored is not fetched, nor is one whose layer is
//! stored and known to be held by a blob of that digest. Other sources'
//! images hold their layers in their objects: nothing to do.

use serde_json::{json, Value};

use super::classify::{describe, head_of};
use super::{deny_if, input, open_blob, source, unit, RunData};
use crate::core::names::printable;
use crate::core::plan::{self, Placed};
use crate::core::policy::Verdicts;
use crate::ctx::Ctx;
use crate::error::Failure;
use crate::model::{LayerRef, UnitKind};
use crate::source::SourceError;

pub(super) fn run(
    ctx: &Ctx,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, Failure> {
    super::inspect::same_steps(ctx, data)?;
    if unit(data)?.kind != UnitKind::Registry {
        return Ok(json!({ "fetched": 0, "layers_in_objects": true }));
    }
    for l in &data.layers {
        let v = ctx.policy.check_object(&l.member, l.len);
        verdicts.push(v.clone());
        deny_if(&v)?;
    }
    let total = data
        .layers
        .iter()
        .map(|l| l.len)
        .fold(0u64, u64::saturating_add);
    let v = ctx.policy.check_image_size(total);
    verdicts.push(v.clone());
    deny_if(&v)?;
    let chains =
        crate::core::plan::chain_ids_under(&data.layers, ctx.steps.inspect_identity().as_deref());
    let mut wanted: Vec<(String, u64)> = Vec::new();
    let (mut stored, mut layer_stored) = (0, 0);
    for (l, c) in data.layers.iter().zip(&chains) {
        if ctx.blobs.has(&l.blob, l.len) {
            stored += 1;
        } else if held(ctx, l, c)? {
            layer_stored += 1;
        } else if !wanted.iter().any(|(d, _)| *d == l.blob) {
            wanted.push((l.blob.clone(), l.len));
        }
    }
    let reg = source(ctx, data)?.registry().ok_or_else(|| {
        Failure::Retry(format!(
            "the image's source {} is not a registry",
            printable(&data.source)
        ))
    })?;
    let key = data
        .unit
        .as_ref()
        .and_then(|u| u.objects.first())
        .map_or("", |o| o.key.as_str());
    let results = reg.fetch_blobs(key, &wanted, &ctx.blobs);
    let (mut received, mut resumed) = (0u64, 0u64);
    let mut first_err: Option<Failure> = None;
    for r in results {
        match r {
            Ok(f) => {
                received += f.received;
                resumed += f.resumed_from;
            }
            // The image's fault wins over the environment's.
            Err(e) => {
                let f = match e {
                    SourceError::Denied(m) | SourceError::BadObject(m) => Failure::Input(m),
                    e => Failure::Retry(e.to_string()),
                };
                if first_err
                    .as_ref()
                    .is_none_or(|prev| !matches!(prev, Failure::Input(_)))
                {
                    first_err = Some(f);
                }
            }
        }
    }
    if let Some(f) = first_err {
        return Err(f);
    }
    // The magic bytes decide how a layer is decoded (as for every source).
    for (i, l) in data.layers.iter_mut().enumerate() {
        if !ctx.blobs.has(&l.blob, l.len) {
            continue;
        }
        let n = i + 1;
        let head = head_of(&mut open_blob(ctx, &l.blob)?)?;
        let c = ctx.steps.classify(&head, l.len)?;
        if !plan::is_layer_kind(c.kind) {
            return Err(input(format!(
                "layer {n} (`{}`) is not a tar layer: {}",
                printable(&l.member),
                describe(c.kind, &c.detail)
            )));
        }
        let declared = LayerRef {
            member: l.member.clone(),
            media: l.media,
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            size: Some(l.len),
        };
        let at = Placed {
            blob: l.blob.clone(),
            offset: 0,
            len: l.len,
        };
        *l = plan::plan_layer(n, &declared, at, c.kind).map_err(|e| {
            verdicts.extend(e.verdict());
            input(e.to_string())
        })?;
    }
    Ok(json!({
        "fetched": wanted.len(),
        "bytes": received,
        "resumed_bytes": resumed,
        "stored": stored,
        "layer_stored": layer_stored,
    }))
}

/// Whether layer `l`'s chain `c` is stored and a blob of `l`'s digest was
/// shown before to hold its diff ID (then its blob is not needed: a digest
/// names one content).
fn held(ctx: &Ctx, l: &crate::core::plan::PlannedLayer, c: &str) -> Result<bool, Failure> {
    let (Some(digest), Some(diff)) = (&l.digest, &l.diff_id) else {
        return Ok(false);
    };
    if *digest != l.blob || !ctx.store.layer(c)?.is_some_and(|r| r.committed) {
        return Ok(false);
    }
    Ok(ctx.store.layer_blob(digest, l.media.name())?.as_deref() == Some(diff.as_str()))
}
