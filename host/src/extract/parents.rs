//! Where an entry goes: its parent directory resolved beneath the layer
//! root (and created where missing), and what stands at its name removed.

use std::ffi::CStr;
use std::rc::Rc;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use super::errors::{cstr, input, os_err, walk_err};
use super::fsops::{self, dir_path_flags, dir_read_flags, open_in_root};
use super::{Applier, ApplyError};

/// Symlinks followed while creating one entry's missing parents (as the
/// kernel's MAXSYMLINKS).
const MAX_SYMLINK_HOPS: u32 = 40;
/// Path components processed while creating one entry's missing parents.
const MAX_RESOLVE_STEPS: usize = 4096;

impl Applier<'_> {
    /// The directory an entry goes into, created (0755, 0:0) where missing.
    pub(super) fn parent_fd(
        &mut self,
        parent: &[u8],
        disp: &str,
    ) -> Result<Rc<OwnedFd>, ApplyError> {
        if let Some((p, fd)) = &self.cache {
            if p == parent {
                return Ok(fd.clone());
            }
        }
        self.cache = None;
        let fd = self.ensure_dir(parent, disp)?;
        let fd = Rc::new(fd);
        self.cache = Some((parent.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Opens directory `path` (resolved in root), creating what is missing.
    fn ensure_dir(&mut self, path: &[u8], disp: &str) -> Result<OwnedFd, ApplyError> {
        match open_in_root(self.root, path, dir_path_flags()) {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) => self.create_dirs(path, disp),
            Err(Errno::NOTDIR) => Err(input(disp, "a parent directory is not a directory")),
            Err(Errno::LOOP) => Err(input(disp, "too many symlinks in a parent directory")),
            Err(e) => Err(os_err(disp, "opening parent directory", e)),
        }
    }

    /// Walks `path` component by component with the semantics of
    /// RESOLVE_IN_ROOT (symlinks resolve as if the root were `/`, `..` stops
    /// at the root), creating missing directories (0755, 0:0) on the way,
    /// including where a dangling symlink points (catalogue B9). Every step
    /// is an O_NOFOLLOW open relative to a directory fd we hold, and `..`
    /// pops our own stack, so the walk cannot leave the root.
    fn create_dirs(&mut self, path: &[u8], disp: &str) -> Result<OwnedFd, ApplyError> {
        let root = rfs::openat(self.root, c".", dir_path_flags(), Mode::empty())
            .map_err(|e| os_err(disp, "opening layer root", e))?;
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut pending: Vec<Vec<u8>> = path
            .split(|b| *b == b'/')
            .rev()
            .map(<[u8]>::to_vec)
            .collect();
        let (mut hops, mut steps) = (0u32, 0usize);
        while let Some(comp) = pending.pop() {
            steps += 1;
            if steps > MAX_RESOLVE_STEPS {
                return Err(input(
                    disp,
                    "too many path components while resolving parents",
                ));
            }
            match &comp[..] {
                b"" | b"." => continue,
                b".." => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            if stack.len() >= fsops::MAX_WALK_DEPTH {
                return Err(input(disp, "parent directories are nested too deeply"));
            }
            let cur = stack.last().unwrap_or(&root).as_fd();
            let c = cstr(disp, &comp)?;
            match rfs::statat(cur, &c, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {
                        let fd = rfs::openat(
                            cur,
                            &c,
                            dir_path_flags() | OFlags::NOFOLLOW,
                            Mode::empty(),
                        )
                        .map_err(|e| os_err(disp, "opening parent directory", e))?;
                        stack.push(fd);
                    }
                    FileType::Symlink => {
                        hops += 1;
                        if hops > MAX_SYMLINK_HOPS {
                            return Err(input(disp, "too many symlinks in a parent directory"));
                        }
                        let t = rfs::readlinkat(cur, &c, Vec::new())
                            .map_err(|e| os_err(disp, "reading parent symlink", e))?
                            .into_bytes();
                        if t.starts_with(b"/") {
                            stack.clear();
                        }
                        pending.extend(t.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
                    }
                    _ => return Err(input(disp, "a parent directory is not a directory")),
                },
                Err(Errno::NOENT) => {
                    rfs::mkdirat(cur, &c, Mode::from_raw_mode(0o700))
                        .map_err(|e| os_err(disp, "creating parent directory", e))?;
                    let fd = rfs::openat(cur, &c, dir_read_flags(), Mode::empty())
                        .map_err(|e| os_err(disp, "opening new parent directory", e))?;
                    rfs::fchown(&fd, Some(Uid::ROOT), Some(Gid::ROOT))
                        .and_then(|()| rfs::fchmod(&fd, Mode::from_raw_mode(0o755)))
                        .map_err(|e| os_err(disp, "setting up new parent directory", e))?;
                    stack.push(fd);
                }
                Err(e) => return Err(os_err(disp, "inspecting parent directory", e)),
            }
        }
        Ok(stack.pop().unwrap_or(root))
    }

    pub(super) fn remove_existing(
        &self,
        pfd: BorrowedFd<'_>,
        name: &CStr,
        disp: &str,
    ) -> Result<bool, ApplyError> {
        fsops::remove_existing(pfd, name).map_err(|e| walk_err(disp, "removing existing entry", e))
    }

    /// Runs `create` (an exclusive, no-follow creation of `name`); if the
    /// name is taken, removes what is there (recursively, unfollowed) and
    /// runs it once more.
    pub(super) fn create_fresh<T>(
        &self,
        pfd: BorrowedFd<'_>,
        name: &CStr,
        disp: &str,
        what: &str,
        create: impl Fn() -> Result<T, Errno>,
    ) -> Result<T, ApplyError> {
        match create() {
            Err(Errno::EXIST) => {
                self.remove_existing(pfd, name, disp)?;
                create().map_err(|e| os_err(disp, what, e))
            }
            r => r.map_err(|e| os_err(disp, what, e)),
        }
    }
}
