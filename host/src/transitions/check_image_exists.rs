//! check-image-exists: the unit's objects are still in the source (taken at
//! their current version) and within the policy's object and image sizes.

use serde_json::{json, Value};

use super::{deny_if, input, source, source_err, unit, RunData};
use crate::core::policy::Verdicts;
use crate::ctx::Ctx;
use crate::error::Failure;

pub(super) fn run(
    ctx: &Ctx,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, Failure> {
    let mut total = 0u64;
    let mut changed = 0;
    for i in 0..unit(data)?.objects.len() {
        changed += usize::from(refresh(ctx, data, i)?);
        let o = &unit(data)?.objects[i];
        let v = ctx.policy.check_object(&o.key, o.size);
        verdicts.push(v.clone());
        deny_if(&v)?;
        total = total.saturating_add(o.size);
    }
    let v = ctx.policy.check_image_size(total);
    verdicts.push(v.clone());
    deny_if(&v)?;
    Ok(
        json!({ "objects": unit(data)?.objects.len(), "bytes": total, "changed_since_listing": changed }),
    )
}

/// Takes the current version of object `i` of the unit: a changed object
/// (new ETag or size) is processed as it is now, not failed. Returns whether
/// it had changed.
pub(super) fn refresh(ctx: &Ctx, data: &mut RunData, i: usize) -> Result<bool, Failure> {
    let key = unit(data)?.objects[i].key.clone();
    let now = source(ctx, data)?.stat(&key).map_err(source_err)?;
    let u = data
        .unit
        .as_mut()
        .ok_or_else(|| input("run has no image unit"))?;
    let o = &mut u.objects[i];
    if now.size == o.size && now.stamp == o.stamp {
        return Ok(false);
    }
    o.size = now.size;
    o.stamp = now.stamp;
    o.modified = now.modified;
    let u = u.clone();
    data.fingerprint = ctx.fingerprint(&u);
    Ok(true)
}
