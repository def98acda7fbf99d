//! The transition table and the decision function of the durable state
//! machine, modelled on flyd's FSM library: transitions run in registration
//! order, each execution's outcome decides what happens next.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One transition of an image run, in registration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Transition {
    CheckImageExists,
    Download,
    Classify,
    ParseManifest,
    FetchLayers,
    CheckUnpacked,
    UnpackLayers,
    CreateSnapshot,
    UpdateTracking,
    Completed,
}

/// The registration order. `Completed` is the last transition; its success
/// ends the run.
pub const TRANSITIONS: [Transition; 10] = [
    Transition::CheckImageExists,
    Transition::Download,
    Transition::Classify,
    Transition::ParseManifest,
    Transition::FetchLayers,
    Transition::CheckUnpacked,
    Transition::UnpackLayers,
    Transition::CreateSnapshot,
    Transition::UpdateTracking,
    Transition::Completed,
];

impl Transition {
    pub const fn name(self) -> &'static str {
        match self {
            Transition::CheckImageExists => "check-image-exists",
            Transition::Download => "download",
            Transition::Classify => "classify",
            Transition::ParseManifest => "parse-manifest",
            Transition::FetchLayers => "fetch-layers",
            Transition::CheckUnpacked => "check-unpacked",
            Transition::UnpackLayers => "unpack-layers",
            Transition::CreateSnapshot => "create-snapshot",
            Transition::UpdateTracking => "update-tracking",
            Transition::Completed => "completed",
        }
    }

    pub fn from_name(name: &str) -> Option<Transition> {
        TRANSITIONS.iter().copied().find(|s| s.name() == name)
    }

    pub fn first() -> Transition {
        TRANSITIONS[0]
    }

    pub fn next(self) -> Option<Transition> {
        let i = TRANSITIONS.iter().position(|s| *s == self)?;
        TRANSITIONS.get(i + 1).copied()
    }
}

/// How a transition execution ended, as seen by the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The environment failed (I/O, timeout): worth trying again.
    Retryable(String),
    /// The input is bad or a policy denied it: trying again cannot help.
    Unrecoverable(String),
    /// A resource the image needs is used up (the thin pool's space): the
    /// run fails now, without blaming the image.
    Exhausted(String),
    Cancelled,
}

/// Why a run ended without its image ready. Decided here, once; the engine
/// stores it and the next poll reads it back. Its text is [`FailureKind::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The image is bad, hostile or denied: settled until it changes.
    Input,
    /// The environment kept failing: the next poll tries again.
    Environment,
    /// A resource ran out (the pool's space): the next poll tries again,
    /// once a `gc` or a larger pool may have made room.
    Resource,
    Cancelled,
}

