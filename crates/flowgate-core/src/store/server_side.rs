//! Server-side copies between S3 buckets behind one endpoint, with the official
//! AWS SDK (object_store copies only inside one bucket): the bytes never pass
//! through flowgate. One CopyObject up to 5 GiB; a multipart copy
//! (UploadPartCopy, several parts at a time) above that.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};

use super::{S3Info, StoreHandle};
use crate::error::{ErrorClass, ErrorKind, StepError};

/// The largest object one CopyObject may copy.
const COPY_OBJECT_MAX: u64 = 5 << 30;

/// A client that copies between two S3 stores.
pub struct ServerSide {
    client: Client,
}

/// What a server-side copy left at the destination.
pub struct Copied {
    /// The destination's ETag, as S3 reports it.
    pub etag: Option<String>,
}

/// The copy could not start because the server does not do it; stream instead.
const UNSUPPORTED: &str = "server-side copy is not supported here";

impl ServerSide {
    /// A client for copying from `src` to `dst`, when both are S3 buckets behind
    /// the same endpoint, in the same region, reached with the same credentials
    /// (so one request may read the one and write the other).
    pub async fn between(src: &StoreHandle, dst: &StoreHandle) -> Option<ServerSide> {
        let (a, b) = (src.s3.as_ref()?, dst.s3.as_ref()?);
        if a.endpoint != b.endpoint
            || a.region != b.region
            || a.access_key_id != b.access_key_id
            || a.secret_access_key != b.secret_access_key
            || a.path_style != b.path_style
        {
            return None;
        }
        Some(ServerSide {
            client: client(b).await,
        })
    }

    /// Copy `src_key` of `src` (`size` bytes) to `dst_key` of `dst`.
    #[allow(clippy::too_many_arguments, reason = "one call site; names say it all")]
    pub async fn copy(
        &self,
        src: &S3Info,
        src_key: &str,
        dst: &S3Info,
        dst_key: &str,
        size: u64,
        part_size: u64,
        concurrency: usize,
    ) -> Result<Copied, StepError> {
        let job = Job {
            src,
            src_key,
            dst,
            dst_key,
            size,
            part_size,
            concurrency,
        };
        self.copy_up_to(&job, COPY_OBJECT_MAX).await
    }

    /// A copy in one request up to `single_max` bytes, in parts above.
    async fn copy_up_to(&self, job: &Job<'_>, single_max: u64) -> Result<Copied, StepError> {
        let Job {
            src,
            src_key,
            dst,
            dst_key,
            size,
            part_size,
            concurrency,
        } = *job;
        let source = copy_source(&src.bucket, src_key);
        if size <= single_max {
            let out = self
                .client
                .copy_object()
                .copy_source(&source)
                .bucket(&dst.bucket)
                .key(dst_key)
                .send()
                .await
                .map_err(|e| s3_error("CopyObject", e))?;
            return Ok(Copied {
                etag: out
                    .copy_object_result()
                    .and_then(|r| r.e_tag())
                    .map(str::to_string),
            });
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&dst.bucket)
            .key(dst_key)
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", e))?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| StepError::external("CreateMultipartUpload returned no upload id"))?
            .to_string();
        // S3 allows 10,000 parts of at least 5 MiB.
        let part_size = part_size.max(5 << 20).max(size.div_ceil(10_000));
        let parts = size.div_ceil(part_size);
        let copied: Result<Vec<CompletedPart>, StepError> = futures::stream::iter(0..parts)
            .map(|i| {
                let (first, last) = (i * part_size, ((i + 1) * part_size).min(size) - 1);
                let request = self
                    .client
                    .upload_part_copy()
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={first}-{last}"))
                    .bucket(&dst.bucket)
                    .key(dst_key)
                    .upload_id(&upload_id)
                    .part_number(i as i32 + 1);
                async move {
                    let out = request
                        .send()
                        .await
                        .map_err(|e| s3_error("UploadPartCopy", e))?;
                    Ok(CompletedPart::builder()
                        .part_number(i as i32 + 1)
                        .set_e_tag(
                            out.copy_part_result()
                                .and_then(|r| r.e_tag())
                                .map(str::to_string),
                        )
                        .build())
                }
            })
            .buffered(concurrency.max(1))
            .try_collect()
            .await;
        let completed = match copied {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&dst.bucket)
                .key(dst_key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| s3_error("CompleteMultipartUpload", e)),
            Err(e) => Err(e),
        };
        match completed {
            Ok(out) => Ok(Copied {
                etag: out.e_tag().map(str::to_string),
            }),
            Err(e) => {
                // Never leave a half-made upload behind (it is billed).
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&dst.bucket)
                    .key(dst_key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(e)
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Job<'a> {
    src: &'a S3Info,
    src_key: &'a str,
    dst: &'a S3Info,
    dst_key: &'a str,
    size: u64,
    part_size: u64,
    concurrency: usize,
}

pub(crate) async fn client(s3: &S3Info) -> Client {
    let conf = crate::aws::config(Some(&s3.region), s3.endpoint.as_deref()).await;
    let mut b = aws_sdk_s3::config::Builder::from(&conf).force_path_style(s3.path_style);
    if let (Some(k), Some(s)) = (&s3.access_key_id, &s3.secret_access_key) {
        b = b.credentials_provider(aws_sdk_s3::config::Credentials::new(
            k,
            s,
            None,
            None,
            "flowgate store",
        ));
    }
    Client::from_conf(b.build())
}

/// `bucket/key` with the key URL-encoded, as `x-amz-copy-source` wants it.
fn copy_source(bucket: &str, key: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!(
        "{bucket}/{}",
        percent_encoding::utf8_percent_encode(key, KEEP)
    )
}

fn s3_error<E: std::error::Error + ProvideErrorMetadata + 'static>(
    what: &str,
    e: SdkError<E>,
) -> StepError {
    let code = e.code().map(str::to_string);
    let status = e.raw_response().map(|r| r.status().as_u16());
    let class = match (code.as_deref(), status) {
        (Some("NotImplemented"), _) | (_, Some(501)) => {
            return StepError::new(ErrorClass::USER, format!("{UNSUPPORTED}: {what}"))
                .with_kind(ErrorKind::Unsupported);
        }
        (Some("NoSuchKey"), _) => {
            return StepError::external(format!("{what}: the source object no longer exists"))
                .with_kind(ErrorKind::SourceVanished);
        }
        (Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"), _) => {
            ErrorClass::EXTERNAL_FATAL
        }
        (_, Some(s)) if (400..500).contains(&s) && s != 408 && s != 429 => ErrorClass::USER,
        _ => ErrorClass::EXTERNAL_RETRIABLE,
    };
    StepError::new(
        class,
        format!("server-side {what}: {}", crate::error::chain(&e)),
    )
}

/// Objects of an S3 store under `prefix` (a full key prefix in the bucket),
/// listed with the SDK so that keys object_store cannot name (a `..` or empty
/// segment, a control character) are seen too: (nameable objects, other keys
/// with their sizes).
pub async fn list_raw(
    s3: &S3Info,
    prefix: &str,
) -> Result<(Vec<object_store::ObjectMeta>, Vec<(String, u64)>), StepError> {
    let client = client(s3).await;
    let mut pages = client
        .list_objects_v2()
        .bucket(&s3.bucket)
        .prefix(prefix)
        // Keys come URL-encoded: one with a control character cannot travel in
        // XML as it is.
        .encoding_type(aws_sdk_s3::types::EncodingType::Url)
        .into_paginator()
        .send();
    let (mut named, mut unnamed) = (Vec::new(), Vec::new());
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| s3_error("listing", e))?;
        for o in page.contents() {
            let Some(key) = o.key().map(url_decoded) else {
                continue;
            };
            let key = key.as_str();
            let size = o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
            match object_store::path::Path::parse(key) {
                Ok(location) => named.push(object_store::ObjectMeta {
                    location,
                    last_modified: o
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                        .unwrap_or_default(),
                    size,
                    e_tag: o.e_tag().map(str::to_string),
                    version: None,
                }),
                Err(_) => unnamed.push((key.to_string(), size)),
            }
        }
    }
    Ok((named, unnamed))
}

