//! One SFTP session: an `sftp` subsystem channel from the factory call to the exit.
//!
//! The session task owns the channel. It runs the factory (step 2) while it watches the
//! channel for the client leaving, arms the [`ExitGuard`] once the factory returned, then
//! serves: a reader that keeps draining the channel and decodes requests, one task per
//! request (ordered by the [`Sequencer`], bounded by semaphores; a small request that
//! completes in its first poll, which the reader makes itself, needs none: see
//! [`runs_inline`]), and a writer that sends the replies as they complete. Whatever ends
//! the session, it drains, closes every handle, closes the channel and awaits the exit
//! (step 3) exactly once.
//!
//! Backpressure: russh adjusts the SSH window as data arrives and blocks the whole
//! connection's event loop when a channel's queue is full, so a reader that stops draining
//! could stall the window updates that its own replies wait for. The reader therefore only
//! stops for budgets that complete without the client's help: the number of outstanding
//! requests and the bytes of WRITE data not yet stored. READ reply bytes are budgeted inside
//! the request tasks, which the reader never waits for: `max_pending_read_bytes` deep for
//! files on a device (read ahead to hide its latency), `max_pending_memory_read_bytes` for
//! files in memory (read just ahead of what can be sent, while the data is still in cache).

mod dispatch;
mod handles;
mod request_metrics;
mod sequencer;
pub(crate) mod transport;
mod writer;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use russh::server::Msg;
use russh::Channel;
use sftpgate_proto::{
    encode_status, DecodeError, Decoder, Request, RequestInput, Response, StatusCode, SFTP_VERSION,
};
use sftpgate_vfs::{EndReason, Filesystem, VPath};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub(crate) use handles::HandleTable;

use crate::config::{ServerConfig, CHANNEL_MAX_PACKET};
use crate::events::{Event, EventSink};
use crate::hooks::{Cleanup, SftpContext, SftpFactory};
use crate::lifecycle::{panic_message, Exit, ExitGuard};
use dispatch::Dispatcher;
use request_metrics::{RequestOp, SessionMetrics};
use sequencer::{Access, Done, Sequencer};
use transport::{ChannelInlet, ChannelOutlet, Inlet, Outlet};
use writer::Outgoing;

/// Bytes a client may send before its session has started (the factory is still running).
/// A real client sends one INIT packet and waits.
const MAX_EARLY_BYTES: usize = 1 << 20;
/// Least room the input buffer grows by for an incomplete frame (see
/// `Decoder::growing_by`): four SSH messages of 32 KiB. A WRITE waiting to be stored keeps
/// its buffer alive, so this bounds what a session's pending WRITEs can pin: at most
/// `max_outstanding` buffers of (frame + this) bytes, as the frame-sized buffers before did
/// with (frame + one message).
const INPUT_GROWTH: usize = 128 * 1024;
/// How long a session whose channel vanished waits for the connection to say why.
pub(crate) const END_REASON_WAIT: Duration = Duration::from_secs(5);
/// How long in-flight requests get to finish once the session ends.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// At most this long on shutdown (see `Timeouts::shutdown_drain`).
const SHUTDOWN_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Everything one session task over an SSH channel needs.
pub(crate) struct SessionParams<S> {
    pub(crate) core: SessionCore<S>,
    pub(crate) channel: Channel<Msg>,
    /// Set by the connection task when the SSH connection has ended, with the reason.
    pub(crate) connection_end: watch::Receiver<Option<EndReason>>,
}

/// What a session needs whatever carries its bytes.
pub(crate) struct SessionCore<S> {
    pub(crate) ctx: SftpContext<S>,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) events: Arc<dyn EventSink>,
    /// Where relative paths start.
    pub(crate) start_dir: VPath,
}

