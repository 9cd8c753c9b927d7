//! The whole SFTP request path under arbitrary input: bytes in → framing and decoding →
//! sequencer → dispatcher → an in-memory filesystem (`MemoryFs`) → replies out, through the
//! public `StreamSession` (the same engine the SSH server runs per channel).
//!
//! Shared, as one source file, by the `session` cargo-fuzz target (`fuzz/`, included with
//! `#[path]`) and the test that replays its corpus (`tests/fuzz_session.rs`), so both check
//! the same invariants:
//!
//! - nothing panics anywhere, even where the server would catch it (a panic hook records
//!   every panic; under libFuzzer its own hook aborts first);
//! - the session ends by itself (bounded, in paused time) with `ClientEof`, or with a
//!   protocol error when the input cannot be framed;
//! - the filesystem's exit runs exactly once;
//! - every byte the server wrote decodes as SFTP responses, with nothing left over;
//! - replies answer requests: per request id, no more replies than requests carrying that
//!   id, and — unless the stream could not be framed — exactly as many (every request with a
//!   readable id is answered once, a malformed one with a STATUS); VERSION only for INIT;
//! - the filesystem holds no more than its capacity.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use sftpgate_proto::{Decoder, Request, Response, DEFAULT_MAX_PACKET};
use sftpgate_server::{
    AuthMethod, Cleanup, ConnectionId, ConnectionInfo, HookError, Limits, NoHooks, ServerConfig,
    SftpContext, SftpFactory, StreamSession, Timeouts,
};
use sftpgate_vfs::memory::MemoryFs;
use sftpgate_vfs::{EndReason, Filesystem, WithExit};

/// File bytes the session's filesystem may hold.
const CAPACITY: u64 = 1 << 20;
/// How long (paused, so free) a session may take before it counts as hung.
const HANG: Duration = Duration::from_secs(600);

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Runs one session on `data` and checks every invariant in the module docs; panics at the
/// first broken one.
pub fn check_session(data: &[u8]) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            previous(info);
        }));
    });
    PANICKED.store(false, Ordering::SeqCst);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let fs = MemoryFs::with_capacity(CAPACITY);
    let exits = Arc::new(AtomicUsize::new(0));
    let output = Output::default();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let factory = Factory {
        fs: fs.clone(),
        exits: exits.clone(),
        started: Mutex::new(Some(started_tx)),
    };
    let config = ServerConfig {
        limits: Limits {
            // Small budgets, so that the input reaches them.
            max_handles: 16,
            max_outstanding: 64,
            max_in_flight: 4,
            ..Limits::default()
        },
        timeouts: Timeouts {
            request: Some(Duration::from_secs(30)),
            ..Timeouts::default()
        },
        ..ServerConfig::default()
    };
    let connection = ConnectionInfo {
        id: ConnectionId(1),
        peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 22)),
        user: "fuzz".into(),
        method: AuthMethod::External,
        client_software: String::new(),
    };
    // The input flows once the factory has returned: otherwise the end of the input could
    // race the factory and end the session before it starts (fine for a server, useless
    // for fuzzing what comes after).
    let (input, mut feed) = tokio::io::duplex(64 * 1024);
    let bytes = data.to_vec();
    let session = StreamSession::new(config, NoHooks, factory);
    let result = runtime.block_on(async {
        let feeder = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            if started.await.is_ok() {
                // Fails only when the session stopped reading (a protocol error): fine.
                let _ = feed.write_all(&bytes).await;
            }
            let _ = feed.shutdown().await;
        });
        let result =
            tokio::time::timeout(HANG, session.run(connection, input, output.clone())).await;
        feeder.abort();
        result
    });
    drop(runtime);
    let reason = result
        .expect("the session hung")
        .expect("the session started");
    assert!(
        !PANICKED.load(Ordering::SeqCst),
        "something panicked (caught by the server, but a panic all the same)"
    );
    assert_eq!(exits.load(Ordering::SeqCst), 1, "exit runs exactly once");
    let framed = match &reason {
        EndReason::ClientEof => true,
        EndReason::ProtocolError { .. } => false,
        other => panic!("unexpected end: {other:?}"),
    };
    assert!(fs.used() <= CAPACITY, "the filesystem outgrew its capacity");

    let asked = requests(data);
    let answered = replies(&output.take());
    for (id, n) in &answered.by_id {
        let sent = asked.by_id.get(id).copied().unwrap_or(0);
        assert!(
            *n <= sent,
            "{n} replies to id {id}, which {sent} requests carried"
        );
    }
    assert!(answered.versions <= asked.inits, "VERSION without INIT");
    if framed {
        assert_eq!(answered.by_id, asked.by_id, "requests left unanswered");
        assert_eq!(answered.versions, asked.inits, "INIT left unanswered");
    }
}

#[derive(Debug, Default, PartialEq)]
struct Ids {
    by_id: HashMap<u32, usize>,
    inits: usize,
    versions: usize,
}

/// What the server must answer: requests it can decode (and malformed ones whose id it can
/// read), up to the first unframeable packet — decoded as the server decodes them.
fn requests(data: &[u8]) -> Ids {
    let mut ids = Ids::default();
    let mut decoder = Decoder::with_max_packet(DEFAULT_MAX_PACKET);
    let mut buf = BytesMut::from(data);
    loop {
        match decoder.decode_request(&mut buf) {
            Ok(None) => break,
            Ok(Some(Request::Init { .. })) => ids.inits += 1,
            Ok(Some(request)) => {
                if let Some(id) = request.id() {
                    *ids.by_id.entry(id).or_default() += 1;
                }
            }
            Err(e) if e.is_fatal() => break,
            Err(e) => {
                if let Some(id) = e.request_id() {
                    *ids.by_id.entry(id).or_default() += 1;
                }
            }
        }
    }
    ids
}

/// The server's output, which must be whole, decodable responses.
fn replies(out: &[u8]) -> Ids {
    let mut ids = Ids::default();
    let mut decoder = Decoder::with_max_packet(u32::MAX);
    let mut buf = BytesMut::from(out);
    loop {
        match decoder.decode_response(&mut buf) {
            Ok(Some(Response::Version { .. })) => ids.versions += 1,
            Ok(Some(response)) => {
                let id = response.id().expect("every response but VERSION has an id");
                *ids.by_id.entry(id).or_default() += 1;
            }
            Ok(None) => break,
            Err(e) => panic!("the server wrote an undecodable response: {e}"),
        }
    }
    assert!(
        buf.is_empty(),
        "the server's output ends in a partial packet"
    );
    ids
}

struct Factory {
    fs: MemoryFs,
    exits: Arc<AtomicUsize>,
    started: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl SftpFactory<()> for Factory {
    async fn open(
        &self,
        _ctx: &SftpContext<()>,
        _cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        let exits = self.exits.clone();
        if let Some(started) = self.started.lock().unwrap().take() {
            let _ = started.send(());
        }
        Ok(Arc::new(WithExit::new(
            Arc::new(self.fs.clone()),
            move |_reason| {
                exits.fetch_add(1, Ordering::SeqCst);
                async {}
            },
        )))
    }
}

/// Collects what the server writes.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl tokio::io::AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
