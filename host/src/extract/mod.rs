//! Applies one container-image layer (attacker-controlled bytes) onto a
//! directory, normally the mounted overlayfs view of the layer's parents.
//!
//! The host never parses the tar itself: the decompressed stream is fed to
//! the tar check (a WebAssembly guest, [`view::TarCheck`]), which returns
//! the entries it found with the policy applied and where each file's data
//! lies in the stream; the host copies those data spans itself, so what was
//! checked is exactly what is written. Every filesystem change is made
//! relative to the layer root's directory fd: parent directories are
//! resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` (symlinks
//! resolve as if the root were `/`, so nothing can escape it), and the final
//! component is created, removed or linked with `*at` calls that never
//! follow a symlink. Metadata is set on descriptors opened `O_NOFOLLOW` or
//! with `AT_SYMLINK_NOFOLLOW`, never through a path that could be swapped.
//!
//! Whiteouts follow the OCI image spec; on an overlay mount the removals made
//! here become overlay whiteouts in the upper directory.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CStr, CString};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::rc::Rc;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{
    self as rfs, AtFlags, Dir, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

pub(crate) mod fsops;
mod names;
#[cfg(feature = "native-check")]
pub mod native;
#[cfg(test)]
mod tests;
pub mod view;

use fsops::{dir_path_flags, dir_read_flags, is_dir, open_in_root, WalkError};
use names::{check_normalized, join, show, split_last};
use view::{CheckError, Decision, Entry, EntryKind, TarCheck};

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub bytes: u64,
    /// The tar check's policy decisions and the host's own (capped at
    /// [`DECISIONS_CAP`] in full; beyond that counted per rule).
    pub decisions: Vec<Decision>,
    /// Decisions beyond the cap, per rule.
    pub decisions_dropped: Vec<(String, u64)>,
    /// Time spent in the tar check (the guest), in nanoseconds.
    pub check_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The tar check rejected the layer: a policy rule or malformed input.
    #[error("{0}")]
    Check(CheckError),
    /// The layer is bad or hostile in a way the host found while applying it
    /// (a hardlink to a missing file, a parent that is a file): one line,
    /// names the entry (sanitized), no host paths.
    #[error("{0}")]
    Input(String),
    /// Environment failure (ENOSPC, EIO...) — retryable; the message names
    /// only the in-layer path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Decompressed bytes read (and fed to the check) at a time.
const CHUNK: usize = 1 << 20;
/// Memory for deferred directory mtimes before they are applied early.
const DIR_TIMES_MAX_BYTES: usize = 64 << 20;
/// Decisions kept in full per layer.
pub const DECISIONS_CAP: usize = 1000;
/// Symlinks followed while creating one entry's missing parents (as the
/// kernel's MAXSYMLINKS).
const MAX_SYMLINK_HOPS: u32 = 40;
/// Path components processed while creating one entry's missing parents.
const MAX_RESOLVE_STEPS: usize = 4096;

