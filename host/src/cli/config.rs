//! The configuration: the file (`--config`), the command line's overrides,
//! the checked `Config` every command works from, and the state directory's
//! checks and run lock.

use super::*;

/// The configuration file (every option is documented in
/// deploy/tarpool.toml). Also what `config show` prints.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) state_dir: Option<PathBuf>,
    /// One source (the short form of `sources`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<String>,
    /// Every source one run serves, in order (image names are unique
    /// across them: the first source keeps a name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sources: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backend: Option<crate::core::states::Backend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jobs: Option<usize>,
    /// Seconds between polls of the source (`run` without `--once`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) interval: Option<u64>,
    /// `default`, `strict`, or a policy file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<String>,
    /// `human` or `json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) log_format: Option<crate::logging::LogFormat>,
    /// Serve Prometheus metrics here (`run --metrics-addr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) metrics_addr: Option<String>,
    /// The service collects garbage (as `tarpool gc`) after every poll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gc: Option<bool>,
    /// Lets the extraction worker run without Landlock, no_new_privs or
    /// dropped capabilities where the kernel cannot enforce them. Logged.
    #[serde(default)]
    pub(crate) unconfined_worker: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_base_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_cap_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) steps: Option<crate::wasm::StepsConfig>,
    /// The devicemapper thin pool (`--backend thinpool`).
    #[serde(default)]
    pub(crate) thinpool: crate::backend::thinpool::ThinConfig,
    /// Every `registry://` source: credentials, blobs fetched at once.
    #[serde(default)]
    pub(crate) registry: crate::source::registry::Options,
    /// `exec` and `bundle`: the OCI runtime (`crun`, `runc` or a path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) runtime: Option<String>,
    /// `exec` and `bundle`: the first host uid and gid of the container's
    /// user namespace (65536 from it are mapped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) userns_base: Option<u32>,
}

pub(crate) fn load_file(args: &Args) -> Result<FileConfig> {
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
pub(crate) struct Overrides<'a> {
    /// `--source`, as often as given (none: the file's).
    pub(crate) sources: &'a [String],
    pub(crate) backend: Option<crate::core::states::Backend>,
    pub(crate) jobs: Option<usize>,
    pub(crate) interval: Option<u64>,
    pub(crate) metrics_addr: Option<&'a str>,
}

impl Overrides<'_> {
    /// Only `--backend` (the commands that take no other override).
    pub(crate) fn backend(backend: Option<crate::core::states::Backend>) -> Self {
        Overrides {
            backend,
            ..Overrides::default()
        }
    }
}

/// The checked configuration every command works from.
pub(crate) struct Config {
    pub(crate) state_dir: crate::statedir::StateDir,
    pub(crate) sources: Vec<String>,
    pub(crate) backend: crate::core::states::Backend,
    pub(crate) jobs: usize,
    pub(crate) interval: u64,
    /// As configured: `default`, `strict` or a file.
    pub(crate) policy_spec: String,
    pub(crate) policy: Policy,
    pub(crate) steps: crate::wasm::StepsConfig,
    pub(crate) unconfined_worker: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) log_format: crate::logging::LogFormat,
    pub(crate) metrics_addr: Option<String>,
    pub(crate) gc: bool,
    pub(crate) thinpool: crate::backend::thinpool::ThinConfig,
    pub(crate) registry: crate::source::registry::Options,
    pub(crate) container: crate::container::Settings,
}

impl Config {
    /// The effective configuration as the file that would give it.
    pub(crate) fn as_file(&self) -> FileConfig {
        FileConfig {
            state_dir: Some(self.state_dir.to_path_buf()),
            source: None,
            sources: Some(self.sources.clone()),
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
            registry: self.registry.clone(),
            runtime: Some(self.container.runtime.clone()),
            userns_base: Some(self.container.userns_base),
        }
    }
}

pub(crate) fn config(args: &Args, o: &Overrides<'_>) -> Result<Config> {
    resolve(args, load_file(args)?, o)
}

/// Merges the command line (`args`, `o`) over the file over the defaults,
/// and checks the result.
pub(crate) fn resolve(args: &Args, file: FileConfig, o: &Overrides<'_>) -> Result<Config> {
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
    let sources = match (o.sources, file.source, file.sources) {
        (cli, _, _) if !cli.is_empty() => cli.to_vec(),
        (_, Some(_), Some(_)) => {
            bail!("the configuration gives both `source` and `sources`; give one")
        }
        (_, Some(one), None) => vec![one],
        (_, None, Some(all)) if all.is_empty() => {
            bail!("`sources` is empty; name at least one source")
        }
        (_, None, Some(all)) => all,
        (_, None, None) => vec![EXAMPLE_BUCKET.to_string()],
    };
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
        sources,
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
        registry: {
            if file.registry.parallel == 0 || file.registry.parallel > 64 {
                bail!("[registry] parallel must be 1 to 64");
            }
            file.registry
        },
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
pub(crate) fn check_state_dir(state_dir: &StateDir) -> Result<()> {
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

pub(crate) fn open_store(state_dir: &StateDir) -> Result<Store> {
    check_state_dir(state_dir)?;
    Ok(Store::open(&state_dir.db())?)
}

/// Holds the state directory's run lock for the life of the value.
pub(crate) struct RunLock(#[allow(dead_code)] std::fs::File);

pub(crate) fn lock_state(state_dir: &StateDir) -> Result<RunLock> {
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
