#![no_main]
//! Key grouping: never panics; every unit name is valid; no member has an
//! empty, `.` or `..` segment.
use libfuzzer_sys::fuzz_target;
use tarpool_fuzz::names::{discover, valid_image_name, Listed};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let listing: Vec<Listed> = text
        .split('\n')
        .take(256)
        .map(|k| Listed {
            key: k.to_string(),
            size: k.len() as u64,
            stamp: String::new(),
            modified: String::new(),
        })
        .collect();
    let d = discover(&listing);
    for u in &d.units {
        assert!(valid_image_name(&u.name), "{}", u.name);
        for o in &u.objects {
            assert!(
                o.member.split('/').all(|s| !matches!(s, "." | "..")) || o.member.is_empty(),
                "{}",
                o.member
            );
            assert!(
                !o.member.split('/').any(str::is_empty) || o.member.is_empty(),
                "{}",
                o.member
            );
        }
    }
    for r in &d.rejected {
        assert!(!r.key.contains('\n'));
    }
});
