//! Privileged mount operations behind a narrow trait: the Linux
//! implementation, and a recording fake for tests that cannot mount.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Whether a mount honours the setuid and setgid bits and the file
/// capabilities of the image's files. Every mount tarpool makes is `nodev`;
/// every one a host user could reach is also `nosuid` unless the operator
/// asked otherwise (`activate --suid`): an image's setuid-root file must not
/// make a local user root (moby CVE-2021-41091).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suid {
    /// `nosuid,nodev`: the default.
    Ignored,
    /// `nodev` only: the image's setuid semantics, on the host.
    Honoured,
}

impl Suid {
    pub fn flags(self) -> rustix::mount::MountFlags {
        use rustix::mount::MountFlags;
        match self {
            Suid::Ignored => MountFlags::NOSUID | MountFlags::NODEV,
            Suid::Honoured => MountFlags::NODEV,
        }
    }

    /// As `mount(8)` would print the flags.
    pub fn describe(self) -> &'static str {
        match self {
            Suid::Ignored => "nosuid,nodev",
            Suid::Honoured => "nodev",
        }
    }
}

pub trait MountOps: Send + Sync {
    /// Mounts an overlay at `target`. `lower` is top first. Paths may be
    /// relative to the calling thread's working directory.
    fn mount_overlay(
        &self,
        target: &Path,
        lower: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        suid: Suid,
    ) -> io::Result<()>;
    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()>;
    /// Mounts a block device's filesystem at `target`.
    fn mount_dev(
        &self,
        source: &Path,
        target: &Path,
        fstype: &str,
        options: &str,
        suid: Suid,
    ) -> io::Result<()>;
    /// Moves the calling thread into a private mount namespace (and a private
    /// working directory): its mounts vanish when it exits, even on SIGKILL.
    fn private_namespace(&self) -> io::Result<()>;
    /// Mount points at or below `dir` in this thread's namespace, deepest first.
    fn mounts_under(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Mounts at `target` a clone of the mount at `source` (the subtree
    /// from `source` down, not its submounts), id-mapped through the user
    /// namespace `userns`: a file stored as uid N is seen (and written) as
    /// the host uid that namespace's N maps to.
    fn idmapped_clone(
        &self,
        source: &Path,
        target: &Path,
        userns: rustix::fd::BorrowedFd<'_>,
    ) -> io::Result<()>;
}

/// Runs `f` with this thread's filesystem uid and gid `id`, keeping every
/// capability the thread has (the kernel drops the filesystem ones from the
/// effective set when the filesystem uid leaves 0; they are raised again
/// from the permitted set), then restores both.
pub fn with_fs_ids<T>(id: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    use caps::CapSet;
    let effective = caps::read(None, CapSet::Effective).map_err(io::Error::other)?;
    // SAFETY: setfsuid/setfsgid only change this thread's filesystem ids,
    // restored below.
    let (old_u, old_g) = unsafe { (libc::setfsuid(id), libc::setfsgid(id)) };
    let raised = caps::set(None, CapSet::Effective, &effective).map_err(io::Error::other);
    let r = raised.map(|()| f());
    // SAFETY: as above; back to 0 the kernel raises the filesystem
    // capabilities again.
    unsafe {
        libc::setfsuid(old_u as libc::uid_t);
        libc::setfsgid(old_g as libc::gid_t);
    }
    let _ = caps::set(None, CapSet::Effective, &effective);
    r
}

/// The kernel's `struct mount_attr` (`linux/mount.h`).
#[repr(C)]
pub struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr(2)` on `path` relative to `dirfd`.
pub fn mount_setattr(
    dirfd: libc::c_int,
    path: &Path,
    flags: libc::c_uint,
    attr: &MountAttr,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `path` is a NUL-terminated string and `attr` a `mount_attr`
    // of the size passed; both outlive the call, which only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn overlay_options(lower: &[PathBuf], upper_work: Option<(&Path, &Path)>) -> String {
    let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let mut opts = format!("lowerdir={}", lower.join(":"));
    if let Some((u, w)) = upper_work {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    opts
}

pub struct LinuxMounts;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount argument"))
}

impl MountOps for LinuxMounts {
    fn mount_overlay(
        &self,
        target: &Path,
        lower: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        suid: Suid,
    ) -> io::Result<()> {
        let opts = overlay_options(lower, upper_work);
        // The kernel takes at most one page of options.
        if opts.len() >= 4000 {
            return Err(io::Error::other(format!(
                "overlay options are {} bytes, over a page",
                opts.len()
            )));
        }
        let target = cstr(&target.display().to_string())?;
        let data = cstr(&opts)?;
        rustix::mount::mount(
            "overlay",
            target.as_c_str(),
            "overlay",
            suid.flags(),
            data.as_c_str(),
        )
        .map_err(io::Error::from)
    }

    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()> {
        let flags = if detach {
            rustix::mount::UnmountFlags::DETACH
        } else {
            rustix::mount::UnmountFlags::empty()
        };
        rustix::mount::unmount(target, flags).map_err(io::Error::from)
    }

    fn mount_dev(
        &self,
        source: &Path,
        target: &Path,
        fstype: &str,
        options: &str,
        suid: Suid,
    ) -> io::Result<()> {
        let data = cstr(options)?;
        rustix::mount::mount(source, target, fstype, suid.flags(), data.as_c_str())
            .map_err(io::Error::from)
    }

    fn private_namespace(&self) -> io::Result<()> {
        use rustix::thread::UnshareFlags;
        // SAFETY: the flags do not include FILES, so this thread keeps sharing
        // its file-descriptor table; NEWNS (with the FS it implies) only gives
        // this thread its own mount namespace and working directory.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS | UnshareFlags::FS) }?;
        rustix::mount::mount_change(
            "/",
            rustix::mount::MountPropagationFlags::PRIVATE
                | rustix::mount::MountPropagationFlags::REC,
        )?;
        Ok(())
    }

    fn idmapped_clone(
        &self,
        source: &Path,
        target: &Path,
        userns: rustix::fd::BorrowedFd<'_>,
    ) -> io::Result<()> {
        use rustix::fd::{AsFd as _, AsRawFd as _};
        use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};
        let tree = open_tree(
            rustix::fs::CWD,
            source,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        };
        mount_setattr(
            tree.as_raw_fd(),
            Path::new(""),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr,
        )
        .map_err(|e| match e.raw_os_error() {
            // The filesystem cannot be id-mapped (overlayfs, or tmpfs
            // before Linux 6.3), or the kernel cannot (before 5.12).
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EPERM) => io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "this kernel cannot id-map the filesystem at {} ({e})",
                    source.display()
                ),
            ),
            _ => e,
        })?;
        move_mount(
            tree.as_fd(),
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        Ok(())
    }

    fn mounts_under(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
        let mut out: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mountinfo)
            .map(PathBuf::from)
            .filter(|p| p.starts_with(dir))
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        out.dedup();
        Ok(out)
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fake that records every call instead of mounting: for tests on hosts
/// where mounting is impossible. Named as such; real tests use LinuxMounts.
#[derive(Default)]
pub struct RecordingMounts {
    pub calls: Mutex<Vec<String>>,
}

impl MountOps for RecordingMounts {
    fn mount_overlay(
        &self,
        target: &Path,
        lower: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        suid: Suid,
    ) -> io::Result<()> {
        self.calls.lock().unwrap().push(format!(
            "mount {} {} {}",
            target.display(),
            overlay_options(lower, upper_work),
            suid.describe()
        ));
        Ok(())
    }
    fn idmapped_clone(
        &self,
        source: &Path,
        target: &Path,
        _userns: rustix::fd::BorrowedFd<'_>,
    ) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("idmap {} {}", source.display(), target.display()));
        Ok(())
    }
    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("umount {} detach={detach}", target.display()));
        Ok(())
    }
    fn mount_dev(
        &self,
        source: &Path,
        target: &Path,
        fstype: &str,
        options: &str,
        suid: Suid,
    ) -> io::Result<()> {
        self.calls.lock().unwrap().push(format!(
            "mount {} {} {fstype} {options} {}",
            source.display(),
            target.display(),
            suid.describe()
        ));
        Ok(())
    }
    fn private_namespace(&self) -> io::Result<()> {
        self.calls.lock().unwrap().push("unshare".into());
        Ok(())
    }
    fn mounts_under(&self, _dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/a\\134b"), "/a\\b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }

    #[test]
    fn options() {
        let o = overlay_options(
            &[PathBuf::from("2/fs"), PathBuf::from("1/fs")],
            Some((Path::new("3/fs"), Path::new("3/work"))),
        );
        assert_eq!(o, "lowerdir=2/fs:1/fs,upperdir=3/fs,workdir=3/work");
    }
}
