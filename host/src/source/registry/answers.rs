//! How the registry's answers are read: a refusal sorted by its status
//! (with `Retry-After`), a body read up to a cap, a `WWW-Authenticate`
//! challenge, a token server's answer. No error body is read: a refusal
//! is known by its status alone.

use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{header, Response, StatusCode};

use crate::core::names::printable;

/// A token is used at most this long, whatever the server says.
pub(super) const MAX_TOKEN_LIFE: Duration = Duration::from_secs(300);
/// The most bytes of a token server's answer.
pub(super) const MAX_TOKEN_ANSWER: usize = 64 << 10;

/// How a request to the registry failed. The messages name the request
/// (`GET /v2/team/api/manifests/v42`), never a credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("{0}: not found (404)")]
    NotFound(String),
    #[error("{0}: unauthorized (401): {1}")]
    Unauthorized(String, String),
    #[error("{0}: access denied (403)")]
    Denied(String),
    #[error("{what}: too many requests (429){}", retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    TooManyRequests {
        what: String,
        retry_after: Option<Duration>,
    },
    #[error("{0}: the registry answered {1}")]
    Status(String, u16),
    #[error("{0}: {1}")]
    Transport(String, String),
    #[error("{0}: {1}")]
    BadAnswer(String, String),
    /// A request tarpool refuses to make (a bad repository or reference).
    #[error("{0}")]
    BadRequest(String),
}

impl RegistryError {
    /// Whether trying again later may help (408, 429, 5xx, the network).
    pub fn retryable(&self) -> bool {
        match self {
            RegistryError::TooManyRequests { .. } | RegistryError::Transport(..) => true,
            RegistryError::Status(_, s) => *s >= 500 || *s == 408,
            _ => false,
        }
    }
}

/// A challenge's scheme and parameters (`WWW-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The challenges of a `WWW-Authenticate` value (http-auth's parser).
pub fn challenges(value: &str) -> Result<Vec<Challenge>, String> {
    let parsed = http_auth::parse_challenges(value).map_err(|e| e.to_string())?;
    Ok(parsed
        .into_iter()
        .map(|c| Challenge {
            scheme: c.scheme.to_ascii_lowercase(),
            params: c
                .params
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_unescaped()))
                .collect(),
        })
        .collect())
}

/// The token a token server answered: `token` (or `access_token`) and how
/// long it is good for, capped at [`MAX_TOKEN_LIFE`] (60 s when unsaid, as
/// the specification has it).
pub fn token_answer(bytes: &[u8]) -> Result<(String, Duration), String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let a: Answer = serde_json::from_slice(bytes)
        .map_err(|_| "the token server's answer is not a token".to_string())?;
    let token = a
        .token
        .or(a.access_token)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| "the token server gave no usable token".to_string())?;
    let life = Duration::from_secs(a.expires_in.unwrap_or(60).max(1)).min(MAX_TOKEN_LIFE);
    Ok((token, life))
}

/// `Retry-After`: seconds, or an HTTP date.
/// The longest `Retry-After` taken as said.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After`: seconds, or an HTTP date; at most [`MAX_RETRY_AFTER`].
pub(super) fn retry_after(v: Option<&header::HeaderValue>) -> Option<Duration> {
    let v = v?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// The `Content-Type` without parameters, escaped for messages.
pub(super) fn media_type(h: &hyper::HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| printable(v.split(';').next().unwrap_or("").trim()))
        .unwrap_or_default()
}

/// The failure of a response, or the response: 2xx passes.
pub(super) fn check(
    what: &str,
    resp: Response<Incoming>,
) -> Result<Response<Incoming>, RegistryError> {
    let s = resp.status();
    if s.is_success() {
        return Ok(resp);
    }
    Err(match s {
        StatusCode::NOT_FOUND => RegistryError::NotFound(what.into()),
        StatusCode::UNAUTHORIZED => {
            RegistryError::Unauthorized(what.into(), "the registry refused the request".into())
        }
        StatusCode::FORBIDDEN => RegistryError::Denied(what.into()),
        StatusCode::TOO_MANY_REQUESTS => RegistryError::TooManyRequests {
            what: what.into(),
            retry_after: retry_after(resp.headers().get(header::RETRY_AFTER)),
        },
        s => RegistryError::Status(what.into(), s.as_u16()),
    })
}

/// The longest wait for the next bytes of a body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The whole body, refused past `cap` bytes.
pub(super) async fn read_capped(
    what: &str,
    mut body: Incoming,
    cap: usize,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(READ_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(RegistryError::Transport(
                    what.into(),
                    format!("no data for {} s", READ_TIMEOUT.as_secs()),
                ))
            }
            Ok(None) => break,
            Ok(Some(f)) => f,
        };
        let frame =
            frame.map_err(|e| RegistryError::Transport(what.into(), printable(&e.to_string())))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > cap {
                return Err(RegistryError::BadAnswer(
                    what.into(),
                    format!("more than {cap} bytes"),
                ));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// A connection failure in one line, with its cause (hyper's own says
/// only "client error (Connect)").
pub(super) fn transport_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    printable(&msg)
}
