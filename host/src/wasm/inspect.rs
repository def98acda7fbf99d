//! The inspect steps: the operator's own rules, as components of the
//! `inspect-step` world, asked about an image's configuration (in the
//! service, before anything is unpacked) and about each layer's entries (in
//! the extraction worker, before any is written). A `deny` fails the image
//! with the component's rule and reason; a `skip` drops an entry; every
//! answer is a decision in the audit log, naming the component. A
//! component of `inspect-contents-step` also asks for the bytes of small
//! regular files, and judges each before it is written.

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store};

use super::cache::{load_cached, new_engine, wasi_linker};
use super::describe::{describe, World};
use super::limits::{instantiate_err, one_line, trapped, INSPECT_FUEL, INSPECT_MEMORY};
use super::store::{new_store, State};
use super::{host_err, StepError};
use crate::extract::view::{Entry, EntryKind, MAX_CONTENTS_BYTES};

pub(super) mod inspect_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "inspect-step" });
}

mod contents_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "inspect-contents-step",
        with: {
            "tarpool:steps/types": super::inspect_bindings::tarpool::steps::types,
            "tarpool:steps/inspect-types": super::inspect_bindings::tarpool::steps::inspect_types,
        },
    });
}

use inspect_bindings::tarpool::steps::inspect_types as it;
use inspect_bindings::tarpool::steps::types;

/// An inspect step ready to instantiate: of either world.
pub(super) enum InspectPre {
    Headers(inspect_bindings::InspectStepPre<State>),
    Contents(contents_bindings::InspectContentsStepPre<State>),
}

impl InspectPre {
    /// `pre` as a component of `world` (one of the inspect worlds).
    pub(super) fn new(world: World, pre: InstancePre<State>) -> wasmtime::Result<InspectPre> {
        Ok(match world {
            World::InspectContentsStep => {
                InspectPre::Contents(contents_bindings::InspectContentsStepPre::new(pre)?)
            }
            _ => InspectPre::Headers(inspect_bindings::InspectStepPre::new(pre)?),
        })
    }
}

/// An instance of an inspect step.
enum Instance {
    Headers(inspect_bindings::InspectStep),
    Contents(contents_bindings::InspectContentsStep),
}

impl Instance {
    fn check_image(
        &self,
        store: &mut Store<State>,
        info: &it::ImageInfo,
    ) -> wasmtime::Result<Vec<it::Answer>> {
        match self {
            Instance::Headers(i) => i.tarpool_steps_inspect().call_check_image(store, info),
            Instance::Contents(i) => i.tarpool_steps_inspect().call_check_image(store, info),
        }
    }

    fn check_entries(
        &self,
        store: &mut Store<State>,
        layer: u32,
        headers: &[it::EntryHeader],
    ) -> wasmtime::Result<Vec<it::EntryAnswer>> {
        match self {
            Instance::Headers(i) => i
                .tarpool_steps_inspect()
                .call_check_entries(store, layer, headers),
            Instance::Contents(i) => i
                .tarpool_steps_inspect()
                .call_check_entries(store, layer, headers),
        }
    }
}

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
    chain: Vec<(String, InspectPre)>,
}

/// The files of one layer each inspect step has asked to read, against
/// the policy's `max-contents-files` (the worker and `steps try` count
/// alike).
pub struct ContentsBudget<'a> {
    inspectors: &'a Inspectors,
    asked: Vec<u64>,
    max: u64,
}

impl<'a> ContentsBudget<'a> {
    pub fn new(inspectors: &'a Inspectors, max: u64) -> ContentsBudget<'a> {
        ContentsBudget {
            inspectors,
            asked: vec![0; inspectors.chain.len()],
            max,
        }
    }

    /// Counts a file the steps at `places` want; past the limit, why (one
    /// line, naming the first step over it).
    pub fn want(&mut self, places: &[usize]) -> Result<(), String> {
        for &place in places {
            self.asked[place] += 1;
            if self.asked[place] > self.max {
                return Err(format!(
                    "inspect step {} wants the contents of more than {} files of this layer",
                    self.inspectors.label(place),
                    self.max
                ));
            }
        }
        Ok(())
    }
}

/// What the inspect steps say about a batch of entries.
#[derive(Debug, Default)]
pub struct Judged {
    /// (index in the batch, answer), in the order given; a `deny` is last.
    pub answers: Vec<(usize, Answer)>,
    /// (index in the batch, the steps that want its bytes, by their place
    /// in the chain), for entries no step skipped, in the batch's order.
    pub wants: Vec<(usize, Vec<usize>)>,
}

impl Inspectors {
    pub(super) fn new(engine: Engine, chain: Vec<(String, InspectPre)>) -> Inspectors {
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
            let world = describe(&engine, &component)
                .map_err(|why| StepError::Host(format!("the inspect step {label}: {why}")))?
                .world;
            let pre = InspectPre::new(world, pre)
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
        pre: &InspectPre,
        f: impl FnOnce(&Instance, &mut Store<State>) -> wasmtime::Result<T>,
    ) -> Result<T, StepError> {
        let (mut store, stderr) = new_store(&self.engine, INSPECT_FUEL, INSPECT_MEMORY, None, 0)?;
        let step = match pre {
            InspectPre::Headers(p) => p.instantiate(&mut store).map(Instance::Headers),
            InspectPre::Contents(p) => p.instantiate(&mut store).map(Instance::Contents),
        }
        .map_err(|e| instantiate_err("inspect", e, &stderr))?;
        f(&step, &mut store).map_err(|e| in_component(label, trapped(e, &stderr)))
    }

