//! Step `tar-check`: the only tar parser of tarpool.
//!
//! The host streams a tar (a decompressed layer, or an image archive)
//! through a [`Checker`]; the checker returns the entries it found, each
//! with the policy's verdict applied, and where each regular file's data
//! lies in the stream. The host acts only on these entries and copies the
//! data spans itself, so what was checked is exactly what is written.
//!
//! The logic is plain Rust so it can be unit-tested natively; on `wasm32`
//! the crate also exports the `tar-check-step` world of `wit/tarpool.wit`.
//! This code reads untrusted bytes: it never panics on any input, keeps
//! bounded state besides one 128-bit key per distinct path, and every
//! message it returns is one bounded line without control characters.
//!
//! Headers: v7, ustar (with its prefix field), GNU (base-256 numbers, long
//! names and links) and PAX (`x` records; `g` is noted and ignored). GNU
//! sparse files, unknown entry types, ambiguous extension headers and
//! anything after the end-of-archive marker but zeros are refused, and so
//! is whatever other readers read differently: a nonzero size on an entry
//! that carries no data, an extension header without a ustar or GNU magic,
//! a PAX newline that starts a record to readers splitting at newlines.
//! `tests/fuzz/fuzz_targets/tarcheck_vs_tar.rs` compares with tar-rs.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use guest_text::one_line;

mod header;
mod paths;
mod pax;
#[cfg(test)]
mod tests;

use header::{Block, BLOCK};
use paths::{join, normalize, quoted, show, split_last, windows_form, PathError};

/// What the host should do with an entry (mirrors `entry-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Regular,
    Directory,
    Symlink,
    /// `link` is the normalized path of an earlier entry or a lower layer's file.
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// Remove `path` from the lower layers (layer mode only).
    Whiteout,
    /// Hide the lower layers' contents of directory `path` (empty: the
    /// root). Layer mode only.
    Opaque,
}

/// An extended attribute to apply (mirrors `xattr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: String,
    pub value: Vec<u8>,
}

/// One entry to apply (mirrors `entry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Normalized: relative, single `/` separators, no `.`/`..`/empty
    /// components, no trailing `/`. Raw bytes.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky, after the policy.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Symlink target verbatim; hardlink target normalized like `path`.
    pub link: Option<Vec<u8>>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Only those the policy allows.
    pub xattrs: Vec<Xattr>,
    /// Regular files: the data is `data_size` bytes at `data_offset` of the
    /// stream. Zero for every other kind.
    pub data_offset: u64,
    pub data_size: u64,
}

/// What a decision did (mirrors `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Skip,
    Strip,
    Clamp,
    Note,
}

/// A non-trivial policy decision (mirrors `decision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Display form of the entry's path (one line, sanitized).
    pub path: String,
    pub rule: String,
    pub action: Action,
    pub detail: String,
}

/// The input breaks a rule, or is malformed (mirrors `rejection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Display form of the entry's path, or of the previous entry
    /// (`<start>` before the first) when no entry is identified yet.
    pub path: String,
    pub rule: String,
    pub reason: String,
}

/// What to do with a kind of content (mirrors `verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Skip,
    Strip,
    Reject,
}

/// What the stream is (mirrors `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A container layer: whiteouts, metadata and xattr rules apply.
    Layer,
    /// An image archive (docker save, OCI archive): only names, data spans
    /// and link targets matter.
    Archive,
}

/// The tar rules of the policy (mirrors `tar-policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub max_path_bytes: u32,
    pub max_name_bytes: u32,
    pub max_depth: u32,
    pub max_ext_header_bytes: u32,
    pub device_nodes: Verdict,
    pub fifos: Verdict,
    pub setid: Verdict,
    pub xattr_allow: Vec<String>,
    pub other_xattrs: Verdict,
    pub absolute_symlinks: Verdict,
    pub duplicates: Verdict,
    pub max_id: u32,
    pub min_mtime: i64,
    pub max_mtime: i64,
}

impl Default for Policy {
    /// The values of `policies/default.toml`.
    fn default() -> Self {
        Policy {
            max_entries: 10_000_000,
            max_bytes: 64 << 30,
            max_path_bytes: 4096,
            max_name_bytes: 255,
            max_depth: 256,
            max_ext_header_bytes: 1 << 20,
            device_nodes: Verdict::Skip,
            fifos: Verdict::Allow,
            setid: Verdict::Allow,
            xattr_allow: vec!["user.".into(), "security.capability".into()],
            other_xattrs: Verdict::Skip,
            absolute_symlinks: Verdict::Allow,
            duplicates: Verdict::Allow,
            max_id: 4_294_967_294,
            min_mtime: 0,
            max_mtime: 253_402_300_799,
        }
    }
}

/// What one call found (mirrors `progress`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub entries: Vec<Entry>,
    pub decisions: Vec<Decision>,
    /// Offset of the next byte the checker needs: the host may skip data up
    /// to there and must feed from there.
    pub want: u64,
}

/// Rule names (the policy's, see `policies/default.toml`).
mod rule {
    pub const MALFORMED: &str = "malformed";
    pub const TRAILER: &str = "trailer";
    pub const SPARSE: &str = "sparse";
    pub const ENTRY_TYPES: &str = "entry-types";
    pub const PAX_GLOBAL: &str = "pax-global";
    pub const PATHS: &str = "paths";
    pub const WHITEOUTS: &str = "whiteouts";
    pub const HARDLINKS: &str = "hardlinks";
    pub const MAX_EXT: &str = "max-ext-header-bytes";
    pub const MAX_ENTRIES: &str = "max-entries";
    pub const MAX_BYTES: &str = "max-bytes";
    pub const MAX_PATH: &str = "max-path-bytes";
    pub const MAX_NAME: &str = "max-name-bytes";
    pub const MAX_DEPTH: &str = "max-depth";
    pub const MAX_ID: &str = "max-id";
    pub const DEVICES: &str = "device-nodes";
    pub const FIFOS: &str = "fifos";
    pub const SETID: &str = "setid";
    pub const XATTRS: &str = "xattrs";
    pub const ABS_SYMLINKS: &str = "absolute-symlinks";
    pub const DUPLICATES: &str = "duplicates";
    pub const MTIME: &str = "mtime";
}

