//! Discovery: each source's listing made into image units (`core::names`,
//! names unique across sources), and a run started for each new, changed, or retryably failed image.

use crate::core::machine::{FailureKind, Transition};
use crate::core::names;
use crate::core::states::ImageState;
use crate::ctx::Ctx;
use crate::transitions::RunData;

use super::Summary;

/// Discovers every source's images and starts a run for each that is new,
/// changed, or failed for a reason other than its input. A source that
/// cannot be listed now is skipped (its images are left as they are) and
/// named in the summary; the pass fails only when no source can be listed.
pub fn discover(ctx: &Ctx) -> anyhow::Result<(Vec<String>, Summary)> {
    let mut summary = Summary::default();
    let mut found = Vec::new();
    let mut first_err = None;
    for src in ctx.sources.iter() {
        let max = usize::try_from(ctx.policy.max_images.limit).unwrap_or(usize::MAX);
        match src.discover(max) {
            Ok(mut d) => {
                ctx.policy.bound_images(&mut d);
                found.push((src.uri(), d))
            }
            Err(e) => {
                tracing::error!(source = %src.uri(), error = %e, "the source cannot be listed; its images are left as they are");
                summary
                    .unlisted
                    .push((src.uri(), ctx.sanitize(&e.to_string())));
                first_err.get_or_insert(e);
            }
        }
    }
    if found.is_empty() {
        if let Some(e) = first_err {
            return Err(e.into());
        }
    }
    let found = names::across_sources(found);
    for (uri, d) in &found {
        let rejected: Vec<(String, String)> = d
            .rejected
            .iter()
            .map(|r| (r.key.clone(), r.reason.clone()))
            .collect();
        ctx.store.replace_rejected(uri, &rejected)?;
        summary.rejected.extend(rejected);
    }
    let active: Vec<String> = ctx
        .store
        .active_runs()?
        .into_iter()
        .map(|r| r.image)
        .collect();
    let mut names_seen = Vec::new();
    for (uri, unit) in found
        .into_iter()
        .flat_map(|(uri, d)| d.units.into_iter().map(move |u| (uri.clone(), u)))
    {
        names_seen.push(unit.name.clone());
        if active.contains(&unit.name) {
            continue;
        }
        let fingerprint = ctx.fingerprint(&unit);
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
            source: uri,
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