/// Runs one session over an SSH channel, from the factory to the exit.
pub(crate) async fn run<S, F>(factory: Arc<F>, params: SessionParams<S>)
where
    S: Send + Sync + 'static,
    F: SftpFactory<S>,
{
    let (reader, writer) = params.channel.split();
    // The client's maximum packet size: russh has no getter for it, but nothing has been
    // sent on the channel yet, so the window is whole and does not limit this.
    let packet = Some(writer.writable_packet_size().await).filter(|&m| m > 0);
    let inlet = ChannelInlet {
        reader,
        connection_end: params.connection_end,
    };
    run_session(
        factory,
        params.core,
        inlet,
        ChannelOutlet { writer, packet },
    )
    .await;
}

/// Runs one session from the factory to the exit, over any transport. Panics are caught and
/// logged; the exit still runs (from the guard).
pub(crate) async fn run_session<S, F, I, O>(
    factory: Arc<F>,
    core: SessionCore<S>,
    inlet: I,
    outlet: O,
) -> Option<EndReason>
where
    S: Send + Sync + 'static,
    F: SftpFactory<S>,
    I: Inlet,
    O: Outlet,
{
    let session = core.ctx.session;
    let run = AssertUnwindSafe(run_inner(factory, core, inlet, outlet)).catch_unwind();
    match run.await {
        Ok(reason) => reason,
        Err(panic) => {
            metrics::counter!("sftpgate_session_panics_total").increment(1);
            tracing::error!(
                %session,
                panic = panic_message(&*panic),
                "SFTP session panicked; its exit runs as aborted"
            );
            Some(EndReason::Aborted)
        }
    }
}

