//! The S3 source: `s3://BUCKET[/PREFIX][?OPTIONS]`.
//!
//! The client is `aws-sdk-s3` with `aws-config`'s standard credential chain
//! and region resolution; an endpoint override (`AWS_ENDPOINT_URL`, the
//! config file's `endpoint_url`) switches to path-style addressing. Options:
//! `no-sign-request` (anonymous, for public buckets), `part-size=BYTES`
//! (ranged GETs, default 16 MiB), `concurrency=N` (parts in flight per object,
//! default 8), `read-timeout-ms=MS` (a body that sends nothing for that long is
//! retried, default 30000).
//!
//! Keys are listed with ListObjectsV2 (URL-encoded, every page) and handed to
//! `core::names`, which decides what an image is; a key never becomes a local
//! path. A download writes the object's parts (each a GET conditional on the
//! listed ETag) into a partial file under `downloads/`, fsyncs each finished
//! part and records it, so an interrupted download resumes with the parts
//! already on disk; the whole file is then hashed, checked against the
//! listed size and renamed into the content-addressed store.
//!
//! The source keeps its own runtime and waits for its tasks over a channel
//! (`source::run_on`, never `block_on`).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;

use super::{run_on, Listing, Source, SourceError};
use crate::blobs::BlobStore;
use crate::core::names::{printable, Listed, UnitObject};

mod body;
mod download;
mod fail;
mod listing;
mod spec;

use body::LazyBody;
use fail::{classify, one_line, Fail};
pub use spec::{parse_spec, Spec};

struct Inner {
    client: Client,
    spec: Spec,
    uri: String,
}

pub struct S3Source {
    inner: Arc<Inner>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for S3Source {
    fn drop(&mut self) {
        // Never blocks, so it is allowed inside another runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn io_err(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Io(format!("{what}: {}", one_line(&e.to_string())))
}

impl S3Source {
    pub fn new(spec_text: &str) -> Result<S3Source, SourceError> {
        let spec = parse_spec(spec_text).map_err(SourceError::Config)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.concurrency.clamp(2, 8))
            .thread_name("tarpool-s3")
            .enable_all()
            .build()
            .map_err(|e| SourceError::Config(format!("starting the S3 client: {e}")))?;
        let anonymous = spec.anonymous;
        let (client, endpoint) = run_on(rt.handle(), async move {
            use aws_smithy_http_client::tls;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https();
            let mut loader =
                aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
            if anonymous {
                loader = loader.no_credentials();
            }
            let conf = loader.load().await;
            let endpoint = conf.endpoint_url().map(str::to_string);
            let mut b = aws_sdk_s3::config::Builder::from(&conf)
                .retry_config(
                    aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(5),
                )
                .timeout_config(
                    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .build(),
                );
            // Checksums are asked for (and then checked) on whole-object
            // GETs only: a part of an object has no checksum of its own.
            b = b.response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
            if endpoint.is_some() {
                b = b.force_path_style(true);
            }
            if conf.region().is_none() {
                b = b.region(aws_sdk_s3::config::Region::new("us-east-1"));
            }
            (Client::from_conf(b.build()), endpoint)
        })?;
        let mut uri = format!("s3://{}/{}", spec.bucket, spec.prefix);
        if let Some(e) = endpoint {
            uri.push_str(&format!("?endpoint={e}"));
        }
        Ok(S3Source {
            inner: Arc::new(Inner { client, spec, uri }),
            rt: Some(rt),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the S3 runtime lives as long as the source")
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.spec.prefix)
    }

    /// `s3://bucket/key`, for messages.
    fn show(&self, key: &str) -> String {
        printable(&format!(
            "s3://{}/{}",
            self.inner.spec.bucket,
            self.full_key(key)
        ))
    }

    fn map_fail(&self, what: &str, key: &str, f: Fail) -> SourceError {
        match f {
            Fail::NotFound => SourceError::NotFound(key.to_string()),
            Fail::Denied(m) => {
                SourceError::Denied(format!("S3 refused {what} `{}`: {m}", self.show(key)))
            }
            Fail::Changed => SourceError::Changed(format!(
                "`{}` changed during the download; starting over",
                printable(key)
            )),
            Fail::Retry(m) => SourceError::Io(format!("{what} `{}`: {m}", printable(key))),
        }
    }

    fn head(&self, key: &str) -> Result<Listed, SourceError> {
        let inner = self.inner.clone();
        let full = self.full_key(key);
        let r = run_on(self.rt().handle(), async move {
            inner
                .client
                .head_object()
                .bucket(&inner.spec.bucket)
                .key(full)
                .send()
                .await
        })?;
        let out = r.map_err(|e| self.map_fail("HEAD", key, classify(e)))?;
        Ok(Listed {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            stamp: out.e_tag().unwrap_or_default().to_string(),
            modified: out
                .last_modified()
                .map(|t| t.to_string())
                .unwrap_or_default(),
        })
    }
}

impl Source for S3Source {
    fn uri(&self) -> String {
        self.inner.uri.clone()
    }
    fn list(&self) -> Result<Listing, SourceError> {
        self.list_objects()
    }

    fn open(&self, key: &str) -> Result<(Box<dyn Read + Send>, Listed), SourceError> {
        let l = self.head(key)?;
        let reader = LazyBody::new(
            self.inner.clone(),
            self.rt().handle().clone(),
            key.to_string(),
            l.stamp.clone(),
        );
        Ok((Box::new(reader), l))
    }

    fn fetch(&self, obj: &UnitObject, blobs: &BlobStore) -> Result<(String, u64), SourceError> {
        self.download(obj, blobs)
    }
}
