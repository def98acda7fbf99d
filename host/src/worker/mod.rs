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

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use rustix::fd::{AsFd, BorrowedFd};
use serde::{Deserialize, Serialize};

mod capped;
pub mod seccomp;
mod stream;

use crate::core::policy::{Action, Policy, Verdict};
use crate::error::StepFailure;
use crate::extract::ApplyStats;
use crate::steps::{LayerDigests, PlannedLayer};

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

/// Called with (compressed bytes read, entries) while a worker runs.
pub type OnProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

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
        failure: StepFailure,
        verdicts: Vec<Verdict>,
    },
    /// Answer to `test_escape`: the errno of the attempt, 0 if it worked.
    Escape { errno: i32, confinement: String },
}

/// Spawns are serialized: the root fd is made inheritable only for the
/// moment one worker is started, so no other worker inherits it.
static SPAWN: Mutex<()> = Mutex::new(());

/// Runs the worker for `req` on `root` and waits for it. Rejections are
/// pushed to `verdicts`.
pub fn run(
    mut req: Request,
    root: BorrowedFd<'_>,
    verdicts: &mut Vec<Verdict>,
    on_progress: Option<OnProgress<'_>>,
) -> Result<(ApplyStats, LayerDigests), StepFailure> {
    req.progress = on_progress.is_some();
    req.task = Task::Apply;
    let reply = spawn_observed(&current_exe()?, &mut req, Some(root), on_progress)?;
    match reply {
        Reply::Applied {
            stats,
            digests,
            verdicts: v,
            ..
        } => {
            verdicts.extend(v);
            Ok((stats, digests))
        }
        Reply::Failed {
            failure,
            verdicts: v,
        } => {
            verdicts.extend(v);
            Err(failure)
        }
        Reply::Escape { .. } | Reply::Hashed { .. } | Reply::Decompressed { .. } => Err(
            StepFailure::Retry("the extraction worker answered another request".into()),
        ),
    }
}

/// Runs the worker for `req` as a [`Task::Hash`]: the layer's verified
/// digest and its diff ID, decompressed in the confined process.
/// Rejections are pushed to `verdicts`.
pub fn hash(mut req: Request, verdicts: &mut Vec<Verdict>) -> Result<LayerDigests, StepFailure> {
    req.task = Task::Hash;
    req.root_fd = -1;
    let reply = spawn_observed(&current_exe()?, &mut req, None, None)?;
    answer(reply, verdicts, |r| match r {
        Reply::Hashed { digests, .. } => Some(digests),
        _ => None,
    })
}

/// Runs the worker for `req` as a [`Task::Decompress`] into `out` (a file
/// the caller made, open for writing); returns the bytes written. Rejections
/// are pushed to `verdicts`.
pub fn decompress(
    mut req: Request,
    out: BorrowedFd<'_>,
    verdicts: &mut Vec<Verdict>,
) -> Result<u64, StepFailure> {
    req.task = Task::Decompress;
    let reply = spawn_observed(&current_exe()?, &mut req, Some(out), None)?;
    answer(reply, verdicts, |r| match r {
        Reply::Decompressed { bytes, .. } => Some(bytes),
        _ => None,
    })
}

/// The worker's `reply` as the caller's result: what `pick` takes from the
/// answer it expects, or the failure (its verdicts pushed to `verdicts`).
fn answer<T>(
    reply: Reply,
    verdicts: &mut Vec<Verdict>,
    pick: impl FnOnce(Reply) -> Option<T>,
) -> Result<T, StepFailure> {
    match reply {
        Reply::Failed {
            failure,
            verdicts: v,
        } => {
            verdicts.extend(v);
            Err(failure)
        }
        r => pick(r).ok_or_else(|| {
            StepFailure::Retry("the extraction worker answered another request".into())
        }),
    }
}

fn current_exe() -> Result<PathBuf, StepFailure> {
    std::env::current_exe().map_err(|e| {
        StepFailure::Retry(format!(
            "extraction worker: finding the tarpool binary: {e}"
        ))
    })
}

/// Starts the worker (the tarpool binary at `exe`), sends `req`, and reads
/// its reply.
pub fn spawn_with(
    exe: &std::path::Path,
    req: &mut Request,
    root: BorrowedFd<'_>,
) -> Result<Reply, StepFailure> {
    spawn_observed(exe, req, Some(root), None)
}

