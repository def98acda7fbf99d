//! `GET /metrics`: the service's counters in the Prometheus text exposition
//! format 0.0.4, served while `tarpool run` runs (`--metrics-addr`).
//!
//! Every value is derived at scrape time from SQLite (the transitions,
//! decisions, images, runs and layers tables) and from the backend's pool
//! status, so the counters survive restarts and cost nothing between
//! scrapes. [`render`] is pure; the server is hyper's HTTP/1 server,
//! bounded: one request per connection, a capped request head read under a
//! timeout, a bounded number of connections, a bounded life for each,
//! errors logged and never fatal to the service.
//!
//! At most one gather (the blocking reads of SQLite and the pool) runs at a
//! time, on a thread of its own outside the runtime: a scrape arriving while
//! one runs waits for that gather's result, and answers 503 when it does not
//! come within [`SCRAPE_TIMEOUT`]. So a pool status that never returns (a
//! suspended device) holds one thread, not one per scrape, and the
//! service's stop never waits for it (the runtime does not own the thread).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::backend::{PoolUsage, Snapshotter};
use crate::statedir::StateDir;
use crate::store::Store;

/// Upper bounds (milliseconds) of the transition duration histogram's
/// buckets; `+Inf` follows.
pub const BUCKETS_MS: [u64; 12] = [
    10, 50, 100, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000,
];

/// The most bytes of a request head (request line and headers, its blank
/// line included); hyper's smallest read buffer, too.
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 8;
/// The time to send a request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a connection lives: the head's time, the scrape's and 10 s
/// to take the response.
const CONNECTION_TIMEOUT: Duration = READ_TIMEOUT
    .saturating_add(SCRAPE_TIMEOUT)
    .saturating_add(Duration::from_secs(10));

/// What a scrape shows: the store's counts, the pool's usage (when the
/// backend has a pool) and the build.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub counts: Counts,
    pub pool: Option<PoolUsage>,
}

pub use crate::store::counts::{Counts, DecisionCount, TransitionCount, INTERRUPTED};

/// The image states always exported (0 when no image is in them).
const IMAGE_STATES: [&str; 4] = ["ready", "failed", "running", "pending"];

/// The exposition text of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::new());
    o.family("tarpool_up", "gauge", "1 while the service runs.");
    o.sample("tarpool_up", &[], "1");
    o.family(
        "tarpool_build_info",
        "gauge",
        "The running build; the value is always 1.",
    );
    o.sample("tarpool_build_info", &[("version", &s.version)], "1");

    let c = &s.counts;
    o.family(
        "tarpool_transitions_total",
        "counter",
        "Finished transition executions, by transition and outcome (ok, retry, failed, cancelled, interrupted: under way when the service stopped).",
    );
    for t in &c.transitions {
        let l = [
            ("transition", t.transition.as_str()),
            ("outcome", t.outcome.as_str()),
        ];
        o.sample("tarpool_transitions_total", &l, &t.count.to_string());
    }
    let h = "tarpool_transition_duration_seconds";
    o.family(
        h,
        "histogram",
        "Wall time of finished transition executions, by transition and outcome (interrupted ones left out).",
    );
    for t in c.transitions.iter().filter(|t| t.outcome != INTERRUPTED) {
        let bucket = format!("{h}_bucket");
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            let le = seconds(*le);
            let n = t.buckets.get(i).copied().unwrap_or(t.count);
            let l = [
                ("transition", t.transition.as_str()),
                ("outcome", t.outcome.as_str()),
                ("le", le.as_str()),
            ];
            o.sample(&bucket, &l, &n.to_string());
        }
        let l = [
            ("transition", t.transition.as_str()),
            ("outcome", t.outcome.as_str()),
        ];
        let inf = [l[0], l[1], ("le", "+Inf")];
        o.sample(&bucket, &inf, &t.count.to_string());
        o.sample(&format!("{h}_sum"), &l, &seconds(t.sum_ms));
        o.sample(&format!("{h}_count"), &l, &t.count.to_string());
    }

    for (name, help, v) in [
        (
            "tarpool_downloaded_bytes_total",
            "Bytes of objects fetched from the source by completed download transitions.",
            c.downloaded_bytes,
        ),
        (
            "tarpool_written_bytes_total",
            "Content bytes of the committed layers (drops only when `tarpool gc` removes layers, between runs).",
            c.written_bytes,
        ),
        (
            "tarpool_layer_entries_total",
            "Entries (files, directories, links...) of the committed layers.",
            c.layer_entries,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[], &v.to_string());
    }
    o.family("tarpool_layers", "gauge", "Committed layers.");
    o.sample("tarpool_layers", &[], &c.layers.to_string());

    o.family(
        "tarpool_policy_decisions_total",
        "counter",
        "Recorded policy decisions, by rule, action (allow, reject, skip, strip, clamp, note) and verdict (allow, deny).",
    );
    for d in &c.decisions {
        let l = [
            ("rule", d.rule.as_str()),
            ("action", d.action.as_str()),
            ("verdict", d.verdict.as_str()),
        ];
        o.sample("tarpool_policy_decisions_total", &l, &d.count.to_string());
    }

    o.family(
        "tarpool_images",
        "gauge",
        "Tracked images by the state `tarpool status` shows.",
    );
    let count = |state: &str| {
        c.images
            .iter()
            .filter(|(s, _)| s == state)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    for state in IMAGE_STATES {
        o.sample(
            "tarpool_images",
            &[("state", state)],
            &count(state).to_string(),
        );
    }
    for (state, n) in &c.images {
        if !IMAGE_STATES.contains(&state.as_str()) {
            o.sample("tarpool_images", &[("state", state)], &n.to_string());
        }
    }
    o.family("tarpool_runs_active", "gauge", "Runs not yet ended.");
    o.sample("tarpool_runs_active", &[], &c.runs_active.to_string());

    if let Some(p) = &s.pool {
        for (name, help, v) in [
            (
                "tarpool_pool_data_used_bytes",
                "Thin pool data space in use.",
                p.data_used_bytes,
            ),
            (
                "tarpool_pool_data_total_bytes",
                "Thin pool data space.",
                p.data_total_bytes,
            ),
            (
                "tarpool_pool_metadata_used_bytes",
                "Thin pool metadata space in use.",
                p.meta_used_bytes,
            ),
            (
                "tarpool_pool_metadata_total_bytes",
                "Thin pool metadata space.",
                p.meta_total_bytes,
            ),
        ] {
            o.family(name, "gauge", help);
            o.sample(name, &[], &v.to_string());
        }
    }
    o.0
}

