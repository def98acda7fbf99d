//! The schema: every table the state database holds (the thin pool's too),
//! and the migrations that bring an older database to it.

use rusqlite::Connection;

use super::{Result, StoreError};

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

/// The thin pool's tables (read and written in `thin.rs`): the counter its thin
/// ids come from, its devices, and the journal of its pool operations.
const THIN_POOL_SCHEMA: &str = r#"
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
    tx.execute_batch(THIN_POOL_SCHEMA)?;
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
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::path::Path;

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
}
