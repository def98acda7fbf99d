#![no_main]
//! The user step (`guest-steps/user`): never panics on any /etc/passwd,
//! /etc/group or `User`; an error is one bounded line, a home directory
//! holds no control character. The input: the spec, then the two files,
//! separated by NUL bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let spec = String::from_utf8_lossy(parts.next().unwrap_or(b""));
    let passwd = parts.next();
    let group = parts.next();
    match user::resolve_user(&spec, passwd, group) {
        Ok(ids) => {
            assert!(!ids.home.chars().any(guest_text::unsafe_char), "{:?}", ids.home);
            assert!(ids.groups.len() <= user::MAX_GROUPS);
        }
        Err(e) => assert!(!e.contains('\n') && e.chars().count() <= 200, "{e}"),
    }
});
