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

/// The reason recorded beside decision `v`: its policy rule's, or, for a
/// rule of an inspect step, that the step named in the detail decided.
pub(super) fn reason<'a>(policy: &'a crate::core::policy::Policy, v: &Verdict) -> &'a str {
    match policy.reason(&v.rule) {
        "" if v.detail.starts_with(DETAIL) => {
            "a rule of the operator's inspect step named in the detail"
        }
        r => r,
    }
}

/// Asks the inspect steps about the image `name` as parse-manifest found
/// it.
pub(super) fn check_image(
    ctx: &Ctx,
    name: &str,
    data: &super::RunData,
    verdicts: &mut Verdicts,
) -> Result<(), Failure> {
    let inspectors = ctx.steps.inspectors();
    if inspectors.is_empty() {
        return Ok(());
    }
    let info = ImageInfo {
        name: name.to_string(),
        format: data.format.clone().unwrap_or_default(),
        layers: u32::try_from(data.layers.len()).unwrap_or(u32::MAX),
        config: data.config.clone(),
    };
    for a in inspectors.check_image(&info)? {
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
