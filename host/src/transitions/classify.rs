//! classify: the classify step (WebAssembly) names each blob by its leading
//! bytes; a compressed archive is decompressed by the confined worker, and
//! an archive's members are indexed under the tar check.

use serde_json::{json, Value};
use std::io::{self, Read};
use std::os::fd::AsFd as _;

use super::{input, open_blob, unit, worker_request, ArchiveData, RunData};
use crate::archive;
use crate::core::names::printable;
use crate::core::plan::PlannedLayer;
use crate::core::policy::Verdicts;
use crate::ctx::Ctx;
use crate::error::Failure;
use crate::extract::view::Mode;
use crate::model::{BlobKind, LayerMedia, UnitKind};
use crate::source::read_up_to;

/// Leading bytes of a blob the classify step is given.
const HEAD: usize = 64 << 10;

pub(super) fn head_of(r: &mut dyn Read) -> Result<Vec<u8>, Failure> {
    let mut head = vec![0u8; HEAD];
    let n = read_up_to(r, &mut head).map_err(|e| match e.kind() {
        // A decoder's verdict on the bytes (a file read does not say this):
        // the blob is corrupt, retrying cannot help.
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            input(format!("corrupt compressed data: {e}"))
        }
        _ => Failure::io("reading a blob", e),
    })?;
    head.truncate(n);
    Ok(head)
}

pub(super) fn describe(kind: BlobKind, detail: &str) -> String {
    format!("{kind:?} ({detail})").to_lowercase()
}

pub(super) fn run(
    ctx: &Ctx,
    data: &mut RunData,
    verdicts: &mut Verdicts,
) -> Result<Value, Failure> {
    let u = unit(data)?.clone();
    let mut out = serde_json::Map::new();
    match u.kind {
        // A manifest, read by the manifest step; its layers are fetched
        // and classified by fetch-layers.
        UnitKind::Registry => {
            out.insert(
                "registry".into(),
                json!("the manifest step reads the manifest"),
            );
        }
        UnitKind::Prefix => {
            for o in &u.objects {
                let digest = data
                    .blobs
                    .get(&o.member)
                    .ok_or_else(|| input("download did not record a blob"))?
                    .clone();
                let head = head_of(&mut open_blob(ctx, &digest)?)?;
                let c = ctx.steps.classify(&head, o.size)?;
                out.insert(o.member.clone(), json!(describe(c.kind, &c.detail)));
                data.kinds.insert(o.member.clone(), c.kind);
            }
        }
        UnitKind::Archive => {
            let o = &u.objects[0];
            let digest = data
                .blobs
                .get("")
                .ok_or_else(|| input("download did not record a blob"))?
                .clone();
            let head = head_of(&mut open_blob(ctx, &digest)?)?;
            let c = ctx.steps.classify(&head, o.size)?;
            out.insert("object".into(), json!(describe(c.kind, &c.detail)));
            let (tar_digest, size) = match c.kind {
                BlobKind::Tar => (digest.clone(), o.size),
                BlobKind::Gzip | BlobKind::Zstd => {
                    // Decompressed by the confined worker into a file here;
                    // this process only hashes and adopts the bytes.
                    let (tar_digest, size) = decompress_archive(
                        ctx, &digest, c.kind, o.size, verdicts,
                    )
                    .map_err(|e| match e {
                        Failure::Input(m) => input(format!("`{}`: {m}", printable(&o.key))),
                        e => e,
                    })?;
                    let inner = head_of(&mut open_blob(ctx, &tar_digest)?)?;
                    let ic = ctx.steps.classify(&inner, size)?;
                    if ic.kind != BlobKind::Tar {
                        return Err(input(format!(
                            "`{}` is {} but does not hold a tar archive: {}",
                            printable(&o.key),
                            describe(c.kind, &c.detail),
                            describe(ic.kind, &ic.detail)
                        )));
                    }
                    (tar_digest, size)
                }
                k => {
                    return Err(input(format!(
                        "`{}` is not a tar archive: {}",
                        printable(&o.key),
                        describe(k, &c.detail)
                    )))
                }
            };
            let mut check = ctx.steps.tar_check(Mode::Archive, &ctx.policy)?;
            let members = archive::index(&open_blob(ctx, &tar_digest)?, &mut check)?;
            drop(check);
            out.insert("members".into(), json!(members.len()));
            data.archive = Some(ArchiveData {
                blob: tar_digest,
                size,
                compression: c.kind,
                members,
            });
        }
    }
    Ok(Value::Object(out))
}

/// Has the confined worker decompress the archive blob `digest` (`kind`,
/// `size` bytes) into a staging file, then adopts the file into the blob
/// store: its digest and size.
fn decompress_archive(
    ctx: &Ctx,
    digest: &str,
    kind: BlobKind,
    size: u64,
    verdicts: &mut Verdicts,
) -> Result<(String, u64), Failure> {
    let staging = ctx
        .blobs
        .staging()
        .map_err(|e| Failure::io("creating a staging file", e))?;
    let layer = PlannedLayer {
        member: String::new(),
        media: if kind == BlobKind::Zstd {
            LayerMedia::Zstd
        } else {
            LayerMedia::Gzip
        },
        blob: digest.to_string(),
        offset: 0,
        len: size,
        digest: None,
        diff_id: None,
        chain_id: None,
    };
    let req = worker_request(ctx, crate::worker::Task::Decompress, layer, 0);
    crate::worker::decompress(req, staging.as_file().as_fd(), verdicts)?;
    ctx.blobs
        .adopt(staging)
        .map_err(|e| Failure::io("storing the decompressed archive", e))
}
