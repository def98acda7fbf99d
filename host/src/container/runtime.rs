//! Supervising an OCI runtime (crun, runc, or any with their command line)
//! running one bundle: `RUNTIME --root STATE/runtime/NAME run --bundle B ID`
//! in a session of its own, signals forwarded with `RUNTIME kill`, and the
//! container deleted whatever happens.
//!
//! A container whose tarpool died (SIGKILL) is found by the next exec or
//! deactivate: each live container holds the lock file
//! `STATE/runtime/locks/ID.lock`; one whose lock can be taken is stale and
//! is deleted (`delete --force`, which kills what still runs in it).

use anyhow::{bail, Context as _, Result};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An OCI runtime and the state directory tarpool gives it.
pub struct Runtime {
    /// The program (`crun`, `runc`, or a path).
    pub program: PathBuf,
    /// Its `--root`: `STATE/runtime/NAME`.
    pub root: PathBuf,
    locks: PathBuf,
}

impl Runtime {
    /// `program` (a name searched in PATH, or a path), with its state under
    /// `state_dir/runtime`.
    pub fn new(state_dir: &crate::statedir::StateDir, program: &str) -> Result<Runtime> {
        use std::os::unix::fs::DirBuilderExt as _;
        let name = state_name(program)
            .with_context(|| format!("runtime {program:?}: not a program name or path"))?
            .to_string();
        let base = state_dir.runtime();
        let root = base.join(&name);
        let locks = base.join("locks");
        for d in [&base, &root, &locks] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(d)
                .with_context(|| format!("creating {}", d.display()))?;
        }
        let program = if program.contains('/') {
            PathBuf::from(program)
        } else {
            find_in_path(program).with_context(|| {
                format!("OCI runtime {program:?} not found in PATH (install it: apt-get install {program}; or set `runtime` in the config)")
            })?
        };
        Ok(Runtime {
            program,
            root,
            locks,
        })
    }

    /// `RUNTIME --root ROOT`, run with no signal blocked (tarpool blocks
    /// the ones it forwards while a container runs).
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("--root").arg(&self.root);
        // SAFETY: runs in the child between fork and exec; sigemptyset and
        // sigprocmask are async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
        c
    }

    /// Takes the lock that marks container `id` as supervised by this
    /// process (held until dropped).
    pub fn claim(&self, id: &str) -> Result<Claim> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.locks.join(format!("{id}.lock"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Claim { _file: file, path })
    }

    /// Deletes the containers whose id starts with `prefix` and whose
    /// supervisor is gone (its lock is free), killing what runs in them.
    /// Returns how many.
    pub fn reap(&self, prefix: &str) -> Result<usize> {
        let out = self
            .cmd()
            .args(["list", "-q"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {} list", self.program.display()))?;
        if !out.status.success() {
            bail!(
                "{} list: {}",
                self.program.display(),
                crate::core::names::printable(&String::from_utf8_lossy(&out.stderr))
            );
        }
        let mut n = 0;
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let id = id.trim();
            if !id.starts_with(prefix) {
                continue;
            }
            let path = self.locks.join(format!("{id}.lock"));
            let held = match std::fs::File::open(&path) {
                Ok(f) => {
                    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                        .is_err()
                }
                Err(_) => false,
            };
            if held {
                continue;
            }
            tracing::warn!(
                "deleting container {id}, left by a tarpool exec that ended without cleaning up"
            );
            self.delete(id);
            let _ = std::fs::remove_file(&path);
            n += 1;
        }
        Ok(n)
    }

    /// `delete --force ID`; a failure is logged (the container may be gone).
    pub fn delete(&self, id: &str) {
        let out = self
            .cmd()
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let e = String::from_utf8_lossy(&o.stderr);
                if !(e.contains("does not exist")
                    || e.contains("not found")
                    || e.contains("No such"))
                {
                    tracing::warn!("{} delete {id}: {}", self.program.display(), e.trim());
                }
            }
            Err(e) => tracing::warn!("{} delete {id}: {e}", self.program.display()),
        }
    }

    fn kill(&self, id: &str, sig: libc::c_int) {
        let name = match sig {
            libc::SIGINT => "INT",
            libc::SIGTERM => "TERM",
            libc::SIGHUP => "HUP",
            _ => "KILL",
        };
        let _ = self
            .cmd()
            .args(["kill", id, name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Runs the bundle `bundle` as container `id` with this process's
    /// stdin, stdout and stderr, forwarding SIGINT, SIGTERM and SIGHUP (a
    /// second SIGINT or SIGTERM kills it); returns its exit status (128+N
    /// for death by signal N). The caller must be single-threaded and
    /// delete the container afterwards.
    pub fn run(&self, bundle: &Path, id: &str) -> Result<u8> {
        let set = sigset(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD]);
        // SAFETY: sigset_t is plain data, filled by sigprocmask.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid sigset_t.
        if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) } != 0 {
            return Err(std::io::Error::last_os_error()).context("blocking signals");
        }
        let r = self.spawn_and_wait(bundle, id, &set, old);
        // SAFETY: `old` is the mask saved above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        r
    }

    fn spawn_and_wait(
        &self,
        bundle: &Path,
        id: &str,
        set: &libc::sigset_t,
        old: libc::sigset_t,
    ) -> Result<u8> {
        let mut c = self.cmd();
        c.arg("run").arg("--bundle").arg(bundle).arg(id);
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions.
        unsafe {
            c.pre_exec(move || {
                // Its own session: no controlling terminal (so no TIOCSTI
                // into the operator's), and the terminal's signals reach
                // tarpool, which forwards them.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Killed with tarpool.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut child = c
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        let mut stops = 0;
        loop {
            if let Some(st) = child.try_wait().context("waiting for the runtime")? {
                use std::os::unix::process::ExitStatusExt as _;
                return Ok(match (st.code(), st.signal()) {
                    (Some(c), _) => (c & 0xff) as u8,
                    (None, Some(s)) => u8::try_from(128 + s).unwrap_or(255),
                    _ => 255,
                });
            }
            // SAFETY: `set` is a valid, blocked signal set; sigwaitinfo
            // accepts a null info pointer.
            let sig = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
            if sig < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("waiting for signals");
            }
            if sig == libc::SIGCHLD {
                continue;
            }
            if sig != libc::SIGHUP {
                stops += 1;
            }
            let sig = if stops >= 2 {
                eprintln!("tarpool: killing the command");
                libc::SIGKILL
            } else {
                sig
            };
            self.kill(id, sig);
        }
    }
}

/// The name of `program`'s state directory under `STATE/runtime`: its file
/// name (`crun` for `/usr/bin/crun`).
pub fn state_name(program: &str) -> Option<&str> {
    Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !n.is_empty()
                && *n != "locks"
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Container `id` is supervised (its lock held) until this is dropped,
/// which removes the lock file.
pub struct Claim {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt as _;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
