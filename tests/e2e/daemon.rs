//! `tarpool run` as a service: it polls the source, reloads its
//! configuration on SIGHUP (keeping the running one when the new one is
//! broken), logs JSON, and stops cleanly on SIGTERM, also in the middle of a
//! layer (the transition finishes, a restart resumes).

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(env: &Env, config: &Path, extra_env: &[(&str, &str)]) -> Service {
        let log = env.dir.path().join(format!(
            "service-{}.log",
            Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id())
        ));
        let mut cmd = env.cmd(&[
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
            "run",
        ]);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Service { child, log }
    }

    /// Every log line, each parsed as JSON (a line that is not JSON fails
    /// the test).
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        wait_for(what, Duration::from_secs(120), || {
            self.events().iter().any(&pred)
        });
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not
        // waited for yet (so the pid is not reused); no memory is involved.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0, "kill failed");
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit; its exit code.
    fn exit_code(&mut self, within: Duration) -> i32 {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("the service did not stop within {within:?}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state_of(env: &Env, image: &str) -> Option<String> {
    env.status().get(image).map(|(s, _)| s.clone())
}

fn message(e: &Value) -> &str {
    e["message"].as_str().unwrap_or("")
}

fn write_config(path: &Path, bucket: &Path, extra: &str) {
    std::fs::write(
        path,
        format!(
            "source = \"dir:{}\"\ninterval = 1\njobs = 1\nmax_attempts = 5\n{extra}",
            bucket.display()
        ),
    )
    .unwrap();
}

/// No extraction worker holds a file of `dir` open (other tests' workers
/// may run meanwhile).
fn no_workers_left(dir: &Path) -> bool {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if !cmd
            .windows(b"__apply-layer".len())
            .any(|w| w == b"__apply-layer")
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(dir)) {
                found.push(e.file_name());
            }
        }
    }
    found.is_empty()
}

