//! Runs the format steps: the WebAssembly components that read untrusted
//! bytes (`guest-steps/*`, built by `build.rs` and embedded here, or
//! components named in the config, each pinned by sha256).
//!
//! Steps are swappable per format: the config lists, in order, the
//! components for `classify` (the first whose answer is not `unknown` wins)
//! and for `manifest` (the first that recognises the image wins); `tar-check`
//! is one component, the only tar parser.
//!
//! Each call gets a fresh [`Store`] with a WASI context that grants nothing
//! (no preopens, environment, arguments, network or inherited stdio), a
//! memory limit and a fuel budget; the store and instance are dropped after
//! the call, so a trapped instance is never reused. Compiled components are
//! cached on disk, keyed by the wasm bytes and the engine's configuration.
//!
//! This file holds [`Steps`], its config and errors; `cache.rs` the engine
//! and compiled components, `store.rs` the per-call store, `limits.rs` the
//! guests' limits, and one file per step (`classify`, `manifest`, `tarcheck`,
//! `user`, `listing`).

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

mod cache;
mod classify;
pub mod describe;
mod inspect;
#[cfg(test)]
pub(crate) mod inspect_tests;
mod limits;
mod listing;
mod manifest;
mod store;
mod tarcheck;
#[cfg(test)]
mod tests;
mod user;

pub use inspect::{Answer, ContentsBudget, ImageInfo, Inspectors, Judged, Verdict};
pub use listing::{ListOf, ListingStep, NextPage, Page};
pub use tarcheck::{TarOnly, TarSession};
pub use user::{UserIds, UserStep};

use cache::{component_bytes, load_component, new_engine};
use classify::classify_bindings::ClassifyStepPre;
use limits::{one_line, Slots, CLASSIFY_FUEL, MANIFEST_FUEL, MAX_CONCURRENT, MAX_MEMBER_READ};
use manifest::manifest_bindings::{self, ManifestStepPre};
use store::{new_store, State};
use tarcheck::tar_bindings::TarCheckStepPre;

thread_local! {
    /// Time this thread spent in `classify` and `parse_manifest` calls since
    /// the last [`take_guest_time`], in nanoseconds.
    static GUEST_NS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Time this thread spent in classify and manifest guests since the last
/// call (the engine reports it per transition).
pub fn take_guest_time() -> std::time::Duration {
    std::time::Duration::from_nanos(GUEST_NS.replace(0))
}

/// Adds the time since `t` to this thread's guest time.
fn count_guest_time(t: std::time::Instant) {
    let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
    GUEST_NS.set(GUEST_NS.get().saturating_add(ns));
}

/// A step failed; see the variants for whom it blames.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The guest examined the input and rejected it (blames the input).
    #[error("{0}")]
    Rejected(String),
    /// The guest trapped or ran out of fuel/memory on this input (also
    /// blames the input, but kept apart).
    #[error("format step trapped: {0}")]
    Trapped(String),
    /// Host-side failure (bug or environment).
    #[error("format step host error: {0}")]
    Host(String),
}

fn host_err(what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::Host(one_line(&format!("{what}: {e:#}"), 1000))
}

/// The compiled format steps, ready to instantiate. Cheap to share: wrap in
/// an `Arc` and call from any thread.
pub struct Steps {
    engine: Engine,
    classify: Vec<Loaded<ClassifyStepPre<State>>>,
    manifest: Vec<Loaded<ManifestStepPre<State>>>,
    tar: Loaded<TarCheckStepPre<State>>,
    /// Where the compiled tar check is cached (for the worker).
    tar_cwasm: Option<PathBuf>,
    /// The inspect steps, and where each is cached compiled (for the
    /// worker): (label, sha256, WIT version, cache file).
    inspect: Inspectors,
    inspect_cwasm: Vec<CachedInspect>,
    options: ManifestOptions,
    max_member_read: usize,
    slots: Slots,
    classify_fuel: u64,
    manifest_fuel: u64,
    cache_warning: Option<String>,
}

/// A component ready to instantiate, and what it is.
struct Loaded<P> {
    /// `builtin:NAME` or the file's path.
    label: String,
    /// sha256 (hex) of the component's bytes.
    sha256: String,
    /// The `tarpool:steps` version it was built against.
    wit: String,
    pre: P,
}

/// Which component runs a step: one built into the binary, or a file
/// pinned by the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum ComponentSpec {
    /// `builtin:classify`, `builtin:manifest`, `builtin:rootfs-dir`,
    /// `builtin:tarcheck`.
    Builtin(String),
    File {
        path: PathBuf,
        sha256: String,
    },
}

/// The platform the manifest step picks from an index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManifestOptions {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub max_index_depth: u32,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            max_index_depth: 4,
        }
    }
}

