//! The tar check with the operator's inspect steps behind it: each batch
//! of entries the check returns is shown to the inspect steps before any
//! is written. An entry a step skips is dropped (its data passes by
//! unwritten), a `deny` rejects the layer under the step's rule, and every
//! answer is a decision naming the step.

use crate::core::names::printable;
use crate::extract::view::{CheckError, Decision, Progress, TarCheck};
use crate::wasm::{Inspectors, StepError, Verdict};

pub(super) struct Inspected<'a> {
    pub check: &'a mut dyn TarCheck,
    pub inspectors: &'a Inspectors,
    /// The layer's number (1 = bottom).
    pub layer: u32,
}

impl Inspected<'_> {
    fn judge(&self, mut p: Progress) -> Result<Progress, CheckError> {
        if p.entries.is_empty() {
            return Ok(p);
        }
        let answers = self
            .inspectors
            .check_entries(self.layer, &p.entries)
            .map_err(|e| match e {
                StepError::Host(m) => CheckError::Host(m),
                StepError::Trapped(m) | StepError::Rejected(m) => CheckError::Trapped(m),
            })?;
        let mut skip = vec![false; p.entries.len()];
        for (i, a) in answers {
            let path = printable(&String::from_utf8_lossy(&p.entries[i].path));
            let detail = format!("inspect step {}: {}", a.component, a.reason);
            let action = match a.verdict {
                Verdict::Deny => {
                    return Err(CheckError::Rejected {
                        path,
                        rule: a.rule,
                        reason: detail,
                    })
                }
                Verdict::Skip => {
                    skip[i] = true;
                    "skip"
                }
                Verdict::Allow => "note",
            };
            p.decisions.push(Decision {
                path,
                rule: a.rule,
                action: action.into(),
                detail,
            });
        }
        let mut i = 0;
        p.entries.retain(|_| {
            i += 1;
            !skip[i - 1]
        });
        Ok(p)
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
}
