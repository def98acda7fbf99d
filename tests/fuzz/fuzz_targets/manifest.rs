#![no_main]
//! The manifest step on arbitrary member lists and member contents: never
//! panics; errors are one line; every layer it returns names a member.
use libfuzzer_sys::fuzz_target;
use manifest::{Member, UnitKind};

fuzz_target!(|data: &[u8]| {
    // Input: NUL-separated records `name\x01content`; the first byte picks the unit kind.
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let unit = if kind & 1 == 0 {
        UnitKind::Prefix
    } else {
        UnitKind::Archive
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
    match manifest::parse(unit, &members, &mut read) {
        Ok(layout) => {
            for l in &layout.layers {
                assert!(
                    l.member.is_empty() || members.iter().any(|m| m.name == l.member),
                    "{l:?}"
                );
            }
        }
        Err(e) => assert!(!e.contains('\n') && !e.contains('\r'), "{e}"),
    }
});
