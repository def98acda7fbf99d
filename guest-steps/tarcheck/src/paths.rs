//! In-stream path handling: normalisation (confinement to the root),
//! Windows-style forms, splitting, and sanitised display.

use guest_text::quote;

/// Characters of a path kept in a `path` field of a decision or rejection.
const SHOW_MAX: usize = 200;
/// Characters of a path quoted inside a message.
const QUOTE_MAX: usize = 80;

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// A `..` component.
    DotDot,
    /// A component longer than the name limit.
    NameTooLong,
    /// More components than the depth limit.
    TooDeep,
}

/// Confines a path: drops leading `/`, empty and `.` components, refuses
/// `..`, over-long components and over-deep paths. The result is components
/// joined by single `/`; empty means the root.
pub(crate) fn normalize(raw: &[u8], max_name: u32, max_depth: u32) -> Result<Vec<u8>, PathError> {
    let max_name = usize::try_from(max_name).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(raw.len());
    let mut depth = 0u32;
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(PathError::DotDot),
            _ => {}
        }
        if comp.len() > max_name {
            return Err(PathError::NameTooLong);
        }
        depth = depth.saturating_add(1);
        if depth > max_depth {
            return Err(PathError::TooDeep);
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(comp);
    }
    Ok(out)
}

/// Names that Windows-minded tools read as absolute or climbing (catalogue
/// A7): a drive prefix `C:`, a leading backslash, or a `..` between
/// backslashes. A backslash elsewhere is an ordinary byte on Linux (systemd
/// unit names such as `system-systemd\x2dcryptsetup.slice` carry one).
pub(crate) fn windows_form(raw: &[u8]) -> Option<&'static str> {
    if raw.len() >= 2 && raw[0].is_ascii_alphabetic() && raw[1] == b':' {
        return Some("drive-letter path");
    }
    if !raw.contains(&b'\\') {
        return None;
    }
    if raw.first() == Some(&b'\\') {
        return Some("path starts with a backslash");
    }
    if raw.split(|b| *b == b'/' || *b == b'\\').any(|c| c == b"..") {
        return Some("path contains a `..` component between backslashes");
    }
    None
}

/// Splits a normalised path into (parent, final component). The parent of a
/// top-level name is empty (the root).
pub(crate) fn split_last(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], p.get(i + 1..).unwrap_or_default()),
        None => (&[], p),
    }
}

/// Joins a normalised directory path and a single component.
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
    v.extend_from_slice(dir);
    if !dir.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Display form of raw path bytes for a `path` field: lossy UTF-8,
/// sanitised like [`guest_text::quote`], bounded, without the backticks.
pub(crate) fn show(raw: &[u8]) -> String {
    let q = quote(&String::from_utf8_lossy(raw), SHOW_MAX);
    strip_ticks(&q)
}

/// Raw path bytes quoted for a message.
pub(crate) fn quoted(raw: &[u8]) -> String {
    quote(&String::from_utf8_lossy(raw), QUOTE_MAX)
}

fn strip_ticks(q: &str) -> String {
    let inner = q.strip_prefix('`').unwrap_or(q);
    inner.strip_suffix('`').unwrap_or(inner).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"a/b", b"a/b"),
            (b"/a//b/", b"a/b"),
            (b"./a/./b", b"a/b"),
            (b"///./tmp/x", b"tmp/x"),
            (b"/", b""),
            (b".", b""),
            (b"", b""),
            (b"/////////", b""),
            (b"..gitme", b"..gitme"),
            (b"\xff\xfe", b"\xff\xfe"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize(raw, 255, 256).as_deref(), Ok(*want));
        }
        for raw in [
            &b".."[..],
            b"../x",
            b"some/../../x",
            b"./../x",
            b"/////////..",
            b"././//./..",
            b"/../victim/x",
            b"a/..",
        ] {
            assert_eq!(normalize(raw, 255, 256), Err(PathError::DotDot));
        }
        assert_eq!(
            normalize(&[b'a'; 256], 255, 256),
            Err(PathError::NameTooLong)
        );
        assert_eq!(
            normalize(&b"a/".repeat(257), 255, 256),
            Err(PathError::TooDeep)
        );
        assert!(normalize(&b"a/".repeat(256), 255, 256).is_ok());
    }

    #[test]
    fn windows_forms() {
        for bad in [
            &b"\\tmp\\evil"[..],
            b"C:/tmp/evil",
            b"C:..\\evil",
            b"..\\..\\tmp\\evil",
            b"a\\..\\b",
        ] {
            assert!(windows_form(bad).is_some(), "{}", show(bad));
        }
        for good in [
            &b"lib/systemd/system/system-systemd\\x2dcryptsetup.slice"[..],
            b"a/b",
            b"..gitme",
        ] {
            assert!(windows_form(good).is_none(), "{}", show(good));
        }
    }

    #[test]
    fn display() {
        assert_eq!(show(b"a\nb`c"), "a?b'c");
        assert_eq!(quoted(b"x\xff"), "`x\u{fffd}`");
        assert!(show(&[b'a'; 500]).chars().count() <= SHOW_MAX + 3);
    }
}
