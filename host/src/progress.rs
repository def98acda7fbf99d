//! Progress of interactive runs: a bar per image (its transition) and per
//! layer being unpacked (compressed bytes read of the layer's size, entries
//! written), drawn on a terminal with `indicatif`.
//!
//! The engine and the layer transitions report through [`image_transition`],
//! [`layer`] and [`image_done`]; nothing is drawn unless the CLI installed
//! [`Bars`] (an interactive human-format run). The extraction worker is a
//! separate process: it counts compressed bytes into [`RAW_BYTES`] (entries
//! are counted by the extraction code itself) and, when asked, prints both
//! on stderr as [`WORKER_LINE`] lines, which the service turns into [`layer`]
//! calls.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Compressed bytes of the current layer read so far (in the worker).
pub static RAW_BYTES: AtomicU64 = AtomicU64::new(0);
/// How a worker's progress line starts: `\x1eprogress RAW_BYTES ENTRIES`.
pub const WORKER_LINE: &str = "\u{1e}progress ";

/// Where progress goes.
pub trait Sink: Send + Sync {
    fn image_transition(&self, image: &str, transition: &str);
    /// Layer `n` of `of` of `image`: `bytes` of `total` compressed bytes read,
    /// `entries` written.
    fn layer(&self, image: &str, n: usize, of: usize, bytes: u64, total: u64, entries: u64);
    fn layer_done(&self, image: &str, n: usize);
    fn image_done(&self, image: &str, state: &str);
}

static SINK: OnceLock<Arc<dyn Sink>> = OnceLock::new();

/// Installs the process's sink (once; later calls are ignored).
pub fn install(sink: Arc<dyn Sink>) {
    let _ = SINK.set(sink);
}

/// Whether anyone draws progress (so workers are asked to report it).
pub fn active() -> bool {
    SINK.get().is_some()
}

pub fn image_transition(image: &str, transition: &str) {
    if let Some(s) = SINK.get() {
        s.image_transition(image, transition);
    }
}

pub fn layer(image: &str, n: usize, of: usize, bytes: u64, total: u64, entries: u64) {
    if let Some(s) = SINK.get() {
        s.layer(image, n, of, bytes, total, entries);
    }
}

pub fn layer_done(image: &str, n: usize) {
    if let Some(s) = SINK.get() {
        s.layer_done(image, n);
    }
}

pub fn image_done(image: &str, state: &str) {
    if let Some(s) = SINK.get() {
        s.image_done(image, state);
    }
}

/// Parses a worker's progress line (after [`WORKER_LINE`]): `RAW ENTRIES`.
pub fn parse_worker_line(rest: &str) -> Option<(u64, u64)> {
    let mut it = rest.split_ascii_whitespace();
    let raw = it.next()?.parse().ok()?;
    let entries = it.next()?.parse().ok()?;
    it.next().is_none().then_some((raw, entries))
}

/// Terminal progress bars.
pub struct Bars {
    multi: MultiProgress,
    images: Mutex<HashMap<String, ProgressBar>>,
    layers: Mutex<HashMap<(String, usize), ProgressBar>>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            multi: MultiProgress::new(),
            images: Mutex::new(HashMap::new()),
            layers: Mutex::new(HashMap::new()),
        }
    }

    /// The bars' owner: log lines are printed through it so they do not
    /// tear the bars.
    pub fn multi(&self) -> MultiProgress {
        self.multi.clone()
    }

    fn image_bar(&self, image: &str) -> ProgressBar {
        let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
        images
            .entry(image.to_string())
            .or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new_spinner());
                b.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:<24} {msg} ({elapsed})")
                        .expect("a valid template"),
                );
                b.set_prefix(image.to_string());
                b.enable_steady_tick(std::time::Duration::from_millis(200));
                b
            })
            .clone()
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

impl Sink for Bars {
    fn image_transition(&self, image: &str, transition: &str) {
        self.image_bar(image).set_message(transition.to_string());
    }

    fn layer(&self, image: &str, n: usize, of: usize, bytes: u64, total: u64, entries: u64) {
        let parent = self.image_bar(image);
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        let bar = layers.entry((image.to_string(), n)).or_insert_with(|| {
            let b = self.multi.insert_after(&parent, ProgressBar::new(total));
            b.set_style(
                ProgressStyle::with_template(
                    "  {prefix:<22} [{bar:30}] {bytes}/{total_bytes} {msg} ({bytes_per_sec})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(format!("layer {n}/{of}"));
            b
        });
        bar.set_length(total);
        bar.set_position(bytes.min(total));
        bar.set_message(format!("{entries} entries"));
    }

    fn layer_done(&self, image: &str, n: usize) {
        let bar = self
            .layers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(image.to_string(), n));
        if let Some(b) = bar {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
    }

    fn image_done(&self, image: &str, state: &str) {
        let bar = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(image);
        if let Some(b) = bar {
            b.finish_with_message(state.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Option<(u64, u64)>) {
        assert_eq!(parse_worker_line(line), expected, "{line:?}");
    }

    #[test]
    fn worker_lines() {
        check("12 3", Some((12, 3)));
        check("0 0", Some((0, 0)));
        check("12", None);
        check("12 3 4", None);
        check("-1 3", None);
        check("x y", None);
        check("", None);
    }
}
