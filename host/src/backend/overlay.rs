//! The overlay backend, as containerd's overlayfs snapshotter lays it out:
//! `overlay/layers/<id>/fs` holds one layer's diff (with overlay whiteouts),
//! a layer is applied through an overlay mount of its parents with the new
//! `fs` as upper dir, and an activation is a writable overlay over the chain.
//!
//! Layer mounts happen on a dedicated thread inside a private mount
//! namespace, so they vanish with the thread, or with the process on SIGKILL.

use rustix::fd::AsFd;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{io_fail, ActivationInfo, ApplyFn, Cleanup, Known, Snapshotter};
use crate::error::Failure;
use crate::sys::{overlay_options, MountOps, Suid};

pub struct Overlay {
    root: PathBuf,
    mounts: Arc<dyn MountOps>,
}

impl Overlay {
    pub fn new(
        state_dir: &crate::statedir::StateDir,
        mounts: Arc<dyn MountOps>,
    ) -> io::Result<Overlay> {
        let root = state_dir.overlay();
        for d in ["layers", "mnt", "activations"] {
            fs::create_dir_all(root.join(d))?;
        }
        Ok(Overlay { root, mounts })
    }

    fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn layer_dir(&self, id: i64) -> PathBuf {
        self.layers().join(id.to_string())
    }

    /// Lower dirs relative to `layers/`, so a deep chain fits in one page.
    fn relative_lowers(chain: &[i64]) -> Vec<PathBuf> {
        chain
            .iter()
            .map(|id| PathBuf::from(format!("{id}/fs")))
            .collect()
    }
}

