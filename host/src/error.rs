//! How a transition fails. Input errors (bad or hostile bytes, policy denial)
//! are a different variant from environment errors (worth retrying), and both
//! from cancellation; a trap in a format step blames the input.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum StepFailure {
    /// The image is bad, hostile or denied by the policy: the run fails now.
    #[error("{0}")]
    Input(String),
    /// The environment failed (I/O, a busy resource): the run retries.
    #[error("{0}")]
    Retry(String),
    /// A resource the image needs is used up (the thin pool's space): the
    /// run fails now, without blaming the image.
    #[error("{0}")]
    Exhausted(String),
    #[error("cancelled")]
    Cancelled,
}

impl StepFailure {
    pub fn io(context: &str, e: impl std::fmt::Display) -> StepFailure {
        StepFailure::Retry(format!("{context}: {e}"))
    }
}

impl From<crate::extract::ApplyError> for StepFailure {
    fn from(e: crate::extract::ApplyError) -> Self {
        use crate::extract::{view::CheckError, ApplyError};
        match e {
            ApplyError::Input(m) => StepFailure::Input(m),
            ApplyError::Check(e @ (CheckError::Rejected { .. } | CheckError::Trapped(_))) => {
                StepFailure::Input(e.to_string())
            }
            e @ (ApplyError::Check(CheckError::Host(_)) | ApplyError::Io { .. }) => {
                StepFailure::Retry(e.to_string())
            }
        }
    }
}

impl From<crate::wasm::StepError> for StepFailure {
    fn from(e: crate::wasm::StepError) -> Self {
        match e {
            crate::wasm::StepError::Host(m) => {
                StepFailure::Retry(format!("format step host error: {m}"))
            }
            e => StepFailure::Input(e.to_string()),
        }
    }
}
