//! [`ReferenceProvisioner`]: the other end of `<prefix>.provision` and `<prefix>.release`,
//! for tests, demos and as a template. It stands in for a container or volume service: an
//! allocation is a directory `<base_dir>/<allocation_id>`, created after a configurable
//! delay and removed on release.
//!
//! It answers `ready` at once when the delay is zero, else `accepted` and publishes
//! `ready` on the request's ready subject once the delay passed. Releases are deduplicated
//! by idempotency key; a release that arrives before its provision request (the request was
//! delayed in a reconnecting client) leaves a tombstone, and the late provision request is
//! refused. Everything it did is counted per allocation.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, Message};
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Subjects;
use crate::error::Error;
use crate::outbox::is_safe_id;
use crate::wire::{
    Backend, Metadata, ProvisionReply, ProvisionRequest, ReadyMessage, ReleaseReply,
    ReleaseRequest, SessionStats,
};

/// How the reference provisioner behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionerConfig {
    /// The servers' `subject_prefix`.
    pub subject_prefix: String,
    /// Where allocation directories are created.
    pub base_dir: PathBuf,
    /// How long setting up an allocation takes; zero answers `ready` at once.
    pub delay: Duration,
    /// Refuse every provision request with this reason.
    pub refuse: Option<String>,
    /// The queue group, so that several provisioners share the work.
    pub queue_group: String,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            subject_prefix: "sftpgate".into(),
            base_dir: "sftpgate-volumes".into(),
            delay: Duration::ZERO,
            refuse: None,
            queue_group: "sftpgate-provisioner".into(),
        }
    }
}

/// What happened to one allocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllocationRecord {
    /// Provision requests received for it.
    pub provision_requests: u32,
    /// Times it was allocated (1 unless something is wrong).
    pub provisions: u32,
    /// Whether its directory exists and `ready` was sent.
    pub ready: bool,
    /// Whether setting it up finished: ready, failed, or skipped because it was released
    /// first.
    pub settled: bool,
    /// Release requests received, duplicates included.
    pub release_requests: u32,
    /// Releases carried out (the first per idempotency key).
    pub releases: u32,
    /// The reason of the release carried out.
    pub reason: Option<String>,
    /// The statistics sent with it.
    pub stats: Option<SessionStats>,
    /// The user of the provision request.
    pub user: String,
    /// The metadata of the provision request.
    pub metadata: Metadata,
    /// The allocation's directory.
    pub dir: PathBuf,
}

/// A running reference provisioner. Dropping it stops it.
pub struct ReferenceProvisioner {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    client: Client,
    base_dir: PathBuf,
    settings: Mutex<Settings>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

struct Settings {
    delay: Duration,
    refuse: Option<String>,
    failing_releases: u32,
}

#[derive(Default)]
struct State {
    allocations: HashMap<String, AllocationRecord>,
    released_keys: HashSet<String>,
}

impl ReferenceProvisioner {
    /// Subscribes on `client` and starts answering. Returns once the subscriptions are
    /// known to the NATS server.
    pub async fn start(client: Client, config: ProvisionerConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(&config.base_dir).map_err(|source| Error::Outbox {
            path: config.base_dir.clone(),
            source,
        })?;
        let subjects = Subjects::new(&config.subject_prefix);
        let subscribe = |subject: String| {
            let client = client.clone();
            let group = config.queue_group.clone();
            async move {
                client
                    .queue_subscribe(subject.clone(), group)
                    .await
                    .map_err(|e| Error::Subscribe {
                        subject,
                        detail: e.to_string(),
                    })
            }
        };
        let mut provisions = subscribe(subjects.provision()).await?;
        let mut releases = subscribe(subjects.release()).await?;
        client.flush().await.map_err(|e| Error::Request {
            subject: subjects.provision(),
            detail: format!("flush: {e}"),
        })?;
        let shared = Arc::new(Shared {
            client,
            base_dir: config.base_dir,
            settings: Mutex::new(Settings {
                delay: config.delay,
                refuse: config.refuse,
                failing_releases: 0,
            }),
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        });
        let tasks = vec![
            tokio::spawn({
                let shared = shared.clone();
                async move {
                    while let Some(message) = provisions.next().await {
                        shared.on_provision(message).await;
                    }
                }
            }),
            tokio::spawn({
                let shared = shared.clone();
                async move {
                    while let Some(message) = releases.next().await {
                        shared.on_release(message).await;
                    }
                }
            }),
        ];
        Ok(ReferenceProvisioner { shared, tasks })
    }

