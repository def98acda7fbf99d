//! Pulling from a registry: Debian's `docker-registry` (distribution v2)
//! on 127.0.0.1, images pushed to it by `skopeo copy` from the example
//! bucket (OCI and docker schema 2), tarpool talking to it through a
//! fault-injecting proxy (`proxy.rs`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::proxy::{Action, Fault, Logged, Proxy};

#[path = "../support/registry.rs"]
mod support;
use support::TestRegistry;

/// The example OCI layout's config and biggest layer (1415 bytes).
const OCILAYOUT_CONFIG: &str =
    "sha256:20cbbcfbbfcd53ea9ccc997944f4d096f989acb99fe9c1b65e408010d02461c7";
const OCILAYOUT_BIG_LAYER: &str =
    "sha256:5ee233cf50e690e44f21593390ce9d5419955f5e95b97529e197716f11d4b067";

const USER: &str = "anna";
const PASSWORD: &str = "s3cret-pw";

/// A registry, a proxy in front of it, and a state directory with a
/// configuration naming an auth file of the test's own.
struct Setup {
    env: Env,
    reg: TestRegistry,
    proxy: Proxy,
    config: PathBuf,
}

impl Setup {
    /// With `auth`, the registry asks for `USER`/`PASSWORD`; `entries` are
    /// the auth file's `(key, user:password)`.
    fn new(auth: bool, entries: &[(&str, &str)]) -> Setup {
        let env = Env::new();
        let reg = support::start(auth.then_some((USER, PASSWORD)));
        Setup::around(env, reg, entries)
    }