/// Returns why the session ended, or `None` when it never started (factory failed).
async fn run_inner<S, F, I, O>(
    factory: Arc<F>,
    core: SessionCore<S>,
    mut inlet: I,
    outlet: O,
) -> Option<EndReason>
where
    S: Send + Sync + 'static,
    F: SftpFactory<S>,
    I: Inlet,
    O: Outlet,
{
    let SessionCore {
        ctx,
        config,
        shutdown,
        tracker,
        events,
        start_dir,
    } = core;
    let outlet = Arc::new(outlet);
    let timeouts = &config.timeouts;

    // Step 2: the factory, cancelled if the client leaves or the server shuts down.
    // Input comes in channel messages of at most CHANNEL_MAX_PACKET bytes (the SSH
    // server's; a stream's reads are no bigger than the room reserved).
    let decoder = Decoder::with_max_packet(config.limits.max_packet)
        .reserving_ahead(CHANNEL_MAX_PACKET as usize)
        .growing_by(INPUT_GROWTH);
    let mut early = inlet.input(decoder);
    let mut cleanup = Cleanup::tracked(tracker.clone());
    let started = Instant::now();
    let outcome = {
        // A panicking factory is a failed one: its cleanups run and the client is told.
        let open = tokio::time::timeout(
            timeouts.sftp_factory,
            AssertUnwindSafe(factory.open(&ctx, &mut cleanup))
                .catch_unwind()
                .map(|result| {
                    result.unwrap_or_else(|panic| {
                        metrics::counter!("sftpgate_session_panics_total").increment(1);
                        tracing::error!(
                            session = %ctx.session,
                            panic = panic_message(&*panic),
                            "SFTP factory panicked"
                        );
                        Err(crate::HookError::new("internal error in session setup"))
                    })
                }),
        );
        tokio::pin!(open);
        loop {
            tokio::select! {
                result = &mut open => break FactoryOutcome::Finished(result),
                () = shutdown.cancelled() => break FactoryOutcome::Left(EndReason::Shutdown),
                end = inlet.recv_into(&mut early), if early.buffered() < MAX_EARLY_BYTES => {
                    if let Some(reason) = end {
                        break FactoryOutcome::Left(reason);
                    }
                }
            }
        }
    };
    let elapsed = started.elapsed();
    let fs = match outcome {
        FactoryOutcome::Finished(Ok(Ok(fs))) => {
            cleanup.disarm();
            metrics::histogram!("sftpgate_lifecycle_hook_seconds", "step" => "sftp_factory")
                .record(elapsed.as_secs_f64());
            tracing::info!(?elapsed, "SFTP session started");
            fs
        }
        FactoryOutcome::Finished(Ok(Err(error))) => {
            metrics::counter!("sftpgate_lifecycle_hook_failures_total", "step" => "sftp_factory")
                .increment(1);
            tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "SFTP factory failed");
            undo(cleanup, timeouts.exit).await;
            outlet
                .refuse(&format!(
                    "could not start the SFTP session: {}",
                    error.message()
                ))
                .await;
            return None;
        }
        FactoryOutcome::Finished(Err(_elapsed)) => {
            metrics::counter!("sftpgate_lifecycle_hook_timeouts_total", "step" => "sftp_factory")
                .increment(1);
            tracing::warn!(timeout = ?timeouts.sftp_factory, "SFTP factory timed out");
            undo(cleanup, timeouts.exit).await;
            let secs = timeouts.sftp_factory.as_secs_f64();
            outlet
                .refuse(&format!(
                    "could not start the SFTP session: setup timed out after {secs} s"
                ))
                .await;
            return None;
        }
        FactoryOutcome::Left(reason) => {
            tracing::info!(reason = %reason, "session ended while the SFTP factory was running; factory cancelled");
            undo(cleanup, timeouts.exit).await;
            outlet.finish().await;
            return None;
        }
    };

    // Step 3 is armed from here on: every path below ends in exactly one exit.
    let handles = Arc::new(HandleTable::new(config.limits.max_handles));
    let guard = ExitGuard::new(
        Exit {
            fs: fs.clone(),
            handles: handles.clone(),
            timeout: timeouts.exit,
            span: tracing::Span::current(),
        },
        tracker,
    );
    metrics::gauge!("sftpgate_sftp_sessions_open").increment(1.0);
    let served_since = Instant::now();
    events.emit(Event::SessionStarted {
        connection: ctx.connection.clone(),
        session: ctx.session,
    });
    let dispatcher = Arc::new(Dispatcher {
        fs,
        handles: handles.clone(),
        home: start_dir,
        user: ctx.connection.user.clone(),
        limits: config.limits.clone(),
        policy: config.policy.clone(),
        request_timeout: timeouts.request,
        events: events.clone(),
        connection: ctx.connection.clone(),
        session: ctx.session,
        stats: Default::default(),
        metrics: SessionMetrics::register(),
        // As the writer packs replies (`writer::run`).
        packet: outlet.packet_size().filter(|&m| m > writer::REPLY_HEADROOM),
    });
    let serving = Serving {
        dispatcher: dispatcher.clone(),
        config: config.clone(),
        shutdown,
    };
    let reason = serving.serve(&mut inlet, &outlet, early).await;
    tracing::info!(reason = %reason, open_handles = handles.len(), "SFTP session ending");

    // Close what the client left open before telling it the stream is done, then let the
    // client go and run the exit.
    if tokio::time::timeout(timeouts.exit, handles.close_all())
        .await
        .is_err()
    {
        tracing::error!("closing open handles timed out");
    }
    if !matches!(reason, EndReason::ConnectionLost { .. }) {
        outlet.finish().await;
    }
    let exit_started = Instant::now();
    guard.close(reason.clone()).await;
    metrics::gauge!("sftpgate_sftp_sessions_open").decrement(1.0);
    let (bytes_in, bytes_out) = dispatcher.stats.totals();
    let duration = served_since.elapsed();
    metrics::histogram!("sftpgate_sftp_session_duration_seconds").record(duration.as_secs_f64());
    tracing::info!(
        user = %ctx.connection.user,
        peer = %ctx.connection.peer,
        reason = %reason,
        ?duration,
        bytes_in,
        bytes_out,
        exit_latency = ?exit_started.elapsed(),
        "session ended"
    );
    events.emit(Event::SessionEnded {
        connection: ctx.connection.clone(),
        session: ctx.session,
        reason: reason.clone(),
        duration,
        bytes_in,
        bytes_out,
    });
    Some(reason)
}

