#![no_main]
//! Layer extraction on arbitrary bytes, as the service does it: the tar
//! check (here its native build) parses, the host's extraction applies what
//! it returns. Never panics, never touches anything outside the layer root
//! (a sentinel directory beside it stays empty).
use libfuzzer_sys::fuzz_target;
use std::fs::File;
use tarpool_fuzz::extract::{apply_layer, native::NativeCheck as Native};

fuzz_target!(|data: &[u8]| {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("root");
    let sentinel = top.path().join("sentinel");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&sentinel).unwrap();
    let dir = File::open(&root).unwrap();
    let policy = tarcheck::Policy {
        max_entries: 10_000,
        max_bytes: 16 << 20,
        ..tarcheck::Policy::default()
    };
    let mut check = Native(tarcheck::Checker::new(tarcheck::Mode::Layer, policy));
    let _ = apply_layer(rustix::fd::AsFd::as_fd(&dir), data, &mut check);
    assert!(
        std::fs::read_dir(&sentinel).unwrap().next().is_none(),
        "something was written outside the root"
    );
    let names: Vec<_> = std::fs::read_dir(top.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
});