/// Largest xattr value accepted (Linux `XATTR_SIZE_MAX`).
const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Longest xattr name accepted (Linux `XATTR_NAME_MAX`).
const MAX_XATTR_NAME: usize = 255;
/// Extension payload buffers larger than this are freed after use.
const KEEP_BUF: usize = 64 << 10;

/// Flags of a path key.
const F_ENTRY: u8 = 1; // an entry of this stream has this path
const F_DIR: u8 = 2; // it is a directory (an entry, or implied by one below it)
const F_REG: u8 = 4; // the entry is a regular file
const F_ANC: u8 = 8; // it is the parent of an entry of this stream

type R<T> = Result<T, Rejection>;

fn rej(path: &str, rule: &str, reason: impl AsRef<str>) -> Rejection {
    Rejection {
        path: one_line(path),
        rule: rule.to_string(),
        reason: one_line(reason.as_ref()),
    }
}

/// Which header bytes the checker is consuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `buf` holds the first bytes of the next header block.
    Header,
    /// `buf` collects `size` payload bytes of an extension header; its
    /// padding ends at `until`.
    Ext { flag: u8, size: usize, until: u64 },
    /// Data (and padding) not needed, up to `until`.
    Skip { until: u64, ext: bool },
    /// After the end-of-archive marker: only zeros.
    End,
}

/// Extension headers seen since the last entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<pax::Pax>,
}

impl Pending {
    fn any(&self) -> bool {
        self.long_name.is_some() || self.long_link.is_some() || self.pax.is_some()
    }
}

/// Hasher for the path keys, which are already keyed random hashes.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

/// The streaming tar checker (mirrors the WIT resource `checker`).
pub struct Checker {
    mode: Mode,
    policy: Policy,
    /// Stream offset of the next byte to process.
    pos: u64,
    state: State,
    buf: Vec<u8>,
    pending: Pending,
    /// 128-bit keys of the paths of this stream, with `F_*` flags.
    seen: HashMap<u128, u8, BuildHasherDefault<KeyHasher>>,
    max_keys: usize,
    hashers: (RandomState, RandomState),
    entries: u64,
    bytes: u64,
    /// The last entry's path: display form, and quoted for messages.
    last: String,
    last_q: String,
    out_entries: Vec<Entry>,
    out_decisions: Vec<Decision>,
    failed: Option<Rejection>,
    finished: bool,
}

/// An entry header with its extension headers applied.
struct Raw {
    name: Vec<u8>,
    link: Vec<u8>,
    flag: u8,
    size: u64,
    data_offset: u64,
    pax: pax::Pax,
}

/// Header metadata after parsing (policy not yet applied).
struct Meta {
    mode: u32,
    uid: i128,
    gid: i128,
    mtime: (i64, u32),
}

impl Checker {
    pub fn new(mode: Mode, policy: Policy) -> Checker {
        let max_keys = usize::try_from(policy.max_entries.saturating_mul(2).saturating_add(1024))
            .unwrap_or(usize::MAX);
        Checker {
            mode,
            policy,
            pos: 0,
            state: State::Header,
            buf: Vec::with_capacity(BLOCK),
            pending: Pending::default(),
            seen: HashMap::default(),
            max_keys,
            hashers: (RandomState::new(), RandomState::new()),
            entries: 0,
            bytes: 0,
            last: "<start>".into(),
            last_q: "the start".into(),
            out_entries: Vec::new(),
            out_decisions: Vec::new(),
            failed: None,
            finished: false,
        }
    }

    /// The next bytes of the stream, starting at `offset`: the last `want`
    /// (0 at first), or the end of the previous slice when the host does
    /// not skip (bytes inside a data span are then ignored).
    pub fn feed(&mut self, offset: u64, bytes: &[u8]) -> Result<Progress, Rejection> {
        if let Some(r) = &self.failed {
            return Err(r.clone());
        }
        let r = self.feed_inner(offset, bytes);
        self.conclude(r)
    }

    /// The stream ended after `total` bytes: checks that it ended at an
    /// entry boundary (or after the end-of-archive marker) and that
    /// everything was fed.
    pub fn finish(&mut self, total: u64) -> Result<Progress, Rejection> {
        if let Some(r) = &self.failed {
            return Err(r.clone());
        }
        let r = self.finish_inner(total);
        self.conclude(r)
    }

