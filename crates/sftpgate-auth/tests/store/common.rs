//! The test databases: a fresh SQLite file, or a fresh schema in the PostgreSQL at
//! 127.0.0.1:5432 (database `test`, trust auth), dropped again afterwards; and the macro
//! that runs one test function on both.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sftpgate_auth::{PasswordParams, Store, StoreConfig};
use sqlx::Connection as _;

/// The PostgreSQL the tests use: the `test` database of the local server, or
/// `SFTPGATE_TEST_POSTGRES_URL` (a URL without query parameters).
fn postgres_admin_url() -> String {
    std::env::var("SFTPGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub const ALICE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";
pub const BOB_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN2zj2BcoyWW+xp66RmM0uW1gSeJP9XKqyqyE2wqY/tp bob@desk";
pub const ECDSA_KEY: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLh86UqDLlilgx5X0vxrX6SfQebY7NEZ89ZgldEjDvMedd6kzKvWqJqOdKGk1hgF8vPiAjp7nCBY2lZ4RLgTrIU= ecdsa-256@test";
pub const RSA_2048_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDgAnjRJu+W2NMqVyGDpP4EZtBz9f16o3Clql4keinPPZ+1OPv0KaXPDtNP9S/vZYJNRDTgWjl99bM7TTGjPiMaFk2pA+ZkPv5/HNRES2fVBwbAPoAkvblarPCZJNKVewY437qUQ7g2u52G7yMZjEPQrVHHR6kqvPei60K39O5NtNDA5ptVI+rtBqFFaXqo93Ql15AoGQ2P820dWedoue8Nd3WiLjkVsGVlxF3YhshYNsmXl1BQq0oMsy6bm6QcQIkx9HBymSkDA72gnhks8GqT8W7i2+7PsW6Di5QPOx4IJztrwLi3ByC6uZ9aIBxuu4/KLQZ8Yq3uFe/CFnCuzkcP rsa-2048@test";
pub const RSA_1024_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC8/TfLYznfikUb2J1W0+pC7Rx/XTkdPqqlWV/B8fJ7cptLXA9aVxT50BE49FjZ7ya0p+cUkxvkiHgnr5HOoJDo59SXNgfurWJIPrF2xVT5cALKdTAQM/zx355ELwI1m3dvl13To/bGoM0socbPZTaVqYeMz4LAw9a2eCXVq1jjHw== rsa-1024@test";

/// One test's store and where it lives.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    /// For SQLite: keeps the directory alive.
    _dir: Option<tempfile::TempDir>,
    /// For PostgreSQL: drops the schema.
    _schema: Option<SchemaGuard>,
}

impl TestDb {
    /// Another store on the same database (what a second server node or the CLI opens).
    pub async fn reopen(&self) -> Store {
        Store::connect(&self.url, config())
            .await
            .expect("reopening the store")
    }
}

/// Drops a PostgreSQL test schema, also when the test panicked.
struct SchemaGuard(String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // Drop cannot await, and runs inside the test's runtime: use a thread of its own.
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            runtime.block_on(async move {
                match sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    Ok(mut admin) => {
                        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                        if let Err(e) = sqlx::query(&drop).execute(&mut admin).await {
                            eprintln!("dropping test schema {schema}: {e}");
                        }
                        let _ = admin.close().await;
                    }
                    Err(e) => eprintln!("dropping test schema {schema}: {e}"),
                }
            });
        });
        let _ = done.join();
    }
}

/// Test settings: cheap password hashes, a small pool.
pub fn config() -> StoreConfig {
    let mut config = StoreConfig::default();
    config.password = PasswordParams::insecure_for_tests();
    config.max_connections = 5;
    config
}

/// A store in a new SQLite file.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("a tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("auth.db").display());
    let store = Store::connect(&url, config())
        .await
        .expect("opening the SQLite store");
    TestDb {
        store,
        url,
        _dir: Some(dir),
        _schema: None,
    }
}

/// A store in a new schema of the local PostgreSQL; `None` (after saying why) if it is not
/// reachable, unless `CI=true`, where that fails the test.
pub async fn postgres() -> Option<TestDb> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin_url = postgres_admin_url();
    let connect = sqlx::PgConnection::connect(&admin_url);
    let mut admin = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(admin)) => admin,
        Ok(Err(err)) => return unreachable(&err),
        Err(err) => return unreachable(&err),
    };
    let schema = format!(
        "sftpgate_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&mut admin)
        .await
        .expect("creating a test schema");
    admin.close().await.expect("closing the admin connection");
    let guard = SchemaGuard(schema.clone());
    let url = format!("{admin_url}?options=-c%20search_path%3D{schema}");
    let store = Store::connect(&url, config())
        .await
        .expect("opening the PostgreSQL store");
    Some(TestDb {
        store,
        url,
        _dir: None,
        _schema: Some(guard),
    })
}

fn unreachable(err: &dyn std::fmt::Display) -> Option<TestDb> {
    let url = postgres_admin_url();
    let at = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
    let at = at.split('/').next().unwrap_or(at);
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("PostgreSQL at {at} not reachable (required under CI=true): {err}");
    }
    eprintln!("skipping: PostgreSQL at {at} not reachable: {err}");
    None
}

/// Runs each listed `async fn(&TestDb)` of the calling module as one test on SQLite and one
/// on PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::common::sqlite().await;
                    super::$name(&db).await;
                    db.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = crate::common::postgres().await else { return };
                    super::$name(&db).await;
                    db.store.close().await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;
