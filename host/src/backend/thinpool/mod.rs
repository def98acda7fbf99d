//! The devicemapper thin-pool backend. Each layer is a thin device: the base
//! layer a new thin device with a fresh ext4, every next layer a snapshot of
//! its parent's device, filled through a mount by the confined worker and
//! then sealed (unmounted, its device-mapper node removed). An image's
//! snapshot and every activation are writable snapshots of the top layer.
//!
//! Crash safety: thin ids come from a counter in SQLite that only grows, and
//! every pool operation is journaled (`pool_ops`) as running before it is sent
//! and done after. A device's row (`thin_devices`) is `creating` until its
//! layer is sealed, `deleting` while it is being removed; [`Snapshotter::cleanup`]
//! deletes whatever is left `creating` or `deleting`, and re-creates the nodes
//! of everything that should be active. Pool operations are serialized by a
//! lock file, across processes.

use rusqlite::{params, Connection, OptionalExtension};
use rustix::fd::AsFd;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::dm::{errno, DmOps};
use super::{io_fail, ActivationInfo, ApplyFn, Cleanup, Known, PoolUsage, Snapshotter};
use crate::error::StepFailure;
use crate::failpoint::Failpoints;
use crate::sys::{MountOps, Suid};

/// The `[thinpool]` table of the configuration.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThinConfig {
    /// The device-mapper name of the pool.
    pub pool: String,
    /// The virtual size of every thin device (each layer's filesystem).
    pub volume_size: String,
    /// `pool init` defaults.
    pub data_size: String,
    pub meta_size: String,
    pub block_size: String,
    /// Free data space, in bytes, below which the kernel warns (`low-water`).
    pub low_water: String,
    /// Zero newly provisioned blocks (slow with large blocks; off by default).
    pub zero_blocks: bool,
    /// Thin ids below this are never touched (for a pool shared with others).
    pub first_dev_id: u32,
}

impl Default for ThinConfig {
    fn default() -> Self {
        ThinConfig {
            pool: "tarpool".into(),
            volume_size: "8G".into(),
            data_size: "20G".into(),
            meta_size: "256M".into(),
            block_size: "64K".into(),
            low_water: "256M".into(),
            zero_blocks: false,
            first_dev_id: 1,
        }
    }
}

/// `640M`, `4G`, `64K`, `512` (bytes); binary units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let unit = t[i..].trim().to_ascii_uppercase();
            let m = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("`{s}`: unknown size unit")),
            };
            (&t[..i], m)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 640M, 4G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses a thin-pool status line (Documentation/admin-guide/device-mapper/thin-provisioning.rst):
/// `<transaction id> <used meta>/<total meta> <used data>/<total data> <held root> <mode> ...`.
pub fn parse_pool_status(line: &str, block_bytes: u64) -> Result<PoolUsage, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.first() == Some(&"Fail") {
        return Err("the pool has failed (`Fail` status)".into());
    }
    let frac = |s: Option<&&str>| -> Result<(u64, u64), String> {
        let s = s.ok_or("short status line")?;
        let (a, b) = s.split_once('/').ok_or("malformed usage")?;
        Ok((
            a.parse().map_err(|_| "malformed usage")?,
            b.parse().map_err(|_| "malformed usage")?,
        ))
    };
    let (meta_used, meta_total) = frac(w.get(1))?;
    let (data_used, data_total) = frac(w.get(2))?;
    Ok(PoolUsage {
        data_used_bytes: data_used * block_bytes,
        data_total_bytes: data_total * block_bytes,
        // Metadata blocks are always 4 KiB.
        meta_used_bytes: meta_used * 4096,
        meta_total_bytes: meta_total * 4096,
        mode: w.get(4).copied().unwrap_or("?").to_string(),
        needs_check: w.contains(&"needs_check"),
    })
}

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

