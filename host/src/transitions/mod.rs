//! The transitions' work, one file per transition of the machine
//! (`core::machine::Transition`), in registration order. Each takes the run's
//! data, does its I/O, and returns a JSON summary for the audit log; the
//! engine persists both, with the policy verdicts it pushed.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;

use crate::archive::IndexedMember;
use crate::core::machine::Transition;
use crate::core::names::{printable, Unit};
use crate::core::plan::PlannedLayer;
use crate::core::policy::Verdict;
use crate::ctx::Ctx;
use crate::error::Failure;
use crate::model::{BlobKind, ImageFormat, RuntimeConfig};
use crate::source::{Source, SourceError};

mod check_image_exists;
mod check_unpacked;
mod classify;
mod create_snapshot;
mod download;
mod fetch_layers;
mod inspect;
mod parse_manifest;
mod unpack_layers;
mod update_tracking;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunData {
    pub source: String,
    pub unit: Option<Unit>,
    pub fingerprint: String,
    /// member -> blob digest, after download.
    pub blobs: BTreeMap<String, String>,
    /// member -> kind, after classify (prefix units).
    pub kinds: BTreeMap<String, BlobKind>,
    pub archive: Option<ArchiveData>,
    pub format: Option<ImageFormat>,
    /// The runtime config the manifest step found.
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    pub layers: Vec<PlannedLayer>,
    pub top_chain: Option<String>,
    /// The identity of the inspect steps that judged the image at
    /// parse-manifest (None: none configured); later transitions refuse to
    /// go on under others.
    #[serde(default)]
    pub inspected_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveData {
    /// Digest of the uncompressed archive blob.
    pub blob: String,
    pub size: u64,
    pub compression: BlobKind,
    pub members: Vec<IndexedMember>,
}

fn input(m: impl Into<String>) -> Failure {
    Failure::Input(m.into())
}

fn unit(data: &RunData) -> Result<&Unit, Failure> {
    data.unit
        .as_ref()
        .ok_or_else(|| Failure::Input("run has no image unit".into()))
}

fn deny_if(v: &Verdict) -> Result<(), Failure> {
    if v.allowed() {
        Ok(())
    } else {
        Err(Failure::Input(format!("policy: {}", v.detail)))
    }
}

fn source_err(e: SourceError) -> Failure {
    match e {
        SourceError::NotFound(k) => Failure::Input(format!(
            "image is missing from the source: `{}` is gone",
            printable(&k)
        )),
        SourceError::Denied(m) | SourceError::BadObject(m) => Failure::Input(m),
        e => Failure::Retry(e.to_string()),
    }
}

/// The run's source, which must still be configured (a source taken out of
/// the configuration is the environment's doing: the run retries, and
/// fails unsettled, so the image runs again if the source comes back).
fn source<'c>(ctx: &'c Ctx, data: &RunData) -> Result<&'c dyn Source, Failure> {
    ctx.sources.get(&data.source).ok_or_else(|| {
        Failure::Retry(format!(
            "the image's source {} is no longer configured",
            printable(&data.source)
        ))
    })
}

fn open_blob(ctx: &Ctx, digest: &str) -> Result<File, Failure> {
    ctx.blobs
        .open(digest)
        .map_err(|e| Failure::io("opening a stored blob", e))
}

/// A request to the extraction worker for `task` on layer `n` (`l`, in its
/// blob), under this run's policy and opt-out; no test hooks.
fn worker_request(
    ctx: &Ctx,
    task: crate::worker::Task,
    l: PlannedLayer,
    n: usize,
) -> crate::worker::Request {
    let mut req =
        crate::worker::Request::new(task, ctx.blobs.path(&l.blob), l, n, ctx.policy.clone());
    req.unconfined = ctx.unconfined_worker;
    req
}

/// The ids of `chains`' layers, top first; each must be committed, except
/// `sealing` (a layer applied whose commit is under way).
fn layer_ids(ctx: &Ctx, chains: &[String], sealing: Option<i64>) -> Result<Vec<i64>, Failure> {
    let mut ids = Vec::new();
    for c in chains.iter().rev() {
        match ctx.store.layer(c)? {
            Some(l) if l.committed || Some(l.id) == sealing => ids.push(l.id),
            _ => return Err(Failure::Retry(format!("layer {c} is not committed"))),
        }
    }
    Ok(ids)
}

/// Runs `transition` on the run's data; the policy verdicts it produced are
/// recorded (with the transition's version) whether it succeeded or not.
pub fn execute(
    ctx: &Ctx,
    transition: Transition,
    run: &str,
    version: &str,
    image: &str,
    data: &mut RunData,
) -> Result<Value, Failure> {
    let mut verdicts = Vec::new();
    crate::wasm::take_guest_time();
    let r = match transition {
        Transition::CheckImageExists => check_image_exists::run(ctx, data, &mut verdicts),
        Transition::Download => download::run(ctx, data),
        Transition::Classify => classify::run(ctx, data, &mut verdicts),
        Transition::ParseManifest => parse_manifest::run(ctx, data, &mut verdicts),
        Transition::FetchLayers => fetch_layers::run(ctx, data, &mut verdicts),
        Transition::CheckUnpacked => check_unpacked::run(ctx, data, &mut verdicts),
        Transition::UnpackLayers => unpack_layers::run(ctx, run, image, data, &mut verdicts),
        Transition::CreateSnapshot => create_snapshot::run(ctx, image, data),
        Transition::UpdateTracking => update_tracking::run(data),
        Transition::Completed => Ok(Value::Null),
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
            reason: inspect::reason(&ctx.policy, v),
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
