//! Tests of the inspect steps' contract on reading files: what a component
//! may want to read, and what is refused as a broken component.

use std::fs;

use sha2::{Digest as _, Sha256};

use super::*;
use crate::extract::view::{Entry, EntryKind};

/// An `inspect-contents-step` component written as text: it answers
/// nothing about images; in each batch it skips the entries `skips` and
/// wants the contents of the entries `wants` (indexes in the batch); it
/// answers `contents` (a verdict: 0 allow, 1 deny, 2 skip; rule `r`,
/// reason `x`) about every file's bytes, or `none`.
pub(crate) fn component(skips: &[u32], wants: &[u32], contents: Option<u8>) -> Vec<u8> {
    // Memory: at 0 the list `want-contents` returns (its indexes at 4096),
    // at 8 an empty list, at 16 the list `check-entries` returns (its
    // records at 64), at 24 the `option<answer>` of `check-contents`, at
    // 48 the strings `r` and `x`. The host's arguments go at 128 KiB.
    let mut mem = vec![0u8; 4096 + 4 * wants.len()];
    let put =
        |mem: &mut Vec<u8>, at: usize, x: u32| mem[at..at + 4].copy_from_slice(&x.to_le_bytes());
    put(&mut mem, 0, 4096);
    put(&mut mem, 4, wants.len() as u32);
    put(&mut mem, 16, 64);
    put(&mut mem, 20, skips.len() as u32);
    mem[24] = 1;
    mem[28] = contents.unwrap_or(0);
    for (at, s) in [(32, 48), (40, 49)] {
        put(&mut mem, at, s);
        put(&mut mem, at + 4, 1);
    }
    mem[48] = b'r';
    mem[49] = b'x';
    for (k, &i) in skips.iter().enumerate() {
        let r = 64 + 24 * k;
        put(&mut mem, r, i);
        mem[r + 4] = 2;
        for (at, s) in [(r + 8, 48), (r + 16, 49)] {
            put(&mut mem, at, s);
            put(&mut mem, at + 4, 1);
        }
    }
    for (k, &w) in wants.iter().enumerate() {
        put(&mut mem, 4096 + 4 * k, w);
    }
    let data: String = mem.iter().map(|b| format!("\\{b:02x}")).collect();
    let said = if contents.is_some() { 24 } else { 8 };
    let p16 = "i32 ".repeat(16);
    let types = include_str!("../../../tests/support/inspect-types.wat");
    wat::parse_str(format!(
        r#"(component
            (core module $m
                (memory (export "mem") 16)
                (data (i32.const 0) "{data}")
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 131072)
                (func (export "check-image") (param {p16}) (result i32) i32.const 8)
                (func (export "check-entries") (param i32 i32 i32) (result i32) i32.const 16)
                (func (export "want-contents") (param i32 i32 i32) (result i32) i32.const 0)
                (func (export "check-contents")
                    (param i32 i32 i32 i32 i32 i32 i32 i64 i32 i32 i32 i32 i32 i32 i32)
                    (result i32) i32.const {said}))
            (core instance $i (instantiate $m))
            {types}
            (func $wc (param "layer" u32) (param "entries" (list $eh)) (result (list u32))
                (canon lift (core func $i "want-contents") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
            (func $cc (param "layer" u32) (param "file" $eh) (param "bytes" (list u8)) (result (option $a))
                (canon lift (core func $i "check-contents") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
            (instance $inst (export "check-image" (func $ci)) (export "check-entries" (func $ce)))
            (export "tarpool:steps/inspect@0.1.2" (instance $inst))
            (instance $cinst (export "want-contents" (func $wc)) (export "check-contents" (func $cc)))
            (export "tarpool:steps/inspect-contents@0.1.2" (instance $cinst)))"#
    ))
    .unwrap()
}

/// The component of [`component`] that wants `wants` and says nothing.
fn wanting(wants: &[u32]) -> Vec<u8> {
    component(&[], wants, None)
}

pub(crate) fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
        link: None,
        dev_major: 0,
        dev_minor: 0,
        xattrs: Vec::new(),
        data_offset: 512,
        data_size: size,
        contents_wanted: false,
    }
}

/// The steps with the components `wasms` as their inspect steps, in order.
pub(crate) fn steps_with(tag: &str, wasms: &[&[u8]]) -> Steps {
    let dir = super::tests::tempdir(tag);
    let mut inspect = Vec::new();
    for (i, wasm) in wasms.iter().enumerate() {
        let file = dir.join(format!("step{i}.wasm"));
        fs::write(&file, wasm).unwrap();
        inspect.push(ComponentSpec::File {
            path: file,
            sha256: hex::encode(Sha256::digest(wasm)),
        });
    }
    let config = StepsConfig {
        inspect,
        ..StepsConfig::default()
    };
    Steps::load_with(&dir, &config).unwrap()
}

