//! The tar check with the operator's inspect steps behind it: each batch
//! of entries the check returns is shown to the inspect steps before any
//! is written. An entry a step skips is dropped (its data passes by
//! unwritten), a `deny` rejects the layer under the step's rule, and every
//! answer is a decision naming the step. A file whose bytes a step wants
//! is held (at most 64 KiB) until the steps that want it have judged them.

use std::collections::VecDeque;

use crate::core::names::printable;
use crate::extract::view::{CheckError, Contents, Decision, Entry, Progress, TarCheck};
use crate::wasm::{Answer, Inspectors, StepError, Verdict, MAX_CONTENTS_FILES};

pub(super) struct Inspected<'a> {
    check: &'a mut dyn TarCheck,
    inspectors: &'a Inspectors,
    /// The layer's number (1 = bottom).
    layer: u32,
    /// The files whose bytes steps want, in the stream's order: (path, the
    /// steps' places in the chain).
    wanted: VecDeque<(Vec<u8>, Vec<usize>)>,
    /// Files each step has asked for in this layer.
    asked: Vec<usize>,
}

impl<'a> Inspected<'a> {
    pub(super) fn new(
        check: &'a mut dyn TarCheck,
        inspectors: &'a Inspectors,
        layer: u32,
    ) -> Inspected<'a> {
        Inspected {
            check,
            inspectors,
            layer,
            wanted: VecDeque::new(),
            asked: vec![0; inspectors.worlds().len()],
        }
    }

    fn judge(&mut self, mut p: Progress) -> Result<Progress, CheckError> {
        if p.entries.is_empty() {
            return Ok(p);
        }
        let judged = self
            .inspectors
            .check_entries(self.layer, &p.entries)
            .map_err(check_error)?;
        let mut skip = vec![false; p.entries.len()];
        for (i, a) in judged.answers {
            let path = printable(&String::from_utf8_lossy(&p.entries[i].path));
            if a.verdict == Verdict::Skip {
                skip[i] = true;
            }
            p.decisions.push(decision(path, a)?);
        }
        for (i, places) in judged.wants {
            for &place in &places {
                self.asked[place] += 1;
                if self.asked[place] > MAX_CONTENTS_FILES {
                    return Err(CheckError::Trapped(format!(
                        "inspect step {} wanted the contents of more than {MAX_CONTENTS_FILES} files of layer {}",
                        self.inspectors.label(place),
                        self.layer
                    )));
                }
            }
            p.entries[i].contents_wanted = true;
            self.wanted.push_back((p.entries[i].path.clone(), places));
        }
        let mut i = 0;
        p.entries.retain(|_| {
            i += 1;
            !skip[i - 1]
        });
        Ok(p)
    }
}

/// An inspect step's answer as a decision; a `deny` rejects the layer.
fn decision(path: String, a: Answer) -> Result<Decision, CheckError> {
    let detail = format!("inspect step {}: {}", a.component, a.reason);
    let action = match a.verdict {
        Verdict::Deny => {
            return Err(CheckError::Rejected {
                path,
                rule: a.rule,
                reason: detail,
            })
        }
        Verdict::Skip => "skip",
        Verdict::Allow => "note",
    };
    Ok(Decision {
        path,
        rule: a.rule,
        action: action.into(),
        detail,
    })
}

fn check_error(e: StepError) -> CheckError {
    match e {
        StepError::Host(m) => CheckError::Host(m),
        StepError::Trapped(m) | StepError::Rejected(m) => CheckError::Trapped(m),
    }
}

impl TarCheck for Inspected<'_> {
    fn feed(&mut self, offset: u64, bytes: &[u8]) -> Result<Progress, CheckError> {
        let p = self.check.feed(offset, bytes)?;
        self.judge(p)
    }

    fn finish(&mut self, total: u64) -> Result<Progress, CheckError> {
        let p = self.check.finish(total)?;
        self.judge(p)
    }

    fn contents(&mut self, entry: &Entry, bytes: &[u8]) -> Result<Contents, CheckError> {
        let path = printable(&String::from_utf8_lossy(&entry.path));
        let places = match self.wanted.pop_front() {
            Some((p, places)) if p == entry.path => places,
            _ => {
                return Err(CheckError::Host(format!(
                    "the contents of `{path}` came out of the order they were asked in"
                )))
            }
        };
        let answers = self
            .inspectors
            .check_contents(self.layer, entry, &places, bytes)
            .map_err(check_error)?;
        let mut out = Contents {
            keep: true,
            decisions: Vec::new(),
        };
        for a in answers {
            out.keep &= a.verdict != Verdict::Skip;
            out.decisions.push(decision(path.clone(), a)?);
        }
        Ok(out)
    }
}
