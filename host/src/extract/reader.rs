//! The byte source handed to the `tar` parser. It tells apart failures of the
//! underlying stream (environment: retryable) from parse errors (hostile or
//! broken layer), and bounds how much the parser may consume while it looks
//! for the next member: the `tar` crate buffers PAX and GNU long-name
//! extension data in memory without a cap (catalogue E36).

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::rc::Rc;

#[derive(Default)]
pub(super) struct Shared {
    consumed: Cell<u64>,
    limit: Cell<Option<u64>>,
    over_limit: Cell<bool>,
    read_err: RefCell<Option<io::Error>>,
}

impl Shared {
    /// Allows at most `budget` more bytes to be consumed until `disarm`.
    pub(super) fn arm(&self, budget: u64) {
        self.limit
            .set(Some(self.consumed.get().saturating_add(budget)));
    }

    pub(super) fn disarm(&self) {
        self.limit.set(None);
    }

    pub(super) fn over_limit(&self) -> bool {
        self.over_limit.get()
    }

    /// The underlying stream's error, if the last failure came from it.
    pub(super) fn take_read_err(&self) -> Option<io::Error> {
        self.read_err.borrow_mut().take()
    }
}

pub(super) struct Guarded<R> {
    inner: R,
    shared: Rc<Shared>,
}

impl<R> Guarded<R> {
    pub(super) fn new(inner: R, shared: Rc<Shared>) -> Self {
        Guarded { inner, shared }
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = &self.shared;
        let mut want = buf.len();
        if let Some(limit) = s.limit.get() {
            let room = limit.saturating_sub(s.consumed.get());
            if room == 0 && !buf.is_empty() {
                s.over_limit.set(true);
                return Err(io::Error::other("extension header budget exceeded"));
            }
            want = want.min(usize::try_from(room).unwrap_or(usize::MAX));
        }
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => {
                    s.consumed.set(s.consumed.get() + n as u64);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let kind = e.kind();
                    *s.read_err.borrow_mut() = Some(e);
                    return Err(io::Error::new(kind, "layer stream read failed"));
                }
            }
        }
    }
}
