//! `GET /metrics`: the service's counters in the Prometheus text exposition
//! format 0.0.4, served while `tarpool run` runs (`--metrics-addr`).
//!
//! Every value is derived at scrape time from SQLite (the transitions,
//! decisions, images, runs and layers tables) and from the backend's pool
//! status, so the counters survive restarts and cost nothing between
//! scrapes. [`render`] is pure; the server is hyper's HTTP/1 server,
//! bounded: one request per connection, a capped request head read under a
//! timeout, a bounded number of connections, a bounded life for each,
//! errors logged and never fatal to the service.
//!
//! At most one gather (the blocking reads of SQLite and the pool) runs at a
//! time, on a thread of its own outside the runtime: a scrape arriving while
//! one runs waits for that gather's result, and answers 503 when it does not
//! come within [`SCRAPE_TIMEOUT`]. So a pool status that never returns (a
//! suspended device) holds one thread, not one per scrape, and the
//! service's stop never waits for it (the runtime does not own the thread).

use crate::backend::PoolUsage;
use std::fmt::Write as _;

mod server;

pub use server::{spawn, Server};

/// Upper bounds (milliseconds) of the transition duration histogram's
/// buckets; `+Inf` follows.
pub const BUCKETS_MS: [u64; 12] = [
    10, 50, 100, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000,
];

/// What a scrape shows: the store's counts, the pool's usage (when the
/// backend has a pool) and the build.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub counts: Counts,
    pub pool: Option<PoolUsage>,
}

pub use crate::store::counts::{Counts, DecisionCount, TransitionCount, INTERRUPTED};

/// The kinds of source always exported (0 when nothing came from one).
const SOURCE_KINDS: [&str; 3] = ["dir", "s3", "registry"];

/// The image states always exported (0 when no image is in them).
const IMAGE_STATES: [&str; 4] = ["ready", "failed", "running", "pending"];

/// The exposition text of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::new());
    o.family("tarpool_up", "gauge", "1 while the service runs.");
    o.sample("tarpool_up", &[], "1");
    o.family(
        "tarpool_build_info",
        "gauge",
        "The running build; the value is always 1.",
    );
    o.sample("tarpool_build_info", &[("version", &s.version)], "1");

    let c = &s.counts;
    o.family(
        "tarpool_transitions_total",
        "counter",
        "Finished transition executions, by transition and outcome (ok, retry, failed, cancelled, interrupted: under way when the service stopped).",
    );
    for t in &c.transitions {
        let l = [
            ("transition", t.transition.as_str()),
            ("outcome", t.outcome.as_str()),
        ];
        o.sample("tarpool_transitions_total", &l, &t.count.to_string());
    }
    let h = "tarpool_transition_duration_seconds";
    o.family(
        h,
        "histogram",
        "Wall time of finished transition executions, by transition and outcome (interrupted ones left out).",
    );
    for t in c.transitions.iter().filter(|t| t.outcome != INTERRUPTED) {
        let bucket = format!("{h}_bucket");
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            let le = seconds(*le);
            let n = t.buckets.get(i).copied().unwrap_or(t.count);
            let l = [
                ("transition", t.transition.as_str()),
                ("outcome", t.outcome.as_str()),
                ("le", le.as_str()),
            ];
            o.sample(&bucket, &l, &n.to_string());
        }
        let l = [
            ("transition", t.transition.as_str()),
            ("outcome", t.outcome.as_str()),
        ];
        let inf = [l[0], l[1], ("le", "+Inf")];
        o.sample(&bucket, &inf, &t.count.to_string());
        o.sample(&format!("{h}_sum"), &l, &seconds(t.sum_ms));
        o.sample(&format!("{h}_count"), &l, &t.count.to_string());
    }

    let name = "tarpool_downloaded_bytes_total";
    o.family(
        name,
        "counter",
        "Bytes fetched from the sources by completed download and fetch-layers transitions, by the kind of source (dir, s3, registry).",
    );
    for kind in SOURCE_KINDS {
        let v = c
            .downloaded_bytes
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, n)| n)
            .sum::<u64>();
        o.sample(name, &[("source", kind)], &v.to_string());
    }
    for (name, help, v) in [
        (
            "tarpool_written_bytes_total",
            "Content bytes of the committed layers (drops only when `tarpool gc` removes layers, between runs).",
            c.written_bytes,
        ),
        (
            "tarpool_layer_entries_total",
            "Entries (files, directories, links...) of the committed layers.",
            c.layer_entries,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[], &v.to_string());
    }
    o.family("tarpool_layers", "gauge", "Committed layers.");
    o.sample("tarpool_layers", &[], &c.layers.to_string());

    o.family(
        "tarpool_policy_decisions_total",
        "counter",
        "Recorded policy decisions, by rule, action (allow, reject, skip, strip, clamp, note) and verdict (allow, deny).",
    );
    for d in &c.decisions {
        let l = [
            ("rule", d.rule.as_str()),
            ("action", d.action.as_str()),
            ("verdict", d.verdict.as_str()),
        ];
        o.sample("tarpool_policy_decisions_total", &l, &d.count.to_string());
    }

    o.family(
        "tarpool_images",
        "gauge",
        "Tracked images by the state `tarpool status` shows.",
    );
    let count = |state: &str| {
        c.images
            .iter()
            .filter(|(s, _)| s == state)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    for state in IMAGE_STATES {
        o.sample(
            "tarpool_images",
            &[("state", state)],
            &count(state).to_string(),
        );
    }
    for (state, n) in &c.images {
        if !IMAGE_STATES.contains(&state.as_str()) {
            o.sample("tarpool_images", &[("state", state)], &n.to_string());
        }
    }
    o.family("tarpool_runs_active", "gauge", "Runs not yet ended.");
    o.sample("tarpool_runs_active", &[], &c.runs_active.to_string());

    if let Some(p) = &s.pool {
        for (name, help, v) in [
            (
                "tarpool_pool_data_used_bytes",
                "Thin pool data space in use.",
                p.data_used_bytes,
            ),
            (
                "tarpool_pool_data_total_bytes",
                "Thin pool data space.",
                p.data_total_bytes,
            ),
            (
                "tarpool_pool_metadata_used_bytes",
                "Thin pool metadata space in use.",
                p.meta_used_bytes,
            ),
            (
                "tarpool_pool_metadata_total_bytes",
                "Thin pool metadata space.",
                p.meta_total_bytes,
            ),
        ] {
            o.family(name, "gauge", help);
            o.sample(name, &[], &v.to_string());
        }
    }
    o.0
}

/// Milliseconds as a decimal number of seconds (`1500` -> `1.5`).
fn seconds(ms: u64) -> String {
    (ms as f64 / 1000.0).to_string()
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the text format wants it: `\`, `"` and newline escaped.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests;
