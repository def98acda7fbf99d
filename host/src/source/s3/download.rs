//! Resumable downloads: the object's parts fetched by ranged GETs conditional
//! on the listed ETag, each synced and recorded in a progress file, then the
//! whole file hashed, checked against the listed size and stored.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::fail::{classify, one_line, Fail};
use super::{io_err, run_on, Inner, S3Source, SourceError};
use crate::blobs::{free_bytes, BlobStore};
use crate::core::names::{printable, UnitObject};

/// Attempts per part for failures the SDK does not retry itself (a body cut
/// short, reset or stalled); the engine retries the whole step after that.
const PART_ATTEMPTS: u32 = 4;
/// Room kept free on the state directory's filesystem besides the object.
const DISK_MARGIN: u64 = 64 << 20;

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
    pub(super) fn download(
        &self,
        obj: &UnitObject,
        blobs: &BlobStore,
    ) -> Result<(String, u64), SourceError> {
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
        let results = run_on(self.rt().handle(), async move {
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
        blobs
            .put(&part_path, &digest)
            .map_err(|e| io_err("storing the blob", e))?;
        let _ = fs::remove_file(&progress_path);
        Ok((digest, n_total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_ignores_a_torn_line_and_another_version() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.progress");
        fs::write(&p, "v1 10 \"e\" 4\n0\n2\n1").unwrap();
        assert_eq!(read_progress(&p, "v1 10 \"e\" 4"), vec![0, 2]);
        assert!(read_progress(&p, "v1 10 \"f\" 4").is_empty());
    }
}
