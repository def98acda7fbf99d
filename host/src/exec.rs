//! `tarpool exec ACT -- CMD...`: runs a command inside an activation, as
//! proof that the activated image really runs.
//!
//! Design. The command is single-threaded from start to end (no tokio, no
//! worker threads; it checks `/proc/self/task` before forking), so the
//! forked child is a complete copy of the process and may allocate and use
//! the standard library until it execs.
//!
//! 1. The parent takes the activation's lock, `STATE_DIR/locks/ACT.lock`
//!    (see [`lock_activation`]; never waiting: held, it is an error):
//!    exclusive when it has to mount the activation itself (two overlay
//!    mounts of one upper directory would corrupt it), shared when it only
//!    binds the activation's mount point. `tarpool deactivate` takes it
//!    exclusive. The parent holds it until the command has ended; the
//!    command never sees it (close-on-exec, and step 4 closes every
//!    descriptor above 2 anyway).
//! 2. It reads the store, under the lock: the activation, its image's
//!    runtime config (`images.config`, the manifest step's `RuntimeConfig`)
//!    and, for an activation made without `--mount`, its layer chain
//!    (walked from the activation's top chain through the layers' parents).
//! 3. It moves into a private mount namespace of its own and mounts the
//!    activation's root at a temporary directory: a recursive bind of the
//!    activation's mount point, or the backend's
//!    [`Snapshotter::mount_activation`]; then makes that view `nodev`
//!    (`mount_setattr`, recursive; not `nosuid`: the image's setuid
//!    programs work). That mount exists only in the parent's namespace and
//!    vanishes with it, even on SIGKILL. At the end the parent unmounts it
//!    and removes the directory with `rmdir` only, never recursively: were
//!    the activation still mounted there, removing would fail, not wipe it.
//! 4. It unshares a pid namespace, blocks SIGINT, SIGTERM, SIGHUP and
//!    SIGCHLD, and forks: the child is pid 1 of the new pid namespace.
//!    The child takes new mount (a copy of the parent's, so `pivot_root`
//!    does not move the parent), UTS and IPC namespaces, and a network
//!    namespace of its own where it brings up `lo` (unless `--net host`:
//!    then the host's network); joins a new, anonymous session keyring;
//!    mounts a fresh /proc, a tmpfs /dev (not `nodev`; nodes by mknod, or
//!    bind-mounted from the host's where mknod is refused), /dev/pts
//!    (newinstance) and /dev/shm; makes /proc's kernel settings read-only
//!    and masks Docker's masked paths ([`harden_proc`]); sets the hostname
//!    to the activation's name; `pivot_root`s and detaches the old root.
//!    Only then does it read the image's /etc/passwd and /etc/group
//!    (regular files, at most 1 MiB: untrusted bytes) to resolve the
//!    config's `User`; it enters `WorkingDir`; starts
//!    a session of its own (`setsid`: the command has no controlling
//!    terminal, so it cannot push keystrokes into the operator's with
//!    TIOCSTI, though its stdin, stdout and stderr may still be that
//!    terminal); cuts its capabilities to [`KEPT_CAPS`] (bounding,
//!    effective and permitted sets; ambient and inheritable emptied, so a
//!    root command gets exactly those after execve and a non-root one none,
//!    setuid programs at most those); sets the groups, gid and uid; asks
//!    for SIGKILL when the parent dies; closes every descriptor above 2;
//!    and execs CMD (searched in the image's PATH) with the config's `Env`.
//!    A setup error travels to the parent as one line through a
//!    close-on-exec pipe (end of file: the exec succeeded); a command not
//!    found exits 127, not executable 126.
//! 5. The parent waits in `sigwaitinfo`: it forwards SIGINT, SIGTERM and
//!    SIGHUP, the terminal's included (the command, in its own session, no
//!    longer gets those). As pid 1 the command only receives the signals
//!    it handles, so a second SIGINT or SIGTERM kills it. tarpool's exit
//!    status is the command's (128+N for death by signal N).
//!
//! What the command cannot do: write the host's kernel settings (/proc/sys,
//! /proc/sysrq-trigger, /proc/irq, /proc/bus and /proc/fs are read-only
//! mounts; without CAP_SYS_ADMIN it cannot remount them); read /proc/kcore,
//! /proc/keys, /proc/interrupts, /proc/timer_list and Docker's other masked
//! paths (exec mounts no /sys, so Docker's two /sys masks do not apply);
//! see or reach the host's interfaces and host-local services (by default;
//! `lo` is its own); open raw or packet sockets (no CAP_NET_RAW, even with
//! `--net host`); reach the caller's session keyring and its keys.
//!
//! Not a sandbox: the command runs as root (or the image's `User`) of the
//! host, with Docker's default capabilities minus CAP_MKNOD and
//! CAP_NET_RAW, without a user namespace, seccomp or cgroup. Keyrings are
//! per user in the host's user namespace: the command still reaches its
//! uid's user keyring and user session keyring (`@u`, `@us`; for a root
//! command, uid 0's, shared with every root process of the host; a caller
//! without a session keyring of its own uses `@us` as one), as under
//! Docker without seccomp (Docker's profile refuses `keyctl`). With
//! `--net host` it binds the host's ports, low ones too
//! (CAP_NET_BIND_SERVICE).

