//! The life of a thin device: its registry row (through the store), its
//! thin id, its device-mapper node, and the journal around each pool operation.

use std::io;
use std::path::PathBuf;

use super::{registry, ThinPool, MAX_DEV_ID};
use crate::backend::dm::errno;
use crate::backend::io_fail;
use crate::core::states::ThinState;
use crate::error::Failure;
use crate::store::ThinDeviceRow;

impl ThinPool {
    pub(super) fn dev_name(&self, dev_id: u32) -> String {
        format!("{}-thin-{dev_id}", self.cfg.pool)
    }

    pub fn devices(&self) -> io::Result<Vec<ThinDeviceRow>> {
        self.store.thin_devices(&self.cfg.pool).map_err(registry)
    }

    pub(super) fn device(&self, owner: &str) -> io::Result<Option<ThinDeviceRow>> {
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
    pub(super) fn journaled<T>(
        &self,
        op: &str,
        dev_id: Option<u32>,
        detail: &str,
        f: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let id = self
            .store
            .begin_pool_op(&self.cfg.pool, op, dev_id, detail)
            .map_err(registry)?;
        self.failpoints.hit(&format!("pool-before:{op}"));
        let r = f();
        self.failpoints.hit(&format!("pool-after:{op}"));
        let err = r.as_ref().err().map(|e| e.to_string());
        self.store
            .end_pool_op(id, err.as_deref())
            .map_err(registry)?;
        r
    }

    /// Allocates a thin id for `owner` (durably, never reused) and creates
    /// the device in the pool: a new thin device, or a snapshot of `origin`
    /// (with its origin's size). An id the pool already holds belongs to
    /// someone else (a pool shared without `first_dev_id`): it is skipped,
    /// never deleted.
    pub(super) fn new_device(&self, owner: &str, origin: Option<u32>) -> io::Result<u32> {
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
                    self.store
                        .delete_thin_device(&self.cfg.pool, dev_id)
                        .map_err(registry)?;
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
        self.store
            .allocate_thin(
                &self.cfg.pool,
                self.cfg.first_dev_id..=MAX_DEV_ID,
                owner,
                origin,
                sectors,
            )
            .map_err(registry)?
            .ok_or_else(|| io::Error::other("the pool's thin ids (24 bits) are used up"))
    }

    pub(super) fn activate_node(&self, dev_id: u32) -> io::Result<PathBuf> {
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

    pub(super) fn deactivate_node(&self, dev_id: u32) -> io::Result<()> {
        let name = self.dev_name(dev_id);
        // `exists`, not `node`: a device a crash left with no live table
        // still holds its thin id.
        if !self.dm.exists(&name)? {
            return Ok(());
        }
        self.journaled("deactivate", Some(dev_id), &name, || self.dm.remove(&name))
    }

    pub(super) fn set_state(&self, dev_id: u32, state: ThinState, active: bool) -> io::Result<()> {
        self.store
            .set_thin_state(&self.cfg.pool, dev_id, state, active)
            .map_err(registry)
    }

    /// Removes a device completely: node, thin id, row. The row is marked
    /// `deleting` first, so a crash midway is finished by the next cleanup.
    pub(super) fn remove_device(&self, d: &ThinDeviceRow) -> io::Result<()> {
        let _g = self.guard()?;
        self.set_state(d.dev_id, ThinState::Deleting, false)?;
        if let Err(e) = self.deactivate_node(d.dev_id) {
            // Still in use (mounted by someone): keep it as it was.
            let _ = self.set_state(d.dev_id, d.state, d.active);
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
        self.store
            .delete_thin_device(&self.cfg.pool, d.dev_id)
            .map_err(registry)?;
        Ok(())
    }

    pub(super) fn remove_owner(&self, owner: &str) -> io::Result<bool> {
        match self.device(owner)? {
            Some(d) => self.remove_device(&d).map(|_| true),
            None => Ok(false),
        }
    }

    pub(super) fn ready_device(&self, owner: &str) -> Result<ThinDeviceRow, Failure> {
        match self
            .device(owner)
            .map_err(io_fail("reading the thin-pool registry"))?
        {
            Some(d) if d.state == ThinState::Ready => Ok(d),
            _ => Err(Failure::Retry(format!(
                "{owner} has no sealed thin device in pool {}",
                self.cfg.pool
            ))),
        }
    }
}
