//! A WRITE's data as it arrived: one buffer, or the pieces of the transport's messages it
//! came in (see [`crate::RequestInput`]), so that a large WRITE reaches storage without
//! being copied into one buffer first.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The data of a WRITE request: a byte string that may be held in several buffers, in
/// order. Equality and hashing look at the bytes only, never at how they are split.
#[derive(Clone, Default)]
pub struct WriteData {
    first: Bytes,
    rest: Vec<Bytes>,
    len: usize,
}

impl WriteData {
    /// Bytes in all the pieces.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a piece (an empty one is dropped).
    pub fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        self.len += piece.len();
        if self.first.is_empty() {
            self.first = piece;
        } else {
            self.rest.push(piece);
        }
    }

    /// The pieces in order, none of them empty.
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> + '_ {
        std::iter::once(&self.first)
            .filter(|b| !b.is_empty())
            .chain(&self.rest)
    }

    /// How many pieces the bytes are in.
    pub fn chunk_count(&self) -> usize {
        usize::from(!self.first.is_empty()) + self.rest.len()
    }

    /// The bytes in one buffer: the buffer itself when there is one piece, else a copy.
    pub fn into_bytes(self) -> Bytes {
        if self.rest.is_empty() {
            return self.first;
        }
        let mut out = BytesMut::with_capacity(self.len);
        for piece in self.chunks() {
            out.put_slice(piece);
        }
        out.freeze()
    }

    /// Appends the bytes to `out`.
    pub fn put_into(&self, out: &mut BytesMut) {
        out.reserve(self.len);
        for piece in self.chunks() {
            out.put_slice(piece);
        }
    }
}

impl From<Bytes> for WriteData {
    fn from(bytes: Bytes) -> Self {
        WriteData {
            len: bytes.len(),
            first: bytes,
            rest: Vec::new(),
        }
    }
}

impl From<Vec<u8>> for WriteData {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

impl From<&'static [u8]> for WriteData {
    fn from(bytes: &'static [u8]) -> Self {
        Bytes::from_static(bytes).into()
    }
}

impl From<&'static str> for WriteData {
    fn from(text: &'static str) -> Self {
        Bytes::from_static(text.as_bytes()).into()
    }
}

impl PartialEq for WriteData {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self
                .chunks()
                .flat_map(|c| c.iter())
                .eq(other.chunks().flat_map(|c| c.iter()))
    }
}

impl Eq for WriteData {}

impl PartialEq<[u8]> for WriteData {
    fn eq(&self, other: &[u8]) -> bool {
        self.len == other.len() && self.chunks().flat_map(|c| c.iter()).eq(other.iter())
    }
}

impl fmt::Debug for WriteData {
    /// As [`Bytes`] prints, for one piece; the piece count too when there are several.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rest.is_empty() {
            return fmt::Debug::fmt(&self.first, f);
        }
        f.debug_struct("WriteData")
            .field("len", &self.len)
            .field("pieces", &self.chunk_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_keep_their_buffers_and_compare_by_content() {
        let a = Bytes::from(b"hello ".to_vec());
        let b = Bytes::from(b"world".to_vec());
        let at = (a.as_ptr(), b.as_ptr());
        let mut data = WriteData::default();
        data.push(Bytes::new());
        data.push(a);
        data.push(Bytes::new());
        data.push(b);
        assert_eq!(data.len(), 11);
        assert_eq!(data.chunk_count(), 2);
        let ptrs: Vec<_> = data.chunks().map(|c| c.as_ptr()).collect();
        assert_eq!(ptrs, vec![at.0, at.1], "no piece copied");
        assert_eq!(data, WriteData::from(&b"hello world"[..]));
        assert!(data == b"hello world"[..]);
        assert_ne!(data, WriteData::from(&b"hello worlD"[..]));
        assert_ne!(data, WriteData::from(&b"hello"[..]));
        let mut out = BytesMut::from(&b">"[..]);
        data.put_into(&mut out);
        assert_eq!(&out[..], b">hello world");
        assert_eq!(&data.into_bytes()[..], b"hello world");

        let one = Bytes::from(b"one piece".to_vec());
        let at = one.as_ptr();
        let data = WriteData::from(one);
        assert_eq!(data.chunk_count(), 1);
        assert_eq!(data.into_bytes().as_ptr(), at, "one piece is not copied");
        assert!(WriteData::default().is_empty());
        assert_eq!(WriteData::default().chunks().count(), 0);
    }
}
