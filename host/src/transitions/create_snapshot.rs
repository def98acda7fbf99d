//! create-snapshot: the image's snapshot of its top layer, which
//! activations are made from (a thin snapshot, or the overlay's lower stack).

use serde_json::Value;

use super::{layer_ids, RunData};
use crate::ctx::Ctx;
use crate::error::Failure;

pub(super) fn run(ctx: &Ctx, image: &str, data: &mut RunData) -> Result<Value, Failure> {
    let chains: Vec<String> = data
        .layers
        .iter()
        .map(|l| l.chain_id.clone().unwrap_or_default())
        .collect();
    let ids = layer_ids(ctx, &chains, None)?;
    let info = ctx.backend.snapshot_image(image, &ids)?;
    Ok(
        serde_json::json!({ "backend": ctx.backend.kind(), "layers": ids, "top_chain": data.top_chain, "fstype": info.fstype }),
    )
}
