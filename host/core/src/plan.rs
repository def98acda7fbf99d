//! The layer plan: what parse-manifest makes of a manifest's layer list once
//! the bytes are known (where each layer lies, what its magic bytes say), and
//! the checks on it. Pure: the transition reads the bytes, this decides.

use serde::{Deserialize, Serialize};

use crate::chain;
use crate::model::{BlobKind, LayerMedia, LayerRef};
use crate::names::printable;
use crate::policy::Verdict;

/// One layer as the run will unpack it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedLayer {
    pub member: String,
    pub media: LayerMedia,
    /// The stored blob holding the layer's bytes ...
    pub blob: String,
    /// ... at this offset, this long (an archive member), or the whole blob.
    pub offset: u64,
    pub len: u64,
    /// Digest of the layer's bytes, when a manifest names it.
    pub digest: Option<String>,
    pub diff_id: Option<String>,
    pub chain_id: Option<String>,
}

/// A layer blob's digest (of its bytes as stored) and diff ID (of its
/// decompressed tar stream), as the confined worker computed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDigests {
    pub digest: String,
    pub diff_id: String,
}

/// Where a manifest's layer lies, found by the transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub blob: String,
    pub offset: u64,
    pub len: u64,
}

/// Why a layer list cannot be planned: the input's fault, always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    SizeMismatch {
        n: usize,
        declared: u64,
        len: u64,
    },
    MediaMismatch {
        n: usize,
        member: String,
        declared: BlobKind,
        actual: BlobKind,
    },
    NotTar {
        n: usize,
        member: String,
    },
    BadDigest {
        n: usize,
        digest: String,
    },
}

fn kind_name(k: BlobKind) -> String {
    format!("{k:?}").to_lowercase()
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::SizeMismatch { n, declared, len } => {
                write!(
                    f,
                    "layer {n}: manifest says {declared} bytes, the blob has {len}"
                )
            }
            PlanError::MediaMismatch {
                n,
                member,
                declared,
                actual,
            } => write!(
                f,
                "layer {n} (`{}`): the manifest declares {} but the bytes are {}",
                printable(member),
                kind_name(*declared),
                kind_name(*actual)
            ),
            PlanError::NotTar { n, member } => {
                write!(f, "layer {n} (`{}`) is not a tar layer", printable(member))
            }
            PlanError::BadDigest { n, digest } => {
                write!(f, "layer {n}: unsupported digest `{}`", printable(digest))
            }
        }
    }
}

impl std::error::Error for PlanError {}

impl PlanError {
    /// The policy decision to put on the record with the error, if any.
    pub fn verdict(&self) -> Option<Verdict> {
        match self {
            PlanError::MediaMismatch {
                n,
                member,
                declared,
                actual,
            } => Some(Verdict {
                rule: "media-types".into(),
                action: "reject".into(),
                layer: u32::try_from(*n).ok(),
                path: Some(printable(member)),
                detail: format!(
                    "declared {} but its bytes are {}",
                    kind_name(*declared),
                    kind_name(*actual)
                ),
            }),
            _ => None,
        }
    }
}

/// The chain ID of every layer of a plan, from the diff IDs it has (a
/// missing one counts as empty).
pub fn chain_ids(layers: &[PlannedLayer]) -> Vec<String> {
    chain_ids_under(layers, None)
}

/// The identities of `layers`' snapshots: their chain IDs, or, when
/// inspect steps judge what is written (`inspected`: the identity of the
/// chain of them), the chain IDs of the layers stacked on a virtual base
/// layer whose diff ID is `sha256:<inspected>`. A layer unpacked under
/// other inspect steps (or none) is another snapshot, never reused
/// unjudged.
pub fn chain_ids_under(layers: &[PlannedLayer], inspected: Option<&str>) -> Vec<String> {
    let base = inspected.map(|i| format!("sha256:{i}"));
    let diffs: Vec<String> = base
        .iter()
        .cloned()
        .chain(layers.iter().map(|l| l.diff_id.clone().unwrap_or_default()))
        .collect();
    let mut ids = chain::chain_ids(&diffs);
    if base.is_some() {
        ids.remove(0);
    }
    ids
}

