//! A whole registry (`registry://HOST` without a repository): its catalog
//! (`/v2/_catalog`) and every repository's tags (`/v2/REPO/tags/list`),
//! each a page at a time. Each page's body and `Link` header are read by
//! the listing step (`guest-steps/listing`), which checks every name
//! against the distribution grammar and says where the next page is: the
//! host reads no registry JSON. The host follows a next page only on this
//! registry and under the path it asked.
//!
//! Bounded: the listing stops once it has one image more than the policy's
//! `max-images` (the caller keeps `max-images` of them and says the rest
//! are not served); a page that names nothing cannot link to another, so a
//! registry cannot keep it paging.

use std::collections::HashSet;
use std::sync::Arc;

use hyper::{header, Method};

use super::answers::{read_capped, RegistryError};
use super::client::Registry;
use super::fetch;
use crate::core::names::{printable, Rejected};
use crate::core::registry::{valid_repo, valid_tag};
use crate::source::{run_on, SourceError};
use crate::wasm::{ListOf, ListingStep, StepError};

/// Names outside the grammar said one by one, per source; the rest are
/// counted in one line.
const MAX_REJECTED: usize = 64;

/// The largest page read.
pub const MAX_PAGE: usize = 4 << 20;

impl Registry {
    /// One page of a list: `path_and_query` on this registry, asked for
    /// `scope`. Its body (at most [`MAX_PAGE`] bytes) and its `Link`
    /// header (several joined by `, `), both unread.
    pub async fn list_page(
        &self,
        path_and_query: &str,
        scope: &str,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let what = format!("GET {}", printable(path_and_query));
        let resp = self.send(Method::GET, path_and_query, scope, &[]).await?;
        let links: Vec<&str> = resp
            .headers()
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let link = (!links.is_empty()).then(|| links.join(", "));
        let body = read_capped(&what, resp.into_body(), MAX_PAGE).await?;
        Ok((body, link))
    }
}

/// What a registry lists.
#[derive(Debug, Default)]
pub struct Listed {
    /// (repository, tag), in the registry's order: at most `max + 1`.
    pub images: Vec<(String, String)>,
    /// Names the grammar refuses, and repositories whose tags could not
    /// be listed (not retryably).
    pub rejected: Vec<Rejected>,
}

/// Lists the registry's images (at most `max + 1`): the catalog, then each
/// repository's tags. A failure that may pass (the network, 429, 5xx) or a
/// catalog the registry refuses fails the listing; a repository whose tags
/// it refuses is one rejection.
pub fn list(
    handle: &tokio::runtime::Handle,
    client: &Arc<Registry>,
    host: &str,
    step: &ListingStep,
    max: usize,
) -> Result<Listed, SourceError> {
    let budget = max.saturating_add(1);
    let mut listed = Listed::default();
    let walker = Walker {
        said: Default::default(),
        unsaid: Default::default(),
        handle,
        client,
        host,
        step,
    };
    let repos = walker.walk(
        ListOf::Repositories,
        "/v2/_catalog",
        "registry:catalog:*",
        budget,
        &mut listed.rejected,
    )?;
    for repo in repos {
        if listed.images.len() >= budget {
            break;
        }
        let path = format!("/v2/{repo}/tags/list");
        let scope = format!("repository:{repo}:pull");
        let left = budget - listed.images.len();
        let mut rejected = Vec::new();
        match walker.walk(
            ListOf::Tags(repo.clone()),
            &path,
            &scope,
            left,
            &mut rejected,
        ) {
            Ok(tags) => {
                listed
                    .images
                    .extend(tags.into_iter().map(|t| (repo.clone(), t)));
                listed.rejected.append(&mut rejected);
            }
            Err(SourceError::Io(e)) => return Err(SourceError::Io(e)),
            Err(e) => listed.rejected.push(Rejected {
                key: repo.clone(),
                reason: format!("its tags cannot be listed: {e}"),
            }),
        }
    }
    if walker.unsaid.get() > 0 {
        listed.rejected.push(Rejected {
            key: "_catalog".into(),
            reason: format!(
                "{} more names the registry lists are not of the distribution specification",
                walker.unsaid.get()
            ),
        });
    }
    Ok(listed)
}

