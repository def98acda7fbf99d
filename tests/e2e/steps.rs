//! Components offered as steps: `tarpool steps list` and `steps check`,
//! and a component the host must refuse, configured: each is refused in
//! one line, naming the component and why, before anything runs.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::harness::*;

/// `wasm` written to `dir/NAME.wasm`, pinned: its path and sha256.
fn written(dir: &Path, name: &str, wasm: &[u8]) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    pinned(path)
}

/// A component file and its sha256, as `[steps]` pins it.
fn pinned(path: PathBuf) -> (PathBuf, String) {
    let sha = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
    (path, sha)
}

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
    written(dir, name, &wasm)
}

/// The refusals of each component, as `steps check` prints them and as
/// a configuration that pins it meets them.
#[test]
fn components_the_host_cannot_load_are_refused_in_one_line() {
    let env = Env::new();
    let dir = env.dir.path();
    let types = "tarpool:steps/types@0.1.1";
    let source = "tarpool:steps/source@0.1.1";
    let big = dir.join("big.wasm");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(17 << 20).unwrap();
    for ((path, sha), why) in [
        (
            component(dir, "newer", &["tarpool:steps/types@0.2.0", "tarpool:steps/source@0.2.0"]),
            "manifest-step was built against tarpool:steps@0.2.0; this host has 0.1.2 and loads 0.1.x up to 0.1.2",
        ),
        (
            component(dir, "files", &[types, source, "wasi:filesystem/preopens@0.2.6"]),
            "manifest-step imports what the host does not give a step: wasi:filesystem/preopens@0.2.6",
        ),
        (pinned(big), "is 17825792 bytes: a component is at most 16777216 bytes"),
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
/// and WIT version: the inspect steps of both worlds, one built against an
/// older patch of the WIT.
#[test]
fn steps_list_names_the_chains() {
    let env = Env::new();
    let rows = |v: &serde_json::Value| -> Vec<String> {
        v["components"]
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
            .collect()
    };
    let v = env.json(&["steps", "list", "--json"]);
    assert_eq!(v["wit_version"], "0.1.2");
    let builtins = [
        "classify classify-step builtin:classify 0.1.2",
        "manifest manifest-step builtin:manifest 0.1.2",
        "manifest manifest-step builtin:rootfs-dir 0.1.2",
        "tar-check tar-check-step builtin:tarcheck 0.1.2",
    ];
    assert_eq!(rows(&v), builtins);
    let example = example_inspect();
    let old = inspect_component(env.dir.path(), "headers", "i32.const 0");
    let config = inspect_config(&env, env.dir.path(), &[example.clone(), old.clone()]);
    let v = env.json(&[
        "--config",
        config.to_str().unwrap(),
        "steps",
        "list",
        "--json",
    ]);
    let mut want: Vec<String> = builtins.iter().map(|s| s.to_string()).collect();
    want.push(format!(
        "inspect inspect-contents-step {} 0.1.2",
        example.0.display()
    ));
    want.push(format!("inspect inspect-step {} 0.1.1", old.0.display()));
    assert_eq!(rows(&v), want);
}

/// An example step under `examples/` (its directory), built as its
/// Cargo.toml says, outside the workspace: its file and sha256.
fn example(name: &str) -> (PathBuf, String) {
    static BUILT: std::sync::Mutex<Vec<(String, (PathBuf, String))>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, b)) = built.iter().find(|(n, _)| n == name) {
        return b.clone();
    }
    let dir = repo().join("examples").join(name);
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--release",
        ])
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building examples/{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = dir
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let pin = pinned(wasm);
    built.push((name.to_string(), pin.clone()));
    pin
}

/// The example inspect step (`examples/inspect-rules`).
fn example_inspect() -> (PathBuf, String) {
    example("inspect-rules")
}

/// An ad-hoc image of one layer of regular files (path, mode) that say
/// "hi".
fn adhoc(bucket: &Path, name: &str, files: &[(&str, u32)]) {
    let files: Vec<(&str, u32, &[u8])> = files.iter().map(|&(p, m)| (p, m, &b"hi\n"[..])).collect();
    adhoc_with(bucket, name, &files);
}

