//! The extraction worker's confinement holds by itself: told (through its
//! debug-build test hook) to create a file outside the layer root with the
//! path checks bypassed, it gets EACCES from Landlock; inside the root the
//! same hook succeeds, so the test can tell the two apart.
//!
//! The same holds with the Landlock ABI limited to 1 or 2 (Debian 12's
//! kernel has 2), where the seccomp allowlist denies what the ruleset does
//! not cover: connecting a socket, truncating a file by path. These tests
//! run on this machine's kernel and again in the VM on Debian 12's
//! (`tests/vm/inside.sh`).

use crate::harness::*;
use std::fs::File;
use tarpool::worker::{spawn_with, Escape, Reply, Request};

fn request(dir: &std::path::Path, escape: std::path::PathBuf) -> Request {
    // Any readable files do for the blob and the cache: the hook answers
    // before they are parsed.
    let blob = dir.join("blob");
    std::fs::write(&blob, b"").unwrap();
    let cache = dir.join("cache.cwasm");
    std::fs::write(&cache, b"").unwrap();
    Request {
        task: tarpool::worker::Task::Apply,
        root_fd: -1,
        blob,
        layer: serde_json::from_value(serde_json::json!({
            "member": "1.tar", "media": "tar", "blob": "sha256:00", "offset": 0, "len": 0,
            "digest": null, "diff_id": null, "chain_id": null
        }))
        .unwrap(),
        n: 1,
        policy: tarpool::core::policy::Policy::default_policy(),
        tar_cache: cache,
        inspect: Vec::new(),
        unconfined: false,
        test_escape: Some(escape),
        test_no_landlock: false,
        test_landlock_abi: None,
        test_escape_kind: Default::default(),
        progress: false,
        bench_native_check: false,
    }
}

fn attempt(escape_to: &str) -> (i32, String, bool) {
    attempt_with(escape_to, Escape::Create, None)
}

/// The test hook's `kind` of escape towards `escape_to` (relative to the
/// test's directory, which holds `root` and `outside`), with the Landlock
/// ABI limited to `abi`: the errno, the confinement, whether the target
/// exists afterwards.
fn attempt_with(escape_to: &str, kind: Escape, abi: Option<u8>) -> (i32, String, bool) {
    let env = Env::new();
    let dir = env.dir.path();
    std::fs::create_dir_all(dir.join("root/sub")).unwrap();
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    let root = File::open(dir.join("root")).unwrap();
    let target = dir.join(escape_to);
    if kind == Escape::Truncate {
        std::fs::write(&target, b"precious").unwrap();
    }
    let mut req = request(dir, target.clone());
    req.test_escape_kind = kind;
    req.test_landlock_abi = abi;
    if kind == Escape::Connect {
        req.test_escape = Some(escape_to.into());
    }
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tarpool"));
    let reply = spawn_with(exe, &mut req, std::os::fd::AsFd::as_fd(&root)).unwrap();
    match reply {
        Reply::Escape { errno, confinement } => {
            if kind == Escape::Truncate && errno != 0 {
                assert_eq!(std::fs::read(&target).unwrap(), b"precious");
            }
            (errno, confinement, target.exists())
        }
        other => panic!("{other:?}"),
    }
}

/// The kernel's Landlock ABI (0 without Landlock).
fn kernel_landlock_abi() -> u8 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with this flag and a null, zero-sized attribute the call only
    // returns the ABI version (or -1); it touches no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u8::try_from(v.max(0)).unwrap_or(u8::MAX)
}

/// How the worker describes its Landlock ruleset on this kernel: it asks
/// for ABI 5, and an older kernel enforces part of it.
fn landlock_in_force() -> String {
    match kernel_landlock_abi() {
        k if k >= 5 => "landlock fully enforced (ABI 5)".to_string(),
        k => format!("landlock partially enforced (ABI {k})"),
    }
}

