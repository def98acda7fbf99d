//! Reading what the container's command needs from the image: its
//! /etc/passwd and /etc/group, as bytes for the user step to parse (the
//! host never does; `guest-steps/user`), and whether the command is in the
//! image's PATH. The image's files are opened beneath its root
//! (`openat2(RESOLVE_IN_ROOT)`: a symlink to a host path resolves inside
//! the image), as regular files of at most [`MAX_DB_BYTES`].

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;
use std::io::Read as _;

/// The PATH of an image whose config sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The most of the image's /etc/passwd or /etc/group that is read.
pub const MAX_DB_BYTES: u64 = 1 << 20;

/// Why a command cannot run, with a shell's exit status (127: not found,
/// 126: not executable).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct NotRunnable {
    pub code: u8,
    pub msg: String,
}

/// Opens the image path `path` beneath `root` (the extraction's resolver:
/// symlinks resolve inside the image, magic links are refused).
fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    let rel = path.trim_start_matches('/');
    crate::extract::fsops::open_in_root(root, rel.as_bytes(), flags | OFlags::CLOEXEC)
}

/// Reads one of the image's user databases, unparsed: a regular file of at
/// most [`MAX_DB_BYTES`], or None when it does not exist.
pub fn read_db(root: BorrowedFd<'_>, path: &str) -> Result<Option<Vec<u8>>, String> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match open_in_root(root, path, flags) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(format!("opening the image's {path}: {e}")),
    };
    let f = std::fs::File::from(fd);
    let is_file = f
        .metadata()
        .map_err(|e| format!("reading the image's {path}: {e}"))?
        .is_file();
    if !is_file {
        return Err(format!("the image's {path} is not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_DB_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the image's {path}: {e}"))?;
    if bytes.len() as u64 > MAX_DB_BYTES {
        return Err(format!("the image's {path} is over {MAX_DB_BYTES} bytes"));
    }
    Ok(Some(bytes))
}

/// The image's Env with PATH, HOSTNAME and HOME added where it sets none.
pub fn environment(image_env: &[String], hostname: &str, home: &str) -> Vec<String> {
    let mut env = image_env.to_vec();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

/// Finds `prog` in the image like a shell: as given when it holds a slash
/// (relative to `cwd`), else in each directory of `env`'s PATH; returns the
/// image path of a regular file with an execute bit. A symlink resolves
/// inside the image.
pub fn find_command(
    root: BorrowedFd<'_>,
    prog: &str,
    env: &[String],
    cwd: &str,
) -> Result<String, NotRunnable> {
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let join = |dir: &str, p: &str| {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("{}/{p}", dir.trim_end_matches('/'))
        }
    };
    let candidates: Vec<String> = if prog.contains('/') {
        vec![join(cwd, prog)]
    } else {
        path.split(':')
            .map(|d| join(&join(cwd, if d.is_empty() { "." } else { d }), prog))
            .collect()
    };
    let mut denied = false;
    for c in &candidates {
        match open_in_root(root.as_fd(), c, OFlags::PATH) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).map_err(|e| NotRunnable {
                    code: 126,
                    msg: format!("{prog}: {e}"),
                })?;
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && st.st_mode & 0o111 != 0
                {
                    return Ok(c.clone());
                }
                denied = true;
            }
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => {}
            Err(e) => {
                return Err(NotRunnable {
                    code: 126,
                    msg: format!("{prog}: {e}"),
                })
            }
        }
    }
    Err(match denied {
        true => NotRunnable {
            code: 126,
            msg: format!("{prog}: permission denied (not an executable file)"),
        },
        false if prog.contains('/') => NotRunnable {
            code: 127,
            msg: format!("{prog}: no such file in the image"),
        },
        false => NotRunnable {
            code: 127,
            msg: format!("{prog}: command not found in the image (PATH={path})"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_a_default_path_hostname_and_home() {
        assert_eq!(
            environment(&[], "a", "/root"),
            [
                "PATH=".to_string() + DEFAULT_PATH,
                "HOSTNAME=a".into(),
                "HOME=/root".into()
            ]
        );
        assert_eq!(
            environment(&["PATH=/x".into(), "HOME=/h".into()], "a", "/root"),
            ["PATH=/x", "HOME=/h", "HOSTNAME=a"]
        );
    }

    /// Looks `prog` up in a small image tree; `Ok(path)` or `Err(code)`.
    fn find(prog: &str, path: &str) -> Result<String, u8> {
        use std::os::unix::fs::{symlink, PermissionsExt as _};
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("work")).unwrap();
        std::fs::write(r.join("bin/busybox"), b"").unwrap();
        std::fs::set_permissions(
            r.join("bin/busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("busybox", r.join("bin/sh")).unwrap();
        std::fs::write(r.join("bin/data"), b"").unwrap();
        // A symlink to a host path resolves inside the image.
        symlink("/etc/hostname", r.join("bin/host")).unwrap();
        std::fs::write(r.join("work/run"), b"").unwrap();
        std::fs::set_permissions(r.join("work/run"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let root = std::fs::File::open(r).unwrap();
        let env = vec![format!("PATH={path}")];
        find_command(root.as_fd(), prog, &env, "/work").map_err(|e| e.code)
    }

    #[test]
    fn commands_are_found_in_the_image() {
        assert_eq!(find("sh", "/usr/bin:/bin"), Ok("/bin/sh".into()));
        assert_eq!(find("/bin/sh", "/x"), Ok("/bin/sh".into()));
        assert_eq!(find("./run", "/x"), Ok("/work/./run".into()));
        assert_eq!(find("run", ":/x"), Ok("/work/./run".into()));
        assert_eq!(find("nope", "/bin"), Err(127));
        assert_eq!(find("/bin/nope", "/bin"), Err(127));
        assert_eq!(find("data", "/bin"), Err(126));
        assert_eq!(find("bin", "/"), Err(126));
        assert_eq!(find("host", "/bin"), Err(127));
    }
}