enum FactoryOutcome {
    Finished(Result<Result<Arc<dyn Filesystem>, crate::HookError>, tokio::time::error::Elapsed>),
    Left(EndReason),
}

/// Runs a failed or cancelled factory's cleanups, bounded by the exit timeout.
async fn undo(cleanup: Cleanup, limit: Duration) {
    if cleanup.is_empty() {
        return;
    }
    let count = cleanup.len();
    match tokio::time::timeout(limit, cleanup.run()).await {
        Ok(()) => tracing::info!(count, "factory cleanups done"),
        Err(_) => tracing::error!(
            count,
            ?limit,
            "factory cleanups timed out and were abandoned"
        ),
    }
}

/// The serving phase of one session.
struct Serving {
    dispatcher: Arc<Dispatcher>,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
}

/// The budgets of one session (see the module docs).
struct Budgets {
    outstanding: Arc<Semaphore>,
    write_bytes: Arc<Semaphore>,
    read_bytes: Arc<Semaphore>,
    /// READ budget of files in memory (`Limits::max_pending_memory_read_bytes`).
    memory_read_bytes: Arc<Semaphore>,
    executing: Arc<Semaphore>,
    max_read: u32,
}

impl Serving {
    async fn serve<I: Inlet, O: Outlet>(
        &self,
        inlet: &mut I,
        outlet: &Arc<O>,
        mut input: RequestInput,
    ) -> EndReason {
        let limits = &self.config.limits;
        let budgets = Budgets {
            outstanding: Arc::new(Semaphore::new(limits.max_outstanding.max(1))),
            write_bytes: Arc::new(Semaphore::new(
                limits
                    .max_pending_write_bytes
                    .max(limits.max_packet as usize),
            )),
            read_bytes: Arc::new(Semaphore::new(
                limits.max_pending_read_bytes.max(limits.max_read as usize),
            )),
            memory_read_bytes: Arc::new(Semaphore::new(
                limits
                    .max_pending_memory_read_bytes
                    .min(limits.max_pending_read_bytes)
                    .max(limits.max_read as usize),
            )),
            executing: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            max_read: limits.max_read,
        };
        let (replies, reply_queue) = mpsc::unbounded_channel::<Outgoing>();
        let unanswered = writer::Unanswered {
            outstanding: budgets.outstanding.clone(),
            total: limits.max_outstanding.max(1),
        };
        let writer_task =
            tokio::spawn(writer::run(outlet.clone(), reply_queue, unanswered).in_current_span());
        let mut writer_task = tokio_util::task::AbortOnDropHandle::new(writer_task);
        let mut tasks = JoinSet::new();
        let mut sequencer = Sequencer::default();

        let reason = 'session: loop {
            // Serve everything already buffered.
            loop {
                let request = match input.next_request() {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(e) if e.is_fatal() => {
                        if matches!(e, DecodeError::TooLarge { .. }) {
                            metrics::counter!("sftpgate_limit_hits_total", "limit" => "packet")
                                .increment(1);
                        }
                        tracing::warn!(error = %e, "unframeable input; ending the session");
                        break 'session EndReason::ProtocolError {
                            detail: e.to_string(),
                        };
                    }
                    Err(e) => {
                        self.reject(&e, &replies);
                        continue;
                    }
                };
                if let Request::Init { version, .. } = request {
                    tracing::debug!(client_version = version, "INIT");
                    let _ = replies.send(Outgoing::new(version_packet(), Vec::new()));
                    continue;
                }
                // What the backend expects a READ to return (`File::read_len_hint`; `None`
                // if it cannot tell or the handle is not an open file: the READ then fails
                // as it would have), and whether it is a large READ of a file in memory,
                // which takes the smaller READ budget (see
                // `Limits::max_pending_memory_read_bytes`). Not the small ones, which are
                // answered in the reader's own poll whenever their budget is at hand (see
                // `runs_inline`): 8 sessions of 64 x 32 KiB READs lost 15-20 % of their
                // download rate when their 17th READ had to wait for budget and a task.
                let (read_hint, from_memory) = match &request {
                    Request::Read {
                        handle,
                        offset,
                        len,
                        ..
                    } => match self.dispatcher.handles.file(handle) {
                        Ok(f) => {
                            let hint = f.file.read_len_hint(*offset, *len);
                            let large = hint.unwrap_or(*len) as usize > INLINE_DATA_MAX;
                            (hint, large && f.file.reads_from_memory())
                        }
                        Err(_) => (None, false),
                    },
                    _ => (None, false),
                };
                let admitted = tokio::select! {
                    held = self.admit(&request, from_memory, &budgets) => held,
                    () = self.shutdown.cancelled() => break 'session EndReason::Shutdown,
                };
                let Some(held) = admitted else {
                    break 'session EndReason::Shutdown;
                };
                let access = Access::of(&request, |h| self.dispatcher.handles.is_append(h));
                let (done, deps, after) = sequencer.admit(access);
                let inline = runs_inline(&request, read_hint, &deps, after.as_ref(), &held);
                let task = request_task(RequestTask {
                    request,
                    deps,
                    after,
                    done,
                    held,
                    dispatcher: self.dispatcher.clone(),
                    executing: budgets.executing.clone(),
                    replies: replies.clone(),
                })
                .in_current_span();
                if inline {
                    let mut task = Box::pin(task);
                    if poll_once(task.as_mut()).is_pending() {
                        tasks.spawn(task);
                    }
                } else {
                    tasks.spawn(task);
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => break EndReason::Shutdown,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        tracing::error!(error = %e, "request task failed");
                    }
                }
                end = inlet.recv_into(&mut input) => {
                    if let Some(reason) = end {
                        break reason;
                    }
                }
                result = &mut writer_task => {
                    let detail = match result {
                        Ok(Err(e)) => format!("sending replies failed: {e}"),
                        _ => "reply writer stopped".to_owned(),
                    };
                    break EndReason::ConnectionLost { detail };
                }
            }
        };

        // Let requests in flight finish (their storage operations release what they hold),
        // then send what they answered unless the client is gone. On shutdown they get only
        // a part of the server's drain time, so that closing the handles and the exit still
        // fit in it.
        let limit = match reason {
            EndReason::Shutdown => {
                SHUTDOWN_DRAIN_LIMIT.min(self.config.timeouts.shutdown_drain / 4)
            }
            _ => DRAIN_LIMIT,
        };
        let drained =
            tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "requests still running at session end were aborted"
            );
            tasks.shutdown().await;
        }
        drop(replies);
        if !matches!(reason, EndReason::ConnectionLost { .. }) && !writer_task.is_finished() {
            let _ = tokio::time::timeout(limit, &mut writer_task).await;
        }
        reason
    }

    /// Takes the budget a request holds from arrival until its reply is sent. Waiting here
    /// stops the reader: only for budgets that free up without the client's help.
    async fn admit(&self, request: &Request, from_memory: bool, budgets: &Budgets) -> Option<Held> {
        let outstanding = budgets.outstanding.clone().acquire_owned().await.ok()?;
        let write = match request {
            // A WRITE's data is in memory until stored; it is at most one packet, and the
            // budget is never smaller than one packet.
            Request::Write { data, .. } => {
                let n = u32::try_from(data.len()).unwrap_or(u32::MAX).max(1);
                Some(
                    budgets
                        .write_bytes
                        .clone()
                        .acquire_many_owned(n)
                        .await
                        .ok()?,
                )
            }
            _ => None,
        };
        // A READ's reply is in memory until sent. Its budget is queued for here, in arrival
        // order (Tokio's semaphore serves waiters first come, first served), so that a task
        // that has run and waits to reply after the earlier requests on its handle (see the
        // sequencer) never holds budget an earlier one is still waiting for. It is awaited
        // in the request's task, not here: the budget comes back only as replies are sent,
        // which needs the SSH connection's loop, which stops when this reader stops draining
        // the channel — waiting here deadlocked deep pipelining (128 x 255 KiB READs).
        // A READ of a file in memory takes the smaller budget of those instead.
        let read = match request {
            Request::Read { len, .. } => {
                let n = (*len).min(budgets.max_read).max(1);
                let budget = if from_memory {
                    &budgets.memory_read_bytes
                } else {
                    &budgets.read_bytes
                };
                let mut queued: QueuedPermit = Box::pin(budget.clone().acquire_many_owned(n));
                // One poll puts it in the semaphore's queue; the task's await wakes it.
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                match queued.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(permit) => Some(ReadBudget::Held(permit.ok()?)),
                    std::task::Poll::Pending => Some(ReadBudget::Queued(queued)),
                }
            }
            _ => None,
        };
        Some(Held {
            outstanding,
            write,
            read,
        })
    }

    /// Answers a packet that could not be decoded, when it had a request id.
    fn reject(&self, error: &DecodeError, replies: &mpsc::UnboundedSender<Outgoing>) {
        metrics::counter!("sftpgate_bad_requests_total").increment(1);
        let Some(id) = error.request_id() else {
            tracing::warn!(error = %error, "undecodable packet without a request id ignored");
            return;
        };
        tracing::debug!(error = %error, id, "bad request");
        let code = match error {
            DecodeError::UnknownType { .. } => StatusCode::OpUnsupported,
            _ => StatusCode::BadMessage,
        };
        let mut out = BytesMut::new();
        encode_status(&mut out, id, code, &error.to_string());
        let _ = replies.send(Outgoing::new(out, Vec::new()));
    }
}

