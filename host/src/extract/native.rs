//! Bench only (feature `bench-native-check`): the tar check run natively,
//! the same crate the guest is built from, outside WebAssembly. Lets the
//! unpack benchmark measure what the sandbox costs. Never used unless the
//! feature is compiled in and `TARPOOL_BENCH_NATIVE_CHECK` is set.

use super::view;
use crate::core::policy::{Action as PolicyAction, Policy};

pub struct NativeCheck(tarcheck::Checker);

/// A native session with `policy`'s per-entry rules (as the guest gets them).
pub fn session(mode: view::Mode, p: &Policy) -> NativeCheck {
    let v = |a: PolicyAction| match a {
        PolicyAction::Allow => tarcheck::Verdict::Allow,
        PolicyAction::Skip => tarcheck::Verdict::Skip,
        PolicyAction::Strip => tarcheck::Verdict::Strip,
        PolicyAction::Reject => tarcheck::Verdict::Reject,
    };
    let u32_of = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
    let policy = tarcheck::Policy {
        max_entries: p.max_layer_entries.limit,
        max_bytes: p.max_layer_bytes.limit,
        max_path_bytes: u32_of(p.max_path_bytes.limit),
        max_name_bytes: u32_of(p.max_name_bytes.limit),
        max_depth: u32_of(p.max_depth.limit),
        max_ext_header_bytes: u32_of(p.max_ext_header_bytes.limit),
        device_nodes: v(p.device_nodes.action),
        fifos: v(p.fifos.action),
        setid: v(p.setid.action),
        xattr_allow: p.xattrs.allow.clone(),
        other_xattrs: v(p.xattrs.others),
        absolute_symlinks: v(p.absolute_symlinks.action),
        duplicates: v(p.duplicates.action),
        max_id: u32_of(p.max_id.limit),
        min_mtime: p.mtime.min,
        max_mtime: p.mtime.max,
    };
    let mode = match mode {
        view::Mode::Layer => tarcheck::Mode::Layer,
        view::Mode::Archive => tarcheck::Mode::Archive,
    };
    NativeCheck(tarcheck::Checker::new(mode, policy))
}

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
