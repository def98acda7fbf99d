//! The extraction worker: one process per layer, confined before it reads a
//! byte of the layer.
//!
//! The service spawns `tarpool __apply-layer` (this binary) on the thread
//! that holds the layer's mount, so the worker sees the same mount
//! namespace. It gets the layer root as an inherited directory fd and a
//! [`Request`] on stdin, then, in this order:
//!
//! 1. opens the layer blob and the compiled tar check (read-only);
//! 2. sets `no_new_privs`;
//! 3. applies a Landlock ruleset: every filesystem access is handled; the
//!    only rules are read access to those two files and full access beneath
//!    the layer root; TCP bind/connect are handled with no rule (denied);
//! 4. drops every capability but CHOWN, FOWNER, DAC_OVERRIDE and FSETID
//!    (and MKNOD / SETFCAP when the policy allows device nodes / file
//!    capabilities), from the effective, permitted, inheritable, ambient
//!    and bounding sets;
//! 5. installs the seccomp allowlist ([`seccomp`]): listed escape routes
//!    (sockets, truncate by path, ioctl, mount, ptrace, bpf, keyctl,
//!    io_uring, ...) fail with EPERM, an unlisted call kills the worker
//!    (SIGSYS, reported by the service as such);
//! 6. decompresses, hashes and applies the layer through the tar check
//!    (`stream::apply_stream`) and writes a [`Reply`] on stdout.
//!
//! The same process, asked for [`Task::Hash`], only decompresses and hashes
//! a layer (its digest and diff ID, for an image that would use a layer
//! already stored); asked for [`Task::Decompress`], it decompresses a whole
//! image archive into a file the service made. Either way it gets no layer
//! root, loads no tar check, may read the blob and write nothing by path,
//! and keeps no capability.
//!
//! Every decoder run on untrusted bytes (gzip, zstd, the decompression
//! limits) lives in this module's private `stream` and `capped` modules:
//! the service process cannot call one; it only copies and hashes bytes.
//!
//! Landlock does not cover chmod, chown, setxattr or utimes: the extraction
//! code makes those only through fds or `AT_SYMLINK_NOFOLLOW` calls relative
//! to the root (see [`crate::extract`]). seccomp denies setxattr by path,
//! but cannot tell a path's target: `fchownat`, `fchmodat` and `utimensat`
//! stay allowed, so a worker compromised by the tar bytes could still change
//! owner, mode or times (never content) of a file outside the root; only a
//! mount namespace (or chroot) around the root would close that.
//! Landlock at any ABI plus seccomp keeps writes beneath the layer root and
//! the worker off the network: on an older ABI (Debian 12: 2) the ruleset
//! is partially enforced and seccomp denies what it does not cover
//! (truncate: ABI 3, TCP: ABI 4, device ioctls: ABI 5). A kernel without
//! Landlock at all, or where the filter cannot be installed, makes the
//! worker refuse and say which, unless the operator opted out
//! (`unconfined_worker = true`, logged).
//!
//! Files: the protocol ([`Request`], [`Reply`]) is here; `spawn.rs` is the
//! service's side (starting a worker, reading its answer), `work.rs` the
//! worker process's (`main`), `confine.rs` its confinement.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod capped;
mod confine;
mod inspected;
pub mod seccomp;
mod spawn;
mod stream;
mod work;

use crate::core::plan::{LayerDigests, PlannedLayer};
use crate::core::policy::{Policy, Verdict};
use crate::error::Failure;
use crate::extract::ApplyStats;

pub use confine::kept_capabilities;
pub use spawn::{decompress, hash, run, spawn_observed, spawn_with, OnProgress};
pub use work::main;

/// The worker's two jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// Decompress, verify and apply the layer onto the root.
    #[default]
    Apply,
    /// Decompress and hash the layer only: its digest (verified against
    /// the manifest's) and its diff ID. No layer root, no tar check, no
    /// capabilities; Landlock lets it read the blob and nothing else.
    Hash,
    /// Decompress a whole image archive (`layer` describes the blob: its
    /// media and size) into the file passed as the inherited fd: the
    /// service hashes that file and adopts it into the blob store. No tar
    /// check, no capabilities; Landlock lets it read the blob and write
    /// nothing by path.
    Decompress,
}

