#![no_main]
//! The manifest step on arbitrary member lists and member contents: never
//! panics; errors are one line; every layer it returns names a member (a
//! registry image's, a blob by digest); `none` only for a prefix.
use libfuzzer_sys::fuzz_target;
use manifest::{ManifestOptions, Member, UnitKind};

fuzz_target!(|data: &[u8]| {
    // Input: NUL-separated records `name\x01content`. The first byte picks
    // the unit kind (bit 0, or bit 3 for a registry image, whose members
    // are only `manifest` and the rest read by name), the architecture
    // (bit 1), a variant (bit 2) and the index depth (bits 4-6).
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let unit = if kind & 8 != 0 {
        UnitKind::Registry
    } else if kind & 1 == 0 {
        UnitKind::Prefix
    } else {
        UnitKind::Archive
    };
    let options = ManifestOptions {
        architecture: if kind & 2 == 0 { "amd64" } else { "arm64" }.into(),
        arch_variant: (kind & 4 != 0).then(|| "v8".into()),
        max_index_depth: u32::from((kind >> 4) & 7),
        ..ManifestOptions::default()
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for rec in rest.split(|b| *b == 0).take(64) {
        let mut it = rec.splitn(2, |b| *b == 1);
        let name = String::from_utf8_lossy(it.next().unwrap_or_default()).into_owned();
        let content = it.next().unwrap_or_default().to_vec();
        files.push((name, content));
    }
    let members: Vec<Member> = files
        .iter()
        .filter(|(n, _)| unit != UnitKind::Registry || n == "manifest")
        .map(|(n, c)| Member {
            name: n.clone(),
            size: c.len() as u64,
        })
        .collect();
    let mut read = |name: &str| -> Result<Vec<u8>, String> {
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| format!("no member {name}"))
    };
    match manifest::parse(unit, &members, &options, &mut read) {
        Ok(Some(layout)) => {
            for l in &layout.layers {
                let by_digest = l.member.strip_prefix("blobs/sha256/").is_some_and(|h| {
                    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                });
                assert!(
                    match unit {
                        UnitKind::Registry => by_digest,
                        _ => l.member.is_empty() || members.iter().any(|m| m.name == l.member),
                    },
                    "{l:?}"
                );
            }
            if let Some(c) = &layout.config {
                for list in [&c.env, &c.entrypoint, &c.cmd] {
                    assert!(list.len() <= manifest::MAX_CONFIG_ENTRIES);
                }
            }
        }
        Ok(None) => assert_eq!(unit, UnitKind::Prefix),
        Err(e) => assert!(!e.contains('\n') && !e.contains('\r'), "{e}"),
    }
});
