#![no_main]
//! Layer extraction on arbitrary bytes, as the service does it: the tar
//! check (here its native build) parses, the host's extraction applies what
//! it returns. Never panics, never touches anything outside the layer root
//! (a sentinel directory beside it stays empty).
use libfuzzer_sys::fuzz_target;
use std::fs::File;
use tarpool_fuzz::extract::{apply_layer, view};

/// The native tar check behind the host's `TarCheck` trait.
struct Native(tarcheck::Checker);

fn progress(r: Result<tarcheck::Progress, tarcheck::Rejection>) -> Result<view::Progress, view::CheckError> {
    let p = r.map_err(|r| view::CheckError::Rejected {
        path: r.path,
        rule: r.rule,
        reason: r.reason,
    })?;
    Ok(view::Progress {
        entries: p
            .entries
            .into_iter()
            .map(|e| view::Entry {
                path: e.path,
                kind: match e.kind {
                    tarcheck::EntryKind::Regular => view::EntryKind::Regular,
                    tarcheck::EntryKind::Directory => view::EntryKind::Directory,
                    tarcheck::EntryKind::Symlink => view::EntryKind::Symlink,
                    tarcheck::EntryKind::Hardlink => view::EntryKind::Hardlink,
                    tarcheck::EntryKind::CharDevice => view::EntryKind::CharDevice,
                    tarcheck::EntryKind::BlockDevice => view::EntryKind::BlockDevice,
                    tarcheck::EntryKind::Fifo => view::EntryKind::Fifo,
                    tarcheck::EntryKind::Whiteout => view::EntryKind::Whiteout,
                    tarcheck::EntryKind::Opaque => view::EntryKind::Opaque,
                },
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime_sec: e.mtime_sec,
                mtime_nsec: e.mtime_nsec,
                link: e.link,
                dev_major: e.dev_major,
                dev_minor: e.dev_minor,
                xattrs: e.xattrs.into_iter().map(|x| (x.name, x.value)).collect(),
                data_offset: e.data_offset,
                data_size: e.data_size,
            })
            .collect(),
        decisions: Vec::new(),
        want: p.want,
    })
}

impl view::TarCheck for Native {
    fn feed(&mut self, offset: u64, bytes: &[u8]) -> Result<view::Progress, view::CheckError> {
        progress(self.0.feed(offset, bytes))
    }
    fn finish(&mut self, total: u64) -> Result<view::Progress, view::CheckError> {
        progress(self.0.finish(total))
    }
}

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