struct Walker<'a> {
    /// Names outside the grammar said, and those only counted.
    said: std::cell::Cell<usize>,
    unsaid: std::cell::Cell<usize>,
    handle: &'a tokio::runtime::Handle,
    client: &'a Arc<Registry>,
    host: &'a str,
    step: &'a ListingStep,
}

impl Walker<'_> {
    /// The names of list `of` at `path`, page by page, until `budget` of
    /// them or the last page. Names refused by the grammar are rejections
    /// (keyed by the list: `_catalog`, or the repository).
    fn walk(
        &self,
        of: ListOf,
        path: &str,
        scope: &str,
        budget: usize,
        rejected: &mut Vec<Rejected>,
    ) -> Result<Vec<String>, SourceError> {
        let key = match &of {
            ListOf::Repositories => "_catalog".to_string(),
            ListOf::Tags(repo) => repo.clone(),
        };
        let registry = |why: String| {
            SourceError::BadObject(format!("registry {}: {why}", printable(self.host)))
        };
        let mut names = Vec::new();
        let mut seen = HashSet::new();
        // Without `n=`: a registry pages by its own size (distribution
        // refuses an `n` above its `maxentries`).
        let mut next = path.to_string();
        // Each page but the last names something new, and the walk stops
        // at `budget` names: at most `budget + 1` pages.
        for _ in 0..=budget {
            let (client, pq, sc) = (self.client.clone(), next.clone(), scope.to_string());
            let (body, link) = run_on(self.handle, async move {
                fetch::retrying(|| client.list_page(&pq, &sc)).await
            })?
            .map_err(|e| fetch::source_error(self.host, e))?;
            let page = self
                .step
                .read_page(&of, &body, link.as_deref())
                .map_err(|e| match e {
                    StepError::Host(e) => SourceError::Io(e),
                    e => registry(format!("GET {}: {e}", printable(&next))),
                })?;
            // What the registry lists outside the grammar: said, up to
            // `MAX_REJECTED` lines a list, then counted.
            let refused = page.refused_count as usize;
            let kept = page
                .refused
                .len()
                .min(MAX_REJECTED.saturating_sub(self.said.get()));
            for r in page.refused.into_iter().take(kept) {
                rejected.push(Rejected {
                    key: key.clone(),
                    reason: crate::core::names::printable(&r),
                });
            }
            self.said.set(self.said.get() + kept);
            self.unsaid
                .set(self.unsaid.get() + refused.saturating_sub(kept));
            let mut added = 0;
            for n in page.names {
                if names.len() >= budget {
                    return Ok(names);
                }
                // The guest checked the grammar; so does the host, before
                // a name reaches a URL or a token scope.
                let valid = match &of {
                    ListOf::Repositories => valid_repo(&n),
                    ListOf::Tags(_) => valid_tag(&n),
                };
                if valid && seen.insert(n.clone()) {
                    names.push(n);
                    added += 1;
                }
            }
            let Some(n) = page.next else {
                return Ok(names);
            };
            if names.len() >= budget {
                return Ok(names);
            }
            if added == 0 {
                return Err(registry(format!(
                    "GET {}: a page that names nothing new links to another",
                    printable(&next)
                )));
            }
            let own = n
                .authority
                .as_deref()
                .is_none_or(|a| a.eq_ignore_ascii_case(self.host));
            let under = n
                .path_and_query
                .strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
                && n.path_and_query.len() <= 2048
                && n.path_and_query
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'#');
            if !own || !under {
                return Err(registry(format!(
                    "GET {}: the next page is not {path} on this registry",
                    printable(&next)
                )));
            }
            next = n.path_and_query;
        }
        Err(registry(format!("{path}: more than {budget} pages")))
    }
}
