//! update-tracking: nothing to do but report; the engine writes the image's
//! row (ready, its format, layers, top chain and config) with this
//! transition's outcome, in the same SQLite transaction.

use serde_json::Value;

use super::RunData;
use crate::error::Failure;

pub(super) fn run(data: &RunData) -> Result<Value, Failure> {
    Ok(serde_json::json!({ "top_chain": data.top_chain, "layers": data.layers.len() }))
}