/// Entries the tar check has returned in this process (the worker's
/// progress; see `crate::progress`).
pub static ENTRIES_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Applies one uncompressed layer tar stream onto the directory `root` (an
/// O_DIRECTORY fd), as `check` (a fresh tar check session in layer mode)
/// sees it. Every byte of `layer` is read (the caller hashes the stream).
pub fn apply_layer<R: Read>(
    root: BorrowedFd<'_>,
    mut layer: R,
    check: &mut dyn TarCheck,
) -> Result<ApplyStats, ApplyError> {
    let mut ap = Applier::new(root);
    let mut buf = vec![0u8; CHUNK];
    let mut base: u64 = 0;
    let mut want: u64 = 0;
    let mut queue: VecDeque<Entry> = VecDeque::new();
    let mut file: Option<OpenFile> = None;
    loop {
        let n = read_full(&mut layer, &mut buf).map_err(|e| match e.kind() {
            // The decoder's verdict on the bytes (or the decompression cap).
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                ApplyError::Input(format!("corrupt layer data after `{}`: {e}", ap.last))
            }
            _ => ApplyError::Io {
                context: format!("reading layer after `{}`", ap.last),
                source: e,
            },
        })?;
        if n == 0 {
            break;
        }
        let end = base + n as u64;
        if want < end {
            if want < base {
                return Err(check_bug(format!("asked for offset {want} after {base}")));
            }
            let from = (want - base) as usize;
            let t = std::time::Instant::now();
            let p = check.feed(want, &buf[from..n]);
            ap.stats.check_ns += t.elapsed().as_nanos() as u64;
            let p = p.map_err(ApplyError::Check)?;
            if p.want < end {
                return Err(check_bug(format!("wants offset {} below {end}", p.want)));
            }
            want = p.want;
            ap.decisions(p.decisions);
            ENTRIES_SEEN.fetch_add(p.entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
            queue.extend(p.entries);
        }
        ap.consume(&buf[..n], base, &mut queue, &mut file)?;
        base = end;
    }
    let t = std::time::Instant::now();
    let p = check.finish(base);
    ap.stats.check_ns += t.elapsed().as_nanos() as u64;
    let p = p.map_err(ApplyError::Check)?;
    ap.decisions(p.decisions);
    queue.extend(p.entries);
    ap.consume(&[], base, &mut queue, &mut file)?;
    if file.is_some() || !queue.is_empty() {
        return Err(check_bug("returned data past the end of the stream".into()));
    }
    ap.finish()
}

/// The guest broke its contract: a bug, not the input's fault.
fn check_bug(msg: String) -> ApplyError {
    ApplyError::Check(CheckError::Host(format!("tar check {msg}")))
}

/// Fills `buf` as far as the stream allows; 0 only at its end.
pub(crate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A regular file whose data is being copied from the stream.
struct OpenFile {
    file: std::fs::File,
    /// Stream offsets: the next byte to write, and the end of the data.
    next: u64,
    end: u64,
    entry: Entry,
    disp: String,
}

/// Ownership, permissions and mtime of an entry.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Timespec,
}

impl Meta {
    fn of(e: &Entry) -> Meta {
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

    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

struct Applier<'r> {
    root: BorrowedFd<'r>,
    stats: ApplyStats,
    /// Keys of paths this layer created or wrote (entries).
    written: HashSet<u128>,
    /// Keys of directories that are ancestors of written paths, opaque dirs,
    /// and parents of whiteouts: they exist "in this layer".
    ancestors: HashSet<u128>,
    /// Keys of directories already emptied of lower content by an opaque
    /// marker in this layer.
    opaque_done: HashSet<u128>,
    hash: (RandomState, RandomState),
    /// Directory mtimes, applied at the end (children change them).
    dir_times: Vec<(Vec<u8>, Timespec)>,
    dir_times_bytes: usize,
    /// The last resolved parent directory: (path, fd).
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Sanitised path of the last entry, for stream errors.
    last: String,
}

fn input(disp: &str, msg: impl std::fmt::Display) -> ApplyError {
    ApplyError::Input(format!("`{disp}`: {msg}"))
}

/// Errors of the environment (retryable) versus errors the layer caused.
fn os_err(disp: &str, what: &str, e: Errno) -> ApplyError {
    match e {
        Errno::NOSPC
        | Errno::DQUOT
        | Errno::IO
        | Errno::NOMEM
        | Errno::MFILE
        | Errno::NFILE
        | Errno::ROFS
        | Errno::AGAIN
        | Errno::INTR
        | Errno::BUSY
        | Errno::STALE
        | Errno::TIMEDOUT
        | Errno::PERM
        | Errno::ACCESS
        | Errno::NOSYS
        | Errno::FBIG
        | Errno::BADF
        | Errno::FAULT => ApplyError::Io {
            context: format!("`{disp}`: {what}"),
            source: e.into(),
        },
        _ => input(disp, format!("{what}: {}", io::Error::from(e))),
    }
}

/// Whether the filesystem holding `fd` has less than 64 MiB (or 1% of its
/// blocks) free: then an ENOSPC may be the host's, not the entry's.
fn space_is_short(fd: BorrowedFd<'_>) -> bool {
    match rfs::fstatvfs(fd) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            free < (64 << 20) || st.f_bavail < st.f_blocks / 100
        }
        Err(_) => true,
    }
}

