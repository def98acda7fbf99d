//! The listing step: a page of a registry's catalog or of a repository's
//! tags read, its names checked, in a component (`guest-steps/listing`),
//! for the registry source when it serves a whole registry.

use std::path::Path;

use wasmtime::Engine;

use super::cache::{load_component, new_engine, wasi_linker};
use super::limits::{
    instantiate_err, one_line, trapped, LISTING_FUEL, LISTING_MEMORY, MAX_MESSAGE_CHARS,
};
use super::store::{new_store, State};
use super::{host_err, StepError};

mod listing_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "listing-step" });
}

use listing_bindings::tarpool::steps::listing_types;

/// The listing step (`guest-steps/listing`).
static LISTING_WASM: &[u8] = include_bytes!(env!("TARPOOL_LISTING_WASM"));

/// The list a page is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListOf {
    Repositories,
    /// The tags of this repository.
    Tags(String),
}

/// Where a page's `Link` says the next page is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextPage {
    /// `HOST[:PORT]`, when the link is an absolute URL.
    pub authority: Option<String>,
    /// `/v2/...` and its query (printable ASCII, no space).
    pub path_and_query: String,
}

/// A page as the listing step read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Names of the distribution grammar, in the registry's order.
    pub names: Vec<String>,
    /// Refused names, each one line (some of them).
    pub refused: Vec<String>,
    /// Refused names in all.
    pub refused_count: u32,
    pub next: Option<NextPage>,
}

/// The listing step, compiled and ready to instantiate (once per page).
pub struct ListingStep {
    engine: Engine,
    pre: listing_bindings::ListingStepPre<State>,
}

impl ListingStep {
    /// Compiles the built-in listing step, or loads it compiled from
    /// `cache_dir` (a cache that cannot be written is not an error).
    pub fn load(cache_dir: &Path) -> Result<ListingStep, StepError> {
        let engine = new_engine()?;
        let linker = wasi_linker(&engine)?;
        let mut warnings = Vec::new();
        let (component, _) =
            load_component(&engine, cache_dir, "listing", LISTING_WASM, &mut warnings)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| host_err("preparing the listing step", e))?;
        let pre = listing_bindings::ListingStepPre::new(pre).map_err(|e| {
            host_err(
                "the built-in listing step is not a listing-step component",
                e,
            )
        })?;
        Ok(ListingStep { engine, pre })
    }

    /// Reads one page of `of`: its body and its `Link` header. A rejection
    /// blames the registry.
    pub fn read_page(
        &self,
        of: &ListOf,
        body: &[u8],
        link: Option<&str>,
    ) -> Result<Page, StepError> {
        let (mut store, stderr) = new_store(&self.engine, LISTING_FUEL, LISTING_MEMORY, None, 0)?;
        let step = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| instantiate_err("listing", e, &stderr))?;
        let of = match of {
            ListOf::Repositories => listing_types::ListOf::Repositories,
            ListOf::Tags(r) => listing_types::ListOf::Tags(r.clone()),
        };
        let page = step
            .call_read_page(&mut store, &of, body, link)
            .map_err(|e| trapped(e, &stderr))?
            .map_err(|e| StepError::Rejected(one_line(&e, MAX_MESSAGE_CHARS)))?;
        Ok(Page {
            names: page.names,
            refused: page
                .refused
                .iter()
                .map(|r| one_line(r, MAX_MESSAGE_CHARS))
                .collect(),
            refused_count: page.refused_count,
            next: page.next.map(|n| NextPage {
                authority: n.authority,
                path_and_query: n.path_and_query,
            }),
        })
    }
}
