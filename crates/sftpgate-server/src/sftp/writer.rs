//! The reply path of a session: one task that sends replies to the client as requests
//! complete, coalescing small ones into larger channel writes and packing large ones into
//! whole SSH packets.
//!
//! Why packing: a 32 KiB READ's reply is 32,781 bytes (13 of header), and SSH clients take
//! at most 32,768 bytes per channel packet (OpenSSH, Go, paramiko, AsyncSSH), so sent
//! as it is every reply costs two packets, the second of 13 bytes: twice the packets to
//! seal, send and open. OpenSSH's sshd packs the sftp-server's output stream into whole
//! packets. Here each reply goes out in whole packets and the few bytes left over (its
//! *tail*) are copied into the room in front of the next reply (READ buffers have
//! [`REPLY_HEADROOM`] of it), so that the next reply starts with them: a copy of at most
//! that many bytes (the tail grows by 13 with each reply of a chain) instead of a packet.
//! The tail waits for the next reply only while other requests are still running, and at
//! most [`TAIL_HOLD`]; otherwise it goes out at once.
//!
//! A reply that is one whole packet then goes to SSH in its own buffer, with room in front
//! and spare capacity behind (`Outlet::send_in_place`): russh writes the packet's header,
//! padding and MAC around the data and seals it there, so the data of a READ is copied only
//! by the kernel (into the buffer, and out to the socket). A READ larger than a packet comes
//! already cut into packets, one buffer each ([`Outgoing::more`]), and goes out the same way,
//! packet by packet.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::transport::{Outlet, PACKET_HEAD_ROOM};
use NoReply::{Closed, Idle};

/// Replies smaller than this are gathered into one channel write with their neighbours.
const SMALL_REPLY: usize = 16 * 1024;
/// Upper bound of one gathered write.
const COALESCE_LIMIT: usize = 256 * 1024;
/// Room in front of a READ's reply that the writer may fill with what precedes the reply,
/// less the [`PACKET_HEAD_ROOM`] that SSH keeps to build the packet there: a chain of up to
/// 38 32 KiB replies (13 bytes more tail each) before a short packet. Small enough that a
/// 255 KiB READ's buffer stays in its allocator size class.
pub(crate) const REPLY_HEADROOM: usize = 512;
/// Longest a reply's tail waits for the next reply.
const TAIL_HOLD: Duration = Duration::from_millis(1);

/// One encoded reply and the budget it holds until it has been handed to SSH.
pub(crate) struct Outgoing {
    /// The reply is `buf[start..]`; the bytes before it are room the writer may overwrite.
    pub(crate) buf: BytesMut,
    pub(crate) start: usize,
    /// The rest of the reply, if it was cut into SSH packets: then `buf[start..]` is one
    /// whole packet, and so is every frame but the last, each with room around it.
    pub(crate) more: Vec<Frame>,
    pub(crate) hold: Vec<OwnedSemaphorePermit>,
}

impl Outgoing {
    /// A reply with no room in front of it.
    pub(crate) fn new(buf: BytesMut, hold: Vec<OwnedSemaphorePermit>) -> Self {
        Outgoing {
            buf,
            start: 0,
            more: Vec::new(),
            hold,
        }
    }
}

/// Bytes of a reply, `buf[start..]`, with room in front of them (at least
/// [`PACKET_HEAD_ROOM`]) and spare capacity behind them for their SSH packet.
pub(crate) struct Frame {
    pub(crate) buf: BytesMut,
    pub(crate) start: usize,
}

