//! Each kind of entry created beneath its parent: regular files (their data
//! follows from the stream), directories, symlinks, hardlinks, and device
//! nodes and FIFOs, all without following a symlink at the final name.

use std::ffi::CStr;

use rustix::fd::AsFd;
use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use super::errors::{cstr, input, os_err};
use super::fsops::{self, dir_path_flags, dir_read_flags, is_dir, open_in_root};
use super::meta::Meta;
use super::names::{show, split_last};
use super::view::{Entry, EntryKind};
use super::{Applier, ApplyError};

/// A regular file whose data is being copied from the stream.
pub(super) struct OpenFile {
    pub(super) file: std::fs::File,
    /// Stream offsets: the next byte to write, and the end of the data.
    pub(super) next: u64,
    pub(super) end: u64,
    pub(super) entry: Entry,
    pub(super) disp: String,
}

impl Applier<'_> {
    /// Creates a regular file; its data follows from the stream.
    pub(super) fn regular_begin(&mut self, e: Entry, disp: String) -> Result<OpenFile, ApplyError> {
        self.stats.bytes = self.stats.bytes.saturating_add(e.data_size);
        self.mark_written(&e.path);
        let (parent, name) = split_last(&e.path);
        let name = cstr(&disp, name)?;
        let pfd = self.parent_fd(parent, &disp)?;
        // O_EXCL|O_NOFOLLOW: always a fresh inode (never truncate one that
        // another name still links to), never through a symlink.
        let fd = self.create_fresh(pfd.as_fd(), &name, &disp, "creating file", || {
            rfs::openat(
                pfd.as_fd(),
                &name,
                OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC
                    | OFlags::NOCTTY,
                Mode::from_raw_mode(0o600),
            )
        })?;
        Ok(OpenFile {
            file: std::fs::File::from(fd),
            next: e.data_offset,
            end: e.data_offset.saturating_add(e.data_size),
            entry: e,
            disp,
        })
    }

    /// A regular file's data is all written: its metadata follows.
    pub(super) fn regular_done(&mut self, f: OpenFile) -> Result<(), ApplyError> {
        let meta = Meta::of(&f.entry);
        let disp = &f.disp;
        self.set_owner_mode(f.file.as_fd(), &meta, disp)?;
        // After chown (which drops security.capability).
        self.set_xattrs(f.file.as_fd(), &f.entry.xattrs, disp)?;
        rfs::futimens(&f.file, &meta.times()).map_err(|e| os_err(disp, "setting mtime", e))?;
        self.stats.files += 1;
        Ok(())
    }

    pub(super) fn directory(
        &mut self,
        path: &[u8],
        name: &CStr,
        meta: &Meta,
        xattrs: &[(String, Vec<u8>)],
        disp: &str,
    ) -> Result<(), ApplyError> {
        self.mark_written(path);
        let pfd = self.parent_fd(split_last(path).0, disp)?;
        let existing = match rfs::statat(pfd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir(&st) => Some(st),
            Ok(_) => {
                self.remove_existing(pfd.as_fd(), name, disp)?;
                None
            }
            Err(Errno::NOENT) => None,
            Err(e) => return Err(os_err(disp, "inspecting existing entry", e)),
        };
        if existing.is_none() {
            rfs::mkdirat(pfd.as_fd(), name, Mode::from_raw_mode(0o700))
                .map_err(|e| os_err(disp, "creating directory", e))?;
        }
        let fd = rfs::openat(pfd.as_fd(), name, dir_read_flags(), Mode::empty())
            .map_err(|e| os_err(disp, "opening directory", e))?;
        let same = existing.is_some_and(|st| {
            st.st_uid == meta.uid && st.st_gid == meta.gid && st.st_mode & 0o7777 == meta.mode
        });
        if !same {
            // (Skipped when unchanged: on overlayfs it would copy the dir up.)
            self.set_owner_mode(fd.as_fd(), meta, disp)?;
        }
        self.set_xattrs(fd.as_fd(), xattrs, disp)?;
        self.defer_dir_time(path, meta.mtime)?;
        self.stats.dirs += 1;
        Ok(())
    }

    pub(super) fn symlink(
        &mut self,
        path: &[u8],
        name: &CStr,
        target: &[u8],
        meta: &Meta,
        disp: &str,
    ) -> Result<(), ApplyError> {
        self.mark_written(path);
        let pfd = self.parent_fd(split_last(path).0, disp)?;
        self.create_fresh(pfd.as_fd(), name, disp, "creating symlink", || {
            rfs::symlinkat(target, pfd.as_fd(), name)
        })?;
        rfs::chownat(
            pfd.as_fd(),
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| os_err(disp, "setting symlink owner", e))?;
        rfs::utimensat(pfd.as_fd(), name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| os_err(disp, "setting symlink mtime", e))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    pub(super) fn hardlink(
        &mut self,
        path: &[u8],
        name: &CStr,
        target: &[u8],
        disp: &str,
    ) -> Result<(), ApplyError> {
        let tdisp = show(target);
        if target.is_empty() {
            return Err(input(disp, "hardlink to the layer root"));
        }
        let missing = || input(disp, format!("hardlink target `{tdisp}` does not exist"));
        let (tparent, tname) = split_last(target);
        let ctname = cstr(disp, tname)?;
        let tpfd = match open_in_root(self.root, tparent, dir_path_flags()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Err(missing()),
            Err(e) => return Err(os_err(disp, "resolving hardlink target", e)),
        };
        let tst = match rfs::statat(&tpfd, &ctname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(os_err(disp, "inspecting hardlink target", e)),
        };
        if is_dir(&tst) {
            return Err(input(
                disp,
                format!("hardlink target `{tdisp}` is a directory"),
            ));
        }
        self.mark_written(path);
        let pfd = self.parent_fd(split_last(path).0, disp)?;
        match rfs::statat(pfd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino => {
                // Already this inode (including a link to itself).
                self.stats.hardlinks += 1;
                return Ok(());
            }
            Ok(_) => {
                self.remove_existing(pfd.as_fd(), name, disp)?;
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(os_err(disp, "inspecting existing entry", e)),
        }
        // flags 0: a symlink target is linked itself, not followed.
        match rfs::linkat(&tpfd, &ctname, pfd.as_fd(), name, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::NOENT) => return Err(missing()),
            Err(Errno::MLINK) => return Err(input(disp, "too many hardlinks to one file")),
            // Both ends are beneath one root: EXDEV is Landlock ABI 1, which
            // denies every link across directories (REFER is ABI 2), not
            // the image's fault.
            Err(Errno::XDEV) => {
                return Err(ApplyError::Io {
                    context: format!(
                        "`{disp}`: creating hardlink across directories (Landlock ABI 1 denies it; Linux 5.19+ allows it)"
                    ),
                    source: Errno::XDEV.into(),
                })
            }
            Err(e) => return Err(os_err(disp, "creating hardlink", e)),
        }
        self.stats.hardlinks += 1;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn node(
        &mut self,
        kind: EntryKind,
        dev: rfs::Dev,
        path: &[u8],
        name: &CStr,
        meta: &Meta,
        disp: &str,
    ) -> Result<(), ApplyError> {
        let ftype = match kind {
            EntryKind::CharDevice => FileType::CharacterDevice,
            EntryKind::BlockDevice => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        self.mark_written(path);
        let pfd = self.parent_fd(split_last(path).0, disp)?;
        self.create_fresh(pfd.as_fd(), name, disp, "creating special file", || {
            rfs::mknodat(pfd.as_fd(), name, ftype, Mode::from_raw_mode(0o600), dev)
        })?;
        rfs::chownat(
            pfd.as_fd(),
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| os_err(disp, "setting owner", e))?;
        fsops::chmod_nofollow(pfd.as_fd(), name, meta.mode)
            .map_err(|e| os_err(disp, "setting mode", e))?;
        rfs::utimensat(pfd.as_fd(), name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| os_err(disp, "setting mtime", e))?;
        // Special files count as files (ApplyStats has no separate counter).
        self.stats.files += 1;
        Ok(())
    }
}
