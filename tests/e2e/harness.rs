//! Shared helpers: a state directory per test, running the binary, reading
//! its JSON, and listing a root filesystem in the format of
//! `tests/fixtures/tree.py`.

use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_tarpool");

/// The transitions, in registration order (the CLI contract's names).
pub const STEPS: [&str; 10] = [
    "check-image-exists",
    "download",
    "classify",
    "parse-manifest",
    "fetch-layers",
    "check-unpacked",
    "unpack-layers",
    "create-snapshot",
    "update-tracking",
    "completed",
];

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn example_bucket() -> PathBuf {
    repo().join("tests/example-bucket")
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("tarpool-e2e-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir").arg(self.state()).args(args);
        c.env_remove("TARPOOL_FAILPOINTS");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running tarpool")
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tarpool {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tarpool {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn status(&self) -> BTreeMap<String, (String, Option<String>)> {
        let v = self.json(&["status", "--json"]);
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_string(),
                    (
                        i["state"].as_str().unwrap().to_string(),
                        i["error"].as_str().map(str::to_string),
                    ),
                )
            })
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Unmount anything a failed test left below the temporary directory.
        if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut mps: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(self.dir.path()))
                .collect();
            mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mps {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

/// Copies a directory tree (the example bucket) so a test can change it.
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn escape(p: &[u8]) -> String {
    let mut s = Vec::new();
    for &b in p {
        match b {
            b'\\' => s.extend_from_slice(b"\\\\"),
            b'\n' => s.extend_from_slice(b"\\n"),
            b => s.push(b),
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// Lists `root` like `tests/fixtures/tree.py`.
pub fn tree(root: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let mut lines: Vec<(Vec<u8>, String)> = Vec::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let mode = m.mode() & 0o7777;
            let owner = format!("{}:{}", m.uid(), m.gid());
            let r = escape(&rel);
            let line = if ft.is_dir() {
                stack.push(p.clone());
                format!("d {mode:04o} {owner} {r}")
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                format!("l {owner} {r} -> {}", escape(t.as_os_str().as_bytes()))
            } else if ft.is_file() {
                let data = std::fs::read(&p).unwrap();
                if m.nlink() > 1 {
                    inodes
                        .entry((m.dev(), m.ino()))
                        .or_default()
                        .push(rel.clone());
                }
                format!(
                    "f {mode:04o} {owner} {r} {} {}",
                    data.len(),
                    hex::encode(Sha256::digest(&data))
                )
            } else if ft.is_char_device() || ft.is_block_device() {
                let k = if ft.is_char_device() { 'c' } else { 'b' };
                let rdev = m.rdev();
                format!(
                    "{k} {mode:04o} {owner} {r} {}:{}",
                    libc::major(rdev),
                    libc::minor(rdev)
                )
            } else if ft.is_fifo() {
                format!("p {mode:04o} {owner} {r} 0:0")
            } else {
                format!("s {mode:04o} {owner} {r}")
            };
            lines.push((rel, line));
        }
    }
    lines.sort();
    let mut out: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    let mut groups: Vec<Vec<Vec<u8>>> = inodes.into_values().filter(|g| g.len() > 1).collect();
    for g in groups.iter_mut() {
        g.sort();
    }
    groups.sort();
    for g in groups {
        out.push(format!(
            "= {}",
            g.iter().map(|p| escape(p)).collect::<Vec<_>>().join(" ")
        ));
    }
    out.join("\n") + "\n"
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Files below `dir`, recursively (for "no temporary files remain").
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The images of the example bucket.
pub const IMAGES: [&str; 6] = [
    "adhoc",
    "adhoc-sibling",
    "dockersave",
    "many",
    "ociarchive",
    "ocilayout",
];

/// What `f` makes of `image` activated as `act` and mounted (it is given
/// the mount point and `activate`'s answer); then the activation is
/// deactivated, and its mount gone.
pub fn activated<T>(env: &Env, image: &str, act: &str, f: impl FnOnce(&Path, &Value) -> T) -> T {
    let mnt = env.dir.path().join(format!("mnt-{act}"));
    let v = env.json(&[
        "activate",
        image,
        "--as",
        act,
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    let out = f(&mnt, &v);
    let done = env.run(&["deactivate", act]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(mounts_under(&mnt).is_empty(), "deactivate unmounts");
    out
}

/// Activates `image` at a mount point, checks that it shows exactly
/// `tests/example-bucket/expected/IMAGE.tree`, and deactivates it.
pub fn check_activation(env: &Env, image: &str) {
    check_activation_as(env, image, image)
}

/// [`check_activation`] of `image` against the example image `expected`'s
/// tree (the same image under another name).
pub fn check_activation_as(env: &Env, image: &str, expected: &str) {
    let act = format!("act-{image}");
    let got = activated(env, image, &act, |mnt, v| {
        assert_eq!(v["activation"], act.as_str());
        assert_eq!(v["mount"]["type"], "overlay");
        let got = tree(mnt);
        // Writes go to the activation, not to the shared layers.
        std::fs::write(mnt.join("written-by-test"), b"x").unwrap();
        got
    });
    let want = std::fs::read_to_string(example_bucket().join(format!("expected/{expected}.tree")))
        .unwrap();
    if got != want {
        let diff = std::process::Command::new("diff")
            .arg(example_bucket().join(format!("expected/{expected}.tree")))
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(got.as_bytes())?;
                c.wait_with_output()
            })
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("activation of {image} differs from expected/{expected}.tree:\n{diff}");
    }
}

/// A bucket of the test's own holding copies of some example images.
pub fn bucket_with(env: &Env, images: &[&str]) -> PathBuf {
    let bucket = env.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    for i in images {
        copy_tree(
            &example_bucket().join("images").join(i),
            &bucket.join("images").join(i),
        );
    }
    bucket
}

/// Whether `tarpool audit NAME --json` output records a decision under
/// `rule` with `action` (`allow`, `reject`, `skip`, `strip`, ...) about a
/// path containing `path` (`""`: any, or none), with the rule's reason.
pub fn has_decision(audit: &Value, rule: &str, action: &str, path: &str) -> bool {
    audit["decisions"].as_array().unwrap().iter().any(|d| {
        d["rule"] == rule
            && d["action"] == action
            && (path.is_empty() || d["path"].as_str().is_some_and(|p| p.contains(path)))
            && !d["reason"].as_str().unwrap_or("").is_empty()
    })
}

/// A policy file in the test's directory, named `name`: the built-in
/// policy `base` (`default`, `strict`) with the first `from` made `to`
/// (`from` must be in it).
pub fn policy_file(env: &Env, name: &str, base: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join(format!("policies/{base}.toml"))).unwrap();
    assert!(text.contains(from), "policies/{base}.toml has no `{from}`");
    let path = env.dir.path().join(name);
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

/// Whether a `run --json` report says every image was unchanged (no run
/// started for any).
pub fn all_unchanged(report: &Value) -> bool {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["unchanged"] == true)
}

/// The images of a `run --json` report: `(name, state)`, in its order.
pub fn report_states(report: &Value) -> Vec<(String, String)> {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The top chain `status --json` gives image `name`.
pub fn top_chain(status: &Value, name: &str) -> Value {
    status["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap()["top_chain"]
        .clone()
}

/// Runs `cmd` with the failpoint `point` armed; whether it was SIGKILLed
/// there (otherwise it must have exited, not died another way).
pub fn killed_at(mut cmd: Command, point: &str) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    let out = cmd.env("TARPOOL_FAILPOINTS", point).output().unwrap();
    match out.status.signal() {
        Some(9) => true,
        other => {
            assert!(
                out.status.code().is_some(),
                "failpoint {point}: ended by {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
    }
}