use anyhow::{bail, Context as _, Result};
use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::UnshareFlags;
use std::convert::Infallible;
use std::ffi::CString;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, RawFd};
use std::path::{Path, PathBuf};

use crate::backend::Snapshotter;
use crate::model::RuntimeConfig;
use crate::store::{ActivationRow, Store};
use crate::sys::MountOps as _;

/// The PATH of an image whose config sets none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The most of the image's /etc/passwd or /etc/group that is read.
const MAX_DB_BYTES: u64 = 1 << 20;
/// The device nodes of /dev: name, major, minor.
const DEV_NODES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// The capabilities the command may keep: Docker's default set without
/// CAP_MKNOD (the activation is `nodev`, yet a node made elsewhere, say in
/// /dev/shm, would open the host's disks) and without CAP_NET_RAW (raw and
/// packet sockets: with `--net host`, on the host's interfaces).
/// Everything else goes, from the bounding set too: CAP_SYS_ADMIN,
/// CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH,
/// CAP_NET_ADMIN... Without CAP_SYS_ADMIN the command cannot mount, unmount
/// or remount: the read-only and masked paths of /proc stay so (see
/// [`harden_proc`]). CAP_NET_BIND_SERVICE stays, as in Docker: in the
/// command's own network namespace it binds low ports nobody else sees;
/// with `--net host` they are the host's, the operator's choice.
pub const KEPT_CAPS: [caps::Capability; 12] = [
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// The paths of /proc made read-only (Docker's): kernel settings
/// (/proc/sys: `kernel.core_pattern`, `kernel.panic`, `vm.*`...), the
/// SysRq trigger, interrupt affinities, bus and filesystem tunables.
const READ_ONLY_PROC: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// Docker's masked paths under /proc: files get /dev/null bound over them,
/// directories an empty read-only tmpfs. Docker's two under /sys
/// (`firmware`, `devices/virtual/powercap`) do not apply: exec mounts no
/// /sys.
const MASKED_PROC: [&str; 10] = [
    "asound",
    "acpi",
    "interrupts",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
];

/// The command's network (`tarpool exec --net`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Net {
    /// A network namespace of its own, with only `lo` (up).
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

/// Opens the backend, only when the activation has to be mounted.
pub type OpenBackend<'a> = dyn Fn() -> Result<Box<dyn Snapshotter>> + 'a;

/// Runs `cmd` (default: the image's entrypoint and cmd) in activation `act`
/// of the state directory `state_dir` (whose database `store` is), on
/// network `net`; returns its exit status.
pub fn run(
    state_dir: &Path,
    store: &Store,
    open_backend: &OpenBackend<'_>,
    act: &str,
    cmd: &[String],
    net: Net,
) -> Result<u8> {
    if !single_threaded() {
        bail!("internal error: `tarpool exec` must fork from a single-threaded process");
    }
    // Held until the command has ended (dropped last).
    let (row, bind, _lock) = lock_for_exec(store, state_dir, act)?;
    let img = store
        .image(&row.image)?
        .with_context(|| format!("activation {act}: image {} is not tracked", row.image))?;
    if img.state != "ready" {
        bail!(
            "activation {act}: image {} is {}, not ready",
            row.image,
            img.state
        );
    }
    let config: RuntimeConfig = match &img.config {
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("image {}: unreadable runtime config", row.image))?,
        None => RuntimeConfig::default(),
    };
    let words: Vec<String> = if cmd.is_empty() {
        config
            .entrypoint
            .iter()
            .chain(&config.cmd)
            .cloned()
            .collect()
    } else {
        cmd.to_vec()
    };
    if words.is_empty() {
        bail!(
            "no command given, and image {} has no Entrypoint or Cmd",
            row.image
        );
    }
    let argv = cstrings(&words).context("the command")?;
    let env = cstrings(&environment(&config.env, act)).context("the image's Env")?;

    let mut root = MountPoint::new()?;
    crate::sys::LinuxMounts
        .private_namespace()
        .context("entering a private mount namespace")?;
    match row.mountpoint.as_deref().map(Path::new) {
        Some(mp) if bind => {
            rustix::mount::mount_bind_recursive(mp, &root.path).with_context(|| {
                format!("activation {act}: binding its mount point {}", mp.display())
            })?
        }
        // No mount point, or one no longer mounted (a reboot): mount it here.
        _ => {
            let chain = chain(store, act, &row.top_chain)?;
            open_backend()?
                .mount_activation(act, &chain, &root.path)
                .with_context(|| format!("activation {act}: mounting its root"))?
        }
    }
    root.mounted = true;
    set_nodev(&root.path).context("making the activation's root view nodev")?;
    let plan = Plan {
        act: act.to_string(),
        root: root.path.clone(),
        user: config.user.clone(),
        working_dir: config.working_dir.clone(),
        argv,
        env,
        net,
    };
    spawn_and_wait(&plan)
}

