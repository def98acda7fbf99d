//! The engine: drives each run through the transitions with the pure
//! decision function of `core::machine`, persisting every outcome in SQLite
//! before the next transition starts.

use crate::core::states::{ImageState, RunStatus, TransitionOutcome};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::Snapshotter;
use crate::blobs::BlobStore;
use crate::core::machine::{decide, Decision, FailureKind, Outcome, RetryPolicy, Step};
use crate::core::names::{self, printable};
use crate::core::policy::Policy;
use crate::core::sanitize::sanitize;
use crate::error::StepFailure;
use crate::failpoint::Failpoints;
use crate::source::Source;
use crate::steps::{self, RunData};
use crate::store::{Finish, ImageUpdate, Store};
use crate::wasm::Steps;

pub struct Ctx {
    pub state_dir: crate::statedir::StateDir,
    pub store: Store,
    pub blobs: BlobStore,
    pub steps: Steps,
    pub backend: Box<dyn Snapshotter>,
    pub source: Box<dyn Source>,
    pub policy: Policy,
    /// sha256 of the effective policy (its canonical TOML), recorded with
    /// each run.
    pub policy_sha256: String,
    pub retry: RetryPolicy,
    /// The operator's opt-out of the extraction worker's confinement
    /// (Landlock, no_new_privs, capabilities); logged at start.
    pub unconfined_worker: bool,
    pub failpoints: Failpoints,
    /// Set on SIGTERM/SIGINT: runs stop after the transition under way.
    pub shutdown: Arc<AtomicBool>,
    chain_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub ready: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub unchanged: Vec<String>,
    pub rejected: Vec<(String, String)>,
    pub interrupted: bool,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state_dir: crate::statedir::StateDir,
        store: Store,
        blobs: BlobStore,
        steps: Steps,
        backend: Box<dyn Snapshotter>,
        source: Box<dyn Source>,
        policy: Policy,
        retry: RetryPolicy,
    ) -> Ctx {
        let canonical = toml::to_string(&policy).unwrap_or_default();
        let policy_sha256 = crate::core::policy::policy_hash(&canonical);
        // Remembered so audits can show the exact policy a run used; a
        // failure here only loses that copy.
        let _ = store.record_policy(&policy_sha256, &policy.name, &canonical);
        Ctx {
            state_dir,
            store,
            blobs,
            steps,
            backend,
            source,
            policy,
            policy_sha256,
            retry,
            unconfined_worker: false,
            failpoints: Failpoints::from_env(),
            shutdown: Arc::new(AtomicBool::new(false)),
            chain_locks: Mutex::new(HashMap::new()),
        }
    }

    fn sanitize(&self, msg: &str) -> String {
        let state = self.state_dir.display().to_string();
        let src = self
            .source
            .local_root()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        sanitize(msg, &[(&state, "<state>"), (&src, "<source>")])
    }

    fn chain_lock(&self, chain: &str) -> Arc<Mutex<()>> {
        self.chain_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(chain.to_string())
            .or_default()
            .clone()
    }

    /// After a crash: interrupted executions are recorded, half-applied
    /// layers discarded, stray mounts and temporary files removed.
    pub fn recover(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        self.store.mark_interrupted()?;
        for l in self.store.layers()? {
            if !l.committed {
                self.backend
                    .discard_layer(l.id)
                    .context("discarding a half-applied layer")?;
                self.store.discard_layer(l.id)?;
            }
        }
        let known = self.store.known()?;
        let report = self
            .backend
            .cleanup(&known)
            .context("cleaning up the backend")?;
        for e in &report.errors {
            tracing::warn!(error = %e, "cleanup left something for next time");
        }
        let tmp = self.state_dir.tmp();
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ =
                    std::fs::remove_file(e.path()).or_else(|_| std::fs::remove_dir_all(e.path()));
            }
        }
        Ok(())
    }
}

