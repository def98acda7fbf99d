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

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime::{StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::model;

mod classify_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "classify-step" });
}

mod manifest_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "manifest-step" });
}

mod tar_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "tar-check-step" });
}

mod user_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "user-step" });
}

use classify_bindings::ClassifyStepPre;
use manifest_bindings::ManifestStepPre;
use tar_bindings::exports::tarpool::steps::tar_check as tc;
use tar_bindings::TarCheckStepPre;

use crate::core::policy::{Action as PolicyAction, Policy};
use crate::extract::view;

/// The components built from `guest-steps/` into this binary, by the name
/// the config uses for them.
static BUILTINS: [(&str, &[u8]); 4] = [
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

/// The user step (`guest-steps/user`), for `tarpool exec` and `bundle`.
static USER_WASM: &[u8] = include_bytes!(env!("TARPOOL_USER_WASM"));
/// Linear memory and fuel of a user step: two files of at most 1 MiB each.
const USER_MEMORY: usize = 64 << 20;
const USER_FUEL: u64 = 2_000_000_000;

/// The wasmtime release the workspace pins (`=48.0.8`); part of the cache
/// key, besides the engine's own compatibility hash.
const WASMTIME_VERSION: &str = "48.0.8";

/// Linear memory a `classify` instance may use.
const CLASSIFY_MEMORY: usize = 64 << 20;
/// Linear memory a `parse` instance may use: the member list of a flat
/// rootfs archive can be large.
const MANIFEST_MEMORY: usize = 256 << 20;
/// Linear memory of a tar check instance (it keeps 16 bytes and a flag per
/// distinct path of the stream, to find duplicates).
const TAR_MEMORY: usize = 256 << 20;
/// Fuel for one tar check call: a fixed part, and a part per byte fed.
const TAR_FUEL_BASE: u64 = 50_000_000;
const TAR_FUEL_PER_BYTE: u64 = 1_000;
/// Calls running at once; further callers wait for a slot.
const MAX_CONCURRENT: u32 = 16;
/// Fuel (roughly, wasm instructions) for one `classify` call.
const CLASSIFY_FUEL: u64 = 200_000_000;
/// Fuel for one `parse` call: enough to decode several 4 MiB JSON members.
const MANIFEST_FUEL: u64 = 4_000_000_000;
/// Largest member the manifest step may read, unless the policy says
/// otherwise (`max-json-bytes`).
const MAX_MEMBER_READ: usize = 4 << 20;
/// Bytes the manifest step may read in one call, all members together.
const MAX_TOTAL_READ: usize = 32 << 20;
/// Largest `head` passed to `classify` (the WIT contract).
const MAX_HEAD: usize = 64 << 10;
/// Guest stderr kept for trap messages (a Rust guest prints its panic there).
const STDERR_CAP: usize = 4096;
/// Longest message taken from a guest.
const MAX_MESSAGE_CHARS: usize = 300;

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
            max_member_read: None,
            platform: ManifestOptions::default(),
        }
    }
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

/// What a member read callback looks like.
type ReadFn = dyn FnMut(&str) -> Result<Vec<u8>, String>;

/// The caller's read callback, lifetime erased, for the store's duration.
struct Reader(*mut ReadFn);

// SAFETY: a `Reader` lives in the data of a `Store` that `parse_manifest`
// creates, uses and drops on the calling thread; it is never sent to another
// thread. `Send` is needed only because `WasiView` requires it of the data.
unsafe impl Send for Reader {}

/// Per-call store data.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    reader: Option<Reader>,
    read_total: usize,
    max_member_read: usize,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl manifest_bindings::tarpool::steps::types::Host for State {}

