//! Turning a source listing into image units. Every key is attacker
//! controlled: keys are checked as strings and never become local paths here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::model::UnitKind;

pub const IMAGES_PREFIX: &str = "images/";
pub const MAX_KEY_LEN: usize = 1024;
pub const MAX_MEMBER_DEPTH: usize = 8;

/// One object as a source lists it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// ETag, or for a directory source the modification time: whatever tells
    /// that an object under the same key changed.
    pub stamp: String,
    /// Last-modified time as the source reports it (recorded, not compared).
    #[serde(default)]
    pub modified: String,
}

/// An object of a unit: its key and its name inside the unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitObject {
    pub key: String,
    /// Relative to the unit: `1.tar`, `blobs/sha256/...`; empty for an archive unit.
    pub member: String,
    pub size: u64,
    pub stamp: String,
    #[serde(default)]
    pub modified: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub name: String,
    pub kind: UnitKind,
    pub objects: Vec<UnitObject>,
}

impl Unit {
    /// Changes whenever any object of the unit changes.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        for o in &self.objects {
            h.update(o.key.as_bytes());
            h.update([0]);
            h.update(o.size.to_le_bytes());
            h.update(o.stamp.as_bytes());
            h.update([0]);
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The key, escaped so that it prints on one line.
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub units: Vec<Unit>,
    pub rejected: Vec<Rejected>,
}

impl Discovery {
    /// Keeps the first `max` units; the others (a source may have stopped
    /// listing after the first one too many) are one rejection under the
    /// policy rule `max-images`, keyed by the first left out.
    pub fn bound(&mut self, max: usize, reason: &str) {
        if self.units.len() <= max {
            return;
        }
        let key = printable(&unit_key(&self.units[max]));
        self.units.truncate(max);
        self.rejected.push(Rejected {
            key,
            reason: format!(
                "policy max-images: the source lists more than {max} images; this one and those after it are not served ({reason})"
            ),
        });
    }
}