/// Which components run each step, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct StepsConfig {
    pub classify: Vec<ComponentSpec>,
    pub manifest: Vec<ComponentSpec>,
    pub tar_check: ComponentSpec,
    /// The operator's rules: inspect steps, asked in order about each
    /// image's configuration and each layer's entries (none by default).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inspect: Vec<ComponentSpec>,
    /// Largest manifest, index or config the manifest step may read (the
    /// policy's `max-json-bytes`).
    #[serde(skip)]
    pub max_member_read: Option<usize>,
    pub platform: ManifestOptions,
}

impl Default for StepsConfig {
    fn default() -> Self {
        let b = |n: &str| ComponentSpec::Builtin(format!("builtin:{n}"));
        StepsConfig {
            classify: vec![b("classify")],
            manifest: vec![b("manifest"), b("rootfs-dir")],
            tar_check: b("tarcheck"),
            inspect: Vec::new(),
            max_member_read: None,
            platform: ManifestOptions::default(),
        }
    }
}

/// Reads one member of an image's unit, by name, for the manifest step. It
/// owns what it reads from (an open file, the blobs' paths, the caps): it
/// lives in the data of the store that runs the guest.
pub type MemberReader = Box<dyn FnMut(&str) -> Result<Vec<u8>, String> + Send>;

/// One component of a configured chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainEntry {
    /// The `[steps]` key: `classify`, `manifest`, `tar-check`.
    pub step: &'static str,
    pub world: &'static str,
    /// `builtin` or `file`.
    pub origin: &'static str,
    /// `builtin:NAME` or the file's path.
    pub component: String,
    pub sha256: String,
    /// The `tarpool:steps` version it was built against.
    pub wit_version: String,
}

/// A configured inspect step: who it is, and where it is cached compiled
/// for the extraction worker.
struct CachedInspect {
    label: String,
    sha256: String,
    wit: String,
    world: &'static str,
    cwasm: Option<PathBuf>,
}

/// The linker of the configurable steps: WASI (nothing of it granted) and
/// the manifest step's `source` import.
fn step_linker(engine: &Engine) -> Result<Linker<State>, StepError> {
    let mut linker = cache::wasi_linker(engine)?;
    manifest_bindings::ManifestStep::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
        .map_err(|e| host_err("linking the source interface", e))?;
    Ok(linker)
}

/// What [`check_component`] found in a component this host accepts.
#[derive(Debug, Clone)]
pub struct Checked {
    pub sha256: String,
    pub size: usize,
    /// Compiling it (once per host: the service caches the result).
    pub compile: std::time::Duration,
    pub description: describe::Description,
}

/// Whether this host can run `wasm` as a step, without running it: a
/// component of at most [`describe::MAX_COMPONENT_BYTES`], of a world of
/// `wit/tarpool.wit` built against a compatible version, importing only
/// what the host provides, whose exports have the world's types. The
/// refusal is one line.
pub fn check_component(wasm: &[u8]) -> Result<Checked, String> {
    if wasm.len() > describe::MAX_COMPONENT_BYTES {
        return Err(format!(
            "{} bytes: a component is at most {} bytes",
            wasm.len(),
            describe::MAX_COMPONENT_BYTES
        ));
    }
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
            return Err("a core WebAssembly module, not a component: build it for wasm32-wasip2 (see docs/steps.md)".into())
        }
        Some([0, b'a', b's', b'm', ..]) => {}
        _ => return Err("not WebAssembly: no `\\0asm` header".into()),
    }
    let engine = new_engine().map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    let component = wasmtime::component::Component::new(&engine, wasm).map_err(|e| {
        one_line(
            &format!("not a WebAssembly component this host can compile: {e:#}"),
            300,
        )
    })?;
    let compile = t.elapsed();
    let description = describe::describe(&engine, &component)?;
    let linker = step_linker(&engine).map_err(|e| e.to_string())?;
    let world = description.world;
    let typed = linker.instantiate_pre(&component).and_then(|pre| {
        use describe::World;
        match world {
            World::ClassifyStep => ClassifyStepPre::new(pre).map(drop),
            World::ManifestStep => ManifestStepPre::new(pre).map(drop),
            World::TarCheckStep => TarCheckStepPre::new(pre).map(drop),
            World::InspectStep | World::InspectContentsStep => {
                inspect::InspectPre::new(world, pre).map(drop)
            }
            World::UserStep | World::ListingStep => Ok(()),
        }
    });
    if let Err(e) = typed {
        return Err(one_line(
            &format!(
                "its exports and imports do not have the types of {}: {e:#}",
                world.name()
            ),
            300,
        ));
    }
    if world.config_key().is_none() {
        return Err(format!(
            "{} is built in only: no configuration swaps it",
            world.name()
        ));
    }
    Ok(Checked {
        sha256: hex::encode(Sha256::digest(wasm)),
        size: wasm.len(),
        compile,
        description,
    })
}

