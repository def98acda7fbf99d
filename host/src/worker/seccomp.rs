//! The worker's seccomp filter: an allowlist of system calls, kept here as
//! reviewed data, one reason per entry (as firecracker keeps its own).
//!
//! It is installed last in `confine()` (after no_new_privs, Landlock and the
//! capability drop, so none of those calls need to be listed) and before
//! the worker reads the first byte of the layer. It covers what Landlock
//! may not on an older ABI (see ARCHITECTURE.md, "What each Landlock ABI
//! gives"): sockets (TCP is Landlock's from ABI 4, other families never),
//! truncate by path (ABI 3), device ioctls (ABI 5), and the calls Landlock
//! never covers (mount, ptrace, bpf, keyctl, namespaces, io_uring, exec,
//! signals to other processes, setxattr by path). It cannot see a path:
//! `fchownat`, `fchmodat` and `utimensat` are allowed (extraction needs
//! them relative to the root fd) and could name a file outside the root.
//!
//! Actions, as two stacked filters (the kernel takes the strictest answer):
//! - a call in [`ALLOWED`] runs (some with argument conditions);
//! - a call in [`DENIED`], or an allowed call outside its conditions, fails
//!   with EPERM: the worker sees an ordinary error and reports it;
//! - `clone3` fails with ENOSYS, so the C library falls back to `clone`,
//!   whose flags a filter can see (no new namespaces);
//! - any other call kills the process (`SECCOMP_RET_KILL_PROCESS`, SIGSYS):
//!   the service reports "killed by SIGSYS: a system call outside the
//!   worker's seccomp allowlist".

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// `fchmodat2` has the same number on every Linux architecture.
const SYS_FCHMODAT2: i64 = 452;

