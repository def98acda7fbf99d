//! The entry-by-entry apply of a checked tar stream: the layer's bytes are
//! fed to the tar check, and each entry it returns is dispatched, with the
//! data spans it names copied into the files as the stream passes.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use rustix::fd::BorrowedFd;
use rustix::fs as rfs;

use super::create::OpenFile;
use super::errors::{check_bug, cstr};
use super::meta::Meta;
use super::names::{check_normalized, show, split_last};
use super::view::{Entry, EntryKind, TarCheck, MAX_CONTENTS_BYTES};
use super::{read_full, Applier, ApplyError, ApplyStats, ENTRIES_SEEN};

/// Decompressed bytes read (and fed to the check) at a time.
const CHUNK: usize = 1 << 20;

/// Applies one uncompressed layer tar stream onto the directory `root` (an
/// O_DIRECTORY fd), as `check` (a fresh tar check session in layer mode)
/// sees it. Every byte of `layer` is read (the caller hashes the stream).
pub fn apply_layer<R: Read>(
    root: BorrowedFd<'_>,
    mut layer: R,
    check: &mut dyn TarCheck,
) -> Result<ApplyStats, ApplyError> {
    let mut ap = Applier::new(root);
    let mut buf = vec![0u8; CHUNK];
    let mut base: u64 = 0;
    let mut want: u64 = 0;
    let mut queue: VecDeque<Entry> = VecDeque::new();
    let mut file: Option<Data> = None;
    loop {
        let n = read_full(&mut layer, &mut buf).map_err(|e| match e.kind() {
            // The decoder's verdict on the bytes (or the decompression cap).
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                ApplyError::Input(format!("corrupt layer data after `{}`: {e}", ap.last))
            }
            _ => ApplyError::Io {
                context: format!("reading layer after `{}`", ap.last),
                source: e,
            },
        })?;
        if n == 0 {
            break;
        }
        let end = base + n as u64;
        if want < end {
            if want < base {
                return Err(check_bug(format!("asked for offset {want} after {base}")));
            }
            let from = (want - base) as usize;
            let t = std::time::Instant::now();
            let p = check.feed(want, &buf[from..n]);
            ap.stats.check_ns += t.elapsed().as_nanos() as u64;
            let p = p.map_err(ApplyError::Check)?;
            if p.want < end {
                return Err(check_bug(format!("wants offset {} below {end}", p.want)));
            }
            want = p.want;
            ap.decisions(p.decisions);
            ENTRIES_SEEN.fetch_add(p.entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
            queue.extend(p.entries);
        }
        ap.consume(&buf[..n], base, &mut queue, &mut file, check)?;
        base = end;
    }
    let t = std::time::Instant::now();
    let p = check.finish(base);
    ap.stats.check_ns += t.elapsed().as_nanos() as u64;
    let p = p.map_err(ApplyError::Check)?;
    ap.decisions(p.decisions);
    queue.extend(p.entries);
    ap.consume(&[], base, &mut queue, &mut file, check)?;
    if file.is_some() || !queue.is_empty() {
        return Err(check_bug("returned data past the end of the stream".into()));
    }
    ap.finish()
}

/// Where a regular file's data goes as the stream passes: into the file,
/// or held in memory until the tar check has judged its bytes.
pub(super) enum Data {
    File(OpenFile),
    Held {
        entry: Entry,
        disp: String,
        bytes: Vec<u8>,
        next: u64,
        end: u64,
    },
}

impl Data {
    fn span(&self) -> (u64, u64) {
        match self {
            Data::File(f) => (f.next, f.end),
            Data::Held { next, end, .. } => (*next, *end),
        }
    }

    /// The next data bytes of the file.
    fn take(&mut self, bytes: &[u8]) -> Result<(), ApplyError> {
        match self {
            Data::File(f) => write(f, bytes)?,
            Data::Held {
                bytes: held, next, ..
            } => {
                held.extend_from_slice(bytes);
                *next += bytes.len() as u64;
            }
        }
        Ok(())
    }
}

/// The next data bytes of an open file.
fn write(f: &mut OpenFile, bytes: &[u8]) -> Result<(), ApplyError> {
    f.file.write_all(bytes).map_err(|e| ApplyError::Io {
        context: format!("`{}`: writing file", f.disp),
        source: e,
    })?;
    f.next += bytes.len() as u64;
    Ok(())
}

