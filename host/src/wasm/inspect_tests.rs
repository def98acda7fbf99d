//! Tests of the inspect steps' contract on reading files: what a component
//! may want to read, and what is refused as a broken component.

use std::fs;

use sha2::{Digest as _, Sha256};

use super::*;
use crate::extract::view::{Entry, EntryKind};

/// An `inspect-contents-step` component written as text: it answers
/// nothing about images, entries or contents, and wants the contents of
/// the entries `wants` (indexes in each batch).
fn wanting(wants: &[u32]) -> Vec<u8> {
    // Memory: at 0 the list `want-contents` returns (pointer 16, length),
    // at 8 an empty list and a `none`, at 16 the indexes.
    let le = |x: u32| {
        x.to_le_bytes()
            .iter()
            .map(|b| format!("\\{b:02x}"))
            .collect::<String>()
    };
    let data = format!(
        "{}{}{}{}",
        le(16),
        le(wants.len() as u32),
        le(0).repeat(2),
        wants.iter().map(|&w| le(w)).collect::<String>()
    );
    let p16 = "i32 ".repeat(16);
    wat::parse_str(format!(
        r#"(component
            (core module $m
                (memory (export "mem") 2)
                (data (i32.const 0) "{data}")
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
                (func (export "check-image") (param {p16}) (result i32) i32.const 8)
                (func (export "check-entries") (param i32 i32 i32) (result i32) i32.const 8)
                (func (export "want-contents") (param i32 i32 i32) (result i32) i32.const 0)
                (func (export "check-contents")
                    (param i32 i32 i32 i32 i32 i32 i32 i64 i32 i32 i32 i32 i32 i32 i32)
                    (result i32) i32.const 8))
            (core instance $i (instantiate $m))
            (type $rc0 (record (field "env" (list string)) (field "entrypoint" (list string))
                (field "cmd" (list string)) (field "working-dir" string) (field "user" string)))
            (export $rc "runtime-config" (type $rc0))
            (type $ii0 (record (field "name" string) (field "format" string) (field "layers" u32)
                (field "config" (option $rc))))
            (export $ii "image-info" (type $ii0))
            (type $et0 (enum "regular" "directory" "symlink" "hardlink" "char-device"
                "block-device" "fifo" "whiteout" "opaque"))
            (export $et "entry-type" (type $et0))
            (type $eh0 (record (field "path" string) (field "kind" $et) (field "mode" u32)
                (field "uid" u32) (field "gid" u32) (field "size" u64)
                (field "link" (option string)) (field "xattr-names" (list string))))
            (export $eh "entry-header" (type $eh0))
            (type $v0 (enum "allow" "deny" "skip"))
            (export $v "verdict" (type $v0))
            (type $a0 (record (field "verdict" $v) (field "rule" string) (field "reason" string)))
            (export $a "answer" (type $a0))
            (type $ea0 (record (field "index" u32) (field "answer" $a)))
            (export $ea "entry-answer" (type $ea0))
            (func $ci (param "image" $ii) (result (list $a))
                (canon lift (core func $i "check-image") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
            (func $ce (param "layer" u32) (param "entries" (list $eh)) (result (list $ea))
                (canon lift (core func $i "check-entries") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
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

fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
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

/// The steps with the component `wasm` as their one inspect step.
fn steps_with(tag: &str, wasm: &[u8]) -> Steps {
    let dir = super::tests::tempdir(tag);
    let file = dir.join("step.wasm");
    fs::write(&file, wasm).unwrap();
    let config = StepsConfig {
        inspect: vec![ComponentSpec::File {
            path: file,
            sha256: hex::encode(Sha256::digest(wasm)),
        }],
        ..StepsConfig::default()
    };
    Steps::load_with(&dir, &config).unwrap()
}

/// What the steps want of the batch `entries` when the component wants
/// `wants`: the indexes and places wanted, or the one-line failure.
fn check(wants: &[u32], entries: &[Entry], expected: Result<Vec<(usize, Vec<usize>)>, &str>) {
    let steps = steps_with("wants", &wanting(wants));
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
    let steps = steps_with("none", &wanting(&[0]));
    let e = entry("etc/shadow", EntryKind::Regular, 3);
    let said = steps
        .inspectors()
        .check_contents(1, &e, &[0], b"hi\n")
        .unwrap();
    assert!(said.is_empty(), "{said:?}");
}
