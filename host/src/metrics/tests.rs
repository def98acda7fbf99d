//! The exposition text (rendered and linted) and the server's bounds.

use super::server::*;
use super::*;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn failed_requests_warn_at_most_once_a_minute() {
    let l = WarnLimit::default();
    // (time in ms, what admit answers)
    let cases: &[(u64, Option<u64>)] = &[
        (0, Some(0)),
        (10, None),
        (59_000, None),
        (60_000, Some(2)),
        (60_001, None),
        (200_000, Some(1)),
    ];
    for (t, want) in cases {
        assert_eq!(l.admit(*t), *want, "at {t} ms");
    }
}

/// Renders `input`, checks the whole text is well-formed exposition
/// format, and compares the families named in `expected` (complete,
/// with their HELP and TYPE lines) with it.
fn check(input: Snapshot, expected: &str) {
    let text = render(&input);
    lint(&text);
    let wanted: Vec<&str> = expected
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let got: Vec<&str> = text
        .lines()
        .filter(|l| wanted.contains(&family_of(l)))
        .collect();
    let expected: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(got.join("\n"), expected.join("\n"), "\nwhole text:\n{text}");
}

/// The family a line belongs to (a histogram's samples to the histogram).
fn family_of(line: &str) -> &str {
    let name = match line.strip_prefix("# ") {
        Some(rest) => rest.split(' ').nth(1).unwrap_or(""),
        None => line.split(['{', ' ']).next().unwrap_or(""),
    };
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|base| base.ends_with("_seconds"))
        .unwrap_or(name)
}

/// Every sample follows its family's HELP and TYPE; every line is one of
/// the three kinds; values are numbers.
fn lint(text: &str) {
    assert!(text.ends_with('\n'));
    let mut typed = Vec::new();
    let mut last_help = "";
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# HELP ") {
            last_help = rest.split(' ').next().unwrap();
        } else if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(name, last_help, "TYPE after its HELP: {l}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{l}");
            assert!(!typed.contains(&name), "one TYPE per family: {l}");
            typed.push(name);
        } else {
            assert_eq!(
                typed.last().copied(),
                Some(family_of(l)),
                "sample under its TYPE: {l}"
            );
            let value = l.rsplit(' ').next().unwrap();
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{l}");
        }
    }
}

fn transition(
    name: &str,
    outcome: &str,
    count: u64,
    sum_ms: u64,
    buckets: &[u64],
) -> TransitionCount {
    TransitionCount {
        transition: name.into(),
        outcome: outcome.into(),
        count,
        sum_ms,
        buckets: buckets.to_vec(),
    }
}