    fn conclude(&mut self, r: R<()>) -> Result<Progress, Rejection> {
        match r {
            Ok(()) => Ok(Progress {
                entries: std::mem::take(&mut self.out_entries),
                decisions: std::mem::take(&mut self.out_decisions),
                want: self.want(),
            }),
            Err(e) => {
                self.out_entries = Vec::new();
                self.out_decisions = Vec::new();
                self.buf = Vec::new();
                self.seen = HashMap::default();
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn want(&self) -> u64 {
        match self.state {
            State::Skip { until, .. } => until,
            _ => self.pos,
        }
    }

    fn what(&self) -> &'static str {
        match self.mode {
            Mode::Layer => "layer",
            Mode::Archive => "archive",
        }
    }

    fn internal(&self, msg: String) -> Rejection {
        rej(&self.last, rule::MALFORMED, format!("internal: {msg}"))
    }

    fn feed_inner(&mut self, offset: u64, bytes: &[u8]) -> R<()> {
        if self.finished {
            return Err(self.internal("fed after finish".into()));
        }
        let want = self.want();
        if offset != want && offset != self.pos {
            return Err(self.internal(format!("fed at offset {offset}, expected {want}")));
        }
        if offset != self.pos {
            // The host skipped the rest of a data span.
            self.pos = offset;
            self.state = State::Header;
        }
        let end = u64::try_from(bytes.len())
            .ok()
            .and_then(|n| self.pos.checked_add(n));
        if end.is_none() {
            return Err(self.internal("stream longer than 2^64 bytes".into()));
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            rest = self.step(rest)?;
        }
        Ok(())
    }

    fn finish_inner(&mut self, total: u64) -> R<()> {
        if self.finished {
            return Err(self.internal("finish called twice".into()));
        }
        self.finished = true;
        if let State::Skip { until, ext } = self.state {
            if total >= self.pos && total < until {
                let inside = if ext {
                    format!("an extension header after {}", self.last_q)
                } else {
                    self.last_q.clone()
                };
                return Err(rej(
                    &self.last,
                    rule::MALFORMED,
                    format!("{} is truncated inside {inside}", self.what()),
                ));
            }
            if total == until {
                self.pos = until;
                self.state = State::Header;
            }
        }
        if total != self.pos {
            return Err(self.internal(format!(
                "stream ended at {total}, but {} bytes were fed",
                self.pos
            )));
        }
        match self.state {
            State::Header if !self.buf.is_empty() => Err(rej(
                &self.last,
                rule::MALFORMED,
                format!(
                    "{} is truncated inside a header after {}",
                    self.what(),
                    self.last_q
                ),
            )),
            State::Header if self.pending.any() => Err(self.ext_then_end()),
            State::Ext { .. } => Err(rej(
                &self.last,
                rule::MALFORMED,
                format!(
                    "{} is truncated inside an extension header after {}",
                    self.what(),
                    self.last_q
                ),
            )),
            _ => Ok(()),
        }
    }

    fn ext_then_end(&self) -> Rejection {
        rej(
            &self.last,
            rule::MALFORMED,
            format!(
                "an extension header after {} is followed by the end of the {}",
                self.last_q,
                self.what()
            ),
        )
    }

    /// Consumes a prefix of `rest`; returns what is left.
    fn step<'b>(&mut self, rest: &'b [u8]) -> R<&'b [u8]> {
        match self.state {
            State::Skip { until, .. } => {
                let left = until.saturating_sub(self.pos);
                let n = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                self.advance(n);
                if self.pos >= until {
                    self.state = State::Header;
                }
                Ok(rest.get(n..).unwrap_or_default())
            }
            State::End => {
                if rest.iter().any(|b| *b != 0) {
                    return Err(rej(
                        &self.last,
                        rule::TRAILER,
                        format!(
                            "non-zero data after the end of the {} (last entry {})",
                            self.what(),
                            self.last_q
                        ),
                    ));
                }
                self.advance(rest.len());
                Ok(&[])
            }
            State::Header => {
                let n = (BLOCK - self.buf.len()).min(rest.len());
                self.buf
                    .extend_from_slice(rest.get(..n).unwrap_or_default());
                self.advance(n);
                if self.buf.len() == BLOCK {
                    let mut block: Block = [0; BLOCK];
                    block.copy_from_slice(&self.buf);
                    self.buf.clear();
                    self.header(&block)?;
                }
                Ok(rest.get(n..).unwrap_or_default())
            }
            State::Ext { flag, size, until } => {
                let n = size.saturating_sub(self.buf.len()).min(rest.len());
                self.buf
                    .extend_from_slice(rest.get(..n).unwrap_or_default());
                self.advance(n);
                if self.buf.len() >= size {
                    let payload = std::mem::take(&mut self.buf);
                    self.state = self.after(until, true);
                    self.ext_payload(flag, &payload)?;
                    self.reuse(payload);
                }
                Ok(rest.get(n..).unwrap_or_default())
            }
        }
    }

