#![no_main]
//! The tar check never panics; the data spans it reports lie inside the
//! stream, in order and without overlap; its outcome does not depend on how
//! the stream is chunked or whether the host skips to `want`.
use libfuzzer_sys::fuzz_target;
use tarcheck::{Checker, Decision, Entry, EntryKind, Mode, Policy, Rejection, Verdict};

#[derive(Debug, PartialEq)]
enum Outcome {
    Done(Vec<Entry>, Vec<Decision>),
    Rejected(Rejection),
}

fn one_line(s: &str) {
    assert!(!s.chars().any(char::is_control), "{s:?}");
    assert!(s.chars().count() <= 210, "{s:?}");
}

fn run(data: &[u8], mode: Mode, policy: &Policy, chunk: usize, honour: bool) -> Outcome {
    let mut c = Checker::new(mode, policy.clone());
    let (mut entries, mut decisions) = (Vec::new(), Vec::new());
    let len = data.len() as u64;
    let mut pos = 0u64;
    let outcome = loop {
        if pos >= len {
            break match c.finish(len) {
                Ok(p) => {
                    assert!(p.entries.is_empty() && p.decisions.is_empty());
                    Outcome::Done(entries, decisions)
                }
                Err(r) => Outcome::Rejected(r),
            };
        }
        let end = pos.saturating_add(chunk as u64).min(len);
        match c.feed(pos, &data[pos as usize..end as usize]) {
            Ok(p) => {
                assert!(p.want >= end);
                entries.extend(p.entries);
                decisions.extend(p.decisions);
                pos = if honour { p.want } else { end };
            }
            Err(r) => {
                // Final: later calls repeat it.
                assert_eq!(c.finish(len).as_ref().err(), Some(&r));
                break Outcome::Rejected(r);
            }
        }
    };
    match &outcome {
        Outcome::Done(entries, decisions) => {
            let mut prev_end = 0u64;
            let mut prev_off = None;
            for e in entries {
                assert!(!e.path.starts_with(b"/") && !e.path.ends_with(b"/"));
                assert!(
                    !e.path
                        .split(|b| *b == b'/')
                        .any(|c| c == b".." || c == b"." || c.is_empty())
                        || (e.path.is_empty() && e.kind == EntryKind::Opaque)
                );
                if e.kind != EntryKind::Regular {
                    assert_eq!((e.data_offset, e.data_size), (0, 0));
                    continue;
                }
                let end = e
                    .data_offset
                    .checked_add(e.data_size)
                    .expect("span overflows");
                assert!(end <= len, "span past the stream");
                assert!(e.data_offset >= prev_end, "spans overlap");
                assert!(
                    prev_off.is_none_or(|p| e.data_offset > p),
                    "spans out of order"
                );
                assert_eq!(e.data_offset % 512, 0);
                prev_end = end;
                prev_off = Some(e.data_offset);
            }
            for d in decisions {
                one_line(&d.path);
                one_line(&d.detail);
            }
        }
        Outcome::Rejected(r) => {
            one_line(&r.path);
            one_line(&r.reason);
        }
    }
    outcome
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
    let chunk = [1, 7, 100, 512, 513, 4096, 65536, usize::MAX][usize::from(sel >> 1 & 7)];
    let honour = sel & 0x10 == 0;
    let mut policy = Policy {
        max_entries: 10_000,
        max_bytes: 1 << 40,
        max_ext_header_bytes: 64 << 10,
        ..Policy::default()
    };
    if sel & 0x20 != 0 {
        policy.device_nodes = Verdict::Allow;
        policy.duplicates = Verdict::Reject;
        policy.setid = Verdict::Strip;
        policy.other_xattrs = Verdict::Reject;
        policy.absolute_symlinks = Verdict::Reject;
        policy.max_depth = 8;
        policy.max_name_bytes = 16;
        policy.max_path_bytes = 64;
    }
    let got = run(data, mode, &policy, chunk, honour);
    // The same stream fed whole, without skipping, gives the same outcome.
    let whole = run(data, mode, &policy, usize::MAX, false);
    assert_eq!(got, whole);
});
