//! [`ReleaseOutbox`]: releases that survive NATS being down and the server restarting.
//!
//! Every allocation gets a file `<outbox_dir>/<allocation_id>.json` before its provision
//! request goes out (state `held`: the session may still use it). When the session ends the
//! file is rewritten with the real release (state `release`), and the release is sent on
//! `<prefix>.release` until a reply acknowledges it; only then is the file removed. A file
//! still `held` when an outbox opens belongs to a server that stopped before its session
//! ended: it becomes a release with reason `server_restart`. Files are written atomically
//! (temporary file, fsync, rename, fsync of the directory).
//!
//! The same release may therefore be sent more than once (a reply lost, a crash between the
//! acknowledgement and the removal): it always carries the same idempotency key, and the
//! receiver treats a repeated key as done. Within one process an allocation is never sent
//! by two tasks at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{backoff, NatsConfig, ReleaseConfig, Subjects};
use crate::error::Error;
use crate::request;
use crate::wire::{now_rfc3339, ReleaseReply, ReleaseRequest};

/// How often the background task looks at the connection while releases wait for NATS.
const RECONNECT_POLL: Duration = Duration::from_millis(100);

/// The durable queue of releases and the sender that drains it. Cheap to clone; all clones
/// share one directory. Spawn [`ReleaseOutbox::run`] once per process: it delivers what the
/// sessions' exits could not (NATS down, no acknowledgement in time) and what a previous run
/// of the server left behind.
#[derive(Clone)]
pub struct ReleaseOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    client: Client,
    subject: String,
    config: ReleaseConfig,
    /// Allocation ids being sent by some task of this process right now.
    claimed: Mutex<HashSet<String>>,
    wake: Notify,
}

/// What became of a release handed to [`ReleaseOutbox::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Delivery {
    /// Acknowledged by the receiver; nothing is left in the outbox.
    Acknowledged,
    /// Kept in the outbox; [`ReleaseOutbox::run`] delivers it.
    Queued,
}

/// One outbox file.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    state: EntryState,
    request: ReleaseRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EntryState {
    /// Allocated, session not over: `request` is what to send should this server stop first.
    Held,
    /// To be sent.
    Release,
}

