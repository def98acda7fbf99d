//! The container's root filesystem: the activation's root, seen id-mapped
//! through a user namespace (or as it is, with `--userns host`), `nodev`,
//! with the runtime's mount targets (/dev, /proc, /sys) pinned as real
//! directories of the image before any runtime follows a path into it.

use anyhow::{bail, Context as _, Result};
use rustix::fd::{AsRawFd as _, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::spec::IdRange;

use crate::sys::{mount_setattr, MountAttr, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID};

/// Makes the mounts at and below `root` `nodev` and not `nosuid` (only
/// those flags change: a read-only mount stays so). The view is private to
/// the caller's mount namespace (exec) or the bundle's own mount, so the
/// image's setuid programs work inside, as in a container, though the
/// activation's own mount point on the host is `nosuid`.
pub fn set_nodev(root: &Path) -> Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NODEV,
        attr_clr: MOUNT_ATTR_NOSUID,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(
        libc::AT_FDCWD,
        root,
        libc::AT_RECURSIVE as libc::c_uint,
        &attr,
    )
    .with_context(|| format!("making {} nodev", root.display()))
}

/// A user namespace with `range` as its uid and gid map, held by its file
/// descriptor: what an id-mapped mount maps through. Made by a child that
/// unshares it and waits while this process writes its maps (the kernel
/// allows a user namespace's maps to be written once, by a process
/// privileged over it), then ends.
pub fn user_namespace(range: IdRange) -> Result<OwnedFd> {
    let (mut ready_r, ready_w) = std::io::pipe().context("creating a pipe")?;
    let (done_r, done_w) = std::io::pipe().context("creating a pipe")?;
    // SAFETY: the child calls only async-signal-safe functions (unshare,
    // write, read, _exit) on descriptors it inherited, and leaves by _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // SAFETY: see above; the buffers are valid for their lengths. The
        // child's copies of the ends it does not use are closed, or its
        // read would never see the end of file.
        unsafe {
            libc::close(done_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
            libc::write(ready_w.as_raw_fd(), (&ok as *const u8).cast(), 1);
            let mut b = 0u8;
            libc::read(done_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(done_r);
    let result = (|| -> Result<OwnedFd> {
        let mut ok = [0u8];
        ready_r
            .read_exact(&mut ok)
            .context("waiting for the user namespace")?;
        if ok[0] != 1 {
            bail!("this kernel does not allow creating a user namespace");
        }
        let map = format!("0 {} {}\n", range.host, range.size);
        for file in ["uid_map", "gid_map"] {
            let p = format!("/proc/{pid}/{file}");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|mut f| f.write_all(map.as_bytes()))
                .with_context(|| format!("writing {p}"))?;
        }
        let ns = rustix::fs::open(
            format!("/proc/{pid}/ns/user"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .context("opening the user namespace")?;
        Ok(ns)
    })();
    drop(done_w);
    let mut status = 0;
    // SAFETY: `pid` is this process's child; `status` is a valid int.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

/// The directories the runtime mounts its /dev, /proc and /sys on.
pub const MOUNT_TARGETS: [&str; 3] = ["dev", "proc", "sys"];

/// Checks that each of [`MOUNT_TARGETS`] in the container's view `rootfs`
/// is a real directory, not a symlink or file (an image whose `/proc` or
/// `/dev` points at a host path is how the runc escapes of 2025 start),
/// making it where missing (as host uid `as_uid` when the view is id-mapped,
/// so that it is stored as the image's root); then mounts an empty tmpfs on
/// each, through a descriptor opened without following symlinks, and
/// checks the mount took. From then on the runtime's paths end in mounts of
/// this process's: a container of the same activation running meanwhile
/// cannot rename them away (a mount point is busy in every namespace).
pub fn pin_mount_targets(rootfs: &Path, as_uid: Option<u32>) -> Result<()> {
    use rustix::fs::{AtFlags, FileType};
    let view = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", rootfs.display()))?;
    for name in MOUNT_TARGETS {
        match rustix::fs::statat(&view, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let kind = FileType::from_raw_mode(st.st_mode);
                if kind != FileType::Directory {
                    bail!(
                        "the image's /{name} is a {}, where the runtime mounts /{name}: refusing to run it",
                        match kind {
                            FileType::Symlink => "symlink",
                            FileType::RegularFile => "file",
                            _ => "special file",
                        },
                    );
                }
            }
            Err(Errno::NOENT) => {
                let mkdir = || {
                    rustix::fs::mkdirat(&view, name, Mode::from_raw_mode(0o755)).and_then(|()| {
                        // 0755 whatever the umask (tarpool's is 077).
                        let d = rustix::fs::openat(
                            &view,
                            name,
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                        rustix::fs::fchmod(d, Mode::from_raw_mode(0o755))
                    })
                };
                let made = match as_uid {
                    Some(uid) => crate::sys::with_fs_ids(uid, mkdir)?.map_err(Into::into),
                    None => mkdir().map_err(std::io::Error::from),
                };
                made.with_context(|| format!("making the image's /{name}"))?
            }
            Err(e) => return Err(e).with_context(|| format!("reading the image's /{name}")),
        }
        let target = rustix::fs::openat(
            &view,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening the image's /{name}"))?;
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
        rustix::mount::mount(
            "tarpool",
            &fd_path,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"mode=755,size=16k",
        )
        .with_context(|| format!("pinning the image's /{name}"))?;
        // What the path names now must be that mount.
        let now = rustix::fs::openat(
            &view,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .and_then(|fd| rustix::fs::fstatfs(fd).ok());
        if now.is_none_or(|f| f.f_type != libc::TMPFS_MAGIC) {
            bail!("the image's /{name} changed while it was being pinned: refusing to run it");
        }
    }
    Ok(())
}

/// A directory of this process's, removed with its mounts when dropped:
/// each mount point in `mounts` is detached (newest first), then the files
/// in `files` removed, then every directory by `rmdir` alone, never
/// recursively: were a mount still there, removing would fail, not wipe
/// the activation.
pub struct Scratch {
    pub dir: PathBuf,
    mounts: Vec<PathBuf>,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Scratch {
    pub fn new(prefix: &str) -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temporary directory")?
            .keep();
        // Traversable (not readable) by the container's root, an
        // unprivileged host uid under a user namespace: the runtime opens
        // the root filesystem below it from inside the namespace.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("making {} traversable", dir.display()))?;
        Ok(Scratch {
            dir,
            mounts: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
        })
    }

    /// Makes the directory `name` in it (0700).
    pub fn subdir(&mut self, name: &str) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt as _;
        let p = self.dir.join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        self.dirs.push(p.clone());
        Ok(p)
    }

    /// Something is mounted at `p` now.
    pub fn mounted(&mut self, p: &Path) {
        self.mounts.push(p.to_path_buf());
    }

    /// A file `p` to remove.
    pub fn file(&mut self, p: &Path) {
        self.files.push(p.to_path_buf());
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            if let Err(e) = rustix::mount::unmount(m, UnmountFlags::DETACH) {
                tracing::warn!("unmounting {}: {e}", m.display());
            }
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in self.dirs.iter().rev().chain([&self.dir]) {
            if let Err(e) = std::fs::remove_dir(d) {
                tracing::warn!("removing the temporary directory {}: {e}", d.display());
            }
        }
    }
}
