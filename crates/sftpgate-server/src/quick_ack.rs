//! Prompt TCP acknowledgements while a connection logs in.
//!
//! OpenSSH's client turns Nagle's algorithm off only for interactive sessions, so during
//! the key exchange of an `sftp` or `scp` login it holds a small packet back until the
//! previous one is acknowledged: its KEX_ECDH_INIT (48 bytes) waits for the ACK of its
//! KEXINIT. The server has nothing to send at that point, and Linux, having seen the
//! connection go back and forth, delays that ACK by its minimum of 40 ms. Captured on
//! loopback (`tcpdump`), about half the logins lost 40-45 ms there (setup 57 ms instead of
//! 15). `TCP_QUICKACK` after each read sends an ACK that is due at once; it does not stick
//! (the kernel decides again with the next segments), so it is set after every read, for
//! the first [`LOGIN_READS`] reads only: afterwards the server answers nearly every
//! request with data, which carries the ACK, and a system call per read would be waste.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads of a connection after which ACKs are left to the kernel: the version exchange,
/// key exchange, authentication and session start take about 15 packets from OpenSSH's
/// client, more with several keys offered.
pub(crate) const LOGIN_READS: u32 = 64;

/// A socket whose first [`LOGIN_READS`] reads each ask for an immediate ACK.
pub(crate) struct QuickAck<S> {
    inner: S,
    reads_left: u32,
}

impl<S> QuickAck<S> {
    pub(crate) fn new(inner: S) -> Self {
        QuickAck {
            inner,
            reads_left: LOGIN_READS,
        }
    }
}

#[cfg(target_os = "linux")]
fn ack_now<S: std::os::fd::AsFd>(socket: &S) {
    // Best effort: a socket that refuses only costs the delay this avoids.
    let _ = rustix::net::sockopt::set_tcp_quickack(socket, true);
}

#[cfg(not(target_os = "linux"))]
fn ack_now<S>(_socket: &S) {}

#[cfg(target_os = "linux")]
impl<S: AsyncRead + std::os::fd::AsFd + Unpin> AsyncRead for QuickAck<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.reads_left > 0 && matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before
        {
            this.reads_left -= 1;
            ack_now(&this.inner);
        }
        read
    }
}

#[cfg(not(target_os = "linux"))]
impl<S: AsyncRead + Unpin> AsyncRead for QuickAck<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for QuickAck<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connected loopback pair: (client, server).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Whether the kernel acknowledges at once (`getsockopt(TCP_QUICKACK)`: not in the
    /// delayed-ACK "ping-pong" mode that an exchange of data back and forth turns on).
    fn acks_at_once(socket: &TcpStream) -> bool {
        rustix::net::sockopt::tcp_quickack(socket).unwrap()
    }

    /// One round: the client sends, the server reads through `server`, then answers at once
    /// (an answer within the ACK timeout counts towards the kernel's ping-pong mode).
    /// Returns whether the kernel was to acknowledge at once right after the read.
    async fn round<S>(client: &mut TcpStream, server: &mut S, socket: impl Fn(&S) -> bool) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut got = [0u8; 4];
        client.write_all(b"ping").await.unwrap();
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        let at_once = socket(server);
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        at_once
    }

    /// Rounds until a read leaves the server's ACKs delayed (at most 16: kernels count one
    /// to three answers before they delay); whether it came to that.
    async fn until_delayed<S>(
        client: &mut TcpStream,
        server: &mut S,
        socket: impl Fn(&S) -> bool + Copy,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        for _ in 0..16 {
            if !round(client, server, socket).await {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn reads_during_login_ask_for_an_immediate_ack_and_later_ones_do_not() {
        // Without it the kernel comes to delay ACKs: the 40 ms this avoids.
        let (mut client, mut server) = pair().await;
        assert!(
            until_delayed(&mut client, &mut server, acks_at_once).await,
            "the kernel never delayed ACKs; the test would prove nothing"
        );

        let (mut client, server) = pair().await;
        let mut server = QuickAck::new(server);
        for read in 0..LOGIN_READS {
            assert!(
                round(&mut client, &mut server, |s| acks_at_once(&s.inner)).await,
                "read {read} left the ACK delayed"
            );
        }
        // Past the login's reads the kernel decides alone again.
        assert!(
            until_delayed(&mut client, &mut server, |s| acks_at_once(&s.inner)).await,
            "ACKs still forced after {LOGIN_READS} reads"
        );
    }
}
