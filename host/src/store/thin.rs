//! The thin pool's registry: its thin devices (one per layer, image snapshot
//! and activation), the counter its thin ids come from, and the journal of its
//! pool operations. Every query names its pool; times here are in seconds.

use rusqlite::{params, OptionalExtension};
use std::ops::RangeInclusive;

use super::{typed, Result, Store};
use crate::core::states::ThinState;

/// One thin device of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinDeviceRow {
    pub dev_id: u32,
    /// `layer:ID`, `image:NAME` or `act:ID`.
    pub owner: String,
    /// The device it is a snapshot of.
    pub origin: Option<u32>,
    pub sectors: u64,
    pub state: ThinState,
    /// Whether its device-mapper node should exist.
    pub active: bool,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// The devices of `pool`, by thin id.
    pub fn thin_devices(&self, pool: &str) -> Result<Vec<ThinDeviceRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT dev_id, owner, origin, sectors, state, active FROM thin_devices WHERE pool = ?1 ORDER BY dev_id",
            )?;
            let rows = st.query_map([pool], |r| {
                Ok(ThinDeviceRow {
                    dev_id: r.get(0)?,
                    owner: r.get(1)?,
                    origin: r.get(2)?,
                    sectors: r.get::<_, i64>(3)? as u64,
                    state: typed(r, 4)?,
                    active: r.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    /// The next thin id of `pool` (the counter's, kept within `ids`),
    /// recorded with its `creating` row for `owner` in one transaction,
    /// before the pool hears of it. None when the ids are used up.
    pub fn allocate_thin(
        &self,
        pool: &str,
        ids: RangeInclusive<u32>,
        owner: &str,
        origin: Option<u32>,
        sectors: u64,
    ) -> Result<Option<u32>> {
        self.with(|c| {
            // IMMEDIATE: take the write lock first, so a concurrent writer
            // (another connection) makes this wait, not fail.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let next: Option<u32> = tx
                .query_row(
                    "SELECT next_dev_id FROM thin_ids WHERE pool = ?1",
                    [pool],
                    |r| r.get(0),
                )
                .optional()?;
            let id = next.unwrap_or(*ids.start()).max(*ids.start());
            if id > *ids.end() {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO thin_ids (pool, next_dev_id) VALUES (?1, ?2)
                 ON CONFLICT (pool) DO UPDATE SET next_dev_id = excluded.next_dev_id",
                params![pool, id + 1],
            )?;
            tx.execute(
                "INSERT INTO thin_devices (pool, dev_id, owner, origin, sectors, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    pool,
                    id,
                    owner,
                    origin,
                    sectors as i64,
                    ThinState::Creating.as_str(),
                    now_s()
                ],
            )?;
            tx.commit()?;
            Ok(Some(id))
        })
    }

    pub fn set_thin_state(
        &self,
        pool: &str,
        dev_id: u32,
        state: ThinState,
        active: bool,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE thin_devices SET state = ?1, active = ?2 WHERE pool = ?3 AND dev_id = ?4",
                params![state.as_str(), active, pool, dev_id],
            )
            .map(|_| ())
        })
    }

    pub fn delete_thin_device(&self, pool: &str, dev_id: u32) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM thin_devices WHERE pool = ?1 AND dev_id = ?2",
                params![pool, dev_id],
            )
            .map(|_| ())
        })
    }

    /// Journals pool operation `op` as running; returns its id for
    /// [`Store::end_pool_op`].
    pub fn begin_pool_op(
        &self,
        pool: &str,
        op: &str,
        dev_id: Option<u32>,
        detail: &str,
    ) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO pool_ops (pool, op, dev_id, detail, state, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
                params![pool, op, dev_id, detail, now_s()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Journals pool operation `id` as done, or failed with `error`.
    pub fn end_pool_op(&self, id: i64, error: Option<&str>) -> Result<()> {
        let state = if error.is_some() { "failed" } else { "done" };
        self.with(|c| {
            c.execute(
                "UPDATE pool_ops SET state = ?1, error = ?2, finished_at = ?3 WHERE id = ?4",
                params![state, error, now_s(), id],
            )
            .map(|_| ())
        })
    }

    /// After a crash: `pool`'s operations left running are marked
    /// interrupted. Returns how many there were.
    pub fn interrupt_pool_ops(&self, pool: &str) -> Result<usize> {
        self.with(|c| {
            c.execute(
                "UPDATE pool_ops SET state = 'interrupted', finished_at = ?1 WHERE pool = ?2 AND state = 'running'",
                params![now_s(), pool],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    #[test]
    fn thin_ids_only_grow_and_states_keep_their_stored_text() {
        let (d, s) = test_store();
        assert_eq!(
            s.allocate_thin("tp", 5..=6, "layer:1", None, 8).unwrap(),
            Some(5)
        );
        s.delete_thin_device("tp", 5).unwrap();
        assert_eq!(
            s.allocate_thin("tp", 5..=6, "layer:2", Some(5), 8).unwrap(),
            Some(6),
            "an id is never reused"
        );
        assert_eq!(
            s.allocate_thin("tp", 5..=6, "layer:3", None, 8).unwrap(),
            None
        );
        s.set_thin_state("tp", 6, ThinState::Deleting, true)
            .unwrap();
        // A row as an older tarpool wrote it reads back typed.
        rusqlite::Connection::open(d.path().join("state.db"))
            .unwrap()
            .execute(
                "INSERT INTO thin_devices (pool, dev_id, owner, sectors, state, created_at) VALUES ('tp', 9, 'act:a', 8, 'ready', 0)",
                [],
            )
            .unwrap();
        let rows = s.thin_devices("tp").unwrap();
        let states: Vec<_> = rows.iter().map(|r| (r.dev_id, r.state, r.active)).collect();
        assert_eq!(
            states,
            [(6, ThinState::Deleting, true), (9, ThinState::Ready, false)]
        );
        assert!(s.thin_devices("other").unwrap().is_empty());
    }

    #[test]
    fn pool_ops_are_journaled_and_interrupted_after_a_crash() {
        let (_d, s) = test_store();
        let a = s
            .begin_pool_op("tp", "create_thin", Some(1), "layer:1")
            .unwrap();
        let b = s.begin_pool_op("tp", "delete", Some(2), "layer:2").unwrap();
        s.end_pool_op(a, None).unwrap();
        s.end_pool_op(b, Some("busy")).unwrap();
        s.begin_pool_op("tp", "activate", Some(3), "tp-thin-3")
            .unwrap();
        s.begin_pool_op("other", "activate", Some(3), "x").unwrap();
        assert_eq!(s.interrupt_pool_ops("tp").unwrap(), 1);
        assert_eq!(s.interrupt_pool_ops("tp").unwrap(), 0);
    }
}