/// [`spawn_with`], passing the worker's progress lines to `on_progress`.
pub fn spawn_observed(
    exe: &std::path::Path,
    req: &mut Request,
    root: Option<BorrowedFd<'_>>,
    on_progress: Option<OnProgress<'_>>,
) -> Result<Reply, StepFailure> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        StepFailure::Retry(format!("extraction worker: {what}: {e}"))
    };
    let mut child = {
        let _one = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
        // dup() leaves the new fd inheritable (no O_CLOEXEC).
        let inheritable = root
            .map(rustix::io::dup)
            .transpose()
            .map_err(|e| fail("passing the layer root", &e))?;
        req.root_fd = inheritable.as_ref().map_or(-1, |fd| fd.as_raw_fd());
        let parent = rustix::process::getpid();
        let mut cmd = Command::new(exe);
        cmd.arg("__apply-layer")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear();
        // SAFETY: the closure runs in the child between fork and exec and
        // makes only async-signal-safe system calls (prctl, getppid), no
        // allocation. It makes the worker die with the thread that spawned
        // it (that thread waits for the worker, so only a kill of the service
        // ends it early): a SIGKILLed service leaves no worker holding the
        // layer's mount or device busy.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent.as_raw_nonzero().get() {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        cmd.spawn().map_err(|e| fail("starting", &e))?
        // `inheritable` is closed here, in this process.
    };
    let body = serde_json::to_vec(req).map_err(|e| fail("encoding the request", &e))?;
    let mut stdin = child.stdin.take().expect("piped");
    let written = stdin.write_all(&body);
    drop(stdin);
    let mut stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    // stderr is drained beside stdout (either pipe may fill first); progress
    // lines go to `on_progress`, the last other line explains a failure.
    let (read, said) = std::thread::scope(|s| {
        let errs = s.spawn(move || {
            use std::io::BufRead as _;
            let mut last = String::new();
            let mut r = std::io::BufReader::new(stderr);
            let mut line = Vec::new();
            // Lines are capped so a runaway worker cannot grow this.
            while let Ok(n) = (&mut r).take(64 * 1024).read_until(b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                match text.strip_prefix(crate::progress::WORKER_LINE) {
                    Some(rest) => {
                        if let (Some(f), Some((raw, entries))) =
                            (on_progress, crate::progress::parse_worker_line(rest))
                        {
                            f(raw, entries);
                        }
                    }
                    None if !text.trim().is_empty() => last = text.trim().to_string(),
                    None => {}
                }
                line.clear();
            }
            last
        });
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out).map(|_| out);
        (read, errs.join().unwrap_or_default())
    });
    let status = child.wait().map_err(|e| fail("waiting for it", &e))?;
    let out = read.map_err(|e| fail("reading its answer", &e))?;
    written.map_err(|e| fail("sending the request", &e))?;
    match serde_json::from_slice::<Reply>(&out) {
        Ok(reply) => Ok(reply),
        Err(_) => {
            use std::os::unix::process::ExitStatusExt as _;
            let out_status = if status.signal() == Some(libc::SIGSYS) {
                format!("{status}: a system call outside the worker's seccomp allowlist killed it")
            } else {
                status.to_string()
            };
            let said = said.as_str();
            Err(StepFailure::Retry(format!(
                "the extraction worker stopped without an answer ({}){}",
                out_status,
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            )))
        }
    }
}

/// The worker process's `main` (`tarpool __apply-layer`).
pub fn main() -> std::process::ExitCode {
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("tarpool worker: reading the request: {e}");
        return std::process::ExitCode::from(2);
    }
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tarpool worker: bad request: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let reply = work(&req);
    let out = serde_json::to_vec(&reply).expect("replies serialize");
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return std::process::ExitCode::from(2);
    }
    std::process::ExitCode::SUCCESS
}