/// The thin pool's tables, created by the store's migrations
/// ([`crate::store`]).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS thin_ids (
    pool TEXT PRIMARY KEY,
    next_dev_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS thin_devices (
    pool TEXT NOT NULL,
    dev_id INTEGER NOT NULL,
    owner TEXT NOT NULL,
    origin INTEGER,
    sectors INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'deleting')),
    active INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (pool, dev_id),
    UNIQUE (pool, owner)
);
CREATE TABLE IF NOT EXISTS pool_ops (
    id INTEGER PRIMARY KEY,
    pool TEXT NOT NULL,
    op TEXT NOT NULL,
    dev_id INTEGER,
    detail TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),
    error TEXT,
    started_at INTEGER NOT NULL,
    finished_at INTEGER
);
"#;

/// The largest thin id the kernel takes (24 bits).
const MAX_DEV_ID: u32 = (1 << 24) - 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub dev_id: u32,
    pub owner: String,
    pub origin: Option<u32>,
    pub sectors: u64,
    pub state: String,
    pub active: bool,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn sql(e: rusqlite::Error) -> io::Error {
    io::Error::other(format!("thin-pool registry: {e}"))
}

pub struct ThinPool {
    cfg: ThinConfig,
    dir: PathBuf,
    db: Mutex<Connection>,
    dm: Arc<dyn DmOps>,
    mounts: Arc<dyn MountOps>,
    lock: PoolLock,
    failpoints: Failpoints,
    volume_sectors: u64,
    block_bytes: u64,
}

/// The pool lock: re-entrant within a thread, exclusive across threads
/// (a mutex and condvar) and across processes (an flock on `pool.lock`).
struct PoolLock {
    file: File,
    holder: Mutex<(Option<std::thread::ThreadId>, usize)>,
    free: std::sync::Condvar,
}

struct PoolGuard<'a>(&'a PoolLock);

