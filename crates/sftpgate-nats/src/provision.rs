//! [`NatsFactory`]: step 2 of the lifecycle over NATS — provision a session's storage on
//! `<prefix>.provision`, await its readiness on `<prefix>.ready.<allocation_id>`, serve from
//! it, and release it (through the [`ReleaseOutbox`]) exactly once, whether the session
//! ended or never started.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use sftpgate_proto::{FileAttributes, OpenFlags, StatvfsReply, UsersGroupsReply, WriteData};
use sftpgate_server::{Cleanup, ConnectionInfo, HookError, SessionId, SftpContext, SftpFactory};
use sftpgate_vfs::{Dir, EndReason, File, Filesystem, FsError, ReadPart, RenameMode, VPath};

use crate::auth::MetadataSource;
use crate::config::{NatsConfig, ProvisionConfig, Subjects};
use crate::error::Error;
use crate::outbox::{Delivery, ReleaseOutbox};
use crate::request::{new_id, request};
use crate::wire::{
    now_rfc3339, Backend, Metadata, ProvisionReply, ProvisionRequest, ReadyMessage, ReleaseRequest,
    SessionStats, PROTOCOL_VERSION,
};

/// Any error, boxed: what a backend builder returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BuildFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn Filesystem>, BoxError>> + Send>>;
type Builder = Arc<dyn Fn(Backend) -> BuildFuture + Send + Sync>;

/// The [`SftpFactory`] of a NATS-provisioned server.
///
/// For each SFTP session it picks an allocation id, subscribes to
/// `<prefix>.ready.<allocation_id>`, records the allocation in the outbox, and only then
/// sends the provision request, so neither the readiness message nor a crash can slip
/// through. The reply's backend description is turned into a filesystem by the caller's
/// builder (the binary builds a `LocalFs` for `{"kind":"local"}`); the session is served
/// from it, and its exit releases the allocation. An allocation that may exist but never
/// served (a timeout, an invalid reply, a client that left, a builder error) is released too,
/// from the factory's [`Cleanup`].
///
/// ```no_run
/// # use std::sync::Arc;
/// # use sftpgate_nats::*;
/// # use sftpgate_vfs::Filesystem;
/// # async fn example(client: async_nats::Client, config: NatsConfig, outbox: ReleaseOutbox) {
/// let factory = NatsFactory::new(client, &config, outbox, |backend: Backend| async move {
///     match backend {
///         Backend::Local { path } => {
///             // e.g. Ok(Arc::new(sftpgate_fs_local::LocalFs::new(&path)?) as Arc<dyn Filesystem>)
///             # let _ = path; unimplemented!()
///         }
///         other => Err(format!("unsupported backend {}", other.kind()).into()),
///     }
/// });
/// # }
/// ```
#[derive(Clone)]
pub struct NatsFactory {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    subjects: Subjects,
    config: ProvisionConfig,
    outbox: ReleaseOutbox,
    build: Builder,
}

impl NatsFactory {
    /// A factory provisioning on `client` with `config.provision`, releasing through
    /// `outbox`, and turning backend descriptions into filesystems with `build`.
    pub fn new<B, Fut>(client: Client, config: &NatsConfig, outbox: ReleaseOutbox, build: B) -> Self
    where
        B: Fn(Backend) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn Filesystem>, BoxError>> + Send + 'static,
    {
        NatsFactory {
            inner: Arc::new(Inner {
                client,
                subjects: config.subjects(),
                config: config.provision.clone(),
                outbox,
                build: Arc::new(move |backend| Box::pin(build(backend))),
            }),
        }
    }
}

