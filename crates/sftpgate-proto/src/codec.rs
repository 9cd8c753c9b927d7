//! The incremental framer: feed bytes in any chunking, take whole packets out.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::{Request, Response};

/// Size of the length field that precedes every packet.
pub const FRAME_HEADER_LEN: usize = 4;

/// The default packet limit: a 256 KiB payload plus room for the request header, so that a
/// client's largest READ or WRITE of 256 KiB fits, as OpenSSH's `SFTP_MAX_MSG_LENGTH` intends.
pub const DEFAULT_MAX_PACKET: u32 = 256 * 1024 + 1024;

/// Splits a byte stream into packets.
///
/// The length field is checked against the maximum before anything is reserved for the
/// packet, so a hostile length costs nothing. Each returned packet is a slice of the input
/// buffer: payloads are never copied.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_packet: u32,
    /// Reserved past an incomplete frame, see [`Decoder::reserving_ahead`].
    ahead: usize,
    /// Least room a growing buffer gets, see [`Decoder::growing_by`].
    grow: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the [`DEFAULT_MAX_PACKET`] limit.
    pub fn new() -> Self {
        Self::with_max_packet(DEFAULT_MAX_PACKET)
    }

    /// A decoder that refuses packets whose length field exceeds `max_packet`.
    pub fn with_max_packet(max_packet: u32) -> Self {
        Decoder {
            max_packet,
            ahead: 0,
            grow: 0,
        }
    }

    /// Also reserves `ahead` bytes past an incomplete frame. For input that arrives in
    /// chunks of up to `ahead` bytes (SSH channel data: the channel's maximum packet size),
    /// the chunk that completes a frame usually carries the start of the next one too;
    /// with no room for it, appending that chunk would grow the frame's buffer to twice
    /// its size, copying the whole frame (a 255 KiB WRITE reallocated to 510 KiB).
    pub fn reserving_ahead(mut self, ahead: usize) -> Self {
        self.ahead = ahead;
        self
    }

    /// When the buffer must grow for an incomplete frame, makes room for at least `grow`
    /// more bytes. The frames split off the buffer share its allocation, so growing it
    /// means a new allocation and a copy of the incomplete frame; with room for several
    /// chunks that happens once per `grow` bytes of input instead of once per frame (for
    /// 32 KiB WRITEs in 32 KiB SSH messages: every frame straddles two messages, and every
    /// one was copied twice, once here and once when the next message was appended). The
    /// cost: frames still in use keep the allocation alive, up to `grow` bytes per frame.
    pub fn growing_by(mut self, grow: usize) -> Self {
        self.grow = grow;
        self
    }

    /// The configured limit on the length field.
    pub fn max_packet(&self) -> u32 {
        self.max_packet
    }

    /// Takes one whole frame (type byte onwards) off the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed; room for the rest of the frame (and what
    /// [`Decoder::reserving_ahead`] asks for) has been reserved.
    /// A frame longer than the limit is [`DecodeError::TooLarge`], which is fatal for the
    /// stream; `buf` is left as it was.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len > self.max_packet {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_packet,
            });
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if buf.len() < total {
            let need = total - buf.len() + self.ahead;
            if buf.capacity() - buf.len() < need {
                buf.reserve(need.max(self.grow));
            }
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        Ok(Some(buf.split_to(len as usize).freeze()))
    }

    /// Takes one client packet off the front of `buf`. On an error other than
    /// [`DecodeError::TooLarge`] the bad frame has been consumed and decoding can go on.
    pub fn decode_request(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, DecodeError> {
        match self.next_frame(buf)? {
            Some(frame) => Request::decode(frame).map(Some),
            None => Ok(None),
        }
    }

    /// Takes one server packet off the front of `buf`, with the same contract as
    /// [`Decoder::decode_request`].
    pub fn decode_response(&mut self, buf: &mut BytesMut) -> Result<Option<Response>, DecodeError> {
        match self.next_frame(buf)? {
            Some(frame) => Response::decode(frame).map(Some),
            None => Ok(None),
        }
    }
}

/// Appends a transport message (an SSH channel message) to a decoder's input buffer, taking
/// the message's buffer over instead of copying when `input` is empty and nothing else
/// refers to `data`.
pub fn append_message(input: &mut BytesMut, data: Bytes) {
    if input.is_empty() {
        match data.try_into_mut() {
            Ok(data) => *input = data,
            Err(data) => input.extend_from_slice(&data),
        }
    } else {
        input.extend_from_slice(&data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_message_takes_a_unique_buffer_over_and_copies_otherwise() {
        // Empty input, unique message: the message's buffer becomes the input.
        let data = Bytes::from(b"first".to_vec());
        let at = data.as_ptr();
        let mut input = BytesMut::new();
        append_message(&mut input, data);
        assert_eq!(&input[..], b"first");
        assert_eq!(input.as_ptr(), at, "no copy of a unique message");

        // Non-empty input: appended after what is there.
        append_message(&mut input, Bytes::from_static(b", second"));
        assert_eq!(&input[..], b"first, second");

        // Empty input, message still referenced elsewhere: copied, the other view unchanged.
        let shared = Bytes::from(b"third".to_vec());
        let keep = shared.clone();
        let mut input = BytesMut::new();
        append_message(&mut input, shared);
        assert_eq!(&input[..], b"third");
        input[0] = b'T';
        assert_eq!(&keep[..], b"third");
    }
}
