//! How applying a layer fails: [`ApplyError`], and the helpers that sort an
//! errno into the layer's fault or the host's (retryable) and name the entry.

use std::ffi::CString;
use std::io;

use rustix::fd::BorrowedFd;
use rustix::fs as rfs;
use rustix::io::Errno;

use super::fsops::{self, WalkError};
use super::view::CheckError;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The tar check rejected the layer: a policy rule or malformed input.
    #[error("{0}")]
    Check(CheckError),
    /// The layer is bad or hostile in a way the host found while applying it
    /// (a hardlink to a missing file, a parent that is a file): one line,
    /// names the entry (sanitized), no host paths.
    #[error("{0}")]
    Input(String),
    /// Environment failure (ENOSPC, EIO...) — retryable; the message names
    /// only the in-layer path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// The guest broke its contract: a bug, not the input's fault.
pub(super) fn check_bug(msg: String) -> ApplyError {
    ApplyError::Check(CheckError::Host(format!("tar check {msg}")))
}

pub(super) fn input(disp: &str, msg: impl std::fmt::Display) -> ApplyError {
    ApplyError::Input(format!("`{disp}`: {msg}"))
}

/// Errors of the environment (retryable) versus errors the layer caused.
pub(super) fn os_err(disp: &str, what: &str, e: Errno) -> ApplyError {
    match e {
        Errno::NOSPC
        | Errno::DQUOT
        | Errno::IO
        | Errno::NOMEM
        | Errno::MFILE
        | Errno::NFILE
        | Errno::ROFS
        | Errno::AGAIN
        | Errno::INTR
        | Errno::BUSY
        | Errno::STALE
        | Errno::TIMEDOUT
        | Errno::PERM
        | Errno::ACCESS
        | Errno::NOSYS
        | Errno::FBIG
        | Errno::BADF
        | Errno::FAULT => ApplyError::Io {
            context: format!("`{disp}`: {what}"),
            source: e.into(),
        },
        _ => input(disp, format!("{what}: {}", io::Error::from(e))),
    }
}

/// Whether the filesystem holding `fd` has less than 64 MiB (or 1% of its
/// blocks) free: then an ENOSPC may be the host's, not the entry's.
pub(super) fn space_is_short(fd: BorrowedFd<'_>) -> bool {
    match rfs::fstatvfs(fd) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            free < (64 << 20) || st.f_bavail < st.f_blocks / 100
        }
        Err(_) => true,
    }
}

pub(super) fn walk_err(disp: &str, what: &str, e: WalkError) -> ApplyError {
    match e {
        WalkError::Os(e) => os_err(disp, what, e),
        WalkError::TooDeep => input(
            disp,
            format!(
                "{what}: directory tree is more than {} levels deep",
                fsops::MAX_WALK_DEPTH
            ),
        ),
    }
}

pub(super) fn cstr(disp: &str, b: &[u8]) -> Result<CString, ApplyError> {
    CString::new(b).map_err(|_| input(disp, "name contains a NUL byte"))
}