/// The temporary mount point of the activation's root, in the parent's
/// private namespace. Dropped, it is unmounted (a failure reported) and
/// removed by `rmdir` alone: never a recursive delete, which would go
/// through a mount still there into the activation.
struct MountPoint {
    path: PathBuf,
    mounted: bool,
}

impl MountPoint {
    fn new() -> Result<MountPoint> {
        let path = tempfile::Builder::new()
            .prefix("tarpool-exec-")
            .tempdir()
            .context("creating a temporary mount point")?
            .keep();
        Ok(MountPoint {
            path,
            mounted: false,
        })
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = rustix::mount::unmount(&self.path, UnmountFlags::DETACH) {
                tracing::warn!(
                    "unmounting the activation's root at {}: {e}",
                    self.path.display()
                );
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!(
                "removing the temporary mount point {}: {e}",
                self.path.display()
            );
        }
    }
}

/// The error when an activation's lock is held.
fn in_use(act: &str) -> anyhow::Error {
    anyhow::anyhow!("activation {act} is in use (tarpool exec or deactivate)")
}

/// A lock on one activation, `STATE_DIR/locks/ACT.lock`: `tarpool exec`
/// holds it shared while it only binds the activation's mount point, and
/// exclusive while it mounts the activation itself; `tarpool deactivate`
/// holds it exclusive. Released when dropped (or when the process ends).
pub struct ActivationLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl ActivationLock {
    /// Removes the lock file, still holding the lock: for `deactivate`, once
    /// the activation is gone. [`lock_activation`] never keeps a lock on a
    /// removed file, so this is safe against a concurrent locker.
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// Takes activation `act`'s lock without waiting (in `state_dir/locks`,
/// made 0700): held elsewhere, the error "activation ACT is in use".
pub fn lock_activation(state_dir: &Path, act: &str, exclusive: bool) -> Result<ActivationLock> {
    use rustix::fs::FlockOperation;
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
    if !crate::core::names::valid_activation_name(act) {
        bail!("invalid activation name {act:?}");
    }
    let dir = state_dir.join("locks");
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let path = dir.join(format!("{act}.lock"));
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    // A deactivate removes the file while it holds the lock: a lock taken
    // on the removed file would lock nothing, so check and take it again.
    for _ in 0..100 {
        // Close-on-exec (the standard library's default).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match rustix::fs::flock(&file, op) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(in_use(act)),
            Err(e) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
        let held = file.metadata()?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => {
                return Ok(ActivationLock { _file: file, path })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Err(in_use(act))
}

/// Takes `act`'s lock for exec: shared when its mount point is mounted (exec
/// only binds it), exclusive otherwise (exec mounts it). Returns the
/// activation as read under the lock, and whether to bind its mount point.
fn lock_for_exec(
    store: &Store,
    state_dir: &Path,
    act: &str,
) -> Result<(ActivationRow, bool, ActivationLock)> {
    let read = || -> Result<(ActivationRow, bool)> {
        let row = store
            .activation(act)?
            .with_context(|| format!("no activation named {act}"))?;
        let bind = row
            .mountpoint
            .as_deref()
            .is_some_and(|mp| is_mount_point(Path::new(mp)));
        Ok((row, bind))
    };
    let (_, mut bind) = read()?;
    for _ in 0..3 {
        let lock = lock_activation(state_dir, act, !bind)?;
        // Again, under the lock: a deactivate may have just removed it.
        let (row, now) = read()?;
        // An exclusive lock also covers binding; a shared one only that.
        if now || !bind {
            return Ok((row, now, lock));
        }
        bind = now;
    }
    Err(in_use(act))
}

/// The state directory of the store this process has open: the directory
/// of its `state.db`, found among the open files (`tarpool exec` opens one
/// store, that of its `--state-dir`).
/// Makes the mounts at and below `root` `nodev` and not `nosuid`
/// (`mount_setattr`, Linux 5.12; only those flags change: a read-only mount
/// stays so). The view is in this process's private mount namespace, so the
/// image's setuid programs work inside, as in a container, though the
/// activation's own mount point on the host is `nosuid`.
fn set_nodev(root: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    /// The kernel's `struct mount_attr` (`linux/mount.h`).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    let path = CString::new(root.as_os_str().as_bytes())?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NODEV,
        attr_clr: MOUNT_ATTR_NOSUID,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is a NUL-terminated string and `attr` a `mount_attr`
    // of the size passed; both outlive the call, which only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// What the child needs, all resolved before the fork.
struct Plan {
    act: String,
    /// The activation's root, mounted in the parent's namespace.
    root: PathBuf,
    user: String,
    working_dir: String,
    argv: Vec<CString>,
    env: Vec<CString>,
    net: Net,
}

fn cstrings(words: &[String]) -> Result<Vec<CString>> {
    words
        .iter()
        .map(|w| CString::new(w.as_str()).map_err(|_| anyhow::anyhow!("{w:?} holds a NUL byte")))
        .collect()
}

/// The image's Env, with PATH, HOSTNAME and HOME added where it sets none
/// (HOME is fixed in the child, once the user is known).
fn environment(image_env: &[String], act: &str) -> Vec<String> {
    let mut env = image_env.to_vec();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={act}"));
    }
    env
}

fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

fn is_mount_point(p: &Path) -> bool {
    crate::sys::LinuxMounts
        .mounts_under(p)
        .is_ok_and(|m| m.iter().any(|m| m == p))
}

/// The activation's layer ids, top first.
fn chain(store: &Store, act: &str, top: &str) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    let mut next = Some(top.to_string());
    while let Some(c) = next {
        let layer = store
            .layer(&c)?
            .filter(|l| l.committed)
            .with_context(|| format!("activation {act}: its layer {c} is missing"))?;
        ids.push(layer.id);
        next = layer.parent;
        if ids.len() > 100_000 {
            bail!("activation {act}: its layer chain loops");
        }
    }
    Ok(ids)
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

fn spawn_and_wait(plan: &Plan) -> Result<u8> {
    // SAFETY: NEWPID only puts this process's future children in a new pid
    // namespace; it does not touch the file-descriptor table.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWPID) }
        .context("creating a pid namespace")?;
    let set = sigset(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD]);
    // SAFETY: sigset_t is plain data, filled by sigprocmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid sigset_t.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) } != 0 {
        return Err(std::io::Error::last_os_error()).context("blocking signals");
    }
    let r = fork_and_wait(plan, &set, &old);
    // SAFETY: `old` is the mask saved above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
}

fn fork_and_wait(plan: &Plan, set: &libc::sigset_t, old: &libc::sigset_t) -> Result<u8> {
    let (mut reader, writer) = std::io::pipe().context("creating a pipe")?;
    // SAFETY: the process is single-threaded (checked before), so the child
    // is a complete copy of it and may run any code; it leaves only by
    // execve or _exit, never returning into the caller.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        drop(reader);
        let (code, msg) = match child(plan, old, writer.as_raw_fd()) {
            Err(e) => match e.downcast_ref::<ExecFailed>() {
                Some(f) => (f.code, f.msg.clone()),
                None => (2, format!("{e:#}")),
            },
        };
        let mut w = writer;
        let _ = w.write_all(msg.replace('\n', " ").as_bytes());
        drop(w);
        // SAFETY: ends the child without running the parent's destructors
        // or atexit handlers (its SQLite connection, its temporary dir).
        unsafe { libc::_exit(i32::from(code)) };
    }
    drop(writer);
    let mut msg = String::new();
    let _ = reader.read_to_string(&mut msg);
    let status = wait(pid, set)?;
    if msg.is_empty() {
        return Ok(status);
    }
    if status == 126 || status == 127 {
        eprintln!("tarpool: error: {msg}");
        return Ok(status);
    }
    bail!("activation {}: {msg}", plan.act)
}

