//! The operator's inspect steps on an image's configuration, at the end of
//! parse-manifest (before any layer is fetched or unpacked): every answer
//! is a decision naming the component, and a `deny` fails the image.

use crate::core::policy::{Verdict, Verdicts};
use crate::ctx::Ctx;
use crate::error::Failure;
use crate::wasm::{Answer, ImageInfo, Verdict as Says};

/// How the detail of an inspect step's decision starts (the worker's and
/// the service's alike): `inspect step COMPONENT: REASON`.
const DETAIL: &str = "inspect step ";

/// An inspect step's answer about the image as a decision of the audit
/// log: its rule, and whose it is in the detail. `allow` is a note.
fn verdict(a: &Answer) -> Verdict {
    Verdict {
        rule: a.rule.clone(),
        action: match a.verdict {
            Says::Allow => "note",
            Says::Deny => "reject",
            Says::Skip => "skip",
        }
        .into(),
        layer: None,
        path: None,
        detail: format!("{DETAIL}{}: {}", a.component, a.reason),
    }
}

/// The reason recorded beside decision `v`: for a rule of an inspect step
/// (whatever its name), that the step named in the detail decided; else
/// its policy rule's.
pub(super) fn reason<'a>(policy: &'a crate::core::policy::Policy, v: &Verdict) -> &'a str {
    if v.detail.starts_with(DETAIL) {
        "a rule of the operator's inspect step named in the detail"
    } else {
        policy.reason(&v.rule)
    }
}

/// Refuses to go on with a run whose image was judged at parse-manifest by
/// other inspect steps than those configured now (the configuration
/// changed while the run was under way): its layers would be judged by
/// steps that did not judge the image, under their identity. The image
/// runs again under the new steps (its fingerprint names them).
pub(super) fn same_steps(ctx: &Ctx, data: &super::RunData) -> Result<(), Failure> {
    if data.inspected_by == ctx.steps.inspect_identity() {
        Ok(())
    } else {
        Err(Failure::Input(
            "the inspect steps changed since this run judged the image; it runs again under the new ones".into(),
        ))
    }
}

/// Asks the inspect steps about the image `name` as parse-manifest found
/// it, and records which steps judged it.
pub(super) fn check_image(
    ctx: &Ctx,
    name: &str,
    data: &mut super::RunData,
    verdicts: &mut Verdicts,
) -> Result<(), Failure> {
    data.inspected_by = ctx.steps.inspect_identity();
    if ctx.steps.inspectors().is_empty() {
        return Ok(());
    }
    let info = ImageInfo {
        name: name.to_string(),
        format: data.format.clone().unwrap_or_default(),
        layers: u32::try_from(data.layers.len()).unwrap_or(u32::MAX),
        config: data.config.clone(),
    };
    for a in ctx.steps.inspect_image(&info)? {
        verdicts.push(verdict(&a));
        if a.verdict == Says::Deny {
            return Err(Failure::Input(format!(
                "inspect step {}: rule {}: {}",
                a.component, a.rule, a.reason
            )));
        }
    }
    Ok(())
}
