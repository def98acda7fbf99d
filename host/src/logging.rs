//! Logs: `tracing` events on stderr, human-readable (coloured on a
//! terminal) or one JSON object per line (`--log-format json`). The level
//! comes from `TARPOOL_LOG` (an `EnvFilter` directive, default `info`).
//! On an interactive run with progress bars, lines are printed through the
//! bars so they do not tear them.

use std::io::{IsTerminal as _, Write as _};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Reports the error that ends the process: the one line
/// `tarpool: error: ...` on stderr, or a JSON `ERROR` event with
/// `--log-format json`.
pub fn fatal(msg: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::error!(error = msg, "tarpool stopped"),
        _ => eprintln!("tarpool: error: {msg}"),
    }
}

/// Installs the global subscriber. `bars`: draw log lines above these
/// progress bars.
pub fn init(format: LogFormat, bars: Option<indicatif::MultiProgress>) {
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_env("TARPOOL_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn"));
    let writer = Stderr { bars };
    let r = match format {
        LogFormat::Human => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_current_span(false)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
    };
    // Already installed (tests call in twice): keep the first.
    drop(r);
}

#[derive(Clone)]
struct Stderr {
    bars: Option<indicatif::MultiProgress>,
}

/// One event's bytes, written in one piece when dropped.
struct Line {
    buf: Vec<u8>,
    bars: Option<indicatif::MultiProgress>,
}

impl std::io::Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let write = move || {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(&buf);
            let _ = e.flush();
        };
        match &self.bars {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::with_capacity(256),
            bars: self.bars.clone(),
        }
    }
}