    /// The position never overflows: `feed_inner` checked the slice's end.
    fn advance(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n as u64);
    }

    fn reuse(&mut self, mut payload: Vec<u8>) {
        if payload.capacity() <= KEEP_BUF {
            payload.clear();
            self.buf = payload;
        } else {
            self.buf = Vec::with_capacity(BLOCK);
        }
    }

    /// The state after a payload whose padding ends at `until`.
    fn after(&self, until: u64, ext: bool) -> State {
        if until > self.pos {
            State::Skip { until, ext }
        } else {
            State::Header
        }
    }

    fn malformed(&self, msg: impl AsRef<str>) -> Rejection {
        rej(&self.last, rule::MALFORMED, msg)
    }

    fn decide(&mut self, path: &str, rule: &str, action: Action, detail: impl AsRef<str>) {
        self.out_decisions.push(Decision {
            path: one_line(path),
            rule: rule.to_string(),
            action,
            detail: one_line(detail.as_ref()),
        });
    }

    /// End of a payload of `size` bytes starting at the current position,
    /// rounded up to a whole block.
    fn padded_end(&self, size: u64, disp: &str) -> R<u64> {
        size.div_ceil(BLOCK as u64)
            .checked_mul(BLOCK as u64)
            .and_then(|s| self.pos.checked_add(s))
            .ok_or_else(|| rej(disp, rule::MALFORMED, "size overflows the stream offset"))
    }

    /// One complete header block; the position is just after it.
    fn header(&mut self, block: &Block) -> R<()> {
        if block.iter().all(|b| *b == 0) {
            if self.pending.any() {
                return Err(self.ext_then_end());
            }
            // End-of-archive marker (or its first block): only zeros may
            // follow. Readers that stop at one zero block and readers that
            // skip zero blocks must not see different archives.
            self.state = State::End;
            return Ok(());
        }
        if !header::checksum_ok(block) {
            return Err(self.malformed(format!(
                "bad header checksum at offset {} (after {})",
                self.pos.saturating_sub(BLOCK as u64),
                self.last_q
            )));
        }
        let flag = block[header::TYPEFLAG];
        let size = match header::numeric(header::field(block, header::SIZE)) {
            Some(s) if s >= 0 => u64::try_from(s).map_err(|_| {
                self.malformed(format!("size field overflows after {}", self.last_q))
            })?,
            Some(_) => {
                return Err(self.malformed(format!("negative size field after {}", self.last_q)))
            }
            None => return Err(self.malformed(format!("invalid size field after {}", self.last_q))),
        };
        match flag {
            b'L' | b'K' | b'x' | b'g' => self.ext_header(flag, size, block),
            _ => self.entry(block, size),
        }
    }

    fn ext_header(&mut self, flag: u8, size: u64, block: &Block) -> R<()> {
        let what = match flag {
            b'L' => "GNU long name",
            b'K' => "GNU long link",
            b'x' => "PAX extended header",
            _ => "PAX global header",
        };
        let dup = match flag {
            b'L' => self.pending.long_name.is_some(),
            b'K' => self.pending.long_link.is_some(),
            b'x' => self.pending.pax.is_some(),
            _ => false,
        };
        if dup {
            return Err(self.malformed(format!(
                "duplicate extension headers (two {what}s) after {}",
                self.last_q
            )));
        }
        if !header::standard_magic(block) {
            // Readers that go by the magic read it as an entry.
            return Err(self.malformed(format!(
                "{what} without a ustar or GNU magic after {}",
                self.last_q
            )));
        }
        if flag == b'g' && self.pending.any() {
            return Err(self.malformed(format!(
                "PAX global header between an extension header and its entry after {}",
                self.last_q
            )));
        }
        if self.pending.pax.as_ref().is_some_and(|p| p.size.is_some()) {
            // Readers disagree on whether a PAX size applies to a GNU
            // long-name header that follows it.
            return Err(self.malformed(format!(
                "PAX size record followed by a {what} after {}",
                self.last_q
            )));
        }
        if size > u64::from(self.policy.max_ext_header_bytes) {
            return Err(rej(
                &self.last,
                rule::MAX_EXT,
                format!(
                    "{what} of {size} bytes after {} is over the {}-byte limit",
                    self.last_q, self.policy.max_ext_header_bytes
                ),
            ));
        }
        if flag == b'g' {
            let name = header::name(block);
            self.decide(
                &show(&name),
                rule::PAX_GLOBAL,
                Action::Note,
                "PAX global header ignored",
            );
        }
        let until = self.padded_end(size, &self.last)?;
        let size = usize::try_from(size)
            .map_err(|_| self.malformed(format!("{what} too large for memory")))?;
        if size == 0 {
            return self.ext_payload(flag, &[]);
        }
        self.buf.clear();
        self.state = State::Ext { flag, size, until };
        Ok(())
    }

    fn ext_payload(&mut self, flag: u8, payload: &[u8]) -> R<()> {
        match flag {
            b'L' | b'K' => {
                let what = if flag == b'L' { "name" } else { "link" };
                let end = payload.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                let v = payload.get(..end).unwrap_or_default();
                if v.is_empty() {
                    return Err(
                        self.malformed(format!("empty GNU long {what} after {}", self.last_q))
                    );
                }
                if v.contains(&0) {
                    return Err(self.malformed(format!(
                        "GNU long {what} contains a NUL byte after {}",
                        self.last_q
                    )));
                }
                if flag == b'L' {
                    self.pending.long_name = Some(v.to_vec());
                } else {
                    self.pending.long_link = Some(v.to_vec());
                }
                Ok(())
            }
            _ => {
                let global = flag == b'g';
                match pax::parse(payload, global) {
                    Ok(p) => {
                        if !global {
                            self.pending.pax = Some(p);
                        }
                        Ok(())
                    }
                    Err(pax::PaxError::Sparse) => Err(rej(
                        &self.last,
                        rule::SPARSE,
                        format!("GNU sparse files are not supported (after {})", self.last_q),
                    )),
                    Err(pax::PaxError::Malformed(m)) => {
                        Err(self.malformed(format!("{m} after {}", self.last_q)))
                    }
                }
            }
        }
    }

    /// An entry header (not an extension): applies its extension headers,
    /// sets up the data skip, then checks it.
    fn entry(&mut self, block: &Block, hdr_size: u64) -> R<()> {
        let pending = std::mem::take(&mut self.pending);
        let pax = pending.pax.unwrap_or_default();
        let name = match (&pax.path, pending.long_name) {
            (Some(_), Some(_)) => {
                return Err(self.malformed(format!(
                    "both a PAX path and a GNU long name after {}",
                    self.last_q
                )))
            }
            (Some(p), None) => p.clone(),
            (None, Some(l)) => l,
            (None, None) if header::nonstandard_prefix(block) => {
                // Readers that go by the version ignore the prefix.
                return Err(self.malformed(format!(
                    "ustar prefix field with a version other than 00 after {}",
                    self.last_q
                )));
            }
            (None, None) => header::name(block),
        };
        self.last = show(&name);
        self.last_q = quoted(&name);
        let link = match (&pax.linkpath, pending.long_link) {
            (Some(_), Some(_)) => {
                return Err(self.malformed("both a PAX linkpath and a GNU long link"))
            }
            (Some(p), None) => p.clone(),
            (None, Some(l)) => l,
            (None, None) => header::link_name(block),
        };
        let size = match pax.size {
            Some(ps) if hdr_size != 0 && hdr_size != ps => {
                return Err(self.malformed("PAX size disagrees with the header size"))
            }
            Some(ps) => ps,
            None => hdr_size,
        };
        let data_offset = self.pos;
        let until = self.padded_end(size, &self.last)?;
        self.state = self.after(until, false);
        self.entries = self.entries.saturating_add(1);
        if self.entries > self.policy.max_entries {
            return Err(rej(
                &self.last,
                rule::MAX_ENTRIES,
                format!(
                    "{} has more than {} entries",
                    self.what(),
                    self.policy.max_entries
                ),
            ));
        }
        let raw = Raw {
            name,
            link,
            flag: block[header::TYPEFLAG],
            size,
            data_offset,
            pax,
        };
        self.check(block, raw)
    }

    fn meta(&self, block: &Block, pax: &pax::Pax) -> R<Meta> {
        let num = |f: (usize, usize), what: &str| {
            header::numeric(header::field(block, f))
                .ok_or_else(|| self.malformed(format!("invalid {what} field")))
        };
        let mode = num(header::MODE, "mode")?;
        if mode < 0 {
            return Err(self.malformed("negative mode field"));
        }
        let mode = (mode & 0o7777) as u32;
        let uid = match pax.uid {
            Some(u) => i128::from(u),
            None => num(header::UID, "uid")?,
        };
        let gid = match pax.gid {
            Some(g) => i128::from(g),
            None => num(header::GID, "gid")?,
        };
        let mtime = match pax.mtime {
            Some(t) => t,
            None => {
                let t = num(header::MTIME, "mtime")?;
                (
                    i64::try_from(t).unwrap_or(if t < 0 { i64::MIN } else { i64::MAX }),
                    0,
                )
            }
        };
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
        })
    }

    /// 128-bit keyed hash of a normalized path.
    fn key(&self, p: &[u8]) -> u128 {
        (u128::from(self.hashers.0.hash_one(p)) << 64) | u128::from(self.hashers.1.hash_one(p))
    }

    fn flags(&self, p: &[u8]) -> u8 {
        self.seen.get(&self.key(p)).copied().unwrap_or(0)
    }

    /// Records directory `dir` and its ancestors as existing in this stream.
    fn mark_dirs(&mut self, mut dir: &[u8]) {
        while !dir.is_empty() {
            let k = self.key(dir);
            let f = self.seen.entry(k).or_insert(0);
            if *f & F_ANC != 0 {
                break;
            }
            *f |= F_ANC;
            if *f & F_ENTRY == 0 {
                *f |= F_DIR;
            }
            dir = split_last(dir).0;
        }
    }

    fn check_keys(&self) -> R<()> {
        if self.seen.len() > self.max_keys {
            return Err(rej(
                &self.last,
                rule::MAX_ENTRIES,
                format!(
                    "{} names more than {} distinct paths (entries and their directories)",
                    self.what(),
                    self.max_keys
                ),
            ));
        }
        Ok(())
    }

    /// Normalizes a path with the policy's limits.
    fn norm(&self, raw: &[u8], disp: &str, dotdot_rule: &str, what: &str) -> R<Vec<u8>> {
        normalize(raw, self.policy.max_name_bytes, self.policy.max_depth).map_err(|e| match e {
            PathError::DotDot => rej(
                disp,
                dotdot_rule,
                format!("{what} contains a `..` component"),
            ),
            PathError::NameTooLong => rej(
                disp,
                rule::MAX_NAME,
                format!(
                    "{what} has a component longer than {} bytes",
                    self.policy.max_name_bytes
                ),
            ),
            PathError::TooDeep => rej(
                disp,
                rule::MAX_DEPTH,
                format!(
                    "{what} is nested more than {} levels deep",
                    self.policy.max_depth
                ),
            ),
        })
    }

    fn check(&mut self, block: &Block, raw: Raw) -> R<()> {
        let disp = self.last.clone();
        let layer = self.mode == Mode::Layer;
        let kind = match raw.flag {
            b'0' | b'7' => EntryKind::Regular,
            // Pre-POSIX archives mark directories with a trailing slash.
            b'\0' if raw.name.ends_with(b"/") => EntryKind::Directory,
            b'\0' => EntryKind::Regular,
            b'5' => EntryKind::Directory,
            b'2' => EntryKind::Symlink,
            b'1' => EntryKind::Hardlink,
            b'3' => EntryKind::CharDevice,
            b'4' => EntryKind::BlockDevice,
            b'6' => EntryKind::Fifo,
            b'S' => {
                return Err(rej(
                    &disp,
                    rule::SPARSE,
                    "GNU sparse files are not supported",
                ))
            }
            b => {
                let shown = if b.is_ascii_graphic() {
                    format!("'{}'", char::from(b))
                } else {
                    format!("0x{b:02x}")
                };
                return Err(rej(
                    &disp,
                    rule::ENTRY_TYPES,
                    format!("unsupported entry type {shown}"),
                ));
            }
        };

        // Size. Only regular files carry data: whether the size of any
        // other entry skips data is where readers disagree (GNU tar and
        // tar-rs skip it, Go's archive/tar does not), like a PAX/ustar
        // size conflict. GNU tar writes 0 for these.
        if kind != EntryKind::Regular && raw.size != 0 {
            let what = match kind {
                EntryKind::Directory => "directory",
                EntryKind::Symlink => "symlink",
                EntryKind::Hardlink => "hardlink",
                EntryKind::CharDevice => "character device",
                EntryKind::BlockDevice => "block device",
                _ => "FIFO",
            };
            return Err(rej(
                &disp,
                rule::MALFORMED,
                format!(
                    "{what} with a nonzero size {}: only regular files carry data",
                    raw.size
                ),
            ));
        }

        // Path.
        let max_path = usize::try_from(self.policy.max_path_bytes).unwrap_or(usize::MAX);
        if raw.name.len() > max_path {
            return Err(rej(
                &disp,
                rule::MAX_PATH,
                format!("path is longer than {} bytes", self.policy.max_path_bytes),
            ));
        }
        if let Some(why) = windows_form(&raw.name) {
            return Err(rej(&disp, rule::PATHS, why));
        }
        let path = self.norm(&raw.name, &disp, rule::PATHS, "path")?;
        if kind == EntryKind::Regular && raw.name.ends_with(b"/") {
            return Err(rej(&disp, rule::PATHS, "regular file name ends with `/`"));
        }
        if path.is_empty() {
            if kind == EntryKind::Directory {
                self.decide(
                    &disp,
                    rule::PATHS,
                    Action::Skip,
                    "entry for the root skipped",
                );
                return Ok(());
            }
            return Err(rej(
                &disp,
                rule::PATHS,
                "entry for the root is not a directory",
            ));
        }
        if raw.name.starts_with(b"/") {
            self.decide(
                &disp,
                rule::PATHS,
                Action::Note,
                "absolute path confined to the root",
            );
        }

        let meta = self.meta(block, &raw.pax)?;
        let (parent, base) = split_last(&path);

        // Whiteouts.
        let mut out_kind = kind;
        let mut out_path = path.clone();
        if layer {
            if parent.split(|b| *b == b'/').any(|c| c.starts_with(b".wh.")) {
                return Err(rej(
                    &disp,
                    rule::WHITEOUTS,
                    "whiteout prefix `.wh.` in a directory name",
                ));
            }
            if base.starts_with(b".wh.") {
                if kind != EntryKind::Regular || raw.size != 0 || !raw.pax.xattrs.is_empty() {
                    return Err(rej(
                        &disp,
                        rule::WHITEOUTS,
                        "a whiteout must be an empty regular file without xattrs",
                    ));
                }
                if base == b".wh..wh..opq" {
                    out_kind = EntryKind::Opaque;
                    out_path = parent.to_vec();
                    if parent.is_empty() {
                        self.decide(
                            &disp,
                            rule::WHITEOUTS,
                            Action::Note,
                            "opaque marker at the root hides every lower layer",
                        );
                    }
                } else if base.starts_with(b".wh..wh.") {
                    return Err(rej(
                        &disp,
                        rule::WHITEOUTS,
                        "unsupported AUFS whiteout meta-file",
                    ));
                } else {
                    let victim = base.get(4..).unwrap_or_default();
                    if victim.is_empty() || victim == b"." || victim == b".." {
                        return Err(rej(&disp, rule::WHITEOUTS, "invalid whiteout name"));
                    }
                    let vpath = join(parent, victim);
                    if self.flags(&vpath) & (F_ENTRY | F_ANC) != 0 {
                        return Err(rej(
                            &disp,
                            rule::WHITEOUTS,
                            format!(
                                "whiteout and entry for {} in the same layer",
                                quoted(&vpath)
                            ),
                        ));
                    }
                    out_kind = EntryKind::Whiteout;
                    out_path = vpath;
                }
            }
        }

        // Devices and FIFOs.
        let (mut dev_major, mut dev_minor) = (0u32, 0u32);
        if matches!(
            kind,
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo
        ) {
            if !layer {
                return Ok(()); // not a member of an image archive
            }
            let (verdict, r, what) = if kind == EntryKind::Fifo {
                (self.policy.fifos, rule::FIFOS, "FIFO")
            } else {
                let dev = |f: (usize, usize)| -> R<u32> {
                    let v = header::numeric(header::field(block, f)).ok_or_else(|| {
                        rej(&disp, rule::MALFORMED, "invalid device number field")
                    })?;
                    u32::try_from(v).map_err(|_| {
                        rej(
                            &disp,
                            rule::DEVICES,
                            format!("device number {v} is out of range"),
                        )
                    })
                };
                dev_major = dev(header::DEVMAJOR)?;
                dev_minor = dev(header::DEVMINOR)?;
                (self.policy.device_nodes, rule::DEVICES, "device node")
            };
            match verdict {
                Verdict::Allow => {}
                Verdict::Skip | Verdict::Strip => {
                    self.decide(&disp, r, Action::Skip, format!("{what} skipped"));
                    return Ok(());
                }
                Verdict::Reject => {
                    return Err(rej(&disp, r, format!("{what}s are not allowed")));
                }
            }
        }

        // Links.
        let mut link = None;
        match kind {
            EntryKind::Symlink => {
                if raw.link.is_empty() {
                    return Err(rej(&disp, rule::MALFORMED, "symlink with an empty target"));
                }
                if raw.link.len() > max_path {
                    return Err(rej(
                        &disp,
                        rule::MAX_PATH,
                        format!(
                            "symlink target is longer than {} bytes",
                            self.policy.max_path_bytes
                        ),
                    ));
                }
                if layer && raw.link.starts_with(b"/") {
                    match self.policy.absolute_symlinks {
                        Verdict::Allow | Verdict::Strip => {}
                        Verdict::Skip => {
                            self.decide(
                                &disp,
                                rule::ABS_SYMLINKS,
                                Action::Skip,
                                format!("absolute symlink to {} skipped", quoted(&raw.link)),
                            );
                            return Ok(());
                        }
                        Verdict::Reject => {
                            return Err(rej(
                                &disp,
                                rule::ABS_SYMLINKS,
                                format!("absolute symlink target {}", quoted(&raw.link)),
                            ))
                        }
                    }
                }
                link = Some(raw.link.clone());
            }
            EntryKind::Hardlink => {
                link = Some(self.hardlink_target(&raw.link, &path, &disp)?);
            }
            _ => {}
        }

        // Duplicates.
        let k = self.key(&path);
        let prev = self.seen.get(&k).copied().unwrap_or(0);
        if prev & F_ENTRY != 0 {
            if !layer && (prev & F_REG != 0 || kind == EntryKind::Regular) {
                return Err(rej(
                    &disp,
                    rule::DUPLICATES,
                    "member appears twice in the archive",
                ));
            }
            match self.policy.duplicates {
                Verdict::Reject => {
                    return Err(rej(
                        &disp,
                        rule::DUPLICATES,
                        "path appears twice in the stream",
                    ))
                }
                _ => self.decide(
                    &disp,
                    rule::DUPLICATES,
                    Action::Note,
                    "path appears again; the later entry wins",
                ),
            }
        }

        // Size.
        if kind == EntryKind::Regular {
            self.bytes = self.bytes.saturating_add(raw.size);
            if self.bytes > self.policy.max_bytes {
                return Err(rej(
                    &disp,
                    rule::MAX_BYTES,
                    format!(
                        "{} holds more than {} bytes of files",
                        self.what(),
                        self.policy.max_bytes
                    ),
                ));
            }
        }

        // Metadata.
        let mut entry = Entry {
            path: out_path,
            kind: out_kind,
            mode: meta.mode,
            uid: 0,
            gid: 0,
            mtime_sec: meta.mtime.0,
            mtime_nsec: meta.mtime.1,
            link,
            dev_major,
            dev_minor,
            xattrs: Vec::new(),
            data_offset: 0,
            data_size: 0,
        };
        if out_kind == EntryKind::Regular {
            entry.data_offset = raw.data_offset;
            entry.data_size = raw.size;
        }
        if layer {
            entry.uid = self.id(meta.uid, "uid", &disp)?;
            entry.gid = self.id(meta.gid, "gid", &disp)?;
            self.clamp_mtime(&mut entry, &disp);
            if out_kind == EntryKind::Regular {
                entry.mode = self.setid(entry.mode, &disp)?;
            }
            entry.xattrs = self.xattrs(&raw.pax.xattrs, out_kind, &disp)?;
        } else {
            entry.uid = u32::try_from(meta.uid).unwrap_or(0);
            entry.gid = u32::try_from(meta.gid).unwrap_or(0);
        }

        // Bookkeeping.
        let kind_flags = match kind {
            EntryKind::Directory => F_DIR,
            EntryKind::Regular => F_REG,
            _ => 0,
        };
        let f = self.seen.entry(k).or_insert(0);
        *f = (*f & F_ANC) | F_ENTRY | kind_flags;
        match out_kind {
            EntryKind::Opaque => self.mark_dirs(&entry.path),
            _ => self.mark_dirs(parent),
        }
        self.check_keys()?;
        self.out_entries.push(entry);
        Ok(())
    }

    fn hardlink_target(&mut self, raw: &[u8], path: &[u8], disp: &str) -> R<Vec<u8>> {
        if raw.is_empty() {
            return Err(rej(disp, rule::MALFORMED, "hardlink with an empty target"));
        }
        if raw.len() > usize::try_from(self.policy.max_path_bytes).unwrap_or(usize::MAX) {
            return Err(rej(
                disp,
                rule::MAX_PATH,
                format!(
                    "hardlink target is longer than {} bytes",
                    self.policy.max_path_bytes
                ),
            ));
        }
        if let Some(why) = windows_form(raw) {
            return Err(rej(
                disp,
                rule::HARDLINKS,
                format!("hardlink target: {why}"),
            ));
        }
        let target = self.norm(raw, disp, rule::HARDLINKS, "hardlink target")?;
        let tq = quoted(raw);
        if target.is_empty() {
            return Err(rej(disp, rule::HARDLINKS, "hardlink to the root"));
        }
        if self.mode == Mode::Layer && target.split(|b| *b == b'/').any(|c| c.starts_with(b".wh."))
        {
            return Err(rej(
                disp,
                rule::WHITEOUTS,
                format!("hardlink target {tq} is a whiteout name"),
            ));
        }
        if target == path {
            return Err(rej(disp, rule::HARDLINKS, "hardlink to itself"));
        }
        if self.flags(&target) & F_DIR != 0 {
            return Err(rej(
                disp,
                rule::HARDLINKS,
                format!("hardlink target {tq} is a directory"),
            ));
        }
        if raw.starts_with(b"/") {
            self.decide(
                disp,
                rule::HARDLINKS,
                Action::Note,
                format!("absolute hardlink target {tq} confined to the root"),
            );
        }
        Ok(target)
    }

    fn id(&self, v: i128, what: &str, disp: &str) -> R<u32> {
        // u32::MAX is (uid_t)-1, "no change" to chown(2) (catalogue G75).
        match u32::try_from(v) {
            Ok(v) if v != u32::MAX && v <= self.policy.max_id => Ok(v),
            _ => Err(rej(
                disp,
                rule::MAX_ID,
                format!("{what} {v} is out of range (max {})", self.policy.max_id),
            )),
        }
    }

    fn clamp_mtime(&mut self, e: &mut Entry, disp: &str) {
        let (min, max) = (self.policy.min_mtime, self.policy.max_mtime);
        let t = e.mtime_sec;
        let to = if t < min {
            min
        } else if t > max {
            max
        } else {
            return;
        };
        e.mtime_sec = to;
        e.mtime_nsec = 0;
        self.decide(
            disp,
            rule::MTIME,
            Action::Clamp,
            format!("mtime {t} clamped to {to}"),
        );
    }

    fn setid(&mut self, mode: u32, disp: &str) -> R<u32> {
        let bits = mode & 0o6000;
        if bits == 0 {
            return Ok(mode);
        }
        let what = match bits {
            0o4000 => "setuid bit",
            0o2000 => "setgid bit",
            _ => "setuid and setgid bits",
        };
        match self.policy.setid {
            Verdict::Allow | Verdict::Skip => {
                self.decide(disp, rule::SETID, Action::Note, format!("{what} kept"));
                Ok(mode)
            }
            Verdict::Strip => {
                self.decide(disp, rule::SETID, Action::Strip, format!("{what} stripped"));
                Ok(mode & !0o6000)
            }
            Verdict::Reject => Err(rej(disp, rule::SETID, format!("file has the {what}"))),
        }
    }

    fn xattr_allowed(&self, name: &str) -> bool {
        self.policy
            .xattr_allow
            .iter()
            .any(|a| a == name || (a.ends_with('.') && name.starts_with(a.as_str())))
    }

    /// Drops an xattr the policy does not apply (or refuses it).
    fn other_xattr(&mut self, disp: &str, name: &str, why: &str) -> R<()> {
        let q = guest_text::quote(name, 80);
        match self.policy.other_xattrs {
            Verdict::Reject => Err(rej(disp, rule::XATTRS, format!("xattr {q} {why}"))),
            _ => {
                self.decide(
                    disp,
                    rule::XATTRS,
                    Action::Strip,
                    format!("xattr {q} stripped ({why})"),
                );
                Ok(())
            }
        }
    }

    fn xattrs(
        &mut self,
        recs: &[(Vec<u8>, Vec<u8>)],
        kind: EntryKind,
        disp: &str,
    ) -> R<Vec<Xattr>> {
        let mut kept = Vec::new();
        for (name, value) in recs {
            let Ok(name) = std::str::from_utf8(name) else {
                return Err(rej(
                    disp,
                    rule::XATTRS,
                    format!("xattr name {} is not UTF-8", quoted(name)),
                ));
            };
            if name.is_empty() || name.len() > MAX_XATTR_NAME {
                return Err(rej(
                    disp,
                    rule::XATTRS,
                    format!("invalid xattr name {}", guest_text::quote(name, 80)),
                ));
            }
            if value.len() > MAX_XATTR_VALUE {
                return Err(rej(
                    disp,
                    rule::XATTRS,
                    format!(
                        "xattr {} value is larger than 64 KiB",
                        guest_text::quote(name, 80)
                    ),
                ));
            }
            // trusted.* (overlayfs' own trusted.overlay.* included) and
            // user.overlay.* (under `userxattr` mounts) could forge
            // whiteouts or redirects: never applied, whatever the list.
            if name.starts_with("trusted.") || name.starts_with("user.overlay.") {
                self.other_xattr(disp, name, "is never applied")?;
                continue;
            }
            if !self.xattr_allowed(name) {
                self.other_xattr(disp, name, "is not allowed")?;
                continue;
            }
            let mut value = value.clone();
            if name == "security.capability" {
                let Some((v, converted)) = pax::capability_v2(&value) else {
                    return Err(rej(
                        disp,
                        rule::XATTRS,
                        "security.capability is malformed or a namespaced v3 capability",
                    ));
                };
                if converted {
                    self.decide(
                        disp,
                        rule::XATTRS,
                        Action::Note,
                        "v3 security.capability converted to v2",
                    );
                }
                value = v;
            }
            kept.push(Xattr {
                name: name.to_string(),
                value,
            });
        }
        let on = match kind {
            EntryKind::Regular | EntryKind::Directory => return Ok(kept),
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            _ => "special file",
        };
        for x in &kept {
            self.decide(
                disp,
                rule::XATTRS,
                Action::Note,
                format!(
                    "xattr {} dropped (on a {on})",
                    guest_text::quote(&x.name, 80)
                ),
            );
        }
        Ok(Vec::new())
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "../../wit", world: "tar-check-step" });

    use std::cell::RefCell;

    use exports::tarpool::steps::tar_check as wit;

    struct Step;

    impl wit::Guest for Step {
        type Checker = CheckerRes;
    }

    struct CheckerRes(RefCell<super::Checker>);

    fn verdict(v: wit::Verdict) -> super::Verdict {
        match v {
            wit::Verdict::Allow => super::Verdict::Allow,
            wit::Verdict::Skip => super::Verdict::Skip,
            wit::Verdict::Strip => super::Verdict::Strip,
            wit::Verdict::Reject => super::Verdict::Reject,
        }
    }

    fn kind(k: super::EntryKind) -> wit::EntryKind {
        match k {
            super::EntryKind::Regular => wit::EntryKind::Regular,
            super::EntryKind::Directory => wit::EntryKind::Directory,
            super::EntryKind::Symlink => wit::EntryKind::Symlink,
            super::EntryKind::Hardlink => wit::EntryKind::Hardlink,
            super::EntryKind::CharDevice => wit::EntryKind::CharDevice,
            super::EntryKind::BlockDevice => wit::EntryKind::BlockDevice,
            super::EntryKind::Fifo => wit::EntryKind::Fifo,
            super::EntryKind::Whiteout => wit::EntryKind::Whiteout,
            super::EntryKind::Opaque => wit::EntryKind::Opaque,
        }
    }

    fn action(a: super::Action) -> wit::Action {
        match a {
            super::Action::Skip => wit::Action::Skip,
            super::Action::Strip => wit::Action::Strip,
            super::Action::Clamp => wit::Action::Clamp,
            super::Action::Note => wit::Action::Note,
        }
    }

    fn progress(p: super::Progress) -> wit::Progress {
        wit::Progress {
            entries: p
                .entries
                .into_iter()
                .map(|e| wit::Entry {
                    path: e.path,
                    kind: kind(e.kind),
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    mtime_sec: e.mtime_sec,
                    mtime_nsec: e.mtime_nsec,
                    link: e.link,
                    dev_major: e.dev_major,
                    dev_minor: e.dev_minor,
                    xattrs: e
                        .xattrs
                        .into_iter()
                        .map(|x| wit::Xattr {
                            name: x.name,
                            value: x.value,
                        })
                        .collect(),
                    data_offset: e.data_offset,
                    data_size: e.data_size,
                })
                .collect(),
            decisions: p
                .decisions
                .into_iter()
                .map(|d| wit::Decision {
                    path: d.path,
                    rule: d.rule,
                    action: action(d.action),
                    detail: d.detail,
                })
                .collect(),
            want: p.want,
        }
    }

    fn rejection(r: super::Rejection) -> wit::Rejection {
        wit::Rejection {
            path: r.path,
            rule: r.rule,
            reason: r.reason,
        }
    }

    impl wit::GuestChecker for CheckerRes {
        fn new(mode: wit::Mode, policy: wit::TarPolicy) -> Self {
            let mode = match mode {
                wit::Mode::Layer => super::Mode::Layer,
                wit::Mode::Archive => super::Mode::Archive,
            };
            let policy = super::Policy {
                max_entries: policy.max_entries,
                max_bytes: policy.max_bytes,
                max_path_bytes: policy.max_path_bytes,
                max_name_bytes: policy.max_name_bytes,
                max_depth: policy.max_depth,
                max_ext_header_bytes: policy.max_ext_header_bytes,
                device_nodes: verdict(policy.device_nodes),
                fifos: verdict(policy.fifos),
                setid: verdict(policy.setid),
                xattr_allow: policy.xattr_allow,
                other_xattrs: verdict(policy.other_xattrs),
                absolute_symlinks: verdict(policy.absolute_symlinks),
                duplicates: verdict(policy.duplicates),
                max_id: policy.max_id,
                min_mtime: policy.min_mtime,
                max_mtime: policy.max_mtime,
            };
            CheckerRes(RefCell::new(super::Checker::new(mode, policy)))
        }

        fn feed(&self, offset: u64, bytes: Vec<u8>) -> Result<wit::Progress, wit::Rejection> {
            self.0
                .borrow_mut()
                .feed(offset, &bytes)
                .map(progress)
                .map_err(rejection)
        }

        fn finish(&self, total: u64) -> Result<wit::Progress, wit::Rejection> {
            self.0
                .borrow_mut()
                .finish(total)
                .map(progress)
                .map_err(rejection)
        }
    }

    export!(Step);
}
