//! A target in an S3 bucket, under a key prefix, through `aws-sdk-s3`.
//!
//! Credentials, region and endpoint come from the standard AWS settings (environment, shared
//! config and credentials files, profiles). With `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`)
//! set, requests go to that S3-compatible server with path-style addressing. Without any region
//! setting `us-east-1` is used, which S3-compatible servers accept.
//!
//! The target owns a single-threaded tokio runtime and offers the blocking [`Target`] interface:
//! each call drives the runtime until its request completes. `get` streams the object body chunk
//! by chunk, so memory does not grow with object size; files larger than the multipart threshold
//! are uploaded in parts read from the file one at a time.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use super::{check_key, ObjectInfo, PutOutcome, Target, TargetError};

/// User metadata (`x-amz-meta-walstream-blake3`) holding the BLAKE3 of an object's content, so
/// that a conditional upload that finds the key taken can tell its own earlier upload from
/// another writer's object without downloading it.
pub const HASH_METADATA: &str = "walstream-blake3";

/// Files at least this large are uploaded with multipart upload (`WALSTREAM_S3_MULTIPART_BYTES`).
pub const MULTIPART_THRESHOLD_DEFAULT: u64 = 16 << 20;
/// S3's smallest part (except the last).
const PART_BYTES_MIN: u64 = 5 << 20;

pub struct S3Target {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client,
    bucket: String,
    /// The key prefix without a trailing slash ("" for the bucket's root).
    prefix: String,
    endpoint: Option<String>,
    multipart_threshold: u64,
    part_bytes: u64,
}

/// How an S3 request failed, for mapping to `TargetError`.
struct Failure {
    status: Option<u16>,
    code: Option<String>,
    message: String,
}

impl Failure {
    fn of<E>(e: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().map(str::to_string);
        let message = match e {
            SdkError::DispatchFailure(_) => {
                format!("cannot reach the S3 endpoint: {}", DisplayErrorContext(e))
            }
            SdkError::TimeoutError(_) => {
                format!("the S3 request timed out: {}", DisplayErrorContext(e))
            }
            SdkError::ServiceError(_) => match (e.code(), e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => match status {
                    Some(s) => format!("HTTP status {s}"),
                    None => DisplayErrorContext(e).to_string(),
                },
            },
            _ => DisplayErrorContext(e).to_string(),
        };
        Failure {
            status,
            code,
            message,
        }
    }

    fn is(&self, code: &str, status: u16) -> bool {
        self.code.as_deref() == Some(code) || self.status == Some(status)
    }
}

