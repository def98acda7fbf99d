//! `Ctx`: everything a run needs (state directory, store, blob store, format
//! steps, snapshotter, source, policy), built once from the configuration
//! and never changed afterwards; a reload builds a new one.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::backend::Snapshotter;
use crate::blobs::BlobStore;
use crate::core::machine::RetryPolicy;
use crate::core::policy::Policy;
use crate::core::sanitize::sanitize;
use crate::failpoint::Failpoints;
use crate::source::Sources;
use crate::statedir::StateDir;
use crate::store::{Store, StoreError};
use crate::wasm::Steps;

/// What a `Ctx` is built from.
pub struct Parts {
    pub state_dir: StateDir,
    pub store: Store,
    pub blobs: BlobStore,
    pub steps: Steps,
    pub backend: Arc<dyn Snapshotter>,
    pub sources: Sources,
    pub policy: Policy,
    pub retry: RetryPolicy,
    /// The operator's opt-out of the extraction worker's confinement
    /// (Landlock, no_new_privs, capabilities); logged by the caller.
    pub unconfined_worker: bool,
    /// Set on SIGTERM/SIGINT: runs stop after the transition under way.
    pub shutdown: Arc<AtomicBool>,
}

/// The fields are public to read; nothing assigns them after [`Ctx::new`]
/// (shared as `&Ctx` or `Arc<Ctx>` from then on).
pub struct Ctx {
    pub state_dir: StateDir,
    pub store: Store,
    pub blobs: BlobStore,
    pub steps: Steps,
    pub backend: Arc<dyn Snapshotter>,
    pub sources: Sources,
    pub policy: Policy,
    /// sha256 of the effective policy (its canonical TOML), recorded with
    /// each run.
    pub policy_sha256: String,
    pub retry: RetryPolicy,
    pub unconfined_worker: bool,
    pub failpoints: Failpoints,
    pub shutdown: Arc<AtomicBool>,
    chain_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Why a `Ctx` could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CtxError {
    #[error("writing the policy to canonical TOML: {0}")]
    Policy(#[from] toml::ser::Error),
    #[error("recording the policy: {0}")]
    Store(#[from] StoreError),
}

impl Ctx {
    /// An image unit's fingerprint as runs and images record it: the
    /// unit's (its objects' keys, sizes and stamps), and the identity of
    /// the inspect steps that judge it, when some are configured, so that
    /// configuring other ones runs every image again.
    pub fn fingerprint(&self, u: &crate::core::names::Unit) -> String {
        match self.steps.inspect_identity() {
            Some(i) => format!("{} inspected-by {i}", u.fingerprint()),
            None => u.fingerprint(),
        }
    }

    /// Builds the context; the policy is recorded in the store (by its
    /// hash) so audits can show the exact policy a run used.
    pub fn new(p: Parts) -> Result<Ctx, CtxError> {
        let canonical = toml::to_string(&p.policy)?;
        let policy_sha256 = crate::core::policy::policy_hash(&canonical);
        p.store
            .record_policy(&policy_sha256, &p.policy.name, &canonical)?;
        Ok(Ctx {
            state_dir: p.state_dir,
            store: p.store,
            blobs: p.blobs,
            steps: p.steps,
            backend: p.backend,
            sources: p.sources,
            policy: p.policy,
            policy_sha256,
            retry: p.retry,
            unconfined_worker: p.unconfined_worker,
            failpoints: Failpoints::from_env(),
            shutdown: p.shutdown,
            chain_locks: Mutex::new(HashMap::new()),
        })
    }

    /// `msg` without the state directory's and the sources' host paths.
    pub fn sanitize(&self, msg: &str) -> String {
        let state = self.state_dir.display().to_string();
        let roots: Vec<String> = self
            .sources
            .iter()
            .filter_map(|s| s.local_root())
            .map(|p| p.display().to_string())
            .collect();
        let mut hide = vec![(state.as_str(), "<state>")];
        hide.extend(roots.iter().map(|r| (r.as_str(), "<source>")));
        sanitize(msg, &hide)
    }

    /// The lock held while a layer of `chain` is applied and committed:
    /// another image sharing the chain waits, then finds it committed.
    pub fn chain_lock(&self, chain: &str) -> Arc<Mutex<()>> {
        self.chain_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(chain.to_string())
            .or_default()
            .clone()
    }
}
