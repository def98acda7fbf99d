//! Fetching by digest: a manifest or a blob streamed from the registry,
//! hashed and counted as it comes, and stored only when its bytes are the
//! digest's (and of the size the manifest declared).
//!
//! A blob is written to `downloads/registry-<hex>.partial` as it arrives;
//! a download cut short (the connection, a crash) goes on from the bytes
//! already there with an HTTP `Range` request, after hashing them again
//! (the registry may ignore the range: then it starts over). 429 (after
//! `Retry-After`), 5xx and the network are tried again with backoff; the
//! rest is final. One download per blob at a time: the partial file is
//! locked while it is written.

use std::fs::{self, File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use sha2::{Digest as _, Sha256};

use super::answers::{RegistryError, READ_TIMEOUT};
use super::client::Registry;
use crate::blobs::{free_bytes, BlobStore};
use crate::core::names::printable;
use crate::source::SourceError;

/// Failed attempts of one request before its failure is the transition's.
const ATTEMPTS: u32 = 4;
/// The longest `Retry-After` waited for; a longer one fails the attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The first backoff, doubled after each failed attempt, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Connections one blob may take, cut short or not.
const MAX_CONNECTIONS: u32 = 64;
/// Room kept free on the state directory's filesystem besides the blob.
const DISK_MARGIN: u64 = 64 << 20;

/// One repository of one registry: what every fetch goes through.
pub(super) struct Inner {
    pub(super) client: Arc<Registry>,
    pub(super) repo: String,
    /// The registry, for messages: `HOST[:PORT]`.
    pub(super) host: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Blob,
}

/// What to fetch: a digest, as a manifest or a blob, of a known size or at
/// most a cap.
#[derive(Debug, Clone)]
pub struct Want {
    digest: String,
    kind: Kind,
    size: Option<u64>,
    cap: u64,
}

impl Want {
    /// A layer: `size` bytes, as its manifest declares.
    pub fn blob(digest: &str, size: u64) -> Want {
        Want {
            digest: digest.into(),
            kind: Kind::Blob,
            size: Some(size),
            cap: size,
        }
    }

    /// A blob whose size the host does not know (a config): at most `cap`.
    pub fn capped(digest: &str, cap: usize) -> Want {
        Want {
            digest: digest.into(),
            kind: Kind::Blob,
            size: None,
            cap: cap as u64,
        }
    }

    /// A manifest or an index, at most `cap` bytes.
    pub fn manifest(digest: &str, cap: usize) -> Want {
        Want {
            digest: digest.into(),
            kind: Kind::Manifest,
            size: None,
            cap: cap as u64,
        }
    }
}

/// A blob in the store, and how it got there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    pub size: u64,
    /// Bytes received from the registry (0: it was stored already).
    pub received: u64,
    /// Bytes of an earlier, interrupted download that were kept.
    pub resumed_from: u64,
}

/// A refusal or a failure as the source says it: the image's (its
/// reference or its bytes refused) or the environment's (retried).
pub(super) fn source_error(host: &str, e: RegistryError) -> SourceError {
    let msg = format!("registry {}: {e}", printable(host));
    match e {
        RegistryError::BadAnswer(..) => SourceError::BadObject(msg),
        e if e.retryable() => SourceError::Io(msg),
        _ => SourceError::Denied(msg),
    }
}

/// How long to wait before the next attempt after `e`; `None`: do not.
fn backoff(e: &RegistryError, attempt: u32) -> Option<Duration> {
    if !e.retryable() || attempt >= ATTEMPTS {
        return None;
    }
    let exp = FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(MAX_BACKOFF);
    match e {
        RegistryError::TooManyRequests {
            retry_after: Some(d),
            ..
        } => (*d <= MAX_RETRY_AFTER).then_some(*d),
        _ => Some(exp),
    }
}

/// Runs the request `f` until it succeeds, fails finally, or has failed
/// [`ATTEMPTS`] times.
pub(super) async fn retrying<T, F, Fut>(mut f: F) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Err(e) => match backoff(&e, attempt) {
                Some(wait) => {
                    tracing::debug!(error = %e, wait_ms = wait.as_millis() as u64, "registry request failed; trying again");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(e),
            },
            ok => return ok,
        }
    }
}

fn local(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Io(format!("{what}: {e}"))
}

/// Fetches `want` into `blobs` unless it is there already.
pub(super) async fn one(
    inner: &Inner,
    blobs: &BlobStore,
    want: &Want,
) -> Result<Fetched, SourceError> {
    if let Some(size) = stored(blobs, want) {
        return Ok(Fetched {
            size,
            ..Fetched::default()
        });
    }
    match want.kind {
        Kind::Manifest => {
            let cap = usize::try_from(want.cap).unwrap_or(usize::MAX);
            let m = retrying(|| inner.client.manifest(&inner.repo, &want.digest, cap))
                .await
                .map_err(|e| source_error(&inner.host, e))?;
            let (digest, size) = blobs
                .ingest(&m.bytes[..], Some(m.bytes.len() as u64))
                .map_err(|e| local("storing a manifest", e))?;
            debug_assert_eq!(digest, want.digest);
            Ok(Fetched {
                size,
                received: size,
                resumed_from: 0,
            })
        }
        Kind::Blob => download(inner, blobs, want).await,
    }
}