/// Milliseconds as a decimal number of seconds (`1500` -> `1.5`).
fn seconds(ms: u64) -> String {
    (ms as f64 / 1000.0).to_string()
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the text format wants it: `\`, `"` and newline escaped.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

// ---- the server ----

/// The running metrics server; stops when dropped.
pub struct Server {
    pool: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Reads the pool through `backend` from now on (after a reload).
    pub fn follow(&self, backend: Arc<dyn Snapshotter>) {
        *self.pool.lock().unwrap_or_else(|p| p.into_inner()) = backend;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `GET /metrics` on `listener` (bound by the caller, so a bad
/// address or a port in use is a startup error). Call from the runtime.
/// It reads only the state database (its own read-only connection) and the
/// pool's usage through `backend`.
pub fn spawn(
    listener: tokio::net::TcpListener,
    state_dir: &StateDir,
    backend: Arc<dyn Snapshotter>,
) -> anyhow::Result<Server> {
    // Its own read-only connection: a scrape never waits on the engine's,
    // and WAL lets it read while the engine writes.
    let reader =
        Store::open_read_only(&state_dir.db()).context("opening the state database for metrics")?;
    let pool: Shared = Arc::new(std::sync::Mutex::new(backend));
    let scraper = Arc::new(Scraper {
        pool: pool.clone(),
        reader,
        flight: Arc::new(Flight::default()),
    });
    let scrape = move || scraper.clone().scrape();
    Ok(Server {
        pool,
        task: tokio::spawn(serve(listener, scrape, LIMITS)),
    })
}

/// The backend whose pool a scrape reads, replaced on a reload.
type Shared = Arc<std::sync::Mutex<Arc<dyn Snapshotter>>>;

struct Scraper {
    pool: Shared,
    reader: Store,
    /// The gather in flight, which scrapes share.
    flight: Arc<Flight>,
}

impl Scraper {
    /// Reads everything a scrape shows (blocking: SQLite and the pool).
    fn gather(&self) -> anyhow::Result<String> {
        let counts = self.reader.metrics_counts(&BUCKETS_MS)?;
        let backend = self.pool.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let pool = backend.usage().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "metrics: reading the pool's usage");
            None
        });
        Ok(render(&Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            counts,
            pool,
        }))
    }

    /// A scrape's result: the gather's under way, or a new one's.
    async fn scrape(self: Arc<Self>) -> Result<Arc<str>, Miss> {
        let g = self.clone();
        let work = move || {
            g.gather()
                .map(Arc::from)
                .map_err(|e| format!("{e:#}").into())
        };
        self.flight.join(SCRAPE_TIMEOUT, work).await
    }
}

