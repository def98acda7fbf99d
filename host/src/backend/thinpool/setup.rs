//! Setting the pool up: opening the backend on an existing pool (or on the
//! one `pool init` made, set up again from its files), and `pool init`.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::config::{parse_size, ThinConfig};
use super::lock::PoolLock;
use super::{registry, ThinPool};
use crate::backend::dm::DmOps;
use crate::failpoint::Failpoints;
use crate::store::Store;
use crate::sys::MountOps;

/// How `pool init` made the pool, so a later start (after a reboot, say)
/// can set it up again from the same files.
#[derive(Debug, Serialize, Deserialize)]
struct PoolFiles {
    name: String,
    data_file: PathBuf,
    meta_file: PathBuf,
    data_bytes: u64,
    block_bytes: u64,
    low_water_bytes: u64,
    zero_blocks: bool,
}

impl ThinPool {
    /// Opens the backend on pool `cfg.pool`: an existing device-mapper pool
    /// of that name, or the one `pool init` made in this state directory
    /// (set up again from its files when the device is gone, as after a
    /// reboot).
    pub fn open(
        state_dir: &crate::statedir::StateDir,
        cfg: ThinConfig,
        dm: Arc<dyn DmOps>,
        mounts: Arc<dyn MountOps>,
    ) -> io::Result<ThinPool> {
        let dir = state_dir.thinpool();
        for d in ["mnt", "dev"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let volume = parse_size(&cfg.volume_size).map_err(io::Error::other)?;
        // The store's migrations make the pool's tables; the pool's rows go
        // through this store of its own.
        let store = Store::open(&state_dir.db()).map_err(io::Error::other)?;
        store
            .set_busy_timeout(std::time::Duration::from_secs(30))
            .map_err(registry)?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("pool.lock"))?;
        let files = Self::pool_files(&dir)?;
        let block_bytes = match &files {
            Some(f) if f.name == cfg.pool => f.block_bytes,
            _ => parse_size(&cfg.block_size).map_err(io::Error::other)?,
        };
        let mut pool = ThinPool {
            cfg,
            dir,
            store,
            dm,
            mounts,
            lock: PoolLock::new(lock),
            failpoints: Failpoints::from_env(),
            volume_sectors: volume / 512,
            block_bytes,
        };
        pool.ensure_pool(files)?;
        // A pool made by someone else: its block size is in its table
        // (`<meta> <data> <block sectors> <low water> ...`).
        if let Some(sectors) = pool.dm.table(&pool.cfg.pool).ok().and_then(|t| {
            t.split_whitespace()
                .nth(2)
                .and_then(|b| b.parse::<u64>().ok())
        }) {
            pool.block_bytes = sectors * 512;
        }
        Ok(pool)
    }

    fn pool_files(dir: &Path) -> io::Result<Option<PoolFiles>> {
        match fs::read(dir.join("pool.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::other(format!("thinpool/pool.json: {e}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn ensure_pool(&self, files: Option<PoolFiles>) -> io::Result<()> {
        if self.dm.node(&self.cfg.pool)?.is_some() {
            return Ok(());
        }
        match files {
            Some(f) if f.name == self.cfg.pool => {
                let _g = self.guard()?;
                // Another process may have set it up while we waited.
                if self.dm.node(&self.cfg.pool)?.is_some() {
                    return Ok(());
                }
                Self::setup_pool(self.dm.as_ref(), &f).map(|_| ())
            }
            _ => Err(io::Error::other(format!(
                "no device-mapper thin pool named `{}`: make one with `tarpool pool init` \
                 (or deploy/thinpool-setup.sh), or set [thinpool] pool in the config",
                self.cfg.pool
            ))),
        }
    }

    fn setup_pool(dm: &dyn DmOps, f: &PoolFiles) -> io::Result<PathBuf> {
        let meta = dm.loop_device(&f.meta_file)?;
        let data = dm.loop_device(&f.data_file)?;
        let block_sectors = f.block_bytes / 512;
        let low_water = (f.low_water_bytes / f.block_bytes).max(1);
        let mut features = vec!["error_if_no_space"];
        if !f.zero_blocks {
            features.push("skip_block_zeroing");
        }
        let params = format!(
            "{} {} {block_sectors} {low_water} {} {}",
            meta.display(),
            data.display(),
            features.len(),
            features.join(" ")
        );
        dm.create(&f.name, f.data_bytes / 512, "thin-pool", &params)
    }

    /// `tarpool pool init`: sparse data and metadata files in the state
    /// directory, on loop devices, as a new pool named `cfg.pool`.
    pub fn init(
        state_dir: &crate::statedir::StateDir,
        cfg: &ThinConfig,
        dm: &dyn DmOps,
        data_size: Option<&str>,
        meta_size: Option<&str>,
        block_size: Option<&str>,
    ) -> Result<PathBuf, String> {
        let dir = state_dir.thinpool();
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if dm.node(&cfg.pool).map_err(|e| e.to_string())?.is_some() {
            return Err(format!(
                "a device-mapper device named `{}` exists already",
                cfg.pool
            ));
        }
        let data_bytes = parse_size(data_size.unwrap_or(&cfg.data_size))?;
        let meta_bytes = parse_size(meta_size.unwrap_or(&cfg.meta_size))?;
        let block_bytes = parse_size(block_size.unwrap_or(&cfg.block_size))?;
        if !(64 << 10..=1 << 30).contains(&block_bytes) || block_bytes % (64 << 10) != 0 {
            return Err("the block size must be a multiple of 64K between 64K and 1G".into());
        }
        if !(2 << 20..=16 << 30).contains(&meta_bytes) {
            return Err("the metadata size must be between 2M and 16G".into());
        }
        if data_bytes < 16 * block_bytes || data_bytes % block_bytes != 0 {
            return Err("the data size must be at least 16 blocks, and whole blocks".into());
        }
        let files = PoolFiles {
            name: cfg.pool.clone(),
            data_file: dir.join("data.img"),
            meta_file: dir.join("meta.img"),
            data_bytes,
            block_bytes,
            low_water_bytes: parse_size(&cfg.low_water)?,
            zero_blocks: cfg.zero_blocks,
        };
        for (path, len) in [
            (&files.data_file, data_bytes),
            (&files.meta_file, meta_bytes),
        ] {
            // A fresh, zeroed metadata device is what makes the kernel format it.
            let f = fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            f.set_len(len)
                .map_err(|e| format!("sizing {}: {e}", path.display()))?;
        }
        let json = serde_json::to_vec_pretty(&files).map_err(|e| e.to_string())?;
        fs::write(dir.join("pool.json"), json).map_err(|e| e.to_string())?;
        Self::setup_pool(dm, &files).map_err(|e| format!("creating the pool: {e}"))
    }
}
