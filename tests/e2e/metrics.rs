//! `tarpool run --metrics-addr`: the Prometheus endpoint of the running
//! service agrees with `status` and `audit`, answers nothing but
//! `GET /metrics`, and the service still stops cleanly on SIGTERM.

use crate::harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Sends `request` as is; the status code and the body.
fn http(addr: &str, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

/// The value of the sample named exactly `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_endpoint_agrees_with_status_and_audit() {
    let env = Env::new();
    let src = example_bucket();
    let mut child = env
        .cmd(&[
            "run",
            "--interval",
            "1",
            "--source",
            src.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--no-progress",
        ])
        .env("TARPOOL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log, drained on a thread; the bound address comes from it.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let addr = loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no `metrics: listening` line:\n{}", log.join("\n")));
        log.push(l.clone());
        if l.contains("metrics: listening") {
            let a = l.split("addr=").nth(1).unwrap().split_whitespace().next();
            break a.unwrap().trim_matches('"').to_string();
        }
    };

    // Every image ends ready while the service keeps running.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        let st = env.status();
        if IMAGES
            .iter()
            .all(|i| st.get(*i).is_some_and(|s| s.0 == "ready"))
        {
            break st;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the service stopped: {st:?}"
        );
        assert!(Instant::now() < deadline, "not all ready in time: {st:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let ready = status.values().filter(|s| s.0 == "ready").count() as f64;

    let (code, head, text) = http(&addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{head}\n{text}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    // Well-formed: every sample under its family's HELP and TYPE.
    let mut typed = Vec::new();
    for l in text.lines() {
        if let Some(r) = l.strip_prefix("# TYPE ") {
            typed.push(r.split(' ').next().unwrap().to_string());
        } else if !l.starts_with("# HELP ") {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(
                typed.iter().any(|t| name.starts_with(t.as_str())),
                "{l} has no TYPE"
            );
        }
    }
    assert_eq!(value(&text, "tarpool_up"), 1.0);
    assert_eq!(value(&text, r#"tarpool_images{state="ready"}"#), ready);
    assert_eq!(value(&text, r#"tarpool_images{state="running"}"#), 0.0);
    assert_eq!(value(&text, "tarpool_runs_active"), 0.0);
    assert_eq!(
        value(
            &text,
            r#"tarpool_transitions_total{transition="completed",outcome="ok"}"#
        ),
        ready
    );
    assert_eq!(
        value(
            &text,
            r#"tarpool_transition_duration_seconds_count{transition="completed",outcome="ok"}"#
        ),
        ready
    );
    assert_eq!(
        value(
            &text,
            r#"tarpool_transition_duration_seconds_bucket{transition="completed",outcome="ok",le="+Inf"}"#
        ),
        ready
    );
    // Downloaded: every object of every image, once (a fresh state).
    let rejected: Vec<String> = env.json(&["status", "--json"])["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    let bucket_bytes: u64 = files_under(&src.join("images"))
        .iter()
        .filter(|p| p.is_file())
        .filter(|p| {
            let key = p.strip_prefix(&src).unwrap().to_str().unwrap();
            !rejected.iter().any(|r| r == key)
        })
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(bucket_bytes > 0);
    assert_eq!(
        value(&text, "tarpool_downloaded_bytes_total{source=\"dir\"}"),
        bucket_bytes as f64
    );
    assert!(value(&text, "tarpool_written_bytes_total") > 0.0);
    assert!(value(&text, "tarpool_layer_entries_total") > 0.0);
    // Policy decisions: the counter agrees with the audits.
    let mut allowed = 0;
    for i in IMAGES {
        let audit = env.json(&["audit", i, "--json"]);
        allowed += audit["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["rule"] == "max-layers" && d["action"] == "allow")
            .count();
    }
    assert!(allowed > 0);
    assert_eq!(
        value(
            &text,
            r#"tarpool_policy_decisions_total{rule="max-layers",action="allow",verdict="allow"}"#
        ),
        allowed as f64
    );
    // The overlay backend has no pool.
    assert!(!text.contains("tarpool_pool_"), "{text}");

    // Scrapes at once share gathers (at most one in flight): all answered.
    let scrapes: Vec<_> = (0..6)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || http(&addr, b"GET /metrics HTTP/1.1\r\n\r\n"))
        })
        .collect();
    for s in scrapes {
        let (code, head, text) = s.join().unwrap();
        assert_eq!(code, 200, "{head}\n{text}");
        assert_eq!(value(&text, "tarpool_up"), 1.0);
    }

    // Nothing else is served.
    assert_eq!(http(&addr, b"GET / HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(&addr, b"GET /metrics/x HTTP/1.1\r\n\r\n").0, 404);
    let (code, head, _) = http(&addr, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET"), "{head}");
    assert_eq!(http(&addr, b"BREW\r\n\r\n").0, 400);
    // A head of 8 KiB with no end (exactly: more unread would reset the
    // connection before the answer is read).
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.resize(8 << 10, b'a');
    assert_eq!(http(&addr, &big).0, 431);
    // A client that sends half a head and goes away harms nothing.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /met").unwrap();
    drop(half);
    assert_eq!(http(&addr, b"GET /metrics HTTP/1.0\r\n\r\n").0, 200);

    // SIGTERM: the service stops cleanly.
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push(l);
    }
    assert_eq!(st.code(), Some(0), "log:\n{}", log.join("\n"));
}