/// An activation's name, the one rule for every command that takes one:
/// `[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}` (it names a lock file and a
/// directory, so it never starts with a dot).
pub fn valid_activation_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[A-Za-z0-9._-]{1,200}`, and not `.` or `..`.
pub fn valid_image_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Escapes control characters and caps the length, for messages.
pub fn printable(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() >= 200 {
            out.push('…');
            break;
        }
        if guest_text::unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn check_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY_LEN {
        return Err(format!("key longer than {MAX_KEY_LEN} bytes"));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err("key contains control characters".into());
    }
    if key.contains('\\') {
        return Err("key contains a backslash".into());
    }
    for seg in key.split('/') {
        match seg {
            "" => return Err("key has an empty path segment".into()),
            "." | ".." => return Err(format!("key has a `{seg}` segment")),
            _ => {}
        }
    }
    Ok(())
}

const ARCHIVE_SUFFIXES: [&str; 5] = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"];

/// Groups a listing into image units. Keys outside `images/` are ignored;
/// keys inside it that cannot be an image are reported in `rejected`.
pub fn discover(listing: &[Listed]) -> Discovery {
    let mut rejected = Vec::new();
    let mut prefixes: BTreeMap<String, Vec<UnitObject>> = BTreeMap::new();
    let mut archives: BTreeMap<String, UnitObject> = BTreeMap::new();
    let mut reject = |key: &str, reason: String| {
        rejected.push(Rejected {
            key: printable(key),
            reason,
        })
    };
    for l in listing {
        let Some(rest) = l.key.strip_prefix(IMAGES_PREFIX) else {
            continue;
        };
        if rest.is_empty()
            || rest.ends_with('/') && !rest[..rest.len() - 1].contains('/') && l.size == 0
        {
            // `images/` itself or a zero-byte "folder" marker object.
            continue;
        }
        if let Err(why) = check_key(&l.key) {
            reject(&l.key, why);
            continue;
        }
        match rest.split_once('/') {
            Some((name, member)) => {
                if !valid_image_name(name) {
                    reject(
                        &l.key,
                        "invalid image name (allowed: [A-Za-z0-9._-]{1,200})".into(),
                    );
                    continue;
                }
                if member.split('/').count() > MAX_MEMBER_DEPTH {
                    reject(
                        &l.key,
                        format!("more than {MAX_MEMBER_DEPTH} levels below the image"),
                    );
                    continue;
                }
                prefixes
                    .entry(name.to_string())
                    .or_default()
                    .push(UnitObject {
                        key: l.key.clone(),
                        member: member.to_string(),
                        size: l.size,
                        stamp: l.stamp.clone(),
                        modified: l.modified.clone(),
                    });
            }
            None => {
                let Some(name) = ARCHIVE_SUFFIXES.iter().find_map(|s| rest.strip_suffix(s)) else {
                    reject(
                        &l.key,
                        "not an image (expected images/NAME.tar[.gz|.zst] or images/NAME/)".into(),
                    );
                    continue;
                };
                if !valid_image_name(name) {
                    reject(
                        &l.key,
                        "invalid image name (allowed: [A-Za-z0-9._-]{1,200})".into(),
                    );
                    continue;
                }
                if let Some(prev) = archives.insert(
                    name.to_string(),
                    UnitObject {
                        key: l.key.clone(),
                        member: String::new(),
                        size: l.size,
                        stamp: l.stamp.clone(),
                        modified: l.modified.clone(),
                    },
                ) {
                    reject(
                        &prev.key,
                        format!("image `{name}` has more than one archive object"),
                    );
                    reject(
                        &l.key,
                        format!("image `{name}` has more than one archive object"),
                    );
                    archives.remove(name);
                }
            }
        }
    }
    let mut units = Vec::new();
    for (name, mut objects) in prefixes {
        if let Some(a) = archives.remove(&name) {
            reject(
                &a.key,
                format!("image `{name}` is both an archive object and a prefix"),
            );
            for o in &objects {
                reject(
                    &o.key,
                    format!("image `{name}` is both an archive object and a prefix"),
                );
            }
            continue;
        }
        objects.sort_by(|a, b| a.member.cmp(&b.member));
        units.push(Unit {
            name,
            kind: UnitKind::Prefix,
            objects,
        });
    }
    for (name, object) in archives {
        units.push(Unit {
            name,
            kind: UnitKind::Archive,
            objects: vec![object],
        });
    }
    units.sort_by(|a, b| a.name.cmp(&b.name));
    Discovery { units, rejected }
}

/// The discoveries of several sources, in the order they are configured:
/// an image name an earlier source already has is rejected in the later
/// ones (names are unique across sources; the first one keeps it, so a
/// collision added later does not take an image from where it was).
pub fn across_sources(found: Vec<(String, Discovery)>) -> Vec<(String, Discovery)> {
    let mut owner: std::collections::BTreeMap<String, String> = Default::default();
    found
        .into_iter()
        .map(|(uri, mut d)| {
            let units = std::mem::take(&mut d.units);
            for u in units {
                match owner.get(&u.name) {
                    Some(first) => d.rejected.push(Rejected {
                        key: printable(&unit_key(&u)),
                        reason: format!(
                            "image `{}` is also in {}, configured first: image names must be unique across sources",
                            u.name,
                            printable(first)
                        ),
                    }),
                    None => {
                        owner.insert(u.name.clone(), uri.clone());
                        d.units.push(u);
                    }
                }
            }
            (uri, d)
        })
        .collect()
}

/// The key a unit is listed under: its archive's key (a registry image's
/// reference), or its prefix.
fn unit_key(u: &Unit) -> String {
    match u.kind {
        UnitKind::Archive | UnitKind::Registry => {
            u.objects.first().map(|o| o.key.clone()).unwrap_or_default()
        }
        UnitKind::Prefix => format!("{IMAGES_PREFIX}{}/", u.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(keys: &[&str]) -> Vec<Listed> {
        keys.iter()
            .map(|k| Listed {
                key: k.to_string(),
                size: 1,
                stamp: "1".into(),
                ..Listed::default()
            })
            .collect()
    }

    /// `expected` is `NAME:kind:members` per unit and `key => reason-fragment` per rejection.
    fn check(keys: &[&str], units: &[&str], rejected: &[(&str, &str)]) {
        let d = discover(&listing(keys));
        let got: Vec<String> = d
            .units
            .iter()
            .map(|u| {
                let members: Vec<&str> = u.objects.iter().map(|o| o.member.as_str()).collect();
                format!("{}:{:?}:{}", u.name, u.kind, members.join(","))
            })
            .collect();
        assert_eq!(got, units, "units for {keys:?}");
        assert_eq!(
            d.rejected.len(),
            rejected.len(),
            "rejections for {keys:?}: {:?}",
            d.rejected
        );
        for (r, (key, frag)) in d.rejected.iter().zip(rejected) {
            assert_eq!(r.key, *key);
            assert!(
                r.reason.contains(frag),
                "{} does not contain {frag}",
                r.reason
            );
        }
    }

    #[test]
    fn units() {
        check(
            &[
                "images/golang/1.tar",
                "images/golang/2.tar",
                "images/node/10.tar",
                "images/node/9.tar",
            ],
            &["golang:Prefix:1.tar,2.tar", "node:Prefix:10.tar,9.tar"],
            &[],
        );
        check(
            &[
                "images/a.tar",
                "images/b.tar.gz",
                "images/c.tar.zst",
                "other/x.tar",
                "README",
            ],
            &["a:Archive:", "b:Archive:", "c:Archive:"],
            &[],
        );
        check(&["images/"], &[], &[]);
        check(
            &["images/lay/oci-layout", "images/lay/blobs/sha256/ab"],
            &["lay:Prefix:blobs/sha256/ab,oci-layout"],
            &[],
        );
    }

    #[test]
    fn hostile_keys() {
        check(
            &[
                "images/../etc/passwd",
                "images/a//1.tar",
                "images/./1.tar",
                "images/x\n/1.tar",
                "images/sp ace/1.tar",
                "images/ok/1.tar",
                "images/back\\slash.tar",
                "images/notes.txt",
                "images/..tar",
            ],
            &["ok:Prefix:1.tar"],
            &[
                ("images/../etc/passwd", "`..` segment"),
                ("images/a//1.tar", "empty path segment"),
                ("images/./1.tar", "`.` segment"),
                ("images/x\\n/1.tar", "control characters"),
                ("images/sp ace/1.tar", "invalid image name"),
                ("images/back\\slash.tar", "backslash"),
                ("images/notes.txt", "not an image"),
                ("images/..tar", "invalid image name"),
            ],
        );
        let long = format!("images/{}/1.tar", "a".repeat(201));
        check(&[&long], &[], &[(&printable(&long), "invalid image name")]);
        let deep = format!("images/a/{}1.tar", "d/".repeat(9));
        check(&[&deep], &[], &[(&deep, "levels below")]);
        let huge = format!("images/a/{}", "x".repeat(2000));
        let d = discover(&listing(&[&huge]));
        assert!(d.rejected[0].reason.contains("longer than"));
        assert!(d.rejected[0].key.len() < 300);
    }

    /// `max-images`: the first units listed are kept, the rest are one
    /// rejection keyed by the first left out.
    #[test]
    fn a_bound_keeps_the_first_images() {
        let keys = ["images/a.tar", "images/b/1.tar", "images/c.tar"];
        for (max, kept, first_out) in [
            (3, &["a", "b", "c"][..], None),
            (2, &["a", "b"][..], Some("images/c.tar")),
            (1, &["a"][..], Some("images/b/")),
        ] {
            let mut d = discover(&listing(&keys));
            d.bound(max, "why");
            let names: Vec<&str> = d.units.iter().map(|u| u.name.as_str()).collect();
            assert_eq!(names, kept);
            let r: Vec<(&str, &str)> = d
                .rejected
                .iter()
                .map(|r| (r.key.as_str(), r.reason.as_str()))
                .collect();
            let reason = format!("policy max-images: the source lists more than {max} images; this one and those after it are not served (why)");
            assert_eq!(
                r,
                first_out
                    .map(|k| (k, reason.as_str()))
                    .into_iter()
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn conflicts() {
        check(
            &["images/a.tar", "images/a/1.tar"],
            &[],
            &[("images/a.tar", "both"), ("images/a/1.tar", "both")],
        );
        check(
            &["images/a.tar", "images/a.tar.gz", "images/b.tar"],
            &["b:Archive:"],
            &[
                ("images/a.tar", "more than one"),
                ("images/a.tar.gz", "more than one"),
            ],
        );
    }

    #[test]
    fn names() {
        for (n, ok) in [
            ("golang", true),
            ("a.b-c_D9", true),
            (".", false),
            ("..", false),
            ("", false),
            ("a/b", false),
            ("ü", false),
            (&"x".repeat(200), true),
            (&"x".repeat(201), false),
        ] {
            assert_eq!(valid_image_name(n), ok, "{n}");
        }
    }

    #[test]
    fn activation_names() {
        for (n, ok) in [
            ("01JABC", true),
            ("web-1.v2_x", true),
            // A dot first: made once, then neither exec'd nor deactivated.
            (".x", false),
            (".", false),
            ("..", false),
            ("", false),
            ("a/b", false),
            (&"x".repeat(64), true),
            (&"x".repeat(65), false),
        ] {
            assert_eq!(valid_activation_name(n), ok, "{n}");
        }
    }

    #[test]
    fn printable_escapes_what_the_guests_escape() {
        for (raw, shown) in [
            ("images/a\u{202e}rat.tar", "images/a\\u{202e}rat.tar"),
            ("a\u{200b}b\u{2066}c", "a\\u{200b}b\\u{2066}c"),
            ("new\nline", "new\\nline"),
            ("plain ü", "plain ü"),
        ] {
            assert_eq!(printable(raw), shown, "{raw:?}");
        }
    }

    #[test]
    fn fingerprint_tracks_changes() {
        let mut d = discover(&listing(&["images/a/1.tar"]));
        let before = d.units[0].fingerprint();
        d.units[0].objects[0].stamp = "2".into();
        assert_ne!(before, d.units[0].fingerprint());
    }

    #[test]
    fn names_are_unique_across_sources_the_first_keeps_it() {
        let listed = |keys: &[&str]| {
            discover(
                &keys
                    .iter()
                    .map(|k| Listed {
                        key: k.to_string(),
                        size: 1,
                        stamp: "e".into(),
                        modified: String::new(),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let out = across_sources(vec![
            ("dir:/a".into(), listed(&["images/x.tar", "images/y.tar"])),
            (
                "s3://b".into(),
                listed(&["images/y/1.tar", "images/z.tar", "images/x.tar"]),
            ),
        ]);
        let names =
            |i: usize| -> Vec<&str> { out[i].1.units.iter().map(|u| u.name.as_str()).collect() };
        assert_eq!(names(0), ["x", "y"]);
        assert_eq!(names(1), ["z"]);
        let rejected: Vec<(&str, &str)> = out[1]
            .1
            .rejected
            .iter()
            .map(|r| (r.key.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                ("images/x.tar", "image `x` is also in dir:/a, configured first: image names must be unique across sources"),
                ("images/y/", "image `y` is also in dir:/a, configured first: image names must be unique across sources"),
            ]
        );
        assert!(out[0].1.rejected.is_empty());
    }
}
