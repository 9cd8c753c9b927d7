//! Malformed input on a live session, sent as raw bytes: each bad request gets the STATUS
//! the protocol asks for (with its id) and the session goes on; an unframeable stream ends
//! that session alone. In every case a second, concurrent connection keeps working.

mod common;

use bytes::Bytes;
use common::*;
use sftpgate_proto::{ExtendedRequest, Request, Response, StatusCode};
use sftpgate_vfs::EndReason;

/// A server with two connections: the victim gets the bad input, the bystander must not
/// notice.
struct Pair {
    server: TestServer,
    _victim_client: SshClient,
    victim: SftpChannel,
    _bystander_client: SshClient,
    bystander: SftpChannel,
}

impl Pair {
    async fn start() -> Pair {
        let server = TestServer::start(Options::default()).await;
        let (victim_client, victim) = server.sftp_client().await;
        let (bystander_client, bystander) = server.sftp_client().await;
        Pair {
            server,
            _victim_client: victim_client,
            victim,
            _bystander_client: bystander_client,
            bystander,
        }
    }

    /// The bystander's session works, then ends by EOF; the server stops; the victim's
    /// exit must have been `victim_exit`, and each session exited exactly once.
    async fn finish(mut self, victim_exit: EndReason) {
        self.bystander.round_trip("/bystander").await;
        self.bystander.eof().await;
        self.bystander.wait_closed().await;
        if victim_exit == EndReason::ClientEof {
            self.victim.eof().await;
            self.victim.wait_closed().await;
        }
        self.server.log.wait_exits(2).await;
        self.server.stop().await;
        let sessions = self.server.log.factory_sessions();
        assert_eq!(sessions.len(), 2);
        let mut exits = self.server.log.exits();
        exits.sort_by_key(|(session, _)| *session);
        let victim = exits[0].clone();
        assert_eq!(victim.0, sessions[0]);
        match (&victim.1, &victim_exit) {
            (EndReason::ProtocolError { .. }, EndReason::ProtocolError { .. }) => {}
            (got, want) => assert_eq!(got, want),
        }
        assert_eq!(exits[1], (sessions[1], EndReason::ClientEof));
        assert_eq!(exits.len(), 2, "{exits:?}");
    }
}

/// The reply to a raw packet: a STATUS with `id` and `code`.
async fn expect_status(sftp: &mut SftpChannel, id: u32, code: StatusCode) -> String {
    match sftp.recv().await {
        Some(Response::Status {
            id: got,
            code: got_code,
            message,
            ..
        }) => {
            assert_eq!((got, got_code), (id, code), "{message}");
            message
        }
        other => panic!("expected STATUS {code:?} for id {id}, got {other:?}"),
    }
}

/// The victim's session still works after a bad packet.
async fn still_works(pair: &mut Pair) {
    pair.victim.round_trip("/victim").await;
    pair.bystander.round_trip("/bystander").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_read_gets_bad_message_with_its_id() {
    let mut pair = Pair::start().await;
    // READ id=42, handle "abcd", then 3 of the 8 offset bytes and no length.
    let mut body = vec![5];
    body.extend_from_slice(&42u32.to_be_bytes());
    body.extend_from_slice(&4u32.to_be_bytes());
    body.extend_from_slice(b"abcd");
    body.extend_from_slice(&[0, 0, 0]);
    pair.victim.send_raw(&packet(&body)).await;
    expect_status(&mut pair.victim, 42, StatusCode::BadMessage).await;
    still_works(&mut pair).await;
    pair.finish(EndReason::ClientEof).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_packet_type_gets_op_unsupported() {
    let mut pair = Pair::start().await;
    let mut body = vec![99];
    body.extend_from_slice(&43u32.to_be_bytes());
    body.extend_from_slice(b"whatever follows");
    pair.victim.send_raw(&packet(&body)).await;
    expect_status(&mut pair.victim, 43, StatusCode::OpUnsupported).await;
    still_works(&mut pair).await;
    pair.finish(EndReason::ClientEof).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_extended_request_gets_op_unsupported() {
    let mut pair = Pair::start().await;
    pair.victim
        .send(&Request::Extended {
            id: 44,
            request: ExtendedRequest::Unknown {
                name: "no-such-extension@example.com".into(),
                data: Bytes::from_static(b"\x00\x00\x00\x01x"),
            },
        })
        .await;
    let message = expect_status(&mut pair.victim, 44, StatusCode::OpUnsupported).await;
    assert!(
        message.contains("no-such-extension@example.com"),
        "{message}"
    );
    still_works(&mut pair).await;
    pair.finish(EndReason::ClientEof).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_handle_gets_failure() {
    let mut pair = Pair::start().await;
    for (id, handle) in [
        (45, &b"\x00\x00\x03\xe7"[..]),
        (46, b"not-a-handle"),
        (47, b""),
    ] {
        pair.victim
            .send(&Request::Read {
                id,
                handle: Bytes::copy_from_slice(handle),
                offset: 0,
                len: 10,
            })
            .await;
        let message = expect_status(&mut pair.victim, id, StatusCode::Failure).await;
        assert!(message.contains("Invalid handle"), "{message}");
    }
    still_works(&mut pair).await;
    pair.finish(EndReason::ClientEof).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_packet_is_ignored() {
    let mut pair = Pair::start().await;
    pair.victim.send_raw(&packet(&[])).await;
    still_works(&mut pair).await;
    pair.finish(EndReason::ClientEof).await;
}

/// A length field over the limit cannot be skipped: that session ends (ProtocolError), the
/// server closes its channel, and nothing else is affected.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_packet_ends_only_that_session() {
    let mut pair = Pair::start().await;
    let mut raw = (16u32 << 20).to_be_bytes().to_vec();
    raw.extend_from_slice(&[5, 0, 0, 0, 48]);
    pair.victim.send_raw(&raw).await;
    let packets = pair.victim.wait_closed().await;
    assert!(packets.is_empty(), "{packets:?}");
    pair.server.log.wait_exits(1).await;
    let exits = pair.server.log.exits();
    assert!(
        matches!(&exits[0].1, EndReason::ProtocolError { detail } if detail.contains("exceeds the limit")),
        "{exits:?}"
    );
    pair.bystander.round_trip("/after").await;
    pair.finish(EndReason::ProtocolError {
        detail: String::new(),
    })
    .await;
}
