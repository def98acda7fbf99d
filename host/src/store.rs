//! SQLite: the durable state of the machine and its audit log. Every change
//! that moves a run forward is one SQLite transaction, so a crash leaves either
//! the state before a transition or the state after it.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The database's schema is one this tarpool cannot use.
    #[error("state database: {0}")]
    Schema(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

use crate::core::machine::FailureKind;
use crate::core::states::{ImageState, RunStatus, TransitionOutcome};

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

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    next_step TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    data TEXT NOT NULL,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_run_per_image ON runs(image) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS transitions (
    version TEXT PRIMARY KEY,
    run TEXT NOT NULL REFERENCES runs(id),
    image TEXT NOT NULL,
    name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('running', 'ok', 'retry', 'failed', 'cancelled')),
    output TEXT,
    error TEXT,
    started_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS transitions_by_image ON transitions(image, version);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    version TEXT NOT NULL,
    image TEXT NOT NULL,
    rule TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('allow', 'deny')),
    detail TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_image ON decisions(image, id);
CREATE TABLE IF NOT EXISTS policies (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    first_used_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('ready', 'failed', 'cancelled')),
    error TEXT,
    failure_kind TEXT,
    last_run TEXT,
    fingerprint TEXT,
    format TEXT,
    top_chain TEXT,
    layers TEXT,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    stamp TEXT NOT NULL,
    modified TEXT NOT NULL DEFAULT '',
    sha256 TEXT NOT NULL,
    fetched_at INTEGER NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE TABLE IF NOT EXISTS layers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_id TEXT NOT NULL UNIQUE,
    parent TEXT,
    diff_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('applying', 'committed')),
    entries INTEGER,
    bytes INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS layer_progress (
    run TEXT NOT NULL,
    idx INTEGER NOT NULL,
    chain_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (run, idx)
);
CREATE TABLE IF NOT EXISTS rejected (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (source, key)
);
-- Layer blobs whose diff ID the confined worker has computed or verified:
-- the blob with this digest (of its stored bytes), read as this media,
-- decompresses to the tar stream with this diff ID. An image may use a
-- stored layer only through a blob shown to hold it.
CREATE TABLE IF NOT EXISTS layer_blobs (
    digest TEXT NOT NULL,
    media TEXT NOT NULL,
    diff_id TEXT NOT NULL,
    verified_at INTEGER NOT NULL,
    PRIMARY KEY (digest, media)
);
CREATE TABLE IF NOT EXISTS activations (
    id TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    top_chain TEXT NOT NULL,
    mountpoint TEXT,
    created_at INTEGER NOT NULL
);
"#;

/// The schema's migrations, in order: migration `i` takes a database from
/// `PRAGMA user_version` `i` to `i + 1`. Released entries are never edited;
/// a schema change is a new entry at the end.
const MIGRATIONS: &[fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>] = &[adopt, bundles];

/// Migration 2: `tarpool bundle`'s bundles, whose root filesystems stay
/// mounted until their activation is deactivated.
fn bundles(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS bundles (
            dir TEXT PRIMARY KEY,
            activation TEXT NOT NULL,
            created_at INTEGER NOT NULL
        )",
    )
}

/// Migration 1: the schema (every table, the thin pool's included), for a
/// new database or one made before schema versions. Such an older database
/// may lack columns added in place before versions existed; they are added
/// here, the only place where columns are looked for.
fn adopt(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(crate::backend::thinpool::SCHEMA)?;
    for (table, column, decl) in [
        ("objects", "modified", "TEXT NOT NULL DEFAULT ''"),
        ("decisions", "layer", "INTEGER"),
        ("decisions", "path", "TEXT"),
        ("decisions", "action", "TEXT NOT NULL DEFAULT ''"),
        ("decisions", "reason", "TEXT NOT NULL DEFAULT ''"),
        ("runs", "policy_sha256", "TEXT"),
        ("images", "config", "TEXT"),
    ] {
        let has: bool = tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1)"),
            [column],
            |r| r.get(0),
        )?;
        if !has {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}

