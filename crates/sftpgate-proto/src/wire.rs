//! SSH wire primitives (RFC 4251 §5) over a frame: a bounds-checked reader that hands out
//! zero-copy slices, and the matching writer functions.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Malformed;

/// Reads SSH wire values from one frame. Every read is bounds-checked against what is left;
/// strings are returned as slices of the frame, never copied.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Malformed> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(Malformed::Truncated { field })?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Malformed> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, Malformed> {
        let bytes = self.take(8, field)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(b))
    }

    /// An SSH `string`: a u32 length and that many bytes, as a slice of the frame.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<Bytes, Malformed> {
        let len = self.u32(field)? as usize;
        if len > self.remaining() {
            return Err(Malformed::StringTooLong {
                field,
                len,
                remaining: self.remaining(),
            });
        }
        let s = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(s)
    }

    /// An SSH `string` holding text. Invalid UTF-8 is replaced rather than rejected: these
    /// are messages, tags and names meant for people and lookups, and OpenSSH does not
    /// validate them either.
    pub(crate) fn text(&mut self, field: &'static str) -> Result<String, Malformed> {
        let s = self.string(field)?;
        Ok(String::from_utf8_lossy(&s).into_owned())
    }

    /// Everything left in the frame.
    pub(crate) fn rest(&mut self) -> Bytes {
        let s = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        s
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], Malformed> {
        if self.remaining() < n {
            return Err(Malformed::Truncated { field });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
}

pub(crate) fn put_string(out: &mut BytesMut, s: &[u8]) {
    out.put_u32(wire_len(s.len()));
    out.put_slice(s);
}

/// A length as the wire's u32. Encoders only ever see values that fit: packets are capped far
/// below 4 GiB, and a caller that builds a larger string has a bug that must not go unnoticed.
pub(crate) fn wire_len(len: usize) -> u32 {
    u32::try_from(len).expect("SFTP strings and packets are far below 4 GiB")
}

/// Starts a packet: reserves the length field and writes the type byte. Returns the offset
/// that [`finish_packet`] patches.
pub(crate) fn start_packet(out: &mut BytesMut, packet_type: u8) -> usize {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(packet_type);
    start
}

/// Writes the length of the packet begun at `start`.
pub(crate) fn finish_packet(out: &mut BytesMut, start: usize) {
    let len = wire_len(out.len() - start - 4);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}
