//! Errors stored in SQLite are one line and name no host path.

/// Makes `msg` one line of at most 400 bytes and replaces each of `roots`
/// (host directories: the state directory, a local source) with its label.
pub fn sanitize(msg: &str, roots: &[(&str, &str)]) -> String {
    let mut s = msg.to_string();
    let mut roots: Vec<&(&str, &str)> = roots.iter().filter(|(p, _)| p.len() > 1).collect();
    roots.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (path, label) in roots {
        s = s.replace(path, label);
    }
    let mut out = String::with_capacity(s.len().min(400));
    for c in s.chars() {
        if out.len() >= 400 {
            out.push('…');
            break;
        }
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            // The guests' rule: control characters and the format
            // characters that reorder or hide text (bidi overrides,
            // zero-width, line separators).
            c if guest_text::unsafe_char(c) => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(msg: &str, expected: &str) {
        assert_eq!(
            sanitize(
                msg,
                &[("/var/lib/tarpool", "<state>"), ("/srv/bucket", "<source>")]
            ),
            expected
        );
    }

    #[test]
    fn one_line_no_paths() {
        check(
            "open /var/lib/tarpool/blobs/x: ENOENT",
            "open <state>/blobs/x: ENOENT",
        );
        check("a\nb\r\tc", "a b  c");
        check("bell\u{7}", "bell\\u{7}");
        check("evil\u{202e}gpj.exe", "evil\\u{202e}gpj.exe");
        check("zero\u{200b}width", "zero\\u{200b}width");
        check(
            "/srv/bucket/images/a/1.tar truncated",
            "<source>/images/a/1.tar truncated",
        );
        assert!(sanitize(&"x".repeat(1000), &[]).chars().count() <= 401);
    }
}
