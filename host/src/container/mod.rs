//! Running an activation as an OCI container: the runtime bundle
//! (`tarpool bundle`) and its supervision under an OCI runtime (`tarpool
//! exec`). tarpool generates the spec ([`spec`]), prepares the root
//! filesystem ([`rootfs`]: id-mapped, `nodev`, mount targets pinned) and
//! supervises the runtime ([`runtime`]); namespaces, cgroups, capabilities,
//! seccomp, /dev and /proc are the runtime's (crun or runc).
//!
//! `tarpool exec` works in a private mount namespace of its own (it is
//! single-threaded, so it can unshare one): it mounts the activation's root
//! in a temporary directory (binding the activation's mount point, or the
//! backend's [`Snapshotter::mount_activation`]), mounts the container's
//! view of it beside, writes `config.json` there, and runs the runtime on
//! that bundle. Every mount is gone when exec ends, even on SIGKILL (the
//! namespace goes with the process); the runtime, killed with it
//! (`PR_SET_PDEATHSIG`), leaves a container the next exec or deactivate
//! deletes ([`runtime::Runtime::reap`]).

pub mod lock;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod user;

use anyhow::{bail, Context as _, Result};
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use crate::backend::Snapshotter;
use crate::model::RuntimeConfig;
use crate::statedir::StateDir;
use crate::store::{ActivationRow, Store};
use crate::sys::MountOps as _;
pub use lock::{lock_activation, ActivationLock};
pub use spec::{IdRange, Limits, Net};

/// Whether the container gets a user namespace (`--userns`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Userns {
    /// A user namespace whose root is an unprivileged host uid, with the
    /// activation mounted id-mapped.
    #[default]
    Auto,
    /// The host's user namespace: the container's root is the host's.
    Host,
}

/// The configuration's part for containers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// The OCI runtime: `crun`, `runc`, or a path.
    pub runtime: String,
    /// The first host uid (and gid) of the container's user namespace;
    /// 65536 ids from it are mapped. Default: 524288, the start of the
    /// range systemd sets aside for containers' user namespaces.
    pub userns_base: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            runtime: "crun".into(),
            userns_base: 524_288,
        }
    }
}

/// How an activation is run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub net: Net,
    pub userns: Userns,
    pub limits: Limits,
}

/// The ids the container's 0..65536 are on the host, or none.
fn id_range(settings: &Settings, userns: Userns) -> Result<Option<IdRange>> {
    const SIZE: u32 = 65536;
    match userns {
        Userns::Host => Ok(None),
        Userns::Auto => {
            if settings.userns_base == 0 || settings.userns_base.checked_add(SIZE).is_none() {
                bail!(
                    "userns_base = {}: the container's ids must map to unprivileged host ids (1 to {})",
                    settings.userns_base,
                    u32::MAX - SIZE
                );
            }
            Ok(Some(IdRange {
                host: settings.userns_base,
                size: SIZE,
            }))
        }
    }
}

/// The image's runtime config and the command to run (`cmd`, or the
/// image's Entrypoint and Cmd).
fn image_command(
    store: &Store,
    row: &ActivationRow,
    cmd: &[String],
) -> Result<(RuntimeConfig, Vec<String>)> {
    let act = &row.id;
    let img = store
        .image(&row.image)?
        .with_context(|| format!("activation {act}: image {} is not tracked", row.image))?;
    if img.state != crate::core::states::ImageState::Ready {
        bail!(
            "activation {act}: image {} is {}, not ready",
            row.image,
            img.state
        );
    }
    let config: RuntimeConfig = match &img.config {
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("image {}: unreadable runtime config", row.image))?,
        None => RuntimeConfig::default(),
    };
    let words: Vec<String> = if cmd.is_empty() {
        config
            .entrypoint
            .iter()
            .chain(&config.cmd)
            .cloned()
            .collect()
    } else {
        cmd.to_vec()
    };
    if words.is_empty() {
        bail!(
            "no command given, and image {} has no Entrypoint or Cmd",
            row.image
        );
    }
    if words.iter().any(|w| w.contains('\0')) || config.env.iter().any(|w| w.contains('\0')) {
        bail!("the command or the image's Env holds a NUL byte");
    }
    Ok((config, words))
}

