//! How a transition fails ([`Failure`]). Input errors (bad or hostile bytes, policy denial)
//! are a different variant from environment errors (worth retrying), and both
//! from cancellation; a trap in a format step blames the input.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Failure {
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

impl Failure {
    pub fn io(context: &str, e: impl std::fmt::Display) -> Failure {
        Failure::Retry(format!("{context}: {e}"))
    }
}

impl From<crate::extract::ApplyError> for Failure {
    fn from(e: crate::extract::ApplyError) -> Self {
        use crate::extract::{view::CheckError, ApplyError};
        match e {
            ApplyError::Input(m) => Failure::Input(m),
            ApplyError::Check(e @ (CheckError::Rejected { .. } | CheckError::Trapped(_))) => {
                Failure::Input(e.to_string())
            }
            e @ (ApplyError::Check(CheckError::Host(_)) | ApplyError::Io { .. }) => {
                Failure::Retry(e.to_string())
            }
        }
    }
}

impl From<crate::wasm::StepError> for Failure {
    fn from(e: crate::wasm::StepError) -> Self {
        match e {
            crate::wasm::StepError::Host(m) => {
                Failure::Retry(format!("format step host error: {m}"))
            }
            e => Failure::Input(e.to_string()),
        }
    }
}
