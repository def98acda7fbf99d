//! The S3 source: `s3://BUCKET[/PREFIX][?OPTIONS]`.
//!
//! The client is `aws-sdk-s3` with `aws-config`'s standard credential chain
//! and region resolution; an endpoint override (`AWS_ENDPOINT_URL`, the
//! config file's `endpoint_url`) switches to path-style addressing. Options:
//! `no-sign-request` (anonymous, for public buckets), `part-size=BYTES`
//! (ranged GETs, default 16 MiB), `concurrency=N` (parts in flight per object,
//! default 8), `read-timeout-ms=MS` (a body that sends nothing for that long is
//! retried, default 30000).
//!
//! Keys are listed with ListObjectsV2 (URL-encoded, every page) and handed to
//! `core::names`, which decides what an image is; a key never becomes a local
//! path. A download writes the object's parts (each a GET conditional on the
//! listed ETag) into a partial file under `downloads/`, fsyncs each finished
//! part and records it, so an interrupted download resumes with the parts
//! already on disk; the whole file is then hashed, checked against the
//! listed size and renamed into the content-addressed store.
//!
//! The `Source` trait is synchronous and is called both from plain threads
//! and from inside the service's tokio runtime, so the source keeps its own
//! runtime and waits for its tasks over a channel (never `block_on`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::EncodingType;
use aws_sdk_s3::Client;
use sha2::{Digest as _, Sha256};

use crate::blobs::{free_bytes, BlobStore};
use crate::core::names::{printable, Listed, Rejected, UnitObject, IMAGES_PREFIX};
use crate::source::{Listing, Source, SourceError};

const MAX_OBJECTS: usize = 1_000_000;
const DEFAULT_PART_SIZE: u64 = 16 << 20;
const MIN_PART_SIZE: u64 = 64 << 10;
const DEFAULT_CONCURRENCY: usize = 8;
const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
/// Attempts per part for failures the SDK does not retry itself (a body cut
/// short, reset or stalled); the engine retries the whole step after that.
const PART_ATTEMPTS: u32 = 4;
/// Room kept free on the state directory's filesystem besides the object.
const DISK_MARGIN: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub bucket: String,
    /// Empty or ending with `/`.
    pub prefix: String,
    pub anonymous: bool,
    pub part_size: u64,
    pub concurrency: usize,
    pub read_timeout: Duration,
}

/// Parses `s3://BUCKET[/PREFIX][?OPTIONS]`.
pub fn parse_spec(spec: &str) -> Result<Spec, String> {
    let rest = spec
        .strip_prefix("s3://")
        .ok_or_else(|| "an S3 source is s3://BUCKET[/PREFIX]".to_string())?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if !(3..=63).contains(&bucket.len())
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "invalid S3 bucket name `{}` in the source",
            printable(bucket)
        ));
    }
    if prefix.chars().any(|c| c.is_control()) || prefix.len() > 512 {
        return Err("invalid S3 prefix in the source".into());
    }
    let mut prefix = prefix.to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let mut s = Spec {
        bucket: bucket.to_string(),
        prefix,
        anonymous: false,
        part_size: DEFAULT_PART_SIZE,
        concurrency: DEFAULT_CONCURRENCY,
        read_timeout: Duration::from_millis(DEFAULT_READ_TIMEOUT_MS),
    };
    for opt in query.split('&').filter(|o| !o.is_empty()) {
        let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
        let num = |min: u64, max: u64| -> Result<u64, String> {
            v.parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("S3 source option `{k}` wants a number in {min}..={max}"))
        };
        match k {
            "no-sign-request" | "anonymous" => {
                s.anonymous = matches!(v, "" | "true" | "1" | "yes")
            }
            "part-size" => s.part_size = num(MIN_PART_SIZE, 5 << 30)?,
            "concurrency" => s.concurrency = num(1, 64)? as usize,
            "read-timeout-ms" => s.read_timeout = Duration::from_millis(num(100, 3_600_000)?),
            _ => {
                return Err(format!(
                    "unknown S3 source option `{}` (known: no-sign-request, part-size, concurrency, read-timeout-ms)",
                    printable(k)
                ))
            }
        }
    }
    Ok(s)
}

