//! The metrics server: hyper's HTTP/1 server, bounded (connections, head
//! size, timeouts), and the single gather in flight that scrapes share.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{render, Snapshot, BUCKETS_MS};
use crate::backend::Snapshotter;
use crate::statedir::StateDir;
use crate::store::Store;

/// The most bytes of a request head (request line and headers, its blank
/// line included); hyper's smallest read buffer, too.
pub(super) const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more are answered 503 and closed.
pub(super) const MAX_CONNECTIONS: usize = 8;
/// The time to send a request head.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a connection lives: the head's time, the scrape's and 10 s
/// to take the response.
pub(super) const CONNECTION_TIMEOUT: Duration = READ_TIMEOUT
    .saturating_add(SCRAPE_TIMEOUT)
    .saturating_add(Duration::from_secs(10));

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
pub(super) type Shared = Arc<std::sync::Mutex<Arc<dyn Snapshotter>>>;

pub(super) struct Scraper {
    pool: Shared,
    reader: Store,
    /// The gather in flight, which scrapes share.
    flight: Arc<Flight>,
}

impl Scraper {
    /// Reads everything a scrape shows (blocking: SQLite and the pool).
    pub(super) fn gather(&self) -> anyhow::Result<String> {
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
    pub(super) async fn scrape(self: Arc<Self>) -> Result<Arc<str>, Miss> {
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
pub(super) type Gathered = Result<Arc<str>, Arc<str>>;

/// At most one gather at a time: the first scrape starts it on a thread of
/// its own; scrapes arriving meanwhile wait for its result instead of
/// starting another.
#[derive(Default)]
pub(super) struct Flight {
    /// The gather under way: its result appears here (`Some`) when it ends.
    current: std::sync::Mutex<Option<tokio::sync::watch::Receiver<Option<Gathered>>>>,
}

/// Why a scrape has no result.
#[derive(Debug, PartialEq)]
pub(super) enum Miss {
    /// The gather did not end within the scrape's time; it goes on, and
    /// the next scrapes wait for it.
    TimedOut,
    Failed(Arc<str>),
}

impl Flight {
    /// The result of the gather under way, or of `work` started now when
    /// none is; waits at most `timeout`.
    pub(super) async fn join(
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
pub(super) struct Done<'a>(&'a Flight);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        *self.0.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// At most one WARN per [`WARN_EVERY_MS`] for failed requests: a client
/// that aborts connections (a scanner, a flapping scraper) must not flood
/// the log. The rest go to DEBUG and are counted into the next WARN.
pub(super) const WARN_EVERY_MS: u64 = 60_000;

#[derive(Default)]
pub(super) struct WarnLimit {
    /// When the last WARN was let through (ms since the server started,
    /// plus one: 0 means never).
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl WarnLimit {
    /// Whether an event at `now_ms` may WARN; if so, how many were held
    /// back since the last one.
    pub(super) fn admit(&self, now_ms: u64) -> Option<u64> {
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
pub(super) struct Limits {
    /// Connections served at once; more are answered [`BUSY`] and closed.
    pub(super) connections: usize,
    /// The time a client has to send its request head.
    pub(super) read: Duration,
    /// The most a connection lives: its head, its scrape and its response.
    pub(super) connection: Duration,
}

pub(super) const LIMITS: Limits = Limits {
    connections: MAX_CONNECTIONS,
    read: READ_TIMEOUT,
    connection: CONNECTION_TIMEOUT,
};

/// The answer when every connection slot is taken: written at once,
/// without reading the request (never queued), and the connection closed.
pub(super) const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    Content-Type: text/plain; charset=utf-8\r\n\
    Content-Length: 5\r\n\
    Connection: close\r\n\r\n\
    busy\n";

/// Serves HTTP/1 with hyper: one request per connection, its head capped
/// at [`MAX_HEAD`] (431 beyond) and read under `limits.read`, at most
/// `limits.connections` connections at once. `GET /metrics` answers what
/// `scrape` gives.
pub(super) async fn serve<F, Fut>(listener: tokio::net::TcpListener, scrape: F, limits: Limits)
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
pub(super) enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
}

/// What a request asks for (`path` without its query).
pub(super) fn route(method: &hyper::Method, path: &str) -> Route {
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
pub(super) async fn respond<Fut>(
    route: Route,
    scrape: impl FnOnce() -> Fut,
) -> hyper::Response<String>
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
pub(super) fn response(status: hyper::StatusCode, body: String) -> hyper::Response<String> {
    let mut r = hyper::Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
