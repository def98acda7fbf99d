//! The S3 source's spec: `s3://BUCKET[/PREFIX][?OPTIONS]` parsed and checked
//! (bucket name, prefix, part size, concurrency, read timeout).

use std::time::Duration;

use crate::core::names::printable;

const DEFAULT_PART_SIZE: u64 = 16 << 20;
const MIN_PART_SIZE: u64 = 64 << 10;
const DEFAULT_CONCURRENCY: usize = 8;
const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub bucket: String,
    /// Empty or ending with `/`.
    pub prefix: String,
    pub anonymous: bool,
    pub part_size: u64,
    pub concurrency: usize,
    pub read_timeout: Duration,
}

/// Parses `s3://BUCKET[/PREFIX][?OPTIONS]`.
pub fn parse_spec(spec: &str) -> Result<Spec, String> {
    let rest = spec
        .strip_prefix("s3://")
        .ok_or_else(|| "an S3 source is s3://BUCKET[/PREFIX]".to_string())?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if !(3..=63).contains(&bucket.len())
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "invalid S3 bucket name `{}` in the source",
            printable(bucket)
        ));
    }
    if prefix.chars().any(|c| c.is_control()) || prefix.len() > 512 {
        return Err("invalid S3 prefix in the source".into());
    }
    let mut prefix = prefix.to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let mut s = Spec {
        bucket: bucket.to_string(),
        prefix,
        anonymous: false,
        part_size: DEFAULT_PART_SIZE,
        concurrency: DEFAULT_CONCURRENCY,
        read_timeout: Duration::from_millis(DEFAULT_READ_TIMEOUT_MS),
    };
    for opt in query.split('&').filter(|o| !o.is_empty()) {
        let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
        let num = |min: u64, max: u64| -> Result<u64, String> {
            v.parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("S3 source option `{k}` wants a number in {min}..={max}"))
        };
        match k {
            "no-sign-request" | "anonymous" => {
                s.anonymous = matches!(v, "" | "true" | "1" | "yes")
            }
            "part-size" => s.part_size = num(MIN_PART_SIZE, 5 << 30)?,
            "concurrency" => s.concurrency = num(1, 64)? as usize,
            "read-timeout-ms" => s.read_timeout = Duration::from_millis(num(100, 3_600_000)?),
            _ => {
                return Err(format!(
                    "unknown S3 source option `{}` (known: no-sign-request, part-size, concurrency, read-timeout-ms)",
                    printable(k)
                ))
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = parse_spec("s3://my-bucket/some/prefix?part-size=1048576&concurrency=4").unwrap();
        assert_eq!(s.bucket, "my-bucket");
        assert_eq!(s.prefix, "some/prefix/");
        assert_eq!(s.part_size, 1 << 20);
        assert_eq!(s.concurrency, 4);
        assert!(!s.anonymous);
        let s = parse_spec("s3://my-bucket?no-sign-request").unwrap();
        assert_eq!(s.prefix, "");
        assert!(s.anonymous);
        assert!(parse_spec("s3://b/x").is_err(), "bucket too short");
        assert!(parse_spec("s3://bu/cket/x").is_err());
        assert!(parse_spec("s3://bucket/x?bogus=1").is_err());
        assert!(parse_spec("s3://bucket/x?part-size=1").is_err());
        assert!(parse_spec("s3://bucket/a\nb").is_err());
    }
}
