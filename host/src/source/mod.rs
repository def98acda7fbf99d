//! Image sources. A source lists keys and opens objects; it never decides what
//! an image is (that is `core::names`).

use std::io::{self, Read};
use std::path::Path;

use crate::blobs::BlobStore;
use crate::core::names::{printable, Discovery, Listed, Rejected, UnitObject};

pub mod dir;
pub mod registry;
pub mod s3;

pub use dir::DirSource;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The object is not there (deleted between list and get).
    #[error("object `{0}` is no longer in the source")]
    NotFound(String),
    #[error("source I/O: {0}")]
    Io(String),
    /// The object changed while it was read (another ETag or size).
    #[error("{0}")]
    Changed(String),
    /// Access denied or a request the source refuses: not retried.
    #[error("{0}")]
    Denied(String),
    /// The object is not something an image can be read from (a FIFO, a
    /// device, a socket put in its place): the image fails.
    #[error("{0}")]
    BadObject(String),
    #[error("{0}")]
    Config(String),
}

pub struct Listing {
    pub objects: Vec<Listed>,
    /// Entries that cannot be objects (non-UTF-8 names, special files).
    pub rejected: Vec<Rejected>,
}

pub trait Source: Send + Sync {
    /// A stable identity for the download-once records.
    fn uri(&self) -> String;
    fn list(&self) -> Result<Listing, SourceError>;
    /// The images the source holds now. By default: its listing grouped by
    /// `core::names` (the listing's rejections first). A source may stop
    /// listing after `max_images + 1` images: the caller keeps `max_images`
    /// of them (the policy's `max-images`).
    fn discover(&self, max_images: usize) -> Result<Discovery, SourceError> {
        let _ = max_images;
        let listing = self.list()?;
        let mut d = crate::core::names::discover(&listing.objects);
        let mut rejected = listing.rejected;
        rejected.append(&mut d.rejected);
        d.rejected = rejected;
        Ok(d)
    }
    fn open(&self, key: &str) -> Result<(Box<dyn Read + Send>, Listed), SourceError>;
    /// What `key` is now (its size and stamp). By default: `open`'s answer.
    fn stat(&self, key: &str) -> Result<Listed, SourceError> {
        self.open(key).map(|(_, l)| l)
    }
    /// Downloads `obj` into `blobs`, checked against its listed size, and
    /// returns its digest and size. By default: `open`, then stream it in.
    fn fetch(&self, obj: &UnitObject, blobs: &BlobStore) -> Result<(String, u64), SourceError> {
        let (reader, _) = self.open(&obj.key)?;
        blobs
            .ingest(reader, Some(obj.size))
            .map_err(|e| SourceError::Io(format!("downloading `{}`: {e}", printable(&obj.key))))
    }
    /// The host directory to hide from stored messages, if any.
    fn local_root(&self) -> Option<&Path> {
        None
    }
    /// The registry source, for what only it does (fetching by digest).
    fn registry(&self) -> Option<&registry::RegistrySource> {
        None
    }
}

/// Runs `f` on `rt` and waits for it on this thread. Works from a plain
/// thread, a `spawn_blocking` thread, and (blocking it) a runtime thread:
/// the `Source` trait is synchronous and called from both, so a source
/// with an async client keeps its own runtime (never `block_on`).
pub(crate) fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, SourceError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| SourceError::Io("the source's client task stopped".into()))
}

/// The configured sources, in order: one run serves them all. A run names
/// its image's source by [`Source::uri`].
pub struct Sources {
    all: Vec<Box<dyn Source>>,
}

impl Sources {
    /// At least one source, each once.
    pub fn new(all: Vec<Box<dyn Source>>) -> Result<Sources, SourceError> {
        if all.is_empty() {
            return Err(SourceError::Config("no source is configured".into()));
        }
        for (i, s) in all.iter().enumerate() {
            if all[..i].iter().any(|t| t.uri() == s.uri()) {
                return Err(SourceError::Config(format!(
                    "source {} is configured twice",
                    printable(&s.uri())
                )));
            }
        }
        Ok(Sources { all })
    }

    /// Each spec parsed as by [`parse`].
    pub fn parse(
        specs: &[String],
        registry: &registry::Options,
        cache_dir: &Path,
    ) -> Result<Sources, SourceError> {
        Sources::new(
            specs
                .iter()
                .map(|s| parse(s, registry, cache_dir))
                .collect::<Result<_, _>>()?,
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn Source> {
        self.all.iter().map(|s| s.as_ref())
    }

    /// The source a run names, if it is still configured.
    pub fn get(&self, uri: &str) -> Option<&dyn Source> {
        self.iter().find(|s| s.uri() == uri)
    }
}

/// Parses `dir:PATH`, a plain path, `s3://BUCKET[/PREFIX][?OPTIONS]`,
/// `registry://HOST[:PORT]/REPO[:TAG|@DIGEST][?OPTIONS]` or
/// `registry://HOST[:PORT][?OPTIONS]` (a whole registry, whose listing
/// step is compiled or loaded from `cache_dir`).
pub fn parse(
    spec: &str,
    registry: &registry::Options,
    cache_dir: &Path,
) -> Result<Box<dyn Source>, SourceError> {
    if spec.starts_with("registry://") {
        return Ok(Box::new(registry::RegistrySource::new(
            spec, registry, cache_dir,
        )?));
    }
    if spec.starts_with("s3://") {
        return Ok(Box::new(s3::S3Source::new(spec)?));
    }
    let path = spec.strip_prefix("dir:").unwrap_or(spec);
    Ok(Box::new(DirSource::new(path)?))
}

/// Reads from `r` until `buf` is full or the stream ends.
pub fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    /// A `registry://` spec is checked when the source is made.
    #[test]
    fn registry_sources_are_checked() {
        let cache = tempfile::tempdir().unwrap();
        let parse = |spec: &str| super::parse(spec, &Default::default(), cache.path());
        for (spec, expected) in [
            (
                "registry://r.io?name=x",
                "registry source `registry://r.io?name=x`: name= names one image: give a repository",
            ),
            (
                "registry://r.io/Team/api",
                "registry source `registry://r.io/Team/api`: a repository is lowercase",
            ),
            (
                "registry://r.io/a?ca-file=/nonexistent/ca.pem",
                "registry source `registry://r.io/a?ca-file=/nonexistent/ca.pem`: ca-file /nonexistent/ca.pem: ",
            ),
        ] {
            let e = parse(spec)
                .err()
                .expect(spec)
                .to_string();
            assert!(e.starts_with(expected), "{spec}: {e}");
        }
        for (spec, uri) in [
            (
                "registry://R.io:5000/team/api:v1?name=api&plain-http",
                "registry://r.io:5000/team/api:v1?plain-http&name=api",
            ),
            (
                "registry://R.io:5000?platform=linux/arm64&plain-http",
                "registry://r.io:5000?plain-http&platform=linux/arm64",
            ),
        ] {
            assert_eq!(parse(spec).unwrap().uri(), uri);
        }
        // Another platform is another image (key, and so fingerprint).
        for (spec, key) in [
            ("registry://r.io/team/api:v1", "team/api:v1"),
            (
                "registry://r.io/team/api:v1?platform=linux/arm64/v8",
                "team/api:v1 for linux/arm64/v8",
            ),
        ] {
            let s = super::registry::RegistrySource::new(spec, &Default::default(), cache.path())
                .unwrap();
            assert_eq!(s.key(), Some(key));
        }
    }
}
