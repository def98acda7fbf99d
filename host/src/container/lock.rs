//! Activation locks: `tarpool exec` and `tarpool bundle` hold one shared
//! while they only bind the activation's mount point, exclusive while exec
//! mounts the activation itself (two overlay mounts of one upper directory
//! would corrupt it); `tarpool deactivate` holds it exclusive.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};

use crate::statedir::StateDir;
use crate::store::{ActivationRow, Store};
use crate::sys::MountOps as _;

/// The error when an activation's lock is held.
fn in_use(act: &str) -> anyhow::Error {
    anyhow::anyhow!("activation {act} is in use (tarpool exec or deactivate)")
}

/// A lock on one activation, `STATE_DIR/locks/ACT.lock`: `tarpool exec`
/// holds it shared while it only binds the activation's mount point, and
/// exclusive while it mounts the activation itself; `tarpool deactivate`
/// holds it exclusive. Released when dropped (or when the process ends).
pub struct ActivationLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl ActivationLock {
    /// Removes the lock file, still holding the lock: for `deactivate`, once
    /// the activation is gone. [`lock_activation`] never keeps a lock on a
    /// removed file, so this is safe against a concurrent locker.
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// Takes activation `act`'s lock without waiting (in `state_dir/locks`,
/// made 0700): held elsewhere, the error "activation ACT is in use".
pub fn lock_activation(state_dir: &StateDir, act: &str, exclusive: bool) -> Result<ActivationLock> {
    use rustix::fs::FlockOperation;
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
    if !crate::core::names::valid_activation_name(act) {
        bail!("invalid activation name {act:?}");
    }
    let dir = state_dir.locks();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let path = dir.join(format!("{act}.lock"));
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    // A deactivate removes the file while it holds the lock: a lock taken
    // on the removed file would lock nothing, so check and take it again.
    for _ in 0..100 {
        // Close-on-exec (the standard library's default).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match rustix::fs::flock(&file, op) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(in_use(act)),
            Err(e) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
        let held = file.metadata()?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => {
                return Ok(ActivationLock { _file: file, path })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Err(in_use(act))
}

/// Takes `act`'s lock for exec: shared when its mount point is mounted (exec
/// only binds it), exclusive otherwise (exec mounts it). Returns the
/// activation as read under the lock, and whether to bind its mount point.
pub fn lock_for_exec(
    store: &Store,
    state_dir: &StateDir,
    act: &str,
) -> Result<(ActivationRow, bool, ActivationLock)> {
    let read = || -> Result<(ActivationRow, bool)> {
        let row = store
            .activation(act)?
            .with_context(|| format!("no activation named {act}"))?;
        let bind = row
            .mountpoint
            .as_deref()
            .is_some_and(|mp| is_mount_point(Path::new(mp)));
        Ok((row, bind))
    };
    let (_, mut bind) = read()?;
    for _ in 0..3 {
        let lock = lock_activation(state_dir, act, !bind)?;
        // Again, under the lock: a deactivate may have just removed it.
        let (row, now) = read()?;
        // An exclusive lock also covers binding; a shared one only that.
        if now || !bind {
            return Ok((row, now, lock));
        }
        bind = now;
    }
    Err(in_use(act))
}

pub fn is_mount_point(p: &Path) -> bool {
    crate::sys::LinuxMounts
        .mounts_under(p)
        .is_ok_and(|m| m.iter().any(|m| m == p))
}

/// The activation's layer ids, top first.
pub fn chain(store: &Store, act: &str, top: &str) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    let mut next = Some(top.to_string());
    while let Some(c) = next {
        let layer = store
            .layer(&c)?
            .filter(|l| l.committed)
            .with_context(|| format!("activation {act}: its layer {c} is missing"))?;
        ids.push(layer.id);
        next = layer.parent;
        if ids.len() > 100_000 {
            bail!("activation {act}: its layer chain loops");
        }
    }
    Ok(ids)
}
