//! The tar check run natively (feature `native-check`): the same crate the
//! guest is built from, outside WebAssembly, behind [`view::TarCheck`]. For
//! the fuzz targets, and for the unpack benchmark's measure of what the
//! sandbox costs (`bench-native-check`, `TARPOOL_BENCH_NATIVE_CHECK`). The
//! service never uses it otherwise.

use super::view;

pub struct NativeCheck(pub tarcheck::Checker);

fn convert(
    r: Result<tarcheck::Progress, tarcheck::Rejection>,
) -> Result<view::Progress, view::CheckError> {
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
                contents_wanted: false,
            })
            .collect(),
        decisions: p
            .decisions
            .into_iter()
            .map(|d| view::Decision {
                path: d.path,
                rule: d.rule,
                action: match d.action {
                    tarcheck::Action::Skip => "skip",
                    tarcheck::Action::Strip => "strip",
                    tarcheck::Action::Clamp => "clamp",
                    tarcheck::Action::Note => "note",
                }
                .to_string(),
                detail: d.detail,
            })
            .collect(),
        want: p.want,
    })
}

impl view::TarCheck for NativeCheck {
    fn feed(&mut self, offset: u64, bytes: &[u8]) -> Result<view::Progress, view::CheckError> {
        convert(self.0.feed(offset, bytes))
    }

    fn finish(&mut self, total: u64) -> Result<view::Progress, view::CheckError> {
        convert(self.0.finish(total))
    }
}