/// Waits for `pid`, forwarding signals; its exit status.
fn wait(pid: libc::pid_t, set: &libc::sigset_t) -> Result<u8> {
    use rustix::process::{waitpid, Pid, WaitOptions};
    let child = Pid::from_raw(pid).context("fork returned a bad pid")?;
    let mut stops = 0;
    loop {
        if let Some((_, st)) = waitpid(Some(child), WaitOptions::NOHANG)? {
            if let Some(sig) = st.terminating_signal() {
                return Ok(u8::try_from(128 + sig).unwrap_or(255));
            }
            return Ok(st.exit_status().map_or(255, |c| (c & 0xff) as u8));
        }
        // SAFETY: `set` is a valid, blocked signal set; sigwaitinfo accepts a
        // null info pointer.
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
        // The terminal's too: the command, in a session of its own, does
        // not get them.
        if sig != libc::SIGHUP {
            stops += 1;
        }
        let sig = if stops >= 2 {
            eprintln!("tarpool: killing the command");
            libc::SIGKILL
        } else {
            sig
        };
        // SAFETY: kill has no memory effects; `pid` is our unreaped child.
        unsafe { libc::kill(pid, sig) };
    }
}

/// A failed exec, with a shell's exit status.
#[derive(Debug)]
struct ExecFailed {
    code: u8,
    msg: String,
}

