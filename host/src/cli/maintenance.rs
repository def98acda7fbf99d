//! Keeping a state directory: `pool init`, `pool status`, `recover`, `gc`.

use super::*;

pub(super) fn pool_init(
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

pub(super) fn open_thinpool(cfg: &Config) -> Result<crate::backend::thinpool::ThinPool> {
    open_store(&cfg.state_dir)?;
    let dm = crate::backend::dm::LinuxDm::new(&cfg.state_dir.thinpool_dev())?;
    Ok(crate::backend::thinpool::ThinPool::open(
        &cfg.state_dir,
        cfg.thinpool.clone(),
        Arc::new(dm),
        Arc::new(crate::sys::LinuxMounts),
    )?)
}

pub(super) fn pool_status(cfg: &Config, json: bool) -> Result<u8> {
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

pub(super) fn recover(cfg: &Config, wipe: bool, json: bool) -> Result<u8> {
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

pub(super) fn gc(cfg: &Config, json: bool) -> Result<u8> {
    let store = open_store(&cfg.state_dir)?;
    let _lock = lock_state(&cfg.state_dir)?;
    let b = backend(cfg)?;
    let gc = crate::gc::collect(&store, b.as_ref())?;
    if json {
        println!("{}", serde_json::to_string(&gc)?);
    } else {
        let crate::gc::GcReport {
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
