//! One JSON request and its typed reply, with every way it can fail told apart.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, RequestErrorKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

/// Sends `body` as JSON on `subject` and parses the reply as `R`, waiting up to `timeout`.
/// A client that is not connected fails at once ([`Error::NotConnected`]) rather than
/// queueing the request for a server that may come back after the caller gave up.
pub(crate) async fn request<B, R>(
    client: &Client,
    subject: &str,
    body: &B,
    timeout: Duration,
) -> Result<R, Error>
where
    B: Serialize + ?Sized,
    R: DeserializeOwned,
{
    if client.connection_state() != State::Connected {
        return Err(Error::NotConnected {
            subject: subject.to_owned(),
        });
    }
    let payload = serde_json::to_vec(body).expect("request types serialise infallibly");
    let request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(timeout));
    let reply = client
        .send_request(subject.to_owned(), request)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => Error::NoResponders {
                subject: subject.to_owned(),
            },
            RequestErrorKind::TimedOut => Error::Timeout {
                subject: subject.to_owned(),
                after: timeout,
            },
            _ => Error::Request {
                subject: subject.to_owned(),
                detail: e.to_string(),
            },
        })?;
    serde_json::from_slice(&reply.payload).map_err(|e| Error::BadReply {
        subject: subject.to_owned(),
        detail: e.to_string(),
    })
}

/// A new random id: 32 lowercase hex digits, safe as a subject token and a file name.
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
