//! The state directory is private: no other user of the host may reach a
//! layer tree, a blob or `state.db`. An image's setuid-root file in a layer
//! directory that any local user can traverse makes that user root (the
//! class of moby CVE-2021-41091), and `state.db` holds the images' configs
//! and Env.
//!
//! Three things keep it so, whatever the caller's umask:
//! - the process runs with umask 077 ([`PRIVATE_UMASK`], set at start), so
//!   every directory tarpool creates is 0700 and every file 0600; the few
//!   directories that must keep another mode (a layer's root, an
//!   activation's upper directory: the roots of the image's tree) are made
//!   with an explicit mode ([`mkdir_mode`]);
//! - [`prepare`] creates the state directory 0700 and, at every start,
//!   makes it 0700 again if it is not;
//! - [`repair`] (at the service's start) takes group and other permissions
//!   off everything tarpool itself made below it, without descending into
//!   the image trees (their modes are the image's), and reports how many
//!   entries it changed.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// A state directory, and every path tarpool keeps under it, named once:
/// nothing else joins a name onto a state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// The state directory at `root` (absolute: the worker and the mount
    /// helpers change the working directory).
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir(root.into())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    /// The SQLite database: the machine's state and the audit.
    pub fn db(&self) -> PathBuf {
        self.0.join("state.db")
    }

    /// The lock `run` holds: one service per state directory.
    pub fn run_lock(&self) -> PathBuf {
        self.0.join("run.lock")
    }

    /// Compiled WebAssembly components.
    pub fn cache(&self) -> PathBuf {
        self.0.join("cache")
    }

    /// The content-addressed blob store (`sha256/<hex>`).
    pub fn blobs(&self) -> PathBuf {
        self.0.join("blobs").join("sha256")
    }

    /// Partial downloads, kept across a crash.
    pub fn downloads(&self) -> PathBuf {
        self.0.join("downloads")
    }

    /// Scratch files, emptied at start-up.
    pub fn tmp(&self) -> PathBuf {
        self.0.join("tmp")
    }

    /// The overlay backend's layers and activations.
    pub fn overlay(&self) -> PathBuf {
        self.0.join("overlay")
    }

    /// The thin-pool backend's files.
    pub fn thinpool(&self) -> PathBuf {
        self.0.join("thinpool")
    }

    /// Where the thin-pool backend makes its device nodes.
    pub fn thinpool_dev(&self) -> PathBuf {
        self.thinpool().join("dev")
    }

    /// The activations' lock files.
    pub fn locks(&self) -> PathBuf {
        self.0.join("locks")
    }

    /// The OCI runtimes' state (`runtime/NAME`, `runtime/locks`).
    pub fn runtime(&self) -> PathBuf {
        self.0.join("runtime")
    }

    /// What `recover` moved aside.
    pub fn recovered(&self) -> PathBuf {
        self.0.join("recovered")
    }
}

impl std::ops::Deref for StateDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for StateDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// The umask tarpool runs with: nothing it creates is readable by others.
pub const PRIVATE_UMASK: u32 = 0o077;

/// Sets the process's umask to [`PRIVATE_UMASK`].
pub fn set_private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(PRIVATE_UMASK));
}

