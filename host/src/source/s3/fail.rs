//! How an S3 request failed ([`Fail`]), sorted from the SDK's error for the
//! retry decision: gone, refused, changed, or worth another try.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::core::names::printable;

/// How a request failed, for the retry decision.
#[derive(Debug)]
pub(super) enum Fail {
    NotFound,
    Denied(String),
    /// The object is not the listed one any more (ETag precondition failed).
    Changed,
    Retry(String),
}

pub(super) fn one_line(s: &str) -> String {
    printable(&s.replace(['\n', '\r'], " "))
}

pub(super) fn classify<E>(e: SdkError<E>) -> Fail
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .map(str::to_string);
    let code_s = code.clone().unwrap_or_default();
    match status {
        Some(404) => Fail::NotFound,
        Some(412) => Fail::Changed,
        Some(408 | 429) => Fail::Retry(format!("HTTP {} {code_s}", status.unwrap())),
        Some(s @ 400..=499) => Fail::Denied(format!("HTTP {s} {code_s}").trim().to_string()),
        Some(s) if s >= 500 => Fail::Retry(format!("HTTP {s} {code_s}").trim().to_string()),
        _ => match code.as_deref() {
            Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                Fail::Denied(code_s)
            }
            _ => Fail::Retry(one_line(&DisplayErrorContext(&e).to_string())),
        },
    }
}
