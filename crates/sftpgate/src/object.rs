//! Object storage for `serve`: the S3 stores of `[s3]`, one per bucket, built on first use
//! and shared by every session on that bucket (one HTTP connection pool each); each
//! session gets its own `ObjectFs` on its prefix, so its exit aborts only its own uploads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sftpgate_fs_object::object_store::ObjectStore;
use sftpgate_fs_object::ObjectFs;
use sftpgate_vfs::Filesystem;

use crate::config::S3Config;

/// The configured S3 server's stores.
pub struct ObjectStores {
    config: S3Config,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl ObjectStores {
    pub fn new(config: S3Config) -> ObjectStores {
        ObjectStores {
            config,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// A session's filesystem on `prefix` of `bucket`; the error is for the client.
    pub fn open(&self, bucket: &str, prefix: &str) -> Result<Arc<dyn Filesystem>, String> {
        if prefix.trim_matches('/').is_empty() {
            // A whole bucket per session is never what a user record or a provisioner
            // means; refuse rather than expose every key.
            return Err("object storage needs a key prefix for the session".into());
        }
        let store = {
            let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
            match stores.get(bucket) {
                Some(store) => store.clone(),
                None => {
                    let settings = self.config.settings(bucket).ok_or(
                        "object storage is not configured on this server (no [s3] access key)",
                    )?;
                    let store = settings.build().map_err(|e| {
                        tracing::error!(error = %e, "building the S3 store");
                        "object storage settings are invalid".to_owned()
                    })?;
                    stores.insert(bucket.to_owned(), store.clone());
                    store
                }
            }
        };
        let fs = ObjectFs::new(store, prefix, self.config.object_config())
            .map_err(|e| format!("object storage: {e}"))?;
        Ok(Arc::new(fs))
    }
}
