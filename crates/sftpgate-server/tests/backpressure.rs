//! Backpressure: a client that pipelines requests and never reads the replies holds a
//! bounded amount of server memory. The session engine (`StreamSession`, the same engine
//! the SSH server runs per channel) is driven directly over in-memory pipes, so the test
//! can count exactly what the server took in and what it executed.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sftpgate_proto::{Decoder, FileAttributes, OpenFlags, Request, Response};
use sftpgate_server::{
    AuthMethod, Cleanup, ConnectionId, ConnectionInfo, HookError, Limits, NoHooks, ServerConfig,
    SftpContext, SftpFactory, StreamSession,
};
use sftpgate_vfs::memory::MemoryFs;
use sftpgate_vfs::{Dir, File, Filesystem, FsError, RenameMode, VPath};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, ReadBuf};

const FILE_SIZE: usize = 1 << 20;
const READ_LEN: u32 = 32 * 1024;
/// A READ larger than the server answers in its reader's own poll (64 KiB).
const LARGE_READ_LEN: u32 = 128 * 1024;
/// Requests the client pipelines: 29 bytes each (5.8 MB), 6.5 GB of replies if answered.
const PIPELINED: u32 = 200_000;
const MAX_OUTSTANDING: usize = 64;
const MAX_PENDING_READ: usize = 1 << 20;
/// The most the engine reads from its input at once (`READ_CHUNK` in stream.rs).
const READ_CHUNK: usize = 256 * 1024;
/// Each side's pipe buffer.
const PIPE: usize = 64 * 1024;
/// How long "nothing more happens" is watched for. Not a performance bound: the engine
/// is idle, waiting for the client.
const SETTLE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_replies_holds_bounded_memory() {
    // The file does not say it is in memory: the READ budget is `max_pending_read_bytes`.
    never_reading_client(false, READ_LEN, MAX_PENDING_READ).await;
}

/// A file in memory is read in large READs only `max_pending_memory_read_bytes` ahead of
/// what is sent, however deep the client pipelines and however large
/// `max_pending_read_bytes` is.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_in_memory_is_read_little_ahead_of_what_is_sent() {
    let budget = Limits::default().max_pending_memory_read_bytes;
    never_reading_client(true, LARGE_READ_LEN, budget).await;
}

/// Small READs of a file in memory keep the full budget: they are answered in the
/// reader's own poll while it is at hand.
#[tokio::test(flavor = "multi_thread")]
async fn small_reads_of_a_file_in_memory_keep_the_full_budget() {
    let executed = never_reading_client(true, READ_LEN, MAX_PENDING_READ).await;
    let small_budget = Limits::default().max_pending_memory_read_bytes;
    let within_small = small_budget / READ_LEN as usize + PIPE / READ_LEN as usize + 2;
    assert!(
        executed > within_small,
        "{executed} small READs executed: held to the budget of large ones ({within_small})"
    );
}

