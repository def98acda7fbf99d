//! PAX extended-header records of one member: the ones the `tar` crate does
//! not interpret (mtime, xattrs) plus consistency checks on the ones it does.

use std::collections::HashSet;
use std::io::Read;

use rustix::fs::Timespec;

use super::names::show;

/// Largest xattr value accepted (Linux `XATTR_SIZE_MAX`).
const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Longest xattr name accepted (Linux `XATTR_NAME_MAX`).
const MAX_XATTR_NAME: usize = 255;

#[derive(Default)]
pub(super) struct PaxInfo {
    pub size: Option<u64>,
    pub mtime: Option<Timespec>,
    /// Extended attributes to apply, already filtered by policy.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// One line per record that was ignored on purpose.
    pub notes: Vec<String>,
}

/// Reads the member's PAX records. `Err` is a one-line reason (the caller
/// prefixes the entry path).
pub(super) fn parse<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<PaxInfo, String> {
    let mut info = PaxInfo::default();
    let exts = match entry.pax_extensions() {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(info),
        Err(e) => {
            return Err(format!(
                "malformed PAX header: {}",
                show(e.to_string().as_bytes())
            ))
        }
    };
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for ext in exts {
        let ext = ext.map_err(|_| "malformed PAX record".to_string())?;
        let key = ext.key_bytes();
        let val = ext.value_bytes();
        if !seen.insert(key.to_vec()) {
            return Err(format!("duplicate PAX record `{}`", show(key)));
        }
        match key {
            b"size" => info.size = Some(parse_u64(val).ok_or("invalid PAX size")?),
            b"uid" | b"gid" => {
                // The tar crate silently ignores unparsable values and falls
                // back to the ustar field: refuse the ambiguity.
                parse_u64(val).ok_or("invalid PAX uid/gid")?;
            }
            b"mtime" => info.mtime = Some(parse_time(val).ok_or("invalid PAX mtime")?),
            k if k.starts_with(b"GNU.sparse.") => {
                return Err("GNU sparse files are not supported".into());
            }
            k if k.starts_with(b"SCHILY.xattr.") => {
                xattr_policy(&k[b"SCHILY.xattr.".len()..], val, &mut info)?;
            }
            k if k.starts_with(b"LIBARCHIVE.xattr.") => info.notes.push(format!(
                "xattr record `{}` skipped (LIBARCHIVE encoding not supported)",
                show(k)
            )),
            _ => {}
        }
    }
    Ok(info)
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// `[-]secs[.frac]`; times before the epoch are clamped to the epoch.
fn parse_time(v: &[u8]) -> Option<Timespec> {
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
    // Far-future times are clamped, not rejected (catalogue E74).
    let secs = parse_u64(secs).unwrap_or(u64::MAX);
    let mut nsec = 0i64;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for (i, d) in frac.iter().take(9).enumerate() {
            nsec += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
        }
    }
    if neg {
        return Some(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
    }
    Some(Timespec {
        tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
        tv_nsec: nsec,
    })
}

/// Which extended attributes a layer may carry (catalogue E35, E71, E72).
fn xattr_policy(name: &[u8], value: &[u8], info: &mut PaxInfo) -> Result<(), String> {
    if name.is_empty() || name.contains(&0) || name.len() > MAX_XATTR_NAME {
        return Err(format!("invalid xattr name `{}`", show(name)));
    }
    if value.len() > MAX_XATTR_VALUE {
        return Err(format!(
            "xattr `{}` value is larger than 64 KiB",
            show(name)
        ));
    }
    // trusted.overlay.* (and user.overlay.* under `userxattr` mounts) are
    // overlayfs metadata: a layer must not forge whiteouts or redirects.
    if name.starts_with(b"trusted.") || name.starts_with(b"user.overlay.") {
        return Err(format!("xattr `{}` is not allowed in a layer", show(name)));
    }
    if name.starts_with(b"user.") {
        info.xattrs.push((name.to_vec(), value.to_vec()));
    } else if name == b"security.capability" {
        let v = capability_v2(value).ok_or_else(|| {
            "security.capability is malformed or a v3 (namespaced) capability".to_string()
        })?;
        info.xattrs.push((name.to_vec(), v));
    } else {
        info.notes
            .push(format!("xattr `{}` skipped (not allowed)", show(name)));
    }
    Ok(())
}

/// Validates a `vfs_cap_data` value. v1/v2 pass unchanged; v3 is accepted
/// only with rootid 0 and is then rewritten as v2 (the same meaning in the
/// initial user namespace). Anything else is refused.
fn capability_v2(v: &[u8]) -> Option<Vec<u8>> {
    const REV_MASK: u32 = 0xff00_0000;
    const REV1: u32 = 0x0100_0000;
    const REV2: u32 = 0x0200_0000;
    const REV3: u32 = 0x0300_0000;
    let magic = u32::from_le_bytes(v.get(..4)?.try_into().ok()?);
    match (magic & REV_MASK, v.len()) {
        (REV1, 12) | (REV2, 20) => Some(v.to_vec()),
        (REV3, 24) if v[20..24] == [0, 0, 0, 0] => {
            let mut out = v[..20].to_vec();
            out[..4].copy_from_slice(&((magic & !REV_MASK) | REV2).to_le_bytes());
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time(b"12").map(|t| t.tv_sec), Some(12));
        let t = parse_time(b"12.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 500_000_000));
        assert_eq!(parse_time(b"-3.2").map(|t| t.tv_sec), Some(0));
        assert!(parse_time(b"1e9").is_none());
        assert!(parse_time(b"").is_none());
        assert!(parse_time(b"1.").is_none());
        assert_eq!(
            parse_time(b"99999999999999999999999").map(|t| t.tv_sec),
            Some(i64::MAX)
        );
    }

    #[test]
    fn caps() {
        let mut v2 = vec![0u8; 20];
        v2[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        assert_eq!(capability_v2(&v2), Some(v2.clone()));
        let mut v3 = vec![0u8; 24];
        v3[..4].copy_from_slice(&0x0300_0001u32.to_le_bytes());
        assert_eq!(capability_v2(&v3), Some(v2));
        v3[20] = 1;
        assert_eq!(capability_v2(&v3), None);
        assert_eq!(capability_v2(&[1, 2, 3]), None);
    }
}