impl manifest_bindings::tarpool::steps::source::Host for State {
    fn read_member(&mut self, name: String) -> Result<Vec<u8>, String> {
        let cap = self.max_member_read;
        let Some(reader) = &self.reader else {
            return Err("no member reader".into());
        };
        // SAFETY: `reader.0` was made from the `&mut ReadFn` that
        // `parse_manifest` holds borrowed for as long as this store exists
        // (the store is dropped before it returns), and nothing else uses that
        // borrow meanwhile; the guest runs on this thread, one import at a
        // time, so this is the only live reference to the callback.
        let read = unsafe { &mut *reader.0 };
        let bytes = read(&name)?;
        if bytes.len() > cap {
            return Err(format!(
                "member `{}` is {} bytes, over the {cap}-byte cap (policy rule max-json-bytes)",
                one_line(&name, 100),
                bytes.len(),
            ));
        }
        self.read_total = self.read_total.saturating_add(bytes.len());
        if self.read_total > MAX_TOTAL_READ {
            return Err(format!(
                "reading `{}` exceeds the {} MiB cap on manifest data",
                one_line(&name, 100),
                MAX_TOTAL_READ >> 20
            ));
        }
        Ok(bytes)
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
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| host_err("linking WASI", e))?;
        manifest_bindings::ManifestStep::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| host_err("linking the source interface", e))?;
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
            let pre = linker
                .instantiate_pre(&component)
                .map_err(|e| host_err(&format!("preparing the {step} step {label}"), e))?;
            Ok::<_, StepError>((label, sha256, pre, cached))
        };
        let mut classify = Vec::new();
        for spec in &config.classify {
            let (label, sha256, pre, _) = prepare("classify", spec)?;
            let pre = ClassifyStepPre::new(pre)
                .map_err(|e| host_err(&format!("{label} is not a classify-step component"), e))?;
            classify.push(Loaded { label, sha256, pre });
        }
        let mut manifest = Vec::new();
        for spec in &config.manifest {
            let (label, sha256, pre, _) = prepare("manifest", spec)?;
            let pre = ManifestStepPre::new(pre)
                .map_err(|e| host_err(&format!("{label} is not a manifest-step component"), e))?;
            manifest.push(Loaded { label, sha256, pre });
        }
        if classify.is_empty() || manifest.is_empty() {
            return Err(StepError::Host(
                "the config lists no classify or no manifest component".into(),
            ));
        }
        let (label, sha256, pre, tar_cwasm) = prepare("tar-check", &config.tar_check)?;
        let pre = TarCheckStepPre::new(pre)
            .map_err(|e| host_err(&format!("{label} is not a tar-check-step component"), e))?;
        let tar = Loaded { label, sha256, pre };
        Ok(Steps {
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

    /// Why the compiled-component cache could not be written during
    /// [`Steps::load`], if it could not (the steps work regardless).
    pub fn cache_warning(&self) -> Option<&str> {
        self.cache_warning.as_deref()
    }

    /// Tells what a blob is from its first bytes (at most 64 KiB are used)
    /// and its full length: the first classify component whose answer is
    /// not `unknown` decides.
    pub fn classify(
        &self,
        head: &[u8],
        total_size: u64,
    ) -> Result<model::Classification, StepError> {
        use classify_bindings::tarpool::steps::types::BlobKind as K;
        let head = &head[..head.len().min(MAX_HEAD)];
        let mut first_unknown = None;
        let t = std::time::Instant::now();
        let _count = Finally(|| count_guest_time(t));
        for c in &self.classify {
            let _slot = self.slots.acquire();
            let (mut store, stderr) = self.new_store(self.classify_fuel, CLASSIFY_MEMORY, None)?;
            let step = c
                .pre
                .instantiate(&mut store)
                .map_err(|e| instantiate_err("classify", e, &stderr))?;
            let result = step
                .call_classify(&mut store, head, total_size)
                .map_err(|e| trapped(e, &stderr))?;
            drop(store);
            let c = result.map_err(|e| StepError::Rejected(one_line(&e, MAX_MESSAGE_CHARS)))?;
            let out = model::Classification {
                kind: match c.kind {
                    K::Tar => model::BlobKind::Tar,
                    K::Gzip => model::BlobKind::Gzip,
                    K::Zstd => model::BlobKind::Zstd,
                    K::Empty => model::BlobKind::Empty,
                    K::Unknown => model::BlobKind::Unknown,
                },
                detail: one_line(&c.detail, MAX_MESSAGE_CHARS),
            };
            if out.kind != model::BlobKind::Unknown {
                return Ok(out);
            }
            first_unknown.get_or_insert(out);
        }
        Ok(first_unknown.expect("at least one classify component"))
    }

    /// Works out an image's layers from its unit's members, reading the
    /// members the guest asks for through `read` (each capped at 4 MiB):
    /// the first manifest component that recognises the format answers.
    pub fn parse_manifest(
        &self,
        unit: model::UnitKind,
        members: &[model::Member],
        read: &mut dyn FnMut(&str) -> Result<Vec<u8>, String>,
    ) -> Result<(model::ImageLayout, Answered), StepError> {
        use manifest_bindings::tarpool::steps::types as w;
        let unit = match unit {
            model::UnitKind::Prefix => w::UnitKind::Prefix,
            model::UnitKind::Archive => w::UnitKind::Archive,
        };
        let members: Vec<w::Member> = members
            .iter()
            .map(|m| w::Member {
                name: m.name.clone(),
                size: m.size,
            })
            .collect();
        let options = w::ManifestOptions {
            os: self.options.os.clone(),
            architecture: self.options.architecture.clone(),
            arch_variant: self.options.variant.clone(),
            max_index_depth: self.options.max_index_depth,
        };
        let read: *mut (dyn FnMut(&str) -> Result<Vec<u8>, String> + '_) = read;
        // SAFETY: this only erases the callback's lifetime so it fits in the
        // `'static` store data. The pointer is used only by `read_member`
        // while a store below is alive, and every store is dropped before
        // this function returns (and so before the borrow of `read` ends);
        // see `State::read_member`.
        let read: *mut ReadFn = unsafe {
            std::mem::transmute::<*mut (dyn FnMut(&str) -> Result<Vec<u8>, String> + '_), *mut ReadFn>(
                read,
            )
        };
        let t = std::time::Instant::now();
        let _count = Finally(|| count_guest_time(t));
        for c in &self.manifest {
            let _slot = self.slots.acquire();
            let (mut store, stderr) =
                self.new_store(self.manifest_fuel, MANIFEST_MEMORY, Some(Reader(read)))?;
            let outcome = c
                .pre
                .instantiate(&mut store)
                .map_err(|e| instantiate_err("manifest", e, &stderr))
                .and_then(|step| {
                    step.call_parse(&mut store, unit, &members, &options)
                        .map_err(|e| trapped(e, &stderr))
                });
            #[cfg(test)]
            tests::FUEL_LEFT.set(store.get_fuel().unwrap_or(0));
            drop(store);
            let Some(layout) =
                outcome?.map_err(|e| StepError::Rejected(one_line(&e, MAX_MESSAGE_CHARS)))?
            else {
                continue;
            };
            let answered = Answered {
                component: c.label.clone(),
                sha256: c.sha256.clone(),
            };
            return Ok((convert_layout(layout), answered));
        }
        Err(StepError::Rejected(format!(
            "no manifest component recognises this image (tried {})",
            self.manifest
                .iter()
                .map(|c| c.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// Starts a tar check session over one stream (a layer, or an image
    /// archive's member index), with its own store: a trap ends the session
    /// and harms nothing else.
    pub fn tar_check(
        &self,
        mode: view::Mode,
        policy: &Policy,
    ) -> Result<TarSession<'_>, StepError> {
        start_tar_check(&self.engine, &self.tar.pre, &self.slots, mode, policy)
    }

    fn new_store(
        &self,
        fuel: u64,
        memory: usize,
        reader: Option<Reader>,
    ) -> Result<(Store<State>, MemoryOutputPipe), StepError> {
        new_store(&self.engine, fuel, memory, reader, self.max_member_read)
    }

    /// The compiled tar check's cache file, for the extraction worker (it
    /// loads only that component).
    pub fn tar_check_cache(&self) -> Option<&Path> {
        self.tar_cwasm.as_deref()
    }
}

fn new_store(
    engine: &Engine,
    fuel: u64,
    memory: usize,
    reader: Option<Reader>,
    max_member_read: usize,
) -> Result<(Store<State>, MemoryOutputPipe), StepError> {
    {
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        // No preopens, environment, arguments or stdin; stdout is discarded.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory)
            .trap_on_grow_failure(true)
            .build();
        let state = State {
            wasi,
            table: ResourceTable::new(),
            limits,
            reader,
            read_total: 0,
            max_member_read,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(fuel)
            .map_err(|e| host_err("setting fuel", e))?;
        Ok((store, stderr))
    }
}

fn start_tar_check<'s>(
    engine: &Engine,
    pre: &TarCheckStepPre<State>,
    slots: &'s Slots,
    mode: view::Mode,
    policy: &Policy,
) -> Result<TarSession<'s>, StepError> {
    let slot = slots.acquire();
    let (mut store, stderr) = new_store(engine, TAR_FUEL_BASE, TAR_MEMORY, None, 0)?;
    let step = pre
        .instantiate(&mut store)
        .map_err(|e| instantiate_err("tar-check", e, &stderr))?;
    let mode = match mode {
        view::Mode::Layer => tc::Mode::Layer,
        view::Mode::Archive => tc::Mode::Archive,
    };
    let checker = step
        .tarpool_steps_tar_check()
        .checker()
        .call_constructor(&mut store, mode, &tar_policy(policy))
        .map_err(|e| trapped(e, &stderr))?;
    Ok(TarSession {
        store,
        step,
        checker,
        stderr,
        _slot: slot,
    })
}

/// Who an image's command runs as, from the user step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// The user step alone (`guest-steps/user`): `tarpool exec` and `bundle`
/// resolve an image's `User` against the bytes of its /etc/passwd and
/// /etc/group in it, never in the host.
pub struct UserStep {
    engine: Engine,
    pre: user_bindings::UserStepPre<State>,
}

impl UserStep {
    /// Compiles the built-in user step, or loads it compiled from
    /// `cache_dir` (as [`Steps::load`] does; a cache that cannot be
    /// written is not an error).
    pub fn load(cache_dir: &Path) -> Result<UserStep, StepError> {
        let engine = new_engine()?;
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| host_err("linking WASI", e))?;
        let mut warnings = Vec::new();
        let (component, _) = load_component(&engine, cache_dir, "user", USER_WASM, &mut warnings)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| host_err("preparing the user step", e))?;
        let pre = user_bindings::UserStepPre::new(pre)
            .map_err(|e| host_err("the built-in user step is not a user-step component", e))?;
        Ok(UserStep { engine, pre })
    }

    /// Resolves `spec` (the config's `User`) against the image's
    /// /etc/passwd and /etc/group bytes (None: absent). A rejection blames
    /// the image.
    pub fn resolve(
        &self,
        spec: &str,
        passwd: Option<&[u8]>,
        group: Option<&[u8]>,
    ) -> Result<UserIds, StepError> {
        let (mut store, stderr) = new_store(&self.engine, USER_FUEL, USER_MEMORY, None, 0)?;
        let step = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| instantiate_err("user", e, &stderr))?;
        let result = step
            .call_resolve_user(&mut store, spec, passwd, group)
            .map_err(|e| trapped(e, &stderr))?;
        let ids = result.map_err(|e| StepError::Rejected(one_line(&e, MAX_MESSAGE_CHARS)))?;
        Ok(UserIds {
            uid: ids.uid,
            gid: ids.gid,
            groups: ids.groups,
            home: one_line(&ids.home, 4096),
        })
    }
}

/// The tar check alone, loaded from its compiled cache file: what the
/// extraction worker runs.
pub struct TarOnly {
    engine: Engine,
    pre: TarCheckStepPre<State>,
    slots: Slots,
}

impl TarOnly {
    /// Loads a cache file written by [`Steps::load`] (`sha256 || cwasm`),
    /// checking its checksum.
    pub fn load(file: &[u8]) -> Result<TarOnly, StepError> {
        let engine = new_engine()?;
        let (sum, cwasm) = file
            .split_at_checked(32)
            .ok_or_else(|| StepError::Host("tar check cache file is truncated".into()))?;
        if Sha256::digest(cwasm).as_slice() != sum {
            return Err(StepError::Host("tar check cache file is corrupt".into()));
        }
        // SAFETY: `deserialize` trusts its input to be code that this
        // wasmtime compiled. The bytes come from the service's private cache
        // directory, written by `store_cache` with the output of
        // `Component::serialize` for this engine configuration, and their
        // checksum has just been verified; wasmtime also checks its version
        // and configuration before using them.
        let component = unsafe { Component::deserialize(&engine, cwasm) }
            .map_err(|e| host_err("loading the compiled tar check", e))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| host_err("linking WASI", e))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(TarCheckStepPre::new)
            .map_err(|e| host_err("preparing the tar check", e))?;
        Ok(TarOnly {
            engine,
            pre,
            slots: Slots::new(MAX_CONCURRENT),
        })
    }

    pub fn session(&self, mode: view::Mode, policy: &Policy) -> Result<TarSession<'_>, StepError> {
        start_tar_check(&self.engine, &self.pre, &self.slots, mode, policy)
    }
}