/// What the worker is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub task: Task,
    /// The inherited fd (set by the spawn): the layer root, an O_DIRECTORY
    /// fd, for [`Task::Apply`]; the file to write for [`Task::Decompress`];
    /// -1 for [`Task::Hash`].
    pub root_fd: i32,
    /// The blob holding the layer.
    pub blob: PathBuf,
    pub layer: PlannedLayer,
    /// Layer number (1 = bottom), for messages and the audit log.
    pub n: usize,
    pub policy: Policy,
    /// The compiled tar check (`sha256 || cwasm`).
    pub tar_cache: PathBuf,
    /// The operator's inspect steps, compiled (`sha256 || cwasm`), in
    /// order: (label, file). Read before the worker confines itself.
    #[serde(default)]
    pub inspect: Vec<(String, PathBuf)>,
    /// The operator's opt-out of confinement.
    pub unconfined: bool,
    /// Test hook (debug builds only): after confining itself, the worker
    /// tries to create this file, wherever it is, bypassing every path
    /// check, and reports what happened instead of extracting.
    pub test_escape: Option<PathBuf>,
    /// Test hook (debug builds only): behave as on a kernel where Landlock
    /// is not enforced.
    #[serde(default)]
    pub test_no_landlock: bool,
    /// Test hook (debug builds only): request this Landlock ABI (1..=5)
    /// instead of the newest, as on an older kernel.
    #[serde(default)]
    pub test_landlock_abi: Option<u8>,
    /// Test hook (debug builds only): what `test_escape` attempts.
    #[serde(default)]
    pub test_escape_kind: Escape,
    /// Print progress lines ([`crate::progress::WORKER_LINE`]) on stderr.
    #[serde(default)]
    pub progress: bool,
    /// Bench only: run the tar check natively, outside WebAssembly (refused
    /// unless built with the `bench-native-check` feature).
    #[serde(default)]
    pub bench_native_check: bool,
}

impl Request {
    /// A request for `task` on layer `n` (`layer`, in the file `blob`),
    /// under `policy`, confined, with no tar check or inspect steps (an
    /// apply sets them) and no test hook.
    pub fn new(
        task: Task,
        blob: PathBuf,
        layer: PlannedLayer,
        n: usize,
        policy: Policy,
    ) -> Request {
        Request {
            task,
            root_fd: -1,
            blob,
            layer,
            n,
            policy,
            tar_cache: PathBuf::new(),
            inspect: Vec::new(),
            unconfined: false,
            test_escape: None,
            test_no_landlock: false,
            test_landlock_abi: None,
            test_escape_kind: Escape::default(),
            progress: false,
            bench_native_check: false,
        }
    }
}

/// The escape a confined worker attempts under the `test_escape` hook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Escape {
    /// Create (and write) the file at the path.
    #[default]
    Create,
    /// Truncate the file at the path, by path (`truncate(2)`).
    Truncate,
    /// Connect a TCP socket to the address the path spells (`127.0.0.1:80`).
    Connect,
    /// Make a system call outside the seccomp allowlist (`acct(NULL)`):
    /// the filter kills the worker.
    Unlisted,
}

/// What the worker answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Applied {
        stats: ApplyStats,
        /// The layer's digest and diff ID, as verified while applying.
        digests: LayerDigests,
        verdicts: Vec<Verdict>,
        confinement: String,
    },
    /// Answer to [`Task::Hash`].
    Hashed {
        digests: LayerDigests,
        confinement: String,
    },
    /// Answer to [`Task::Decompress`]: the bytes written.
    Decompressed { bytes: u64, confinement: String },
    Failed {
        failure: Failure,
        verdicts: Vec<Verdict>,
    },
    /// Answer to `test_escape`: the errno of the attempt, 0 if it worked.
    Escape { errno: i32, confinement: String },
}
