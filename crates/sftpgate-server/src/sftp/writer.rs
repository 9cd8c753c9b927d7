//! The reply path of a session: one task that sends replies to the client as requests
//! complete, coalescing small ones into larger channel writes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::transport::Outlet;

/// Replies smaller than this are gathered into one channel write with their neighbours.
const SMALL_REPLY: usize = 16 * 1024;
/// Upper bound of one gathered write.
const COALESCE_LIMIT: usize = 256 * 1024;

/// One encoded reply and the budget it holds until it has been handed to SSH.
pub(crate) struct Outgoing {
    pub(crate) bytes: Bytes,
    pub(crate) hold: Vec<OwnedSemaphorePermit>,
}

/// Sends replies until every sender is gone (then all queued replies have been sent) or the
/// channel fails (then the rest are dropped, releasing their budget).
pub(crate) async fn run<O: Outlet>(
    channel: Arc<O>,
    mut replies: mpsc::UnboundedReceiver<Outgoing>,
) -> Result<(), String> {
    let mut batch = BytesMut::new();
    let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
    while let Some(first) = replies.recv().await {
        let mut next = Some(first);
        while let Some(reply) = next.take() {
            if reply.bytes.len() >= SMALL_REPLY {
                // Large replies (DATA) go out as they are: no copy.
                flush(&*channel, &mut batch, &mut held).await?;
                channel.send(reply.bytes).await?;
                drop(reply.hold);
            } else {
                batch.extend_from_slice(&reply.bytes);
                held.extend(reply.hold);
            }
            if batch.len() >= COALESCE_LIMIT {
                flush(&*channel, &mut batch, &mut held).await?;
            }
            next = replies.try_recv().ok();
        }
        flush(&*channel, &mut batch, &mut held).await?;
    }
    Ok(())
}

async fn flush<O: Outlet>(
    channel: &O,
    batch: &mut BytesMut,
    held: &mut Vec<OwnedSemaphorePermit>,
) -> Result<(), String> {
    if !batch.is_empty() {
        channel.send(batch.split().freeze()).await?;
    }
    held.clear();
    Ok(())
}