impl std::fmt::Debug for NatsFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsFactory")
            .field("subjects", &self.inner.subjects)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl<S: MetadataSource> SftpFactory<S> for NatsFactory {
    async fn open(
        &self,
        ctx: &SftpContext<S>,
        cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        let started = Instant::now();
        let result = self
            .inner
            .open(
                &ctx.connection,
                ctx.session,
                ctx.channel,
                ctx.state.metadata(),
                cleanup,
            )
            .await;
        let outcome = if result.is_ok() { "ready" } else { "failed" };
        metrics::counter!("sftpgate_nats_provisions_total", "outcome" => outcome).increment(1);
        metrics::histogram!("sftpgate_nats_provision_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }
}

impl Inner {
    async fn open(
        &self,
        connection: &ConnectionInfo,
        session: SessionId,
        channel: u32,
        metadata: Option<&Metadata>,
        cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        let timeout = self.config.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let id = new_id();
        let ready_subject = self.subjects.ready(&id);
        let provision_subject = self.subjects.provision();
        let span = tracing::info_span!("provision", allocation = %id);

        if self.client.connection_state() != async_nats::connection::State::Connected {
            tracing::warn!(parent: &span, "not connected to NATS; provisioning refused");
            return Err(HookError::with_source(
                "storage provisioning is unavailable: the message bus cannot be reached",
                Error::NotConnected {
                    subject: provision_subject,
                },
            ));
        }
        // Subscribed before the request goes out: the readiness message cannot come first.
        let mut ready = self
            .client
            .subscribe(ready_subject.clone())
            .await
            .map_err(|e| {
                HookError::with_source(
                    "storage provisioning is unavailable: the message bus cannot be reached",
                    Error::Subscribe {
                        subject: ready_subject.clone(),
                        detail: e.to_string(),
                    },
                )
            })?;
        let template = ReleaseRequest {
            version: PROTOCOL_VERSION,
            allocation_id: id.clone(),
            idempotency_key: format!("{id}.release"),
            reason: "server_restart".into(),
            reason_detail: "the server stopped before the session ended".into(),
            connection_id: connection.id.to_string(),
            session_id: session.to_string(),
            user: connection.user.clone(),
            stats: None,
            time: now_rfc3339(),
        };
        let allocation = Arc::new(Allocation {
            outbox: self.outbox.clone(),
            template,
            done: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            failure: Mutex::new((
                "provision_cancelled",
                "the session setup was cancelled (client left, setup timeout or shutdown)".into(),
            )),
        });
        cleanup.register({
            let allocation = allocation.clone();
            async move { allocation.release_unstarted().await }
        });
        // Recorded before the request goes out: a crash from here on still releases it. (A
        // cancellation from here on runs the cleanup just registered.)
        if let Err(e) = self.outbox.hold(&allocation.template).await {
            tracing::error!(parent: &span, error = %e, "cannot record the allocation");
            allocation.void().await;
            return Err(HookError::with_source(
                "storage provisioning failed: cannot record the allocation",
                e,
            ));
        }

        let body = ProvisionRequest {
            version: PROTOCOL_VERSION,
            allocation_id: id.clone(),
            ready_subject,
            connection_id: connection.id.to_string(),
            session_id: session.to_string(),
            user: connection.user.clone(),
            peer: connection.peer.to_string(),
            channel,
            metadata: metadata.cloned().unwrap_or_default(),
        };
        let request_timeout = self
            .config
            .request_timeout
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let reply =
            request::<_, ProvisionReply>(&self.client, &provision_subject, &body, request_timeout)
                .await;
        let backend = match reply {
            Ok(ProvisionReply::Ready { backend }) => backend,
            Ok(ProvisionReply::Accepted { allocation_id }) if allocation_id == id => {
                tracing::info!(parent: &span, "provisioning accepted; awaiting readiness");
                match tokio::time::timeout_at(deadline, ready.next()).await {
                    Ok(Some(message)) => {
                        match serde_json::from_slice::<ReadyMessage>(&message.payload) {
                            Ok(ReadyMessage::Ready { backend }) => backend,
                            Ok(ReadyMessage::Failed { reason }) => {
                                allocation.fail("provision_failed", &reason);
                                return Err(HookError::new(format!(
                                    "storage provisioning failed: {reason}"
                                )));
                            }
                            Err(e) => {
                                allocation.fail("provision_failed", &e.to_string());
                                return Err(HookError::with_source(
                                format!("storage provisioning failed: invalid readiness message: {e}"),
                                e,
                            ));
                            }
                        }
                    }
                    Ok(None) => {
                        allocation.fail("provision_failed", "the readiness subscription ended");
                        return Err(HookError::new(
                            "storage provisioning failed: the message bus connection was lost",
                        ));
                    }
                    Err(_elapsed) => {
                        let after = humantime::format_duration(timeout);
                        allocation.fail(
                            "provision_timeout",
                            &format!("storage not ready within the provisioning timeout ({after})"),
                        );
                        tracing::warn!(parent: &span, %after, "storage not ready in time");
                        return Err(HookError::new(format!(
                            "storage provisioning timed out: not ready within {after}"
                        )));
                    }
                }
            }
            Ok(ProvisionReply::Accepted { allocation_id }) => {
                let detail = format!("accepted allocation {allocation_id:?}, requested {id:?}");
                allocation.fail("provision_failed", &detail);
                return Err(HookError::with_source(
                    "storage provisioning failed: invalid answer from the provisioner",
                    Error::BadReply {
                        subject: provision_subject,
                        detail,
                    },
                ));
            }
            Ok(ProvisionReply::Refused { reason }) => {
                // Nothing was allocated: nothing to release.
                allocation.void().await;
                tracing::info!(parent: &span, %reason, "provisioning refused");
                return Err(HookError::new(format!(
                    "storage provisioning refused: {reason}"
                )));
            }
            Err(error @ (Error::NotConnected { .. } | Error::NoResponders { .. })) => {
                // The request reached nobody: nothing was allocated.
                allocation.void().await;
                tracing::warn!(parent: &span, %error, "provisioning unavailable");
                return Err(HookError::with_source(
                    "storage provisioning is unavailable: no provisioner is answering",
                    error,
                ));
            }
            Err(error @ Error::Timeout { .. }) => {
                let after = humantime::format_duration(request_timeout);
                allocation.fail("provision_timeout", &error.to_string());
                tracing::warn!(parent: &span, %error, "provisioning request timed out");
                return Err(HookError::with_source(
                    format!("storage provisioning timed out: no answer within {after}"),
                    error,
                ));
            }
            Err(error @ Error::BadReply { .. }) => {
                allocation.fail("provision_failed", &error.to_string());
                tracing::warn!(parent: &span, %error, "invalid provisioning reply");
                let detail = match &error {
                    Error::BadReply { detail, .. } => detail.clone(),
                    _ => String::new(),
                };
                return Err(HookError::with_source(
                    format!("storage provisioning failed: invalid answer from the provisioner: {detail}"),
                    error,
                ));
            }
            Err(error) => {
                allocation.fail("provision_failed", &error.to_string());
                tracing::warn!(parent: &span, %error, "provisioning request failed");
                return Err(HookError::with_source(
                    "storage provisioning failed: the message bus request failed",
                    error,
                ));
            }
        };
        drop(ready);
        let kind = backend.kind();
        let inner = match (self.build)(backend).await {
            Ok(fs) => fs,
            Err(error) => {
                allocation.fail("provision_failed", &format!("backend unusable: {error}"));
                tracing::warn!(parent: &span, %error, kind, "provisioned backend unusable");
                return Err(HookError::with_source(
                    "storage provisioning failed: the provisioned storage cannot be used",
                    error,
                ));
            }
        };
        allocation.serving.store(true, Ordering::SeqCst);
        tracing::info!(parent: &span, kind, "storage ready");
        Ok(Arc::new(ProvisionedFs {
            inner,
            allocation,
            stats: Arc::new(Counters::default()),
            started: Instant::now(),
        }))
    }
}

/// One allocation and its release, sent exactly once: by the session's exit, by the
/// factory's cleanup if the session never started, or (a last resort, if both were lost)
/// when the last reference is dropped.
struct Allocation {
    outbox: ReleaseOutbox,
    template: ReleaseRequest,
    /// Released or voided.
    done: AtomicBool,
    /// The factory returned the filesystem: its exit owns the release.
    serving: AtomicBool,
    /// The reason the factory's cleanup reports.
    failure: Mutex<(&'static str, String)>,
}

impl Allocation {
    fn fail(&self, reason: &'static str, detail: &str) {
        *self.failure.lock().expect("failure lock") = (reason, detail.to_owned());
    }

    async fn release_unstarted(&self) {
        if self.serving.load(Ordering::SeqCst) {
            return;
        }
        let (reason, detail) = self.failure.lock().expect("failure lock").clone();
        self.release(reason, detail, None).await;
    }

    async fn release(&self, reason: &str, detail: String, stats: Option<SessionStats>) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        let request = self.request(reason, detail, stats);
        let id = request.allocation_id.clone();
        match self.outbox.release(request).await {
            Ok(Delivery::Acknowledged) => {
                tracing::info!(allocation = %id, reason, "allocation released")
            }
            Ok(Delivery::Queued) => {
                tracing::warn!(allocation = %id, reason, "release queued in the outbox")
            }
            Err(error) => tracing::error!(allocation = %id, reason, %error, "release lost"),
        }
    }

    fn request(&self, reason: &str, detail: String, stats: Option<SessionStats>) -> ReleaseRequest {
        ReleaseRequest {
            reason: reason.to_owned(),
            reason_detail: detail,
            stats,
            time: now_rfc3339(),
            ..self.template.clone()
        }
    }

    async fn void(&self) {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.outbox.forget(&self.template.allocation_id).await;
        }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        // Neither the exit nor the cleanup ran (a broken caller). Release it anyway; failing
        // that, the outbox's `held` entry releases it at the next start.
        let request = self.request(
            "aborted",
            "the session was dropped without an exit".into(),
            None,
        );
        let outbox = self.outbox.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            tracing::error!(allocation = %request.allocation_id, "allocation dropped unreleased; releasing it");
            drop(runtime.spawn(async move {
                let _ = outbox.release(request).await;
            }));
        }
    }
}

