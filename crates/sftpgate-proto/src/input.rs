//! Client requests from a transport that delivers bytes in messages (SSH channel data):
//! a [`Decoder`] over a buffer, except that a large WRITE is gathered from the messages'
//! own buffers instead of being copied into the decode buffer.
//!
//! Why: every message appended to the decode buffer is a copy of every byte the client
//! sends, and for uploads those bytes are nearly all WRITE data, which the storage copies
//! once more anyway. A deep-pipelined upload spent 7 % of the server's CPU on that copy
//! (docs/performance.md, "Eleventh run"). The output is exactly what the plain decoder gives
//! for the same bytes, whatever the message boundaries (checked by `fuzzing::check_input`).

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::{append_message, Decoder, FRAME_HEADER_LEN};
use crate::error::DecodeError;
use crate::packet::{PacketType, Request};
use crate::write_data::WriteData;

/// Longest handle a gathered WRITE may have; longer ones (no server issues them) take the
/// decoder's path, which answers them as it answers any request.
const MAX_GATHERED_HANDLE: usize = 256;

/// Decodes requests from transport messages; see the module docs.
#[derive(Debug)]
pub struct RequestInput {
    decoder: Decoder,
    /// Bytes not decoded yet. Empty while a WRITE is gathered.
    buf: BytesMut,
    /// A WRITE whose data is still arriving.
    gathering: Option<Gathering>,
    /// Gathered WRITEs that are complete, in order: they come before everything in `buf`
    /// (a gathering only starts when `buf` is empty, and while it runs `buf` stays empty).
    /// Usually one; two when a message completes one and starts another that a later
    /// message completes before the caller has taken the first.
    ready: VecDeque<Ready>,
    /// Least data a WRITE must carry to be gathered; `usize::MAX`: never.
    min_gather: usize,
}

/// Most pieces a gathered WRITE is kept in: 256 KiB in 4 KiB messages. A client sending
/// smaller messages gets its WRITE joined into one buffer from there on (a copy, as without
/// gathering), so that a WRITE never costs more than a few pieces of bookkeeping and a
/// `pwritev(2)` stays far below `IOV_MAX`.
const MAX_WRITE_PIECES: usize = 64;

#[derive(Debug)]
struct Gathering {
    id: u32,
    handle: Bytes,
    offset: u64,
    data: Pieces,
    missing: usize,
    /// Bytes of the frame before the data (taken off the input when gathering began).
    header_len: usize,
}

/// A complete gathered WRITE and the bytes of input its frame took.
#[derive(Debug)]
struct Ready {
    request: Request,
    frame_len: usize,
}

#[derive(Debug)]
enum Pieces {
    /// The messages' own buffers.
    Shared(WriteData),
    /// Joined after [`MAX_WRITE_PIECES`], with room for the rest.
    Joined(BytesMut),
}

impl Gathering {
    fn push(&mut self, piece: Bytes) {
        self.missing -= piece.len();
        match &mut self.data {
            Pieces::Shared(data) if data.chunk_count() < MAX_WRITE_PIECES => data.push(piece),
            Pieces::Shared(data) => {
                let mut joined = BytesMut::with_capacity(data.len() + piece.len() + self.missing);
                data.put_into(&mut joined);
                joined.extend_from_slice(&piece);
                self.data = Pieces::Joined(joined);
            }
            Pieces::Joined(joined) => joined.extend_from_slice(&piece),
        }
    }

    /// Bytes of input taken so far: the header and the data that has arrived.
    fn taken(&self) -> usize {
        self.header_len
            + match &self.data {
                Pieces::Shared(data) => data.len(),
                Pieces::Joined(joined) => joined.len(),
            }
    }

    fn finish(self) -> Ready {
        Ready {
            frame_len: self.taken(),
            request: Request::Write {
                id: self.id,
                handle: self.handle,
                offset: self.offset,
                data: match self.data {
                    Pieces::Shared(data) => data,
                    Pieces::Joined(joined) => joined.freeze().into(),
                },
            },
        }
    }
}

impl RequestInput {
    /// Decodes with `decoder`, gathering WRITEs that carry at least `min_gather` bytes of
    /// data and arrive in more than one message.
    pub fn new(decoder: Decoder, min_gather: usize) -> RequestInput {
        RequestInput {
            decoder,
            buf: BytesMut::new(),
            gathering: None,
            ready: VecDeque::new(),
            min_gather: min_gather.max(1),
        }
    }

    /// Decodes with `decoder` and never gathers: for transports that read into
    /// [`RequestInput::buffer_mut`] in place.
    pub fn in_place(decoder: Decoder) -> RequestInput {
        RequestInput::new(decoder, usize::MAX)
    }

    /// Bytes taken in and not yet returned as requests: what a caller bounds when it
    /// takes input without decoding it yet. The same count as the plain decoder's buffer
    /// for the same input.
    pub fn buffered(&self) -> usize {
        let ready: usize = self.ready.iter().map(|r| r.frame_len).sum();
        ready + self.buf.len() + self.gathering.as_ref().map_or(0, Gathering::taken)
    }