/// Whether magic bytes of this kind can start a layer.
pub fn is_layer_kind(kind: BlobKind) -> bool {
    matches!(
        kind,
        BlobKind::Tar | BlobKind::Gzip | BlobKind::Zstd | BlobKind::Empty
    )
}

/// How many times the most repeated layer (same member, same digest)
/// appears in the list.
pub fn max_repeats(layers: &[LayerRef]) -> usize {
    let mut times: std::collections::BTreeMap<(&str, Option<&str>), usize> = Default::default();
    for l in layers {
        *times.entry((&l.member, l.digest.as_deref())).or_default() += 1;
    }
    times.values().copied().max().unwrap_or(0)
}

/// The magic bytes a declared media type stands for (`None`: detect them).
pub fn declared_kind(media: LayerMedia) -> Option<BlobKind> {
    match media {
        LayerMedia::Tar => Some(BlobKind::Tar),
        LayerMedia::Gzip => Some(BlobKind::Gzip),
        LayerMedia::Zstd => Some(BlobKind::Zstd),
        LayerMedia::Detect => None,
    }
}

/// A size the manifest declares for layer `n` must be the bytes' (checked
/// before the bytes are read).
pub fn check_size(n: usize, l: &LayerRef, len: u64) -> Result<(), PlanError> {
    match l.size {
        Some(declared) if declared != len => Err(PlanError::SizeMismatch { n, declared, len }),
        _ => Ok(()),
    }
}

