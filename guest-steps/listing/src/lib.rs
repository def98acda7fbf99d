//! Listing component: the `listing-step` world of `wit/tarpool.wit`. When
//! tarpool serves a whole registry (`registry://HOST` without a
//! repository), the host fetches `/v2/_catalog` and each repository's
//! `/v2/REPO/tags/list` a page at a time and hands each page here: its JSON
//! body and its `Link` header. This step reads them, checks every name
//! against the distribution specification's grammar (a repository:
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` components joined by `/`; a tag:
//! `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`), and says where the next page is,
//! so the host reads no registry JSON and puts no unchecked name in a URL.
//!
//! The logic is a plain function ([`read_page`]) so it can be unit-tested
//! natively; on `wasm32` the crate exports the world. It never panics on
//! any input, and every error is one bounded line without control
//! characters that blames the registry.

use guest_text::distribution::{valid_repo, valid_tag};
use guest_text::{one_line, quote};

/// Refused names kept in a page's `refused` (all are counted).
pub const MAX_REFUSED_KEPT: usize = 16;
/// The longest `Link` header read, and the longest next-page path.
pub const MAX_LINK_CHARS: usize = 4096;
pub const MAX_NEXT_CHARS: usize = 2048;
/// The longest name quoted in a message.
const MAX_NAME_CHARS: usize = 80;

/// The list a page is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListOf {
    Repositories,
    /// The tags of this repository.
    Tags(String),
}

/// Where the next page is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// `HOST[:PORT]` when the link is an absolute URL.
    pub authority: Option<String>,
    /// `/v2/...` and its query.
    pub path_and_query: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub names: Vec<String>,
    pub refused: Vec<String>,
    pub refused_count: u32,
    pub next: Option<Next>,
}

#[derive(serde::Deserialize)]
struct Catalog {
    repositories: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct Tags {
    name: String,
    tags: Option<Vec<String>>,
}

/// Reads one page of `of`: its body and its `Link` header (if any).
pub fn read_page(of: &ListOf, body: &[u8], link: Option<&str>) -> Result<Page, String> {
    let (names, valid, what): (Vec<String>, fn(&str) -> bool, &str) = match of {
        ListOf::Repositories => {
            let c: Catalog = serde_json::from_slice(body).map_err(|e| {
                one_line(&format!(
                    "the registry's catalog is not the distribution specification's JSON: {e}"
                ))
            })?;
            let names = c
                .repositories
                .ok_or_else(|| "the registry's catalog has no `repositories` list".to_string())?;
            (names, valid_repo, "repository")
        }
        ListOf::Tags(repo) => {
            let t: Tags = serde_json::from_slice(body).map_err(|e| {
                one_line(&format!(
                    "the tag list of {} is not the distribution specification's JSON: {e}",
                    quote(repo, MAX_NAME_CHARS)
                ))
            })?;
            if &t.name != repo {
                return Err(one_line(&format!(
                    "asked for the tags of {}, the registry listed those of {}",
                    quote(repo, MAX_NAME_CHARS),
                    quote(&t.name, MAX_NAME_CHARS)
                )));
            }
            // `null`: a repository whose tags were all deleted.
            (t.tags.unwrap_or_default(), valid_tag, "tag")
        }
    };
    let mut page = Page::default();
    for n in names {
        if valid(&n) {
            page.names.push(n);
        } else {
            page.refused_count = page.refused_count.saturating_add(1);
            if page.refused.len() < MAX_REFUSED_KEPT {
                page.refused.push(one_line(&format!(
                    "{} is not a {what} name of the distribution specification",
                    quote(&n, MAX_NAME_CHARS)
                )));
            }
        }
    }
    page.next = match link {
        None => None,
        Some(l) => next_link(l)?,
    };
    Ok(page)
}

/// The `rel="next"` target of a `Link` header (RFC 8288: `<URI>; rel=next`,
/// links separated by commas), as a path on this registry or an absolute
/// URL's authority and path.
fn next_link(header: &str) -> Result<Option<Next>, String> {
    let why = |w: &str| format!("the registry's `Link` header {w}");
    let bad = |w: &str| Err(why(w));
    if header.chars().count() > MAX_LINK_CHARS {
        return bad(&format!("is longer than {MAX_LINK_CHARS} characters"));
    }
    let mut rest = header;
    let mut next = None;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let Some(after) = rest.strip_prefix('<') else {
            return bad("is not a list of `<URI>; params`");
        };
        let Some((target, after)) = after.split_once('>') else {
            return bad("has an unterminated `<URI>`");
        };
        let (params, after) = params(after).map_err(why)?;
        rest = after;
        let is_next = params.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("rel")
                && v.split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
        });
        if is_next {
            if next.is_some() {
                return bad("names two next pages");
            }
            next = Some(target);
        }
    }
    let Some(target) = next else {
        return Ok(None);
    };
    let (authority, path) = match target
        .strip_prefix("https://")
        .or_else(|| target.strip_prefix("http://"))
    {
        Some(url) => match url.find('/') {
            Some(i) => (Some(&url[..i]), &url[i..]),
            None => return bad("names a next page that is not under `/v2/`"),
        },
        None => (None, target),
    };
    let printable = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b'\\' | b'#'))
    };
    if !path.starts_with("/v2/") || path.len() > MAX_NEXT_CHARS || !printable(path) {
        return bad("names a next page that is not a `/v2/` path of printable characters");
    }
    if let Some(a) = authority {
        let ok = !a.is_empty()
            && a.len() <= 255
            && a.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !ok {
            return bad("names a next page on a host that is not `HOST[:PORT]`");
        }
    }
    Ok(Some(Next {
        authority: authority.map(str::to_string),
        path_and_query: path.to_string(),
    }))
}

type Params<'a> = Vec<(&'a str, String)>;

/// A link's `; name=value` parameters (a value a token or a quoted string),
/// up to the `,` that ends the link; and what follows it.
fn params(mut s: &str) -> Result<(Params<'_>, &str), &'static str> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', '\t']);
        match s.as_bytes().first() {
            None => return Ok((out, s)),
            Some(b',') => return Ok((out, &s[1..])),
            Some(b';') => s = s[1..].trim_start_matches([' ', '\t']),
            Some(_) => return Err("has text between its links' parameters"),
        }
        let end = s.find(['=', ';', ',', ' ', '\t']).unwrap_or(s.len());
        let name = &s[..end];
        if name.is_empty() {
            return Err("has a parameter without a name");
        }
        s = s[end..].trim_start_matches([' ', '\t']);
        let Some(v) = s.strip_prefix('=') else {
            out.push((name, String::new()));
            continue;
        };
        let v = v.trim_start_matches([' ', '\t']);
        if let Some(q) = v.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    c => value.push(c),
                }
            }
            let Some(end) = end else {
                return Err("has an unterminated quoted parameter");
            };
            out.push((name, value));
            s = &q[end..];
        } else {
            let end = v.find([';', ',', ' ', '\t']).unwrap_or(v.len());
            out.push((name, v[..end].to_string()));
            s = &v[end..];
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "listing-step" });

    use tarpool::steps::listing_types::NextPage;

    struct Step;

    impl Guest for Step {
        fn read_page(of: ListOf, body: Vec<u8>, link: Option<String>) -> Result<Page, String> {
            let of = match of {
                ListOf::Repositories => super::ListOf::Repositories,
                ListOf::Tags(r) => super::ListOf::Tags(r),
            };
            super::read_page(&of, &body, link.as_deref()).map(|p| Page {
                names: p.names,
                refused: p.refused,
                refused_count: p.refused_count,
                next: p.next.map(|n| NextPage {
                    authority: n.authority,
                    path_and_query: n.path_and_query,
                }),
            })
        }
    }

    export!(Step);
}

#[cfg(test)]
mod tests;
