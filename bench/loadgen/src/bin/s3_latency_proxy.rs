//! `sftpgate-s3-latency-proxy`: a TCP proxy that makes an S3 server on loopback answer like
//! one far away, for benchmarks (bench/object.sh). It listens on `--listen` (127.0.0.1:0 by
//! default), prints `PORT <port>` on stdout once it listens, and forwards every connection
//! to `--upstream`.
//!
//! Latency: the first client bytes of every HTTP request wait `--delay-ms` before they go
//! on. "First bytes of a request" are the first client-to-server bytes of a connection and
//! the first ones after the server's previous response began; HTTP/1.1 clients such as
//! reqwest (object_store) and rclone do not pipeline, so that is exactly once per request.
//! An interim `100 Continue` answer (rclone asks for one before large bodies) does not count
//! as a response, so such a request is delayed once too. A GET then costs the delay plus its
//! transfer, as it does on a store 10-30 ms away.
//!
//! Bandwidth: `--conn-mbps` caps each direction of each connection at that many megabytes
//! (10^6 bytes) per second, as S3 serves one stream at ~50-100 MB/s; 0: no cap.
//!
//! Plain TCP: nothing is parsed or rewritten, so request signatures (which cover the Host
//! header the client sent to the proxy) stay valid for a path-style client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(name = "sftpgate-s3-latency-proxy")]
struct Args {
    /// The S3 endpoint to forward to: `http://HOST:PORT` or `HOST:PORT`.
    #[arg(long)]
    upstream: String,
    /// Address to listen on (port 0: a free one, printed as `PORT <port>`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay of the first bytes of every HTTP request, milliseconds.
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// Bandwidth cap per connection and direction, megabytes (10^6 B) per second; 0: none.
    #[arg(long, default_value_t = 0.0)]
    conn_mbps: f64,
}

/// Bytes read (and written) at once; also the pacing granule of `--conn-mbps`.
const BUFFER: usize = 64 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = args
        .upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    anyhow::ensure!(
        !upstream.contains('/'),
        "--upstream must be http://HOST:PORT or HOST:PORT (plain HTTP), not {:?}",
        args.upstream
    );
    anyhow::ensure!(
        args.conn_mbps >= 0.0 && args.conn_mbps.is_finite(),
        "--conn-mbps must be 0 or positive"
    );
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    println!("PORT {port}");
    eprintln!(
        "s3-latency-proxy: 127.0.0.1:{port} -> {upstream}, {} ms per request, {}",
        args.delay_ms,
        if args.conn_mbps > 0.0 {
            format!("{} MB/s per connection", args.conn_mbps)
        } else {
            "no bandwidth cap".to_owned()
        }
    );
    let shape = Shape {
        delay: Duration::from_millis(args.delay_ms),
        bytes_per_second: (args.conn_mbps > 0.0).then_some(args.conn_mbps * 1e6),
    };
    loop {
        let (client, peer) = listener.accept().await.context("accepting")?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, &upstream, shape).await {
                eprintln!("s3-latency-proxy: connection from {peer}: {e:#}");
            }
        });
    }
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    delay: Duration,
    /// The bandwidth cap; none without one.
    bytes_per_second: Option<f64>,
}

async fn forward(client: TcpStream, upstream: &str, shape: Shape) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to {upstream}"))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // True when the next client bytes start a new request.
    let request_starts = Arc::new(AtomicBool::new(true));
    let up = {
        let request_starts = request_starts.clone();
        copy(client_read, server_write, shape, move |_| {
            request_starts.swap(false, Ordering::AcqRel)
        })
    };
    let down = copy(server_read, client_write, shape, move |bytes| {
        if !bytes.starts_with(b"HTTP/1.1 100 ") {
            request_starts.store(true, Ordering::Release);
        }
        false
    });
    let (up, down) = tokio::join!(up, down);
    up.context("client to server")?;
    down.context("server to client")?;
    Ok(())
}

/// Copies `from` to `to` until EOF, then shuts `to` down. `on_bytes` sees the bytes of
/// every read and says whether to hold them for `shape.delay` first.
async fn copy(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shape: Shape,
    mut on_bytes: impl FnMut(&[u8]) -> bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    // When the next bytes may go, under the bandwidth cap.
    let mut next_free = Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // The peer reset: end this direction quietly, as a closed connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        };
        if on_bytes(&buf[..n]) && !shape.delay.is_zero() {
            tokio::time::sleep(shape.delay).await;
        }
        if let Some(rate) = shape.bytes_per_second {
            // No credit for idle time beyond a small burst, so a pause does not buy a
            // burst at unlimited speed.
            let now = Instant::now();
            let burst = Duration::from_millis(5);
            next_free = next_free.max(now.checked_sub(burst).unwrap_or(now));
            tokio::time::sleep_until(next_free).await;
            next_free += Duration::from_secs_f64(n as f64 / rate);
        }
        to.write_all(&buf[..n]).await?;
    }
    to.shutdown().await
}
