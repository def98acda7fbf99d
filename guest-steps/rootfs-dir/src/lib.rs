//! Manifest component `rootfs-dir`: LXC-style images, a second
//! implementation of the `manifest-step` world of `wit/tarpool.wit` next to
//! the built-in `manifest` component, to show that image formats are
//! extensible. The host asks its configured manifest components in turn;
//! this one answers `none` for anything that is not its format.
//!
//! The format, `lxc-rootfs`: an image prefix `images/NAME/` holding exactly
//! `metadata.yaml` and one root filesystem tar, `rootfs.tar`,
//! `rootfs.tar.gz` or `rootfs.tar.zst` (as `lxc-create -t local` and
//! distrobuilder's split images use, without the squashfs variant). The
//! image is that one layer. LXC images boot a full init system, so the
//! runtime config is `/sbin/init` with a standard `PATH`, in `/`, as root.
//!
//! `metadata.yaml` is read through the `source` import and a small subset
//! of YAML is parsed by hand (see [`parse_metadata`]): the top-level
//! `architecture` (required; it must be the options' architecture, with
//! LXC's names mapped to Go's: `x86_64` is `amd64`, `aarch64` is `arm64`),
//! `creation_date` (an integer) and `properties` (`description`, `os`,
//! `release`); other keys and their blocks are skipped.
//!
//! The logic is a plain function ([`parse`]) so it can be unit-tested
//! natively; on `wasm32` the crate exports the world. This code reads
//! untrusted bytes: it never panics on any input, and every error is one
//! bounded line without control characters that blames the input.

use guest_text::one_line;

pub use manifest_types::{
    ImageLayout, LayerMedia, LayerRef, ManifestOptions, Member, Read, RuntimeConfig, UnitKind,
};

/// What `metadata.yaml` says (the subset read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// As written (`x86_64`, `aarch64`, ...).
    pub architecture: String,
    pub creation_date: Option<i64>,
    pub description: Option<String>,
    pub os: Option<String>,
    pub release: Option<String>,
}

/// The format's name, for `image-layout.format` and the policy's `formats`.
pub const FORMAT: &str = "lxc-rootfs";

/// The metadata member; a unit without it is not this format.
pub const METADATA: &str = "metadata.yaml";

/// Largest `metadata.yaml` read, in bytes.
pub const MAX_METADATA_BYTES: u64 = 64 * 1024;

/// The root filesystem members and how each is encoded (the host checks
/// the magic bytes against it).
const ROOTFS: [(&str, LayerMedia); 3] = [
    ("rootfs.tar", LayerMedia::Tar),
    ("rootfs.tar.gz", LayerMedia::Gzip),
    ("rootfs.tar.zst", LayerMedia::Zstd),
];

/// `PATH` of the runtime config (the one LXC sets for init).
pub const INIT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest name quoted in an error, in characters.
const MAX_NAME_CHARS: usize = 80;

/// Works out the image's layer. `Ok(None)`: not an `lxc-rootfs` image (an
/// archive unit, or a prefix without `metadata.yaml`). An `Err` blames the
/// input; it is one line of at most about 200 characters with no control
/// characters.
pub fn parse(
    unit: UnitKind,
    members: &[Member],
    options: &ManifestOptions,
    read: &mut Read<'_>,
) -> Result<Option<ImageLayout>, String> {
    parse_inner(unit, members, options, read).map_err(|e| one_line(&e))
}