impl std::fmt::Display for ExecFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for ExecFailed {}

/// The child, pid 1 of the new pid namespace: returns only on failure.
/// `report`: the error pipe, the one descriptor above 2 kept (close-on-exec).
fn child(plan: &Plan, mask: &libc::sigset_t, report: RawFd) -> Result<Infallible> {
    let mut namespaces = UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC;
    if plan.net == Net::None {
        namespaces |= UnshareFlags::NEWNET;
    }
    // SAFETY: no FILES flag: the descriptor table stays as it is; the new
    // mount namespace is a copy of the parent's (root already mounted).
    unsafe { rustix::thread::unshare_unsafe(namespaces) }
        .context("creating mount, UTS, IPC and network namespaces")?;
    if plan.net == Net::None {
        loopback_up().context("bringing up lo")?;
    }
    join_session_keyring().context("joining a new session keyring")?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .context("making mounts private")?;
    rustix::process::umask(Mode::empty());
    let root = &plan.root;
    let proc_ = real_dir(root, "proc", 0o555)?;
    mount(
        "proc",
        &proc_,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )
    .context("mounting /proc")?;
    let dev = real_dir(root, "dev", 0o755)?;
    make_dev(&dev)?;
    harden_proc(&proc_, &dev.join("null"))?;
    rustix::system::sethostname(plan.act.as_bytes()).context("setting the hostname")?;
    pivot(root)?;

    // From here on, every path is the image's.
    let passwd = read_db("/etc/passwd")?;
    let group = read_db("/etc/group")?;
    let user = resolve_user(&plan.user, passwd.as_deref(), group.as_deref())
        .map_err(anyhow::Error::msg)?;
    let wd = if plan.working_dir.is_empty() {
        "/"
    } else {
        plan.working_dir.as_str()
    };
    let wd = Path::new("/").join(wd);
    if std::env::set_current_dir(&wd).is_err() {
        std::fs::create_dir_all(&wd)
            .and_then(|()| std::env::set_current_dir(&wd))
            .with_context(|| format!("entering the working directory {}", wd.display()))?;
    }
    let mut env = plan.env.clone();
    if !env.iter().any(|e| e.to_bytes().starts_with(b"HOME=")) {
        env.push(CString::new(format!("HOME={}", user.home)).context("HOME")?);
    }
    // No controlling terminal: TIOCSTI on the operator's is refused.
    rustix::process::setsid().context("setsid")?;
    drop_capabilities().context("dropping capabilities")?;
    // SAFETY: the pointer and length describe `user.groups`.
    if unsafe { libc::setgroups(user.groups.len(), user.groups.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setgroups");
    }
    // SAFETY: plain system call, no memory effects.
    if unsafe { libc::setgid(user.gid) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setgid");
    }
    // SAFETY: plain system call, no memory effects.
    if unsafe { libc::setuid(user.uid) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setuid");
    }
    rustix::process::umask(Mode::from_raw_mode(0o022));
    // After setuid, which clears it.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("PR_SET_PDEATHSIG")?;
    close_fds(report).context("closing inherited file descriptors")?;
    // SAFETY: restores the default action (the Rust runtime ignores SIGPIPE,
    // and an ignored signal stays ignored across execve); `mask` is the
    // mask saved before the fork.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    }
    Err(exec(&plan.argv, &env).into())
}

/// Makes [`READ_ONLY_PROC`] read-only (bound onto itself, remounted
/// `ro,nosuid,nodev,noexec`) and masks [`MASKED_PROC`] in the fresh /proc
/// at `proc_`, binding `null` (the new /dev's null device) over files;
/// paths this kernel lacks are skipped. Needs CAP_SYS_ADMIN, so before the
/// capabilities go: without it the command cannot undo any of this.
fn harden_proc(proc_: &Path, null: &Path) -> Result<()> {
    let kind = |p: &Path| match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m.is_dir())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let ro = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for name in READ_ONLY_PROC {
        let p = proc_.join(name);
        if kind(&p)?.is_none() {
            continue;
        }
        rustix::mount::mount_bind(&p, &p)
            .and_then(|()| rustix::mount::mount_remount(&p, MountFlags::BIND | ro, ""))
            .with_context(|| format!("making /proc/{name} read-only"))?;
    }
    for name in MASKED_PROC {
        let p = proc_.join(name);
        let masked = match kind(&p)? {
            None => continue,
            Some(true) => mount("tmpfs", &p, "tmpfs", ro, "mode=555"),
            Some(false) => rustix::mount::mount_bind(null, &p).map_err(Into::into),
        };
        masked.with_context(|| format!("masking /proc/{name}"))?;
    }
    Ok(())
}

