//! unpack-layers: each layer not stored yet is applied once, by the confined
//! worker, into a new snapshot on its parent; synced and committed on a
//! second thread while the next is applied. A chain's lock keeps two images
//! from applying the same layer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::check_unpacked::verify_stored;
use super::{layer_ids, worker_request, RunData};
use crate::core::plan::PlannedLayer;
use crate::core::policy::Verdicts;
use crate::ctx::Ctx;
use crate::error::Failure;

/// A layer applied, its sync (and then its commit) under way on another
/// thread while the next layer is applied.
struct Sealing<'s, 'l> {
    id: i64,
    handle: std::thread::ScopedJoinHandle<'s, Result<(), Failure>>,
    /// Held until the layer is committed: another image sharing the chain
    /// waits, then finds it committed.
    _held: std::sync::MutexGuard<'l, ()>,
}

/// Waits for the layer being sealed, if any; on failure discards it and,
/// applied on top of it, `above`.
fn finish_sealing(
    ctx: &Ctx,
    sealing: &mut Option<Sealing<'_, '_>>,
    above: Option<i64>,
) -> Result<(), Failure> {
    let Some(p) = sealing.take() else {
        return Ok(());
    };
    let r = p
        .handle
        .join()
        .unwrap_or_else(|_| Err(Failure::Retry("the layer sync thread panicked".into())));
    match r {
        Ok(()) => {
            ctx.failpoints.hit("after-layer");
            Ok(())
        }
        Err(e) => {
            for id in above.into_iter().chain([p.id]) {
                if let Err(d) = ctx.backend.discard_layer(id) {
                    return Err(Failure::Retry(format!(
                        "{e}; discarding the layer failed too: {d}"
                    )));
                }
                ctx.store.discard_layer(id)?;
            }
            Err(e)
        }
    }
}