impl Applier<'_> {
    /// Applies the entries in `queue` and copies the data spans that lie in
    /// `chunk` (stream bytes from `base`); stops at a file whose data goes
    /// on past the chunk.
    pub(super) fn consume(
        &mut self,
        chunk: &[u8],
        base: u64,
        queue: &mut VecDeque<Entry>,
        file: &mut Option<Data>,
        check: &mut dyn TarCheck,
    ) -> Result<(), ApplyError> {
        let end = base + chunk.len() as u64;
        loop {
            if let Some(f) = file {
                let (next, fend) = f.span();
                if next < base {
                    return Err(check_bug(format!(
                        "gave a data span at {next} before {base}"
                    )));
                }
                let to = fend.min(end);
                if next < to {
                    f.take(&chunk[(next - base) as usize..(to - base) as usize])?;
                }
                if to < fend {
                    return Ok(());
                }
                match file.take().expect("checked above") {
                    Data::File(f) => self.regular_done(f)?,
                    Data::Held {
                        entry, disp, bytes, ..
                    } => self.judged(entry, disp, &bytes, check)?,
                }
            }
            let Some(e) = queue.pop_front() else {
                return Ok(());
            };
            self.stats.entries += 1;
            let disp = show(&e.path);
            self.last = disp.clone();
            check_normalized(&e.path).map_err(|m| check_bug(format!("gave path `{disp}`: {m}")))?;
            if e.kind == EntryKind::Regular {
                if e.data_size > 0 && e.data_offset < base {
                    return Err(check_bug(format!(
                        "gave `{disp}` data before the stream position"
                    )));
                }
                *file = Some(if e.contents_wanted {
                    if e.data_size > MAX_CONTENTS_BYTES {
                        return Err(check_bug(format!(
                            "wants the contents of `{disp}`, over {MAX_CONTENTS_BYTES} bytes"
                        )));
                    }
                    Data::Held {
                        bytes: Vec::with_capacity(e.data_size as usize),
                        next: e.data_offset,
                        end: e.data_offset.saturating_add(e.data_size),
                        entry: e,
                        disp,
                    }
                } else {
                    Data::File(self.regular_begin(e, disp)?)
                });
                continue;
            }
            self.entry(e, &disp)?;
        }
    }

    /// A file whose bytes the tar check wanted: written if it keeps it.
    fn judged(
        &mut self,
        entry: Entry,
        disp: String,
        bytes: &[u8],
        check: &mut dyn TarCheck,
    ) -> Result<(), ApplyError> {
        let t = std::time::Instant::now();
        let said = check.contents(&entry, bytes);
        self.stats.check_ns += t.elapsed().as_nanos() as u64;
        let said = said.map_err(ApplyError::Check)?;
        self.decisions(said.decisions);
        if !said.keep {
            return Ok(());
        }
        let mut f = self.regular_begin(entry, disp)?;
        write(&mut f, bytes)?;
        self.regular_done(f)
    }

    fn entry(&mut self, e: Entry, disp: &str) -> Result<(), ApplyError> {
        let meta = Meta::of(&e);
        let path = &e.path[..];
        match e.kind {
            EntryKind::Whiteout => return self.whiteout(path, disp),
            EntryKind::Opaque => return self.opaque(path, disp),
            _ => {}
        }
        if path.is_empty() {
            return Err(check_bug("gave an entry for the layer root".into()));
        }
        let name = cstr(disp, split_last(path).1)?;
        match e.kind {
            EntryKind::Directory => self.directory(path, &name, &meta, &e.xattrs, disp),
            EntryKind::Symlink => {
                let target = e.link.as_deref().unwrap_or_default();
                if target.is_empty() {
                    return Err(check_bug(format!("gave symlink `{disp}` no target")));
                }
                self.symlink(path, &name, target, &meta, disp)
            }
            EntryKind::Hardlink => {
                let target = e.link.as_deref().unwrap_or_default();
                check_normalized(target)
                    .map_err(|m| check_bug(format!("gave hardlink target for `{disp}`: {m}")))?;
                self.hardlink(path, &name, target, disp)
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                let dev = rfs::makedev(e.dev_major, e.dev_minor);
                self.node(e.kind, dev, path, &name, &meta, disp)
            }
            EntryKind::Regular | EntryKind::Whiteout | EntryKind::Opaque => unreachable!(),
        }
    }
}
