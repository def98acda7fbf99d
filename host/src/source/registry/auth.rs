//! Registry credentials, from where skopeo, podman and docker keep them:
//! `auth_file` in tarpool's configuration, then `REGISTRY_AUTH_FILE`, then
//! `$XDG_RUNTIME_DIR/containers/auth.json`, then `$DOCKER_CONFIG/config.json`
//! or `~/.docker/config.json`. The first file with an entry for the
//! registry (the longest key matching `HOST/REPO...`, or `HOST`) gives it.
//!
//! These files are the operator's, not an image's: reading them is not
//! decoding attacker bytes. A credential never reaches a log, an audit row
//! or an error message: its `Debug` shows only its kind.

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// What a registry is asked with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// HTTP Basic, or the user and password a token server is sent.
    Basic { user: String, password: String },
    /// An OAuth2 refresh token (`identitytoken`), for a token server.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { .. } => f.write_str("Basic(<redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Why an auth file could not be used: its path and what is wrong, never a
/// secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("registry auth file {path}: {why}")]
pub struct AuthFileError {
    pub path: String,
    pub why: String,
}

/// The files to look in, in order, from the environment (`env` reads a
/// variable) and the configuration's `auth_file`.
pub fn auth_files(configured: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = configured.map(Path::to_path_buf).into_iter().collect();
    if let Some(f) = env("REGISTRY_AUTH_FILE").filter(|f| !f.is_empty()) {
        files.push(f.into());
    }
    if let Some(d) = env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    match env("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(d) => files.push(Path::new(&d).join("config.json")),
        None => {
            if let Some(h) = env("HOME").filter(|h| !h.is_empty()) {
                files.push(Path::new(&h).join(".docker/config.json"));
            }
        }
    }
    files
}

/// The entry's key with any scheme, `/v1/` or `/v2/` suffix taken off
/// (docker writes `https://index.docker.io/v1/`).
fn normalize_key(k: &str) -> &str {
    match k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
    {
        // Only a URL's path is an API version; `r.io/team/v1` is a repository.
        Some(url) => {
            let url = url.trim_end_matches('/');
            url.strip_suffix("/v1")
                .or_else(|| url.strip_suffix("/v2"))
                .unwrap_or(url)
        }
        None => k,
    }
}

/// Whether `key` (normalized) names `host/repo`: the host itself, or the
/// host and a leading part of the repository in whole path components; how
/// specific it is (its length).
fn matches(key: &str, host: &str, repo: &str) -> Option<usize> {
    if key == host {
        return Some(key.len());
    }
    let path = key.strip_prefix(host)?.strip_prefix('/')?;
    let ok = repo == path || repo.strip_prefix(path).is_some_and(|r| r.starts_with('/'));
    ok.then_some(key.len())
}

/// The credential `text` (one auth file's JSON) holds for `host` and `repo`,
/// if any.
fn lookup(text: &str, host: &str, repo: &str) -> Result<Option<Credential>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let Some(auths) = v.get("auths") else {
        return Ok(None);
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| "`auths` is not an object".to_string())?;
    let best = auths
        .iter()
        .filter_map(|(k, e)| matches(normalize_key(k), host, repo).map(|n| (n, k, e)))
        .max_by_key(|(n, _, _)| *n);
    let Some((_, key, entry)) = best else {
        return Ok(None);
    };
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    if let Some(t) = field("identitytoken") {
        return Ok(Some(Credential::IdentityToken(t.to_string())));
    }
    if let Some(a) = field("auth") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| format!("the `auth` of `{key}` is not base64"))?;
        let text =
            String::from_utf8(raw).map_err(|_| format!("the `auth` of `{key}` is not UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| format!("the `auth` of `{key}` is not USER:PASSWORD"))?;
        return Ok(Some(Credential::Basic {
            user: user.to_string(),
            password: password.to_string(),
        }));
    }
    // No secret here: docker writes such entries when a credential helper
    // holds it (helpers are not run). Anonymous, or the next file's.
    Ok(None)
}

