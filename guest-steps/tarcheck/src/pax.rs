//! PAX extended-header records ("LEN key=value\n"), strictly validated, and
//! the values tarpool interprets.

use std::collections::HashSet;

use crate::paths::quoted;

/// The records of one PAX `x` header that matter.
#[derive(Debug, Default)]
pub(crate) struct Pax {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
    /// Saturated at `u64::MAX` (then out of any id range).
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub mtime: Option<(i64, u32)>,
    /// (name, value) in record order, `SCHILY.xattr.` and `LIBARCHIVE.xattr.`
    /// records merged (the same name twice must carry the same value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PaxError {
    Malformed(String),
    Sparse,
}

fn bad(m: impl Into<String>) -> PaxError {
    PaxError::Malformed(m.into())
}

/// Parses the payload of a PAX header. A global header (`g`) is only
/// validated: nothing in it is applied.
pub(crate) fn parse(payload: &[u8], global: bool) -> Result<Pax, PaxError> {
    let mut pax = Pax::default();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let (key, value, tail) = record(rest)?;
        rest = tail;
        if !seen.insert(key) {
            return Err(bad(format!("duplicate PAX record {}", quoted(key))));
        }
        newlines(key, value, rest.is_empty())?;
        if global {
            continue;
        }
        match key {
            b"path" => pax.path = Some(path_value(key, value)?),
            b"linkpath" => pax.linkpath = Some(path_value(key, value)?),
            b"size" => pax.size = Some(decimal(value).ok_or_else(|| bad("invalid PAX size"))?),
            b"uid" => pax.uid = Some(id(value).ok_or_else(|| bad("invalid PAX uid"))?),
            b"gid" => pax.gid = Some(id(value).ok_or_else(|| bad("invalid PAX gid"))?),
            b"mtime" => {
                pax.mtime = Some(parse_time(value).ok_or_else(|| bad("invalid PAX mtime"))?)
            }
            k if k.starts_with(b"GNU.sparse.") => return Err(PaxError::Sparse),
            k if k.starts_with(b"SCHILY.xattr.") => {
                let name = k.get(b"SCHILY.xattr.".len()..).unwrap_or_default();
                add_xattr(&mut pax, name.to_vec(), value.to_vec())?;
            }
            k if k.starts_with(b"LIBARCHIVE.xattr.") => {
                let enc = k.get(b"LIBARCHIVE.xattr.".len()..).unwrap_or_default();
                let name = url_decode(enc)
                    .ok_or_else(|| bad(format!("malformed PAX record {}", quoted(k))))?;
                let value = base64_decode(value)
                    .ok_or_else(|| bad(format!("malformed base64 in PAX record {}", quoted(k))))?;
                add_xattr(&mut pax, name, value)?;
            }
            _ => {}
        }
    }
    Ok(pax)
}

/// Splits off one record: (key, value, rest).
/// One record: key, value, and the bytes after it.
type Record<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn record(buf: &[u8]) -> Result<Record<'_>, PaxError> {
    let malformed = || bad("malformed PAX record");
    let sp = buf
        .iter()
        .take(20)
        .position(|b| *b == b' ')
        .ok_or_else(malformed)?;
    let digits = &buf[..sp];
    if digits.is_empty() || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let len = decimal(digits)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(malformed)?;
    let rec = buf
        .get(..len)
        .ok_or_else(|| bad("PAX record runs past the end of its header"))?;
    let body = rec.get(sp + 1..len.wrapping_sub(1)).ok_or_else(malformed)?;
    if rec.last() != Some(&b'\n') || len < sp + 2 {
        return Err(malformed());
    }
    let eq = body.iter().position(|b| *b == b'=').ok_or_else(malformed)?;
    let key = &body[..eq];
    let value = &body[eq + 1..];
    if key.is_empty() || key.contains(&0) {
        return Err(malformed());
    }
    Ok((key, value, &buf[len..]))
}

/// A newline inside a value is legal (records are length-delimited), but
/// readers that split records at newlines (tar-rs) drop the record and read
/// each piece after a newline as a record of its own, and stop at an empty
/// piece. Refused where that changes what is read: in a path or link path
/// (the reader would take the header's name), where a piece reads as a
/// record (`LEN key=value` of its own length), and where a piece is empty
/// and records follow (the reader would not see them). Binary xattr values
/// may hold other newlines.
fn newlines(key: &[u8], value: &[u8], last: bool) -> Result<(), PaxError> {
    if !value.contains(&b'\n') {
        return Ok(());
    }
    if key == b"path" || key == b"linkpath" {
        return Err(bad(format!(
            "PAX {} record contains a newline",
            quoted(key)
        )));
    }
    for piece in value.split(|b| *b == b'\n').skip(1) {
        let is_record = piece.iter().position(|b| *b == b' ').is_some_and(|sp| {
            std::str::from_utf8(&piece[..sp])
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n == piece.len() + 1 && piece[sp..].contains(&b'='))
        });
        if (piece.is_empty() && !last) || is_record {
            return Err(bad(format!(
                "PAX record {} has a newline that starts another record to some readers",
                quoted(key)
            )));
        }
    }
    Ok(())
}

