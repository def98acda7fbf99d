//! What tarpool keeps from the host's other users, and what it refuses to
//! delete: an image's setuid-root program gives a local user no privilege
//! from anywhere tarpool stores or mounts it (the class of moby
//! CVE-2021-41091); the state directory is private whatever the umask,
//! and repaired at start; a state directory whose database is lost is
//! refused, not wiped, until `tarpool recover`.

use crate::harness::*;
use sha2::{Digest, Sha256};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

/// A two-layer docker-save archive whose second layer holds `bin/id` (the
/// host's, so it runs from the host's paths) setuid root.
fn setuid_image() -> Vec<u8> {
    let mut one = tar::Builder::new(Vec::new());
    for d in ["bin", "etc"] {
        one.append(&header(d, tar::EntryType::Directory, 0o755, 0), &[][..])
            .unwrap();
    }
    let one = one.into_inner().unwrap();
    let id = std::fs::read("/usr/bin/id").unwrap();
    let mut two = tar::Builder::new(Vec::new());
    two.append(
        &header("bin/id", tar::EntryType::Regular, 0o4755, id.len() as u64),
        &id[..],
    )
    .unwrap();
    let two = two.into_inner().unwrap();
    let diff = |l: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(l)));
    let config = serde_json::json!({
        "os": "linux",
        "config": { "Cmd": ["/bin/id"] },
        "rootfs": { "type": "layers", "diff_ids": [diff(&one), diff(&two)] },
    });
    let manifest =
        r#"[{"Config":"config.json","RepoTags":["s:1"],"Layers":["one.tar","two.tar"]}]"#;
    let mut a = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", manifest.as_bytes()),
        ("config.json", config.to_string().as_bytes()),
        ("one.tar", &one[..]),
        ("two.tar", &two[..]),
    ] {
        a.append(
            &header(name, tar::EntryType::Regular, 0o644, data.len() as u64),
            data,
        )
        .unwrap();
    }
    a.into_inner().unwrap()
}