#[test]
fn render_cases() {
    // An empty state: every family is there, images at 0, no pool.
    check(
        Snapshot {
            version: "0.1.0".into(),
            ..Snapshot::default()
        },
        r#"
        # HELP tarpool_up 1 while the service runs.
        # TYPE tarpool_up gauge
        tarpool_up 1
        # HELP tarpool_build_info The running build; the value is always 1.
        # TYPE tarpool_build_info gauge
        tarpool_build_info{version="0.1.0"} 1
        # HELP tarpool_transitions_total Finished transition executions, by transition and outcome (ok, retry, failed, cancelled, interrupted: under way when the service stopped).
        # TYPE tarpool_transitions_total counter
        # HELP tarpool_images Tracked images by the state `tarpool status` shows.
        # TYPE tarpool_images gauge
        tarpool_images{state="ready"} 0
        tarpool_images{state="failed"} 0
        tarpool_images{state="running"} 0
        tarpool_images{state="pending"} 0
        # HELP tarpool_runs_active Runs not yet ended.
        # TYPE tarpool_runs_active gauge
        tarpool_runs_active 0
        "#,
    );
    let counts = Counts {
        transitions: vec![
            transition("completed", "ok", 3, 12, &[3; 12]),
            transition(
                "unpack-layers",
                "ok",
                2,
                1_234_567,
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
            ),
        ],
        downloaded_bytes: vec![("dir".into(), 1 << 20), ("registry".into(), 3)],
        layers: 4,
        written_bytes: 5000,
        layer_entries: 42,
        decisions: vec![DecisionCount {
            rule: "max-layers".into(),
            action: "allow".into(),
            verdict: "allow".into(),
            count: 6,
        }],
        images: vec![("ready".into(), 5), ("failed".into(), 1), ("odd".into(), 2)],
        runs_active: 1,
    };
    check(
        Snapshot {
            version: "0.1.0".into(),
            counts: counts.clone(),
            pool: None,
        },
        r#"
        # HELP tarpool_transitions_total Finished transition executions, by transition and outcome (ok, retry, failed, cancelled, interrupted: under way when the service stopped).
        # TYPE tarpool_transitions_total counter
        tarpool_transitions_total{transition="completed",outcome="ok"} 3
        tarpool_transitions_total{transition="unpack-layers",outcome="ok"} 2
        # HELP tarpool_transition_duration_seconds Wall time of finished transition executions, by transition and outcome (interrupted ones left out).
        # TYPE tarpool_transition_duration_seconds histogram
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="0.01"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="0.05"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="0.1"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="0.5"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="1"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="2.5"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="5"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="10"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="30"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="60"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="300"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="900"} 3
        tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="+Inf"} 3
        tarpool_transition_duration_seconds_sum{transition="completed",outcome="ok"} 0.012
        tarpool_transition_duration_seconds_count{transition="completed",outcome="ok"} 3
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="0.01"} 0
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="0.05"} 0
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="0.1"} 0
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="0.5"} 0
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="1"} 0
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="2.5"} 0
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="5"} 0
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="10"} 0
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="30"} 0
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="60"} 1
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="300"} 1
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="900"} 1
        tarpool_transition_duration_seconds_bucket{transition="unpack-layers",outcome="ok",le="+Inf"} 2
        tarpool_transition_duration_seconds_sum{transition="unpack-layers",outcome="ok"} 1234.567
        tarpool_transition_duration_seconds_count{transition="unpack-layers",outcome="ok"} 2
        # HELP tarpool_downloaded_bytes_total Bytes fetched from the sources by completed download and fetch-layers transitions, by the kind of source (dir, s3, registry).
        # TYPE tarpool_downloaded_bytes_total counter
        tarpool_downloaded_bytes_total{source="dir"} 1048576
        tarpool_downloaded_bytes_total{source="s3"} 0
        tarpool_downloaded_bytes_total{source="registry"} 3
        # HELP tarpool_written_bytes_total Content bytes of the committed layers (drops only when `tarpool gc` removes layers, between runs).
        # TYPE tarpool_written_bytes_total counter
        tarpool_written_bytes_total 5000
        # HELP tarpool_layer_entries_total Entries (files, directories, links...) of the committed layers.
        # TYPE tarpool_layer_entries_total counter
        tarpool_layer_entries_total 42
        # HELP tarpool_layers Committed layers.
        # TYPE tarpool_layers gauge
        tarpool_layers 4
        # HELP tarpool_policy_decisions_total Recorded policy decisions, by rule, action (allow, reject, skip, strip, clamp, note) and verdict (allow, deny).
        # TYPE tarpool_policy_decisions_total counter
        tarpool_policy_decisions_total{rule="max-layers",action="allow",verdict="allow"} 6
        # HELP tarpool_images Tracked images by the state `tarpool status` shows.
        # TYPE tarpool_images gauge
        tarpool_images{state="ready"} 5
        tarpool_images{state="failed"} 1
        tarpool_images{state="running"} 0
        tarpool_images{state="pending"} 0
        tarpool_images{state="odd"} 2
        # HELP tarpool_runs_active Runs not yet ended.
        # TYPE tarpool_runs_active gauge
        tarpool_runs_active 1
        "#,
    );
    // The pool, when the backend has one.
    check(
        Snapshot {
            version: "0.1.0".into(),
            counts: Counts::default(),
            pool: Some(PoolUsage {
                data_used_bytes: 65536,
                data_total_bytes: 1 << 30,
                meta_used_bytes: 4096,
                meta_total_bytes: 1 << 22,
                mode: "rw".into(),
                needs_check: false,
            }),
        },
        r#"
        # HELP tarpool_pool_data_used_bytes Thin pool data space in use.
        # TYPE tarpool_pool_data_used_bytes gauge
        tarpool_pool_data_used_bytes 65536
        # HELP tarpool_pool_data_total_bytes Thin pool data space.
        # TYPE tarpool_pool_data_total_bytes gauge
        tarpool_pool_data_total_bytes 1073741824
        # HELP tarpool_pool_metadata_used_bytes Thin pool metadata space in use.
        # TYPE tarpool_pool_metadata_used_bytes gauge
        tarpool_pool_metadata_used_bytes 4096
        # HELP tarpool_pool_metadata_total_bytes Thin pool metadata space.
        # TYPE tarpool_pool_metadata_total_bytes gauge
        tarpool_pool_metadata_total_bytes 4194304
        "#,
    );
    // Label values are escaped: backslash, quote, newline.
    check(
        Snapshot {
            version: "a\"b\\c\nd".into(),
            ..Snapshot::default()
        },
        r#"
        # HELP tarpool_build_info The running build; the value is always 1.
        # TYPE tarpool_build_info gauge
        tarpool_build_info{version="a\"b\\c\nd"} 1
        "#,
    );
}