fn path_value(key: &[u8], v: &[u8]) -> Result<Vec<u8>, PaxError> {
    // An empty value would mean "use the header's field" to some readers and
    // "empty name" to others: refuse the ambiguity.
    if v.is_empty() {
        return Err(bad(format!("empty PAX {} record", quoted(key))));
    }
    if v.contains(&0) {
        return Err(bad(format!(
            "PAX {} record contains a NUL byte",
            quoted(key)
        )));
    }
    Ok(v.to_vec())
}

fn add_xattr(pax: &mut Pax, name: Vec<u8>, value: Vec<u8>) -> Result<(), PaxError> {
    if let Some((_, v)) = pax.xattrs.iter().find(|(n, _)| *n == name) {
        if *v == value {
            return Ok(());
        }
        return Err(bad(format!(
            "conflicting PAX records for xattr {}",
            quoted(&name)
        )));
    }
    pax.xattrs.push((name, value));
    Ok(())
}

/// Strict unsigned decimal: digits only, no sign, no overflow.
pub(crate) fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// A decimal id; values beyond u64 saturate (they are out of range anyway).
fn id(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(decimal(v).unwrap_or(u64::MAX))
}

/// `[-]secs[.frac]` as (seconds, nanoseconds); out-of-range seconds
/// saturate (the caller clamps).
pub(crate) fn parse_time(v: &[u8]) -> Option<(i64, u32)> {
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = match v.iter().position(|b| *b == b'.') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    if secs.is_empty() || !secs.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = i64::try_from(decimal(secs).unwrap_or(u64::MAX)).unwrap_or(i64::MAX);
    let mut nsec: u32 = 0;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut scale: u32 = 100_000_000;
        for d in frac.iter().take(9) {
            nsec += u32::from(d - b'0') * scale;
            scale /= 10;
        }
    }
    if !neg {
        return Some((secs, nsec));
    }
    if nsec == 0 {
        Some((secs.saturating_neg(), 0))
    } else {
        Some((
            secs.saturating_neg().saturating_sub(1),
            1_000_000_000 - nsec,
        ))
    }
}