/// How a request failed, for the retry decision.
#[derive(Debug)]
enum Fail {
    NotFound,
    Denied(String),
    /// The object is not the listed one any more (ETag precondition failed).
    Changed,
    Retry(String),
}

fn one_line(s: &str) -> String {
    printable(&s.replace(['\n', '\r'], " "))
}

fn classify<E>(e: SdkError<E>) -> Fail
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .map(str::to_string);
    let code_s = code.clone().unwrap_or_default();
    match status {
        Some(404) => Fail::NotFound,
        Some(412) => Fail::Changed,
        Some(408 | 429) => Fail::Retry(format!("HTTP {} {code_s}", status.unwrap())),
        Some(s @ 400..=499) => Fail::Denied(format!("HTTP {s} {code_s}").trim().to_string()),
        Some(s) if s >= 500 => Fail::Retry(format!("HTTP {s} {code_s}").trim().to_string()),
        _ => match code.as_deref() {
            Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                Fail::Denied(code_s)
            }
            _ => Fail::Retry(one_line(&DisplayErrorContext(&e).to_string())),
        },
    }
}

struct Inner {
    client: Client,
    spec: Spec,
    uri: String,
}

pub struct S3Source {
    inner: Arc<Inner>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for S3Source {
    fn drop(&mut self) {
        // Never blocks, so it is allowed inside another runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn io_err(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Io(format!("{what}: {}", one_line(&e.to_string())))
}

/// Runs `f` on `rt` and waits for it on this thread. Works from a plain
/// thread, a `spawn_blocking` thread, and (blocking it) a runtime thread.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> Result<T, SourceError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| SourceError::Io("the S3 client task stopped".into()))
}

impl S3Source {
    pub fn new(spec_text: &str) -> Result<S3Source, SourceError> {
        let spec = parse_spec(spec_text).map_err(SourceError::Config)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.concurrency.clamp(2, 8))
            .thread_name("tarpool-s3")
            .enable_all()
            .build()
            .map_err(|e| SourceError::Config(format!("starting the S3 client: {e}")))?;
        let anonymous = spec.anonymous;
        let (client, endpoint) = run_on(&rt, async move {
            use aws_smithy_http_client::tls;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https();
            let mut loader =
                aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
            if anonymous {
                loader = loader.no_credentials();
            }
            let conf = loader.load().await;
            let endpoint = conf.endpoint_url().map(str::to_string);
            let mut b = aws_sdk_s3::config::Builder::from(&conf)
                .retry_config(
                    aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(5),
                )
                .timeout_config(
                    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .build(),
                );
            // Checksums are asked for (and then checked) on whole-object
            // GETs only: a part of an object has no checksum of its own.
            b = b.response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
            if endpoint.is_some() {
                b = b.force_path_style(true);
            }
            if conf.region().is_none() {
                b = b.region(aws_sdk_s3::config::Region::new("us-east-1"));
            }
            (Client::from_conf(b.build()), endpoint)
        })?;
        let mut uri = format!("s3://{}/{}", spec.bucket, spec.prefix);
        if let Some(e) = endpoint {
            uri.push_str(&format!("?endpoint={e}"));
        }
        Ok(S3Source {
            inner: Arc::new(Inner { client, spec, uri }),
            rt: Some(rt),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the S3 runtime lives as long as the source")
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.spec.prefix)
    }

    /// `s3://bucket/key`, for messages.
    fn show(&self, key: &str) -> String {
        printable(&format!(
            "s3://{}/{}",
            self.inner.spec.bucket,
            self.full_key(key)
        ))
    }

