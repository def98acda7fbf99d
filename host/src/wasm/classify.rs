//! The classify step: what a blob is from its first bytes, asked of each
//! classify component in turn.

use crate::model;

use super::limits::{
    instantiate_err, one_line, trapped, CLASSIFY_MEMORY, MAX_HEAD, MAX_MESSAGE_CHARS,
};
use super::{count_guest_time, Finally, StepError, Steps};

pub(super) mod classify_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "classify-step" });
}

impl Steps {
    /// Tells what a blob is from its first bytes (at most 64 KiB are used)
    /// and its full length: the first classify component whose answer is
    /// not `unknown` decides.
    pub fn classify(
        &self,
        head: &[u8],
        total_size: u64,
    ) -> Result<model::Classification, StepError> {
        use classify_bindings::tarpool::steps::types::BlobKind as K;
        let head = &head[..head.len().min(MAX_HEAD)];
        let mut first_unknown = None;
        let t = std::time::Instant::now();
        let _count = Finally(|| count_guest_time(t));
        for c in &self.classify {
            let _slot = self.slots.acquire();
            let (mut store, stderr) = self.new_store(self.classify_fuel, CLASSIFY_MEMORY, None)?;
            let step = c
                .pre
                .instantiate(&mut store)
                .map_err(|e| instantiate_err("classify", e, &stderr))?;
            let result = step
                .call_classify(&mut store, head, total_size)
                .map_err(|e| trapped(e, &stderr))?;
            drop(store);
            let c = result.map_err(|e| StepError::Rejected(one_line(&e, MAX_MESSAGE_CHARS)))?;
            let out = model::Classification {
                kind: match c.kind {
                    K::Tar => model::BlobKind::Tar,
                    K::Gzip => model::BlobKind::Gzip,
                    K::Zstd => model::BlobKind::Zstd,
                    K::Empty => model::BlobKind::Empty,
                    K::Unknown => model::BlobKind::Unknown,
                },
                detail: one_line(&c.detail, MAX_MESSAGE_CHARS),
            };
            if out.kind != model::BlobKind::Unknown {
                return Ok(out);
            }
            first_unknown.get_or_insert(out);
        }
        Ok(first_unknown.expect("at least one classify component"))
    }
}
