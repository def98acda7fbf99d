//! Builds the WebAssembly format steps (`guest-steps/*`) for
//! `wasm32-wasip2` and tells the host crate where the components are, as
//! `TARPOOL_*_WASM` (see `GUESTS`; for
//! `include_bytes!(env!(..))` in `src/wasm/`).
//!
//! The guests are built by a nested `cargo build` of this workspace into a
//! target directory of its own under `OUT_DIR`, so it neither fights the
//! outer build over its target directory nor inherits its flags. Their
//! profile (small, no debug info, overflow checks on) is set with `--config`
//! on the command line rather than in the workspace profiles.
//!
//! `TARPOOL_WORKSPACE_ROOT` overrides where the workspace is (default: the
//! parent of this crate), for building `src/wasm/` from a scratch crate.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip2";
/// (package, variable naming its `.wasm`).
const GUESTS: [(&str, &str); 6] = [
    ("listing", "TARPOOL_LISTING_WASM"),
    ("classify", "TARPOOL_CLASSIFY_WASM"),
    ("manifest", "TARPOOL_MANIFEST_WASM"),
    ("rootfs-dir", "TARPOOL_ROOTFS_DIR_WASM"),
    ("tarcheck", "TARPOOL_TARCHECK_WASM"),
    ("user", "TARPOOL_USER_WASM"),
];

/// Variables the outer build sets (or a developer's shell may) that would
/// change how, where or for what the nested build compiles.
const SCRUB: [&str; 16] = [
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_PATH",
];

fn main() {
    println!("cargo:rerun-if-env-changed=TARPOOL_WORKSPACE_ROOT");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = match env::var_os("TARPOOL_WORKSPACE_ROOT") {
        Some(root) => PathBuf::from(root),
        None => manifest_dir.join(".."),
    };
    let root = root
        .canonicalize()
        .unwrap_or_else(|e| panic!("workspace root {}: {e}", root.display()));
    for watched in ["wit", "guest-steps", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out_dir.join("guest-target");
    build_guests(&root, &target_dir);

    for (krate, var) in GUESTS {
        let wasm = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", krate.replace('-', "_")));
        assert!(wasm.is_file(), "guest build produced no {}", wasm.display());
        println!("cargo:rustc-env={var}={}", wasm.display());
    }
}

fn build_guests(root: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for (krate, _) in GUESTS {
        cmd.args(["-p", krate]);
    }
    for setting in [
        "profile.release.opt-level=\"s\"",
        "profile.release.debug=false",
        "profile.release.strip=\"debuginfo\"",
        "profile.release.lto=false",
        "profile.release.incremental=false",
        "profile.release.codegen-units=16",
        "profile.release.overflow-checks=true",
        "profile.release.panic=\"abort\"",
    ] {
        cmd.args(["--config", setting]);
    }
    for var in SCRUB {
        cmd.env_remove(var);
    }
    // Anything else of the form CARGO_PROFILE_* / CARGO_TARGET_<triple>_*
    // (or cargo-internal __CARGO*) would also reach the nested build.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_TARGET_")
            || key.starts_with("__CARGO")
        {
            cmd.env_remove(key);
        }
    }
    // Nothing the nested cargo prints may be taken for a build-script
    // directive: send its stdout to our stderr.
    cmd.stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit());

    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the format steps: {e}"));
    assert!(
        status.success(),
        "building the format steps for {TARGET} failed ({status}); is the target installed? (rustup target add {TARGET})"
    );
}
