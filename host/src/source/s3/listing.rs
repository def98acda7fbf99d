//! Listing the bucket: ListObjectsV2 under `PREFIX/images/`, URL-encoded and
//! paginated, each key decoded and handed on as a [`Listed`] object.

use aws_sdk_s3::types::EncodingType;

use super::fail::{classify, Fail};
use super::{run_on, Listing, S3Source, SourceError};
use crate::core::names::{printable, Listed, Rejected, IMAGES_PREFIX};

const MAX_OBJECTS: usize = 1_000_000;

/// Decodes `%XX` escapes (ListObjectsV2 with `encoding-type=url`).
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else if b[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

impl S3Source {
    /// Every object under `PREFIX/images/`, from every ListObjectsV2 page.
    pub(super) fn list_objects(&self) -> Result<Listing, SourceError> {
        let mut objects = Vec::new();
        let mut rejected = Vec::new();
        let mut token: Option<String> = None;
        let list_prefix = format!("{}{IMAGES_PREFIX}", self.inner.spec.prefix);
        loop {
            let inner = self.inner.clone();
            let (p, t) = (list_prefix.clone(), token.take());
            let page = run_on(self.rt().handle(), async move {
                inner
                    .client
                    .list_objects_v2()
                    .bucket(&inner.spec.bucket)
                    .prefix(p)
                    .encoding_type(EncodingType::Url)
                    .set_continuation_token(t)
                    .send()
                    .await
            })?
            .map_err(|e| match classify(e) {
                Fail::NotFound => SourceError::Denied(format!(
                    "S3 bucket `{}` does not exist",
                    printable(&self.inner.spec.bucket)
                )),
                Fail::Denied(m) => SourceError::Denied(format!(
                    "S3 refused listing `s3://{}/{}`: {m}",
                    printable(&self.inner.spec.bucket),
                    printable(&list_prefix)
                )),
                Fail::Changed => SourceError::Io("listing: precondition failed".into()),
                Fail::Retry(m) => SourceError::Io(format!("listing the bucket: {m}")),
            })?;
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            for o in page.contents() {
                let Some(raw) = o.key() else { continue };
                let key = if encoded {
                    match percent_decode(raw).map(String::from_utf8) {
                        Some(Ok(k)) => k,
                        _ => {
                            rejected.push(Rejected {
                                key: printable(raw),
                                reason: "key is not UTF-8".into(),
                            });
                            continue;
                        }
                    }
                } else {
                    raw.to_string()
                };
                let Some(rel) = key.strip_prefix(&self.inner.spec.prefix) else {
                    continue;
                };
                objects.push(Listed {
                    key: rel.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    stamp: o.e_tag().unwrap_or_default().to_string(),
                    modified: o.last_modified().map(|t| t.to_string()).unwrap_or_default(),
                });
                if objects.len() > MAX_OBJECTS {
                    return Err(SourceError::Io(format!(
                        "more than {MAX_OBJECTS} objects under images/"
                    )));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) && !t.is_empty() => {
                    token = Some(t.to_string())
                }
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing { objects, rejected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb%01+c").unwrap(), b"a/b\x01 c");
        assert!(percent_decode("a%zz").is_none());
        assert!(percent_decode("a%2").is_none());
    }
}