/// Resolves `dir` against the working directory (once, at start: the
/// worker and the mount helpers change directories) and creates it 0700,
/// or makes an existing one 0700.
pub fn prepare(dir: &Path) -> io::Result<PathBuf> {
    let dir = std::path::absolute(dir)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let meta = std::fs::metadata(&dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}

/// Creates directory `path` (and its missing parents, 0700) with exactly
/// `mode`, whatever the umask; an existing one gets `mode` too.
pub fn mkdir_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// What tarpool data `dir` holds (blobs, layers, activations, a thin
/// pool), as a short phrase; `None` when it holds none.
pub fn tarpool_data(dir: &Path) -> io::Result<Option<String>> {
    let count = |rel: &str| -> io::Result<usize> {
        match std::fs::read_dir(dir.join(rel)) {
            Ok(d) => Ok(d.count()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    };
    let mut parts = Vec::new();
    for (rel, what) in [
        ("overlay/layers", "layer directories"),
        ("overlay/activations", "activations"),
        ("blobs/sha256", "blobs"),
    ] {
        let n = count(rel)?;
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if dir.join("thinpool/pool.json").exists() {
        parts.push("a thin pool".into());
    }
    Ok((!parts.is_empty()).then(|| parts.join(", ")))
}

/// What `tarpool recover` does to a state directory whose database is lost.
#[derive(Debug, Default, serde::Serialize)]
pub struct Recovered {
    /// Where the old database and the layer and activation trees were moved.
    pub moved_to: Option<PathBuf>,
    /// The entries moved (or, with `wipe`, deleted), relative to the state
    /// directory.
    pub entries: Vec<String>,
    pub wiped: bool,
}

/// Clears the way for a new database in `dir`: the old database files
/// (kept, for diagnosis) and the layer and activation trees the lost
/// database described (`overlay/`, `locks/`) go to `recovered/ID/`, or with
/// `wipe` the trees are deleted. The blob store stays (a new database
/// fetches and hashes every object again before it uses one). A thin pool
/// stays as it is: its devices are neither adopted nor deleted. The caller holds the run lock and
/// has checked that the database is unusable.
pub fn recover(dir: &Path, id: &str, wipe: bool) -> io::Result<Recovered> {
    let mut out = Recovered {
        wiped: wipe,
        ..Recovered::default()
    };
    let aside = dir.join("recovered").join(id);
    for name in [
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "overlay",
        "locks",
    ] {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if wipe && !name.starts_with("state.db") {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&aside)?;
            std::fs::rename(&path, aside.join(name))?;
            out.moved_to = Some(aside.clone());
        }
        out.entries.push(name.to_string());
    }
    Ok(out)
}

/// Directories below the state directory whose children are image trees
/// (or mount points of them) that [`repair`] must not enter: each pattern
/// is a path relative to the state directory, `*` matching one name.
const IMAGE_TREES: &[&str] = &[
    // overlay/layers/ID/{fs,work}: a layer's files.
    "overlay/layers/*/*",
    // overlay/activations/ACT/{upper,work}: an activation's writes.
    "overlay/activations/*/*",
    // Temporary mount points of layers being applied.
    "overlay/mnt/*",
    "thinpool/mnt/*",
    // What `tarpool recover` moved aside, image trees included.
    "recovered/*",
];

fn is_image_tree(rel: &Path) -> bool {
    IMAGE_TREES.iter().any(|pat| {
        let mut p = pat.split('/');
        let mut r = rel.components();
        loop {
            match (p.next(), r.next()) {
                (None, None) => return true,
                (Some(want), Some(got)) => {
                    if want != "*" && got.as_os_str() != want {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    })
}

/// Takes group and other permissions off every directory, file and device
/// node tarpool made below `dir` (not symlinks, not the image trees, not
/// other filesystems mounted below it); returns how many it changed.
pub fn repair(dir: &Path) -> io::Result<u64> {
    let root_dev = std::fs::metadata(dir)?.dev();
    let mut changed = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for ent in std::fs::read_dir(dir.join(&rel))? {
            let ent = ent?;
            let rel = rel.join(ent.file_name());
            let path = dir.join(&rel);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Removed meanwhile (a client's temporary file).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.file_type().is_symlink() || meta.dev() != root_dev || is_image_tree(&rel) {
                continue;
            }
            let mode = meta.mode() & 0o7777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !0o077))?;
                changed += 1;
            }
            if meta.is_dir() {
                stack.push(rel);
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout every command and the service share (existing state
    /// directories depend on these names).
    #[test]
    fn state_dir_layout() {
        let d = StateDir::new("/s");
        let cases: [(PathBuf, &str); 13] = [
            (d.db(), "/s/state.db"),
            (d.run_lock(), "/s/run.lock"),
            (d.cache(), "/s/cache"),
            (d.blobs(), "/s/blobs/sha256"),
            (d.downloads(), "/s/downloads"),
            (d.tmp(), "/s/tmp"),
            (d.overlay(), "/s/overlay"),
            (d.thinpool(), "/s/thinpool"),
            (d.thinpool_dev(), "/s/thinpool/dev"),
            (d.locks(), "/s/locks"),
            (d.runtime(), "/s/runtime"),
            (d.recovered(), "/s/recovered"),
            (d.root().to_path_buf(), "/s"),
        ];
        for (got, want) in cases {
            assert_eq!(got, Path::new(want));
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn image_trees_are_left_alone() {
        for (rel, image) in [
            ("overlay/layers/3/fs", true),
            ("overlay/layers/3/work", true),
            ("overlay/layers/3", false),
            ("overlay/layers", false),
            ("overlay/activations/a/upper", true),
            ("overlay/activations/a", false),
            ("overlay/mnt/7", true),
            ("thinpool/mnt/7", true),
            ("thinpool/dev", false),
            ("blobs/sha256/ab", false),
            ("state.db", false),
            ("recovered/01J", true),
        ] {
            assert_eq!(is_image_tree(Path::new(rel)), image, "{rel}");
        }
    }

    #[test]
    fn prepare_makes_the_directory_private() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("a/state");
        let got = prepare(&state).unwrap();
        assert_eq!(got, state);
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&state).unwrap();
        assert_eq!(mode(&state), 0o700, "an existing open directory is closed");
    }

    #[test]
    fn repair_closes_what_tarpool_made_and_keeps_image_modes() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        let open = |p: &str, m: u32| {
            let p = s.join(p);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        for dir in [
            "blobs/sha256",
            "overlay/layers/1/fs/usr/bin",
            "overlay/activations/a/upper",
        ] {
            std::fs::create_dir_all(s.join(dir)).unwrap();
        }
        std::fs::write(s.join("state.db"), "").unwrap();
        std::fs::write(s.join("blobs/sha256/ab"), "").unwrap();
        std::fs::write(s.join("overlay/layers/1/fs/usr/bin/su"), "").unwrap();
        for (p, m) in [
            ("state.db", 0o644),
            ("blobs", 0o755),
            ("blobs/sha256", 0o755),
            ("blobs/sha256/ab", 0o644),
            ("overlay", 0o755),
            ("overlay/layers", 0o755),
            ("overlay/layers/1", 0o755),
            ("overlay/layers/1/fs", 0o755),
            ("overlay/layers/1/fs/usr/bin/su", 0o4755),
            ("overlay/activations", 0o711),
            ("overlay/activations/a", 0o755),
            ("overlay/activations/a/upper", 0o755),
        ] {
            open(p, m);
        }
        std::os::unix::fs::symlink("/etc", s.join("link")).unwrap();
        assert_eq!(repair(s).unwrap(), 9);
        for (p, m) in [
            ("state.db", 0o600),
            ("blobs", 0o700),
            ("blobs/sha256/ab", 0o600),
            ("overlay/layers/1", 0o700),
            ("overlay/activations", 0o700),
            ("overlay/activations/a", 0o700),
            // The image's own modes.
            ("overlay/layers/1/fs", 0o755),
            ("overlay/layers/1/fs/usr/bin/su", 0o4755),
            ("overlay/activations/a/upper", 0o755),
        ] {
            assert_eq!(mode(&s.join(p)), m, "{p}");
        }
        assert_eq!(repair(s).unwrap(), 0, "a second pass finds nothing");
    }
}
