//! The counts `GET /metrics` shows from SQLite: plain data, read in one read
//! transaction by [`Store::metrics_counts`] (the metrics module renders them).

use rusqlite::params;

use super::{Result, Store, INTERRUPTED_ERROR};

/// The counts read from SQLite for `GET /metrics` (see [`Store::metrics_counts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Finished transition executions, by transition and outcome
    /// ([`INTERRUPTED`] for the ones the service's stop interrupted).
    pub transitions: Vec<TransitionCount>,
    /// Bytes fetched by download and fetch-layers transitions that
    /// completed, by the kind of their run's source (`dir`, `s3`,
    /// `registry`).
    pub downloaded_bytes: Vec<(String, u64)>,
    /// Committed layers, their content bytes and entries.
    pub layers: u64,
    pub written_bytes: u64,
    pub layer_entries: u64,
    pub decisions: Vec<DecisionCount>,
    /// Images by the state `tarpool status` shows.
    pub images: Vec<(String, u64)>,
    pub runs_active: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransitionCount {
    pub transition: String,
    pub outcome: String,
    pub count: u64,
    /// 0, like the buckets, for [`INTERRUPTED`] (no duration).
    pub sum_ms: u64,
    /// Cumulative: executions that took at most `BUCKETS_MS[i]`.
    pub buckets: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionCount {
    pub rule: String,
    pub action: String,
    pub verdict: String,
    pub count: u64,
}

/// The outcome label of the executions the service's stop interrupted
/// (recorded as `retry` with [`INTERRUPTED_ERROR`]): counted
/// in `tarpool_transitions_total`, left out of the duration histogram
/// (their end is the restart, so their duration would include the
/// downtime).
pub const INTERRUPTED: &str = "interrupted";

impl Store {
    /// What `GET /metrics` shows from SQLite, read in one read transaction:
    /// a handful of GROUP BY scans, no per-row work in Rust.
    /// `buckets_ms`: the duration histogram's upper bounds.
    pub fn metrics_counts(&self, buckets_ms: &[u64]) -> Result<Counts> {
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
                .query_map(params![INTERRUPTED_ERROR, INTERRUPTED], |r| {
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
            let mut s = tx.prepare(
                "SELECT CASE
                     WHEN json_extract(r.data, '$.source') LIKE 's3://%' THEN 's3'
                     WHEN json_extract(r.data, '$.source') LIKE 'registry://%' THEN 'registry'
                     ELSE 'dir' END AS kind,
                   COALESCE(SUM(CASE WHEN json_valid(t.output) THEN json_extract(t.output, '$.bytes') END), 0)
                 FROM transitions t JOIN runs r ON r.id = t.run
                 WHERE t.name IN ('download', 'fetch-layers') AND t.outcome = 'ok' AND json_valid(r.data)
                 GROUP BY kind ORDER BY kind",
            )?;
            let downloaded_bytes = s
                .query_map([], |r| Ok((r.get::<_, String>(0)?, n(r.get(1)?))))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(s);
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
                downloaded_bytes,
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