    fn map_fail(&self, what: &str, key: &str, f: Fail) -> SourceError {
        match f {
            Fail::NotFound => SourceError::NotFound(key.to_string()),
            Fail::Denied(m) => {
                SourceError::Denied(format!("S3 refused {what} `{}`: {m}", self.show(key)))
            }
            Fail::Changed => SourceError::Changed(format!(
                "`{}` changed during the download; starting over",
                printable(key)
            )),
            Fail::Retry(m) => SourceError::Io(format!("{what} `{}`: {m}", printable(key))),
        }
    }

    fn head(&self, key: &str) -> Result<Listed, SourceError> {
        let inner = self.inner.clone();
        let full = self.full_key(key);
        let r = run_on(self.rt(), async move {
            inner
                .client
                .head_object()
                .bucket(&inner.spec.bucket)
                .key(full)
                .send()
                .await
        })?;
        let out = r.map_err(|e| self.map_fail("HEAD", key, classify(e)))?;
        Ok(Listed {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            stamp: out.e_tag().unwrap_or_default().to_string(),
            modified: out
                .last_modified()
                .map(|t| t.to_string())
                .unwrap_or_default(),
        })
    }
}

/// Decodes `%XX` escapes (ListObjectsV2 with `encoding-type=url`).
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else if b[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

impl Source for S3Source {
    fn uri(&self) -> String {
        self.inner.uri.clone()
    }

    fn list(&self) -> Result<Listing, SourceError> {
        let mut objects = Vec::new();
        let mut rejected = Vec::new();
        let mut token: Option<String> = None;
        let list_prefix = format!("{}{IMAGES_PREFIX}", self.inner.spec.prefix);
        loop {
            let inner = self.inner.clone();
            let (p, t) = (list_prefix.clone(), token.take());
            let page = run_on(self.rt(), async move {
                inner
                    .client
                    .list_objects_v2()
                    .bucket(&inner.spec.bucket)
                    .prefix(p)
                    .encoding_type(EncodingType::Url)
                    .set_continuation_token(t)
                    .send()
                    .await
            })?
            .map_err(|e| match classify(e) {
                Fail::NotFound => SourceError::Denied(format!(
                    "S3 bucket `{}` does not exist",
                    printable(&self.inner.spec.bucket)
                )),
                Fail::Denied(m) => SourceError::Denied(format!(
                    "S3 refused listing `s3://{}/{}`: {m}",
                    printable(&self.inner.spec.bucket),
                    printable(&list_prefix)
                )),
                Fail::Changed => SourceError::Io("listing: precondition failed".into()),
                Fail::Retry(m) => SourceError::Io(format!("listing the bucket: {m}")),
            })?;
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            for o in page.contents() {
                let Some(raw) = o.key() else { continue };
                let key = if encoded {
                    match percent_decode(raw).map(String::from_utf8) {
                        Some(Ok(k)) => k,
                        _ => {
                            rejected.push(Rejected {
                                key: printable(raw),
                                reason: "key is not UTF-8".into(),
                            });
                            continue;
                        }
                    }
                } else {
                    raw.to_string()
                };
                let Some(rel) = key.strip_prefix(&self.inner.spec.prefix) else {
                    continue;
                };
                objects.push(Listed {
                    key: rel.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    stamp: o.e_tag().unwrap_or_default().to_string(),
                    modified: o.last_modified().map(|t| t.to_string()).unwrap_or_default(),
                });
                if objects.len() > MAX_OBJECTS {
                    return Err(SourceError::Io(format!(
                        "more than {MAX_OBJECTS} objects under images/"
                    )));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) && !t.is_empty() => {
                    token = Some(t.to_string())
                }
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing { objects, rejected })
    }

    fn open(&self, key: &str) -> Result<(Box<dyn Read + Send>, Listed), SourceError> {
        let l = self.head(key)?;
        let reader = LazyBody {
            inner: self.inner.clone(),
            handle: self.rt().handle().clone(),
            key: key.to_string(),
            etag: l.stamp.clone(),
            body: None,
            chunk: Vec::new(),
            pos: 0,
        };
        Ok((Box::new(reader), l))
    }

    fn fetch(&self, obj: &UnitObject, blobs: &BlobStore) -> Result<(String, u64), SourceError> {
        self.download(obj, blobs)
    }
}

/// The body of a GET, started on the first read (so `open` alone is a HEAD).
struct LazyBody {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    key: String,
    etag: String,
    body: Option<ByteStream>,
    chunk: Vec<u8>,
    pos: usize,
}

impl LazyBody {
    fn wait<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| io::Error::other("the S3 client task stopped"))
    }
}

impl Read for LazyBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.pos);
                buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let mut body = match self.body.take() {
                Some(b) => b,
                None => {
                    let inner = self.inner.clone();
                    let key = format!("{}{}", inner.spec.prefix, self.key);
                    let etag = (!self.etag.is_empty()).then(|| self.etag.clone());
                    let r = self.wait(async move {
                        inner
                            .client
                            .get_object()
                            .bucket(&inner.spec.bucket)
                            .key(key)
                            .set_if_match(etag)
                            .send()
                            .await
                    })?;
                    r.map_err(|e| io::Error::other(format!("GET: {:?}", classify(e))))?
                        .body
                }
            };
            let timeout = self.inner.spec.read_timeout;
            let (next, body) = self.wait(async move {
                let n = tokio::time::timeout(timeout, body.next()).await;
                (n, body)
            })?;
            self.body = Some(body);
            match next {
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "S3 body stalled")),
                Ok(None) => return Ok(0),
                Ok(Some(Err(e))) => return Err(io::Error::other(one_line(&e.to_string()))),
                Ok(Some(Ok(b))) => {
                    self.chunk = b.to_vec();
                    self.pos = 0;
                }
            }
        }
    }
}