/// Largest READ or WRITE whose first poll the reader makes itself (see [`runs_inline`]):
/// the size of the small files and replies that latency dominates. Bulk transfers keep a
/// task per request, so that the copy of 255 KiB overlaps with the reader's decoding on the
/// other worker.
const INLINE_DATA_MAX: usize = 64 * 1024;

/// Whether the reader polls this request's task once itself before spawning it. Storage
/// that answers at once (a stat on tmpfs or from the dentry cache, a small cached read)
/// then completes in that poll and its reply is queued without the hand-off to a new task,
/// which is a wake-up and a poll on a worker thread per request (end to end: stat latency
/// -3 to -6 %, 8 sessions of 32 KiB uploads -22 % server CPU per GiB; docs/performance.md,
/// "Tenth run", also on why `stat_roundtrip` in benches/session.rs shows the opposite). A
/// request that waits for anything (an earlier request it is ordered after, its READ
/// budget, the blocking pool) is spawned as it is, having done nothing but register for
/// that wait; only requests with nothing to wait for are tried, so that the reader does
/// not poll in vain. A READ counts by what the backend expects it to return (`read_hint`,
/// see `File::read_len_hint`), not by what it asks for: OpenSSH's client asks for 255 KiB
/// of every file, and of a small file gets a few KiB and then EOF, which are as quick as a
/// stat (`get -r` of 2,000 x 4 KiB: the READs were the only requests handed to a task, each
/// a wake-up of the other worker; docs/performance.md, "Twelfth run").
fn runs_inline(
    request: &Request,
    read_hint: Option<u32>,
    deps: &[Done],
    after: Option<&Done>,
    held: &Held,
) -> bool {
    let small = match request {
        Request::Read { len, .. } => read_hint.unwrap_or(*len) as usize <= INLINE_DATA_MAX,
        Request::Write { data, .. } => data.len() <= INLINE_DATA_MAX,
        _ => true,
    };
    small
        && deps.iter().all(Done::is_set)
        && after.is_none_or(Done::is_set)
        && !matches!(held.read, Some(ReadBudget::Queued(_)))
}

