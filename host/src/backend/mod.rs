//! Storage backends. A backend stores one snapshot per layer, keyed by the
//! layer's numeric id (the store maps chain IDs to ids), and activates an
//! image as a writable snapshot of its top layer. The overlay backend is the
//! first; the devicemapper thin pool implements the same trait later.

pub mod overlay;

use rustix::fd::BorrowedFd;
use serde::Serialize;
use std::path::Path;

use crate::error::StepFailure;

/// Applies one layer through the writable root it is handed.
pub type ApplyFn<'a> =
    dyn FnMut(BorrowedFd<'_>) -> Result<crate::extract::ApplyStats, StepFailure> + Send + 'a;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivationInfo {
    /// The mount a caller can make itself: `type` and `options`.
    pub fstype: String,
    pub options: String,
    pub mountpoint: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Cleanup {
    pub unmounted: usize,
    pub removed: usize,
}

pub trait Snapshotter: Send + Sync {
    fn kind(&self) -> &'static str;

    /// Creates layer `id` on top of `parents` (top first), hands `apply` a
    /// writable root whose view shows the parents beneath (deletions become
    /// whiteouts), and makes the layer's bytes durable before returning Ok.
    /// On error nothing of layer `id` is left mounted; its data is left for
    /// [`Snapshotter::discard_layer`].
    fn apply_layer(
        &self,
        id: i64,
        parents: &[i64],
        apply: &mut ApplyFn<'_>,
    ) -> Result<crate::extract::ApplyStats, StepFailure>;

    /// Removes whatever exists of layer `id`. Idempotent.
    fn discard_layer(&self, id: i64) -> std::io::Result<()>;

    /// Checks that the image snapshot over `chain` (top first) can be made,
    /// and makes it. For overlay, the layer directories are the snapshot.
    fn snapshot_image(&self, name: &str, chain: &[i64]) -> Result<ActivationInfo, StepFailure>;

    /// A writable copy-on-write view of `chain` (top first), mounted at
    /// `mountpoint` when given.
    fn activate(
        &self,
        act: &str,
        chain: &[i64],
        mountpoint: Option<&Path>,
    ) -> std::io::Result<ActivationInfo>;

    fn deactivate(&self, act: &str, mountpoint: Option<&Path>) -> std::io::Result<()>;

    /// After a crash: removes temporary mounts and directories. `known` is
    /// every layer id the store knows; layer data of any other id is removed.
    fn cleanup(&self, known: &[i64]) -> std::io::Result<Cleanup>;
}

/// Picks the backend for `--backend`.
pub fn open(
    choice: &str,
    state_dir: &Path,
    mounts: std::sync::Arc<dyn crate::sys::MountOps>,
) -> Result<Box<dyn Snapshotter>, String> {
    match choice {
        "auto" | "overlay" => {
            if !overlay_supported() {
                return Err("this kernel does not support overlayfs".into());
            }
            overlay::Overlay::new(state_dir, mounts)
                .map(|o| Box::new(o) as Box<dyn Snapshotter>)
                .map_err(|e| format!("overlay backend: {e}"))
        }
        "thinpool" => Err(
            "the devicemapper thin-pool backend is not implemented yet; use --backend overlay"
                .into(),
        ),
        other => Err(format!(
            "unknown backend `{other}` (expected auto, overlay or thinpool)"
        )),
    }
}

fn overlay_supported() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.trim_end().ends_with("\toverlay")))
}