/// Where partial downloads live (the state directory's).
fn downloads_dir(blobs: &BlobStore) -> PathBuf {
    blobs.downloads_dir().to_path_buf()
}

/// The progress file: a header naming the object version and the part size,
/// then one line per part whose bytes are synced in the partial file.
fn read_progress(path: &Path, header: &str) -> Vec<u64> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Vec::new();
    }
    // A torn last line (no newline) is not trusted.
    let complete = if text.ends_with('\n') {
        text.as_str()
    } else {
        &text[..text.rfind('\n').unwrap_or(0)]
    };
    complete
        .lines()
        .skip(1)
        .filter_map(|l| l.parse().ok())
        .collect()
}

struct Job {
    inner: Arc<Inner>,
    full_key: String,
    key: String,
    etag: Option<String>,
    size: u64,
    part_size: u64,
    parts: u64,
    file: File,
    progress: Mutex<File>,
    queue: Mutex<VecDeque<u64>>,
    abort: AtomicBool,
    fetched: AtomicU64,
}

impl Job {
    fn range(&self, part: u64) -> (u64, u64) {
        let start = part * self.part_size;
        (start, (start + self.part_size).min(self.size))
    }

    /// One attempt at one part: writes it at its offset and syncs it.
    async fn get_part(&self, part: u64) -> Result<(), Fail> {
        let (start, end) = self.range(part);
        let mut req = self
            .inner
            .client
            .get_object()
            .bucket(&self.inner.spec.bucket)
            .key(&self.full_key)
            .set_if_match(self.etag.clone());
        if self.parts > 1 {
            req = req.range(format!("bytes={start}-{}", end - 1));
        } else {
            req = req.checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled);
        }
        let out = req.send().await.map_err(classify)?;
        if let (Some(want), Some(got)) = (&self.etag, out.e_tag()) {
            if want != got {
                return Err(Fail::Changed);
            }
        }
        let len = end - start;
        if let Some(cl) = out.content_length() {
            if cl as u64 != len {
                return Err(Fail::Retry(format!(
                    "the server sent {cl} bytes for a part of {len}"
                )));
            }
        }
        let mut body = out.body;
        let mut off = start;
        loop {
            if self.abort.load(Ordering::Relaxed) {
                return Err(Fail::Retry("aborted".into()));
            }
            let next = tokio::time::timeout(self.inner.spec.read_timeout, body.next())
                .await
                .map_err(|_| {
                    Fail::Retry(format!(
                        "no data for {} ms",
                        self.inner.spec.read_timeout.as_millis()
                    ))
                })?;
            match next {
                None => break,
                Some(Err(e)) => return Err(Fail::Retry(one_line(&e.to_string()))),
                Some(Ok(b)) => {
                    if off + b.len() as u64 > end {
                        return Err(Fail::Retry("the server sent more bytes than asked".into()));
                    }
                    self.file
                        .write_all_at(&b, off)
                        .map_err(|e| Fail::Retry(format!("writing the download: {e}")))?;
                    off += b.len() as u64;
                    self.fetched.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            }
        }
        if off != end {
            return Err(Fail::Retry(format!(
                "body cut short: {} of {len} bytes",
                off - start
            )));
        }
        self.file
            .sync_data()
            .map_err(|e| Fail::Retry(format!("syncing the download: {e}")))?;
        let mut p = self.progress.lock().unwrap();
        p.write_all(format!("{part}\n").as_bytes())
            .map_err(|e| Fail::Retry(format!("recording progress: {e}")))?;
        Ok(())
    }