/// The credential for `host` (`HOST[:PORT]`) and `repo` from the first of
/// `files` that has one; `None`: anonymous. A missing file is skipped; an
/// unreadable or malformed one is an error (naming the file, never a
/// secret).
pub fn find(
    files: &[PathBuf],
    host: &str,
    repo: &str,
) -> Result<Option<Credential>, AuthFileError> {
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(AuthFileError {
                    path: f.display().to_string(),
                    why: e.to_string(),
                })
            }
        };
        let found = lookup(&text, host, repo).map_err(|why| AuthFileError {
            path: f.display().to_string(),
            why,
        })?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// One case: an auth file's text, the registry and repository, and the
    /// credential found (`Ok(None)`: anonymous) or the error's text.
    fn check(text: &str, host: &str, repo: &str, expected: Result<Option<Credential>, &str>) {
        assert_eq!(
            lookup(text, host, repo),
            expected.map_err(str::to_string),
            "{text} {host} {repo}"
        );
    }

    fn basic(user: &str, password: &str) -> Option<Credential> {
        Some(Credential::Basic {
            user: user.into(),
            password: password.into(),
        })
    }

    #[test]
    fn entries_are_found_by_registry_and_repository() {
        let file = format!(
            r#"{{"auths": {{
                "r.io": {{"auth": "{}"}},
                "r.io/team": {{"auth": "{}"}},
                "r.io/team/v1": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"identitytoken": "tok"}},
                "other.io": {{"auth": "{}"}}
            }}}}"#,
            b64("anna:pw:with:colons"),
            b64("team:secret"),
            b64("team-v1:secret"),
            b64("hub:x"),
            b64("o:o"),
        );
        check(
            &file,
            "r.io",
            "library/py",
            Ok(basic("anna", "pw:with:colons")),
        );
        check(&file, "r.io", "team/api", Ok(basic("team", "secret")));
        check(&file, "r.io", "team/v1/app", Ok(basic("team-v1", "secret")));
        check(
            &file,
            "r.io",
            "teamx/api",
            Ok(basic("anna", "pw:with:colons")),
        );
        check(
            &file,
            "index.docker.io",
            "library/debian",
            Ok(basic("hub", "x")),
        );
        check(
            &file,
            "127.0.0.1:5000",
            "a",
            Ok(Some(Credential::IdentityToken("tok".into()))),
        );
        check(&file, "127.0.0.1:5001", "a", Ok(None));
        check(&file, "io", "r", Ok(None));
        check(
            r#"{"credHelpers": {"r.io": "ecr-login"}}"#,
            "r.io",
            "a",
            Ok(None),
        );
    }

    #[test]
    fn a_bad_file_is_named_without_its_secrets() {
        check(
            "{",
            "r.io",
            "a",
            Err("not JSON (EOF while parsing an object at line 1 column 1)"),
        );
        check(
            r#"{"auths": []}"#,
            "r.io",
            "a",
            Err("`auths` is not an object"),
        );
        check(
            r#"{"auths": {"r.io": {"auth": "%%%secret"}}}"#,
            "r.io",
            "a",
            Err("the `auth` of `r.io` is not base64"),
        );
        check(
            &format!(
                r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#,
                b64("nocolon")
            ),
            "r.io",
            "a",
            Err("the `auth` of `r.io` is not USER:PASSWORD"),
        );
        // An entry without a secret (a credential helper's) is passed over.
        check(r#"{"auths": {"r.io": {}}}"#, "r.io", "a", Ok(None));
        let c = basic("u", "hunter2").unwrap();
        assert_eq!(format!("{c:?}"), "Basic(<redacted>)");
    }

    #[test]
    fn files_are_looked_in_in_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let all = env(&[
            ("REGISTRY_AUTH_FILE", "/a/auth.json"),
            ("XDG_RUNTIME_DIR", "/run/user/0"),
            ("DOCKER_CONFIG", "/d"),
            ("HOME", "/root"),
        ]);
        assert_eq!(
            auth_files(Some(Path::new("/etc/tarpool/auth.json")), &all),
            [
                "/etc/tarpool/auth.json",
                "/a/auth.json",
                "/run/user/0/containers/auth.json",
                "/d/config.json"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            auth_files(None, &env(&[("HOME", "/root")])),
            [PathBuf::from("/root/.docker/config.json")]
        );
        assert!(auth_files(None, &env(&[])).is_empty());

        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("1.json"), dir.path().join("2.json"));
        std::fs::write(
            &first,
            format!(r#"{{"auths": {{"a.io": {{"auth": "{}"}}}}}}"#, b64("a:1")),
        )
        .unwrap();
        std::fs::write(
            &second,
            format!(r#"{{"auths": {{"b.io": {{"auth": "{}"}}}}}}"#, b64("b:2")),
        )
        .unwrap();
        let files = [dir.path().join("missing.json"), first, second.clone()];
        assert_eq!(find(&files, "b.io", "x").unwrap(), basic("b", "2"));
        assert_eq!(find(&files, "c.io", "x").unwrap(), None);
        std::fs::write(&second, "not json").unwrap();
        let e = find(&files, "c.io", "x").unwrap_err();
        assert_eq!(e.path, second.display().to_string());
    }
}
