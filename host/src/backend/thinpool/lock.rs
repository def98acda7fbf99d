//! The pool lock, which serializes pool operations: re-entrant within a
//! thread, exclusive across threads and across processes.

use std::fs::File;
use std::io;
use std::sync::Mutex;

/// The pool lock: re-entrant within a thread, exclusive across threads
/// (a mutex and condvar) and across processes (an flock on `pool.lock`).
pub(super) struct PoolLock {
    file: File,
    holder: Mutex<(Option<std::thread::ThreadId>, usize)>,
    free: std::sync::Condvar,
}

pub(super) struct PoolGuard<'a>(&'a PoolLock);

impl PoolLock {
    pub(super) fn new(file: File) -> PoolLock {
        PoolLock {
            file,
            holder: Mutex::new((None, 0)),
            free: std::sync::Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> io::Result<PoolGuard<'_>> {
        let me = std::thread::current().id();
        let mut h = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if h.0 == Some(me) {
            h.1 += 1;
            return Ok(PoolGuard(self));
        }
        while h.0.is_some() {
            h = self.free.wait(h).unwrap_or_else(|p| p.into_inner());
        }
        rustix::fs::flock(&self.file, rustix::fs::FlockOperation::LockExclusive)?;
        *h = (Some(me), 1);
        Ok(PoolGuard(self))
    }
}

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        let mut h = self.0.holder.lock().unwrap_or_else(|p| p.into_inner());
        h.1 -= 1;
        if h.1 == 0 {
            let _ = rustix::fs::flock(&self.0.file, rustix::fs::FlockOperation::Unlock);
            h.0 = None;
            self.0.free.notify_one();
        }
    }
}
