//! The tar check: one session per stream (a layer, or an image archive's
//! member index), with the policy's per-entry rules; and `TarOnly`, the tar
//! check alone, for the extraction worker.

use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::core::policy::{Action as PolicyAction, Policy};
use crate::extract::view;

use super::cache::{load_cached, new_engine, wasi_linker};
use super::limits::{
    instantiate_err, one_line, trapped, Slot, Slots, MAX_CONCURRENT, MAX_MESSAGE_CHARS,
    TAR_FUEL_BASE, TAR_FUEL_PER_BYTE, TAR_MEMORY,
};
use super::store::{new_store, State};
use super::{host_err, StepError, Steps};

pub(super) mod tar_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "tar-check-step" });
}

use tar_bindings::exports::tarpool::steps::tar_check as tc;
use tar_bindings::TarCheckStepPre;

impl Steps {
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
}

pub(super) fn start_tar_check<'s>(
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
        let component = load_cached(&engine, file)
            .map_err(|why| StepError::Host(format!("tar check cache file is {why}")))?;
        let linker = wasi_linker(&engine)?;
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

/// The per-entry rules of the policy, as the tar check takes them.
pub(super) fn tar_policy(p: &Policy) -> tc::TarPolicy {
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

pub(super) fn convert_entry(e: tc::Entry) -> view::Entry {
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
        contents_wanted: false,
    }
}
