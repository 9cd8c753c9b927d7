//! Test stores: an in-memory store (always), and the real S3 server `.ci/garage.sh` starts
//! (Garage), reached through `SFTPGATE_TEST_S3_*`. Without those variables the S3 tests
//! skip saying why; under `CI=true` they fail.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sftpgate_fs_object::object_store::memory::InMemory;
use sftpgate_fs_object::object_store::ObjectStore;
use sftpgate_fs_object::{ObjectConfig, ObjectFs, S3Settings};

/// The S3 settings from the environment, or why there are none.
pub fn s3_settings() -> Result<S3Settings, String> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| format!("{name} is not set (run .ci/garage.sh start)"))
    };
    let endpoint = var("SFTPGATE_TEST_S3_ENDPOINT")?;
    let mut settings = S3Settings::new(
        Some(endpoint),
        &std::env::var("SFTPGATE_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
        &var("SFTPGATE_TEST_S3_BUCKET")?,
        &var("SFTPGATE_TEST_S3_ACCESS_KEY")?,
        &var("SFTPGATE_TEST_S3_SECRET_KEY")?,
    );
    settings.max_retries = 2;
    Ok(settings)
}

/// The S3 store, or `None` after printing why the test skips (a panic under `CI=true`).
pub fn s3_store() -> Option<Arc<dyn ObjectStore>> {
    match s3_settings() {
        Ok(settings) => Some(settings.build().expect("S3 settings build a store")),
        Err(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("S3 tests must run under CI=true: {why}");
            }
            eprintln!("skipping: no S3 server: {why}");
            None
        }
    }
}

/// A prefix no other test (or earlier run) uses.
pub fn fresh_prefix(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "test/{test}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn memory_fs(config: ObjectConfig) -> (Arc<dyn ObjectStore>, ObjectFs) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let fs = ObjectFs::new(store.clone(), "tenant", config).expect("ObjectFs::new");
    (store, fs)
}

pub fn s3_fs(test: &str, config: ObjectConfig) -> Option<(Arc<dyn ObjectStore>, String, ObjectFs)> {
    let store = s3_store()?;
    let prefix = fresh_prefix(test);
    let fs = ObjectFs::new(store.clone(), &prefix, config).expect("ObjectFs::new");
    Some((store, prefix, fs))
}

/// Multipart uploads in progress below `prefix`, as the S3 server lists them (through
/// rclone, a separate S3 client). `None` (printed) when rclone is missing; a panic under
/// `CI=true`.
pub fn multipart_uploads(prefix: &str) -> Option<Vec<String>> {
    let settings = s3_settings().expect("S3 settings");
    let output = std::process::Command::new("rclone")
        .args(["backend", "list-multipart-uploads"])
        // A CA bundle set for the machine's proxy breaks rclone's S3 client (and the
        // endpoint is plain HTTP on loopback anyway).
        .env_remove("AWS_CA_BUNDLE")
        .arg(format!("garage:{}", settings.bucket))
        .envs(rclone_env(&settings))
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!(
            "rclone list-multipart-uploads failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("rclone is needed under CI=true: {e}");
            }
            eprintln!("skipping the orphaned-upload check: rclone: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    // {"bucket": [{"Key": "...", "UploadId": "...", ...}, ...]}: the keys are enough.
    Some(
        text.split("\"Key\":")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .filter(|key| key.starts_with(prefix))
            .map(str::to_owned)
            .collect(),
    )
}

/// rclone's configuration of a remote named `garage`, in its environment form.
pub fn rclone_env(settings: &S3Settings) -> Vec<(String, String)> {
    [
        ("RCLONE_CONFIG_GARAGE_TYPE", "s3"),
        ("RCLONE_CONFIG_GARAGE_PROVIDER", "Other"),
        (
            "RCLONE_CONFIG_GARAGE_ENDPOINT",
            settings.endpoint.as_deref().unwrap_or_default(),
        ),
        ("RCLONE_CONFIG_GARAGE_REGION", &settings.region),
        (
            "RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID",
            &settings.access_key_id,
        ),
        (
            "RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY",
            &settings.secret_access_key,
        ),
        ("RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}
