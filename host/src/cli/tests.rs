//! The configuration's merging (command line over file over defaults), its
//! checks, and what a reload may change.

use super::*;

fn args(cli: &[&str]) -> Args {
    let mut argv = vec!["tarpool"];
    argv.extend_from_slice(cli);
    argv.push("status");
    Args::try_parse_from(argv).unwrap()
}

fn file(toml_text: &str) -> FileConfig {
    toml::from_str(toml_text).unwrap()
}

fn no_overrides() -> Overrides<'static> {
    Overrides::default()
}

/// One case: the command line, the file and the overrides, and the
/// effective configuration as `config show` would print it (only the keys
/// named in `expected`).
fn check(cli: &[&str], toml_text: &str, o: Overrides<'_>, expected: &[(&str, &str)]) {
    let cfg = resolve(&args(cli), file(toml_text), &o)
        .unwrap_or_else(|e| panic!("{cli:?} {toml_text:?}: {e:#}"));
    let shown = toml::Value::try_from(cfg.as_file()).unwrap();
    for (key, want) in expected {
        let got = shown
            .get(key)
            .map(|v| match v {
                toml::Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .unwrap_or_else(|| "(unset)".into());
        assert_eq!(got, *want, "{key} with {cli:?}, {toml_text:?}");
    }
}

#[test]
fn the_command_line_wins_over_the_file_over_the_defaults() {
    check(
        &[],
        "",
        no_overrides(),
        &[
            ("state_dir", "/var/lib/tarpool"),
            ("backend", "auto"),
            ("jobs", "2"),
            ("interval", "30"),
            ("policy", "default"),
            ("log_format", "human"),
            ("metrics_addr", "(unset)"),
            ("gc", "true"),
            ("max_attempts", "5"),
            ("runtime", "crun"),
            ("userns_base", "524288"),
        ],
    );
    let toml_text = r#"
        state_dir = "/srv/file"
        source = "dir:/srv/images"
        backend = "thinpool"
        jobs = 4
        interval = 60
        log_format = "json"
        metrics_addr = "127.0.0.1:1"
        gc = false
        runtime = "runc"
        userns_base = 100000
    "#;
    check(
        &[],
        toml_text,
        no_overrides(),
        &[
            ("state_dir", "/srv/file"),
            ("sources", r#"["dir:/srv/images"]"#),
            ("backend", "thinpool"),
            ("jobs", "4"),
            ("interval", "60"),
            ("log_format", "json"),
            ("metrics_addr", "127.0.0.1:1"),
            ("gc", "false"),
            ("runtime", "runc"),
            ("userns_base", "100000"),
        ],
    );
    let cli_sources = ["dir:/srv/other".to_string(), "s3://b/p".to_string()];
    check(
        &["--state-dir", "/srv/cli", "--log-format", "human"],
        toml_text,
        Overrides {
            sources: &cli_sources,
            backend: Some(crate::core::states::Backend::Overlay),
            jobs: Some(1),
            interval: Some(5),
            metrics_addr: Some("127.0.0.1:2"),
        },
        &[
            ("state_dir", "/srv/cli"),
            ("sources", r#"["dir:/srv/other", "s3://b/p"]"#),
            ("backend", "overlay"),
            ("jobs", "1"),
            ("interval", "5"),
            ("log_format", "human"),
            ("metrics_addr", "127.0.0.1:2"),
            // Not on the command line: the file's.
            ("gc", "false"),
            ("runtime", "runc"),
        ],
    );
}

#[test]
fn one_source_or_several() {
    check(
        &[],
        r#"source = "dir:/x""#,
        no_overrides(),
        &[("sources", r#"["dir:/x"]"#)],
    );
    check(
        &[],
        r#"sources = ["dir:/x", "dir:/y"]"#,
        no_overrides(),
        &[("sources", r#"["dir:/x", "dir:/y"]"#)],
    );
    // `--source` may be repeated; given, it replaces the file's list.
    let parsed =
        Args::try_parse_from(["tarpool", "run", "--source", "dir:/p", "--source", "dir:/q"])
            .unwrap();
    let Cmd::Run { source, .. } = parsed.cmd else {
        panic!("not `run`: {:?}", parsed.cmd)
    };
    assert_eq!(source, ["dir:/p", "dir:/q"]);
    check(
        &[],
        r#"sources = ["dir:/x", "dir:/y"]"#,
        Overrides {
            sources: &source,
            ..no_overrides()
        },
        &[("sources", r#"["dir:/p", "dir:/q"]"#)],
    );
}

#[test]
fn values_are_resolved_once() {
    // (A relative state directory is made absolute here: the e2e test
    // `private::a_relative_state_dir_works_for_multi_layer_images`; not here,
    // where other tests move the process's working directory.)
    // At least one attempt; the manifest step reads members up to the
    // policy's JSON limit.
    check(
        &[],
        "max_attempts = 0",
        no_overrides(),
        &[("max_attempts", "1")],
    );
    let cfg = config_of(r#"policy = "strict""#);
    assert_eq!(cfg.policy.name, "strict");
    assert_eq!(
        cfg.steps.max_member_read,
        usize::try_from(cfg.policy.max_json_bytes.limit).ok()
    );
}

/// One case: a file (or overrides) the configuration refuses, and the
/// one-line error.
fn check_refused(toml_text: &str, o: Overrides<'_>, expected: &str) {
    let e = match toml::from_str::<FileConfig>(toml_text) {
        Err(e) => e.message().trim().to_string(),
        Ok(f) => match resolve(&args(&[]), f, &o) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("{toml_text:?} was accepted"),
        },
    };
    assert!(e.starts_with(expected), "{toml_text:?}: {e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn a_bad_configuration_is_refused_in_one_line() {
    check_refused("jobs = 0", no_overrides(), "--jobs must be at least 1");
    check_refused(
        "",
        Overrides {
            interval: Some(0),
            ..no_overrides()
        },
        "--interval must be at least 1 second",
    );
    check_refused(
        r#"metrics_addr = "localhost""#,
        no_overrides(),
        r#"metrics address "localhost": invalid socket address syntax (expected e.g. 127.0.0.1:9464)"#,
    );
    check_refused(
        r#"policy = "/nonexistent/policy.toml""#,
        no_overrides(),
        "reading policy /nonexistent/policy.toml",
    );
    check_refused("jbos = 2", no_overrides(), "unknown field `jbos`");
    check_refused(
        "source = \"dir:/a\"\nsources = [\"dir:/b\"]",
        no_overrides(),
        "the configuration gives both `source` and `sources`; give one",
    );
    check_refused(
        "sources = []",
        no_overrides(),
        "`sources` is empty; name at least one source",
    );
    check_refused(
        r#"backend = "zfs""#,
        no_overrides(),
        "unknown variant `zfs`",
    );
}

fn config_of(toml_text: &str) -> Config {
    resolve(&args(&[]), file(toml_text), &no_overrides())
        .unwrap_or_else(|e| panic!("{toml_text:?}: {e:#}"))
}

/// One case: a configuration changed to `new`, and the refusal expected
/// (`None`: the reload is taken).
fn check_reload(change: &str, expected: Option<&str>) {
    let old = config_of(r#"state_dir = "/srv/a""#);
    let new = config_of(&format!("state_dir = \"/srv/a\"\n{change}"));
    assert_eq!(
        reload_refused(&old, &new).as_deref(),
        expected,
        "{change:?}"
    );
}

#[test]
fn a_reload_may_change_what_a_running_service_can_take() {
    for taken in [
        "",
        "jobs = 8",
        "interval = 5",
        r#"policy = "strict""#,
        r#"source = "dir:/srv/other""#,
        r#"sources = ["dir:/srv/a", "dir:/srv/b"]"#,
        "gc = false",
        "max_attempts = 2",
        "[thinpool]\ndata_size = \"1T\"\nmeta_size = \"1G\"",
    ] {
        check_reload(taken, None);
    }
    check_reload(
        r#"backend = "thinpool""#,
        Some("backend cannot change while the service runs; restart it"),
    );
    check_reload(
        r#"metrics_addr = "127.0.0.1:9464""#,
        Some("metrics_addr cannot change while the service runs; restart it"),
    );
    for pool in [
        "pool = \"other\"",
        "first_dev_id = 100",
        "volume_size = \"20G\"",
        "zero_blocks = true",
    ] {
        check_reload(
            &format!("[thinpool]\n{pool}"),
            Some("[thinpool] pool, first_dev_id, volume_size and zero_blocks cannot change while the service runs; restart it"),
        );
    }
    let old = config_of(r#"state_dir = "/srv/a""#);
    let new = config_of(r#"state_dir = "/srv/b""#);
    assert_eq!(
        reload_refused(&old, &new).as_deref(),
        Some("state_dir cannot change while the service runs; restart it")
    );
}
