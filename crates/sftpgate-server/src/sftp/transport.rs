//! Where a session's bytes come from and where its replies go: an SSH channel (the server)
//! or stdin/stdout (`sftpgate sftp-server` under another SSH server). The session logic is
//! the same for both; only these two traits differ.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use russh::server::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use sftpgate_proto::{Decoder, RequestInput};
use sftpgate_vfs::EndReason;
use tokio::sync::watch;

use super::END_REASON_WAIT;

/// The client-to-server byte stream. `recv_into` must be cancel-safe: the session selects
/// on it.
pub(crate) trait Inlet: Send {
    /// Where this transport's bytes wait to be decoded: one that gathers large WRITEs from
    /// the transport's messages, or one that the transport reads into in place.
    fn input(&self, decoder: Decoder) -> RequestInput;

    /// Adds the next bytes the client sent to `input` (made by [`Inlet::input`]);
    /// `Some(reason)` when the stream has ended instead.
    fn recv_into(
        &mut self,
        input: &mut RequestInput,
    ) -> impl Future<Output = Option<EndReason>> + Send;
}

/// Least data of a WRITE that is gathered from the SSH messages it arrives in rather than
/// copied into the decode buffer (see `sftpgate_proto::RequestInput`): the OpenSSH client's
/// 32 KiB WRITEs and bigger ones. Smaller ones cost little to copy.
const GATHER_MIN: usize = 16 * 1024;

/// Room an SSH channel packet needs in front of its data to be sealed where the data lies
/// (russh, patched: vendor/README.md).
pub(crate) const PACKET_HEAD_ROOM: usize = russh::DataFrame::HEAD_ROOM;
/// Spare capacity it needs after the data (padding and MAC).
pub(crate) const PACKET_TAIL_ROOM: usize = russh::DataFrame::TAIL_ROOM;

/// The server-to-client byte stream.
pub(crate) trait Outlet: Send + Sync + 'static {
    /// Sends reply bytes; an error means the client is gone.
    fn send(&self, bytes: Bytes) -> impl Future<Output = Result<(), String>> + Send;
    /// Sends the reply bytes `buf[start..]`. Where the buffer has room around them (at least
    /// [`PACKET_HEAD_ROOM`] bytes in front, [`PACKET_TAIL_ROOM`] of spare capacity after),
    /// the transport may build and seal its packet there instead of copying the bytes; the
    /// bytes before `start` and the spare capacity may be overwritten.
    fn send_in_place(
        &self,
        buf: BytesMut,
        start: usize,
    ) -> impl Future<Output = Result<(), String>> + Send {
        self.send(buf.freeze().slice(start..))
    }
    /// Tells the client why its session will not start, then ends the stream.
    fn refuse(&self, message: &str) -> impl Future<Output = ()> + Send;
    /// Ends the stream after the last reply.
    fn finish(&self) -> impl Future<Output = ()> + Send;
    /// The most bytes the client takes in one packet, if the stream is cut into packets
    /// (the writer then sends replies in whole packets, see `writer`).
    fn packet_size(&self) -> Option<usize>;
}

/// An SSH channel's incoming side.
pub(crate) struct ChannelInlet {
    pub(crate) reader: ChannelReadHalf,
    /// Set by the connection task when the SSH connection has ended, with the reason.
    pub(crate) connection_end: watch::Receiver<Option<EndReason>>,
}

impl Inlet for ChannelInlet {
    fn input(&self, decoder: Decoder) -> RequestInput {
        RequestInput::new(decoder, GATHER_MIN)
    }

    async fn recv_into(&mut self, input: &mut RequestInput) -> Option<EndReason> {
        loop {
            match self.reader.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    input.push(data);
                    return None;
                }
                Some(ChannelMsg::Eof) => return Some(EndReason::ClientEof),
                Some(ChannelMsg::Close) => return Some(EndReason::ClientClosed),
                Some(_) => {}
                None => return Some(why_gone(&mut self.connection_end).await),
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
pub(crate) struct ChannelOutlet {
    pub(crate) writer: ChannelWriteHalf<Msg>,
    /// The client's maximum channel packet size.
    pub(crate) packet: Option<usize>,
}

impl Outlet for ChannelOutlet {
    async fn send(&self, bytes: Bytes) -> Result<(), String> {
        self.writer
            .data_bytes(bytes)
            .await
            .map_err(|e| e.to_string())
    }

    /// russh seals a reply that fits one packet where it lies (a 32 KiB READ's, packed by
    /// the writer): no copy into its output buffer. Others it copies, as `send`.
    async fn send_in_place(&self, buf: BytesMut, start: usize) -> Result<(), String> {
        self.writer
            .data_frame(russh::DataFrame::new(buf, start))
            .await
            .map_err(|e| e.to_string())
    }

    /// On the client's stderr, which OpenSSH's `sftp` prints.
    async fn refuse(&self, message: &str) {
        let line = format!("sftpgate: {message}\r\n");
        let _ = self.writer.extended_data_bytes(1, Bytes::from(line)).await;
        self.end(1).await;
    }

    async fn finish(&self) {
        self.end(0).await;
    }

    fn packet_size(&self) -> Option<usize> {
        self.packet
    }
}

impl ChannelOutlet {
    /// exit-status, EOF, CLOSE: what OpenSSH's sshd sends when its sftp subsystem ends.
    /// Without the exit-status, `ssh` exits 255 and OpenSSH 9.2's `scp` (SFTP mode) reports
    /// a transfer that worked as failed (tests/interop.rs, `openssh_scp`).
    async fn end(&self, status: u32) {
        let _ = self.writer.exit_status(status).await;
        let _ = self.writer.eof().await;
        let _ = self.writer.close().await;
    }
}