    async fn worker(self: Arc<Self>) -> Result<(), Fail> {
        loop {
            if self.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(part) = self.queue.lock().unwrap().pop_front() else {
                return Ok(());
            };
            let mut attempt = 0;
            loop {
                match self.get_part(part).await {
                    Ok(()) => break,
                    Err(Fail::Retry(_)) if attempt + 1 < PART_ATTEMPTS => {
                        if self.abort.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                    }
                    Err(e) => {
                        self.abort.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        }
    }
}

impl S3Source {
    fn download(&self, obj: &UnitObject, blobs: &BlobStore) -> Result<(String, u64), SourceError> {
        let dir = downloads_dir(blobs);
        fs::create_dir_all(&dir).map_err(|e| io_err("creating the download directory", e))?;
        let id = hex::encode(Sha256::digest(
            format!("{}\0{}", self.inner.uri, obj.key).as_bytes(),
        ));
        let part_path = dir.join(format!("{id}.part"));
        let progress_path = dir.join(format!("{id}.progress"));
        let part_size = self.inner.spec.part_size;
        let header = format!("v1 {} {} {part_size}", obj.size, obj.stamp);
        let mut done = read_progress(&progress_path, &header);
        let parts = obj.size.div_ceil(part_size).max(1);
        done.retain(|&p| p < parts);
        done.sort_unstable();
        done.dedup();
        let have = fs::metadata(&part_path).map(|m| m.len()).ok();
        if have != Some(obj.size) {
            done.clear();
        }
        let done_bytes: u64 = done
            .iter()
            .map(|&p| (p * part_size + part_size).min(obj.size) - p * part_size)
            .sum();
        let free = free_bytes(&dir).map_err(|e| io_err("checking free disk space", e))?;
        let need = obj.size - done_bytes;
        if free < need.saturating_add(DISK_MARGIN) {
            return Err(SourceError::Io(format!(
                "not enough disk space: `{}` needs {need} more bytes, {free} are free",
                printable(&obj.key)
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(|e| io_err("opening the partial download", e))?;
        if done.is_empty() {
            file.set_len(0)
                .and_then(|_| file.set_len(obj.size))
                .map_err(|e| io_err("sizing the partial download", e))?;
        }
        let mut progress = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&progress_path)
            .map_err(|e| io_err("opening the download progress", e))?;
        let mut text = format!("{header}\n");
        for p in &done {
            text.push_str(&format!("{p}\n"));
        }
        progress
            .write_all(text.as_bytes())
            .map_err(|e| io_err("writing the download progress", e))?;
        let queue: VecDeque<u64> = (0..parts)
            .filter(|p| done.binary_search(p).is_err())
            .collect();
        let workers = self.inner.spec.concurrency.min(queue.len()).max(1);
        let job = Arc::new(Job {
            inner: self.inner.clone(),
            full_key: self.full_key(&obj.key),
            key: obj.key.clone(),
            etag: (!obj.stamp.is_empty()).then(|| obj.stamp.clone()),
            size: obj.size,
            part_size,
            parts,
            file,
            progress: Mutex::new(progress),
            queue: Mutex::new(queue),
            abort: AtomicBool::new(false),
            fetched: AtomicU64::new(0),
        });
        let j = job.clone();
        let results = run_on(self.rt(), async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..workers {
                set.spawn(j.clone().worker());
            }
            let mut first_err = None;
            while let Some(r) = set.join_next().await {
                let r = r.unwrap_or_else(|e| Err(Fail::Retry(format!("download task: {e}"))));
                if let Err(e) = r {
                    // The most telling failure wins: gone, refused, changed.
                    let rank = |f: &Fail| match f {
                        Fail::NotFound => 0,
                        Fail::Denied(_) => 1,
                        Fail::Changed => 2,
                        Fail::Retry(_) => 3,
                    };
                    if first_err.as_ref().is_none_or(|f| rank(&e) < rank(f)) {
                        first_err = Some(e);
                    }
                }
            }
            first_err
        })?;
        if let Some(f) = results {
            if matches!(f, Fail::NotFound | Fail::Changed) {
                let _ = fs::remove_file(&part_path);
                let _ = fs::remove_file(&progress_path);
            }
            return Err(self.map_fail("GET", &job.key, f));
        }
        // Every part is synced; hash the whole file.
        let mut f = File::open(&part_path).map_err(|e| io_err("reopening the download", e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n_total = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| io_err("hashing the download", e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            n_total += n as u64;
        }
        if n_total != obj.size {
            let _ = fs::remove_file(&part_path);
            let _ = fs::remove_file(&progress_path);
            return Err(SourceError::Io(format!(
                "`{}`: expected {} bytes, have {n_total}",
                printable(&obj.key),
                obj.size
            )));
        }
        let digest = format!("sha256:{}", hex::encode(h.finalize()));
        let dest = blobs.path(&digest);
        if blobs.has(&digest, n_total) {
            let _ = fs::remove_file(&part_path);
        } else {
            fs::rename(&part_path, &dest).map_err(|e| io_err("storing the blob", e))?;
            if let Some(parent) = dest.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_err("syncing the blob store", e))?;
            }
        }
        let _ = fs::remove_file(&progress_path);
        Ok((digest, n_total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = parse_spec("s3://my-bucket/some/prefix?part-size=1048576&concurrency=4").unwrap();
        assert_eq!(s.bucket, "my-bucket");
        assert_eq!(s.prefix, "some/prefix/");
        assert_eq!(s.part_size, 1 << 20);
        assert_eq!(s.concurrency, 4);
        assert!(!s.anonymous);
        let s = parse_spec("s3://my-bucket?no-sign-request").unwrap();
        assert_eq!(s.prefix, "");
        assert!(s.anonymous);
        assert!(parse_spec("s3://b/x").is_err(), "bucket too short");
        assert!(parse_spec("s3://bu/cket/x").is_err());
        assert!(parse_spec("s3://bucket/x?bogus=1").is_err());
        assert!(parse_spec("s3://bucket/x?part-size=1").is_err());
        assert!(parse_spec("s3://bucket/a\nb").is_err());
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb%01+c").unwrap(), b"a/b\x01 c");
        assert!(percent_decode("a%zz").is_none());
        assert!(percent_decode("a%2").is_none());
    }

    #[test]
    fn progress_ignores_a_torn_line_and_another_version() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.progress");
        fs::write(&p, "v1 10 \"e\" 4\n0\n2\n1").unwrap();
        assert_eq!(read_progress(&p, "v1 10 \"e\" 4"), vec![0, 2]);
        assert!(read_progress(&p, "v1 10 \"f\" 4").is_empty());
    }
}
