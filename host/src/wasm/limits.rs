//! The limits on guests (memory, fuel, sizes, instances at once: `Slots`)
//! and how their failures become a [`StepError`]: traps with their stderr,
//! guest text cut to one bounded line.

use std::sync::{Condvar, Mutex};

use wasmtime::Trap;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::{host_err, StepError};

/// Linear memory and fuel of a user step: two files of at most 1 MiB each.
pub(super) const USER_MEMORY: usize = 64 << 20;
pub(super) const USER_FUEL: u64 = 2_000_000_000;

/// Linear memory and fuel of a listing step: one page of at most 4 MiB.
pub(super) const LISTING_MEMORY: usize = 128 << 20;
pub(super) const LISTING_FUEL: u64 = 2_000_000_000;

/// Linear memory and fuel of one inspect step call (the image, or one
/// batch of entries: at most a megabyte of a layer's stream).
pub(super) const INSPECT_MEMORY: usize = 64 << 20;
pub(super) const INSPECT_FUEL: u64 = 1_000_000_000;

/// Linear memory a `classify` instance may use.
pub(super) const CLASSIFY_MEMORY: usize = 64 << 20;
/// Linear memory a `parse` instance may use: the member list of a flat
/// rootfs archive can be large.
pub(super) const MANIFEST_MEMORY: usize = 256 << 20;
/// Linear memory of a tar check instance (it keeps 16 bytes and a flag per
/// distinct path of the stream, to find duplicates).
pub(super) const TAR_MEMORY: usize = 256 << 20;
/// Fuel for one tar check call: a fixed part, and a part per byte fed.
pub(super) const TAR_FUEL_BASE: u64 = 50_000_000;
pub(super) const TAR_FUEL_PER_BYTE: u64 = 1_000;
/// Calls running at once; further callers wait for a slot.
pub(super) const MAX_CONCURRENT: u32 = 16;
/// Fuel (roughly, wasm instructions) for one `classify` call.
pub(super) const CLASSIFY_FUEL: u64 = 200_000_000;
/// Fuel for one `parse` call: enough to decode several 4 MiB JSON members.
pub(super) const MANIFEST_FUEL: u64 = 4_000_000_000;
/// Largest member the manifest step may read, unless the policy says
/// otherwise (`max-json-bytes`).
pub(super) const MAX_MEMBER_READ: usize = 4 << 20;
/// Bytes the manifest step may read in one call, all members together.
pub(super) const MAX_TOTAL_READ: usize = 32 << 20;
/// Largest `head` passed to `classify` (the WIT contract).
pub(super) const MAX_HEAD: usize = 64 << 10;
/// Guest stderr kept for trap messages (a Rust guest prints its panic there).
pub(super) const STDERR_CAP: usize = 4096;
/// Longest message taken from a guest.
pub(super) const MAX_MESSAGE_CHARS: usize = 300;

/// An error from instantiating: a trap blames the input (it cannot, with
/// these guests, but keep the distinction), anything else is the host's.
pub(super) fn instantiate_err(
    step: &str,
    e: wasmtime::Error,
    stderr: &MemoryOutputPipe,
) -> StepError {
    if e.downcast_ref::<Trap>().is_some() {
        trapped(e, stderr)
    } else {
        host_err(&format!("instantiating the {step} step"), e)
    }
}

/// A call that did not return: the guest trapped (panicked, ran out of fuel
/// or memory) on this input.
pub(super) fn trapped(e: wasmtime::Error, stderr: &MemoryOutputPipe) -> StepError {
    let mut msg = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{e:#}"),
    };
    let said = stderr.contents();
    let said = String::from_utf8_lossy(&said);
    let said: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if !said.is_empty() {
        msg.push_str("; guest stderr: ");
        msg.push_str(&said.join(" | "));
    }
    StepError::Trapped(one_line(&msg, MAX_MESSAGE_CHARS))
}

/// One bounded line without control characters.
pub(super) fn one_line(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push_str("...");
            break;
        }
        out.push(if guest_text::unsafe_char(c) { '?' } else { c });
    }
    out
}

/// A counting semaphore bounding concurrent instances to what the pooling
/// allocator holds, so callers wait instead of failing.
pub(super) struct Slots {
    free: Mutex<u32>,
    freed: Condvar,
}

pub(super) struct Slot<'a>(&'a Slots);

impl Slots {
    pub(super) fn new(n: u32) -> Self {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    pub(super) fn acquire(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
}