impl S3Target {
    /// Every object under the prefix, or those whose keys sort after `start_after` (S3's
    /// `StartAfter`: the listing starts there).
    fn list_from(&self, start_after: Option<&str>) -> Result<Vec<ObjectInfo>, TargetError> {
        let list_prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let start_after = start_after.map(|k| format!("{list_prefix}{k}"));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.rt.block_on(
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&list_prefix)
                    .set_start_after(start_after.clone())
                    .set_continuation_token(token.take())
                    .send(),
            );
            let page = page.map_err(|e| self.fail("", Failure::of(&e)))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&list_prefix)) else {
                    continue;
                };
                if key.is_empty() || check_key("", key).is_err() {
                    continue;
                }
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// An object from byte `offset` on (a ranged GET past its start; an empty reader when the
    /// object is not longer than `offset`).
    fn get_range(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>, TargetError> {
        let full = self.full_key(key)?;
        let mut req = self.client.get_object().bucket(&self.bucket).key(&full);
        if offset > 0 {
            req = req.range(format!("bytes={offset}-"));
        }
        let resp = self.rt.block_on(req.send());
        match resp {
            // A server that ignored the range would send the object from its start, which a
            // reader would take for what follows `offset`.
            Ok(r)
                if offset > 0
                    && !r
                        .content_range()
                        .is_some_and(|c| c.starts_with(&format!("bytes {offset}-"))) =>
            {
                Err(TargetError::Remote {
                    target: self.describe(),
                    key: key.to_string(),
                    message: format!(
                        "asked for bytes {offset}- and got {}",
                        r.content_range().unwrap_or("the whole object")
                    ),
                })
            }
            Ok(r) => Ok(Box::new(io::BufReader::with_capacity(
                1 << 16,
                BodyReader {
                    rt: self.rt.clone(),
                    body: r.body,
                    chunk: Default::default(),
                },
            ))),
            Err(e) => {
                let f = Failure::of(&e);
                if offset > 0 && f.is("InvalidRange", 416) {
                    return Ok(Box::new(io::empty()));
                }
                if f.is("NoSuchKey", 404) && !f.is("NoSuchBucket", 0) {
                    Err(self.not_found(key))
                } else {
                    Err(self.fail(key, f))
                }
            }
        }
    }

    /// Connects to `bucket` under `prefix` with the standard AWS configuration. Makes no request:
    /// an unreachable endpoint or bad credentials show at the first operation.
    pub fn open(bucket: &str, prefix: &str) -> Result<Self, TargetError> {
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        Self::open_at(bucket, prefix, endpoint)
    }

    /// As `open`, with an explicit endpoint (path-style) instead of the environment's.
    pub fn open_at(
        bucket: &str,
        prefix: &str,
        endpoint: Option<String>,
    ) -> Result<Self, TargetError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TargetError::Io {
                target: format!("s3://{bucket}/{prefix}"),
                key: String::new(),
                source: e,
            })?;
        let sdk = rt.block_on(async {
            let region = aws_config::meta::region::RegionProviderChain::default_provider()
                .or_else("us-east-1");
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(region)
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(3))
                        .read_timeout(Duration::from_secs(30))
                        .build(),
                )
                .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
                .load()
                .await
        });
        let mut config = aws_sdk_s3::config::Builder::from(&sdk);
        if let Some(e) = &endpoint {
            config = config.endpoint_url(e).force_path_style(true);
        }
        let client = Client::from_conf(config.build());
        let multipart_threshold = std::env::var("WALSTREAM_S3_MULTIPART_BYTES")
            .ok()
            .and_then(|s| crate::ship::parse_bytes(&s))
            .unwrap_or(MULTIPART_THRESHOLD_DEFAULT)
            .max(PART_BYTES_MIN);
        Ok(Self {
            rt: Arc::new(rt),
            client,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
            multipart_threshold,
            part_bytes: (multipart_threshold / 2).max(PART_BYTES_MIN),
        })
    }

    fn full_key(&self, key: &str) -> Result<String, TargetError> {
        check_key(&self.describe(), key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    fn fail(&self, key: &str, f: Failure) -> TargetError {
        if f.is("NoSuchBucket", 0) {
            return TargetError::Missing(format!(
                "{} (bucket {:?} does not exist)",
                self.describe(),
                self.bucket
            ));
        }
        TargetError::Remote {
            target: self.describe(),
            key: key.to_string(),
            message: f.message,
        }
    }

    fn not_found(&self, key: &str) -> TargetError {
        TargetError::NotFound {
            target: self.describe(),
            key: key.to_string(),
        }
    }

    /// Uploads a file, in one request or in parts; `if_absent` makes it conditional.
    fn upload(&self, key: &str, path: &Path, if_absent: bool) -> Result<PutOutcome, TargetError> {
        let full = self.full_key(key)?;
        let io_err = |source| TargetError::Io {
            target: self.describe(),
            key: key.to_string(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io_err)?.len();
        let hash = crate::ship::file_hash(path).map_err(io_err)?;
        if size >= self.multipart_threshold {
            return self.upload_multipart(key, &full, path, size, &hash, if_absent);
        }
        let result = self.rt.block_on(async {
            let body = ByteStream::read_from()
                .path(path)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .content_length(size as i64)
                .metadata(HASH_METADATA, &hash)
                .body(body);
            if if_absent {
                req = req.if_none_match("*");
            }
            req.send().await.map(|_| ()).map_err(|e| {
                let f = Failure::of(&e);
                if f.is("PreconditionFailed", 412) {
                    String::new()
                } else {
                    f.message
                }
            })
        });
        self.put_result(key, result)
    }

    fn put_result(&self, key: &str, result: Result<(), String>) -> Result<PutOutcome, TargetError> {
        match result {
            Ok(()) => Ok(PutOutcome::Created),
            Err(m) if m.is_empty() => Ok(PutOutcome::Exists),
            Err(m) if m.starts_with("NoSuchBucket") => Err(TargetError::Missing(format!(
                "{} (bucket {:?} does not exist)",
                self.describe(),
                self.bucket
            ))),
            Err(message) => Err(TargetError::Remote {
                target: self.describe(),
                key: key.to_string(),
                message,
            }),
        }
    }

    fn upload_multipart(
        &self,
        key: &str,
        full: &str,
        path: &Path,
        size: u64,
        hash: &str,
        if_absent: bool,
    ) -> Result<PutOutcome, TargetError> {
        let result: Result<(), String> = self.rt.block_on(async {
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .metadata(HASH_METADATA, hash)
                .send()
                .await
                .map_err(|e| Failure::of(&e).message)?;
            let upload_id = created
                .upload_id()
                .ok_or("the server returned no upload id")?
                .to_string();
            let parts = async {
                let mut parts = Vec::new();
                let mut offset = 0u64;
                let mut number = 1i32;
                while offset < size {
                    let len = self.part_bytes.min(size - offset);
                    let body = ByteStream::read_from()
                        .path(path)
                        .offset(offset)
                        .length(Length::Exact(len))
                        .build()
                        .await
                        .map_err(|e| e.to_string())?;
                    let part = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .content_length(len as i64)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| Failure::of(&e).message)?;
                    parts.push(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(part.e_tag().map(str::to_string))
                            .build(),
                    );
                    offset += len;
                    number += 1;
                }
                let mut req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    );
                if if_absent {
                    req = req.if_none_match("*");
                }
                req.send().await.map(|_| ()).map_err(|e| {
                    let f = Failure::of(&e);
                    if f.is("PreconditionFailed", 412) {
                        String::new()
                    } else {
                        f.message
                    }
                })
            }
            .await;
            if parts.is_err() {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .send()
                    .await;
            }
            parts
        });
        self.put_result(key, result)
    }

    /// The BLAKE3 recorded in an object's metadata at upload (`None` if the object has none).
    fn recorded_hash(&self, key: &str) -> Result<Option<String>, TargetError> {
        let full = self.full_key(key)?;
        let head = self.rt.block_on(
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send(),
        );
        match head {
            Ok(h) => Ok(h.metadata().and_then(|m| m.get(HASH_METADATA)).cloned()),
            Err(e) => {
                let f = Failure::of(&e);
                if f.is("NotFound", 404) && !f.is("NoSuchBucket", 0) {
                    Err(self.not_found(key))
                } else {
                    Err(self.fail(key, f))
                }
            }
        }
    }
}