#[derive(Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// The session's filesystem: the backend, counting file bytes, whose exit releases the
/// allocation after the backend's own exit.
struct ProvisionedFs {
    inner: Arc<dyn Filesystem>,
    allocation: Arc<Allocation>,
    stats: Arc<Counters>,
    started: Instant,
}

#[async_trait::async_trait]
impl Filesystem for ProvisionedFs {
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        let file = self.inner.open(path, flags, attrs).await?;
        Ok(Box::new(CountingFile {
            inner: file,
            stats: self.stats.clone(),
        }))
    }
    async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError> {
        self.inner.opendir(path).await
    }
    async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.inner.stat(path).await
    }
    async fn lstat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.inner.lstat(path).await
    }
    async fn setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.setstat(path, attrs).await
    }
    async fn lsetstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.lsetstat(path, attrs).await
    }
    async fn remove(&self, path: &VPath) -> Result<(), FsError> {
        self.inner.remove(path).await
    }
    async fn mkdir(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.mkdir(path, attrs).await
    }
    async fn rmdir(&self, path: &VPath) -> Result<(), FsError> {
        self.inner.rmdir(path).await
    }
    async fn rename(&self, from: &VPath, to: &VPath, mode: RenameMode) -> Result<(), FsError> {
        self.inner.rename(from, to, mode).await
    }
    async fn readlink(&self, path: &VPath) -> Result<Bytes, FsError> {
        self.inner.readlink(path).await
    }
    async fn symlink(&self, target: &[u8], link: &VPath) -> Result<(), FsError> {
        self.inner.symlink(target, link).await
    }
    async fn hardlink(&self, existing: &VPath, new: &VPath) -> Result<(), FsError> {
        self.inner.hardlink(existing, new).await
    }
    async fn realpath(&self, path: &VPath) -> Result<VPath, FsError> {
        self.inner.realpath(path).await
    }
    async fn statvfs(&self, path: &VPath) -> Result<StatvfsReply, FsError> {
        self.inner.statvfs(path).await
    }
    async fn names_by_id(&self, uids: &[u32], gids: &[u32]) -> Result<UsersGroupsReply, FsError> {
        self.inner.names_by_id(uids, gids).await
    }
    async fn exit(&self, reason: &EndReason) {
        self.inner.exit(reason).await;
        let stats = SessionStats {
            bytes_in: self.stats.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.stats.bytes_out.load(Ordering::Relaxed),
            duration_ms: duration_ms(self.started.elapsed()),
        };
        self.allocation
            .release(reason.label(), reason.to_string(), Some(stats))
            .await;
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An open file whose reads and writes are counted for the release's statistics.
struct CountingFile {
    inner: Box<dyn File>,
    stats: Arc<Counters>,
}

#[async_trait::async_trait]
impl File for CountingFile {
    async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
        let n = self.inner.read(offset, len, buf).await?;
        self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn read_len_hint(&self, offset: u64, len: u32) -> Option<u32> {
        self.inner.read_len_hint(offset, len)
    }
    fn reads_from_memory(&self) -> bool {
        self.inner.reads_from_memory()
    }
    async fn read_parts(&self, offset: u64, parts: &mut [ReadPart]) -> Result<usize, FsError> {
        let n = self.inner.read_parts(offset, parts).await?;
        self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        let len = data.len() as u64;
        self.inner.write(offset, data).await?;
        self.stats.bytes_in.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
    async fn write_data(&self, offset: u64, data: WriteData) -> Result<(), FsError> {
        let len = data.len() as u64;
        self.inner.write_data(offset, data).await?;
        self.stats.bytes_in.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
    async fn stat(&self) -> Result<FileAttributes, FsError> {
        self.inner.stat().await
    }
    async fn setstat(&self, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.setstat(attrs).await
    }
    async fn sync(&self) -> Result<(), FsError> {
        self.inner.sync().await
    }
    async fn statvfs(&self) -> Result<StatvfsReply, FsError> {
        self.inner.statvfs().await
    }
    async fn close(&self) -> Result<(), FsError> {
        self.inner.close().await
    }
    async fn abandon(&self) -> Result<(), FsError> {
        self.inner.abandon().await
    }
}