impl PoolLock {
    fn lock(&self) -> io::Result<PoolGuard<'_>> {
        let me = std::thread::current().id();
        let mut h = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if h.0 == Some(me) {
            h.1 += 1;
            return Ok(PoolGuard(self));
        }
        while h.0.is_some() {
            h = self.free.wait(h).unwrap_or_else(|p| p.into_inner());
        }
        rustix::fs::flock(&self.file, rustix::fs::FlockOperation::LockExclusive)?;
        *h = (Some(me), 1);
        Ok(PoolGuard(self))
    }
}

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        let mut h = self.0.holder.lock().unwrap_or_else(|p| p.into_inner());
        h.1 -= 1;
        if h.1 == 0 {
            let _ = rustix::fs::flock(&self.0.file, rustix::fs::FlockOperation::Unlock);
            h.0 = None;
            self.0.free.notify_one();
        }
    }
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
        // The store's migrations make the pool's tables.
        crate::store::Store::open(&state_dir.db()).map_err(io::Error::other)?;
        let conn = Connection::open(state_dir.db()).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
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
            db: Mutex::new(conn),
            dm,
            mounts,
            lock: PoolLock {
                file: lock,
                holder: Mutex::new((None, 0)),
                free: std::sync::Condvar::new(),
            },
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

    fn guard(&self) -> io::Result<PoolGuard<'_>> {
        self.lock.lock()
    }

    fn with_db<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> io::Result<T> {
        let c = self.db.lock().unwrap_or_else(|p| p.into_inner());
        f(&c).map_err(sql)
    }

    fn dev_name(&self, dev_id: u32) -> String {
        format!("{}-thin-{dev_id}", self.cfg.pool)
    }

    pub fn devices(&self) -> io::Result<Vec<DeviceRow>> {
        self.with_db(|c| {
            let mut st = c.prepare(
                "SELECT dev_id, owner, origin, sectors, state, active FROM thin_devices WHERE pool = ?1 ORDER BY dev_id",
            )?;
            let rows = st.query_map([&self.cfg.pool], |r| {
                Ok(DeviceRow {
                    dev_id: r.get(0)?,
                    owner: r.get(1)?,
                    origin: r.get(2)?,
                    sectors: r.get::<_, i64>(3)? as u64,
                    state: r.get(4)?,
                    active: r.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    fn device(&self, owner: &str) -> io::Result<Option<DeviceRow>> {
        Ok(self.devices()?.into_iter().find(|d| d.owner == owner))
    }

    /// The virtual size of registered thin `dev_id`, in sectors.
    fn sectors_of(&self, dev_id: u32) -> io::Result<Option<u64>> {
        Ok(self
            .devices()?
            .into_iter()
            .find(|d| d.dev_id == dev_id)
            .map(|d| d.sectors))
    }

    /// Runs one pool operation under the journal: recorded as running
    /// before, done or failed after. Failpoints `pool-before:OP` and
    /// `pool-after:OP` kill the process around it.
    fn journaled<T>(
        &self,
        op: &str,
        dev_id: Option<u32>,
        detail: &str,
        f: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let id = self.with_db(|c| {
            c.execute(
                "INSERT INTO pool_ops (pool, op, dev_id, detail, state, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
                params![self.cfg.pool, op, dev_id, detail, now()],
            )?;
            Ok(c.last_insert_rowid())
        })?;
        self.failpoints.hit(&format!("pool-before:{op}"));
        let r = f();
        self.failpoints.hit(&format!("pool-after:{op}"));
        let (state, err) = match &r {
            Ok(_) => ("done", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        self.with_db(|c| {
            c.execute(
                "UPDATE pool_ops SET state = ?1, error = ?2, finished_at = ?3 WHERE id = ?4",
                params![state, err, now(), id],
            )
        })?;
        r
    }

    /// Allocates a thin id for `owner` (durably, never reused) and creates
    /// the device in the pool: a new thin device, or a snapshot of `origin`
    /// (with its origin's size). An id the pool already holds belongs to
    /// someone else (a pool shared without `first_dev_id`): it is skipped,
    /// never deleted.
    fn new_device(&self, owner: &str, origin: Option<u32>) -> io::Result<u32> {
        let _g = self.guard()?;
        let sectors = match origin {
            None => self.volume_sectors,
            Some(o) => self
                .sectors_of(o)?
                .ok_or_else(|| io::Error::other(format!("origin thin {o} is not registered")))?,
        };
        for _ in 0..64 {
            let dev_id = self.allocate(owner, origin, sectors)?;
            let r = match origin {
                None => self.journaled("create_thin", Some(dev_id), owner, || {
                    self.dm
                        .message(&self.cfg.pool, &format!("create_thin {dev_id}"))
                }),
                Some(o) => {
                    // An active origin is suspended around the snapshot, so
                    // the snapshot sees its data flushed.
                    let origin_name = self.dev_name(o);
                    let active = self.dm.node(&origin_name)?.is_some();
                    if active {
                        self.dm.suspend(&origin_name, true)?;
                    }
                    let r = self.journaled("create_snap", Some(dev_id), owner, || {
                        self.dm
                            .message(&self.cfg.pool, &format!("create_snap {dev_id} {o}"))
                    });
                    if active {
                        self.dm.suspend(&origin_name, false)?;
                    }
                    r
                }
            };
            match r {
                Ok(()) => return Ok(dev_id),
                Err(e) if errno(&e) == Some(libc::EEXIST) => {
                    self.with_db(|c| {
                        c.execute(
                            "DELETE FROM thin_devices WHERE pool = ?1 AND dev_id = ?2",
                            params![self.cfg.pool, dev_id],
                        )
                    })?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "64 thin ids in a row are taken by another user of the pool; set [thinpool] first_dev_id",
        ))
    }

    /// The next thin id, recorded with its `creating` row in one
    /// transaction before the pool hears of it.
    fn allocate(&self, owner: &str, origin: Option<u32>, sectors: u64) -> io::Result<u32> {
        self.with_db(|c| {
            // IMMEDIATE: take the write lock first, so a concurrent writer
            // (the store's connection) makes this wait, not fail.
            c.execute_batch("BEGIN IMMEDIATE")?;
            let r = (|| {
                let next: Option<u32> = c
                    .query_row(
                        "SELECT next_dev_id FROM thin_ids WHERE pool = ?1",
                        [&self.cfg.pool],
                        |r| r.get(0),
                    )
                    .optional()?;
                let id = next
                    .unwrap_or(self.cfg.first_dev_id)
                    .max(self.cfg.first_dev_id);
                if id > MAX_DEV_ID {
                    return Ok(None);
                }
                c.execute(
                    "INSERT INTO thin_ids (pool, next_dev_id) VALUES (?1, ?2)
                     ON CONFLICT (pool) DO UPDATE SET next_dev_id = excluded.next_dev_id",
                    params![self.cfg.pool, id + 1],
                )?;
                c.execute(
                    "INSERT INTO thin_devices (pool, dev_id, owner, origin, sectors, state, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'creating', ?6)",
                    params![self.cfg.pool, id, owner, origin, sectors as i64, now()],
                )?;
                Ok(Some(id))
            })();
            match r {
                Ok(v) => {
                    c.execute_batch("COMMIT")?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = c.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })?
        .ok_or_else(|| io::Error::other("the pool's thin ids (24 bits) are used up"))
    }

    fn activate_node(&self, dev_id: u32) -> io::Result<PathBuf> {
        let name = self.dev_name(dev_id);
        if let Some(n) = self.dm.node(&name)? {
            return Ok(n);
        }
        let sectors = self
            .sectors_of(dev_id)?
            .ok_or_else(|| io::Error::other(format!("thin {dev_id} is not registered")))?;
        let pool = self
            .dm
            .devno(&self.cfg.pool)?
            .ok_or_else(|| io::Error::other(format!("pool {} is not active", self.cfg.pool)))?;
        let params = format!("{pool} {dev_id}");
        self.journaled("activate", Some(dev_id), &name, || {
            self.dm.create(&name, sectors, "thin", &params)
        })
    }

    fn deactivate_node(&self, dev_id: u32) -> io::Result<()> {
        let name = self.dev_name(dev_id);
        // `exists`, not `node`: a device a crash left with no live table
        // still holds its thin id.
        if !self.dm.exists(&name)? {
            return Ok(());
        }
        self.journaled("deactivate", Some(dev_id), &name, || self.dm.remove(&name))
    }

    fn set_state(&self, dev_id: u32, state: &str, active: bool) -> io::Result<()> {
        self.with_db(|c| {
            c.execute(
                "UPDATE thin_devices SET state = ?1, active = ?2 WHERE pool = ?3 AND dev_id = ?4",
                params![state, active, self.cfg.pool, dev_id],
            )
        })
        .map(|_| ())
    }

    /// Removes a device completely: node, thin id, row. The row is marked
    /// `deleting` first, so a crash midway is finished by the next cleanup.
    fn remove_device(&self, d: &DeviceRow) -> io::Result<()> {
        let _g = self.guard()?;
        self.set_state(d.dev_id, "deleting", false)?;
        if let Err(e) = self.deactivate_node(d.dev_id) {
            // Still in use (mounted by someone): keep it as it was.
            let _ = self.set_state(d.dev_id, &d.state, d.active);
            return Err(e);
        }
        let r = self.journaled("delete", Some(d.dev_id), &d.owner, || {
            self.dm
                .message(&self.cfg.pool, &format!("delete {}", d.dev_id))
        });
        match r {
            Ok(()) => {}
            // Never created (a crash before create_thin ran): nothing to delete.
            Err(e) if errno(&e) == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
        self.with_db(|c| {
            c.execute(
                "DELETE FROM thin_devices WHERE pool = ?1 AND dev_id = ?2",
                params![self.cfg.pool, d.dev_id],
            )
        })?;
        Ok(())
    }

    fn remove_owner(&self, owner: &str) -> io::Result<bool> {
        match self.device(owner)? {
            Some(d) => self.remove_device(&d).map(|_| true),
            None => Ok(false),
        }
    }

    fn ready_device(&self, owner: &str) -> Result<DeviceRow, StepFailure> {
        match self
            .device(owner)
            .map_err(io_fail("reading the thin-pool registry"))?
        {
            Some(d) if d.state == "ready" => Ok(d),
            _ => Err(StepFailure::Retry(format!(
                "{owner} has no sealed thin device in pool {}",
                self.cfg.pool
            ))),
        }
    }

    /// The pool's usage, or None when its status cannot be read.
    fn read_usage(&self) -> io::Result<PoolUsage> {
        let line = self.dm.status(&self.cfg.pool)?;
        parse_pool_status(&line, self.block_bytes).map_err(io::Error::other)
    }

    /// Turns a failure into a clear "out of space" one when the pool is full.
    fn explain(&self, e: StepFailure) -> StepFailure {
        match self.read_usage() {
            Ok(u) if u.out_of_space() => StepFailure::Exhausted(format!(
                "thin pool `{}` is out of space ({}); the layer was discarded. \
                 Free space with `tarpool gc` or grow the pool. ({e})",
                self.cfg.pool,
                u.summary()
            )),
            _ => e,
        }
    }

    fn fill(
        &self,
        id: i64,
        node: &Path,
        fresh: bool,
        apply: &mut ApplyFn<'_>,
    ) -> Result<crate::extract::ApplyStats, StepFailure> {
        let mnt = self.dir.join("mnt").join(id.to_string());
        fs::create_dir_all(&mnt).map_err(io_fail("creating the mount point"))?;
        let mounts = self.mounts.clone();
        let r = std::thread::scope(|s| {
            s.spawn(|| -> Result<_, StepFailure> {
                // A private namespace: the mount vanishes with this thread,
                // or with the process on SIGKILL.
                mounts
                    .private_namespace()
                    .map_err(io_fail("entering a private mount namespace"))?;
                mounts
                    .mount_dev(node, &mnt, "ext4", "noinit_itable", Suid::Ignored)
                    .map_err(io_fail("mounting the layer's device"))?;
                let r = (|| {
                    let root = File::open(&mnt).map_err(io_fail("opening the layer's root"))?;
                    if fresh {
                        match rustix::fs::unlinkat(
                            &root,
                            "lost+found",
                            rustix::fs::AtFlags::REMOVEDIR,
                        ) {
                            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                            Err(e) => {
                                return Err(StepFailure::io("removing lost+found", e));
                            }
                        }
                    }
                    let stats = apply(root.as_fd())?;
                    rustix::fs::syncfs(&root)
                        .map_err(|e| StepFailure::Retry(format!("syncing the layer: {e}")))?;
                    Ok(stats)
                })();
                let u = mounts.unmount(&mnt, false);
                match (r, u) {
                    (Ok(_), Err(e)) => Err(StepFailure::io("unmounting the layer", e)),
                    (r, _) => r,
                }
            })
            .join()
            .unwrap_or_else(|_| Err(StepFailure::Retry("the layer thread panicked".into())))
        });
        let _ = fs::remove_dir(&mnt);
        r
    }
}

impl Snapshotter for ThinPool {
    fn kind(&self) -> &'static str {
        "thinpool"
    }

    fn apply_layer(
        &self,
        id: i64,
        parents: &[i64],
        apply: &mut ApplyFn<'_>,
    ) -> Result<crate::extract::ApplyStats, StepFailure> {
        let owner = format!("layer:{id}");
        self.remove_owner(&owner)
            .map_err(io_fail("removing a stale layer device"))?;
        let origin = match parents.first() {
            Some(p) => Some(self.ready_device(&format!("layer:{p}"))?.dev_id),
            None => None,
        };
        let mut run = || -> Result<_, StepFailure> {
            let dev_id = self
                .new_device(&owner, origin)
                .map_err(io_fail("creating the layer's thin device"))?;
            let node = self
                .activate_node(dev_id)
                .map_err(io_fail("activating the layer's thin device"))?;
            if origin.is_none() {
                self.journaled("mkfs", Some(dev_id), &owner, || self.dm.mkfs(&node))
                    .map_err(io_fail("making the base layer's filesystem"))?;
            }
            let stats = self.fill(id, &node, origin.is_none(), apply)?;
            self.deactivate_node(dev_id)
                .map_err(io_fail("sealing the layer's device"))?;
            self.set_state(dev_id, "ready", false)
                .map_err(io_fail("recording the sealed layer"))?;
            Ok(stats)
        };
        run().map_err(|e| match e {
            StepFailure::Cancelled => e,
            e => self.explain(e),
        })
    }

    fn discard_layer(&self, id: i64) -> io::Result<()> {
        self.remove_owner(&format!("layer:{id}")).map(|_| ())
    }

    fn snapshot_image(&self, name: &str, chain: &[i64]) -> Result<ActivationInfo, StepFailure> {
        let top = chain
            .first()
            .ok_or_else(|| StepFailure::Input(format!("image `{name}` has no layers")))?;
        let origin = self.ready_device(&format!("layer:{top}"))?.dev_id;
        let owner = format!("image:{name}");
        let existing = self
            .device(&owner)
            .map_err(io_fail("reading the thin-pool registry"))?;
        let dev_id = match existing {
            Some(d) if d.state == "ready" && d.origin == Some(origin) => d.dev_id,
            other => {
                if let Some(d) = other {
                    self.remove_device(&d)
                        .map_err(io_fail("removing the image's old snapshot"))?;
                }
                let dev_id = self
                    .new_device(&owner, Some(origin))
                    .map_err(|e| self.explain(StepFailure::io("snapshotting the top layer", e)))?;
                self.set_state(dev_id, "ready", true)
                    .map_err(io_fail("recording the image snapshot"))?;
                dev_id
            }
        };
        let node = self
            .activate_node(dev_id)
            .map_err(io_fail("activating the image snapshot"))?;
        Ok(ActivationInfo {
            fstype: "ext4".into(),
            options: String::new(),
            mountpoint: None,
            device: Some(node.display().to_string()),
        })
    }

    fn activate(
        &self,
        act: &str,
        chain: &[i64],
        mountpoint: Option<&Path>,
        suid: Suid,
    ) -> io::Result<ActivationInfo> {
        let top = chain
            .first()
            .ok_or_else(|| io::Error::other("the image has no layers"))?;
        let origin = self
            .ready_device(&format!("layer:{top}"))
            .map_err(|e| io::Error::other(e.to_string()))?
            .dev_id;
        let owner = format!("act:{act}");
        // Held throughout, so a cleanup in another process (gc, a run's
        // start) never sees this activation half made.
        let _g = self.guard()?;
        if self.device(&owner)?.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("activation {act} exists already"),
            ));
        }
        let dev_id = self.new_device(&owner, Some(origin))?;
        let r = (|| {
            let node = self.activate_node(dev_id)?;
            self.set_state(dev_id, "ready", true)?;
            if let Some(mp) = mountpoint {
                self.mounts.mount_dev(&node, mp, "ext4", "", suid)?;
            }
            Ok(node)
        })();
        match r {
            Ok(node) => Ok(ActivationInfo {
                fstype: "ext4".into(),
                options: suid.describe().into(),
                mountpoint: mountpoint.map(|p| p.display().to_string()),
                device: Some(node.display().to_string()),
            }),
            Err(e) => {
                let _ = self.remove_owner(&owner);
                Err(e)
            }
        }
    }

    fn mount_activation(&self, act: &str, _chain: &[i64], target: &Path) -> io::Result<()> {
        let dev = self.device(&format!("act:{act}"))?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("activation {act} has no thin device"),
            )
        })?;
        let node = self.activate_node(dev.dev_id)?;
        // exec's private view: the image's setuid semantics hold inside.
        self.mounts
            .mount_dev(&node, target, "ext4", "", Suid::Honoured)
    }

    /// ext4 can be id-mapped (Linux 5.12): the activation's filesystem,
    /// mounted at `scratch`, is cloned id-mapped at `target`.
    fn mount_activation_idmapped(
        &self,
        act: &str,
        chain: &[i64],
        target: &Path,
        scratch: &Path,
        userns: rustix::fd::BorrowedFd<'_>,
        _host_root: u32,
    ) -> io::Result<()> {
        self.mount_activation(act, chain, scratch)?;
        self.mounts.idmapped_clone(scratch, target, userns)
    }

    fn deactivate(&self, act: &str, mountpoint: Option<&Path>) -> io::Result<()> {
        if let Some(mp) = mountpoint {
            let mp = fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
            if self.mounts.mounts_under(&mp)?.iter().any(|m| m == &mp) {
                self.mounts.unmount(&mp, false)?;
            }
        }
        self.remove_owner(&format!("act:{act}")).map(|_| ())
    }

    fn cleanup(&self, known: &Known) -> io::Result<Cleanup> {
        let _g = self.guard()?;
        let mut report = Cleanup::default();
        let interrupted = self.with_db(|c| {
            c.execute(
                "UPDATE pool_ops SET state = 'interrupted', finished_at = ?1 WHERE pool = ?2 AND state = 'running'",
                params![now(), self.cfg.pool],
            )
        })?;
        report.interrupted_ops = interrupted;
        // First the nodes of ours that should not be there: any device named
        // like ours that is not an active, sealed row (a crash while a layer
        // was filled, or between loading a table and resuming it).
        let prefix = format!("{}-thin-", self.cfg.pool);
        let rows = self.devices()?;
        for name in self.dm.list()? {
            if let Some(id) = name
                .strip_prefix(&prefix)
                .and_then(|s| s.parse::<u32>().ok())
            {
                if !rows
                    .iter()
                    .any(|d| d.dev_id == id && d.active && d.state == "ready")
                {
                    match self.dm.remove(&name) {
                        Ok(()) => report.removed += 1,
                        Err(e) => report.errors.push(format!("removing node {name}: {e}")),
                    }
                }
            }
        }
        for d in rows {
            let wanted = match d.owner.split_once(':') {
                Some(("layer", id)) => id.parse().is_ok_and(|id: i64| known.layers.contains(&id)),
                Some(("image", n)) => known.images.iter().any(|i| i == n),
                Some(("act", a)) => known.activations.iter().any(|x| x == a),
                _ => false,
            };
            let r = if d.state != "ready" || !wanted {
                self.remove_device(&d).map(|_| report.removed += 1)
            } else if d.active && self.dm.node(&self.dev_name(d.dev_id))?.is_none() {
                self.activate_node(d.dev_id)
                    .map(|_| report.reactivated += 1)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                // One busy device must not stop the rest, nor the service.
                report
                    .errors
                    .push(format!("thin {} ({}): {e}", d.dev_id, d.owner));
            }
        }
        let mnt = self.dir.join("mnt");
        for m in self.mounts.mounts_under(&mnt)? {
            self.mounts.unmount(&m, true)?;
            report.unmounted += 1;
        }
        for ent in fs::read_dir(&mnt)? {
            let _ = fs::remove_dir(ent?.path());
        }
        Ok(report)
    }

    fn usage(&self) -> io::Result<Option<PoolUsage>> {
        self.read_usage().map(Some)
    }
}

#[cfg(test)]
mod tests;