fn remove_all(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl Snapshotter for Overlay {
    fn kind(&self) -> &'static str {
        "overlay"
    }

    fn apply_layer(
        &self,
        id: i64,
        parents: &[i64],
        apply: &mut ApplyFn<'_>,
    ) -> Result<crate::extract::ApplyStats, Failure> {
        let stats = self.apply_layer_unsynced(id, parents, apply)?;
        self.sync_layer(id)?;
        Ok(stats)
    }

    fn sync_layer(&self, id: i64) -> Result<(), Failure> {
        let dir = self.layer_dir(id);
        // The layer's files (written through the overlay or directly) are
        // on the filesystem holding the layers directory: one syncfs.
        let fs_dir = File::open(dir.join("fs")).map_err(io_fail("opening the layer directory"))?;
        rustix::fs::syncfs(&fs_dir)
            .map_err(|e| Failure::Retry(format!("syncing the layer: {e}")))?;
        File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(io_fail("syncing the layer directory"))?;
        File::open(self.layers())
            .and_then(|f| f.sync_all())
            .map_err(io_fail("syncing the layers directory"))
    }

    fn apply_layer_unsynced(
        &self,
        id: i64,
        parents: &[i64],
        apply: &mut ApplyFn<'_>,
    ) -> Result<crate::extract::ApplyStats, Failure> {
        let dir = self.layer_dir(id);
        remove_all(&dir).map_err(io_fail("removing a stale layer directory"))?;
        // The layer's root: 0755 whatever the umask (tarpool's 077), as the
        // root of an image whose layers do not say otherwise.
        crate::statedir::mkdir_mode(&dir.join("fs"), 0o755)
            .map_err(io_fail("creating the layer directory"))?;
        let stats = if parents.is_empty() {
            let fs_dir =
                File::open(dir.join("fs")).map_err(io_fail("opening the layer directory"))?;
            apply(fs_dir.as_fd())?
        } else {
            fs::create_dir_all(dir.join("work")).map_err(io_fail("creating the work directory"))?;
            let mnt = self.root.join("mnt").join(id.to_string());
            fs::create_dir_all(&mnt).map_err(io_fail("creating the mount point"))?;
            let layers = self.layers();
            let mounts = self.mounts.clone();
            let result = std::thread::scope(|s| {
                s.spawn(|| -> Result<_, Failure> {
                    mounts
                        .private_namespace()
                        .map_err(io_fail("entering a private mount namespace"))?;
                    std::env::set_current_dir(&layers)
                        .map_err(io_fail("entering the layers directory"))?;
                    let upper = PathBuf::from(format!("{id}/fs"));
                    let work = PathBuf::from(format!("{id}/work"));
                    mounts
                        .mount_overlay(
                            &mnt,
                            &Self::relative_lowers(parents),
                            Some((&upper, &work)),
                            Suid::Ignored,
                        )
                        .map_err(io_fail("mounting the parent chain"))?;
                    let r = (|| {
                        let root = File::open(&mnt).map_err(io_fail("opening the mounted view"))?;
                        apply(root.as_fd())
                    })();
                    let _ = mounts.unmount(&mnt, false);
                    r
                })
                .join()
                .unwrap_or_else(|_| Err(Failure::Retry("the layer thread panicked".into())))
            });
            let _ = fs::remove_dir(&mnt);
            let stats = result?;
            remove_all(&dir.join("work")).map_err(io_fail("removing the work directory"))?;
            stats
        };
        Ok(stats)
    }

    fn discard_layer(&self, id: i64) -> io::Result<()> {
        remove_all(&self.layer_dir(id))
    }

    fn snapshot_image(&self, name: &str, chain: &[i64]) -> Result<ActivationInfo, Failure> {
        for id in chain {
            if !self.layer_dir(*id).join("fs").is_dir() {
                return Err(Failure::Retry(format!(
                    "image `{name}`: layer {id} is missing from the overlay store"
                )));
            }
        }
        let lowers: Vec<PathBuf> = chain
            .iter()
            .map(|id| self.layer_dir(*id).join("fs"))
            .collect();
        // A single layer cannot be a read-only overlay on its own; the view is then the directory itself.
        Ok(ActivationInfo {
            fstype: "overlay".into(),
            options: overlay_options(&lowers, None),
            mountpoint: None,
            device: None,
        })
    }

    fn activate(
        &self,
        act: &str,
        chain: &[i64],
        mountpoint: Option<&Path>,
        suid: Suid,
    ) -> io::Result<ActivationInfo> {
        let dir = self.root.join("activations").join(act);
        // The upper directory is the activation's root: it takes the mode
        // and owner of the image's root (the top layer's), not the umask's.
        let top = chain
            .first()
            .map(|id| self.layer_dir(*id).join("fs"))
            .ok_or_else(|| io::Error::other("the image has no layers"))?;
        let root = fs::metadata(&top)?;
        let upper = dir.join("upper");
        crate::statedir::mkdir_mode(&upper, 0o700)?;
        rustix::fs::chown(
            &upper,
            Some(rustix::fs::Uid::from_raw(root.uid())),
            Some(rustix::fs::Gid::from_raw(root.gid())),
        )?;
        crate::statedir::mkdir_mode(&upper, root.mode() & 0o7777)?;
        fs::create_dir_all(dir.join("work"))?;
        let lowers: Vec<PathBuf> = chain
            .iter()
            .map(|id| self.layer_dir(*id).join("fs"))
            .collect();
        let work = dir.join("work");
        let options = format!(
            "{},{}",
            overlay_options(&lowers, Some((&upper, &work))),
            suid.describe()
        );
        if let Some(mp) = mountpoint {
            if let Err(e) = self.mount_at(act, chain, mp, suid) {
                let _ = remove_all(&dir);
                return Err(e);
            }
        }
        Ok(ActivationInfo {
            fstype: "overlay".into(),
            options,
            mountpoint: mountpoint.map(|p| p.display().to_string()),
            device: None,
        })
    }

    fn mount_activation(&self, act: &str, chain: &[i64], target: &Path) -> io::Result<()> {
        self.mount_at(act, chain, target, Suid::Honoured)
    }

    /// overlayfs itself cannot be id-mapped; its layers can (Linux 5.19):
    /// the backend's tree, id-mapped at `scratch`, gives the overlay its
    /// lower, upper and work directories. overlayfs does its own work (its
    /// work directory, copy-up) with its mounter's credentials, which must
    /// be mapped through the upper directory's id-map: the overlay is
    /// mounted with filesystem ids `host_root` (stored as 0) and every
    /// capability this process has.
    fn mount_activation_idmapped(
        &self,
        act: &str,
        chain: &[i64],
        target: &Path,
        scratch: &Path,
        userns: rustix::fd::BorrowedFd<'_>,
        host_root: u32,
    ) -> io::Result<()> {
        self.mounts.idmapped_clone(&self.root, scratch, userns)?;
        let mapped = Overlay {
            root: scratch.to_path_buf(),
            mounts: self.mounts.clone(),
        };
        crate::sys::with_fs_ids(host_root, || {
            mapped.mount_at(act, chain, target, Suid::Honoured)
        })?
    }

    fn deactivate(&self, act: &str, mountpoint: Option<&Path>) -> io::Result<()> {
        if let Some(mp) = mountpoint {
            let mp = fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
            if self.mounts.mounts_under(&mp)?.iter().any(|m| m == &mp) {
                self.mounts.unmount(&mp, false)?;
            }
        }
        remove_all(&self.root.join("activations").join(act))
    }

    fn cleanup(&self, known: &Known) -> io::Result<Cleanup> {
        let mut report = Cleanup::default();
        let mnt = self.root.join("mnt");
        for m in self.mounts.mounts_under(&mnt)? {
            self.mounts.unmount(&m, true)?;
            report.unmounted += 1;
        }
        for ent in fs::read_dir(&mnt)? {
            remove_all(&ent?.path())?;
            report.removed += 1;
        }
        for ent in fs::read_dir(self.layers())? {
            let ent = ent?;
            let keep = ent
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|id| known.layers.contains(&id));
            if !keep {
                remove_all(&ent.path())?;
                report.removed += 1;
            } else if ent.path().join("work").exists() {
                remove_all(&ent.path().join("work"))?;
            }
        }
        // Activations the store no longer knows (a crash between making one
        // and recording it).
        let acts = self.root.join("activations");
        for ent in fs::read_dir(&acts)? {
            let ent = ent?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if !known.activations.contains(&name) {
                remove_all(&ent.path())?;
                report.removed += 1;
            }
        }
        Ok(report)
    }
}

