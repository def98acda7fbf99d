//! The wasmtime engine, the components' bytes (built in, or files pinned by
//! sha256), and the compiled components cached on disk.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::limits::{one_line, MANIFEST_MEMORY, MAX_CONCURRENT};
use super::store::State;
use super::{host_err, ComponentSpec, StepError};

/// The components built from `guest-steps/` into this binary, by the name
/// the config uses for them.
pub(super) static BUILTINS: [(&str, &[u8]); 4] = [
    (
        "builtin:classify",
        include_bytes!(env!("TARPOOL_CLASSIFY_WASM")),
    ),
    (
        "builtin:manifest",
        include_bytes!(env!("TARPOOL_MANIFEST_WASM")),
    ),
    (
        "builtin:rootfs-dir",
        include_bytes!(env!("TARPOOL_ROOTFS_DIR_WASM")),
    ),
    (
        "builtin:tarcheck",
        include_bytes!(env!("TARPOOL_TARCHECK_WASM")),
    ),
];

/// The wasmtime release the workspace pins (`=48.0.8`); part of the cache
/// key, besides the engine's own compatibility hash.
pub(super) const WASMTIME_VERSION: &str = "48.0.8";

/// The bytes of a configured component: built in, or read from its file and
/// checked against its pin.
pub(super) fn component_bytes(spec: &ComponentSpec) -> Result<(String, Vec<u8>), StepError> {
    match spec {
        ComponentSpec::Builtin(name) => BUILTINS
            .iter()
            .find(|(n, _)| n == name)
            .map(|(n, w)| (n.to_string(), w.to_vec()))
            .ok_or_else(|| {
                StepError::Host(format!(
                    "unknown component `{}` (built in: {})",
                    one_line(name, 80),
                    BUILTINS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }),
        ComponentSpec::File { path, sha256 } => {
            let size = fs::metadata(path)
                .map_err(|e| host_err(&format!("reading component {}", path.display()), e))?
                .len();
            if size > super::describe::MAX_COMPONENT_BYTES as u64 {
                return Err(StepError::Host(format!(
                    "component {} is {size} bytes: a component is at most {} bytes",
                    path.display(),
                    super::describe::MAX_COMPONENT_BYTES
                )));
            }
            let wasm = fs::read(path)
                .map_err(|e| host_err(&format!("reading component {}", path.display()), e))?;
            let got = hex::encode(Sha256::digest(&wasm));
            if !got.eq_ignore_ascii_case(sha256) {
                return Err(StepError::Host(format!(
                    "component {} has sha256 {got}, but the config pins {}",
                    path.display(),
                    one_line(sha256, 80)
                )));
            }
            Ok((path.display().to_string(), wasm))
        }
    }
}

pub(super) fn new_engine() -> Result<Engine, StepError> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_CONCURRENT)
        .total_core_instances(MAX_CONCURRENT * 8)
        .total_memories(MAX_CONCURRENT * 2)
        .total_tables(MAX_CONCURRENT * 8)
        .max_memory_size(MANIFEST_MEMORY);
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .consume_fuel(true)
        .wasm_backtrace_max_frames(None);
    Engine::new(&config).map_err(|e| host_err("configuring wasmtime", e))
}

/// The component in a cache file (`sha256(cwasm) || cwasm`, written by
/// [`load_component`] into the service's private cache directory), its
/// checksum verified; or why not: `truncated`, `corrupt`, or wasmtime's
/// refusal (another version or configuration).
pub(super) fn load_cached(engine: &Engine, file: &[u8]) -> Result<Component, String> {
    let (sum, cwasm) = file.split_at_checked(32).ok_or("truncated")?;
    if Sha256::digest(cwasm).as_slice() != sum {
        return Err("corrupt".into());
    }
    // SAFETY: `deserialize` trusts its input to be code that this wasmtime
    // compiled. Cache files are in the service's private cache directory,
    // written by `store_cache` with the output of `Component::serialize`
    // under a name keyed by this engine's configuration, and this one's
    // checksum has just been verified, so it is intact; wasmtime also
    // checks its version and configuration before using it.
    unsafe { Component::deserialize(engine, cwasm) }.map_err(|e| one_line(&format!("{e:#}"), 300))
}

/// A linker with WASI, and nothing of it granted (see `store.rs`): what a
/// step that imports nothing of tarpool's is linked with.
pub(super) fn wasi_linker(engine: &Engine) -> Result<Linker<State>, StepError> {
    let mut linker: Linker<State> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| host_err("linking WASI", e))?;
    Ok(linker)
}

/// Compiles `wasm`, or loads it from the cache.
///
/// A cache file is `sha256(cwasm) || cwasm`, named after the key; a file
/// that does not verify or deserialize is replaced.
pub(super) fn load_component(
    engine: &Engine,
    cache_dir: &Path,
    name: &str,
    wasm: &[u8],
    warnings: &mut Vec<String>,
) -> Result<(Component, Option<PathBuf>), StepError> {
    let path = cache_dir.join(format!("{name}-{}.cwasm", cache_key(engine, wasm)));
    if let Ok(component) = fs::read(&path)
        .map_err(drop)
        .and_then(|f| load_cached(engine, &f).map_err(drop))
    {
        return Ok((component, Some(path)));
    }
    let component = Component::new(engine, wasm)
        .map_err(|e| host_err(&format!("compiling the {name} step"), e))?;
    let cached = match component.serialize() {
        Ok(cwasm) => match store_cache(cache_dir, &path, &cwasm) {
            Ok(()) => Some(path),
            Err(e) => {
                warnings.push(format!(
                    "cannot cache the {name} step in {}: {e}",
                    cache_dir.display()
                ));
                None
            }
        },
        Err(e) => {
            warnings.push(format!("cannot serialize the {name} step: {e}"));
            None
        }
    };
    Ok((component, cached))
}

/// sha256 over the wasm bytes, the wasmtime version and the engine's
/// compatibility hash (target, flags, tunables, features).
pub(super) fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    struct ShaHasher(Sha256);
    impl std::hash::Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    h.0.update((wasm.len() as u64).to_le_bytes());
    h.0.update(wasm);
    h.0.update(WASMTIME_VERSION.as_bytes());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    hex::encode(h.0.finalize())
}

/// Writes a cache file atomically: temp file in the same directory, fsync,
/// rename.
pub(super) fn store_cache(cache_dir: &Path, path: &Path, cwasm: &[u8]) -> std::io::Result<()> {
    create_private_dir(cache_dir)?;
    let tmp: PathBuf = cache_dir.join(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cwasm")
    ));
    let result = (|| {
        let mut f = fs::File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(&Sha256::digest(cwasm))?;
        f.write_all(cwasm)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename durable; failure to sync a directory is harmless.
        if let Ok(dir) = fs::File::open(cache_dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
