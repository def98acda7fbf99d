//! Image sources. A source lists keys and opens objects; it never decides what
//! an image is (that is `core::names`).

use std::io::{self, Read};
use std::path::Path;

use crate::blobs::BlobStore;
use crate::core::names::{printable, Listed, Rejected, UnitObject};

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
    fn open(&self, key: &str) -> Result<(Box<dyn Read + Send>, Listed), SourceError>;
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
    pub fn parse(specs: &[String]) -> Result<Sources, SourceError> {
        Sources::new(specs.iter().map(|s| parse(s)).collect::<Result<_, _>>()?)
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn Source> {
        self.all.iter().map(|s| s.as_ref())
    }

    /// The source a run names, if it is still configured.
    pub fn get(&self, uri: &str) -> Option<&dyn Source> {
        self.iter().find(|s| s.uri() == uri)
    }
}

/// Parses `dir:PATH`, a plain path, or `s3://BUCKET[/PREFIX][?OPTIONS]`.
pub fn parse(spec: &str) -> Result<Box<dyn Source>, SourceError> {
    if spec.starts_with("registry://") {
        // Checked, so a bad reference is named precisely; then refused:
        // the client exists (`registry::client`), the source does not yet.
        crate::core::registry::parse(spec).map_err(SourceError::Config)?;
        return Err(SourceError::Config(format!(
            "registry source `{}`: pulling from registries is not implemented yet",
            printable(spec)
        )));
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
    /// A `registry://` source is checked, then refused in one line until
    /// the source is served.
    #[test]
    fn registry_sources_are_checked_then_refused() {
        for (spec, expected) in [
            (
                "registry://r.io/team/api:v42",
                "registry source `registry://r.io/team/api:v42`: pulling from registries is not implemented yet",
            ),
            (
                "registry://r.io/Team/api",
                "registry source `registry://r.io/Team/api`: a repository is lowercase",
            ),
        ] {
            let e = super::parse(spec).err().expect(spec).to_string();
            assert!(e.starts_with(expected), "{spec}: {e}");
        }
    }
}
