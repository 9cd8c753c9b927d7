//! `sftpgate-loadgen`: an SFTP load generator on russh and sftpgate-proto.
//!
//! N sessions, each its own SSH connection, each with M requests in flight, upload a file of
//! a given size (WRITE requests of a given size), then download it again. File content is a
//! deterministic function of (session, offset) and every DATA reply is compared with it, so
//! the download verifies the upload (and a misplaced, stale or foreign chunk fails the run).
//!
//! Reported per phase: aggregate MB/s (all bytes over the wall time of the phase),
//! per-session MB/s (min, median, max; sessions below half the mean are flagged as unfair),
//! the server's CPU seconds per GiB moved when `--server-cgroup` or `--server-pid` is given
//! (the cgroup's own count, exact; or utime + stime of that process and every live
//! descendant, plus what they reaped, from /proc, in 10 ms ticks; either way OpenSSH's
//! per-connection sshd and sftp-server processes count too), and the load generator's own
//! CPU seconds per GiB (to see whether the client is the limit).
//!
//! The last lines are machine-readable: `RESULT key=value ...`, one per reported phase.

/// mimalloc, as `sftpgate` itself: russh hands every channel message over in a fresh
/// zero-filled buffer, and under glibc's malloc those kept landing on pages it had given
/// back, so a download paid page faults and `clear_page` for them (9 % of the load
/// generator's CPU in an 8-session download; with mimalloc its CPU per GiB fell ~15 %,
/// 4 alternating runs; uploads the same). A load generator that spends less leaves more of
/// the shared cores to the server under test.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::{Buf as _, Bytes, BytesMut};
use clap::Parser;
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect};
use sftpgate_proto::{
    append_message, Decoder, FileAttributes, OpenFlags, PacketType, Request, Response, StatusCode,
    DATA_HEADER_LEN,
};
use tokio::sync::Semaphore;

/// Length of the content pattern: a prime, so that no power-of-two request size lines a
/// chunk up with the content of another offset within a file smaller than PERIOD requests.
const PERIOD: usize = 1_048_573;
/// Largest request size (the pattern buffer holds PERIOD + this many bytes).
const MAX_REQUEST: u64 = 1 << 20;
/// `USER_HZ`: the unit of the CPU times in /proc/PID/stat (100 on every Linux ABI).
const CLK_TCK: f64 = 100.0;