fn work(req: &Request) -> Reply {
    let failed = |failure: StepFailure| Reply::Failed {
        failure,
        verdicts: Vec::new(),
    };
    let blob = match File::open(&req.blob) {
        Ok(f) => f,
        Err(e) => return failed(StepFailure::io("worker: opening the layer blob", e)),
    };
    if req.task == Task::Hash {
        let confinement = match confine(req, None) {
            Ok(c) => c,
            Err(e) => return failed(StepFailure::Retry(e)),
        };
        let mut verdicts = Vec::new();
        return match stream::hash_stream(blob, req.n, &req.layer, &req.policy, &mut verdicts) {
            Ok(digests) => Reply::Hashed {
                digests,
                confinement,
            },
            Err(failure) => Reply::Failed { failure, verdicts },
        };
    }
    if req.root_fd < 0 {
        return failed(StepFailure::Retry("worker: no inherited fd".into()));
    }
    if req.task == Task::Decompress {
        // SAFETY: the service passed this fd number for the file it dup'ed
        // for us (see `spawn`); nothing else in this process owns or closes
        // it, so taking ownership of it here is sound.
        let out = File::from(unsafe { OwnedFd::from_raw_fd(req.root_fd) });
        let confinement = match confine(req, None) {
            Ok(c) => c,
            Err(e) => return failed(StepFailure::Retry(e)),
        };
        let mut verdicts = Vec::new();
        return match stream::decompress_archive(blob, &req.layer, &req.policy, out, &mut verdicts) {
            Ok(bytes) => Reply::Decompressed { bytes, confinement },
            Err(failure) => Reply::Failed { failure, verdicts },
        };
    }
    // SAFETY: the service passed this fd number for a directory it dup'ed
    // for us (see `spawn`); nothing else in this process owns or closes it,
    // so taking ownership of it here is sound.
    let root = unsafe { OwnedFd::from_raw_fd(req.root_fd) };
    if rustix::fs::fstat(&root).is_err() {
        return failed(StepFailure::Retry(
            "worker: the layer root fd is not open".into(),
        ));
    }
    let cache = match std::fs::read(&req.tar_cache) {
        Ok(b) => b,
        Err(e) => return failed(StepFailure::io("worker: reading the compiled tar check", e)),
    };
    let confinement = match confine(req, Some(root.as_fd())) {
        Ok(c) => c,
        Err(e) => return failed(StepFailure::Retry(e)),
    };
    #[cfg(debug_assertions)]
    if let Some(target) = &req.test_escape {
        let result = match req.test_escape_kind {
            Escape::Create => File::create(target).map(drop),
            Escape::Truncate => {
                use std::os::unix::ffi::OsStrExt as _;
                let path = std::ffi::CString::new(target.as_os_str().as_bytes())
                    .map_err(std::io::Error::other);
                path.and_then(|p| {
                    // SAFETY: `p` is a NUL-terminated string that outlives
                    // the call; truncate(2) only reads it.
                    match unsafe { libc::truncate(p.as_ptr(), 0) } {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                })
            }
            Escape::Connect => target
                .to_string_lossy()
                .parse::<std::net::SocketAddr>()
                .map_err(std::io::Error::other)
                .and_then(std::net::TcpStream::connect)
                .map(drop),
            // SAFETY: acct(NULL) takes no pointer to read; unconfined it
            // would at most switch process accounting off (and fails
            // without CAP_SYS_PACCT, which the worker dropped).
            Escape::Unlisted => match unsafe { libc::syscall(libc::SYS_acct, 0usize) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            },
        };
        let errno = match result {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(-1),
        };
        return Reply::Escape { errno, confinement };
    }
    #[cfg(feature = "bench-native-check")]
    let mut native;
    let tar;
    let mut guest;
    let check: &mut dyn crate::extract::view::TarCheck = if req.bench_native_check {
        #[cfg(feature = "bench-native-check")]
        {
            native = crate::extract::native::NativeCheck(tarcheck::Checker::new(
                tarcheck::Mode::Layer,
                native_policy(&req.policy),
            ));
            &mut native
        }
        #[cfg(not(feature = "bench-native-check"))]
        return failed(StepFailure::Retry(
            "worker: this tarpool was built without the bench-native-check feature".into(),
        ));
    } else {
        tar = match crate::wasm::TarOnly::load(&cache) {
            Ok(t) => t,
            Err(e) => return failed(StepFailure::Retry(format!("worker: {e}"))),
        };
        guest = match tar.session(crate::extract::view::Mode::Layer, &req.policy) {
            Ok(c) => c,
            Err(e) => return failed(e.into()),
        };
        &mut guest
    };
    if req.progress {
        std::thread::spawn(report_progress);
    }
    let mut verdicts = Vec::new();
    let applied = stream::apply_stream(
        blob,
        req.n,
        &req.layer,
        &req.policy,
        check,
        root.as_fd(),
        &mut verdicts,
    );
    if req.progress {
        // The final count, so even a layer done within one period reports.
        let _ = std::io::stderr().write_all(progress_line().as_bytes());
    }
    match applied {
        Ok((stats, digests)) => Reply::Applied {
            stats,
            digests,
            verdicts,
            confinement,
        },
        Err(failure) => Reply::Failed { failure, verdicts },
    }
}

/// The per-entry rules of `p` as the native tar check takes them (what
/// `crate::wasm` gives the guest).
#[cfg(feature = "bench-native-check")]
fn native_policy(p: &Policy) -> tarcheck::Policy {
    use crate::core::policy::Action as A;
    let v = |a: A| match a {
        A::Allow => tarcheck::Verdict::Allow,
        A::Skip => tarcheck::Verdict::Skip,
        A::Strip => tarcheck::Verdict::Strip,
        A::Reject => tarcheck::Verdict::Reject,
    };
    let u32_of = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
    tarcheck::Policy {
        max_entries: p.max_layer_entries.limit,
        max_bytes: p.max_layer_bytes.limit,
        max_path_bytes: u32_of(p.max_path_bytes.limit),
        max_name_bytes: u32_of(p.max_name_bytes.limit),
        max_depth: u32_of(p.max_depth.limit),
        max_ext_header_bytes: u32_of(p.max_ext_header_bytes.limit),
        device_nodes: v(p.device_nodes.action),
        fifos: v(p.fifos.action),
        setid: v(p.setid.action),
        xattr_allow: p.xattrs.allow.clone(),
        other_xattrs: v(p.xattrs.others),
        absolute_symlinks: v(p.absolute_symlinks.action),
        duplicates: v(p.duplicates.action),
        max_id: u32_of(p.max_id.limit),
        min_mtime: p.mtime.min,
        max_mtime: p.mtime.max,
    }
}

/// Prints the layer's progress on stderr every 200 ms until the process
/// exits.
fn report_progress() {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if std::io::stderr()
            .write_all(progress_line().as_bytes())
            .is_err()
        {
            return;
        }
    }
}

