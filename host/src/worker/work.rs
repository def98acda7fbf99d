//! The worker process's side: `main` reads the [`Request`], opens what it
//! needs, confines itself, then hashes, decompresses or applies the layer and
//! writes the [`Reply`], with progress lines on stderr when asked.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use rustix::fd::AsFd;

use super::confine::confine;
use super::stream;
#[cfg(debug_assertions)]
use super::Escape;
use super::{Reply, Request, Task};
#[cfg(feature = "bench-native-check")]
use crate::core::policy::Policy;
use crate::error::Failure;

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
    let failed = |failure: Failure| Reply::Failed {
        failure,
        verdicts: Vec::new(),
    };
    let blob = match File::open(&req.blob) {
        Ok(f) => f,
        Err(e) => return failed(Failure::io("worker: opening the layer blob", e)),
    };
    if req.task == Task::Hash {
        let confinement = match confine(req, None) {
            Ok(c) => c,
            Err(e) => return failed(Failure::Retry(e)),
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
        return failed(Failure::Retry("worker: no inherited fd".into()));
    }
    if req.task == Task::Decompress {
        // SAFETY: the service passed this fd number for the file it dup'ed
        // for us (see `spawn`); nothing else in this process owns or closes
        // it, so taking ownership of it here is sound.
        let out = File::from(unsafe { OwnedFd::from_raw_fd(req.root_fd) });
        let confinement = match confine(req, None) {
            Ok(c) => c,
            Err(e) => return failed(Failure::Retry(e)),
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
        return failed(Failure::Retry(
            "worker: the layer root fd is not open".into(),
        ));
    }
    let cache = match std::fs::read(&req.tar_cache) {
        Ok(b) => b,
        Err(e) => return failed(Failure::io("worker: reading the compiled tar check", e)),
    };
    let mut inspect_files = Vec::new();
    for (label, path) in &req.inspect {
        match std::fs::read(path) {
            Ok(b) => inspect_files.push((label.clone(), b)),
            Err(e) => {
                return failed(Failure::io(
                    &format!("worker: reading the compiled inspect step {label}"),
                    e,
                ))
            }
        }
    }
    let confinement = match confine(req, Some(root.as_fd())) {
        Ok(c) => c,
        Err(e) => return failed(Failure::Retry(e)),
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
        return failed(Failure::Retry(
            "worker: this tarpool was built without the bench-native-check feature".into(),
        ));
    } else {
        tar = match crate::wasm::TarOnly::load(&cache) {
            Ok(t) => t,
            Err(e) => return failed(Failure::Retry(format!("worker: {e}"))),
        };
        guest = match tar.session(crate::extract::view::Mode::Layer, &req.policy) {
            Ok(c) => c,
            Err(e) => return failed(e.into()),
        };
        &mut guest
    };
    let inspectors = match crate::wasm::Inspectors::load(&inspect_files) {
        Ok(i) => i,
        Err(e) => return failed(Failure::Retry(format!("worker: {e}"))),
    };
    let mut inspected;
    let check: &mut dyn crate::extract::view::TarCheck = if inspectors.is_empty() {
        check
    } else {
        inspected = super::inspected::Inspected::new(
            check,
            &inspectors,
            u32::try_from(req.n).unwrap_or(u32::MAX),
            req.policy.max_contents_files.limit,
        );
        &mut inspected
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
