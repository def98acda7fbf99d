//! The distribution protocol's client: manifests and blobs fetched from one
//! registry over hyper (rustls with ring; HTTP only when the source says
//! `plain-http`), with the registry's authentication (anonymous, HTTP Basic,
//! or the bearer-token flow) and redirects.
//!
//! Hand-written on hyper rather than `oci-client`, which would parse
//! registry JSON in this process (error bodies, token claims, tag lists),
//! drops the status and `Retry-After` of a refusal, and never refreshes a
//! token on 401. Nothing here reads a manifest: its bytes are returned raw,
//! capped, with their sha256. The one JSON read is the token server's
//! answer (`token`, `expires_in`), from the server the registry names
//! (`token.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};

use super::answers::{
    challenges, check, media_type, read_capped, transport_error, Challenge, RegistryError,
};
use super::auth::Credential;
use crate::core::names::printable;
use crate::core::registry::RegistrySpec;

/// The media types a manifest or an index is asked for in.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Redirects followed for one request (registries send blobs to storage).
const MAX_REDIRECTS: usize = 5;

/// A manifest or index, as the registry served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// `sha256:` of `bytes`.
    pub digest: String,
}

/// What a `HEAD` of a manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest` (only a SHOULD of the specification: `None`
    /// when the registry sends none).
    pub digest: Option<String>,
    pub media_type: String,
    pub size: Option<u64>,
}

/// A blob's body from `offset` on (the registry honoured the range), or
/// from 0 (it did not).
#[derive(Debug)]
pub struct Blob {
    pub from: u64,
    pub body: Incoming,
}

pub(super) type Http = Hyper<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One registry, with its credential and the tokens it was given.
pub struct Registry {
    pub(super) host: String,
    pub(super) scheme: &'static str,
    pub(super) http: Http,
    pub(super) credential: Option<Credential>,
    /// Bearer tokens by scope, until when each is used.
    pub(super) tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// The registry asked for HTTP Basic: send it from the start.
    basic: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({}://{})", self.scheme, self.host)
    }
}

