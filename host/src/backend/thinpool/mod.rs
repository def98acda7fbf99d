//! The devicemapper thin-pool backend. Each layer is a thin device: the base
//! layer a new thin device with a fresh ext4, every next layer a snapshot of
//! its parent's device, filled through a mount by the confined worker and
//! then sealed (unmounted, its device-mapper node removed). An image's
//! snapshot and every activation are writable snapshots of the top layer.
//!
//! Crash safety: thin ids come from a counter in SQLite (the store's
//! thin-pool registry, `store/thin.rs`) that only grows, and every pool
//! operation is journaled (`pool_ops`) as running before it is sent and done
//! after. A device's row (`thin_devices`) is `creating` until its layer is
//! sealed, `deleting` while it is being removed;
//! [`Snapshotter::cleanup`](super::Snapshotter::cleanup) deletes whatever is
//! left `creating` or `deleting`, and re-creates the nodes of everything that
//! should be active. Pool operations are serialized by a lock file, across
//! processes. Files: `config` (the `[thinpool]` table, sizes, status lines),
//! `setup` (opening, `pool init`), `lock`, `devices` (a thin device's life),
//! `snapshotter` (layers, snapshots, activations, cleanup).

mod config;
mod devices;
mod lock;
mod setup;
mod snapshotter;

pub use config::{parse_pool_status, parse_size, ThinConfig};

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::dm::DmOps;
use crate::failpoint::Failpoints;
use crate::store::{Store, StoreError};
use crate::sys::MountOps;
use lock::{PoolGuard, PoolLock};

/// The largest thin id the kernel takes (24 bits).
const MAX_DEV_ID: u32 = (1 << 24) - 1;

/// A registry error, as the pool reports it.
fn registry(e: StoreError) -> io::Error {
    match e {
        StoreError::Sql(e) => io::Error::other(format!("thin-pool registry: {e}")),
        e => io::Error::other(e),
    }
}

pub struct ThinPool {
    cfg: ThinConfig,
    dir: PathBuf,
    /// The registry: its devices, thin ids and journal.
    store: Store,
    dm: Arc<dyn DmOps>,
    mounts: Arc<dyn MountOps>,
    lock: PoolLock,
    failpoints: Failpoints,
    volume_sectors: u64,
    block_bytes: u64,
}

impl ThinPool {
    fn guard(&self) -> io::Result<PoolGuard<'_>> {
        self.lock.lock()
    }
}

#[cfg(test)]
mod tests;