/// The outcome of preparing a container's root: the command to run, or
/// why it cannot run (with a shell's exit status).
enum Prepared {
    Ready(spec::Command),
    NotRunnable(user::NotRunnable),
}

/// Mounts at `view` the container's view of the activation mounted at
/// `mp`: id-mapped through `userns`, or bound as it is.
fn view_of_mount_point(act: &str, mp: &Path, view: &Path, userns: Option<&OwnedFd>) -> Result<()> {
    match userns {
        Some(ns) => crate::sys::LinuxMounts
            .idmapped_clone(mp, view, ns.as_fd())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::Unsupported => anyhow::anyhow!(
                    "activation {act}: {e}; overlayfs mounts cannot be id-mapped: use --userns host, or an activation made without --mount"
                ),
                _ => anyhow::Error::from(e).context(format!("activation {act}: id-mapping its mount point {}", mp.display())),
            }),
        None => rustix::mount::mount_bind_recursive(mp, view).with_context(|| {
            format!("activation {act}: binding its mount point {}", mp.display())
        }),
    }
}

/// Makes the container's view at `view` ready (`nodev`, mount targets
/// pinned) and resolves the command from the image's files.
fn prepare(
    users: &crate::wasm::UserStep,
    view: &Path,
    userns: Option<IdRange>,
    config: &RuntimeConfig,
    words: &[String],
    hostname: &str,
) -> Result<Prepared> {
    rootfs::set_nodev(view)?;
    rootfs::pin_mount_targets(view, userns.map(|r| r.host))?;
    let dir = std::fs::File::open(view).with_context(|| format!("opening {}", view.display()))?;
    let passwd = user::read_db(dir.as_fd(), "/etc/passwd").map_err(anyhow::Error::msg)?;
    let group = user::read_db(dir.as_fd(), "/etc/group").map_err(anyhow::Error::msg)?;
    // Parsed by the user step, in WebAssembly: the bytes are the image's.
    let ids = users
        .resolve(&config.user, passwd.as_deref(), group.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let env = user::environment(&config.env, hostname, &ids.home);
    let cwd = if config.working_dir.is_empty() {
        "/".to_string()
    } else if config.working_dir.starts_with('/') {
        config.working_dir.clone()
    } else {
        format!("/{}", config.working_dir)
    };
    // Found here first, for a shell's exit status and a clear message; the
    // runtime searches the same PATH and keeps argv[0] as given.
    if let Err(e) = user::find_command(dir.as_fd(), &words[0], &env, &cwd) {
        return Ok(Prepared::NotRunnable(e));
    }
    Ok(Prepared::Ready(spec::Command {
        args: words.to_vec(),
        env,
        cwd,
        uid: ids.uid,
        gid: ids.gid,
        groups: ids.groups,
    }))
}

/// The bundle's `config.json` for `command`, root `rootfs` (relative to the
/// bundle), container `id`.
fn write_spec(
    path: &Path,
    act: &str,
    id: &str,
    command: &spec::Command,
    userns: Option<IdRange>,
    opts: &Options,
) -> Result<()> {
    let arch = seccomp::host_arch().context("this architecture has no seccomp profile")?;
    let caps = spec::cap_names();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let seccomp = seccomp::docker_default(&caps, arch, seccomp::kernel_version())
        .context("the container's seccomp profile")?;
    let s = spec::build(&spec::Input {
        hostname: act,
        root: "rootfs".into(),
        command,
        net: opts.net,
        userns,
        limits: opts.limits,
        cgroup: format!("/tarpool/{id}"),
        seccomp,
    })?;
    let json = serde_json::to_vec_pretty(&s).context("serializing config.json")?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// The user step, compiled or from the state directory's component cache.
fn user_step(state_dir: &StateDir) -> Result<crate::wasm::UserStep> {
    crate::wasm::UserStep::load(&state_dir.cache())
        .map_err(|e| anyhow::anyhow!("loading the user step: {e}"))
}

/// A container id for activation `act`: `ACT.ULID` (lower case).
fn container_id(act: &str) -> String {
    format!("{act}.{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Opens the backend, only when the activation has to be mounted.
pub type OpenBackend<'a> = dyn Fn() -> Result<Box<dyn Snapshotter>> + 'a;

fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// `tarpool exec`: runs `cmd` (default: the image's Entrypoint and Cmd) in
/// activation `act` as an OCI container under the configured runtime;
/// returns its exit status (128+N for death by signal N; 127 for a command
/// not found in the image, 126 for one not executable).
pub fn exec(
    state_dir: &StateDir,
    store: &Store,
    open_backend: &OpenBackend<'_>,
    settings: &Settings,
    act: &str,
    cmd: &[String],
    opts: &Options,
) -> Result<u8> {
    if !single_threaded() {
        bail!("internal error: `tarpool exec` must run single-threaded");
    }
    let userns = id_range(settings, opts.userns)?;
    let runtime = runtime::Runtime::new(state_dir, &settings.runtime)?;
    let users = user_step(state_dir)?;
    // Held until the container has ended (dropped last).
    let (row, bind, _lock) = lock::lock_for_exec(store, state_dir, act)?;
    let (config, words) = image_command(store, &row, cmd)?;
    runtime.reap(&format!("{act}."))?;

    crate::sys::LinuxMounts
        .private_namespace()
        .context("entering a private mount namespace")?;
    let ns = userns.map(rootfs::user_namespace).transpose()?;
    let mut scratch = rootfs::Scratch::new("tarpool-exec-")?;
    let view = scratch.subdir("rootfs")?;
    match row.mountpoint.as_deref().map(Path::new) {
        Some(mp) if bind => view_of_mount_point(act, mp, &view, ns.as_ref())?,
        // No mount point, or one no longer mounted (a reboot): mount it here.
        _ => {
            let chain = lock::chain(store, act, &row.top_chain)?;
            let backend = open_backend()?;
            let mounted = match &ns {
                Some(ns) => {
                    let idmap = scratch.subdir("idmap")?;
                    let host_root = userns.map_or(0, |r| r.host);
                    let r = backend.mount_activation_idmapped(
                        act,
                        &chain,
                        &view,
                        &idmap,
                        ns.as_fd(),
                        host_root,
                    );
                    if lock::is_mount_point(&idmap) {
                        scratch.mounted(&idmap);
                    }
                    r
                }
                None => backend.mount_activation(act, &chain, &view),
            };
            mounted.with_context(|| format!("activation {act}: mounting its root"))?
        }
    }
    scratch.mounted(&view);
    drop(ns);
    let command = match prepare(&users, &view, userns, &config, &words, act)
        .with_context(|| format!("activation {act}"))?
    {
        Prepared::Ready(c) => c,
        Prepared::NotRunnable(e) => {
            eprintln!("tarpool: error: {e}");
            return Ok(e.code);
        }
    };
    let id = container_id(act);
    let config_json = scratch.dir.join("config.json");
    scratch.file(&config_json);
    write_spec(&config_json, act, &id, &command, userns, opts)?;
    let claim = runtime.claim(&id)?;
    let status = runtime.run(&scratch.dir, &id);
    runtime.delete(&id);
    drop(claim);
    status
}

/// `tarpool bundle ACT DIR`: writes an OCI runtime bundle for activation
/// `act` (made with `--mount`) in the new directory `dir`: `config.json`,
/// and `rootfs`, the container's view of the activation's mount point,
/// mounted on the host until `tarpool deactivate ACT`. Any OCI runtime can
/// run it. Returns what it made, for JSON output.
pub fn bundle(
    state_dir: &StateDir,
    store: &Store,
    settings: &Settings,
    act: &str,
    dir: &Path,
    cmd: &[String],
    opts: &Options,
) -> Result<serde_json::Value> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !single_threaded() {
        bail!("internal error: `tarpool bundle` must run single-threaded");
    }
    let userns = id_range(settings, opts.userns)?;
    let users = user_step(state_dir)?;
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let row = store
        .activation(act)?
        .with_context(|| format!("no activation named {act}"))?;
    let mp = match row.mountpoint.as_deref().map(PathBuf::from) {
        Some(mp) if lock::is_mount_point(&mp) => mp,
        Some(mp) => bail!(
            "activation {act}: its mount point {} is not mounted",
            mp.display()
        ),
        None => bail!("activation {act} has no mount point: make it with `tarpool activate --mount DIR` to bundle it"),
    };
    // Shared: the bundle only binds the mount point; deactivate waits.
    let _lock = lock::lock_activation(state_dir, act, false)?;
    let (config, words) = image_command(store, &row, cmd)?;
    // Traversable by the container's root (an unprivileged host uid).
    std::fs::DirBuilder::new()
        .mode(0o711)
        .create(&dir)
        .with_context(|| format!("creating the bundle directory {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .with_context(|| format!("making {} traversable", dir.display()))?;
    let view = dir.join("rootfs");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&view)
        .with_context(|| format!("creating {}", view.display()))?;
    let undo = |mounted: bool| {
        if mounted {
            let _ = rustix::mount::unmount(&view, rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_file(dir.join("config.json"));
        let _ = std::fs::remove_dir(&view);
        let _ = std::fs::remove_dir(&dir);
    };
    let ns = userns.map(rootfs::user_namespace).transpose();
    let prepared = ns.and_then(|ns| {
        view_of_mount_point(act, &mp, &view, ns.as_ref())?;
        prepare(&users, &view, userns, &config, &words, act)
    });
    let command = match prepared {
        Ok(Prepared::Ready(c)) => c,
        Ok(Prepared::NotRunnable(e)) => {
            undo(true);
            bail!("{e}");
        }
        Err(e) => {
            undo(lock::is_mount_point(&view));
            return Err(e.context(format!("activation {act}")));
        }
    };
    let id = container_id(act);
    let written =
        write_spec(&dir.join("config.json"), act, &id, &command, userns, opts).and_then(|()| {
            store
                .add_bundle(&dir.to_string_lossy(), act)
                .map_err(Into::into)
        });
    if let Err(e) = written {
        undo(true);
        return Err(e);
    }
    Ok(serde_json::json!({
        "bundle": dir,
        "activation": act,
        "config": dir.join("config.json"),
        "rootfs": view,
        "userns": userns.map(|r| serde_json::json!({ "host": r.host, "size": r.size })),
        "suggested_id": id,
    }))
}

/// For `tarpool deactivate`: deletes the containers tarpool exec left
/// running in `act` (its supervisor killed) and unmounts and removes
/// `act`'s bundles (their `config.json`, `rootfs` and directory, if then
/// empty).
pub fn release(state_dir: &StateDir, store: &Store, settings: &Settings, act: &str) -> Result<()> {
    // Every runtime tarpool has run (one state directory each), not only
    // the configured one: the config may have changed since. One that
    // cannot be asked (uninstalled since) is a warning, not a reason to
    // keep the activation.
    let mut names = vec![settings.runtime.clone()];
    if let Ok(dir) = std::fs::read_dir(state_dir.runtime()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "locks"
                && !names
                    .iter()
                    .any(|n| runtime::state_name(n) == Some(name.as_str()))
            {
                names.push(name);
            }
        }
    } else {
        names.clear();
    }
    for name in names {
        let reaped =
            runtime::Runtime::new(state_dir, &name).and_then(|r| r.reap(&format!("{act}.")));
        if let Err(e) = reaped {
            tracing::warn!("activation {act}: looking for containers left under {name}: {e:#}");
        }
    }
    for dir in store.bundles_of(act)? {
        let d = PathBuf::from(&dir);
        let view = d.join("rootfs");
        if lock::is_mount_point(&view) {
            rustix::mount::unmount(&view, rustix::mount::UnmountFlags::DETACH)
                .with_context(|| format!("unmounting the bundle root {}", view.display()))?;
        }
        let _ = std::fs::remove_file(d.join("config.json"));
        let _ = std::fs::remove_dir(&view);
        let _ = std::fs::remove_dir(&d);
        store.remove_bundle(&dir)?;
    }
    Ok(())
}