/// On every Landlock ABI from 1 to the kernel's, a worker that tries to
/// write outside its root, truncate a file there by path, or connect a TCP
/// socket is denied: by Landlock where its ABI covers the access, by the
/// seccomp filter where it does not. Run here (Landlock ABI 7) and in the VM
/// (Debian 12's kernel, ABI 2), where asking for a newer ABI than the
/// kernel's leaves Landlock partially enforced and seccomp the rest.
#[test]
fn on_every_landlock_abi_the_worker_cannot_write_outside_truncate_or_connect() {
    let kernel = kernel_landlock_abi();
    assert!(kernel >= 1, "this test needs Landlock");
    eprintln!("kernel Landlock ABI {kernel}");
    // Something listening, so a connect that got through would succeed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    for abi in [Some(1), Some(2), Some(3), None] {
        let (errno, confinement, exists) = attempt_with("outside/escaped", Escape::Create, abi);
        assert_eq!(errno, libc::EACCES, "{abi:?}: {confinement}");
        assert!(!exists, "{abi:?}: the worker wrote outside its root");
        assert!(confinement.contains("seccomp allowlist"), "{confinement}");
        // The worker asks for ABI 5 unless told otherwise.
        let asked = abi.unwrap_or(5);
        let want = if asked <= kernel {
            format!("landlock fully enforced (ABI {asked})")
        } else {
            format!("landlock partially enforced (ABI {kernel})")
        };
        assert!(confinement.contains(&want), "{abi:?}: {confinement}");
        // Truncate by path: Landlock's from ABI 3; seccomp's everywhere.
        let (errno, confinement, _) = attempt_with("outside/file", Escape::Truncate, abi);
        assert!(
            errno == libc::EPERM || errno == libc::EACCES,
            "{abi:?}: truncate gave errno {errno}: {confinement}"
        );
        // Inside the root too: truncate(2) is not on the allowlist at all.
        let (errno, _, _) = attempt_with("root/file", Escape::Truncate, abi);
        assert_eq!(errno, libc::EPERM, "{abi:?}");
        // TCP: Landlock's from ABI 4; no socket at all under seccomp.
        let (errno, confinement, _) = attempt_with(&addr, Escape::Connect, abi);
        assert_eq!(errno, libc::EPERM, "{abi:?}: {confinement}");
    }
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "a worker connected");
}

