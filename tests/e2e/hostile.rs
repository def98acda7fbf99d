//! Hostile and broken input: each bad image fails with one clear line naming
//! no host path, the good images still end ready, stored data is untouched,
//! and nothing is written outside the state directory.

use crate::harness::*;
use std::path::Path;

/// A tar entry: name (raw bytes, unchecked), type, data or link target.
enum E<'a> {
    File(&'a [u8], &'a [u8]),
    Dir(&'a [u8]),
    Symlink(&'a [u8], &'a [u8]),
    CharDev(&'a [u8]),
    /// A setuid-root executable.
    Suid(&'a [u8]),
}

fn raw_header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.as_mut_bytes()[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(n, d) => {
                let mut h = raw_header(n, tar::EntryType::Regular, d.len() as u64, 0o644);
                h.set_cksum();
                b.append(&h, *d).unwrap();
            }
            E::Suid(n) => {
                let mut h = raw_header(n, tar::EntryType::Regular, 2, 0o4755);
                h.set_cksum();
                b.append(&h, &b"#!"[..]).unwrap();
            }
            E::Dir(n) => {
                let mut h = raw_header(n, tar::EntryType::Directory, 0, 0o755);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Symlink(n, t) => {
                let mut h = raw_header(n, tar::EntryType::Symlink, 0, 0o777);
                h.as_mut_bytes()[157..157 + t.len()].copy_from_slice(t);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::CharDev(n) => {
                let mut h = raw_header(n, tar::EntryType::Char, 0, 0o600);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn put(bucket: &Path, key: &str, data: &[u8]) {
    let p = bucket.join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// image -> a fragment its error must contain.
fn check(env: &Env, bucket: &Path, expected: &[(&str, &str)], good: &[&str]) {
    let out = env.run(&["run", "--once", "--source", bucket.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed image makes the run exit 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = env.status();
    let tmp = env.dir.path().to_str().unwrap().to_string();
    for (image, fragment) in expected {
        let (state, err) = status
            .get(*image)
            .unwrap_or_else(|| panic!("{image} is not tracked: {status:?}"));
        let err = err.as_deref().unwrap_or("");
        assert_eq!(state, "failed", "{image}: {err}");
        assert!(
            err.contains(fragment),
            "{image}: error {err:?} lacks {fragment:?}"
        );
        assert!(!err.contains('\n'), "{image}: one line");
        assert!(
            !err.contains(&tmp),
            "{image}: error names a host path: {err}"
        );
    }
    for g in good {
        assert_eq!(
            status.get(*g).map(|s| s.0.as_str()),
            Some("ready"),
            "{g}: {:?}",
            status.get(*g)
        );
    }
}

#[test]
fn bad_images_fail_with_one_line_and_the_rest_complete() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    put(
        &bucket,
        "images/good/1.tar",
        &layer(&[E::Dir(b"etc/"), E::File(b"etc/motd", b"hi\n")]),
    );
    // First the good image alone: it must survive the hostile run untouched.
    let out = env.run(&["run", "--once", "--source", bucket.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    put(
        &bucket,
        "images/dotdot/1.tar",
        &layer(&[E::File(b"../escape", b"x")]),
    );
    put(
        &bucket,
        "images/deep-dotdot/1.tar",
        &layer(&[E::Dir(b"a/"), E::File(b"a/../../escape", b"x")]),
    );
    put(&bucket, "images/gap/1.tar", &layer(&[E::File(b"a", b"1")]));
    put(&bucket, "images/gap/3.tar", &layer(&[E::File(b"b", b"3")]));
    put(&bucket, "images/garbage.tar", &[0x42u8; 3000]);
    put(
        &bucket,
        "images/badgz.tar.gz",
        &[
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9,
        ],
    );
    put(
        &bucket,
        "images/device/1.tar",
        &layer(&[E::CharDev(b"dev/mem")]),
    );
    let mut trunc = layer(&[E::File(b"big", &[7u8; 5000])]);
    trunc.truncate(2048);
    put(&bucket, "images/truncated/1.tar", &trunc);
    put(&bucket, "images/empty.tar", b"");
    put(
        &bucket,
        "images/stray/1.tar",
        &layer(&[E::File(b"a", b"1")]),
    );
    put(&bucket, "images/stray/notes.txt", b"hello");
    put(
        &bucket,
        "images/bad name!/1.tar",
        &layer(&[E::File(b"a", b"1")]),
    );
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["missing/layer.tar"]}]"#;
    let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"]}}"#;
    put(
        &bucket,
        "images/docker-missing.tar",
        &layer(&[
            E::File(b"manifest.json", manifest),
            E::File(b"c.json", config),
        ]),
    );

    // A flat root filesystem that happens to hold a /manifest.json is one
    // layer, not a broken docker-save archive.
    put(
        &bucket,
        "images/flat.tar",
        &layer(&[
            E::File(b"manifest.json", br#"{"name":"app","start_url":"/"}"#),
            E::Dir(b"etc/"),
            E::File(b"etc/os-release", b"ID=debian\n"),
            E::Dir(b"usr/"),
            E::Dir(b"usr/bin/"),
            E::File(b"usr/bin/x", b"#!/bin/sh\n"),
        ]),
    );

    check(
        &env,
        &bucket,
        &[
            ("dotdot", "layer 1"),
            ("deep-dotdot", "escape"),
            ("gap", "2.tar"),
            ("garbage", "not a tar"),
            ("badgz", "corrupt"),
            ("truncated", "big"),
            ("empty", "empty"),
            ("stray", "notes.txt"),
            ("docker-missing", "missing/layer.tar"),
        ],
        &["good", "device", "flat"],
    );
    let flat = env.json(&["audit", "flat", "--json"]).to_string();
    assert!(flat.contains("single-layer"), "{flat}");
    // Device nodes are skipped by the default policy, on the record.
    let audit = env.json(&["audit", "device", "--json"]);
    assert!(
        has_decision(&audit, "device-nodes", "skip", "dev/mem")
            && audit["decisions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["rule"] == "device-nodes" && d["layer"] == 1),
        "{audit}"
    );
    let st = env.json(&["status", "--json"]);
    let rejected: Vec<&str> = st["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        rejected,
        ["images/bad name!/1.tar"],
        "names outside [A-Za-z0-9._-] are reported, not processed"
    );
    assert!(!env.dir.path().join("escape").exists() && !bucket.join("escape").exists());

    // The good image is still whole.
    let mnt = env.dir.path().join("mnt");
    env.json(&[
        "activate",
        "good",
        "--as",
        "g",
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(mnt.join("etc/motd")).unwrap(), b"hi\n");
    env.json(&["deactivate", "g"]);
    env.json(&[
        "activate",
        "flat",
        "--as",
        "f",
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    for (path, want) in [
        ("manifest.json", &br#"{"name":"app","start_url":"/"}"#[..]),
        ("etc/os-release", b"ID=debian\n"),
        ("usr/bin/x", b"#!/bin/sh\n"),
    ] {
        assert_eq!(std::fs::read(mnt.join(path)).unwrap(), want, "{path}");
    }
    env.json(&["deactivate", "f"]);

    // Unchanged bad input is not retried; the decision is stable.
    let audit_before = env.json(&["audit", "dotdot", "--json"])["transitions"]
        .as_array()
        .unwrap()
        .len();
    let _ = env.run(&["run", "--once", "--source", bucket.to_str().unwrap()]);
    let audit_after = env.json(&["audit", "dotdot", "--json"])["transitions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(audit_before, audit_after);
}

#[test]
fn symlinks_are_resolved_inside_the_layer_root() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .as_bytes()
        .to_vec();
    let through = [b"to-outside/".as_slice(), b"pwned"].concat();
    // An absolute symlink to a host directory, then a write through it: the
    // write must land inside the image, at the same path below its root.
    let abs = [b"/".as_slice(), &target].concat();
    put(
        &bucket,
        "images/abs/1.tar",
        &layer(&[
            E::Symlink(b"to-outside", &abs),
            E::File(&through, b"x"),
            E::Symlink(b"up", b"../../../../../../"),
            E::File(b"up/also", b"y"),
        ]),
    );
    let out = env.run(&["run", "--once", "--source", bucket.to_str().unwrap()]);
    let status = env.status();
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing is written outside: {status:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (state, err) = &status["abs"];
    if state == "ready" {
        let mnt = env.dir.path().join("mnt");
        env.json(&[
            "activate",
            "abs",
            "--as",
            "a",
            "--mount",
            mnt.to_str().unwrap(),
        ]);
        assert!(mnt
            .join(Path::new(std::str::from_utf8(&target).unwrap()))
            .join("pwned")
            .exists());
        assert!(mnt.join("also").exists());
        env.json(&["deactivate", "a"]);
    } else {
        assert!(
            err.as_deref().unwrap_or("").contains("to-outside"),
            "{err:?}"
        );
    }
}

#[test]
fn the_strict_policy_rejects_device_nodes_and_formats() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    put(
        &bucket,
        "images/device/1.tar",
        &layer(&[E::CharDev(b"dev/mem")]),
    );
    put(&bucket, "images/flat.tar", &layer(&[E::File(b"a", b"1")]));
    put(&bucket, "images/ok/1.tar", &layer(&[E::File(b"a", b"1")]));
    put(&bucket, "images/suid/1.tar", &layer(&[E::Suid(b"bin/su")]));
    // The strict policy, with ad-hoc images allowed so the bucket can stay
    // simple.
    let policy = policy_file(
        &env,
        "policy.toml",
        "strict",
        "allow = [\"docker-archive\",",
        "allow = [\"ad-hoc\", \"docker-archive\",",
    );
    let cfg = env.dir.path().join("tarpool.toml");
    std::fs::write(&cfg, format!("policy = {:?}\n", policy.to_str().unwrap())).unwrap();
    let out = env.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "run",
        "--once",
        "--source",
        bucket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let st = env.status();
    assert_eq!(st["ok"].0, "ready");
    assert_eq!(st["device"].0, "failed");
    assert!(st["device"].1.as_deref().unwrap().contains("dev/mem"));
    assert_eq!(st["flat"].0, "failed");
    assert!(
        st["flat"]
            .1
            .as_deref()
            .unwrap()
            .contains("single-layer is not allowed"),
        "{:?}",
        st["flat"]
    );
    let audit = env.json(&["audit", "flat", "--json"]);
    assert!(has_decision(&audit, "formats", "reject", ""), "{audit}");
    // The device node is a rejection on the record, with its rule.
    let audit = env.json(&["audit", "device", "--json"]);
    assert!(
        has_decision(&audit, "device-nodes", "reject", "dev/mem"),
        "{audit}"
    );
    // The setuid bit is stripped, on the record; the run names its policy.
    assert_eq!(st["suid"].0, "ready");
    let audit = env.json(&["audit", "suid", "--json"]);
    assert!(has_decision(&audit, "setid", "strip", "bin/su"), "{audit}");
    assert_eq!(audit["runs"][0]["policy"], "strict");
    assert_eq!(
        audit["runs"][0]["policy_sha256"].as_str().unwrap().len(),
        64
    );
    let act = env.dir.path().join("suid-act");
    let out = env.run(&[
        "activate",
        "suid",
        "--as",
        "suid-act",
        "--mount",
        act.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(act.join("bin/su")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o7777, 0o755, "setuid stripped");
    env.run(&["deactivate", "suid-act"]);
}

/// A format only the second manifest component knows (LXC-style
/// `metadata.yaml` + `rootfs.tar.gz`): ready with the default step chain,
/// named by the component that answered, its runtime config shown; a chain
/// without that component fails the image with a clear reason.
#[test]
fn a_format_from_a_second_manifest_component() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    put(
        &bucket,
        "images/lxc/metadata.yaml",
        b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: test\n  os: debian\n",
    );
    let tar = layer(&[E::Dir(b"sbin"), E::File(b"sbin/init", b"#!/bin/sh\n")]);
    let gz = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(&tar)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(gz.status.success());
    put(&bucket, "images/lxc/rootfs.tar.gz", &gz.stdout);
    put(&bucket, "images/ok/1.tar", &layer(&[E::File(b"a", b"1")]));

    // Without the component the image is not recognised.
    let cfg = env.dir.path().join("only-builtin.toml");
    std::fs::write(&cfg, "[steps]\nmanifest = [\"builtin:manifest\"]\n").unwrap();
    let src = bucket.to_str().unwrap();
    let out = env.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "run",
        "--once",
        "--source",
        src,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let st = env.status();
    assert_eq!(st["ok"].0, "ready");
    assert_eq!(st["lxc"].0, "failed");
    assert!(
        st["lxc"]
            .1
            .as_deref()
            .unwrap()
            .contains("no manifest component recognises"),
        "{:?}",
        st["lxc"]
    );

    // The default chain has it. (A failed image is retried when its objects
    // change: touch nothing, use a fresh state directory instead.)
    let env = Env::new();
    let out = env.run(&["run", "--once", "--source", src]);
    assert!(out.status.success(), "{out:?}");
    let status = env.json(&["status", "--json"]);
    let lxc = status["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "lxc")
        .unwrap();
    assert_eq!(lxc["state"], "ready", "{lxc}");
    assert_eq!(lxc["format"], "lxc-rootfs");
    assert_eq!(lxc["config"]["cmd"][0], "/sbin/init", "{lxc}");
    let audit = env.json(&["audit", "lxc", "--json"]);
    let parse = audit["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "parse-manifest" && t["outcome"] == "ok")
        .unwrap();
    let output = &parse["output"];
    assert_eq!(output["component"], "builtin:rootfs-dir", "{output}");
    assert_eq!(output["component_sha256"].as_str().unwrap().len(), 64);
    let act = env.dir.path().join("lxc-act");
    let out = env.run(&[
        "activate",
        "lxc",
        "--as",
        "lxc-act",
        "--mount",
        act.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(act.join("sbin/init")).unwrap(),
        b"#!/bin/sh\n"
    );
    env.run(&["deactivate", "lxc-act"]);
}

/// Pipes `data` through a compressor command (`gzip -c`, `zstd -c -19`).
fn compress(cmd: &[&str], data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut c = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = c.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{cmd:?}");
    out.stdout
}

/// Compression and size limits of the catalogue (E40-E42, E47, F58, F59),
/// end to end: each bad image fails with one line naming the problem and
/// its rule; the good ones around them end ready.
#[test]
fn compression_and_size_limits() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    // E40: a zstd bomb: a 64 MiB file of a repeated pattern in a few KiB,
    // far beyond the ratio limit of 1000.
    // Ad hoc, it trips while its diff ID is worked out; in a docker-save
    // archive (the diff ID given), while the worker applies it.
    let pattern: Vec<u8> = b"bomb!".iter().copied().cycle().take(64 << 20).collect();
    let bomb_tar = layer(&[E::File(b"p", &pattern)]);
    drop(pattern);
    let bomb = compress(&["zstd", "-c", "-q"], &bomb_tar);
    put(&bucket, "images/bomb/1.tar", &bomb);
    let diff_id = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bomb_tar))
    };
    drop(bomb_tar);
    let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#);
    put(
        &bucket,
        "images/bomb-docker.tar",
        &layer(&[
            E::File(
                b"manifest.json",
                br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#,
            ),
            E::File(b"c.json", config.as_bytes()),
            E::File(b"l/layer.tar", &bomb),
        ]),
    );
    // A preallocated database (64 MiB of zeros) beside a few files: all-zero
    // tar blocks do not count toward the ratio (zstd packs them far beyond
    // 1000:1); max-layer-bytes bounds them.
    put(
        &bucket,
        "images/prealloc/1.tar",
        &compress(
            &["zstd", "-c", "-q"],
            &layer(&[
                E::Dir(b"etc/"),
                E::File(b"etc/db.conf", b"size=64M\n"),
                E::Dir(b"var/"),
                E::File(b"var/db.img", &vec![0u8; 64 << 20]),
                E::File(b"var/README", b"preallocated\n"),
            ]),
        ),
    );
    // E41: a layer of two gzip members is read whole.
    let a = layer(&[E::File(b"a", b"first member")]);
    let (head, tail) = a.split_at(512 * 2);
    let mut two = compress(&["gzip", "-c"], head);
    two.extend(compress(&["gzip", "-c"], tail));
    put(&bucket, "images/multigz/1.tar", &two);
    // E42: junk after the compressed stream.
    let mut junk = compress(&["gzip", "-c"], &layer(&[E::File(b"a", b"1")]));
    junk.extend_from_slice(b"hidden after the gzip stream");
    put(&bucket, "images/junk/1.tar", &junk);
    // F58: the well-known empty gzip layer under a real one.
    put(
        &bucket,
        "images/emptylayer/1.tar",
        &compress(&["gzip", "-c"], &[0u8; 1024]),
    );
    put(
        &bucket,
        "images/emptylayer/2.tar",
        &layer(&[E::File(b"b", b"2")]),
    );
    // E47: 126 layers, over the limit of 125.
    for i in 1..=126 {
        put(&bucket, &format!("images/deep/{i}.tar"), &layer(&[]));
    }
    // F59: a docker-save layer symlink that climbs out of the archive.
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
    let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"]}}"#;
    put(
        &bucket,
        "images/docker-escape.tar",
        &layer(&[
            E::File(b"manifest.json", manifest),
            E::File(b"c.json", config),
            E::Symlink(b"l/layer.tar", b"../../etc/shadow"),
        ]),
    );
    check(
        &env,
        &bucket,
        &[
            (
                "bomb",
                "layer 1: decompressed data is over the policy's ratio limit (rule max-compression-ratio: ",
            ),
            (
                "bomb-docker",
                "layer 1: decompressed data is over the policy's ratio limit (rule max-compression-ratio: ",
            ),
            ("junk", "layer 1"),
            ("deep", "126 layers, over the limit of 125"),
            ("docker-escape", "points out of the archive"),
        ],
        &["multigz", "emptylayer", "prealloc"],
    );
    let status = env.status();
    for image in ["bomb", "bomb-docker"] {
        let err = status[image].1.clone().unwrap_or_default();
        assert!(!err.contains("corrupt"), "{image}: {err}");
        // The ratio rule's reject is a decision on the record, with its reason.
        let audit = env.json(&["audit", image, "--json"]);
        assert!(
            has_decision(&audit, "max-compression-ratio", "reject", "")
                && audit["decisions"].as_array().unwrap().iter().any(|d| {
                    d["rule"] == "max-compression-ratio"
                        && d["layer"] == 1
                        && d["reason"].as_str().unwrap().contains("max-layer-bytes")
                }),
            "{image}: {audit}"
        );
    }
    let act = env.dir.path().join("multigz-act");
    let out = env.run(&[
        "activate",
        "multigz",
        "--as",
        "mg",
        "--mount",
        act.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(act.join("a")).unwrap(), b"first member");
    env.run(&["deactivate", "mg"]);
    let out = env.run(&[
        "activate",
        "prealloc",
        "--as",
        "pa",
        "--mount",
        act.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(act.join("etc/db.conf")).unwrap(),
        b"size=64M\n"
    );
    assert_eq!(
        std::fs::read(act.join("var/README")).unwrap(),
        b"preallocated\n"
    );
    let db = std::fs::read(act.join("var/db.img")).unwrap();
    assert!(db.len() == 64 << 20 && db.iter().all(|b| *b == 0));
    env.run(&["deactivate", "pa"]);
}