/// System calls the worker makes after confining itself, and why.
/// Found with `strace -f` on the Apply, Hash and Decompress tasks (the
/// example and hostile e2e runs), plus what Rust's std, glibc and wasmtime
/// need on rarer paths (threads, traps, panics).
pub const ALLOWED: &[(i64, &str)] = &[
    // Reading the blob, the request, writing the reply and staging file.
    (libc::SYS_read, "reads the blob and pipes"),
    (
        libc::SYS_write,
        "writes files, the reply and progress lines",
    ),
    (libc::SYS_readv, "std vectored reads"),
    (libc::SYS_writev, "std vectored writes (stderr, files)"),
    (libc::SYS_pread64, "positioned reads of the blob"),
    (libc::SYS_pwrite64, "positioned writes"),
    (libc::SYS_lseek, "seeks in the blob and files"),
    (libc::SYS_close, "closes fds"),
    (libc::SYS_fstat, "std metadata of open files"),
    (
        libc::SYS_newfstatat,
        "fstatat beneath the root (Landlock bounds paths)",
    ),
    (libc::SYS_statx, "std metadata"),
    (libc::SYS_fcntl, "fd flags (O_CLOEXEC, O_NONBLOCK probing)"),
    (libc::SYS_dup, "fd duplication (rustix)"),
    (libc::SYS_dup3, "fd duplication"),
    (
        libc::SYS_ftruncate,
        "sizing a memfd (wasmtime) or the staging file: fd-bound",
    ),
    (
        libc::SYS_fallocate,
        "preallocating a file being written: fd-bound",
    ),
    (libc::SYS_fsync, "flushing an extracted file"),
    (libc::SYS_fdatasync, "flushing an extracted file"),
    (libc::SYS_syncfs, "flushing the layer's filesystem"),
    // Extraction beneath the layer root: every path is bounded by Landlock
    // (write, create, rename, link, remove and make_* since ABI 1).
    (
        libc::SYS_openat,
        "opens beneath the root (Landlock bounds paths)",
    ),
    (libc::SYS_openat2, "RESOLVE_BENEATH opens beneath the root"),
    (libc::SYS_mkdirat, "directories (Landlock MAKE_DIR)"),
    (
        libc::SYS_mknodat,
        "device nodes and fifos (Landlock MAKE_*)",
    ),
    (
        libc::SYS_unlinkat,
        "whiteouts and replaced entries (Landlock REMOVE_*)",
    ),
    (
        libc::SYS_renameat,
        "renames beneath the root (Landlock REFER, ABI 2)",
    ),
    (
        libc::SYS_renameat2,
        "renames beneath the root (Landlock REFER, ABI 2)",
    ),
    (libc::SYS_linkat, "hard links (Landlock REFER/MAKE_REG)"),
    (libc::SYS_symlinkat, "symlinks (Landlock MAKE_SYM)"),
    (libc::SYS_readlinkat, "reading a symlink beneath the root"),
    (
        libc::SYS_getdents64,
        "listing directories (opaque whiteouts)",
    ),
    // Metadata, only through fds or *at calls relative to the root fd with
    // AT_SYMLINK_NOFOLLOW (crate::extract): Landlock never covers these.
    (libc::SYS_fchown, "owner of an extracted file, by fd"),
    (
        libc::SYS_fchownat,
        "owner of a link or node, relative to its parent fd",
    ),
    (libc::SYS_fchmod, "mode of an extracted file, by fd"),
    (
        libc::SYS_fchmodat,
        "mode through /proc/self/fd (O_PATH fallback)",
    ),
    (
        SYS_FCHMODAT2,
        "mode of a node, AT_SYMLINK_NOFOLLOW (Linux 6.6+)",
    ),
    (
        libc::SYS_utimensat,
        "times, by fd or relative to the parent fd",
    ),
    (libc::SYS_fsetxattr, "allowed xattrs, by fd"),
    (libc::SYS_fgetxattr, "reading xattrs, by fd"),
    (libc::SYS_flistxattr, "listing xattrs, by fd"),
    (libc::SYS_fremovexattr, "removing xattrs, by fd"),
    (libc::SYS_getcwd, "std path helpers"),
    // Memory: the allocator, wasmtime's pooling allocator, code and traps.
    (libc::SYS_brk, "the allocator"),
    (libc::SYS_mmap, "the allocator, wasmtime memories and code"),
    (libc::SYS_munmap, "the allocator, wasmtime"),
    (
        libc::SYS_mprotect,
        "wasmtime code (W^X) and guard pages, thread stacks",
    ),
    (libc::SYS_mremap, "the allocator growing buffers"),
    (
        libc::SYS_madvise,
        "wasmtime resetting memories, the allocator",
    ),
    (
        libc::SYS_memfd_create,
        "wasmtime memory images (anonymous, no path)",
    ),
    (libc::SYS_membarrier, "wasmtime code publication"),
    // Threads (the decode and progress threads) and synchronisation.
    (libc::SYS_clone, "threads; namespace flags are denied below"),
    (libc::SYS_futex, "locks, condition variables, thread joins"),
    (libc::SYS_set_robust_list, "glibc, each new thread"),
    (libc::SYS_rseq, "glibc, each new thread"),
    (libc::SYS_set_tid_address, "glibc, each new thread"),
    (libc::SYS_sched_yield, "spin loops"),
    (libc::SYS_sched_getaffinity, "std available_parallelism"),
    (libc::SYS_gettid, "thread ids"),
    (libc::SYS_getpid, "own pid"),
    (libc::SYS_getppid, "own parent"),
    (libc::SYS_getuid, "own ids"),
    (libc::SYS_geteuid, "own ids"),
    (libc::SYS_getgid, "own ids"),
    (libc::SYS_getegid, "own ids"),
    (libc::SYS_capget, "reading own capabilities"),
    (
        libc::SYS_prctl,
        "thread names, no_new_privs; other options EPERM",
    ),
    (libc::SYS_exit, "a thread ends"),
    (libc::SYS_exit_group, "the process ends"),
    // Signals: wasmtime traps (SIGSEGV/SIGILL/SIGFPE handlers), panics.
    (libc::SYS_rt_sigaction, "wasmtime trap handlers, std"),
    (libc::SYS_rt_sigprocmask, "wasmtime, threads"),
    (libc::SYS_rt_sigreturn, "returning from a trap handler"),
    (
        libc::SYS_sigaltstack,
        "wasmtime and std stack-overflow handlers",
    ),
    (
        libc::SYS_tgkill,
        "abort() on a panic: own process only, others EPERM",
    ),
    // Time and randomness.
    (libc::SYS_clock_gettime, "timers (vDSO fallback)"),
    (libc::SYS_clock_nanosleep, "the progress thread's sleep"),
    (libc::SYS_nanosleep, "sleeps"),
    (libc::SYS_getrandom, "hash map seeds"),
    (libc::SYS_ppoll, "std pipe handling"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_poll, "std pipe handling"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_arch_prctl, "thread-local storage"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_stat, "older std metadata"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_lstat, "older std metadata"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, "older opens (Landlock bounds paths)"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_dup2, "fd duplication"),
];