/// Brings up `lo` in the new network namespace (down there at first): then
/// 127.0.0.1 and ::1 work.
fn loopback_up() -> Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    // SAFETY: plain system call, no memory effects.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data (a name and a union of integers, addresses
    // and a pointer); all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is an ifreq naming "lo", alive for the call, in which
    // the kernel writes the flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS");
    }
    // SAFETY: SIOCGIFFLAGS filled the union's flags member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: `req` is an ifreq naming "lo" with its flags, alive for the
    // call, which only reads it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(std::io::Error::last_os_error()).context("SIOCSIFFLAGS");
    }
    Ok(())
}

/// Gives the process a new, anonymous session keyring
/// (`KEYCTL_JOIN_SESSION_KEYRING` with no name): the caller's session
/// keyring and its keys are out of the command's reach. A kernel without
/// keyrings (ENOSYS) has nothing to hide.
fn join_session_keyring() -> Result<()> {
    /// `linux/keyctl.h`.
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a null name: the kernel reads no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e.into());
        }
    }
    Ok(())
}

/// Cuts the capabilities to [`KEPT_CAPS`]: the bounding set (by number, so
/// also capabilities newer than the `caps` crate), the effective and
/// permitted sets; the ambient and inheritable sets emptied. After execve a
/// root command's permitted and effective sets are its bounding set; a
/// setuid to another user clears them.
fn drop_capabilities() -> Result<()> {
    use caps::{CapSet, CapsHashSet};
    let keep: Vec<u8> = KEPT_CAPS.iter().map(|c| c.index()).collect();
    // Dropping from the bounding set needs CAP_SETPCAP, kept below.
    for n in 0..64_u8 {
        if keep.contains(&n) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(n), 0, 0, 0) } {
            0 => {}
            1 => {
                // SAFETY: prctl with integer arguments only.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(n), 0, 0, 0) };
                if r != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("dropping capability {n} from the bounding set"));
                }
            }
            // EINVAL: past the kernel's last capability.
            _ => break,
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = KEPT_CAPS
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    // Effective first: it must stay within the permitted set.
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(())
}

/// Closes every descriptor above 2 but `keep`: none of exec's caller's
/// reaches the command.
fn close_fds(keep: RawFd) -> Result<()> {
    let keep = u32::try_from(keep).context("a negative descriptor")?;
    let close_range = |first: u32, last: u32| -> std::io::Result<()> {
        if first > last {
            return Ok(());
        }
        // SAFETY: closes descriptors only; nothing in this process uses the
        // closed ones afterwards (it execs or exits next).
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0_u32) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let r = match keep.checked_sub(1) {
        Some(below) => close_range(3, below).and_then(|()| close_range(keep + 1, u32::MAX)),
        None => close_range(3, u32::MAX),
    };
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        r => return Ok(r?),
    }
    // Before Linux 5.9: one by one (this /proc is the namespace's own).
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && u32::try_from(fd) != Ok(keep) {
            // SAFETY: closes a descriptor nothing here uses afterwards (the
            // read_dir's own is already closed: a failed close, harmless).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

fn mount(src: &str, target: &Path, fstype: &str, flags: MountFlags, data: &str) -> Result<()> {
    let data = CString::new(data)?;
    rustix::mount::mount(src, target, fstype, flags, data.as_c_str())?;
    Ok(())
}

/// `root/name`, a directory (made if missing) and not a symlink: the image
/// is untrusted and this is before `pivot_root`.
fn real_dir(root: &Path, name: &str, mode: u32) -> Result<PathBuf> {
    let p = root.join(name);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => bail!("the image's /{name} is not a directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            rustix::fs::mkdir(&p, Mode::from_raw_mode(mode))
                .with_context(|| format!("creating /{name}"))?;
            Ok(p)
        }
        Err(e) => Err(e).with_context(|| format!("reading /{name}")),
    }
}