/// Polls `task` once on the reader's own thread. A task that is not done has registered
/// its wake-up with whatever it waits for (a noop waker here); the runtime polls it again
/// once spawned, and every future re-registers with the waker of its latest poll.
fn poll_once<F: std::future::Future<Output = ()>>(
    task: std::pin::Pin<&mut F>,
) -> std::task::Poll<()> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    task.poll(&mut cx)
}

/// Budget a request holds from the moment the reader admits it.
struct Held {
    /// Until the reply has been sent.
    outstanding: OwnedSemaphorePermit,
    /// A WRITE's data, until it is stored.
    write: Option<OwnedSemaphorePermit>,
    /// A READ's reply, until it has been sent.
    read: Option<ReadBudget>,
}

/// A READ's budget: taken at once, or queued for in arrival order (see `Serving::admit`).
enum ReadBudget {
    Held(OwnedSemaphorePermit),
    Queued(QueuedPermit),
}

type QueuedPermit = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>
            + Send,
    >,
>;

struct RequestTask {
    request: Request,
    deps: Vec<Done>,
    /// The previous request on the same handle: this one replies after it.
    after: Option<Done>,
    done: Done,
    held: Held,
    dispatcher: Arc<Dispatcher>,
    executing: Arc<Semaphore>,
    replies: mpsc::UnboundedSender<Outgoing>,
}

