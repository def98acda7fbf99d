//! Registry references: `registry://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST][?OPTIONS]`
//! parsed and checked (the grammar of the OCI distribution specification),
//! and the image name a reference gets. Pure: no request is made here.

use crate::chain::is_sha256_digest;
use crate::names::{printable, valid_image_name};

/// What a reference names in its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tag(String),
    Digest(String),
}

/// `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    /// `os/arch[/variant]`, as `platform=` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

/// A parsed `registry://` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySpec {
    /// `host` or `host:port`, as given.
    pub host: String,
    /// One repository and what in it; `None`: every repository the
    /// registry's catalog lists, with every tag.
    pub image: Option<(String, Target)>,
    /// Talk HTTP, not HTTPS (refused unless asked).
    pub plain_http: bool,
    /// A CA bundle (PEM) to trust for this registry, besides the system's.
    pub ca_file: Option<String>,
    /// The image's name, instead of [`default_name`]'s.
    pub name: Option<String>,
    pub platform: Option<Platform>,
}

/// Why a `registry://` spec is refused (one line, the spec's fault).
pub type SpecError = String;

pub use guest_text::distribution::{valid_repo, valid_tag};

/// `host`, `host:port`, `[v6]:port`: letters, digits, `.`, `-`, and a
/// port of 1 to 65535.
fn valid_host(h: &str) -> bool {
    let (name_ok, port) = match h.strip_prefix('[') {
        Some(rest) => {
            let Some((v6, after)) = rest.split_once(']') else {
                return false;
            };
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return false,
                },
            };
            (v6.parse::<std::net::Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (name, port) = match h.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (h, None),
            };
            let ok = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    (1..=63).contains(&l.len())
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            (ok, port)
        }
    };
    name_ok
        && port.is_none_or(|p| {
            !p.starts_with('0')
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok_and(|n| n > 0)
        })
}

fn parse_platform(p: &str) -> Option<Platform> {
    let parts: Vec<&str> = p.split('/').collect();
    let ok = |s: &&str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
        return None;
    }
    Some(Platform {
        os: parts[0].into(),
        arch: parts[1].into(),
        variant: parts.get(2).map(|v| v.to_string()),
    })
}

