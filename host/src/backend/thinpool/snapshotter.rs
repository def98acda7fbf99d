//! The pool as a [`Snapshotter`]: layers filled through a mount, image
//! snapshots and activations as writable snapshots, and the cleanup after
//! a crash.

use rustix::fd::AsFd;
use std::fs::{self, File};
use std::io;
use std::path::Path;

use super::config::parse_pool_status;
use super::ThinPool;
use crate::backend::{io_fail, ActivationInfo, ApplyFn, Cleanup, Known, PoolUsage, Snapshotter};
use crate::core::states::ThinState;
use crate::error::Failure;
use crate::sys::Suid;

impl ThinPool {
    /// The pool's usage, or None when its status cannot be read.
    fn read_usage(&self) -> io::Result<PoolUsage> {
        let line = self.dm.status(&self.cfg.pool)?;
        parse_pool_status(&line, self.block_bytes).map_err(io::Error::other)
    }

    /// Turns a failure into a clear "out of space" one when the pool is full.
    fn explain(&self, e: Failure) -> Failure {
        match self.read_usage() {
            Ok(u) if u.out_of_space() => Failure::Exhausted(format!(
                "thin pool `{}` is out of space ({}); the layer was discarded. \
                 Free space with `tarpool gc` or grow the pool. ({e})",
                self.cfg.pool,
                u.summary()
            )),
            _ => e,
        }
    }

    fn fill(
        &self,
        id: i64,
        node: &Path,
        fresh: bool,
        apply: &mut ApplyFn<'_>,
    ) -> Result<crate::extract::ApplyStats, Failure> {
        let mnt = self.dir.join("mnt").join(id.to_string());
        fs::create_dir_all(&mnt).map_err(io_fail("creating the mount point"))?;
        let mounts = self.mounts.clone();
        let r = std::thread::scope(|s| {
            s.spawn(|| -> Result<_, Failure> {
                // A private namespace: the mount vanishes with this thread,
                // or with the process on SIGKILL.
                mounts
                    .private_namespace()
                    .map_err(io_fail("entering a private mount namespace"))?;
                mounts
                    .mount_dev(node, &mnt, "ext4", "noinit_itable", Suid::Ignored)
                    .map_err(io_fail("mounting the layer's device"))?;
                let r = (|| {
                    let root = File::open(&mnt).map_err(io_fail("opening the layer's root"))?;
                    if fresh {
                        match rustix::fs::unlinkat(
                            &root,
                            "lost+found",
                            rustix::fs::AtFlags::REMOVEDIR,
                        ) {
                            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                            Err(e) => {
                                return Err(Failure::io("removing lost+found", e));
                            }
                        }
                    }
                    let stats = apply(root.as_fd())?;
                    rustix::fs::syncfs(&root)
                        .map_err(|e| Failure::Retry(format!("syncing the layer: {e}")))?;
                    Ok(stats)
                })();
                let u = mounts.unmount(&mnt, false);
                match (r, u) {
                    (Ok(_), Err(e)) => Err(Failure::io("unmounting the layer", e)),
                    (r, _) => r,
                }
            })
            .join()
            .unwrap_or_else(|_| Err(Failure::Retry("the layer thread panicked".into())))
        });
        let _ = fs::remove_dir(&mnt);
        r
    }
}

