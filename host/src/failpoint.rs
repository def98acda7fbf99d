//! Failpoints for crash tests: `TARPOOL_FAILPOINTS=after:download,after-layer#2`
//! makes the process SIGKILL itself the first (or Nth) time it passes that
//! point. Points: `before:STEP`, `before-commit:STEP`, `after:STEP`,
//! `mid-layer` (a layer applied, not yet committed), `after-layer`; and
//! `fail:STEP#N`, which makes the first N executions of STEP fail with an
//! injected, retryable I/O error instead (`fail:sync-layer#N`: the sync of
//! a layer before its commit); `pause:POINT` makes the first pass
//! of POINT wait until the file `TARPOOL_PAUSE_FILE` exists (or sleep
//! `TARPOOL_PAUSE_MS`, default 3000 ms), so a test can signal the service
//! while a transition is under way.
//!
//! Test machinery: compiled in only with the `failpoints` cargo feature,
//! which the tests and benchmarks turn on (`./run-tests.sh`). A build
//! without it (what ships) has no failpoints: the variables are ignored,
//! with a warning, and every point is a no-op.

use std::collections::HashMap;
use std::sync::Mutex;

pub struct Failpoints {
    armed: HashMap<String, u32>,
    seen: Mutex<HashMap<String, u32>>,
}

impl Failpoints {
    #[cfg(feature = "failpoints")]
    pub fn from_env() -> Failpoints {
        Self::parse(&std::env::var("TARPOOL_FAILPOINTS").unwrap_or_default())
    }

    /// No failpoints in this build.
    #[cfg(not(feature = "failpoints"))]
    pub fn from_env() -> Failpoints {
        if std::env::var_os("TARPOOL_FAILPOINTS").is_some() {
            tracing::warn!(
                "TARPOOL_FAILPOINTS is ignored: this tarpool was built without the failpoints feature"
            );
        }
        Self::parse("")
    }

    pub fn parse(spec: &str) -> Failpoints {
        let armed = spec
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| match s.trim().split_once('#') {
                Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
                None => (s.trim().to_string(), 1),
            })
            .collect();
        Failpoints {
            armed,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// True when passing `name` now should kill the process.
    pub fn fires(&self, name: &str) -> bool {
        let Some(&at) = self.armed.get(name) else {
            return false;
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let n = seen.entry(name.to_string()).or_insert(0);
        *n += 1;
        *n == at
    }

    /// For `fail:STEP#N` points: true for the first N passes (default 1),
    /// so a transition can be made to fail with an injected I/O error.
    pub fn fails(&self, name: &str) -> bool {
        let Some(&upto) = self.armed.get(name) else {
            return false;
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let n = seen.entry(name.to_string()).or_insert(0);
        *n += 1;
        *n <= upto
    }

    #[cfg(not(feature = "failpoints"))]
    pub fn hit(&self, _name: &str) {}

    #[cfg(feature = "failpoints")]
    pub fn hit(&self, name: &str) {
        if self.fires(&format!("pause:{name}")) {
            tracing::warn!(failpoint = name, "failpoint: pausing");
            match std::env::var_os("TARPOOL_PAUSE_FILE") {
                // Until the test creates the file (at most two minutes).
                Some(f) => {
                    let t = std::time::Instant::now();
                    while !std::path::Path::new(&f).exists()
                        && t.elapsed() < std::time::Duration::from_secs(120)
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
                None => {
                    let ms = std::env::var("TARPOOL_PAUSE_MS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(3000);
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
            }
        }
        if self.fires(name) {
            tracing::warn!(failpoint = name, "failpoint: killing the process");
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            // The signal is synchronous for the calling process, but make sure.
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hits() {
        let f = Failpoints::parse("after:download,after-layer#3");
        assert!(f.fires("after:download"));
        assert!(!f.fires("after:download"));
        assert!(!f.fires("after-layer"));
        assert!(!f.fires("after-layer"));
        assert!(f.fires("after-layer"));
        assert!(!f.fires("before:download"));
        let f = Failpoints::parse("fail:download#2");
        assert!(f.fails("fail:download"));
        assert!(f.fails("fail:download"));
        assert!(!f.fails("fail:download"));
        assert!(!f.fails("fail:classify"));
    }
}
