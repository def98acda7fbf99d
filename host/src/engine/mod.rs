//! The engine: discovers images, starts their runs, and drives each run
//! through the transitions with the pure decision function of
//! `core::machine`, persisting every outcome in SQLite before the next
//! transition starts; after a crash it resumes where each run was.

use std::sync::Arc;

use crate::ctx::Ctx;

mod discover;
mod drive;
mod resume;

pub use discover::discover;
pub use drive::drive;
pub use resume::recover;

#[derive(Debug, Default)]
pub struct Summary {
    pub ready: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub unchanged: Vec<String>,
    pub rejected: Vec<(String, String)>,
    /// Sources that could not be listed (URI, why), skipped this pass.
    pub unlisted: Vec<(String, String)>,
    pub interrupted: bool,
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

#[cfg(test)]
mod tests;