#[test]
fn counts_from_the_store() {
    use crate::store::{Finish, NewDecision};
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("state.db");
    let s = Store::open(&path).unwrap();
    // One image with a finished download (5 bytes) and a running
    // classify; one (from a registry) whose layers were fetched (7 bytes).
    s.create_run("R1", "a", "download", "{}", "p").unwrap();
    s.create_run("R2", "b", "download", "{}", "p").unwrap();
    s.begin_transition("V1", "R1", "a", "download", 1).unwrap();
    let fin = Finish {
        version: "V1",
        outcome: crate::core::states::TransitionOutcome::Ok,
        output: Some(r#"{"fetched":1,"bytes":5}"#),
        error: None,
        status: crate::core::states::RunStatus::Running,
        next_step: Some("classify"),
        attempt: 1,
        data: "{}",
        run_error: None,
    };
    s.finish_transition("R1", &fin, None).unwrap();
    s.begin_transition("V2", "R1", "a", "classify", 1).unwrap();
    // A registry image's layers: counted under its kind of source.
    s.begin_transition("V3", "R2", "b", "fetch-layers", 1)
        .unwrap();
    let data = r#"{"source":"registry://r.io/a:1"}"#;
    let layers = Finish {
        version: "V3",
        output: Some(r#"{"fetched":2,"bytes":7}"#),
        next_step: Some("check-unpacked"),
        data,
        ..fin
    };
    s.finish_transition("R2", &layers, None).unwrap();
    let rule = |action| NewDecision {
        rule: "max-layers",
        action,
        layer: None,
        path: None,
        detail: "",
        reason: "why",
    };
    s.record_decisions(
        "R1",
        "V1",
        "a",
        &[rule("allow"), rule("allow"), rule("reject")],
    )
    .unwrap();
    let c = Store::open_read_only(&path)
        .unwrap()
        .metrics_counts(&BUCKETS_MS)
        .unwrap();
    assert_eq!(c.transitions.len(), 2, "running executions are not counted");
    let t = &c.transitions[0];
    assert_eq!(
        (t.transition.as_str(), t.outcome.as_str(), t.count),
        ("download", "ok", 1)
    );
    assert_eq!(t.buckets.len(), BUCKETS_MS.len());
    assert_eq!(*t.buckets.last().unwrap(), 1);
    assert_eq!(
        c.downloaded_bytes,
        [("dir".into(), 5), ("registry".into(), 7)]
    );
    let dec: Vec<_> = c
        .decisions
        .iter()
        .map(|d| (d.action.as_str(), d.verdict.as_str(), d.count))
        .collect();
    assert_eq!(dec, [("allow", "allow", 2), ("reject", "deny", 1)]);
    assert_eq!(c.images, [("running".into(), 2)]);
    assert_eq!(c.runs_active, 2);
    assert_eq!((c.layers, c.written_bytes), (0, 0));
}

/// Regression: an execution the service's stop interrupted ends at the
/// restart, so its "duration" is the downtime; it is counted under
/// outcome `interrupted` and left out of the duration histogram.
#[test]
fn interrupted_executions_have_no_duration() {
    use crate::store::Finish;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("state.db");
    let s = Store::open(&path).unwrap();
    s.create_run("R1", "a", "download", "{}", "p").unwrap();
    s.begin_transition("V1", "R1", "a", "download", 1).unwrap();
    let fin = |version, outcome| Finish {
        version,
        outcome,
        output: None,
        error: Some("network"),
        status: crate::core::states::RunStatus::Running,
        next_step: Some("download"),
        attempt: 1,
        data: "{}",
        run_error: None,
    };
    s.finish_transition(
        "R1",
        &fin("V1", crate::core::states::TransitionOutcome::Retry),
        None,
    )
    .unwrap();
    s.begin_transition("V2", "R1", "a", "download", 2).unwrap();
    // Started 8 hours before the restart that marks it.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE transitions SET started_at = started_at - 8 * 3600 * 1000 WHERE version = 'V2'",
            [],
        )
        .unwrap();
    assert_eq!(s.mark_interrupted().unwrap(), 1);
    let c = Store::open_read_only(&path)
        .unwrap()
        .metrics_counts(&BUCKETS_MS)
        .unwrap();
    let got: Vec<_> = c
        .transitions
        .iter()
        .map(|t| (t.outcome.as_str(), t.count, t.sum_ms < 60_000))
        .collect();
    assert_eq!(got, [("interrupted", 1, true), ("retry", 1, true)]);
    let interrupted = &c.transitions[0];
    assert_eq!(interrupted.sum_ms, 0);
    assert_eq!(interrupted.buckets, [0; BUCKETS_MS.len()]);
    let retry = &c.transitions[1];
    assert_eq!(retry.buckets, [1; BUCKETS_MS.len()]);

    let text = render(&Snapshot {
        version: "0.1.0".into(),
        counts: c,
        pool: None,
    });
    lint(&text);
    assert!(text.contains(
        "tarpool_transitions_total{transition=\"download\",outcome=\"interrupted\"} 1\n"
    ));
    assert!(text.contains(
        "tarpool_transition_duration_seconds_count{transition=\"download\",outcome=\"retry\"} 1\n"
    ));
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("tarpool_transition_duration_seconds")
                && l.contains("interrupted")),
        "{text}"
    );
}

