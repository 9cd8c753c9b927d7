//! The PostgreSQL of the end-to-end tests: a fresh schema per test in the server at
//! 127.0.0.1:5432 (database `test`, user `postgres`, trust auth; or
//! `SFTPGATE_TEST_POSTGRES_URL`, a URL without query parameters), named in the store URL
//! through `search_path`, and dropped when the test ends. Unreachable: the test is skipped
//! with the reason, or fails under `CI=true` (ENGINEERING.md, e).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::Connection as _;

/// The admin connection's URL.
fn admin_url() -> String {
    std::env::var("SFTPGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of its own for one test; dropped (with everything in it) on drop.
#[derive(Debug)]
pub struct Schema {
    name: String,
    url: String,
}

impl Schema {
    /// Creates the schema, or returns `None` after saying why PostgreSQL is not usable
    /// (panics instead under `CI=true`).
    pub fn create() -> Option<Schema> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sftpgate_e2e_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let admin = admin_url();
        let sql = format!("CREATE SCHEMA \"{name}\"");
        if let Err(err) = block_on(execute(&admin, &sql)) {
            let at = admin.rsplit_once('@').map_or(admin.as_str(), |(_, h)| h);
            let why = format!("PostgreSQL at {at} not usable: {err}");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why} (required under CI=true)");
            }
            eprintln!("skipping: {why}");
            return None;
        }
        let url = format!("{admin}?options=-c%20search_path%3D{name}");
        Some(Schema { name, url })
    }

    /// The store URL for `--database-url`: this schema first on the search path.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        if let Err(err) = block_on(execute(&admin_url(), &sql)) {
            eprintln!("dropping test schema {}: {err}", self.name);
        }
    }
}

async fn execute(url: &str, sql: &str) -> Result<(), String> {
    let connect = sqlx::PgConnection::connect(url);
    let mut conn = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    sqlx::query(sql)
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(())
}

/// The tests are synchronous; each database call gets a small runtime of its own.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for a database call")
        .block_on(future)
}
