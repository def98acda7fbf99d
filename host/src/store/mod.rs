//! SQLite: the durable state of the machine and its audit log. Every change
//! that moves a run forward is one SQLite transaction, so a crash leaves either
//! the state before a transition or the state after it. One file per thing stored.

mod activations;
mod audit;
pub mod counts;
mod images;
mod layers;
mod objects;
mod runs;
mod schema;
mod thin;

pub use activations::ActivationRow;
pub use audit::{DecisionRow, NewDecision, TransitionRow};
pub use images::{ImageRow, ImageUpdate};
pub use layers::{Known, LayerRow};
pub use runs::{Finish, RunRow, INTERRUPTED_ERROR};
pub use thin::ThinDeviceRow;

use rusqlite::Connection;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Failure;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The database's schema is one this tarpool cannot use.
    #[error("state database: {0}")]
    Schema(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Retry(e.to_string())
    }
}

/// Reads column `i` as one of the typed states: the one place where the
/// store turns their text back into values (writing uses `as_str`).
fn typed<T>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = r.get(i)?;
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// [`typed`], for a nullable column.
fn typed_opt<T>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match r.get::<_, Option<String>>(i)? {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        }),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Whether `path` is a state database tarpool made: false when it is
    /// missing, empty, or has no `images` table (a new SQLite file); an
    /// error when it cannot be read as one.
    pub fn holds_schema(path: &Path) -> Result<bool> {
        match std::fs::metadata(path) {
            Ok(m) if m.len() > 0 => {}
            _ => return Ok(false),
        }
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'images')",
            [],
            |r| r.get(0),
        )?)
    }

    pub fn open(path: &Path) -> Result<Store> {
        // Several processes may open a new state directory at once (the
        // service and a `status`): creating the schema, switching to WAL and
        // the migrations can meet a lock the busy handler does not wait for
        // (a read transaction upgraded to a write). Opening is idempotent,
        // so it is tried again for up to ten seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            match Self::open_once(path) {
                Err(StoreError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                r => return r,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// How long a statement waits for another connection's write lock.
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        self.with(|c| c.busy_timeout(timeout))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut guard)?)
    }

    /// Runs `f`'s reads in one read transaction: one consistent snapshot
    /// of the database (a run that finishes meanwhile is seen either
    /// running or finished, never neither). For single-threaded readers
    /// (the CLI): other users of this `Store` would share the transaction.
    pub fn snapshot<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.with(|c| c.execute_batch("BEGIN DEFERRED"))?;
        let r = f();
        self.with(|c| c.execute_batch("COMMIT"))?;
        r
    }

    /// A read-only connection to the state database, for scrapes: they never
    /// wait on the engine's connection, and WAL lets them read while it
    /// writes (busy waits are absorbed by the busy timeout).
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }
}

/// A new store in a temporary directory (kept while the `TempDir` lives).
#[cfg(test)]
pub(crate) fn test_store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("state.db")).unwrap();
    (d, s)
}
