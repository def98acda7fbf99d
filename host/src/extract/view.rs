//! The tar check's view of a layer: what the guest that parsed it says is
//! in it. The host acts only on this (see [`super::apply_layer`]); it never
//! reads a tar header itself.

/// What the host should do with an entry (mirrors WIT `entry-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Regular,
    Directory,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Whiteout,
    Opaque,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Normalized, relative, raw bytes (see the WIT record `entry`).
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub link: Option<Vec<u8>>,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub data_offset: u64,
    pub data_size: u64,
    /// Its bytes are judged ([`TarCheck::contents`]) before it is written
    /// (a regular file of at most [`MAX_CONTENTS_BYTES`]).
    pub contents_wanted: bool,
}

/// The largest file whose bytes an inspect step may read.
pub const MAX_CONTENTS_BYTES: u64 = 64 << 10;

/// A non-trivial policy decision about one entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub path: String,
    pub rule: String,
    /// `skip`, `strip`, `clamp` or `note`.
    pub action: String,
    pub detail: String,
}

/// The tar check's answer to some bytes.
#[derive(Debug, Default)]
pub struct Progress {
    pub entries: Vec<Entry>,
    pub decisions: Vec<Decision>,
    /// The next stream offset the check needs.
    pub want: u64,
}

/// Why the tar check stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CheckError {
    /// The input breaks a policy rule or is malformed (blames the input).
    #[error("`{path}`: {reason} (rule {rule})")]
    Rejected {
        path: String,
        rule: String,
        reason: String,
    },
    /// The guest trapped or ran out of fuel or memory (blames the input too,
    /// but kept apart).
    #[error("tar check trapped: {0}")]
    Trapped(String),
    /// A host-side failure running the guest.
    #[error("tar check host error: {0}")]
    Host(String),
}

/// A tar check session over one stream: the WebAssembly guest in the
/// service, the native crate in fuzzing.
pub trait TarCheck {
    /// The stream's bytes from `offset` (the last `want`).
    fn feed(&mut self, offset: u64, bytes: &[u8]) -> Result<Progress, CheckError>;
    /// The stream ended after `total` bytes.
    fn finish(&mut self, total: u64) -> Result<Progress, CheckError>;
    /// The bytes of `entry`, one this check returned with
    /// `contents_wanted`, before it is written: whether to write it, and the
    /// decisions about it. Checks that want no contents keep the default.
    fn contents(&mut self, entry: &Entry, _bytes: &[u8]) -> Result<Contents, CheckError> {
        Err(CheckError::Host(format!(
            "judged the contents of `{}`, which it did not ask for",
            crate::core::names::printable(&String::from_utf8_lossy(&entry.path))
        )))
    }
}

/// What [`TarCheck::contents`] says about a file.
#[derive(Debug)]
pub struct Contents {
    pub keep: bool,
    pub decisions: Vec<Decision>,
}

/// What a stream is: a layer, or an image archive whose members are indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Layer,
    Archive,
}