/// A minimal /dev on a tmpfs at `dev`.
fn make_dev(dev: &Path) -> Result<()> {
    mount(
        "tmpfs",
        dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=755,size=65536k",
    )
    .context("mounting /dev")?;
    for (name, major, minor) in DEV_NODES {
        let p = dev.join(name);
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        );
        if made.is_err() {
            // Where mknod is refused, the host's node.
            std::fs::File::create(&p).with_context(|| format!("creating /dev/{name}"))?;
            rustix::mount::mount_bind(Path::new("/dev").join(name), &p)
                .with_context(|| format!("binding /dev/{name}"))?;
        }
    }
    let pts = dev.join("pts");
    rustix::fs::mkdir(&pts, Mode::from_raw_mode(0o755)).context("creating /dev/pts")?;
    mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    .context("mounting /dev/pts")?;
    let shm = dev.join("shm");
    rustix::fs::mkdir(&shm, Mode::from_raw_mode(0o1777)).context("creating /dev/shm")?;
    mount(
        "shm",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=1777,size=65536k",
    )
    .context("mounting /dev/shm")?;
    for (name, target) in DEV_LINKS {
        std::os::unix::fs::symlink(target, dev.join(name))
            .with_context(|| format!("creating /dev/{name}"))?;
    }
    Ok(())
}

/// Makes `root` the root directory and detaches the old one (runc's way:
/// `pivot_root(".", ".")` stacks the old root on the new, then it goes).
fn pivot(root: &Path) -> Result<()> {
    let dir = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let old = rustix::fs::open("/", dir, Mode::empty()).context("opening /")?;
    let new = rustix::fs::open(root, dir, Mode::empty()).context("opening the new root")?;
    rustix::process::fchdir(&new)?;
    rustix::process::pivot_root(".", ".").context("pivot_root")?;
    rustix::process::fchdir(&old)?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).context("detaching the old root")?;
    rustix::process::chdir("/")?;
    Ok(())
}

/// Reads one of the image's user databases: a regular file of at most
/// [`MAX_DB_BYTES`], or None when it does not exist.
fn read_db(path: &str) -> Result<Option<String>> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening the image's {path}")),
    };
    let f = std::fs::File::from(fd);
    if !f.metadata()?.is_file() {
        bail!("the image's {path} is not a regular file");
    }
    let mut bytes = Vec::new();
    f.take(MAX_DB_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the image's {path}"))?;
    if bytes.len() as u64 > MAX_DB_BYTES {
        bail!("the image's {path} is over {MAX_DB_BYTES} bytes");
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Who the command runs as.
#[derive(Debug, PartialEq, Eq)]
struct Ids {
    uid: u32,
    gid: u32,
    /// Supplementary groups.
    groups: Vec<u32>,
    home: String,
}

/// Resolves a config's `User` (`uid`, `uid:gid`, `name`, `name:group`, or
/// empty for root) against the image's /etc/passwd and /etc/group.
/// Supplementary groups are the /etc/group entries listing the user's name,
/// unless the spec names a group.
fn resolve_user(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<Ids, String> {
    // name, uid, gid, home
    let users: Vec<(&str, u32, u32, &str)> = passwd
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                *f.first()?,
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                f.get(5).copied().unwrap_or(""),
            ))
        })
        .collect();
    // name, gid, members
    let groups: Vec<(&str, u32, &str)> = group
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                *f.first()?,
                f.get(2)?.parse().ok()?,
                f.get(3).copied().unwrap_or(""),
            ))
        })
        .collect();
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = match u.parse::<u32>() {
        Ok(uid) => users
            .iter()
            .find(|e| e.1 == uid)
            .copied()
            .map_or((None, uid, 0, "/"), |e| (Some(e.0), e.1, e.2, e.3)),
        Err(_) => users
            .iter()
            .find(|e| e.0 == u)
            .map(|e| (Some(e.0), e.1, e.2, e.3))
            .ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?,
    };
    let (name, uid, mut gid, home) = entry;
    let mut supplementary = Vec::new();
    match g {
        Some(g) if g.parse::<u32>().is_ok() => gid = g.parse().unwrap_or(0),
        Some(g) => {
            gid = groups
                .iter()
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?
        }
        None => {
            if let Some(name) = name {
                for e in &groups {
                    if e.2.split(',').any(|m| m.trim() == name) && !supplementary.contains(&e.1) {
                        supplementary.push(e.1);
                    }
                }
            }
        }
    }
    supplementary.truncate(65536);
    Ok(Ids {
        uid,
        gid,
        groups: supplementary,
        home: if home.is_empty() { "/" } else { home }.to_string(),
    })
}