    /// The decode buffer, for a transport that reads into it in place. Only for an input
    /// made with [`RequestInput::in_place`] (which never holds data elsewhere).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        debug_assert!(self.gathering.is_none() && self.ready.is_empty());
        &mut self.buf
    }

    /// Takes one transport message.
    pub fn push(&mut self, mut message: Bytes) {
        if let Some(gathering) = self.gathering.as_mut() {
            let n = gathering.missing.min(message.len());
            gathering.push(message.split_to(n));
            if gathering.missing > 0 {
                return;
            }
            self.ready
                .extend(self.gathering.take().map(Gathering::finish));
        }
        if message.is_empty() {
            return;
        }
        if self.buf.is_empty() {
            if let Some(head) = gatherable(&message, self.decoder.max_packet(), self.min_gather) {
                self.gather(head, message);
                return;
            }
        }
        append_message(&mut self.buf, message);
    }

    /// The next whole request, in the order the client sent them; `Ok(None)` when more
    /// input is needed. Errors as [`Decoder::decode_request`].
    pub fn next_request(&mut self) -> Result<Option<Request>, DecodeError> {
        if let Some(ready) = self.ready.pop_front() {
            return Ok(Some(ready.request));
        }
        if self.gathering.is_some() {
            return Ok(None);
        }
        // A WRITE at the front that is not whole yet is gathered from here on (before the
        // decoder would reserve room for all of it in `buf`).
        if let Some(head) = gatherable(&self.buf, self.decoder.max_packet(), self.min_gather) {
            let bytes = self.buf.split().freeze();
            self.gather(head, bytes);
            return Ok(None);
        }
        self.decoder.decode_request(&mut self.buf)
    }

    /// Starts gathering the WRITE whose header `head` (see [`gatherable`]) starts `bytes`;
    /// all of `bytes` is its header and the data so far.
    fn gather(&mut self, head: WriteHead, mut bytes: Bytes) {
        bytes.advance(head.header_len);
        let mut gathering = Gathering {
            id: head.id,
            handle: head.handle,
            offset: head.offset,
            data: Pieces::Shared(WriteData::default()),
            missing: head.data_len,
            header_len: head.header_len,
        };
        gathering.push(bytes);
        self.gathering = Some(gathering);
    }
}

/// The header of a WRITE frame that starts a buffer.
struct WriteHead {
    id: u32,
    handle: Bytes,
    offset: u64,
    data_len: usize,
    /// Bytes from the frame's length field to its data.
    header_len: usize,
}

/// The header of the WRITE at the front of `buf` when it is one to gather: well formed
/// (its data fills the frame exactly), within the packet limit, carrying at least
/// `min_data` bytes, and not whole in `buf`. Anything else is left to the decoder, which
/// answers it as always (errors included).
fn gatherable(buf: &[u8], max_packet: u32, min_data: usize) -> Option<WriteHead> {
    let mut rest = buf;
    let frame_len = take_u32(&mut rest)?;
    if frame_len > max_packet || *take(&mut rest, 1)?.first()? != PacketType::Write as u8 {
        return None;
    }
    let id = take_u32(&mut rest)?;
    let handle_len = take_u32(&mut rest)? as usize;
    if handle_len > MAX_GATHERED_HANDLE {
        return None;
    }
    let handle = take(&mut rest, handle_len)?;
    let offset = u64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let data_len = take_u32(&mut rest)? as usize;
    let header_len = buf.len() - rest.len();
    let frame_end = FRAME_HEADER_LEN + frame_len as usize;
    if header_len.checked_add(data_len)? != frame_end
        || data_len < min_data
        || buf.len() >= frame_end
    {
        return None;
    }
    Some(WriteHead {
        id,
        handle: Bytes::copy_from_slice(handle),
        offset,
        data_len,
        header_len,
    })
}