    /// [`Setup::new`] around a registry already started.
    fn around(env: Env, reg: TestRegistry, entries: &[(&str, &str)]) -> Setup {
        let proxy = Proxy::start(&reg.host);
        let auths: Vec<String> = entries
            .iter()
            .map(|(k, cred)| {
                format!(
                    r#""{}":{{"auth":"{}"}}"#,
                    k.replace("PROXY", &proxy.host),
                    b64(cred)
                )
            })
            .collect();
        let auth_file = env.dir.path().join("auth.json");
        std::fs::write(
            &auth_file,
            format!(r#"{{"auths":{{{}}}}}"#, auths.join(",")),
        )
        .unwrap();
        let config = env.dir.path().join("tarpool.toml");
        std::fs::write(
            &config,
            format!(
                "[registry]\nauth_file = \"{}\"\nparallel = 4\n",
                auth_file.display()
            ),
        )
        .unwrap();
        Setup {
            env,
            reg,
            proxy,
            config,
        }
    }

    /// Pushes an example image (`ocilayout` or `dockersave`) as `reference`.
    fn push(&self, image: &str, reference: &str) {
        let from = match image {
            "ocilayout" => format!(
                "oci:{}:latest",
                example_bucket().join("images/ocilayout").display()
            ),
            "dockersave" => format!(
                "docker-archive:{}",
                example_bucket().join("images/dockersave.tar").display()
            ),
            other => other.to_string(),
        };
        let creds = format!("{USER}:{PASSWORD}");
        support::push(&self.reg, &from, reference, Some(&creds), None);
    }

    /// `registry://PROXY/REFERENCE?plain-http&name=NAME`.
    fn source(&self, reference: &str, name: &str) -> String {
        format!(
            "registry://{}/{reference}?plain-http&name={name}",
            self.proxy.host
        )
    }

    /// `tarpool run --once --json` with these sources (and the config).
    fn run(&self, sources: &[&str]) -> std::process::Output {
        self.cmd(sources).output().unwrap()
    }

    fn cmd(&self, sources: &[&str]) -> Command {
        let mut args = vec![
            "--config",
            self.config.to_str().unwrap(),
            "run",
            "--once",
            "--json",
        ];
        for s in sources {
            args.extend(["--source", s]);
        }
        let mut c = self.env.cmd(&args);
        // Only the test's auth file: none of this machine's.
        c.env("HOME", self.env.dir.path())
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("DOCKER_CONFIG");
        c
    }

    fn run_ok(&self, sources: &[&str]) -> serde_json::Value {
        let out = self.run(sources);
        assert!(
            out.status.success(),
            "tarpool run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn blob_gets(log: &[Logged]) -> Vec<&Logged> {
    log.iter()
        .filter(|l| l.method == "GET" && l.path.contains("/blobs/"))
        .collect()
}

#[test]
fn pushed_images_are_ready_with_the_buckets_root_filesystems_and_fetched_once() {
    let s = Setup::new(true, &[("PROXY", &format!("{USER}:{PASSWORD}"))]);
    s.push("ocilayout", "team/oci:v1");
    s.push("dockersave", "team/docker:v1");
    let (oci, docker) = (
        s.source("team/oci:v1", "ocilayout"),
        s.source("team/docker:v1", "dockersave"),
    );
    let report = s.run_ok(&[&oci, &docker]);
    let ready = |n: &str| (n.to_string(), "ready".to_string());
    assert_eq!(
        report_states(&report),
        [ready("ocilayout"), ready("dockersave")],
        "{report}"
    );
    check_activation(&s.env, "ocilayout");
    check_activation(&s.env, "dockersave");
    let audit = s.env.json(&["audit", "dockersave", "--json"]);
    assert!(audit.to_string().contains("\"registry\""), "{audit}");
    // Every blob is fetched by digest, once.
    let log = s.proxy.log();
    let gets = blob_gets(&log);
    assert!(!gets.is_empty());
    let mut paths: Vec<&str> = gets.iter().map(|l| l.path.as_str()).collect();
    for p in &paths {
        assert!(p.contains("/blobs/sha256:"), "{p}");
    }
    let n = paths.len();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), n, "a blob fetched twice: {log:?}");
    // The next pass costs one request per image (HEAD, after the
    // registry's challenge to this new process) and starts no run.
    s.proxy.clear_log();
    let again = s.run_ok(&[&oci, &docker]);
    assert!(all_unchanged(&again), "{again}");
    let log = s.proxy.log();
    assert!(
        log.iter()
            .all(|l| l.method == "HEAD" && l.path.contains("/manifests/v1")),
        "{log:?}"
    );
    assert_eq!(log.iter().filter(|l| l.status == 200).count(), 2, "{log:?}");
}

#[test]
fn a_moved_tag_runs_the_image_again_with_its_new_content() {
    let s = Setup::new(false, &[]);
    s.push("dockersave", "team/app:v1");
    let src = s.source("team/app:v1", "ocilayout");
    // First the docker archive's content under the name...
    let first = s.run_ok(&[&src]);
    assert_eq!(
        report_states(&first),
        [("ocilayout".into(), "ready".into())]
    );
    let top = |env: &Env| env.json(&["status", "--json"])["images"][0]["top_chain"].clone();
    let before = top(&s.env);
    // ... then the tag moves to the OCI image: that one it is now.
    s.push("ocilayout", "team/app:v1");
    let second = s.run_ok(&[&src]);
    assert_eq!(second["images"][0]["unchanged"], false, "{second}");
    assert_eq!(second["images"][0]["state"], "ready", "{second}");
    assert_ne!(top(&s.env), before);
    check_activation(&s.env, "ocilayout");
}

#[test]
fn a_wrong_password_fails_that_image_alone_in_one_line() {
    let wrong = "hunter2-not-it";
    let s = Setup::new(
        true,
        &[
            ("PROXY/team/good", &format!("{USER}:{PASSWORD}")),
            ("PROXY/team/bad", &format!("{USER}:{wrong}")),
        ],
    );
    s.push("ocilayout", "team/good:v1");
    s.push("ocilayout", "team/bad:v1");
    // Logging everything it would log.
    let out = s
        .cmd(&[
            &s.source("team/good:v1", "good"),
            &s.source("team/bad:v1", "bad"),
        ])
        .env("TARPOOL_LOG", "trace")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = s.env.status();
    assert_eq!(status["good"].0, "ready", "{status:?} {stderr}");
    assert_eq!(status["bad"].0, "failed", "{status:?}");
    let why = status["bad"].1.clone().unwrap();
    assert!(!why.contains('\n'), "{why}");
    assert!(why.contains("unauthorized (401)"), "{why}");
    assert!(why.contains("/v2/team/bad/manifests/v1"), "{why}");
    // No credential anywhere: messages, logs, the database.
    let db = std::fs::read(s.env.state().join("state.db")).unwrap();
    let (wrong_sent, right_sent) = (
        b64(&format!("{USER}:{wrong}")),
        b64(&format!("{USER}:{PASSWORD}")),
    );
    for secret in [wrong, PASSWORD, &wrong_sent, &right_sent] {
        assert!(!why.contains(secret) && !stderr.contains(secret));
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the database holds a credential"
        );
    }
}

