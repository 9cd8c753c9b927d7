//! [`NatsEvents`]: the server's [`Event`]s as versioned JSON in a JetStream stream.
//!
//! `emit` runs on the serving path, so it only tries to push into a bounded channel; when the
//! channel is full the event is dropped, counted (`sftpgate_nats_events_dropped_total`,
//! [`NatsEvents::dropped`]) and logged at most every few seconds. The [`EventPublisher`]
//! task serialises, publishes and awaits each JetStream acknowledgement, republishing what
//! was not acknowledged with the same `Nats-Msg-Id`, so an event that entered the buffer is
//! stored at least once and, within the stream's duplicate window, once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use async_nats::Client;
use serde_json::{json, Map, Value};
use sftpgate_server::{ConnectionInfo, Event, EventSink, FileOp, SessionId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{backoff, EventsConfig, NatsConfig, Subjects};
use crate::error::Error;
use crate::request::new_id;

/// The `schema` field of every event.
pub const EVENT_SCHEMA: &str = "sftpgate.event.v1";

/// Events published per round (their acknowledgements are awaited together).
const BATCH: usize = 64;
/// At most one "buffer full" warning per this interval.
const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The [`EventSink`] half: give it to `Server::with_events`. Cheap to clone.
#[derive(Clone)]
pub struct NatsEvents {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    tx: mpsc::Sender<Queued>,
    seq: AtomicU64,
    dropped: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

struct Queued {
    seq: u64,
    time: SystemTime,
    event: Event,
}

/// The publishing half: spawn [`EventPublisher::run`] once.
pub struct EventPublisher {
    rx: mpsc::Receiver<Queued>,
    jetstream: jetstream::Context,
    subjects: Subjects,
    config: EventsConfig,
    server: String,
    run_id: String,
}

/// A sink and its publisher for `config.events`, on `client`.
pub fn event_channel(client: Client, config: &NatsConfig) -> (NatsEvents, EventPublisher) {
    let (tx, rx) = mpsc::channel(config.events.buffer.max(1));
    let mut jetstream = jetstream::new(client);
    jetstream.set_timeout(config.events.ack_timeout);
    (
        NatsEvents {
            inner: Arc::new(SinkInner {
                tx,
                seq: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                last_warning: Mutex::new(None),
            }),
        },
        EventPublisher {
            rx,
            jetstream,
            subjects: config.subjects(),
            config: config.events.clone(),
            server: config.connection_name.clone(),
            // Ids are `<run>-<seq>`: unique across restarts, so deduplication by
            // `Nats-Msg-Id` never swallows a new event.
            run_id: new_id()[..16].to_owned(),
        },
    )
}

impl NatsEvents {
    /// Events dropped because the buffer was full (or the publisher gone).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for NatsEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEvents")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl EventSink for NatsEvents {
    fn emit(&self, event: Event) {
        let queued = Queued {
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1,
            time: SystemTime::now(),
            event,
        };
        if self.inner.tx.try_send(queued).is_ok() {
            return;
        }
        let total = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("sftpgate_nats_events_dropped_total").increment(1);
        // Never wait for the lock: a contended one means someone is warning right now.
        if let Ok(mut last) = self.inner.last_warning.try_lock() {
            let now = Instant::now();
            if last.is_none_or(|at| now.duration_since(at) >= DROP_WARN_INTERVAL) {
                *last = Some(now);
                tracing::warn!(
                    dropped_total = total,
                    "event buffer full (NATS slow or down); events dropped"
                );
            }
        }
    }
}

/// An event ready to publish.
struct Outgoing {
    subject: String,
    id: String,
    payload: bytes::Bytes,
}

impl EventPublisher {
    /// Creates the stream (subjects `<prefix>.events.>`, file storage, `max_age`) unless it
    /// exists; an existing stream is used as it is.
    pub async fn ensure_stream(&self) -> Result<(), Error> {
        let config = jetstream::stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![self.subjects.all_events()],
            max_age: self.config.max_age,
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.jetstream
            .get_or_create_stream(config)
            .await
            .map(|_| ())
            .map_err(|e| Error::JetStream(format!("stream {}: {e}", self.config.stream)))
    }

    /// Publishes until `shutdown` is cancelled (or every sink is dropped); then makes one
    /// last attempt, bounded by `ack_timeout`, for what is still buffered.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut attempt = 0;
        loop {
            match self.ensure_stream().await {
                Ok(()) => break,
                Err(error) => {
                    let pause =
                        backoff(Duration::from_millis(200), Duration::from_secs(10), attempt);
                    tracing::warn!(%error, retry_in = ?pause, "cannot set up the event stream");
                    attempt += 1;
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            self.rx.close();
                            let mut left = 0;
                            while self.rx.try_recv().is_ok() { left += 1; }
                            if left > 0 {
                                tracing::warn!(lost = left, "shutting down without an event stream; buffered events lost");
                            }
                            return;
                        }
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        let mut received = Vec::with_capacity(BATCH);
        let mut batch: Vec<Outgoing> = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                n = self.rx.recv_many(&mut received, BATCH) => n,
                () = shutdown.cancelled() => break,
            };
            if n == 0 {
                return;
            }
            batch.extend(received.drain(..).filter_map(|q| self.outgoing(&q)));
            self.publish(&mut batch, &shutdown).await;
            if shutdown.is_cancelled() {
                break;
            }
        }
        // Shutting down: one bounded last round for what is buffered.
        self.rx.close();
        while let Ok(q) = self.rx.try_recv() {
            if let Some(out) = self.outgoing(&q) {
                batch.push(out);
            }
        }
        if !batch.is_empty() {
            let last = CancellationToken::new();
            let _ = tokio::time::timeout(self.config.ack_timeout, self.publish(&mut batch, &last))
                .await;
            if !batch.is_empty() {
                tracing::warn!(
                    lost = batch.len(),
                    "shutting down; events not acknowledged are lost"
                );
            }
        }
    }

    /// Publishes `batch`, retrying what is not acknowledged with backoff, until all of it is
    /// stored or `stop` is cancelled; what is left stays in `batch`.
    async fn publish(&self, batch: &mut Vec<Outgoing>, stop: &CancellationToken) {
        let mut attempt = 0;
        while !batch.is_empty() {
            let mut acks: Vec<Option<PublishAckFuture>> = Vec::with_capacity(batch.len());
            for out in batch.iter() {
                let message = PublishMessage::build()
                    .payload(out.payload.clone())
                    .message_id(&out.id);
                acks.push(
                    self.jetstream
                        .send_publish(out.subject.clone(), message)
                        .await
                        .ok(),
                );
            }
            let mut failed = Vec::new();
            let mut last_error = None;
            for (out, ack) in batch.drain(..).zip(acks) {
                let result = match ack {
                    Some(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    None => Err("publish failed".to_owned()),
                };
                match result {
                    Ok(()) => {
                        metrics::counter!("sftpgate_nats_events_published_total").increment(1)
                    }
                    Err(e) => {
                        last_error = Some(e);
                        failed.push(out);
                    }
                }
            }
            *batch = failed;
            if let Some(error) = last_error {
                let pause = backoff(Duration::from_millis(100), Duration::from_secs(5), attempt);
                tracing::warn!(%error, unacknowledged = batch.len(), retry_in = ?pause, "events not acknowledged; retrying");
                metrics::counter!("sftpgate_nats_events_retries_total").increment(1);
                attempt += 1;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    fn outgoing(&self, queued: &Queued) -> Option<Outgoing> {
        let id = format!("{}-{}", self.run_id, queued.seq);
        let (event_type, record) = record(queued, &id, &self.server)?;
        Some(Outgoing {
            subject: self.subjects.event(event_type),
            id,
            payload: serde_json::to_vec(&record)
                .expect("event records serialise")
                .into(),
        })
    }
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("stream", &self.config.stream)
            .field("subjects", &self.subjects)
            .finish()
    }
}

/// The event's type (also the subject's tail) and its JSON record, as docs/nats.md
/// describes; `None` for an event kind this version does not know.
fn record(queued: &Queued, id: &str, server: &str) -> Option<(&'static str, Value)> {
    let mut fields = Map::new();
    let (event_type, connection, session): (
        &'static str,
        Option<&ConnectionInfo>,
        Option<SessionId>,
    ) = match &queued.event {
        Event::Login { connection } => {
            fields.insert("method".into(), json!(connection.method.name()));
            if let sftpgate_server::AuthMethod::PublicKey { fingerprint } = &connection.method {
                fields.insert("key_fingerprint".into(), json!(fingerprint));
            }
            ("connection.login", Some(connection), None)
        }
        Event::LoginFailed { peer, user, method } => {
            fields.insert("user".into(), json!(user));
            fields.insert("peer".into(), json!(peer.to_string()));
            fields.insert("method".into(), json!(method));
            ("connection.login_failed", None, None)
        }
        Event::SessionStarted {
            connection,
            session,
        } => ("session.started", Some(connection), Some(*session)),
        Event::SessionEnded {
            connection,
            session,
            reason,
            duration,
            bytes_in,
            bytes_out,
        } => {
            fields.insert("reason".into(), json!(reason.label()));
            fields.insert("reason_detail".into(), json!(reason.to_string()));
            fields.insert(
                "duration_ms".into(),
                json!(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
            );
            fields.insert("bytes_in".into(), json!(bytes_in));
            fields.insert("bytes_out".into(), json!(bytes_out));
            ("session.ended", Some(connection), Some(*session))
        }
        Event::File {
            connection,
            session,
            op,
        } => (
            file_fields(op, &mut fields)?,
            Some(connection),
            Some(*session),
        ),
        _ => {
            tracing::debug!(event = ?queued.event, "event kind without a v1 schema; not published");
            return None;
        }
    };
    let mut record = Map::new();
    record.insert("schema".into(), json!(EVENT_SCHEMA));
    record.insert("id".into(), json!(id));
    record.insert("seq".into(), json!(queued.seq));
    record.insert("type".into(), json!(event_type));
    record.insert(
        "time".into(),
        json!(humantime::format_rfc3339_millis(queued.time).to_string()),
    );
    record.insert("server".into(), json!(server));
    record.insert(
        "connection_id".into(),
        json!(connection.map(|c| c.id.to_string())),
    );
    record.insert("session_id".into(), json!(session.map(|s| s.to_string())));
    if let Some(connection) = connection {
        record.insert("user".into(), json!(connection.user));
        record.insert("peer".into(), json!(connection.peer.to_string()));
    }
    record.extend(fields);
    Some((event_type, Value::Object(record)))
}

fn file_fields(op: &FileOp, fields: &mut Map<String, Value>) -> Option<&'static str> {
    let path = |p: &sftpgate_vfs::VPath| json!(p.to_string());
    Some(match op {
        FileOp::Upload {
            path: p,
            size,
            bytes,
        } => {
            fields.insert("path".into(), path(p));
            fields.insert("size".into(), json!(size));
            fields.insert("bytes".into(), json!(bytes));
            "file.upload"
        }
        FileOp::Download { path: p, bytes } => {
            fields.insert("path".into(), path(p));
            fields.insert("bytes".into(), json!(bytes));
            "file.download"
        }
        FileOp::Remove { path: p } => {
            fields.insert("path".into(), path(p));
            "file.remove"
        }
        FileOp::Rename { from, to } => {
            fields.insert("from".into(), path(from));
            fields.insert("to".into(), path(to));
            "file.rename"
        }
        FileOp::Mkdir { path: p } => {
            fields.insert("path".into(), path(p));
            "file.mkdir"
        }
        FileOp::Rmdir { path: p } => {
            fields.insert("path".into(), path(p));
            "file.rmdir"
        }
        FileOp::Symlink { link, target } => {
            fields.insert("path".into(), path(link));
            fields.insert("target".into(), json!(target));
            "file.symlink"
        }
        FileOp::Hardlink { existing, link } => {
            fields.insert("path".into(), path(link));
            fields.insert("existing".into(), path(existing));
            "file.hardlink"
        }
        FileOp::Setstat { path: p } => {
            fields.insert("path".into(), path(p));
            "file.setstat"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use sftpgate_server::{AuthMethod, ConnectionId};
    use sftpgate_vfs::{EndReason, VPath};

    use super::*;

    fn connection() -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            id: ConnectionId(3),
            peer: "127.0.0.1:5000".parse().unwrap(),
            user: "alice".into(),
            method: AuthMethod::Password,
            client_software: String::new(),
        })
    }

    fn check(event: Event, expected_type: &str, expected: Value) {
        let queued = Queued {
            seq: 7,
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            event,
        };
        let (event_type, record) = record(&queued, "r-7", "gate1").expect("a v1 event");
        assert_eq!(event_type, expected_type);
        let Value::Object(record) = record else {
            panic!("not an object")
        };
        assert_eq!(record["schema"], json!("sftpgate.event.v1"));
        assert_eq!(record["id"], json!("r-7"));
        assert_eq!(record["seq"], json!(7));
        assert_eq!(record["type"], json!(expected_type));
        assert_eq!(record["time"], json!("2023-11-14T22:13:20.123Z"));
        assert_eq!(record["server"], json!("gate1"));
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&record[key], value, "{key} in {record:?}");
        }
    }

    fn p(s: &str) -> VPath {
        VPath::parse(s.as_bytes()).unwrap()
    }

    fn file(op: FileOp) -> Event {
        Event::File {
            connection: connection(),
            session: SessionId(9),
            op,
        }
    }

    #[test]
    fn upload() {
        check(
            file(FileOp::Upload {
                path: p("/a.txt"),
                size: 10,
                bytes: 10,
            }),
            "file.upload",
            json!({"connection_id":"c3","session_id":"s9","user":"alice","peer":"127.0.0.1:5000","path":"/a.txt","size":10,"bytes":10}),
        );
    }

    #[test]
    fn rename() {
        check(
            file(FileOp::Rename {
                from: p("/a"),
                to: p("/b"),
            }),
            "file.rename",
            json!({"from":"/a","to":"/b"}),
        );
    }

    #[test]
    fn symlink() {
        check(
            file(FileOp::Symlink {
                link: p("/l"),
                target: "t".into(),
            }),
            "file.symlink",
            json!({"path":"/l","target":"t"}),
        );
    }

    #[test]
    fn login_failed_has_no_connection() {
        check(
            Event::LoginFailed {
                peer: "10.0.0.1:22".parse().unwrap(),
                user: "mallory".into(),
                method: "password",
            },
            "connection.login_failed",
            json!({"connection_id":null,"session_id":null,"user":"mallory","peer":"10.0.0.1:22","method":"password"}),
        );
    }

    #[test]
    fn login() {
        check(
            Event::Login {
                connection: connection(),
            },
            "connection.login",
            json!({"connection_id":"c3","session_id":null,"method":"password"}),
        );
    }

    #[test]
    fn session_ended() {
        check(
            Event::SessionEnded {
                connection: connection(),
                session: SessionId(9),
                reason: EndReason::ClientEof,
                duration: Duration::from_millis(1500),
                bytes_in: 5,
                bytes_out: 6,
            },
            "session.ended",
            json!({"reason":"client_eof","reason_detail":"client_eof","duration_ms":1500,"bytes_in":5,"bytes_out":6}),
        );
    }
}
