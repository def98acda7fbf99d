//! An entry's metadata: ownership and mode, xattrs (a filesystem's refusal
//! sorted into the entry's fault or the host's), and directory mtimes,
//! deferred to the end of the layer.

use std::io;

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::errors::{cstr, input, os_err, space_is_short};
use super::fsops::{dir_path_flags, is_dir, open_in_root};
use super::names::{show, split_last};
use super::view::Entry;
use super::{Applier, ApplyError};

/// Memory for deferred directory mtimes before they are applied early.
const DIR_TIMES_MAX_BYTES: usize = 64 << 20;

/// Ownership, permissions and mtime of an entry.
pub(super) struct Meta {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mode: u32,
    pub(super) mtime: Timespec,
}

impl Meta {
    pub(super) fn of(e: &Entry) -> Meta {
        Meta {
            uid: e.uid,
            gid: e.gid,
            mode: e.mode & 0o7777,
            mtime: Timespec {
                tv_sec: e.mtime_sec,
                tv_nsec: i64::from(e.mtime_nsec.min(999_999_999)),
            },
        }
    }

    pub(super) fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

impl Applier<'_> {
    pub(super) fn set_owner_mode(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        disp: &str,
    ) -> Result<(), ApplyError> {
        // chown first: it clears setuid/setgid, which chmod then restores.
        rfs::fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| os_err(disp, "setting owner", e))?;
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(|e| os_err(disp, "setting mode", e))
    }

    pub(super) fn set_xattrs(
        &mut self,
        fd: BorrowedFd<'_>,
        xattrs: &[(String, Vec<u8>)],
        disp: &str,
    ) -> Result<(), ApplyError> {
        for (k, v) in xattrs {
            let ck = cstr(disp, k.as_bytes())?;
            match rfs::fsetxattr(fd, &ck, v, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::OPNOTSUPP) => self.note(
                    disp,
                    "xattrs",
                    "skip",
                    format!(
                        "xattr `{}` not supported by this filesystem",
                        show(k.as_bytes())
                    ),
                ),
                // Too big for this filesystem (ext4 keeps a file's xattrs
                // in one block: ENOSPC, however much space is free): the
                // entry's fault, not the host's. A full filesystem also says
                // ENOSPC, so that stays an environment error when space is
                // short.
                Err(e @ (Errno::NOSPC | Errno::TOOBIG | Errno::RANGE))
                    if e != Errno::NOSPC || !space_is_short(fd) =>
                {
                    return Err(input(
                        disp,
                        format!(
                            "xattr `{}` ({} bytes) does not fit this filesystem: {}",
                            show(k.as_bytes()),
                            v.len(),
                            io::Error::from(e)
                        ),
                    ));
                }
                Err(e) => return Err(os_err(disp, "setting xattr", e)),
            }
        }
        Ok(())
    }

    /// Remembers a directory's mtime for the end of the layer. Should a
    /// hostile layer make the list huge, it is applied early to bound memory
    /// (those mtimes may then be bumped by later children).
    pub(super) fn defer_dir_time(
        &mut self,
        path: &[u8],
        mtime: Timespec,
    ) -> Result<(), ApplyError> {
        self.dir_times_bytes += path.len() + 48;
        self.dir_times.push((path.to_vec(), mtime));
        if self.dir_times_bytes > DIR_TIMES_MAX_BYTES {
            self.apply_dir_times()?;
        }
        Ok(())
    }

    /// Applies directory mtimes, deepest first, without following symlinks.
    pub(super) fn apply_dir_times(&mut self) -> Result<(), ApplyError> {
        self.cache = None;
        self.dir_times_bytes = 0;
        let mut times = std::mem::take(&mut self.dir_times);
        // Deepest first; siblings adjacent so the parent fd is reused. The
        // sort is stable, so of duplicates the later entry wins.
        times.sort_by(|(a, _), (b, _)| {
            let depth = |p: &[u8]| p.iter().filter(|c| **c == b'/').count();
            depth(b)
                .cmp(&depth(a))
                .then_with(|| split_last(a).0.cmp(split_last(b).0))
        });
        let mut cache: Option<(Vec<u8>, OwnedFd)> = None;
        for (path, mtime) in times {
            let (parent, name) = split_last(&path);
            let disp = show(&path);
            if cache.as_ref().is_none_or(|(p, _)| p != parent) {
                cache = match open_in_root(self.root, parent, dir_path_flags()) {
                    Ok(fd) => Some((parent.to_vec(), fd)),
                    Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
                    Err(e) => return Err(os_err(&disp, "setting directory mtime", e)),
                };
            }
            let Some((_, pfd)) = &cache else { continue };
            let cname = cstr(&disp, name)?;
            match rfs::statat(pfd, &cname, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if is_dir(&st) => {}
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(os_err(&disp, "setting directory mtime", e)),
            }
            let ts = Timestamps {
                last_access: mtime,
                last_modification: mtime,
            };
            rfs::utimensat(pfd, &cname, &ts, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| os_err(&disp, "setting directory mtime", e))?;
        }
        Ok(())
    }
}