/// The size of `want`'s blob if the store has it (of the size wanted).
fn stored(blobs: &BlobStore, want: &Want) -> Option<u64> {
    let len = fs::symlink_metadata(blobs.path(&want.digest))
        .ok()
        .filter(|m| m.is_file())?
        .len();
    match want.size {
        Some(s) => blobs.has(&want.digest, s).then_some(s),
        None => (len <= want.cap).then_some(len),
    }
}

/// Fetches every one of `wants` (distinct digests), `parallel` at a time.
pub(super) async fn many(
    inner: Arc<Inner>,
    blobs: BlobStore,
    wants: Vec<Want>,
    parallel: usize,
) -> Vec<Result<Fetched, SourceError>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let blobs = Arc::new(blobs);
    let mut set = tokio::task::JoinSet::new();
    let n = wants.len();
    for (i, w) in wants.into_iter().enumerate() {
        let (inner, blobs, slots) = (inner.clone(), blobs.clone(), slots.clone());
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (i, one(&inner, &blobs, &w).await)
        });
    }
    let mut out: Vec<Result<Fetched, SourceError>> = (0..n)
        .map(|_| Err(SourceError::Io("a download task stopped".into())))
        .collect();
    while let Some(r) = set.join_next().await {
        if let Ok((i, r)) = r {
            out[i] = r;
        }
    }
    out
}

/// Takes the lock on the partial file, waiting (without blocking a
/// thread) while another download of the same blob holds it.
async fn lock(file: &File) -> Result<(), SourceError> {
    use rustix::fs::{flock, FlockOperation};
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(local("locking a partial download", e)),
        }
    }
}

/// The sha256 state and length of what `file` holds.
fn hash_file(file: &File) -> std::io::Result<(Sha256, u64)> {
    let mut h = Sha256::new();
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok((h, n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// The partial file being written, and what it holds.
struct Partial {
    file: File,
    hasher: Sha256,
    have: u64,
    /// Bytes this download received (resumed bytes not counted).
    received: u64,
}

impl Partial {
    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.hasher = Sha256::new();
        self.have = 0;
        Ok(())
    }
}

/// The slowest a body may come, on average, once it has had
/// [`READ_TIMEOUT`]: a registry that trickles is cut (and tried again).
const MIN_RATE: u64 = 16 << 10;

/// One connection's worth of the blob, from `p.have` on. `Ok`: the body
/// ended (complete or not).
async fn stream(inner: &Inner, want: &Want, p: &mut Partial) -> Result<(), RegistryError> {
    let what = || format!("GET /v2/{}/blobs/{}", inner.repo, want.digest);
    let blob = inner.client.blob(&inner.repo, &want.digest, p.have).await?;
    if blob.from == 0 && p.have > 0 {
        // The registry ignored the range: from the start.
        p.restart()
            .map_err(|e| RegistryError::Transport(what(), format!("restarting: {e}")))?;
    }
    let (started, mut got) = (std::time::Instant::now(), 0u64);
    let mut body = blob.body;
    loop {
        let frame = match tokio::time::timeout(READ_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(RegistryError::Transport(
                    what(),
                    format!("no data for {} s", READ_TIMEOUT.as_secs()),
                ))
            }
            Ok(None) => return Ok(()),
            Ok(Some(f)) => {
                f.map_err(|e| RegistryError::Transport(what(), printable(&e.to_string())))?
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if p.have + data.len() as u64 > want.cap {
            return Err(RegistryError::BadAnswer(
                what(),
                format!("more than the {} bytes wanted", want.cap),
            ));
        }
        p.file
            .write_all_at(&data, p.have)
            .map_err(|e| RegistryError::Transport(what(), format!("writing: {e}")))?;
        p.hasher.update(&data);
        p.have += data.len() as u64;
        p.received += data.len() as u64;
        got += data.len() as u64;
        let secs = started.elapsed().as_secs();
        if secs > READ_TIMEOUT.as_secs() && got / secs < MIN_RATE {
            return Err(RegistryError::Transport(
                what(),
                format!("slower than {} KiB/s", MIN_RATE >> 10),
            ));
        }
    }
}

/// Opens and locks the partial download at `path`: the file locked is the
/// one at the path (another download may have renamed or removed the one
/// it opened while it waited), so only its holder renames or removes it.
async fn open_locked(path: &Path) -> Result<File, SourceError> {
    use std::os::unix::fs::MetadataExt as _;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| local("opening a partial download", e))?;
        lock(&file).await?;
        let held = file
            .metadata()
            .map_err(|e| local("reading a partial download", e))?;
        match fs::symlink_metadata(path) {
            Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => return Ok(file),
            _ => continue,
        }
    }
}

/// Runs blocking file work off the source's runtime threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| local("a download task", e))?
}