/// Plans layer `n` (1-based) of a manifest: `at` is where its bytes lie and
/// `kind` what its magic bytes are. The magic bytes decide how a layer is
/// decoded; a declared media type must agree with them (catalogue F57), a
/// declared size with the bytes, and its digests must be sha256.
pub fn plan_layer(
    n: usize,
    l: &LayerRef,
    at: Placed,
    kind: BlobKind,
) -> Result<PlannedLayer, PlanError> {
    if let Some(declared) = l.size {
        if declared != at.len {
            return Err(PlanError::SizeMismatch {
                n,
                declared,
                len: at.len,
            });
        }
    }
    if let Some(d) = declared_kind(l.media) {
        let agrees = d == kind || (d == BlobKind::Tar && kind == BlobKind::Empty);
        if !agrees {
            return Err(PlanError::MediaMismatch {
                n,
                member: l.member.clone(),
                declared: d,
                actual: kind,
            });
        }
    }
    let media = match kind {
        BlobKind::Tar | BlobKind::Empty => LayerMedia::Tar,
        BlobKind::Gzip => LayerMedia::Gzip,
        BlobKind::Zstd => LayerMedia::Zstd,
        BlobKind::Unknown => {
            return Err(PlanError::NotTar {
                n,
                member: l.member.clone(),
            });
        }
    };
    for d in [&l.digest, &l.diff_id].into_iter().flatten() {
        if !chain::is_sha256_digest(d) {
            return Err(PlanError::BadDigest {
                n,
                digest: d.clone(),
            });
        }
    }
    Ok(PlannedLayer {
        member: l.member.clone(),
        media,
        blob: at.blob,
        offset: at.offset,
        len: at.len,
        digest: l.digest.clone(),
        diff_id: l.diff_id.clone(),
        chain_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn layer(media: LayerMedia, size: Option<u64>, digest: Option<&str>) -> LayerRef {
        LayerRef {
            member: "l.tar".into(),
            media,
            digest: digest.map(str::to_string),
            diff_id: None,
            size,
        }
    }

    fn at(len: u64) -> Placed {
        Placed {
            blob: "sha256:b".into(),
            offset: 512,
            len,
        }
    }

    /// Snapshot identities: the OCI chain IDs without inspect steps; under
    /// inspect steps, the chain IDs on a virtual base layer named by them,
    /// so no layer is shared between the two (or between two chains of
    /// inspect steps).
    #[test]
    fn inspected_layers_are_other_snapshots() {
        let planned: Vec<PlannedLayer> = ["sha256:11", "sha256:22"]
            .iter()
            .map(|d| {
                let mut p = plan_layer(
                    1,
                    &layer(LayerMedia::Tar, None, None),
                    at(0),
                    BlobKind::Empty,
                )
                .unwrap();
                p.diff_id = Some(d.to_string());
                p
            })
            .collect();
        let plain = chain_ids_under(&planned, None);
        assert_eq!(plain, chain_ids(&planned));
        assert_eq!(plain[0], "sha256:11");
        let a = chain_ids_under(&planned, Some("aa"));
        let b = chain_ids_under(&planned, Some("bb"));
        assert_eq!(a.len(), 2);
        assert_eq!(
            a,
            chain::chain_ids(&["sha256:aa".into(), "sha256:11".into(), "sha256:22".into()])[1..]
        );
        for (x, y) in [(&plain, &a), (&plain, &b), (&a, &b)] {
            assert!(x.iter().all(|c| !y.contains(c)), "{x:?} {y:?}");
        }
    }

    /// One case: the manifest's layer, the bytes' length and kind, and the
    /// planned media or the error's text.
    fn check(l: LayerRef, len: u64, kind: BlobKind, expected: Result<LayerMedia, &str>) {
        let got = plan_layer(3, &l, at(len), kind);
        match (&got, &expected) {
            (Ok(p), Ok(m)) => {
                assert_eq!(p.media, *m, "{l:?}");
                assert_eq!((p.offset, p.len, p.chain_id.as_deref()), (512, len, None));
            }
            (Err(e), Err(text)) => assert_eq!(e.to_string(), *text, "{l:?}"),
            _ => panic!("{l:?} {kind:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn layers_are_planned_by_their_bytes() {
        use BlobKind as K;
        use LayerMedia as M;
        check(layer(M::Detect, None, None), 10, K::Gzip, Ok(M::Gzip));
        check(layer(M::Detect, None, None), 10, K::Zstd, Ok(M::Zstd));
        check(layer(M::Detect, None, None), 0, K::Empty, Ok(M::Tar));
        check(layer(M::Tar, None, None), 0, K::Empty, Ok(M::Tar));
        check(layer(M::Gzip, Some(10), Some(D)), 10, K::Gzip, Ok(M::Gzip));
        check(
            layer(M::Gzip, Some(11), None),
            10,
            K::Gzip,
            Err("layer 3: manifest says 11 bytes, the blob has 10"),
        );
        check(
            layer(M::Gzip, None, None),
            10,
            K::Zstd,
            Err("layer 3 (`l.tar`): the manifest declares gzip but the bytes are zstd"),
        );
        check(
            layer(M::Tar, None, None),
            10,
            K::Gzip,
            Err("layer 3 (`l.tar`): the manifest declares tar but the bytes are gzip"),
        );
        check(
            layer(M::Detect, None, None),
            10,
            K::Unknown,
            Err("layer 3 (`l.tar`) is not a tar layer"),
        );
        check(
            layer(M::Detect, None, Some("md5:00")),
            10,
            K::Tar,
            Err("layer 3: unsupported digest `md5:00`"),
        );
    }

    #[test]
    fn only_a_media_mismatch_is_a_policy_decision() {
        let e = plan_layer(
            2,
            &layer(LayerMedia::Zstd, None, None),
            at(1),
            BlobKind::Gzip,
        )
        .unwrap_err();
        let v = e.verdict().unwrap();
        assert_eq!(
            (v.rule.as_str(), v.action.as_str(), v.layer),
            ("media-types", "reject", Some(2))
        );
        assert_eq!(v.detail, "declared zstd but its bytes are gzip");
        let e = plan_layer(
            2,
            &layer(LayerMedia::Detect, None, None),
            at(1),
            BlobKind::Unknown,
        )
        .unwrap_err();
        assert_eq!(e.verdict(), None);
    }

    #[test]
    fn repeats_count_the_same_member_and_digest() {
        let a = layer(LayerMedia::Tar, None, Some(D));
        let mut b = a.clone();
        b.digest = None;
        assert_eq!(max_repeats(&[]), 0);
        assert_eq!(max_repeats(&[a.clone(), b.clone()]), 1);
        assert_eq!(max_repeats(&[a.clone(), b, a.clone(), a]), 3);
    }

    #[test]
    fn layer_kinds() {
        for (k, ok) in [
            (BlobKind::Tar, true),
            (BlobKind::Gzip, true),
            (BlobKind::Zstd, true),
            (BlobKind::Empty, true),
            (BlobKind::Unknown, false),
        ] {
            assert_eq!(is_layer_kind(k), ok, "{k:?}");
        }
    }
}
