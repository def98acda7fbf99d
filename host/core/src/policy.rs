//! The policy: limits and rules an image must satisfy, as data (TOML in
//! `policies/`; `default` and `strict` are compiled in). Each rule has a name
//! (its table's name) and a reason. Evaluation does no I/O: it yields
//! [`Verdict`]s that the engine records in the audit log, and the per-entry
//! rules are handed to the tar check guest as its policy.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");
pub const STRICT_POLICY: &str = include_str!("../../../policies/strict.toml");

/// What to do with a kind of content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Allow,
    Skip,
    Strip,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub limit: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRule {
    pub action: Action,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Formats {
    pub allow: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xattrs {
    /// Exact names, or prefixes ending in `.`.
    pub allow: Vec<String>,
    /// The others: `strip` or `reject`.
    pub others: Action,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRange {
    pub min: i64,
    pub max: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Policy {
    pub name: String,
    pub formats: Formats,
    pub max_layers: Limit,
    pub max_layer_repeats: Limit,
    pub max_object_bytes: Limit,
    pub max_image_bytes: Limit,
    pub max_layer_bytes: Limit,
    pub max_compression_ratio: Limit,
    pub max_layer_entries: Limit,
    pub max_path_bytes: Limit,
    pub max_name_bytes: Limit,
    pub max_depth: Limit,
    pub max_ext_header_bytes: Limit,
    pub max_json_bytes: Limit,
    /// Images one source may serve (a registry's whole catalog above all:
    /// each image is resolved at every poll). Optional in a policy file,
    /// for the files written before it.
    #[serde(default = "default_max_images")]
    pub max_images: Limit,
    /// Files of one layer whose bytes one inspect step may read (each a
    /// fresh instance). Optional in a policy file, for the files written
    /// before it.
    #[serde(default = "default_max_contents_files")]
    pub max_contents_files: Limit,
    pub max_id: Limit,
    pub device_nodes: ActionRule,
    pub fifos: ActionRule,
    pub setid: ActionRule,
    pub xattrs: Xattrs,
    pub absolute_symlinks: ActionRule,
    pub duplicates: ActionRule,
    pub mtime: TimeRange,
}

/// `max-images` where a policy file does not say it (the default
/// policy's; a unit test keeps the two the same).
fn default_max_images() -> Limit {
    Limit {
        limit: 10_000,
        reason: "images one source serves: a registry's every image is resolved at each poll"
            .into(),
    }
}

/// `max-contents-files` where a policy file does not say it (the default
/// policy's; a unit test keeps the two the same).
fn default_max_contents_files() -> Limit {
    Limit {
        limit: 1_000_000,
        reason: "files of one layer an inspect step reads, each judged by a fresh instance of it"
            .into(),
    }
}

/// Reasons of the rules that are not configurable (they always reject).
const FIXED_RULES: [(&str, &str); 10] = [
    ("paths", "entry paths must stay inside the root: `..` and Windows absolute or climbing forms (drive letters, leading or `..` backslash parts) are refused, absolute paths are confined"),
    ("whiteouts", "whiteouts must be empty regular files named `.wh.NAME` in a real directory (OCI image spec)"),
    ("malformed", "a tar stream that parsers could read differently is refused"),
    ("sparse", "GNU sparse files let the name and the content differ between parsers"),
    ("entry-types", "only the tar entry types a root filesystem needs are applied"),
    ("trailer", "data hidden after the end of the archive could be read by other tools"),
    ("hardlinks", "hardlinks must name a file inside the root that is not a directory"),
    ("digests", "every blob is verified against the digest that names it"),
    ("media-types", "a layer's bytes must be what its media type declares"),
    ("pax-global", "PAX global headers carry nothing tarpool applies"),
];

impl Policy {
    /// Parses and checks a policy.
    pub fn from_toml(text: &str) -> Result<Policy, String> {
        let p: Policy = toml::from_str(text).map_err(|e| format!("policy: {}", e.message()))?;
        p.validate()?;
        Ok(p)
    }

    /// A policy by built-in name (`default`, `strict`).
    pub fn builtin(name: &str) -> Option<&'static str> {
        match name {
            "default" => Some(DEFAULT_POLICY),
            "strict" => Some(STRICT_POLICY),
            _ => None,
        }
    }

    pub fn default_policy() -> Policy {
        Policy::from_toml(DEFAULT_POLICY).expect("the compiled-in default policy parses")
    }

    fn validate(&self) -> Result<(), String> {
        let bad = |rule: &str, m: &str| Err(format!("policy: rule `{rule}`: {m}"));
        for (rule, l) in [
            ("max-layers", &self.max_layers),
            ("max-layer-repeats", &self.max_layer_repeats),
            ("max-compression-ratio", &self.max_compression_ratio),
            ("max-path-bytes", &self.max_path_bytes),
            ("max-name-bytes", &self.max_name_bytes),
            ("max-depth", &self.max_depth),
            ("max-json-bytes", &self.max_json_bytes),
            ("max-images", &self.max_images),
            ("max-contents-files", &self.max_contents_files),
        ] {
            if l.limit == 0 {
                return bad(rule, "limit must be at least 1");
            }
        }
        for (rule, l) in [
            ("max-path-bytes", &self.max_path_bytes),
            ("max-name-bytes", &self.max_name_bytes),
            ("max-depth", &self.max_depth),
            ("max-ext-header-bytes", &self.max_ext_header_bytes),
            ("max-json-bytes", &self.max_json_bytes),
            ("max-id", &self.max_id),
        ] {
            if l.limit > u64::from(u32::MAX) {
                return bad(rule, "limit does not fit in 32 bits");
            }
        }
        if self.max_id.limit >= u64::from(u32::MAX) {
            return bad("max-id", "4294967295 is (uid_t)-1, which chown(2) ignores");
        }
        if self.max_json_bytes.limit > 64 << 20 {
            return bad("max-json-bytes", "above 64 MiB");
        }
        let allowed = |rule: &str, a: Action, ok: &[Action]| {
            if ok.contains(&a) {
                Ok(())
            } else {
                bad(rule, &format!("action must be one of {ok:?}"))
            }
        };
        use Action::*;
        allowed(
            "device-nodes",
            self.device_nodes.action,
            &[Allow, Skip, Reject],
        )?;
        allowed("fifos", self.fifos.action, &[Allow, Skip, Reject])?;
        allowed("setid", self.setid.action, &[Allow, Strip, Reject])?;
        allowed("xattrs", self.xattrs.others, &[Strip, Reject])?;
        allowed(
            "absolute-symlinks",
            self.absolute_symlinks.action,
            &[Allow, Reject],
        )?;
        allowed("duplicates", self.duplicates.action, &[Allow, Reject])?;
        for x in &self.xattrs.allow {
            if x.is_empty() || x.starts_with("trusted.") || x == "trusted" || x.contains("overlay")
            {
                return bad(
                    "xattrs",
                    &format!("`{x}` may not be allowed: overlayfs and the host use it"),
                );
            }
        }
        if self.mtime.min > self.mtime.max {
            return bad("mtime", "min is after max");
        }
        if self.formats.allow.is_empty() {
            return bad("formats", "no format allowed");
        }
        Ok(())
    }

    /// The reason recorded with decisions under `rule`.
    pub fn reason(&self, rule: &str) -> &str {
        let r = match rule {
            "formats" => &self.formats.reason,
            "max-layers" => &self.max_layers.reason,
            "max-layer-repeats" => &self.max_layer_repeats.reason,
            "max-object-bytes" => &self.max_object_bytes.reason,
            "max-image-bytes" => &self.max_image_bytes.reason,
            "max-layer-bytes" | "max-bytes" => &self.max_layer_bytes.reason,
            "max-compression-ratio" => &self.max_compression_ratio.reason,
            "max-layer-entries" | "max-entries" => &self.max_layer_entries.reason,
            "max-path-bytes" => &self.max_path_bytes.reason,
            "max-name-bytes" => &self.max_name_bytes.reason,
            "max-depth" => &self.max_depth.reason,
            "max-ext-header-bytes" => &self.max_ext_header_bytes.reason,
            "max-json-bytes" => &self.max_json_bytes.reason,
            "max-images" => &self.max_images.reason,
            "max-contents-files" => &self.max_contents_files.reason,
            "max-id" => &self.max_id.reason,
            "device-nodes" => &self.device_nodes.reason,
            "fifos" => &self.fifos.reason,
            "setid" => &self.setid.reason,
            "xattrs" => &self.xattrs.reason,
            "absolute-symlinks" => &self.absolute_symlinks.reason,
            "duplicates" => &self.duplicates.reason,
            "mtime" => &self.mtime.reason,
            other => {
                return FIXED_RULES
                    .iter()
                    .find(|(n, _)| *n == other)
                    .map_or("", |(_, r)| r)
            }
        };
        r
    }
}

/// The sha256 (hex) of a policy's text, recorded with each run.
pub fn policy_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// One policy decision, as recorded in the audit log.
/// The policy verdicts a transition produced, recorded by the engine.
pub type Verdicts = Vec<Verdict>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub rule: String,
    /// `allow`, `reject`, `skip`, `strip`, `clamp` or `note`.
    pub action: String,
    /// Layer number (1 = bottom) for per-entry decisions.
    pub layer: Option<u32>,
    /// Display form of the entry path for per-entry decisions.
    pub path: Option<String>,
    pub detail: String,
}

impl Verdict {
    fn new(rule: &str, allow: bool, detail: String) -> Verdict {
        Verdict {
            rule: rule.to_string(),
            action: if allow { "allow" } else { "reject" }.into(),
            layer: None,
            path: None,
            detail,
        }
    }

    pub fn allowed(&self) -> bool {
        self.action != "reject"
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
            "max-object-bytes",
            &format!("object `{key}`"),
            size,
            self.max_object_bytes.limit,
        )
    }

    pub fn check_image_size(&self, total: u64) -> Verdict {
        size_rule(
            "max-image-bytes",
            "image",
            total,
            self.max_image_bytes.limit,
        )
    }

    pub fn check_format(&self, format: &str) -> Verdict {
        if self.formats.allow.iter().any(|f| f == format) {
            Verdict::new("formats", true, format!("format {format} is allowed"))
        } else {
            Verdict::new(
                "formats",
                false,
                format!("format {format} is not allowed by the policy"),
            )
        }
    }

    pub fn check_layers(&self, n: usize) -> Verdict {
        let max = self.max_layers.limit;
        if n == 0 {
            Verdict::new("max-layers", false, "image has no layers".into())
        } else if n as u64 <= max {
            Verdict::new("max-layers", true, format!("{n} layers <= {max}"))
        } else {
            Verdict::new(
                "max-layers",
                false,
                format!("image has {n} layers, over the limit of {max}"),
            )
        }
    }

    /// `repeats`: the most times one layer (by digest or member) is listed.
    pub fn check_layer_repeats(&self, repeats: usize) -> Verdict {
        let max = self.max_layer_repeats.limit;
        Verdict::new(
            "max-layer-repeats",
            repeats as u64 <= max,
            if repeats as u64 <= max {
                format!("no layer listed more than {repeats} times")
            } else {
                format!("a layer is listed {repeats} times, over the limit of {max}")
            },
        )
    }

    /// Keeps a source's first `max-images` images (in the order it listed
    /// them); the others are one rejection, naming the first left out.
    pub fn bound_images(&self, d: &mut crate::names::Discovery) {
        let max = usize::try_from(self.max_images.limit).unwrap_or(usize::MAX);
        d.bound(max, &self.max_images.reason);
    }

    /// Bound on a layer's decompressed size given its compressed size.
    pub fn decompressed_cap(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.max_compression_ratio.limit)
            .saturating_add(1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policies_parse_and_differ() {
        let d = Policy::default_policy();
        assert_eq!(d.name, "default");
        assert_eq!(d.device_nodes.action, Action::Skip);
        let s = Policy::from_toml(STRICT_POLICY).unwrap();
        assert_eq!(s.name, "strict");
        assert_eq!(s.device_nodes.action, Action::Reject);
        assert_eq!(s.duplicates.action, Action::Reject);
        assert_ne!(policy_hash(DEFAULT_POLICY), policy_hash(STRICT_POLICY));
        // Every rule has a reason.
        for p in [&d, &s] {
            for rule in [
                "formats",
                "max-layers",
                "max-layer-repeats",
                "max-object-bytes",
                "max-image-bytes",
                "max-layer-bytes",
                "max-compression-ratio",
                "max-layer-entries",
                "max-path-bytes",
                "max-name-bytes",
                "max-depth",
                "max-ext-header-bytes",
                "max-json-bytes",
                "max-id",
                "device-nodes",
                "fifos",
                "setid",
                "xattrs",
                "absolute-symlinks",
                "duplicates",
                "mtime",
                "paths",
                "whiteouts",
                "malformed",
                "sparse",
                "entry-types",
                "trailer",
                "hardlinks",
                "digests",
                "media-types",
                "pax-global",
            ] {
                assert!(
                    !p.reason(rule).is_empty(),
                    "{} lacks a reason for {rule}",
                    p.name
                );
            }
        }
    }

    fn check(v: Verdict, allow: bool, detail: &str) {
        assert_eq!(v.allowed(), allow, "{v:?}");
        assert!(v.detail.contains(detail), "{:?} lacks {detail}", v.detail);
    }

    #[test]
    fn verdicts() {
        let mut p = Policy::default_policy();
        p.max_layers.limit = 3;
        p.max_object_bytes.limit = 10;
        p.max_layer_repeats.limit = 2;
        p.formats.allow = vec!["ad-hoc".into()];
        check(p.check_layers(3), true, "3 layers");
        check(p.check_layers(4), false, "over the limit of 3");
        check(p.check_layers(0), false, "no layers");
        check(p.check_object("images/a/1.tar", 10), true, "10 bytes");
        check(
            p.check_object("images/a/1.tar", 11),
            false,
            "over the limit of 10",
        );
        check(p.check_format("ad-hoc"), true, "ad-hoc is allowed");
        check(
            p.check_format("docker-archive"),
            false,
            "docker-archive is not allowed",
        );
        check(p.check_layer_repeats(2), true, "2 times");
        check(p.check_layer_repeats(3), false, "listed 3 times");
        assert_eq!(p.decompressed_cap(10), 10 * 1000 + (1 << 20));
        assert_eq!(p.decompressed_cap(u64::MAX), u64::MAX);
    }

    /// A policy file written before `max-images` or `max-contents-files`
    /// gets the default policy's.
    #[test]
    fn later_rules_default_to_the_default_policys() {
        let d = Policy::default_policy();
        assert_eq!(d.max_images, default_max_images());
        assert_eq!(d.max_contents_files, default_max_contents_files());
        let without = |rule: &str| {
            let start = DEFAULT_POLICY.find(&format!("[{rule}]")).unwrap();
            let end = start + DEFAULT_POLICY[start..].find("\n\n").unwrap();
            let older = format!("{}{}", &DEFAULT_POLICY[..start], &DEFAULT_POLICY[end + 2..]);
            assert!(!older.contains(rule));
            Policy::from_toml(&older).unwrap()
        };
        assert_eq!(without("max-images").max_images, d.max_images);
        assert_eq!(
            without("max-contents-files").max_contents_files,
            d.max_contents_files
        );
    }

    #[test]
    fn bad_policies_are_reported() {
        let swap = |from: &str, to: &str| DEFAULT_POLICY.replacen(from, to, 1);
        for (text, frag) in [
            (
                swap("limit = 125", "limit = 0"),
                "`max-layers`: limit must be at least 1",
            ),
            (
                format!("{DEFAULT_POLICY}\n[bogus]\nlimit = 1\n"),
                "unknown field",
            ),
            (
                swap("others = \"strip\"", "others = \"allow\""),
                "`xattrs`: action must be one of",
            ),
            (
                swap("action = \"skip\"", "action = \"strip\""),
                "`device-nodes`",
            ),
            (
                swap("allow = [\"user.\", ", "allow = [\"trusted.\", "),
                "may not be allowed",
            ),
            (swap("limit = 4294967294", "limit = 4294967295"), "`max-id`"),
            (swap("min = 0", "min = 253402300800"), "min is after max"),
            (swap("reason = \"FIFOs", "why = \"FIFOs"), "unknown field"),
            (
                swap("limit = 10000\n", "limit = 0\n"),
                "`max-images`: limit must be at least 1",
            ),
        ] {
            let e = Policy::from_toml(&text).unwrap_err();
            assert!(e.contains(frag), "{e} lacks {frag}");
        }
    }
}