/// Downloads a blob into the store, resuming a partial download.
async fn download(inner: &Inner, blobs: &BlobStore, want: &Want) -> Result<Fetched, SourceError> {
    let dir = blobs.downloads_dir().to_path_buf();
    fs::create_dir_all(&dir).map_err(|e| local("creating the downloads directory", e))?;
    let hex = want.digest.trim_start_matches("sha256:");
    let path = dir.join(format!("registry-{hex}.partial"));
    let file = open_locked(&path).await?;
    // Another download may have finished it meanwhile.
    if let Some(size) = stored(blobs, want) {
        let _ = fs::remove_file(&path);
        return Ok(Fetched {
            size,
            ..Fetched::default()
        });
    }
    let (file, hasher, have) = blocking(move || {
        let (h, n) = hash_file(&file).map_err(|e| local("reading a partial download", e))?;
        Ok((file, h, n))
    })
    .await?;
    let mut p = Partial {
        file,
        hasher,
        have,
        received: 0,
    };
    if p.have > want.cap {
        p.restart().map_err(|e| local("restarting a download", e))?;
    }
    if let Some(size) = want.size {
        let free = free_bytes(&dir).map_err(|e| local("checking free disk space", e))?;
        let need = size - p.have;
        if free < need.saturating_add(DISK_MARGIN) {
            return Err(SourceError::Io(format!(
                "not enough disk space: blob {} needs {need} more bytes, {free} are free",
                want.digest
            )));
        }
    }
    let resumed_from = p.have;
    let host = printable(&inner.host);
    // Connections in a row that brought nothing new.
    let mut failed = 0;
    let mut retried_whole = false;
    let fail = |e: SourceError| {
        // A final failure: nothing to go on from later.
        let _ = fs::remove_file(&path);
        e
    };
    for _ in 0..MAX_CONNECTIONS {
        if Some(p.have) != want.size {
            let before = p.have;
            let mut short = false;
            let e = match stream(inner, want, &mut p).await {
                Ok(()) if want.size.is_none_or(|s| p.have >= s) => None,
                // The body ended early: go on from there, or after a
                // wait when it brought nothing new.
                Ok(()) => {
                    short = true;
                    Some(RegistryError::Transport(
                        format!("GET /v2/{}/blobs/{}", inner.repo, want.digest),
                        format!(
                            "the body ended after {} of the {} bytes its manifest declares",
                            p.have,
                            want.size.unwrap_or_default()
                        ),
                    ))
                }
                // The bytes kept are not a prefix the registry can go on
                // from (416): from the start, once.
                Err(RegistryError::Status(_, 416)) if p.have > 0 && !retried_whole => {
                    retried_whole = true;
                    p.restart().map_err(|e| local("restarting a download", e))?;
                    continue;
                }
                Err(e) => Some(e),
            };
            if let Some(e) = e {
                failed = if p.have > before { 1 } else { failed + 1 };
                match backoff(&e, failed) {
                    Some(wait) => {
                        tracing::debug!(error = %e, have = p.have, "blob download cut short; resuming");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    // Ended short again and again, each time complete
                    // as far as HTTP goes: the blob is not the size its
                    // manifest declares.
                    None if short => {
                        return Err(fail(SourceError::BadObject(format!(
                            "registry {host}: {e}"
                        ))))
                    }
                    None if e.retryable() => {
                        let _ = p.file.sync_data();
                        return Err(source_error(&inner.host, e));
                    }
                    None => return Err(fail(source_error(&inner.host, e))),
                }
            }
        }
        let got = format!("sha256:{}", hex::encode(p.hasher.clone().finalize()));
        if got == want.digest && want.size.is_none_or(|s| s == p.have) {
            let (f, digest, from) = (p.file, want.digest.clone(), path.clone());
            let blobs2 = blobs.clone();
            blocking(move || {
                f.sync_all().map_err(|e| local("syncing a download", e))?;
                blobs2
                    .put(&from, &digest)
                    .map_err(|e| local("storing a blob", e))
            })
            .await?;
            return Ok(Fetched {
                size: p.have,
                received: p.received,
                resumed_from,
            });
        }
        if resumed_from > 0 && !retried_whole {
            // What an earlier download left may not have been synced:
            // once more, from the start, before the blob is blamed.
            retried_whole = true;
            p.restart().map_err(|e| local("restarting a download", e))?;
            continue;
        }
        return Err(fail(SourceError::BadObject(format!(
            "registry {host}: blob {} does not match its digest: its {} bytes are {got}",
            want.digest, p.have
        ))));
    }
    Err(SourceError::Io(format!(
        "registry {host}: blob {}: still incomplete after {MAX_CONNECTIONS} connections",
        want.digest
    )))
}
