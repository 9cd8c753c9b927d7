//! Tuning of the object backend, and the S3 connection settings.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use sftpgate_vfs::FsError;

/// The smallest part S3 accepts in a multipart upload (all but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// How the backend uses the store. Memory held per session is bounded by
/// `max_writers × (part_size + reorder_window) + parts_in_flight × part_size`
/// for uploads, plus `read_ahead + 2` chunks of `read_chunk` per file being read.
#[derive(Debug, Clone)]
pub struct ObjectConfig {
    /// Size of a multipart part (at least [`MIN_PART_SIZE`]). Uploads smaller than one
    /// part are sent as a single PUT at close.
    pub part_size: usize,
    /// Parts uploading at once, across all of a session's files.
    pub parts_in_flight: usize,
    /// Bytes of out-of-order writes held per file while the bytes before them arrive.
    pub reorder_window: usize,
    /// How long a write beyond the window waits for the gap before it to fill.
    pub reorder_wait: Duration,
    /// Files open for writing at once per session.
    pub max_writers: usize,
    /// Size of one ranged GET of a sequential reader.
    pub read_chunk: usize,
    /// Chunks fetched ahead of a sequential reader (0: only the chunks a read needs).
    pub read_ahead: usize,
    /// Bound on every single call to the store, retries included.
    pub call_timeout: Duration,
}

impl Default for ObjectConfig {
    fn default() -> Self {
        ObjectConfig {
            part_size: 8 * 1024 * 1024,
            parts_in_flight: 4,
            reorder_window: 8 * 1024 * 1024,
            reorder_wait: Duration::from_secs(10),
            max_writers: 16,
            read_chunk: 4 * 1024 * 1024,
            read_ahead: 2,
            call_timeout: Duration::from_secs(60),
        }
    }
}

impl ObjectConfig {
    /// Refuses settings the store or the bounds cannot work with.
    pub fn validate(&self) -> Result<(), FsError> {
        let bad = |m: &'static str| Err(FsError::InvalidInput(m.into()));
        if self.part_size < MIN_PART_SIZE {
            return bad("part_size must be at least 5 MiB (the S3 minimum)");
        }
        if self.parts_in_flight == 0 || self.max_writers == 0 || self.read_chunk == 0 {
            return bad("parts_in_flight, max_writers and read_chunk must be positive");
        }
        Ok(())
    }
}

/// Where an S3 bucket is and how to sign requests to it.
#[derive(Clone)]
pub struct S3Settings {
    /// `http://127.0.0.1:3900` for Garage or MinIO; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The region (Garage's default is `garage`).
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Retries of a transient failure (connection error, 5xx, 429), with exponential
    /// backoff from 100 ms up to 5 s.
    pub max_retries: usize,
    /// Timeout of one HTTP request (each retry gets its own).
    pub request_timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl S3Settings {
    /// Settings with the default retry policy (3 retries, 30 s per request).
    pub fn new(
        endpoint: Option<String>,
        region: &str,
        bucket: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> S3Settings {
        S3Settings {
            endpoint,
            region: region.to_owned(),
            bucket: bucket.to_owned(),
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            max_retries: 3,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// The store: path-style requests (what Garage and MinIO serve), plain HTTP allowed for
    /// an `http://` endpoint.
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>, FsError> {
        let client = ClientOptions::new()
            .with_allow_http(
                self.endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            )
            .with_timeout(self.request_timeout)
            .with_connect_timeout(Duration::from_secs(5));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.request_timeout * (self.max_retries as u32 + 1),
        };
        let mut builder = AmazonS3Builder::new()
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_virtual_hosted_style_request(false)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| {
            FsError::InvalidInput(format!("S3 settings are not usable: {e}").into())
        })?;
        Ok(Arc::new(store))
    }
}
