//! Format step `classify`: tells from a blob's leading bytes what it is.
//!
//! The logic is a plain function ([`classify`]) so it can be unit-tested
//! natively; on `wasm32` the crate also exports the `classify-step` world of
//! `wit/tarpool.wit`. This code reads untrusted bytes: it never panics on any
//! input, and every message it returns is one bounded line without control
//! characters.

use guest_text::one_line;

/// What a blob's leading bytes say it is (mirrors `blob-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    Tar,
    Gzip,
    Zstd,
    Empty,
    Unknown,
}

/// Result of [`classify`] (mirrors the WIT record `classification`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub kind: BlobKind,
    /// One line for the audit log.
    pub detail: String,
}

/// Longest entry name quoted in a `detail`, in characters.
const MAX_NAME_CHARS: usize = 100;
const BLOCK: usize = 512;

/// Classifies a blob from `head` (its first bytes, at most 64 KiB) and its
/// full length. An `Err` means the input is inconsistent (blames the input).
pub fn classify(head: &[u8], total_size: u64) -> Result<Classification, String> {
    if u64::try_from(head.len()).map_or(true, |len| len > total_size) {
        return Err(one_line(&format!(
            "head holds {} bytes but the blob is {} bytes long",
            head.len(),
            total_size
        )));
    }
    let c = if total_size == 0 {
        done(BlobKind::Empty, "empty blob")
    } else if head.is_empty() {
        return Err(one_line(&format!(
            "no leading bytes given for a blob of {total_size} bytes"
        )));
    } else {
        classify_bytes(head, total_size)
    };
    Ok(Classification {
        kind: c.kind,
        detail: one_line(&c.detail),
    })
}

fn done(kind: BlobKind, detail: impl Into<String>) -> Classification {
    Classification {
        kind,
        detail: detail.into(),
    }
}

fn classify_bytes(head: &[u8], total_size: u64) -> Classification {
    // A tar header is checked first: its checksum makes it the most reliable
    // signature, and a tar whose first entry is named e.g. `BZh9` is a tar.
    let tar = classify_tar(head, total_size);
    if let Some(c) = tar.as_ref().filter(|c| c.kind == BlobKind::Tar) {
        return c.clone();
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return match head.get(2) {
            Some(8) | None => done(BlobKind::Gzip, "gzip stream (deflate)"),
            Some(m) => done(
                BlobKind::Unknown,
                format!("gzip magic with unsupported compression method {m}"),
            ),
        };
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return done(BlobKind::Zstd, "zstd frame");
    }
    if head.len() >= 4 && head[1..4] == [0x2a, 0x4d, 0x18] && head[0] & 0xf0 == 0x50 {
        return done(
            BlobKind::Unknown,
            "zstd skippable frame (unsupported: layers must start with a zstd data frame)",
        );
    }
    if head.starts_with(b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        return done(BlobKind::Unknown, "bzip2 stream (unsupported compression)");
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return done(BlobKind::Unknown, "xz stream (unsupported compression)");
    }
    if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        return done(BlobKind::Unknown, "lz4 frame (unsupported compression)");
    }
    if let Some(c) = tar {
        return c;
    }
    done(
        BlobKind::Unknown,
        format!("unrecognised data, starts {}", hex_prefix(head)),
    )
}