#[test]
fn registry_faults_are_retried_and_a_wrong_blob_fails_the_image() {
    let s = Setup::new(false, &[]);
    s.push("ocilayout", "team/oci:v1");
    let src = s.source("team/oci:v1", "ocilayout");
    // One 503 on the manifest's HEAD, a 429 on the config, and on the
    // biggest layer a cut connection in the middle, then a 416 to the
    // ranged request that goes on from the cut: all tried again.
    let (config, layer) = (OCILAYOUT_CONFIG, OCILAYOUT_BIG_LAYER);
    for (method, path, action) in [
        ("HEAD", "/manifests/v1", Action::Status(503, None)),
        ("GET", config, Action::Status(429, Some(1))),
        ("GET", layer, Action::Cut(100)),
        ("GET", layer, Action::Status(416, None)),
    ] {
        s.proxy.fault(Fault {
            method,
            path: path.into(),
            times: 1,
            action,
        });
    }
    let report = s.run_ok(&[&src]);
    assert_eq!(
        report_states(&report),
        [("ocilayout".into(), "ready".into())]
    );
    check_activation(&s.env, "ocilayout");
    let log = s.proxy.log();
    let cut = log
        .iter()
        .find(|l| l.faulted && l.body == 100)
        .expect("the cut request");
    assert!(cut.path.ends_with(layer), "{log:?}");
    let config_gets: Vec<u16> = log
        .iter()
        .filter(|l| l.path.ends_with(config))
        .map(|l| l.status)
        .collect();
    assert_eq!(config_gets, [429, 200], "{log:?}");
    // The cut blob was asked for from its 100th byte on; refused that
    // (416), from the start.
    let ranges: Vec<(Option<&str>, u16)> = log
        .iter()
        .filter(|l| l.path == cut.path)
        .map(|l| (l.range.as_deref(), l.status))
        .collect();
    assert_eq!(
        ranges,
        [(None, 200), (Some("bytes=100-"), 416), (None, 200)],
        "{log:?}"
    );

    // A registry that serves other bytes than the digest's.
    let other = Env::new();
    let s2 = Setup { env: other, ..s };
    s2.proxy.clear_log();
    s2.proxy.fault(Fault {
        method: "GET",
        path: layer.into(),
        times: 100,
        action: Action::Corrupt,
    });
    let out = s2.run(&[&src]);
    assert!(!out.status.success());
    let status = s2.env.status();
    let why = status["ocilayout"].1.clone().unwrap();
    assert_eq!(status["ocilayout"].0, "failed");
    assert!(why.contains("does not match its digest"), "{why}");
    assert!(why.contains(layer), "{why}");
    assert!(!why.contains('\n'));
    let audit = s2.env.json(&["audit", "ocilayout", "--json"]);
    let failed = audit["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["outcome"] == "failed")
        .unwrap();
    assert_eq!(failed["name"], "fetch-layers", "{audit}");
    // Nothing stored under a digest its bytes are not.
    let blobs = s2.env.state().join("blobs");
    for l in blob_gets(&s2.proxy.log()) {
        let hex = l.path.rsplit("sha256:").next().unwrap();
        assert!(!blobs.join(hex).exists(), "{hex} was stored");
    }
}

/// An OCI layout of the test's own (umoci) whose one layer holds `size`
/// random bytes: a blob big enough to be cut in the middle.
fn big_image(dir: &std::path::Path, size: usize) -> String {
    let layout = dir.join("big");
    let bundle = dir.join("bundle");
    let umoci = |args: &[&str]| {
        let out = Command::new("umoci").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let l = layout.to_str().unwrap();
    umoci(&["init", "--layout", l]);
    umoci(&["new", "--image", &format!("{l}:big")]);
    umoci(&[
        "unpack",
        "--image",
        &format!("{l}:big"),
        bundle.to_str().unwrap(),
    ]);
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(bundle.join("rootfs/random.bin"), &data).unwrap();
    umoci(&[
        "repack",
        "--image",
        &format!("{l}:big"),
        bundle.to_str().unwrap(),
    ]);
    format!("oci:{l}:big")
}

#[test]
fn sigkill_during_a_blob_download_resumes_from_the_stored_bytes() {
    let s = Setup::new(false, &[]);
    let from = big_image(s.env.dir.path(), 8 << 20);
    s.push(&from, "team/big:v1");
    let src = s.source("team/big:v1", "big");
    // A blob's GET stalls after 3 MiB: the config passes whole, the
    // layer stops there.
    let release = Arc::new(AtomicBool::new(false));
    let half = 3 << 20;
    s.proxy.fault(Fault {
        method: "GET",
        path: "/blobs/".into(),
        times: 2,
        action: Action::Stall(half, release.clone()),
    });
    let mut child = s
        .cmd(&[&src])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The layer's partial download, once it holds the bytes before the
    // stall (the config's comes and goes before it).
    let downloads = s.env.state().join("downloads");
    let deadline = Instant::now() + Duration::from_secs(60);
    let partial = loop {
        assert!(Instant::now() < deadline, "no partial download grew");
        let found = std::fs::read_dir(&downloads).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.to_string_lossy().ends_with(".partial")
                    && std::fs::metadata(p).is_ok_and(|m| m.len() >= half)
            })
        });
        if let Some(p) = found {
            break p;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    release.store(true, Ordering::SeqCst);
    s.proxy.clear_faults();
    let digest = format!(
        "sha256:{}",
        partial
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches("registry-")
            .trim_end_matches(".partial")
    );
    s.proxy.clear_log();
    let report = s.run_ok(&[&src]);
    assert_eq!(
        report_states(&report),
        [("big".into(), "ready".into())],
        "{report}"
    );
    let log = s.proxy.log();
    let again: Vec<&Logged> = blob_gets(&log)
        .into_iter()
        // (The stalled request of the killed run is logged when it ends.)
        .filter(|l| l.path.ends_with(&digest) && !l.faulted)
        .collect();
    assert_eq!(again.len(), 1, "{log:?}");
    assert_eq!(
        again[0].range.as_deref(),
        Some(&*format!("bytes={half}-")),
        "{log:?}"
    );
    // The blob as umoci wrote it (skopeo pushed it unchanged).
    let size = std::fs::metadata(s.env.dir.path().join("big/blobs/sha256").join(&digest[7..]))
        .unwrap()
        .len();
    assert_eq!(
        again[0].body,
        size - half,
        "only the missing bytes are fetched"
    );
}