/// Calls the worker never makes that answer EPERM (not a kill), each with
/// the reason it is denied: the escape routes a confined extractor must
/// not have, whichever Landlock ABI the kernel has.
pub const DENIED: &[(i64, &str)] = &[
    (
        libc::SYS_socket,
        "no network (Landlock: TCP from ABI 4 only, UDP/unix never)",
    ),
    (libc::SYS_socketpair, "no sockets"),
    (
        libc::SYS_connect,
        "no network (Landlock TCP connect: ABI 4)",
    ),
    (libc::SYS_bind, "no network (Landlock TCP bind: ABI 4)"),
    (libc::SYS_listen, "no network"),
    (libc::SYS_accept, "no network"),
    (libc::SYS_accept4, "no network"),
    (libc::SYS_sendto, "no network"),
    (libc::SYS_sendmsg, "no network"),
    (libc::SYS_sendmmsg, "no network"),
    (libc::SYS_recvfrom, "no network"),
    (libc::SYS_recvmsg, "no network"),
    (libc::SYS_truncate, "truncate by path (Landlock: ABI 3)"),
    (
        libc::SYS_ioctl,
        "no ioctl (Landlock device ioctls: ABI 5); the worker needs none",
    ),
    (libc::SYS_ptrace, "no tracing other processes"),
    (libc::SYS_process_vm_readv, "no reading other processes"),
    (libc::SYS_process_vm_writev, "no writing other processes"),
    (
        libc::SYS_kill,
        "no signals to other processes (the worker runs as root)",
    ),
    (libc::SYS_tkill, "no signals to other threads' processes"),
    (libc::SYS_rt_sigqueueinfo, "no signals to other processes"),
    (libc::SYS_rt_tgsigqueueinfo, "no signals to other processes"),
    (libc::SYS_pidfd_open, "no handles on other processes"),
    (libc::SYS_pidfd_send_signal, "no signals to other processes"),
    (libc::SYS_pidfd_getfd, "no stealing other processes' fds"),
    (libc::SYS_mount, "no mounts (Landlock never covers)"),
    (libc::SYS_umount2, "no unmounts"),
    (libc::SYS_pivot_root, "no mounts"),
    (libc::SYS_chroot, "no chroot"),
    (libc::SYS_open_tree, "no mounts"),
    (libc::SYS_move_mount, "no mounts"),
    (libc::SYS_fsopen, "no mounts"),
    (libc::SYS_fsconfig, "no mounts"),
    (libc::SYS_fsmount, "no mounts"),
    (libc::SYS_fspick, "no mounts"),
    (libc::SYS_mount_setattr, "no mounts"),
    (libc::SYS_unshare, "no namespaces"),
    (libc::SYS_setns, "no namespaces"),
    (libc::SYS_bpf, "no BPF"),
    (libc::SYS_perf_event_open, "no perf"),
    (libc::SYS_userfaultfd, "no userfaultfd"),
    (libc::SYS_keyctl, "no kernel keyrings"),
    (libc::SYS_add_key, "no kernel keyrings"),
    (libc::SYS_request_key, "no kernel keyrings"),
    (
        libc::SYS_io_uring_setup,
        "io_uring would bypass this filter",
    ),
    (
        libc::SYS_io_uring_enter,
        "io_uring would bypass this filter",
    ),
    (
        libc::SYS_io_uring_register,
        "io_uring would bypass this filter",
    ),
    (libc::SYS_execve, "the worker executes nothing"),
    (libc::SYS_execveat, "the worker executes nothing"),
    (libc::SYS_name_to_handle_at, "no file handles"),
    (
        libc::SYS_open_by_handle_at,
        "no file handles (would bypass paths)",
    ),
    (libc::SYS_setxattr, "xattrs by path: Landlock never covers"),
    (libc::SYS_lsetxattr, "xattrs by path: Landlock never covers"),
    (
        libc::SYS_removexattr,
        "xattrs by path: Landlock never covers",
    ),
    (
        libc::SYS_lremovexattr,
        "xattrs by path: Landlock never covers",
    ),
    (libc::SYS_init_module, "no kernel modules"),
    (libc::SYS_finit_module, "no kernel modules"),
    (libc::SYS_delete_module, "no kernel modules"),
    (libc::SYS_kexec_load, "no kexec"),
    (libc::SYS_reboot, "no reboot"),
    (libc::SYS_swapon, "no swap"),
    (libc::SYS_swapoff, "no swap"),
    (libc::SYS_setuid, "no identity changes"),
    (libc::SYS_setgid, "no identity changes"),
    (libc::SYS_setresuid, "no identity changes"),
    (libc::SYS_setresgid, "no identity changes"),
    (libc::SYS_setgroups, "no identity changes"),
    #[cfg(target_arch = "x86_64")]
    (
        libc::SYS_chmod,
        "mode by path: unused (fchmodat is what extraction uses)",
    ),
    #[cfg(target_arch = "x86_64")]
    (
        libc::SYS_chown,
        "owner by path: unused (fchownat is what extraction uses)",
    ),
    #[cfg(target_arch = "x86_64")]
    (
        libc::SYS_lchown,
        "owner by path: unused (fchownat is what extraction uses)",
    ),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "no port I/O"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "no port I/O"),
];