/// Execs `argv[0]`, searched in the env's PATH when it has no slash, like a
/// shell; returns why it could not.
fn exec(argv: &[CString], env: &[CString]) -> ExecFailed {
    let prog = argv[0].to_bytes();
    let path = env
        .iter()
        .find_map(|e| e.to_bytes().strip_prefix(b"PATH="))
        .unwrap_or(DEFAULT_PATH.as_bytes());
    let candidates: Vec<Vec<u8>> = if prog.contains(&b'/') {
        vec![prog.to_vec()]
    } else {
        path.split(|&b| b == b':')
            .map(|d| {
                let mut p = if d.is_empty() {
                    b".".to_vec()
                } else {
                    d.to_vec()
                };
                p.push(b'/');
                p.extend_from_slice(prog);
                p
            })
            .collect()
    };
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let shown = String::from_utf8_lossy(prog);
    let mut denied = None;
    for c in candidates {
        let Ok(c) = CString::new(c) else { continue };
        // SAFETY: every pointer is a NUL-terminated string alive for the
        // call, and both arrays end with a null pointer.
        unsafe { libc::execve(c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            Some(libc::EACCES) => denied = Some(e),
            _ => {
                return ExecFailed {
                    code: 126,
                    msg: format!("{shown}: {e}"),
                }
            }
        }
    }
    match denied {
        Some(e) => ExecFailed {
            code: 126,
            msg: format!("{shown}: {e}"),
        },
        None if prog.contains(&b'/') => ExecFailed {
            code: 127,
            msg: format!("{shown}: no such file in the image"),
        },
        None => ExecFailed {
            code: 127,
            msg: format!(
                "{shown}: command not found in the image (PATH={})",
                String::from_utf8_lossy(path)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nbroken line\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app,other\nwheel:x:10:root\n";

    fn check(spec: &str, want: Result<(u32, u32, &[u32], &str), &str>) {
        let got = resolve_user(spec, Some(PASSWD), Some(GROUP));
        let want = want
            .map(|(uid, gid, groups, home)| Ids {
                uid,
                gid,
                groups: groups.to_vec(),
                home: home.into(),
            })
            .map_err(|e| e.to_string());
        assert_eq!(got, want, "{spec:?}");
    }

    #[test]
    fn users_resolve_from_the_images_databases() {
        check("", Ok((0, 0, &[10], "/root")));
        check("app", Ok((1000, 1000, &[2000], "/home/app")));
        check("1000", Ok((1000, 1000, &[2000], "/home/app")));
        check("4242", Ok((4242, 0, &[], "/")));
        check("app:extra", Ok((1000, 2000, &[], "/home/app")));
        check("app:7", Ok((1000, 7, &[], "/home/app")));
        check("5:6", Ok((5, 6, &[], "/")));
        check(
            "nobody",
            Err("user \"nobody\" is not in the image's /etc/passwd"),
        );
        check(
            "app:nogroup",
            Err("group \"nogroup\" is not in the image's /etc/group"),
        );
        assert_eq!(resolve_user("7", None, None).unwrap().uid, 7);
    }

    #[test]
    fn kept_caps_cannot_undo_the_hardening() {
        use caps::Capability::*;
        // CAP_SYS_ADMIN would remount /proc/sys writable or unmount the
        // masks; CAP_NET_RAW opens raw sockets; CAP_NET_ADMIN reconfigures
        // the network.
        for c in [CAP_SYS_ADMIN, CAP_NET_RAW, CAP_NET_ADMIN, CAP_MKNOD] {
            assert!(!KEPT_CAPS.contains(&c), "{c:?}");
        }
    }

    #[test]
    fn env_gets_a_default_path() {
        assert_eq!(
            environment(&[], "a"),
            ["PATH=".to_string() + DEFAULT_PATH, "HOSTNAME=a".into()]
        );
        assert_eq!(
            environment(&["PATH=/x".into()], "a"),
            ["PATH=/x", "HOSTNAME=a"]
        );
    }
}
