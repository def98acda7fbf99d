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
