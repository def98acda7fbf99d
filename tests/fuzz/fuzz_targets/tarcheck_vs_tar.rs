#![no_main]
//! Differential: the same bytes through tarcheck and through the `tar`
//! crate (tar-rs). Whenever tarcheck accepts a stream, tar-rs must read the
//! same entries in the same order: the same paths, kinds, sizes, data
//! offsets and link targets. A rejection by tarcheck is always acceptable
//! (it is the stricter reader by design); a tar-rs error on a stream
//! tarcheck accepted is a finding, except the documented cases below.
//!
//! Input: the first byte picks the mode (bit 0: layer or archive); the rest
//! is the stream.
//!
//! What is compared, after normalising tar-rs' view the way tarcheck
//! reports entries (each rule mirrors `guest-steps/tarcheck/src/lib.rs`):
//! - Paths: tarcheck reports `normalize(raw)` (leading `/`, empty and `.`
//!   components dropped; `..` refused). tar-rs' raw `path_bytes()` gets the
//!   same treatment here, `..` kept so that it shows up as a mismatch.
//! - NUL: tar-rs drops only one trailing NUL of a GNU long name or link;
//!   tarcheck (like GNU tar and Go) reads it as a C string and refuses a
//!   NUL inside. tar-rs' names are cut at their first NUL here.
//! - Kinds: `0`, `7` and NUL are regular files, but a NUL-type entry whose
//!   name ends in `/` is a directory (pre-POSIX; GNU tar and Go agree).
//!   tar-rs reports the raw type, so the rule is applied here.
//! - Entries tarcheck leaves out: the root directory (`./`, `/`); in
//!   archive mode device nodes and FIFOs (not members of an image archive).
//!   The policy here allows everything else that a policy can skip
//!   (devices, FIFOs, absolute symlinks, duplicates), so no other entry is
//!   left out. PAX global headers (`g`) are returned by tar-rs as entries;
//!   tarcheck notes and ignores them: they are dropped here.
//! - Whiteouts (layer mode): `.wh.NAME` is reported as a whiteout of
//!   `NAME`, `.wh..wh..opq` as an opaque marker of its directory.
//! - Sizes: tarcheck reports a data span only for regular files and refuses
//!   a nonzero size on every other kind, so tar-rs' `size()` must equal the
//!   span's size for regular files and be 0 otherwise; the data offset must
//!   equal tar-rs' `raw_file_position()`, and tar-rs must read the data.
//! - Link targets: symlinks verbatim; hardlinks normalised like paths.
//!
//! tar-rs errors that are not parser differentials (tar-rs stops, it does
//! not read other entries), excused when the stream shows the cause:
//! - a header whose checksum is its signed byte sum: tarcheck accepts it
//!   as GNU tar and Go do; tar-rs only knows the unsigned sum.
//! - a size field with no digits (all NULs or spaces): tarcheck reads 0 as
//!   Go's archive/tar does; tar-rs refuses the field.
//!   The entries before the error are still compared.
use libfuzzer_sys::fuzz_target;
use std::io::Read;
use tarcheck::{Checker, Entry, EntryKind, Mode, Policy, Verdict};

#[derive(Debug, PartialEq)]
struct Seen {
    path: Vec<u8>,
    kind: EntryKind,
    size: u64,
    offset: u64,
    link: Option<Vec<u8>>,
}

/// Runs tarcheck over the whole stream; `None` when it rejects.
fn tarcheck(data: &[u8], mode: Mode) -> Option<Vec<Entry>> {
    let policy = Policy {
        max_entries: 10_000,
        max_bytes: 1 << 40,
        max_ext_header_bytes: 64 << 10,
        device_nodes: Verdict::Allow,
        fifos: Verdict::Allow,
        absolute_symlinks: Verdict::Allow,
        duplicates: Verdict::Allow,
        ..Policy::default()
    };
    let mut c = Checker::new(mode, policy);
    let mut entries = c.feed(0, data).ok()?.entries;
    entries.extend(c.finish(data.len() as u64).ok()?.entries);
    Some(entries)
}

fn cstr(b: &[u8]) -> &[u8] {
    b.split(|c| *c == 0).next().unwrap_or_default()
}

/// tarcheck's `normalize` without its limits, keeping `..`.
fn normalize(raw: &[u8]) -> Vec<u8> {
    let comps: Vec<&[u8]> = raw
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    comps.join(&b'/')
}

fn split_last(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[], p),
    }
}

/// The header checksum matches only the signed byte sum.
fn signed_checksum_only(block: &[u8]) -> bool {
    let f = &block[148..156];
    let digits: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Ok(stored) = i64::from_str_radix(std::str::from_utf8(&digits).unwrap_or("x"), 8) else {
        return false;
    };
    let mut unsigned = 0i64;
    let mut signed = 0i64;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    stored == signed && stored != unsigned
}

