//! The content-addressed blob store: `blobs/sha256/<hex>`. Bytes are streamed
//! into a temporary file while hashed, fsynced, then renamed into place, so a
//! blob under its name is always complete.

use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
    downloads: PathBuf,
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads what is left, then returns `sha256:<hex>` and the byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Free bytes on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl BlobStore {
    pub fn new(state_dir: &crate::statedir::StateDir) -> io::Result<BlobStore> {
        let dir = state_dir.blobs();
        let tmp = state_dir.tmp();
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(&tmp)?;
        Ok(BlobStore {
            dir,
            tmp,
            downloads: state_dir.downloads(),
        })
    }

    /// Where partial downloads live: beside the blob store, not in `tmp/`
    /// (emptied at start-up), so that they survive a crash.
    pub fn downloads_dir(&self) -> &Path {
        &self.downloads
    }

    /// `digest` is `sha256:<hex>`, already checked by the caller.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest.trim_start_matches("sha256:"))
    }

    pub fn has(&self, digest: &str, size: u64) -> bool {
        crate::core::chain::is_sha256_digest(digest)
            && fs::symlink_metadata(self.path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    pub fn open(&self, digest: &str) -> io::Result<File> {
        File::open(self.path(digest))
    }

    /// A new, empty file in the store's temporary directory (removed when
    /// dropped unless [`BlobStore::adopt`]ed): where the extraction worker
    /// writes a decompressed archive.
    pub fn staging(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("staging-")
            .tempfile_in(&self.tmp)
    }

    /// Hashes the file `staged` (written by another process) and moves it
    /// into the store under its digest. Returns `sha256:<hex>` and the size.
    pub fn adopt(&self, staged: tempfile::NamedTempFile) -> io::Result<(String, u64)> {
        let (digest, size) = HashingReader::new(File::open(staged.path())?).finish()?;
        staged.as_file().sync_all()?;
        let dest = self.path(&digest);
        if dest.exists() {
            return Ok((digest, size));
        }
        staged.persist(&dest).map_err(|e| e.error)?;
        File::open(&self.dir)?.sync_all()?;
        Ok((digest, size))
    }

    /// Moves `file`, whose bytes the caller hashed to `digest` (a download
    /// verified as it came), into the store under that name, and syncs the
    /// store's directory; a blob already there is kept and `file` removed.
    pub fn put(&self, file: &Path, digest: &str) -> io::Result<()> {
        let dest = self.path(digest);
        if dest.exists() {
            return fs::remove_file(file);
        }
        fs::rename(file, &dest)?;
        File::open(&self.dir)?.sync_all()
    }

    /// Streams `reader` into the store. With `expected_size`, refuses to start
    /// when the disk lacks room, and rejects a stream of another length.
    /// Returns `sha256:<hex>` and the size.
    pub fn ingest(
        &self,
        reader: impl Read,
        expected_size: Option<u64>,
    ) -> io::Result<(String, u64)> {
        if let Some(size) = expected_size {
            let free = free_bytes(&self.dir)?;
            if free < size.saturating_add(64 << 20) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "not enough disk space: the object needs {size} bytes, {free} are free"
                    ),
                ));
            }
        }
        let mut tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.tmp)?;
        let mut r = HashingReader::new(reader);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            tmp.write_all(&buf[..n])?;
        }
        let (digest, size) = r.finish()?;
        if let Some(want) = expected_size {
            if want != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("object changed or was cut short: expected {want} bytes, read {size}"),
                ));
            }
        }
        tmp.as_file().sync_all()?;
        let dest = self.path(&digest);
        if dest.exists() {
            return Ok((digest, size));
        }
        tmp.persist(&dest).map_err(|e| e.error)?;
        File::open(&self.dir)?.sync_all()?;
        Ok((digest, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_is_content_addressed_and_checks_size() {
        let d = tempfile::tempdir().unwrap();
        let s = BlobStore::new(&crate::statedir::StateDir::new(d.path())).unwrap();
        let (a, n) = s.ingest(&b"hello"[..], Some(5)).unwrap();
        assert_eq!(
            a,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(n, 5);
        assert!(s.has(&a, 5));
        let (b, _) = s.ingest(&b"hello"[..], None).unwrap();
        assert_eq!(a, b);
        let e = s.ingest(&b"hell"[..], Some(5)).unwrap_err();
        assert!(e.to_string().contains("expected 5 bytes, read 4"));
        assert_eq!(
            fs::read_dir(d.path().join("tmp")).unwrap().count(),
            0,
            "no temporary file is left"
        );
    }
}
