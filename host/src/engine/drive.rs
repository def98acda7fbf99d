//! Driving one run: each transition executed (`crate::transitions`), its
//! outcome decided by the pure `core::machine::decide`, and persisted with
//! the run's data in one SQLite transaction before the next one starts.

use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use crate::core::machine::{decide, Decision, FailureKind, Outcome, Transition};
use crate::core::names::printable;
use crate::core::states::{ImageState, RunStatus, TransitionOutcome};
use crate::ctx::Ctx;
use crate::error::Failure;
use crate::store::{Finish, ImageUpdate};
use crate::transitions::{self, RunData};

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
    while let Some(d) = one_transition(ctx, run_id)? {
        let until = std::time::Instant::now() + d;
        while std::time::Instant::now() < until && !ctx.shutdown.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(50).min(d));
        }
    }
    Ok(())
}

/// Executes the run's next transition and persists its outcome. `None`
/// when there is nothing to do (the run is over, or the service stops);
/// otherwise how long to wait before the next (a retry's backoff).
pub(super) fn one_transition(ctx: &Ctx, run_id: &str) -> anyhow::Result<Option<Duration>> {
    let Some(run) = ctx.store.run(run_id)? else {
        return Ok(None);
    };
    if run.status != RunStatus::Running {
        return Ok(None);
    }
    if ctx.shutdown.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let transition = run.next_step.as_deref().and_then(Transition::from_name);
    let old: Result<RunData, _> = serde_json::from_str(&run.data);
    let version = next_version();
    let name = transition.map(|t| t.name()).unwrap_or("unknown");
    ctx.store
        .begin_transition(&version, &run.id, &run.image, name, run.attempt)?;
    ctx.failpoints.hit(&format!("before:{name}"));
    crate::progress::image_transition(&run.image, name);
    tracing::debug!(image = %run.image, run = %run.id, transition = name, attempt = run.attempt, "transition started");
    let started = std::time::Instant::now();
    let mut data = old.as_ref().ok().cloned().unwrap_or_default();
    let result = match (transition, &old) {
        (None, _) => Err(Failure::Input(format!(
            "unknown transition `{}`",
            printable(run.next_step.as_deref().unwrap_or(""))
        ))),
        (_, Err(e)) => Err(Failure::Input(format!("corrupt run data: {e}"))),
        (Some(_), _) if ctx.store.cancel_requested(&run.id)? => Err(Failure::Cancelled),
        (Some(_), _) if ctx.failpoints.fails(&format!("fail:{name}")) => {
            Err(Failure::Retry("injected I/O failure".into()))
        }
        (Some(s), Ok(_)) => {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                transitions::execute(ctx, s, &run.id, &version, &run.image, &mut data)
            })) {
                Ok(r) => r,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(Failure::Retry(format!("internal error: {msg}")))
                }
            }
        }
    };
    ctx.failpoints.hit(&format!("before-commit:{name}"));
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err(Failure::Input(m)) => Outcome::Unrecoverable(ctx.sanitize(m)),
        Err(Failure::Retry(m)) => Outcome::Retryable(ctx.sanitize(m)),
        Err(Failure::Exhausted(m)) => Outcome::Exhausted(ctx.sanitize(m)),
        Err(Failure::Cancelled) => Outcome::Cancelled,
    };
    let decision = match (transition, &outcome) {
        (Some(t), _) => decide(t, run.attempt, &outcome, &ctx.retry),
        // No transition to name the failure after: the run's data is bad.
        (None, o) => Decision::Fail {
            reason: match o {
                Outcome::Unrecoverable(m) => m.clone(),
                _ => "unknown transition".into(),
            },
            kind: FailureKind::Input,
        },
    };
    let transition = transition.unwrap_or(Transition::Completed);
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
        name,
        run.attempt,
        started,
        &decision,
        err_text.as_deref(),
    );
    match decision {
        Decision::Advance(next) => {
            let layers = layers_json(&data);
            let tracking = (transition == Transition::UpdateTracking).then(|| ImageUpdate {
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
                    next_step: Some(transition.name()),
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
                    // Where the run stopped, as stored (an unknown name too).
                    next_step: run.next_step.as_deref(),
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
                    next_step: Some(transition.name()),
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
    ctx.failpoints.hit(&format!("after:{name}"));
    Ok(Some(sleep.unwrap_or_default()))
}