/// What a gather gives: the exposition text, or why there is none.
type Gathered = Result<Arc<str>, Arc<str>>;

/// At most one gather at a time: the first scrape starts it on a thread of
/// its own; scrapes arriving meanwhile wait for its result instead of
/// starting another.
#[derive(Default)]
struct Flight {
    /// The gather under way: its result appears here (`Some`) when it ends.
    current: std::sync::Mutex<Option<tokio::sync::watch::Receiver<Option<Gathered>>>>,
}

/// Why a scrape has no result.
#[derive(Debug, PartialEq)]
enum Miss {
    /// The gather did not end within the scrape's time; it goes on, and
    /// the next scrapes wait for it.
    TimedOut,
    Failed(Arc<str>),
}

impl Flight {
    /// The result of the gather under way, or of `work` started now when
    /// none is; waits at most `timeout`.
    async fn join(
        self: &Arc<Self>,
        timeout: Duration,
        work: impl FnOnce() -> Gathered + Send + 'static,
    ) -> Result<Arc<str>, Miss> {
        let mut rx = {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            match &*current {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    let flight = self.clone();
                    // A plain thread, not `spawn_blocking`: dropping the
                    // runtime never waits for it.
                    std::thread::Builder::new()
                        .name("tarpool-metrics".into())
                        .spawn(move || {
                            // Ends the flight after the result is sent, or
                            // when `work` panics (`tx` then goes unsent and
                            // the waiters fail).
                            let _done = Done(&flight);
                            tx.send_replace(Some(work()));
                        })
                        .map_err(|e| Miss::Failed(format!("starting a gather: {e}").into()))?;
                    *current = Some(rx.clone());
                    rx
                }
            }
        };
        let got = match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Err(_) => Err(Miss::TimedOut),
            Ok(Err(_)) => Err(Miss::Failed("the gather panicked".into())),
            Ok(Ok(r)) => match &*r {
                Some(Ok(body)) => Ok(body.clone()),
                Some(Err(e)) => Err(Miss::Failed(e.clone())),
                None => unreachable!("waited for Some"),
            },
        };
        got
    }
}

/// Ends the flight when dropped (by the gather's thread).
struct Done<'a>(&'a Flight);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        *self.0.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// At most one WARN per [`WARN_EVERY_MS`] for failed requests: a client
/// that aborts connections (a scanner, a flapping scraper) must not flood
/// the log. The rest go to DEBUG and are counted into the next WARN.
const WARN_EVERY_MS: u64 = 60_000;

#[derive(Default)]
struct WarnLimit {
    /// When the last WARN was let through (ms since the server started,
    /// plus one: 0 means never).
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl WarnLimit {
    /// Whether an event at `now_ms` may WARN; if so, how many were held
    /// back since the last one.
    fn admit(&self, now_ms: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::SeqCst;
        let last = self.last.load(SeqCst);
        if (last == 0 || now_ms + 1 >= last + WARN_EVERY_MS)
            && self
                .last
                .compare_exchange(last, now_ms + 1, SeqCst, SeqCst)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, SeqCst));
        }
        self.suppressed.fetch_add(1, SeqCst);
        None
    }
}

/// How the server bounds its clients.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections served at once; more are answered [`BUSY`] and closed.
    connections: usize,
    /// The time a client has to send its request head.
    read: Duration,
    /// The most a connection lives: its head, its scrape and its response.
    connection: Duration,
}

const LIMITS: Limits = Limits {
    connections: MAX_CONNECTIONS,
    read: READ_TIMEOUT,
    connection: CONNECTION_TIMEOUT,
};

/// The answer when every connection slot is taken: written at once,
/// without reading the request (never queued), and the connection closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    Content-Type: text/plain; charset=utf-8\r\n\
    Content-Length: 5\r\n\
    Connection: close\r\n\r\n\
    busy\n";

