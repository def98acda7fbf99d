//! The command line (clap): the arguments of every command.

use super::*;

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
    pub(crate) fn options(&self) -> Result<crate::container::Options> {
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
        /// `s3://BUCKET[/PREFIX]`, `dir:PATH` or a plain path; may be given
        /// more than once, one run serving every source (default: the
        /// configuration's `sources`, or the repository's example bucket).
        #[arg(long)]
        source: Vec<String>,
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
    /// The WebAssembly steps: the configured chains, and checking a
    /// component before pinning it (see docs/steps.md).
    Steps {
        #[command(subcommand)]
        cmd: StepsCmd,
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
        source: Vec<String>,
        #[arg(long, value_parser = crate::core::states::Backend::parse_arg)]
        backend: Option<crate::core::states::Backend>,
        #[arg(long)]
        jobs: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum StepsCmd {
    /// Each configured component, in the order it is asked: its step,
    /// world, origin, WIT package version and sha256.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Which world FILE implements, the WIT version it was built against
    /// and whether this host accepts it (and if not, why), what it
    /// imports, its size and compile time, and the `[steps]` line that
    /// pins it. Exits 1 when it is refused.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Runs the configured chains with FILE inserted (first among the
    /// classify or manifest components, in place of the tar check, or last
    /// among the inspect steps) against IMAGE, a directory laid out as an
    /// image prefix or an uncompressed image archive, and prints what they
    /// answered: the layout (format, layers, config) and every inspect
    /// verdict. Uses no state directory. Exits 1 when FILE is refused or
    /// the image cannot be read.
    Try {
        file: PathBuf,
        image: PathBuf,
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