/// A client pipelines READs and never reads a reply: the server must stop executing them
/// within `budget` bytes of replies (plus the pipes), stop taking input, and go on once
/// the client reads. `from_memory`: whether the file says its reads never wait; READs of
/// `read_len` bytes.
async fn never_reading_client(from_memory: bool, read_len: u32, budget: usize) -> usize {
    let fs = MemoryFs::default();
    {
        let flags = OpenFlags::WRITE | OpenFlags::CREAT;
        let file = fs
            .open(
                &VPath::parse(b"/big").unwrap(),
                flags,
                &FileAttributes::new(),
            )
            .await
            .unwrap();
        file.write(0, Bytes::from(vec![7u8; FILE_SIZE]))
            .await
            .unwrap();
        file.close().await.unwrap();
    }
    let reads = Arc::new(AtomicUsize::new(0));
    let consumed = Arc::new(AtomicUsize::new(0));
    let factory = Factory(CountingFs {
        inner: fs,
        reads: reads.clone(),
        from_memory,
    });
    let config = ServerConfig {
        limits: Limits {
            max_outstanding: MAX_OUTSTANDING,
            max_pending_read_bytes: MAX_PENDING_READ,
            max_in_flight: 4,
            ..Limits::default()
        },
        ..ServerConfig::default()
    };
    let (mut client_in, server_in) = tokio::io::duplex(PIPE);
    let (server_out, mut client_out) = tokio::io::duplex(PIPE);
    let server_in = Counting {
        inner: server_in,
        consumed: consumed.clone(),
    };
    let session = tokio::spawn(StreamSession::new(config, NoHooks, factory).run(
        ConnectionInfo {
            id: ConnectionId(1),
            peer: "127.0.0.1:22".parse().unwrap(),
            user: "pipeliner".into(),
            method: AuthMethod::External,
            client_software: String::new(),
        },
        server_in,
        server_out,
    ));

    // INIT and OPEN, answered; then READs as fast as the pipe takes them, never reading a
    // reply.
    let mut decoder = Decoder::with_max_packet(u32::MAX);
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    Request::Init {
        version: 3,
        extensions: Vec::new(),
    }
    .encode(&mut out);
    Request::Open {
        id: 0,
        filename: Bytes::from_static(b"/big"),
        pflags: OpenFlags::READ,
        attrs: FileAttributes::new(),
    }
    .encode(&mut out);
    client_in.write_all(&out).await.unwrap();
    let mut handle = None;
    while handle.is_none() {
        let n = tokio::time::timeout(Duration::from_secs(10), client_out.read_buf(&mut buf))
            .await
            .expect("VERSION and HANDLE")
            .unwrap();
        assert!(n > 0, "the server ended the stream");
        while let Some(response) = decoder.decode_response(&mut buf).unwrap() {
            match response {
                Response::Version { .. } => {}
                Response::Handle { handle: h, .. } => handle = Some(h),
                other => panic!("unexpected reply {other:?}"),
            }
        }
    }
    let handle = handle.expect("just received");
    let pipeliner = tokio::spawn(async move {
        let mut out = BytesMut::new();
        for id in 1..=PIPELINED {
            Request::Read {
                id,
                handle: handle.clone(),
                offset: u64::from(id) * u64::from(read_len) % FILE_SIZE as u64,
                len: read_len,
            }
            .encode(&mut out);
            if out.len() >= PIPE && client_in.write_all(&out.split()).await.is_err() {
                return;
            }
        }
        let _ = client_in.write_all(&out).await;
    });

    // The server fills its budgets, then stops: no more reads executed, no more input taken.
    let stalled = wait_until_still(&reads, &consumed).await;
    assert!(!pipeliner.is_finished(), "the server took in every request");
    let (executed, taken) = stalled;
    // Replies not yet sent hold the READ budget: at most `budget` bytes of DATA, plus what
    // fits in the output pipe and the one the writer holds.
    let max_reads = budget / read_len as usize + PIPE / read_len as usize + 2;
    assert!(
        executed <= max_reads,
        "{executed} READs executed with nobody reading (bound {max_reads})"
    );
    // Input taken: at most the outstanding requests plus one read of the input, where the
    // undecoded rest waits.
    let max_taken = READ_CHUNK + MAX_OUTSTANDING * 29 + 1024;
    assert!(
        taken <= max_taken,
        "{taken} input bytes taken with nobody reading (bound {max_taken})"
    );
    let offered = PIPELINED as usize * 29;
    eprintln!(
        "stalled: {executed} READs executed, {taken} of {offered} request bytes taken \
         (bounds {max_reads}, {max_taken})"
    );

    // Reading replies again lets it go on.
    let mut replies = 0;
    while replies < 200 {
        let n = tokio::time::timeout(Duration::from_secs(10), client_out.read_buf(&mut buf))
            .await
            .expect("replies flow again")
            .unwrap();
        assert!(n > 0, "the server ended the stream");
        while let Some(response) = decoder.decode_response(&mut buf).unwrap() {
            match response {
                Response::Data { .. } => {}
                other => panic!("unexpected reply {other:?}"),
            }
            replies += 1;
        }
    }
    assert!(
        reads.load(Ordering::SeqCst) > executed,
        "no progress after reading"
    );

    // The client vanishes: the session ends by itself.
    pipeliner.abort();
    drop(client_out);
    let ended = tokio::time::timeout(Duration::from_secs(30), session)
        .await
        .expect("the session ends once its client is gone")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    executed
}

/// Waits (bounded) until `reads` and `consumed` stop changing for [`SETTLE`]; returns them.
async fn wait_until_still(reads: &AtomicUsize, consumed: &AtomicUsize) -> (usize, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = (0, 0);
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = (
            reads.load(Ordering::SeqCst),
            consumed.load(Ordering::SeqCst),
        );
        if now == last && now.0 > 0 {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never stopped: {now:?}"
        );
        last = now;
    }
}

/// Counts the bytes the server reads from its input.
struct Counting<R> {
    inner: R,
    consumed: Arc<AtomicUsize>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.consumed.fetch_add(n, Ordering::SeqCst);
        result
    }
}

struct Factory(CountingFs);

impl SftpFactory<()> for Factory {
    async fn open(
        &self,
        _ctx: &SftpContext<()>,
        _cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        Ok(Arc::new(CountingFs {
            inner: self.0.inner.clone(),
            reads: self.0.reads.clone(),
            from_memory: self.0.from_memory,
        }))
    }
}

/// `MemoryFs` counting the reads it executes; its files say they are in memory only if
/// `from_memory`.
struct CountingFs {
    inner: MemoryFs,
    reads: Arc<AtomicUsize>,
    from_memory: bool,
}

#[async_trait::async_trait]
impl Filesystem for CountingFs {
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        let inner = self.inner.open(path, flags, attrs).await?;
        Ok(Box::new(CountingFile {
            inner,
            reads: self.reads.clone(),
            from_memory: self.from_memory,
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
}

struct CountingFile {
    inner: Box<dyn File>,
    reads: Arc<AtomicUsize>,
    from_memory: bool,
}

#[async_trait::async_trait]
impl File for CountingFile {
    async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(offset, len, buf).await
    }
    fn reads_from_memory(&self) -> bool {
        self.from_memory && self.inner.reads_from_memory()
    }
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        self.inner.write(offset, data).await
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
    async fn close(&self) -> Result<(), FsError> {
        self.inner.close().await
    }
}
