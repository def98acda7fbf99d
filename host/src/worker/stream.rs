//! The worker's streams: every decoder tarpool runs on untrusted bytes is
//! here, in a private module of the worker, so only the confined process
//! can reach one. Applying a layer (decompress, hash, tar check, write),
//! hashing one (digest and diff ID), and decompressing a whole image
//! archive into a file the service then hashes and adopts.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::capped::{over_limit, Capped};
use crate::archive;
use crate::core::plan::{LayerDigests, PlannedLayer};
use crate::core::policy::Verdict;
use crate::core::policy::Verdicts;
use crate::error::Failure;
use crate::extract::view::CheckError;
use crate::model::{BlobKind, LayerMedia};

fn input(m: impl Into<String>) -> Failure {
    Failure::Input(m.into())
}

/// A decompressing reader for `kind`.
fn decoder<'a, R: Read + Send + 'a>(
    kind: BlobKind,
    r: R,
) -> Result<Box<dyn Read + Send + 'a>, Failure> {
    Ok(match kind {
        BlobKind::Tar => Box::new(r),
        BlobKind::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 20,
            r,
        ))),
        BlobKind::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| Failure::io("zstd", e))?)
        }
        k => return Err(input(format!("cannot decode a blob of kind {k:?}"))),
    })
}

/// A decoder's failure on layer `n`: over a policy limit (a reject, pushed
/// to `verdicts`), or corrupt data.
fn decode_failure(n: usize, e: &io::Error, verdicts: &mut Verdicts) -> Failure {
    match over_limit(e) {
        Some(o) => {
            verdicts.push(Verdict {
                rule: o.rule.into(),
                action: "reject".into(),
                layer: u32::try_from(n).ok(),
                path: None,
                detail: o.to_string(),
            });
            input(format!("layer {n}: {o}"))
        }
        None => input(format!("layer {n}: corrupt compressed data: {e}")),
    }
}

fn media_kind(m: LayerMedia) -> BlobKind {
    match m {
        LayerMedia::Gzip => BlobKind::Gzip,
        LayerMedia::Zstd => BlobKind::Zstd,
        _ => BlobKind::Tar,
    }
}

/// Layer `l`'s decompressed bytes from its raw bytes `raw`, capped at the
/// policy's decompression ratio.
fn decoded<'a, R: Read + Send + 'a>(
    l: &PlannedLayer,
    raw: R,
    policy: &crate::core::policy::Policy,
) -> Result<Capped<Box<dyn Read + Send + 'a>>, Failure> {
    // An uncompressed layer is its own size: nothing to cap.
    let ratio_limit = if l.media == LayerMedia::Tar {
        u64::MAX
    } else {
        policy.decompressed_cap(l.len)
    };
    Ok(Capped::new(
        decoder(media_kind(l.media), raw)?,
        l.len,
        ratio_limit,
        policy.max_layer_bytes.limit,
        (u64::MAX, "max-layer-bytes"),
    ))
}

/// Decompressed bytes handed from the decoding thread to the applying one.
const STAGE_CHUNK: usize = 1 << 20;

