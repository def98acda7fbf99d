//! Activations (writable views of an image) and the bundles made of them.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now_ms, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivationRow {
    pub id: String,
    pub image: String,
    pub top_chain: String,
    pub mountpoint: Option<String>,
}

impl Store {
    pub fn add_activation(&self, a: &ActivationRow) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO activations (id, image, top_chain, mountpoint, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![a.id, a.image, a.top_chain, a.mountpoint, now_ms()],
            )
            .map(|_| ())
        })
    }

    fn activation_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ActivationRow> {
        Ok(ActivationRow {
            id: r.get(0)?,
            image: r.get(1)?,
            top_chain: r.get(2)?,
            mountpoint: r.get(3)?,
        })
    }

    pub fn activation(&self, id: &str) -> Result<Option<ActivationRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT id, image, top_chain, mountpoint FROM activations WHERE id = ?1",
                [id],
                Self::activation_from_row,
            )
            .optional()
        })
    }

    pub fn activations(&self) -> Result<Vec<ActivationRow>> {
        self.with(|c| {
            let mut s = c.prepare(
                "SELECT id, image, top_chain, mountpoint FROM activations ORDER BY created_at",
            )?;
            let rows = s.query_map([], Self::activation_from_row)?.collect();
            rows
        })
    }

    /// A bundle made of activation `act` in `dir` (`tarpool bundle`).
    pub fn add_bundle(&self, dir: &str, act: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO bundles (dir, activation, created_at) VALUES (?1, ?2, ?3)",
                params![dir, act, now_ms()],
            )
            .map(|_| ())
        })
    }

    /// The directories of activation `act`'s bundles.
    pub fn bundles_of(&self, act: &str) -> Result<Vec<String>> {
        self.with(|c| {
            let mut s = c.prepare("SELECT dir FROM bundles WHERE activation = ?1 ORDER BY dir")?;
            let rows = s.query_map([act], |r| r.get(0))?.collect();
            rows
        })
    }

    pub fn remove_bundle(&self, dir: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM bundles WHERE dir = ?1", [dir])
                .map(|_| ())
        })
    }

    pub fn remove_activation(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM activations WHERE id = ?1", [id])
                .map(|_| ())
        })
    }
}