#[test]
fn what_a_bucket_stored_is_not_fetched_from_a_registry() {
    let s = Setup::new(false, &[]);
    s.push("ocilayout", "team/oci:v1");
    let bucket = bucket_with(&s.env, &["ocilayout"]);
    let report = s.run_ok(&[bucket.to_str().unwrap()]);
    assert_eq!(
        report_states(&report),
        [("ocilayout".into(), "ready".into())]
    );
    // The same image from the registry, under another name: its blobs
    // (manifest, config, layers) are stored by digest already, and its
    // layer is shared by chain ID.
    s.proxy.clear_log();
    let report = s.run_ok(&[bucket.to_str().unwrap(), &s.source("team/oci:v1", "again")]);
    let got = report_states(&report);
    assert!(got.contains(&("again".into(), "ready".into())), "{report}");
    let log = s.proxy.log();
    assert!(
        log.iter().all(|l| l.method == "HEAD"),
        "only the tag is resolved: {log:?}"
    );
    let status = s.env.json(&["status", "--json"]);
    assert_eq!(
        top_chain(&status, "again"),
        top_chain(&status, "ocilayout"),
        "{status}"
    );
    check_activation_as(&s.env, "again", "ocilayout");
}

#[test]
fn sigkill_at_every_boundary_of_a_registry_image_then_restart_completes_each_once() {
    let s = Setup::new(false, &[]);
    s.push("ocilayout", "team/oci:v1");
    let src = s.source("team/oci:v1", "ocilayout");
    let mut killed = 0;
    for step in STEPS {
        for when in ["before", "before-commit", "after"] {
            killed += usize::from(killed_at(s.cmd(&[&src]), &format!("{when}:{step}")));
        }
    }
    assert_eq!(killed, STEPS.len() * 3, "every failpoint fired");
    let report = s.run_ok(&[&src]);
    assert_eq!(
        report_states(&report),
        [("ocilayout".into(), "ready".into())]
    );
    check_activation(&s.env, "ocilayout");
    let audit = s.env.json(&["audit", "ocilayout", "--json"]);
    for step in STEPS {
        let ok = audit["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"] == step && t["outcome"] == "ok")
            .count();
        assert_eq!(ok, 1, "{step} completed exactly once: {audit}");
    }
    // Nothing half-fetched is left.
    let downloads = s.env.state().join("downloads");
    let left: Vec<_> = std::fs::read_dir(&downloads)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_layer_stored_from_an_archive_is_not_fetched_for_its_digest() {
    let s = Setup::new(false, &[]);
    // The example OCI archive, in a bucket and (unpacked, pushed by
    // skopeo with its blobs as they are) in the registry.
    let bucket = bucket_with(&s.env, &["ociarchive.tar.gz"]);
    let dir = s.env.dir.path().join("ociarchive");
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(example_bucket().join("images/ociarchive.tar.gz"))
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    s.push(
        &format!("oci:{}:example/ociarchive:latest", dir.display()),
        "team/archive:v1",
    );
    let report = s.run_ok(&[bucket.to_str().unwrap()]);
    assert_eq!(
        report_states(&report),
        [("ociarchive".into(), "ready".into())]
    );
    // Its layers are members of the archive, stored as one blob: none is
    // a blob of its own, but each was shown to hold its diff ID.
    s.proxy.clear_log();
    let report = s.run_ok(&[
        bucket.to_str().unwrap(),
        &s.source("team/archive:v1", "again"),
    ]);
    assert!(
        report_states(&report).contains(&("again".into(), "ready".into())),
        "{report}"
    );
    let log = s.proxy.log();
    let gets = blob_gets(&log);
    // The config only (a member of the archive too): no layer.
    assert_eq!(gets.len(), 1, "{log:?}");
    assert!(gets[0].path.ends_with(OCILAYOUT_CONFIG), "{log:?}");
    let audit = s.env.json(&["audit", "again", "--json"]);
    let fetch = audit["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "fetch-layers")
        .unwrap()
        .clone();
    assert_eq!(fetch["output"]["layer_stored"], 3, "{fetch}");
    check_activation_as(&s.env, "again", "ociarchive");
}

/// `registry://HOST`: every tag of every repository the catalog lists is an
/// image (named by the default mapping), listed again at every pass; the
/// policy's `max-images` bounds how many are served.
#[test]
fn a_whole_registry_serves_every_tag_within_max_images() {
    let s = Setup::new(true, &[("PROXY", &format!("{USER}:{PASSWORD}"))]);
    s.push("ocilayout", "team/oci:v1");
    s.push("dockersave", "team/docker:v1");
    s.push("dockersave", "team/docker:v2");
    let whole = format!("registry://{}?plain-http", s.proxy.host);
    let report = s.run_ok(&[&whole]);
    let mut states = report_states(&report);
    states.sort();
    let ready = |n: &str| (n.to_string(), "ready".to_string());
    assert_eq!(
        states,
        [
            ready("team_docker_v1"),
            ready("team_docker_v2"),
            ready("team_oci_v1")
        ],
        "{report}"
    );
    check_activation_as(&s.env, "team_oci_v1", "ocilayout");
    check_activation_as(&s.env, "team_docker_v2", "dockersave");
    // The same content under two tags: its blobs were fetched once.
    let log = s.proxy.log();
    let mut gets: Vec<&str> = blob_gets(&log).iter().map(|l| l.path.as_str()).collect();
    let n = gets.len();
    gets.sort_by_key(|p| p.rsplit('/').next().unwrap_or_default().to_string());
    gets.dedup_by_key(|p| p.rsplit('/').next().unwrap_or_default().to_string());
    assert_eq!(gets.len(), n, "a blob fetched twice: {log:?}");

    // The next pass lists and resolves, and fetches nothing.
    s.proxy.clear_log();
    let again = s.run_ok(&[&whole]);
    assert!(all_unchanged(&again), "{again}");
    for l in s.proxy.log() {
        let listing = l.path.starts_with("/v2/_catalog") || l.path.ends_with("/tags/list");
        let head = l.method == "HEAD" && l.path.contains("/manifests/");
        assert!(listing || head, "{l:?}");
    }

    // At most two images: the first two listed are served, the third is
    // one rejection naming the rule.
    let policy = policy_file(
        &s.env,
        "two.toml",
        "default",
        "limit = 10000\n",
        "limit = 2\n",
    );
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("policy = {:?}\n{config}", policy.to_str().unwrap()),
    )
    .unwrap();
    let bounded = s.run_ok(&[&whole]);
    let served: Vec<&str> = bounded["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(served.len(), 2, "{bounded}");
    let rejected = bounded["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{bounded}");
    let reason = rejected[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("policy max-images: the source lists more than 2 images"),
        "{reason}"
    );
}

/// The bearer-token flow through `tarpool run`: the registry's auth is a
/// token server of the test's own (ES256 tokens the registry verifies);
/// the configured user and password go to the token server, a token for
/// each scope (the catalog's, each repository's) to the registry. An
/// image reference and the whole registry are served alike.
#[test]
fn the_bearer_token_flow_serves_a_reference_and_a_whole_registry() {
    use std::sync::atomic::Ordering::SeqCst;
    let env = Env::new();
    let key = support::signing_key(env.dir.path());
    let cert = key.cert_pem.clone();
    let tokens = support::token_server(key, &format!("{USER}:{PASSWORD}"));
    let reg = support::start_with_tokens(&tokens, &cert);
    let s = Setup::around(env, reg, &[("PROXY", &format!("{USER}:{PASSWORD}"))]);
    s.push("ocilayout", "team/oci:v1");
    s.push("dockersave", "team/docker:v1");
    let before = tokens.asked.load(SeqCst);
    let whole = format!("registry://{}?plain-http", s.proxy.host);
    let one = s.source("team/oci:v1", "ocilayout");
    let report = s.run_ok(&[&one, &whole]);
    let mut states = report_states(&report);
    states.sort();
    let ready = |n: &str| (n.to_string(), "ready".to_string());
    assert_eq!(
        states,
        [
            ready("ocilayout"),
            ready("team_docker_v1"),
            ready("team_oci_v1")
        ],
        "{report}"
    );
    check_activation(&s.env, "ocilayout");
    check_activation_as(&s.env, "team_docker_v1", "dockersave");
    // Tokens for the catalog and for each repository, each fetched once
    // and reused (a token lives 300 s here): far fewer than requests.
    let asked = tokens.asked.load(SeqCst) - before;
    let requests = s.proxy.log().len();
    assert!(
        (3..=6).contains(&asked),
        "{asked} tokens for {requests} requests"
    );
    assert!(
        requests > 2 * asked,
        "{asked} tokens for {requests} requests"
    );
    // A wrong password: the token server refuses it. The reference's image
    // fails with that, in one line; the whole registry cannot be listed,
    // and its images are left as they are.
    let auth_file = s.env.dir.path().join("auth.json");
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            s.proxy.host,
            b64(&format!("{USER}:wrong"))
        ),
    )
    .unwrap();
    let refused = "unauthorized (401): the token server refused the configured user and password";
    let out = s.run(&[&one]);
    let status = s.env.status();
    assert_eq!(status["ocilayout"].0, "failed", "{status:?}");
    let why = status["ocilayout"].1.clone().unwrap();
    assert!(why.ends_with(refused) && !why.contains('\n'), "{why}");
    let out2 = s.run(&[&whole]);
    assert!(!out2.status.success());
    let status = s.env.status();
    assert_eq!(status["team_docker_v1"].0, "ready", "{status:?}");
    let stderr = String::from_utf8_lossy(&out2.stderr);
    assert!(
        stderr.contains("GET /v2/_catalog: ") && stderr.contains(refused),
        "{stderr}"
    );
    let sent = b64(&format!("{USER}:wrong"));
    for text in [String::from_utf8_lossy(&out.stderr), stderr] {
        assert!(!text.contains(&sent) && !text.contains(PASSWORD), "{text}");
    }
}
