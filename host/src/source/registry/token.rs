//! The bearer-token flow's token request: the registry's challenge
//! answered at the realm it names, with the configured user and password
//! (HTTP Basic on a GET) or identity token (OAuth2's refresh-token grant,
//! a POST), the token cached under the scope asked until it expires.

use std::time::Instant;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{header, Request, StatusCode};

use super::answers::{
    check, read_capped, token_answer, Challenge, RegistryError, MAX_TOKEN_ANSWER,
};
use super::auth::Credential;
use super::client::{timed, Registry};

impl Registry {
    /// A bearer token for `scope` from the challenge's realm (sent the
    /// configured user and password, or exchanged for the configured
    /// identity token), cached until it expires.
    pub(super) async fn fetch_token(
        &self,
        what: &str,
        c: &Challenge,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let realm = c.param("realm").ok_or_else(|| {
            RegistryError::Unauthorized(
                what.into(),
                "the registry's Bearer challenge names no realm".into(),
            )
        })?;
        let mut url = url::Url::parse(realm).map_err(|_| {
            RegistryError::BadAnswer(what.into(), "the token realm is not a URL".into())
        })?;
        // HTTPS, or HTTP only to the registry's own host (any port) when
        // it is plain HTTP itself: a password never crosses the network in
        // clear to another host.
        let own_host = self
            .host
            .rsplit_once(':')
            .filter(|(h, p)| !p.contains(']') && !h.is_empty())
            .map_or(self.host.as_str(), |(h, _)| h);
        let same_host = url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(own_host));
        let ok = url.scheme() == "https"
            || (url.scheme() == "http" && self.scheme == "http" && same_host);
        if !ok {
            return Err(RegistryError::BadAnswer(
                what.into(),
                "the token realm is not HTTPS".into(),
            ));
        }
        let token_what = format!("{what} (token)");
        let service = c.param("service");
        let req = match &self.credential {
            // OAuth2's refresh-token grant, as docker sends an
            // `identitytoken` (the distribution token specification's
            // POST form); its answer's `access_token` is the token.
            Some(Credential::IdentityToken(refresh)) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh)
                    .append_pair("client_id", "tarpool");
                if let Some(s) = service {
                    form.append_pair("service", s);
                }
                // Always our own scope: the token is cached under it.
                form.append_pair("scope", scope);
                Request::post(url.as_str())
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(form.finish())))
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", scope);
                }
                let mut req = Request::get(url.as_str());
                if let Some(b) = self.basic_header() {
                    req = req.header(header::AUTHORIZATION, b);
                }
                req.body(Full::default())
            }
        }
        .map_err(|e| RegistryError::Transport(token_what.clone(), e.to_string()))?;
        let resp = timed(&token_what, self.http.request(req)).await?;
        let refused = match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => true,
            // OAuth2's `invalid_grant`: a refresh token it does not take.
            StatusCode::BAD_REQUEST => {
                matches!(self.credential, Some(Credential::IdentityToken(_)))
            }
            _ => false,
        };
        if refused {
            return Err(RegistryError::Unauthorized(
                what.into(),
                match &self.credential {
                    Some(Credential::IdentityToken(_)) => {
                        "the token server refused the configured identity token"
                    }
                    Some(Credential::Basic { .. }) => {
                        "the token server refused the configured user and password"
                    }
                    None => {
                        "the token server wants a user and password; none is configured for this registry"
                    }
                }
                .into(),
            ));
        }
        let resp = check(&token_what, resp)?;
        let bytes = read_capped(&token_what, resp.into_body(), MAX_TOKEN_ANSWER).await?;
        let (token, life) =
            token_answer(&bytes).map_err(|e| RegistryError::BadAnswer(token_what, e))?;
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        tokens.retain(|_, (_, until)| *until > now);
        tokens.insert(scope.to_string(), (token.clone(), now + life));
        Ok(token)
    }
}