/// Discovers the source's images and starts a run for each that is new,
/// changed, or failed for a reason other than its input.
pub fn discover(ctx: &Ctx) -> anyhow::Result<(Vec<String>, Summary)> {
    let listing = ctx.source.list()?;
    let found = names::discover(&listing.objects);
    let mut summary = Summary::default();
    let mut rejected: Vec<(String, String)> = listing
        .rejected
        .iter()
        .map(|r| (r.key.clone(), r.reason.clone()))
        .collect();
    rejected.extend(
        found
            .rejected
            .iter()
            .map(|r| (r.key.clone(), r.reason.clone())),
    );
    ctx.store.replace_rejected(&ctx.source.uri(), &rejected)?;
    summary.rejected = rejected;
    let active: Vec<String> = ctx
        .store
        .active_runs()?
        .into_iter()
        .map(|r| r.image)
        .collect();
    let mut names_seen = Vec::new();
    for unit in found.units {
        names_seen.push(unit.name.clone());
        if active.contains(&unit.name) {
            continue;
        }
        let fingerprint = unit.fingerprint();
        if let Some(img) = ctx.store.image(&unit.name)? {
            let same = img.fingerprint.as_deref() == Some(fingerprint.as_str());
            let settled = img.state == ImageState::Ready
                || (img.state == ImageState::Failed
                    && img.failure_kind.is_some_and(FailureKind::settled));
            if same && settled {
                summary.unchanged.push(unit.name.clone());
                continue;
            }
        }
        let data = RunData {
            source: ctx.source.uri(),
            fingerprint,
            unit: Some(unit.clone()),
            ..RunData::default()
        };
        let id = ulid::Ulid::new().to_string();
        ctx.store.create_run(
            &id,
            &unit.name,
            Step::first().name(),
            &serde_json::to_string(&data)?,
            &ctx.policy_sha256,
        )?;
    }
    Ok((names_seen, summary))
}

fn execute(
    ctx: &Ctx,
    step: Step,
    run: &str,
    version: &str,
    image: &str,
    data: &mut RunData,
) -> Result<Value, StepFailure> {
    let mut verdicts = Vec::new();
    crate::wasm::take_guest_time();
    let r = match step {
        Step::CheckImageExists => steps::check_image_exists(ctx, data, &mut verdicts),
        Step::Download => steps::download(ctx, data),
        Step::Classify => steps::classify(ctx, data, &mut verdicts),
        Step::ParseManifest => steps::parse_manifest(ctx, data, &mut verdicts),
        Step::CheckUnpacked => steps::check_unpacked(ctx, data, &mut verdicts),
        Step::UnpackLayers => unpack_layers(ctx, run, image, data, &mut verdicts),
        Step::CreateSnapshot => create_snapshot(ctx, image, data),
        Step::UpdateTracking => {
            Ok(serde_json::json!({ "top_chain": data.top_chain, "layers": data.layers.len() }))
        }
        Step::Completed => Ok(Value::Null),
    };
    let details: Vec<String> = verdicts.iter().map(|v| ctx.sanitize(&v.detail)).collect();
    let rows: Vec<crate::store::NewDecision<'_>> = verdicts
        .iter()
        .zip(&details)
        .map(|(v, detail)| crate::store::NewDecision {
            rule: &v.rule,
            action: &v.action,
            layer: v.layer,
            path: v.path.as_deref(),
            detail,
            reason: ctx.policy.reason(&v.rule),
        })
        .collect();
    ctx.store.record_decisions(run, version, image, &rows)?;
    // The classify and manifest guests' share of this transition.
    let guest = crate::wasm::take_guest_time();
    r.map(|mut v| {
        if let (Value::Object(o), false) = (&mut v, guest.is_zero()) {
            o.insert("guest_ms".into(), Value::from(guest.as_secs_f64() * 1e3));
        }
        v
    })
}

/// The ids of `chains`' layers, top first; each must be committed, except
/// `sealing` (a layer applied whose commit is under way).
fn layer_ids(ctx: &Ctx, chains: &[String], sealing: Option<i64>) -> Result<Vec<i64>, StepFailure> {
    let mut ids = Vec::new();
    for c in chains.iter().rev() {
        match ctx.store.layer(c)? {
            Some(l) if l.committed || Some(l.id) == sealing => ids.push(l.id),
            _ => return Err(StepFailure::Retry(format!("layer {c} is not committed"))),
        }
    }
    Ok(ids)
}