/// The TLS roots: the system's, and the source's `ca-file`.
fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot use is skipped, as curl does.
        let _ = roots.add(c);
    }
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| format!("ca-file {path}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("ca-file {path}: no certificate in it"));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("ca-file {path}: {e}"))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Registry {
    /// A client of the registry `spec` names, asking with `credential`.
    pub fn new(spec: &RegistrySpec, credential: Option<Credential>) -> Result<Registry, String> {
        let tls = tls_config(spec.ca_file.as_deref())?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if spec.plain_http {
            builder.https_or_http().enable_http1().build()
        } else {
            builder.https_only().enable_http1().build()
        };
        Ok(Registry {
            host: spec.host.clone(),
            scheme: if spec.plain_http { "http" } else { "https" },
            http: Hyper::builder(TokioExecutor::new()).build(connector),
            credential,
            tokens: Mutex::new(HashMap::new()),
            basic: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.host)
    }

    pub(super) fn basic_header(&self) -> Option<String> {
        match &self.credential {
            Some(Credential::Basic { user, password }) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
            _ => None,
        }
    }

    /// The `Authorization` to send for `scope` now, if any.
    fn authorization(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, until)) = tokens.get(scope) {
            if Instant::now() < *until {
                return Some(format!("Bearer {t}"));
            }
        }
        drop(tokens);
        if self.basic.load(std::sync::atomic::Ordering::Relaxed) {
            return self.basic_header();
        }
        None
    }

    /// Sends one request, following redirects; `Authorization` goes only
    /// to the registry's own host.
    async fn send_once(
        &self,
        method: &Method,
        what: &str,
        url: &str,
        headers: &[(header::HeaderName, String)],
        authorization: Option<&str>,
    ) -> Result<(Response<Incoming>, bool), RegistryError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| RegistryError::BadAnswer(what.into(), format!("bad URL: {e}")))?;
            let own = uri.authority().is_some_and(|a| a.as_str() == self.host)
                && uri.scheme_str() == Some(self.scheme);
            let mut req = Request::builder().method(method.clone()).uri(uri.clone());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if let (Some(a), true) = (authorization, own) {
                req = req.header(header::AUTHORIZATION, a);
            }
            let req = req
                .body(Full::default())
                .map_err(|e| RegistryError::Transport(what.into(), e.to_string()))?;
            let resp = timed(what, self.http.request(req)).await?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok((resp, own));
            }
            let loc = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| {
                    RegistryError::BadAnswer(what.into(), "a redirect without a Location".into())
                })?;
            url = resolve(&uri, loc).ok_or_else(|| {
                RegistryError::BadAnswer(what.into(), "a redirect to a bad Location".into())
            })?;
        }
        Err(RegistryError::BadAnswer(
            what.into(),
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    /// Sends a request for `scope` (`repository:REPO:pull`), answering the
    /// registry's challenge once: HTTP Basic, or a bearer token fetched
    /// from the realm it names (refetched when a cached one is refused).
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        headers: &[(header::HeaderName, String)],
    ) -> Result<Response<Incoming>, RegistryError> {
        let what = format!("{method} {}", printable(path));
        let url = self.url(path);
        let auth = self.authorization(scope);
        let (resp, own) = self
            .send_once(&method, &what, &url, headers, auth.as_deref())
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return check(&what, resp);
        }
        if !own {
            // Only the registry's own challenge is answered: a host it
            // redirected to is never sent a credential or a token request.
            return Err(RegistryError::Unauthorized(
                what,
                "a host the registry redirected to refused the request".into(),
            ));
        }
        let offered: Vec<Challenge> = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| challenges(v).ok())
            .flatten()
            .collect();
        // Bearer first: it works anonymously too.
        let challenge = offered
            .iter()
            .find(|c| c.scheme == "bearer")
            .or_else(|| offered.iter().find(|c| c.scheme == "basic"))
            .cloned();
        let retry = match challenge {
            Some(c) if c.scheme == "basic" => {
                let b = self.basic_header().ok_or_else(|| {
                    RegistryError::Unauthorized(
                        what.clone(),
                        "the registry wants a user and password; none is configured for it".into(),
                    )
                })?;
                if auth.as_deref() == Some(b.as_str()) {
                    return Err(RegistryError::Unauthorized(
                        what,
                        "the registry refused the configured user and password".into(),
                    ));
                }
                self.basic.store(true, std::sync::atomic::Ordering::Relaxed);
                self.tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                b
            }
            Some(c) => {
                self.tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(scope);
                let token = self.fetch_token(&what, &c, scope).await?;
                format!("Bearer {token}")
            }
            None => {
                return Err(RegistryError::Unauthorized(
                    what,
                    "the registry named no Basic or Bearer challenge".into(),
                ))
            }
        };
        let (resp, own) = self
            .send_once(&method, &what, &url, headers, Some(&retry))
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED && !own {
            return Err(RegistryError::Unauthorized(
                what,
                "a host the registry redirected to refused the request".into(),
            ));
        }
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(scope);
            let why = if retry.starts_with("Basic ") {
                "the registry refused the configured user and password"
            } else {
                "the registry refused the token its token server gave"
            };
            return Err(RegistryError::Unauthorized(what, why.into()));
        }
        check(&what, resp)
    }

    /// `HEAD` of `repo`'s manifest `reference` (a tag or a digest): its
    /// digest, media type and size, without its bytes.
    pub async fn manifest_head(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<ManifestHead, RegistryError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        checked(&path, repo, reference)?;
        let resp = self
            .send(
                Method::HEAD,
                &path,
                &pull_scope(repo),
                &[(header::ACCEPT, MANIFEST_TYPES.into())],
            )
            .await?;
        let what = format!("HEAD {}", printable(&path));
        let h = resp.headers();
        let digest = match h.get("docker-content-digest") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .filter(|d| crate::core::chain::is_sha256_digest(d))
                    .ok_or_else(|| {
                        RegistryError::BadAnswer(
                            what.clone(),
                            "a Docker-Content-Digest that is not a sha256 digest".into(),
                        )
                    })?
                    .to_string(),
            ),
        };
        if reference.starts_with("sha256:") && digest.as_deref().is_some_and(|d| d != reference) {
            return Err(RegistryError::BadAnswer(
                what,
                format!(
                    "asked for {reference}, the registry says {}",
                    digest.as_deref().unwrap_or_default()
                ),
            ));
        }
        Ok(ManifestHead {
            digest,
            media_type: media_type(h),
            size: h
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        })
    }

    /// `repo`'s manifest `reference`, raw, at most `cap` bytes; by digest,
    /// its bytes must hash to it.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        cap: usize,
    ) -> Result<Manifest, RegistryError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        checked(&path, repo, reference)?;
        let what = format!("GET {}", printable(&path));
        let resp = self
            .send(
                Method::GET,
                &path,
                &pull_scope(repo),
                &[(header::ACCEPT, MANIFEST_TYPES.into())],
            )
            .await?;
        let media_type = media_type(resp.headers());
        let bytes = read_capped(&what, resp.into_body(), cap).await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if reference.starts_with("sha256:") && digest != reference {
            return Err(RegistryError::BadAnswer(
                what,
                format!("the manifest's bytes are {digest}"),
            ));
        }
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// `repo`'s blob `digest` from byte `offset` on (`Range`), or from 0
    /// when the registry does not honour the range.
    pub async fn blob(&self, repo: &str, digest: &str, offset: u64) -> Result<Blob, RegistryError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        if !crate::core::chain::is_sha256_digest(digest) {
            return Err(RegistryError::BadRequest(format!(
                "GET {}: a blob is fetched by sha256 digest",
                printable(&path)
            )));
        }
        checked(&path, repo, digest)?;
        let what = format!("GET {}", printable(&path));
        let headers = if offset > 0 {
            vec![(header::RANGE, format!("bytes={offset}-"))]
        } else {
            Vec::new()
        };
        let resp = self
            .send(Method::GET, &path, &pull_scope(repo), &headers)
            .await?;
        let from = if resp.status() == StatusCode::PARTIAL_CONTENT {
            // `bytes START-END/TOTAL`: from where asked, to the end.
            let range = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split_once('/'))
                .and_then(|(span, total)| {
                    let (a, b) = span.split_once('-')?;
                    let (a, b) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
                    let to_end = total == "*" || total.parse::<u64>().ok()? == b.checked_add(1)?;
                    Some((a, to_end))
                });
            if offset == 0 || range != Some((offset, true)) {
                return Err(RegistryError::BadAnswer(
                    what,
                    format!("asked for bytes from {offset} to the end, got another range"),
                ));
            }
            offset
        } else {
            0
        };
        Ok(Blob {
            from,
            body: resp.into_body(),
        })
    }
}

