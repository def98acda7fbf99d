//! Load: 20 images of mixed kinds processed with `--jobs 4` while other
//! clients read `status`, `audit` and `state.db` itself in a loop. Nothing is
//! lost, SQLite never reports busy or locked to anyone, every transition is
//! in the audit log in order, and shared layers are stored once.

use crate::harness::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an image of the load bucket must end as.
enum Want {
    /// Ready, with this many layers (`None`: an example image, any number).
    Ready(Option<usize>),
    /// Failed at transition `step` with an error containing `fragment`.
    Failed {
        step: &'static str,
        fragment: &'static str,
    },
}

struct Case {
    name: String,
    want: Want,
    /// Its first layer is the shared base layer.
    shares_base: bool,
}

/// A deterministic tar layer: `(path, data)` files (and their directories,
/// which the paths name with a trailing `/` and no data).
fn layer(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        let dir = path.ends_with('/');
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_size(data.len() as u64);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn file(path: &str, data: &str) -> (String, Vec<u8>) {
    (path.to_string(), data.as_bytes().to_vec())
}

fn dir(path: &str) -> (String, Vec<u8>) {
    (format!("{path}/"), Vec::new())
}

fn put(bucket: &Path, key: &str, data: &[u8]) {
    let p = bucket.join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Builds the load bucket; returns its cases, in name order.
fn load_bucket(bucket: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut base = vec![
        dir("etc"),
        dir("usr"),
        dir("usr/share"),
        dir("usr/share/base"),
    ];
    base.push(file("etc/os-release", "ID=loadtest\n"));
    for i in 0..40 {
        base.push(file(
            &format!("usr/share/base/f{i:02}"),
            &"base\n".repeat(i + 1),
        ));
    }
    let base = layer(&base);
    let top = |n: usize| {
        layer(&[
            dir("opt"),
            file("etc/hostname", &format!("img{n:02}\n")),
            file(&format!("opt/img{n:02}"), &format!("{n}\n").repeat(n)),
        ])
    };
    let many = |n: usize| {
        let mut e = vec![dir("srv")];
        for d in 0..20 {
            e.push(dir(&format!("srv/d{d:02}")));
            for f in 0..20 {
                e.push(file(
                    &format!("srv/d{d:02}/f{f:02}"),
                    &format!("{n} {d} {f}\n"),
                ));
            }
        }
        layer(&e)
    };
    // img01..img06: the shared base under a layer of their own.
    for n in 1..=6 {
        put(bucket, &format!("images/img{n:02}/1.tar"), &base);
        put(bucket, &format!("images/img{n:02}/2.tar"), &top(n));
        cases.push((format!("img{n:02}"), Want::Ready(Some(2)), true));
    }
    // img07, img08: several hundred files each, on a base of their own;
    // img09: several hundred files on the shared base.
    for n in 7..=8 {
        put(
            bucket,
            &format!("images/img{n:02}/1.tar"),
            &layer(&[file("own-base", &format!("{n}\n"))]),
        );
        put(bucket, &format!("images/img{n:02}/2.tar"), &many(n));
        cases.push((format!("img{n:02}"), Want::Ready(Some(2)), false));
    }
    put(bucket, "images/img09/1.tar", &base);
    put(bucket, "images/img09/2.tar", &many(9));
    cases.push(("img09".into(), Want::Ready(Some(2)), true));
    // img10..img12: three layers, the third deleting a file of the first.
    for n in 10..=12 {
        let p = |i: usize| format!("images/img{n:02}/{i}.tar");
        put(
            bucket,
            &p(1),
            &layer(&[dir("etc"), file("etc/gone", &format!("{n}"))]),
        );
        put(bucket, &p(2), &top(n));
        put(
            bucket,
            &p(3),
            &layer(&[dir("etc"), file("etc/.wh.gone", "")]),
        );
        cases.push((format!("img{n:02}"), Want::Ready(Some(3)), false));
    }
    // Copies of the example bucket's images under new names (two copies of
    // the docker archive: the same layers, processed at the same time).
    for (from, to) in [
        ("adhoc", "ex-adhoc"),
        ("adhoc-sibling", "ex-adhoc-sibling"),
        ("many", "ex-many"),
        ("ocilayout", "ex-ocilayout"),
        ("dockersave.tar", "ex-dockersave.tar"),
        ("dockersave.tar", "ex-dockersave2.tar"),
        ("ociarchive.tar.gz", "ex-ociarchive.tar.gz"),
    ] {
        copy_tree(
            &example_bucket().join("images").join(from),
            &bucket.join("images").join(to),
        );
        let name = to.split(".tar").next().unwrap();
        cases.push((name.to_string(), Want::Ready(None), false));
    }
    // A corrupt gzip stream.
    put(
        bucket,
        "images/broken.tar.gz",
        &[
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9,
        ],
    );
    cases.push((
        "broken".into(),
        Want::Failed {
            step: "classify",
            fragment: "corrupt deflate stream",
        },
        false,
    ));
    let mut cases: Vec<Case> = cases
        .into_iter()
        .map(|(name, want, shares_base)| Case {
            name,
            want,
            shares_base,
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(cases.len(), 20);
    cases
}

/// Checks an image's transition history (from `audit --json`) against the
/// machine: in version order, the steps of [`STEPS`] one after another, a
/// `retry` repeating its step. `done`: the run has ended, so nothing is
/// `running` and the history reaches `completed` or ends `failed`.
fn check_history(transitions: &[Value], done: bool) -> Result<(), String> {
    let mut step = 0;
    let mut versions = BTreeSet::new();
    for (i, t) in transitions.iter().enumerate() {
        let last = i + 1 == transitions.len();
        let name = t["name"].as_str().unwrap_or("");
        let outcome = t["outcome"].as_str().unwrap_or("");
        if STEPS.get(step) != Some(&name) {
            return Err(format!(
                "transition {i} is {name}, expected {:?}",
                STEPS.get(step)
            ));
        }
        if !versions.insert(t["version"].as_str().unwrap_or("").to_string()) {
            return Err(format!("transition {i}: version repeated"));
        }
        match outcome {
            "ok" => step += 1,
            "retry" => {}
            "running" | "failed" if last => {}
            o => {
                return Err(format!(
                    "transition {i} ({name}): outcome {o} before the end"
                ))
            }
        }
        if done && outcome == "running" {
            return Err(format!("transition {i} ({name}) still running"));
        }
    }
    if done
        && step != STEPS.len()
        && transitions.last().map(|t| t["outcome"].as_str()) != Some(Some("failed"))
    {
        return Err(format!("history stops at {:?}", STEPS.get(step)));
    }
    Ok(())
}

/// The final expectations of one image: its status row, run report row and
/// audit.
fn check_image(case: &Case, status: &Value, report: &Value, audit: &Value, tmp: &str) {
    let name = &case.name;
    assert_eq!(report["state"], status["state"], "{name}: report vs status");
    let ts = audit["transitions"].as_array().unwrap();
    check_history(ts, true).unwrap_or_else(|e| panic!("{name}: {e}: {audit}"));
    match case.want {
        Want::Ready(layers) => {
            assert!(
                ts.iter().all(|t| t["attempt"] == 1),
                "{name}: nothing is retried under load: {audit}"
            );
            assert_eq!(status["state"], "ready", "{name}: {status}");
            let names: Vec<&str> = ts.iter().map(|t| t["name"].as_str().unwrap()).collect();
            assert_eq!(names, STEPS, "{name}: every transition, in order");
            assert!(ts.iter().all(|t| t["outcome"] == "ok"), "{name}: {audit}");
            let got = status["layers"].as_array().unwrap().len();
            if let Some(n) = layers {
                assert_eq!(got, n, "{name}: layers");
            }
            assert!(got >= 1, "{name}: layers");
        }
        Want::Failed { step, fragment } => {
            assert_eq!(status["state"], "failed", "{name}: {status}");
            let err = status["error"].as_str().unwrap_or("");
            assert!(err.contains(fragment), "{name}: {err:?} lacks {fragment:?}");
            assert!(!err.contains('\n') && !err.contains(tmp), "{name}: {err:?}");
            // The steps before `step` once, then `step` until it failed
            // (check_history: each earlier attempt a retry).
            let at = STEPS.iter().position(|s| *s == step).unwrap();
            let names: Vec<&str> = ts.iter().map(|t| t["name"].as_str().unwrap()).collect();
            assert_eq!(names[..at], STEPS[..at], "{name}: {audit}");
            assert!(names[at..].iter().all(|n| *n == step), "{name}: {audit}");
            assert_eq!(ts.last().unwrap()["outcome"], "failed", "{name}: {audit}");
        }
    }
}

/// What the concurrent readers saw.
#[derive(Default)]
struct Seen {
    reads: usize,
    /// Problems (each one line): failed invocations, busy/locked, lost images.
    problems: Vec<String>,
}

impl Seen {
    fn stderr(&mut self, what: &str, err: &[u8]) {
        let err = String::from_utf8_lossy(err).to_lowercase();
        if err.contains("busy") || err.contains("locked") {
            self.problems
                .push(format!("{what}: stderr says busy/locked: {err}"));
        }
    }
}

/// Loops `status --json` until `stop`: every call exits 0, and an image
/// once listed is never missing from a later listing.
fn status_reader(env: &Env, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut listed = BTreeSet::new();
    while !stop.load(Ordering::SeqCst) {
        let out = env.run(&["status", "--json"]);
        seen.reads += 1;
        seen.stderr("status", &out.stderr);
        if !out.status.success() {
            seen.problems.push(format!(
                "status exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let now: BTreeSet<String> = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        for lost in listed.difference(&now) {
            seen.problems.push(format!("status lost {lost}: {now:?}"));
        }
        listed.extend(now);
        std::thread::sleep(Duration::from_millis(10));
    }
    seen
}

/// Loops `audit NAME --json` over `names` until `stop`. Before an image's
/// run exists the answer is the documented one-line error (exit 2); after,
/// always a history the machine could have written so far.
fn audit_reader(env: &Env, names: &[String], offset: usize, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut known = BTreeSet::new();
    let mut i = offset;
    while !stop.load(Ordering::SeqCst) {
        let name = &names[i % names.len()];
        i += 1;
        let out = env.run(&["audit", name, "--json"]);
        seen.reads += 1;
        seen.stderr("audit", &out.stderr);
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                if let Err(e) = check_history(v["transitions"].as_array().unwrap(), false) {
                    seen.problems.push(format!("audit {name}: {e}: {v}"));
                }
                known.insert(name.clone());
            }
            Some(2)
                if !known.contains(name)
                    && err
                        == format!(
                            "tarpool: error: no image named {name} has been processed\n"
                        ) => {}
            c => seen
                .problems
                .push(format!("audit {name} exited {c:?}: {}", err.trim())),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    seen
}

/// Reads `state.db` directly, as an operator's `sqlite3` would, until
/// `stop`: every read succeeds, and the audit log only grows.
fn db_reader(db: &Path, stop: &AtomicBool) -> Seen {
    use rusqlite::{Connection, OpenFlags};
    let mut seen = Seen::default();
    // Wait for the service to have made the database (and switched it to
    // WAL), as an operator would.
    let wal = db.with_extension("db-wal");
    while !wal.exists() && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let Ok(c) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        seen.problems.push("opening state.db read-only".into());
        return seen;
    };
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut last = 0i64;
    while !stop.load(Ordering::SeqCst) {
        let r = (|| -> rusqlite::Result<(i64, i64)> {
            let tx = c.unchecked_transaction()?;
            let n: i64 = tx.query_row("SELECT count(*) FROM transitions", [], |r| r.get(0))?;
            // At most one execution under way per run.
            let dup: i64 = tx.query_row(
                "SELECT count(*) FROM (SELECT run FROM transitions WHERE outcome = 'running' GROUP BY run HAVING count(*) > 1)",
                [],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok((n, dup))
        })();
        seen.reads += 1;
        match r {
            Ok((n, dup)) => {
                if n < last {
                    seen.problems
                        .push(format!("transitions went from {last} to {n}"));
                }
                if dup != 0 {
                    seen.problems
                        .push(format!("{dup} runs with two executions under way"));
                }
                last = n;
            }
            // Before the service has created its schema.
            Err(e) if last == 0 && e.to_string().contains("no such table") => {}
            Err(e) => seen.problems.push(format!("reading state.db: {e}")),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen
}

#[test]
fn twenty_images_with_four_jobs_while_clients_read_status_and_audit() {
    let env = Env::new();
    let bucket = env.dir.path().join("bucket");
    let cases = load_bucket(&bucket);
    let names: Vec<String> = cases.iter().map(|c| c.name.clone()).collect();
    let tmp = env.dir.path().to_str().unwrap().to_string();
    let db = env.state().join("state.db");

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (readers, out) = std::thread::scope(|s| {
        let readers = [
            s.spawn(|| status_reader(&env, &stop)),
            s.spawn(|| audit_reader(&env, &names, 0, &stop)),
            s.spawn(|| audit_reader(&env, &names, names.len() / 2, &stop)),
            s.spawn(|| db_reader(&db, &stop)),
        ];
        // The readers start first: the service may find the state
        // directory made by a reader.
        std::thread::sleep(Duration::from_millis(100));
        let src = format!("dir:{}", bucket.display());
        let out = env.run(&["run", "--once", "--jobs", "4", "--json", "--source", &src]);
        stop.store(true, Ordering::SeqCst);
        let readers: Vec<Seen> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        (readers, out)
    });
    let elapsed = started.elapsed();
    let reads: Vec<usize> = readers.iter().map(|r| r.reads).collect();
    eprintln!(
        "load: 20 images, --jobs 4, {:.1}s; reads: status {}, audit {}+{}, state.db {}",
        elapsed.as_secs_f64(),
        reads[0],
        reads[1],
        reads[2],
        reads[3]
    );

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one image fails, the run goes on: {stderr}"
    );
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("busy") && !lower.contains("locked") && !lower.contains("stopped"),
        "{stderr}"
    );
    let problems: Vec<&String> = readers.iter().flat_map(|r| &r.problems).collect();
    assert!(problems.is_empty(), "readers saw: {problems:#?}");
    for (what, n) in ["status", "audit", "audit", "state.db"].iter().zip(&reads) {
        assert!(*n >= 20, "{what} read only {n} times: no real concurrency");
    }

    // Every image, as the run reported it, as status shows it, as audited.
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report: BTreeMap<String, Value> = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i.clone()))
        .collect();
    let status = env.json(&["status", "--json"]);
    let status: BTreeMap<String, Value> = status["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i.clone()))
        .collect();
    assert_eq!(
        status.keys().collect::<Vec<_>>(),
        names.iter().collect::<Vec<_>>()
    );
    assert_eq!(
        report.keys().collect::<Vec<_>>(),
        status.keys().collect::<Vec<_>>()
    );
    let mut audited = 0;
    for case in &cases {
        let audit = env.json(&["audit", &case.name, "--json"]);
        audited += audit["transitions"].as_array().unwrap().len();
        check_image(case, &status[&case.name], &report[&case.name], &audit, &tmp);
    }

    // The database agrees: every transition is some image's, no run or
    // execution is left under way.
    let c = rusqlite::Connection::open(&db).unwrap();
    let q = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(q("SELECT count(*) FROM transitions") as usize, audited);
    assert_eq!(q("SELECT count(*) FROM runs WHERE status = 'running'"), 0);
    assert_eq!(
        q("SELECT count(*) FROM transitions WHERE outcome = 'running'"),
        0
    );
    assert_eq!(q("SELECT count(*) FROM runs") as usize, cases.len());

    // Layers shared by images are stored once: one committed row and one
    // directory per distinct chain the ready images stand on.
    let chains_of = |name: &str| -> Vec<String> {
        status[name]["layers"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .map(|l| l["chain_id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut distinct = BTreeSet::new();
    let mut total = 0;
    for n in &names {
        let ch = chains_of(n);
        total += ch.len();
        distinct.extend(ch);
    }
    assert_eq!(q("SELECT count(*) FROM layers") as usize, distinct.len());
    assert_eq!(
        q("SELECT count(*) FROM layers WHERE state = 'committed'") as usize,
        distinct.len()
    );
    let dirs = std::fs::read_dir(env.state().join("overlay/layers"))
        .unwrap()
        .count();
    assert_eq!(
        dirs,
        distinct.len(),
        "one layer directory per distinct chain"
    );
    let base: BTreeSet<String> = cases
        .iter()
        .filter(|c| c.shares_base)
        .map(|c| chains_of(&c.name)[0].clone())
        .collect();
    assert_eq!(base.len(), 1, "the shared base is one chain: {base:?}");
    // The base (7 images), the docker archive's copy, the sibling's two
    // first layers.
    let dockersave = chains_of("ex-dockersave").len();
    assert!(
        total - distinct.len() >= 6 + dockersave + 2,
        "{total} layers, {} distinct",
        distinct.len()
    );
}

/// Clients that start together on a new state directory (a `status` poll
/// as the service first starts) all succeed: creating the schema and adding
/// the columns newer versions have is safe against each other.
#[test]
fn clients_starting_together_on_a_new_state_dir_all_succeed() {
    for round in 0..8 {
        let env = Env::new();
        let kids: Vec<_> = (0..8)
            .map(|_| {
                env.cmd(&["status", "--json"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for k in kids {
            let out = k.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// On a fast disk (tmpfs: commits take microseconds) consecutive
/// transitions of an image often start in the same millisecond; the audit's
/// order (`ORDER BY version`) is still the order they ran in.
#[test]
fn audit_order_is_execution_order_on_a_fast_disk() {
    let shm = Path::new("/dev/shm");
    let dir = tempfile::Builder::new()
        .prefix("tarpool-e2e-")
        .tempdir_in(if shm.is_dir() { shm } else { Path::new("/tmp") })
        .unwrap();
    let state = dir.path().join("state");
    let out = std::process::Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--once", "--jobs", "4", "--source"])
        .arg(example_bucket())
        .env_remove("TARPOOL_FAILPOINTS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = rusqlite::Connection::open(state.join("state.db")).unwrap();
    let order = |by: &str| -> Vec<(String, String)> {
        let mut s = c
            .prepare(&format!(
                "SELECT image, name FROM transitions ORDER BY image, {by}"
            ))
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    // rowid: the order the rows were inserted, i.e. the transitions began.
    let inserted = order("rowid");
    assert_eq!(inserted.len(), IMAGES.len() * STEPS.len());
    assert_eq!(order("version"), inserted);
    for (i, (_, name)) in inserted.iter().enumerate() {
        assert_eq!(name, STEPS[i % STEPS.len()]);
    }
}
