//! The tar check with the operator's inspect steps behind it: each batch
//! of entries the check returns is shown to the inspect steps before any
//! is written. An entry a step skips is dropped (its data passes by
//! unwritten), a `deny` rejects the layer under the step's rule, and every
//! answer is a decision naming the step. A file whose bytes a step wants
//! is held (at most 64 KiB) until the steps that want it have judged them.

use std::collections::VecDeque;

use crate::core::names::printable;
use crate::extract::view::{CheckError, Contents, Decision, Entry, Progress, TarCheck};
use crate::wasm::{Answer, ContentsBudget, Inspectors, StepError, Verdict};

pub(super) struct Inspected<'a> {
    check: &'a mut dyn TarCheck,
    inspectors: &'a Inspectors,
    /// The layer's number (1 = bottom).
    layer: u32,
    /// The files whose bytes steps want, in the stream's order: (path, the
    /// steps' places in the chain).
    wanted: VecDeque<(Vec<u8>, Vec<usize>)>,
    /// Files each step has asked for in this layer.
    budget: ContentsBudget<'a>,
}

impl<'a> Inspected<'a> {
    pub(super) fn new(
        check: &'a mut dyn TarCheck,
        inspectors: &'a Inspectors,
        layer: u32,
        max_files: u64,
    ) -> Inspected<'a> {
        Inspected {
            check,
            inspectors,
            layer,
            wanted: VecDeque::new(),
            budget: ContentsBudget::new(inspectors, max_files),
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
            // The layer decides how many files a step wants (it cannot
            // count across batches): the image is to blame.
            self.budget
                .want(&places)
                .map_err(|reason| CheckError::Rejected {
                    path: printable(&String::from_utf8_lossy(&p.entries[i].path)),
                    rule: "max-contents-files".into(),
                    reason,
                })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::view::EntryKind;
    use crate::wasm::inspect_tests::{component, entry, steps_with};

    /// A fake tar check (named as such): returns one of its batches of
    /// entries per feed, in order.
    struct Batches(Vec<Vec<Entry>>);

    impl TarCheck for Batches {
        fn feed(&mut self, _: u64, _: &[u8]) -> Result<Progress, CheckError> {
            Ok(Progress {
                entries: if self.0.is_empty() {
                    Vec::new()
                } else {
                    self.0.remove(0)
                },
                decisions: Vec::new(),
                want: 1 << 40,
            })
        }

        fn finish(&mut self, _: u64) -> Result<Progress, CheckError> {
            Ok(Progress::default())
        }
    }

    fn files(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| entry(&format!("f{i}"), EntryKind::Regular, 3))
            .collect()
    }

    /// Wanted files are marked and judged in the stream's order; one
    /// judged out of that order is a host error; a skip leaves it out and
    /// a deny rejects the layer under the step's rule.
    #[test]
    fn wanted_files_are_marked_and_judged_in_order() {
        for (verdict, keep) in [(None, Some(true)), (Some(2), Some(false)), (Some(1), None)] {
            let steps = steps_with("inspected", &[&component(&[1], &[0, 1], verdict)]);
            let mut check = Batches(vec![files(3)]);
            let mut judged = Inspected::new(&mut check, steps.inspectors(), 1, 100);
            let p = judged.feed(0, b"").unwrap();
            let marked: Vec<(String, bool)> = p
                .entries
                .iter()
                .map(|e| (String::from_utf8_lossy(&e.path).into(), e.contents_wanted))
                .collect();
            assert_eq!(
                marked,
                [("f0".to_string(), true), ("f2".to_string(), false)],
                "f1 skipped (its step wanted it too), f2 not wanted"
            );
            assert_eq!(p.decisions.len(), 1, "{:?}", p.decisions);
            match (judged.contents(&p.entries[0], b"hi\n"), keep) {
                (Ok(c), Some(k)) => {
                    assert_eq!(c.keep, k);
                    assert_eq!(c.decisions.len(), usize::from(verdict.is_some()));
                }
                (Err(CheckError::Rejected { path, rule, reason }), None) => {
                    assert_eq!((path.as_str(), rule.as_str()), ("f0", "r"));
                    assert!(reason.starts_with("inspect step ") && reason.ends_with(": x"));
                }
                (got, _) => panic!("{verdict:?}: {got:?}"),
            }
            let e = judged.contents(&p.entries[1], b"hi\n").unwrap_err();
            assert!(
                matches!(&e, CheckError::Host(m) if m.contains("`f2` came out of the order")),
                "{e:?}"
            );
        }
    }

    /// A layer in which one step wants more files than the policy's
    /// `max-contents-files` is rejected at the file past the limit; the
    /// count goes on across batches.
    #[test]
    fn a_step_reads_at_most_max_contents_files_a_layer() {
        for (batches, wants, fails_at) in [
            (1, vec![0, 1, 2], None),
            (1, vec![0, 1, 2, 3], Some("f3")),
            (2, vec![0, 1], Some("f1")),
            (3, vec![0], None),
            (4, vec![0], Some("f0")),
        ] {
            let steps = steps_with("many", &[&component(&[], &wants, None)]);
            let mut check = Batches(vec![files(4); batches]);
            let mut judged = Inspected::new(&mut check, steps.inspectors(), 1, 3);
            let got = (0..batches).try_for_each(|_| judged.feed(0, b"").map(drop));
            match (got, fails_at) {
                (Ok(()), None) => {}
                (Err(CheckError::Rejected { path, rule, reason }), Some(at)) => {
                    assert_eq!((path.as_str(), rule.as_str()), (at, "max-contents-files"));
                    assert!(
                        reason.ends_with("wants the contents of more than 3 files of this layer"),
                        "{reason}"
                    );
                }
                (got, _) => panic!("{batches} {wants:?}: {got:?}"),
            }
        }
    }
}