fn hex_prefix(head: &[u8]) -> String {
    let mut s = String::new();
    for b in head.iter().take(8) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Recognises a tar archive from its first header block.
fn classify_tar(head: &[u8], total_size: u64) -> Option<Classification> {
    let block = head.get(..BLOCK)?;
    if block.iter().all(|&b| b == 0) {
        // An archive with no entries is just the end-of-archive marker.
        let marker = head.get(..2 * BLOCK)?;
        if marker.iter().all(|&b| b == 0) && total_size.is_multiple_of(BLOCK as u64) {
            return Some(done(
                BlobKind::Tar,
                "tar archive with no entries (end-of-archive marker only)",
            ));
        }
        return None;
    }
    let magic = &block[257..265];
    let flavour = if magic == b"ustar\x0000" {
        "ustar"
    } else if magic == b"ustar  \x00" {
        "GNU tar"
    } else if magic.starts_with(b"ustar") {
        // Some writers put odd version bytes after the POSIX magic.
        "ustar (nonstandard version)"
    } else {
        "v7 tar"
    };
    let checksum_ok = checksum_matches(block);
    if !checksum_ok {
        if flavour == "v7 tar" {
            return None;
        }
        return Some(done(
            BlobKind::Unknown,
            format!("{flavour} magic at offset 257 but the header checksum does not match"),
        ));
    }
    if flavour == "v7 tar" && !plausible_v7(block) {
        return None;
    }
    let mut name = field_str(&block[0..100]);
    if flavour.starts_with("ustar") {
        let prefix = field_str(&block[345..500]);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
    }
    let typeflag = block[156];
    let what = match typeflag {
        b'L' => {
            // GNU long name: the real name is in the following block(s).
            let long = head.get(BLOCK..).map(|rest| {
                let end = rest.len().min(4096);
                field_str(&rest[..end])
            });
            match long {
                Some(long) if !long.is_empty() => {
                    return Some(done(
                        BlobKind::Tar,
                        format!("{flavour} header, first entry {}", quote_name(&long)),
                    ))
                }
                _ => "GNU long-name record",
            }
        }
        b'x' => "pax extended header",
        b'g' => "pax global header",
        _ => "",
    };
    let detail = if what.is_empty() {
        format!("{flavour} header, first entry {}", quote_name(&name))
    } else {
        format!(
            "{flavour} header, first entry is a {what} ({})",
            quote_name(&name)
        )
    };
    Some(done(BlobKind::Tar, detail))
}

/// A v7 header has no magic; besides the checksum, insist on a name and
/// octal numeric fields so random bytes are not taken for a tar.
fn plausible_v7(block: &[u8]) -> bool {
    if block[0] == 0 {
        return false;
    }
    // mode, uid, gid, size, mtime
    [(100, 8), (108, 8), (116, 8), (124, 12), (136, 12)]
        .iter()
        .all(|&(off, len)| parse_octal(&block[off..off + len]).is_some())
}

fn checksum_matches(block: &[u8]) -> bool {
    let Some(stored) = parse_octal(&block[148..156]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// Parses a tar octal field: optional leading spaces, octal digits, then
/// NUL/space padding. An empty field is not a number.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let mut it = field.iter().skip_while(|&&b| b == b' ').peekable();
    let mut value: u64 = 0;
    let mut digits = 0;
    while let Some(&&b) = it.peek() {
        if !(b'0'..=b'7').contains(&b) {
            break;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
        it.next();
    }
    if digits == 0 || !it.all(|&b| b == 0 || b == b' ') {
        return None;
    }
    Some(value)
}

/// Reads a NUL-terminated field, lossily as UTF-8.
fn field_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "classify-step" });

    use tarpool::steps::types::{BlobKind as WitKind, Classification as WitClassification};

    struct Step;

    impl Guest for Step {
        fn classify(head: Vec<u8>, total_size: u64) -> Result<WitClassification, String> {
            let c = super::classify(&head, total_size)?;
            let kind = match c.kind {
                super::BlobKind::Tar => WitKind::Tar,
                super::BlobKind::Gzip => WitKind::Gzip,
                super::BlobKind::Zstd => WitKind::Zstd,
                super::BlobKind::Empty => WitKind::Empty,
                super::BlobKind::Unknown => WitKind::Unknown,
            };
            Ok(WitClassification {
                kind,
                detail: c.detail,
            })
        }
    }

    export!(Step);
}