/// Runs `path -u` as nobody: its effective uid, or the error that stopped it.
/// Through a shell that setpriv starts as nobody: setpriv's own execve may
/// still hold its capabilities when it looks the path up.
fn euid_as_nobody(path: &Path) -> Result<String, String> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["sh", "-c", "exec \"$0\" -u"])
        .arg(path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `path` run as nobody gives no privilege: refused, or run as nobody.
fn check_no_privilege(path: &Path) {
    match euid_as_nobody(path) {
        Ok(uid) => assert_eq!(uid, "65534", "{} ran as uid {uid}", path.display()),
        Err(e) => assert!(
            e.contains("Permission denied"),
            "{}: unexpected error {e}",
            path.display()
        ),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Every directory and file tarpool made under `state` (not the image
/// trees, whose modes are the image's) is 0700 or 0600.
fn check_private(state: &Path) {
    assert_eq!(mode(state), 0o700, "the state directory");
    let mut stack = vec![state.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(state).unwrap();
            let depth = rel.components().count();
            let image_tree = (rel.starts_with("overlay/layers")
                || rel.starts_with("overlay/activations"))
                && depth >= 4;
            let m = std::fs::symlink_metadata(&p).unwrap();
            if image_tree || m.file_type().is_symlink() {
                continue;
            }
            assert_eq!(
                mode(&p) & 0o077,
                0,
                "{} is {:o}: open to other users",
                rel.display(),
                mode(&p)
            );
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
}

fn layer_copies(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state.join("overlay/layers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("fs/bin/id"))
        .filter(|p| p.exists())
        .collect();
    v.sort();
    v
}

#[test]
fn setuid_files_give_other_users_nothing_and_the_state_dir_is_private() {
    let env = Env::new();
    // The test's own directory is open to all, as /var/lib is: only what
    // tarpool does keeps other users out.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bucket = env.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    std::fs::write(bucket.join("images/s.tar"), setuid_image()).unwrap();
    // An open umask, as a careless caller's.
    let mut c = env.cmd(&["run", "--once", "--source", bucket.to_str().unwrap()]);
    // SAFETY: pre_exec runs in the forked child before exec; umask is
    // async-signal-safe and touches nothing else.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::umask(0o000);
            Ok(())
        });
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.status()["s"].0, "ready");
    let state = env.state();
    check_private(&state);
    assert_eq!(mode(&state.join("state.db")), 0o600);

    let copies = layer_copies(&state);
    assert_eq!(copies.len(), 1, "the setuid file is in one layer");
    assert_eq!(mode(&copies[0]), 0o4755, "the image's own mode is kept");
    for p in &copies {
        check_no_privilege(p);
    }

    // A mounted activation is nosuid: reachable, but no privilege.
    let mnt = env.dir.path().join("mnt");
    let act = env.json(&[
        "activate",
        "s",
        "--as",
        "plain",
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    assert!(
        act["mount"]["options"]
            .as_str()
            .unwrap()
            .ends_with("nosuid,nodev"),
        "{act}"
    );
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(euid_as_nobody(&mnt.join("bin/id")), Ok("65534".into()));

    // The test can fail: with --suid the same file makes nobody root.
    let suid = env.dir.path().join("suid");
    env.json(&[
        "activate",
        "s",
        "--as",
        "suid",
        "--mount",
        suid.to_str().unwrap(),
        "--suid",
    ]);
    assert_eq!(euid_as_nobody(&suid.join("bin/id")), Ok("0".into()));
    env.json(&["deactivate", "suid"]);

    // A state directory left open (an older tarpool, a careless chmod) is
    // closed again at the next start.
    for (p, m) in [
        (state.clone(), 0o755),
        (state.join("overlay"), 0o755),
        (state.join("overlay/layers"), 0o755),
        (
            copies[0]
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .to_path_buf(),
            0o755,
        ),
        (state.join("state.db"), 0o644),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    assert_eq!(
        euid_as_nobody(&copies[0]),
        Ok("0".into()),
        "open, it is an exploit"
    );
    let out = env.run(&["run", "--once", "--source", bucket.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_private(&state);
    check_no_privilege(&copies[0]);
    assert_eq!(mode(&copies[0]), 0o4755, "the image's own mode is kept");
    env.json(&["deactivate", "plain"]);
}

#[test]
fn a_relative_state_dir_works_for_multi_layer_images() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    std::fs::write(bucket.join("images/s.tar"), setuid_image()).unwrap();
    let out = Command::new(BIN)
        .current_dir(env.dir.path())
        .args([
            "--state-dir",
            "state",
            "run",
            "--once",
            "--source",
            "bucket",
        ])
        .env_remove("TARPOOL_FAILPOINTS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.status()["s"], ("ready".to_string(), None));
}

/// Every layer directory and activation under `state`, with its files.
fn stored(state: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for d in ["overlay/layers", "overlay/activations"] {
        for e in std::fs::read_dir(state.join(d)).unwrap() {
            v.push(format!("{d}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    v.sort();
    v
}

#[test]
fn a_lost_database_is_refused_until_recovered_and_nothing_is_deleted() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    std::fs::write(bucket.join("images/s.tar"), setuid_image()).unwrap();
    let src = ["run", "--once", "--source", bucket.to_str().unwrap()];
    assert!(env.run(&src).status.success());
    env.json(&["activate", "s", "--as", "keep"]);
    let state = env.state();
    let upper = state.join("overlay/activations/keep/upper");
    std::fs::write(upper.join("user-data"), "precious").unwrap();
    let before = stored(&state);
    assert_eq!(before.len(), 3, "{before:?}");

    for lose in ["delete", "empty"] {
        let db = state.join("state.db");
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(state.join(f));
        }
        if lose == "empty" {
            std::fs::write(&db, "").unwrap();
        }
        for args in [&src[..], &["status"], &["gc"], &["activate", "s"]] {
            let out = env.run(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{lose}: {args:?} ran");
            assert!(
                err.contains("holds tarpool data") && err.contains("nothing was deleted"),
                "{lose}: {args:?}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert_eq!(stored(&state), before, "{lose}: {args:?} deleted something");
        }
    }
    let out = env.json(&["recover", "--json"]);
    let moved = PathBuf::from(out["moved_to"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(moved.join("overlay/activations/keep/upper/user-data")).unwrap(),
        "precious",
        "the activation's writes are moved aside, not deleted"
    );
    assert!(state
        .join("blobs/sha256")
        .read_dir()
        .unwrap()
        .next()
        .is_some());
    let out = env.run(&["recover"]);
    assert!(
        !out.status.success(),
        "a usable database is not recovered again"
    );
    assert!(env.run(&src).status.success());
    assert_eq!(env.status()["s"], ("ready".to_string(), None));
    // The moved-aside trees keep the image's modes (repair does not enter
    // them), and stay out of other users' reach.
    let kept = layer_copies(&moved);
    assert_eq!(kept.len(), 1);
    assert_eq!(mode(&kept[0]), 0o4755);
    check_no_privilege(&kept[0]);
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A layer holding `files` (path, contents).
fn layer_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        b.append(
            &header(p, tar::EntryType::Regular, 0o644, data.len() as u64),
            data.as_bytes(),
        )
        .unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A docker-save archive of `layers` (as stored: tar or gzip) whose config
/// claims `diff_ids`.
fn docker_archive(layers: &[Vec<u8>], diff_ids: &[String]) -> Vec<u8> {
    let config = serde_json::json!({
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string();
    let names: Vec<String> = (0..layers.len()).map(|i| format!("l{i}.tar")).collect();
    let manifest =
        serde_json::json!([{ "Config": "config.json", "RepoTags": ["x:1"], "Layers": names }])
            .to_string();
    let mut members = vec![
        ("manifest.json".to_string(), manifest.into_bytes()),
        ("config.json".to_string(), config.into_bytes()),
    ];
    members.extend(names.into_iter().zip(layers.iter().cloned()));
    let mut a = tar::Builder::new(Vec::new());
    for (name, data) in &members {
        a.append(
            &header(name, tar::EntryType::Regular, 0o644, data.len() as u64),
            &data[..],
        )
        .unwrap();
    }
    a.into_inner().unwrap()
}

/// An OCI layout directory at `dir` whose manifest names each layer by the
/// digest `claimed` while the blob file holds `bytes`, and whose config
/// claims `diff_ids`.
fn oci_layout(dir: &Path, layers: &[(Vec<u8>, String)], diff_ids: &[String]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |digest: &str, data: &[u8]| {
        std::fs::write(blobs.join(digest.strip_prefix("sha256:").unwrap()), data).unwrap();
    };
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string();
    put(&sha(config.as_bytes()), config.as_bytes());
    let descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(bytes, claimed)| {
            put(claimed, bytes);
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": claimed,
                "size": bytes.len(),
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(config.as_bytes()),
            "size": config.len(),
        },
        "layers": descs,
    })
    .to_string();
    put(&sha(manifest.as_bytes()), manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(manifest.as_bytes()),
            "size": manifest.len(),
        }],
    })
    .to_string();
    std::fs::write(dir.join("index.json"), index).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// The images' states after a run: (name, state, error fragment).
fn check_states(env: &Env, expected: &[(&str, &str, &str)]) {
    let st = env.status();
    for (name, state, frag) in expected {
        let (got, err) = &st[*name];
        let err = err.clone().unwrap_or_default();
        assert_eq!(got, state, "{name}: {err}");
        assert!(
            err.contains(frag),
            "{name}: {err:?} does not contain {frag:?}"
        );
    }
}

#[test]
fn an_image_cannot_claim_another_images_stored_layers() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    let images = bucket.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let secret = [
        layer_of(&[("etc/secret", "the victim's key")]),
        layer_of(&[("etc/more", "the victim's second layer")]),
    ];
    let secret_diffs: Vec<String> = secret.iter().map(|l| sha(l)).collect();
    let zipped: Vec<Vec<u8>> = secret.iter().map(|l| gzip(l)).collect();
    std::fs::write(
        images.join("victim.tar"),
        docker_archive(&secret, &secret_diffs),
    )
    .unwrap();
    std::fs::write(
        images.join("victim-gz.tar"),
        docker_archive(&zipped, &secret_diffs),
    )
    .unwrap();
    let src = ["run", "--once", "--source", bucket.to_str().unwrap()];
    let out = env.run(&src);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_states(&env, &[("victim", "ready", ""), ("victim-gz", "ready", "")]);

    let junk = [layer_of(&[("a", "junk")]), layer_of(&[("b", "junk")])];
    // Claimants: the victim's diff IDs, their own (other) layer bytes.
    std::fs::write(
        images.join("claim-tar.tar"),
        docker_archive(&junk, &secret_diffs),
    )
    .unwrap();
    let junk_gz: Vec<Vec<u8>> = junk.iter().map(|l| gzip(l)).collect();
    std::fs::write(
        images.join("claim-gz.tar"),
        docker_archive(&junk_gz, &secret_diffs),
    )
    .unwrap();
    // A gzip stream whose trailing CRC is wrong: only decompressing it to
    // the end (in the worker) tells.
    let mut bad_crc = gzip(&junk[0]);
    let at = bad_crc.len() - 6;
    bad_crc[at] ^= 0xff;
    std::fs::write(
        images.join("claim-garbage.tar"),
        docker_archive(&[bad_crc], &secret_diffs[..1]),
    )
    .unwrap();
    // The manifest names the victim's blobs by digest; the files hold junk.
    oci_layout(
        &images.join("claim-oci"),
        &[
            (junk[0].clone(), sha(&secret[0])),
            (junk[1].clone(), sha(&secret[1])),
        ],
        &secret_diffs,
    );
    // Honest images made of the same layer bytes may share them.
    std::fs::write(
        images.join("same.tar"),
        docker_archive(&secret, &secret_diffs),
    )
    .unwrap();
    std::fs::write(
        images.join("same-gz.tar"),
        docker_archive(&zipped, &secret_diffs),
    )
    .unwrap();
    oci_layout(
        &images.join("same-oci"),
        &[
            (secret[0].clone(), sha(&secret[0])),
            (secret[1].clone(), sha(&secret[1])),
        ],
        &secret_diffs,
    );
    // Exits 1: some images failed.
    let out = env.run(&src);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_states(
        &env,
        &[
            ("victim", "ready", ""),
            (
                "claim-tar",
                "failed",
                "layer 1: diff ID mismatch: the image's config says",
            ),
            (
                "claim-gz",
                "failed",
                "layer 1: diff ID mismatch: the image's config says",
            ),
            (
                "claim-garbage",
                "failed",
                "layer 1: corrupt compressed data",
            ),
            (
                "claim-oci",
                "failed",
                "layer 1: digest mismatch: manifest says",
            ),
            ("same", "ready", ""),
            ("same-gz", "ready", ""),
            ("same-oci", "ready", ""),
        ],
    );
    // The shared gzip layers were verified when victim-gz was unpacked: no
    // worker had to decompress them again for same-gz.
    let audit = env.json(&["audit", "same-gz", "--json"]);
    let text = audit.to_string();
    assert!(text.contains("\"hashed_in_worker\":0"), "{text}");
}
