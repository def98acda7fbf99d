//! The reader `open` returns: the body of a GET conditional on the listed
//! ETag, started on the first read, with a stall timeout per chunk.

use std::future::Future;
use std::io::{self, Read};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;

use super::fail::{classify, one_line};
use super::Inner;

/// The body of a GET, started on the first read (so `open` alone is a HEAD).
pub(super) struct LazyBody {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    key: String,
    etag: String,
    body: Option<ByteStream>,
    chunk: Vec<u8>,
    pos: usize,
}

impl LazyBody {
    pub(super) fn new(
        inner: Arc<Inner>,
        handle: tokio::runtime::Handle,
        key: String,
        etag: String,
    ) -> LazyBody {
        LazyBody {
            inner,
            handle,
            key,
            etag,
            body: None,
            chunk: Vec::new(),
            pos: 0,
        }
    }

    fn wait<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| io::Error::other("the S3 client task stopped"))
    }
}

impl Read for LazyBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.pos);
                buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let mut body = match self.body.take() {
                Some(b) => b,
                None => {
                    let inner = self.inner.clone();
                    let key = format!("{}{}", inner.spec.prefix, self.key);
                    let etag = (!self.etag.is_empty()).then(|| self.etag.clone());
                    let r = self.wait(async move {
                        inner
                            .client
                            .get_object()
                            .bucket(&inner.spec.bucket)
                            .key(key)
                            .set_if_match(etag)
                            .send()
                            .await
                    })?;
                    r.map_err(|e| io::Error::other(format!("GET: {:?}", classify(e))))?
                        .body
                }
            };
            let timeout = self.inner.spec.read_timeout;
            let (next, body) = self.wait(async move {
                let n = tokio::time::timeout(timeout, body.next()).await;
                (n, body)
            })?;
            self.body = Some(body);
            match next {
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "S3 body stalled")),
                Ok(None) => return Ok(0),
                Ok(Some(Err(e))) => return Err(io::Error::other(one_line(&e.to_string()))),
                Ok(Some(Ok(b))) => {
                    self.chunk = b.to_vec();
                    self.pos = 0;
                }
            }
        }
    }
}