/// Regression: a gather that never returns holds one thread; the
/// scrapes arriving meanwhile wait for it (and time out) instead of
/// each starting another; once it ends the next scrape starts afresh.
#[tokio::test]
async fn one_gather_at_a_time() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let flight = Arc::new(Flight::default());
    let started = Arc::new(AtomicUsize::new(0));
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let hold = Arc::new(std::sync::Mutex::new(hold));
    let work = |body: &'static str| {
        let (started, hold) = (started.clone(), hold.clone());
        move || -> Gathered {
            started.fetch_add(1, SeqCst);
            let _ = hold.lock().unwrap().recv();
            Ok(body.into())
        }
    };
    let short = Duration::from_millis(50);
    // A hung gather: every scrape meanwhile times out, and only the
    // first started one.
    for _ in 0..5 {
        assert_eq!(flight.join(short, work("first")).await, Err(Miss::TimedOut));
    }
    assert_eq!(started.load(SeqCst), 1);
    // Scrapes waiting when it ends get its result.
    let waiter = {
        let (flight, w) = (flight.clone(), work("second"));
        tokio::spawn(async move { flight.join(Duration::from_secs(30), w).await })
    };
    tokio::time::sleep(short).await;
    release.send(()).unwrap();
    assert_eq!(waiter.await.unwrap(), Ok(Arc::from("first")));
    assert_eq!(started.load(SeqCst), 1);
    // Once it has ended (its thread ends the flight just after the
    // result), the next scrape starts a new one.
    release.send(()).unwrap();
    let r = next(&flight, Ok("first".into()), work("third")).await;
    assert_eq!(r, Ok(Arc::from("third")));
    assert_eq!(started.load(SeqCst), 2);
    // A gather that fails or panics fails its scrapes, and ends the
    // flight all the same.
    let r = next(&flight, r, || Err("no pool".into())).await;
    assert_eq!(r, Err(Miss::Failed("no pool".into())));
    let r = next(&flight, r, || panic!("a gather that panics")).await;
    assert_eq!(r, Err(Miss::Failed("the gather panicked".into())));
    let r = next(&flight, r, || Ok("fresh".into())).await;
    assert_eq!(r, Ok(Arc::from("fresh")));
}