/// One request: wait for the requests it is ordered after, run it, wait until the previous
/// request on its handle has replied, hand the reply to the writer.
async fn request_task(task: RequestTask) {
    let RequestTask {
        request,
        deps,
        after,
        done,
        held,
        dispatcher,
        executing,
        replies,
    } = task;
    // Completion is signalled however this task ends, aborted included.
    let done = done.set_on_drop();
    // Counted from here (the task's first poll, just after admission) until the reply is
    // handed to the writer; a guard, so that an aborted task stops counting too.
    let in_flight = dispatcher.metrics.in_flight();
    for dep in &deps {
        dep.wait().await;
    }
    let read_permit = match held.read {
        Some(ReadBudget::Held(permit)) => Some(permit),
        Some(ReadBudget::Queued(queued)) => queued.await.ok(),
        None => None,
    };
    let running = executing.acquire_owned().await.ok();
    let id = request.id().unwrap_or(0);
    let name = request.packet_type();
    let op = RequestOp::of(&request);
    let mut out = BytesMut::new();
    // The reply is out[start..] (a READ's buffer has room in front, see `writer`).
    let result = AssertUnwindSafe(dispatcher.dispatch(request, &mut out))
        .catch_unwind()
        .await;
    let session = dispatcher.session;
    drop(running);
    // The WRITE data is stored (or refused): its budget frees up now, not when the reply
    // has been sent, so that the reader never waits on the client's window.
    drop(held.write);
    let (status, start, more) = match result {
        Ok(dispatched) => (dispatched.status, dispatched.start, dispatched.more),
        Err(panic) => {
            metrics::counter!("sftpgate_request_panics_total").increment(1);
            tracing::error!(
                %session,
                id,
                request = ?name,
                panic = panic_message(&*panic),
                "request handler panicked; the request fails, the session goes on"
            );
            out.clear();
            encode_status(&mut out, id, StatusCode::Failure, "Internal server error");
            (StatusCode::Failure, 0, Vec::new())
        }
    };
    dispatcher.metrics.count_request(op, status);
    if let Some(after) = after {
        after.wait().await;
    }
    let mut hold = vec![held.outstanding];
    hold.extend(read_permit);
    let _ = replies.send(Outgoing {
        buf: out,
        start,
        more,
        hold,
    });
    // Only now, once the reply is queued: the requests ordered after this one reply after
    // it (see the sequencer).
    drop(done);
    drop(in_flight);
}

