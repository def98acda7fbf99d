//! download: each object's blob fetched once into the content-addressed
//! store (an unchanged object's blob is reused), the object changing during
//! the download restarting it.

use serde_json::{json, Value};

use super::check_image_exists::refresh;
use super::{source, source_err, unit, RunData};
use crate::ctx::Ctx;
use crate::error::Failure;
use crate::source::SourceError;

/// Fetches every object's blob not already stored; records member -> blob.
pub(super) fn run(ctx: &Ctx, data: &mut RunData) -> Result<Value, Failure> {
    let (mut fetched, mut reused, mut bytes, mut restarted) = (0, 0, 0u64, 0);
    for i in 0..unit(data)?.objects.len() {
        let o = unit(data)?.objects[i].clone();
        if let Some((size, stamp, digest)) = ctx.store.object(&data.source, &o.key)? {
            if size == o.size && stamp == o.stamp && ctx.blobs.has(&digest, size) {
                data.blobs.insert(o.member.clone(), digest);
                reused += 1;
                continue;
            }
        }
        let mut o = o;
        let mut attempts = 0;
        let (digest, size) = loop {
            match source(ctx, data)?.fetch(&o, &ctx.blobs) {
                // The object changed while it was downloaded: start over with
                // its new version (a few times; then the transition retries).
                Err(SourceError::Changed(_)) if attempts < 3 => {
                    attempts += 1;
                    restarted += 1;
                    refresh(ctx, data, i)?;
                    o = unit(data)?.objects[i].clone();
                }
                r => break r.map_err(source_err)?,
            }
        };
        ctx.store
            .put_object(&data.source, &o.key, size, &o.stamp, &o.modified, &digest)?;
        data.blobs.insert(o.member.clone(), digest);
        fetched += 1;
        bytes += size;
    }
    Ok(json!({ "fetched": fetched, "reused": reused, "bytes": bytes, "restarted": restarted }))
}