/// Brings the database to the newest schema this tarpool knows, in one
/// IMMEDIATE transaction (another process may be opening it too), taken only
/// when a migration is due. A database from a newer tarpool is refused.
fn migrate(conn: &mut Connection) -> Result<()> {
    let known = MIGRATIONS.len();
    let version = |c: &Connection| -> rusqlite::Result<usize> {
        c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
    };
    let newer = |v: usize| {
        StoreError::Schema(format!(
            "its schema is version {v}, newer than this tarpool's ({known}); use the tarpool that made it"
        ))
    };
    match version(conn)? {
        v if v == known => return Ok(()),
        v if v > known => return Err(newer(v)),
        _ => {}
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let from = version(&tx)?;
    if from > known {
        return Err(newer(from));
    }
    for m in &MIGRATIONS[from..] {
        m(&tx)?;
    }
    tx.pragma_update(None, "user_version", known as i64)?;
    tx.commit()?;
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: String,
    pub image: String,
    pub status: RunStatus,
    pub next_step: Option<String>,
    pub attempt: u32,
    pub data: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransitionRow {
    pub run: String,
    pub version: String,
    pub name: String,
    pub attempt: u32,
    pub outcome: String,
    pub error: Option<String>,
    pub output: Option<serde_json::Value>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionRow {
    pub run: String,
    pub version: String,
    pub rule: String,
    /// `allow` or `deny` (the image's fate).
    pub verdict: String,
    /// `allow`, `reject`, `skip`, `strip`, `clamp` or `note`.
    pub action: String,
    pub layer: Option<u32>,
    pub path: Option<String>,
    pub detail: String,
    /// The policy's reason for the rule.
    pub reason: String,
    pub at: i64,
}

/// A decision to record (see [`Store::record_decisions`]).
pub struct NewDecision<'a> {
    pub rule: &'a str,
    pub action: &'a str,
    pub layer: Option<u32>,
    pub path: Option<&'a str>,
    pub detail: &'a str,
    pub reason: &'a str,
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    pub id: i64,
    pub chain_id: String,
    pub parent: Option<String>,
    pub diff_id: String,
    pub committed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivationRow {
    pub id: String,
    pub image: String,
    pub top_chain: String,
    pub mountpoint: Option<String>,
}

/// The end of a transition execution, written in one SQLite transaction.
pub struct Finish<'a> {
    pub version: &'a str,
    pub outcome: TransitionOutcome,
    pub output: Option<&'a str>,
    pub error: Option<&'a str>,
    /// The run's new row values.
    pub status: RunStatus,
    pub next_step: Option<&'a str>,
    pub attempt: u32,
    pub data: &'a str,
    pub run_error: Option<&'a str>,
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
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut guard)?)
    }

    /// After a crash: executions that were under way are recorded as
    /// interrupted (outcome `retry`, error [`INTERRUPTED_ERROR`]). Returns
    /// how many there were.
    pub fn mark_interrupted(&self) -> Result<usize> {
        self.with(|c| {
            c.execute(
                "UPDATE transitions SET outcome = 'retry', error = ?2, finished_at = ?1 WHERE outcome = 'running'",
                params![now_ms(), INTERRUPTED_ERROR],
            )
        })
    }

    // ---- runs ----

    /// Remembers a policy's text by its sha256 (runs refer to it).
    pub fn record_policy(&self, sha256: &str, name: &str, text: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO policies (sha256, name, text, first_used_at) VALUES (?1, ?2, ?3, ?4)",
                params![sha256, name, text, now_ms()],
            )
            .map(|_| ())
        })
    }

    pub fn create_run(
        &self,
        id: &str,
        image: &str,
        first_step: &str,
        data: &str,
        policy_sha256: &str,
    ) -> Result<()> {
        self.with(|c| {
            let t = now_ms();
            c.execute(
                "INSERT INTO runs (id, image, status, next_step, attempt, data, created_at, updated_at, policy_sha256) VALUES (?1, ?2, 'running', ?3, 1, ?4, ?5, ?5, ?6)",
                params![id, image, first_step, data, t, policy_sha256],
            )
            .map(|_| ())
        })
    }

    fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            id: r.get(0)?,
            image: r.get(1)?,
            status: typed(r, 2)?,
            next_step: r.get(3)?,
            attempt: r.get(4)?,
            data: r.get(5)?,
            error: r.get(6)?,
        })
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

    pub fn active_runs(&self) -> Result<Vec<RunRow>> {
        self.with(|c| {
            let mut s = c.prepare(
                "SELECT id, image, status, next_step, attempt, data, error FROM runs WHERE status = 'running' ORDER BY id",
            )?;
            let rows = s.query_map([], Self::run_from_row)?.collect();
            rows
        })
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT id, image, status, next_step, attempt, data, error FROM runs WHERE id = ?1",
                [id],
                Self::run_from_row,
            )
            .optional()
        })
    }

    pub fn request_cancel(&self, image: &str) -> Result<bool> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET cancel_requested = 1 WHERE image = ?1 AND status = 'running'",
                [image],
            )
            .map(|n| n > 0)
        })
    }

    pub fn cancel_requested(&self, run: &str) -> Result<bool> {
        self.with(|c| {
            c.query_row(
                "SELECT cancel_requested FROM runs WHERE id = ?1",
                [run],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0) != 0)
        })
    }

    /// Records the start of a transition execution.
    pub fn begin_transition(
        &self,
        version: &str,
        run: &str,
        image: &str,
        name: &str,
        attempt: u32,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO transitions (version, run, image, name, attempt, outcome, started_at) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
                params![version, run, image, name, attempt, now_ms()],
            )
            .map(|_| ())
        })
    }

    /// Ends a transition execution and moves the run, atomically. `image`
    /// (when the run ends) is written in the same transaction.
    pub fn finish_transition(
        &self,
        run: &str,
        f: &Finish<'_>,
        image: Option<&ImageUpdate<'_>>,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let t = now_ms();
            tx.execute(
                "UPDATE transitions SET outcome = ?2, output = ?3, error = ?4, finished_at = ?5 WHERE version = ?1",
                params![f.version, f.outcome.as_str(), f.output, f.error, t],
            )?;
            tx.execute(
                "UPDATE runs SET status = ?2, next_step = ?3, attempt = ?4, data = ?5, error = ?6, updated_at = ?7 WHERE id = ?1",
                params![run, f.status.as_str(), f.next_step, f.attempt, f.data, f.run_error, t],
            )?;
            if let Some(u) = image {
                u.write(&tx, t)?;
            }
            tx.commit()
        })
    }

    /// Records policy decisions of one transition execution, in one
    /// SQLite transaction.
    pub fn record_decisions(
        &self,
        run: &str,
        version: &str,
        image: &str,
        decisions: &[NewDecision<'_>],
    ) -> Result<()> {
        if decisions.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO decisions (run, version, image, rule, verdict, detail, at, layer, path, action, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                let t = now_ms();
                for d in decisions {
                    let verdict = if d.action == "reject" { "deny" } else { "allow" };
                    ins.execute(params![
                        run, version, image, d.rule, verdict, d.detail, t, d.layer, d.path,
                        d.action, d.reason
                    ])?;
                }
            }
            tx.commit()
        })
    }

    /// A run's policy: its sha256, and the policy's name.
    pub fn run_policy(&self, run: &str) -> Result<Option<(String, String)>> {
        self.with(|c| {
            c.query_row(
                "SELECT r.policy_sha256, COALESCE(p.name, '') FROM runs r LEFT JOIN policies p ON p.sha256 = r.policy_sha256 WHERE r.id = ?1 AND r.policy_sha256 IS NOT NULL",
                [run],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
    }

    // ---- images ----

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

    // ---- objects (download-once) ----

    pub fn object(&self, source: &str, key: &str) -> Result<Option<(u64, String, String)>> {
        self.with(|c| {
            c.query_row(
                "SELECT size, stamp, sha256 FROM objects WHERE source = ?1 AND key = ?2",
                params![source, key],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })
    }

    pub fn put_object(
        &self,
        source: &str,
        key: &str,
        size: u64,
        stamp: &str,
        modified: &str,
        sha256: &str,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO objects (source, key, size, stamp, sha256, fetched_at, modified) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (source, key) DO UPDATE SET size = excluded.size, stamp = excluded.stamp, sha256 = excluded.sha256, modified = excluded.modified, fetched_at = excluded.fetched_at",
                params![source, key, size as i64, stamp, sha256, now_ms(), modified],
            )
            .map(|_| ())
        })
    }

    pub fn replace_rejected(&self, source: &str, rejected: &[(String, String)]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM rejected WHERE source = ?1", [source])?;
            for (key, reason) in rejected {
                tx.execute(
                    "INSERT OR REPLACE INTO rejected (source, key, reason) VALUES (?1, ?2, ?3)",
                    params![source, key, reason],
                )?;
            }
            tx.commit()
        })
    }

    pub fn rejected(&self) -> Result<Vec<(String, String, String)>> {
        self.with(|c| {
            let mut s =
                c.prepare("SELECT source, key, reason FROM rejected ORDER BY source, key")?;
            let rows = s
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect();
            rows
        })
    }

    // ---- layers ----

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

    // ---- activations ----

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

    /// Everything a backend must keep after a crash: every layer the store
    /// has, the ready images' snapshots, the activations.
    pub fn known(&self) -> Result<crate::backend::Known> {
        Ok(crate::backend::Known {
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

    // ---- audit ----

    pub fn transitions_for(&self, image: &str) -> Result<Vec<TransitionRow>> {
        self.with(|c| {
            let mut s = c.prepare(
                "SELECT run, version, name, attempt, outcome, error, output, started_at, finished_at FROM transitions WHERE image = ?1 ORDER BY version",
            )?;
            let rows = s
                .query_map([image], |r| {
                    let output: Option<String> = r.get(6)?;
                    Ok(TransitionRow {
                        run: r.get(0)?,
                        version: r.get(1)?,
                        name: r.get(2)?,
                        attempt: r.get(3)?,
                        outcome: r.get(4)?,
                        error: r.get(5)?,
                        output: output.and_then(|o| serde_json::from_str(&o).ok()),
                        started_at: r.get(7)?,
                        finished_at: r.get(8)?,
                    })
                })?
                .collect();
            rows
        })
    }

    pub fn decisions_for(&self, image: &str) -> Result<Vec<DecisionRow>> {
        self.with(|c| {
            let mut s = c.prepare(
                "SELECT run, version, rule, verdict, detail, at, action, layer, path, reason FROM decisions WHERE image = ?1 ORDER BY id",
            )?;
            let rows = s
                .query_map([image], |r| {
                    Ok(DecisionRow {
                        run: r.get(0)?,
                        version: r.get(1)?,
                        rule: r.get(2)?,
                        verdict: r.get(3)?,
                        detail: r.get(4)?,
                        at: r.get(5)?,
                        action: r.get(6)?,
                        layer: r.get(7)?,
                        path: r.get(8)?,
                        reason: r.get(9)?,
                    })
                })?
                .collect();
            rows
        })
    }

    pub fn has_image_history(&self, image: &str) -> Result<bool> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE image = ?1)",
                [image],
                |r| r.get::<_, bool>(0),
            )
        })
    }
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
    fn write(&self, c: &Connection, t: i64) -> rusqlite::Result<()> {
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

// ---- metrics (`GET /metrics`, see `crate::metrics`) ----

/// The error `mark_interrupted` records; the metrics tell these executions
/// apart by it.
pub const INTERRUPTED_ERROR: &str = "interrupted: the service stopped during this transition";

impl Store {
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

    /// What `GET /metrics` shows from SQLite, read in one read transaction:
    /// a handful of GROUP BY scans, no per-row work in Rust.
    /// `buckets_ms`: the duration histogram's upper bounds.
    pub fn metrics_counts(&self, buckets_ms: &[u64]) -> Result<crate::metrics::Counts> {
        use crate::metrics::{Counts, DecisionCount, TransitionCount};
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        self.with(|c| {
            let tx = c.transaction()?;
            // Executions `mark_interrupted` closed are counted under their
            // own outcome, with no duration: their `finished_at` is the
            // restart, so `finished_at - started_at` would be the downtime.
            let cols: String = buckets_ms
                .iter()
                .map(|b| format!(", COALESCE(SUM(d <= {b}), 0)"))
                .collect();
            let mut s = tx.prepare(&format!(
                "SELECT name, o, COUNT(*), COALESCE(SUM(d), 0){cols} FROM (
                   SELECT name,
                          CASE WHEN i THEN ?2 ELSE outcome END AS o,
                          CASE WHEN i THEN NULL ELSE MAX(0, finished_at - started_at) END AS d
                     FROM (SELECT *, outcome = 'retry' AND error IS ?1 AS i FROM transitions
                            WHERE finished_at IS NOT NULL)
                 ) GROUP BY name, o ORDER BY name, o"
            ))?;
            let transitions = s
                .query_map(params![INTERRUPTED_ERROR, crate::metrics::INTERRUPTED], |r| {
                    let mut buckets = Vec::with_capacity(buckets_ms.len());
                    for i in 0..buckets_ms.len() {
                        buckets.push(n(r.get(4 + i)?));
                    }
                    Ok(TransitionCount {
                        transition: r.get(0)?,
                        outcome: r.get(1)?,
                        count: n(r.get(2)?),
                        sum_ms: n(r.get(3)?),
                        buckets,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(s);
            let downloaded_bytes: i64 = tx.query_row(
                "SELECT COALESCE(SUM(CASE WHEN json_valid(output) THEN json_extract(output, '$.bytes') END), 0)
                 FROM transitions WHERE name = 'download' AND outcome = 'ok'",
                [],
                |r| r.get(0),
            )?;
            let (layers, written_bytes, layer_entries): (i64, i64, i64) = tx.query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(entries), 0)
                 FROM layers WHERE state = 'committed'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut s = tx.prepare(
                "SELECT rule, action, verdict, COUNT(*) FROM decisions
                 GROUP BY rule, action, verdict ORDER BY rule, action, verdict",
            )?;
            let decisions = s
                .query_map([], |r| {
                    Ok(DecisionCount {
                        rule: r.get(0)?,
                        action: r.get(1)?,
                        verdict: r.get(2)?,
                        count: n(r.get(3)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(s);
            // The states `tarpool status` shows: an image with an active run
            // is running (pending before its first transition); cancelled
            // shows as failed.
            let mut s = tx.prepare(
                "SELECT state, COUNT(*) FROM (
                   SELECT CASE WHEN EXISTS (SELECT 1 FROM transitions t WHERE t.image = r.image AND t.run = r.id)
                          THEN 'running' ELSE 'pending' END AS state
                     FROM runs r WHERE r.status = 'running'
                   UNION ALL
                   SELECT CASE i.state WHEN 'cancelled' THEN 'failed' ELSE i.state END
                     FROM images i
                     WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.image = i.name AND r.status = 'running')
                 ) GROUP BY state ORDER BY state",
            )?;
            let images = s
                .query_map([], |r| Ok((r.get::<_, String>(0)?, n(r.get(1)?))))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(s);
            let runs_active: i64 = tx.query_row(
                "SELECT COUNT(*) FROM runs WHERE status = 'running'",
                [],
                |r| r.get(0),
            )?;
            Ok(Counts {
                transitions,
                downloaded_bytes: n(downloaded_bytes),
                layers: n(layers),
                written_bytes: n(written_bytes),
                layer_entries: n(layer_entries),
                decisions,
                images,
                runs_active: n(runs_active),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn migrations_bring_every_database_to_the_newest_schema() {
        let d = tempfile::tempdir().unwrap();
        // A new database.
        let new = d.path().join("new.db");
        Store::open(&new).unwrap();
        assert_eq!(user_version(&new), MIGRATIONS.len() as i64);
        Store::open(&new).unwrap();
        assert_eq!(user_version(&new), MIGRATIONS.len() as i64, "idempotent");
        // One made before schema versions, without the columns added since.
        let old = d.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch(
                "CREATE TABLE images (name TEXT PRIMARY KEY, state TEXT NOT NULL, error TEXT,
                 failure_kind TEXT, last_run TEXT, fingerprint TEXT, format TEXT, top_chain TEXT,
                 layers TEXT, updated_at INTEGER NOT NULL);",
            )
            .unwrap();
        let s = Store::open(&old).unwrap();
        assert_eq!(user_version(&old), MIGRATIONS.len() as i64);
        assert!(
            s.images().unwrap().is_empty(),
            "the config column was added"
        );
        // One from a newer tarpool.
        let newer = d.path().join("newer.db");
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = Store::open(&newer).err().unwrap().to_string();
        assert!(
            e.contains("schema is version 99, newer than this tarpool's"),
            "{e}"
        );
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).unwrap();
        (d, s)
    }

    #[test]
    fn one_active_run_per_image() {
        let (_d, s) = store();
        s.create_run("01A", "img", "download", "{}", "policy")
            .unwrap();
        assert!(s
            .create_run("01B", "img", "download", "{}", "policy")
            .is_err());
        s.create_run("01C", "other", "download", "{}", "policy")
            .unwrap();
        assert_eq!(s.active_runs().unwrap().len(), 2);
    }

    #[test]
    fn finish_moves_run_and_audit_together() {
        let (_d, s) = store();
        s.create_run("01A", "img", "download", "{}", "policy")
            .unwrap();
        s.begin_transition("01V", "01A", "img", "download", 1)
            .unwrap();
        s.finish_transition(
            "01A",
            &Finish {
                version: "01V",
                outcome: crate::core::states::TransitionOutcome::Ok,
                output: Some("{\"x\":1}"),
                error: None,
                status: crate::core::states::RunStatus::Running,
                next_step: Some("classify"),
                attempt: 1,
                data: "{\"d\":2}",
                run_error: None,
            },
            None,
        )
        .unwrap();
        let r = s.run("01A").unwrap().unwrap();
        assert_eq!(r.next_step.as_deref(), Some("classify"));
        assert_eq!(r.data, "{\"d\":2}");
        let t = s.transitions_for("img").unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].outcome, "ok");
    }

    #[test]
    fn interrupted_executions_are_marked() {
        let (_d, s) = store();
        s.create_run("01A", "img", "download", "{}", "policy")
            .unwrap();
        s.begin_transition("01V", "01A", "img", "download", 1)
            .unwrap();
        assert_eq!(s.mark_interrupted().unwrap(), 1);
        let t = s.transitions_for("img").unwrap();
        assert_eq!(t[0].outcome, "retry");
        assert!(t[0].error.as_deref().unwrap().contains("interrupted"));
    }
}
