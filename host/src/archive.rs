//! The member index of an image archive (docker save, OCI archive): names,
//! offsets and sizes of its regular files, read from tar headers only. Member
//! bytes are never written anywhere; layers are streamed from their ranges.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};

use crate::core::names::printable;
use crate::error::Failure;
use crate::extract::view::{CheckError, Entry, EntryKind, TarCheck};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedMember {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

pub const MAX_MEMBERS: usize = 100_000;

/// Normalizes a member name: no leading `./` or `/`, `.` segments dropped,
/// `..` resolved lexically; `None` when it climbs out of the archive.
pub fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for seg in name.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// Indexes the regular files of the tar in `file`. Symlinks and hard links
/// between members (docker save deduplicates layers that way) resolve to
/// the member they name.
pub fn index(file: &File, check: &mut dyn TarCheck) -> Result<Vec<IndexedMember>, Failure> {
    let bad = |m: String| Failure::Input(format!("archive: {m}"));
    let mut regular: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut count = 0usize;
    let mut take = |entries: Vec<Entry>| -> Result<(), Failure> {
        for e in entries {
            count += 1;
            if count > MAX_MEMBERS {
                return Err(bad(format!("more than {MAX_MEMBERS} members")));
            }
            let name =
                String::from_utf8(e.path).map_err(|_| bad("member name is not UTF-8".into()))?;
            if e.kind == EntryKind::Regular {
                let first = regular
                    .insert(name.clone(), (e.data_offset, e.data_size))
                    .is_none();
                if !first {
                    return Err(bad(format!("member `{}` appears twice", printable(&name))));
                }
                continue;
            }
            if matches!(e.kind, EntryKind::Symlink | EntryKind::Hardlink) {
                let target =
                    String::from_utf8_lossy(e.link.as_deref().unwrap_or_default()).into_owned();
                let resolved = if e.kind == EntryKind::Symlink {
                    let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    normalize(&format!("{dir}/{target}"))
                } else {
                    normalize(&target)
                };
                match resolved {
                    Some(t) => links.push((name, t)),
                    None => {
                        return Err(bad(format!(
                            "link `{}` points out of the archive",
                            printable(&name)
                        )))
                    }
                }
            }
        }
        Ok(())
    };
    let checked = |r: Result<crate::extract::view::Progress, CheckError>| {
        r.map_err(|e| match e {
            CheckError::Host(m) => Failure::Retry(format!("archive: tar check: {m}")),
            e => bad(e.to_string()),
        })
    };
    // Only the headers are fed: the check says where the next one is, and
    // member data is skipped with a seek.
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| Failure::io("reading the archive", e))?;
        if n == 0 {
            break;
        }
        let p = checked(check.feed(pos, &buf[..n]))?;
        take(p.entries)?;
        pos += n as u64;
        if p.want > pos {
            r.seek(SeekFrom::Start(p.want))
                .map_err(|e| Failure::io("reading the archive", e))?;
            pos = p.want;
        }
    }
    let end = file
        .metadata()
        .map_err(|e| Failure::io("reading the archive", e))?
        .len();
    if pos > end {
        return Err(bad("the archive ends inside a member".into()));
    }
    let p = checked(check.finish(pos))?;
    take(p.entries)?;
    for (name, mut target) in links {
        let mut hops = 0;
        loop {
            if let Some(&(offset, size)) = regular.get(&target) {
                regular.entry(name.clone()).or_insert((offset, size));
                break;
            }
            hops += 1;
            if hops > 8 {
                break;
            }
            // A link to a link: only regular files are members; others stay out.
            target = match normalize(&target) {
                Some(t) if t != target => t,
                _ => break,
            };
        }
    }
    Ok(regular
        .into_iter()
        .map(|(name, (offset, size))| IndexedMember { name, offset, size })
        .collect())
}

/// Reads a whole member of at most `cap` bytes.
pub fn read_member(file: &File, m: &IndexedMember, cap: u64) -> Result<Vec<u8>, String> {
    if m.size > cap {
        return Err(format!(
            "member `{}` is {} bytes, over the {cap}-byte cap",
            m.name, m.size
        ));
    }
    let mut f = file;
    f.seek(SeekFrom::Start(m.offset))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(m.size as usize);
    f.take(m.size)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 != m.size {
        return Err(format!("member `{}` is cut short", m.name));
    }
    Ok(buf)
}

/// A reader over `len` bytes of `file` from `offset`.
pub fn range(mut file: File, offset: u64, len: u64) -> io::Result<io::Take<File>> {
    file.seek(SeekFrom::Start(offset))?;
    Ok(file.take(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> crate::wasm::TarSession<'static> {
        crate::wasm::test_steps()
            .tar_check(
                crate::extract::view::Mode::Archive,
                &crate::core::policy::Policy::default_policy(),
            )
            .unwrap()
    }

    #[test]
    fn normalize_names() {
        for (n, want) in [
            ("./manifest.json", Some("manifest.json")),
            ("/abs/x", Some("abs/x")),
            ("a/../b", Some("b")),
            ("../x", None),
            ("a/./b//c", Some("a/b/c")),
        ] {
            assert_eq!(normalize(n).as_deref(), want, "{n}");
        }
    }

    #[test]
    fn index_resolves_links_and_rejects_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&p).unwrap());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_cksum();
        b.append_data(&mut h.clone(), "abc/layer.tar", &b"xyz"[..])
            .unwrap();
        let mut l = tar::Header::new_ustar();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "def/layer.tar", "../abc/layer.tar")
            .unwrap();
        b.finish().unwrap();
        drop(b);
        let f = File::open(&p).unwrap();
        let idx = index(&f, &mut session()).unwrap();
        let names: Vec<&str> = idx.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["abc/layer.tar", "def/layer.tar"]);
        assert_eq!(read_member(&f, &idx[1], 10).unwrap(), b"xyz");
        assert!(read_member(&f, &idx[1], 2).unwrap_err().contains("cap"));

        let mut b = tar::Builder::new(File::create(&p).unwrap());
        b.append_data(&mut h.clone(), "x", &b"xyz"[..]).unwrap();
        b.append_data(&mut h.clone(), "./x", &b"xyz"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let e = index(&File::open(&p).unwrap(), &mut session()).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }
}
