//! Where a session's bytes come from and where its replies go: an SSH channel (the server)
//! or stdin/stdout (`sftpgate sftp-server` under another SSH server). The session logic is
//! the same for both; only these two traits differ.

use std::future::Future;

use bytes::Bytes;
use russh::server::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use sftpgate_vfs::EndReason;
use tokio::sync::watch;

use super::END_REASON_WAIT;

/// What the client sent next.
pub(crate) enum Inbound {
    /// More protocol bytes.
    Data(Bytes),
    /// The stream ended, and why.
    End(EndReason),
}

/// The client-to-server byte stream. `recv` must be cancel-safe: the session selects on it.
pub(crate) trait Inlet: Send {
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;
}

/// The server-to-client byte stream.
pub(crate) trait Outlet: Send + Sync + 'static {
    /// Sends reply bytes; an error means the client is gone.
    fn send(&self, bytes: Bytes) -> impl Future<Output = Result<(), String>> + Send;
    /// Tells the client why its session will not start, then ends the stream.
    fn refuse(&self, message: &str) -> impl Future<Output = ()> + Send;
    /// Ends the stream after the last reply.
    fn finish(&self) -> impl Future<Output = ()> + Send;
}

/// An SSH channel's incoming side.
pub(crate) struct ChannelInlet {
    pub(crate) reader: ChannelReadHalf,
    /// Set by the connection task when the SSH connection has ended, with the reason.
    pub(crate) connection_end: watch::Receiver<Option<EndReason>>,
}

impl Inlet for ChannelInlet {
    async fn recv(&mut self) -> Inbound {
        loop {
            match self.reader.wait().await {
                Some(ChannelMsg::Data { data }) => return Inbound::Data(data),
                Some(ChannelMsg::Eof) => return Inbound::End(EndReason::ClientEof),
                Some(ChannelMsg::Close) => return Inbound::End(EndReason::ClientClosed),
                Some(_) => {}
                None => return Inbound::End(why_gone(&mut self.connection_end).await),
            }
        }
    }
}

/// The channel's queue ended without EOF or CLOSE: the connection is gone. Ask the
/// connection task why.
async fn why_gone(connection_end: &mut watch::Receiver<Option<EndReason>>) -> EndReason {
    let lost = || EndReason::ConnectionLost {
        detail: "channel closed".into(),
    };
    match tokio::time::timeout(END_REASON_WAIT, connection_end.wait_for(Option::is_some)).await {
        Ok(Ok(reason)) => reason.clone().unwrap_or_else(lost),
        _ => lost(),
    }
}

/// An SSH channel's outgoing side.
pub(crate) struct ChannelOutlet(pub(crate) ChannelWriteHalf<Msg>);

impl Outlet for ChannelOutlet {
    async fn send(&self, bytes: Bytes) -> Result<(), String> {
        self.0.data_bytes(bytes).await.map_err(|e| e.to_string())
    }

    /// On the client's stderr, which OpenSSH's `sftp` prints.
    async fn refuse(&self, message: &str) {
        let line = format!("sftpgate: {message}\r\n");
        let _ = self.0.extended_data_bytes(1, Bytes::from(line)).await;
        self.end(1).await;
    }

    async fn finish(&self) {
        self.end(0).await;
    }
}

impl ChannelOutlet {
    /// exit-status, EOF, CLOSE: what OpenSSH's sshd sends when its sftp subsystem ends.
    /// Without the exit-status, `ssh` exits 255 and OpenSSH 9.2's `scp` (SFTP mode) reports
    /// a transfer that worked as failed (tests/interop.rs, `openssh_scp`).
    async fn end(&self, status: u32) {
        let _ = self.0.exit_status(status).await;
        let _ = self.0.eof().await;
        let _ = self.0.close().await;
    }
}