/// A layer applied, its sync (and then its commit) under way on another
/// thread while the next layer is applied.
struct Sealing<'s, 'l> {
    id: i64,
    handle: std::thread::ScopedJoinHandle<'s, Result<(), StepFailure>>,
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
) -> Result<(), StepFailure> {
    let Some(p) = sealing.take() else {
        return Ok(());
    };
    let r = p
        .handle
        .join()
        .unwrap_or_else(|_| Err(StepFailure::Retry("the layer sync thread panicked".into())));
    match r {
        Ok(()) => {
            ctx.failpoints.hit("after-layer");
            Ok(())
        }
        Err(e) => {
            for id in above.into_iter().chain([p.id]) {
                if let Err(d) = ctx.backend.discard_layer(id) {
                    return Err(StepFailure::Retry(format!(
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
fn unpack_layers(
    ctx: &Ctx,
    run: &str,
    image: &str,
    data: &mut RunData,
    verdicts: &mut steps::Verdicts,
) -> Result<Value, StepFailure> {
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
    std::thread::scope(|s| -> Result<(), StepFailure> {
        let mut sealing: Option<Sealing<'_, '_>> = None;
        for (i, layer) in data.layers.iter().enumerate() {
            if done.contains(&i) {
                resumed += 1;
                continue;
            }
            if ctx.store.cancel_requested(run)? {
                finish_sealing(ctx, &mut sealing, None)?;
                return Err(StepFailure::Cancelled);
            }
            if ctx.shutdown.load(Ordering::SeqCst) {
                finish_sealing(ctx, &mut sealing, None)?;
                return Err(StepFailure::Retry("the service is shutting down".into()));
            }
            let chain = &chains[i];
            let held = locks[i].lock().unwrap_or_else(|p| p.into_inner());
            match ctx.store.layer(chain)? {
                Some(l) if l.committed => {
                    // Below it, everything is committed already.
                    finish_sealing(ctx, &mut sealing, None)?;
                    // Another image committed it since check-unpacked: this
                    // image's own blob must hold it too.
                    steps::verify_stored(ctx, i + 1, layer, verdicts)?;
                    ctx.store.record_layer_progress(run, i, chain)?;
                    shared += 1;
                    continue;
                }
                Some(l) => {
                    ctx.backend
                        .discard_layer(l.id)
                        .map_err(|e| StepFailure::io("discarding a stale layer", e))?;
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
                steps::apply_one(ctx, image, (i + 1, of), layer, root, verdicts)
            };
            let result = ctx.backend.apply_layer_unsynced(id, &parents, &mut apply);
            // The layer below is committed (or discarded with this one)
            // before this one is; this one's fate is decided next.
            finish_sealing(ctx, &mut sealing, Some(id))?;
            let stats = match result {
                Ok(s) => s,
                Err(e) => {
                    if let Err(d) = ctx.backend.discard_layer(id) {
                        return Err(StepFailure::Retry(format!(
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
            let handle = s.spawn(move || -> Result<(), StepFailure> {
                if ctx.failpoints.fails("fail:sync-layer") {
                    return Err(StepFailure::Retry(
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

fn create_snapshot(ctx: &Ctx, image: &str, data: &mut RunData) -> Result<Value, StepFailure> {
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

fn layers_json(data: &RunData) -> String {
    let v: Vec<Value> = data
        .layers
        .iter()
        .map(|l| serde_json::json!({ "chain_id": l.chain_id, "diff_id": l.diff_id, "media": l.media, "size": l.len }))
        .collect();
    Value::Array(v).to_string()
}

/// One log event per finished transition (and the image's end).
fn log_outcome(
    image: &str,
    run: &str,
    transition: &str,
    attempt: u32,
    started: std::time::Instant,
    decision: &Decision,
    error: Option<&str>,
) {
    let ms = (started.elapsed().as_secs_f64() * 1e3).round() as u64;
    match decision {
        Decision::Advance(next) => {
            tracing::info!(
                image,
                run,
                transition,
                attempt,
                ms,
                next = next.name(),
                "transition ok"
            )
        }
        Decision::Complete => {
            tracing::info!(image, run, transition, attempt, ms, "image ready");
            crate::progress::image_done(image, "ready");
        }
        Decision::Retry {
            after,
            attempt: next,
        } => tracing::warn!(
            image,
            run,
            transition,
            attempt,
            ms,
            error = error.unwrap_or(""),
            retry_in_ms = after.as_millis() as u64,
            next_attempt = next,
            "transition will be retried"
        ),
        Decision::Fail { reason, kind } => {
            tracing::error!(
                image,
                run,
                transition,
                attempt,
                ms,
                reason = reason.as_str(),
                kind = kind.name(),
                "image failed"
            );
            crate::progress::image_done(image, &format!("failed: {reason}"));
        }
        Decision::Cancel => {
            tracing::warn!(image, run, transition, attempt, ms, "image cancelled");
            crate::progress::image_done(image, "cancelled");
        }
    }
}

/// A transition execution's version: a ULID greater than every version this
/// process made before, so `ORDER BY version` (the audit's order) is the
/// order of execution even for transitions started in the same millisecond.
fn next_version() -> String {
    static GEN: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());
    let mut g = GEN.lock().unwrap_or_else(|p| p.into_inner());
    g.generate()
        .unwrap_or_else(|_| ulid::Ulid::new())
        .to_string()
}

/// Drives one run until it ends, or until shutdown. Blocking.
pub fn drive(ctx: &Ctx, run_id: &str) -> anyhow::Result<()> {
    loop {
        let Some(run) = ctx.store.run(run_id)? else {
            return Ok(());
        };
        if run.status != RunStatus::Running {
            return Ok(());
        }
        if ctx.shutdown.load(Ordering::SeqCst) {
            return Ok(());
        }
        let step = run.next_step.as_deref().and_then(Step::from_name);
        let old: Result<RunData, _> = serde_json::from_str(&run.data);
        let version = next_version();
        let step_name = step.map(|s| s.name()).unwrap_or("unknown");
        ctx.store
            .begin_transition(&version, &run.id, &run.image, step_name, run.attempt)?;
        ctx.failpoints.hit(&format!("before:{step_name}"));
        crate::progress::image_step(&run.image, step_name);
        tracing::debug!(image = %run.image, run = %run.id, transition = step_name, attempt = run.attempt, "transition started");
        let started = std::time::Instant::now();
        let mut data = old.as_ref().ok().cloned().unwrap_or_default();
        let result = match (step, &old) {
            (None, _) => Err(StepFailure::Input(format!(
                "unknown transition `{}`",
                printable(run.next_step.as_deref().unwrap_or(""))
            ))),
            (_, Err(e)) => Err(StepFailure::Input(format!("corrupt run data: {e}"))),
            (Some(_), _) if ctx.store.cancel_requested(&run.id)? => Err(StepFailure::Cancelled),
            (Some(_), _) if ctx.failpoints.fails(&format!("fail:{step_name}")) => {
                Err(StepFailure::Retry("injected I/O failure".into()))
            }
            (Some(s), Ok(_)) => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    execute(ctx, s, &run.id, &version, &run.image, &mut data)
                })) {
                    Ok(r) => r,
                    Err(p) => {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        Err(StepFailure::Retry(format!("internal error: {msg}")))
                    }
                }
            }
        };
        ctx.failpoints.hit(&format!("before-commit:{step_name}"));
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(StepFailure::Input(m)) => Outcome::Unrecoverable(ctx.sanitize(m)),
            Err(StepFailure::Retry(m)) => Outcome::Retryable(ctx.sanitize(m)),
            Err(StepFailure::Exhausted(m)) => Outcome::Exhausted(ctx.sanitize(m)),
            Err(StepFailure::Cancelled) => Outcome::Cancelled,
        };
        let step = step.unwrap_or(Step::Completed);
        let decision = decide(step, run.attempt, &outcome, &ctx.retry);
        let output = result.as_ref().ok().map(|v| v.to_string());
        let err_text = match &outcome {
            Outcome::Retryable(m) | Outcome::Unrecoverable(m) | Outcome::Exhausted(m) => {
                Some(m.clone())
            }
            Outcome::Cancelled => Some("cancelled".to_string()),
            Outcome::Ok => None,
        };
        let new_data = serde_json::to_string(&data)?;
        let fingerprint = data.fingerprint.clone();
        let format = data.format.clone();
        let config = data
            .config
            .as_ref()
            .and_then(|c| serde_json::to_string(c).ok());
        let mut sleep = None;
        log_outcome(
            &run.image,
            &run.id,
            step_name,
            run.attempt,
            started,
            &decision,
            err_text.as_deref(),
        );
        match decision {
            Decision::Advance(next) => {
                let layers = layers_json(&data);
                let tracking = (step == Step::UpdateTracking).then(|| ImageUpdate {
                    name: &run.image,
                    state: ImageState::Ready,
                    error: None,
                    failure_kind: None,
                    run: &run.id,
                    fingerprint: Some(&fingerprint),
                    format: format.as_deref(),
                    top_chain: data.top_chain.as_deref(),
                    layers: Some(&layers),
                    config: config.as_deref(),
                });
                ctx.store.finish_transition(
                    &run.id,
                    &Finish {
                        version: &version,
                        outcome: TransitionOutcome::Ok,
                        output: output.as_deref(),
                        error: None,
                        status: RunStatus::Running,
                        next_step: Some(next.name()),
                        attempt: 1,
                        data: &new_data,
                        run_error: None,
                    },
                    tracking.as_ref(),
                )?;
            }
            Decision::Complete => {
                ctx.store.finish_transition(
                    &run.id,
                    &Finish {
                        version: &version,
                        outcome: TransitionOutcome::Ok,
                        output: output.as_deref(),
                        error: None,
                        status: RunStatus::Completed,
                        next_step: None,
                        attempt: 1,
                        data: &new_data,
                        run_error: None,
                    },
                    None,
                )?;
            }
            Decision::Retry { after, attempt } => {
                ctx.store.finish_transition(
                    &run.id,
                    &Finish {
                        version: &version,
                        outcome: TransitionOutcome::Retry,
                        output: None,
                        error: err_text.as_deref(),
                        status: RunStatus::Running,
                        next_step: Some(step.name()),
                        attempt,
                        data: &run.data,
                        run_error: None,
                    },
                    None,
                )?;
                sleep = Some(after);
            }
            Decision::Fail { reason, kind } => {
                ctx.store.finish_transition(
                    &run.id,
                    &Finish {
                        version: &version,
                        outcome: TransitionOutcome::Failed,
                        output: None,
                        error: err_text.as_deref(),
                        status: RunStatus::Failed,
                        next_step: Some(step.name()),
                        attempt: run.attempt,
                        data: &run.data,
                        run_error: Some(&reason),
                    },
                    Some(&ImageUpdate {
                        name: &run.image,
                        state: ImageState::Failed,
                        error: Some(&reason),
                        failure_kind: Some(kind),
                        run: &run.id,
                        fingerprint: Some(&fingerprint),
                        format: None,
                        top_chain: None,
                        layers: None,
                        config: None,
                    }),
                )?;
            }
            Decision::Cancel => {
                ctx.store.finish_transition(
                    &run.id,
                    &Finish {
                        version: &version,
                        outcome: TransitionOutcome::Cancelled,
                        output: None,
                        error: Some("cancelled"),
                        status: RunStatus::Cancelled,
                        next_step: Some(step.name()),
                        attempt: run.attempt,
                        data: &run.data,
                        run_error: Some("cancelled"),
                    },
                    Some(&ImageUpdate {
                        name: &run.image,
                        state: ImageState::Cancelled,
                        error: Some("cancelled by request"),
                        failure_kind: Some(FailureKind::Cancelled),
                        run: &run.id,
                        fingerprint: Some(&fingerprint),
                        format: None,
                        top_chain: None,
                        layers: None,
                        config: None,
                    }),
                )?;
            }
        }
        ctx.failpoints.hit(&format!("after:{step_name}"));
        if let Some(d) = sleep {
            let until = std::time::Instant::now() + d;
            while std::time::Instant::now() < until && !ctx.shutdown.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(50).min(d));
            }
        }
    }
}

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

/// Runs every active run to its end with at most `jobs` at once.
pub async fn run_all(ctx: Arc<Ctx>, jobs: usize) -> anyhow::Result<()> {
    let runs = ctx.store.active_runs()?;
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for r in runs {
        let permit = sem.clone().acquire_owned().await?;
        let ctx = ctx.clone();
        tasks.spawn_blocking(move || {
            let _permit = permit;
            let res = drive(&ctx, &r.id);
            (r.image, res)
        });
    }
    let mut first_err = None;
    // Every task is joined before returning, whatever happens to one of
    // them: a run still being driven must not be driven again by the next
    // pass.
    while let Some(j) = tasks.join_next().await {
        let (image, res) = match j {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "a run's task panicked");
                first_err.get_or_insert(anyhow::anyhow!("a run's task panicked: {e}"));
                continue;
            }
        };
        if let Err(e) = res {
            tracing::error!(image, error = format!("{e:#}"), "run stopped");
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
