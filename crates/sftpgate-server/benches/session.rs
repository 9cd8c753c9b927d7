//! The dispatcher end to end through the public API: a [`StreamSession`] (the same session
//! engine as the SSH server: reader, sequencer, request tasks, budgets, reply writer) over an
//! in-memory pipe, driven by a client that pipelines pre-encoded requests, on a 2-worker
//! runtime like the server's. No SSH and no crypto: what is left is the engine's own cost
//! per request.
//!
//! Storage: `mem`, an in-memory file (a READ is one copy, a WRITE is dropped), isolates the
//! engine; `local`, [`LocalFs`] on tmpfs, adds the real I/O path (one `spawn_blocking` hop
//! per request and the system call), so `local - mem` is what that path costs.
//!
//! Groups:
//! - `read_64x32KiB` / `write_64x32KiB`: 64 READs (WRITEs) of 32 KiB in flight on one handle,
//!   all replies awaited: bulk transfer at OpenSSH's default request size.
//! - `sequencer`: 64 READs on one handle, then one WRITE that overlaps the first READ's range
//!   (it must wait for it) or that overlaps none (it runs at once); 65 replies. Exercises
//!   the sequencer's admission with 64 entries in flight and the ordering wait.
//! - `small_replies`: 256 pipelined STATs (path reads: they never wait for each other), their
//!   replies smaller than the writer's 16 KiB threshold and coalesced into larger writes when
//!   they queue up (the setup prints how many writes carried them).
//! - `stat_roundtrip`: one STAT and its reply at a time (latency of the request path).
//!
//! `cargo bench -p sftpgate-server --bench session`; `-- --test` runs each once. With
//! `SFTPGATE_BENCH_METRICS=1` the Prometheus recorder the binary uses is installed first, so
//! that the per-request metrics cost what they cost in production (without a recorder the
//! `metrics` facade does nothing).

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sftpgate_fs_local::LocalFs;
use sftpgate_proto::{Decoder, FileAttributes, OpenFlags, Request, Response, StatusCode};
use sftpgate_server::{
    AuthMethod, Cleanup, ConnectionId, ConnectionInfo, HookError, NoHooks, ServerConfig,
    SftpContext, SftpFactory, StreamSession,
};
use sftpgate_vfs::{Dir, File, Filesystem, FsError, RenameMode, VPath};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::runtime::Runtime;

const CHUNK: u32 = 32 * 1024;
const IN_FLIGHT: u64 = 64;
/// The file the benches read: larger than one batch, so offsets vary.
const FILE_SIZE: u64 = 4 << 20;

// ---------------------------------------------------------------------------------------------
// Storage

/// One file of [`FILE_SIZE`] bytes in memory, at every path.
struct MemFs {
    data: Bytes,
}

#[async_trait::async_trait]
impl Filesystem for MemFs {
    async fn open(
        &self,
        _path: &VPath,
        _flags: OpenFlags,
        _attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        Ok(Box::new(MemFile {
            data: self.data.clone(),
        }))
    }
    async fn opendir(&self, _path: &VPath) -> Result<Box<dyn Dir>, FsError> {
        Err(FsError::Unsupported("opendir".into()))
    }
    async fn stat(&self, _path: &VPath) -> Result<FileAttributes, FsError> {
        Ok(attrs(self.data.len() as u64))
    }
    async fn lstat(&self, _path: &VPath) -> Result<FileAttributes, FsError> {
        Ok(attrs(self.data.len() as u64))
    }
    async fn setstat(&self, _path: &VPath, _attrs: &FileAttributes) -> Result<(), FsError> {
        Ok(())
    }
    async fn remove(&self, _path: &VPath) -> Result<(), FsError> {
        Ok(())
    }
    async fn mkdir(&self, _path: &VPath, _attrs: &FileAttributes) -> Result<(), FsError> {
        Ok(())
    }
    async fn rmdir(&self, _path: &VPath) -> Result<(), FsError> {
        Ok(())
    }
    async fn rename(&self, _from: &VPath, _to: &VPath, _mode: RenameMode) -> Result<(), FsError> {
        Ok(())
    }
    async fn readlink(&self, _path: &VPath) -> Result<Bytes, FsError> {
        Err(FsError::InvalidInput("not a link".into()))
    }
    async fn symlink(&self, _target: &[u8], _link: &VPath) -> Result<(), FsError> {
        Ok(())
    }
}

