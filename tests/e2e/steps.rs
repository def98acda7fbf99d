//! Components offered as steps: `tarpool steps list` and `steps check`,
//! and a component the host must refuse, configured: each is refused in
//! one line, naming the component and why, before anything runs.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::harness::*;

/// A manifest-step component, written as text, importing `imports` (each
/// an instance with nothing in it) and exporting `parse`. It never runs:
/// the host refuses it from its type.
fn component(dir: &Path, name: &str, imports: &[&str]) -> (PathBuf, String) {
    let imports: String = imports
        .iter()
        .map(|i| format!("(import \"{i}\" (instance))\n"))
        .collect();
    let wasm = wat::parse_str(format!(
        r#"(component
            {imports}
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (export "parse" (func $f)))"#
    ))
    .unwrap();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, &wasm).unwrap();
    (path, hex::encode(Sha256::digest(&wasm)))
}

/// The refusals of each component, as `steps check` prints them and as
/// a configuration that pins it meets them.
#[test]
fn components_the_host_cannot_load_are_refused_in_one_line() {
    let env = Env::new();
    let dir = env.dir.path();
    let types = "tarpool:steps/types@0.1.0";
    let source = "tarpool:steps/source@0.1.0";
    let big = dir.join("big.wasm");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(17 << 20).unwrap();
    let big_sha = hex::encode(Sha256::digest(std::fs::read(&big).unwrap()));
    for ((path, sha), why) in [
        (
            component(dir, "newer", &["tarpool:steps/types@0.2.0", "tarpool:steps/source@0.2.0"]),
            "manifest-step was built against tarpool:steps@0.2.0; this host has 0.1.0 and loads 0.1.x up to 0.1.0",
        ),
        (
            component(dir, "files", &[types, source, "wasi:filesystem/preopens@0.2.6"]),
            "manifest-step imports what the host does not give a step: wasi:filesystem/preopens@0.2.6",
        ),
        ((big, big_sha), "is 17825792 bytes: a component is at most 16777216 bytes"),
    ] {
        // The dev loop: `steps check` says why, and exits 1.
        let out = env.run(&["steps", "check", path.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        let refused: Vec<&str> = stdout.lines().filter(|l| l.starts_with("refused: ")).collect();
        assert_eq!(refused.len(), 1, "{stdout}");
        // (`steps check` names the size, not the file, in its own line.)
        assert!(refused[0].contains(why.trim_start_matches("is ")), "{stdout}");
        let out = env.run(&["steps", "check", path.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["accepted"], false, "{v}");

        // Pinned in the configuration: the run stops before anything, in
        // one line naming the component.
        let config = dir.join("tarpool.toml");
        std::fs::write(
            &config,
            format!(
                "source = \"dir:{}\"\n[steps]\nmanifest = [\"builtin:manifest\", {{ path = {:?}, sha256 = \"{sha}\" }}]\n",
                example_bucket().display(),
                path.to_str().unwrap()
            ),
        )
        .unwrap();
        let out = env.run(&["--config", config.to_str().unwrap(), "run", "--once"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let line = stderr
            .lines()
            .find(|l| l.contains(why))
            .unwrap_or_else(|| panic!("no `{why}` in {stderr}"));
        assert!(line.contains(path.to_str().unwrap()), "{line}");
        assert!(env.status().is_empty(), "nothing ran");
    }
}

/// `steps list` names every configured component with its world, origin
/// and WIT version.
#[test]
fn steps_list_names_the_chains() {
    let env = Env::new();
    let v = env.json(&["steps", "list", "--json"]);
    assert_eq!(v["wit_version"], "0.1.0");
    let rows: Vec<String> = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {} {}",
                c["step"].as_str().unwrap(),
                c["world"].as_str().unwrap(),
                c["component"].as_str().unwrap(),
                c["wit_version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "classify classify-step builtin:classify 0.1.0",
            "manifest manifest-step builtin:manifest 0.1.0",
            "manifest manifest-step builtin:rootfs-dir 0.1.0",
            "tar-check tar-check-step builtin:tarcheck 0.1.0",
        ]
    );
}
