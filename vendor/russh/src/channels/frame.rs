// sftpgate: channel data that russh seals in the caller's own buffer (see vendor/README.md).

use bytes::{Bytes, BytesMut};

/// Channel data in a buffer with room around it for the SSH packet that carries it: the
/// session writes the packet's header into the room in front of the data, its padding and
/// MAC into the spare capacity after it, and seals the packet where it lies, instead of
/// copying the data into its own output buffer. Where that is not possible (the data does
/// not fit one packet or the peer's window, compression is on, a key exchange or other
/// data is queued, or there is not enough room), the data is sent as
/// [`ChannelMsg::Data`](super::ChannelMsg::Data) would be, copied: the bytes on the wire
/// are the same either way.
pub struct DataFrame {
    pub(crate) buf: BytesMut,
    pub(crate) start: usize,
}

impl std::fmt::Debug for DataFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The length, not the data (which can be large).
        f.debug_struct("DataFrame").field("len", &self.len()).finish()
    }
}

impl DataFrame {
    /// Room needed in front of the data: packet length (4), padding length (1), message
    /// type (1), recipient channel (4) and data length (4).
    pub const HEAD_ROOM: usize = 14;
    /// Spare capacity needed after the data: the padding (at most 19 bytes with russh's
    /// ciphers) and the MAC or tag (at most 64).
    pub const TAIL_ROOM: usize = 96;

    /// The data is `buf[start..]`; what precedes it (at least [`Self::HEAD_ROOM`] bytes)
    /// and `buf`'s spare capacity (at least [`Self::TAIL_ROOM`]) may be overwritten.
    /// `start` past the end of `buf` means no data.
    pub fn new(buf: BytesMut, start: usize) -> Self {
        let start = start.min(buf.len());
        DataFrame { buf, start }
    }

    /// Bytes of data.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the packet's header fits in front of the data (the room behind it depends
    /// on the cipher: the session checks it).
    pub(crate) fn has_head_room(&self) -> bool {
        self.start >= Self::HEAD_ROOM
    }

    /// The data alone, to be copied as ordinary channel data.
    pub fn into_bytes(self) -> Bytes {
        self.buf.freeze().slice(self.start..)
    }
}
