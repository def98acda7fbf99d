//! Runs and their transitions: a run's row, the start and end of each
//! transition execution (its end moves the run in the same transaction),
//! cancellation, and the executions a crash interrupted.

use rusqlite::{params, OptionalExtension};

use super::images::ImageUpdate;
use super::{now_ms, typed, Result, Store};
use crate::core::states::{RunStatus, TransitionOutcome};

/// The error `mark_interrupted` records; the metrics tell these executions
/// apart by it.
pub const INTERRUPTED_ERROR: &str = "interrupted: the service stopped during this transition";

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

impl Store {
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
        first_transition: &str,
        data: &str,
        policy_sha256: &str,
    ) -> Result<()> {
        self.with(|c| {
            let t = now_ms();
            c.execute(
                "INSERT INTO runs (id, image, status, next_step, attempt, data, created_at, updated_at, policy_sha256) VALUES (?1, ?2, 'running', ?3, 1, ?4, ?5, ?5, ?6)",
                params![id, image, first_transition, data, t, policy_sha256],
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store as store;

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