fn attrs(size: u64) -> FileAttributes {
    FileAttributes {
        size: Some(size),
        permissions: Some(0o100644),
        ..FileAttributes::new()
    }
}

struct MemFile {
    data: Bytes,
}

#[async_trait::async_trait]
impl File for MemFile {
    async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
        let size = self.data.len() as u64;
        if offset >= size {
            return Err(FsError::Eof);
        }
        let n = (size - offset).min(u64::from(len)) as usize;
        let at = offset as usize;
        buf.extend_from_slice(&self.data[at..at + n]);
        Ok(n)
    }
    async fn write(&self, _offset: u64, _data: Bytes) -> Result<(), FsError> {
        Ok(())
    }
    async fn stat(&self) -> Result<FileAttributes, FsError> {
        Ok(attrs(self.data.len() as u64))
    }
    async fn setstat(&self, _attrs: &FileAttributes) -> Result<(), FsError> {
        Ok(())
    }
    async fn sync(&self) -> Result<(), FsError> {
        Ok(())
    }
    async fn close(&self) -> Result<(), FsError> {
        Ok(())
    }
}

struct Factory(Arc<dyn Filesystem>);

impl SftpFactory<()> for Factory {
    async fn open(
        &self,
        _ctx: &SftpContext<()>,
        _cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        Ok(self.0.clone())
    }
}

/// The server's side of the pipe, counting the writes that reach it.
struct CountingWriter {
    inner: tokio::io::WriteHalf<DuplexStream>,
    writes: Arc<AtomicUsize>,
}

impl AsyncWrite for CountingWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if poll.is_ready() {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// The client

/// A running session and the client's end of its pipe.
struct Bench {
    rt: Runtime,
    client: Option<Client>,
    writes: Arc<AtomicUsize>,
    /// Keeps the tmpfs directory of `local` alive.
    _dir: Option<tempfile::TempDir>,
}

struct Client {
    reader: tokio::io::ReadHalf<DuplexStream>,
    writer: tokio::io::WriteHalf<DuplexStream>,
    input: BytesMut,
    decoder: Decoder,
    handle: Bytes,
}

/// Installs the Prometheus recorder once when `SFTPGATE_BENCH_METRICS=1`.
fn install_recorder() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("SFTPGATE_BENCH_METRICS").as_deref() == Ok("1") {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("install the Prometheus recorder");
            eprintln!("metrics: Prometheus recorder installed");
        }
    });
}