/// Applies the run's layers in order. Each layer is applied unsynced, then
/// synced and committed on a second thread while the next one is applied
/// (at most one layer is being sealed); a layer is committed only after
/// its sync, and only after the layer below it is.
pub(super) fn run(
    ctx: &Ctx,
    run: &str,
    image: &str,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, Failure> {
    super::inspect::same_steps(ctx, data)?;
    let done: Vec<usize> = ctx
        .store
        .layer_progress(run)?
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    let chains: Vec<String> = data
        .layers
        .iter()
        .map(|l| l.chain_id.clone().unwrap_or_default())
        .collect();
    let locks: Vec<Arc<Mutex<()>>> = chains.iter().map(|c| ctx.chain_lock(c)).collect();
    let (mut applied, mut shared, mut resumed) = (0, 0, 0);
    let mut entries = 0u64;
    let mut check_ns = 0u64;
    let of = data.layers.len();
    std::thread::scope(|s| -> Result<(), Failure> {
        let mut sealing: Option<Sealing<'_, '_>> = None;
        for (i, layer) in data.layers.iter().enumerate() {
            if done.contains(&i) {
                resumed += 1;
                continue;
            }
            if ctx.store.cancel_requested(run)? {
                finish_sealing(ctx, &mut sealing, None)?;
                return Err(Failure::Cancelled);
            }
            if ctx.shutdown.load(Ordering::SeqCst) {
                finish_sealing(ctx, &mut sealing, None)?;
                return Err(Failure::Retry("the service is shutting down".into()));
            }
            let chain = &chains[i];
            let held = locks[i].lock().unwrap_or_else(|p| p.into_inner());
            match ctx.store.layer(chain)? {
                Some(l) if l.committed => {
                    // Below it, everything is committed already.
                    finish_sealing(ctx, &mut sealing, None)?;
                    // Another image committed it since check-unpacked: this
                    // image's own blob must hold it too.
                    verify_stored(ctx, i + 1, layer, verdicts)?;
                    ctx.store.record_layer_progress(run, i, chain)?;
                    shared += 1;
                    continue;
                }
                Some(l) => {
                    ctx.backend
                        .discard_layer(l.id)
                        .map_err(|e| Failure::io("discarding a stale layer", e))?;
                    ctx.store.discard_layer(l.id)?;
                }
                None => {}
            }
            let parents = match layer_ids(ctx, &chains[..i], sealing.as_ref().map(|p| p.id)) {
                Ok(p) => p,
                Err(e) => {
                    finish_sealing(ctx, &mut sealing, None)?;
                    return Err(e);
                }
            };
            let parent_chain = if i == 0 {
                None
            } else {
                Some(chains[i - 1].as_str())
            };
            let id = match ctx.store.begin_layer(
                chain,
                parent_chain,
                layer.diff_id.as_deref().unwrap_or_default(),
            ) {
                Ok(id) => id,
                Err(e) => {
                    finish_sealing(ctx, &mut sealing, None)?;
                    return Err(e.into());
                }
            };
            let mut apply = |root: rustix::fd::BorrowedFd<'_>| {
                apply_one(ctx, image, (i + 1, of), layer, root, verdicts)
            };
            let result = ctx.backend.apply_layer_unsynced(id, &parents, &mut apply);
            // The layer below is committed (or discarded with this one)
            // before this one is; this one's fate is decided next.
            finish_sealing(ctx, &mut sealing, Some(id))?;
            let stats = match result {
                Ok(s) => s,
                Err(e) => {
                    if let Err(d) = ctx.backend.discard_layer(id) {
                        return Err(Failure::Retry(format!(
                            "{e}; discarding the layer failed too: {d}"
                        )));
                    }
                    ctx.store.discard_layer(id)?;
                    return Err(e);
                }
            };
            // What the policy or the filesystem made us skip, strip, clamp or
            // note, entry by entry, on the record.
            let layer_no = u32::try_from(i + 1).ok();
            for d in &stats.decisions {
                verdicts.push(crate::core::policy::Verdict {
                    rule: d.rule.clone(),
                    action: d.action.clone(),
                    layer: layer_no,
                    path: Some(d.path.clone()),
                    detail: d.detail.clone(),
                });
            }
            for (rule, n) in &stats.decisions_dropped {
                verdicts.push(crate::core::policy::Verdict {
                    rule: rule.clone(),
                    action: "note".into(),
                    layer: layer_no,
                    path: None,
                    detail: format!("{n} more decisions under this rule, not listed one by one"),
                });
            }
            ctx.failpoints.hit("mid-layer");
            check_ns += stats.check_ns;
            entries += stats.entries;
            applied += 1;
            let (n_entries, n_bytes) = (stats.entries, stats.bytes);
            let handle = s.spawn(move || -> Result<(), Failure> {
                if ctx.failpoints.fails("fail:sync-layer") {
                    return Err(Failure::Retry(
                        "syncing the layer: injected I/O failure".into(),
                    ));
                }
                ctx.backend.sync_layer(id)?;
                ctx.store
                    .commit_layer(id, n_entries, n_bytes, run, i, chain)?;
                Ok(())
            });
            sealing = Some(Sealing {
                id,
                handle,
                _held: held,
            });
        }
        finish_sealing(ctx, &mut sealing, None)
    })?;
    Ok(
        serde_json::json!({ "applied": applied, "shared": shared, "resumed": resumed, "entries": entries, "tar_check_ms": check_ns as f64 / 1e6 }),
    )
}

/// Applies one layer through `root` in the confined extraction worker
/// ([`crate::worker`]), which verifies its digests as it streams.
///
/// A rejection by the tar check is also pushed to `verdicts`, with its rule.
fn apply_one(
    ctx: &Ctx,
    image: &str,
    (n, of): (usize, usize),
    l: &PlannedLayer,
    root: rustix::fd::BorrowedFd<'_>,
    verdicts: &mut Verdicts,
) -> Result<crate::extract::ApplyStats, Failure> {
    let tar_cache = ctx.steps.tar_check_cache().ok_or_else(|| {
        Failure::Retry(
            "the compiled tar check is not cached (is the state directory writable?)".into(),
        )
    })?;
    let mut req = worker_request(ctx, crate::worker::Task::Apply, l.clone(), n);
    req.tar_cache = tar_cache.to_path_buf();
    req.inspect = ctx
        .steps
        .inspect_caches()
        .map_err(|e| Failure::Retry(e.to_string()))?;
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
        .put_layer_blob(&digests.digest, l.media.name(), &digests.diff_id)?;
    Ok(stats)
}