/// Runs a closure when dropped.
struct Finally<F: FnMut()>(F);

impl<F: FnMut()> Drop for Finally<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn convert_layout(
    layout: manifest_bindings::tarpool::steps::types::ImageLayout,
) -> model::ImageLayout {
    use manifest_bindings::tarpool::steps::types as w;
    model::ImageLayout {
        format: one_line(&layout.format, 64),
        layers: layout
            .layers
            .into_iter()
            .map(|l| model::LayerRef {
                member: l.member,
                media: match l.media {
                    w::LayerMedia::Tar => model::LayerMedia::Tar,
                    w::LayerMedia::Gzip => model::LayerMedia::Gzip,
                    w::LayerMedia::Zstd => model::LayerMedia::Zstd,
                    w::LayerMedia::Detect => model::LayerMedia::Detect,
                },
                digest: l.digest,
                diff_id: l.diff_id,
                size: l.size,
            })
            .collect(),
        config_digest: layout.config_digest,
        config: layout.config.map(|c| model::RuntimeConfig {
            env: c.env,
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            working_dir: c.working_dir,
            user: c.user,
        }),
    }
}

/// The per-entry rules of the policy, as the tar check takes them.
fn tar_policy(p: &Policy) -> tc::TarPolicy {
    let v = |a: PolicyAction| match a {
        PolicyAction::Allow => tc::Verdict::Allow,
        PolicyAction::Skip => tc::Verdict::Skip,
        PolicyAction::Strip => tc::Verdict::Strip,
        PolicyAction::Reject => tc::Verdict::Reject,
    };
    let u32_of = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
    tc::TarPolicy {
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

/// One tar check over one stream (see [`Steps::tar_check`]).
pub struct TarSession<'s> {
    store: Store<State>,
    step: tar_bindings::TarCheckStep,
    checker: wasmtime::component::ResourceAny,
    stderr: MemoryOutputPipe,
    _slot: Slot<'s>,
}

impl TarSession<'_> {
    fn progress(
        &mut self,
        r: wasmtime::Result<Result<tc::Progress, tc::Rejection>>,
    ) -> Result<view::Progress, view::CheckError> {
        let p = r
            .map_err(|e| match trapped(e, &self.stderr) {
                StepError::Trapped(m) => view::CheckError::Trapped(m),
                other => view::CheckError::Host(other.to_string()),
            })?
            .map_err(|r| view::CheckError::Rejected {
                path: one_line(&r.path, MAX_MESSAGE_CHARS),
                rule: one_line(&r.rule, 40),
                reason: one_line(&r.reason, MAX_MESSAGE_CHARS),
            })?;
        Ok(view::Progress {
            entries: p.entries.into_iter().map(convert_entry).collect(),
            decisions: p
                .decisions
                .into_iter()
                .map(|d| view::Decision {
                    path: one_line(&d.path, MAX_MESSAGE_CHARS),
                    rule: one_line(&d.rule, 40),
                    action: match d.action {
                        tc::Action::Skip => "skip",
                        tc::Action::Strip => "strip",
                        tc::Action::Clamp => "clamp",
                        tc::Action::Note => "note",
                    }
                    .to_string(),
                    detail: one_line(&d.detail, MAX_MESSAGE_CHARS),
                })
                .collect(),
            want: p.want,
        })
    }

    fn refuel(&mut self, bytes: usize) -> Result<(), view::CheckError> {
        let fuel = TAR_FUEL_BASE.saturating_add(TAR_FUEL_PER_BYTE.saturating_mul(bytes as u64));
        self.store
            .set_fuel(fuel)
            .map_err(|e| view::CheckError::Host(e.to_string()))
    }
}

