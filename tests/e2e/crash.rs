//! Crash safety: SIGKILL at every transition boundary and between layers,
//! then restart; the end state must equal an uninterrupted run's, with every
//! transition completed exactly once per image and nothing left behind.

use crate::harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

/// What must match between runs: each image's state, format, chain.
fn final_state(env: &Env) -> BTreeMap<String, Value> {
    let v = env.json(&["status", "--json"]);
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let chains: Vec<Value> = i["layers"].as_array().unwrap().iter().map(|l| l["chain_id"].clone()).collect();
            (
                i["name"].as_str().unwrap().to_string(),
                serde_json::json!({ "state": i["state"], "error": i["error"], "format": i["format"], "top_chain": i["top_chain"], "chains": chains }),
            )
        })
        .collect()
}

fn trees(env: &Env, names: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in names {
        let mnt = env.dir.path().join(format!("m-{n}"));
        let act = format!("crash-{n}");
        env.json(&[
            "activate",
            n,
            "--as",
            &act,
            "--mount",
            mnt.to_str().unwrap(),
        ]);
        out.insert(n.clone(), tree(&mnt));
        env.json(&["deactivate", &act]);
    }
    out
}

#[test]
fn sigkill_at_every_boundary_then_restart_equals_an_uninterrupted_run() {
    let src = example_bucket();
    let src = src.to_str().unwrap();

    let clean = Env::new();
    let out = clean.run(&["run", "--once", "--jobs", "1", "--source", src]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = final_state(&clean);
    let names: Vec<String> = want.keys().cloned().collect();
    let want_trees = trees(&clean, &names);

    let env = Env::new();
    let mut points: Vec<String> = Vec::new();
    for s in STEPS {
        points.push(format!("before:{s}"));
        points.push(format!("before-commit:{s}"));
        points.push(format!("after:{s}"));
    }
    // Between layers and inside a layer, several times over.
    for _ in 0..4 {
        points.push("mid-layer".into());
        points.push("after-layer#2".into());
    }
    let mut killed = 0;
    for p in &points {
        let cmd = env.cmd(&["run", "--once", "--jobs", "1", "--source", src]);
        killed += usize::from(killed_at(cmd, p));
    }
    assert!(
        killed >= STEPS.len() * 3,
        "only {killed} of {} failpoints fired",
        points.len()
    );

    let out = env.run(&["run", "--once", "--jobs", "1", "--source", src]);
    assert!(
        out.status.success(),
        "restart after the crashes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        final_state(&env),
        want,
        "state after crashes equals an uninterrupted run"
    );

    for n in &names {
        let audit = env.json(&["audit", n, "--json"]);
        let mut ok: BTreeMap<String, usize> = BTreeMap::new();
        for t in audit["transitions"].as_array().unwrap() {
            assert_ne!(t["outcome"], "running");
            if t["outcome"] == "ok" {
                *ok.entry(t["name"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        for s in STEPS {
            assert_eq!(
                ok.get(s),
                Some(&1),
                "{n}: {s} completed exactly once ({ok:?})"
            );
        }
    }

    // Nothing left behind: no mounts, no temporary files, no half layers.
    let state = env.state();
    assert!(
        mounts_under(&state).is_empty(),
        "stray mounts: {:?}",
        mounts_under(&state)
    );
    assert!(
        files_under(&state.join("tmp")).is_empty(),
        "temporary files: {:?}",
        files_under(&state.join("tmp"))
    );
    assert!(files_under(&state.join("overlay/mnt")).is_empty());
    let layer_dirs: Vec<_> = std::fs::read_dir(state.join("overlay/layers"))
        .unwrap()
        .flatten()
        .collect();
    for d in &layer_dirs {
        assert!(
            !d.path().join("work").exists(),
            "work dir left in {:?}",
            d.path()
        );
    }
    let distinct: std::collections::BTreeSet<String> = want
        .values()
        .flat_map(|v| {
            v["chains"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        layer_dirs.len(),
        distinct.len(),
        "one directory per distinct layer"
    );

    assert_eq!(
        trees(&env, &names),
        want_trees,
        "activations show the same files"
    );
}

#[test]
fn retryable_errors_retry_with_backoff_and_give_up_at_the_limit() {
    let env = Env::new();
    let cfg = env.dir.path().join("tarpool.toml");
    std::fs::write(
        &cfg,
        "max_attempts = 3\nretry_base_ms = 10\nretry_cap_ms = 40\n",
    )
    .unwrap();
    let bucket = bucket_with(&env, &["many"]);
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "run",
        "--once",
        "--source",
        bucket.to_str().unwrap(),
    ];

    let out = env
        .cmd(&args)
        .env("TARPOOL_FAILPOINTS", "fail:download#2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = env.json(&["audit", "many", "--json"]);
    let downloads: Vec<&str> = audit["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "download")
        .map(|t| t["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(downloads, ["retry", "retry", "ok"]);

    let env = Env::new();
    let out = env
        .cmd(&args)
        .env("TARPOOL_FAILPOINTS", "fail:classify#9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let (state, err) = env.status()["many"].clone();
    assert_eq!(state, "failed");
    assert!(err
        .unwrap()
        .contains("classify: gave up after 3 attempts: injected I/O failure"));
    // An environment failure is tried again by the next run.
    let out = env.cmd(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.status()["many"].0, "ready");
}

#[test]
fn cancelling_an_unfinished_run_ends_it_cancelled() {
    let env = Env::new();
    let bucket = bucket_with(&env, &["many"]);
    let src = bucket.to_str().unwrap();
    let out = env
        .cmd(&["run", "--once", "--source", src])
        .env("TARPOOL_FAILPOINTS", "after-layer#3")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9));
    assert_eq!(env.status()["many"].0, "running");
    let out = env.run(&["cancel", "many"]);
    assert!(out.status.success());
    let out = env.run(&["run", "--once", "--source", src]);
    assert_eq!(out.status.code(), Some(1));
    let (state, err) = env.status()["many"].clone();
    assert_eq!(
        (state.as_str(), err.as_deref()),
        ("failed", Some("cancelled by request"))
    );
    let audit = env.json(&["audit", "many", "--json"]);
    assert_eq!(
        audit["transitions"].as_array().unwrap().last().unwrap()["outcome"],
        "cancelled"
    );
}

#[test]
fn an_object_changed_after_listing_is_processed_as_it_is_now() {
    let env = Env::new();
    let bucket = bucket_with(&env, &["many"]);
    let src = bucket.to_str().unwrap();
    // The run is created from the listing, then the process dies.
    let out = env
        .cmd(&["run", "--once", "--source", src])
        .env("TARPOOL_FAILPOINTS", "before:check-image-exists")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9));
    // The top layer is replaced before the run resumes.
    std::fs::copy(
        bucket.join("images/many/1.tar"),
        bucket.join("images/many/11.tar"),
    )
    .unwrap();
    let out = env.run(&["run", "--once", "--source", src]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = env.json(&["audit", "many", "--json"]);
    let check = audit["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "check-image-exists" && t["outcome"] == "ok")
        .unwrap();
    assert_eq!(check["output"]["changed_since_listing"], 1);
    let mnt = env.dir.path().join("m");
    env.json(&[
        "activate",
        "many",
        "--as",
        "a",
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    let layer = std::fs::read_to_string(mnt.join("layer")).unwrap();
    env.json(&["deactivate", "a"]);
    assert_eq!(
        layer.trim(),
        "1",
        "the new 11.tar (a copy of 1.tar) is on top"
    );
    // The next run sees nothing new.
    let before = audit["transitions"].as_array().unwrap().len();
    env.run(&["run", "--once", "--source", src]);
    let after = env.json(&["audit", "many", "--json"])["transitions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
}

/// Layers are synced and committed on a second thread while the next one is
/// applied: a failed sync discards that layer and the one applied on top of
/// it, nothing is committed unsynced, and the retry ends with the same tree.
#[test]
fn a_failed_layer_sync_discards_it_and_the_layer_above_then_the_retry_succeeds() {
    let env = Env::new();
    let bucket = bucket_with(&env, &["adhoc"]);
    let out = env
        .cmd(&["run", "--once", "--source", bucket.to_str().unwrap()])
        .env("TARPOOL_FAILPOINTS", "fail:sync-layer#1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = env.json(&["audit", "adhoc", "--json"]);
    let unpacks: Vec<(&str, &str)> = audit["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "unpack-layers")
        .map(|t| {
            (
                t["outcome"].as_str().unwrap(),
                t["error"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        unpacks,
        [
            ("retry", "syncing the layer: injected I/O failure"),
            ("ok", "")
        ]
    );
    check_activation(&env, "adhoc");
    // Exactly the three committed layers remain, each with its directory.
    let db = rusqlite::Connection::open(env.state().join("state.db")).unwrap();
    let ids: Vec<i64> = db
        .prepare("SELECT id FROM layers WHERE state = 'committed' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids.len(), 3);
    let total: i64 = db
        .query_row("SELECT count(*) FROM layers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 3);
    let mut dirs: Vec<i64> = std::fs::read_dir(env.state().join("overlay/layers"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ids);
}