fn parse_inner(
    unit: UnitKind,
    members: &[Member],
    opts: &ManifestOptions,
    read: &mut Read<'_>,
) -> Result<Option<ImageLayout>, String> {
    if unit != UnitKind::Prefix || !members.iter().any(|m| m.name == METADATA) {
        return Ok(None);
    }
    let mut metadata: Option<&Member> = None;
    let mut rootfs: Option<(&Member, LayerMedia)> = None;
    for m in members {
        if m.name == METADATA {
            if metadata.replace(m).is_some() {
                return Err(format!("{METADATA} is listed twice"));
            }
        } else if let Some(&(_, media)) = ROOTFS.iter().find(|(name, _)| *name == m.name) {
            if let Some((other, _)) = rootfs.replace((m, media)) {
                return Err(if other.name == m.name {
                    format!("{} is listed twice", quote_name(&m.name))
                } else {
                    format!(
                        "two root filesystems, {} and {}: an {FORMAT} image has one",
                        quote_name(&other.name),
                        quote_name(&m.name)
                    )
                });
            }
        } else if m.name.starts_with("rootfs") {
            return Err(format!(
                "member {} is not a supported root filesystem (rootfs.tar, rootfs.tar.gz or rootfs.tar.zst)",
                quote_name(&m.name)
            ));
        } else {
            return Err(format!(
                "member {} is not part of an {FORMAT} image (only {METADATA} and one rootfs.tar[.gz|.zst])",
                quote_name(&m.name)
            ));
        }
    }
    let (Some(metadata), Some((rootfs, media))) = (metadata, rootfs) else {
        return Err(format!(
            "{METADATA} but no root filesystem (rootfs.tar, rootfs.tar.gz or rootfs.tar.zst)"
        ));
    };

    if metadata.size > MAX_METADATA_BYTES {
        return Err(format!(
            "{METADATA} is {} bytes (at most {MAX_METADATA_BYTES})",
            metadata.size
        ));
    }
    let bytes = read(METADATA).map_err(|e| format!("{METADATA}: cannot read: {e}"))?;
    if u64::try_from(bytes.len()) != Ok(metadata.size) {
        return Err(format!(
            "{METADATA}: read {} bytes but the member is listed as {} bytes",
            bytes.len(),
            metadata.size
        ));
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| format!("{METADATA}: not UTF-8: {e}"))?;
    let meta = parse_metadata(text).map_err(|e| format!("{METADATA}: {e}"))?;
    if opts.os != "linux" {
        return Err(format!(
            "{METADATA}: image is for linux, not {}",
            quote_name(&opts.os)
        ));
    }
    if go_arch(&meta.architecture) != opts.architecture {
        return Err(format!(
            "{METADATA}: image is for {}, not {}",
            quote_name(&meta.architecture),
            quote_name(&opts.architecture)
        ));
    }

    Ok(Some(ImageLayout {
        format: FORMAT.into(),
        layers: vec![LayerRef {
            member: rootfs.name.clone(),
            media,
            digest: None,
            diff_id: None,
            size: None,
        }],
        config_digest: None,
        // LXC images boot their init system as the container's process.
        config: Some(RuntimeConfig {
            env: vec![INIT_PATH.into()],
            entrypoint: vec![],
            cmd: vec!["/sbin/init".into()],
            working_dir: "/".into(),
            user: String::new(),
        }),
    }))
}

/// An LXC architecture name as Go (and OCI, and the options) name it;
/// names without a mapping are kept.
fn go_arch(lxc: &str) -> &str {
    match lxc {
        "x86_64" | "amd64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i686" | "i386" => "386",
        "armv7l" | "armhf" => "arm",
        other => other,
    }
}

// ------------------------------------------------------------------- YAML

/// The top-level block a line belongs to.
enum Block {
    /// After a known scalar key: no indented line may follow.
    Scalar,
    /// `properties:`; `indent` of its entries once seen; `skip`: the last
    /// entry was an unknown key, whose nested lines are skipped.
    Properties { indent: Option<usize>, skip: bool },
    /// An unknown key: its nested lines are skipped.
    Unknown,
}

/// Parses the subset of LXC's `metadata.yaml` that tarpool reads: a block
/// mapping of `key: value` lines, indented with spaces, with `#` comments,
/// plain, single- or double-quoted scalars. `architecture` (required) and
/// the `description`, `os` and `release` entries of `properties` are
/// strings; `creation_date` is an integer. Unknown keys are skipped with
/// the lines indented below them. Anything else (tabs, flow collections,
/// anchors, block scalars or nested values for known keys, duplicate keys,
/// control characters) is rejected.
pub fn parse_metadata(text: &str) -> Result<Metadata, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut meta = Metadata::default();
    let mut architecture: Option<String> = None;
    let mut top_keys: Vec<&str> = Vec::new();
    let mut prop_keys: Vec<&str> = Vec::new();
    let mut block = Block::Scalar;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("line {n}: control character"));
        }
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if body.trim().is_empty() {
            continue;
        }
        if body.starts_with('\t') {
            return Err(format!("line {n}: tab in indentation"));
        }
        let content = body.trim_end();
        if content.is_empty() || content.starts_with('#') || (n == 1 && content == "---") {
            continue;
        }
        if indent == 0 {
            let (key, value) = split_key(content, n)?;
            if top_keys.contains(&key) {
                return Err(format!("line {n}: duplicate key {}", quote_name(key)));
            }
            top_keys.push(key);
            block = Block::Scalar;
            match key {
                "architecture" => architecture = Some(string(value, n, key)?),
                "creation_date" => meta.creation_date = Some(integer(value, n, key)?),
                "properties" => {
                    if !strip_comment(value).is_empty() {
                        return Err(format!("line {n}: `properties` must be a block mapping"));
                    }
                    block = Block::Properties {
                        indent: None,
                        skip: false,
                    };
                }
                _ => block = Block::Unknown,
            }
            continue;
        }
        match &mut block {
            Block::Scalar => return Err(format!("line {n}: unexpected indentation")),
            Block::Unknown => {}
            Block::Properties { indent: at, skip } => {
                let at = *at.get_or_insert(indent);
                if indent > at && *skip {
                    continue;
                }
                if indent != at {
                    return Err(format!("line {n}: unexpected indentation"));
                }
                let (key, value) = split_key(content, n)?;
                if prop_keys.contains(&key) {
                    return Err(format!(
                        "line {n}: duplicate key {} in `properties`",
                        quote_name(key)
                    ));
                }
                prop_keys.push(key);
                *skip = false;
                let slot = match key {
                    "description" => &mut meta.description,
                    "os" => &mut meta.os,
                    "release" => &mut meta.release,
                    _ => {
                        *skip = true;
                        continue;
                    }
                };
                *slot = Some(string(value, n, key)?);
            }
        }
    }
    meta.architecture = architecture.ok_or("no `architecture`")?;
    if meta.architecture.is_empty() {
        return Err("`architecture` is empty".into());
    }
    Ok(meta)
}