impl Frame {
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Tells whether replies are still to come: every admitted request holds one permit of the
/// session's `outstanding` semaphore until its reply has been sent, and only this writer
/// releases them, so when the writer holds none, permits out means requests still running
/// (or replies queued).
pub(crate) struct Unanswered {
    pub(crate) outstanding: Arc<Semaphore>,
    pub(crate) total: usize,
}

impl Unanswered {
    fn any(&self) -> bool {
        self.outstanding.available_permits() < self.total
    }
}

/// Sends replies until every sender is gone (then all queued replies have been sent) or the
/// channel fails (then the rest are dropped, releasing their budget).
pub(crate) async fn run<O: Outlet>(
    channel: Arc<O>,
    mut replies: mpsc::UnboundedReceiver<Outgoing>,
    unanswered: Unanswered,
) -> Result<(), String> {
    let packet = channel.packet_size().filter(|&m| m > REPLY_HEADROOM);
    // Bytes not yet handed to SSH, in reply order: small replies, or the tail of a large one.
    let mut pending = BytesMut::new();
    // The budget of the replies wholly in `pending` (a tail holds none: it is a copy).
    let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
    // `pending` is only the tail of the last large reply.
    let mut tail_only = false;
    loop {
        let next = if pending.is_empty() {
            replies.recv().await.ok_or(Closed)
        } else {
            match replies.try_recv() {
                Ok(reply) => Ok(reply),
                Err(TryRecvError::Disconnected) => Err(Closed),
                // Only a tail waits, and only for a reply that is on its way.
                Err(TryRecvError::Empty) if tail_only && unanswered.any() => {
                    match tokio::time::timeout(TAIL_HOLD, replies.recv()).await {
                        Ok(Some(reply)) => Ok(reply),
                        Ok(None) => Err(Closed),
                        Err(_) => Err(Idle),
                    }
                }
                Err(TryRecvError::Empty) => Err(Idle),
            }
        };
        let reply = match next {
            Ok(reply) => reply,
            Err(why) => {
                flush(&*channel, &mut pending, &mut held).await?;
                match why {
                    Closed => return Ok(()),
                    Idle => continue,
                }
            }
        };
        let Outgoing {
            mut buf,
            mut start,
            mut more,
            hold,
        } = reply;
        // A reply cut into packets: what waits goes out first (the first packet is full),
        // then the packets, each sealed where it lies; the last one is sent as any reply
        // (its tail may go with the next reply).
        if let Some(last) = more.pop() {
            flush(&*channel, &mut pending, &mut held).await?;
            channel.send_in_place(buf, start).await?;
            for frame in more {
                channel.send_in_place(frame.buf, frame.start).await?;
            }
            Frame { buf, start } = last;
        }
        let len = buf.len() - start;
        if len < SMALL_REPLY {
            pending.extend_from_slice(&buf[start..]);
            held.extend(hold);
            tail_only = false;
            if pending.len() >= COALESCE_LIMIT {
                flush(&*channel, &mut pending, &mut held).await?;
            }
            continue;
        }
        // Large replies (DATA) go out from their own buffer: no copy, and SSH seals the packet
        // of one that fits a packet in that buffer too. What precedes them goes into their
        // room, else out first.
        if !pending.is_empty() {
            if packet.is_some() && pending.len() + PACKET_HEAD_ROOM <= start {
                let at = start - pending.len();
                buf[at..start].copy_from_slice(&pending);
                start = at;
                pending.clear();
            } else {
                flush(&*channel, &mut pending, &mut held).await?;
            }
        }
        // The reply now (with what went into its room). Its tail is at most what leaves the
        // next reply room for its packet's header.
        let len = buf.len() - start;
        let tail = packet.map_or(0, |m| len % m);
        let cut = if tail <= REPLY_HEADROOM - PACKET_HEAD_ROOM && tail < len {
            len - tail
        } else {
            len
        };
        // Out of the buffer before the packet is sealed over it.
        pending.extend_from_slice(&buf[start + cut..]);
        buf.truncate(start + cut);
        channel.send_in_place(buf, start).await?;
        tail_only = !pending.is_empty();
        drop(hold);
        held.clear();
    }
}

/// Why the writer has nothing to send: no reply came in time, or none ever will.
enum NoReply {
    Idle,
    Closed,
}

async fn flush<O: Outlet>(
    channel: &O,
    pending: &mut BytesMut,
    held: &mut Vec<OwnedSemaphorePermit>,
) -> Result<(), String> {
    if !pending.is_empty() {
        channel.send(pending.split().freeze()).await?;
    }
    held.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::super::transport::PACKET_TAIL_ROOM;
    use super::*;

    /// Records what the writer sends.
    #[derive(Default)]
    struct Recorder {
        packet: Option<usize>,
        sent: Mutex<Vec<Bytes>>,
        /// Of each send in place: the room in front of the bytes, and the spare capacity
        /// behind them.
        rooms: Mutex<Vec<(usize, usize)>>,
    }

    impl Outlet for Recorder {
        async fn send(&self, bytes: Bytes) -> Result<(), String> {
            self.sent.lock().unwrap().push(bytes);
            Ok(())
        }
        async fn send_in_place(&self, buf: BytesMut, start: usize) -> Result<(), String> {
            let spare = buf.capacity() - buf.len();
            self.rooms.lock().unwrap().push((start, spare));
            self.send(buf.freeze().slice(start..)).await
        }
        async fn refuse(&self, _: &str) {}
        async fn finish(&self) {}
        fn packet_size(&self) -> Option<usize> {
            self.packet
        }
    }

    /// A reply of `len` bytes of `fill` with `room` bytes of filler in front.
    fn reply(len: usize, fill: u8, room: usize) -> Outgoing {
        let mut buf = BytesMut::with_capacity(room + len);
        buf.resize(room, 0xEE);
        buf.resize(room + len, fill);
        Outgoing {
            buf,
            start: room,
            more: Vec::new(),
            hold: Vec::new(),
        }
    }

    /// Checks that the byte stream of `sent` is the replies of `shape` in order.
    fn assert_in_order(sent: &[Bytes], shape: &[(usize, u8)]) {
        let stream: Vec<u8> = sent.iter().flat_map(|b| b.iter().copied()).collect();
        assert!(
            stream == expected(shape),
            "the byte stream is not the replies in order"
        );
    }

    fn expected(replies: &[(usize, u8)]) -> Vec<u8> {
        replies
            .iter()
            .flat_map(|&(len, fill)| std::iter::repeat_n(fill, len))
            .collect()
    }

    /// Runs the writer over `replies` (queued before it starts) with `unanswered` permits
    /// out; returns the sends.
    async fn write_all(
        packet: Option<usize>,
        replies: Vec<Outgoing>,
        unanswered: usize,
    ) -> Vec<Bytes> {
        write_all_rooms(packet, replies, unanswered).await.0
    }

    /// As `write_all`, with the rooms of the sends in place.
    async fn write_all_rooms(
        packet: Option<usize>,
        replies: Vec<Outgoing>,
        unanswered: usize,
    ) -> (Vec<Bytes>, Vec<(usize, usize)>) {
        let outlet = Arc::new(Recorder {
            packet,
            ..Default::default()
        });
        let outstanding = Arc::new(Semaphore::new(16));
        let _out = outstanding
            .clone()
            .acquire_many_owned(unanswered as u32)
            .await;
        let (tx, rx) = mpsc::unbounded_channel();
        for r in replies {
            tx.send(r).unwrap();
        }
        drop(tx);
        let unanswered = Unanswered {
            outstanding,
            total: 16,
        };
        run(outlet.clone(), rx, unanswered).await.unwrap();
        let sent = outlet.sent.lock().unwrap().clone();
        let rooms = outlet.rooms.lock().unwrap().clone();
        (sent, rooms)
    }

    #[tokio::test]
    async fn whole_packets_leave_room_for_ssh_to_seal_them_in_place() {
        const M: usize = 32_768;
        // READ replies as the dispatcher builds them (room in front, spare capacity
        // behind), with small replies between them and a chain of tails long enough to
        // fill most of the room.
        let mut shape = Vec::new();
        let mut replies = Vec::new();
        for i in 0..48u8 {
            let (mut buf, start) = super::super::dispatch::data_reply_buffer(i as u64, M);
            buf.resize(start + M + 13, i);
            shape.push((M + 13, i));
            replies.push(Outgoing {
                buf,
                start,
                more: Vec::new(),
                hold: Vec::new(),
            });
            if i % 5 == 0 {
                shape.push((30, 200 + i));
                replies.push(reply(30, 200 + i, 0));
            }
        }
        let (sent, rooms) = write_all_rooms(Some(M), replies, 0).await;
        assert_in_order(&sent, &shape);
        assert_eq!(rooms.len(), 48, "every DATA reply is sent in place");
        for (i, &(front, behind)) in rooms.iter().enumerate() {
            assert!(
                front >= PACKET_HEAD_ROOM,
                "send {i}: {front} bytes in front"
            );
            assert!(
                behind >= PACKET_TAIL_ROOM,
                "send {i}: {behind} bytes behind"
            );
        }
        // All whole packets but the one cut short by a tail that outgrew the room.
        let whole = sent.iter().filter(|b| b.len() == M).count();
        assert!(whole >= 46, "{whole} whole packets of {}", sent.len());
    }

    #[tokio::test]
    async fn replies_cut_into_packets_go_out_packet_by_packet_after_what_waited() {
        const M: usize = 32_768;
        // A small reply, a 32 KiB READ's reply (whose tail waits), then a READ cut into
        // packets as the dispatcher cuts one (three whole packets and a short one), then
        // another small reply.
        let frame = |len: usize, fill: u8| {
            let (mut buf, start) = super::super::dispatch::data_packet_buffer(0, len);
            buf.resize(start + len, fill);
            Frame { buf, start }
        };
        let mut cut = reply(M, 3, REPLY_HEADROOM);
        cut.more = vec![frame(M, 4), frame(M, 5), frame(20_000, 6)];
        let replies = vec![
            reply(30, 1, 0),
            reply(M + 13, 2, REPLY_HEADROOM),
            cut,
            reply(40, 7, 0),
        ];
        let shape = [
            (30, 1u8),
            (M + 13, 2),
            (M, 3),
            (M, 4),
            (M, 5),
            (20_000, 6),
            (40, 7),
        ];
        let (sent, rooms) = write_all_rooms(Some(M), replies, 0).await;
        assert_in_order(&sent, &shape);
        let lens: Vec<usize> = sent.iter().map(Bytes::len).collect();
        // The small reply rode in front of the 32 KiB one, whose tail (43 bytes) went out
        // before the packets, each of which was sent in place.
        assert_eq!(lens, [M, 43, M, M, M, 20_000, 40]);
        assert_eq!(rooms.len(), 5, "{rooms:?}");
        for (i, &(front, _)) in rooms.iter().enumerate() {
            assert!(front >= PACKET_HEAD_ROOM, "send {i}: {front} in front");
        }
        // (This test's replies have no spare capacity; the frames have.)
        for &(_, behind) in &rooms[2..] {
            assert!(behind >= PACKET_TAIL_ROOM, "a frame with {behind} behind");
        }
    }

    #[tokio::test]
    async fn data_replies_go_out_in_whole_packets_with_the_tail_in_front_of_the_next() {
        const M: usize = 32_768;
        let shape: Vec<(usize, u8)> = (0..8).map(|i| (M + 13, i as u8)).collect();
        let replies = shape
            .iter()
            .map(|&(len, fill)| reply(len, fill, REPLY_HEADROOM))
            .collect();
        let sent = write_all(Some(M), replies, 0).await;
        assert_in_order(&sent, &shape);
        // Eight whole packets, then the last reply's tail (8 x 13 bytes).
        let lens: Vec<usize> = sent.iter().map(Bytes::len).collect();
        assert_eq!(lens, [vec![M; 8], vec![8 * 13]].concat());
    }

    #[tokio::test]
    async fn without_room_or_packet_size_replies_go_out_as_they_are() {
        const M: usize = 32_768;
        let shape = [(M + 13, 1u8), (100, 2), (M + 13, 3), (20_000, 4)];
        // No room in front: a tail cannot travel with the next reply.
        let replies = shape.iter().map(|&(l, f)| reply(l, f, 0)).collect();
        let sent = write_all(Some(M), replies, 0).await;
        assert_in_order(&sent, &shape);
        let lens: Vec<usize> = sent.iter().map(Bytes::len).collect();
        assert_eq!(lens, [M, 13 + 100, M, 13, 20_000]);
        // A byte stream (no packets): every reply whole, small ones gathered.
        let replies = shape.iter().map(|&(l, f)| reply(l, f, 64)).collect();
        let sent = write_all(None, replies, 0).await;
        let lens: Vec<usize> = sent.iter().map(Bytes::len).collect();
        assert_eq!(lens, [M + 13, 100, M + 13, 20_000]);
    }

    #[tokio::test]
    async fn small_replies_ride_in_front_of_the_next_large_one() {
        const M: usize = 32_768;
        let shape = [(40, 1u8), (M - 40 + 5, 2), (30, 3), (M, 4)];
        let replies = shape
            .iter()
            .map(|&(l, f)| reply(l, f, REPLY_HEADROOM))
            .collect();
        let sent = write_all(Some(M), replies, 0).await;
        assert_in_order(&sent, &shape);
        let lens: Vec<usize> = sent.iter().map(Bytes::len).collect();
        assert_eq!(lens, [M, M, 5 + 30]);
    }

    /// Lets the writer task run until it waits (current-thread runtime).
    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tail_waits_for_the_next_reply_only_while_requests_run_and_not_long() {
        const M: usize = 32_768;
        let outlet = Arc::new(Recorder {
            packet: Some(M),
            ..Default::default()
        });
        let outstanding = Arc::new(Semaphore::new(4));
        let running = outstanding.clone().acquire_owned().await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let unanswered = Unanswered {
            outstanding,
            total: 4,
        };
        let writer = tokio::spawn(run(outlet.clone(), rx, unanswered));
        let sent = |o: &Recorder| -> Vec<usize> {
            o.sent.lock().unwrap().iter().map(Bytes::len).collect()
        };

        // A request is still running: the tail waits for its reply...
        tx.send(reply(M + 13, 1, REPLY_HEADROOM)).unwrap();
        settle().await;
        assert_eq!(sent(&outlet), [M]);
        tx.send(reply(M + 13, 2, REPLY_HEADROOM)).unwrap();
        settle().await;
        assert_eq!(sent(&outlet), [M, M]);
        // ...but no longer than TAIL_HOLD (the timer has a millisecond's resolution).
        tokio::time::sleep(TAIL_HOLD * 3).await;
        assert_eq!(sent(&outlet), [M, M, 26]);

        // Nothing running: the tail goes out at once.
        drop(running);
        tx.send(reply(M + 13, 3, REPLY_HEADROOM)).unwrap();
        settle().await;
        assert_eq!(sent(&outlet), [M, M, 26, M, 13]);
        drop(tx);
        writer.await.unwrap().unwrap();
    }
}
