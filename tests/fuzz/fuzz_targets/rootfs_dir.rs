#![no_main]
//! The `rootfs-dir` manifest component (LXC images) on arbitrary member
//! lists and `metadata.yaml` contents: never panics; errors are one line;
//! an image is one rootfs member; `none` for archives and prefixes without
//! `metadata.yaml`.
use libfuzzer_sys::fuzz_target;
use rootfs_dir::{ManifestOptions, Member, UnitKind};

fuzz_target!(|data: &[u8]| {
    // Input: the first byte picks the unit kind (bit 0), the architecture
    // (bit 1) and the members present (bits 2-7: metadata.yaml, rootfs.tar,
    // rootfs.tar.gz, rootfs.tar.zst, templates/x, metadata.yaml again); the
    // rest is metadata.yaml.
    let Some((&bits, metadata)) = data.split_first() else {
        return;
    };
    let unit = if bits & 1 == 0 {
        UnitKind::Prefix
    } else {
        UnitKind::Archive
    };
    let options = ManifestOptions {
        architecture: if bits & 2 == 0 { "amd64" } else { "arm64" }.into(),
        ..ManifestOptions::default()
    };
    let names = [
        "metadata.yaml",
        "rootfs.tar",
        "rootfs.tar.gz",
        "rootfs.tar.zst",
        "templates/x",
        "metadata.yaml",
    ];
    let members: Vec<Member> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (4 << i) != 0)
        .map(|(_, name)| Member {
            name: (*name).into(),
            size: if *name == "metadata.yaml" {
                metadata.len() as u64
            } else {
                1
            },
        })
        .collect();
    let mut read = |name: &str| -> Result<Vec<u8>, String> {
        if name == "metadata.yaml" {
            Ok(metadata.to_vec())
        } else {
            Err(format!("no member {name}"))
        }
    };
    match rootfs_dir::parse(unit, &members, &options, &mut read) {
        Ok(Some(layout)) => {
            assert_eq!(unit, UnitKind::Prefix);
            assert_eq!(layout.format, rootfs_dir::FORMAT);
            assert_eq!(layout.layers.len(), 1);
            assert!(members.iter().any(|m| m.name == layout.layers[0].member));
        }
        Ok(None) => {
            assert!(unit == UnitKind::Archive || !members.iter().any(|m| m.name == "metadata.yaml"))
        }
        Err(e) => assert!(!e.contains('\n') && !e.contains('\r'), "{e}"),
    }
});