fn progress_line() -> String {
    use std::sync::atomic::Ordering::Relaxed;
    format!(
        "{}{} {}\n",
        crate::progress::WORKER_LINE,
        crate::progress::RAW_BYTES.load(Relaxed),
        crate::extract::ENTRIES_SEEN.load(Relaxed)
    )
}

/// no_new_privs, Landlock, capabilities, seccomp (see the module docs). Returns a
/// one-line description of what is in force.
/// `root` is the layer root ([`Task::Apply`]); without one ([`Task::Hash`])
/// the worker may read the blob and nothing else, and keeps no capability.
fn confine(req: &Request, root: Option<BorrowedFd<'_>>) -> Result<String, String> {
    use landlock::{
        Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, ABI,
    };
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("worker: no_new_privs: {e}"))?;

    const ABIS: [ABI; 5] = [ABI::V1, ABI::V2, ABI::V3, ABI::V4, ABI::V5];
    let number = |abi: ABI| ABIS.iter().take_while(|&&v| v <= abi).count();
    #[allow(unused_mut)]
    let mut abi = ABI::V5;
    #[cfg(debug_assertions)]
    if let Some(n) = req.test_landlock_abi {
        abi = ABIS[usize::from(n.clamp(1, 5)) - 1];
    }
    let blob = PathFd::new(&req.blob).map_err(|e| format!("worker: {e}"))?;
    let cache = match root {
        Some(_) => Some(PathFd::new(&req.tar_cache).map_err(|e| format!("worker: {e}"))?),
        None => None,
    };
    let landlock = (|| -> Result<landlock::RestrictionStatus, landlock::RulesetError> {
        let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(abi))?;
        // TCP is Landlock's from ABI 4 (seccomp denies sockets anyway);
        // an empty set is an error.
        if abi >= ABI::V4 {
            ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
        }
        let mut rules = ruleset
            .create()?
            .add_rule(PathBeneath::new(blob, AccessFs::ReadFile))?;
        if let (Some(root), Some(cache)) = (root, cache) {
            rules = rules
                .add_rule(PathBeneath::new(root, AccessFs::from_all(abi)))?
                .add_rule(PathBeneath::new(cache, AccessFs::ReadFile))?;
        }
        rules.restrict_self()
    })();
    // The ABI in force: the one requested, or the kernel's if older.
    let landlock = landlock.map(|status| {
        let kernel = match status.landlock {
            landlock::LandlockStatus::Available { effective_abi, .. } => effective_abi,
            _ => ABI::Unsupported,
        };
        (status.ruleset, number(abi.min(kernel)))
    });
    #[cfg(debug_assertions)]
    let landlock = if req.test_no_landlock {
        Ok((RulesetStatus::NotEnforced, 0))
    } else {
        landlock
    };
    const OPT_OUT: &str = "set unconfined_worker = true to override";
    // Landlock at any ABI bounds writes to the layer root; seccomp (below)
    // denies what an older ABI leaves open. Without Landlock at all the
    // guarantee cannot be had.
    let landlock = match landlock {
        Ok((RulesetStatus::FullyEnforced, n)) => format!("landlock fully enforced (ABI {n})"),
        Ok((RulesetStatus::PartiallyEnforced, n)) => {
            format!("landlock partially enforced (ABI {n})")
        }
        Ok((other, _)) if req.unconfined => format!("landlock {other:?} (operator opt-out)"),
        Ok((other, _)) => {
            return Err(format!(
                "worker: Landlock is not enforced on this kernel ({other:?}): writes could not be kept beneath the layer root; refusing to extract unconfined ({OPT_OUT})"
            ))
        }
        Err(e) if req.unconfined => format!("landlock unavailable: {e} (operator opt-out)"),
        Err(e) => {
            return Err(format!(
                "worker: cannot apply Landlock ({e}): writes could not be kept beneath the layer root; refusing to extract unconfined ({OPT_OUT})"
            ))
        }
    };

    let keep = match root {
        Some(_) => kept_capabilities(&req.policy),
        None => Vec::new(),
    };
    let caps = drop_capabilities(&keep);
    let caps = match caps {
        Ok(bounding) => format!(
            "capabilities {}{}",
            if keep.is_empty() {
                "none".to_string()
            } else {
                keep.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            if bounding {
                ""
            } else {
                " (bounding set kept: no CAP_SETPCAP; no_new_privs stops any regain)"
            }
        ),
        Err(e) if req.unconfined => format!("capabilities not dropped: {e} (operator opt-out)"),
        Err(e) => return Err(format!("worker: dropping capabilities: {e}")),
    };
    // Last, so none of the calls above need allowing; before the first
    // byte of the layer is read.
    let seccomp = match seccomp::install() {
        Ok(s) => s,
        Err(e) if req.unconfined => format!("seccomp not installed: {e} (operator opt-out)"),
        Err(e) => {
            return Err(format!(
                "worker: cannot install the seccomp filter ({e}): sockets, truncate and ioctl could not be denied where Landlock does not cover them; refusing to extract unconfined ({OPT_OUT})"
            ))
        }
    };
    Ok(format!("no_new_privs, {landlock}, {caps}, {seccomp}"))
}