/// A size field without digits (tarcheck: 0; tar-rs: an error).
fn digitless_size(block: &[u8]) -> bool {
    let f = &block[124..136];
    f[0] & 0x80 == 0 && !f.iter().any(u8::is_ascii_digit)
}

/// Some header block at or after `from` has a documented cause for a
/// tar-rs error.
fn excused(data: &[u8], from: u64) -> bool {
    let from = usize::try_from(from).unwrap_or(usize::MAX);
    data.get(from..)
        .unwrap_or_default()
        .chunks_exact(512)
        .any(|b| b.iter().any(|x| *x != 0) && (signed_checksum_only(b) || digitless_size(b)))
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, data)) = input.split_first() else {
        return;
    };
    let mode = if sel & 1 == 0 {
        Mode::Layer
    } else {
        Mode::Archive
    };
    let Some(checked) = tarcheck(data, mode) else {
        return; // tarcheck refused: always acceptable.
    };
    let want: Vec<Seen> = checked
        .iter()
        .map(|e| Seen {
            path: e.path.clone(),
            kind: e.kind,
            size: e.data_size,
            offset: e.data_offset,
            link: e.link.clone(),
        })
        .collect();

    let mut got = Vec::new();
    let mut archive = tar::Archive::new(data);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => panic!("tar-rs cannot start: {e}"),
    };
    // Where the next header can be, for excusing an error.
    let mut next = 0u64;
    let mut failed = None;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        let raw_path = cstr(&entry.path_bytes()).to_vec();
        let raw_link = entry.link_name_bytes().map(|l| cstr(&l).to_vec());
        let ty = entry.header().entry_type();
        let flag = entry.header().as_bytes()[156];
        let size = entry.size();
        let offset = entry.raw_file_position();
        next = offset.saturating_add(size.div_ceil(512).saturating_mul(512));
        let mut content = Vec::new();
        if let Err(e) = entry.read_to_end(&mut content) {
            panic!("tarcheck accepted, tar-rs cannot read the data of {raw_path:?}: {e}");
        }
        assert_eq!(content.len() as u64, size, "{raw_path:?}");

        use tar::EntryType as T;
        let kind = match ty {
            T::Regular if flag == 0 && raw_path.ends_with(b"/") => EntryKind::Directory,
            T::Regular | T::Continuous => EntryKind::Regular,
            T::Directory => EntryKind::Directory,
            T::Symlink => EntryKind::Symlink,
            T::Link => EntryKind::Hardlink,
            T::Char => EntryKind::CharDevice,
            T::Block => EntryKind::BlockDevice,
            T::Fifo => EntryKind::Fifo,
            T::XGlobalHeader => continue,
            other => panic!("tarcheck accepted, tar-rs reads a {other:?} entry {raw_path:?}"),
        };
        let mut path = normalize(&raw_path);
        if path.is_empty() && kind == EntryKind::Directory {
            continue; // the root: skipped by tarcheck
        }
        if mode == Mode::Archive
            && matches!(
                kind,
                EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo
            )
        {
            continue; // not a member of an image archive
        }
        let mut out_kind = kind;
        if mode == Mode::Layer {
            let (parent, base) = split_last(&path);
            if base == b".wh..wh..opq" {
                out_kind = EntryKind::Opaque;
                path = parent.to_vec();
            } else if let Some(victim) = base.strip_prefix(b".wh.") {
                out_kind = EntryKind::Whiteout;
                let mut p = parent.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(victim);
                path = p;
            }
        }
        let link = match kind {
            EntryKind::Symlink => raw_link,
            EntryKind::Hardlink => raw_link.map(|l| normalize(&l)),
            _ => None,
        };
        if out_kind == EntryKind::Regular {
            got.push(Seen {
                path,
                kind: out_kind,
                size,
                offset,
                link,
            });
        } else {
            // No data: the size field must be 0 (tarcheck refuses others).
            assert_eq!(
                size, 0,
                "tarcheck accepted a {kind:?} {raw_path:?} of size {size}"
            );
            got.push(Seen {
                path,
                kind: out_kind,
                size: 0,
                offset: 0,
                link,
            });
        }
    }
    if let Some(e) = failed {
        assert!(
            excused(data, next),
            "tarcheck accepted, tar-rs fails after {} entries: {e}\ntarcheck: {want:#?}",
            got.len()
        );
        assert!(
            got.len() <= want.len(),
            "tar-rs: {got:#?}\ntarcheck: {want:#?}"
        );
        assert_eq!(got[..], want[..got.len()]);
        return;
    }
    assert_eq!(got, want, "tar-rs (left) and tarcheck (right) disagree");
});