/// The first result other than `prev` (the previous flight's, seen
/// again until its thread has ended the flight).
async fn next(
    flight: &Arc<Flight>,
    prev: Result<Arc<str>, Miss>,
    work: impl FnOnce() -> Gathered + Clone + Send + 'static,
) -> Result<Arc<str>, Miss> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = flight.join(Duration::from_secs(30), work.clone()).await;
        if r != prev {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "still {r:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn routes() {
    use hyper::Method;
    for (method, path, want) in [
        (Method::GET, "/metrics", Route::Metrics),
        (Method::GET, "/", Route::NotFound),
        (Method::GET, "/metricsx", Route::NotFound),
        (Method::GET, "/metrics/x", Route::NotFound),
        (Method::POST, "/metrics", Route::MethodNotAllowed),
        (Method::HEAD, "/metrics", Route::MethodNotAllowed),
    ] {
        assert_eq!(route(&method, path), want, "{method} {path}");
    }
}

/// Sends `request` as is and reads until the server closes.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

/// The wire: what hyper answers with the limits the server sets.
#[tokio::test]
async fn serves_get_metrics_only_within_limits() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let result = Arc::new(std::sync::Mutex::new(Ok::<Arc<str>, Miss>("up 1\n".into())));
    let scrape = {
        let result = result.clone();
        move || {
            let r = match &*result.lock().unwrap() {
                Ok(b) => Ok(b.clone()),
                Err(Miss::TimedOut) => Err(Miss::TimedOut),
                Err(Miss::Failed(e)) => Err(Miss::Failed(e.clone())),
            };
            async move { r }
        }
    };
    let limits = Limits {
        connections: 2,
        read: Duration::from_millis(300),
        connection: Duration::from_secs(10),
    };
    let server = tokio::spawn(serve(listener, scrape, limits));

    let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    for h in [
        "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n",
        "Content-Length: 5\r\n",
        "Connection: close\r\n",
    ] {
        assert!(ok.contains(h), "{h:?} in {ok}");
    }
    assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
    let status = |text: &str| text.split(' ').nth(1).unwrap_or("").to_string();
    for (request, want) in [
        (&b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"[..], "200"),
        (b"GET /metrics HTTP/1.1\n\n", "200"),
        // The absolute form, which HTTP/1.1 servers must accept.
        (b"GET http://x/metrics HTTP/1.1\r\n\r\n", "200"),
        (b"GET / HTTP/1.1\r\n\r\n", "404"),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", "404"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", "405"),
        (b"BREW\r\n\r\n", "400"),
        (b"GET /metrics\r\n\r\n", "400"),
        (b"GET /metrics HTTP/2\r\n\r\n", "400"),
    ] {
        let got = exchange(addr, request).await;
        assert_eq!(status(&got), want, "{request:?}: {got}");
    }
    let got = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(got.contains("\r\nAllow: GET\r\n"), "{got}");

    // A head of exactly MAX_HEAD bytes is read; one byte more is 431.
    let head = |len: usize, end: &[u8]| {
        let mut h = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        h.resize(len - end.len(), b'a');
        h.extend_from_slice(end);
        h
    };
    let got = exchange(addr, &head(MAX_HEAD, b"\r\n\r\n")).await;
    assert_eq!(status(&got), "200", "{got}");
    let got = exchange(addr, &head(MAX_HEAD, b"")).await;
    assert_eq!(status(&got), "431", "{got}");

    // Scrapes that fail or time out.
    *result.lock().unwrap() = Err(Miss::Failed("no pool".into()));
    let got = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 500 "), "{got}");
    *result.lock().unwrap() = Err(Miss::TimedOut);
    let got = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
    assert!(got.ends_with("scrape timed out\n"), "{got}");
    *result.lock().unwrap() = Ok("up 1\n".into());

    // Slow clients hold the connections: the next is answered busy at
    // once; theirs close, unanswered, when the head's time is over.
    let t = std::time::Instant::now();
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(exchange(addr, b"GET /met")))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = exchange(addr, b"").await;
    assert_eq!(busy.as_bytes(), BUSY);
    assert!(busy.starts_with("HTTP/1.1 503 "), "{busy}");
    for s in slow {
        assert_eq!(s.await.unwrap(), "");
    }
    assert!(t.elapsed() >= limits.read, "{:?}", t.elapsed());
    // Their slots are free again (just after their sockets close).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        if status(&got) == "200" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.abort();
}
