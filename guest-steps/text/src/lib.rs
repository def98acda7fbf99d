//! Text the format steps put in messages: one bounded line, no control or
//! hiding characters. Shared by every guest step.

#![no_std]

extern crate alloc;

use alloc::string::String;

/// Longest message line, in characters.
pub const MAX_LINE_CHARS: usize = 200;

/// Quotes a name for a message: backticks inside become `'`, unsafe
/// characters `?`, and at most `max_chars` characters are kept.
pub fn quote(name: &str, max_chars: usize) -> String {
    let mut out = String::from("`");
    for (i, c) in name.chars().enumerate() {
        if i == max_chars {
            out.push_str("...");
            break;
        }
        match c {
            '`' => out.push('\''),
            c if unsafe_char(c) => out.push('?'),
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

/// Makes any text one line of at most [`MAX_LINE_CHARS`] characters
/// without control characters.
pub fn one_line(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_LINE_CHARS {
            out.push_str("...");
            break;
        }
        out.push(if unsafe_char(c) { '?' } else { c });
    }
    out
}

/// Control characters, and format characters that reorder or hide text or
/// break lines in log viewers (bidi overrides, zero-width, line separators).
pub fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

/// Names of the distribution specification (the OCI registry protocol):
/// what a repository and a tag may be. The host checks a `registry://`
/// source with them; the listing step checks what a registry lists.
pub mod distribution {
    /// The longest repository name the specification allows.
    const MAX_REPO: usize = 255;

    /// A repository path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
    fn valid_component(c: &str) -> bool {
        let b = c.as_bytes();
        if b.is_empty() || !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
            return false;
        }
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // A separator: `.`, `_`, `__` or a run of `-`, then alphanumerics.
            let start = i;
            match b[i] {
                b'.' => i += 1,
                b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
                b'-' => {
                    while b.get(i) == Some(&b'-') {
                        i += 1;
                    }
                }
                _ => return false,
            }
            if i == start || !b.get(i).is_some_and(|&x| alnum(x)) {
                return false;
            }
        }
        true
    }

    /// A repository name: `/`-separated components, at most 255 characters.
    pub fn valid_repo(r: &str) -> bool {
        (1..=MAX_REPO).contains(&r.len()) && r.split('/').all(valid_component)
    }

    /// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    pub fn valid_tag(t: &str) -> bool {
        let b = t.as_bytes();
        (1..=128).contains(&b.len())
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn check(f: fn(&str) -> String, input: &str, expected: &str) {
        assert_eq!(f(input), expected, "{input:?}");
    }

    #[test]
    fn lines_and_quotes() {
        check(one_line, "a\nb\u{202e}c", "a?b?c");
        check(|s| quote(s, 3), "ab`cdef", "`ab'...`");
        check(|s| quote(s, 80), "x\u{7}", "`x?`");
        let long: String = core::iter::repeat_n('x', 300).collect();
        assert_eq!(one_line(&long).chars().count(), MAX_LINE_CHARS + 3);
    }
}