impl view::TarCheck for TarSession<'_> {
    fn feed(&mut self, offset: u64, bytes: &[u8]) -> Result<view::Progress, view::CheckError> {
        self.refuel(bytes.len())?;
        let r = self.step.tarpool_steps_tar_check().checker().call_feed(
            &mut self.store,
            self.checker,
            offset,
            bytes,
        );
        self.progress(r)
    }

    fn finish(&mut self, total: u64) -> Result<view::Progress, view::CheckError> {
        self.refuel(0)?;
        let r = self.step.tarpool_steps_tar_check().checker().call_finish(
            &mut self.store,
            self.checker,
            total,
        );
        self.progress(r)
    }
}

fn convert_entry(e: tc::Entry) -> view::Entry {
    view::Entry {
        path: e.path,
        kind: match e.kind {
            tc::EntryKind::Regular => view::EntryKind::Regular,
            tc::EntryKind::Directory => view::EntryKind::Directory,
            tc::EntryKind::Symlink => view::EntryKind::Symlink,
            tc::EntryKind::Hardlink => view::EntryKind::Hardlink,
            tc::EntryKind::CharDevice => view::EntryKind::CharDevice,
            tc::EntryKind::BlockDevice => view::EntryKind::BlockDevice,
            tc::EntryKind::Fifo => view::EntryKind::Fifo,
            tc::EntryKind::Whiteout => view::EntryKind::Whiteout,
            tc::EntryKind::Opaque => view::EntryKind::Opaque,
        },
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime_sec: e.mtime_sec,
        mtime_nsec: e.mtime_nsec,
        link: e.link,
        dev_major: e.dev_major,
        dev_minor: e.dev_minor,
        xattrs: e.xattrs.into_iter().map(|x| (x.name, x.value)).collect(),
        data_offset: e.data_offset,
        data_size: e.data_size,
    }
}

