//! The manifest step: an image's layers and runtime config from its unit's
//! members, with the `source` host import through which the guest reads them.

use crate::model;

use super::limits::{
    instantiate_err, one_line, trapped, MANIFEST_MEMORY, MAX_MESSAGE_CHARS, MAX_TOTAL_READ,
};
use super::store::State;
use super::{count_guest_time, Answered, Finally, MemberReader, StepError, Steps};

#[cfg(test)]
thread_local! {
    /// Fuel left after this thread's last `parse_manifest`.
    pub(super) static FUEL_LEFT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

pub(super) mod manifest_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "manifest-step" });
}

impl manifest_bindings::tarpool::steps::types::Host for State {}

impl manifest_bindings::tarpool::steps::source::Host for State {
    fn read_member(&mut self, name: String) -> Result<Vec<u8>, String> {
        let cap = self.max_member_read;
        let Some(read) = self.reader.as_mut() else {
            return Err("no member reader".into());
        };
        let bytes = read(&name)?;
        if bytes.len() > cap {
            return Err(format!(
                "member `{}` is {} bytes, over the {cap}-byte cap (policy rule max-json-bytes)",
                one_line(&name, 100),
                bytes.len(),
            ));
        }
        self.read_total = self.read_total.saturating_add(bytes.len());
        if self.read_total > MAX_TOTAL_READ {
            return Err(format!(
                "reading `{}` exceeds the {} MiB cap on manifest data",
                one_line(&name, 100),
                MAX_TOTAL_READ >> 20
            ));
        }
        Ok(bytes)
    }
}

impl Steps {
    /// Works out an image's layers from its unit's members, reading the
    /// members the guest asks for through `read` (each capped at 4 MiB):
    /// the first manifest component that recognises the format answers.
    /// Each component in turn gets `read` in its store's data.
    pub fn parse_manifest(
        &self,
        unit: model::UnitKind,
        members: &[model::Member],
        read: MemberReader,
    ) -> Result<(model::ImageLayout, Answered), StepError> {
        self.parse_manifest_for(unit, members, read, None)
    }

    /// [`Steps::parse_manifest`] choosing `platform` from an index, when
    /// given, instead of the configured one.
    pub fn parse_manifest_for(
        &self,
        unit: model::UnitKind,
        members: &[model::Member],
        read: MemberReader,
        platform: Option<&crate::core::registry::Platform>,
    ) -> Result<(model::ImageLayout, Answered), StepError> {
        use manifest_bindings::tarpool::steps::types as w;
        let unit = match unit {
            model::UnitKind::Prefix => w::UnitKind::Prefix,
            model::UnitKind::Archive => w::UnitKind::Archive,
            model::UnitKind::Registry => w::UnitKind::Registry,
        };
        let members: Vec<w::Member> = members
            .iter()
            .map(|m| w::Member {
                name: m.name.clone(),
                size: m.size,
            })
            .collect();
        let options = match platform {
            Some(p) => w::ManifestOptions {
                os: p.os.clone(),
                architecture: p.arch.clone(),
                arch_variant: p.variant.clone(),
                max_index_depth: self.options.max_index_depth,
            },
            None => w::ManifestOptions {
                os: self.options.os.clone(),
                architecture: self.options.architecture.clone(),
                arch_variant: self.options.variant.clone(),
                max_index_depth: self.options.max_index_depth,
            },
        };
        let mut reader = Some(read);
        let t = std::time::Instant::now();
        let _count = Finally(|| count_guest_time(t));
        for c in &self.manifest {
            let _slot = self.slots.acquire();
            let (mut store, stderr) =
                self.new_store(self.manifest_fuel, MANIFEST_MEMORY, reader.take())?;
            let outcome = c
                .pre
                .instantiate(&mut store)
                .map_err(|e| instantiate_err("manifest", e, &stderr))
                .and_then(|step| {
                    step.call_parse(&mut store, unit, &members, &options)
                        .map_err(|e| trapped(e, &stderr))
                });
            #[cfg(test)]
            FUEL_LEFT.set(store.get_fuel().unwrap_or(0));
            // Drops the store; the reader goes on to the next component.
            reader = store.into_data().reader;
            let Some(layout) =
                outcome?.map_err(|e| StepError::Rejected(one_line(&e, MAX_MESSAGE_CHARS)))?
            else {
                continue;
            };
            let answered = Answered {
                component: c.label.clone(),
                sha256: c.sha256.clone(),
            };
            return Ok((convert_layout(layout), answered));
        }
        Err(StepError::Rejected(format!(
            "no manifest component recognises this image (tried {})",
            self.manifest
                .iter()
                .map(|c| c.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

pub(super) fn convert_layout(
    layout: manifest_bindings::tarpool::steps::types::ImageLayout,
) -> model::ImageLayout {
    use manifest_bindings::tarpool::steps::types as w;
    model::ImageLayout {
        format: one_line(&layout.format, 64),
        layers: layout
            .layers
            .into_iter()
            .map(|l| model::LayerRef {
                member: l.member,
                media: match l.media {
                    w::LayerMedia::Tar => model::LayerMedia::Tar,
                    w::LayerMedia::Gzip => model::LayerMedia::Gzip,
                    w::LayerMedia::Zstd => model::LayerMedia::Zstd,
                    w::LayerMedia::Detect => model::LayerMedia::Detect,
                },
                digest: l.digest,
                diff_id: l.diff_id,
                size: l.size,
            })
            .collect(),
        config_digest: layout.config_digest,
        config: layout.config.map(|c| model::RuntimeConfig {
            env: c.env,
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            working_dir: c.working_dir,
            user: c.user,
        }),
    }
}
