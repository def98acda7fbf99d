//! check-unpacked: every layer's diff ID and chain ID, and which layers are
//! stored already (each shown to be held by this image's own blob).

use serde_json::{json, Value};
use std::io::BufReader;

use super::{input, open_blob, worker_request, RunData};
use crate::archive;
use crate::core::plan::PlannedLayer;
use crate::core::policy::Verdicts;
use crate::ctx::Ctx;
use crate::error::Failure;
use crate::model::LayerMedia;

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
pub(super) fn run(
    ctx: &Ctx,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, Failure> {
    super::inspect::same_steps(ctx, data)?;
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
    let chains =
        crate::core::plan::chain_ids_under(&data.layers, ctx.steps.inspect_identity().as_deref());
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
) -> Result<bool, Failure> {
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
) -> Result<(String, bool), Failure> {
    // The blob store names a blob by the sha256 it computed; a registry
    // layer not fetched (its chain stored) is named by its digest.
    let addressed = ctx.blobs.has(&l.blob, l.len) || l.digest.as_deref() == Some(l.blob.as_str());
    let digest = if l.offset == 0 && addressed {
        l.blob.clone()
    } else {
        let f = open_blob(ctx, &l.blob)?;
        let r =
            archive::range(f, l.offset, l.len).map_err(|e| Failure::io("reading a layer", e))?;
        let (d, len) = crate::blobs::HashingReader::new(BufReader::with_capacity(1 << 20, r))
            .finish()
            .map_err(|e| Failure::io("hashing a layer", e))?;
        if len != l.len {
            return Err(Failure::Retry(format!(
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
    if let Some(diff) = ctx.store.layer_blob(&digest, l.media.name())? {
        return Ok((diff, false));
    }
    if l.media == LayerMedia::Tar {
        // An uncompressed layer's diff ID is its digest.
        return Ok((digest, false));
    }
    let req = worker_request(ctx, crate::worker::Task::Hash, l.clone(), n);
    let d = crate::worker::hash(req, verdicts)?;
    if d.digest != digest {
        return Err(Failure::Retry(format!(
            "layer {n}: the stored blob changed while it was read"
        )));
    }
    ctx.store
        .put_layer_blob(&d.digest, l.media.name(), &d.diff_id)?;
    Ok((d.diff_id, true))
}