/// What the steps want of the batch `entries` when the component wants
/// `wants`: the indexes and places wanted, or the one-line failure.
fn check(wants: &[u32], entries: &[Entry], expected: Result<Vec<(usize, Vec<usize>)>, &str>) {
    let steps = steps_with("wants", &[&wanting(wants)]);
    assert_eq!(
        steps.chains().last().map(|c| c.world),
        Some("inspect-contents-step")
    );
    match (steps.inspectors().check_entries(1, entries), expected) {
        (Ok(j), Ok(w)) => assert_eq!(j.wants, w, "{wants:?}"),
        (Err(StepError::Trapped(e)), Err(why)) => {
            assert!(e.contains(why) && !e.contains('\n'), "{e} lacks {why}");
            assert!(e.starts_with("inspect step "), "{e}");
        }
        (got, want) => panic!("{wants:?}: got {got:?}, expected {want:?}"),
    }
}

#[test]
fn what_a_step_may_want_to_read_is_checked() {
    let small = entry("etc/shadow", EntryKind::Regular, 900);
    let dir = entry("etc", EntryKind::Directory, 0);
    let big = entry("etc/big.pem", EntryKind::Regular, 64 * 1024 + 1);
    let edge = entry("etc/edge.pem", EntryKind::Regular, 64 * 1024);
    check(&[], std::slice::from_ref(&small), Ok(vec![]));
    check(&[0], std::slice::from_ref(&small), Ok(vec![(0, vec![0])]));
    check(
        &[1, 0],
        &[dir.clone(), edge.clone()],
        Err("wanted the contents of `etc`, which is not a regular file"),
    );
    check(&[1], &[dir.clone(), edge], Ok(vec![(1, vec![0])]));
    check(
        &[0],
        &[big],
        Err("wanted the contents of `etc/big.pem`, 65537 bytes (at most 65536)"),
    );
    check(
        &[5],
        &[small.clone(), dir],
        Err("wanted the contents of entry 5 of a batch of 2"),
    );
    check(
        &[0, 0],
        &[small],
        Err("wanted the contents of `etc/shadow` twice"),
    );
}

/// Bytes a step answers `none` about pass with no answer.
#[test]
fn a_file_a_step_says_nothing_about_passes_unanswered() {
    let steps = steps_with("none", &[&wanting(&[0])]);
    let e = entry("etc/shadow", EntryKind::Regular, 3);
    let said = steps
        .inspectors()
        .check_contents(1, &e, &[0], b"hi\n")
        .unwrap();
    assert!(said.is_empty(), "{said:?}");
}

/// In a chain, each step's indexes are into the batch it was shown (less
/// what the steps before it skipped); a file one step wants and another
/// skips by its header is not read; a step's own skip outweighs its want.
#[test]
fn wants_are_mapped_through_the_chain() {
    let batch = [
        entry("a", EntryKind::Regular, 1),
        entry("b", EntryKind::Regular, 1),
        entry("c", EntryKind::Regular, 1),
    ];
    let check = |chain: &[Vec<u8>], expected: Vec<(usize, Vec<usize>)>| {
        let wasms: Vec<&[u8]> = chain.iter().map(|w| w.as_slice()).collect();
        let steps = steps_with("chain", &wasms);
        let j = steps.inspectors().check_entries(1, &batch).unwrap();
        assert_eq!(j.wants, expected);
    };
    // The first skips `a` (and wants it: not read) and wants `c`; the
    // second is shown `b`, `c` and wants its 1 (`c`).
    check(
        &[component(&[0], &[0, 2], None), component(&[], &[1], None)],
        vec![(2, vec![0, 1])],
    );
    // The second skips what the first wanted (its 0: `a`).
    check(
        &[component(&[], &[0, 1], None), component(&[0], &[], None)],
        vec![(1, vec![0])],
    );
    // The second is shown `b`, `c`: its 0 is `b`.
    check(
        &[component(&[0], &[], None), component(&[], &[0], None)],
        vec![(1, vec![1])],
    );
}

/// The answers about a file's bytes: each wanting step in order, until
/// one denies or skips; an allow goes on to the next.
#[test]
fn contents_answers_go_down_the_chain_until_a_deny_or_skip() {
    let e = entry("etc/shadow", EntryKind::Regular, 3);
    let check = |verdicts: &[Option<u8>], expected: &[(usize, Verdict)]| {
        let chain: Vec<Vec<u8>> = verdicts.iter().map(|&v| component(&[], &[0], v)).collect();
        let wasms: Vec<&[u8]> = chain.iter().map(|w| w.as_slice()).collect();
        let steps = steps_with("said", &wasms);
        let places: Vec<usize> = (0..chain.len()).collect();
        let said = steps
            .inspectors()
            .check_contents(1, &e, &places, b"hi\n")
            .unwrap();
        let got: Vec<(usize, Verdict)> = said
            .iter()
            .map(|a| {
                let place = (0..chain.len())
                    .find(|&p| steps.inspectors().label(p) == a.component)
                    .unwrap();
                assert_eq!((a.rule.as_str(), a.reason.as_str()), ("r", "x"));
                (place, a.verdict)
            })
            .collect();
        assert_eq!(got, expected, "{verdicts:?}");
    };
    check(&[None, None], &[]);
    check(
        &[Some(0), Some(2), Some(1)],
        &[(0, Verdict::Allow), (1, Verdict::Skip)],
    );
    check(&[None, Some(1), Some(2)], &[(1, Verdict::Deny)]);
}