/// The bytes of an object by its raw key (one object_store cannot name).
pub async fn get_raw(
    s3: &S3Info,
    key: &str,
) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, StepError>>, StepError> {
    let got = client(s3)
        .await
        .get_object()
        .bucket(&s3.bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| s3_error("reading", e))?;
    Ok(
        futures::stream::try_unfold(got.body, |mut body| async move {
            let chunk = body.try_next().await.map_err(|e| {
                StepError::external(format!("reading: {}", crate::error::chain(&e)))
            })?;
            Ok(chunk.map(|c| (c, body)))
        })
        .boxed(),
    )
}

/// A key S3 sent URL-encoded (`+` is a space).
fn url_decoded(key: &str) -> String {
    url::form_urlencoded::parse(format!("k={key}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fresh_s3_bucket, service_var};

    fn info(bucket: &str) -> S3Info {
        S3Info {
            bucket: bucket.to_string(),
            endpoint: Some(service_var("FLOWGATE_TEST_S3_ENDPOINT")),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: Some(service_var("FLOWGATE_TEST_S3_ACCESS_KEY")),
            secret_access_key: Some(service_var("FLOWGATE_TEST_S3_SECRET_KEY")),
        }
    }

    /// On the real S3 server: a copy in one request and one in parts (ranges
    /// copied three at a time, the last part short) are both byte-identical.
    #[tokio::test]
    async fn copies_in_one_request_and_in_parts_are_byte_identical() {
        let ((a, _), (b, _)) = (fresh_s3_bucket(), fresh_s3_bucket());
        let root = std::path::PathBuf::from(service_var("FLOWGATE_TEST_S3_ROOT"));
        let data: Vec<u8> = (0..(13u32 << 20) + 777)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let key = "in dir/x+y.bin";
        std::fs::create_dir_all(root.join(&a).join("in dir")).unwrap();
        std::fs::write(root.join(&a).join(key), &data).unwrap();
        let (from, to) = (info(&a), info(&b));
        let ss = ServerSide {
            client: client(&to).await,
        };
        let job = Job {
            src: &from,
            src_key: key,
            dst: &to,
            dst_key: "single/x.bin",
            size: data.len() as u64,
            part_size: 5 << 20,
            concurrency: 3,
        };
        ss.copy_up_to(&job, COPY_OBJECT_MAX).await.unwrap();
        let parts = Job {
            dst_key: "parts/x.bin",
            ..job
        };
        let copied = ss.copy_up_to(&parts, 1 << 20).await.unwrap();
        assert!(
            copied.etag.as_deref().is_some_and(|t| t.contains("-3")),
            "a three-part upload: {:?}",
            copied.etag
        );
        for k in ["single/x.bin", "parts/x.bin"] {
            let got = std::fs::read(root.join(&b).join(k)).unwrap();
            assert!(
                got == data,
                "{k}: {} bytes, differs from the source",
                got.len()
            );
        }
    }

    #[test]
    fn copy_sources_encode_the_key_but_not_its_slashes() {
        assert_eq!(
            super::copy_source("b", "a dir/x+y%z.bin"),
            "b/a%20dir/x%2By%25z.bin"
        );
    }
}