    /// Changes the delay for provision requests from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.settings.lock().expect("settings lock").delay = delay;
    }

    /// Refuses provision requests from now on (`Some(reason)`), or stops refusing.
    pub fn set_refuse(&self, reason: Option<String>) {
        self.shared.settings.lock().expect("settings lock").refuse = reason;
    }

    /// Answers the next `count` release requests with an error (to exercise retries).
    pub fn fail_next_releases(&self, count: u32) {
        self.shared
            .settings
            .lock()
            .expect("settings lock")
            .failing_releases = count;
    }

    /// One allocation's record.
    pub fn allocation(&self, id: &str) -> Option<AllocationRecord> {
        self.shared.lock().allocations.get(id).cloned()
    }

    /// Every allocation's record.
    pub fn allocations(&self) -> HashMap<String, AllocationRecord> {
        self.shared.lock().allocations.clone()
    }

    /// Waits up to `timeout` for `condition` over all records to hold; whether it did.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&HashMap<String, AllocationRecord>) -> bool,
    ) -> bool {
        let mut changed = self.shared.changed.subscribe();
        let check = async {
            loop {
                if condition(&self.shared.lock().allocations) {
                    return;
                }
                if changed.changed().await.is_err() {
                    // The sender lives in `self`; this cannot end first.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, check).await.is_ok()
    }

    /// Stops answering.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for ReferenceProvisioner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for ReferenceProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceProvisioner")
            .field("base_dir", &self.shared.base_dir)
            .finish()
    }
}

/// What a provision request leads to.
enum Next {
    Reply(ProvisionReply),
    ReplyThenReady {
        reply: ProvisionReply,
        id: String,
        ready_subject: String,
        delay: Duration,
    },
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("provisioner state lock")
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    async fn on_provision(self: &Arc<Self>, message: Message) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let next = self.decide(&message.payload);
        self.bump();
        match &next {
            Next::Reply(ProvisionReply::Ready { backend }) => {
                tracing::info!(?backend, "provisioned, ready")
            }
            Next::Reply(ProvisionReply::Refused { reason }) => {
                tracing::info!(%reason, "provision refused")
            }
            Next::Reply(ProvisionReply::Accepted { allocation_id }) => {
                tracing::info!(allocation = %allocation_id, "repeated provision request, still being set up")
            }
            Next::ReplyThenReady { id, delay, .. } => {
                tracing::info!(allocation = %id, ?delay, "provision accepted")
            }
        }
        let reply = match &next {
            Next::Reply(reply) | Next::ReplyThenReady { reply, .. } => reply,
        };
        let payload = serde_json::to_vec(reply).expect("replies serialise");
        if let Err(error) = self.client.publish(reply_to, payload.into()).await {
            tracing::warn!(%error, "cannot answer a provision request");
        }
        if let Next::ReplyThenReady {
            id,
            ready_subject,
            delay,
            ..
        } = next
        {
            let shared = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let message = shared.set_up(&id);
                shared.bump();
                if let Some(message) = message {
                    let payload = serde_json::to_vec(&message).expect("messages serialise");
                    if let Err(error) = shared.client.publish(ready_subject, payload.into()).await {
                        tracing::warn!(%error, allocation = %id, "cannot publish readiness");
                    }
                    let _ = shared.client.flush().await;
                }
            });
        }
    }

    fn decide(&self, payload: &[u8]) -> Next {
        let request = match serde_json::from_slice::<ProvisionRequest>(payload) {
            Ok(request) => request,
            Err(e) => {
                return Next::Reply(ProvisionReply::Refused {
                    reason: format!("invalid provision request: {e}"),
                })
            }
        };
        let id = request.allocation_id;
        if !is_safe_id(&id) {
            return Next::Reply(ProvisionReply::Refused {
                reason: "invalid allocation id".into(),
            });
        }
        let (delay, refuse) = {
            let settings = self.settings.lock().expect("settings lock");
            (settings.delay, settings.refuse.clone())
        };
        let dir = self.base_dir.join(&id);
        let mut state = self.lock();
        let record = state.allocations.entry(id.clone()).or_default();
        record.provision_requests += 1;
        record.user = request.user;
        record.metadata = request.metadata;
        record.dir = dir.clone();
        if record.releases > 0 || record.release_requests > 0 {
            return Next::Reply(ProvisionReply::Refused {
                reason: "allocation already released".into(),
            });
        }
        if record.provisions > 0 {
            // A repeated request: answer what is true now.
            return Next::Reply(if record.ready {
                ProvisionReply::Ready {
                    backend: Backend::Local { path: dir },
                }
            } else {
                ProvisionReply::Accepted { allocation_id: id }
            });
        }
        if let Some(reason) = refuse {
            return Next::Reply(ProvisionReply::Refused { reason });
        }
        record.provisions += 1;
        if delay.is_zero() {
            drop(state);
            return Next::Reply(match self.set_up(&id) {
                Some(ReadyMessage::Ready { backend }) => ProvisionReply::Ready { backend },
                Some(ReadyMessage::Failed { reason }) => ProvisionReply::Refused { reason },
                None => ProvisionReply::Refused {
                    reason: "allocation already released".into(),
                },
            });
        }
        Next::ReplyThenReady {
            reply: ProvisionReply::Accepted {
                allocation_id: id.clone(),
            },
            id,
            ready_subject: request.ready_subject,
            delay,
        }
    }

    /// Creates the allocation's directory unless it was released meanwhile.
    fn set_up(&self, id: &str) -> Option<ReadyMessage> {
        let mut state = self.lock();
        let record = state.allocations.get_mut(id)?;
        record.settled = true;
        if record.release_requests > 0 {
            return None;
        }
        // Under the lock, so that a release cannot run between the check and the creation
        // (a quick local call; a real provisioner would keep state per allocation).
        match std::fs::create_dir_all(&record.dir) {
            Ok(()) => {
                record.ready = true;
                Some(ReadyMessage::Ready {
                    backend: Backend::Local {
                        path: record.dir.clone(),
                    },
                })
            }
            Err(e) => Some(ReadyMessage::Failed {
                reason: format!("cannot create the volume: {e}"),
            }),
        }
    }

    async fn on_release(&self, message: Message) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let reply = self.release(&message.payload);
        self.bump();
        tracing::info!(?reply, "release answered");
        let payload = serde_json::to_vec(&reply).expect("replies serialise");
        if let Err(error) = self.client.publish(reply_to, payload.into()).await {
            tracing::warn!(%error, "cannot answer a release request");
        }
    }

    fn release(&self, payload: &[u8]) -> ReleaseReply {
        let request = match serde_json::from_slice::<ReleaseRequest>(payload) {
            Ok(request) => request,
            Err(e) => {
                return ReleaseReply::Error {
                    reason: format!("invalid release request: {e}"),
                }
            }
        };
        if !is_safe_id(&request.allocation_id) {
            return ReleaseReply::Error {
                reason: "invalid allocation id".into(),
            };
        }
        let dir = self.base_dir.join(&request.allocation_id);
        let mut state = self.lock();
        let State {
            allocations,
            released_keys,
        } = &mut *state;
        let record = allocations
            .entry(request.allocation_id.clone())
            .or_default();
        record.release_requests += 1;
        if released_keys.contains(&request.idempotency_key) {
            return ReleaseReply::AlreadyReleased;
        }
        {
            let mut settings = self.settings.lock().expect("settings lock");
            if settings.failing_releases > 0 {
                settings.failing_releases -= 1;
                return ReleaseReply::Error {
                    reason: "simulated failure".into(),
                };
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return ReleaseReply::Error {
                    reason: format!("cannot remove the volume: {e}"),
                }
            }
        }
        released_keys.insert(request.idempotency_key);
        record.releases += 1;
        record.ready = false;
        record.reason = Some(request.reason);
        record.stats = request.stats;
        ReleaseReply::Released
    }
}