/// Serves HTTP/1 with hyper: one request per connection, its head capped
/// at [`MAX_HEAD`] (431 beyond) and read under `limits.read`, at most
/// `limits.connections` connections at once. `GET /metrics` answers what
/// `scrape` gives.
async fn serve<F, Fut>(listener: tokio::net::TcpListener, scrape: F, limits: Limits)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Arc<str>, Miss>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let limit = Arc::new(WarnLimit::default());
    let started = std::time::Instant::now();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.read)
        // The head (request line and headers) and the read buffer: hyper
        // answers 431 once MAX_HEAD bytes have come without the head's end.
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        // `Content-Type`, not `content-type`: as the server always wrote.
        .title_case_headers(true);
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, keep serving.
                tracing::warn!(error = %e, "metrics: accepting a connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // A best effort.
            let _ = sock.try_write(BUSY);
            continue;
        };
        let scrape = scrape.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let route = route(req.method(), req.uri().path());
            let scrape = scrape.clone();
            async move { Ok::<_, std::convert::Infallible>(respond(route, scrape).await) }
        });
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(sock), service);
        let limit = limit.clone();
        tokio::spawn(async move {
            // Held until the connection ends, the scrape's wait included.
            let _slot = slot;
            let e = match tokio::time::timeout(limits.connection, conn).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{:#}", anyhow::Error::from(e)),
                Err(_) => format!("connection not done within {:?}", limits.connection),
            };
            match limit.admit(started.elapsed().as_millis() as u64) {
                Some(held) => tracing::warn!(
                    peer = %peer,
                    error = %e,
                    earlier_failures_not_logged = held,
                    "metrics: request failed (at most one such warning a minute)"
                ),
                None => tracing::debug!(peer = %peer, error = %e, "metrics: request"),
            }
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
}

/// What a request asks for (`path` without its query).
fn route(method: &hyper::Method, path: &str) -> Route {
    if method != hyper::Method::GET {
        Route::MethodNotAllowed
    } else if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// The response to a request routed to `route`; `scrape` is called for
/// `GET /metrics` only.
async fn respond<Fut>(route: Route, scrape: impl FnOnce() -> Fut) -> hyper::Response<String>
where
    Fut: std::future::Future<Output = Result<Arc<str>, Miss>>,
{
    use hyper::StatusCode;
    match route {
        Route::Metrics => match scrape().await {
            Ok(body) => {
                let mut r = response(StatusCode::OK, body.to_string());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                );
                r
            }
            Err(Miss::Failed(e)) => {
                tracing::error!(error = %e, "metrics: scrape failed");
                response(StatusCode::INTERNAL_SERVER_ERROR, "scrape failed\n".into())
            }
            Err(Miss::TimedOut) => {
                tracing::error!(
                    timeout = ?SCRAPE_TIMEOUT,
                    "metrics: scrape took too long; its gather goes on and the next scrapes wait for it"
                );
                response(StatusCode::SERVICE_UNAVAILABLE, "scrape timed out\n".into())
            }
        },
        Route::NotFound => response(StatusCode::NOT_FOUND, "not found; try /metrics\n".into()),
        Route::MethodNotAllowed => {
            let mut r = response(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
            r.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET"),
            );
            r
        }
    }
}

/// A plain-text response; hyper adds `Content-Length` (and `Connection:
/// close`, keep-alive being off).
fn response(status: hyper::StatusCode, body: String) -> hyper::Response<String> {
    let mut r = hyper::Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

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
            downloaded_bytes: 1 << 20,
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
            # HELP tarpool_downloaded_bytes_total Bytes of objects fetched from the source by completed download transitions.
            # TYPE tarpool_downloaded_bytes_total counter
            tarpool_downloaded_bytes_total 1048576
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
        // classify; one with a run and no transition yet.
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
        assert_eq!(c.transitions.len(), 1, "running executions are not counted");
        let t = &c.transitions[0];
        assert_eq!(
            (t.transition.as_str(), t.outcome.as_str(), t.count),
            ("download", "ok", 1)
        );
        assert_eq!(t.buckets.len(), BUCKETS_MS.len());
        assert_eq!(*t.buckets.last().unwrap(), 1);
        assert_eq!(c.downloaded_bytes, 5);
        let dec: Vec<_> = c
            .decisions
            .iter()
            .map(|d| (d.action.as_str(), d.verdict.as_str(), d.count))
            .collect();
        assert_eq!(dec, [("allow", "allow", 2), ("reject", "deny", 1)]);
        assert_eq!(c.images, [("pending".into(), 1), ("running".into(), 1)]);
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
}