impl Overlay {
    /// Mounts activation `act`'s writable overlay of `chain` at `target`.
    fn mount_at(&self, act: &str, chain: &[i64], target: &Path, suid: Suid) -> io::Result<()> {
        if !self
            .root
            .join("activations")
            .join(act)
            .join("upper")
            .is_dir()
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("activation {act} has no upper directory"),
            ));
        }
        // Relative lower dirs keep deep chains within a page of options.
        let cwd = std::env::current_dir()?;
        std::env::set_current_dir(self.layers())?;
        let rel_upper = PathBuf::from(format!("../activations/{act}/upper"));
        let rel_work = PathBuf::from(format!("../activations/{act}/work"));
        let r = self.mounts.mount_overlay(
            target,
            &Self::relative_lowers(chain),
            Some((&rel_upper, &rel_work)),
            suid,
        );
        std::env::set_current_dir(cwd)?;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RecordingMounts;
    use std::os::unix::fs::PermissionsExt as _;

    fn overlay() -> (tempfile::TempDir, Arc<RecordingMounts>, Overlay) {
        let d = tempfile::tempdir().unwrap();
        let rec = Arc::new(RecordingMounts::default());
        let o = Overlay::new(&crate::statedir::StateDir::new(d.path()), rec.clone()).unwrap();
        (d, rec, o)
    }

    fn calls(rec: &RecordingMounts) -> Vec<String> {
        std::mem::take(&mut *rec.calls.lock().unwrap())
    }

    #[test]
    fn base_layer_is_written_directly_and_upper_layers_through_a_private_mount() {
        let (d, rec, o) = overlay();
        let mut apply =
            |_root: rustix::fd::BorrowedFd<'_>| Ok(crate::extract::ApplyStats::default());
        o.apply_layer(1, &[], &mut apply).unwrap();
        assert!(calls(&rec).is_empty(), "the base layer needs no mount");
        // The fake mounts nothing: the closure sees the empty mount point.
        o.apply_layer(3, &[2, 1], &mut apply).unwrap();
        let got = calls(&rec);
        let mnt = d.path().join("overlay/mnt/3");
        assert_eq!(
            got,
            [
                "unshare".to_string(),
                format!(
                    "mount {} lowerdir=2/fs:1/fs,upperdir=3/fs,workdir=3/work nosuid,nodev",
                    mnt.display()
                ),
                format!("umount {} detach=false", mnt.display()),
            ]
        );
        assert!(!mnt.exists(), "the mount point is removed");
        assert!(d.path().join("overlay/layers/3/fs").is_dir());
        assert!(
            !d.path().join("overlay/layers/3/work").exists(),
            "the work dir goes once the layer is done"
        );
    }

    #[test]
    fn cleanup_removes_unknown_layers_and_stray_mount_points() {
        let (d, _rec, o) = overlay();
        for id in [1, 2, 3] {
            std::fs::create_dir_all(d.path().join(format!("overlay/layers/{id}/fs"))).unwrap();
        }
        std::fs::create_dir_all(d.path().join("overlay/layers/2/work")).unwrap();
        std::fs::create_dir_all(d.path().join("overlay/mnt/9")).unwrap();
        let r = o
            .cleanup(&Known {
                layers: vec![1, 2],
                ..Known::default()
            })
            .unwrap();
        assert_eq!(r.removed, 2);
        assert!(d.path().join("overlay/layers/1/fs").exists());
        assert!(!d.path().join("overlay/layers/2/work").exists());
        assert!(!d.path().join("overlay/layers/3").exists());
        assert!(!d.path().join("overlay/mnt/9").exists());
    }

    #[test]
    fn activation_mounts_relative_lowers_and_deactivation_removes_it() {
        let (d, rec, o) = overlay();
        let mp = d.path().join("mp");
        std::fs::create_dir_all(&mp).unwrap();
        let top = d.path().join("overlay/layers/5/fs");
        std::fs::create_dir_all(&top).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o751)).unwrap();
        let info = o.activate("a1", &[5, 4], Some(&mp), Suid::Ignored).unwrap();
        assert!(info.options.starts_with(&format!(
            "lowerdir={}",
            d.path().join("overlay/layers/5/fs").display()
        )));
        assert_eq!(
            calls(&rec),
            [format!("mount {} lowerdir=5/fs:4/fs,upperdir=../activations/a1/upper,workdir=../activations/a1/work nosuid,nodev", mp.display())]
        );
        let upper = d.path().join("overlay/activations/a1/upper");
        assert_eq!(
            std::fs::metadata(&upper).unwrap().mode() & 0o7777,
            0o751,
            "the activation's root has the image's root's mode"
        );
        o.deactivate("a1", Some(&mp)).unwrap();
        assert!(!d.path().join("overlay/activations/a1").exists());
    }
}
