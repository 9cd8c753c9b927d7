//! `/health`: whether the services a login needs answer now: the user store always, NATS
//! when it is configured. Each check is bounded by [`CHECK_TIMEOUT`] and they run at once,
//! so a dead dependency makes the endpoint answer 503 within that time rather than hang.

use std::time::{Duration, Instant};

use serde::Serialize;
use sftpgate_auth::Store;
use sftpgate_nats::async_nats;

/// How long one dependency gets to answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/health` checks.
#[derive(Clone)]
pub struct Health {
    store: Store,
    /// The user store as the log shows it (no password).
    store_name: String,
    nats: Option<async_nats::Client>,
}

/// The answer of `/health`, as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `ok` when every check passed, `unavailable` otherwise.
    pub status: &'static str,
    /// The user store.
    pub store: Check,
    /// NATS; absent when NATS is not configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<Check>,
}

/// One dependency.
#[derive(Debug, Serialize)]
pub struct Check {
    /// Whether it answered.
    pub ok: bool,
    /// What was checked.
    pub target: String,
    /// How long the check took, milliseconds.
    pub latency_ms: u64,
    /// Why it is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// Whether every check passed.
    pub fn healthy(&self) -> bool {
        self.store.ok && self.nats.as_ref().is_none_or(|n| n.ok)
    }
}

impl Health {
    pub fn new(store: Store, store_name: String, nats: Option<async_nats::Client>) -> Health {
        Health {
            store,
            store_name,
            nats,
        }
    }

    /// Runs the checks (concurrently).
    pub async fn check(&self) -> Report {
        let store = self.check_store();
        let nats = async {
            match &self.nats {
                Some(client) => Some(check_nats(client).await),
                None => None,
            }
        };
        let (store, nats) = tokio::join!(store, nats);
        let mut report = Report {
            status: "ok",
            store,
            nats,
        };
        if !report.healthy() {
            report.status = "unavailable";
        }
        report
    }

    async fn check_store(&self) -> Check {
        let started = Instant::now();
        // The cheapest query every backend answers from the real tables.
        let result = match tokio::time::timeout(CHECK_TIMEOUT, self.store.user_count()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the store does not answer: {e}")),
            Err(_) => Err(format!(
                "the store did not answer within {} s",
                CHECK_TIMEOUT.as_secs_f64()
            )),
        };
        check(self.store_name.clone(), started, result)
    }
}

async fn check_nats(client: &async_nats::Client) -> Check {
    let started = Instant::now();
    let target = client.server_info().host;
    let target = if target.is_empty() {
        "nats".to_owned()
    } else {
        format!("nats://{target}:{}", client.server_info().port)
    };
    let state = client.connection_state();
    let result = if state != async_nats::connection::State::Connected {
        // A flush would wait for the reconnection; the state already says enough.
        Err(format!("not connected to NATS ({state})"))
    } else {
        // A round trip to the server (PING/PONG), not only the client's view.
        match tokio::time::timeout(CHECK_TIMEOUT, client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("NATS does not answer: {e}")),
            Err(_) => Err(format!(
                "NATS did not answer within {} s",
                CHECK_TIMEOUT.as_secs_f64()
            )),
        }
    };
    check(target, started, result)
}

fn check(target: String, started: Instant, result: Result<(), String>) -> Check {
    Check {
        ok: result.is_ok(),
        target,
        latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error: result.err(),
    }
}