/// A system call outside the allowlist kills the worker (SIGSYS), and the
/// service says why it stopped.
#[test]
fn a_call_outside_the_seccomp_allowlist_kills_the_worker() {
    let env = Env::new();
    let dir = env.dir.path();
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let root = File::open(dir.join("root")).unwrap();
    let mut req = request(dir, dir.join("root/x"));
    req.test_escape_kind = Escape::Unlisted;
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tarpool"));
    match spawn_with(exe, &mut req, std::os::fd::AsFd::as_fd(&root)) {
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("SIGSYS") && e.contains("seccomp allowlist"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_worker_cannot_write_outside_its_root_even_with_path_checks_bypassed() {
    let (errno, confinement, exists) = attempt("outside/escaped");
    assert_eq!(errno, libc::EACCES, "{confinement}");
    assert!(!exists, "the worker wrote outside its root");
    assert!(confinement.contains("no_new_privs"), "{confinement}");
    assert!(confinement.contains(&landlock_in_force()), "{confinement}");
    assert!(
        confinement.contains("capabilities CAP_CHOWN,CAP_FOWNER,CAP_DAC_OVERRIDE,CAP_FSETID")
            && !confinement.contains("CAP_MKNOD")
            && !confinement.contains("CAP_SYS_ADMIN"),
        "{confinement}"
    );
    // Next to the root, with a name sharing its prefix: still outside.
    let (errno, _, exists) = attempt("rootx");
    assert_eq!(errno, libc::EACCES);
    assert!(!exists);
    // Inside the root the hook works: the denial above is Landlock's.
    let (errno, _, exists) = attempt("root/sub/inside");
    assert_eq!(errno, 0);
    assert!(exists);
}

/// Where Landlock is not enforced the worker refuses, unless the operator
/// opted out; then it runs and says so.
#[test]
fn without_landlock_the_worker_refuses_unless_the_operator_opted_out() {
    let env = Env::new();
    let dir = env.dir.path();
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let root = File::open(dir.join("root")).unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tarpool"));
    let mut req = request(dir, dir.join("root/x"));
    req.test_no_landlock = true;
    match spawn_with(exe, &mut req, std::os::fd::AsFd::as_fd(&root)).unwrap() {
        Reply::Failed { failure, .. } => assert!(
            failure
                .to_string()
                .contains("refusing to extract unconfined"),
            "{failure}"
        ),
        other => panic!("{other:?}"),
    }
    req.unconfined = true;
    match spawn_with(exe, &mut req, std::os::fd::AsFd::as_fd(&root)).unwrap() {
        Reply::Escape { errno, confinement } => {
            assert_eq!(errno, 0);
            assert!(confinement.contains("operator opt-out"), "{confinement}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_worker_reports_its_progress_to_the_service() {
    let env = Env::new();
    let dir = env.dir.path();
    let steps = tarpool::wasm::Steps::load_with(&dir.join("cache"), &Default::default()).unwrap();
    // A layer of 300 files in 3 directories.
    let blob = dir.join("layer.tar");
    let mut b = tar::Builder::new(File::create(&blob).unwrap());
    for i in 0..300 {
        let data = vec![b'x'; 4096 + i];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("d{}/f{i}", i % 3), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap();
    let len = std::fs::metadata(&blob).unwrap().len();
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let root = File::open(dir.join("root")).unwrap();
    let mut req = request(dir, dir.join("unused"));
    req.test_escape = None;
    req.blob = blob;
    req.tar_cache = steps.tar_check_cache().unwrap().to_path_buf();
    req.layer = serde_json::from_value(serde_json::json!({
        "member": "1.tar", "media": "tar", "blob": "sha256:00", "offset": 0, "len": len,
        "digest": null, "diff_id": null, "chain_id": null
    }))
    .unwrap();
    req.progress = true;
    let seen = std::sync::Mutex::new(Vec::new());
    let on = |raw: u64, entries: u64| seen.lock().unwrap().push((raw, entries));
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tarpool"));
    let reply = tarpool::worker::spawn_observed(
        exe,
        &mut req,
        Some(std::os::fd::AsFd::as_fd(&root)),
        Some(&on),
    )
    .unwrap();
    let Reply::Applied { stats, .. } = reply else {
        panic!("{reply:?}");
    };
    let seen = seen.into_inner().unwrap();
    assert!(!seen.is_empty(), "no progress reported");
    assert!(
        seen.windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "progress went backwards: {seen:?}"
    );
    assert_eq!(*seen.last().unwrap(), (len, stats.entries), "{seen:?}");
    assert!(stats.entries >= 300, "{stats:?}");
    assert!(dir.join("root/d2/f299").exists());
}

/// What the worker's decompress task makes of `blob` (compressed as
/// `media`): the bytes it wrote and its confinement, or its failure.
fn decompress(blob: &[u8], media: &str) -> Result<(Vec<u8>, String), String> {
    let env = Env::new();
    let dir = env.dir.path();
    let mut req = request(dir, dir.join("unused"));
    std::fs::write(&req.blob, blob).unwrap();
    req.task = tarpool::worker::Task::Decompress;
    req.test_escape = None;
    req.layer.media = serde_json::from_value(serde_json::json!(media)).unwrap();
    req.layer.len = blob.len() as u64;
    let out_path = dir.join("staging");
    let out = File::create(&out_path).unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tarpool"));
    match spawn_with(exe, &mut req, std::os::fd::AsFd::as_fd(&out)).unwrap() {
        Reply::Decompressed { bytes, confinement } => {
            let got = std::fs::read(&out_path).unwrap();
            assert_eq!(got.len() as u64, bytes);
            Ok((got, confinement))
        }
        Reply::Failed { failure, .. } => Err(failure.to_string()),
        other => panic!("{other:?}"),
    }
}

/// Image archives are decompressed by the confined worker, never by the
/// service: a corrupt stream is the worker's diagnosis, a good one lands in
/// the file the service passed, written with no capability and no path.
#[test]
fn archives_are_decompressed_by_the_confined_worker() {
    use std::io::Write as _;
    let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&data).unwrap();
    let gz = gz.finish().unwrap();
    let mut bad_crc = gz.clone();
    let at = bad_crc.len() - 6;
    bad_crc[at] ^= 0xff;
    let zst = zstd::encode_all(&data[..], 3).unwrap();
    let mut bad_zst = zst.clone();
    let mid = bad_zst.len() / 2;
    bad_zst.truncate(mid);
    for (name, blob, media, want) in [
        ("gzip", &gz, "gzip", Ok(())),
        ("zstd", &zst, "zstd", Ok(())),
        (
            "gzip, bad crc",
            &bad_crc,
            "gzip",
            Err("corrupt compressed archive"),
        ),
        (
            "zstd, cut short",
            &bad_zst,
            "zstd",
            Err("corrupt compressed archive"),
        ),
    ] {
        match (decompress(blob, media), want) {
            (Ok((got, confinement)), Ok(())) => {
                assert!(got == data, "{name}: other bytes");
                assert!(
                    confinement.contains("no_new_privs")
                        && confinement.contains(&landlock_in_force())
                        && confinement.contains("capabilities none"),
                    "{name}: {confinement}"
                );
            }
            (Err(e), Err(frag)) => assert!(e.contains(frag), "{name}: {e}"),
            (got, want) => panic!(
                "{name}: got {:?}, expected {want:?}",
                got.map(|(b, c)| (b.len(), c))
            ),
        }
    }
}
