//! The decompression limit: a reader over a decompressed stream (a layer,
//! or a whole image archive) that stops, with an [`OverLimit`], once the
//! stream has expanded more than the policy lets its compressed size.

use std::io::{self, Read};

/// A decompressed stream cut off by a policy rule: the input is denied,
/// not corrupt. It travels inside the `io::Error` that [`Capped`] returns
/// (kind `Other`, so that no mapping takes it for a decoder's verdict);
/// [`over_limit`] finds it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    /// The policy rule: `max-compression-ratio` or `max-image-bytes`.
    pub rule: &'static str,
    /// The bytes that counted against the limit when it was crossed.
    pub counted: u64,
    pub limit: u64,
    /// The compressed size the limit was worked out from.
    pub compressed: u64,
}

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let OverLimit {
            rule,
            counted,
            limit,
            compressed,
        } = self;
        if *rule == "max-compression-ratio" {
            write!(
                f,
                "decompressed data is over the policy's ratio limit (rule {rule}: {counted} bytes from {compressed} compressed, at most {limit}; all-zero 512-byte blocks count only past max-layer-bytes)"
            )
        } else {
            write!(
                f,
                "decompressed data is over the policy's size limit (rule {rule}: {counted} bytes from {compressed} compressed, at most {limit})"
            )
        }
    }
}

impl std::error::Error for OverLimit {}

/// The policy limit a decompressing read stopped at, if that is why it
/// failed.
pub fn over_limit(e: &io::Error) -> Option<&OverLimit> {
    e.get_ref()?.downcast_ref::<OverLimit>()
}

/// Tar's block: file data, headers and padding start on its boundaries.
const TAR_BLOCK: usize = 512;

/// Reads a decompressed stream, failing with an [`OverLimit`] once it has
/// expanded more than the policy lets its compressed size.
///
/// What bombs do is make the host handle far more bytes than it was sent.
/// The ratio rule counts the decompressed stream by 512-byte tar block: a
/// block with any non-zero byte counts whole, an all-zero block does not,
/// up to `zeros_free` of them (the policy's `max-layer-bytes`); beyond that
/// zero blocks count too. A preallocated database or disk image (GiBs of
/// zeros, which zstd packs far beyond 1000:1) thus passes, while
/// compressible non-zero data (a repeated pattern) still trips the rule.
/// Zero bytes stay bounded: as file data by the tar check's
/// `max-layer-bytes`, and anywhere else (padding, the zeros after the end
/// of the archive) by `zeros_free`.
pub struct Capped<R> {
    inner: R,
    /// Bytes that count toward the ratio still allowed.
    left: u64,
    /// All-zero bytes still not counted.
    zeros_free: u64,
    /// Bytes of any kind still allowed (an absolute cap, under `total_rule`).
    total_left: u64,
    total_rule: &'static str,
    /// For the error: the limits and the compressed size.
    ratio_limit: u64,
    total_limit: u64,
    compressed: u64,
    counted: u64,
    total: u64,
    /// Offset in the current block, and whether it has counted already.
    in_block: usize,
    block_counted: bool,
}

