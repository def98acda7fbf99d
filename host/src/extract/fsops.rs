//! Directory-fd-relative filesystem primitives that never follow a symlink
//! in the final component and never leave the layer root.

use std::ffi::{CStr, CString};

use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Deepest directory tree `remove_tree`/opaque walks descend (one fd per
/// level is held open).
pub(super) const MAX_WALK_DEPTH: usize = 1024;

/// `fchmodat2` has the same number on every Linux architecture.
const SYS_FCHMODAT2: libc::c_long = 452;

#[derive(Debug)]
pub(super) enum WalkError {
    Os(Errno),
    TooDeep,
}

impl From<Errno> for WalkError {
    fn from(e: Errno) -> Self {
        WalkError::Os(e)
    }
}

/// Flags for a directory we only use as the base of *at calls.
pub(super) fn dir_path_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// Flags for a directory we read or change the metadata of.
pub(super) fn dir_read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens `path` (normalised, root-relative) with every symlink resolved as
/// if `root` were `/`. Magic links (/proc) are refused.
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
) -> Result<OwnedFd, Errno> {
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    let mut tries = 0;
    loop {
        match rfs::openat2(
            root,
            path,
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            // EAGAIN: a concurrent rename raced the lookup; retry a little.
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

pub(super) fn is_dir(st: &rfs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Removes `name` in `dirfd` if it exists, recursively if it is a directory.
/// A symlink is removed itself, never followed. Returns whether something
/// was there.
pub(super) fn remove_existing(dirfd: BorrowedFd<'_>, name: &CStr) -> Result<bool, WalkError> {
    match rfs::unlinkat(dirfd, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            // EPERM: some filesystems report it for unlink(dir).
            remove_tree(dirfd, name)?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// Iterative `rm -rf` of `name` in `dirfd`, one directory fd per level,
/// never following symlinks.
pub(super) fn remove_tree(dirfd: BorrowedFd<'_>, name: &CStr) -> Result<(), WalkError> {
    let fd = match rfs::openat(dirfd, name, dir_read_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
            return match rfs::unlinkat(dirfd, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    struct Frame {
        dir: Dir,
        name: CString,
        retries: u8,
    }
    let mut stack = vec![Frame {
        dir: Dir::new(fd)?,
        name: name.to_owned(),
        retries: 0,
    }];
    while let Some(top) = stack.last_mut() {
        match top.dir.read() {
            Some(Ok(ent)) => {
                let n = ent.file_name();
                if n.to_bytes() == b"." || n.to_bytes() == b".." {
                    continue;
                }
                let fd = top.dir.fd()?;
                if ent.file_type() != FileType::Directory {
                    match rfs::unlinkat(fd, n, AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => continue,
                        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let child = match rfs::openat(fd, n, dir_read_flags(), Mode::empty()) {
                    Ok(c) => c,
                    Err(Errno::NOENT) => continue,
                    Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                        match rfs::unlinkat(fd, n, AtFlags::empty()) {
                            Ok(()) | Err(Errno::NOENT) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                let name = n.to_owned();
                if stack.len() >= MAX_WALK_DEPTH {
                    return Err(WalkError::TooDeep);
                }
                stack.push(Frame {
                    dir: Dir::new(child)?,
                    name,
                    retries: 0,
                });
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                let Some(mut frame) = stack.pop() else { break };
                let parent = match stack.last() {
                    Some(f) => f.dir.fd()?,
                    None => dirfd,
                };
                match rfs::unlinkat(parent, &frame.name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    // readdir may miss entries removed under it on some
                    // filesystems: rescan a few times.
                    Err(Errno::NOTEMPTY) if frame.retries < 3 => {
                        frame.dir.rewind();
                        frame.retries += 1;
                        stack.push(frame);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// chmod of `name` in `dirfd` without following a symlink, for nodes that
/// must not be opened (devices, fifos). Uses `fchmodat2(AT_SYMLINK_NOFOLLOW)`
/// (Linux 6.6+), else chmod through an O_PATH|O_NOFOLLOW descriptor.
pub(super) fn chmod_nofollow(dirfd: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: fchmodat2 reads only its arguments: `dirfd` is an open
    // descriptor borrowed for the whole call and `name` is a NUL-terminated
    // string that outlives it; no memory is written.
    let r = unsafe {
        libc::syscall(
            SYS_FCHMODAT2,
            dirfd.as_raw_fd(),
            name.as_ptr(),
            mode as libc::c_uint,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let errno = Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO);
    if errno != Errno::NOSYS {
        return Err(errno);
    }
    let fd = rfs::openat(
        dirfd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rfs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(Errno::LOOP);
    }
    // The /proc magic link names exactly the inode `fd` refers to.
    let proc = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    rfs::chmod(proc.as_str(), Mode::from_raw_mode(mode))
}
