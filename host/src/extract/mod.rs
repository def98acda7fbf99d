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

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read};
use std::rc::Rc;

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::Timespec;

mod apply;
mod create;
mod errors;
pub(crate) mod fsops;
mod meta;
mod names;
#[cfg(feature = "native-check")]
pub mod native;
mod parents;
#[cfg(test)]
mod tests;
pub mod view;
mod whiteout;

pub use apply::apply_layer;
pub use errors::ApplyError;
use names::split_last;
use view::Decision;

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

/// Decisions kept in full per layer.
pub const DECISIONS_CAP: usize = 1000;

/// Entries the tar check has returned in this process: the extraction
/// worker reads it for its progress lines.
pub static ENTRIES_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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

    fn finish(mut self) -> Result<ApplyStats, ApplyError> {
        self.apply_dir_times()?;
        Ok(self.stats)
    }
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
