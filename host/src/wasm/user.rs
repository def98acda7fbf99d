//! The user step: an image's `User` resolved against the bytes of its
//! /etc/passwd and /etc/group, for `tarpool exec` and `bundle`.

use std::path::Path;

use wasmtime::Engine;

use super::cache::{load_component, new_engine, wasi_linker};
use super::limits::{
    instantiate_err, one_line, trapped, MAX_MESSAGE_CHARS, USER_FUEL, USER_MEMORY,
};
use super::store::{new_store, State};
use super::{host_err, StepError};

mod user_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "user-step" });
}

/// The user step (`guest-steps/user`), for `tarpool exec` and `bundle`.
pub(super) static USER_WASM: &[u8] = include_bytes!(env!("TARPOOL_USER_WASM"));
/// Who an image's command runs as, from the user step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// The user step alone (`guest-steps/user`): `tarpool exec` and `bundle`
/// resolve an image's `User` against the bytes of its /etc/passwd and
/// /etc/group in it, never in the host.
pub struct UserStep {
    engine: Engine,
    pre: user_bindings::UserStepPre<State>,
}

impl UserStep {
    /// Compiles the built-in user step, or loads it compiled from
    /// `cache_dir` (as [`Steps::load`] does; a cache that cannot be
    /// written is not an error).
    pub fn load(cache_dir: &Path) -> Result<UserStep, StepError> {
        let engine = new_engine()?;
        let linker = wasi_linker(&engine)?;
        let mut warnings = Vec::new();
        let (component, _) = load_component(&engine, cache_dir, "user", USER_WASM, &mut warnings)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| host_err("preparing the user step", e))?;
        let pre = user_bindings::UserStepPre::new(pre)
            .map_err(|e| host_err("the built-in user step is not a user-step component", e))?;
        Ok(UserStep { engine, pre })
    }

    /// Resolves `spec` (the config's `User`) against the image's
    /// /etc/passwd and /etc/group bytes (None: absent). A rejection blames
    /// the image.
    pub fn resolve(
        &self,
        spec: &str,
        passwd: Option<&[u8]>,
        group: Option<&[u8]>,
    ) -> Result<UserIds, StepError> {
        let (mut store, stderr) = new_store(&self.engine, USER_FUEL, USER_MEMORY, None, 0)?;
        let step = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| instantiate_err("user", e, &stderr))?;
        let result = step
            .call_resolve_user(&mut store, spec, passwd, group)
            .map_err(|e| trapped(e, &stderr))?;
        let ids = result.map_err(|e| StepError::Rejected(one_line(&e, MAX_MESSAGE_CHARS)))?;
        Ok(UserIds {
            uid: ids.uid,
            gid: ids.gid,
            groups: ids.groups,
            home: one_line(&ids.home, 4096),
        })
    }
}