/// SFTP load generator: N sessions (one SSH connection each) x M requests in flight, upload
/// then download with verified content; reports MB/s, fairness and server CPU per GiB.
#[derive(Debug, Parser)]
#[command(name = "sftpgate-loadgen", version)]
struct Args {
    /// Server address (loopback only unless --allow-remote).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server port.
    #[arg(long)]
    port: u16,
    /// User name to log in as.
    #[arg(long, env = "USER", default_value = "root")]
    user: String,
    /// Private key file (OpenSSH format, no passphrase).
    #[arg(long)]
    key: PathBuf,
    /// Cipher: aes128-gcm@openssh.com, chacha20-poly1305@openssh.com, aes256-gcm@openssh.com
    /// or aes128-ctr (the `@openssh.com` suffix may be left out).
    #[arg(long, default_value = "aes128-gcm@openssh.com")]
    cipher: String,
    /// Sessions, each on its own SSH connection.
    #[arg(long, short = 'n', default_value_t = 1)]
    sessions: usize,
    /// Requests in flight per session.
    #[arg(long, short = 'm', default_value_t = 64)]
    in_flight: usize,
    /// Bytes per READ and WRITE request (suffixes K, M; at most 1M).
    #[arg(long, default_value = "32K", value_parser = parse_size)]
    request_size: u64,
    /// Bytes uploaded and downloaded per session (suffixes K, M, G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    size: u64,
    /// Upload bytes per SSH channel data message: the server's maximum packet size (32 KiB
    /// for OpenSSH and sftpgate), so that the request stream fills whole SSH packets.
    #[arg(long, default_value = "32K", value_parser = parse_size)]
    chunk: u64,
    /// Largest SSH channel packet the load generator accepts (CHANNEL_OPEN's maximum packet
    /// size): 32768 is what OpenSSH's `ssh` announces; at most 65535 (russh's limit).
    #[arg(long, default_value = "32K", value_parser = parse_size)]
    max_packet: u64,
    /// Remote directory the files go to (must exist).
    #[arg(long, default_value = ".")]
    dir: String,
    /// Phases to report: `up`, `down` or `up,down`. Both always run (the download
    /// verifies what was uploaded); only these are reported.
    #[arg(long, default_value = "up,down")]
    phases: String,
    /// PID of the server's listening process on this machine: report its CPU per GiB.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A cgroup directory holding the server and what it starts (v1 with `cpuacct.usage`,
    /// v2 with `cpu.stat`): report its CPU per GiB from there, exactly (over --server-pid).
    #[arg(long)]
    server_cgroup: Option<PathBuf>,
    /// Label for the RESULT lines.
    #[arg(long, default_value = "")]
    label: String,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Keep the remote files (default: removed at the end).
    #[arg(long)]
    keep: bool,
    /// Allow a non-loopback host.
    #[arg(long)]
    allow_remote: bool,
    /// One line per session and phase.
    #[arg(long, short)]
    verbose: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|e| format!("bad size {s:?}: {e}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

fn cipher_name(s: &str) -> anyhow::Result<russh::cipher::Name> {
    use russh::cipher::*;
    Ok(match s {
        "aes128-gcm" | "aes128-gcm@openssh.com" => AES_128_GCM,
        "aes256-gcm" | "aes256-gcm@openssh.com" => AES_256_GCM,
        "chacha20-poly1305" | "chacha20-poly1305@openssh.com" => CHACHA20_POLY1305,
        "aes128-ctr" => AES_128_CTR,
        "aes256-ctr" => AES_256_CTR,
        other => bail!("unsupported cipher {other:?}"),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sftpgate-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit = Duration::from_secs(args.timeout);
    let result = runtime.block_on(async {
        match tokio::time::timeout(limit, run(args)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("gave up after {limit:?} (--timeout)")),
        }
    });
    // Do not wait for connection tasks of a failed run.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sftpgate-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What every session task shares.
struct Ctx {
    pattern: Pattern,
    size: u64,
    request: usize,
    in_flight: usize,
    /// Largest channel data message of requests (an upload's WRITEs, READs sent together).
    chunk: usize,
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.allow_remote && !matches!(args.host.as_str(), "127.0.0.1" | "::1" | "localhost") {
        bail!("--host {} is not loopback (use --allow-remote)", args.host);
    }
    if args.request_size == 0 || args.request_size > MAX_REQUEST {
        bail!("--request-size must be between 1 and {MAX_REQUEST}");
    }
    if args.size == 0 || args.sessions == 0 || args.in_flight == 0 {
        bail!("--size, --sessions and --in-flight must be positive");
    }
    if !(512..=65535).contains(&args.max_packet) {
        bail!("--max-packet must be between 512 and 65535");
    }
    if args.size.div_ceil(args.request_size) > u64::from(u32::MAX / 4) {
        bail!("too many requests per session: raise --request-size");
    }
    let report_up = args.phases.split(',').any(|p| p.trim() == "up");
    let report_down = args.phases.split(',').any(|p| p.trim() == "down");
    if !report_up && !report_down {
        bail!("--phases must name up, down or both");
    }
    let key = Arc::new(
        russh::keys::load_secret_key(&args.key, None)
            .with_context(|| format!("loading the key {}", args.key.display()))?,
    );
    let config = Arc::new(client::Config {
        preferred: russh::Preferred {
            cipher: Cow::Owned(vec![cipher_name(&args.cipher)?]),
            ..russh::Preferred::default()
        },
        nodelay: true,
        inactivity_timeout: None,
        maximum_packet_size: args.max_packet as u32,
        ..client::Config::default()
    });
    let ctx = Arc::new(Ctx {
        pattern: Pattern::new(args.request_size as usize),
        size: args.size,
        request: args.request_size as usize,
        in_flight: args.in_flight,
        chunk: args.chunk.max(1) as usize,
    });
    let addr = format!("{}:{}", args.host, args.port);
    let started = Instant::now();
    let mut connecting = Vec::new();
    for i in 0..args.sessions {
        let (config, addr, user, key) =
            (config.clone(), addr.clone(), args.user.clone(), key.clone());
        let max_packet = (args.request_size as u32).saturating_add(1024);
        connecting.push(tokio::spawn(async move {
            Sftp::connect(config, &addr, &user, key, max_packet)
                .await
                .with_context(|| format!("session {i}: connecting to {addr}"))
        }));
    }
    let mut sessions = Vec::new();
    for c in connecting {
        sessions.push(c.await.context("connect task")??);
    }
    let dir = args.dir.trim_end_matches('/');
    let dir = if dir.is_empty() && args.dir.starts_with('/') {
        ""
    } else {
        dir
    };
    let paths: Vec<String> = (0..args.sessions)
        .map(|i| format!("{dir}/loadgen-{}-{i}.bin", std::process::id()))
        .collect();
    eprintln!(
        "loadgen: {} session(s) to {addr} ({}), {} in flight x {} B requests, {} B per session; connected in {:.2?}",
        args.sessions,
        args.cipher,
        args.in_flight,
        args.request_size,
        args.size,
        started.elapsed()
    );

    let mut results = Vec::new();
    let server = ServerCpu::from_args(&args);
    let (sessions, up) = phase(sessions, &paths, Phase::Up, &ctx, server.as_ref()).await?;
    if report_up {
        results.push(up);
    }
    let (mut sessions, down) = phase(sessions, &paths, Phase::Down, &ctx, server.as_ref()).await?;
    if report_down {
        results.push(down);
    }
    if !args.keep {
        for (s, path) in sessions.iter_mut().zip(&paths) {
            s.remove(path).await?;
        }
    }
    for s in sessions {
        s.disconnect().await;
    }
    for r in &results {
        r.print(&args);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Up,
    Down,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Up => "up",
            Phase::Down => "down",
        }
    }
}

/// What one phase measured.
struct PhaseStats {
    phase: Phase,
    bytes_per_session: u64,
    /// Per session: from the common start to its own end (open, transfer, close).
    per_session: Vec<Duration>,
    wall: Duration,
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
}

/// Runs one phase on all sessions at once; hands the sessions back.
async fn phase(
    sessions: Vec<Sftp>,
    paths: &[String],
    phase: Phase,
    ctx: &Arc<Ctx>,
    server: Option<&ServerCpu>,
) -> anyhow::Result<(Vec<Sftp>, PhaseStats)> {
    let server0 = server.and_then(ServerCpu::seconds);
    let client0 = self_cpu();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut s) in sessions.into_iter().enumerate() {
        let ctx = ctx.clone();
        let path = paths[i].clone();
        let seed = (i as u64 * 104_729 + 1) % PERIOD as u64;
        tasks.push(tokio::spawn(async move {
            let result = match phase {
                Phase::Up => s.upload(&path, &ctx, seed).await,
                Phase::Down => s.download(&path, &ctx, seed).await,
            };
            (s, result.map(|()| start.elapsed()))
        }));
    }
    let mut sessions = Vec::new();
    let mut per_session = Vec::new();
    let mut failure = None;
    for (i, task) in tasks.into_iter().enumerate() {
        let (s, result) = task.await.context("session task")?;
        match result {
            Ok(d) => per_session.push(d),
            Err(e) => {
                failure.get_or_insert(e.context(format!("session {i}, phase {}", phase.name())));
            }
        }
        sessions.push(s);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let wall = start.elapsed();
    let server_cpu = match (server0, server.and_then(ServerCpu::seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let client_cpu = match (client0, self_cpu()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok((
        sessions,
        PhaseStats {
            phase,
            bytes_per_session: ctx.size,
            per_session,
            wall,
            server_cpu,
            client_cpu,
        },
    ))
}

impl PhaseStats {
    fn print(&self, args: &Args) {
        let n = self.per_session.len();
        let total = self.bytes_per_session * n as u64;
        let gib = total as f64 / (1u64 << 30) as f64;
        let agg = total as f64 / self.wall.as_secs_f64() / 1e6;
        let mut rates: Vec<f64> = self
            .per_session
            .iter()
            .map(|d| self.bytes_per_session as f64 / d.as_secs_f64() / 1e6)
            .collect();
        let mean = rates.iter().sum::<f64>() / n as f64;
        let unfair: Vec<usize> = rates
            .iter()
            .enumerate()
            .filter(|(_, r)| **r < mean / 2.0)
            .map(|(i, _)| i)
            .collect();
        if args.verbose {
            for (i, r) in rates.iter().enumerate() {
                eprintln!(
                    "  {} session {i}: {r:.1} MB/s ({:.3} s)",
                    self.phase.name(),
                    self.per_session[i].as_secs_f64()
                );
            }
        }
        rates.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            rates[n / 2]
        } else {
            (rates[n / 2 - 1] + rates[n / 2]) / 2.0
        };
        let per_gib = |cpu: Option<f64>| cpu.map_or("na".to_owned(), |c| format!("{:.3}", c / gib));
        println!(
            "{:>4}: {n} x {} B in {:.3} s: aggregate {agg:.1} MB/s; per session min {:.1} median {median:.1} max {:.1} MB/s (mean {mean:.1}){}; server CPU {} s/GiB, loadgen CPU {} s/GiB",
            self.phase.name(),
            self.bytes_per_session,
            self.wall.as_secs_f64(),
            rates[0],
            rates[n - 1],
            if unfair.is_empty() {
                String::new()
            } else {
                format!("; UNFAIR: sessions {unfair:?} below half the mean")
            },
            per_gib(self.server_cpu),
            per_gib(self.client_cpu),
        );
        println!(
            "RESULT label={} phase={} cipher={} sessions={n} in_flight={} request={} bytes_per_session={} wall_s={:.3} agg_mbps={agg:.1} sess_min={:.1} sess_med={median:.1} sess_max={:.1} unfair={} srv_cpu_per_gib={} cli_cpu_per_gib={}",
            if args.label.is_empty() { "-" } else { &args.label },
            self.phase.name(),
            args.cipher,
            args.in_flight,
            args.request_size,
            self.bytes_per_session,
            self.wall.as_secs_f64(),
            rates[0],
            rates[n - 1],
            unfair.len(),
            per_gib(self.server_cpu),
            per_gib(self.client_cpu),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Content

/// Pseudo-random bytes, periodic with [`PERIOD`]; a session's byte at `offset` is
/// `buf[(offset + seed) % PERIOD]`. Chunks are zero-copy slices of one buffer.
struct Pattern {
    buf: Bytes,
}

impl Pattern {
    fn new(max_request: usize) -> Pattern {
        assert!(max_request <= PERIOD);
        let mut v = vec![0u8; PERIOD + max_request];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for chunk in v[..PERIOD].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let (head, tail) = v.split_at_mut(PERIOD);
        tail.copy_from_slice(&head[..max_request]);
        Pattern {
            buf: Bytes::from(v),
        }
    }

    fn slice(&self, seed: u64, offset: u64, len: usize) -> Bytes {
        let at = ((offset + seed) % PERIOD as u64) as usize;
        self.buf.slice(at..at + len)
    }
}

// ---------------------------------------------------------------------------------------------
// The SFTP client

struct Handler;

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// One SFTP session on its own SSH connection.
struct Sftp {
    ssh: client::Handle<Handler>,
    reader: ChannelReadHalf,
    writer: ChannelWriteHalf<client::Msg>,
    input: BytesMut,
    decoder: Decoder,
    next_id: u32,
}

impl Sftp {
    async fn connect(
        config: Arc<client::Config>,
        addr: &str,
        user: &str,
        key: Arc<PrivateKey>,
        max_packet: u32,
    ) -> anyhow::Result<Sftp> {
        let mut ssh = client::connect(config, addr, Handler).await?;
        let auth = ssh
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
            .await?;
        if !auth.success() {
            bail!("public key authentication failed for user {user:?}");
        }
        let channel = ssh.channel_open_session().await?;
        channel.request_subsystem(true, "sftp").await?;
        let (reader, writer) = channel.split();
        let mut s = Sftp {
            ssh,
            reader,
            writer,
            input: BytesMut::with_capacity(max_packet as usize * 2),
            // Frames straddle channel messages (the server fills whole SSH packets), so the
            // buffer grows by several messages at a time rather than once per frame.
            decoder: Decoder::with_max_packet(max_packet.max(64 * 1024)).growing_by(128 * 1024),
            next_id: 1,
        };
        s.send(&Request::Init {
            version: 3,
            extensions: Vec::new(),
        })
        .await?;
        match recv(&mut s.reader, &mut s.input, &mut s.decoder).await? {
            Response::Version { version: 3, .. } => Ok(s),
            other => bail!("expected VERSION 3, got {}", describe(&other)),
        }
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    async fn send(&self, request: &Request) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        request.encode(&mut out);
        self.writer.data_bytes(out.freeze()).await?;
        Ok(())
    }

    async fn call(&mut self, request: Request) -> anyhow::Result<Response> {
        let id = request.id();
        self.send(&request).await?;
        let response = recv(&mut self.reader, &mut self.input, &mut self.decoder).await?;
        if response.id() != id {
            bail!("reply id {:?} to request {id:?}", response.id());
        }
        Ok(response)
    }

    async fn open(&mut self, path: &str, pflags: OpenFlags) -> anyhow::Result<Bytes> {
        let id = self.id();
        let request = Request::Open {
            id,
            filename: Bytes::copy_from_slice(path.as_bytes()),
            pflags,
            attrs: FileAttributes::new(),
        };
        match self.call(request).await? {
            Response::Handle { handle, .. } => Ok(handle),
            other => bail!("OPEN {path}: {}", describe(&other)),
        }
    }

    async fn close(&mut self, handle: Bytes) -> anyhow::Result<()> {
        let id = self.id();
        expect_ok(self.call(Request::Close { id, handle }).await?, "CLOSE")
    }

    async fn remove(&mut self, path: &str) -> anyhow::Result<()> {
        let id = self.id();
        let filename = Bytes::copy_from_slice(path.as_bytes());
        expect_ok(self.call(Request::Remove { id, filename }).await?, "REMOVE")
    }

    async fn disconnect(self) {
        let _ = self.writer.eof().await;
        let _ = self
            .ssh
            .disconnect(Disconnect::ByApplication, "done", "en")
            .await;
    }

    /// Writes the session's content to `path`, `in_flight` WRITEs at a time.
    async fn upload(&mut self, path: &str, ctx: &Ctx, seed: u64) -> anyhow::Result<()> {
        let handle = self
            .open(path, OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC)
            .await?;
        let (size, req) = (ctx.size, ctx.request as u64);
        let count = size.div_ceil(req);
        let first = self.next_id;
        self.next_id = self.next_id.wrapping_add(count as u32);
        let window = Semaphore::new(ctx.in_flight);
        let Sftp {
            reader,
            writer,
            input,
            decoder,
            ..
        } = self;
        // The requests go out as one byte stream cut into channel messages of `chunk` bytes
        // (one SSH packet each when `chunk` is the server's maximum packet size), as
        // OpenSSH's client does; a message per request would add a small SSH packet for
        // the last bytes of every request. What is buffered is sent before waiting for a
        // free slot in the window.
        let send = async {
            let chunk = ctx.chunk;
            let mut out = BytesMut::new();
            for k in 0..count {
                take_slot(&window, writer, &mut out).await?;
                let offset = k * req;
                let len = req.min(size - offset) as usize;
                out.reserve(len + 64);
                Request::Write {
                    id: first.wrapping_add(k as u32),
                    handle: handle.clone(),
                    offset,
                    data: ctx.pattern.slice(seed, offset, len).into(),
                }
                .encode(&mut out);
                while out.len() >= chunk {
                    writer.data_bytes(out.split_to(chunk).freeze()).await?;
                }
            }
            if !out.is_empty() {
                writer.data_bytes(out.split().freeze()).await?;
            }
            anyhow::Ok(())
        };
        let receive = async {
            for _ in 0..count {
                let response = recv(reader, input, decoder).await?;
                let in_range = response
                    .id()
                    .is_some_and(|id| id.wrapping_sub(first) < count as u32);
                match response {
                    Response::Status {
                        code: StatusCode::Ok,
                        ..
                    } if in_range => window.add_permits(1),
                    other => bail!("WRITE: {}", describe(&other)),
                }
            }
            Ok(())
        };
        tokio::try_join!(send, receive)?;
        self.close(handle).await
    }

    /// Reads `path` back, `in_flight` READs at a time, and checks every byte.
    async fn download(&mut self, path: &str, ctx: &Ctx, seed: u64) -> anyhow::Result<()> {
        let handle = self.open(path, OpenFlags::READ).await?;
        let (size, req) = (ctx.size, ctx.request as u64);
        let count = size.div_ceil(req);
        let first = self.next_id;
        // Ids from first + count on are for re-reads after short reads.
        let mut retry_id = first.wrapping_add(count as u32);
        self.next_id = first.wrapping_add(2 * count as u32 + 1);
        let window = Semaphore::new(ctx.in_flight);
        let pending: Mutex<HashMap<u32, (u64, u32)>> = Mutex::new(HashMap::new());
        let Sftp {
            reader,
            writer,
            input,
            decoder,
            ..
        } = self;
        let writer = &*writer;
        let read_request = |out: &mut BytesMut, id: u32, offset: u64, len: u32| {
            Request::Read {
                id,
                handle: handle.clone(),
                offset,
                len,
            }
            .encode(out);
        };
        // READs go out together when the window has room for several (after a burst of
        // replies), one channel message for all of them, as OpenSSH's `ssh` forwards what
        // its `sftp` queued in the pipe: a message per READ would cost the server an SSH
        // packet per request.
        let send = async {
            let mut out = BytesMut::new();
            for k in 0..count {
                take_slot(&window, writer, &mut out).await?;
                let id = first.wrapping_add(k as u32);
                let offset = k * req;
                let len = req.min(size - offset) as u32;
                pending.lock().expect("pending").insert(id, (offset, len));
                read_request(&mut out, id, offset, len);
                if out.len() >= ctx.chunk {
                    writer.data_bytes(out.split().freeze()).await?;
                }
            }
            if !out.is_empty() {
                writer.data_bytes(out.split().freeze()).await?;
            }
            anyhow::Ok(())
        };
        let receive = async {
            let mut received = 0u64;
            while received < size {
                let expected = |id: u32| pending.lock().expect("pending").remove(&id);
                let (offset, len, n) =
                    match recv_data(reader, input, decoder, expected, &ctx.pattern, seed).await? {
                        Reply::Data { offset, len, n } => (offset, len, n),
                        Reply::Other(response) => bail!("READ: {}", describe(&response)),
                    };
                received += n as u64;
                if n < len as usize {
                    // A short read: ask for the rest (same window slot).
                    let (offset, len) = (offset + n as u64, len - n as u32);
                    let id = retry_id;
                    retry_id = retry_id.wrapping_add(1);
                    pending.lock().expect("pending").insert(id, (offset, len));
                    let mut out = BytesMut::with_capacity(64);
                    read_request(&mut out, id, offset, len);
                    writer.data_bytes(out.freeze()).await?;
                } else {
                    window.add_permits(1);
                }
            }
            Ok(())
        };
        tokio::try_join!(send, receive)?;
        self.close(handle).await
    }
}

/// Takes a slot in the request window; when none is free, first sends what `out` holds
/// (the replies that free a slot answer requests the server must have), then waits.
async fn take_slot(
    window: &Semaphore,
    writer: &ChannelWriteHalf<client::Msg>,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    match window.try_acquire() {
        Ok(permit) => permit.forget(),
        Err(_) => {
            if !out.is_empty() {
                writer.data_bytes(out.split().freeze()).await?;
            }
            window.acquire().await?.forget();
        }
    }
    Ok(())
}

/// What [`recv_data`] took off the channel.
#[derive(Debug)]
enum Reply {
    /// DATA for the READ of `len` bytes at `offset`: `n` bytes, all as expected.
    Data { offset: u64, len: u32, n: usize },
    /// Any other reply (never DATA).
    Other(Response),
}

/// The next reply of a download: DATA compared with the expected content, which `expected`
/// gives (and forgets) for the id of each READ in flight as `(offset, len)`. A DATA reply
/// whose header has arrived but not all of its data is compared piece by piece as the
/// channel's messages bring it, instead of being joined into one buffer first (a copy of
/// every byte downloaded, and with 32 KiB READs every reply straddles two messages); any
/// other reply is decoded as [`recv`] does.
async fn recv_data(
    reader: &mut ChannelReadHalf,
    input: &mut BytesMut,
    decoder: &mut Decoder,
    mut expected: impl FnMut(u32) -> Option<(u64, u32)>,
    pattern: &Pattern,
    seed: u64,
) -> anyhow::Result<Reply> {
    loop {
        if let Some(header) = data_header_of(input) {
            let DataHeader { frame_len, id, n } = header;
            if frame_len > decoder.max_packet() as usize {
                bail!(
                    "DATA of {frame_len} B, above the limit of {}",
                    decoder.max_packet()
                );
            }
            let Some((offset, len)) = expected(id) else {
                bail!("DATA for unknown request id {id}");
            };
            if n == 0 || n > len as usize {
                bail!("READ of {len} B at {offset} returned {n} B");
            }
            let mut check = DataCheck::new(pattern.slice(seed, offset, n));
            input.advance(DATA_HEADER_LEN);
            let first = input.split_to(input.len().min(n)).freeze();
            check.feed(first).map_err(|()| mismatch(n, offset))?;
            while !check.done() {
                let message = next_message(reader).await?;
                let rest = check.feed(message).map_err(|()| mismatch(n, offset))?;
                append_message(input, rest);
            }
            return Ok(Reply::Data { offset, len, n });
        }
        if let Some(response) = decoder
            .decode_response(input)
            .context("undecodable reply")?
        {
            return Ok(Reply::Other(response));
        }
        let message = next_message(reader).await?;
        append_message(input, message);
    }
}

fn mismatch(n: usize, offset: u64) -> anyhow::Error {
    anyhow::anyhow!("content mismatch in the {n} B read at offset {offset}")
}

/// A DATA reply's data compared with what it should be, piece by piece as it arrives.
struct DataCheck {
    want: Bytes,
    seen: usize,
}

impl DataCheck {
    fn new(want: Bytes) -> DataCheck {
        DataCheck { want, seen: 0 }
    }

    /// Compares the front of `bytes`, as much of it as the data still lacks, and returns
    /// what follows (the next reply's bytes: the only handle left on the message's buffer,
    /// so that `append_message` can take it over); `Err` on a difference.
    fn feed(&mut self, bytes: Bytes) -> Result<Bytes, ()> {
        let take = (self.want.len() - self.seen).min(bytes.len());
        if bytes[..take] != self.want[self.seen..self.seen + take] {
            return Err(());
        }
        self.seen += take;
        Ok(bytes.slice(take..))
    }

    fn done(&self) -> bool {
        self.seen == self.want.len()
    }
}

/// A DATA reply's header at the front of `input`.
#[derive(Debug, PartialEq, Eq)]
struct DataHeader {
    /// The frame's length field: type, id, data length and data.
    frame_len: usize,
    id: u32,
    /// Bytes of data.
    n: usize,
}

/// The header of the DATA reply at the front of `input`, if that is what is there and its
/// header has arrived whole; `None` for anything else (another reply, a header still
/// incomplete, a frame whose lengths disagree: the decoder's path then answers it).
fn data_header_of(input: &[u8]) -> Option<DataHeader> {
    let header: &[u8; DATA_HEADER_LEN] = input.get(..DATA_HEADER_LEN)?.try_into().ok()?;
    if header[4] != PacketType::Data as u8 {
        return None;
    }
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let (frame_len, id, n) = (word(0) as usize, word(5), word(9) as usize);
    (frame_len == 9 + n).then_some(DataHeader { frame_len, id, n })
}

/// The next channel data message; anything else but stderr ends the session.
async fn next_message(reader: &mut ChannelReadHalf) -> anyhow::Result<Bytes> {
    loop {
        match reader.wait().await {
            Some(ChannelMsg::Data { data }) => return Ok(data),
            Some(ChannelMsg::ExtendedData { data, .. }) => {
                eprintln!(
                    "server stderr: {}",
                    String::from_utf8_lossy(&data).trim_end()
                );
            }
            Some(ChannelMsg::Failure) => bail!("the server refused the sftp subsystem"),
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                bail!("the server closed the SFTP channel")
            }
            Some(_) => {}
        }
    }
}

/// The next SFTP reply on the channel.
async fn recv(
    reader: &mut ChannelReadHalf,
    input: &mut BytesMut,
    decoder: &mut Decoder,
) -> anyhow::Result<Response> {
    loop {
        if let Some(response) = decoder
            .decode_response(input)
            .context("undecodable reply")?
        {
            return Ok(response);
        }
        let message = next_message(reader).await?;
        append_message(input, message);
    }
}

fn expect_ok(response: Response, what: &str) -> anyhow::Result<()> {
    match response {
        Response::Status {
            code: StatusCode::Ok,
            ..
        } => Ok(()),
        other => bail!("{what}: {}", describe(&other)),
    }
}

/// A reply in a few words (never the payload of DATA).
fn describe(response: &Response) -> String {
    match response {
        Response::Status { code, message, .. } => format!("STATUS {code:?}: {message}"),
        Response::Data { data, .. } => format!("DATA of {} B", data.len()),
        other => format!("{:?}", other.packet_type()),
    }
}

// ---------------------------------------------------------------------------------------------
// The server's CPU time: from its cgroup, else from /proc

/// Where the server's CPU time is read.
enum ServerCpu {
    /// A cgroup of its own: the kernel's count, in ns or us, of every process in it,
    /// exited or not.
    Cgroup(PathBuf),
    /// /proc/PID/stat of the listening process and its descendants: 10 ms ticks, each
    /// process's user and system time rounded down to one.
    Tree(u32),
}

impl ServerCpu {
    fn from_args(args: &Args) -> Option<ServerCpu> {
        match (&args.server_cgroup, args.server_pid) {
            (Some(dir), _) => Some(ServerCpu::Cgroup(dir.clone())),
            (None, Some(pid)) => Some(ServerCpu::Tree(pid)),
            (None, None) => None,
        }
    }

    /// CPU seconds so far; `None` when they cannot be read.
    fn seconds(&self) -> Option<f64> {
        match self {
            ServerCpu::Cgroup(dir) => cgroup_cpu(dir),
            ServerCpu::Tree(pid) => tree_cpu(*pid),
        }
    }
}

/// CPU seconds of a cgroup: v1 `cpuacct.usage` (ns), else v2 `cpu.stat` (`usage_usec`).
fn cgroup_cpu(dir: &std::path::Path) -> Option<f64> {
    if let Ok(text) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
        return text.trim().parse::<u64>().ok().map(|ns| ns as f64 / 1e9);
    }
    let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    parse_cpu_stat(&text)
}

/// `usage_usec` of a cgroup v2 `cpu.stat`, in seconds.
fn parse_cpu_stat(text: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix("usage_usec ")?;
        value.trim().parse::<u64>().ok().map(|us| us as f64 / 1e6)
    })
}

/// `(ppid, utime + stime + cutime + cstime in ticks)` from the text of /proc/PID/stat.
fn parse_stat(text: &str) -> Option<(u32, u64, u64)> {
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let own = num(11)? + num(12)?;
    let reaped = num(13)? + num(14)?;
    Some((ppid, own, reaped))
}

/// CPU seconds of `root` and all its live descendants, including what they reaped.
fn tree_cpu(root: u32) -> Option<f64> {
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some((ppid, own, reaped)) = parse_stat(&text) {
                procs.push((pid, ppid, own + reaped));
            }
        }
    }
    if !procs.iter().any(|p| p.0 == root) {
        return None;
    }
    let mut tree = vec![root];
    let mut ticks = 0u64;
    let mut i = 0;
    while i < tree.len() {
        let pid = tree[i];
        for p in &procs {
            if p.0 == pid {
                ticks += p.2;
            }
            if p.1 == pid {
                tree.push(p.0);
            }
        }
        i += 1;
    }
    Some(ticks as f64 / CLK_TCK)
}

/// The load generator's own CPU seconds.
fn self_cpu() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, own, _) = parse_stat(&text)?;
    Some(own as f64 / CLK_TCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_headers_are_recognised_only_whole_and_consistent() {
        let mut frame = BytesMut::new();
        sftpgate_proto::encode_data_header(&mut frame, 7, 1000);
        let header = frame.to_vec();
        assert_eq!(
            data_header_of(&header),
            Some(DataHeader {
                frame_len: 1009,
                id: 7,
                n: 1000
            })
        );
        assert_eq!(data_header_of(&header[..DATA_HEADER_LEN - 1]), None);
        let mut status = header.clone();
        status[4] = PacketType::Status as u8;
        assert_eq!(data_header_of(&status), None);
        let mut inconsistent = header.clone();
        inconsistent[3] ^= 1;
        assert_eq!(data_header_of(&inconsistent), None);
    }

    /// A DATA reply cut into messages anywhere: the data is checked whole and whatever
    /// follows it is left for the next reply; a changed byte anywhere is caught.
    #[test]
    fn data_is_checked_across_any_message_boundaries() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        let next = b"next reply";
        let mut stream = BytesMut::new();
        sftpgate_proto::encode_data_header(&mut stream, 3, data.len());
        stream.extend_from_slice(&data);
        stream.extend_from_slice(next);
        let stream = stream.freeze();
        // Feeds the bytes after the header in messages cut at `cuts`, as recv_data does;
        // returns whether they matched and what was left over.
        let run = |body: &[u8], cuts: &[usize]| -> (Result<(), ()>, Vec<u8>) {
            let mut check = DataCheck::new(Bytes::from(data.clone()));
            let mut left = Vec::new();
            let mut at = 0;
            for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
                let message = &body[at..cut.max(at)];
                at = cut.max(at);
                if check.done() {
                    left.extend_from_slice(message);
                    continue;
                }
                match check.feed(Bytes::copy_from_slice(message)) {
                    Ok(rest) => left.extend_from_slice(&rest),
                    Err(()) => return (Err(()), left),
                }
            }
            assert!(check.done());
            (Ok(()), left)
        };
        let header = data_header_of(&stream).expect("a DATA header");
        assert_eq!(header.n, data.len());
        let body = &stream[DATA_HEADER_LEN..];
        for a in 0..=body.len() {
            for b in (a..=body.len()).step_by(37) {
                assert_eq!(run(body, &[a, b]), (Ok(()), next.to_vec()), "cuts {a} {b}");
            }
        }
        for flip in [0, 1, 150, data.len() - 1] {
            let mut bad = body.to_vec();
            bad[flip] ^= 0x80;
            for cut in [0, flip, flip + 1, 200] {
                assert_eq!(run(&bad, &[cut]).0, Err(()), "flip {flip} cut {cut}");
            }
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("32K"), Ok(32768));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn cgroup_cpu_reads_either_version() {
        let stat = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n";
        assert_eq!(parse_cpu_stat(stat), Some(2.5));
        assert_eq!(parse_cpu_stat("user_usec 1\n"), None);
        let dir = std::env::temp_dir().join(format!("loadgen-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.stat"), stat).unwrap();
        assert_eq!(cgroup_cpu(&dir), Some(2.5));
        // v1 wins where both are there (a v1 cpuacct cgroup has only its own file).
        std::fs::write(dir.join("cpuacct.usage"), "1250000000\n").unwrap();
        assert_eq!(cgroup_cpu(&dir), Some(1.25));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cgroup_cpu(&dir), None);
    }

    #[test]
    fn stat_line_parses() {
        let line = "42 (a b) S 7 42 42 0 -1 4194560 100 0 0 0 150 50 3 2 20 0 1 0 1 1 1";
        assert_eq!(parse_stat(line), Some((7, 200, 5)));
    }

    #[test]
    fn pattern_differs_by_offset_and_session() {
        let p = Pattern::new(32768);
        assert_ne!(p.slice(1, 0, 32768), p.slice(1, 32768, 32768));
        assert_ne!(p.slice(1, 0, 32768), p.slice(2, 0, 32768));
        assert_eq!(p.slice(1, PERIOD as u64, 100), p.slice(1, 0, 100));
    }
}
