//! The operations listener (`--metrics-listen`, `[metrics]`): Prometheus metrics on
//! `/metrics` and the health check on `/health`, over one small HTTP/1 server.
//!
//! The libraries emit through the `metrics` facade; this module installs the Prometheus
//! recorder (only when the listener is configured, so that without it every metric is a
//! no-op) and serves its rendering. hyper's HTTP/1 server is used directly instead of the
//! exporter's own listener or a web framework: two fixed GET routes need no router, and the
//! server needs the same listener for `/health`, which the exporter's listener cannot serve.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::MetricsConfig;
use crate::health::Health;

/// HTTP connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 32;
/// A client gets this long to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often histograms are folded and idle state is cleaned up.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Buckets of the lifecycle hooks' and other short latencies, seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of session durations, seconds: a second to a day.
const SESSION_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0];

/// Installs the Prometheus recorder as the process's `metrics` recorder and describes the
/// metrics. Call before anything emits: handles registered earlier stay no-ops.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("sftpgate_sftp_session_duration_seconds".into()),
            SESSION_BUCKETS,
        )
        .context("session duration buckets")?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .context("latency buckets")?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    describe();
    Ok(handle)
}

/// Binds the listener `config` asks for (`None` when it is off), refusing a non-loopback
/// address unless `allow_public`.
pub async fn bind(config: &MetricsConfig) -> anyhow::Result<Option<TcpListener>> {
    if config.listen.is_empty() {
        return Ok(None);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&config.listen)
        .await
        .with_context(|| format!("metrics.listen {:?}: not an address", config.listen))?
        .collect();
    if !config.allow_public {
        if let Some(public) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            bail!(
                "metrics.listen {:?} ({public}) is not a loopback address; /metrics and \
                 /health have no authentication, so set metrics.allow_public = true (or \
                 SFTPGATE_METRICS_ALLOW_PUBLIC=true) to serve them there",
                config.listen
            );
        }
    }
    let listener = TcpListener::bind(&addrs[..])
        .await
        .with_context(|| format!("listening for metrics on {}", config.listen))?;
    Ok(Some(listener))
}

/// Serves `/metrics` and `/health` on `listener` until `stop` is cancelled; keeps the
/// recorder's histograms folded meanwhile.
pub fn spawn(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    health: Health,
    stop: CancellationToken,
) {
    let upkeep = prometheus.clone();
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                () = upkeep_stop.cancelled() => break,
            }
        }
    });
    let state = Arc::new(State { prometheus, health });
    tokio::spawn(accept_loop(listener, state, stop));
}

struct State {
    prometheus: PrometheusHandle,
    health: Health,
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: try again shortly rather than spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&state, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                    }
                }
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn route<B>(state: &State, request: Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let body = state.prometheus.render();
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(body)))
                .expect("static headers are valid")
        }
        "/health" => {
            let report = state.health.check().await;
            let status = if report.healthy() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_vec(&report).expect("the report serializes");
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("cache-control", "no-store")
                .body(Full::new(Bytes::from(body)))
                .expect("static headers are valid")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /health\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static headers are valid")
}

/// HELP lines for the metrics sftpgate emits (docs/operations.md lists the same).
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("sftpgate_connections_open", "SSH connections open now");
    describe_counter!("sftpgate_connections_total", "SSH connections accepted");
    describe_counter!(
        "sftpgate_connections_rejected_total",
        "SSH connections refused or closed early, by reason"
    );
    describe_counter!(
        "sftpgate_auth_attempts_total",
        "Authentication attempts, by method and result (key probes are not attempts)"
    );
    describe_counter!(
        "sftpgate_auth_refused_total",
        "Logins the user store refused, by kind"
    );
    describe_gauge!("sftpgate_sftp_sessions_open", "SFTP sessions being served");
    describe_counter!(
        "sftpgate_sftp_sessions_total",
        "SFTP subsystem requests (sessions started or refused)"
    );
    describe_histogram!(
        "sftpgate_sftp_session_duration_seconds",
        Unit::Seconds,
        "SFTP session durations, from the factory's return to the end of the exit"
    );
    describe_histogram!(
        "sftpgate_lifecycle_hook_seconds",
        Unit::Seconds,
        "Latency of successful lifecycle steps, by step (auth_completed, sftp_factory, exit)"
    );
    describe_counter!(
        "sftpgate_lifecycle_hook_timeouts_total",
        "Lifecycle steps that timed out, by step"
    );
    describe_counter!(
        "sftpgate_lifecycle_hook_failures_total",
        "Lifecycle steps that failed (or panicked), by step"
    );
    describe_counter!(
        "sftpgate_bytes_in_total",
        Unit::Bytes,
        "File bytes written by clients"
    );
    describe_counter!(
        "sftpgate_bytes_out_total",
        Unit::Bytes,
        "File bytes read by clients"
    );
    describe_counter!(
        "sftpgate_requests_total",
        "SFTP requests answered, by operation and status"
    );
    describe_gauge!(
        "sftpgate_requests_in_flight",
        "SFTP requests received and not yet answered"
    );
    describe_counter!(
        "sftpgate_bad_requests_total",
        "Packets that could not be decoded"
    );
    describe_counter!(
        "sftpgate_request_timeouts_total",
        "Storage operations that exceeded timeouts.request"
    );
    describe_counter!(
        "sftpgate_request_panics_total",
        "Request handlers that panicked"
    );
    describe_counter!(
        "sftpgate_session_panics_total",
        "SFTP session tasks that panicked"
    );
}