/// Splits `key: value` (or `key:`); keys are plain words.
fn split_key(content: &str, n: usize) -> Result<(&str, &str), String> {
    let malformed = || format!("line {n}: not a `key: value` line");
    let (key, rest) = content.split_once(':').ok_or_else(malformed)?;
    let word = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    if key.is_empty() || !key.bytes().all(word) || !(rest.is_empty() || rest.starts_with(' ')) {
        return Err(malformed());
    }
    Ok((key, rest.trim()))
}

/// Cuts a ` #` comment off a plain value.
fn strip_comment(value: &str) -> &str {
    if value.starts_with('#') {
        return "";
    }
    match value.find(" #") {
        Some(i) => value[..i].trim_end(),
        None => value,
    }
}

/// A string scalar: plain, `'single'` (`''` is a quote) or `"double"`
/// quoted (escapes `\\ \" \/ \n \t \r` and `\uXXXX`), then an optional
/// comment.
fn string(value: &str, n: usize, key: &str) -> Result<String, String> {
    let bad = |why: &str| format!("line {n}: `{key}` {why}");
    let (text, rest) = if let Some(body) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            let Some((i, c)) = chars.next() else {
                return Err(bad("has an unterminated string"));
            };
            match c {
                '"' => break i + 1,
                '\\' => match chars.next().map(|(_, e)| e) {
                    Some('\\') => out.push('\\'),
                    Some('"') => out.push('"'),
                    Some('/') => out.push('/'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == 4)
                            .and_then(char::from_u32)
                            .ok_or_else(|| bad("has a bad \\u escape"))?;
                        out.push(c);
                    }
                    _ => return Err(bad("has an unsupported escape")),
                },
                c => out.push(c),
            }
        };
        (out, &body[end..])
    } else if let Some(body) = value.strip_prefix('\'') {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let Some(i) = rest.find('\'') else {
                return Err(bad("has an unterminated string"));
            };
            out.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            match rest.strip_prefix('\'') {
                Some(r) => {
                    out.push('\'');
                    rest = r;
                }
                None => break,
            }
        }
        (out, rest)
    } else {
        let plain = strip_comment(value);
        if plain.is_empty() {
            return Err(bad("has no value"));
        }
        let first = plain.as_bytes()[0];
        if b"[]{}&*!|>%@`,?".contains(&first)
            || plain.starts_with("- ")
            || plain == "-"
            || plain.contains(": ")
            || plain.ends_with(':')
        {
            return Err(bad(
                "is not a plain string (flow, anchor, block or nested value)",
            ));
        }
        (plain.to_string(), "")
    };
    let rest = rest.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(bad("has text after its closing quote"));
    }
    if text.chars().any(|c| c == '\0') {
        return Err(bad("contains NUL"));
    }
    Ok(text)
}

/// An integer scalar: plain decimal digits, optionally signed.
fn integer(value: &str, n: usize, key: &str) -> Result<i64, String> {
    let plain = strip_comment(value);
    let digits = plain.strip_prefix(['-', '+']).unwrap_or(plain);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "line {n}: `{key}` is not an integer: {}",
            quote_name(plain)
        ));
    }
    plain
        .parse::<i64>()
        .map_err(|_| format!("line {n}: `{key}` is out of range"))
}

// ------------------------------------------------------------- component

#[cfg(target_arch = "wasm32")]
// The generated export glue takes the flattened parameters.
#[allow(clippy::too_many_arguments)]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "manifest-step" });

    struct Step;

    manifest_types::guest_parse!(Step, super::parse);

    export!(Step);
}

/// Quotes a name for a message (see [`guest_text::quote`]).
fn quote_name(name: &str) -> String {
    guest_text::quote(name, MAX_NAME_CHARS)
}

#[cfg(test)]
mod tests;
