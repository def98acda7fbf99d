//! Garbage collection: the layers nothing stands on, then whatever the
//! backend holds that the store no longer references.

use crate::backend::Snapshotter;
use crate::store::Store;

/// What a garbage collection removed.
#[derive(Debug, serde::Serialize)]
pub struct GcReport {
    pub layers_removed: usize,
    pub cleanup: crate::backend::Cleanup,
    pub before: Option<crate::backend::PoolUsage>,
    pub after: Option<crate::backend::PoolUsage>,
    pub reclaimed_data_bytes: Option<u64>,
}

/// Removes the layers no ready image, activation or unfinished run stands
/// on, then whatever else the backend holds that the store no longer
/// references. The caller holds the state directory's run lock (`tarpool
/// gc`, or the service between polls, when no run is under way).
pub fn collect(store: &Store, backend: &dyn Snapshotter) -> anyhow::Result<GcReport> {
    use anyhow::Context as _;
    let before = backend.usage()?;
    let (_, unused) = store.layers_in_use()?;
    let mut layers_removed = 0;
    for l in &unused {
        backend
            .discard_layer(l.id)
            .with_context(|| format!("removing layer {}", l.id))?;
        store.forget_layer(l.id)?;
        layers_removed += 1;
    }
    let cleanup = backend
        .cleanup(&store.known()?)
        .context("cleaning up the backend")?;
    let after = backend.usage()?;
    let reclaimed_data_bytes = match (&before, &after) {
        (Some(a), Some(z)) => Some(a.data_used_bytes.saturating_sub(z.data_used_bytes)),
        _ => None,
    };
    Ok(GcReport {
        layers_removed,
        cleanup,
        before,
        after,
        reclaimed_data_bytes,
    })
}