impl FailureKind {
    pub const fn name(self) -> &'static str {
        match self {
            FailureKind::Input => "input",
            FailureKind::Environment => "environment",
            FailureKind::Resource => "resource",
            FailureKind::Cancelled => "cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<FailureKind> {
        [
            FailureKind::Input,
            FailureKind::Environment,
            FailureKind::Resource,
            FailureKind::Cancelled,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// Whether an image that failed so stays failed until its source
    /// changes (the other kinds are tried again at the next poll).
    pub const fn settled(self) -> bool {
        matches!(self, FailureKind::Input)
    }
}

impl std::str::FromStr for FailureKind {
    type Err = crate::states::UnknownState;
    fn from_str(s: &str) -> Result<FailureKind, Self::Err> {
        FailureKind::from_name(s).ok_or_else(|| crate::states::UnknownState {
            kind: "FailureKind",
            text: s.chars().take(64).collect(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts per transition, the first one included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// Capped exponential backoff before attempt `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        let factor = 1u32 << shift;
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// What the engine does after a transition execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Persist the output and run this transition next.
    Advance(Transition),
    /// The last transition succeeded: the run is completed.
    Complete,
    /// Run the same transition again after the delay.
    Retry {
        after: Duration,
        attempt: u32,
    },
    /// End the run as failed with this reason.
    Fail {
        reason: String,
        kind: FailureKind,
    },
    Cancel,
}

/// The whole decision logic of the machine. `attempt` counts executions of
/// `transition` in this run, this one included (1-based).
pub fn decide(
    transition: Transition,
    attempt: u32,
    outcome: &Outcome,
    retry: &RetryPolicy,
) -> Decision {
    match outcome {
        Outcome::Ok => match transition.next() {
            Some(next) => Decision::Advance(next),
            None => Decision::Complete,
        },
        Outcome::Retryable(why) if attempt < retry.max_attempts => Decision::Retry {
            after: retry.backoff(attempt),
            attempt: attempt + 1,
        },
        Outcome::Retryable(why) => Decision::Fail {
            reason: format!(
                "{}: gave up after {attempt} attempts: {why}",
                transition.name()
            ),
            kind: FailureKind::Environment,
        },
        Outcome::Unrecoverable(why) => Decision::Fail {
            reason: format!("{}: {why}", transition.name()),
            kind: FailureKind::Input,
        },
        Outcome::Exhausted(why) => Decision::Fail {
            reason: format!("{}: {why}", transition.name()),
            kind: FailureKind::Resource,
        },
        Outcome::Cancelled => Decision::Cancel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(step: Transition, attempt: u32, outcome: Outcome, expected: Decision) {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
            max_attempts: 3,
        };
        assert_eq!(
            decide(step, attempt, &outcome, &policy),
            expected,
            "{step:?} {outcome:?}"
        );
    }

    #[test]
    fn decisions() {
        use Outcome::*;
        use Transition::*;
        check(CheckImageExists, 1, Ok, Decision::Advance(Download));
        check(UpdateTracking, 1, Ok, Decision::Advance(Completed));
        check(Completed, 1, Ok, Decision::Complete);
        check(
            Download,
            1,
            Retryable("eio".into()),
            Decision::Retry {
                after: Duration::from_millis(100),
                attempt: 2,
            },
        );
        check(
            Download,
            2,
            Retryable("eio".into()),
            Decision::Retry {
                after: Duration::from_millis(200),
                attempt: 3,
            },
        );
        check(
            Download,
            3,
            Retryable("eio".into()),
            Decision::Fail {
                reason: "download: gave up after 3 attempts: eio".into(),
                kind: FailureKind::Environment,
            },
        );
        check(
            ParseManifest,
            1,
            Unrecoverable("bad json".into()),
            Decision::Fail {
                reason: "parse-manifest: bad json".into(),
                kind: FailureKind::Input,
            },
        );
        // A full pool: failed at once, not the image's fault.
        check(
            UnpackLayers,
            1,
            Exhausted("thin pool `p` is out of space".into()),
            Decision::Fail {
                reason: "unpack-layers: thin pool `p` is out of space".into(),
                kind: FailureKind::Resource,
            },
        );
        check(UnpackLayers, 1, Cancelled, Decision::Cancel);
    }

    #[test]
    fn only_input_failures_are_settled() {
        for (kind, settled) in [
            (FailureKind::Input, true),
            (FailureKind::Environment, false),
            (FailureKind::Resource, false),
            (FailureKind::Cancelled, false),
        ] {
            assert_eq!(kind.settled(), settled, "{kind:?}");
            assert_eq!(FailureKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(FailureKind::from_name("nope"), None);
    }

    #[test]
    fn backoff_is_capped() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: 99,
        };
        let got: Vec<u128> = (1..=7).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(p.backoff(1000), Duration::from_secs(1));
    }

    #[test]
    fn registration_order_round_trips() {
        let mut s = Transition::first();
        let mut names = vec![s.name()];
        while let Some(n) = s.next() {
            names.push(n.name());
            s = n;
        }
        assert_eq!(
            names,
            [
                "check-image-exists",
                "download",
                "classify",
                "parse-manifest",
                "fetch-layers",
                "check-unpacked",
                "unpack-layers",
                "create-snapshot",
                "update-tracking",
                "completed"
            ]
        );
        for n in names {
            assert_eq!(Transition::from_name(n).unwrap().name(), n);
        }
        assert_eq!(Transition::from_name("nope"), None);
    }
}
