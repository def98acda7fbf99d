//! Download-once bookkeeping: the source objects fetched (size, stamp,
//! sha256), and the keys a source's listing rejected.

use rusqlite::{params, OptionalExtension};

use super::{now_ms, Result, Store};

impl Store {
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
}