impl ReleaseOutbox {
    /// Opens (creating it if needed) the outbox directory `config.release.outbox_dir`,
    /// turning what a previous run left `held` into releases. Nothing is sent until
    /// [`ReleaseOutbox::run`] is spawned or a session releases.
    pub async fn open(client: Client, config: &NatsConfig) -> Result<Self, Error> {
        let dir = config.release.outbox_dir.clone();
        let outbox = ReleaseOutbox {
            inner: Arc::new(Inner {
                dir: dir.clone(),
                client,
                subject: Subjects::new(&config.subject_prefix).release(),
                config: config.release.clone(),
                claimed: Mutex::new(HashSet::new()),
                wake: Notify::new(),
            }),
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| Error::Outbox {
                path: dir.clone(),
                source,
            })?;
        for (_, entry) in outbox.scan_files(true).await? {
            if entry.state == EntryState::Held {
                let mut request = entry.request;
                tracing::warn!(
                    allocation = %request.allocation_id,
                    session = %request.session_id,
                    "allocation of a previous run still held; releasing it"
                );
                request.reason = "server_restart".into();
                request.reason_detail = "the server stopped before the session ended".into();
                request.time = now_rfc3339();
                outbox
                    .write(&Entry {
                        state: EntryState::Release,
                        request,
                    })
                    .await?;
            }
        }
        Ok(outbox)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The releases waiting to be delivered (not those of live sessions).
    pub async fn pending(&self) -> Result<Vec<ReleaseRequest>, Error> {
        Ok(self
            .scan()
            .await?
            .into_iter()
            .filter(|(_, e)| e.state == EntryState::Release)
            .map(|(_, e)| e.request)
            .collect())
    }

    /// Records that `request.allocation_id` is allocated (or may be: its provision request
    /// is about to go out), with the release to send should the server stop before the
    /// session ends.
    pub async fn hold(&self, request: &ReleaseRequest) -> Result<(), Error> {
        self.write(&Entry {
            state: EntryState::Held,
            request: request.clone(),
        })
        .await
    }

    /// Forgets a held allocation that certainly does not exist (its provision request
    /// reached nobody, or was refused).
    pub async fn forget(&self, allocation_id: &str) {
        self.remove(allocation_id).await;
    }

    /// Releases an allocation: records the release durably, then sends it until it is
    /// acknowledged or [`ReleaseConfig::exit_wait`] passed (at once [`Delivery::Queued`] when
    /// NATS is not connected). What is not acknowledged stays for [`ReleaseOutbox::run`].
    ///
    /// Fails only when the release could neither be recorded nor delivered.
    pub async fn release(&self, request: ReleaseRequest) -> Result<Delivery, Error> {
        let id = request.allocation_id.clone();
        let persisted = self
            .write(&Entry {
                state: EntryState::Release,
                request: request.clone(),
            })
            .await;
        if let Err(error) = &persisted {
            metrics::counter!("sftpgate_nats_outbox_errors_total").increment(1);
            tracing::error!(allocation = %id, %error, "cannot record the release; sending it without a durable copy");
        }
        let deadline = Instant::now() + self.inner.config.exit_wait;
        let delivered = match self.claim(&id) {
            // The background task is sending it right now.
            None => false,
            Some(_claim) => {
                let mut attempt = 0;
                loop {
                    if self.connected() {
                        match self.deliver(&request).await {
                            Ok(()) => {
                                self.remove(&id).await;
                                break true;
                            }
                            Err(error) => {
                                tracing::info!(allocation = %id, attempt, %error, "release not acknowledged; retrying");
                            }
                        }
                    } else {
                        break false;
                    }
                    let pause = self.pause(attempt);
                    if Instant::now() + pause >= deadline {
                        break false;
                    }
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
            }
        };
        if delivered {
            return Ok(Delivery::Acknowledged);
        }
        match persisted {
            Ok(()) => {
                tracing::warn!(allocation = %id, "release not acknowledged yet; kept in the outbox");
                self.inner.wake.notify_one();
                Ok(Delivery::Queued)
            }
            Err(error) => {
                metrics::counter!("sftpgate_nats_releases_total", "outcome" => "lost").increment(1);
                tracing::error!(allocation = %id, %error, "release LOST: neither recorded nor acknowledged");
                Err(error)
            }
        }
    }

    /// Delivers every pending release, retrying each with exponential backoff (from
    /// `backoff_initial` to `backoff_max`, at once when NATS comes back), until `shutdown`
    /// is cancelled. What is left then stays on disk for the next run.
    pub fn run(&self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let outbox = self.clone();
        async move { outbox.drain_loop(shutdown).await }
    }

    async fn drain_loop(self, shutdown: CancellationToken) {
        // allocation id → (failed attempts, when to try next)
        let mut retries: HashMap<String, (u32, Instant)> = HashMap::new();
        let mut was_connected = self.connected();
        loop {
            let connected = self.connected();
            if connected && !was_connected {
                // NATS is back: what waited for it goes now.
                retries.clear();
            }
            was_connected = connected;
            let pending = match self.scan().await {
                Ok(entries) => entries
                    .into_iter()
                    .filter(|(_, e)| e.state == EntryState::Release)
                    .map(|(_, e)| e.request)
                    .collect::<Vec<_>>(),
                Err(error) => {
                    tracing::error!(%error, "cannot read the release outbox");
                    Vec::new()
                }
            };
            retries.retain(|id, _| pending.iter().any(|r| &r.allocation_id == id));
            let mut left = 0usize;
            for request in &pending {
                if shutdown.is_cancelled() {
                    return;
                }
                let id = &request.allocation_id;
                let now = Instant::now();
                let due = retries.get(id).is_none_or(|(_, at)| *at <= now);
                if !connected || !due {
                    left += 1;
                    continue;
                }
                let Some(_claim) = self.claim(id) else {
                    left += 1;
                    continue;
                };
                // Delivered and removed by a session's exit meanwhile?
                if !self.path(id).exists() {
                    continue;
                }
                let delivered = tokio::select! {
                    r = self.deliver(request) => r,
                    () = shutdown.cancelled() => return,
                };
                match delivered {
                    Ok(()) => {
                        self.remove(id).await;
                        retries.remove(id);
                        tracing::info!(allocation = %id, "queued release delivered");
                    }
                    Err(error) => {
                        let attempts = retries.get(id).map_or(0, |(n, _)| *n);
                        let pause = self.pause(attempts);
                        tracing::warn!(allocation = %id, attempts = attempts + 1, %error, retry_in = ?pause, "queued release not acknowledged");
                        retries.insert(id.clone(), (attempts + 1, Instant::now() + pause));
                        left += 1;
                    }
                }
            }
            metrics::gauge!("sftpgate_nats_releases_pending").set(left as f64);
            let next = if left == 0 {
                // Nothing to do; a release arriving wakes us, a periodic look catches the rest.
                Instant::now() + self.inner.config.backoff_max
            } else if !self.connected() {
                Instant::now() + RECONNECT_POLL
            } else {
                retries
                    .values()
                    .map(|(_, at)| *at)
                    .min()
                    .unwrap_or_else(Instant::now)
                    .max(Instant::now() + Duration::from_millis(10))
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    fn connected(&self) -> bool {
        self.inner.client.connection_state() == State::Connected
    }

    fn pause(&self, attempt: u32) -> Duration {
        backoff(
            self.inner.config.backoff_initial,
            self.inner.config.backoff_max,
            attempt,
        )
    }

    /// One attempt: sent, and acknowledged by `released` or `already_released`.
    async fn deliver(&self, request: &ReleaseRequest) -> Result<(), Error> {
        let reply = request::request::<_, ReleaseReply>(
            &self.inner.client,
            &self.inner.subject,
            request,
            self.inner.config.request_timeout,
        )
        .await;
        match reply {
            Ok(ReleaseReply::Released) => {
                metrics::counter!("sftpgate_nats_releases_total", "outcome" => "released")
                    .increment(1);
                Ok(())
            }
            Ok(ReleaseReply::AlreadyReleased) => {
                metrics::counter!("sftpgate_nats_releases_total", "outcome" => "already_released")
                    .increment(1);
                Ok(())
            }
            Ok(ReleaseReply::Error { reason }) => Err(Error::Request {
                subject: self.inner.subject.clone(),
                detail: format!("the provisioner could not release: {reason}"),
            }),
            Err(error) => Err(error),
        }
    }

    fn claim(&self, id: &str) -> Option<Claim<'_>> {
        let mut claimed = self.inner.claimed.lock().expect("claim set lock");
        claimed.insert(id.to_owned()).then(|| Claim {
            outbox: self,
            id: id.to_owned(),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.inner.dir.join(format!("{id}.json"))
    }

    async fn write(&self, entry: &Entry) -> Result<(), Error> {
        let id = &entry.request.allocation_id;
        if !is_safe_id(id) {
            return Err(Error::Config(format!(
                "allocation id {id:?} is not a safe file name"
            )));
        }
        let dir = self.inner.dir.clone();
        let path = self.path(id);
        let tmp = dir.join(format!(".{id}.{:08x}.tmp", rand::random::<u32>()));
        let bytes = serde_json::to_vec_pretty(entry).expect("outbox entries serialise");
        let target = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &target)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .expect("outbox write task does not panic")
        .map_err(|source| Error::Outbox { path, source })
    }

    async fn remove(&self, id: &str) {
        let path = self.path(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Sent again after a restart, as a duplicate the receiver ignores.
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot remove a delivered release")
            }
        }
    }

    /// Every outbox file, parsed. Unreadable files are logged and skipped (left in place for
    /// a person to look at).
    async fn scan(&self) -> Result<Vec<(PathBuf, Entry)>, Error> {
        self.scan_files(false).await
    }

    /// [`ReleaseOutbox::scan`], removing temporary files when `remove_tmp` (only when opening,
    /// before this process writes any).
    async fn scan_files(&self, remove_tmp: bool) -> Result<Vec<(PathBuf, Entry)>, Error> {
        let dir = self.inner.dir.clone();
        let outbox_err = |source| Error::Outbox {
            path: dir.clone(),
            source,
        };
        let mut read = tokio::fs::read_dir(&dir).await.map_err(outbox_err)?;
        let mut out = Vec::new();
        while let Some(item) = read.next_entry().await.map_err(outbox_err)? {
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write in progress, or one a crash interrupted (the rename never
                // happened, so the previous state of that entry stands).
                if remove_tmp {
                    let _ = tokio::fs::remove_file(&path).await;
                }
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                // Removed by a concurrent delivery.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(Error::Outbox { path, source }),
            };
            match serde_json::from_slice::<Entry>(&bytes) {
                Ok(entry) => out.push((path, entry)),
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "unreadable outbox file skipped");
                }
            }
        }
        out.sort_by(|a, b| a.1.request.time.cmp(&b.1.request.time));
        Ok(out)
    }
}

impl std::fmt::Debug for ReleaseOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseOutbox")
            .field("dir", &self.inner.dir)
            .field("subject", &self.inner.subject)
            .finish()
    }
}

/// This process is sending one allocation's release; dropped when done.
struct Claim<'a> {
    outbox: &'a ReleaseOutbox,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.outbox
            .inner
            .claimed
            .lock()
            .expect("claim set lock")
            .remove(&self.id);
    }
}

/// Whether `id` can be a file name and a subject token: `[A-Za-z0-9_-]{1,128}`.
pub(crate) fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids() {
        assert!(is_safe_id("0123abcdef"));
        assert!(is_safe_id("a-b_c"));
        assert!(!is_safe_id(""));
        assert!(!is_safe_id("../x"));
        assert!(!is_safe_id("a.b"));
        assert!(!is_safe_id("a b"));
        assert!(!is_safe_id(&"a".repeat(129)));
    }
}