/// Namespace flags `clone` may not carry.
const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// prctl options the worker may use (thread and mapping names;
/// no_new_privs, which seccompiler sets again before each filter).
const PRCTL_ALLOWED: [u64; 4] = [
    libc::PR_SET_NO_NEW_PRIVS as u64,
    libc::PR_SET_NAME as u64,
    libc::PR_GET_NAME as u64,
    0x5356_4d41, // PR_SET_VMA
];

fn arch() -> Result<TargetArch, String> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err("no seccomp filter for this architecture".into())
    }
}

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, Len::Qword, op, value).map_err(|e| e.to_string())
}

/// The three filters, in the order they are installed: clone3's ENOSYS,
/// the EPERM denials (the [`DENIED`] list and allowed calls outside their
/// conditions), and the allowlist (anything else kills) last, since it
/// does not allow `seccomp` itself.
/// `pid` is the worker's own pid (tgkill may signal only it).
pub fn programs(pid: u32) -> Result<Vec<BpfProgram>, String> {
    let arch = arch()?;
    let err = |e: seccompiler::BackendError| e.to_string();

    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _) in ALLOWED.iter().chain(DENIED) {
        allow.insert(*nr, Vec::new());
    }
    allow.insert(libc::SYS_clone3, Vec::new());
    let allow = SeccompFilter::new(
        allow,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(err)?;

    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _) in DENIED {
        deny.insert(*nr, Vec::new());
    }
    // clone with any namespace flag.
    let clone = NAMESPACE_FLAGS
        .iter()
        .map(|f| SeccompRule::new(vec![cond(0, Op::MaskedEq(*f), *f)?]).map_err(err))
        .collect::<Result<Vec<_>, String>>()?;
    deny.insert(libc::SYS_clone, clone);
    // prctl with any other option.
    let prctl = PRCTL_ALLOWED
        .iter()
        .map(|o| cond(0, Op::Ne, *o))
        .collect::<Result<Vec<_>, String>>()?;
    deny.insert(libc::SYS_prctl, vec![SeccompRule::new(prctl).map_err(err)?]);
    // tgkill aimed at another process.
    deny.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![cond(0, Op::Ne, u64::from(pid))?]).map_err(err)?],
    );
    let deny = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;

    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;

    [clone3, deny, allow]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(err))
        .collect()
}

/// Installs the filters on every thread of the process (no_new_privs must
/// be set). Returns a one-line description.
pub fn install() -> Result<String, String> {
    for p in programs(std::process::id())? {
        seccompiler::apply_filter_all_threads(&p).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "seccomp allowlist ({} calls, {} denied with EPERM, others kill)",
        ALLOWED.len(),
        DENIED.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_the_lists_do_not_overlap() {
        assert_eq!(programs(1).unwrap().len(), 3);
        for (nr, why) in ALLOWED {
            assert!(!why.is_empty());
            assert!(
                !DENIED.iter().any(|(d, _)| d == nr),
                "{nr} both allowed and denied"
            );
        }
        for (_, why) in DENIED {
            assert!(!why.is_empty());
        }
    }
}