#[test]
fn the_service_polls_reloads_on_sighup_and_stops_on_sigterm() {
    let env = Env::new();
    let bucket = bucket_with(&env, &["adhoc"]);
    let config = env.dir.path().join("tarpool.toml");
    write_config(&config, &bucket, "");
    let mut svc = Service::start(&env, &config, &[]);
    wait_for("adhoc ready", Duration::from_secs(120), || {
        state_of(&env, "adhoc").as_deref() == Some("ready")
    });

    // A new object is found at a later poll (copied beside the bucket, then
    // renamed in, so no poll sees half of it).
    let staging = env.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(
        example_bucket().join("images/dockersave.tar"),
        staging.join("dockersave.tar"),
    )
    .unwrap();
    std::fs::rename(
        staging.join("dockersave.tar"),
        bucket.join("images/dockersave.tar"),
    )
    .unwrap();
    wait_for("dockersave ready", Duration::from_secs(120), || {
        state_of(&env, "dockersave").as_deref() == Some("ready")
    });

    // The adhoc image changes (its top layer): once the new version is
    // ready, the old top layer is garbage the service collects by itself
    // (under the default policy: the strict one would refuse adhoc).
    let layers = || -> i64 {
        let db = rusqlite::Connection::open(env.state().join("state.db")).unwrap();
        db.query_row("SELECT count(*) FROM layers", [], |r| r.get(0))
            .unwrap()
    };
    let before = layers();
    std::fs::copy(bucket.join("images/adhoc/2.tar"), staging.join("3.tar")).unwrap();
    std::fs::rename(staging.join("3.tar"), bucket.join("images/adhoc/3.tar")).unwrap();
    svc.wait_event("the collection of the old layer", |e| {
        message(e) == "garbage collected" && e["layers_removed"] == 1
    });
    assert_eq!(state_of(&env, "adhoc").as_deref(), Some("ready"));
    assert_eq!(layers(), before, "one layer added, one collected");

    // A broken configuration is refused, and the service keeps going.
    std::fs::write(&config, "jobs = \"many\"\n").unwrap();
    svc.signal(libc::SIGHUP);
    svc.wait_event("the refused reload", |e| {
        message(e).starts_with("reload failed") && e["level"] == "ERROR"
    });
    assert!(svc.alive(), "a bad reload stopped the service");
    // So is one pinning a component the host refuses (it imports the
    // filesystem), in one line naming it.
    let bad = env.dir.path().join("files.wasm");
    let wasm = wat::parse_str(
        r#"(component
            (import "tarpool:steps/types@0.1.1" (instance))
            (import "wasi:filesystem/preopens@0.2.6" (instance))
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (export "classify" (func $f)))"#,
    )
    .unwrap();
    std::fs::write(&bad, &wasm).unwrap();
    write_config(
        &config,
        &bucket,
        &format!(
            "[steps]\nclassify = [\"builtin:classify\", {{ path = {:?}, sha256 = \"{}\" }}]\n",
            bad.to_str().unwrap(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wasm))
        ),
    );
    svc.signal(libc::SIGHUP);
    svc.wait_event("the refused component", |e| {
        message(e).starts_with("reload failed")
            && e["error"].as_str().is_some_and(|m| {
                m.contains(
                    "imports what the host does not give a step: wasi:filesystem/preopens@0.2.6",
                ) && !m.contains('\n')
            })
    });
    assert!(svc.alive(), "a refused component stopped the service");

    // A good one applies before the next poll: the strict policy.
    write_config(&config, &bucket, "policy = \"strict\"\n");
    svc.signal(libc::SIGHUP);
    svc.wait_event("the reload", |e| {
        message(e) == "configuration reloaded" && e["policy"] == "strict"
    });
    copy_tree(
        &example_bucket().join("images/ocilayout"),
        &staging.join("ocilayout"),
    );
    std::fs::rename(staging.join("ocilayout"), bucket.join("images/ocilayout")).unwrap();
    wait_for("ocilayout settled", Duration::from_secs(120), || {
        matches!(
            state_of(&env, "ocilayout").as_deref(),
            Some("ready" | "failed")
        )
    });
    let audit = env.json(&["audit", "ocilayout", "--json"]);
    let policies: Vec<&str> = audit["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["policy"].as_str())
        .collect();
    assert_eq!(policies, ["strict"], "{audit}");

    svc.signal(libc::SIGTERM);
    assert_eq!(svc.exit_code(Duration::from_secs(60)), 0);
    let events = svc.events();
    assert!(events.iter().any(|e| message(e) == "stopped"));
    // Every transition of every image was logged as one JSON event with
    // its fields.
    for image in ["adhoc", "dockersave"] {
        for step in &STEPS[..STEPS.len() - 1] {
            assert!(
                events.iter().any(|e| message(e) == "transition ok"
                    && e["image"] == image
                    && e["transition"] == *step
                    && e["ms"].is_u64()
                    && e["run"].is_string()),
                "no `transition ok` event for {image} {step}"
            );
        }
        assert!(events
            .iter()
            .any(|e| message(e) == "image ready" && e["image"] == image));
    }
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string(), "{e}");
    }
    assert_eq!(mounts_under(&env.state()), Vec::<String>::new());
    // The run lock is free: gc takes it.
    env.json(&["gc", "--json"]);
}

