//! The inspect steps: the operator's own rules, as components of the
//! `inspect-step` world, asked about an image's configuration (in the
//! service, before anything is unpacked) and about each layer's entries (in
//! the extraction worker, before any is written). A `deny` fails the image
//! with the component's rule and reason; a `skip` drops an entry; every
//! answer is a decision in the audit log, naming the component.

use wasmtime::Engine;

use super::cache::{load_cached, new_engine, wasi_linker};
use super::limits::{instantiate_err, one_line, trapped, INSPECT_FUEL, INSPECT_MEMORY};
use super::store::{new_store, State};
use super::{host_err, StepError};
use crate::extract::view::{Entry, EntryKind};

pub(super) mod inspect_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "inspect-step" });
}

use inspect_bindings::tarpool::steps::inspect_types as it;
use inspect_bindings::tarpool::steps::types;
pub(super) use inspect_bindings::InspectStepPre;

/// Answers a component may give about one image.
const MAX_IMAGE_ANSWERS: usize = 64;
/// The longest rule name and reason kept from a component.
const MAX_RULE_CHARS: usize = 64;
const MAX_REASON_CHARS: usize = 300;

/// What an inspect step says about the image or an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The component that answered (`builtin:NAME` or its path).
    pub component: String,
    pub verdict: Verdict,
    pub rule: String,
    pub reason: String,
}

/// The image, as an inspect step is shown it.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    pub name: String,
    pub format: String,
    pub layers: u32,
    pub config: Option<crate::model::RuntimeConfig>,
}

/// The configured inspect steps, in order, ready to instantiate (a fresh
/// instance per call).
pub struct Inspectors {
    engine: Engine,
    /// (label, pre) per component.
    chain: Vec<(String, InspectStepPre<State>)>,
}

impl Inspectors {
    pub(super) fn new(engine: Engine, chain: Vec<(String, InspectStepPre<State>)>) -> Inspectors {
        Inspectors { engine, chain }
    }

    /// Loads compiled inspect steps from their cache files (`sha256 ||
    /// cwasm`, as [`super::Steps::load`] wrote them): what the extraction
    /// worker runs. `files` are (label, bytes).
    pub fn load(files: &[(String, Vec<u8>)]) -> Result<Inspectors, StepError> {
        let engine = new_engine()?;
        let linker = wasi_linker(&engine)?;
        let mut chain = Vec::new();
        for (label, file) in files {
            let component = load_cached(&engine, file).map_err(|why| {
                StepError::Host(format!("the compiled inspect step {label} is {why}"))
            })?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(|e| host_err(&format!("preparing the inspect step {label}"), e))?;
            let pre = InspectStepPre::new(pre)
                .map_err(|e| host_err(&format!("{label} is not an inspect-step component"), e))?;
            chain.push((label.clone(), pre));
        }
        Ok(Inspectors { engine, chain })
    }

