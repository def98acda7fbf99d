//! Fields of a 512-byte tar header block (v7, ustar, GNU).

pub(crate) const BLOCK: usize = 512;

pub(crate) const NAME: (usize, usize) = (0, 100);
pub(crate) const MODE: (usize, usize) = (100, 108);
pub(crate) const UID: (usize, usize) = (108, 116);
pub(crate) const GID: (usize, usize) = (116, 124);
pub(crate) const SIZE: (usize, usize) = (124, 136);
pub(crate) const MTIME: (usize, usize) = (136, 148);
const CHKSUM: (usize, usize) = (148, 156);
pub(crate) const TYPEFLAG: usize = 156;
pub(crate) const LINKNAME: (usize, usize) = (157, 257);
const MAGIC: (usize, usize) = (257, 263);
const VERSION: (usize, usize) = (263, 265);
pub(crate) const DEVMAJOR: (usize, usize) = (329, 337);
pub(crate) const DEVMINOR: (usize, usize) = (337, 345);
const PREFIX: (usize, usize) = (345, 500);

pub(crate) type Block = [u8; BLOCK];

pub(crate) fn field(block: &Block, (start, end): (usize, usize)) -> &[u8] {
    block.get(start..end).unwrap_or_default()
}

/// A NUL-terminated string field (it may fill the whole field).
pub(crate) fn cstr(f: &[u8]) -> &[u8] {
    match f.iter().position(|b| *b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

/// The header's name: `prefix/name` when the magic is POSIX ustar (GNU
/// tar and Go do the same whatever the version bytes; tar-rs only with
/// version `00`, so the checker refuses a prefix with another version, see
/// [`nonstandard_prefix`]), else `name`.
pub(crate) fn name(block: &Block) -> Vec<u8> {
    let name = cstr(field(block, NAME));
    if field(block, MAGIC) == b"ustar\0" {
        let prefix = cstr(field(block, PREFIX));
        if !prefix.is_empty() {
            let mut v = Vec::with_capacity(prefix.len() + 1 + name.len());
            v.extend_from_slice(prefix);
            v.push(b'/');
            v.extend_from_slice(name);
            return v;
        }
    }
    name.to_vec()
}

/// The magic and version are POSIX ustar's (`ustar\0` `00`) or GNU tar's
/// (`ustar ` ` \0`): the headers every reader takes for what they say.
/// (tar-rs, for one, reads an extension header or a prefix field of any
/// other header as a plain entry or as nothing.)
pub(crate) fn standard_magic(block: &Block) -> bool {
    matches!(
        (field(block, MAGIC), field(block, VERSION)),
        (b"ustar\0", b"00") | (b"ustar ", b" \0")
    )
}

/// The name has a prefix that not every reader applies: POSIX magic, a
/// version other than `00`, and a non-empty prefix field.
pub(crate) fn nonstandard_prefix(block: &Block) -> bool {
    field(block, MAGIC) == b"ustar\0"
        && field(block, VERSION) != b"00"
        && !cstr(field(block, PREFIX)).is_empty()
}

pub(crate) fn link_name(block: &Block) -> Vec<u8> {
    cstr(field(block, LINKNAME)).to_vec()
}

/// Parses an octal field: leading spaces, octal digits, then only NUL or
/// space padding. Returns the value and the number of digits; `None` when
/// anything else is in the field.
fn octal(f: &[u8]) -> Option<(u64, usize)> {
    let mut i = 0;
    while f.get(i) == Some(&b' ') {
        i += 1;
    }
    let mut value: u64 = 0;
    let mut digits = 0;
    while let Some(&b) = f.get(i) {
        if !(b'0'..=b'7').contains(&b) {
            break;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
        i += 1;
    }
    if !f.get(i..)?.iter().all(|b| *b == 0 || *b == b' ') {
        return None;
    }
    Some((value, digits))
}

/// A numeric field: octal (an empty field is 0, as in Go's archive/tar) or
/// GNU base-256 (a leading 0x80 bit; 0x40 set too means negative). `None`
/// when malformed.
pub(crate) fn numeric(f: &[u8]) -> Option<i128> {
    let first = *f.first()?;
    if first & 0x80 != 0 {
        let inv: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
        let mut x: i128 = 0;
        for (i, &b) in f.iter().enumerate() {
            let mut c = b ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            x = x.checked_mul(256)?.checked_add(i128::from(c))?;
        }
        return Some(if inv == 0xff {
            x.checked_neg()?.checked_sub(1)?
        } else {
            x
        });
    }
    octal(f).map(|(v, _)| i128::from(v))
}

/// Whether the stored checksum matches the block's unsigned byte sum (or,
/// as GNU tar also accepts, its signed byte sum).
pub(crate) fn checksum_ok(block: &Block) -> bool {
    let Some((stored, digits)) = octal(field(block, CHKSUM)) else {
        return false;
    };
    if digits == 0 {
        return false;
    }
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (CHKSUM.0..CHKSUM.1).contains(&i) {
            b' '
        } else {
            b
        };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(numeric(b"0000644\0"), Some(0o644));
        assert_eq!(numeric(b"  644 \0\0"), Some(0o644));
        assert_eq!(numeric(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(numeric(b"        "), Some(0));
        assert_eq!(numeric(b"00000000"), Some(0));
        assert_eq!(numeric(b"0000644x"), None);
        assert_eq!(numeric(b"\x00\x00\x000644"), None);
        assert_eq!(numeric(b"06 44\0\0\0"), None);
        assert_eq!(numeric(b"0009\0\0\0\0"), None);
        assert_eq!(numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1]), Some(1));
        assert_eq!(
            numeric(&[0x80, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
            Some(1 << 56)
        );
        assert_eq!(numeric(&[0xff; 8]), Some(-1));
        assert_eq!(
            numeric(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
            Some(-2)
        );
        assert_eq!(
            numeric(&[0xbf; 12]).map(|v| v > i128::from(u64::MAX)),
            Some(true)
        );
        assert_eq!(numeric(b""), None);
    }
}
