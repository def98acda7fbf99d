//! Whiteouts (OCI `.wh.NAME`: a lower layer's entry removed) and opaque
//! directories (`.wh..wh..opq`: everything below that this layer did not
//! write removed), walked iteratively and never through a symlink.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode};
use rustix::io::Errno;

use super::errors::{check_bug, cstr, os_err, walk_err};
use super::fsops::{self, dir_path_flags, dir_read_flags, is_dir, open_in_root, WalkError};
use super::names::{join, show, split_last};
use super::{Applier, ApplyError};

impl Applier<'_> {
    /// `DIR/.wh.NAME` (given as `DIR/NAME`): removes NAME from the lower
    /// layers.
    pub(super) fn whiteout(&mut self, vpath: &[u8], disp: &str) -> Result<(), ApplyError> {
        if vpath.is_empty() {
            return Err(check_bug("gave a whiteout of the layer root".into()));
        }
        let (parent, victim) = split_last(vpath);
        let k = self.key(vpath);
        if self.written.contains(&k) || self.ancestors.contains(&k) {
            return Err(ApplyError::Input(format!(
                "whiteout and entry for `{}` in the same layer",
                show(vpath)
            )));
        }
        self.mark_dir(parent);
        self.cache = None;
        self.stats.whiteouts += 1;
        let pfd = match open_in_root(self.root, parent, dir_path_flags()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(os_err(disp, "opening whiteout directory", e)),
        };
        let cvictim = cstr(disp, victim)?;
        self.remove_existing(pfd.as_fd(), &cvictim, disp)?;
        Ok(())
    }

    /// `D/.wh..wh..opq`: removes everything in D this layer did not write,
    /// whether the marker comes before or after D's entries.
    pub(super) fn opaque(&mut self, dir: &[u8], disp: &str) -> Result<(), ApplyError> {
        self.stats.opaque_dirs += 1;
        self.mark_dir(dir);
        // Already emptied of lower content (this dir or an ancestor): since
        // then only this layer's own entries can have appeared below it.
        let mut p = dir;
        loop {
            if self.opaque_done.contains(&self.key(p)) {
                return Ok(());
            }
            if p.is_empty() {
                break;
            }
            p = split_last(p).0;
        }
        self.cache = None;
        let dfd = if dir.is_empty() {
            rfs::openat(self.root, c".", dir_read_flags(), Mode::empty())
                .map_err(|e| os_err(disp, "opening layer root", e))?
        } else {
            let (up, name) = split_last(dir);
            let upfd = match open_in_root(self.root, up, dir_path_flags()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(()),
                Err(e) => return Err(os_err(disp, "opening opaque directory", e)),
            };
            let cname = cstr(disp, name)?;
            // The opaque directory itself is never followed if a symlink.
            match rfs::openat(&upfd, &cname, dir_read_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(()),
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                    self.note(
                        disp,
                        "whiteouts",
                        "skip",
                        "opaque marker in a non-directory ignored".into(),
                    );
                    return Ok(());
                }
                Err(e) => return Err(os_err(disp, "opening opaque directory", e)),
            }
        };
        self.opaque_walk(dfd, dir, disp)?;
        let k = self.key(dir);
        self.opaque_done.insert(k);
        Ok(())
    }

    fn opaque_walk(&mut self, dfd: OwnedFd, base: &[u8], disp: &str) -> Result<(), ApplyError> {
        let what = "applying opaque whiteout";
        let e = |e: Errno| os_err(disp, what, e);
        struct Frame {
            dir: Dir,
            path: Vec<u8>,
        }
        let mut stack = vec![Frame {
            dir: Dir::new(dfd).map_err(e)?,
            path: base.to_vec(),
        }];
        loop {
            let depth = stack.len();
            let Some(top) = stack.last_mut() else { break };
            let ent = match top.dir.read() {
                None => {
                    stack.pop();
                    continue;
                }
                Some(r) => r.map_err(e)?,
            };
            let n = ent.file_name();
            if n.to_bytes() == b"." || n.to_bytes() == b".." {
                continue;
            }
            let child = join(&top.path, n.to_bytes());
            let fd = top.dir.fd().map_err(e)?;
            let child_is_dir = match ent.file_type() {
                FileType::Directory => true,
                FileType::Unknown => match rfs::statat(fd, n, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => is_dir(&st),
                    Err(Errno::NOENT) => continue,
                    Err(x) => return Err(e(x)),
                },
                _ => false,
            };
            let k = self.key(&child);
            if !child_is_dir {
                if !self.written.contains(&k) {
                    match rfs::unlinkat(fd, n, AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(x) => return Err(e(x)),
                    }
                }
                continue;
            }
            if self.opaque_done.contains(&k) {
                continue;
            }
            if self.written.contains(&k) || self.ancestors.contains(&k) {
                if depth >= fsops::MAX_WALK_DEPTH {
                    return Err(walk_err(disp, what, WalkError::TooDeep));
                }
                let cfd = rfs::openat(fd, n, dir_read_flags(), Mode::empty()).map_err(e)?;
                stack.push(Frame {
                    dir: Dir::new(cfd).map_err(e)?,
                    path: child,
                });
            } else {
                fsops::remove_tree(fd, n).map_err(|x| walk_err(disp, what, x))?;
            }
        }
        Ok(())
    }
}
