//! In-layer path handling: normalisation (confinement), splitting, and
//! sanitised display for error messages.

/// Longest single path component accepted (Linux `NAME_MAX`).
pub(super) const MAX_NAME_LEN: usize = 255;
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

/// Checks that a path the tar check returned is normalized as its contract
/// says (relative, single `/` separators, no empty, `.` or `..` components,
/// no NUL): the host relies on it (defence in depth: the writes are
/// confined to the root by `RESOLVE_IN_ROOT` regardless).
pub(super) fn check_normalized(p: &[u8]) -> Result<(), &'static str> {
    if p.is_empty() {
        return Ok(());
    }
    if p.contains(&0) {
        return Err("contains a NUL byte");
    }
    for comp in p.split(|b| *b == b'/') {
        match comp {
            b"" => return Err("has an empty component"),
            b"." | b".." => return Err("has a `.` or `..` component"),
            c if c.len() > MAX_NAME_LEN => return Err("has a component over 255 bytes"),
            _ => {}
        }
    }
    Ok(())
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
    fn normalized_paths_are_checked() {
        for ok in [&b""[..], b"a", b"a/b", b"..gitme", b"a\\..\\b", b"\xff\xfe"] {
            assert_eq!(check_normalized(ok), Ok(()), "{}", show(ok));
        }
        for bad in [
            &b"/a"[..],
            b"a/",
            b"a//b",
            b".",
            b"..",
            b"a/../b",
            b"./a",
            b"a\0b",
        ] {
            assert!(check_normalized(bad).is_err(), "{}", show(bad));
        }
        assert!(check_normalized(&[b'a'; 256]).is_err());
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
