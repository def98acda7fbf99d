//! Images: the row each image's last run left (its state, layers, runtime
//! config), written when a run ends.

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{typed, typed_opt, Result, Store};
use crate::core::machine::FailureKind;
use crate::core::states::ImageState;

#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    pub name: String,
    pub state: ImageState,
    pub error: Option<String>,
    pub failure_kind: Option<FailureKind>,
    pub last_run: Option<String>,
    pub fingerprint: Option<String>,
    pub format: Option<String>,
    pub top_chain: Option<String>,
    pub layers: Option<serde_json::Value>,
    pub updated_at: i64,
    /// The runtime config (env, entrypoint, cmd, working dir, user).
    pub config: Option<serde_json::Value>,
}

/// The image row written when a run ends.
pub struct ImageUpdate<'a> {
    pub name: &'a str,
    pub state: ImageState,
    pub error: Option<&'a str>,
    pub failure_kind: Option<FailureKind>,
    pub run: &'a str,
    pub fingerprint: Option<&'a str>,
    pub format: Option<&'a str>,
    pub top_chain: Option<&'a str>,
    pub layers: Option<&'a str>,
    /// The runtime config (JSON), when known.
    pub config: Option<&'a str>,
}

impl ImageUpdate<'_> {
    pub(super) fn write(&self, c: &Connection, t: i64) -> rusqlite::Result<()> {
        c.execute(
            "INSERT INTO images (name, state, error, failure_kind, last_run, fingerprint, format, top_chain, layers, updated_at, config)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (name) DO UPDATE SET state = excluded.state, error = excluded.error, failure_kind = excluded.failure_kind,
               last_run = excluded.last_run, fingerprint = excluded.fingerprint,
               format = COALESCE(excluded.format, images.format), top_chain = COALESCE(excluded.top_chain, images.top_chain),
               layers = COALESCE(excluded.layers, images.layers), updated_at = excluded.updated_at,
               config = COALESCE(excluded.config, images.config)",
            params![
                self.name,
                self.state.as_str(),
                self.error,
                self.failure_kind.map(FailureKind::name),
                self.run,
                self.fingerprint,
                self.format,
                self.top_chain,
                self.layers,
                t,
                self.config
            ],
        )
        .map(|_| ())
    }
}

impl Store {
    pub fn image(&self, name: &str) -> Result<Option<ImageRow>> {
        Ok(self.images()?.into_iter().find(|i| i.name == name))
    }

    pub fn images(&self) -> Result<Vec<ImageRow>> {
        self.with(|c| {
            let mut s = c.prepare(
                "SELECT name, state, error, failure_kind, last_run, fingerprint, format, top_chain, layers, updated_at, config FROM images ORDER BY name",
            )?;
            let rows = s
                .query_map([], |r| {
                    let layers: Option<String> = r.get(8)?;
                    Ok(ImageRow {
                        name: r.get(0)?,
                        state: typed(r, 1)?,
                        error: r.get(2)?,
                        failure_kind: typed_opt(r, 3)?,
                        last_run: r.get(4)?,
                        fingerprint: r.get(5)?,
                        format: r.get(6)?,
                        top_chain: r.get(7)?,
                        layers: layers.and_then(|l| serde_json::from_str(&l).ok()),
                        updated_at: r.get(9)?,
                        config: r
                            .get::<_, Option<String>>(10)?
                            .and_then(|c| serde_json::from_str(&c).ok()),
                    })
                })?
                .collect();
            rows
        })
    }
}
