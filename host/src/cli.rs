//! Command-line parsing into a checked configuration, and the commands.

use crate::statedir::StateDir;
use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::machine::RetryPolicy;
use crate::core::names::valid_image_name;
use crate::core::policy::Policy;
use crate::engine::{self, Ctx};
use crate::store::{ActivationRow, Store};

/// The example bucket in this repository: the default source.
pub const EXAMPLE_BUCKET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/example-bucket");

#[derive(Parser, Debug)]
#[command(
    name = "tarpool",
    version,
    about = "Turns container images in a bucket into activated copy-on-write root filesystems"
)]
pub struct Args {
    /// Where the SQLite state, blobs and layers live.
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    /// A TOML configuration file (see deploy/tarpool.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Logs on stderr: `human` (coloured on a terminal) or `json` (one
    /// object per line). Level: TARPOOL_LOG (default `info`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::logging::LogFormat>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// How `exec` and `bundle` run an activation.
#[derive(clap::Args, Debug, Clone)]
pub struct RunOpts {
    /// The container's network: `none`, a namespace of its own with only
    /// `lo`; `host`, the host's.
    #[arg(long, value_enum, default_value = "none")]
    net: crate::container::Net,
    /// `auto`: a user namespace whose root is an unprivileged host uid
    /// (`userns_base` in the config), the activation id-mapped; `host`: the
    /// host's, so the container's root is the host's.
    #[arg(long, value_enum, default_value = "auto")]
    userns: crate::container::Userns,
    /// Memory limit (e.g. 64M, 2G); swap is not allowed beyond it.
    #[arg(long)]
    memory: Option<String>,
    /// Most processes and threads at once.
    #[arg(long)]
    pids: Option<i64>,
    /// CPU time, in CPUs (0.5: half of one).
    #[arg(long)]
    cpus: Option<f64>,
}

impl RunOpts {
    fn options(&self) -> Result<crate::container::Options> {
        let memory = match &self.memory {
            Some(m) => Some(
                i64::try_from(
                    crate::backend::thinpool::parse_size(m)
                        .map_err(|e| anyhow::anyhow!("--memory {m}: {e}"))?,
                )
                .map_err(|_| anyhow::anyhow!("--memory {m}: too large"))?,
            ),
            None => None,
        };
        Ok(crate::container::Options {
            net: self.net,
            userns: self.userns,
            limits: crate::container::Limits {
                memory,
                pids: self.pids,
                cpus: self.cpus,
            },
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Discover images in the source and bring each to ready.
    Run {
        /// Process the source once and exit (otherwise poll it until stopped).
        #[arg(long)]
        once: bool,
        /// `dir:PATH` or a plain path (default: the repository's example bucket).
        #[arg(long)]
        source: Option<String>,
        /// auto, overlay or thinpool.
        #[arg(long, value_parser = crate::core::states::Backend::parse_arg)]
        backend: Option<crate::core::states::Backend>,
        /// Images processed at once.
        #[arg(long)]
        jobs: Option<usize>,
        /// Seconds between polls without --once (default 30).
        #[arg(long)]
        interval: Option<u64>,
        /// No progress bars, even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long)]
        metrics_addr: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The state of every tracked image.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The transitions and policy decisions recorded for an image.
    Audit {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A writable copy-on-write view of a ready image.
    Activate {
        name: String,
        /// The activation's name (default: a new ULID).
        #[arg(long = "as")]
        as_: Option<String>,
        /// Mount the activation read-write here (`nosuid,nodev`).
        #[arg(long)]
        mount: Option<PathBuf>,
        /// DANGEROUS: mount without `nosuid`, so the image's setuid and
        /// setgid files and file capabilities take effect on the host: any
        /// user who can reach the mount point can run an image's setuid-root
        /// program as root. Only for images you trust as you trust the host.
        #[arg(long, requires = "mount")]
        suid: bool,
        #[arg(long, value_parser = crate::core::states::Backend::parse_arg)]
        backend: Option<crate::core::states::Backend>,
    },
    /// Unmounts and removes an activation.
    Deactivate {
        act: String,
        #[arg(long, value_parser = crate::core::states::Backend::parse_arg)]
        backend: Option<crate::core::states::Backend>,
    },
    /// Runs a command in an activation as an OCI container (the configured
    /// `runtime`, crun by default): new pid, mount, IPC, UTS, cgroup and
    /// network namespaces, a user namespace whose root is an unprivileged
    /// host uid, Docker's capabilities and seccomp profile, the image's Env,
    /// WorkingDir and User; exits with its status.
    Exec {
        act: String,
        #[arg(long, value_parser = crate::core::states::Backend::parse_arg)]
        backend: Option<crate::core::states::Backend>,
        #[command(flatten)]
        run: RunOpts,
        /// The command and its arguments (default: the image's Entrypoint
        /// and Cmd).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Writes an OCI runtime bundle of an activation made with `--mount`
    /// into the new directory DIR: `config.json` and `rootfs`, mounted until
    /// the activation is deactivated. Any OCI runtime runs it (`crun run
    /// --bundle DIR ID`).
    Bundle {
        act: String,
        dir: PathBuf,
        #[command(flatten)]
        run: RunOpts,
        /// The command and its arguments (default: the image's Entrypoint
        /// and Cmd).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Cancels an image's active run.
    Cancel { name: String },
    /// Starts a new database in a state directory whose state.db is lost
    /// (missing, empty or unreadable), which every other command refuses:
    /// the old database and the layer and activation trees are moved to
    /// STATE/recovered/ID (nothing is deleted), the blobs are kept. Images
    /// are unpacked again by the next run.
    Recover {
        /// Delete the layer and activation trees (activations' writes
        /// included) instead of moving them aside.
        #[arg(long)]
        wipe: bool,
        #[arg(long)]
        json: bool,
    },
    /// The devicemapper thin pool.
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
    },
    /// Removes layers and snapshots no image or activation references, and
    /// reports what it reclaimed. Refuses while `tarpool run` is running.
    Gc {
        #[arg(long, value_parser = crate::core::states::Backend::parse_arg)]
        backend: Option<crate::core::states::Backend>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Prints the effective configuration (the file, defaults filled in,
    /// command-line overrides applied) as TOML a `--config` file accepts.
    Show {
        /// Overrides, as for `run`.
        #[arg(long)]
        source: Option<String>,
        #[arg(long, value_parser = crate::core::states::Backend::parse_arg)]
        backend: Option<crate::core::states::Backend>,
        #[arg(long)]
        jobs: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Creates a pool from sparse files on loop devices in the state directory.
    Init {
        /// e.g. 20G (default: [thinpool] data_size).
        #[arg(long)]
        data_size: Option<String>,
        /// e.g. 256M (default: [thinpool] meta_size).
        #[arg(long)]
        meta_size: Option<String>,
        /// A multiple of 64K (default: [thinpool] block_size, 64K).
        #[arg(long)]
        block_size: Option<String>,
    },
    /// Data and metadata usage, and the devices tarpool keeps in the pool.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// The configuration file (every option is documented in
/// deploy/tarpool.toml). Also what `config show` prints.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<crate::core::states::Backend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jobs: Option<usize>,
    /// Seconds between polls of the source (`run` without `--once`).
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<u64>,
    /// `default`, `strict`, or a policy file.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    /// `human` or `json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<crate::logging::LogFormat>,
    /// Serve Prometheus metrics here (`run --metrics-addr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
    /// The service collects garbage (as `tarpool gc`) after every poll.
    #[serde(skip_serializing_if = "Option::is_none")]
    gc: Option<bool>,
    /// Lets the extraction worker run without Landlock, no_new_privs or
    /// dropped capabilities where the kernel cannot enforce them. Logged.
    #[serde(default)]
    unconfined_worker: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_base_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_cap_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<crate::wasm::StepsConfig>,
    /// The devicemapper thin pool (`--backend thinpool`).
    #[serde(default)]
    thinpool: crate::backend::thinpool::ThinConfig,
    /// `exec` and `bundle`: the OCI runtime (`crun`, `runc` or a path).
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<String>,
    /// `exec` and `bundle`: the first host uid and gid of the container's
    /// user namespace (65536 from it are mapped).
    #[serde(skip_serializing_if = "Option::is_none")]
    userns_base: Option<u32>,
}

fn load_file(args: &Args) -> Result<FileConfig> {
    match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("config {}: {}", p.display(), e.message().trim()))
        }
        None => Ok(FileConfig::default()),
    }
}

/// Command-line values that override the file's.
#[derive(Debug, Default, Clone)]
struct Overrides<'a> {
    source: Option<&'a str>,
    backend: Option<crate::core::states::Backend>,
    jobs: Option<usize>,
    interval: Option<u64>,
    metrics_addr: Option<&'a str>,
}

/// The checked configuration every command works from.
struct Config {
    state_dir: crate::statedir::StateDir,
    source: String,
    backend: crate::core::states::Backend,
    jobs: usize,
    interval: u64,
    /// As configured: `default`, `strict` or a file.
    policy_spec: String,
    policy: Policy,
    steps: crate::wasm::StepsConfig,
    unconfined_worker: bool,
    retry: RetryPolicy,
    log_format: crate::logging::LogFormat,
    metrics_addr: Option<String>,
    gc: bool,
    thinpool: crate::backend::thinpool::ThinConfig,
    container: crate::container::Settings,
}

impl Config {
    /// The effective configuration as the file that would give it.
    fn as_file(&self) -> FileConfig {
        FileConfig {
            state_dir: Some(self.state_dir.to_path_buf()),
            source: Some(self.source.clone()),
            backend: Some(self.backend),
            jobs: Some(self.jobs),
            interval: Some(self.interval),
            policy: Some(self.policy_spec.clone()),
            log_format: Some(self.log_format),
            metrics_addr: self.metrics_addr.clone(),
            gc: Some(self.gc),
            unconfined_worker: self.unconfined_worker,
            max_attempts: Some(self.retry.max_attempts),
            retry_base_ms: Some(self.retry.base.as_millis() as u64),
            retry_cap_ms: Some(self.retry.cap.as_millis() as u64),
            steps: Some(self.steps.clone()),
            thinpool: self.thinpool.clone(),
            runtime: Some(self.container.runtime.clone()),
            userns_base: Some(self.container.userns_base),
        }
    }
}

fn config(args: &Args, o: &Overrides<'_>) -> Result<Config> {
    let file = load_file(args)?;
    let policy = match file.policy.as_deref() {
        None => Policy::default_policy(),
        Some(name) => match Policy::builtin(name) {
            Some(text) => Policy::from_toml(text).map_err(anyhow::Error::msg)?,
            None => Policy::from_toml(
                &std::fs::read_to_string(name).with_context(|| format!("reading policy {name}"))?,
            )
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?,
        },
    };
    let mut steps = file.steps.clone().unwrap_or_default();
    steps.max_member_read = usize::try_from(policy.max_json_bytes.limit).ok();
    let mut retry = RetryPolicy::default();
    if let Some(n) = file.max_attempts {
        retry.max_attempts = n.max(1);
    }
    if let Some(ms) = file.retry_base_ms {
        retry.base = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = file.retry_cap_ms {
        retry.cap = std::time::Duration::from_millis(ms);
    }
    let jobs = o.jobs.or(file.jobs).unwrap_or(2);
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let interval = o.interval.or(file.interval).unwrap_or(30);
    if interval == 0 {
        bail!("--interval must be at least 1 second");
    }
    let metrics_addr = o
        .metrics_addr
        .map(str::to_string)
        .or(file.metrics_addr.clone());
    if let Some(a) = &metrics_addr {
        a.parse::<std::net::SocketAddr>().map_err(|e| {
            anyhow::anyhow!("metrics address {a:?}: {e} (expected e.g. 127.0.0.1:9464)")
        })?;
    }
    // Resolved once here: the worker and the mount helpers change the
    // working directory, so a relative path would name other places.
    let state_dir = args
        .state_dir
        .clone()
        .or(file.state_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/tarpool"));
    let state_dir = std::path::absolute(&state_dir)
        .with_context(|| format!("resolving state directory {}", state_dir.display()))?;
    Ok(Config {
        state_dir: crate::statedir::StateDir::new(state_dir),
        source: o
            .source
            .map(str::to_string)
            .or(file.source)
            .unwrap_or_else(|| EXAMPLE_BUCKET.to_string()),
        backend: o
            .backend
            .or(file.backend)
            .unwrap_or(crate::core::states::Backend::Auto),
        jobs,
        interval,
        policy_spec: file.policy.unwrap_or_else(|| "default".into()),
        policy,
        steps,
        unconfined_worker: file.unconfined_worker,
        retry,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(crate::logging::LogFormat::Human),
        metrics_addr,
        gc: file.gc.unwrap_or(true),
        thinpool: file.thinpool,
        container: {
            let d = crate::container::Settings::default();
            crate::container::Settings {
                runtime: file.runtime.unwrap_or(d.runtime),
                userns_base: file.userns_base.unwrap_or(d.userns_base),
            }
        },
    })
}

/// Makes the state directory private (creating it if need be) and refuses
/// one that holds tarpool's data but no usable database: a start without it
/// would treat every layer and activation as unknown and delete them.
fn check_state_dir(state_dir: &StateDir) -> Result<()> {
    crate::statedir::prepare(state_dir)
        .with_context(|| format!("preparing state directory {}", state_dir.display()))?;
    let usable = Store::holds_schema(&state_dir.db());
    if usable.as_ref().is_ok_and(|u| *u) {
        return Ok(());
    }
    let data = crate::statedir::tarpool_data(state_dir)
        .with_context(|| format!("reading state directory {}", state_dir.display()))?;
    match (usable, data) {
        (Ok(_), None) => Ok(()),
        (usable, data) => {
            let why = match usable {
                Err(e) => format!("state.db cannot be read ({e})"),
                Ok(_) => "state.db is missing or empty".into(),
            };
            bail!(
                "state directory {} holds tarpool data ({}) but {why}; refusing to start, nothing was deleted. Restore state.db, or run `tarpool recover` (starts a new database, keeps the blobs, moves layers and activations aside) or `tarpool recover --wipe` (deletes them)",
                state_dir.display(),
                data.unwrap_or_else(|| "an unreadable database".into())
            )
        }
    }
}

fn open_store(state_dir: &StateDir) -> Result<Store> {
    check_state_dir(state_dir)?;
    Ok(Store::open(&state_dir.db())?)
}

/// Holds the state directory's run lock for the life of the value.
struct RunLock(#[allow(dead_code)] std::fs::File);

fn lock_state(state_dir: &StateDir) -> Result<RunLock> {
    use std::io::Write as _;
    let path = state_dir.run_lock();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            f.set_len(0)?;
            writeln!(f, "{}", std::process::id())?;
            Ok(RunLock(f))
        }
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another `tarpool run` (pid {}) is already using state directory {}; refusing to start",
                pid.trim(),
                state_dir.display()
            )
        }
        Err(e) => Err(e).context("locking the state directory"),
    }
}

pub fn main() -> Result<u8> {
    use std::io::IsTerminal as _;
    // Before anything is created: nothing tarpool makes is readable by
    // other users (see statedir).
    crate::statedir::set_private_umask();
    let args = Args::parse();
    // The file's log format counts too; a broken file is reported below by
    // the command that reads it.
    let format = args
        .log_format
        .or_else(|| load_file(&args).ok().and_then(|f| f.log_format))
        .unwrap_or(crate::logging::LogFormat::Human);
    let bars = match &args.cmd {
        Cmd::Run {
            no_progress, json, ..
        } if !no_progress
            && !json
            && format == crate::logging::LogFormat::Human
            && std::io::stderr().is_terminal() =>
        {
            let b = Arc::new(crate::progress::Bars::new());
            crate::progress::install(b.clone());
            Some(b.multi())
        }
        _ => None,
    };
    crate::logging::init(format, bars);
    let none = Overrides::default();
    match &args.cmd {
        Cmd::Run {
            once,
            source,
            backend,
            jobs,
            interval,
            no_progress: _,
            metrics_addr,
            json,
        } => {
            let o = Overrides {
                source: source.as_deref(),
                backend: *backend,
                jobs: *jobs,
                interval: *interval,
                metrics_addr: metrics_addr.as_deref(),
            };
            run(&args, &o, *once, *json)
        }
        Cmd::Config {
            cmd:
                ConfigCmd::Show {
                    source,
                    backend,
                    jobs,
                    json,
                },
        } => {
            let o = Overrides {
                source: source.as_deref(),
                backend: *backend,
                jobs: *jobs,
                ..Overrides::default()
            };
            let cfg = config(&args, &o)?;
            let file = cfg.as_file();
            if *json {
                println!("{}", serde_json::to_string_pretty(&file)?);
            } else {
                println!(
                    "# tarpool's effective configuration (policy `{}`, sha256:{})",
                    cfg.policy.name,
                    crate::core::policy::policy_hash(&toml::to_string(&cfg.policy)?)
                );
                print!("{}", toml::to_string(&file)?);
            }
            Ok(0)
        }
        Cmd::Status { json } => {
            let cfg = config(&args, &none)?;
            status(&open_store(&cfg.state_dir)?, *json)
        }
        Cmd::Audit { name, json } => {
            let cfg = config(&args, &none)?;
            audit(&open_store(&cfg.state_dir)?, name, *json)
        }
        Cmd::Activate {
            name,
            as_,
            mount,
            suid,
            backend,
        } => {
            let cfg = config(
                &args,
                &Overrides {
                    backend: *backend,
                    ..Overrides::default()
                },
            )?;
            let suid = if *suid {
                crate::sys::Suid::Honoured
            } else {
                crate::sys::Suid::Ignored
            };
            activate(&cfg, name, as_.as_deref(), mount.as_deref(), suid)
        }
        Cmd::Deactivate { act, backend } => {
            let cfg = config(
                &args,
                &Overrides {
                    backend: *backend,
                    ..Overrides::default()
                },
            )?;
            deactivate(&cfg, act)
        }
        Cmd::Exec {
            act,
            backend: b,
            run,
            cmd,
        } => {
            let cfg = config(
                &args,
                &Overrides {
                    backend: *b,
                    ..Overrides::default()
                },
            )?;
            let opts = run.options()?;
            let store = open_store(&cfg.state_dir)?;
            crate::container::exec(
                &cfg.state_dir,
                &store,
                &|| backend(&cfg),
                &cfg.container,
                act,
                cmd,
                &opts,
            )
        }
        Cmd::Bundle { act, dir, run, cmd } => {
            let cfg = config(&args, &Overrides::default())?;
            let opts = run.options()?;
            let store = open_store(&cfg.state_dir)?;
            let made = crate::container::bundle(
                &cfg.state_dir,
                &store,
                &cfg.container,
                act,
                dir,
                cmd,
                &opts,
            )?;
            println!("{made}");
            Ok(0)
        }
        Cmd::Pool { cmd } => {
            let cfg = config(
                &args,
                &Overrides {
                    backend: Some(crate::core::states::Backend::Thinpool),
                    ..Overrides::default()
                },
            )?;
            match cmd {
                PoolCmd::Init {
                    data_size,
                    meta_size,
                    block_size,
                } => pool_init(
                    &cfg,
                    data_size.as_deref(),
                    meta_size.as_deref(),
                    block_size.as_deref(),
                ),
                PoolCmd::Status { json } => pool_status(&cfg, *json),
            }
        }
        Cmd::Gc { backend, json } => {
            let cfg = config(
                &args,
                &Overrides {
                    backend: *backend,
                    ..Overrides::default()
                },
            )?;
            gc(&cfg, *json)
        }
        Cmd::Recover { wipe, json } => {
            let cfg = config(&args, &none)?;
            recover(&cfg, *wipe, *json)
        }
        Cmd::Cancel { name } => {
            let cfg = config(&args, &none)?;
            let store = open_store(&cfg.state_dir)?;
            if store.request_cancel(name)? {
                println!("cancellation requested for {name}");
                Ok(0)
            } else {
                bail!("image {name} has no active run")
            }
        }
    }
}

fn backend(cfg: &Config) -> Result<Box<dyn crate::backend::Snapshotter>> {
    crate::backend::open(
        cfg.backend,
        &cfg.state_dir,
        Arc::new(crate::sys::LinuxMounts),
        &cfg.thinpool,
    )
    .map_err(anyhow::Error::msg)
}

/// Everything a run needs, built from the configuration (again on SIGHUP).
fn build_ctx(cfg: &Config, shutdown: &Arc<std::sync::atomic::AtomicBool>) -> Result<Ctx> {
    let store = open_store(&cfg.state_dir)?;
    let source = crate::source::parse(&cfg.source)?;
    let blobs = crate::blobs::BlobStore::new(&cfg.state_dir).context("opening the blob store")?;
    let steps = crate::wasm::Steps::load_with(&cfg.state_dir.cache(), &cfg.steps)
        .context("loading the format steps")?;
    if let Some(w) = steps.cache_warning() {
        tracing::warn!("{w}");
    }
    let backend = backend(cfg)?;
    let mut ctx = Ctx::new(
        cfg.state_dir.clone(),
        store,
        blobs,
        steps,
        backend,
        source,
        cfg.policy.clone(),
        cfg.retry,
    );
    if cfg.unconfined_worker {
        tracing::warn!(
            "unconfined_worker = true: layers are extracted without Landlock, no_new_privs or dropped capabilities where the kernel cannot enforce them"
        );
        ctx.unconfined_worker = true;
    }
    ctx.shutdown = shutdown.clone();
    Ok(ctx)
}

/// Why a reloaded configuration cannot replace the running one, if it cannot.
fn reload_refused(old: &Config, new: &Config) -> Option<String> {
    if old.state_dir != new.state_dir {
        return Some("state_dir cannot change while the service runs; restart it".into());
    }
    if old.backend != new.backend {
        return Some("backend cannot change while the service runs; restart it".into());
    }
    if old.metrics_addr != new.metrics_addr {
        return Some("metrics_addr cannot change while the service runs; restart it".into());
    }
    // A different pool (or id range) would be used without the crash
    // reconciliation a start makes; the sizes only matter to `pool init`.
    let pool = |c: &Config| {
        (
            c.thinpool.pool.clone(),
            c.thinpool.first_dev_id,
            c.thinpool.volume_size.clone(),
            c.thinpool.zero_blocks,
        )
    };
    if pool(old) != pool(new) {
        return Some("[thinpool] pool, first_dev_id, volume_size and zero_blocks cannot change while the service runs; restart it".into());
    }
    None
}

/// `tarpool run`: with `once`, one pass over the source; otherwise the
/// service: resume unfinished runs, then poll the source every `interval`
/// seconds until SIGTERM/SIGINT (the transitions under way finish; a second
/// signal stops at once, leaving them to resume). SIGHUP re-reads the
/// configuration before the next poll.
fn run(args: &Args, o: &Overrides<'_>, once: bool, json: bool) -> Result<u8> {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let mut cfg = config(args, o)?;
    check_state_dir(&cfg.state_dir)?;
    let _lock = lock_state(&cfg.state_dir)?;
    match crate::statedir::repair(&cfg.state_dir) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            entries = n,
            "state directory: took group and other permissions off entries tarpool made"
        ),
        Err(e) => return Err(e).context("repairing the state directory's permissions"),
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The handlers are in place before the slow start (compiling guests,
    // crash recovery): a signal then is handled, not fatal.
    {
        use tokio::signal::unix::{signal, SignalKind};
        let _in_rt = rt.enter();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (shutdown, reload) = (shutdown.clone(), reload.clone());
        rt.spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: the configuration is reloaded before the next poll");
                        reload.store(true, SeqCst);
                        continue;
                    }
                };
                if shutdown.swap(true, SeqCst) {
                    tracing::warn!(signal = name, "stopping now; interrupted transitions resume at the next start");
                    std::process::exit(130);
                }
                tracing::info!(signal = name, "stopping after the transitions under way");
            }
        });
    }
    let mut ctx = Arc::new(build_ctx(&cfg, &shutdown)?);
    ctx.recover()?;
    let code = rt.block_on(async {
        let metrics = match &cfg.metrics_addr {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("serving metrics on {a}"))?,
            ),
            None => None,
        };
        if let Some(l) = &metrics {
            tracing::info!(addr = %l.local_addr()?, "metrics: listening");
        }
        let metrics = metrics.map(|l| crate::metrics::spawn(l, ctx.clone())).transpose()?;
        loop {
            if !once && shutdown.load(SeqCst) {
                tracing::info!("stopped");
                return Ok(0);
            }
            if reload.swap(false, SeqCst) {
                match config(args, o) {
                    Err(e) => tracing::error!(error = format!("{e:#}"), "reload failed; keeping the running configuration"),
                    Ok(new) => match reload_refused(&cfg, &new) {
                        Some(why) => tracing::error!(error = why, "reload refused; keeping the running configuration"),
                        None => match build_ctx(&new, &shutdown) {
                            Ok(c) => {
                                ctx = Arc::new(c);
                                if let Some(m) = &metrics {
                                    m.follow(ctx.clone());
                                }
                                cfg = new;
                                tracing::info!(source = %cfg.source, jobs = cfg.jobs, interval = cfg.interval, policy = %cfg.policy.name, "configuration reloaded");
                            }
                            Err(e) => tracing::error!(error = format!("{e:#}"), "reload failed; keeping the running configuration"),
                        },
                    },
                }
            }
            let pass = async {
                let (names, summary) = engine::discover(&ctx)?;
                for (key, reason) in &summary.rejected {
                    tracing::warn!(key = %key, reason = %reason, "not an image");
                }
                engine::run_all(ctx.clone(), cfg.jobs).await?;
                anyhow::Ok((names, summary))
            }
            .await;
            if once {
                let (names, summary) = pass?;
                return report(&ctx, &names, &summary, json);
            }
            // The service keeps going: a source that cannot be listed now
            // (network, credentials) is tried again at the next poll.
            if let Err(e) = &pass {
                tracing::error!(error = format!("{e:#}"), "poll failed; trying again at the next one");
            }
            // Between polls no run is under way (a stop request may have
            // left some unfinished: their layers are kept).
            if cfg.gc && !shutdown.load(SeqCst) {
                match engine::collect(&ctx.store, ctx.backend.as_ref()) {
                    Ok(r) => {
                        if r.layers_removed > 0 || r.cleanup.removed > 0 {
                            tracing::info!(
                                layers_removed = r.layers_removed,
                                other_removed = r.cleanup.removed,
                                reclaimed_data_bytes = r.reclaimed_data_bytes,
                                "garbage collected"
                            );
                        }
                        for e in &r.cleanup.errors {
                            tracing::warn!(error = %e, "gc: could not remove (retried next time)");
                        }
                    }
                    Err(e) => tracing::error!(error = format!("{e:#}"), "gc failed; trying again after the next poll"),
                }
            }
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(cfg.interval);
            while tokio::time::Instant::now() < until && !shutdown.load(SeqCst) && !reload.load(SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    });
    // Nothing left to wait for once the runs have stopped (a metrics scrape
    // stuck on the pool's status must not hold the stop).
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

fn report(ctx: &Ctx, names: &[String], summary: &engine::Summary, json: bool) -> Result<u8> {
    let images = ctx.store.images()?;
    let mut all_ready = true;
    let mut rows = Vec::new();
    for n in names {
        let img = images.iter().find(|i| &i.name == n);
        let state = img.map(|i| i.state.as_str()).unwrap_or("pending");
        let state = if state == "cancelled" {
            "failed"
        } else {
            state
        };
        all_ready &= state == "ready";
        rows.push(json!({
            "name": n,
            "state": state,
            "error": img.and_then(|i| i.error.clone()),
            "unchanged": summary.unchanged.contains(n),
        }));
    }
    if json {
        println!(
            "{}",
            json!({ "images": rows, "rejected": summary.rejected.iter().map(|(k, r)| json!({"key": k, "reason": r})).collect::<Vec<_>>() })
        );
    } else {
        for r in &rows {
            let err = r["error"]
                .as_str()
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            let note = if r["unchanged"] == true {
                " (unchanged)"
            } else {
                ""
            };
            println!(
                "{:<24} {}{}{}",
                r["name"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                note,
                err
            );
        }
        println!(
            "{} ready, {} failed, {} not images",
            rows.iter().filter(|r| r["state"] == "ready").count(),
            rows.iter().filter(|r| r["state"] == "failed").count(),
            summary.rejected.len()
        );
    }
    Ok(if all_ready { 0 } else { 1 })
}

fn status(store: &Store, json: bool) -> Result<u8> {
    store.snapshot(|| status_inner(store, json))
}

fn status_inner(store: &Store, json: bool) -> Result<u8> {
    let images = store.images()?;
    let active = store.active_runs()?;
    let mut names: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
    for r in &active {
        if !names.contains(&r.image) {
            names.push(r.image.clone());
        }
    }
    names.sort();
    let mut rows = Vec::new();
    for n in &names {
        let img = images.iter().find(|i| &i.name == n);
        let run = active.iter().find(|r| &r.image == n);
        let (state, error) = match (run, img) {
            (Some(r), _) => {
                let started = !store.transitions_for(n)?.iter().all(|t| t.run != r.id);
                (if started { "running" } else { "pending" }, None)
            }
            (None, Some(i)) if i.state == crate::core::states::ImageState::Cancelled => {
                ("failed", i.error.clone())
            }
            (None, Some(i)) => (i.state.as_str(), i.error.clone()),
            (None, None) => ("pending", None),
        };
        rows.push(json!({
            "name": n,
            "state": state,
            "error": error,
            // Why it failed: input (settled until the image changes),
            // environment or resource (tried again at the next poll).
            "failure_kind": if state == "failed" {
                img.and_then(|i| i.failure_kind)
            } else {
                None
            },
            "run": run.map(|r| r.id.clone()).or_else(|| img.and_then(|i| i.last_run.clone())),
            "step": run.and_then(|r| r.next_step.clone()),
            "format": img.and_then(|i| i.format.clone()),
            "top_chain": img.and_then(|i| i.top_chain.clone()),
            "layers": img.and_then(|i| i.layers.clone()),
            "config": img.and_then(|i| i.config.clone()),
            "updated_at": img.map(|i| i.updated_at),
        }));
    }
    let rejected: Vec<_> = store
        .rejected()?
        .into_iter()
        .map(|(s, k, r)| json!({"source": s, "key": k, "reason": r}))
        .collect();
    if json {
        println!("{}", json!({ "images": rows, "rejected": rejected }));
    } else {
        if rows.is_empty() {
            println!("no images tracked");
        }
        for r in &rows {
            let err = r["error"]
                .as_str()
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            println!(
                "{:<24} {}{}",
                r["name"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                err
            );
        }
        for r in &rejected {
            println!(
                "not an image: {}: {}",
                r["key"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}

fn audit(store: &Store, name: &str, json: bool) -> Result<u8> {
    let transitions = store.transitions_for(name)?;
    let decisions = store.decisions_for(name)?;
    if transitions.is_empty() && !store.has_image_history(name)? {
        bail!("no image named {name} has been processed");
    }
    let mut runs: Vec<&str> = transitions.iter().map(|t| t.run.as_str()).collect();
    runs.dedup();
    let mut policies = Vec::new();
    for r in runs {
        if let Some((sha, pname)) = store.run_policy(r)? {
            policies.push(json!({ "run": r, "policy": pname, "policy_sha256": sha }));
        }
    }
    if json {
        println!(
            "{}",
            json!({ "image": name, "runs": policies, "transitions": transitions, "decisions": decisions })
        );
    } else {
        for p in &policies {
            println!(
                "run {} policy {} sha256:{}",
                p["run"].as_str().unwrap_or(""),
                p["policy"].as_str().unwrap_or(""),
                p["policy_sha256"].as_str().unwrap_or("")
            );
        }
        for t in &transitions {
            let err = t
                .error
                .as_deref()
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            println!(
                "{} {} {:<20} #{} {}{}",
                t.run, t.version, t.name, t.attempt, t.outcome, err
            );
        }
        for d in &decisions {
            let at = match (d.layer, &d.path) {
                (Some(l), Some(p)) => format!(" layer {l} `{p}`:"),
                (Some(l), None) => format!(" layer {l}:"),
                (None, Some(p)) => format!(" `{p}`:"),
                (None, None) => String::new(),
            };
            let action = if d.action.is_empty() {
                &d.verdict
            } else {
                &d.action
            };
            println!(
                "decision {} {:<18} {:<6}{at} {} (why: {})",
                d.version, d.rule, action, d.detail, d.reason
            );
        }
    }
    Ok(0)
}

fn activate(
    cfg: &Config,
    name: &str,
    as_: Option<&str>,
    mount: Option<&Path>,
    suid: crate::sys::Suid,
) -> Result<u8> {
    if !valid_image_name(name) {
        bail!("invalid image name {name:?}");
    }
    let store = open_store(&cfg.state_dir)?;
    let img = store
        .image(name)?
        .with_context(|| format!("no image named {name}"))?;
    if img.state != crate::core::states::ImageState::Ready {
        bail!("image {name} is {}, not ready", img.state);
    }
    let act = as_
        .map(str::to_string)
        .unwrap_or_else(|| ulid::Ulid::new().to_string());
    if !crate::core::names::valid_activation_name(&act) {
        bail!("invalid activation name {act:?} (allowed: [A-Za-z0-9_-][A-Za-z0-9._-]{{0,63}})");
    }
    if store.activation(&act)?.is_some() {
        bail!("activation {act} already exists");
    }
    let chains: Vec<String> = img
        .layers
        .as_ref()
        .and_then(|l| l.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["chain_id"].as_str().map(str::to_string))
        .collect();
    let mut ids = Vec::new();
    for c in chains.iter().rev() {
        match store.layer(c)? {
            Some(l) if l.committed => ids.push(l.id),
            _ => bail!("image {name}: layer {c} is missing; run `tarpool run` again"),
        }
    }
    let mountpoint = match mount {
        Some(m) => {
            std::fs::create_dir_all(m)
                .with_context(|| format!("creating mount point {}", m.display()))?;
            Some(std::fs::canonicalize(m)?)
        }
        None => None,
    };
    let b = backend(cfg)?;
    // Recorded first: a cleanup running meanwhile (gc, a run starting) keeps
    // what the store knows.
    store.add_activation(&ActivationRow {
        id: act.clone(),
        image: name.to_string(),
        top_chain: img.top_chain.clone().unwrap_or_default(),
        mountpoint: mountpoint.as_ref().map(|p| p.display().to_string()),
    })?;
    let started = std::time::Instant::now();
    if suid == crate::sys::Suid::Honoured {
        tracing::warn!(
            activation = %act,
            "--suid: the image's setuid files take effect on the host at the mount point"
        );
    }
    let info = match b.activate(&act, &ids, mountpoint.as_deref(), suid) {
        Ok(i) => i,
        Err(e) => {
            store.remove_activation(&act)?;
            return Err(anyhow::Error::new(e).context(format!("activating {name}")));
        }
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        json!({
            "activation": act,
            "image": name,
            "backend": b.kind(),
            "top_chain": img.top_chain,
            "mountpoint": info.mountpoint,
            "mount": { "type": info.fstype, "options": info.options },
            "device": info.device,
            "elapsed_ms": elapsed_ms,
        })
    );
    Ok(0)
}

fn deactivate(cfg: &Config, act: &str) -> Result<u8> {
    let store = open_store(&cfg.state_dir)?;
    let exists = || -> Result<ActivationRow> {
        store
            .activation(act)?
            .with_context(|| format!("no activation named {act}"))
    };
    exists()?;
    // Never while a `tarpool exec` runs in it: "activation ACT is in use".
    let lock = crate::container::lock_activation(&cfg.state_dir, act, true)?;
    // Again under the lock: another deactivate may have just removed it.
    let row = exists()?;
    crate::container::release(&cfg.state_dir, &store, &cfg.container, act)
        .with_context(|| format!("deactivating {act}"))?;
    let b = backend(cfg)?;
    b.deactivate(act, row.mountpoint.as_deref().map(Path::new))
        .with_context(|| format!("deactivating {act}"))?;
    store.remove_activation(act)?;
    if let Err(e) = lock.remove() {
        tracing::warn!("removing the lock file of activation {act}: {e}");
    }
    println!("{}", json!({ "deactivated": act }));
    Ok(0)
}

fn pool_init(
    cfg: &Config,
    data: Option<&str>,
    meta: Option<&str>,
    block: Option<&str>,
) -> Result<u8> {
    // The database first: the pool's tables live in it.
    open_store(&cfg.state_dir)?;
    let dm = crate::backend::dm::LinuxDm::new(&cfg.state_dir.thinpool_dev())?;
    let node = crate::backend::thinpool::ThinPool::init(
        &cfg.state_dir,
        &cfg.thinpool,
        &dm,
        data,
        meta,
        block,
    )
    .map_err(anyhow::Error::msg)
    .context("tarpool pool init")?;
    println!(
        "thin pool `{}` created ({}); its files are in {}",
        cfg.thinpool.pool,
        node.display(),
        cfg.state_dir.thinpool().display()
    );
    Ok(0)
}

fn open_thinpool(cfg: &Config) -> Result<crate::backend::thinpool::ThinPool> {
    open_store(&cfg.state_dir)?;
    let dm = crate::backend::dm::LinuxDm::new(&cfg.state_dir.thinpool_dev())?;
    Ok(crate::backend::thinpool::ThinPool::open(
        &cfg.state_dir,
        cfg.thinpool.clone(),
        Arc::new(dm),
        Arc::new(crate::sys::LinuxMounts),
    )?)
}

fn pool_status(cfg: &Config, json: bool) -> Result<u8> {
    use crate::backend::Snapshotter as _;
    let pool = open_thinpool(cfg)?;
    let usage = pool
        .usage()?
        .context("the pool's status could not be read")?;
    let devices = pool.devices()?;
    if json {
        let devs: Vec<_> = devices
            .iter()
            .map(|d| json!({"dev_id": d.dev_id, "owner": d.owner, "origin": d.origin, "state": d.state, "active": d.active}))
            .collect();
        println!(
            "{}",
            json!({"pool": cfg.thinpool.pool, "usage": usage, "devices": devs})
        );
    } else {
        println!("pool {}: {}", cfg.thinpool.pool, usage.summary());
        for d in &devices {
            println!(
                "  thin {:>6}  {:<9} {:<8} origin {:<6} {}",
                d.dev_id,
                d.state,
                if d.active { "active" } else { "inactive" },
                d.origin
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "-".into()),
                d.owner
            );
        }
    }
    Ok(0)
}

fn recover(cfg: &Config, wipe: bool, json: bool) -> Result<u8> {
    let dir = StateDir::new(
        crate::statedir::prepare(&cfg.state_dir)
            .with_context(|| format!("preparing state directory {}", cfg.state_dir.display()))?,
    );
    let _lock = lock_state(&dir)?;
    if Store::holds_schema(&dir.db()).unwrap_or(false) {
        bail!(
            "state directory {}: state.db is usable; there is nothing to recover",
            dir.display()
        );
    }
    let id = ulid::Ulid::new().to_string();
    let done = crate::statedir::recover(&dir, &id, wipe)
        .with_context(|| format!("recovering state directory {}", dir.display()))?;
    Store::open(&dir.db())?;
    tracing::info!(entries = ?done.entries, moved_to = ?done.moved_to, wiped = wipe, "state directory recovered: a new database");
    if json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        match &done.moved_to {
            Some(p) => println!(
                "recover: a new state.db; moved {} to {}; the blobs are kept; the next run unpacks every image again",
                done.entries.join(", "),
                p.display()
            ),
            None => println!("recover: a new state.db; the blobs are kept"),
        }
        if wipe {
            println!("recover: deleted the layer and activation trees");
        }
    }
    Ok(0)
}

fn gc(cfg: &Config, json: bool) -> Result<u8> {
    let store = open_store(&cfg.state_dir)?;
    let _lock = lock_state(&cfg.state_dir)?;
    let b = backend(cfg)?;
    let gc = engine::collect(&store, b.as_ref())?;
    if json {
        println!("{}", serde_json::to_string(&gc)?);
    } else {
        let engine::GcReport {
            layers_removed: layers,
            cleanup: report,
            before,
            after,
            reclaimed_data_bytes: reclaimed,
        } = gc;
        println!(
            "gc: removed {layers} unreferenced layer(s) and {} other device(s) or directories",
            report.removed
        );
        for e in &report.errors {
            println!("gc: could not remove (retried next time): {e}");
        }
        if let (Some(a), Some(z), Some(r)) = (before, after, reclaimed) {
            println!(
                "gc: reclaimed {:.1} MiB of pool data ({} -> {})",
                r as f64 / (1 << 20) as f64,
                a.summary(),
                z.summary()
            );
        }
    }
    Ok(0)
}