/// The next `n` bytes of `rest`, if there are that many.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let field = rest.get(..n)?;
    *rest = &rest[n..];
    Some(field)
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(take(rest, 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: u32, data_len: usize) -> BytesMut {
        let mut out = BytesMut::new();
        Request::Write {
            id,
            handle: Bytes::from_static(b"h1"),
            offset: u64::from(id) * 1000,
            data: Bytes::from((0..data_len).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).into(),
        }
        .encode(&mut out);
        out
    }

    fn drain(input: &mut RequestInput) -> Vec<Request> {
        let mut out = Vec::new();
        while let Some(request) = input.next_request().expect("decodes") {
            out.push(request);
        }
        out
    }

    #[test]
    fn a_write_across_messages_keeps_their_buffers() {
        let mut wire = write(1, 70_000);
        wire.extend_from_slice(&write(2, 10)); // a small one right behind it
        let wire = wire.freeze();
        let messages: Vec<Bytes> = wire.chunks(32_768).map(Bytes::copy_from_slice).collect();
        let starts: Vec<*const u8> = messages.iter().map(|m| m.as_ptr()).collect();
        let mut input = RequestInput::new(Decoder::new(), 16 * 1024);
        let mut got = Vec::new();
        for message in messages {
            input.push(message);
            got.extend(drain(&mut input));
        }
        assert_eq!(got.len(), 2);
        // Taken in without decoding, a complete gathered WRITE still counts as buffered.
        let mut held = RequestInput::new(Decoder::new(), 16 * 1024);
        for message in wire.chunks(32_768) {
            held.push(Bytes::copy_from_slice(message));
        }
        assert_eq!(held.buffered(), wire.len());
        assert_eq!(drain(&mut held).len(), 2);
        assert_eq!(held.buffered(), 0);
        let Request::Write { id: 1, data, .. } = &got[0] else {
            panic!("not the first WRITE");
        };
        assert_eq!(data.len(), 70_000);
        assert_eq!(data.chunk_count(), 3);
        let pieces: Vec<*const u8> = data.chunks().map(|c| c.as_ptr()).collect();
        assert_eq!(pieces[1], starts[1], "the middle message is not copied");
        assert_eq!(pieces[2], starts[2], "nor the start of the last");
        let mut plain = Decoder::new();
        let mut whole = BytesMut::from(&wire[..]);
        assert!(plain.decode_request(&mut whole).unwrap().as_ref() == Some(&got[0]));
        assert!(plain.decode_request(&mut whole).unwrap().as_ref() == Some(&got[1]));
        assert_eq!(input.buffered(), 0);
    }

    #[test]
    fn small_writes_and_malformed_ones_take_the_decoders_path() {
        // Under the threshold: decoded from the buffer as one piece.
        let wire = write(3, 1000).freeze();
        let mut input = RequestInput::new(Decoder::new(), 16 * 1024);
        input.push(wire.slice(..500));
        assert!(drain(&mut input).is_empty());
        input.push(wire.slice(500..));
        let got = drain(&mut input);
        assert!(matches!(&got[..], [Request::Write { data, .. }] if data.chunk_count() == 1));

        // A frame shorter than its data says: not gathered; the decoder reports it.
        let mut bad = write(4, 40_000);
        bad.truncate(bad.len() - 3);
        let len = u32::from_be_bytes(bad[..4].try_into().unwrap()) - 3;
        bad[..4].copy_from_slice(&len.to_be_bytes());
        let bad = bad.freeze();
        let mut input = RequestInput::new(Decoder::new(), 16 * 1024);
        input.push(bad.slice(..20_000));
        assert!(input.next_request().unwrap().is_none());
        assert!(input.gathering.is_none());
        input.push(bad.slice(20_000..));
        let err = input
            .next_request()
            .expect_err("data longer than the frame");
        assert_eq!(err.request_id(), Some(4));

        // Over the packet limit: the decoder's fatal error, not a gathering.
        let mut input = RequestInput::new(Decoder::with_max_packet(1000), 16);
        input.push(write(5, 40_000).freeze().slice(..5000));
        assert!(matches!(
            input.next_request(),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_write_in_tiny_messages_is_joined_past_the_piece_limit() {
        let wire = write(7, 20_000).freeze();
        let mut input = RequestInput::new(Decoder::new(), 1000);
        let mut got = Vec::new();
        for message in wire.chunks(100) {
            input.push(Bytes::copy_from_slice(message));
            got.extend(drain(&mut input));
        }
        let [Request::Write { id: 7, data, .. }] = &got[..] else {
            panic!("not one WRITE");
        };
        assert!(data.chunk_count() <= MAX_WRITE_PIECES);
        let mut plain = BytesMut::from(&wire[..]);
        let expected = Decoder::new().decode_request(&mut plain).unwrap();
        assert!(expected.as_ref() == Some(&got[0]));
    }

    /// Found by the `decode` fuzz target: a gathered WRITE's header counts as buffered.
    #[test]
    fn fuzz_regression_buffered_counts_the_header_of_a_gathered_write() {
        let data = [
            0, 0, 0, 41, 6, 0, 0, 47, 11, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            16, 104, 101, 108, 138, 138, 138, 138, 255, 112, 103, 97, 116, 101, 10,
        ];
        crate::fuzzing::check_decode(&data);
        let mut input = RequestInput::new(Decoder::new(), 1);
        input.push(Bytes::copy_from_slice(&data));
        assert!(input.next_request().unwrap().is_none());
        assert!(input.gathering.is_some());
        assert_eq!(input.buffered(), data.len());
    }

    #[test]
    fn never_gathers_in_place() {
        let wire = write(6, 100_000);
        let mut input = RequestInput::in_place(Decoder::new());
        input.buffer_mut().extend_from_slice(&wire[..50_000]);
        assert!(input.next_request().unwrap().is_none());
        input.buffer_mut().extend_from_slice(&wire[50_000..]);
        let got = drain(&mut input);
        assert!(matches!(&got[..], [Request::Write { data, .. }] if data.len() == 100_000));
    }
}