/// Which component answered a step, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Answered {
    pub component: String,
    pub sha256: String,
}

// The engine shares `Steps` across threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Steps>();
};

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steps").finish_non_exhaustive()
    }
}

impl Steps {
    /// Compiles (or loads cached, precompiled `.cwasm` files from
    /// `cache_dir`, keyed by sha256 of the wasm bytes + wasmtime version;
    /// written atomically via temp file + rename) both components.
    ///
    /// `cache_dir` must be private to the service: a component loaded from
    /// it runs as native code. A cache that cannot be written is not an
    /// error (see [`Steps::cache_warning`]).
    pub fn load(cache_dir: &Path) -> Result<Steps, StepError> {
        Steps::load_with(cache_dir, &StepsConfig::default())
    }

    /// [`Steps::load`] with the components and options of `config`.
    pub fn load_with(cache_dir: &Path, config: &StepsConfig) -> Result<Steps, StepError> {
        let engine = new_engine()?;
        let mut warnings = Vec::new();
        let linker = step_linker(&engine)?;
        let mut prepare = |step: &str, spec: &ComponentSpec| {
            let (label, wasm) = component_bytes(spec)?;
            let sha256 = hex::encode(Sha256::digest(&wasm));
            // Cache files are named after the component (`classify-<key>`).
            let name = match spec {
                ComponentSpec::Builtin(n) => n.trim_start_matches("builtin:"),
                ComponentSpec::File { .. } => "component",
            };
            let (component, cached) =
                load_component(&engine, cache_dir, name, &wasm, &mut warnings)?;
            let d = describe::describe(&engine, &component)
                .map_err(|e| StepError::Host(format!("component {label}: {e}")))?;
            if d.world.config_key() != Some(step) {
                return Err(StepError::Host(format!(
                    "component {label} is a {} component; the config lists it for the {step} step",
                    d.world.name()
                )));
            }
            let pre = linker
                .instantiate_pre(&component)
                .map_err(|e| host_err(&format!("preparing the {step} step {label}"), e))?;
            Ok::<_, StepError>((label, sha256, d, pre, cached))
        };
        let mut classify = Vec::new();
        for spec in &config.classify {
            let (label, sha256, d, pre, _) = prepare("classify", spec)?;
            let wit = d.wit_version;
            let pre = ClassifyStepPre::new(pre)
                .map_err(|e| host_err(&format!("{label} is not a classify-step component"), e))?;
            classify.push(Loaded {
                label,
                sha256,
                wit,
                pre,
            });
        }
        let mut manifest = Vec::new();
        for spec in &config.manifest {
            let (label, sha256, d, pre, _) = prepare("manifest", spec)?;
            let wit = d.wit_version;
            let pre = ManifestStepPre::new(pre)
                .map_err(|e| host_err(&format!("{label} is not a manifest-step component"), e))?;
            manifest.push(Loaded {
                label,
                sha256,
                wit,
                pre,
            });
        }
        if classify.is_empty() || manifest.is_empty() {
            return Err(StepError::Host(
                "the config lists no classify or no manifest component".into(),
            ));
        }
        let (label, sha256, d, pre, tar_cwasm) = prepare("tar-check", &config.tar_check)?;
        let wit = d.wit_version;
        let pre = TarCheckStepPre::new(pre)
            .map_err(|e| host_err(&format!("{label} is not a tar-check-step component"), e))?;
        let tar = Loaded {
            label,
            sha256,
            wit,
            pre,
        };
        let mut inspect = Vec::new();
        let mut inspect_cwasm = Vec::new();
        for spec in &config.inspect {
            let (label, sha256, d, pre, cwasm) = prepare("inspect", spec)?;
            let pre = inspect::InspectPre::new(d.world, pre).map_err(|e| {
                host_err(
                    &format!("{label} is not an {} component", d.world.name()),
                    e,
                )
            })?;
            inspect.push((label.clone(), pre));
            inspect_cwasm.push(CachedInspect {
                label,
                sha256,
                wit: d.wit_version,
                world: d.world.name(),
                cwasm,
            });
        }
        Ok(Steps {
            inspect: Inspectors::new(engine.clone(), inspect),
            inspect_cwasm,
            engine,
            classify,
            manifest,
            tar,
            tar_cwasm,
            options: config.platform.clone(),
            max_member_read: config.max_member_read.unwrap_or(MAX_MEMBER_READ),
            slots: Slots::new(MAX_CONCURRENT),
            classify_fuel: CLASSIFY_FUEL,
            manifest_fuel: MANIFEST_FUEL,
            cache_warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
        })
    }