/// A repository and a reference (tag or sha256 digest) as the distribution
/// grammar allows them: nothing else reaches a URL or a token scope.
fn checked(path: &str, repo: &str, reference: &str) -> Result<(), RegistryError> {
    use crate::core::registry::{valid_repo, valid_tag};
    let ok = valid_repo(repo)
        && (valid_tag(reference) || crate::core::chain::is_sha256_digest(reference));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BadRequest(format!(
            "{}: not a repository and a tag or sha256 digest",
            printable(path)
        )))
    }
}

/// The most a request may take to its answer's headers (connecting, TLS,
/// the registry's time); its body is read frame by frame under
/// [`super::answers::READ_TIMEOUT`].
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) async fn timed(
    what: &str,
    f: impl std::future::Future<Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>>,
) -> Result<Response<Incoming>, RegistryError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Err(_) => Err(RegistryError::Transport(
            what.into(),
            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
        )),
        Ok(r) => r.map_err(|e| RegistryError::Transport(what.into(), transport_error(&e))),
    }
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// A redirect's `Location` against the URL it came from.
fn resolve(base: &hyper::Uri, loc: &str) -> Option<String> {
    let base = url::Url::parse(&base.to_string()).ok()?;
    let next = base.join(loc).ok()?;
    matches!(next.scheme(), "http" | "https").then(|| next.to_string())
}
