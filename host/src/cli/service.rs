//! `tarpool run`: the service (the context built from the configuration, again on SIGHUP with what a reload may change, the poll loop, signals).

use super::*;

/// Everything a run needs, built from the configuration (again on SIGHUP).
pub(super) fn build_ctx(
    cfg: &Config,
    shutdown: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<Ctx> {
    let store = open_store(&cfg.state_dir)?;
    let sources =
        crate::source::Sources::parse(&cfg.sources, &cfg.registry, &cfg.state_dir.cache())?;
    let blobs = crate::blobs::BlobStore::new(&cfg.state_dir).context("opening the blob store")?;
    let steps = crate::wasm::Steps::load_with(&cfg.state_dir.cache(), &cfg.steps)
        .context("loading the format steps")?;
    if let Some(w) = steps.cache_warning() {
        tracing::warn!("{w}");
    }
    let backend = backend(cfg)?;
    if cfg.unconfined_worker {
        tracing::warn!(
            "unconfined_worker = true: layers are extracted without Landlock, no_new_privs or dropped capabilities where the kernel cannot enforce them"
        );
    }
    Ctx::new(crate::ctx::Parts {
        state_dir: cfg.state_dir.clone(),
        store,
        blobs,
        steps,
        backend: backend.into(),
        sources,
        policy: cfg.policy.clone(),
        retry: cfg.retry,
        unconfined_worker: cfg.unconfined_worker,
        shutdown: shutdown.clone(),
    })
    .context("building the run context")
}

/// Why a reloaded configuration cannot replace the running one, if it cannot.
pub(super) fn reload_refused(old: &Config, new: &Config) -> Option<String> {
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
pub(super) fn run(args: &Args, o: &Overrides<'_>, once: bool, json: bool) -> Result<u8> {
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
    engine::recover(&ctx)?;
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
        let metrics = metrics.map(|l| crate::metrics::spawn(l, &cfg.state_dir, ctx.backend.clone())).transpose()?;
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
                                    m.follow(ctx.backend.clone());
                                }
                                cfg = new;
                                tracing::info!(sources = ?cfg.sources, jobs = cfg.jobs, interval = cfg.interval, policy = %cfg.policy.name, "configuration reloaded");
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
                match crate::gc::collect(&ctx.store, ctx.backend.as_ref()) {
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
