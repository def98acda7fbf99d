//! Storage backends. A backend stores one snapshot per layer, keyed by the
//! layer's numeric id (the store maps chain IDs to ids), and activates an
//! image as a writable snapshot of its top layer: overlay directories, or a
//! devicemapper thin pool (one thin device per layer).

pub mod dm;
pub mod overlay;
pub mod thinpool;

use rustix::fd::BorrowedFd;
use serde::Serialize;
use std::path::Path;

use crate::error::Failure;

/// Applies one layer through the writable root it is handed.
pub type ApplyFn<'a> =
    dyn FnMut(BorrowedFd<'_>) -> Result<crate::extract::ApplyStats, Failure> + Send + 'a;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivationInfo {
    /// The mount a caller can make itself: `type` and `options`.
    pub fstype: String,
    pub options: String,
    pub mountpoint: Option<String>,
    /// The block device holding the snapshot (thin pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// What the store still references: everything else a backend holds may go
/// (defined with the store's layers, which it reads from).
pub use crate::store::Known;

/// A thin pool's space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolUsage {
    pub data_used_bytes: u64,
    pub data_total_bytes: u64,
    pub meta_used_bytes: u64,
    pub meta_total_bytes: u64,
    /// `rw`, `ro` or `out_of_data_space`.
    pub mode: String,
    pub needs_check: bool,
}

impl PoolUsage {
    pub fn out_of_space(&self) -> bool {
        self.mode == "out_of_data_space"
            || self.data_used_bytes >= self.data_total_bytes
            || self.meta_used_bytes >= self.meta_total_bytes
    }

    pub fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        format!(
            "data {:.1} of {:.1} MiB, metadata {:.1} of {:.1} MiB, mode {}",
            mib(self.data_used_bytes),
            mib(self.data_total_bytes),
            mib(self.meta_used_bytes),
            mib(self.meta_total_bytes),
            self.mode
        )
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Cleanup {
    pub unmounted: usize,
    pub removed: usize,
    /// Pool operations a crash left running (thin pool).
    pub interrupted_ops: usize,
    /// Devices that should be active and were set up again (thin pool).
    pub reactivated: usize,
    /// What could not be cleaned up (a device still in use), one line each;
    /// retried at the next cleanup.
    pub errors: Vec<String>,
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
    ) -> Result<crate::extract::ApplyStats, Failure>;

    /// [`Snapshotter::apply_layer`] without making the bytes durable: the
    /// caller must call [`Snapshotter::sync_layer`] before it treats the
    /// layer as committed. Lets the engine sync one layer while it applies
    /// the next. Backends that cannot defer sync here.
    fn apply_layer_unsynced(
        &self,
        id: i64,
        parents: &[i64],
        apply: &mut ApplyFn<'_>,
    ) -> Result<crate::extract::ApplyStats, Failure> {
        self.apply_layer(id, parents, apply)
    }

    /// Makes layer `id`, applied with [`Snapshotter::apply_layer_unsynced`],
    /// durable.
    fn sync_layer(&self, _id: i64) -> Result<(), Failure> {
        Ok(())
    }

    /// Removes whatever exists of layer `id`. Idempotent.
    fn discard_layer(&self, id: i64) -> std::io::Result<()>;

    /// Checks that the image snapshot over `chain` (top first) can be made,
    /// and makes it. For overlay, the layer directories are the snapshot.
    fn snapshot_image(&self, name: &str, chain: &[i64]) -> Result<ActivationInfo, Failure>;

    /// A writable copy-on-write view of `chain` (top first), mounted at
    /// `mountpoint` when given: `nodev`, and `nosuid` unless `suid` says
    /// the image's setuid files are to work on the host.
    fn activate(
        &self,
        act: &str,
        chain: &[i64],
        mountpoint: Option<&Path>,
        suid: crate::sys::Suid,
    ) -> std::io::Result<ActivationInfo>;

    /// Mounts the existing activation `act` (a writable view of `chain`, top
    /// first) at `target` in the caller's mount namespace, for `tarpool
    /// exec` of an activation made without a mount point. `nodev` only: the
    /// caller's namespace is private, and inside it the image's setuid
    /// programs work as the image means.
    fn mount_activation(&self, act: &str, chain: &[i64], target: &Path) -> std::io::Result<()>;

    /// [`Snapshotter::mount_activation`], with the activation's files
    /// id-mapped through the user namespace `userns` (for a container whose
    /// root is an unprivileged host uid): what is stored as uid N is seen
    /// and written as the uid the namespace maps N to (`host_root` for 0),
    /// and stored as N again. `scratch` is an empty directory the backend
    /// may mount on (the caller unmounts it, after `target`).
    fn mount_activation_idmapped(
        &self,
        act: &str,
        chain: &[i64],
        target: &Path,
        scratch: &Path,
        userns: rustix::fd::BorrowedFd<'_>,
        host_root: u32,
    ) -> std::io::Result<()>;

    fn deactivate(&self, act: &str, mountpoint: Option<&Path>) -> std::io::Result<()>;

    /// After a crash, and for `gc`: removes temporary mounts and whatever
    /// `known` does not reference; re-creates what should be active.
    fn cleanup(&self, known: &Known) -> std::io::Result<Cleanup>;

    /// The pool's space, for backends that have one.
    fn usage(&self) -> std::io::Result<Option<PoolUsage>> {
        Ok(None)
    }
}

/// Maps an I/O error of a backend operation to a retryable failure with context.
fn io_fail(context: &str) -> impl FnOnce(std::io::Error) -> Failure + '_ {
    move |e| Failure::Retry(format!("{context}: {e}"))
}

/// Picks the backend for `--backend`.
pub fn open(
    choice: crate::core::states::Backend,
    state_dir: &crate::statedir::StateDir,
    mounts: std::sync::Arc<dyn crate::sys::MountOps>,
    thin: &thinpool::ThinConfig,
) -> Result<Box<dyn Snapshotter>, String> {
    use crate::core::states::Backend;
    match choice {
        Backend::Auto | Backend::Overlay => {
            if !overlay_supported() {
                return Err("this kernel does not support overlayfs".into());
            }
            overlay::Overlay::new(state_dir, mounts)
                .map(|o| Box::new(o) as Box<dyn Snapshotter>)
                .map_err(|e| format!("overlay backend: {e}"))
        }
        Backend::Thinpool => {
            let dm = dm::LinuxDm::new(&state_dir.thinpool_dev())
                .map_err(|e| format!("thin-pool backend: {e}"))?;
            thinpool::ThinPool::open(state_dir, thin.clone(), std::sync::Arc::new(dm), mounts)
                .map(|t| Box::new(t) as Box<dyn Snapshotter>)
                .map_err(|e| format!("thin-pool backend: {e}"))
        }
    }
}

fn overlay_supported() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.trim_end().ends_with("\toverlay")))
}
