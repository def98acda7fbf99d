//! The example bucket end to end: every image ends ready, every activation
//! shows exactly the tree an independent tool (umoci) unpacked, layers shared
//! between images are stored once, and a second run changes nothing.

use crate::harness::*;

#[test]
fn example_bucket_ends_ready_and_activations_match_umoci() {
    let env = Env::new();
    let src = example_bucket();
    let out = env.run(&["run", "--once", "--source", src.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "run failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = env.status();
    for i in IMAGES {
        assert_eq!(
            status.get(i).map(|s| s.0.as_str()),
            Some("ready"),
            "{i}: {:?}",
            status.get(i)
        );
    }
    for i in IMAGES {
        check_activation(&env, i);
    }

    // Layers are stored once per chain ID: adhoc and adhoc-sibling share two,
    // and the OCI archive, OCI layout and docker archive share diffs too.
    let st = env.json(&["status", "--json"]);
    let mut chains = std::collections::BTreeSet::new();
    let mut total = 0;
    for img in st["images"].as_array().unwrap() {
        for l in img["layers"].as_array().unwrap() {
            chains.insert(l["chain_id"].as_str().unwrap().to_string());
            total += 1;
        }
    }
    let dirs = std::fs::read_dir(env.state().join("overlay/layers"))
        .unwrap()
        .count();
    assert_eq!(dirs, chains.len(), "one layer directory per distinct chain");
    assert!(
        total - chains.len() >= 2,
        "adhoc-sibling reuses adhoc's first two layers ({total} layers, {} distinct)",
        chains.len()
    );

    // The audit shape the CLI contract promises.
    let audit = env.json(&["audit", "adhoc", "--json"]);
    let names: Vec<&str> = audit["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, STEPS);
    for t in audit["transitions"].as_array().unwrap() {
        assert_eq!(t["outcome"], "ok");
        assert_eq!(
            t["version"].as_str().unwrap().len(),
            26,
            "versions are ULIDs"
        );
    }
    assert!(has_decision(&audit, "max-layers", "allow", ""), "{audit}");

    // A second run over the unchanged bucket starts nothing.
    let before = audit["transitions"].as_array().unwrap().len();
    let out = env.run(&["run", "--once", "--source", src.to_str().unwrap()]);
    assert!(out.status.success());
    let after = env.json(&["audit", "adhoc", "--json"])["transitions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "an unchanged image is not processed again");
}

#[test]
fn second_run_refuses_to_start_while_one_holds_the_state_dir() {
    let env = Env::new();
    std::fs::create_dir_all(env.state()).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.state().join("run.lock"))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let out = env.run(&[
        "run",
        "--once",
        "--source",
        example_bucket().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already using state directory"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// Without a usable pool (this kernel has no device-mapper; elsewhere, no
/// pool of that name), `--backend thinpool` is a clear usage error that
/// touches nothing; the real pool is tested in a VM (tests/vm/thinpool.sh).
#[test]
fn thinpool_without_a_pool_is_a_clear_error() {
    let env = Env::new();
    let src = example_bucket();
    let cfg = env.state().with_extension("toml");
    std::fs::write(&cfg, "[thinpool]\npool = \"tarpool-e2e-absent\"\n").unwrap();
    let out = env.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "run",
        "--once",
        "--backend",
        "thinpool",
        "--source",
        src.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("thin-pool backend: "), "{err}");
    assert!(
        err.contains("/dev/mapper/control")
            || err.contains("no device-mapper thin pool named `tarpool-e2e-absent`"),
        "{err}"
    );
    assert!(env.status().is_empty(), "nothing was processed");
}

/// `gc` removes the layers nothing stands on any more (here: the sibling's
/// own top layer, once the sibling's source changes to adhoc's layers) and
/// keeps every layer a ready image or an activation needs.
#[test]
fn gc_removes_only_unreferenced_layers() {
    let env = Env::new();
    let bucket = bucket_with(&env, &["adhoc", "adhoc-sibling"]);
    let src = bucket.to_str().unwrap();
    let run = |env: &Env| {
        let out = env.run(&["run", "--once", "--source", src]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&env);
    let layer_dirs = || {
        std::fs::read_dir(env.state().join("overlay/layers"))
            .unwrap()
            .count()
    };
    let before = layer_dirs();
    let gc = env.json(&["gc", "--json"]);
    assert_eq!(gc["layers_removed"], 0, "{gc}");
    assert_eq!(layer_dirs(), before);

    // An activation keeps its layers even when its image moves on.
    let mnt = env.dir.path().join("mnt-keep");
    env.json(&[
        "activate",
        "adhoc-sibling",
        "--as",
        "keep",
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    let sib = bucket.join("images/adhoc-sibling/3.tar");
    std::fs::copy(bucket.join("images/adhoc/3.tar"), &sib).unwrap();
    run(&env);
    let st = env.json(&["status", "--json"]);
    assert_eq!(
        top_chain(&st, "adhoc"),
        top_chain(&st, "adhoc-sibling"),
        "the sibling now is adhoc"
    );
    let gc = env.json(&["gc", "--json"]);
    assert_eq!(
        gc["layers_removed"], 0,
        "the activation still stands on the old top: {gc}"
    );
    let out = env.run(&["deactivate", "keep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gc = env.json(&["gc", "--json"]);
    assert_eq!(gc["layers_removed"], 1, "{gc}");
    assert_eq!(layer_dirs(), before - 1);
    check_activation(&env, "adhoc");
}
