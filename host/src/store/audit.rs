//! The audit log: the transitions of an image's runs and the policy
//! decisions each execution recorded (`tarpool audit`).

use rusqlite::params;
use serde::Serialize;

use super::{now_ms, Result, Store};

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

impl Store {
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