/// An ad-hoc image of one layer of regular files (path, mode, contents).
fn adhoc_with(bucket: &Path, name: &str, files: &[(&str, u32, &[u8])]) {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let dir = bucket.join("images").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("1.tar"), b.into_inner().unwrap()).unwrap();
}

fn inspect_config(env: &Env, bucket: &Path, steps: &[(PathBuf, String)]) -> PathBuf {
    let pins: Vec<String> = steps
        .iter()
        .map(|(p, sha)| format!("{{ path = {:?}, sha256 = \"{sha}\" }}", p.to_str().unwrap()))
        .collect();
    let config = env.dir.path().join("tarpool.toml");
    std::fs::write(
        &config,
        format!(
            "source = \"dir:{}\"\n[steps]\ninspect = [{}]\n",
            bucket.display(),
            pins.join(", ")
        ),
    )
    .unwrap();
    config
}

/// The example inspect step, pinned: it denies a root image and a setuid
/// file outside /bin, skips an editor's backup, lets the rest through; the
/// audit names each rule and the step that decided.
#[test]
fn the_example_inspect_step_denies_and_skips_and_the_audit_names_its_rules() {
    let env = Env::new();
    let example = example_inspect();
    let out = env.run(&["steps", "check", example.0.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bucket = bucket_with(&env, &["adhoc", "dockersave.tar"]);
    adhoc(
        &bucket,
        "tricky",
        &[("etc/conf", 0o644), ("opt/tool", 0o4755)],
    );
    adhoc(
        &bucket,
        "backups",
        &[
            ("etc/motd", 0o644),
            ("etc/motd~", 0o644),
            ("etc/.motd.swp", 0o600),
        ],
    );
    let config = inspect_config(&env, &bucket, std::slice::from_ref(&example));
    let out = env.run(&["--config", config.to_str().unwrap(), "run", "--once"]);
    let status = env.status();
    let state = |n: &str| status[n].0.as_str();
    assert_eq!(
        state("adhoc"),
        "ready",
        "{status:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state("backups"), "ready", "{status:?}");
    assert_eq!(state("tricky"), "failed", "{status:?}");
    assert_eq!(state("dockersave"), "failed", "{status:?}");
    let label = example.0.to_str().unwrap();
    let why = |n: &str| status[n].1.clone().unwrap_or_default();
    assert!(
        why("dockersave").contains(&format!(
            "inspect step {label}: rule no-root-user: the image runs as root"
        )),
        "{}",
        why("dockersave")
    );
    assert!(
        why("tricky").contains("setuid-outside-bin"),
        "{}",
        why("tricky")
    );
    for w in [why("dockersave"), why("tricky")] {
        assert!(!w.contains('\n'), "{w}");
    }

    let audit = env.json(&["audit", "tricky", "--json"]);
    assert!(
        has_decision(&audit, "setuid-outside-bin", "reject", "opt/tool"),
        "{audit}"
    );
    let audit = env.json(&["audit", "dockersave", "--json"]);
    assert!(
        has_decision(&audit, "no-root-user", "reject", ""),
        "{audit}"
    );
    let audit = env.json(&["audit", "backups", "--json"]);
    for path in ["etc/motd~", "etc/.motd.swp"] {
        assert!(
            has_decision(&audit, "no-editor-backups", "skip", path),
            "{audit}"
        );
    }
    let d = audit["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["rule"] == "no-editor-backups")
        .unwrap();
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("inspect step {label}: ")),
        "{d}"
    );

    // What was skipped is not in the layer.
    activated(&env, "backups", "b", |mnt, _| {
        assert!(mnt.join("etc/motd").exists());
        assert!(!mnt.join("etc/motd~").exists() && !mnt.join("etc/.motd.swp").exists());
    });

    // Layers judged by the step are not those of a run without it: taking
    // the step out runs every image again (their fingerprints named it),
    // and the same image unpacked with no inspect step is another snapshot.
    let judged = top_chain(&env.json(&["status", "--json"]), "adhoc");
    std::fs::write(&config, format!("source = \"dir:{}\"\n", bucket.display())).unwrap();
    std::fs::remove_dir_all(bucket.join("images/backups")).unwrap();
    adhoc(
        &bucket,
        "backups",
        &[("etc/motd", 0o644), ("etc/motd~", 0o600)],
    );
    env.run(&["--config", config.to_str().unwrap(), "run", "--once"]);
    let status = env.json(&["status", "--json"]);
    let unjudged = top_chain(&status, "adhoc");
    assert!(
        unjudged.is_string() && unjudged != judged,
        "{judged} {unjudged}"
    );
    activated(&env, "backups", "b2", |mnt, _| {
        assert!(
            mnt.join("etc/motd~").exists(),
            "no inspect step: nothing skipped"
        );
    });
}

/// The example step's rules that read small files: an `etc/shadow` that
/// gives root an empty password fails its image; private keys, and a key
/// file over the 64 KiB a step may read, are left out of the layer while a
/// certificate, a public key and a certificate bundle over 64 KiB (with a
/// note) are written; the audit names each rule, and `steps try` shows the
/// same answers. A layer with more files than the policy lets a step
/// read fails in one line.
#[test]
fn the_example_inspect_step_reads_small_files_before_they_are_written() {
    let env = Env::new();
    let example = example_inspect();
    let bucket = env.dir.path().join("bucket");
    let key = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n";
    let rsa = b"-----BEGIN RSA PRIVATE KEY-----\nMIIEow==\n-----END RSA PRIVATE KEY-----\n";
    let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let mut big = rsa.to_vec();
    big.resize(64 * 1024 + 1, b'\n');
    let bundle = cert.repeat(64 * 1024 / cert.len() + 1);
    adhoc_with(
        &bucket,
        "keys",
        &[
            ("root/.ssh/id_ed25519", 0o600, key),
            ("root/.ssh/id_ed25519.pub", 0o644, b"ssh-ed25519 AAAA\n"),
            ("srv/tls/server.key", 0o600, rsa),
            ("srv/tls/server.pem", 0o644, cert),
            ("srv/tls/big.key", 0o600, &big),
            ("srv/tls/bundle.pem", 0o644, &bundle),
            ("etc/shadow", 0o640, b"root:*:19000:0:99999:7:::\n"),
        ],
    );
    adhoc_with(
        &bucket,
        "open-root",
        &[
            ("etc/motd", 0o644, b"hi\n"),
            (
                "etc/shadow",
                0o640,
                b"daemon:*:1::::::\nroot::19000:0:99999:7:::\n",
            ),
        ],
    );
    let config = inspect_config(&env, &bucket, std::slice::from_ref(&example));
    let out = env.run(&["--config", config.to_str().unwrap(), "run", "--once"]);
    let status = env.status();
    assert_eq!(
        status["keys"].0,
        "ready",
        "{status:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (state, why) = &status["open-root"];
    let why = why.clone().unwrap_or_default();
    assert_eq!(state, "failed", "{status:?}");
    let label = example.0.display();
    assert!(
        why.contains("`etc/shadow`")
            && why.contains(&format!(
                "inspect step {label}: etc/shadow gives root an empty password (rule no-empty-root-password)"
            ))
            && !why.contains('\n'),
        "{why}"
    );
    let audit = env.json(&["audit", "open-root", "--json"]);
    assert!(
        has_decision(&audit, "no-empty-root-password", "reject", "etc/shadow"),
        "{audit}"
    );
    let audit = env.json(&["audit", "keys", "--json"]);
    for path in [
        "root/.ssh/id_ed25519",
        "srv/tls/server.key",
        "srv/tls/big.key",
    ] {
        assert!(
            has_decision(&audit, "no-private-keys", "skip", path),
            "{path}: {audit}"
        );
    }
    assert!(
        has_decision(&audit, "no-private-keys", "note", "srv/tls/bundle.pem"),
        "{audit}"
    );
    activated(&env, "keys", "k", |mnt, _| {
        assert!(!mnt.join("root/.ssh/id_ed25519").exists());
        assert!(!mnt.join("srv/tls/server.key").exists());
        assert_eq!(std::fs::read(mnt.join("srv/tls/server.pem")).unwrap(), cert);
        assert!(!mnt.join("srv/tls/big.key").exists());
        assert_eq!(
            std::fs::read(mnt.join("srv/tls/bundle.pem")).unwrap(),
            bundle
        );
        assert!(mnt.join("root/.ssh/id_ed25519.pub").exists());
        assert!(mnt.join("etc/shadow").exists());
    });

    // `steps try` gives the same answers, the layer as it is and gzipped
    // (which the confined worker decompresses for it).
    // (An ad-hoc image's layers are `N.tar` whatever their compression.)
    let gz = env.dir.path().join("try/images/keys-gz");
    std::fs::create_dir_all(&gz).unwrap();
    let zipped = std::process::Command::new("gzip")
        .arg("-c")
        .arg(bucket.join("images/keys/1.tar"))
        .stdout(std::fs::File::create(gz.join("1.tar")).unwrap())
        .status()
        .unwrap();
    assert!(zipped.success());
    for image in [bucket.join("images/keys"), gz] {
        let out = env.run(&[
            "steps",
            "try",
            example.0.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for path in ["root/.ssh/id_ed25519", "srv/tls/server.key"] {
            assert!(
                text.contains(&format!(
                    "skip no-private-keys {path} (its contents): a private key"
                )),
                "{text}"
            );
        }
        assert!(
            text.contains("skip no-private-keys srv/tls/big.key: a key file that cannot be read"),
            "{text}"
        );
        assert!(!text.contains("server.pem"), "{text}");
    }

    // Under a policy that lets a step read three files of a layer, an
    // image whose layer it wants four of fails at the fourth, in one line
    // naming the rule (a policy rule: the audit gives its reason).
    adhoc_with(
        &bucket,
        "four-keys",
        &[
            ("k/a.key", 0o644, b"a\n"),
            ("k/b.key", 0o644, b"b\n"),
            ("k/c.key", 0o644, b"c\n"),
            ("k/d.key", 0o644, b"d\n"),
        ],
    );
    let policy = policy_file(
        &env,
        "three.toml",
        "default",
        "limit = 1000000\n",
        "limit = 3\n",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("policy = {:?}\n{text}", policy.to_str().unwrap()),
    )
    .unwrap();
    env.run(&["--config", config.to_str().unwrap(), "run", "--once"]);
    let status = env.status();
    let (state, why) = &status["four-keys"];
    let why = why.clone().unwrap_or_default();
    assert_eq!(state, "failed", "{status:?}");
    assert!(
        why.contains(&format!(
            "`k/d.key`: inspect step {} wants the contents of more than 3 files of this layer (rule max-contents-files)",
            example.0.display()
        )) && !why.contains('\n'),
        "{why}"
    );
    let audit = env.json(&["audit", "four-keys", "--json"]);
    assert!(
        has_decision(&audit, "max-contents-files", "reject", "k/d.key"),
        "{audit}"
    );
}

/// An inspect-step component written as text, whose calls
/// run `body` (a trap, or a loop that burns its fuel).
fn inspect_component(dir: &Path, name: &str, body: &str) -> (PathBuf, String) {
    let p16 = "i32 ".repeat(16);
    let types = include_str!("../support/inspect-types.wat");
    let wasm = wat::parse_str(format!(
        r#"(component
            (core module $m
                (memory (export "mem") 1)
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 64)
                (func (export "check-image") (param {p16}) (result i32) {body})
                (func (export "check-entries") (param i32 i32 i32) (result i32) {body}))
            (core instance $i (instantiate $m))
            {types}
            (instance $inst (export "check-image" (func $ci)) (export "check-entries" (func $ce)))
            (export "tarpool:steps/inspect@0.1.1" (instance $inst)))"#
    ))
    .unwrap();
    written(dir, name, &wasm)
}

/// An inspect step that traps, or runs out of fuel, fails each image in one
/// line naming it; the run goes on to the end.
#[test]
fn an_inspect_step_that_traps_or_loops_fails_the_images_in_one_line() {
    for (name, body, why) in [
        (
            "trap",
            "unreachable",
            "wasm trap: wasm `unreachable` instruction executed",
        ),
        ("loop", "(loop $l (br $l)) i32.const 0", "all fuel consumed"),
    ] {
        let env = Env::new();
        let step = inspect_component(env.dir.path(), name, body);
        let out = env.run(&["steps", "check", step.0.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let bucket = bucket_with(&env, &["adhoc", "dockersave.tar"]);
        let config = inspect_config(&env, &bucket, std::slice::from_ref(&step));
        env.run(&["--config", config.to_str().unwrap(), "run", "--once"]);
        let status = env.status();
        for image in ["adhoc", "dockersave"] {
            let (state, why_failed) = &status[image];
            let w = why_failed.clone().unwrap_or_default();
            assert_eq!(state, "failed", "{name} {image}: {status:?}");
            assert!(!w.contains('\n'), "{w}");
            assert!(
                w.contains(&format!("inspect step {}", step.0.display())),
                "{w}"
            );
            assert!(w.contains(why), "{name}: {w}");
        }
    }
}

/// `steps try`: the chains with the candidate in, against a local image,
/// printing the layout and every inspect answer; no state directory is
/// touched.
#[test]
fn steps_try_shows_the_layout_and_every_answer_without_a_state_directory() {
    let env = Env::new();
    let example = example_inspect();
    let bucket = env.dir.path().join("bucket");
    adhoc(
        &bucket,
        "mixed",
        &[
            ("usr/bin/su", 0o4755),
            ("etc/motd~", 0o644),
            ("opt/tool", 0o4755),
        ],
    );
    let out = env.run(&[
        "steps",
        "try",
        example.0.to_str().unwrap(),
        bucket.join("images/mixed").to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["candidate"]["step"], "inspect", "{v}");
    assert_eq!(v["manifest"]["format"], "ad-hoc", "{v}");
    assert_eq!(
        v["image"],
        serde_json::json!([]),
        "no configuration: not judged"
    );
    let answers: Vec<String> = v["layers"][0]["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a["verdict"].as_str().unwrap(),
                a["rule"].as_str().unwrap(),
                a["path"].as_str().unwrap()
            )
        })
        .collect();
    // The deny ends the layer: nothing after opt/tool is shown.
    assert_eq!(
        answers,
        [
            "skip no-editor-backups etc/motd~",
            "deny setuid-outside-bin opt/tool"
        ]
    );
    assert!(
        !env.state().join("state.db").exists(),
        "no state directory was made"
    );

    // A docker archive: its configuration is judged too.
    let out = env.run(&[
        "steps",
        "try",
        example.0.to_str().unwrap(),
        example_bucket()
            .join("images/dockersave.tar")
            .to_str()
            .unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("manifest: docker-archive"), "{text}");
    assert!(
        text.contains("deny no-root-user: the image runs as root"),
        "{text}"
    );

    // A gzipped archive with gzip layers, and a layout with zstd layers:
    // the confined worker decompresses each, and every layer is inspected.
    for (image, format) in [
        ("ociarchive.tar.gz", "oci-archive"),
        ("ocilayout", "oci-layout"),
    ] {
        let out = env.run(&[
            "steps",
            "try",
            example.0.to_str().unwrap(),
            example_bucket()
                .join("images")
                .join(image)
                .to_str()
                .unwrap(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(v["manifest"]["format"], format, "{v}");
        let layers = v["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3, "{v}");
        for l in layers {
            assert_eq!(l["inspected"], true, "{image}: {l}");
        }
    }
}

/// The example manifest step (`examples/manifest-skopeo-dir`), pinned after
/// the built-in ones: images `skopeo copy ... dir:` wrote (from an OCI
/// layout, and from a `docker save` archive) end ready with the same root
/// filesystems as their originals, under a policy that allows the format.
#[test]
fn images_in_skopeos_dir_layout_are_ready_through_the_example_manifest_step() {
    let env = Env::new();
    let (wasm, sha) = example("manifest-skopeo-dir");
    let bucket = env.dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("images")).unwrap();
    for (from, name) in [
        (
            format!(
                "oci:{}:latest",
                example_bucket().join("images/ocilayout").display()
            ),
            "fromoci",
        ),
        (
            format!(
                "docker-archive:{}",
                example_bucket().join("images/dockersave.tar").display()
            ),
            "fromdocker",
        ),
    ] {
        let out = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", &from])
            .arg(format!(
                "dir:{}",
                bucket.join("images").join(name).display()
            ))
            .output()
            .expect("skopeo (deploy/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let policy = policy_file(
        &env,
        "policy.toml",
        "default",
        "allow = [\"ad-hoc\",",
        "allow = [\"skopeo-dir\", \"ad-hoc\",",
    );
    let config = env.dir.path().join("tarpool.toml");
    std::fs::write(
        &config,
        format!(
            "source = \"dir:{}\"\npolicy = {:?}\n[steps]\nmanifest = [\"builtin:manifest\", \"builtin:rootfs-dir\", {{ path = {:?}, sha256 = \"{sha}\" }}]\n",
            bucket.display(),
            policy.to_str().unwrap(),
            wasm.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = env.run(&["--config", config.to_str().unwrap(), "run", "--once"]);
    let status = env.status();
    for name in ["fromoci", "fromdocker"] {
        assert_eq!(
            status[name].0,
            "ready",
            "{status:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let audit = env.json(&["audit", "fromoci", "--json"]);
    assert!(audit.to_string().contains("skopeo-dir"), "{audit}");
    check_activation_as(&env, "fromoci", "ocilayout");
    check_activation_as(&env, "fromdocker", "dockersave");

    // Without the format in the policy, the image fails under `formats`.
    let env = Env::new();
    std::fs::write(
        &config,
        format!(
            "source = \"dir:{}\"\n[steps]\nmanifest = [\"builtin:manifest\", {{ path = {:?}, sha256 = \"{sha}\" }}]\n",
            bucket.display(),
            wasm.to_str().unwrap()
        ),
    )
    .unwrap();
    env.run(&["--config", config.to_str().unwrap(), "run", "--once"]);
    let why = env.status()["fromoci"].1.clone().unwrap_or_default();
    assert!(why.contains("skopeo-dir"), "{why}");
}

/// A run killed after parse-manifest judged its image under one set of
/// inspect steps, resumed under another: it does not unpack under steps
/// that did not judge the image; the image runs again under the new ones.
#[test]
fn a_run_resumed_under_other_inspect_steps_starts_again() {
    let env = Env::new();
    let example = example_inspect();
    let bucket = env.dir.path().join("bucket");
    adhoc(&bucket, "app", &[("etc/motd", 0o644), ("etc/motd~", 0o644)]);
    let with = inspect_config(&env, &bucket, std::slice::from_ref(&example));
    let killed = killed_at(
        env.cmd(&["--config", with.to_str().unwrap(), "run", "--once"]),
        "before:unpack-layers",
    );
    assert!(killed, "the run was killed before unpack-layers");
    // Restarted without the step: the run judged under it stops, in one
    // line, and nothing was unpacked under the new (no) steps.
    let without = env.dir.path().join("without.toml");
    std::fs::write(&without, format!("source = \"dir:{}\"\n", bucket.display())).unwrap();
    env.run(&["--config", without.to_str().unwrap(), "run", "--once"]);
    let audit = env.json(&["audit", "app", "--json"]);
    assert!(
        audit
            .to_string()
            .contains("the inspect steps changed since this run judged the image"),
        "{audit}"
    );
    // The next pass runs it again under the steps configured now.
    env.run(&["--config", without.to_str().unwrap(), "run", "--once"]);
    assert_eq!(env.status()["app"].0, "ready", "{:?}", env.status());
    activated(&env, "app", "a", |mnt, _| {
        assert!(
            mnt.join("etc/motd~").exists(),
            "unpacked under no inspect step"
        );
    });
}