/// Parses `registry://HOST[:PORT][/REPO[:TAG|@sha256:DIGEST]][?OPTIONS]`;
/// options: `plain-http`, `ca-file=PATH`, `name=NAME`,
/// `platform=OS/ARCH[/VARIANT]`. A repository without a tag or digest
/// means its `latest` tag.
pub fn parse(spec: &str) -> Result<RegistrySpec, SpecError> {
    let bad = |why: &str| format!("registry source `{}`: {why}", printable(spec));
    let rest = spec
        .strip_prefix("registry://")
        .ok_or_else(|| bad("does not start with registry://"))?;
    let (reference, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = reference.split_once('/').unwrap_or((reference, ""));
    if !valid_host(host) {
        return Err(bad("the registry must be HOST or HOST:PORT"));
    }
    let image = if path.is_empty() {
        None
    } else if let Some((repo, digest)) = path.split_once('@') {
        if !is_sha256_digest(digest) {
            return Err(bad("a digest must be sha256: and 64 lowercase hex digits"));
        }
        Some((repo.to_string(), Target::Digest(digest.to_string())))
    } else {
        // A tag follows the last `:` after the last `/`.
        let last = path.rfind('/').map_or(0, |i| i + 1);
        match path[last..].rfind(':') {
            Some(i) => {
                let (repo, tag) = (&path[..last + i], &path[last + i + 1..]);
                if !valid_tag(tag) {
                    return Err(bad(
                        "a tag is up to 128 of A-Z a-z 0-9 _ . - and does not start with . or -",
                    ));
                }
                Some((repo.to_string(), Target::Tag(tag.to_string())))
            }
            None => Some((path.to_string(), Target::Tag("latest".into()))),
        }
    };
    if let Some((repo, _)) = &image {
        if !valid_repo(repo) {
            return Err(bad(
                "a repository is lowercase path components of a-z 0-9 separated by . _ __ or -, at most 255 characters",
            ));
        }
    }
    let mut s = RegistrySpec {
        // Host names compare without case: one spelling.
        host: host.to_ascii_lowercase(),
        image,
        plain_http: false,
        ca_file: None,
        name: None,
        platform: None,
    };
    for opt in query.split('&').filter(|o| !o.is_empty()) {
        let (k, v) = opt
            .split_once('=')
            .map_or((opt, None), |(k, v)| (k, Some(v)));
        match (k, v) {
            ("plain-http", None) => s.plain_http = true,
            ("ca-file", Some(p)) if !p.is_empty() => s.ca_file = Some(p.to_string()),
            ("name", Some(n)) if valid_image_name(n) => s.name = Some(n.to_string()),
            ("name", Some(_)) => return Err(bad("name= must be 1 to 200 of A-Z a-z 0-9 . _ -")),
            ("platform", Some(p)) => {
                s.platform =
                    Some(parse_platform(p).ok_or_else(|| bad("platform= must be OS/ARCH or OS/ARCH/VARIANT"))?)
            }
            _ => {
                return Err(bad(&format!(
                    "unknown option `{}` (plain-http, ca-file=PATH, name=NAME, platform=OS/ARCH[/VARIANT])",
                    printable(opt)
                )))
            }
        }
    }
    if s.name.is_some() && s.image.is_none() {
        return Err(bad("name= names one image: give a repository"));
    }
    Ok(s)
}

/// The image name a repository and target get by default: the
/// repository's `/` become `_`, then `_` and the tag, or `_sha256-` and the
/// first 12 hex digits of the digest (`team/api:v42` → `team_api_v42`,
/// `library/py` → `library_py_latest`). `None` when that is longer than an
/// image name may be (200): give `name=`.
pub fn default_name(repo: &str, target: &Target) -> Option<String> {
    let suffix = match target {
        Target::Tag(t) => t.clone(),
        Target::Digest(d) => {
            let hex = d.strip_prefix("sha256:").unwrap_or(d);
            format!("sha256-{}", hex.get(..12).unwrap_or(hex))
        }
    };
    let name = format!("{}_{suffix}", repo.replace('/', "_"));
    valid_image_name(&name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A spec, shown as `host repo target options` (or the error's text).
    fn show(spec: &str) -> String {
        match parse(spec) {
            Err(e) => format!("error: {e}"),
            Ok(s) => {
                let image = match &s.image {
                    None => "(catalog)".to_string(),
                    Some((r, Target::Tag(t))) => format!("{r} tag {t}"),
                    Some((r, Target::Digest(d))) => format!("{r} digest {}", &d[..13]),
                };
                let mut opts = Vec::new();
                if s.plain_http {
                    opts.push("plain-http".to_string());
                }
                if let Some(c) = &s.ca_file {
                    opts.push(format!("ca={c}"));
                }
                if let Some(n) = &s.name {
                    opts.push(format!("name={n}"));
                }
                if let Some(p) = &s.platform {
                    opts.push(format!(
                        "{}/{}/{}",
                        p.os,
                        p.arch,
                        p.variant.as_deref().unwrap_or("-")
                    ));
                }
                format!("{} {image} [{}]", s.host, opts.join(" "))
            }
        }
    }

    fn check(spec: &str, expected: &str) {
        assert_eq!(show(spec), expected, "{spec}");
    }

    #[test]
    fn references_are_parsed_by_the_distribution_grammar() {
        check(
            "registry://registry.example.com/team/api:v42",
            "registry.example.com team/api tag v42 []",
        );
        check(
            "registry://127.0.0.1:5000/library/py:3.11?plain-http&name=py",
            "127.0.0.1:5000 library/py tag 3.11 [plain-http name=py]",
        );
        check(
            "registry://localhost:5000/py",
            "localhost:5000 py tag latest []",
        );
        check(
            &format!("registry://r.io/a/b@{D}"),
            "r.io a/b digest sha256:012345 []",
        );
        check(
            "registry://r.io:443/a.b_c__d---e/f?ca-file=/etc/ca.pem&platform=linux/arm64/v8",
            "r.io:443 a.b_c__d---e/f tag latest [ca=/etc/ca.pem linux/arm64/v8]",
        );
        check(
            "registry://[::1]:5000/x:_t.1-2",
            "[::1]:5000 x tag _t.1-2 []",
        );
        check("registry://r.io", "r.io (catalog) []");
        check(
            "registry://Registry.Example.COM/a",
            "registry.example.com a tag latest []",
        );
        check("registry://r.io?plain-http", "r.io (catalog) [plain-http]");
    }

    #[test]
    fn bad_references_are_refused_in_one_line() {
        for (spec, why) in [
            ("s3://b", "does not start with registry://"),
            ("registry://", "the registry must be HOST or HOST:PORT"),
            (
                "registry://-r.io/a",
                "the registry must be HOST or HOST:PORT",
            ),
            (
                "registry://r.io:0/a",
                "the registry must be HOST or HOST:PORT",
            ),
            (
                "registry://r.io:99999/a",
                "the registry must be HOST or HOST:PORT",
            ),
            (
                "registry://r_io/a",
                "the registry must be HOST or HOST:PORT",
            ),
            (
                "registry://r.io:+443/a",
                "the registry must be HOST or HOST:PORT",
            ),
            (
                "registry://[1]:5000/a",
                "the registry must be HOST or HOST:PORT",
            ),
            (
                "registry://[:::::]/a",
                "the registry must be HOST or HOST:PORT",
            ),
            ("registry://r.io/Team/api", "a repository is lowercase"),
            ("registry://r.io/a//b", "a repository is lowercase"),
            ("registry://r.io/a-/b", "a repository is lowercase"),
            ("registry://r.io/a___b", "a repository is lowercase"),
            ("registry://r.io/../etc", "a repository is lowercase"),
            ("registry://r.io/a:.x", "a tag is up to 128"),
            ("registry://r.io/a:", "a tag is up to 128"),
            ("registry://r.io/a@sha256:abc", "a digest must be sha256:"),
            ("registry://r.io/a@md5:00", "a digest must be sha256:"),
            ("registry://r.io/a?insecure", "unknown option `insecure`"),
            ("registry://r.io/a?name=../x", "name= must be"),
            ("registry://r.io/a?platform=linux", "platform= must be"),
            ("registry://r.io?name=x", "name= names one image"),
        ] {
            let got = show(spec);
            assert!(got.starts_with("error: registry source `"), "{spec}: {got}");
            assert!(got.contains(why), "{spec}: {got}");
            assert!(!got.contains('\n'));
        }
        let long = format!("registry://r.io/{}", "a".repeat(256));
        assert!(show(&long).contains("at most 255 characters"));
        assert!(show(&format!("registry://r.io/{}", "a".repeat(255))).starts_with("r.io "));
    }

    #[test]
    fn default_names_map_repository_and_target() {
        for (repo, target, name) in [
            ("team/api", Target::Tag("v42".into()), Some("team_api_v42")),
            (
                "library/py",
                Target::Tag("latest".into()),
                Some("library_py_latest"),
            ),
            (
                "py",
                Target::Digest(D.into()),
                Some("py_sha256-0123456789ab"),
            ),
        ] {
            assert_eq!(default_name(repo, &target).as_deref(), name, "{repo}");
        }
        let long = "a".repeat(200);
        assert_eq!(default_name(&long, &Target::Tag("t".into())), None);
    }
}