impl Bench {
    fn new(storage: &str) -> Bench {
        install_recorder();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (fs, dir): (Arc<dyn Filesystem>, _) = match storage {
            "mem" => (
                Arc::new(MemFs {
                    data: pattern(FILE_SIZE as usize),
                }),
                None,
            ),
            "local" => {
                let base = if std::path::Path::new("/dev/shm").is_dir() {
                    tempfile::tempdir_in("/dev/shm")
                } else {
                    tempfile::tempdir()
                }
                .expect("tempdir");
                std::fs::write(base.path().join("file"), pattern(FILE_SIZE as usize))
                    .expect("write file");
                let fs = LocalFs::new(base.path()).expect("LocalFs");
                (Arc::new(fs), Some(base))
            }
            other => panic!("unknown storage {other}"),
        };
        let writes = Arc::new(AtomicUsize::new(0));
        let (near, far) = tokio::io::duplex(1 << 20);
        let (server_reader, server_writer) = tokio::io::split(far);
        let session = StreamSession::new(ServerConfig::default(), NoHooks, Factory(fs));
        let connection = ConnectionInfo {
            id: ConnectionId(1),
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 22)),
            user: "bench".into(),
            method: AuthMethod::External,
            client_software: String::new(),
        };
        let counting = CountingWriter {
            inner: server_writer,
            writes: writes.clone(),
        };
        rt.spawn(session.run(connection, server_reader, counting));
        let (reader, writer) = tokio::io::split(near);
        let mut client = Client {
            reader,
            writer,
            input: BytesMut::with_capacity(1 << 20),
            decoder: Decoder::with_max_packet(u32::MAX),
            handle: Bytes::new(),
        };
        rt.block_on(async {
            let mut out = BytesMut::new();
            Request::Init {
                version: 3,
                extensions: Vec::new(),
            }
            .encode(&mut out);
            Request::Open {
                id: 1,
                filename: Bytes::from_static(b"/file"),
                pflags: OpenFlags::READ | OpenFlags::WRITE,
                attrs: FileAttributes::new(),
            }
            .encode(&mut out);
            client.writer.write_all(&out).await.expect("send");
            match client.recv().await {
                Response::Version { .. } => {}
                other => panic!("expected VERSION, got {other:?}"),
            }
            match client.recv().await {
                Response::Handle { handle, .. } => client.handle = handle,
                other => panic!("expected HANDLE, got {other:?}"),
            }
        });
        Bench {
            rt,
            client: Some(client),
            writes,
            _dir: dir,
        }
    }

    /// Sends `batch` (pre-encoded requests) and awaits `replies` replies; returns the number
    /// of failed replies (STATUS other than OK).
    fn round(&mut self, batch: &Bytes, replies: usize) -> usize {
        let client = self.client.as_mut().expect("client");
        self.rt.block_on(client.round(batch, replies))
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        // EOF ends the session; then the runtime goes, without waiting for stragglers.
        drop(self.client.take());
        let rt = std::mem::replace(
            &mut self.rt,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
        );
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

impl Client {
    async fn recv(&mut self) -> Response {
        loop {
            if let Some(r) = self
                .decoder
                .decode_response(&mut self.input)
                .expect("reply")
            {
                return r;
            }
            self.input.reserve(256 * 1024);
            let n = self.reader.read_buf(&mut self.input).await.expect("read");
            assert!(n > 0, "the session ended");
        }
    }

    async fn round(&mut self, batch: &Bytes, replies: usize) -> usize {
        let Client {
            reader,
            writer,
            input,
            decoder,
            ..
        } = self;
        let send = async {
            writer.write_all(batch).await.expect("send");
        };
        let receive = async {
            let mut failed = 0;
            let mut got = 0;
            while got < replies {
                while let Some(r) = decoder.decode_response(input).expect("reply") {
                    got += 1;
                    if let Response::Status { code, .. } = r {
                        if code != StatusCode::Ok {
                            failed += 1;
                        }
                    }
                }
                if got < replies {
                    input.reserve(256 * 1024);
                    let n = reader.read_buf(input).await.expect("read");
                    assert!(n > 0, "the session ended");
                }
            }
            failed
        };
        tokio::join!(send, receive).1
    }
}

/// Requests encoded back to back, as a client pipelines them.
fn batch(requests: impl IntoIterator<Item = Request>) -> Bytes {
    let mut out = BytesMut::new();
    for r in requests {
        r.encode(&mut out);
    }
    out.freeze()
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn reads(handle: &Bytes, first_id: u32, count: u64, base: u64) -> Vec<Request> {
    (0..count)
        .map(|k| Request::Read {
            id: first_id + k as u32,
            handle: handle.clone(),
            offset: base + k * u64::from(CHUNK),
            len: CHUNK,
        })
        .collect()
}

fn writes(handle: &Bytes, first_id: u32, count: u64, base: u64, data: &Bytes) -> Vec<Request> {
    (0..count)
        .map(|k| Request::Write {
            id: first_id + k as u32,
            handle: handle.clone(),
            offset: base + k * u64::from(CHUNK),
            data: data.clone().into(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Benches

fn bulk(c: &mut Criterion) {
    for (name, write) in [("read_64x32KiB", false), ("write_64x32KiB", true)] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(IN_FLIGHT * u64::from(CHUNK)));
        for storage in ["mem", "local"] {
            // Set up on first use only, so that a filter that skips it skips its setup too.
            let mut state: Option<(Bench, Bytes)> = None;
            group.bench_function(BenchmarkId::from_parameter(storage), |b| {
                let (bench, batch) = state.get_or_insert_with(|| {
                    let bench = Bench::new(storage);
                    let handle = bench.client.as_ref().expect("client").handle.clone();
                    let data = pattern(CHUNK as usize);
                    let batch = if write {
                        batch(writes(&handle, 10, IN_FLIGHT, 0, &data))
                    } else {
                        batch(reads(&handle, 10, IN_FLIGHT, 0))
                    };
                    (bench, batch)
                });
                b.iter(|| assert_eq!(bench.round(batch, IN_FLIGHT as usize), 0));
            });
        }
        group.finish();
    }
}

fn sequencer(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequencer");
    group.throughput(Throughput::Elements(IN_FLIGHT + 1));
    let mut shared: Option<Bench> = None;
    let base = u64::from(CHUNK) * IN_FLIGHT;
    for (name, write_at) in [
        // overlaps the first READ: ordered after it
        ("64_reads_then_overlapping_write", 0),
        // beyond every READ: runs at once
        ("64_reads_then_disjoint_write", base),
    ] {
        let mut request_batch: Option<Bytes> = None;
        group.bench_function(name, |b| {
            let bench = shared.get_or_insert_with(|| Bench::new("mem"));
            let batch = request_batch.get_or_insert_with(|| {
                let handle = bench.client.as_ref().expect("client").handle.clone();
                let mut requests = reads(&handle, 10, IN_FLIGHT, 0);
                requests.extend(writes(&handle, 1000, 1, write_at, &pattern(CHUNK as usize)));
                batch(requests)
            });
            b.iter(|| assert_eq!(bench.round(batch, IN_FLIGHT as usize + 1), 0));
        });
    }
    group.finish();
}

fn small_replies(c: &mut Criterion) {
    const N: u32 = 256;
    let mut group = c.benchmark_group("small_replies");
    group.throughput(Throughput::Elements(u64::from(N)));
    let mut state: Option<(Bench, Bytes)> = None;
    group.bench_function("stat_x256_pipelined", |b| {
        let (bench, batch) = state.get_or_insert_with(|| {
            let mut bench = Bench::new("mem");
            let batch = batch((0..N).map(|i| Request::Stat {
                id: 10 + i,
                path: Bytes::from_static(b"/file"),
            }));
            let before = bench.writes.load(Ordering::Relaxed);
            bench.round(&batch, N as usize);
            let used = bench.writes.load(Ordering::Relaxed) - before;
            eprintln!("small_replies: {N} STAT replies reached the pipe in {used} writes");
            (bench, batch)
        });
        b.iter(|| assert_eq!(bench.round(batch, N as usize), 0));
    });
    group.finish();
}

fn stat_roundtrip(c: &mut Criterion) {
    let mut group = c.benchmark_group("stat_roundtrip");
    group.throughput(Throughput::Elements(1));
    let batch = batch([Request::Stat {
        id: 7,
        path: Bytes::from_static(b"/file"),
    }]);
    for storage in ["mem", "local"] {
        let mut state: Option<Bench> = None;
        group.bench_function(BenchmarkId::from_parameter(storage), |b| {
            let bench = state.get_or_insert_with(|| Bench::new(storage));
            b.iter(|| bench.round(&batch, 1));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bulk, sequencer, small_replies, stat_roundtrip
}
criterion_main!(benches);
