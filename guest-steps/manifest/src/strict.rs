//! A pre-pass over every JSON document before it is decoded (catalogue F66).
//!
//! serde rejects a duplicate of a field it knows but keeps the first of
//! two unknown ones, and it matches names exactly, whereas Go's
//! `encoding/json` (containerd, moby, umoci) matches them ignoring case and
//! keeps the last. `{"layers":[A],"Layers":[B]}` would be read as A here and
//! as B by a Go tool. This pass rejects, anywhere in the document, an object
//! with the same key twice, and, where the document's [`Shape`] names the
//! fields of an object, a key that differs from one of them only in ASCII
//! case. Where the shape says object, an array is rejected too (serde would
//! decode a struct from one, positionally). The nesting limit is
//! serde_json's (128).

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// The fields tarpool (or a Go tool) reads at a position of a document.
pub(crate) enum Shape {
    /// Free-form: only exact duplicate keys are rejected below here.
    Any,
    /// An object with these fields (others are allowed and free-form).
    Obj(&'static [(&'static str, Shape)]),
    /// An array whose elements have this shape.
    Arr(&'static Shape),
}

use Shape::{Any, Arr, Obj};

const PLATFORM: Shape = Obj(&[
    ("architecture", Any),
    ("os", Any),
    ("variant", Any),
    ("os.version", Any),
    ("os.features", Any),
    ("features", Any),
]);

/// An OCI content descriptor.
const DESCRIPTOR: Shape = Obj(&[
    ("mediaType", Any),
    ("digest", Any),
    ("size", Any),
    ("urls", Any),
    ("annotations", Any),
    ("data", Any),
    ("artifactType", Any),
    ("platform", PLATFORM),
]);

const DESCRIPTORS: Shape = Arr(&DESCRIPTOR);

/// An index or a manifest: one shape, since a document with the fields of
/// both is rejected after decoding.
pub(crate) const INDEX_OR_MANIFEST: Shape = Obj(&[
    ("schemaVersion", Any),
    ("mediaType", Any),
    ("artifactType", Any),
    ("manifests", DESCRIPTORS),
    ("config", DESCRIPTOR),
    ("layers", DESCRIPTORS),
    ("subject", DESCRIPTOR),
    ("annotations", Any),
    ("fsLayers", Any),
]);

pub(crate) const OCI_LAYOUT: Shape = Obj(&[("imageLayoutVersion", Any)]);

const RUN_CONFIG: Shape = Obj(&[
    ("Env", Any),
    ("Entrypoint", Any),
    ("Cmd", Any),
    ("WorkingDir", Any),
    ("User", Any),
    ("Labels", Any),
    ("ExposedPorts", Any),
    ("Volumes", Any),
    ("StopSignal", Any),
    ("ArgsEscaped", Any),
]);

/// An image configuration (OCI or docker).
pub(crate) const IMAGE_CONFIG: Shape = Obj(&[
    ("architecture", Any),
    ("os", Any),
    ("variant", Any),
    ("os.version", Any),
    ("os.features", Any),
    ("created", Any),
    ("author", Any),
    ("config", RUN_CONFIG),
    ("rootfs", Obj(&[("type", Any), ("diff_ids", Any)])),
    ("history", Any),
]);

const DOCKER_ENTRY: Shape = Obj(&[
    ("Config", Any),
    ("RepoTags", Any),
    ("Layers", Any),
    ("LayerSources", Any),
    ("Parent", Any),
]);

/// A docker-archive `manifest.json`.
pub(crate) const DOCKER_MANIFEST: Shape = Arr(&DOCKER_ENTRY);

/// Checks `bytes` is one JSON value without duplicate or case-variant keys.
pub(crate) fn check(bytes: &[u8], shape: &Shape) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Walk { shape }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| e.to_string())
}

struct Walk<'s> {
    shape: &'s Shape,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let element = match self.shape {
            Arr(s) => s,
            // serde would decode a struct from an array, field by field.
            Obj(_) => {
                return Err(de::Error::custom(
                    "invalid type: sequence, expected an object",
                ))
            }
            Any => &Any,
        };
        while seq.next_element_seed(Walk { shape: element })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields: &[(&str, Shape)] = match self.shape {
            Obj(f) => f,
            _ => &[],
        };
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    crate::quote_name(&key)
                )));
            }
            let child = match fields.iter().find(|(name, _)| *name == key) {
                Some((_, shape)) => shape,
                None => {
                    if let Some((name, _)) = fields
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case(&key))
                    {
                        return Err(de::Error::custom(format_args!(
                            "key {} differs from `{name}` only in case",
                            crate::quote_name(&key)
                        )));
                    }
                    &Any
                }
            };
            map.next_value_seed(Walk { shape: child })?;
            seen.insert(key);
        }
        Ok(())
    }
}
