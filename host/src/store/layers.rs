//! Layers: their rows (applying, committed), the blobs shown to hold them,
//! each run's progress through its layers, and what `gc` and a backend's
//! cleanup must keep.

use rusqlite::{params, OptionalExtension};

use super::{now_ms, Result, Store};
use crate::core::states::ImageState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    pub id: i64,
    pub chain_id: String,
    pub parent: Option<String>,
    pub diff_id: String,
    pub committed: bool,
}

/// What the store still references: everything else a backend holds may go.
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub layers: Vec<i64>,
    /// Images whose snapshot should exist (the ready ones).
    pub images: Vec<String>,
    pub activations: Vec<String>,
}

impl Store {
    fn layer_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LayerRow> {
        Ok(LayerRow {
            id: r.get(0)?,
            chain_id: r.get(1)?,
            parent: r.get(2)?,
            diff_id: r.get(3)?,
            committed: r.get::<_, String>(4)? == "committed",
        })
    }

    /// The diff ID the blob `digest`, read as `media`, was shown to hold.
    pub fn layer_blob(&self, digest: &str, media: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row(
                "SELECT diff_id FROM layer_blobs WHERE digest = ?1 AND media = ?2",
                params![digest, media],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Records that the blob `digest`, read as `media`, holds `diff_id`.
    pub fn put_layer_blob(&self, digest: &str, media: &str, diff_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO layer_blobs (digest, media, diff_id, verified_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (digest, media) DO UPDATE SET diff_id = excluded.diff_id, verified_at = excluded.verified_at",
                params![digest, media, diff_id, now_ms()],
            )
            .map(|_| ())
        })
    }

    pub fn layer(&self, chain_id: &str) -> Result<Option<LayerRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT id, chain_id, parent, diff_id, state FROM layers WHERE chain_id = ?1",
                [chain_id],
                Self::layer_from_row,
            )
            .optional()
        })
    }

    pub fn layers(&self) -> Result<Vec<LayerRow>> {
        self.with(|c| {
            let mut s =
                c.prepare("SELECT id, chain_id, parent, diff_id, state FROM layers ORDER BY id")?;
            let rows = s.query_map([], Self::layer_from_row)?.collect();
            rows
        })
    }

    /// Registers a layer about to be applied; returns its id (its directory name).
    pub fn begin_layer(&self, chain_id: &str, parent: Option<&str>, diff_id: &str) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO layers (chain_id, parent, diff_id, state, created_at) VALUES (?1, ?2, ?3, 'applying', ?4)",
                params![chain_id, parent, diff_id, now_ms()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// For `gc`: forgets a layer whatever its state.
    pub fn forget_layer(&self, id: i64) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM layers WHERE id = ?1", [id])
                .map(|_| ())
        })
    }

    pub fn discard_layer(&self, id: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM layers WHERE id = ?1 AND state = 'applying'",
                [id],
            )
            .map(|_| ())
        })
    }

    /// Marks the layer committed and the run's progress past it, atomically.
    pub fn commit_layer(
        &self,
        id: i64,
        entries: u64,
        bytes: u64,
        run: &str,
        idx: usize,
        chain_id: &str,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE layers SET state = 'committed', entries = ?2, bytes = ?3 WHERE id = ?1",
                params![id, entries as i64, bytes as i64],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO layer_progress (run, idx, chain_id, at) VALUES (?1, ?2, ?3, ?4)",
                params![run, idx as i64, chain_id, now_ms()],
            )?;
            tx.commit()
        })
    }

    pub fn record_layer_progress(&self, run: &str, idx: usize, chain_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO layer_progress (run, idx, chain_id, at) VALUES (?1, ?2, ?3, ?4)",
                params![run, idx as i64, chain_id, now_ms()],
            )
            .map(|_| ())
        })
    }

    pub fn layer_progress(&self, run: &str) -> Result<Vec<(usize, String)>> {
        self.with(|c| {
            let mut s =
                c.prepare("SELECT idx, chain_id FROM layer_progress WHERE run = ?1 ORDER BY idx")?;
            let rows = s
                .query_map([run], |r| Ok((r.get::<_, i64>(0)? as usize, r.get(1)?)))?
                .collect();
            rows
        })
    }

    /// Everything a backend must keep after a crash: every layer the store
    /// has, the ready images' snapshots, the activations.
    pub fn known(&self) -> Result<Known> {
        Ok(Known {
            layers: self.layers()?.iter().map(|l| l.id).collect(),
            images: self
                .images()?
                .into_iter()
                .filter(|i| i.state == ImageState::Ready)
                .map(|i| i.name)
                .collect(),
            activations: self.activations()?.into_iter().map(|a| a.id).collect(),
        })
    }

    /// For `gc`: the layers something still stands on (a ready image, an
    /// activation, an unfinished run's progress), and the rest.
    pub fn layers_in_use(&self) -> Result<(Vec<LayerRow>, Vec<LayerRow>)> {
        let layers = self.layers()?;
        let mut roots: Vec<String> = self
            .images()?
            .into_iter()
            .filter(|i| i.state == ImageState::Ready)
            .filter_map(|i| i.top_chain)
            .collect();
        roots.extend(self.activations()?.into_iter().map(|a| a.top_chain));
        for run in self.active_runs()? {
            roots.extend(self.layer_progress(&run.id)?.into_iter().map(|(_, c)| c));
        }
        let parents: std::collections::HashMap<&str, Option<&str>> = layers
            .iter()
            .map(|l| (l.chain_id.as_str(), l.parent.as_deref()))
            .collect();
        let keep = crate::core::chain::reachable(roots.iter().map(String::as_str), |c| {
            parents.get(c).copied().flatten()
        });
        Ok(layers.into_iter().partition(|l| keep.contains(&l.chain_id)))
    }
}
