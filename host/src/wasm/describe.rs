//! What a component is, read from its type alone (it is never run for
//! this): the world of `wit/tarpool.wit` it implements, the version of the
//! `tarpool:steps` package it was built against, and what it imports.
//!
//! The compatibility rule is semver on the WIT package: a component built
//! against `tarpool:steps@X.Y.Z` loads in a host whose package is
//! `X.Y'.Z'` with `Y.Z <= Y'.Z'` (for `0.Y`, the same `Y` and `Z <= Z'`):
//! a host adds to the package within a compatible version and never
//! changes what is there. A step may import only what the host provides
//! every guest (`wasi:io`, `wasi:cli`, `wasi:random`: no files, sockets or
//! clocks) and the `tarpool:steps` interfaces of its world; anything else
//! is refused, named.

use wasmtime::component::Component;
use wasmtime::Engine;

/// The WIT package the steps implement.
pub const WIT_PACKAGE: &str = "tarpool:steps";
/// This host's version of it (`package tarpool:steps@...;` in
/// `wit/tarpool.wit`; a unit test keeps the two the same).
pub const WIT_VERSION: &str = "0.1.2";
/// The largest component loaded.
pub const MAX_COMPONENT_BYTES: usize = 16 << 20;

/// The WASI interfaces every step may import (the host grants none of
/// their capabilities beyond an empty environment and captured stderr).
const WASI_ALLOWED: [&str; 3] = ["wasi:io/", "wasi:cli/", "wasi:random/"];

/// A world of `wit/tarpool.wit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    ClassifyStep,
    ManifestStep,
    TarCheckStep,
    /// An inspect step that also reads small files (before
    /// [`World::InspectStep`] in [`World::ALL`]: it exports `inspect` too).
    InspectContentsStep,
    InspectStep,
    UserStep,
    ListingStep,
}

impl World {
    pub const ALL: [World; 7] = [
        World::ClassifyStep,
        World::ManifestStep,
        World::TarCheckStep,
        World::InspectContentsStep,
        World::InspectStep,
        World::UserStep,
        World::ListingStep,
    ];

    /// Its name in the WIT.
    pub fn name(self) -> &'static str {
        match self {
            World::ClassifyStep => "classify-step",
            World::ManifestStep => "manifest-step",
            World::TarCheckStep => "tar-check-step",
            World::InspectContentsStep => "inspect-contents-step",
            World::InspectStep => "inspect-step",
            World::UserStep => "user-step",
            World::ListingStep => "listing-step",
        }
    }

    /// The key of `[steps]` that configures it, if one does.
    pub fn config_key(self) -> Option<&'static str> {
        match self {
            World::ClassifyStep => Some("classify"),
            World::ManifestStep => Some("manifest"),
            World::TarCheckStep => Some("tar-check"),
            World::InspectStep | World::InspectContentsStep => Some("inspect"),
            World::UserStep | World::ListingStep => None,
        }
    }

    /// The export that says a component implements it.
    fn export(self) -> &'static str {
        match self {
            World::ClassifyStep => "classify",
            World::ManifestStep => "parse",
            World::TarCheckStep => "tarpool:steps/tar-check",
            World::InspectContentsStep => "tarpool:steps/inspect-contents",
            World::InspectStep => "tarpool:steps/inspect",
            World::UserStep => "resolve-user",
            World::ListingStep => "read-page",
        }
    }

    /// The `tarpool:steps` interfaces it may import.
    fn imports(self) -> &'static [&'static str] {
        match self {
            World::ClassifyStep => &["types"],
            World::ManifestStep => &["types", "source"],
            World::TarCheckStep => &[],
            World::InspectStep | World::InspectContentsStep => &["types", "inspect-types"],
            World::UserStep => &["user-types"],
            World::ListingStep => &["listing-types"],
        }
    }
}

/// What a component is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub world: World,
    /// The `tarpool:steps` version it was built against.
    pub wit_version: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// `name` without its `@version`, and the version.
fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    }
}

/// `MAJOR.MINOR.PATCH`, numbers only.
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// Whether a component built against `built` loads in a host of `host`.
pub fn compatible(built: &str, host: &str) -> bool {
    match (parse_version(built), parse_version(host)) {
        (Some((0, bm, bp)), Some((0, hm, hp))) => bm == hm && bp <= hp,
        (Some((b, bm, bp)), Some((h, hm, hp))) => b == h && (bm, bp) <= (hm, hp),
        _ => false,
    }
}

/// The versions a host of `host` accepts, in words (`0.1.x up to 0.1.2`).
fn accepted(host: &str) -> String {
    match parse_version(host) {
        Some((0, m, _)) => format!("0.{m}.x up to {host}"),
        Some((major, _, _)) => format!("{major}.x up to {host}"),
        None => host.to_string(),
    }
}

/// Reads what `component` is, and refuses it (one line) if this host
/// cannot load it: no world of the WIT, another package version, or an
/// import the host does not provide.
pub fn describe(engine: &Engine, component: &Component) -> Result<Description, String> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let world = World::ALL
        .into_iter()
        .find(|w| exports.iter().any(|e| split_version(e).0 == w.export()))
        .ok_or_else(|| {
            format!(
                "implements no world of {WIT_PACKAGE} (its exports: {}; a step exports {})",
                list(&exports),
                World::ALL
                    .iter()
                    .map(|w| format!("`{}` ({})", w.export(), w.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let ours = format!("{WIT_PACKAGE}/");
    let mut versions: Vec<&str> = imports
        .iter()
        .chain(&exports)
        .filter(|n| n.starts_with(&ours))
        .filter_map(|n| split_version(n).1)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    let wit_version = match versions.as_slice() {
        [v] => v.to_string(),
        [] => {
            return Err(format!(
                "{} names no version of {WIT_PACKAGE}: build it against wit/tarpool.wit",
                world.name()
            ))
        }
        more => {
            return Err(format!(
                "{} was built against several versions of {WIT_PACKAGE}: {}",
                world.name(),
                more.join(", ")
            ))
        }
    };
    if !compatible(&wit_version, WIT_VERSION) {
        return Err(format!(
            "{} was built against {WIT_PACKAGE}@{wit_version}; this host has {WIT_VERSION} and loads {}",
            world.name(),
            accepted(WIT_VERSION)
        ));
    }
    let refused: Vec<&str> = imports
        .iter()
        .map(String::as_str)
        .filter(|i| {
            let (name, _) = split_version(i);
            let wasi = WASI_ALLOWED.iter().any(|p| name.starts_with(p));
            let step = name
                .strip_prefix(&ours)
                .is_some_and(|iface| world.imports().contains(&iface));
            !wasi && !step
        })
        .collect();
    if !refused.is_empty() {
        return Err(format!(
            "{} imports what the host does not give a step: {} (a step may import wasi:io, wasi:cli, wasi:random and {})",
            world.name(),
            list(&refused),
            if world.imports().is_empty() {
                "nothing of tarpool:steps".to_string()
            } else {
                world
                    .imports()
                    .iter()
                    .map(|i| format!("{ours}{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    Ok(Description {
        world,
        wit_version,
        imports,
        exports,
    })
}

/// Names for a message: at most 8, each cut to 100 characters.
fn list<S: AsRef<str>>(names: &[S]) -> String {
    let mut out: Vec<String> = names
        .iter()
        .take(8)
        .map(|n| super::limits::one_line(n.as_ref(), 100))
        .collect();
    if names.len() > 8 {
        out.push(format!("{} more", names.len() - 8));
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}