/// The bytes of a configured component: built in, or read from its file and
/// checked against its pin.
fn component_bytes(spec: &ComponentSpec) -> Result<(String, Vec<u8>), StepError> {
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

fn new_engine() -> Result<Engine, StepError> {
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

/// Compiles `wasm`, or loads it from the cache.
///
/// A cache file is `sha256(cwasm) || cwasm`, named after the key; a file
/// that does not verify or deserialize is replaced.
fn load_component(
    engine: &Engine,
    cache_dir: &Path,
    name: &str,
    wasm: &[u8],
    warnings: &mut Vec<String>,
) -> Result<(Component, Option<PathBuf>), StepError> {
    let path = cache_dir.join(format!("{name}-{}.cwasm", cache_key(engine, wasm)));
    if let Ok(file) = fs::read(&path) {
        if let Some((sum, cwasm)) = file.split_at_checked(32) {
            if Sha256::digest(cwasm).as_slice() == sum {
                // SAFETY: `deserialize` trusts its input to be code that this
                // wasmtime compiled. The file is in the service's private
                // cache directory, was written by `store_cache` below with the
                // output of `Component::serialize` under a name keyed by this
                // engine's configuration, and its checksum has just been
                // verified, so it is intact; wasmtime also checks its version
                // and configuration before using it.
                if let Ok(component) = unsafe { Component::deserialize(engine, cwasm) } {
                    return Ok((component, Some(path)));
                }
            }
        }
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
fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
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
fn store_cache(cache_dir: &Path, path: &Path, cwasm: &[u8]) -> std::io::Result<()> {
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

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// An error from instantiating: a trap blames the input (it cannot, with
/// these guests, but keep the distinction), anything else is the host's.
fn instantiate_err(step: &str, e: wasmtime::Error, stderr: &MemoryOutputPipe) -> StepError {
    if e.downcast_ref::<Trap>().is_some() {
        trapped(e, stderr)
    } else {
        host_err(&format!("instantiating the {step} step"), e)
    }
}

/// A call that did not return: the guest trapped (panicked, ran out of fuel
/// or memory) on this input.
fn trapped(e: wasmtime::Error, stderr: &MemoryOutputPipe) -> StepError {
    let mut msg = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{e:#}"),
    };
    let said = stderr.contents();
    let said = String::from_utf8_lossy(&said);
    let said: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if !said.is_empty() {
        msg.push_str("; guest stderr: ");
        msg.push_str(&said.join(" | "));
    }
    StepError::Trapped(one_line(&msg, MAX_MESSAGE_CHARS))
}

/// One bounded line without control characters.
fn one_line(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push_str("...");
            break;
        }
        out.push(if guest_text::unsafe_char(c) { '?' } else { c });
    }
    out
}

/// A counting semaphore bounding concurrent instances to what the pooling
/// allocator holds, so callers wait instead of failing.
struct Slots {
    free: Mutex<u32>,
    freed: Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: u32) -> Self {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.freed.notify_one();
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

#[cfg(test)]
mod tests {
    use super::*;
    use model::{BlobKind, LayerMedia, Member, UnitKind};
    use std::cell::Cell;
    use std::sync::Arc;

    thread_local! {
        /// Fuel left after this thread's last `parse_manifest`.
        pub(super) static FUEL_LEFT: Cell<u64> = const { Cell::new(0) };
    }

    /// One `Steps` for the tests that do not change its budgets.
    fn shared() -> &'static Steps {
        test_steps()
    }

    fn tar_head(name: &str) -> Vec<u8> {
        let mut h = vec![0u8; 1024];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(b"00000000000\0");
        h[257..265].copy_from_slice(b"ustar\x0000");
        h[156] = b'0';
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h[..512].iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn members(names: &[&str]) -> Vec<Member> {
        names
            .iter()
            .map(|n| Member {
                name: (*n).to_string(),
                size: 3,
            })
            .collect()
    }

    fn no_read(name: &str) -> Result<Vec<u8>, String> {
        Err(format!("unexpected read of {name}"))
    }

    #[test]
    fn classifies() {
        let steps = shared();
        let c = steps.classify(&[0x1f, 0x8b, 8, 0, 0, 0], 1000).unwrap();
        assert_eq!(c.kind, BlobKind::Gzip);
        let c = steps.classify(&tar_head("etc/hostname"), 10240).unwrap();
        assert_eq!(c.kind, BlobKind::Tar);
        assert!(c.detail.contains("`etc/hostname`"), "{}", c.detail);
        let c = steps.classify(b"\x00garbage\n", 9).unwrap();
        assert_eq!(c.kind, BlobKind::Unknown);
        assert_eq!(steps.classify(&[], 0).unwrap().kind, BlobKind::Empty);
        // Longer heads are cut to 64 KiB.
        let mut big = tar_head("x");
        big.resize(1 << 20, 0);
        assert_eq!(steps.classify(&big, 1 << 20).unwrap().kind, BlobKind::Tar);
        match steps.classify(&[1, 2, 3], 2) {
            Err(StepError::Rejected(e)) => assert!(e.contains("head holds 3 bytes"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_ad_hoc() {
        let l = shared()
            .parse_manifest(
                UnitKind::Prefix,
                &members(&[
                    "2.tar", "10.tar", "1.tar", "3.tar", "4.tar", "5.tar", "6.tar", "7.tar",
                    "8.tar", "9.tar",
                ]),
                &mut no_read,
            )
            .unwrap()
            .0;
        assert_eq!(l.format, "ad-hoc");
        let names: Vec<&str> = l.layers.iter().map(|l| l.member.as_str()).collect();
        assert_eq!(names[0], "1.tar");
        assert_eq!(names[9], "10.tar");
        assert!(l.layers.iter().all(|l| l.media == LayerMedia::Detect));
    }

    #[test]
    fn reads_through_the_callback() {
        let manifest = br#"[{"Config":"c.json","Layers":["a/layer.tar"]}]"#.to_vec();
        let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000001"]}}"#.to_vec();
        let ms = vec![
            Member {
                name: "manifest.json".into(),
                size: manifest.len() as u64,
            },
            Member {
                name: "c.json".into(),
                size: config.len() as u64,
            },
            Member {
                name: "a/layer.tar".into(),
                size: 1024,
            },
        ];
        let mut reads = Vec::new();
        let mut read = |name: &str| {
            reads.push(name.to_string());
            match name {
                "manifest.json" => Ok(manifest.clone()),
                "c.json" => Ok(config.clone()),
                _ => Err("nope".to_string()),
            }
        };
        let l = shared()
            .parse_manifest(UnitKind::Archive, &ms, &mut read)
            .unwrap()
            .0;
        assert_eq!(l.format, "docker-archive");
        assert_eq!(l.layers[0].member, "a/layer.tar");
        assert!(l.layers[0].diff_id.as_deref().unwrap().ends_with("01"));
        assert_eq!(reads, ["manifest.json", "c.json"]);
    }

    #[test]
    fn guest_errors_are_rejections() {
        let steps = shared();
        match steps.parse_manifest(
            UnitKind::Prefix,
            &members(&["1.tar", "3.tar"]),
            &mut no_read,
        ) {
            Err(StepError::Rejected(e)) => {
                assert_eq!(e, "layer 2.tar missing (the prefix has layers up to 3.tar)")
            }
            other => panic!("{other:?}"),
        }
        // A callback error reaches the guest and comes back as its error.
        let ms = vec![Member {
            name: "manifest.json".into(),
            size: 5,
        }];
        let mut read = |_: &str| Err::<Vec<u8>, _>("disk on fire\n".to_string());
        match steps.parse_manifest(UnitKind::Archive, &ms, &mut read) {
            Err(StepError::Rejected(e)) => {
                assert_eq!(e, "manifest.json: cannot read: disk on fire?")
            }
            other => panic!("{other:?}"),
        }
        // Enormous data from the callback is capped before it reaches the guest.
        let ms = vec![Member {
            name: "manifest.json".into(),
            size: 5 << 20,
        }];
        let mut read = |_: &str| Ok(vec![b' '; 5 << 20]);
        match steps.parse_manifest(UnitKind::Archive, &ms, &mut read) {
            Err(StepError::Rejected(e)) => assert!(e.contains("over the 4194304-byte cap"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn traps_are_kept_apart_and_do_not_poison() {
        let dir = tempdir("trap");
        let mut steps = Steps::load(&dir).unwrap();
        steps.manifest_fuel = 20_000;
        let names: Vec<String> = (1..=500).map(|n| format!("{n}.tar")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ms = members(&refs);
        match steps.parse_manifest(UnitKind::Prefix, &ms, &mut no_read) {
            Err(StepError::Trapped(e)) => {
                eprintln!("fuel trap: {e}");
                assert!(e.contains("fuel"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        steps.manifest_fuel = MANIFEST_FUEL;
        assert_eq!(
            steps
                .parse_manifest(UnitKind::Prefix, &ms, &mut no_read)
                .unwrap()
                .0
                .layers
                .len(),
            500
        );

        // A member list that does not fit in guest memory traps too.
        let name = "n".repeat(4000);
        let huge: Vec<Member> = (0..70_000)
            .map(|_| Member {
                name: name.clone(),
                size: 1,
            })
            .collect();
        match steps.parse_manifest(UnitKind::Archive, &huge, &mut no_read) {
            Err(StepError::Trapped(e)) => {
                eprintln!("memory trap: {e}");
                assert!(!e.contains('\n'), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            steps.classify(&[0x28, 0xb5, 0x2f, 0xfd], 4).unwrap().kind,
            BlobKind::Zstd
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cache_is_written_and_reused() {
        let dir = tempdir("cache");
        let t = std::time::Instant::now();
        let cold = Steps::load(&dir).unwrap();
        let cold_time = t.elapsed();
        assert!(cold.cache_warning().is_none(), "{:?}", cold.cache_warning());
        let mut files: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files.len(), 4, "{files:?}");
        for (f, name) in files
            .iter()
            .zip(["classify-", "manifest-", "rootfs-dir-", "tarcheck-"])
        {
            assert!(f.starts_with(name) && f.ends_with(".cwasm"), "{files:?}");
        }
        let t = std::time::Instant::now();
        let warm = Steps::load(&dir).unwrap();
        let warm_time = t.elapsed();
        let t = std::time::Instant::now();
        assert_eq!(
            warm.classify(&[0x1f, 0x8b, 8], 3).unwrap().kind,
            BlobKind::Gzip
        );
        let call_time = t.elapsed();
        eprintln!("Steps::load cold {cold_time:?}, warm {warm_time:?}, classify {call_time:?}");

        // A corrupted cache file is recompiled, not trusted.
        let path = dir.join(&files[1]);
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let again = Steps::load(&dir).unwrap();
        assert_eq!(
            again
                .parse_manifest(UnitKind::Prefix, &members(&["1.tar"]), &mut no_read)
                .unwrap()
                .0
                .layers
                .len(),
            1
        );
        assert_ne!(fs::read(&path).unwrap(), bytes);

        // An unwritable cache is only a warning.
        let file = dir.join("not-a-dir");
        fs::write(&file, b"").unwrap();
        let steps = Steps::load(&file.join("sub")).unwrap();
        assert!(steps.cache_warning().is_some());
        fs::remove_dir_all(&dir).ok();
    }

    /// Component chains: a file pinned by sha256 loads (and a wrong pin is
    /// refused); a manifest chain asks each component in turn; the first
    /// that knows the format answers, and says so.
    #[test]
    fn component_chains_and_pins() {
        let dir = tempdir("pins");
        fs::create_dir_all(&dir).unwrap();
        let wasm = BUILTINS
            .iter()
            .find(|(n, _)| *n == "builtin:rootfs-dir")
            .unwrap()
            .1;
        let file = dir.join("lxc.wasm");
        fs::write(&file, wasm).unwrap();
        let sha = hex::encode(Sha256::digest(wasm));
        let spec = |sha256: &str| ComponentSpec::File {
            path: file.clone(),
            sha256: sha256.to_string(),
        };
        let config = |manifest: Vec<ComponentSpec>| StepsConfig {
            manifest,
            ..StepsConfig::default()
        };
        let bad = Steps::load_with(&dir, &config(vec![spec(&"0".repeat(64))]));
        match bad {
            Err(StepError::Host(e)) => assert!(e.contains("but the config pins"), "{e}"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a wrong pin was accepted"),
        }
        let unknown = Steps::load_with(
            &dir,
            &config(vec![ComponentSpec::Builtin("builtin:nope".into())]),
        );
        assert!(matches!(unknown, Err(StepError::Host(e)) if e.contains("unknown component")));

        let metadata = b"architecture: x86_64\ncreation_date: 1700000000\n".to_vec();
        let ms = vec![
            Member {
                name: "metadata.yaml".into(),
                size: metadata.len() as u64,
            },
            Member {
                name: "rootfs.tar.gz".into(),
                size: 100,
            },
        ];
        let mut read = |name: &str| match name {
            "metadata.yaml" => Ok(metadata.clone()),
            _ => Err("nope".to_string()),
        };
        // The built-in manifest component alone does not know the format.
        let only_builtin = Steps::load_with(
            &dir,
            &config(vec![ComponentSpec::Builtin("builtin:manifest".into())]),
        )
        .unwrap();
        match only_builtin.parse_manifest(UnitKind::Prefix, &ms, &mut read) {
            Err(StepError::Rejected(e)) => {
                assert!(e.contains("no manifest component recognises"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Chained after it, the pinned file answers.
        let chained = Steps::load_with(
            &dir,
            &config(vec![
                ComponentSpec::Builtin("builtin:manifest".into()),
                spec(&sha),
            ]),
        )
        .unwrap();
        let (l, answered) = chained
            .parse_manifest(UnitKind::Prefix, &ms, &mut read)
            .unwrap();
        assert_eq!(l.format, "lxc-rootfs");
        assert_eq!(l.layers[0].member, "rootfs.tar.gz");
        assert_eq!(l.layers[0].media, LayerMedia::Gzip);
        assert_eq!(l.config.unwrap().cmd, ["/sbin/init"]);
        assert_eq!(answered.component, file.display().to_string());
        assert_eq!(answered.sha256, sha);
        // Ad-hoc images still go to the first component.
        let (l, answered) = chained
            .parse_manifest(UnitKind::Prefix, &members(&["1.tar"]), &mut no_read)
            .unwrap();
        assert_eq!(
            (l.format.as_str(), answered.component.as_str()),
            ("ad-hoc", "builtin:manifest")
        );
    }

    /// A tar check trap or fuel exhaustion ends that session only; the
    /// errors are kept apart from rejections.
    #[test]
    fn tar_check_rejections_and_contract() {
        use crate::extract::view::{CheckError, Mode, TarCheck};
        let steps = shared();
        let policy = crate::core::policy::Policy::default_policy();
        let mut s = steps.tar_check(Mode::Layer, &policy).unwrap();
        let mut h = tar_head("etc/hostname");
        h.truncate(512);
        let p = s.feed(0, &h).unwrap();
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].path, b"etc/hostname");
        assert_eq!(p.want, 512);
        let p = s.finish(512).unwrap();
        assert!(p.entries.is_empty());
        // Garbage is a rejection with a rule, not a trap.
        let mut s = steps.tar_check(Mode::Layer, &policy).unwrap();
        match s.feed(0, &[b'x'; 512]) {
            Err(CheckError::Rejected { rule, .. }) => assert_eq!(rule, "malformed"),
            other => panic!("{other:?}"),
        }
        // Many sessions at once do not interfere.
        let sessions: Vec<_> = (0..8)
            .map(|_| steps.tar_check(Mode::Archive, &policy).unwrap())
            .collect();
        drop(sessions);
    }

    #[test]
    fn concurrent_calls_share_one_steps() {
        let steps = Arc::new(Steps::load(&tempdir("threads")).unwrap());
        let handles: Vec<_> = (0..MAX_CONCURRENT as usize * 2)
            .map(|i| {
                let steps = Arc::clone(&steps);
                std::thread::spawn(move || {
                    let head = tar_head(&format!("file{i}"));
                    let c = steps.classify(&head, 2048).unwrap();
                    assert!(c.detail.contains(&format!("`file{i}`")));
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    /// Realistic worst cases stay well inside the fuel budget.
    #[test]
    fn big_inputs_fit_the_budget() {
        let steps = shared();
        // A docker archive of 30000 layers: ~2.5 MiB manifest.json and config.
        let hex = |n: usize| format!("{n:064x}");
        let layers: Vec<String> = (0..30_000)
            .map(|i| format!("\"blobs/sha256/{}\"", hex(i)))
            .collect();
        let diff_ids: Vec<String> = (0..30_000)
            .map(|i| format!("\"sha256:{}\"", hex(i + (1 << 20))))
            .collect();
        let manifest = format!(
            r#"[{{"Config":"c.json","RepoTags":null,"Layers":[{}]}}]"#,
            layers.join(",")
        )
        .into_bytes();
        let config = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            diff_ids.join(",")
        )
        .into_bytes();
        let mut ms: Vec<Member> = (0..30_000)
            .map(|i| Member {
                name: format!("blobs/sha256/{}", hex(i)),
                size: 1,
            })
            .collect();
        ms.push(Member {
            name: "manifest.json".into(),
            size: manifest.len() as u64,
        });
        ms.push(Member {
            name: "c.json".into(),
            size: config.len() as u64,
        });
        let mut read = |name: &str| match name {
            "manifest.json" => Ok(manifest.clone()),
            "c.json" => Ok(config.clone()),
            _ => Err("nope".to_string()),
        };
        let t = std::time::Instant::now();
        let l = steps
            .parse_manifest(UnitKind::Archive, &ms, &mut read)
            .unwrap()
            .0;
        let used = MANIFEST_FUEL - FUEL_LEFT.get();
        eprintln!("docker 30000 layers: {:?}, fuel {used}", t.elapsed());
        assert_eq!(l.layers.len(), 30_000);
        assert!(used < MANIFEST_FUEL / 4, "{used}");

        // A flat rootfs of 400000 files.
        let ms: Vec<Member> = (0..400_000)
            .map(|i| Member {
                name: format!("usr/share/doc/package-{i}/copyright"),
                size: 1,
            })
            .collect();
        let t = std::time::Instant::now();
        let l = steps
            .parse_manifest(UnitKind::Archive, &ms, &mut no_read)
            .unwrap()
            .0;
        let used = MANIFEST_FUEL - FUEL_LEFT.get();
        eprintln!("flat 400000 members: {:?}, fuel {used}", t.elapsed());
        assert_eq!(l.format, "single-layer");
        assert!(used < MANIFEST_FUEL / 4, "{used}");

        // The same with a /manifest.json: an app's, then a docker list of
        // 30000 paths that are not there (each member is looked up).
        let mut ms = ms;
        for (what, bytes, budget) in [
            ("an app's", &br#"{"name":"app"}"#[..], MANIFEST_FUEL / 4),
            ("a docker", &manifest[..], MANIFEST_FUEL / 2),
        ] {
            ms.retain(|m| m.name != "manifest.json");
            ms.push(Member {
                name: "manifest.json".into(),
                size: bytes.len() as u64,
            });
            let mut read = |_: &str| Ok(bytes.to_vec());
            let t = std::time::Instant::now();
            let l = steps
                .parse_manifest(UnitKind::Archive, &ms, &mut read)
                .unwrap()
                .0;
            let used = MANIFEST_FUEL - FUEL_LEFT.get();
            eprintln!(
                "flat 400000 members and {what} manifest.json: {:?}, fuel {used}",
                t.elapsed()
            );
            assert_eq!(l.format, "single-layer");
            assert!(used < budget, "{used}");
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tarpool-wasm-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