fn walk_err(disp: &str, what: &str, e: WalkError) -> ApplyError {
    match e {
        WalkError::Os(e) => os_err(disp, what, e),
        WalkError::TooDeep => input(
            disp,
            format!(
                "{what}: directory tree is more than {} levels deep",
                fsops::MAX_WALK_DEPTH
            ),
        ),
    }
}

fn cstr(disp: &str, b: &[u8]) -> Result<CString, ApplyError> {
    CString::new(b).map_err(|_| input(disp, "name contains a NUL byte"))
}

impl<'r> Applier<'r> {
    fn new(root: BorrowedFd<'r>) -> Self {
        Applier {
            root,
            stats: ApplyStats::default(),
            written: HashSet::new(),
            ancestors: HashSet::new(),
            opaque_done: HashSet::new(),
            hash: (RandomState::new(), RandomState::new()),
            dir_times: Vec::new(),
            dir_times_bytes: 0,
            cache: None,
            last: String::from("<start of layer>"),
        }
    }

    /// 128-bit keyed hash of a normalised path (keeps the per-layer sets
    /// small for millions of entries; keys are random per call so collisions
    /// cannot be aimed at).
    fn key(&self, p: &[u8]) -> u128 {
        (u128::from(self.hash.0.hash_one(p)) << 64) | u128::from(self.hash.1.hash_one(p))
    }

    fn decisions(&mut self, ds: Vec<Decision>) {
        for d in ds {
            self.decide(d);
        }
    }

    fn decide(&mut self, d: Decision) {
        if self.stats.decisions.len() < DECISIONS_CAP {
            self.stats.decisions.push(d);
        } else if let Some(c) = self
            .stats
            .decisions_dropped
            .iter_mut()
            .find(|(r, _)| *r == d.rule)
        {
            c.1 += 1;
        } else {
            self.stats.decisions_dropped.push((d.rule, 1));
        }
    }

    /// A decision of the host's own (something it could not apply here).
    fn note(&mut self, disp: &str, rule: &str, action: &str, detail: String) {
        self.decide(Decision {
            path: disp.to_string(),
            rule: rule.to_string(),
            action: action.to_string(),
            detail,
        });
    }

    /// Applies the entries in `queue` and copies the data spans that lie in
    /// `chunk` (stream bytes from `base`); stops at a file whose data goes
    /// on past the chunk.
    fn consume(
        &mut self,
        chunk: &[u8],
        base: u64,
        queue: &mut VecDeque<Entry>,
        file: &mut Option<OpenFile>,
    ) -> Result<(), ApplyError> {
        let end = base + chunk.len() as u64;
        loop {
            if let Some(f) = file {
                if f.next < base {
                    return Err(check_bug(format!(
                        "gave a data span at {} before {base}",
                        f.next
                    )));
                }
                let to = f.end.min(end);
                if f.next < to {
                    let a = (f.next - base) as usize;
                    let b = (to - base) as usize;
                    f.file.write_all(&chunk[a..b]).map_err(|e| ApplyError::Io {
                        context: format!("`{}`: writing file", f.disp),
                        source: e,
                    })?;
                    f.next = to;
                }
                if f.next < f.end {
                    return Ok(());
                }
                let f = file.take().expect("checked above");
                self.regular_done(f)?;
            }
            let Some(e) = queue.pop_front() else {
                return Ok(());
            };
            self.stats.entries += 1;
            let disp = show(&e.path);
            self.last = disp.clone();
            check_normalized(&e.path).map_err(|m| check_bug(format!("gave path `{disp}`: {m}")))?;
            if e.kind == EntryKind::Regular {
                if e.data_size > 0 && e.data_offset < base {
                    return Err(check_bug(format!(
                        "gave `{disp}` data before the stream position"
                    )));
                }
                *file = Some(self.regular_begin(e, disp)?);
                continue;
            }
            self.entry(e, &disp)?;
        }
    }

