//! Tests of the format steps, by stage.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::cache::BUILTINS;
use super::limits::{MANIFEST_FUEL, MAX_CONCURRENT, MAX_MEMBER_READ};
use super::manifest::FUEL_LEFT;
use super::*;
use crate::model::{BlobKind, LayerMedia, Member, UnitKind};

/// One `Steps` for the tests that do not change its budgets.
fn shared() -> &'static Steps {
    test_steps()
}

fn tar_head(name: &str) -> Vec<u8> {
    let mut h = vec![0u8; 1024];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(b"00000000000\0");
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[156] = b'0';
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h[..512].iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn members(names: &[&str]) -> Vec<Member> {
    names
        .iter()
        .map(|n| Member {
            name: (*n).to_string(),
            size: 3,
        })
        .collect()
}

fn no_read() -> MemberReader {
    Box::new(|name: &str| Err(format!("unexpected read of {name}")))
}

/// A reader of the named members; any other read fails.
fn reader(files: Vec<(&'static str, Vec<u8>)>) -> MemberReader {
    Box::new(move |name: &str| {
        files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bytes)| bytes.clone())
            .ok_or_else(|| "nope".to_string())
    })
}

#[test]
fn classifies() {
    let steps = shared();
    let c = steps.classify(&[0x1f, 0x8b, 8, 0, 0, 0], 1000).unwrap();
    assert_eq!(c.kind, BlobKind::Gzip);
    let c = steps.classify(&tar_head("etc/hostname"), 10240).unwrap();
    assert_eq!(c.kind, BlobKind::Tar);
    assert!(c.detail.contains("`etc/hostname`"), "{}", c.detail);
    let c = steps.classify(b"\x00garbage\n", 9).unwrap();
    assert_eq!(c.kind, BlobKind::Unknown);
    assert_eq!(steps.classify(&[], 0).unwrap().kind, BlobKind::Empty);
    // Longer heads are cut to 64 KiB.
    let mut big = tar_head("x");
    big.resize(1 << 20, 0);
    assert_eq!(steps.classify(&big, 1 << 20).unwrap().kind, BlobKind::Tar);
    match steps.classify(&[1, 2, 3], 2) {
        Err(StepError::Rejected(e)) => assert!(e.contains("head holds 3 bytes"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn parses_ad_hoc() {
    let l = shared()
        .parse_manifest(
            UnitKind::Prefix,
            &members(&[
                "2.tar", "10.tar", "1.tar", "3.tar", "4.tar", "5.tar", "6.tar", "7.tar", "8.tar",
                "9.tar",
            ]),
            no_read(),
        )
        .unwrap()
        .0;
    assert_eq!(l.format, "ad-hoc");
    let names: Vec<&str> = l.layers.iter().map(|l| l.member.as_str()).collect();
    assert_eq!(names[0], "1.tar");
    assert_eq!(names[9], "10.tar");
    assert!(l.layers.iter().all(|l| l.media == LayerMedia::Detect));
}

#[test]
fn reads_through_the_callback() {
    let manifest = br#"[{"Config":"c.json","Layers":["a/layer.tar"]}]"#.to_vec();
    let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000001"]}}"#.to_vec();
    let ms = vec![
        Member {
            name: "manifest.json".into(),
            size: manifest.len() as u64,
        },
        Member {
            name: "c.json".into(),
            size: config.len() as u64,
        },
        Member {
            name: "a/layer.tar".into(),
            size: 1024,
        },
    ];
    let reads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut files = reader(vec![("manifest.json", manifest), ("c.json", config)]);
    let log = Arc::clone(&reads);
    let read = Box::new(move |name: &str| {
        log.lock().unwrap().push(name.to_string());
        files(name)
    });
    let l = shared()
        .parse_manifest(UnitKind::Archive, &ms, read)
        .unwrap()
        .0;
    assert_eq!(l.format, "docker-archive");
    assert_eq!(l.layers[0].member, "a/layer.tar");
    assert!(l.layers[0].diff_id.as_deref().unwrap().ends_with("01"));
    assert_eq!(*reads.lock().unwrap(), ["manifest.json", "c.json"]);
}

#[test]
fn guest_errors_are_rejections() {
    let steps = shared();
    match steps.parse_manifest(UnitKind::Prefix, &members(&["1.tar", "3.tar"]), no_read()) {
        Err(StepError::Rejected(e)) => {
            assert_eq!(e, "layer 2.tar missing (the prefix has layers up to 3.tar)")
        }
        other => panic!("{other:?}"),
    }
    // A callback error reaches the guest and comes back as its error.
    let ms = vec![Member {
        name: "manifest.json".into(),
        size: 5,
    }];
    let read = Box::new(|_: &str| Err("disk on fire\n".to_string()));
    match steps.parse_manifest(UnitKind::Archive, &ms, read) {
        Err(StepError::Rejected(e)) => {
            assert_eq!(e, "manifest.json: cannot read: disk on fire?")
        }
        other => panic!("{other:?}"),
    }
    // Enormous data from the callback is capped before it reaches the guest.
    let ms = vec![Member {
        name: "manifest.json".into(),
        size: 5 << 20,
    }];
    let read = Box::new(|_: &str| Ok(vec![b' '; 5 << 20]));
    match steps.parse_manifest(UnitKind::Archive, &ms, read) {
        Err(StepError::Rejected(e)) => assert!(e.contains("over the 4194304-byte cap"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// The `source` import refuses a member over the member cap (the policy's
/// `max-json-bytes`) and reads past the total cap, whatever the reader
/// returns; a refused member does not count towards the total.
#[test]
fn member_reads_are_capped() {
    use manifest::manifest_bindings::tarpool::steps::source::Host as _;
    let engine = &shared().engine;
    let read: MemberReader = Box::new(|name: &str| match name {
        "big" => Ok(vec![b' '; MAX_MEMBER_READ + 1]),
        "small" => Ok(vec![b' '; 1000]),
        _ => Ok(vec![b' '; 3 << 20]),
    });
    let (mut store, _) = new_store(engine, 1, 1 << 20, Some(read), MAX_MEMBER_READ).unwrap();
    let state = store.data_mut();
    let e = state.read_member("big".into()).unwrap_err();
    assert_eq!(
        e,
        "member `big` is 4194305 bytes, over the 4194304-byte cap (policy rule max-json-bytes)"
    );
    // Ten 3 MiB members fit in the 32 MiB total; the eleventh does not.
    for i in 0..10 {
        assert_eq!(state.read_member(format!("m{i}")).unwrap().len(), 3 << 20);
    }
    let e = state.read_member("m10".into()).unwrap_err();
    assert_eq!(e, "reading `m10` exceeds the 32 MiB cap on manifest data");

    // A smaller cap from the config; a store without a reader reads nothing.
    let read: MemberReader = Box::new(|_: &str| Ok(vec![b' '; 1000]));
    let (mut store, _) = new_store(engine, 1, 1 << 20, Some(read), 999).unwrap();
    let e = store.data_mut().read_member("small".into()).unwrap_err();
    assert!(e.contains("is 1000 bytes, over the 999-byte cap"), "{e}");
    let (mut store, _) = new_store(engine, 1, 1 << 20, None, 999).unwrap();
    let e = store.data_mut().read_member("small".into()).unwrap_err();
    assert_eq!(e, "no member reader");
}

#[test]
fn traps_are_kept_apart_and_do_not_poison() {
    let dir = tempdir("trap");
    let mut steps = Steps::load(&dir).unwrap();
    steps.manifest_fuel = 20_000;
    let names: Vec<String> = (1..=500).map(|n| format!("{n}.tar")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let ms = members(&refs);
    match steps.parse_manifest(UnitKind::Prefix, &ms, no_read()) {
        Err(StepError::Trapped(e)) => {
            eprintln!("fuel trap: {e}");
            assert!(e.contains("fuel"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    steps.manifest_fuel = MANIFEST_FUEL;
    assert_eq!(
        steps
            .parse_manifest(UnitKind::Prefix, &ms, no_read())
            .unwrap()
            .0
            .layers
            .len(),
        500
    );

    // A member list that does not fit in guest memory traps too.
    let name = "n".repeat(4000);
    let huge: Vec<Member> = (0..70_000)
        .map(|_| Member {
            name: name.clone(),
            size: 1,
        })
        .collect();
    match steps.parse_manifest(UnitKind::Archive, &huge, no_read()) {
        Err(StepError::Trapped(e)) => {
            eprintln!("memory trap: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        steps.classify(&[0x28, 0xb5, 0x2f, 0xfd], 4).unwrap().kind,
        BlobKind::Zstd
    );
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn cache_is_written_and_reused() {
    let dir = tempdir("cache");
    let t = std::time::Instant::now();
    let cold = Steps::load(&dir).unwrap();
    let cold_time = t.elapsed();
    assert!(cold.cache_warning().is_none(), "{:?}", cold.cache_warning());
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    for (f, name) in files
        .iter()
        .zip(["classify-", "manifest-", "rootfs-dir-", "tarcheck-"])
    {
        assert!(f.starts_with(name) && f.ends_with(".cwasm"), "{files:?}");
    }
    let t = std::time::Instant::now();
    let warm = Steps::load(&dir).unwrap();
    let warm_time = t.elapsed();
    let t = std::time::Instant::now();
    assert_eq!(
        warm.classify(&[0x1f, 0x8b, 8], 3).unwrap().kind,
        BlobKind::Gzip
    );
    let call_time = t.elapsed();
    eprintln!("Steps::load cold {cold_time:?}, warm {warm_time:?}, classify {call_time:?}");

    // A corrupted cache file is recompiled, not trusted.
    let path = dir.join(&files[1]);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let again = Steps::load(&dir).unwrap();
    assert_eq!(
        again
            .parse_manifest(UnitKind::Prefix, &members(&["1.tar"]), no_read())
            .unwrap()
            .0
            .layers
            .len(),
        1
    );
    assert_ne!(fs::read(&path).unwrap(), bytes);

    // An unwritable cache is only a warning.
    let file = dir.join("not-a-dir");
    fs::write(&file, b"").unwrap();
    let steps = Steps::load(&file.join("sub")).unwrap();
    assert!(steps.cache_warning().is_some());
    fs::remove_dir_all(&dir).ok();
}

/// Component chains: a file pinned by sha256 loads (and a wrong pin is
/// refused); a manifest chain asks each component in turn; the first
/// that knows the format answers, and says so.
#[test]
fn component_chains_and_pins() {
    let dir = tempdir("pins");
    fs::create_dir_all(&dir).unwrap();
    let wasm = BUILTINS
        .iter()
        .find(|(n, _)| *n == "builtin:rootfs-dir")
        .unwrap()
        .1;
    let file = dir.join("lxc.wasm");
    fs::write(&file, wasm).unwrap();
    let sha = hex::encode(Sha256::digest(wasm));
    let spec = |sha256: &str| ComponentSpec::File {
        path: file.clone(),
        sha256: sha256.to_string(),
    };
    let config = |manifest: Vec<ComponentSpec>| StepsConfig {
        manifest,
        ..StepsConfig::default()
    };
    let bad = Steps::load_with(&dir, &config(vec![spec(&"0".repeat(64))]));
    match bad {
        Err(StepError::Host(e)) => assert!(e.contains("but the config pins"), "{e}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a wrong pin was accepted"),
    }
    let unknown = Steps::load_with(
        &dir,
        &config(vec![ComponentSpec::Builtin("builtin:nope".into())]),
    );
    assert!(matches!(unknown, Err(StepError::Host(e)) if e.contains("unknown component")));

    let metadata = b"architecture: x86_64\ncreation_date: 1700000000\n".to_vec();
    let ms = vec![
        Member {
            name: "metadata.yaml".into(),
            size: metadata.len() as u64,
        },
        Member {
            name: "rootfs.tar.gz".into(),
            size: 100,
        },
    ];
    let read = || reader(vec![("metadata.yaml", metadata.clone())]);
    // The built-in manifest component alone does not know the format.
    let only_builtin = Steps::load_with(
        &dir,
        &config(vec![ComponentSpec::Builtin("builtin:manifest".into())]),
    )
    .unwrap();
    match only_builtin.parse_manifest(UnitKind::Prefix, &ms, read()) {
        Err(StepError::Rejected(e)) => {
            assert!(e.contains("no manifest component recognises"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Chained after it, the pinned file answers.
    let chained = Steps::load_with(
        &dir,
        &config(vec![
            ComponentSpec::Builtin("builtin:manifest".into()),
            spec(&sha),
        ]),
    )
    .unwrap();
    let (l, answered) = chained
        .parse_manifest(UnitKind::Prefix, &ms, read())
        .unwrap();
    assert_eq!(l.format, "lxc-rootfs");
    assert_eq!(l.layers[0].member, "rootfs.tar.gz");
    assert_eq!(l.layers[0].media, LayerMedia::Gzip);
    assert_eq!(l.config.unwrap().cmd, ["/sbin/init"]);
    assert_eq!(answered.component, file.display().to_string());
    assert_eq!(answered.sha256, sha);
    // Ad-hoc images still go to the first component.
    let (l, answered) = chained
        .parse_manifest(UnitKind::Prefix, &members(&["1.tar"]), no_read())
        .unwrap();
    assert_eq!(
        (l.format.as_str(), answered.component.as_str()),
        ("ad-hoc", "builtin:manifest")
    );
}

/// A tar check trap or fuel exhaustion ends that session only; the
/// errors are kept apart from rejections.
#[test]
fn tar_check_rejections_and_contract() {
    use crate::extract::view::{CheckError, Mode, TarCheck};
    let steps = shared();
    let policy = crate::core::policy::Policy::default_policy();
    let mut s = steps.tar_check(Mode::Layer, &policy).unwrap();
    let mut h = tar_head("etc/hostname");
    h.truncate(512);
    let p = s.feed(0, &h).unwrap();
    assert_eq!(p.entries.len(), 1);
    assert_eq!(p.entries[0].path, b"etc/hostname");
    assert_eq!(p.want, 512);
    let p = s.finish(512).unwrap();
    assert!(p.entries.is_empty());
    // Garbage is a rejection with a rule, not a trap.
    let mut s = steps.tar_check(Mode::Layer, &policy).unwrap();
    match s.feed(0, &[b'x'; 512]) {
        Err(CheckError::Rejected { rule, .. }) => assert_eq!(rule, "malformed"),
        other => panic!("{other:?}"),
    }
    // Many sessions at once do not interfere.
    let sessions: Vec<_> = (0..8)
        .map(|_| steps.tar_check(Mode::Archive, &policy).unwrap())
        .collect();
    drop(sessions);
}

#[test]
fn concurrent_calls_share_one_steps() {
    let steps = Arc::new(Steps::load(&tempdir("threads")).unwrap());
    let handles: Vec<_> = (0..MAX_CONCURRENT as usize * 2)
        .map(|i| {
            let steps = Arc::clone(&steps);
            std::thread::spawn(move || {
                let head = tar_head(&format!("file{i}"));
                let c = steps.classify(&head, 2048).unwrap();
                assert!(c.detail.contains(&format!("`file{i}`")));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Realistic worst cases stay well inside the fuel budget.
#[test]
fn big_inputs_fit_the_budget() {
    let steps = shared();
    // A docker archive of 30000 layers: ~2.5 MiB manifest.json and config.
    let hex = |n: usize| format!("{n:064x}");
    let layers: Vec<String> = (0..30_000)
        .map(|i| format!("\"blobs/sha256/{}\"", hex(i)))
        .collect();
    let diff_ids: Vec<String> = (0..30_000)
        .map(|i| format!("\"sha256:{}\"", hex(i + (1 << 20))))
        .collect();
    let manifest = format!(
        r#"[{{"Config":"c.json","RepoTags":null,"Layers":[{}]}}]"#,
        layers.join(",")
    )
    .into_bytes();
    let config = format!(
        r#"{{"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    )
    .into_bytes();
    let mut ms: Vec<Member> = (0..30_000)
        .map(|i| Member {
            name: format!("blobs/sha256/{}", hex(i)),
            size: 1,
        })
        .collect();
    ms.push(Member {
        name: "manifest.json".into(),
        size: manifest.len() as u64,
    });
    ms.push(Member {
        name: "c.json".into(),
        size: config.len() as u64,
    });
    let read = reader(vec![
        ("manifest.json", manifest.clone()),
        ("c.json", config),
    ]);
    let t = std::time::Instant::now();
    let l = steps
        .parse_manifest(UnitKind::Archive, &ms, read)
        .unwrap()
        .0;
    let used = MANIFEST_FUEL - FUEL_LEFT.get();
    eprintln!("docker 30000 layers: {:?}, fuel {used}", t.elapsed());
    assert_eq!(l.layers.len(), 30_000);
    assert!(used < MANIFEST_FUEL / 4, "{used}");

    // A flat rootfs of 400000 files.
    let ms: Vec<Member> = (0..400_000)
        .map(|i| Member {
            name: format!("usr/share/doc/package-{i}/copyright"),
            size: 1,
        })
        .collect();
    let t = std::time::Instant::now();
    let l = steps
        .parse_manifest(UnitKind::Archive, &ms, no_read())
        .unwrap()
        .0;
    let used = MANIFEST_FUEL - FUEL_LEFT.get();
    eprintln!("flat 400000 members: {:?}, fuel {used}", t.elapsed());
    assert_eq!(l.format, "single-layer");
    assert!(used < MANIFEST_FUEL / 4, "{used}");

    // The same with a /manifest.json: an app's, then a docker list of
    // 30000 paths that are not there (each member is looked up).
    let mut ms = ms;
    for (what, bytes, budget) in [
        ("an app's", &br#"{"name":"app"}"#[..], MANIFEST_FUEL / 4),
        ("a docker", &manifest[..], MANIFEST_FUEL / 2),
    ] {
        ms.retain(|m| m.name != "manifest.json");
        ms.push(Member {
            name: "manifest.json".into(),
            size: bytes.len() as u64,
        });
        let bytes = bytes.to_vec();
        let read = Box::new(move |_: &str| Ok(bytes.clone()));
        let t = std::time::Instant::now();
        let l = steps
            .parse_manifest(UnitKind::Archive, &ms, read)
            .unwrap()
            .0;
        let used = MANIFEST_FUEL - FUEL_LEFT.get();
        eprintln!(
            "flat 400000 members and {what} manifest.json: {:?}, fuel {used}",
            t.elapsed()
        );
        assert_eq!(l.format, "single-layer");
        assert!(used < budget, "{used}");
    }
}

pub(super) fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tarpool-wasm-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The WIT package version the host states is the one `wit/tarpool.wit`
/// declares; the compatibility rule is semver's (0.x: the minor is the
/// major).
#[test]
fn the_wit_version_is_the_files_and_compatibility_is_semver() {
    let wit = include_str!("../../../wit/tarpool.wit");
    assert!(
        wit.contains(&format!("package tarpool:steps@{};", describe::WIT_VERSION)),
        "wit/tarpool.wit declares another version than {}",
        describe::WIT_VERSION
    );
    for (built, host, ok) in [
        ("0.1.0", "0.1.0", true),
        ("0.1.0", "0.1.3", true),
        ("0.1.4", "0.1.3", false),
        ("0.2.0", "0.1.0", false),
        ("0.1.0", "0.2.0", false),
        ("1.0.0", "1.2.0", true),
        ("1.3.0", "1.2.0", false),
        ("1.2.1", "1.2.0", false),
        ("2.0.0", "1.9.0", false),
        ("0.1", "0.1.0", false),
        ("0.1.0-rc1", "0.1.0", false),
    ] {
        assert_eq!(describe::compatible(built, host), ok, "{built} on {host}");
    }
}

/// What `check_component` refuses, in one line each: components written
/// as text, each breaking one rule; the built-in ones pass.
#[test]
fn components_are_checked_by_world_version_imports_types_and_size() {
    fn component(imports: &[&str], export: &str, params: &str) -> Vec<u8> {
        let imports: String = imports
            .iter()
            .map(|i| format!("(import \"{i}\" (instance))\n"))
            .collect();
        // A lifted function of one u32 lowers to one i32.
        let core = if params.is_empty() { "f" } else { "g" };
        wat::parse_str(format!(
            r#"(component
                {imports}
                (core module $m (func (export "f")) (func (export "g") (param i32)))
                (core instance $i (instantiate $m))
                (type $t (func {params}))
                (func $f (type $t) (canon lift (core func $i "{core}")))
                (export "{export}" (func $f)))"#
        ))
        .unwrap()
    }
    fn check(wasm: &[u8], expected: &str) {
        let e = super::check_component(wasm).err().unwrap_or_default();
        assert!(e.contains(expected), "{e} lacks {expected}");
        assert!(!e.contains('\n') && e.len() < 600, "{e}");
    }
    let types = "tarpool:steps/types@0.1.1";
    check(
        &component(&["tarpool:steps/types@0.2.0"], "classify", ""),
        "classify-step was built against tarpool:steps@0.2.0; this host has 0.1.2 and loads 0.1.x up to 0.1.2",
    );
    check(
        &component(&[types, "wasi:filesystem/preopens@0.2.6"], "classify", ""),
        "classify-step imports what the host does not give a step: wasi:filesystem/preopens@0.2.6",
    );
    check(
        &component(&[types, "tarpool:steps/source@0.1.1"], "classify", ""),
        "imports what the host does not give a step: tarpool:steps/source@0.1.1",
    );
    check(
        &component(&[types], "hello", ""),
        "implements no world of tarpool:steps (its exports: hello;",
    );
    check(
        &component(&[], "classify", ""),
        "classify-step names no version of tarpool:steps",
    );
    check(
        &component(&[types, "tarpool:steps/source@0.2.0"], "parse", ""),
        "manifest-step was built against several versions of tarpool:steps: 0.1.1, 0.2.0",
    );
    check(
        &component(&[types], "classify", "(param \"x\" u32)"),
        "its exports and imports do not have the types of classify-step",
    );
    check(
        &wat::parse_str("(module)").unwrap(),
        "a core WebAssembly module, not a component",
    );
    check(b"#!/bin/sh\n", "not WebAssembly");
    check(
        &vec![0u8; describe::MAX_COMPONENT_BYTES + 1],
        "a component is at most 16777216 bytes",
    );
    for (name, wasm) in super::cache::BUILTINS {
        let c = super::check_component(wasm).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.description.wit_version, describe::WIT_VERSION);
    }
}
