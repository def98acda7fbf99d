//! The policy: limits and rules an image must satisfy, loaded from TOML
//! (`policies/default.toml` is compiled in) and evaluated without I/O. Every
//! evaluation yields a [`Verdict`] that the engine records in the audit log.

use serde::{Deserialize, Serialize};

use crate::model::ImageFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceNodes {
    Reject,
    Skip,
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Image formats accepted.
    pub formats: Vec<ImageFormat>,
    pub max_layers: usize,
    /// Largest object accepted from the source, in bytes.
    pub max_object_bytes: u64,
    /// Largest sum of objects of one image, in bytes.
    pub max_image_bytes: u64,
    /// Entries in one layer.
    pub max_layer_entries: u64,
    /// Regular-file bytes in one layer, uncompressed.
    pub max_layer_bytes: u64,
    pub device_nodes: DeviceNodes,
}

pub const DEFAULT_POLICY: &str = include_str!("/work/main/policies/default.toml");

impl Policy {
    pub fn from_toml(text: &str) -> Result<Policy, String> {
        let p: Policy = toml::from_str(text).map_err(|e| format!("policy: {}", e.message()))?;
        if p.max_layers == 0 {
            return Err("policy: max_layers must be at least 1".into());
        }
        Ok(p)
    }

    pub fn default_policy() -> Policy {
        Policy::from_toml(DEFAULT_POLICY).expect("the compiled-in default policy parses")
    }
}

/// One policy decision, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub rule: String,
    pub allow: bool,
    pub detail: String,
}

impl Verdict {
    fn new(rule: &str, allow: bool, detail: String) -> Verdict {
        Verdict {
            rule: rule.to_string(),
            allow,
            detail,
        }
    }
}

fn size_rule(rule: &str, what: &str, got: u64, max: u64) -> Verdict {
    if got <= max {
        Verdict::new(rule, true, format!("{what} {got} bytes <= {max}"))
    } else {
        Verdict::new(
            rule,
            false,
            format!("{what} is {got} bytes, over the limit of {max}"),
        )
    }
}

impl Policy {
    pub fn check_object(&self, key: &str, size: u64) -> Verdict {
        size_rule(
            "max_object_bytes",
            &format!("object `{key}`"),
            size,
            self.max_object_bytes,
        )
    }

    pub fn check_image_size(&self, total: u64) -> Verdict {
        size_rule("max_image_bytes", "image", total, self.max_image_bytes)
    }

    pub fn check_format(&self, format: ImageFormat) -> Verdict {
        let name = serde_json::to_value(format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if self.formats.contains(&format) {
            Verdict::new("formats", true, format!("format {name} is allowed"))
        } else {
            Verdict::new(
                "formats",
                false,
                format!("format {name} is not allowed by the policy"),
            )
        }
    }

    pub fn check_layers(&self, n: usize) -> Verdict {
        if n == 0 {
            Verdict::new("max_layers", false, "image has no layers".into())
        } else if n <= self.max_layers {
            Verdict::new(
                "max_layers",
                true,
                format!("{n} layers <= {}", self.max_layers),
            )
        } else {
            Verdict::new(
                "max_layers",
                false,
                format!(
                    "image has {n} layers, over the limit of {}",
                    self.max_layers
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_parses() {
        let p = Policy::default_policy();
        assert!(p.formats.contains(&ImageFormat::AdHoc));
        assert_eq!(p.device_nodes, DeviceNodes::Skip);
    }

    fn check(v: Verdict, allow: bool, detail: &str) {
        assert_eq!(v.allow, allow, "{v:?}");
        assert!(v.detail.contains(detail), "{:?} lacks {detail}", v.detail);
    }

    #[test]
    fn verdicts() {
        let mut p = Policy::default_policy();
        p.max_layers = 3;
        p.max_object_bytes = 10;
        p.formats = vec![ImageFormat::AdHoc];
        check(p.check_layers(3), true, "3 layers");
        check(p.check_layers(4), false, "over the limit of 3");
        check(p.check_layers(0), false, "no layers");
        check(p.check_object("images/a/1.tar", 10), true, "10 bytes");
        check(
            p.check_object("images/a/1.tar", 11),
            false,
            "over the limit of 10",
        );
        check(
            p.check_format(ImageFormat::AdHoc),
            true,
            "ad-hoc is allowed",
        );
        check(
            p.check_format(ImageFormat::DockerArchive),
            false,
            "docker-archive is not allowed",
        );
    }

    #[test]
    fn bad_policies_are_reported() {
        for (text, frag) in [
            ("formats = []\nmax_layers = 0\nmax_object_bytes=1\nmax_image_bytes=1\nmax_layer_entries=1\nmax_layer_bytes=1\ndevice_nodes=\"skip\"", "max_layers"),
            ("bogus = 1", "unknown field"),
            ("formats = [\"tarball\"]", "unknown variant"),
        ] {
            let e = Policy::from_toml(text).unwrap_err();
            assert!(e.contains(frag), "{e}");
        }
    }
}