/// The VERSION reply: version 3 and the extensions served.
fn version_packet() -> BytesMut {
    let mut out = BytesMut::new();
    Response::Version {
        version: SFTP_VERSION,
        extensions: dispatch::EXTENSIONS
            .iter()
            .map(|(name, data)| ((*name).to_owned(), Bytes::from_static(data.as_bytes())))
            .collect(),
    }
    .encode(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(read: Option<ReadBudget>) -> Held {
        let budget = Arc::new(Semaphore::new(1 << 20));
        Held {
            outstanding: budget.clone().try_acquire_owned().unwrap(),
            write: None,
            read,
        }
    }

    fn read(len: u32) -> Request {
        Request::Read {
            id: 1,
            handle: Bytes::from_static(b"h"),
            offset: 0,
            len,
        }
    }

    fn write(len: usize) -> Request {
        Request::Write {
            id: 1,
            handle: Bytes::from_static(b"h"),
            offset: 0,
            data: Bytes::from(vec![0; len]).into(),
        }
    }

    fn stat() -> Request {
        Request::Stat {
            id: 1,
            path: Bytes::from_static(b"/"),
        }
    }

    #[test]
    fn only_small_requests_with_nothing_to_wait_for_run_inline() {
        let max = INLINE_DATA_MAX;
        // Metadata, and data up to the limit, with nothing before them.
        assert!(runs_inline(&stat(), None, &[], None, &held(None)));
        assert!(runs_inline(&read(max as u32), None, &[], None, &held(None)));
        assert!(runs_inline(&write(max), None, &[], None, &held(None)));
        // Bulk data keeps its own task.
        assert!(!runs_inline(
            &read(max as u32 + 1),
            None,
            &[],
            None,
            &held(None)
        ));
        assert!(!runs_inline(&write(max + 1), None, &[], None, &held(None)));
        // An earlier request still running: ordered after it, or replying after it.
        let running = Done::new();
        assert!(!runs_inline(
            &stat(),
            None,
            std::slice::from_ref(&running),
            None,
            &held(None)
        ));
        assert!(!runs_inline(
            &read(4096),
            None,
            &[],
            Some(&running),
            &held(None)
        ));
        // Once it has finished, nothing is left to wait for.
        let finished = Done::new();
        finished.set();
        assert!(runs_inline(
            &stat(),
            None,
            std::slice::from_ref(&finished),
            Some(&finished),
            &held(None)
        ));
        // A READ whose reply budget is still queued for waits for it.
        let empty = Arc::new(Semaphore::new(0));
        let queued: QueuedPermit = Box::pin(empty.acquire_many_owned(1));
        assert!(!runs_inline(
            &read(4096),
            None,
            &[],
            None,
            &held(Some(ReadBudget::Queued(queued)))
        ));
        let budget = Arc::new(Semaphore::new(4096));
        let permit = budget.try_acquire_many_owned(4096).unwrap();
        assert!(runs_inline(
            &read(4096),
            None,
            &[],
            None,
            &held(Some(ReadBudget::Held(permit)))
        ));
    }

    #[test]
    fn a_large_read_expected_to_return_little_runs_inline() {
        let max = INLINE_DATA_MAX as u32;
        // OpenSSH's 255 KiB READ of a 4 KiB file, and the one at its end.
        assert!(runs_inline(
            &read(261_120),
            Some(4096),
            &[],
            None,
            &held(None)
        ));
        assert!(runs_inline(&read(261_120), Some(0), &[], None, &held(None)));
        assert!(runs_inline(
            &read(261_120),
            Some(max),
            &[],
            None,
            &held(None)
        ));
        // Of a large file, or of a backend that cannot tell: its own task.
        assert!(!runs_inline(
            &read(261_120),
            Some(max + 1),
            &[],
            None,
            &held(None)
        ));
        assert!(!runs_inline(&read(261_120), None, &[], None, &held(None)));
        // The hint changes nothing about waiting for earlier requests.
        let running = Done::new();
        assert!(!runs_inline(
            &read(261_120),
            Some(4096),
            &[],
            Some(&running),
            &held(None)
        ));
    }
}