/// Streams an object body: one chunk in memory at a time.
struct BodyReader {
    rt: Arc<tokio::runtime::Runtime>,
    body: ByteStream,
    chunk: bytes_shim::Chunk,
}

mod bytes_shim {
    /// The current chunk of a body and how much of it was consumed.
    #[derive(Default)]
    pub struct Chunk {
        pub data: Vec<u8>,
        pub at: usize,
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.at >= self.chunk.data.len() {
            match self.rt.block_on(self.body.try_next()) {
                Ok(Some(bytes)) => {
                    self.chunk.data.clear();
                    self.chunk.data.extend_from_slice(&bytes);
                    self.chunk.at = 0;
                }
                Ok(None) => return Ok(0),
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "reading from S3: {}",
                        DisplayErrorContext(&e)
                    )))
                }
            }
        }
        let n = out.len().min(self.chunk.data.len() - self.chunk.at);
        out[..n].copy_from_slice(&self.chunk.data[self.chunk.at..self.chunk.at + n]);
        self.chunk.at += n;
        Ok(n)
    }
}

impl Target for S3Target {
    fn describe(&self) -> String {
        let base = format!("s3://{}/{}", self.bucket, self.prefix);
        match &self.endpoint {
            Some(e) => format!("{base} (endpoint {e})"),
            None => base,
        }
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, TargetError> {
        self.list_from(None)
    }

    fn list_after(&self, start_after: &str) -> Result<Vec<ObjectInfo>, TargetError> {
        self.list_from(Some(start_after))
    }

    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, TargetError> {
        self.get_range(key, 0)
    }

    fn get_from(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>, TargetError> {
        self.get_range(key, offset)
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<(), TargetError> {
        self.upload(key, path, false).map(|_| ())
    }

    fn put_file_if_absent(&self, key: &str, path: &Path) -> Result<PutOutcome, TargetError> {
        self.upload(key, path, true)
    }

    fn content_hash(&self, key: &str) -> Result<String, TargetError> {
        match self.recorded_hash(key)? {
            Some(h) => Ok(h),
            None => super::stream_hash(self, key),
        }
    }

    fn delete(&self, key: &str) -> Result<(), TargetError> {
        let full = self.full_key(key)?;
        let resp = self.rt.block_on(
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send(),
        );
        match resp {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = Failure::of(&e);
                if f.is("NoSuchKey", 404) && !f.is("NoSuchBucket", 0) {
                    Ok(())
                } else {
                    Err(self.fail(key, f))
                }
            }
        }
    }
}
