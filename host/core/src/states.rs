//! The states tarpool records, typed: an image's, a run's, and the outcome
//! of one transition execution. Their text, the value stored in SQLite and
//! shown by `status`, `audit` and the metrics, is [`as_str`] (lower case);
//! `str::parse` is the reverse. The store converts in one place
//! (`host/src/store/`).
//!
//! [`as_str`]: ImageState::as_str

use serde::{Deserialize, Serialize};

/// Defines a fieldless enum with its text: `as_str`, `FromStr`, `Display`,
/// and serde as that text.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored and shown text.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState {
                        kind: stringify!($name),
                        text: s.chars().take(64).collect(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

/// Text that names no value of a state type (a database written by a newer
/// or broken tarpool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState {
    pub kind: &'static str,
    pub text: String,
}

impl std::fmt::Display for UnknownState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown {} {:?}", self.kind, self.text)
    }
}

impl std::error::Error for UnknownState {}

text_enum! {
    /// Where an image ended: the state of its row, written when a run ends.
    ImageState {
        /// Its top layer is committed and snapshotted: it can be activated.
        Ready => "ready",
        /// Its last run failed (see the failure kind).
        Failed => "failed",
        /// Its last run was cancelled.
        Cancelled => "cancelled",
    }
}

text_enum! {
    /// A run's status.
    RunStatus {
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

text_enum! {
    /// How one transition execution ended.
    TransitionOutcome {
        Ok => "ok",
        /// Failed, to be tried again.
        Retry => "retry",
        Failed => "failed",
        Cancelled => "cancelled",
        /// Under way when the process died; found at the next start.
        Interrupted => "interrupted",
    }
}

text_enum! {
    /// The snapshotter (`--backend`, the config's `backend`).
    Backend {
        /// overlayfs where the kernel has it.
        Auto => "auto",
        Overlay => "overlay",
        /// A devicemapper thin pool (`tarpool pool init`).
        Thinpool => "thinpool",
    }
}

text_enum! {
    /// A thin device's row in the thin pool's registry.
    ThinState {
        /// Its thin id is allocated and the device being made (a layer being
        /// filled): a cleanup deletes what a crash left in this state.
        Creating => "creating",
        /// Sealed (a layer) or made (an image snapshot, an activation).
        Ready => "ready",
        /// Being removed: a cleanup finishes what a crash interrupted.
        Deleting => "deleting",
    }
}

impl Backend {
    /// Parses `--backend`: the error names the choices.
    pub fn parse_arg(s: &str) -> Result<Backend, String> {
        s.parse()
            .map_err(|_| format!("unknown backend `{s}` (expected auto, overlay or thinpool)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T>(all: &[T])
    where
        T: Copy
            + PartialEq
            + std::fmt::Debug
            + std::str::FromStr<Err = UnknownState>
            + std::fmt::Display
            + Serialize,
    {
        for &v in all {
            let text = v.to_string();
            assert_eq!(text.parse::<T>(), Ok(v));
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::String(text)
            );
        }
        assert!("Ready".parse::<T>().is_err());
        assert!("".parse::<T>().is_err());
    }

    #[test]
    fn texts_round_trip() {
        check(ImageState::ALL);
        check(RunStatus::ALL);
        check(TransitionOutcome::ALL);
        check(Backend::ALL);
        check(ThinState::ALL);
        // `Display` pads, for tables (`tarpool pool status`).
        assert_eq!(format!("[{:<9}]", ThinState::Ready), "[ready    ]");
        assert_eq!(
            Backend::parse_arg("zfs"),
            Err("unknown backend `zfs` (expected auto, overlay or thinpool)".into())
        );
        assert_eq!(
            "x".parse::<RunStatus>().unwrap_err().to_string(),
            "unknown RunStatus \"x\""
        );
    }
}