impl<R> Capped<R> {
    /// `ratio_limit` bytes may count (zero blocks aside, up to `zeros_free`
    /// bytes of them) and `total` bytes may be read in all.
    pub fn new(
        inner: R,
        compressed: u64,
        ratio_limit: u64,
        zeros_free: u64,
        total: (u64, &'static str),
    ) -> Self {
        Capped {
            inner,
            left: ratio_limit,
            zeros_free,
            total_left: total.0,
            total_rule: total.1,
            ratio_limit,
            total_limit: total.0,
            compressed,
            counted: 0,
            total: 0,
            in_block: 0,
            block_counted: false,
        }
    }

    fn over(&self, rule: &'static str, counted: u64, limit: u64) -> io::Error {
        io::Error::other(OverLimit {
            rule,
            counted,
            limit,
            compressed: self.compressed,
        })
    }

    /// Counts `n` bytes toward the ratio.
    fn charge(&mut self, n: u64) -> io::Result<()> {
        self.counted = self.counted.saturating_add(n);
        if n > self.left {
            return Err(self.over("max-compression-ratio", self.counted, self.ratio_limit));
        }
        self.left -= n;
        Ok(())
    }

    /// Accounts for `data`, the next bytes of the stream.
    fn account(&mut self, mut data: &[u8]) -> io::Result<()> {
        let n = data.len() as u64;
        self.total = self.total.saturating_add(n);
        if n > self.total_left {
            return Err(self.over(self.total_rule, self.total, self.total_limit));
        }
        self.total_left -= n;
        while !data.is_empty() {
            let take = (TAR_BLOCK - self.in_block).min(data.len());
            let (seg, rest) = data.split_at(take);
            if !self.block_counted && !all_zero(seg) {
                self.block_counted = true;
                self.charge(TAR_BLOCK as u64)?;
            }
            self.in_block += take;
            if self.in_block == TAR_BLOCK {
                if !self.block_counted {
                    // An all-zero block: free while the allowance lasts.
                    let free = self.zeros_free.min(TAR_BLOCK as u64);
                    self.zeros_free -= free;
                    self.charge(TAR_BLOCK as u64 - free)?;
                }
                self.in_block = 0;
                self.block_counted = false;
            }
            data = rest;
        }
        Ok(())
    }
}

/// Whether `s` holds only zero bytes (branch-free, so it vectorises).
fn all_zero(s: &[u8]) -> bool {
    s.iter().fold(0u8, |acc, b| acc | b) == 0
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.account(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `input` through a [`Capped`] (ratio limit `limit`, `zeros`
    /// zero bytes free, 1000 compressed bytes) in reads of odd sizes, so
    /// that blocks straddle them: `Ok(n)` wants `n` bytes read, `Err(c)`
    /// an [`OverLimit`] with `c` bytes counted.
    fn check(input: &[u8], limit: u64, zeros: u64, expected: Result<usize, u64>) {
        let mut c = Capped::new(input, 1000, limit, zeros, (u64::MAX, "max-image-bytes"));
        let mut buf = [0u8; 700];
        let mut got = 0;
        let res = loop {
            match c.read(&mut buf[..(got % 7) + 300]) {
                Ok(0) => break Ok(got),
                Ok(n) => got += n,
                Err(e) => {
                    let o = over_limit(&e).expect("an OverLimit");
                    assert_eq!(o.rule, "max-compression-ratio");
                    assert_eq!(o.compressed, 1000);
                    assert!(o.counted > limit, "{o:?}");
                    assert!(
                        o.to_string()
                            .starts_with("decompressed data is over the policy's ratio limit"),
                        "{o}"
                    );
                    assert!(!o.to_string().contains("corrupt"));
                    assert_eq!(e.kind(), io::ErrorKind::Other);
                    break Err(o.counted);
                }
            }
        };
        assert_eq!(res, expected, "{} bytes", input.len());
    }

    fn pattern(len: usize) -> Vec<u8> {
        b"abcdefgh".iter().copied().cycle().take(len).collect()
    }

    #[test]
    fn counting_by_tar_block() {
        const MB: usize = 1 << 20;
        let zeros = vec![0u8; 8 * MB];
        // Zeros only: nothing counts while the allowance lasts...
        check(&zeros, 512, u64::MAX, Ok(8 * MB));
        check(&[0u8; 100], 0, 0, Ok(100));
        // ...and beyond it every zero block counts.
        check(&zeros, 4 * MB as u64, 4 * MB as u64, Ok(8 * MB));
        check(&zeros, 4 * MB as u64 - 1, 4 * MB as u64, Err(4 * MB as u64));
        // A repeating pattern counts byte for byte (by whole block).
        check(&pattern(8 * MB), 8 * MB as u64, u64::MAX, Ok(8 * MB));
        check(&pattern(8 * MB), MB as u64, u64::MAX, Err(MB as u64 + 512));
        check(&pattern(1), 512, 0, Ok(1));
        check(&pattern(1), 511, 0, Err(512));
        // One non-zero byte makes its block count whole, wherever it is.
        let mut one = vec![0u8; 2048];
        one[1023] = 1;
        check(&one, 512, u64::MAX, Ok(2048));
        check(&one, 511, u64::MAX, Err(512));
        // Mixed, as a tar of a preallocated file: a header block, 8 MiB
        // of zeros, a block of text, then the end-of-archive zeros.
        let mut tar = pattern(512);
        tar.extend_from_slice(&zeros);
        tar.extend(pattern(100));
        tar.extend(vec![0u8; 412 + 1024]);
        check(&tar, 1024, u64::MAX, Ok(tar.len()));
        check(&tar, 1023, u64::MAX, Err(1024));
        // Zeros beyond the allowance (here the two end-of-archive blocks)
        // count with the non-zero blocks.
        check(&tar, 2048, 8 * MB as u64, Ok(tar.len()));
        check(&tar, 2047, 8 * MB as u64, Err(2048));
    }

    #[test]
    fn absolute_cap() {
        let mut c = Capped::new(&[0u8; 4096][..], 7, 0, u64::MAX, (4000, "max-image-bytes"));
        let e = io::copy(&mut c, &mut io::sink()).unwrap_err();
        let o = over_limit(&e).unwrap();
        assert_eq!(
            (o.rule, o.limit, o.compressed),
            ("max-image-bytes", 4000, 7)
        );
        assert!(
            o.to_string().contains("size limit (rule max-image-bytes"),
            "{o}"
        );
        // Other errors are not limits.
        assert!(over_limit(&io::Error::new(io::ErrorKind::InvalidData, "x")).is_none());
        assert!(over_limit(&io::Error::other("x")).is_none());
    }
}
