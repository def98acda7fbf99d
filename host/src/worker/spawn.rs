//! The service's side of the worker: starts `tarpool __apply-layer` with the
//! layer root as its only inherited fd, sends the [`Request`], relays its
//! progress lines and reads its [`Reply`] (or why it stopped without one).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use rustix::fd::BorrowedFd;

use super::{LayerDigests, Reply, Request, Task};
use crate::core::policy::Verdict;
use crate::error::Failure;
use crate::extract::ApplyStats;

/// Called with (compressed bytes read, entries) while a worker runs.
pub type OnProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

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
) -> Result<(ApplyStats, LayerDigests), Failure> {
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
            Failure::Retry("the extraction worker answered another request".into()),
        ),
    }
}

/// Runs the worker for `req` as a [`Task::Hash`]: the layer's verified
/// digest and its diff ID, decompressed in the confined process.
/// Rejections are pushed to `verdicts`.
pub fn hash(mut req: Request, verdicts: &mut Vec<Verdict>) -> Result<LayerDigests, Failure> {
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
) -> Result<u64, Failure> {
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
) -> Result<T, Failure> {
    match reply {
        Reply::Failed {
            failure,
            verdicts: v,
        } => {
            verdicts.extend(v);
            Err(failure)
        }
        r => pick(r)
            .ok_or_else(|| Failure::Retry("the extraction worker answered another request".into())),
    }
}

fn current_exe() -> Result<PathBuf, Failure> {
    std::env::current_exe().map_err(|e| {
        Failure::Retry(format!(
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
) -> Result<Reply, Failure> {
    spawn_observed(exe, req, Some(root), None)
}

/// [`spawn_with`], passing the worker's progress lines to `on_progress`.
pub fn spawn_observed(
    exe: &std::path::Path,
    req: &mut Request,
    root: Option<BorrowedFd<'_>>,
    on_progress: Option<OnProgress<'_>>,
) -> Result<Reply, Failure> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Failure::Retry(format!("extraction worker: {what}: {e}"))
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
            Err(Failure::Retry(format!(
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
