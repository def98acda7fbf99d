#![no_main]
//! The listing step (`guest-steps/listing`): never panics on any page of a
//! registry's catalog or tag list; every name it passes is of the
//! distribution grammar, every message one bounded line, and a next page a
//! `/v2/` path of printable characters. The input: a byte choosing the
//! list (even: the catalog; odd: the tags of `team/api`), then the body,
//! then (after a NUL byte, if any) the `Link` header.
use guest_text::distribution::{valid_repo, valid_tag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let of = if which % 2 == 0 {
        listing::ListOf::Repositories
    } else {
        listing::ListOf::Tags("team/api".into())
    };
    let mut parts = rest.splitn(2, |&b| b == 0);
    let body = parts.next().unwrap_or(b"");
    let link = parts.next().map(String::from_utf8_lossy);
    let one_line = |m: &str| !m.contains('\n') && m.chars().count() <= 203;
    match listing::read_page(&of, body, link.as_deref()) {
        Ok(p) => {
            let valid: fn(&str) -> bool = match of {
                listing::ListOf::Repositories => valid_repo,
                listing::ListOf::Tags(_) => valid_tag,
            };
            assert!(p.names.iter().all(|n| valid(n)), "{:?}", p.names);
            assert!(p.refused.len() <= listing::MAX_REFUSED_KEPT);
            assert!(p.refused.len() <= p.refused_count as usize);
            assert!(p.refused.iter().all(|r| one_line(r)), "{:?}", p.refused);
            if let Some(n) = p.next {
                let pq = &n.path_and_query;
                assert!(pq.starts_with("/v2/") && pq.len() <= listing::MAX_NEXT_CHARS, "{pq}");
                assert!(pq.bytes().all(|b| b.is_ascii_graphic()), "{pq}");
            }
        }
        Err(e) => assert!(one_line(&e), "{e}"),
    }
});