impl Snapshotter for ThinPool {
    fn kind(&self) -> &'static str {
        "thinpool"
    }

    fn apply_layer(
        &self,
        id: i64,
        parents: &[i64],
        apply: &mut ApplyFn<'_>,
    ) -> Result<crate::extract::ApplyStats, Failure> {
        let owner = format!("layer:{id}");
        self.remove_owner(&owner)
            .map_err(io_fail("removing a stale layer device"))?;
        let origin = match parents.first() {
            Some(p) => Some(self.ready_device(&format!("layer:{p}"))?.dev_id),
            None => None,
        };
        let mut run = || -> Result<_, Failure> {
            let dev_id = self
                .new_device(&owner, origin)
                .map_err(io_fail("creating the layer's thin device"))?;
            let node = self
                .activate_node(dev_id)
                .map_err(io_fail("activating the layer's thin device"))?;
            if origin.is_none() {
                self.journaled("mkfs", Some(dev_id), &owner, || self.dm.mkfs(&node))
                    .map_err(io_fail("making the base layer's filesystem"))?;
            }
            let stats = self.fill(id, &node, origin.is_none(), apply)?;
            self.deactivate_node(dev_id)
                .map_err(io_fail("sealing the layer's device"))?;
            self.set_state(dev_id, ThinState::Ready, false)
                .map_err(io_fail("recording the sealed layer"))?;
            Ok(stats)
        };
        run().map_err(|e| match e {
            Failure::Cancelled => e,
            e => self.explain(e),
        })
    }

    fn discard_layer(&self, id: i64) -> io::Result<()> {
        self.remove_owner(&format!("layer:{id}")).map(|_| ())
    }

    fn snapshot_image(&self, name: &str, chain: &[i64]) -> Result<ActivationInfo, Failure> {
        let top = chain
            .first()
            .ok_or_else(|| Failure::Input(format!("image `{name}` has no layers")))?;
        let origin = self.ready_device(&format!("layer:{top}"))?.dev_id;
        let owner = format!("image:{name}");
        let existing = self
            .device(&owner)
            .map_err(io_fail("reading the thin-pool registry"))?;
        let dev_id = match existing {
            Some(d) if d.state == ThinState::Ready && d.origin == Some(origin) => d.dev_id,
            other => {
                if let Some(d) = other {
                    self.remove_device(&d)
                        .map_err(io_fail("removing the image's old snapshot"))?;
                }
                let dev_id = self
                    .new_device(&owner, Some(origin))
                    .map_err(|e| self.explain(Failure::io("snapshotting the top layer", e)))?;
                self.set_state(dev_id, ThinState::Ready, true)
                    .map_err(io_fail("recording the image snapshot"))?;
                dev_id
            }
        };
        let node = self
            .activate_node(dev_id)
            .map_err(io_fail("activating the image snapshot"))?;
        Ok(ActivationInfo {
            fstype: "ext4".into(),
            options: String::new(),
            mountpoint: None,
            device: Some(node.display().to_string()),
        })
    }

    fn activate(
        &self,
        act: &str,
        chain: &[i64],
        mountpoint: Option<&Path>,
        suid: Suid,
    ) -> io::Result<ActivationInfo> {
        let top = chain
            .first()
            .ok_or_else(|| io::Error::other("the image has no layers"))?;
        let origin = self
            .ready_device(&format!("layer:{top}"))
            .map_err(|e| io::Error::other(e.to_string()))?
            .dev_id;
        let owner = format!("act:{act}");
        // Held throughout, so a cleanup in another process (gc, a run's
        // start) never sees this activation half made.
        let _g = self.guard()?;
        if self.device(&owner)?.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("activation {act} exists already"),
            ));
        }
        let dev_id = self.new_device(&owner, Some(origin))?;
        let r = (|| {
            let node = self.activate_node(dev_id)?;
            self.set_state(dev_id, ThinState::Ready, true)?;
            if let Some(mp) = mountpoint {
                self.mounts.mount_dev(&node, mp, "ext4", "", suid)?;
            }
            Ok(node)
        })();
        match r {
            Ok(node) => Ok(ActivationInfo {
                fstype: "ext4".into(),
                options: suid.describe().into(),
                mountpoint: mountpoint.map(|p| p.display().to_string()),
                device: Some(node.display().to_string()),
            }),
            Err(e) => {
                let _ = self.remove_owner(&owner);
                Err(e)
            }
        }
    }

    fn mount_activation(&self, act: &str, _chain: &[i64], target: &Path) -> io::Result<()> {
        let dev = self.device(&format!("act:{act}"))?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("activation {act} has no thin device"),
            )
        })?;
        let node = self.activate_node(dev.dev_id)?;
        // exec's private view: the image's setuid semantics hold inside.
        self.mounts
            .mount_dev(&node, target, "ext4", "", Suid::Honoured)
    }

    /// ext4 can be id-mapped (Linux 5.12): the activation's filesystem,
    /// mounted at `scratch`, is cloned id-mapped at `target`.
    fn mount_activation_idmapped(
        &self,
        act: &str,
        chain: &[i64],
        target: &Path,
        scratch: &Path,
        userns: rustix::fd::BorrowedFd<'_>,
        _host_root: u32,
    ) -> io::Result<()> {
        self.mount_activation(act, chain, scratch)?;
        self.mounts.idmapped_clone(scratch, target, userns)
    }

    fn deactivate(&self, act: &str, mountpoint: Option<&Path>) -> io::Result<()> {
        if let Some(mp) = mountpoint {
            let mp = fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
            if self.mounts.mounts_under(&mp)?.iter().any(|m| m == &mp) {
                self.mounts.unmount(&mp, false)?;
            }
        }
        self.remove_owner(&format!("act:{act}")).map(|_| ())
    }

    fn cleanup(&self, known: &Known) -> io::Result<Cleanup> {
        let _g = self.guard()?;
        let mut report = Cleanup::default();
        let interrupted = self
            .store
            .interrupt_pool_ops(&self.cfg.pool)
            .map_err(super::registry)?;
        report.interrupted_ops = interrupted;
        // First the nodes of ours that should not be there: any device named
        // like ours that is not an active, sealed row (a crash while a layer
        // was filled, or between loading a table and resuming it).
        let prefix = format!("{}-thin-", self.cfg.pool);
        let rows = self.devices()?;
        for name in self.dm.list()? {
            if let Some(id) = name
                .strip_prefix(&prefix)
                .and_then(|s| s.parse::<u32>().ok())
            {
                if !rows
                    .iter()
                    .any(|d| d.dev_id == id && d.active && d.state == ThinState::Ready)
                {
                    match self.dm.remove(&name) {
                        Ok(()) => report.removed += 1,
                        Err(e) => report.errors.push(format!("removing node {name}: {e}")),
                    }
                }
            }
        }
        for d in rows {
            let wanted = match d.owner.split_once(':') {
                Some(("layer", id)) => id.parse().is_ok_and(|id: i64| known.layers.contains(&id)),
                Some(("image", n)) => known.images.iter().any(|i| i == n),
                Some(("act", a)) => known.activations.iter().any(|x| x == a),
                _ => false,
            };
            let r = if d.state != ThinState::Ready || !wanted {
                self.remove_device(&d).map(|_| report.removed += 1)
            } else if d.active && self.dm.node(&self.dev_name(d.dev_id))?.is_none() {
                self.activate_node(d.dev_id)
                    .map(|_| report.reactivated += 1)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                // One busy device must not stop the rest, nor the service.
                report
                    .errors
                    .push(format!("thin {} ({}): {e}", d.dev_id, d.owner));
            }
        }
        let mnt = self.dir.join("mnt");
        for m in self.mounts.mounts_under(&mnt)? {
            self.mounts.unmount(&m, true)?;
            report.unmounted += 1;
        }
        for ent in fs::read_dir(&mnt)? {
            let _ = fs::remove_dir(ent?.path());
        }
        Ok(report)
    }

    fn usage(&self) -> io::Result<Option<PoolUsage>> {
        self.read_usage().map(Some)
    }
}