/// Quotes a name for a message (see [`guest_text::quote`]).
fn quote_name(name: &str) -> String {
    guest_text::quote(name, MAX_NAME_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a 512-byte tar header with a valid checksum.
    fn header(name: &str, magic: &[u8; 8], typeflag: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(b"00000000000\0");
        h[136..148].copy_from_slice(b"14000000000\0");
        h[156] = typeflag;
        if magic != &[0; 8] {
            h[257..265].copy_from_slice(magic);
        }
        set_checksum(&mut h);
        h
    }

    fn set_checksum(h: &mut [u8]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
    }

    enum Want<'a> {
        Ok(BlobKind, &'a str),
        Err(&'a str),
    }

    /// Data-driven check: `expected` names the kind and a substring of the
    /// detail (or of the error).
    fn check(input: &[u8], total: u64, expected: Want<'_>) {
        let got = classify(input, total);
        match (&got, expected) {
            (Ok(c), Want::Ok(kind, sub)) => {
                assert_eq!(c.kind, kind, "{c:?}");
                assert!(
                    c.detail.contains(sub),
                    "detail {:?} lacks {sub:?}",
                    c.detail
                );
                assert_one_line(&c.detail);
            }
            (Err(e), Want::Err(sub)) => {
                assert!(e.contains(sub), "error {e:?} lacks {sub:?}");
                assert_one_line(e);
            }
            (got, _) => panic!("unexpected result {got:?}"),
        }
    }

    fn assert_one_line(s: &str) {
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert!(s.chars().count() <= guest_text::MAX_LINE_CHARS + 3, "{s:?}");
    }

    fn padded(mut v: Vec<u8>, len: usize) -> Vec<u8> {
        v.resize(len, 0);
        v
    }

    #[test]
    fn magic_numbers() {
        let cases: Vec<(Vec<u8>, u64, Want<'_>)> = vec![
            (vec![], 0, Want::Ok(BlobKind::Empty, "empty")),
            (
                vec![0x1f, 0x8b, 8, 0, 0],
                100,
                Want::Ok(BlobKind::Gzip, "gzip"),
            ),
            (vec![0x1f, 0x8b], 2, Want::Ok(BlobKind::Gzip, "gzip")),
            (
                vec![0x1f, 0x8b, 7],
                3,
                Want::Ok(BlobKind::Unknown, "method 7"),
            ),
            (
                vec![0x28, 0xb5, 0x2f, 0xfd, 0],
                9,
                Want::Ok(BlobKind::Zstd, "zstd"),
            ),
            (
                vec![0x50, 0x2a, 0x4d, 0x18, 0],
                9,
                Want::Ok(BlobKind::Unknown, "skippable"),
            ),
            (
                vec![0x5f, 0x2a, 0x4d, 0x18],
                9,
                Want::Ok(BlobKind::Unknown, "skippable"),
            ),
            (
                b"BZh91AY&SY".to_vec(),
                10,
                Want::Ok(BlobKind::Unknown, "bzip2"),
            ),
            (
                vec![0xfd, b'7', b'z', b'X', b'Z', 0, 0],
                7,
                Want::Ok(BlobKind::Unknown, "xz"),
            ),
            (
                b"hello world".to_vec(),
                11,
                Want::Ok(BlobKind::Unknown, "68656c6c6f20776f"),
            ),
            (vec![0], 1, Want::Ok(BlobKind::Unknown, "unrecognised")),
            (vec![1, 2, 3], 2, Want::Err("head holds 3 bytes")),
            (vec![], 5, Want::Err("no leading bytes")),
        ];
        for (input, total, want) in cases {
            check(&input, total, want);
        }
    }

    #[test]
    fn tar_headers() {
        let ustar = header("etc/", b"ustar\x0000", b'5');
        let gnu = header("./usr/bin/true", b"ustar  \x00", b'0');
        let v7 = header("bin/sh", &[0; 8], b'0');
        let mut bad_sum = ustar.clone();
        bad_sum[0] = b'x';
        let mut bad_v7 = v7.clone();
        bad_v7[1] = b'X';
        let mut prefixed = header("passwd", b"ustar\x0000", b'0');
        prefixed[345..348].copy_from_slice(b"etc");
        set_checksum(&mut prefixed);
        let mut nasty = header("a\n\x1b[31mb`c", b"ustar\x0000", b'0');
        set_checksum(&mut nasty);
        let mut long = header(&"x".repeat(99), b"ustar\x0000", b'0');
        long[345..495].copy_from_slice(&[b'p'; 150]);
        set_checksum(&mut long);
        let mut gnu_long = header("././@LongLink", b"ustar  \x00", b'L');
        gnu_long.extend_from_slice(&padded(b"very/long/name\0".to_vec(), BLOCK));
        let pax = header("PaxHeaders/x", b"ustar\x0000", b'x');
        // Signed-checksum writers (old Sun tar) with high-bit bytes in the name.
        let mut signed = header("\u{e9}", b"ustar\x0000", b'0');
        signed[148..156].copy_from_slice(b"        ");
        let s: i64 = signed.iter().map(|&b| i64::from(b as i8)).sum();
        signed[148..156].copy_from_slice(format!("{s:06o}\0 ").as_bytes());

        let cases: Vec<(Vec<u8>, u64, Want<'_>)> = vec![
            (
                padded(ustar, 4096),
                4096,
                Want::Ok(BlobKind::Tar, "ustar header, first entry `etc/`"),
            ),
            (
                gnu.clone(),
                10240,
                Want::Ok(
                    BlobKind::Tar,
                    "GNU tar header, first entry `./usr/bin/true`",
                ),
            ),
            (
                v7,
                1024,
                Want::Ok(BlobKind::Tar, "v7 tar header, first entry `bin/sh`"),
            ),
            (
                bad_sum,
                1024,
                Want::Ok(BlobKind::Unknown, "checksum does not match"),
            ),
            (bad_v7, 1024, Want::Ok(BlobKind::Unknown, "unrecognised")),
            (prefixed, 1024, Want::Ok(BlobKind::Tar, "`etc/passwd`")),
            (nasty, 1024, Want::Ok(BlobKind::Tar, "`a??[31mb'c`")),
            (long, 1024, Want::Ok(BlobKind::Tar, "...`")),
            (gnu_long, 2048, Want::Ok(BlobKind::Tar, "`very/long/name`")),
            (pax, 2048, Want::Ok(BlobKind::Tar, "pax extended header")),
            (signed, 1024, Want::Ok(BlobKind::Tar, "ustar header")),
            (vec![0; 1024], 1024, Want::Ok(BlobKind::Tar, "no entries")),
            (vec![0; 1024], 10240, Want::Ok(BlobKind::Tar, "no entries")),
            (
                vec![0; 1024],
                1025,
                Want::Ok(BlobKind::Unknown, "unrecognised"),
            ),
            (
                vec![0; 512],
                512,
                Want::Ok(BlobKind::Unknown, "unrecognised"),
            ),
            (
                gnu[..300].to_vec(),
                300,
                Want::Ok(BlobKind::Unknown, "unrecognised"),
            ),
        ];
        for (input, total, want) in cases {
            check(&input, total, want);
        }
    }

    #[test]
    fn never_panics_on_noise() {
        // A cheap deterministic generator; all that matters is no panic and
        // well-formed output.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in [0usize, 1, 2, 3, 4, 257, 511, 512, 513, 1023, 1024, 5000] {
            for _ in 0..50 {
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 24) as u8
                    })
                    .collect();
                match classify(&buf, len as u64 + 7) {
                    Ok(c) => assert_one_line(&c.detail),
                    Err(e) => assert_one_line(&e),
                }
            }
        }
        // Octal overflow in the checksum field.
        let mut h = header("a", b"ustar\x0000", b'0');
        h[148..156].copy_from_slice(b"77777777");
        check(&h, 512, Want::Ok(BlobKind::Unknown, "checksum"));
    }
}
