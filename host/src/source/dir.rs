//! The `dir:` source: a local directory laid out like the bucket, listed
//! beneath `images/` and opened with `openat2` (regular files only).

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Listing, Source, SourceError};
use crate::core::names::{printable, Listed, Rejected};

/// A local directory laid out like the bucket.
pub struct DirSource {
    root: PathBuf,
}

const MAX_DEPTH: usize = 12;
const MAX_OBJECTS: usize = 1_000_000;

impl DirSource {
    /// The source at directory `path`, which must exist.
    pub fn new(path: &str) -> Result<DirSource, SourceError> {
        let root = std::fs::canonicalize(path)
            .map_err(|e| SourceError::Config(format!("source directory `{path}`: {e}")))?;
        if !root.is_dir() {
            return Err(SourceError::Config(format!(
                "source `{path}` is not a directory"
            )));
        }
        Ok(DirSource { root })
    }

    fn modified(m: &std::fs::Metadata) -> String {
        format!("unix:{}", m.mtime())
    }

    fn stamp(m: &std::fs::Metadata) -> String {
        format!("mtime:{}.{:09}:ino:{}", m.mtime(), m.mtime_nsec(), m.ino())
    }
}

impl Source for DirSource {
    fn uri(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn list(&self) -> Result<Listing, SourceError> {
        let mut objects = Vec::new();
        let mut rejected = Vec::new();
        let images = self.root.join("images");
        if !images.is_dir() {
            return Ok(Listing { objects, rejected });
        }
        let mut stack = vec![(images, "images".to_string(), 0usize)];
        while let Some((dir, key, depth)) = stack.pop() {
            let rd = std::fs::read_dir(&dir)
                .map_err(|e| SourceError::Io(format!("listing `{key}`: {e}")))?;
            for ent in rd {
                let ent = ent.map_err(|e| SourceError::Io(format!("listing `{key}`: {e}")))?;
                let name = ent.file_name();
                let Ok(name) = std::str::from_utf8(name.as_bytes()) else {
                    rejected.push(Rejected {
                        key: printable(&format!(
                            "{key}/{}",
                            String::from_utf8_lossy(name.as_bytes())
                        )),
                        reason: "key is not UTF-8".into(),
                    });
                    continue;
                };
                let child = format!("{key}/{name}");
                let ft = ent
                    .file_type()
                    .map_err(|e| SourceError::Io(format!("listing `{child}`: {e}")))?;
                if ft.is_dir() {
                    if depth + 1 > MAX_DEPTH {
                        rejected.push(Rejected {
                            key: printable(&child),
                            reason: "directory nested too deep".into(),
                        });
                    } else {
                        stack.push((ent.path(), child, depth + 1));
                    }
                } else if ft.is_file() {
                    let m = ent
                        .metadata()
                        .map_err(|e| SourceError::Io(format!("stat `{child}`: {e}")))?;
                    objects.push(Listed {
                        key: child,
                        size: m.len(),
                        stamp: Self::stamp(&m),
                        modified: Self::modified(&m),
                    });
                    if objects.len() > MAX_OBJECTS {
                        return Err(SourceError::Io(format!(
                            "more than {MAX_OBJECTS} objects under images/"
                        )));
                    }
                } else {
                    rejected.push(Rejected {
                        key: printable(&child),
                        reason: "not a regular file".into(),
                    });
                }
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing { objects, rejected })
    }

    fn open(&self, key: &str) -> Result<(Box<dyn Read + Send>, Listed), SourceError> {
        use rustix::fs::{openat2, FileType, Mode, OFlags, ResolveFlags};
        let root = File::open(&self.root)
            .map_err(|e| SourceError::Io(format!("opening the source: {e}")))?;
        // O_PATH first: opening a FIFO put in the object's place would block
        // (forever, with no writer), and opening a device has effects. Only
        // a regular file is opened for reading, through the same inode.
        let path = openat2(
            &root,
            key,
            OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOENT => SourceError::NotFound(key.to_string()),
            e => SourceError::Io(format!("opening `{key}`: {e}")),
        })?;
        let st =
            rustix::fs::fstat(&path).map_err(|e| SourceError::Io(format!("stat `{key}`: {e}")))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(SourceError::BadObject(format!(
                "object `{}` is not a regular file (a {})",
                printable(key),
                match kind {
                    FileType::Fifo => "fifo",
                    FileType::Symlink => "symlink",
                    FileType::Directory => "directory",
                    FileType::CharacterDevice => "character device",
                    FileType::BlockDevice => "block device",
                    FileType::Socket => "socket",
                    _ => "special file",
                }
            )));
        }
        let fd = rustix::fs::open(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&path)),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| SourceError::Io(format!("opening `{key}`: {e}")))?;
        let file = File::from(fd);
        let m = file
            .metadata()
            .map_err(|e| SourceError::Io(format!("stat `{key}`: {e}")))?;
        if !m.is_file() || m.ino() != st.st_ino {
            return Err(SourceError::BadObject(format!(
                "object `{}` changed into something other than its file while it was opened",
                printable(key)
            )));
        }
        Ok((
            Box::new(file),
            Listed {
                key: key.to_string(),
                size: m.len(),
                stamp: Self::stamp(&m),
                modified: Self::modified(&m),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `open` makes of the object `images/x.tar` when `make` has put
    /// something at that path; a hang fails after 10 s instead of blocking.
    fn check(make: fn(&Path), expected: Result<(), &str>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("images")).unwrap();
        make(&d.path().join("images/x.tar"));
        let src = DirSource {
            root: d.path().to_path_buf(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(src.open("images/x.tar").map(|_| ()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("open blocked");
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(SourceError::BadObject(m)), Err(want)) => assert_eq!(m, want),
            (got, want) => panic!("got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn only_regular_files_are_opened() {
        check(|p| std::fs::write(p, "tar").unwrap(), Ok(()));
        check(
            |p| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    p,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap()
            },
            Err("object `images/x.tar` is not a regular file (a fifo)"),
        );
        check(
            |p| std::fs::create_dir(p).unwrap(),
            Err("object `images/x.tar` is not a regular file (a directory)"),
        );
        check(
            |p| {
                let _ = std::os::unix::net::UnixListener::bind(p).unwrap();
            },
            Err("object `images/x.tar` is not a regular file (a socket)"),
        );
    }
}