    /// Runs `f` on a fresh instance of the component `label`, under the
    /// inspect steps' fuel and memory; a trap names the component.
    fn call<T>(
        &self,
        label: &str,
        pre: &InspectStepPre<State>,
        f: impl FnOnce(
            &inspect_bindings::InspectStep,
            &mut wasmtime::Store<State>,
        ) -> wasmtime::Result<T>,
    ) -> Result<T, StepError> {
        let (mut store, stderr) = new_store(&self.engine, INSPECT_FUEL, INSPECT_MEMORY, None, 0)?;
        let step = pre
            .instantiate(&mut store)
            .map_err(|e| instantiate_err("inspect", e, &stderr))?;
        f(&step, &mut store).map_err(|e| in_component(label, trapped(e, &stderr)))
    }

    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// Every component's answers about the image, in order, up to the
    /// first `deny` (at most [`MAX_IMAGE_ANSWERS`] from each).
    pub fn check_image(&self, image: &ImageInfo) -> Result<Vec<Answer>, StepError> {
        let info = it::ImageInfo {
            name: image.name.clone(),
            format: image.format.clone(),
            layers: image.layers,
            config: image.config.as_ref().map(|c| types::RuntimeConfig {
                env: c.env.clone(),
                entrypoint: c.entrypoint.clone(),
                cmd: c.cmd.clone(),
                working_dir: c.working_dir.clone(),
                user: c.user.clone(),
            }),
        };
        let mut out = Vec::new();
        for (label, pre) in &self.chain {
            let answers = self.call(label, pre, |i, store| {
                i.tarpool_steps_inspect().call_check_image(store, &info)
            })?;
            if answers.len() > MAX_IMAGE_ANSWERS {
                return Err(StepError::Trapped(format!(
                    "inspect step {label} gave {} answers about the image (at most {MAX_IMAGE_ANSWERS})",
                    answers.len()
                )));
            }
            for a in answers {
                let a = answer(label, a);
                let deny = a.verdict == Verdict::Deny;
                out.push(a);
                if deny {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Every component's answers about `entries` (a batch of layer
    /// `layer`), as (index in `entries`, answer); an entry one skips is not
    /// shown to the next, and the first `deny` ends the batch. A component
    /// that answers twice about an entry, or more often than it was shown
    /// entries, is broken: its call fails as a trap.
    pub fn check_entries(
        &self,
        layer: u32,
        entries: &[Entry],
    ) -> Result<Vec<(usize, Answer)>, StepError> {
        let mut shown: Vec<usize> = (0..entries.len()).collect();
        let mut out = Vec::new();
        for (label, pre) in &self.chain {
            if shown.is_empty() {
                break;
            }
            let headers: Vec<it::EntryHeader> =
                shown.iter().map(|&i| header(&entries[i])).collect();
            let answers = self.call(label, pre, |i, store| {
                i.tarpool_steps_inspect()
                    .call_check_entries(store, layer, &headers)
            })?;
            if answers.len() > shown.len() {
                return Err(StepError::Trapped(format!(
                    "inspect step {label} gave {} answers about {} entries",
                    answers.len(),
                    shown.len()
                )));
            }
            let mut answered = vec![false; shown.len()];
            let mut skipped = Vec::new();
            for a in answers {
                if answered.get(a.index as usize).copied().unwrap_or(false) {
                    return Err(StepError::Trapped(format!(
                        "inspect step {label} answered twice about entry {} of a batch",
                        a.index
                    )));
                }
                if let Some(x) = answered.get_mut(a.index as usize) {
                    *x = true;
                }
                let Some(&i) = shown.get(a.index as usize) else {
                    return Err(StepError::Trapped(format!(
                        "inspect step {label} answered about entry {} of a batch of {}",
                        a.index,
                        shown.len()
                    )));
                };
                let a = answer(label, a.answer);
                match a.verdict {
                    Verdict::Deny => {
                        out.push((i, a));
                        return Ok(out);
                    }
                    Verdict::Skip => skipped.push(i),
                    Verdict::Allow => {}
                }
                out.push((i, a));
            }
            shown.retain(|i| !skipped.contains(i));
        }
        Ok(out)
    }
}

/// A failure of a component's call, naming it.
fn in_component(label: &str, e: StepError) -> StepError {
    match e {
        StepError::Trapped(m) => StepError::Trapped(format!("inspect step {label}: {m}")),
        other => other,
    }
}

fn answer(label: &str, a: it::Answer) -> Answer {
    Answer {
        component: label.to_string(),
        verdict: match a.verdict {
            it::Verdict::Allow => Verdict::Allow,
            it::Verdict::Deny => Verdict::Deny,
            it::Verdict::Skip => Verdict::Skip,
        },
        rule: one_line(&a.rule, MAX_RULE_CHARS),
        reason: one_line(&a.reason, MAX_REASON_CHARS),
    }
}

/// An entry's header as the WIT has it (its path and link as text).
fn header(e: &Entry) -> it::EntryHeader {
    use it::EntryType as T;
    it::EntryHeader {
        path: String::from_utf8_lossy(&e.path).into_owned(),
        kind: match e.kind {
            EntryKind::Regular => T::Regular,
            EntryKind::Directory => T::Directory,
            EntryKind::Symlink => T::Symlink,
            EntryKind::Hardlink => T::Hardlink,
            EntryKind::CharDevice => T::CharDevice,
            EntryKind::BlockDevice => T::BlockDevice,
            EntryKind::Fifo => T::Fifo,
            EntryKind::Whiteout => T::Whiteout,
            EntryKind::Opaque => T::Opaque,
        },
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: if e.kind == EntryKind::Regular {
            e.data_size
        } else {
            0
        },
        link: e
            .link
            .as_ref()
            .map(|l| String::from_utf8_lossy(l).into_owned()),
        xattr_names: e.xattrs.iter().map(|(n, _)| n.clone()).collect(),
    }
}