/// The decoding stage: reads `r` to its end in chunks, sending each (or the
/// error that stopped it); stops early when the receiver is gone.
fn decompress_into<R: Read>(mut r: R, tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>) {
    loop {
        let mut buf = vec![0u8; STAGE_CHUNK];
        match crate::extract::read_full(&mut r, &mut buf) {
            Ok(0) => return,
            Ok(got) => {
                buf.truncate(got);
                if tx.send(Ok(buf)).is_err() || got < STAGE_CHUNK {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// The applying stage's view of the decoded stream.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ChannelReader {
    fn new(rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The decoder finished (or stopped after sending its error).
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Notes whether the underlying (blob file) reader failed, to tell an
/// environment error from a decoder's verdict on the bytes.
struct Watched<R> {
    inner: R,
    failed: Arc<AtomicBool>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed.store(true, Ordering::Relaxed);
            }
        })?;
        crate::progress::RAW_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Shares a running hash between a tap and its owner.
#[derive(Clone)]
struct Tap<R> {
    inner: R,
    state: TapState,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0.update(&buf[..n]);
        s.1 += n as u64;
        Ok(n)
    }
}

fn tap_digest(state: &TapState) -> (String, u64) {
    use sha2::Digest as _;
    let s = state.lock().unwrap_or_else(|p| p.into_inner());
    (
        format!("sha256:{}", hex::encode(s.0.clone().finalize())),
        s.1,
    )
}

/// Hashes layer `n` (`l`, in `blob`): its digest, checked against the
/// manifest's, and its diff ID. The worker's [`crate::worker::Task::Hash`]:
/// the decompression happens there, confined, never in the service.
pub(super) fn hash_stream(
    blob: File,
    n: usize,
    l: &PlannedLayer,
    policy: &crate::core::policy::Policy,
    verdicts: &mut Verdicts,
) -> Result<LayerDigests, Failure> {
    let (raw, raw_state, failed) = raw_layer(blob, l)?;
    let h = crate::blobs::HashingReader::new(decoded(l, raw, policy)?);
    // An error the blob file did not raise is the decoder's verdict on the
    // bytes.
    let (diff_id, _) = h.finish().map_err(|e| {
        if failed.load(Ordering::Relaxed) {
            Failure::io("hashing a layer", e)
        } else {
            decode_failure(n, &e, verdicts)
        }
    })?;
    let (digest, raw_len) = tap_digest(&raw_state);
    verify_raw(n, l, &digest, raw_len)?;
    Ok(LayerDigests { digest, diff_id })
}

/// A running hash and byte count, shared between a [`Tap`] and its owner.
type TapState = Arc<Mutex<(sha2::Sha256, u64)>>;

/// A layer's stored bytes as [`raw_layer`] reads them.
type RawReader = Tap<Watched<BufReader<io::Take<File>>>>;

/// Layer `l`'s stored bytes in `blob`: a reader that hashes them as they
/// pass (its state gives the digest) and notes whether the file itself
/// failed (to tell a read error from a decoder's verdict on the bytes).
fn raw_layer(
    blob: File,
    l: &PlannedLayer,
) -> Result<(RawReader, TapState, Arc<AtomicBool>), Failure> {
    use sha2::Digest as _;
    let r = archive::range(blob, l.offset, l.len).map_err(|e| Failure::io("reading a layer", e))?;
    let state: TapState = Arc::new(Mutex::new((sha2::Sha256::new(), 0u64)));
    let failed = Arc::new(AtomicBool::new(false));
    let raw = Tap {
        inner: Watched {
            inner: BufReader::with_capacity(1 << 20, r),
            failed: failed.clone(),
        },
        state: state.clone(),
    };
    Ok((raw, state, failed))
}

/// The checks on a layer's stored bytes once its stream has been read:
/// nothing after the compressed stream, and the manifest's digest.
fn verify_raw(n: usize, l: &PlannedLayer, digest: &str, raw_len: u64) -> Result<(), Failure> {
    if raw_len != l.len {
        return Err(input(format!(
            "layer {n}: {} bytes follow the compressed stream",
            l.len - raw_len
        )));
    }
    match &l.digest {
        Some(want) if want != digest => Err(input(format!(
            "layer {n}: digest mismatch: manifest says {want}, blob is {digest}"
        ))),
        _ => Ok(()),
    }
}

/// Streams layer `n` (`l`, in `blob`) through the tar check onto `root`,
/// verifying its digests: the worker's job.
pub(super) fn apply_stream(
    blob: File,
    n: usize,
    l: &PlannedLayer,
    policy: &crate::core::policy::Policy,
    check: &mut dyn crate::extract::view::TarCheck,
    root: rustix::fd::BorrowedFd<'_>,
    verdicts: &mut Verdicts,
) -> Result<(crate::extract::ApplyStats, LayerDigests), Failure> {
    use sha2::Digest as _;
    crate::progress::RAW_BYTES.store(0, Ordering::Relaxed);
    crate::extract::ENTRIES_SEEN.store(0, Ordering::Relaxed);
    let (raw, raw_state, failed) = raw_layer(blob, l)?;
    let diff_state = Arc::new(Mutex::new((sha2::Sha256::new(), 0u64)));
    let decoded = decoded(l, raw, policy)?;
    // Two stages on two cores: a helper thread decompresses and hashes both
    // the compressed bytes (digest) and the decompressed ones (diff ID); this
    // thread runs the tar check and writes, the heavier half.
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let diff = Tap {
        inner: decoded,
        state: diff_state.clone(),
    };
    let applied = std::thread::scope(|s| {
        s.spawn(move || decompress_into(diff, tx));
        crate::extract::apply_layer(root, ChannelReader::new(rx), check)
    });
    let stats = applied.map_err(|e| {
        // The decompression stopped at a policy limit: a decision, not bad data.
        if let crate::extract::ApplyError::Io { source, .. } = &e {
            if over_limit(source).is_some() {
                return decode_failure(n, source, verdicts);
            }
        }
        // A read error the blob file did not raise comes from the decoder:
        // the bytes are bad, not the environment.
        let e = match e {
            crate::extract::ApplyError::Io { context, source }
                if context.starts_with("reading layer") && !failed.load(Ordering::Relaxed) =>
            {
                crate::extract::ApplyError::Input(format!("corrupt layer data: {source}"))
            }
            e => e,
        };
        if let crate::extract::ApplyError::Check(CheckError::Rejected { path, rule, reason }) = &e {
            verdicts.push(Verdict {
                rule: rule.clone(),
                action: "reject".into(),
                layer: u32::try_from(n).ok(),
                path: Some(path.clone()),
                detail: reason.clone(),
            });
        }
        match Failure::from(e) {
            Failure::Input(m) => Failure::Input(format!("layer {n}: {m}")),
            other => other,
        }
    })?;
    // apply_layer read the stream to its end: the digests cover it all.
    let (raw_digest, raw_len) = tap_digest(&raw_state);
    verify_raw(n, l, &raw_digest, raw_len)?;
    let (diff_digest, _) = tap_digest(&diff_state);
    if let Some(want) = &l.diff_id {
        if &diff_digest != want {
            return Err(input(format!(
                "layer {n}: diff ID mismatch: expected {want}, unpacked {diff_digest}"
            )));
        }
    }
    Ok((
        stats,
        LayerDigests {
            digest: raw_digest,
            diff_id: diff_digest,
        },
    ))
}

/// Decompresses an image archive or a layer (`l.len` bytes at `l.offset`
/// of `blob`, compressed as `l.media`) into `out`, capped by the policy
/// (its ratio rule, `max-layer-bytes` and `max-image-bytes`); returns the
/// bytes written. The worker's [`super::Task::Decompress`]: the service
/// then hashes the file and adopts it into the blob store (`steps try`
/// reads it), never decoding a byte itself.
pub(super) fn decompress_archive(
    blob: File,
    l: &PlannedLayer,
    policy: &crate::core::policy::Policy,
    mut out: File,
    verdicts: &mut Verdicts,
) -> Result<u64, Failure> {
    let failed = Arc::new(AtomicBool::new(false));
    let blob = archive::range(blob, l.offset, l.len)
        .map_err(|e| Failure::io("reading the compressed file", e))?;
    let raw = Watched {
        inner: BufReader::with_capacity(1 << 20, blob),
        failed: failed.clone(),
    };
    let mut capped = Capped::new(
        decoder(media_kind(l.media), raw)?,
        l.len,
        policy.decompressed_cap(l.len),
        policy.max_layer_bytes.limit,
        (policy.max_image_bytes.limit, "max-image-bytes"),
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = match capped.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if let Some(over) = over_limit(&e) {
                    verdicts.push(Verdict {
                        rule: over.rule.into(),
                        action: "reject".into(),
                        layer: None,
                        path: None,
                        detail: over.to_string(),
                    });
                    return Err(input(over.to_string()));
                }
                // An error the blob file did not raise is the decoder's
                // verdict on the bytes.
                return Err(if failed.load(Ordering::Relaxed) {
                    Failure::io("reading the archive", e)
                } else {
                    input(format!("corrupt compressed archive: {e}"))
                });
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| Failure::io("writing the decompressed archive", e))?;
        written += n as u64;
    }
    out.sync_all()
        .map_err(|e| Failure::io("syncing the decompressed archive", e))?;
    Ok(written)
}