/// The capabilities extraction needs under `policy`.
pub fn kept_capabilities(policy: &Policy) -> Vec<caps::Capability> {
    use caps::Capability as C;
    // FSETID: chmod keeps a setgid bit on a file whose group is not ours.
    let mut keep = vec![
        C::CAP_CHOWN,
        C::CAP_FOWNER,
        C::CAP_DAC_OVERRIDE,
        C::CAP_FSETID,
    ];
    if policy.device_nodes.action == Action::Allow {
        keep.push(C::CAP_MKNOD);
    }
    if policy
        .xattrs
        .allow
        .iter()
        .any(|x| x == "security.capability" || x == "security.")
    {
        keep.push(C::CAP_SETFCAP);
    }
    keep
}

/// Drops every capability not in `keep`. Returns whether the bounding set
/// could be cut too (that needs CAP_SETPCAP; without it the bounding set
/// stays, which no_new_privs makes moot: nothing can gain capabilities
/// beyond the permitted set, and the worker never executes anything).
fn drop_capabilities(keep: &[caps::Capability]) -> Result<bool, caps::errors::CapsError> {
    use caps::{CapSet, CapsHashSet};
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // effective set below no longer has.
    let can_bound = caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)?;
    if can_bound {
        for c in caps::all() {
            if !keep.contains(&c) && caps::has_cap(None, CapSet::Bounding, c)? {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(can_bound)
}
