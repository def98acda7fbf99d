//! Resuming after a crash: what a start does before any run is driven again.

use crate::ctx::Ctx;

/// After a crash: interrupted executions are recorded, half-applied
/// layers discarded, stray mounts and temporary files removed.
pub fn recover(ctx: &Ctx) -> anyhow::Result<()> {
    use anyhow::Context as _;
    ctx.store.mark_interrupted()?;
    for l in ctx.store.layers()? {
        if !l.committed {
            ctx.backend
                .discard_layer(l.id)
                .context("discarding a half-applied layer")?;
            ctx.store.discard_layer(l.id)?;
        }
    }
    let known = ctx.store.known()?;
    let report = ctx
        .backend
        .cleanup(&known)
        .context("cleaning up the backend")?;
    for e in &report.errors {
        tracing::warn!(error = %e, "cleanup left something for next time");
    }
    let tmp = ctx.state_dir.tmp();
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path()).or_else(|_| std::fs::remove_dir_all(e.path()));
        }
    }
    Ok(())
}