    fn entry(&mut self, e: Entry, disp: &str) -> Result<(), ApplyError> {
        let meta = Meta::of(&e);
        let path = &e.path[..];
        match e.kind {
            EntryKind::Whiteout => return self.whiteout(path, disp),
            EntryKind::Opaque => return self.opaque(path, disp),
            _ => {}
        }
        if path.is_empty() {
            return Err(check_bug("gave an entry for the layer root".into()));
        }
        let name = cstr(disp, split_last(path).1)?;
        match e.kind {
            EntryKind::Directory => self.directory(path, &name, &meta, &e.xattrs, disp),
            EntryKind::Symlink => {
                let target = e.link.as_deref().unwrap_or_default();
                if target.is_empty() {
                    return Err(check_bug(format!("gave symlink `{disp}` no target")));
                }
                self.symlink(path, &name, target, &meta, disp)
            }
            EntryKind::Hardlink => {
                let target = e.link.as_deref().unwrap_or_default();
                check_normalized(target)
                    .map_err(|m| check_bug(format!("gave hardlink target for `{disp}`: {m}")))?;
                self.hardlink(path, &name, target, disp)
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                let dev = rfs::makedev(e.dev_major, e.dev_minor);
                self.node(e.kind, dev, path, &name, &meta, disp)
            }
            EntryKind::Regular | EntryKind::Whiteout | EntryKind::Opaque => unreachable!(),
        }
    }

    /// Records that this layer writes `path` (and so, implicitly, its parents).
    fn mark_written(&mut self, path: &[u8]) {
        let k = self.key(path);
        self.written.insert(k);
        self.mark_dir(split_last(path).0);
    }

    /// Records that directory `dir` and its ancestors exist in this layer.
    fn mark_dir(&mut self, mut dir: &[u8]) {
        while !dir.is_empty() {
            let k = self.key(dir);
            if !self.ancestors.insert(k) {
                break; // its ancestors are already recorded
            }
            dir = split_last(dir).0;
        }
    }

    /// The directory an entry goes into, created (0755, 0:0) where missing.
    fn parent_fd(&mut self, parent: &[u8], disp: &str) -> Result<Rc<OwnedFd>, ApplyError> {
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

    fn remove_existing(
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
    fn create_fresh<T>(
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

    fn set_owner_mode(
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

    fn set_xattrs(
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

    /// Creates a regular file; its data follows from the stream.
    fn regular_begin(&mut self, e: Entry, disp: String) -> Result<OpenFile, ApplyError> {
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
    fn regular_done(&mut self, f: OpenFile) -> Result<(), ApplyError> {
        let meta = Meta::of(&f.entry);
        let disp = &f.disp;
        self.set_owner_mode(f.file.as_fd(), &meta, disp)?;
        // After chown (which drops security.capability).
        self.set_xattrs(f.file.as_fd(), &f.entry.xattrs, disp)?;
        rfs::futimens(&f.file, &meta.times()).map_err(|e| os_err(disp, "setting mtime", e))?;
        self.stats.files += 1;
        Ok(())
    }

    fn directory(
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

    fn symlink(
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

    fn hardlink(
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
    fn node(
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

    /// `DIR/.wh.NAME` (given as `DIR/NAME`): removes NAME from the lower
    /// layers.
    fn whiteout(&mut self, vpath: &[u8], disp: &str) -> Result<(), ApplyError> {
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
    fn opaque(&mut self, dir: &[u8], disp: &str) -> Result<(), ApplyError> {
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

    fn finish(mut self) -> Result<ApplyStats, ApplyError> {
        self.apply_dir_times()?;
        Ok(self.stats)
    }

    /// Remembers a directory's mtime for the end of the layer. Should a
    /// hostile layer make the list huge, it is applied early to bound memory
    /// (those mtimes may then be bumped by later children).
    fn defer_dir_time(&mut self, path: &[u8], mtime: Timespec) -> Result<(), ApplyError> {
        self.dir_times_bytes += path.len() + 48;
        self.dir_times.push((path.to_vec(), mtime));
        if self.dir_times_bytes > DIR_TIMES_MAX_BYTES {
            self.apply_dir_times()?;
        }
        Ok(())
    }

    /// Applies directory mtimes, deepest first, without following symlinks.
    fn apply_dir_times(&mut self) -> Result<(), ApplyError> {
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