    /// The label of the step at `place` in the chain.
    pub fn label(&self, place: usize) -> &str {
        self.chain.get(place).map_or("?", |(l, _)| l.as_str())
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
            let answers = self.call(label, pre, |i, store| i.check_image(store, &info))?;
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
    /// `layer`), and which entries' bytes they want; an entry one skips is
    /// not shown to the next, and the first `deny` ends the batch. A
    /// component that answers twice about an entry, or more often than it
    /// was shown entries, or wants what is not a regular file of at most
    /// [`MAX_CONTENTS_BYTES`], is broken: its call fails as a trap.
    pub fn check_entries(&self, layer: u32, entries: &[Entry]) -> Result<Judged, StepError> {
        let mut shown: Vec<usize> = (0..entries.len()).collect();
        let mut out = Judged::default();
        let mut wants: Vec<Vec<usize>> = vec![Vec::new(); entries.len()];
        for (place, (label, pre)) in self.chain.iter().enumerate() {
            if shown.is_empty() {
                break;
            }
            let headers: Vec<it::EntryHeader> =
                shown.iter().map(|&i| header(&entries[i])).collect();
            let (answers, wanted) = self.call(label, pre, |i, store| {
                let answers = i.check_entries(store, layer, &headers)?;
                let denied = answers
                    .iter()
                    .any(|a| a.answer.verdict == it::Verdict::Deny);
                let wanted = match i {
                    Instance::Contents(c) if !denied => c
                        .tarpool_steps_inspect_contents()
                        .call_want_contents(store, layer, &headers)?,
                    _ => Vec::new(),
                };
                Ok((answers, wanted))
            })?;
            let broken = |why: String| StepError::Trapped(format!("inspect step {label} {why}"));
            if answers.len() > shown.len() {
                return Err(broken(format!(
                    "gave {} answers about {} entries",
                    answers.len(),
                    shown.len()
                )));
            }
            let mut answered = vec![false; shown.len()];
            let mut skipped = Vec::new();
            for a in answers {
                let Some(seen) = answered.get_mut(a.index as usize) else {
                    return Err(broken(format!(
                        "answered about entry {} of a batch of {}",
                        a.index,
                        shown.len()
                    )));
                };
                if std::mem::replace(seen, true) {
                    return Err(broken(format!(
                        "answered twice about entry {} of a batch",
                        a.index
                    )));
                }
                let i = shown[a.index as usize];
                let a = answer(label, a.answer);
                match a.verdict {
                    Verdict::Deny => {
                        out.answers.push((i, a));
                        return Ok(out);
                    }
                    Verdict::Skip => skipped.push(i),
                    Verdict::Allow => {}
                }
                out.answers.push((i, a));
            }
            let mut asked = vec![false; shown.len()];
            for w in wanted {
                let Some(&i) = shown.get(w as usize) else {
                    return Err(broken(format!(
                        "wanted the contents of entry {w} of a batch of {}",
                        shown.len()
                    )));
                };
                let e = &entries[i];
                let path = crate::core::names::printable(&String::from_utf8_lossy(&e.path));
                if std::mem::replace(&mut asked[w as usize], true) {
                    return Err(broken(format!("wanted the contents of `{path}` twice")));
                }
                if e.kind != EntryKind::Regular {
                    return Err(broken(format!(
                        "wanted the contents of `{path}`, which is not a regular file"
                    )));
                }
                if e.data_size > MAX_CONTENTS_BYTES {
                    return Err(broken(format!(
                        "wanted the contents of `{path}`, {} bytes (at most {MAX_CONTENTS_BYTES})",
                        e.data_size
                    )));
                }
                if !skipped.contains(&i) {
                    wants[i].push(place);
                }
            }
            shown.retain(|i| !skipped.contains(i));
        }
        out.wants = shown
            .into_iter()
            .map(|i| (i, std::mem::take(&mut wants[i])))
            .filter(|(_, w)| !w.is_empty())
            .collect();
        Ok(out)
    }

    /// The answers about a file's bytes of the steps at `places` (those
    /// that wanted them), in order, up to the first `deny` or `skip`.
    pub fn check_contents(
        &self,
        layer: u32,
        entry: &Entry,
        places: &[usize],
        bytes: &[u8],
    ) -> Result<Vec<Answer>, StepError> {
        let file = header(entry);
        let mut out = Vec::new();
        for &place in places {
            let Some((label, pre)) = self.chain.get(place) else {
                return Err(StepError::Host(format!("no inspect step {place}")));
            };
            if let InspectPre::Headers(_) = pre {
                return Err(StepError::Host(format!(
                    "the inspect step {label} reads no contents, but was asked to"
                )));
            }
            let said = self.call(label, pre, |i, store| match i {
                Instance::Contents(c) => c
                    .tarpool_steps_inspect_contents()
                    .call_check_contents(store, layer, &file, bytes),
                // Refused above.
                Instance::Headers(_) => Ok(None),
            })?;
            if let Some(a) = said {
                let a = answer(label, a);
                let last = a.verdict != Verdict::Allow;
                out.push(a);
                if last {
                    break;
                }
            }
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