#[test]
fn sigterm_in_the_middle_of_a_layer_finishes_it_and_a_restart_resumes() {
    let env = Env::new();
    let bucket = bucket_with(&env, &["adhoc"]);
    let config = env.dir.path().join("tarpool.toml");
    write_config(&config, &bucket, "");
    let go_on = env.dir.path().join("go-on");
    let mut svc = Service::start(
        &env,
        &config,
        &[
            ("TARPOOL_FAILPOINTS", "pause:mid-layer"),
            ("TARPOOL_PAUSE_FILE", go_on.to_str().unwrap()),
        ],
    );
    svc.wait_event("the pause in the first layer", |e| {
        message(e) == "failpoint: pausing"
    });
    svc.signal(libc::SIGTERM);
    // The signal is seen while the first layer is still under way.
    svc.wait_event("the stop request", |e| {
        message(e) == "stopping after the transitions under way"
    });
    std::fs::write(&go_on, b"").unwrap();
    assert_eq!(svc.exit_code(Duration::from_secs(60)), 0);
    let events = svc.events();
    assert!(events
        .iter()
        .any(|e| message(e) == "stopping after the transitions under way"
            && e["signal"] == "SIGTERM"));
    assert_ne!(state_of(&env, "adhoc").as_deref(), Some("ready"));
    assert_eq!(mounts_under(&env.state()), Vec::<String>::new());
    assert!(
        no_workers_left(env.dir.path()),
        "an extraction worker outlived the service"
    );
    // The layer under way when the signal came was finished and committed.
    let db = rusqlite::Connection::open(env.state().join("state.db")).unwrap();
    let committed: i64 = db
        .query_row(
            "SELECT count(*) FROM layers WHERE state = 'committed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(committed, 1);
    drop(db);

    let out = env.run(&[
        "run",
        "--once",
        "--source",
        &format!("dir:{}", bucket.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state_of(&env, "adhoc").as_deref(), Some("ready"));
    check_activation(&env, "adhoc");
    let audit = env.json(&["audit", "adhoc", "--json"]);
    let unpacks: Vec<&Value> = audit["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "unpack-layers" && t["outcome"] == "ok")
        .collect();
    assert_eq!(unpacks.len(), 1, "{audit}");
    let out = match &unpacks[0]["output"] {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        v => v.clone(),
    };
    assert_eq!(out["applied"], 2, "{out}");
}

/// `config show` on `file` with `args`: exit code, stdout, stderr.
fn config_show(env: &Env, file: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", file.to_str().unwrap(), "config", "show"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_show_prints_the_effective_configuration_a_config_file_accepts() {
    let env = Env::new();
    let example = repo().join("deploy/tarpool.toml");
    let (code, shown, err) = config_show(&env, &example, &[]);
    assert_eq!(code, 0, "{err}");
    // It round-trips: fed back as the configuration, it shows the same.
    let again = env.dir.path().join("shown.toml");
    std::fs::write(&again, &shown).unwrap();
    assert_eq!(config_show(&env, &again, &[]).1, shown);
    // The example documents every option: its values are what is shown
    // (except the state dir the test's --state-dir overrides).
    let example_v: toml::Table = std::fs::read_to_string(&example).unwrap().parse().unwrap();
    let shown_v: toml::Table = shown.parse().unwrap();
    for (k, v) in &example_v {
        if k != "state_dir" {
            assert_eq!(shown_v.get(k), Some(v), "option {k}");
        }
    }
    let missing: Vec<&String> = shown_v
        .keys()
        .filter(|k| !example_v.contains_key(*k) && *k != "metrics_addr")
        .collect();
    assert!(
        missing.is_empty(),
        "undocumented in the example: {missing:?}"
    );

    let check = |file_text: &str, args: &[&str], expected: Result<(&str, &str), &str>| {
        let f = env.dir.path().join("c.toml");
        std::fs::write(&f, file_text).unwrap();
        let (code, out, err) = config_show(&env, &f, args);
        match expected {
            Ok((key, value)) => {
                assert_eq!(code, 0, "{file_text:?} {args:?}: {err}");
                let t: toml::Table = out.parse().unwrap();
                assert_eq!(t[key].to_string(), value, "{file_text:?} {args:?}");
            }
            Err(msg) => {
                assert_eq!(code, 2, "{file_text:?} {args:?}: {out}");
                assert_eq!(err.lines().count(), 1, "{err}");
                assert!(err.contains(msg), "{err}");
            }
        }
    };
    check("jobs = 3\n", &[], Ok(("jobs", "3")));
    check("jobs = 3\n", &["--jobs", "5"], Ok(("jobs", "5")));
    check("", &[], Ok(("interval", "30")));
    check(
        "log_format = \"json\"\n",
        &[],
        Ok(("log_format", "\"json\"")),
    );
    check(
        "metrics_addr = \"127.0.0.1:9464\"\n",
        &[],
        Ok(("metrics_addr", "\"127.0.0.1:9464\"")),
    );
    check("policy = \"strict\"\n", &[], Ok(("policy", "\"strict\"")));
    check("jbos = 3\n", &[], Err("unknown field `jbos`"));
    check("jobs = 0\n", &[], Err("at least 1"));
    check("interval = 0\n", &[], Err("at least 1 second"));
    check(
        "metrics_addr = \"localhost\"\n",
        &[],
        Err("metrics address"),
    );
    check(
        "policy = \"/nonexistent.toml\"\n",
        &[],
        Err("/nonexistent.toml"),
    );
}
