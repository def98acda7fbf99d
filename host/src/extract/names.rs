//! In-layer path handling: normalisation (confinement), splitting, and
//! sanitised display for error messages.

/// Longest single path component accepted (Linux `NAME_MAX`).
pub(super) const MAX_NAME_LEN: usize = 255;
/// Deepest entry path accepted, in components (catalogue E44).
pub(super) const MAX_DEPTH: usize = 256;
/// Characters of an in-layer path shown in messages before truncation.
const SHOW_MAX: usize = 200;

/// Renders in-layer bytes for a one-line message: control characters,
/// line/paragraph separators, bidi overrides and invalid UTF-8 are escaped,
/// and the result is truncated to about 200 characters.
pub(super) fn show(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len().min(SHOW_MAX + 8));
    let mut count = 0usize;
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if count >= SHOW_MAX {
                out.push('…');
                return out;
            }
            if c.is_control() || is_invisible(c) {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
            count += 1;
        }
        for b in chunk.invalid() {
            if count >= SHOW_MAX {
                out.push('…');
                return out;
            }
            out.push_str(&format!("\\x{b:02x}"));
            count += 1;
        }
    }
    out
}

/// Format/separator characters that could hide or reorder text in a log line.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}')
}

/// Confines an in-layer path: drops leading `/`, empty and `.` components,
/// rejects `..`, NUL, over-long components and over-deep paths. The result
/// is components joined by single `/`; empty means the layer root.
pub(super) fn normalize(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte");
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut depth = 0usize;
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("path contains a `..` component"),
            _ => {}
        }
        if comp.len() > MAX_NAME_LEN {
            return Err("path component is longer than 255 bytes");
        }
        depth += 1;
        if depth > MAX_DEPTH {
            return Err("path is nested more than 256 levels deep");
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(comp);
    }
    Ok(out)
}

/// Splits a normalised path into (parent, final component). The parent of a
/// top-level name is empty (the root).
pub(super) fn split_last(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[], p),
    }
}

/// Joins a normalised directory path and a single component.
pub(super) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
    v.extend_from_slice(dir);
    if !dir.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
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
            (b"a\\..\\b", b"a\\..\\b"),
            (b"C:..\\evil", b"C:..\\evil"),
            (b"\xff\xfe", b"\xff\xfe"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize(raw).as_deref(), Ok(*want), "{}", show(raw));
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
            b"a\0b",
        ] {
            assert!(normalize(raw).is_err(), "{}", show(raw));
        }
        assert!(normalize(&[b'a'; 256]).is_err());
        assert!(normalize(&b"a/".repeat(257)).is_err());
        assert!(normalize(&b"a/".repeat(256)).is_ok());
    }

    #[test]
    fn show_escapes() {
        assert_eq!(show(b"a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(show(b"\xffok"), "\\xffok");
        assert_eq!(show("x\u{202e}y".as_bytes()), "x\\u{202e}y");
        let long = show(&[b'a'; 500]);
        assert_eq!(long.chars().count(), 201);
    }
}
