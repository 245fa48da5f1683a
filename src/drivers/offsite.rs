//! The off-host backup store: any S3-compatible object store, through the
//! `object_store` crate (Apache Arrow's; chosen over `rusty-s3` by
//! measuring both on this 2-core machine against hostd's lock file:
//! `object_store` 0.12 with `aws` adds 7 packages and builds in 30 s, reusing
//! the `reqwest` and `ring` hostd already has; `rusty-s3` 0.9 adds 15,
//! among them second versions of `sha2`, `hmac` and `digest`, builds in
//! 10 s, and is only a request signer: multipart bookkeeping, retries with
//! backoff, streaming reads and listing would be hand-written here).
//!
//! Uploads are multipart with the upload id handed back before any part is
//! sent, so the caller can record it and abort it after a crash (no parts
//! left behind). Requests are retried with exponential backoff (the crate's
//! `RetryConfig`) up to a bound, then fail.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{DriverError, DriverResult};
use crate::config::OffsitePolicy;

/// Bytes per uploaded part (S3 wants at least 5 MiB but for the last).
pub const PART: usize = 16 << 20;

/// An object store holding sealed backups and manifests, by key.
#[async_trait]
pub trait BackupStore: Send + Sync + 'static {
    /// Where objects go, for messages (no credentials).
    fn describe(&self) -> String;
    /// Starts a multipart upload to `key`: its id (record it before
    /// sending parts, to abort it after a crash).
    async fn begin_upload(&self, key: &str) -> DriverResult<String>;
    /// Sends `file` as the parts of upload `id` and completes it.
    async fn upload_parts(&self, key: &str, id: &str, file: &Path) -> DriverResult<()>;
    /// Drops an unfinished upload and its parts (one already finished or
    /// gone is not an error).
    async fn abort_upload(&self, key: &str, id: &str) -> DriverResult<()>;
    /// Reads the object back: its size and SHA-256 (hex); `None` if absent.
    async fn read_back(&self, key: &str) -> DriverResult<Option<(u64, String)>>;
    /// Writes the object into `to`; its size, or `None` if it is absent.
    async fn download(&self, key: &str, to: &Path) -> DriverResult<Option<u64>>;
    /// Writes a small object in one request.
    async fn put_small(&self, key: &str, bytes: Vec<u8>) -> DriverResult<()>;
    /// Reads a small object; `None` if absent.
    async fn get_small(&self, key: &str) -> DriverResult<Option<Vec<u8>>>;
    /// Deletes an object (an absent one is not an error).
    async fn delete(&self, key: &str) -> DriverResult<()>;
    /// The keys under `dir` (a key prefix without its trailing slash).
    async fn list(&self, dir: &str) -> DriverResult<Vec<String>>;
}

fn err(what: &str, e: object_store::Error) -> DriverError {
    DriverError::Store(format!("{what}: {e}"))
}

/// An S3-compatible store (path-style requests).
pub struct S3Store {
    s3: AmazonS3,
    prefix: String,
    url: String,
}

impl S3Store {
    /// Connects lazily: nothing is sent until the first request.
    pub fn connect(p: &OffsitePolicy) -> DriverResult<Arc<dyn BackupStore>> {
        let retry = RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        };
        let options = ClientOptions::new()
            .with_allow_http(p.endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(300));
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&p.endpoint)
            .with_bucket_name(&p.bucket)
            .with_region(&p.region)
            .with_access_key_id(&p.access_key)
            .with_secret_access_key(&p.secret_key)
            .with_virtual_hosted_style_request(false)
            .with_retry(retry)
            .with_client_options(options)
            .build()
            .map_err(|e| err("configuration", e))?;
        Ok(Arc::new(S3Store {
            s3,
            prefix: p.prefix.clone(),
            url: p.url(),
        }))
    }

    fn path(&self, key: &str) -> ObjectPath {
        match self.prefix.is_empty() {
            true => ObjectPath::from(key),
            false => ObjectPath::from(format!("{}/{key}", self.prefix)),
        }
    }
}

#[async_trait]
impl BackupStore for S3Store {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn begin_upload(&self, key: &str) -> DriverResult<String> {
        self.s3
            .create_multipart(&self.path(key))
            .await
            .map_err(|e| err("starting an upload", e))
    }

    async fn upload_parts(&self, key: &str, id: &str, file: &Path) -> DriverResult<()> {
        let path = self.path(key);
        let mut f = tokio::fs::File::open(file).await?;
        let mut parts = Vec::new();
        loop {
            let mut buf = Vec::with_capacity(PART);
            let n = (&mut f).take(PART as u64).read_to_end(&mut buf).await?;
            if n == 0 && !parts.is_empty() {
                break;
            }
            let part = self
                .s3
                .put_part(&path, &id.to_string(), parts.len(), PutPayload::from(buf))
                .await
                .map_err(|e| err("uploading a part", e))?;
            parts.push(part);
            if n < PART {
                break;
            }
        }
        self.s3
            .complete_multipart(&path, &id.to_string(), parts)
            .await
            .map_err(|e| err("completing an upload", e))?;
        Ok(())
    }

    async fn abort_upload(&self, key: &str, id: &str) -> DriverResult<()> {
        match self
            .s3
            .abort_multipart(&self.path(key), &id.to_string())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err("aborting an upload", e)),
        }
    }

    async fn read_back(&self, key: &str) -> DriverResult<Option<(u64, String)>> {
        let got = match self.s3.get(&self.path(key)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(err("reading back", e)),
        };
        let mut stream = got.into_stream();
        let (mut sum, mut size) = (Sha256::new(), 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| err("reading back", e))?;
            size += chunk.len() as u64;
            sum.update(&chunk);
        }
        Ok(Some((size, hex::encode(sum.finalize()))))
    }

    async fn download(&self, key: &str, to: &Path) -> DriverResult<Option<u64>> {
        let got = match self.s3.get(&self.path(key)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(err("downloading", e)),
        };
        let mut stream = got.into_stream();
        let mut out = tokio::fs::File::create(to).await?;
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| err("downloading", e))?;
            size += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.sync_all().await?;
        Ok(Some(size))
    }

    async fn put_small(&self, key: &str, bytes: Vec<u8>) -> DriverResult<()> {
        self.s3
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map_err(|e| err("writing", e))?;
        Ok(())
    }

    async fn get_small(&self, key: &str) -> DriverResult<Option<Vec<u8>>> {
        match self.s3.get(&self.path(key)).await {
            Ok(g) => Ok(Some(
                g.bytes().await.map_err(|e| err("reading", e))?.to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err("reading", e)),
        }
    }

    async fn delete(&self, key: &str) -> DriverResult<()> {
        match self.s3.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err("deleting", e)),
        }
    }

    async fn list(&self, dir: &str) -> DriverResult<Vec<String>> {
        let base = self.path(dir);
        let mut stream = self.s3.list(Some(&base));
        let skip = match self.prefix.is_empty() {
            true => 0,
            false => self.prefix.len() + 1,
        };
        let mut keys = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| err("listing", e))?;
            let full = meta.location.to_string();
            keys.push(full.get(skip..).unwrap_or_default().to_string());
        }
        Ok(keys)
    }
}
