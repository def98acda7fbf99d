//! Several sources served by one run (`--source` given more than once).

use crate::harness::*;

/// A directory source of the test's own holding copies of some example
/// images, each under a name of the test's choosing.
fn source_with(env: &Env, dir: &str, images: &[(&str, &str)]) -> std::path::PathBuf {
    let root = env.dir.path().join(dir);
    std::fs::create_dir_all(root.join("images")).unwrap();
    for (from, to) in images {
        copy_tree(
            &example_bucket().join("images").join(from),
            &root.join("images").join(to),
        );
    }
    root
}

#[test]
fn one_run_serves_several_sources_and_names_stay_unique() {
    let env = Env::new();
    let first = source_with(
        &env,
        "first",
        &[("dockersave.tar", "dockersave.tar"), ("adhoc", "adhoc")],
    );
    // The same docker archive under another name, and a second `adhoc`
    // (another image's bytes): names are unique across sources.
    let second = source_with(
        &env,
        "second",
        &[("dockersave.tar", "again.tar"), ("ocilayout", "adhoc")],
    );
    let (first_s, second_s) = (first.to_str().unwrap(), second.to_str().unwrap());
    let report = env.json(&[
        "run", "--once", "--json", "--source", first_s, "--source", second_s,
    ]);
    let states = report_states(&report);
    let ready = |n: &str| (n.to_string(), "ready".to_string());
    assert_eq!(
        states,
        [ready("adhoc"), ready("dockersave"), ready("again")],
        "{report}"
    );
    let rejected = report["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{report}");
    assert_eq!(rejected[0]["key"], "images/adhoc/");
    let reason = rejected[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("image `adhoc` is also in dir:")
            && reason.ends_with("configured first: image names must be unique across sources"),
        "{reason}"
    );
    // The first source's `adhoc` it is, and `again` shares `dockersave`'s
    // layers (chain IDs) whatever its source.
    check_activation(&env, "adhoc");
    let status = env.json(&["status", "--json"]);
    assert_eq!(
        top_chain(&status, "again"),
        top_chain(&status, "dockersave"),
        "{status}"
    );
    // Nothing changed: the next pass starts no run.
    let again = env.json(&[
        "run", "--once", "--json", "--source", first_s, "--source", second_s,
    ]);
    assert!(all_unchanged(&again), "{again}");
    // A source that is not there at the start is a configuration error:
    // one line, exit 2, nothing run.
    let out = env.run(&[
        "run",
        "--once",
        "--source",
        first_s,
        "--source",
        second_s,
        "--source",
        env.dir.path().join("nowhere").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nowhere") && err.trim().lines().count() == 1,
        "{err}"
    );
}
