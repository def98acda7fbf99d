//! Discovery: the source's listing made into image units (`core::names`),
//! and a run started for each new, changed, or retryably failed image.

use crate::core::machine::{FailureKind, Transition};
use crate::core::names;
use crate::core::states::ImageState;
use crate::ctx::Ctx;
use crate::transitions::RunData;

use super::Summary;

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
            Transition::first().name(),
            &serde_json::to_string(&data)?,
            &ctx.policy_sha256,
        )?;
    }
    Ok((names_seen, summary))
}