/// libarchive's `%XX` escapes in xattr names.
fn url_decode(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        if b == b'%' {
            let hi = hex(*v.get(i + 1)?)?;
            let lo = hex(*v.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Standard base64, padding optional.
fn base64_decode(v: &[u8]) -> Option<Vec<u8>> {
    let data = match v.iter().position(|b| *b == b'=') {
        Some(i) => {
            let pad = &v[i..];
            if pad.len() > 2 || !pad.iter().all(|b| *b == b'=') || !v.len().is_multiple_of(4) {
                return None;
            }
            &v[..i]
        }
        None => v,
    };
    if data.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in data {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6 | u32::from(d)) & 0xff_ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Validates a `vfs_cap_data` value. v1/v2 pass unchanged; v3 is accepted
/// only with rootid 0 and is then rewritten as v2 (the same meaning in the
/// initial user namespace): `Some((value, converted))`. Anything else is
/// refused.
pub(crate) fn capability_v2(v: &[u8]) -> Option<(Vec<u8>, bool)> {
    const REV_MASK: u32 = 0xff00_0000;
    const REV1: u32 = 0x0100_0000;
    const REV2: u32 = 0x0200_0000;
    const REV3: u32 = 0x0300_0000;
    let magic = u32::from_le_bytes(v.get(..4)?.try_into().ok()?);
    match (magic & REV_MASK, v.len()) {
        (REV1, 12) | (REV2, 20) => Some((v.to_vec(), false)),
        (REV3, 24) if v.get(20..24) == Some(&[0, 0, 0, 0][..]) => {
            let mut out = v.get(..20)?.to_vec();
            out.get_mut(..4)?
                .copy_from_slice(&((magic & !REV_MASK) | REV2).to_le_bytes());
            Some((out, true))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        let p = parse(b"11 path=ab\n18 SCHILY.xattr.=\n", false);
        assert!(p.is_ok(), "{p:?}");
        assert_eq!(p.unwrap().xattrs, vec![(vec![], vec![])]);
        for bad in [
            &b"10 path=ab\n"[..],
            b"12 path=ab\n",
            b"011 path=ab\n",
            b"11 path=ab\n\0",
            b"11 pathXab\n",
            b"5 =a\n",
            b"4 a\n",
            b"3 \n",
            b"1 ",
            b"x",
            b"99999999999999999999999 a=b\n",
            b"+11 path=ab\n",
            b"11 path=ab\n11 path=ab\n",
            b"8 path=\n",
            b"10 size=x\n",
            b"12 mtime=1.\n",
        ] {
            assert!(
                matches!(parse(bad, false), Err(PaxError::Malformed(_))),
                "{}",
                quoted(bad)
            );
        }
        assert_eq!(
            parse(b"22 GNU.sparse.major=1\n", false).unwrap_err(),
            PaxError::Sparse
        );
        assert!(parse(b"22 GNU.sparse.major=1\n", true).is_ok());
        // Newlines that make records to readers splitting at newlines.
        for bad in [
            &b"12 path=a\nb\n"[..],
            b"16 linkpath=a\nb\n",
            b"18 comment=x\n\nfoo\n11 path=ab\n",
            b"26 comment=x\n13 path=evil\n",
            b"27 SCHILY.xattr.user.x=a\n\n\n11 path=ab\n",
        ] {
            let e = parse(bad, false).unwrap_err();
            assert!(
                matches!(&e, PaxError::Malformed(m) if m.contains("newline")),
                "{}: {e:?}",
                quoted(bad)
            );
        }
        // A newline in a binary xattr value that starts no record.
        let p = parse(b"27 SCHILY.xattr.user.x=\x01\n\x02\n", false).unwrap();
        assert_eq!(p.xattrs, vec![(b"user.x".to_vec(), b"\x01\n\x02".to_vec())]);
        // An empty piece in the last record: nothing follows to be missed.
        let p = parse(b"11 path=ab\n26 SCHILY.xattr.user.x=a\n\n", false).unwrap();
        assert_eq!(p.xattrs, vec![(b"user.x".to_vec(), b"a\n".to_vec())]);
        let p = parse(b"13 mtime=1.5\n", false).unwrap();
        assert_eq!(p.mtime, Some((1, 500_000_000)));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(b"12"), Some((12, 0)));
        assert_eq!(parse_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_time(b"-3.25"), Some((-4, 750_000_000)));
        assert_eq!(parse_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_time(b"1.0000000019"), Some((1, 1)));
        assert!(parse_time(b"1e9").is_none());
        assert!(parse_time(b"").is_none());
        assert!(parse_time(b"1.").is_none());
        assert!(parse_time(b"-").is_none());
        assert_eq!(parse_time(b"99999999999999999999999"), Some((i64::MAX, 0)));
        assert_eq!(
            parse_time(b"-99999999999999999999999.5").map(|t| t.0),
            Some(i64::MIN)
        );
    }

    #[test]
    fn decoders() {
        assert_eq!(base64_decode(b"aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode(b"aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode(b"").as_deref(), Some(&b""[..]));
        assert!(base64_decode(b"a").is_none());
        assert!(base64_decode(b"aGVsbG8==").is_none());
        assert!(base64_decode(b"a=b=").is_none());
        assert!(base64_decode(b"aGV*").is_none());
        assert_eq!(url_decode(b"user.a%3Db").as_deref(), Some(&b"user.a=b"[..]));
        assert!(url_decode(b"%4").is_none());
        let p = parse(
            b"30 LIBARCHIVE.xattr.user.x=eQ\n25 SCHILY.xattr.user.x=y\n",
            false,
        )
        .unwrap();
        assert_eq!(p.xattrs, vec![(b"user.x".to_vec(), b"y".to_vec())]);
        assert!(parse(
            b"30 LIBARCHIVE.xattr.user.x=eg\n25 SCHILY.xattr.user.x=y\n",
            false
        )
        .is_err());
    }

    #[test]
    fn caps() {
        let mut v2 = vec![0u8; 20];
        v2[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        assert_eq!(capability_v2(&v2), Some((v2.clone(), false)));
        let mut v3 = vec![0u8; 24];
        v3[..4].copy_from_slice(&0x0300_0001u32.to_le_bytes());
        assert_eq!(capability_v2(&v3), Some((v2, true)));
        v3[20] = 1;
        assert_eq!(capability_v2(&v3), None);
        assert_eq!(capability_v2(&[1, 2, 3]), None);
    }
}