    /// The components in use, per step, for `tarpool config show` and the
    /// audit log.
    pub fn components(&self) -> Vec<(&'static str, Answered)> {
        let a = |l: &str, s: &str| Answered {
            component: l.to_string(),
            sha256: s.to_string(),
        };
        let mut v: Vec<(&'static str, Answered)> = Vec::new();
        v.extend(
            self.classify
                .iter()
                .map(|c| ("classify", a(&c.label, &c.sha256))),
        );
        v.extend(
            self.manifest
                .iter()
                .map(|c| ("manifest", a(&c.label, &c.sha256))),
        );
        v.push(("tar-check", a(&self.tar.label, &self.tar.sha256)));
        v
    }

    /// The configured chains, for `tarpool steps list`: each component in
    /// the order it is asked.
    pub fn chains(&self) -> Vec<ChainEntry> {
        let entry = |step: &'static str, world: &'static str, label: &str, sha: &str, wit: &str| {
            ChainEntry {
                step,
                world,
                origin: if label.starts_with("builtin:") {
                    "builtin"
                } else {
                    "file"
                },
                component: label.to_string(),
                sha256: sha.to_string(),
                wit_version: wit.to_string(),
            }
        };
        let mut v = Vec::new();
        for c in &self.classify {
            v.push(entry(
                "classify",
                "classify-step",
                &c.label,
                &c.sha256,
                &c.wit,
            ));
        }
        for c in &self.manifest {
            v.push(entry(
                "manifest",
                "manifest-step",
                &c.label,
                &c.sha256,
                &c.wit,
            ));
        }
        let t = &self.tar;
        v.push(entry(
            "tar-check",
            "tar-check-step",
            &t.label,
            &t.sha256,
            &t.wit,
        ));
        for c in &self.inspect_cwasm {
            v.push(entry("inspect", c.world, &c.label, &c.sha256, &c.wit));
        }
        v
    }

    /// The inspect steps (none unless configured).
    pub fn inspectors(&self) -> &Inspectors {
        &self.inspect
    }

    /// The inspect steps' answers about an image, each call in one of the
    /// engine's instance slots (as every other step's).
    pub fn inspect_image(&self, image: &ImageInfo) -> Result<Vec<Answer>, StepError> {
        let _slot = self.slots.acquire();
        self.inspect.check_image(image)
    }

    /// The inspect steps' compiled cache files, for the extraction worker,
    /// as (label, file); an error names one that could not be cached.
    pub fn inspect_caches(&self) -> Result<Vec<(String, PathBuf)>, StepError> {
        self.inspect_cwasm
            .iter()
            .map(|CachedInspect { label, cwasm, .. }| {
                cwasm.clone().map(|f| (label.clone(), f)).ok_or_else(|| {
                    StepError::Host(format!(
                        "the inspect step {label} could not be cached compiled for the extraction worker"
                    ))
                })
            })
            .collect()
    }

    /// What the configured inspect steps are, for the identity of the
    /// layers they judged: the sha256 of their sha256s, in order (None
    /// when none is configured).
    pub fn inspect_identity(&self) -> Option<String> {
        (!self.inspect_cwasm.is_empty()).then(|| {
            let mut h = Sha256::new();
            for c in &self.inspect_cwasm {
                h.update(c.sha256.as_bytes());
                h.update(b"\n");
            }
            hex::encode(h.finalize())
        })
    }

    /// Why the compiled-component cache could not be written during
    /// [`Steps::load`], if it could not (the steps work regardless).
    pub fn cache_warning(&self) -> Option<&str> {
        self.cache_warning.as_deref()
    }

    fn new_store(
        &self,
        fuel: u64,
        memory: usize,
        reader: Option<MemberReader>,
    ) -> Result<(Store<State>, MemoryOutputPipe), StepError> {
        new_store(&self.engine, fuel, memory, reader, self.max_member_read)
    }

    /// The compiled tar check's cache file, for the extraction worker (it
    /// loads only that component).
    pub fn tar_check_cache(&self) -> Option<&Path> {
        self.tar_cwasm.as_deref()
    }
}

/// Runs a closure when dropped.
struct Finally<F: FnMut()>(F);

impl<F: FnMut()> Drop for Finally<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// One `Steps` for the unit tests of every module (compiled once per test
/// binary).
#[cfg(test)]
pub fn test_steps() -> &'static Steps {
    static STEPS: std::sync::OnceLock<Steps> = std::sync::OnceLock::new();
    STEPS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tarpool-wasm-test-{}", std::process::id()));
        Steps::load(&dir).expect("load the format steps")
    })
}
